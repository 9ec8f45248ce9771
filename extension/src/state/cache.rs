//! The query result cache: results of read statements, keyed on the statement and its parameter
//! bytes, shared by every session, bounded by a byte budget with least recently used eviction.
//!
//! Each result is fresh for its time to live. Past that, within its stale-while-revalidate
//! window, it is still served while one refresh runs in the background (the model of HTTP's
//! `stale-while-revalidate`, RFC 5861, and of Prisma Accelerate's `cacheStrategy { ttl, swr }`);
//! past the window it is gone. The key holds parameter values, so `Debug` shows no key.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use warmpool::protocol::{CacheOutcome, RawRow};

use super::lru::{ByteLru, TooLarge};

/// A statement's result as it was read from the database.
#[derive(Debug)]
pub struct CachedResult {
    /// The rows.
    pub rows: Vec<RawRow>,
    /// The rows the statement returned or affected.
    pub affected: u64,
}

impl CachedResult {
    /// Bytes the rows take, as on the wire.
    pub fn size(&self) -> usize {
        self.rows.iter().map(RawRow::encoded_len).sum()
    }
}

struct Entry {
    result: Arc<CachedResult>,
    fresh_until_ms: u64,
    refreshing: bool,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A fresh result.
    Hit(Arc<CachedResult>),
    /// A stale result inside its window; `refresh` is true for the one caller that must start the
    /// refresh.
    Stale {
        /// The stale result, to serve now.
        result: Arc<CachedResult>,
        /// Whether this caller starts the refresh.
        refresh: bool,
    },
    /// Nothing usable.
    Miss,
}

impl Lookup {
    /// The outcome reported to the client.
    pub fn outcome(&self) -> CacheOutcome {
        match self {
            Lookup::Hit(_) => CacheOutcome::Hit,
            Lookup::Stale { .. } => CacheOutcome::Stale,
            Lookup::Miss => CacheOutcome::Miss,
        }
    }
}

/// The cache.
pub struct QueryCache {
    map: ByteLru<Bytes, Entry>,
}

impl fmt::Debug for QueryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryCache")
            .field("entries", &self.map.len())
            .field("used_bytes", &self.map.used())
            .field("budget_bytes", &self.map.budget())
            .finish()
    }
}

impl QueryCache {
    /// An empty cache holding at most `budget` bytes.
    pub fn new(budget: usize) -> QueryCache {
        QueryCache {
            map: ByteLru::new(budget),
        }
    }

    /// Results held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Results evicted to make room so far.
    pub fn evicted(&self) -> u64 {
        self.map.evicted()
    }

    /// Looks `key` up at `now_ms`.
    pub fn lookup(&mut self, key: &Bytes, now_ms: u64) -> Lookup {
        let Some(entry) = self.map.get(key, now_ms) else {
            return Lookup::Miss;
        };
        if now_ms < entry.fresh_until_ms {
            return Lookup::Hit(entry.result.clone());
        }
        let refresh = !entry.refreshing;
        entry.refreshing = true;
        Lookup::Stale {
            result: entry.result.clone(),
            refresh,
        }
    }

    /// Stores a result read at `now_ms`: fresh for `ttl_ms`, then servable stale for `swr_ms`.
    pub fn insert(
        &mut self,
        key: Bytes,
        result: Arc<CachedResult>,
        ttl_ms: u64,
        swr_ms: u64,
        now_ms: u64,
    ) -> Result<(), TooLarge> {
        let size = key.len() + result.size();
        let fresh_until_ms = now_ms.saturating_add(ttl_ms);
        let entry = Entry {
            result,
            fresh_until_ms,
            refreshing: false,
        };
        self.map.insert(
            key,
            entry,
            size,
            Some(fresh_until_ms.saturating_add(swr_ms)),
        )
    }

    /// A background refresh failed: the next stale lookup may start another.
    pub fn refresh_failed(&mut self, key: &Bytes, now_ms: u64) {
        if let Some(entry) = self.map.get(key, now_ms) {
            entry.refreshing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(marker: u8) -> Arc<CachedResult> {
        Arc::new(CachedResult {
            rows: vec![RawRow {
                values: vec![Some(Bytes::from(vec![marker; 10]))],
            }],
            affected: 1,
        })
    }

    fn key(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    #[test]
    fn miss_hit_expiry() {
        let mut c = QueryCache::new(1 << 20);
        assert!(matches!(c.lookup(&key("q"), 0), Lookup::Miss));
        c.insert(key("q"), result(1), 1_000, 0, 0).unwrap();
        let Lookup::Hit(r) = c.lookup(&key("q"), 999) else {
            panic!("fresh")
        };
        assert_eq!(r.rows[0].values[0].as_deref(), Some(&[1; 10][..]));
        assert!(matches!(c.lookup(&key("q"), 1_000), Lookup::Miss));
        assert!(c.is_empty(), "the expired result was dropped");
    }

    #[test]
    fn keys_differ_by_parameters() {
        let mut c = QueryCache::new(1 << 20);
        c.insert(key("q|1"), result(1), 1_000, 0, 0).unwrap();
        assert!(matches!(c.lookup(&key("q|2"), 0), Lookup::Miss));
    }

    #[test]
    fn stale_while_revalidate_refreshes_once() {
        let mut c = QueryCache::new(1 << 20);
        c.insert(key("q"), result(1), 1_000, 500, 0).unwrap();
        let Lookup::Stale { refresh, .. } = c.lookup(&key("q"), 1_200) else {
            panic!("stale")
        };
        assert!(refresh, "the first stale reader refreshes");
        let Lookup::Stale { refresh, .. } = c.lookup(&key("q"), 1_300) else {
            panic!("stale")
        };
        assert!(!refresh, "only one refresh at a time");
        c.refresh_failed(&key("q"), 1_300);
        assert!(matches!(
            c.lookup(&key("q"), 1_400),
            Lookup::Stale { refresh: true, .. }
        ));
        // The refresh lands: fresh again.
        c.insert(key("q"), result(2), 1_000, 500, 1_400).unwrap();
        assert!(matches!(c.lookup(&key("q"), 1_401), Lookup::Hit(_)));
        // Past the window: gone.
        assert!(matches!(c.lookup(&key("q"), 2_900), Lookup::Miss));
    }

    #[test]
    fn eviction_is_least_recently_used() {
        let one = super::super::lru::ENTRY_OVERHEAD + 2 + result(0).size();
        let mut c = QueryCache::new(2 * one);
        c.insert(key("q1"), result(1), 1_000, 0, 0).unwrap();
        c.insert(key("q2"), result(2), 1_000, 0, 0).unwrap();
        assert!(matches!(c.lookup(&key("q1"), 0), Lookup::Hit(_)));
        c.insert(key("q3"), result(3), 1_000, 0, 0).unwrap();
        assert!(matches!(c.lookup(&key("q2"), 0), Lookup::Miss));
        assert!(matches!(c.lookup(&key("q1"), 0), Lookup::Hit(_)));
        assert_eq!(c.evicted(), 1);
        let huge = Arc::new(CachedResult {
            rows: vec![RawRow {
                values: vec![Some(Bytes::from(vec![0; 4 * one]))],
            }],
            affected: 1,
        });
        assert!(c.insert(key("q4"), huge, 1_000, 0, 0).is_err());
        assert_eq!(c.len(), 2);
    }
}
