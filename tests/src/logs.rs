//! The extension's log lines, read back: JSON objects (`WARMPOOL_LOG_FORMAT=json`, the format
//! on Lambda), shown to tests as `LEVEL message key=value ...` so that a test can look for a
//! message and its fields in either format.

use serde_json::Value;

/// A JSON log line as `LEVEL message key=value ...`, its fields in the order written (sorted by
/// key); `None` if `line` is not a JSON log line (plain text, or a metrics record).
pub fn render(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    if obj.contains_key("_aws") {
        return None;
    }
    let message = obj.get("message")?.as_str()?;
    let mut out = format!(
        "{} {message}",
        obj.get("level").and_then(Value::as_str).unwrap_or("?")
    );
    for (k, v) in obj {
        if matches!(k.as_str(), "message" | "level" | "timestamp" | "target") {
            continue;
        }
        match v {
            Value::String(s) => out.push_str(&format!(" {k}={s}")),
            other => out.push_str(&format!(" {k}={other}")),
        }
    }
    Some(out)
}

/// The JSON log lines (not metrics records) in `text`, parsed.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v.get("message").is_some() && v.get("_aws").is_none())
        .collect()
}

/// The Embedded Metric Format records in `text`.
pub fn metric_records(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect()
}
