//! Warm state: what the extension holds for function code besides connections, kept for the life
//! of the execution environment and so across invocations and function-process restarts.
//!
//! - [`store`]: the key/value state store (get, put with a time to live, delete,
//!   compare-and-set), bounded by `WARMPOOL_STATE_MAX_BYTES`.
//! - [`cache`]: the query result cache, bounded by `WARMPOOL_QUERY_CACHE_MAX_BYTES`, with
//!   stale-while-revalidate.
//! - [`warmup`]: named data sets from `WARMPOOL_WARMUP`, read at Init; `warm_load` runs their
//!   queries, retrying failures with a bounded backoff.
//! - [`lru`]: the byte-bounded LRU map under the store and the cache.
//! - [`query`]: running a statement to completion on a pooled connection.
//! - `warm_serve` (beside this module): the session's side of the warm-state requests.
//!
//! Expiry uses the wall clock, passed in as milliseconds: a frozen Lambda environment's monotonic
//! clock is not guaranteed to count the time it spent frozen, and a time to live should.

pub mod cache;
pub mod lru;
pub mod query;
pub mod store;
pub mod warmup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

use crate::config::Config;
use cache::QueryCache;
use store::Store;
use warmup::Warmup;

/// The wall clock, in ms since the Unix epoch; tests pass their own.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Everything warm-state the sessions share.
pub struct State {
    store: Mutex<Store>,
    cache: Mutex<QueryCache>,
    /// Cache misses being filled, by key: a miss of a key already being filled waits for that
    /// fill instead of running the same query again.
    filling: Mutex<HashMap<Bytes, watch::Receiver<()>>>,
    warmup: Warmup,
    clock: Clock,
}

/// A cache miss's turn: fill the key, or wait for the fill already running.
pub enum Fill<'a> {
    /// No fill of this key runs: this caller runs the query; the others wait until the guard
    /// is dropped.
    Lead(FillGuard<'a>),
    /// Another caller is filling the key; resolves when it is done, whatever the outcome.
    Follow(watch::Receiver<()>),
}

/// Held by the caller filling a key; dropping it (done, failed or cancelled) releases the
/// waiters.
pub struct FillGuard<'a> {
    state: &'a State,
    key: Bytes,
    _done: watch::Sender<()>,
}

impl Drop for FillGuard<'_> {
    fn drop(&mut self) {
        self.state.filling().remove(&self.key);
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("store", &*self.store())
            .field("cache", &*self.cache())
            .field("warmup", &self.warmup)
            .finish()
    }
}

impl State {
    /// Empty state sized by the configuration, on the system clock.
    pub fn new(config: &Config) -> State {
        State::with_clock(config, Arc::new(crate::lifecycle::now_ms))
    }

    /// Empty state on `clock`.
    pub fn with_clock(config: &Config, clock: Clock) -> State {
        State {
            store: Mutex::new(Store::new(config.state_max_bytes)),
            cache: Mutex::new(QueryCache::new(config.query_cache_max_bytes)),
            filling: Mutex::new(HashMap::new()),
            warmup: Warmup::new(&config.warmup),
            clock,
        }
    }

    /// Now, in wall-clock ms.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The state store. Held only for in-memory work, never across an await.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The query result cache. Held only for in-memory work, never across an await.
    pub fn cache(&self) -> MutexGuard<'_, QueryCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn filling(&self) -> MutexGuard<'_, HashMap<Bytes, watch::Receiver<()>>> {
        self.filling.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the turn to fill cache key `key` after a miss, or joins the fill that has it.
    pub fn fill_turn(&self, key: &Bytes) -> Fill<'_> {
        let mut filling = self.filling();
        if let Some(done) = filling.get(key) {
            return Fill::Follow(done.clone());
        }
        let (tx, rx) = watch::channel(());
        filling.insert(key.clone(), rx);
        Fill::Lead(FillGuard {
            state: self,
            key: key.clone(),
            _done: tx,
        })
    }

    /// The warm-up data sets.
    pub fn warmup(&self) -> &Warmup {
        &self.warmup
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_injected_clock_drives_expiry() {
        let config = Config::from_lookup(|k| match k {
            "PGHOST" => Some("h".into()),
            "PGUSER" => Some("u".into()),
            "WARMPOOL_STATE_MAX_BYTES" => Some("100000".into()),
            _ => None,
        })
        .unwrap();
        let now = Arc::new(AtomicU64::new(1_000));
        let clock = now.clone();
        let state = State::with_clock(&config, Arc::new(move || clock.load(Ordering::SeqCst)));
        let t = state.now();
        state
            .store()
            .put("k".into(), b"v", Some(Duration::from_millis(10)), t)
            .unwrap();
        now.store(1_009, Ordering::SeqCst);
        assert!(state.store().get("k", state.now()).is_some());
        now.store(1_010, Ordering::SeqCst);
        assert!(state.store().get("k", state.now()).is_none());
        let shown = format!("{state:?}");
        assert!(shown.contains("budget_bytes: 100000"), "{shown}");
    }

    #[tokio::test]
    async fn a_miss_of_a_key_being_filled_waits_until_the_fill_ends() {
        let config = Config::from_lookup(|k| match k {
            "PGHOST" => Some("h".into()),
            "PGUSER" => Some("u".into()),
            _ => None,
        })
        .unwrap();
        let state = State::new(&config);
        let key = Bytes::from_static(b"statement and parameters");
        let Fill::Lead(guard) = state.fill_turn(&key) else {
            panic!("the first miss must fill the key");
        };
        let Fill::Follow(mut done) = state.fill_turn(&key) else {
            panic!("a second miss must wait for the first");
        };
        let other = Bytes::from_static(b"another key");
        assert!(matches!(state.fill_turn(&other), Fill::Lead(_)));
        assert!(!done.has_changed().unwrap_or(true), "released too early");
        drop(guard);
        // The filler is gone: the waiter is released, and the next miss fills again.
        let _ = done.changed().await;
        assert!(matches!(state.fill_turn(&key), Fill::Lead(_)));
    }
}
