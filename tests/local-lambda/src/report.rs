//! What an invocation and a shutdown report back to the caller.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::events::ShutdownReason;

/// How an invocation ended, as its caller would see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The runtime posted a response (parsed as JSON; a non-JSON body becomes a string).
    Ok(Value),
    /// The runtime posted to `/invocation/{id}/error` (the handler returned an error).
    FunctionError(Value),
    /// The function timeout passed first. The environment was reset (classic mode).
    Timeout,
    /// A process of the environment crashed or exited during the invocation. The environment
    /// was reset.
    Crash(String),
    /// Init failed or timed out; the invocation never reached the runtime. The environment was
    /// reset, so the next invocation runs a fresh Init.
    InitError(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok(v) => write!(f, "ok: {v}"),
            Self::FunctionError(v) => write!(f, "function error: {v}"),
            Self::Timeout => f.write_str("timeout"),
            Self::Crash(why) => write!(f, "crash: {why}"),
            Self::InitError(why) => write!(f, "init error: {why}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Invocation {
    pub request_id: String,
    pub outcome: Outcome,
    /// From handing the invocation over to the runtime's response (or the failure): what the
    /// caller waits for.
    pub duration: Duration,
    /// Until every process had called `next` again and the Invoke phase ended (includes the
    /// extensions' post-invoke work, which Lambda bills). Equals `duration` on failures.
    pub phase_duration: Duration,
    /// Set when this invocation had to run Init first (a cold start).
    pub init_duration: Option<Duration>,
    /// The reset this invocation caused (timeout, crash, failed Init), if any.
    pub reset: Option<ShutdownReport>,
}

/// How the runtime process ended during a shutdown.
#[derive(Clone, Debug)]
pub struct RuntimeShutdown {
    pub name: String,
    pub pid: u32,
    /// SIGTERM is sent only when some extension registered; otherwise the runtime is killed.
    pub sigterm_sent: bool,
    /// Time from the start of the shutdown to the exit.
    pub exited_after: Option<Duration>,
    /// It had to be SIGKILLed (it did not exit within its 300 ms, or no extension registered).
    pub killed: bool,
    pub exit_status: String,
}

/// How one external extension ended during a shutdown.
#[derive(Clone, Debug)]
pub struct ExtensionShutdown {
    pub name: String,
    pub pid: u32,
    /// It registered for SHUTDOWN and the event was handed over in answer to its `next`.
    pub shutdown_delivered: bool,
    /// Time from handing over SHUTDOWN to the process's exit: what the extension spent on its
    /// cleanup.
    pub exit_after_delivery: Option<Duration>,
    /// It was still running at the deadline (or never got SHUTDOWN) and was SIGKILLed.
    pub killed: bool,
    /// It had already exited before the shutdown began (a crash that caused this reset).
    pub already_exited: bool,
    pub exit_status: String,
}

#[derive(Clone, Debug)]
pub struct ShutdownReport {
    pub reason: ShutdownReason,
    /// Which Init's environment was shut down (1 for the first).
    pub generation: u64,
    pub runtime: Option<RuntimeShutdown>,
    pub extensions: Vec<ExtensionShutdown>,
    /// The whole shutdown, from thaw to the last exit.
    pub duration: Duration,
}

impl ShutdownReport {
    pub fn extension(&self, name: &str) -> Option<&ExtensionShutdown> {
        self.extensions.iter().find(|e| e.name == name)
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shutdown ({}) of environment #{} took {:?}",
            self.reason, self.generation, self.duration
        )?;
        if let Some(r) = &self.runtime {
            write!(
                f,
                "\n  runtime {} (pid {}): {}{}{}",
                r.name,
                r.pid,
                r.exit_status,
                if r.sigterm_sent { ", got SIGTERM" } else { "" },
                if r.killed { ", SIGKILLed" } else { "" },
            )?;
        }
        for e in &self.extensions {
            write!(f, "\n  extension {} (pid {}): ", e.name, e.pid)?;
            if e.already_exited {
                write!(f, "had already exited ({})", e.exit_status)?;
                continue;
            }
            match (e.shutdown_delivered, e.exit_after_delivery) {
                (true, Some(d)) => write!(f, "got SHUTDOWN, exited {d:?} later")?,
                (true, None) => f.write_str("got SHUTDOWN, did not exit")?,
                (false, _) => f.write_str("no SHUTDOWN delivered")?,
            }
            write!(f, " ({})", e.exit_status)?;
            if e.killed {
                f.write_str(", SIGKILLed at the deadline")?;
            }
        }
        Ok(())
    }
}
