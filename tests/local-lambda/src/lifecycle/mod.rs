//! The execution environment's lifecycle: Init, Invoke, freeze/thaw, reset and Shutdown.
//! <https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html>
//!
//! Init, reset, freeze and shutdown run one at a time under `lock`. Invocations run outside it,
//! limited by `slots`: one in classic mode, `concurrency` in LMI mode.

mod freeze;
mod init;
mod invoke;
mod shutdown;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::Semaphore;

use crate::environment::{Generation, Shared};
use crate::events::ShutdownReason;
use crate::process::group_members;
use crate::report::ShutdownReport;

pub(crate) struct Lifecycle {
    pub shared: Arc<Shared>,
    lock: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    slots: Arc<Semaphore>,
}

/// Why Init failed: the reason the reset reports, and a message.
pub(crate) struct InitFailure {
    pub reason: ShutdownReason,
    pub message: String,
}

impl Lifecycle {
    pub fn new(shared: Arc<Shared>) -> Self {
        let slots = shared.config.concurrency.max(1) as usize;
        Self {
            shared,
            lock: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn is_current(&self, gen: &Arc<Generation>) -> bool {
        self.shared.current().is_some_and(|c| Arc::ptr_eq(&c, gen))
    }

    /// Runs Init now if no healthy environment exists (what a cold invocation does first).
    pub async fn init(&self) -> Result<Duration, String> {
        let _guard = self.lock.lock().await;
        if self.is_closed() {
            return Err("the environment has been shut down".into());
        }
        match self.ensure_ready().await {
            Ok((gen, d)) => {
                // After Init, Lambda freezes the environment until an invocation arrives.
                if !gen.lmi && !gen.read(|s| s.frozen) {
                    freeze::freeze(&self.shared, &gen).await;
                }
                Ok(d.unwrap_or_default())
            }
            Err((message, _, _)) => Err(message),
        }
    }

    /// Returns the healthy environment, running Init first if there is none. An environment
    /// that failed while idle (a process died during a freeze) is reset first, as Lambda would
    /// discover and replace it. Call with `lock` held.
    async fn ensure_ready(
        &self,
    ) -> Result<(Arc<Generation>, Option<Duration>), (String, Option<ShutdownReport>, Duration)>
    {
        if let Some(gen) = self.shared.current() {
            if gen.read(|s| s.failure.is_none()) {
                return Ok((gen, None));
            }
            self.reset_locked(&gen, ShutdownReason::Failure).await;
        }
        let started = tokio::time::Instant::now();
        match init::run(&self.shared).await {
            Ok(gen) => Ok((gen, Some(started.elapsed()))),
            Err((gen, failure)) => {
                let report = self.reset_locked(&gen, failure.reason).await;
                Err((failure.message, report, started.elapsed()))
            }
        }
    }

    /// Shuts the environment down with `reason` so the next invocation starts afresh. Does
    /// nothing if another caller already replaced it. Call with `lock` held.
    async fn reset_locked(
        &self,
        gen: &Arc<Generation>,
        reason: ShutdownReason,
    ) -> Option<ShutdownReport> {
        if !self.is_current(gen) {
            return None;
        }
        let report = shutdown::run(&self.shared, gen, reason).await;
        *self.shared.current.lock().unwrap() = None;
        self.shared.resets.lock().unwrap().push(report.clone());
        Some(report)
    }

    async fn reset(&self, gen: &Arc<Generation>, reason: ShutdownReason) -> Option<ShutdownReport> {
        let _guard = self.lock.lock().await;
        self.reset_locked(gen, reason).await
    }

    /// Spindown: the environment's normal end. Later invocations are refused.
    pub async fn shutdown(&self) -> ShutdownReport {
        let _guard = self.lock.lock().await;
        self.closed.store(true, Ordering::SeqCst);
        let gen = self.shared.current();
        let report = match &gen {
            Some(gen) => self.reset_locked(gen, ShutdownReason::Spindown).await,
            None => None,
        };
        report.unwrap_or(ShutdownReport {
            reason: ShutdownReason::Spindown,
            generation: 0,
            runtime: None,
            extensions: Vec::new(),
            duration: Duration::ZERO,
        })
    }

    /// The `Drop` path: no event loop needed, nothing survives. Thaws first: SIGKILL would end
    /// a stopped process too, but its children in other states are not guaranteed to be
    /// stopped, and a thawed group dies the same way every time.
    pub fn kill_all_now(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let procs = self.shared.all_processes.lock().unwrap().clone();
        let groups: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
        for p in &procs {
            if p.exited().is_none() {
                p.signal_group(Signal::SIGCONT);
                p.signal_group(Signal::SIGKILL);
            }
        }
        sweep_groups(&groups);
        for p in &procs {
            p.wait_exit_blocking(Duration::from_secs(2));
        }
        if let Some(gen) = self.shared.current.lock().unwrap().take() {
            gen.closed.cancel();
        }
    }
}

/// SIGKILLs whatever is left in `groups` after their leaders are gone (children an extension
/// forked). Only groups that still have members are signalled: while a member lives its group
/// id cannot be reused, so the signal cannot reach a stranger.
pub(crate) fn sweep_groups(groups: &[u32]) {
    for pid in group_members(groups) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGCONT);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}
