//! Logs: `tracing` events as one JSON object per line on stdout, which Lambda ships to
//! CloudWatch Logs, or as plain text for a terminal.
//!
//! A line written while serving an invocation carries its `requestId` (and `traceId`, the
//! X-Ray trace header, when the function is traced): the ids come from the nearest enclosing
//! [`invocation_span`]. Lambda's own JSON log format uses the same key for the request id:
//! <https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-advanced.html>.
//!
//! Field values can come from clients (a request id, an error quoting SQL), so no format writes
//! a control character as it is: a line break would let a client forge a log line, and an
//! escape sequence would reach the terminal of whoever reads the log. JSON escapes them as
//! strings require, and the text format as [`escape_controls`] does.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::Attributes;
use tracing::{Event, Id, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
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
/// `format`, on stdout. Statements are logged only under `WARMPOOL_LOG_STATEMENTS`, which the
/// backend connection checks itself. With the `otel` feature, call it inside the Tokio runtime:
/// the span exporter runs on it.
pub fn init(directives: &str, format: LogFormat) {
    let filter = EnvFilter::new(directives);
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
            .with(text_layer(std::io::stdout, std::io::stdout().is_terminal()))
            .init(),
    }
}

/// The text format: tracing's own line layout, with every field (the event's and its spans')
/// escaped by [`EscapedFields`]. `ansi` colours the level for a terminal.
fn text_layer<S, W>(make_writer: W, ansi: bool) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(EscapedFields)
        .with_writer(make_writer)
        .with_ansi(ansi)
}

/// Formats fields as `name=value` separated by spaces, the message bare, as tracing's default
/// does, but with [`escape_controls`] applied to every value, so each event stays one line of
/// printable text whatever a value holds.
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let mut text = String::new();
        self.result = fmt::write(&mut text, value).and_then(|()| {
            if !self.first {
                self.writer.write_char(' ')?;
            }
            self.first = false;
            if field.name() != "message" {
                write!(self.writer, "{}=", field.name())?;
            }
            self.writer.write_str(&escape_controls(&text))
        });
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, format_args!("{value}"));
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

/// `text` with every control character escaped: `\n`, `\r` and `\t` as such, the other C0
/// controls, DEL and the C1 controls as `\u{..}`, and so are the Unicode line and paragraph
/// separators. Anything else, including other non-ASCII text, is kept.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let needs = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.chars().any(needs) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
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
        writeln!(
            writer,
            "{}",
            escape_json_extras(&Value::Object(line).to_string())
        )
    }
}

/// JSON escapes the C0 controls in strings, but not the C1 controls or the Unicode line
/// separators, which a terminal or a log viewer may still act on. They can only appear inside
/// strings, where a `\uXXXX` escape stands for the same character.
fn escape_json_extras(json: &str) -> std::borrow::Cow<'_, str> {
    let extra = |c: char| matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}');
    if !json.chars().any(extra) {
        return json.into();
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if extra(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.into()
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

    /// A request id a client chose, meant to forge a line and to colour the terminal.
    const FORGED: &str =
        "r-1\n2026-12-02T00:00:00.000000Z ERROR warmpool: fake\r\x1b[31mred\u{9b}2J\u{2028}";

    #[test]
    fn text_lines_escape_control_characters_in_every_field() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("warn"))
            .with(text_layer(move || writer.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            invocation_span(FORGED, "\x1b]0;title\x07").in_scope(|| {
                let client_text = "a\tb\x7f\x1b[2J";
                tracing::warn!(
                    display = %client_text,
                    debug = ?client_text,
                    error = &std::io::Error::other("x\ny") as &(dyn std::error::Error + 'static),
                    "message {FORGED}"
                );
            });
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "one event, one line:\n{out}");
        let printable = |c: char| !c.is_control() || c == '\n';
        assert!(
            out.chars().all(printable),
            "a control character got through: {out:?}"
        );
        assert!(!out.contains('\u{2028}'), "{out:?}");
        assert!(
            out.contains(r"request_id=r-1\n2026-12-02T00:00:00.000000Z ERROR warmpool: fake\r\u{1b}[31mred\u{9b}2J\u{2028}"),
            "{out}"
        );
        assert!(out.contains(r"trace_id=\u{1b}]0;title\u{7}"), "{out}");
        assert!(out.contains(r"message r-1\n2026"), "{out}");
        assert!(out.contains(r"display=a\tb\u{7f}\u{1b}[2J"), "{out}");
        assert!(out.contains(r"error=x\ny"), "{out}");
    }

    #[test]
    fn json_lines_escape_control_characters_in_every_field() {
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
            invocation_span(FORGED, "t").in_scope(|| tracing::warn!(id = %FORGED, "{FORGED}"));
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.trim_end()
                .chars()
                .all(|c| !c.is_control() && c != '\u{2028}'),
            "{out:?}"
        );
        let got = lines(&buf);
        for key in ["requestId", "id", "message"] {
            assert_eq!(got[0][key], FORGED, "the value reads back unchanged");
        }
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
