//! What the extension did, counted: per invocation, per metrics record, and since start.
//!
//! Every event is added to the current metrics window (written as one Embedded Metric Format
//! record per invocation on classic Lambda, per interval on Managed Instances), to the totals
//! logged at SHUTDOWN, and, when a session has named its invocation, to that invocation's own
//! counters, which `Client::stats` reads.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use warmpool::protocol::Stats;

/// One set of counters.
#[derive(Debug, Default)]
pub struct Counters {
    queries: AtomicU64,
    rows: AtomicU64,
    database_time_us: AtomicU64,
    pool_wait_us: AtomicU64,
    connections_created: AtomicU64,
    connections_replaced: AtomicU64,
    cache_hits: AtomicU64,
    state_hits: AtomicU64,
    fleet_slots_taken: AtomicU64,
    fleet_waits: AtomicU64,
    fleet_wait_us: AtomicU64,
    fleet_refusals: AtomicU64,
    /// Touched only on errors, so a lock is cheap enough.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    /// The counters now, with `request_id`.
    pub fn snapshot(&self, request_id: &str) -> Stats {
        self.read(request_id, |a| a.load(Ordering::Relaxed), |m| m.clone())
    }

    /// The counters now, set back to zero.
    pub fn take(&self, request_id: &str) -> Stats {
        self.read(request_id, |a| a.swap(0, Ordering::Relaxed), std::mem::take)
    }

    fn read(
        &self,
        request_id: &str,
        get: impl Fn(&AtomicU64) -> u64,
        errors: impl FnOnce(&mut BTreeMap<String, u64>) -> BTreeMap<String, u64>,
    ) -> Stats {
        let errors = errors(&mut self.errors.lock().unwrap_or_else(|p| p.into_inner()));
        Stats {
            request_id: request_id.to_owned(),
            queries: get(&self.queries),
            rows: get(&self.rows),
            database_time_us: get(&self.database_time_us),
            pool_wait_us: get(&self.pool_wait_us),
            connections_created: get(&self.connections_created),
            connections_replaced: get(&self.connections_replaced),
            cache_hits: get(&self.cache_hits),
            state_hits: get(&self.state_hits),
            errors: errors.into_iter().collect(),
            fleet_slots_taken: get(&self.fleet_slots_taken),
            fleet_waits: get(&self.fleet_waits),
            fleet_wait_us: get(&self.fleet_wait_us),
            fleet_refusals: get(&self.fleet_refusals),
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A statement ran (successfully or not), returning or affecting `rows` rows and holding a
    /// connection for `time`.
    Query {
        /// Rows returned or affected.
        rows: u64,
        /// How long the statement held its connection.
        time: Duration,
    },
    /// A request waited this long for a pooled connection.
    PoolWait(Duration),
    /// A new database connection opened.
    ConnectionCreated,
    /// A connection was closed because it was broken, stale or too old.
    ConnectionReplaced,
    /// An answer came from a cache without a query.
    CacheHit,
    /// A warm-state read was served from the extension's memory.
    StateHit,
    /// An error was answered with this SQLSTATE.
    Error(&'a str),
    /// This many fleet connections were ended to make room under the fleet's budget.
    FleetSlotsTaken(u64),
    /// A request waited this long for a slot of the fleet's budget.
    FleetWait(Duration),
    /// A request was refused: the fleet's budget stayed full.
    FleetRefusal,
}

impl Counters {
    fn add(&self, event: Event<'_>) {
        let add = |a: &AtomicU64, n: u64| {
            a.fetch_add(n, Ordering::Relaxed);
        };
        match event {
            Event::Query { rows, time } => {
                add(&self.queries, 1);
                add(&self.rows, rows);
                add(&self.database_time_us, micros(time));
            }
            Event::PoolWait(d) => add(&self.pool_wait_us, micros(d)),
            Event::ConnectionCreated => add(&self.connections_created, 1),
            Event::ConnectionReplaced => add(&self.connections_replaced, 1),
            Event::CacheHit => add(&self.cache_hits, 1),
            Event::StateHit => add(&self.state_hits, 1),
            Event::FleetSlotsTaken(n) => add(&self.fleet_slots_taken, n),
            Event::FleetWait(d) => {
                add(&self.fleet_waits, 1);
                add(&self.fleet_wait_us, micros(d));
            }
            Event::FleetRefusal => add(&self.fleet_refusals, 1),
            Event::Error(code) => {
                *self
                    .errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(sqlstate_class(code))
                    .or_default() += 1;
            }
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The SQLSTATE class: the code's first two characters (`23` for 23505), as PostgreSQL groups
/// them: <https://www.postgresql.org/docs/current/errcodes-appendix.html>. Anything that is not
/// a well-formed code counts as `XX`, internal error.
pub fn sqlstate_class(code: &str) -> String {
    let b = code.as_bytes();
    if b.len() == 5
        && b.iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        code[..2].to_owned()
    } else {
        "XX".to_owned()
    }
}

tokio::task_local! {
    /// The counters of the invocation the running request belongs to, when its session named
    /// one: pool events (a connection opened inside `get`) are counted for it too.
    static INVOCATION: Arc<Counters>;
}

/// The extension's counters.
#[derive(Debug)]
pub struct Meter {
    window: Counters,
    totals: Counters,
    invocations: Mutex<LruCache<String, Arc<Counters>>>,
}

impl Meter {
    /// A meter that remembers the counters of up to `invocations` named invocations, the least
    /// recently used forgotten first.
    pub fn new(invocations: usize) -> Meter {
        Meter {
            window: Counters::default(),
            totals: Counters::default(),
            invocations: Mutex::new(LruCache::new(
                NonZeroUsize::new(invocations).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Counts `event`.
    pub fn add(&self, event: Event<'_>) {
        self.window.add(event);
        self.totals.add(event);
        let _ = INVOCATION.try_with(|c| c.add(event));
    }

    /// The counters of the named invocation, created on first use.
    pub fn invocation(&self, request_id: &str) -> Arc<Counters> {
        let mut map = self.invocations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(request_id) {
            return c.clone();
        }
        let c = Arc::new(Counters::default());
        map.put(request_id.to_owned(), c.clone());
        c
    }

    /// Runs `work` with events counted for `counters` as well.
    pub async fn scoped<F: std::future::Future>(
        counters: Option<Arc<Counters>>,
        work: F,
    ) -> F::Output {
        match counters {
            Some(c) => INVOCATION.scope(c, work).await,
            None => work.await,
        }
    }

    /// The current window's counters, without resetting them.
    pub fn window(&self, request_id: &str) -> Stats {
        self.window.snapshot(request_id)
    }

    /// Ends the current window: its counters, reset.
    pub fn take_window(&self, request_id: &str) -> Stats {
        self.window.take(request_id)
    }

    /// Everything since start.
    pub fn totals(&self) -> Stats {
        self.totals.snapshot("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_come_from_the_code() {
        assert_eq!(sqlstate_class("23505"), "23");
        assert_eq!(sqlstate_class("08P01"), "08");
        assert_eq!(sqlstate_class(""), "XX");
        assert_eq!(sqlstate_class("2350"), "XX");
        assert_eq!(sqlstate_class("2a505"), "XX");
    }

    #[tokio::test]
    async fn events_reach_the_window_the_totals_and_the_scoped_invocation() {
        let meter = Meter::new(2);
        meter.add(Event::ConnectionCreated);
        let inv = meter.invocation("r1");
        Meter::scoped(Some(inv.clone()), async {
            meter.add(Event::Query {
                rows: 3,
                time: Duration::from_micros(250),
            });
            meter.add(Event::Error("23505"));
            meter.add(Event::Error("23503"));
        })
        .await;
        let s = meter.invocation("r1").snapshot("r1");
        assert_eq!((s.queries, s.rows, s.database_time_us), (1, 3, 250));
        assert_eq!(s.connections_created, 0);
        assert_eq!(s.errors, vec![("23".to_owned(), 2)]);

        let w = meter.take_window("");
        assert_eq!((w.queries, w.connections_created), (1, 1));
        assert_eq!(meter.window("").queries, 0, "taking resets the window");
        assert_eq!(meter.totals().queries, 1, "totals are never reset");
    }

    #[test]
    fn forgotten_invocations_start_again_from_zero() {
        let meter = Meter::new(1);
        Meter::invocation(&meter, "a");
        let b = meter.invocation("b");
        b.add(Event::CacheHit);
        assert_eq!(meter.invocation("b").snapshot("b").cache_hits, 1);
        assert_eq!(meter.invocation("a").snapshot("a").cache_hits, 0);
    }
}
