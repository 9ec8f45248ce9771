//! The wall clock that signing and credential expiry read.
//!
//! Expiry is checked against the wall clock, never a monotonic one: on Lambda the environment is
//! frozen between invocations, and whether a monotonic clock advances across a freeze is not
//! something to rely on, while a token's expiry is judged by AWS against real time. A token that
//! was fresh before a two-hour freeze must read as expired after it.
//!
//! Dependencies come in as arguments: tests pass a [`ManualClock`] to sign for a fixed time or
//! to jump past a token's lifetime.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: SystemTime) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(at)))
    }

    /// Moves the clock forward by `by` (a freeze, say).
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }

    /// Sets the clock, backwards too.
    pub fn set(&self, at: SystemTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether something obtained at `at` is still within `max_age` at `now`. A clock that went
/// backwards (an NTP step) makes the age unknown, which counts as too old: fetching again is
/// always safe, using a credential past its expiry is not.
pub(crate) fn fresh(at: SystemTime, now: SystemTime, max_age: Duration) -> bool {
    match now.duration_since(at) {
        Ok(age) => age < max_age,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ten = Duration::from_secs(10);
        assert!(fresh(t, t, ten));
        assert!(fresh(t, t + Duration::from_secs(9), ten));
        assert!(!fresh(t, t + ten, ten));
        assert!(
            !fresh(t, t - Duration::from_secs(1), ten),
            "clock went back"
        );
        let clock = ManualClock::new(t);
        clock.advance(ten);
        assert_eq!(clock.now(), t + ten);
    }
}
