//! Warm state: what the extension holds for function code besides connections, kept for the life
//! of the execution environment and so across invocations and function-process restarts.
//!
//! - [`store`]: the key/value state store (get, put with a time to live, delete,
//!   compare-and-set), bounded by `WARMPOOL_STATE_MAX_BYTES`.
//! - [`cache`]: the query result cache, bounded by `WARMPOOL_QUERY_CACHE_MAX_BYTES`, with
//!   stale-while-revalidate.
//! - [`warmup`]: named data sets from `WARMPOOL_WARMUP`, read at Init; [`load`] runs their
//!   queries, retrying failures with a bounded backoff.
//! - [`lru`]: the byte-bounded LRU map under the store and the cache.
//! - [`query`]: running a statement to completion on a pooled connection.
//! - [`serve`]: the session's side of the warm-state requests.
//!
//! Expiry uses the wall clock, passed in as milliseconds: a frozen Lambda environment's monotonic
//! clock is not guaranteed to count the time it spent frozen, and a time to live should.

pub mod cache;
pub mod load;
pub mod lru;
pub mod query;
pub mod serve;
pub mod store;
pub mod warmup;

use std::sync::{Arc, Mutex, MutexGuard};

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
    warmup: Warmup,
    clock: Clock,
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
}
