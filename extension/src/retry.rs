//! Retrying a connection the database refused: jittered exponential backoff, one attempt at a
//! time, within a budget per request.
//!
//! Only opening a connection is retried, never a statement: a statement whose connection failed
//! may have run, and running it again could apply a write twice. A connection attempt has no
//! effect on the database, so it is safe to repeat. While the database refuses connections
//! (restarting, `too many clients`, a network fault), one request at a time makes an attempt;
//! the others wait for its outcome rather than each trying at once, and after a failure nobody
//! tries again until the backoff has passed. However many requests are waiting, a down database
//! sees at most one connection attempt per backoff step:
//! <https://aws.amazon.com/builders-library/timeouts-retries-and-backoff-with-jitter/>.
//!
//! One request, one budget. A request's budget runs from when it reached the extension, not from
//! when its turn came: a request the client pipelined behind another (the client's Prepare and
//! Execute of a statement it has not described go out together) waited while the first spent
//! the budget, and once the budget has run out, a request that arrived before the last refusal
//! gets that refusal at once instead of trying again.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Backoff settings.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The first delay after a failure; each further failure doubles it.
    pub base: Duration,
    /// The largest delay.
    pub cap: Duration,
    /// How long one request keeps trying before its error goes to the client; zero for no
    /// retries.
    pub budget: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// No attempt before this instant.
    not_before: Option<Instant>,
    /// An attempt is under way.
    in_flight: bool,
    /// Failures in a row.
    failures: u32,
    /// The last failure, for requests whose budget ran out before they could try.
    last_error: Option<String>,
    /// When the last failure was recorded.
    failed_at: Option<Instant>,
}

/// The shared backoff state of one pool.
#[derive(Debug)]
pub struct Backoff {
    policy: Policy,
    state: Mutex<State>,
    changed: Notify,
}

/// The right to make one connection attempt; report its outcome with [`Backoff::succeeded`] or
/// [`Backoff::failed`]. Dropped unreported (the request was cancelled), it lets the next waiter
/// try.
#[derive(Debug)]
pub struct Permit<'a>(Option<&'a Backoff>);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.lock().in_flight = false;
            b.changed.notify_waiters();
        }
    }
}

impl Backoff {
    /// A backoff with no failures yet.
    pub fn new(policy: Policy) -> Backoff {
        Backoff {
            policy,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    /// The settings.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the database refused the last attempt.
    pub fn failing(&self) -> bool {
        self.lock().failures > 0
    }

    /// Waits for the turn to make an attempt for a request that arrived at `arrived`, until
    /// `until`; `Err` with the last failure if the turn did not come in time, or if the budget
    /// is spent and the request arrived before that failure (trying again would give it a
    /// second budget). A request that arrived after it may always try once when the backoff
    /// allows, so a budget of zero still lets the database be tried again.
    pub async fn permit(&self, arrived: Instant, until: Instant) -> Result<Permit<'_>, String> {
        loop {
            let notified = self.changed.notified();
            let wake = {
                let mut s = self.lock();
                let now = Instant::now();
                let open = s.not_before.is_none_or(|t| t <= now);
                let spent = now >= until && s.failed_at.is_some_and(|t| arrived <= t);
                if open && !s.in_flight && !spent {
                    s.in_flight = true;
                    return Ok(Permit(Some(self)));
                }
                if now >= until {
                    return Err(s
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "the database is refusing connections".into()));
                }
                match s.not_before {
                    Some(t) if !s.in_flight => t.min(until),
                    _ => until,
                }
            };
            let _ = tokio::time::timeout_at(wake, notified).await;
        }
    }

    /// The attempt succeeded: the database is back.
    pub fn succeeded(&self, mut permit: Permit<'_>) {
        permit.0 = None;
        let mut s = self.lock();
        if s.failures > 0 {
            tracing::info!(
                failures = s.failures,
                "the database accepts connections again"
            );
        }
        *s = State::default();
        drop(s);
        self.changed.notify_waiters();
    }

    /// An attempt made while nothing was known to be wrong failed: starts the backoff, unless
    /// a concurrent attempt already did.
    pub fn first_failure(&self, error: &(dyn std::error::Error + 'static)) {
        let mut s = self.lock();
        if s.failures > 0 {
            return;
        }
        s.failures = 1;
        let delay = delay(self.policy, 1, jitter());
        s.not_before = Some(Instant::now() + delay);
        s.last_error = Some(error.to_string());
        s.failed_at = Some(Instant::now());
        tracing::info!(
            retry_in_ms = delay.as_millis() as u64,
            error = %crate::errors::error_chain(error),
            "the database refused a connection; retrying after a backoff"
        );
        drop(s);
        self.changed.notify_waiters();
    }

    /// The attempt failed: nobody tries again until the next backoff step has passed.
    pub fn failed(&self, mut permit: Permit<'_>, error: &(dyn std::error::Error + 'static)) {
        permit.0 = None;
        let mut s = self.lock();
        s.failures = s.failures.saturating_add(1);
        let delay = delay(self.policy, s.failures, jitter());
        s.not_before = Some(Instant::now() + delay);
        s.in_flight = false;
        s.last_error = Some(error.to_string());
        s.failed_at = Some(Instant::now());
        tracing::info!(
            failures = s.failures,
            retry_in_ms = delay.as_millis() as u64,
            error = %crate::errors::error_chain(error),
            "the database refused a connection; retrying after a backoff"
        );
        drop(s);
        self.changed.notify_waiters();
    }
}

/// The delay after `failures` failures in a row: `base` doubled per failure up to `cap`, of
/// which a random half (`jitter` in [0, 1)) is taken off, so that environments which lost the
/// database together do not come back in step.
pub fn delay(policy: Policy, failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let full = policy
        .base
        .saturating_mul(1u32 << exp)
        .min(policy.cap)
        .max(Duration::from_millis(1));
    full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
}

/// A number in [0, 1), from the standard library's per-process random hash keys.
pub fn jitter() -> f64 {
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::ConnectError;

    const POLICY: Policy = Policy {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(1000),
        budget: Duration::from_millis(3000),
    };

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_takes_at_most_half() {
        assert_eq!(delay(POLICY, 1, 0.0), Duration::from_millis(50));
        assert_eq!(delay(POLICY, 2, 0.0), Duration::from_millis(100));
        assert_eq!(delay(POLICY, 3, 0.0), Duration::from_millis(200));
        assert_eq!(delay(POLICY, 6, 0.0), Duration::from_millis(1000));
        assert_eq!(delay(POLICY, 60, 0.0), Duration::from_millis(1000));
        assert_eq!(
            delay(POLICY, 2, 0.999_999),
            Duration::from_millis(50) + Duration::from_nanos(50)
        );
        for f in 1..40 {
            let d = delay(POLICY, f, jitter());
            assert!(d >= POLICY.base / 2 && d <= POLICY.cap, "{d:?}");
        }
    }

    #[tokio::test]
    async fn one_attempt_at_a_time_and_none_during_the_backoff() {
        let b = Backoff::new(POLICY);
        let arrived = Instant::now();
        let until = arrived + POLICY.budget;
        let first = b.permit(arrived, until).await.unwrap();
        // A second request waits while the first attempt is under way...
        let early = Instant::now() + Duration::from_millis(10);
        assert!(b.permit(arrived, early).await.is_err());
        let refused = ConnectError::Timeout {
            phase: "connecting to the database",
            after: Duration::from_millis(5),
        };
        b.failed(first, &refused);
        assert!(b.failing());
        // ...and, after a failure, until the backoff has passed, with the failure as its error.
        let early = Instant::now() + Duration::from_millis(10);
        let e = b.permit(arrived, early).await.unwrap_err();
        assert!(e.contains("took longer than"), "{e}");
        let second = b.permit(arrived, until).await.unwrap();
        b.succeeded(second);
        assert!(!b.failing());
        let now = Instant::now();
        let third = b.permit(now, now).await.unwrap();
        drop(third);
        let now = Instant::now();
        assert!(b.permit(now, now).await.is_ok());
    }

    #[tokio::test]
    async fn a_request_that_arrived_before_the_last_failure_gets_no_second_budget() {
        let policy = Policy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            budget: Duration::from_millis(20),
        };
        let b = Backoff::new(policy);
        // Two requests arrived together, and the first one's attempt outlasted the budget of
        // both.
        let arrived = Instant::now() - policy.budget * 2;
        let until = arrived + policy.budget;
        let first = b.permit(arrived, until).await.unwrap();
        let refused = ConnectError::Timeout {
            phase: "connecting to the database",
            after: policy.budget * 2,
        };
        b.failed(first, &refused);
        // The one pipelined behind it gets its failure at once, without an attempt of its own...
        let e = b.permit(arrived, until).await.unwrap_err();
        assert!(e.contains("took longer than"), "{e}");
        // ...while a request that arrived after that failure tries once the backoff allows.
        let now = Instant::now();
        assert!(b.permit(now, now + policy.cap * 10).await.is_ok());
    }
}
