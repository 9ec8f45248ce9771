//! Time bounds on a session: its idle timeout, and the client's deadline for its statements.
//!
//! A deadline arrives as wall-clock milliseconds (Lambda's `deadline_ms`) and is turned into a
//! tokio instant when a statement starts. When it passes with the statement still running, the
//! statement is cancelled on the server with a CancelRequest, the only way to stop a running
//! statement from outside it:
//! <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-CANCELING-REQUESTS>.
//!
//! A server that has stopped answering (stopped, overloaded, cut off) answers neither the
//! statement nor the CancelRequest, which needs a new connection to the postmaster. So both
//! are bounded together by `WARMPOOL_RESET_TIMEOUT_MS` from the deadline: past it the client
//! gets its 57014 and the connection is closed, whatever the server does.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use warmpool::protocol::WireError;

use crate::backend::CancelToken;
use crate::conn::PgConn;
use crate::errors;
use crate::pool::Pool;

/// A deadline given in milliseconds since the Unix epoch.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The monotonic instant of a wall-clock deadline: now, if it has passed.
pub fn instant(deadline: SystemTime) -> Instant {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}

/// Sleeps until `at`, or forever when there is none.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Returns once `limit` has passed while the process ran, or never when there is no limit.
///
/// Time while the environment is frozen does not count: the monotonic clock goes on during a
/// freeze, so a plain timer would close every idle session on the first thaw, racing the
/// function, which is about to use them. Counted in ticks instead, each worth at most twice
/// its length, a freeze of any length costs at most one tick of the limit.
pub async fn idle_for(limit: Option<Duration>) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    let tick = limit.min(Duration::from_secs(1));
    let mut counted = Duration::ZERO;
    while counted < limit {
        let started = Instant::now();
        tokio::time::sleep(tick).await;
        counted += started.elapsed().min(tick * 2);
    }
}

/// Runs `work` unless `deadline` passes first (`None` then): a wait for a pooled connection
/// or for a connect, which must end at the deadline as a statement does.
pub async fn within<T>(deadline: Option<SystemTime>, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        out = work => Some(out),
        _ = sleep_until(deadline.map(instant)) => None,
    }
}

/// Bounds one statement by the session's deadline.
pub struct Guard<'a> {
    pool: &'a Pool,
    token: CancelToken,
    at: Option<Instant>,
    /// The setting that bounds the statement ahead of the deadline, if one does.
    limit: Option<&'static str>,
    budget: Duration,
    hit: AtomicBool,
    /// The CancelRequest did not go out within the budget: it may still reach the server and
    /// cancel whatever the connection runs next, so the connection must be closed.
    unsent: AtomicBool,
}

impl<'a> Guard<'a> {
    /// A guard for a statement on `client`, cancelled through `pool` at `deadline`; `budget`
    /// bounds the wait for the server to confirm the cancel.
    pub fn new(
        pool: &'a Pool,
        token: &CancelToken,
        deadline: Option<SystemTime>,
        budget: Duration,
    ) -> Guard<'a> {
        Guard {
            pool,
            token: token.clone(),
            at: deadline.map(instant),
            limit: None,
            budget,
            hit: AtomicBool::new(false),
            unsent: AtomicBool::new(false),
        }
    }

    /// Bounds the statement by `limit` from now as well, named by `setting`, whichever falls
    /// first: a statement the client set no deadline for must still end when the database
    /// holds it (a stalled disk, a standby that stopped confirming).
    pub fn limited(mut self, limit: Duration, setting: &'static str) -> Guard<'a> {
        let at = Instant::now() + limit;
        if self.at.is_none_or(|deadline| at < deadline) {
            self.at = Some(at);
            self.limit = Some(setting);
        }
        self
    }

    /// The setting whose limit fell before the client's deadline, if one did.
    pub fn limit(&self) -> Option<&'static str> {
        self.limit
    }

    /// The token that cancels the statement.
    pub fn token(&self) -> &CancelToken {
        &self.token
    }

    /// When the deadline falls, if there is one.
    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    /// How long the server is given to confirm a cancel (`WARMPOOL_RESET_TIMEOUT_MS`).
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Whether the deadline passed while the statement ran.
    pub fn hit(&self) -> bool {
        self.hit.load(Ordering::Relaxed)
    }

    /// Runs `work`, cancelling it on the server if the deadline passes first.
    pub async fn run<T>(&self, work: impl Future<Output = T>) -> Result<T, WireError> {
        let mut work = std::pin::pin!(work);
        tokio::select! {
            biased;
            out = &mut work => return Ok(out),
            _ = sleep_until(self.at) => {}
        }
        self.cancel(work).await
    }

    /// The deadline has passed with `work` still running: asks the server to cancel it, then
    /// waits, within the budget, for the statement to end with the server's 57014. An error
    /// means the server did not answer, and the connection must be closed.
    ///
    /// The CancelRequest goes out beside the wait, both within the same budget: a postmaster
    /// that does not answer (a stopped or stalled server) cannot hold the client past it.
    pub async fn cancel<T>(&self, work: impl Future<Output = T>) -> Result<T, WireError> {
        self.hit.store(true, Ordering::Relaxed);
        match self.limit {
            None => tracing::info!(
                "the session's deadline passed mid-statement; cancelling it on the server"
            ),
            Some(setting) => tracing::warn!(
                setting,
                "a statement ran past its limit; cancelling it on the server"
            ),
        }
        let until = Instant::now() + self.budget;
        let (sent, ended) = tokio::join!(
            tokio::time::timeout_at(until, self.pool.cancel(&self.token)),
            tokio::time::timeout_at(until, work),
        );
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "CancelRequest failed")
            }
            Err(_) => {
                self.unsent.store(true, Ordering::Relaxed);
                tracing::warn!(
                    timeout_ms = self.budget.as_millis() as u64,
                    "the database did not take the CancelRequest within \
                     WARMPOOL_RESET_TIMEOUT_MS; the connection will be closed"
                );
            }
        }
        if ended.is_err() {
            tracing::warn!(
                timeout_ms = self.budget.as_millis() as u64,
                "the database did not end the cancelled statement within \
                 WARMPOOL_RESET_TIMEOUT_MS; closing its connection"
            );
        }
        ended.map_err(|_| errors::deadline_unconfirmed(self.budget))
    }

    /// After the deadline cancelled a statement that has ended: whether its connection may be
    /// used again, with no cancel left to land on its next statement. Bounded by the budget;
    /// true when the deadline did not pass.
    pub async fn settled(&self, conn: &mut PgConn) -> bool {
        if !self.hit() {
            return true;
        }
        if self.unsent.load(Ordering::Relaxed) {
            return false;
        }
        tokio::time::timeout(self.budget, conn.settle_after_cancel())
            .await
            .unwrap_or(false)
    }
}
