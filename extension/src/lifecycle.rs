//! The extension's life in a Lambda execution environment, as an explicit state machine:
//! Init → Ready → Draining → Closed.
//!
//! <https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html> describes the
//! phases: Init ends when every extension has called `/extension/event/next`; each INVOKE follows
//! a thaw on classic Lambda; SHUTDOWN gives the extensions what is left of a 2,000 ms budget.
//! This module decides; `lambda.rs` does the I/O.

use std::time::Duration;

/// Where the extension is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Registered; socket bound; warm connections opening.
    Init,
    /// Serving invocations.
    Ready,
    /// SHUTDOWN received: no new sessions, transactions rolling back, connections closing.
    Draining,
    /// Every connection closed; the process may exit.
    Closed,
}

/// The invocation in progress, as the INVOKE event described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The request id.
    pub request_id: String,
    /// When the function times out, in ms since the Unix epoch.
    pub deadline_ms: u64,
}

/// What the driver should do after an INVOKE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInvoke {
    /// Nothing: the environment was busy until just now.
    Serve,
    /// The wall clock jumped since the last activity, so the environment was frozen: check the
    /// idle connections now, in the background.
    CheckConnections,
    /// Not Ready (an INVOKE during Draining is ignored).
    Ignore,
}

/// The lifecycle state.
#[derive(Debug)]
pub struct Lifecycle {
    phase: Phase,
    invocation: Option<Invocation>,
    invocations: u64,
    check_after_idle: Duration,
    shutdown_timeout: Duration,
}

/// Time kept back from the SHUTDOWN deadline for the process to exit.
const EXIT_MARGIN: Duration = Duration::from_millis(100);

/// The least time given to closing connections, even with no deadline (0) or one already past:
/// enough for a Terminate to go out on each idle connection.
pub const MIN_CLOSE_BUDGET: Duration = Duration::from_millis(100);

impl Lifecycle {
    /// A lifecycle in Init. `check_after_idle` is the idle gap after which connections are
    /// checked; `shutdown_timeout` bounds closing them.
    pub fn new(check_after_idle: Duration, shutdown_timeout: Duration) -> Lifecycle {
        Lifecycle {
            phase: Phase::Init,
            invocation: None,
            invocations: 0,
            check_after_idle,
            shutdown_timeout,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The invocation in progress (classic Lambda: the last INVOKE).
    pub fn invocation(&self) -> Option<&Invocation> {
        self.invocation.as_ref()
    }

    /// INVOKEs seen.
    pub fn invocations(&self) -> u64 {
        self.invocations
    }

    /// Init is over: warm connections are open, or failed and will be retried on demand.
    pub fn ready(&mut self) {
        if self.phase == Phase::Init {
            self.phase = Phase::Ready;
        }
    }

    /// An INVOKE arrived at wall-clock `now_ms`; the last request was served at
    /// `last_activity_ms` (both ms since the Unix epoch; the wall clock, because a frozen
    /// environment's monotonic clock is not guaranteed to advance).
    pub fn on_invoke(
        &mut self,
        invocation: Invocation,
        now_ms: u64,
        last_activity_ms: u64,
    ) -> OnInvoke {
        if self.phase != Phase::Ready && self.phase != Phase::Init {
            return OnInvoke::Ignore;
        }
        self.invocations += 1;
        self.invocation = Some(invocation);
        let gap = Duration::from_millis(now_ms.saturating_sub(last_activity_ms));
        if gap >= self.check_after_idle {
            OnInvoke::CheckConnections
        } else {
            OnInvoke::Serve
        }
    }

    /// SHUTDOWN arrived at `now_ms` with `deadline_ms`: moves to Draining and returns the time
    /// allowed for closing connections, which is the configured bound or what the deadline
    /// leaves, whichever is shorter. `None` if already draining or closed.
    pub fn on_shutdown(&mut self, now_ms: u64, deadline_ms: u64) -> Option<Duration> {
        match self.phase {
            Phase::Draining | Phase::Closed => None,
            Phase::Init | Phase::Ready => {
                self.phase = Phase::Draining;
                let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms))
                    .saturating_sub(EXIT_MARGIN);
                // A deadline of 0 (an emulator's SHUTDOWN, a signal) or one already past gives
                // no time at all: connections still get a Terminate within a small floor.
                Some(self.shutdown_timeout.min(left.max(MIN_CLOSE_BUDGET)))
            }
        }
    }

    /// Every connection is closed.
    pub fn closed(&mut self) {
        if self.phase == Phase::Draining {
            self.phase = Phase::Closed;
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(id: &str) -> Invocation {
        Invocation {
            request_id: id.into(),
            deadline_ms: 0,
        }
    }

    #[test]
    fn init_ready_draining_closed() {
        let mut l = Lifecycle::new(Duration::from_secs(1), Duration::from_millis(500));
        assert_eq!(l.phase(), Phase::Init);
        l.ready();
        assert_eq!(l.phase(), Phase::Ready);
        let budget = l.on_shutdown(10_000, 12_000).unwrap();
        assert_eq!(budget, Duration::from_millis(500));
        assert_eq!(l.phase(), Phase::Draining);
        assert_eq!(
            l.on_shutdown(10_000, 12_000),
            None,
            "a second SHUTDOWN is ignored"
        );
        assert_eq!(
            l.on_invoke(invocation("late"), 10_001, 10_000),
            OnInvoke::Ignore
        );
        l.closed();
        assert_eq!(l.phase(), Phase::Closed);
    }

    #[test]
    fn a_gap_means_a_thaw() {
        let mut l = Lifecycle::new(Duration::from_secs(1), Duration::from_millis(500));
        l.ready();
        assert_eq!(l.on_invoke(invocation("a"), 5_000, 4_500), OnInvoke::Serve);
        assert_eq!(
            l.on_invoke(invocation("b"), 9_000, 5_000),
            OnInvoke::CheckConnections
        );
        assert_eq!(l.invocation().unwrap().request_id, "b");
        assert_eq!(l.invocations(), 2);
        // A wall clock that stepped back is not a gap.
        assert_eq!(l.on_invoke(invocation("c"), 1_000, 5_000), OnInvoke::Serve);
    }

    #[test]
    fn shutdown_budget_respects_the_deadline() {
        let mut l = Lifecycle::new(Duration::from_secs(1), Duration::from_millis(500));
        assert_eq!(
            l.on_shutdown(10_000, 10_300),
            Some(Duration::from_millis(200))
        );
        let mut l = Lifecycle::new(Duration::from_secs(1), Duration::from_millis(500));
        assert_eq!(l.on_shutdown(10_000, 9_000), Some(MIN_CLOSE_BUDGET));
    }

    #[test]
    fn no_deadline_still_leaves_time_to_close() {
        let mut l = Lifecycle::new(Duration::from_secs(1), Duration::from_millis(500));
        l.ready();
        assert_eq!(l.on_shutdown(10_000, 0), Some(MIN_CLOSE_BUDGET));
        let mut l = Lifecycle::new(Duration::from_secs(1), Duration::from_millis(50));
        assert_eq!(
            l.on_shutdown(10_000, 0),
            Some(Duration::from_millis(50)),
            "never more than WARMPOOL_SHUTDOWN_TIMEOUT_MS"
        );
    }
}
