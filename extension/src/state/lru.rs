//! A map bounded by the bytes its entries take rather than by their number, least recently used
//! evicted first, with an optional expiry per entry. Time is passed in (wall-clock milliseconds)
//! so the structure has no clock of its own and tests drive it exactly.

use std::hash::Hash;

use lru::LruCache;

/// What each entry is charged beyond its own bytes: the map's slot, the key's and value's
/// headers and the LRU links, rounded up.
pub const ENTRY_OVERHEAD: usize = 96;

/// An entry larger than the whole budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an entry of {size} bytes is larger than the budget of {budget} bytes")]
pub struct TooLarge {
    /// The entry's charged size.
    pub size: usize,
    /// The budget.
    pub budget: usize,
}

struct Slot<V> {
    value: V,
    size: usize,
    expires_ms: Option<u64>,
}

/// The bounded map.
pub struct ByteLru<K: Hash + Eq, V> {
    map: LruCache<K, Slot<V>>,
    used: usize,
    budget: usize,
    evicted: u64,
}

impl<K: Hash + Eq, V> ByteLru<K, V> {
    /// An empty map that holds at most `budget` bytes.
    pub fn new(budget: usize) -> Self {
        ByteLru {
            map: LruCache::unbounded(),
            used: 0,
            budget,
            evicted: 0,
        }
    }

    /// Entries held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes charged.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Entries evicted to make room so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The live value of `key`, marked as just used; an expired entry is dropped.
    pub fn get(&mut self, key: &K, now_ms: u64) -> Option<&mut V> {
        let expired = match self.map.peek(key) {
            None => return None,
            Some(slot) => slot.expires_ms.is_some_and(|e| e <= now_ms),
        };
        if expired {
            self.remove(key);
            return None;
        }
        self.map.get_mut(key).map(|s| &mut s.value)
    }

    /// Stores `value` under `key`, charged `size` bytes (plus [`ENTRY_OVERHEAD`]), evicting the
    /// least recently used entries until it fits. Nothing changes if it can never fit.
    pub fn insert(
        &mut self,
        key: K,
        value: V,
        size: usize,
        expires_ms: Option<u64>,
    ) -> Result<(), TooLarge> {
        let size = size.saturating_add(ENTRY_OVERHEAD);
        if size > self.budget {
            return Err(TooLarge {
                size,
                budget: self.budget,
            });
        }
        self.remove(&key);
        while self.used + size > self.budget {
            match self.map.pop_lru() {
                Some((_, slot)) => {
                    self.used -= slot.size;
                    self.evicted += 1;
                }
                None => break,
            }
        }
        self.used += size;
        self.map.put(
            key,
            Slot {
                value,
                size,
                expires_ms,
            },
        );
        Ok(())
    }

    /// Removes `key`; its value if it was there and live at `now_ms`.
    pub fn remove_live(&mut self, key: &K, now_ms: u64) -> Option<V> {
        let slot = self.map.pop(key)?;
        self.used -= slot.size;
        match slot.expires_ms {
            Some(e) if e <= now_ms => None,
            _ => Some(slot.value),
        }
    }

    fn remove(&mut self, key: &K) {
        if let Some(slot) = self.map.pop(key) {
            self.used -= slot.size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let mut m = ByteLru::new(3 * (ENTRY_OVERHEAD + 10));
        for k in ["a", "b", "c"] {
            m.insert(k, k, 10, None).unwrap();
        }
        assert_eq!(m.used(), 3 * (ENTRY_OVERHEAD + 10));
        // Using "a" makes "b" the least recently used.
        assert!(m.get(&"a", 0).is_some());
        m.insert("d", "d", 10, None).unwrap();
        assert!(m.get(&"b", 0).is_none(), "b was evicted");
        assert!(m.get(&"a", 0).is_some() && m.get(&"c", 0).is_some());
        assert_eq!(m.evicted(), 1);
        // One big entry pushes out as many as it needs.
        m.insert("big", "big", 2 * ENTRY_OVERHEAD + 20, None)
            .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m.evicted(), 4);
    }

    #[test]
    fn an_entry_over_the_budget_changes_nothing() {
        let mut m = ByteLru::new(ENTRY_OVERHEAD + 10);
        m.insert("a", 1, 10, None).unwrap();
        let e = m.insert("b", 2, 11, None).unwrap_err();
        assert_eq!(
            e,
            TooLarge {
                size: ENTRY_OVERHEAD + 11,
                budget: ENTRY_OVERHEAD + 10
            }
        );
        assert_eq!(m.get(&"a", 0), Some(&mut 1));
    }

    #[test]
    fn expiry_is_at_the_given_time() {
        let mut m = ByteLru::new(1 << 20);
        m.insert("a", 1, 1, Some(100)).unwrap();
        assert!(m.get(&"a", 99).is_some());
        assert!(m.get(&"a", 100).is_none());
        assert_eq!(m.used(), 0, "the expired entry was dropped");
        m.insert("b", 2, 1, Some(100)).unwrap();
        assert_eq!(m.remove_live(&"b", 100), None);
        assert!(m.is_empty());
    }

    #[test]
    fn replacing_a_key_recharges_it() {
        let mut m = ByteLru::new(1 << 20);
        m.insert("a", 1, 100, None).unwrap();
        m.insert("a", 2, 10, None).unwrap();
        assert_eq!(m.used(), ENTRY_OVERHEAD + 10);
        assert_eq!(m.len(), 1);
    }
}
