//! State shared by the HTTP handlers (the processes' side) and the lifecycle (the caller's side).
//!
//! One [`Generation`] is one execution environment: what one Init created, until it is reset or
//! shut down. A reset drops the generation and its queues, so nothing of an old environment can
//! reach a new one: old extension identifiers become unknown, old long polls are woken and
//! answered with an error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::{EventKind, EventLog, ShutdownReason};
use crate::output::OutputLog;
use crate::process::ManagedProcess;
use crate::report::ShutdownReport;

/// Everything that lives as long as the emulator.
pub(crate) struct Shared {
    pub config: Config,
    pub api_addr: SocketAddr,
    pub events: Arc<EventLog>,
    pub output: Arc<OutputLog>,
    pub current: Mutex<Option<Arc<Generation>>>,
    pub init_count: AtomicU64,
    pub resets: Mutex<Vec<ShutdownReport>>,
    /// Every process ever started, so `Drop` can make sure none survives.
    pub all_processes: Mutex<Vec<Arc<ManagedProcess>>>,
    /// Cancelled when the APIs go away ([`crate::LocalLambda::break_api`]).
    pub api_broken: tokio_util::sync::CancellationToken,
}

impl Shared {
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.lock().unwrap().clone()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Init,
    Ready,
    ShuttingDown,
}

/// An event for an extension's `next` long poll.
#[derive(Clone, Debug)]
pub(crate) enum ExtensionEvent {
    Invoke { request_id: String, body: Value },
    Shutdown { reason: ShutdownReason, body: Value },
}

pub(crate) struct Registration {
    pub id: String,
    pub invoke: bool,
    pub shutdown: bool,
    pub tx: mpsc::UnboundedSender<ExtensionEvent>,
    pub rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<ExtensionEvent>>>,
    /// A `next` call is outstanding.
    pub waiting: bool,
    /// Events pushed but not yet handed over.
    pub queued: usize,
    pub shutdown_delivered_at: Option<Instant>,
}

impl Registration {
    /// "Has called next" in AWS's sense: waiting, with nothing left to hand over.
    pub fn idle(&self) -> bool {
        self.waiting && self.queued == 0
    }

    pub fn push(&mut self, ev: ExtensionEvent) {
        self.queued += 1;
        // The receiver lives in `self.rx`, so the send cannot fail.
        let _ = self.tx.send(ev);
    }
}

pub(crate) struct ExtensionSlot {
    pub name: String,
    /// An executable of the extensions directory. False for an internal extension (registered
    /// from inside the runtime process). The slot exists before its process starts, so even the
    /// fastest extension finds it when it registers.
    pub external: bool,
    pub process: Option<Arc<ManagedProcess>>,
    pub reg: Option<Registration>,
}

/// An invocation waiting for the runtime's `next`.
pub(crate) struct PendingInvoke {
    pub request_id: String,
    pub payload: Bytes,
    pub deadline_ms: u64,
    pub trace_id: String,
}

#[derive(Clone, Debug)]
pub(crate) enum RuntimeReply {
    Response(Bytes),
    Error {
        error_type: Option<String>,
        body: Bytes,
    },
}

#[derive(Default)]
pub(crate) struct Inflight {
    pub reply: Option<RuntimeReply>,
    /// In LMI mode an invocation that timed out keeps its concurrency slot until the runtime
    /// answers: Lambda does not stop the code, so the worker is still busy.
    pub permit: Option<OwnedSemaphorePermit>,
}

pub(crate) struct GenState {
    pub phase: Phase,
    pub extensions: Vec<ExtensionSlot>,
    pub runtime: Option<Arc<ManagedProcess>>,
    pub runtime_next_calls: u64,
    pub runtime_waiting: usize,
    pub inflight: HashMap<String, Inflight>,
    pub failure: Option<String>,
    /// Refused registrations, quoted when the refused extension then exits.
    pub refusals: Vec<String>,
    pub frozen: bool,
}

impl GenState {
    pub fn external(&self) -> impl Iterator<Item = &ExtensionSlot> {
        self.extensions.iter().filter(|e| e.external)
    }

    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.extensions.iter().filter_map(|e| e.reg.as_ref())
    }

    pub fn registrations_mut(&mut self) -> impl Iterator<Item = (&str, &mut Registration)> {
        self.extensions
            .iter_mut()
            .filter_map(|e| Some((e.name.as_str(), e.reg.as_mut()?)))
    }

    pub fn name_of(&self, id: &str) -> Option<String> {
        self.extensions
            .iter()
            .find(|e| e.reg.as_ref().is_some_and(|r| r.id == id))
            .map(|e| e.name.clone())
    }

    pub fn find_by_id(&mut self, id: &str) -> Option<(&str, &mut Registration)> {
        self.registrations_mut().find(|(_, r)| r.id == id)
    }

    /// Every live process of the environment (runtime first).
    pub fn processes(&self) -> Vec<Arc<ManagedProcess>> {
        self.runtime
            .iter()
            .chain(self.extensions.iter().filter_map(|e| e.process.as_ref()))
            .filter(|p| p.exited().is_none())
            .cloned()
            .collect()
    }
}

pub(crate) struct Generation {
    pub id: u64,
    pub lmi: bool,
    state: Mutex<GenState>,
    /// Bumped after every state change; waiters re-check their condition.
    tick: watch::Sender<u64>,
    /// Cancelled when the environment is torn down: wakes every long poll still open.
    pub closed: CancellationToken,
    invokes_tx: mpsc::UnboundedSender<PendingInvoke>,
    /// Shared by all concurrent runtime `next` calls (LMI workers poll several at once).
    pub invokes_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<PendingInvoke>>,
}

pub(crate) enum Wait {
    Met,
    Deadline,
    Failed(String),
}

impl Generation {
    pub fn new(id: u64, lmi: bool) -> Self {
        let (invokes_tx, invokes_rx) = mpsc::unbounded_channel();
        Self {
            id,
            lmi,
            state: Mutex::new(GenState {
                phase: Phase::Init,
                extensions: Vec::new(),
                runtime: None,
                runtime_next_calls: 0,
                runtime_waiting: 0,
                inflight: HashMap::new(),
                failure: None,
                refusals: Vec::new(),
                frozen: false,
            }),
            tick: watch::channel(0).0,
            closed: CancellationToken::new(),
            invokes_tx,
            invokes_rx: tokio::sync::Mutex::new(invokes_rx),
        }
    }

    /// Mutates the state and wakes every waiter.
    pub fn update<R>(&self, f: impl FnOnce(&mut GenState) -> R) -> R {
        let r = f(&mut self.state.lock().unwrap());
        self.tick.send_modify(|n| *n += 1);
        r
    }

    pub fn read<R>(&self, f: impl FnOnce(&GenState) -> R) -> R {
        f(&self.state.lock().unwrap())
    }

    pub fn queue_invoke(&self, inv: PendingInvoke) {
        // The receiver lives in `self`, so the send cannot fail.
        let _ = self.invokes_tx.send(inv);
    }

    /// Records the first failure of the environment (a process exited, an init/exit error was
    /// reported), unless it is already shutting down, where exits are expected.
    pub fn fail(&self, why: String) {
        self.update(|s| {
            if s.phase != Phase::ShuttingDown && s.failure.is_none() {
                s.failure = Some(why);
            }
        });
    }

    /// Called on a process's watcher thread. The failure is recorded before the event is
    /// published, so whoever reacts to the event already finds the environment failed.
    pub fn process_exited(&self, events: &EventLog, label: &str, pid: u32, status: String) {
        // An extension that exits, even with 0, counts as a crash: Lambda expects it to stay in
        // its next-loop until SHUTDOWN.
        let refusals = self.read(|s| s.refusals.join("; "));
        let why = if refusals.is_empty() {
            format!("{label} exited ({status})")
        } else {
            format!("{label} exited ({status}) after a refused registration: {refusals}")
        };
        self.fail(why);
        events.push(
            self.id,
            EventKind::ProcessExited {
                process: label.to_string(),
                pid,
                status,
            },
        );
    }

    /// Waits until `cond` holds, the deadline passes, or the environment fails. The condition
    /// is checked first, so a result that arrived together with a failure still counts.
    pub async fn wait_until(
        &self,
        deadline: Option<tokio::time::Instant>,
        cond: impl Fn(&GenState) -> bool,
    ) -> Wait {
        let mut rx = self.tick.subscribe();
        loop {
            let verdict = self.read(|s| {
                if cond(s) {
                    Some(Wait::Met)
                } else {
                    s.failure.clone().map(Wait::Failed)
                }
            });
            if let Some(v) = verdict {
                return v;
            }
            // A shutdown does not record a failure (exits are expected then), so waiters learn
            // of it from `closed`: an invocation in flight ends at once instead of at its
            // deadline.
            let far = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365);
            tokio::select! {
                _ = rx.changed() => {}
                _ = self.closed.cancelled() => {
                    return Wait::Failed("the execution environment was shut down".into());
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => return Wait::Deadline,
            }
        }
    }
}
