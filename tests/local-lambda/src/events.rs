//! The lifecycle event log: what the environment did and when, for assertions ("the extension
//! got SHUTDOWN before its process exited", "nothing was frozen in LMI mode").

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Why an environment is shut down, as sent in the SHUTDOWN event.
/// <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-extensions-api.html#runtimes-extensions-api-shutdown>
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// A normal end (explicit `shutdown()` or `Drop`).
    Spindown,
    /// The invocation (or Init) ran out of time.
    Timeout,
    /// A process crashed or exited, or Init failed.
    Failure,
}

impl ShutdownReason {
    /// The wire form. AWS's current docs and emulator use lower case; older docs show upper
    /// case, so extensions should accept both.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spindown => "spindown",
            Self::Timeout => "timeout",
            Self::Failure => "failure",
        }
    }
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    InitStarted,
    ProcessStarted {
        process: String,
        pid: u32,
    },
    ExtensionRegistered {
        name: String,
        events: Vec<String>,
        /// Registered by a name that is no executable of the extensions directory: an
        /// extension running inside the runtime process.
        internal: bool,
    },
    RegistrationRefused {
        name: String,
        reason: String,
    },
    /// `error` is `None` when Init succeeded.
    InitEnded {
        error: Option<String>,
    },
    /// An INVOKE (to an extension) or the invocation itself (`to` = "runtime") was handed over
    /// in answer to a `next` call.
    InvokeDelivered {
        request_id: String,
        to: String,
    },
    ResponseReceived {
        request_id: String,
        error: bool,
    },
    Frozen,
    Thawed,
    ShutdownStarted {
        reason: ShutdownReason,
    },
    SigtermSent {
        process: String,
    },
    /// The SHUTDOWN event was handed to the extension in answer to its `next` call.
    ShutdownDelivered {
        extension: String,
        reason: ShutdownReason,
    },
    SigkillSent {
        process: String,
    },
    ShutdownEnded {
        reason: ShutdownReason,
    },
    ProcessExited {
        process: String,
        pid: u32,
        status: String,
    },
}

#[derive(Clone, Debug)]
pub struct Event {
    /// Time since the [`crate::LocalLambda`] was built.
    pub at: Duration,
    /// Which Init the event belongs to (1 for the first).
    pub generation: u64,
    pub kind: EventKind,
}

pub(crate) struct EventLog {
    start: Instant,
    events: Mutex<Vec<Event>>,
    tick: watch::Sender<usize>,
}

impl EventLog {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            events: Mutex::new(Vec::new()),
            tick: watch::channel(0).0,
        }
    }

    pub fn push(&self, generation: u64, kind: EventKind) {
        let e = Event {
            at: self.start.elapsed(),
            generation,
            kind,
        };
        self.events.lock().unwrap().push(e);
        self.tick.send_modify(|n| *n += 1);
    }

    pub fn snapshot(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    pub async fn wait_for(
        &self,
        pred: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Option<Event> {
        let mut rx = self.tick.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(e) = self.events.lock().unwrap().iter().find(|e| pred(e)) {
                    return e.clone();
                }
                let _ = rx.changed().await;
            }
        })
        .await
        .ok()
    }
}
