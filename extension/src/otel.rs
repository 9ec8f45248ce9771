//! OpenTelemetry export of the extension's spans (cargo feature `otel`).
//!
//! Spans go over OTLP/HTTP to `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4318`, where the AWS Distro for
//! OpenTelemetry collector layer listens). An invocation's span is made a child of the span its
//! X-Ray trace header names, so the extension's work appears inside the function's trace:
//! X-Ray's `Root=1-{8 hex}-{24 hex}` is the 32-hex-digit W3C trace id, and `Parent` the span id.
//! <https://docs.aws.amazon.com/xray/latest/devguide/xray-concepts.html#xray-concepts-tracingheader>

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::registry::LookupSpan;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The layer that turns spans into OpenTelemetry spans, exported over OTLP/HTTP in batches on
/// the current Tokio runtime. `None`, with a message on stderr, if the exporter cannot be built.
pub fn layer<S>() -> Option<OpenTelemetryLayer<S, SdkTracer>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let client = opentelemetry_http::hyper::HyperClient::with_default_connector(
        Duration::from_secs(2),
        None,
    );
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("warmpool: OpenTelemetry export disabled: {e}");
            return None;
        }
    };
    let batch =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batch)
        .build();
    Some(with_provider(provider))
}

/// The layer over `provider`, which [`shutdown`] flushes (tests pass one with their exporter).
pub fn with_provider<S>(provider: SdkTracerProvider) -> OpenTelemetryLayer<S, SdkTracer>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let tracer = provider.tracer("warmpool");
    let _ = PROVIDER.set(provider);
    tracing_opentelemetry::layer().with_tracer(tracer)
}

/// Exports what is buffered and stops the exporter: at SHUTDOWN, since nothing runs after it.
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            tracing::warn!(error = %e, "OpenTelemetry export did not finish");
        }
    }
}

/// Makes `span` a child of the span the X-Ray trace header names; does nothing for a header
/// that names none.
pub fn set_parent(span: &tracing::Span, xray: &str) {
    if let Some(parent) = xray_parent(xray) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// The span context an `X-Amzn-Trace-Id` value names: `Root=1-5759e988-bd862e3fe1be46a994272793;
/// Parent=53995c3f42cd8ad8;Sampled=1`.
pub fn xray_parent(header: &str) -> Option<SpanContext> {
    let mut root = None;
    let mut parent = None;
    let mut sampled = false;
    for part in header.split(';') {
        match part.trim().split_once('=') {
            Some(("Root", v)) => root = Some(v),
            Some(("Parent", v)) => parent = Some(v),
            Some(("Sampled", v)) => sampled = v == "1",
            _ => {}
        }
    }
    let mut root = root?.split('-');
    let (version, time, rest) = (root.next()?, root.next()?, root.next()?);
    if version != "1" || time.len() != 8 || rest.len() != 24 || root.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(&format!("{time}{rest}")).ok()?;
    let span_id = SpanId::from_hex(parent?).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const HEADER: &str =
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";

    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn xray_headers_parse_into_the_w3c_ids() {
        let cx = xray_parent(HEADER).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "5759e988bd862e3fe1be46a994272793"
        );
        assert_eq!(cx.span_id().to_string(), "53995c3f42cd8ad8");
        assert!(cx.is_sampled() && cx.is_remote());
        for bad in [
            "",
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Root=1-5759e98-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a99427279z;Parent=53995c3f42cd8ad8",
        ] {
            assert!(xray_parent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_invocation_span_and_its_children_are_in_the_xray_trace() {
        let spans = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let tracer = provider.tracer("warmpool");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::with_default(subscriber, || {
            let span = crate::logging::invocation_span("req-1", HEADER);
            span.in_scope(|| {
                tracing::info_span!("statement").in_scope(|| {});
            });
        });
        provider.force_flush().unwrap();
        let spans = spans.0.lock().unwrap();
        assert_eq!(spans.len(), 2, "{spans:?}");
        for s in spans.iter() {
            assert_eq!(
                s.span_context.trace_id().to_string(),
                "5759e988bd862e3fe1be46a994272793",
                "{s:?}"
            );
        }
        let invocation = spans.iter().find(|s| s.name == "invocation").unwrap();
        assert_eq!(invocation.parent_span_id.to_string(), "53995c3f42cd8ad8");
        assert!(invocation
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "request_id" && kv.value.as_str() == "req-1"));
        let child = spans.iter().find(|s| s.name == "statement").unwrap();
        assert_eq!(child.parent_span_id, invocation.span_context.span_id());
    }
}
