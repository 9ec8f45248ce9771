//! The state store: keys and opaque values that function code reads and writes, kept for the life
//! of the execution environment, bounded by a byte budget with least recently used eviction.
//!
//! Values can hold secrets (tokens, idempotency records): `Debug` shows sizes and counts only,
//! and nothing here logs a key or a value.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use super::lru::{ByteLru, TooLarge};

/// The store.
pub struct Store {
    map: ByteLru<String, Bytes>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.map.len())
            .field("used_bytes", &self.map.used())
            .field("budget_bytes", &self.map.budget())
            .finish()
    }
}

fn expiry(now_ms: u64, ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|t| now_ms.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)))
}

impl Store {
    /// An empty store holding at most `budget` bytes (keys, values and per-entry overhead).
    pub fn new(budget: usize) -> Store {
        Store {
            map: ByteLru::new(budget),
        }
    }

    /// Live entries and expired ones not yet dropped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes charged against the budget.
    pub fn used(&self) -> usize {
        self.map.used()
    }

    /// Entries evicted to make room so far.
    pub fn evicted(&self) -> u64 {
        self.map.evicted()
    }

    /// The value of `key`, unless it is absent or expired at `now_ms`.
    pub fn get(&mut self, key: &str, now_ms: u64) -> Option<Bytes> {
        self.map.get(&key.to_owned(), now_ms).cloned()
    }

    /// Writes `key`, replacing any value, evicting least recently used entries to make room.
    pub fn put(
        &mut self,
        key: String,
        value: &[u8],
        ttl: Option<Duration>,
        now_ms: u64,
    ) -> Result<(), TooLarge> {
        let size = key.len() + value.len();
        // A copy: the value arrived as a slice of a socket read buffer, which it would otherwise
        // keep alive whole, uncounted.
        let value = Bytes::copy_from_slice(value);
        self.map.insert(key, value, size, expiry(now_ms, ttl))
    }

    /// Removes `key`; whether a live value was there.
    pub fn delete(&mut self, key: &str, now_ms: u64) -> bool {
        self.map.remove_live(&key.to_owned(), now_ms).is_some()
    }

    /// Writes `new` (or deletes, for `None`) only if the key's live value is `expected` (or the
    /// key is absent, for `None`). Whether it did; a value over the budget is an error and
    /// changes nothing.
    pub fn compare_and_set(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        ttl: Option<Duration>,
        now_ms: u64,
    ) -> Result<bool, TooLarge> {
        let current = self.get(key, now_ms);
        if current.as_deref() != expected {
            return Ok(false);
        }
        match new {
            Some(v) => self.put(key.to_owned(), v, ttl, now_ms)?,
            None => {
                self.delete(key, now_ms);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::lru::ENTRY_OVERHEAD;
    use super::*;

    const SECOND: Option<Duration> = Some(Duration::from_secs(1));

    #[test]
    fn get_put_delete() {
        let mut s = Store::new(1 << 20);
        assert_eq!(s.get("k", 0), None);
        s.put("k".into(), b"v1", None, 0).unwrap();
        assert_eq!(s.get("k", 0).as_deref(), Some(&b"v1"[..]));
        s.put("k".into(), b"v2", None, 0).unwrap();
        assert_eq!(s.get("k", u64::MAX).as_deref(), Some(&b"v2"[..]));
        assert!(s.delete("k", 0));
        assert!(!s.delete("k", 0));
        assert_eq!(s.get("k", 0), None);
    }

    #[test]
    fn ttl_expires_on_the_given_clock() {
        let mut s = Store::new(1 << 20);
        s.put("token".into(), b"t", SECOND, 10_000).unwrap();
        assert!(s.get("token", 10_999).is_some());
        assert_eq!(s.get("token", 11_000), None);
        s.put("token".into(), b"t", SECOND, 10_000).unwrap();
        assert!(!s.delete("token", 11_000), "an expired key is not there");
    }

    #[test]
    fn compare_and_set() {
        let mut s = Store::new(1 << 20);
        // Absent → set only when absence is expected.
        assert!(!s
            .compare_and_set("n", Some(b"0"), Some(b"1"), None, 0)
            .unwrap());
        assert!(s.compare_and_set("n", None, Some(b"1"), None, 0).unwrap());
        assert!(!s.compare_and_set("n", None, Some(b"9"), None, 0).unwrap());
        assert!(s
            .compare_and_set("n", Some(b"1"), Some(b"2"), None, 0)
            .unwrap());
        assert_eq!(s.get("n", 0).as_deref(), Some(&b"2"[..]));
        // Delete by CAS.
        assert!(s.compare_and_set("n", Some(b"2"), None, None, 0).unwrap());
        assert_eq!(s.get("n", 0), None);
        // An expired key counts as absent.
        s.put("e".into(), b"x", SECOND, 0).unwrap();
        assert!(s
            .compare_and_set("e", None, Some(b"y"), None, 5_000)
            .unwrap());
    }

    #[test]
    fn budget_evicts_and_refuses_the_impossible() {
        let entry = ENTRY_OVERHEAD + 2 + 8;
        let mut s = Store::new(3 * entry);
        for k in ["k1", "k2", "k3", "k4"] {
            s.put(k.into(), b"12345678", None, 0).unwrap();
        }
        assert_eq!(s.get("k1", 0), None, "the oldest went");
        assert_eq!(s.len(), 3);
        assert_eq!(s.evicted(), 1);
        let e = s.put("big".into(), &[0; 4 * 1024], None, 0).unwrap_err();
        assert_eq!(e.budget, 3 * entry);
        assert_eq!(s.len(), 3, "a refused put evicts nothing");
        let e = s
            .compare_and_set("k2", Some(b"12345678"), Some(&[0; 4096]), None, 0)
            .unwrap_err();
        assert!(e.size > e.budget);
        assert_eq!(s.get("k2", 0).as_deref(), Some(&b"12345678"[..]));
    }

    #[test]
    fn debug_shows_no_keys_or_values() {
        let mut s = Store::new(1 << 20);
        s.put("api-token-key".into(), b"hunter2-secret", None, 0)
            .unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("api-token"),
            "{shown}"
        );
        assert!(shown.contains("entries: 1"), "{shown}");
    }
}
