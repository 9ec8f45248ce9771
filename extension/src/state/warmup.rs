//! Warm-up data sets: named read queries from the configuration, run at Init, their rows held in
//! memory for function code to read with no database round trip.
//!
//! This module holds the configuration format and the data sets' bookkeeping; `load.rs` runs the
//! queries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warmpool::protocol::{Column, RawRow};

/// First wait before a failed warm-up query is retried; each failure doubles it.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between retries of a failed warm-up query.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

pub use crate::settings::warmup::{parse_prepare, parse_warmup, WarmQuery};

/// The wait before retry number `failures` (1 for the first retry).
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    RETRY_FIRST.saturating_mul(factor).min(RETRY_MAX)
}

/// A data set's rows as read from the database.
#[derive(Debug)]
pub struct WarmSet {
    /// Each column.
    pub columns: Vec<Column>,
    /// The rows.
    pub rows: Vec<RawRow>,
    /// Wall-clock ms when they were read.
    pub loaded_ms: u64,
}

#[derive(Default)]
struct Slot {
    data: Option<Arc<WarmSet>>,
    loading: bool,
}

/// Every configured data set and what has been loaded of it.
pub struct Warmup {
    queries: HashMap<String, WarmQuery>,
    slots: Mutex<HashMap<String, Slot>>,
}

impl std::fmt::Debug for Warmup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warmup")
            .field("queries", &self.queries.len())
            .finish_non_exhaustive()
    }
}

/// What a read of a data set found.
#[derive(Debug)]
pub enum Found {
    /// Rows, and whether this caller must start a background refresh because their time to
    /// live has passed.
    Rows(Arc<WarmSet>, bool),
    /// Configured but not loaded (its query has failed so far).
    NotLoaded(WarmQuery),
    /// No data set has this name.
    Unknown,
}

impl Warmup {
    /// The data sets of `queries`, none loaded yet.
    pub fn new(queries: &[WarmQuery]) -> Warmup {
        Warmup {
            queries: queries
                .iter()
                .map(|q| (q.name.clone(), q.clone()))
                .collect(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every configured query.
    pub fn queries(&self) -> impl Iterator<Item = &WarmQuery> {
        self.queries.values()
    }

    /// Reads data set `name` at `now_ms`.
    pub fn get(&self, name: &str, now_ms: u64) -> Found {
        let Some(query) = self.queries.get(name) else {
            return Found::Unknown;
        };
        let mut slots = self.slots();
        let slot = slots.entry(name.to_owned()).or_default();
        match &slot.data {
            None => Found::NotLoaded(query.clone()),
            Some(data) => {
                let refresh = !slot.loading && is_expired(query, data, now_ms);
                if refresh {
                    slot.loading = true;
                }
                Found::Rows(data.clone(), refresh)
            }
        }
    }

    /// Marks every data set whose time to live has passed at `now_ms`, and that no task is
    /// loading, as loading; returns them for the caller to refresh.
    pub fn take_expired(&self, now_ms: u64) -> Vec<WarmQuery> {
        let mut slots = self.slots();
        self.queries
            .values()
            .filter(|q| {
                let slot = slots.entry(q.name.clone()).or_default();
                let due =
                    !slot.loading && slot.data.as_ref().is_some_and(|d| is_expired(q, d, now_ms));
                if due {
                    slot.loading = true;
                }
                due
            })
            .cloned()
            .collect()
    }

    /// Marks `name` as loading; false if a task already is.
    pub fn start_loading(&self, name: &str) -> bool {
        let mut slots = self.slots();
        let slot = slots.entry(name.to_owned()).or_default();
        !std::mem::replace(&mut slot.loading, true)
    }

    /// Stores freshly read rows and ends the loading.
    pub fn loaded(&self, name: &str, data: Arc<WarmSet>) {
        let mut slots = self.slots();
        let slot = slots.entry(name.to_owned()).or_default();
        slot.data = Some(data);
        slot.loading = false;
    }

    /// Rows stored without going through a loading task (an on-demand read), unless newer ones
    /// are already there.
    pub fn offer(&self, name: &str, data: Arc<WarmSet>) {
        let mut slots = self.slots();
        let slot = slots.entry(name.to_owned()).or_default();
        if slot
            .data
            .as_ref()
            .is_none_or(|d| d.loaded_ms <= data.loaded_ms)
        {
            slot.data = Some(data);
        }
    }

    /// Whether `name` has rows.
    pub fn is_loaded(&self, name: &str) -> bool {
        self.slots().get(name).is_some_and(|s| s.data.is_some())
    }
}

fn is_expired(query: &WarmQuery, data: &WarmSet, now_ms: u64) -> bool {
    query
        .ttl
        .is_some_and(|ttl| now_ms >= data.loaded_ms.saturating_add(ttl.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_format() {
        let q = parse_warmup(
            r#"{"countries": "SELECT code FROM countries",
                "plans": {"sql": "SELECT * FROM plans", "ttl_ms": 60000}}"#,
        )
        .unwrap();
        let countries = q.iter().find(|q| q.name == "countries").unwrap();
        assert_eq!(countries.ttl, None);
        let plans = q.iter().find(|q| q.name == "plans").unwrap();
        assert_eq!(plans.ttl, Some(Duration::from_secs(60)));
        assert_eq!(plans.sql, "SELECT * FROM plans");
        for bad in [
            "[]",
            "{",
            r#"{"a": 1}"#,
            r#"{"a": ""}"#,
            r#"{"": "SELECT 1"}"#,
            r#"{"a": {"sql": "SELECT 1", "ttl_ms": 0}}"#,
            r#"{"a": {"sql": "SELECT 1", "ttl_ms": "1s"}}"#,
            r#"{"a": {"sql": "SELECT 1", "ttl": 5}}"#,
            r#"{"a": {"ttl_ms": 5}}"#,
        ] {
            assert!(parse_warmup(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_prepare(r#"["SELECT 1", "SELECT $1::int"]"#).unwrap(),
            vec!["SELECT 1", "SELECT $1::int"]
        );
        for bad in ["{}", "[1]", "[\" \"]", "SELECT 1"] {
            assert!(parse_prepare(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sql_with_a_nul_byte_is_refused_at_start_up() {
        // JSON can spell a NUL byte, which PostgreSQL's protocol cannot carry in SQL text.
        let e = parse_warmup(r#"{"a": "SELECT 'x\u0000'"}"#).unwrap_err();
        assert!(e.contains("\"a\": the SQL text holds a NUL byte"), "{e}");
        let e = parse_prepare(r#"["SELECT 1", "SELECT '\u0000'"]"#).unwrap_err();
        assert!(e.contains("item 1: the SQL text holds a NUL byte"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(20), RETRY_MAX);
        assert_eq!(backoff(u32::MAX), RETRY_MAX);
    }

    fn set(loaded_ms: u64) -> Arc<WarmSet> {
        Arc::new(WarmSet {
            columns: vec![],
            rows: vec![],
            loaded_ms,
        })
    }

    #[test]
    fn ttl_refresh_is_started_once() {
        let w = Warmup::new(&[
            WarmQuery {
                name: "a".into(),
                sql: "SELECT 1".into(),
                ttl: Some(Duration::from_secs(1)),
            },
            WarmQuery {
                name: "forever".into(),
                sql: "SELECT 2".into(),
                ttl: None,
            },
        ]);
        assert!(matches!(w.get("nope", 0), Found::Unknown));
        assert!(matches!(w.get("a", 0), Found::NotLoaded(_)));
        assert!(w.start_loading("a"));
        assert!(!w.start_loading("a"), "one loader at a time");
        w.loaded("a", set(1_000));
        w.loaded("forever", set(1_000));
        assert!(matches!(w.get("a", 1_999), Found::Rows(_, false)));
        assert!(w.take_expired(1_999).is_empty());
        let due = w.take_expired(2_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].name, "a");
        assert!(w.take_expired(9_000).is_empty(), "already refreshing");
        // Stale rows are still served while the refresh runs.
        assert!(matches!(w.get("a", 9_000), Found::Rows(_, false)));
        w.loaded("a", set(9_000));
        assert!(matches!(w.get("a", 10_000), Found::Rows(_, true)));
        assert!(matches!(w.get("forever", u64::MAX), Found::Rows(_, false)));
    }

    #[test]
    fn an_on_demand_read_never_replaces_newer_rows() {
        let w = Warmup::new(&[WarmQuery {
            name: "a".into(),
            sql: "SELECT 1".into(),
            ttl: None,
        }]);
        w.offer("a", set(5));
        w.offer("a", set(3));
        let Found::Rows(d, _) = w.get("a", 0) else {
            panic!()
        };
        assert_eq!(d.loaded_ms, 5);
        assert!(w.is_loaded("a"));
    }
}
