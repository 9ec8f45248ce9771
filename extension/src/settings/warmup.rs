//! The warm-up settings: `WARMPOOL_WARMUP`'s named read queries and `WARMPOOL_PREPARE`'s
//! statements, as `config` reads them; `state` runs them.

use std::time::Duration;

use serde_json::Value;

/// One configured warm-up query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmQuery {
    /// The name function code reads it by.
    pub name: String,
    /// The statement; it takes no parameters.
    pub sql: String,
    /// How long its rows are current; `None` keeps them for the life of the environment.
    pub ttl: Option<Duration>,
}

/// Parses `WARMPOOL_WARMUP`: a JSON object from name to either the SQL text or an object
/// `{"sql": "...", "ttl_ms": 60000}`.
pub fn parse_warmup(json: &str) -> Result<Vec<WarmQuery>, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err(
            "must be a JSON object from name to SQL, e.g. {\"countries\": \"SELECT code, name \
             FROM countries\"}"
                .into(),
        );
    };
    map.into_iter()
        .map(|(name, v)| {
            if name.is_empty() {
                return Err("a warm-up query has an empty name".to_owned());
            }
            let (sql, ttl) = match v {
                Value::String(sql) => (sql, None),
                Value::Object(mut o) => {
                    let sql = match o.remove("sql") {
                        Some(Value::String(s)) => s,
                        _ => return Err(format!("{name:?}: needs \"sql\" as a string")),
                    };
                    let ttl = match o.remove("ttl_ms") {
                        None | Some(Value::Null) => None,
                        Some(Value::Number(n)) => match n.as_u64() {
                            Some(0) | None => {
                                return Err(format!(
                                    "{name:?}: \"ttl_ms\" must be a positive whole number"
                                ))
                            }
                            Some(ms) => Some(Duration::from_millis(ms)),
                        },
                        Some(_) => return Err(format!("{name:?}: \"ttl_ms\" must be a number")),
                    };
                    if let Some(k) = o.keys().next() {
                        return Err(format!(
                            "{name:?}: unknown field {k:?} (fields: sql, ttl_ms)"
                        ));
                    }
                    (sql, ttl)
                }
                _ => {
                    return Err(format!(
                        "{name:?}: must be the SQL text or {{\"sql\": ..., \"ttl_ms\": ...}}"
                    ))
                }
            };
            if sql.trim().is_empty() {
                return Err(format!("{name:?}: the SQL is empty"));
            }
            warmpool::protocol::check_sql(&sql)
                .map_err(|e| format!("{name:?}: {}", e.message()))?;
            Ok(WarmQuery { name, sql, ttl })
        })
        .collect()
}

/// Parses `WARMPOOL_PREPARE`: a JSON array of SQL statements.
pub fn parse_prepare(json: &str) -> Result<Vec<String>, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Array(items) = value else {
        return Err("must be a JSON array of SQL statements, e.g. [\"SELECT ...\"]".into());
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) if !s.trim().is_empty() => match warmpool::protocol::check_sql(&s) {
                Ok(()) => Ok(s),
                Err(e) => Err(format!("item {i}: {}", e.message())),
            },
            _ => Err(format!("item {i} must be a non-empty SQL string")),
        })
        .collect()
}
