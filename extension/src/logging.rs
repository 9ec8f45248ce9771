//! Logs: `tracing` events as one JSON object per line on stdout, which Lambda ships to
//! CloudWatch Logs, or as plain text for a terminal.
//!
//! A line written while serving an invocation carries its `requestId` (and `traceId`, the
//! X-Ray trace header, when the function is traced): the ids come from the nearest enclosing
//! [`invocation_span`]. Lambda's own JSON log format uses the same key for the request id:
//! <https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-advanced.html>.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::Attributes;
use tracing::{Event, Id, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// The span that ties log lines to an invocation. At ERROR level so that no `WARMPOOL_LOG`
/// short of `off` disables it: a disabled span records no ids, and a warning inside it would
/// lose its request id.
///
/// A root span, whatever span is current: a session names its next invocation while its
/// requests still run in the previous one's span, and a child would keep every earlier
/// invocation of the session alive in a chain that grows with each one (longer log lines, more
/// memory, and a recursive drop that overflows the stack).
pub fn invocation_span(request_id: &str, trace_id: &str) -> tracing::Span {
    let span = tracing::error_span!(
        parent: None,
        "invocation",
        request_id = %request_id,
        trace_id = %trace_id
    );
    #[cfg(feature = "otel")]
    crate::otel::set_parent(&span, trace_id);
    span
}

/// Installs the global subscriber: `directives` in RUST_LOG syntax (`WARMPOOL_LOG`), in
/// `format`, on stdout. `log_statements` lets tokio-postgres' statement logging through. With
/// the `otel` feature, call it inside the Tokio runtime: the span exporter runs on it.
pub fn init(directives: &str, log_statements: bool, format: LogFormat) {
    // tokio-postgres logs every statement with its bound parameter values at debug level, and
    // those may be secrets: only WARMPOOL_LOG_STATEMENTS=true lets them through.
    let statements = if log_statements {
        "tokio_postgres=debug"
    } else {
        "tokio_postgres=info"
    };
    let filter =
        EnvFilter::new(directives).add_directive(statements.parse().expect("static directive"));
    let registry = tracing_subscriber::registry().with(filter);
    #[cfg(feature = "otel")]
    let registry = registry.with(crate::otel::layer());
    match format {
        LogFormat::Json => registry
            .with(InvocationIdsLayer)
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines)
                    .with_writer(std::io::stdout),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stdout)
                    .with_ansi(std::io::stdout().is_terminal()),
            )
            .init(),
    }
}

/// The ids of the invocation a span belongs to, kept in the span's extensions.
#[derive(Debug, Clone, Default)]
struct InvocationIds {
    request_id: String,
    trace_id: String,
}

impl Visit for InvocationIds {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "request_id" => self.request_id = value.to_owned(),
            "trace_id" => self.trace_id = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "request_id" => self.request_id = format!("{value:?}"),
            "trace_id" => self.trace_id = format!("{value:?}"),
            _ => {}
        }
    }
}

/// Records the ids of every span that has a `request_id` field.
pub struct InvocationIdsLayer;

impl<S> Layer<S> for InvocationIdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().fields().field("request_id").is_none() {
            return;
        }
        let mut ids = InvocationIds::default();
        attrs.record(&mut ids);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(ids);
        }
    }
}

/// One JSON object per event: `timestamp`, `level`, `target`, `message`, the event's fields,
/// and `requestId`/`traceId` from the enclosing invocation span.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        line.insert(
            "target".into(),
            Value::String(event.metadata().target().to_owned()),
        );
        event.record(&mut JsonFields(&mut line));
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                if let Some(ids) = span.extensions().get::<InvocationIds>() {
                    line.insert("requestId".into(), Value::String(ids.request_id.clone()));
                    if !ids.trace_id.is_empty() {
                        line.insert("traceId".into(), Value::String(ids.trace_id.clone()));
                    }
                    break;
                }
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buf: &Buffer) -> Vec<Value> {
        String::from_utf8(buf.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn lines_inside_an_invocation_carry_its_ids() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("warn"))
            .with(InvocationIdsLayer)
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines)
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(n = 3, "before");
            invocation_span("r-1", "Root=1-abc").in_scope(|| {
                tracing::info_span!("inner").in_scope(|| {
                    tracing::warn!(wait_ms = 120u64, "slow");
                })
            });
        });
        let got = lines(&buf);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0]["message"], "before");
        assert_eq!(got[0]["n"], 3);
        assert!(got[0].get("requestId").is_none());
        assert_eq!(got[1]["message"], "slow");
        assert_eq!(got[1]["level"], "WARN");
        assert_eq!(got[1]["wait_ms"], 120);
        assert_eq!(
            got[1]["requestId"], "r-1",
            "the ids survive a filter that disables info spans"
        );
        assert_eq!(got[1]["traceId"], "Root=1-abc");
    }
}
