//! The Shutdown phase, for spindown and for resets after a timeout or failure.
//! <https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html#runtimes-lifecycle-shutdown>
//!
//! With an extension registered: SIGTERM to the runtime, 300 ms, SIGKILL; then SHUTDOWN to each
//! extension registered for it, with `deadlineMs` at the end of the 2,000 ms budget; at the
//! deadline, SIGKILL whatever still runs. Without extensions the runtime is just killed.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::config::{epoch_ms, RUNTIME_SHUTDOWN_BUDGET, SHUTDOWN_BUDGET};
use crate::environment::{ExtensionEvent, Generation, Phase, Shared};
use crate::events::{EventKind, ShutdownReason};
use crate::lifecycle::{freeze, sweep_groups};
use crate::process::{ExitInfo, ManagedProcess};
use crate::report::{ExtensionShutdown, RuntimeShutdown, ShutdownReport};

/// Grace for a SIGKILLed process to be reaped.
const REAP: Duration = Duration::from_secs(2);

pub(super) async fn run(
    shared: &Shared,
    gen: &Arc<Generation>,
    reason: ShutdownReason,
) -> ShutdownReport {
    let events = &shared.events;
    let started = Instant::now();
    let t0 = tokio::time::Instant::now();
    let deadline = t0 + SHUTDOWN_BUDGET;
    let deadline_ms = if shared.config.zero_deadlines {
        0
    } else {
        epoch_ms(SystemTime::now() + SHUTDOWN_BUDGET)
    };
    gen.update(|s| s.phase = Phase::ShuttingDown);
    events.push(gen.id, EventKind::ShutdownStarted { reason });
    freeze::thaw(shared, gen);

    let (runtime, any_registered) =
        gen.read(|s| (s.runtime.clone(), s.registrations().next().is_some()));
    let runtime = match runtime {
        Some(rt) => Some(stop_runtime(shared, gen, &rt, any_registered, started, t0).await),
        None => None,
    };

    // SHUTDOWN to every live extension registered for it; the rest cannot be told and are
    // killed now rather than at the deadline.
    let body = json!({
        "eventType": "SHUTDOWN",
        "shutdownReason": reason.as_str(),
        "deadlineMs": deadline_ms,
    });
    let exts: Vec<(String, Arc<ManagedProcess>, bool)> = gen.update(|s| {
        s.extensions
            .iter_mut()
            .filter_map(|e| {
                let p = e.process.clone()?;
                let told = match e.reg.as_mut() {
                    Some(r) if r.shutdown && p.exited().is_none() => {
                        r.push(ExtensionEvent::Shutdown {
                            reason,
                            body: body.clone(),
                        });
                        true
                    }
                    _ => false,
                };
                Some((e.name.clone(), p, told))
            })
            .collect()
    });
    for (_, p, told) in &exts {
        if !told && p.exited().is_none() {
            kill(shared, gen, p);
        }
    }

    let mut extensions = Vec::new();
    for (name, p, _) in exts {
        let already_exited = p.exited().is_some_and(|e| e.at < started);
        let mut exit = p.wait_exit_until(deadline).await;
        let mut killed = false;
        if exit.is_none() {
            kill(shared, gen, &p);
            killed = true;
            exit = p.wait_exit_until(tokio::time::Instant::now() + REAP).await;
        }
        let delivered = gen.read(|s| {
            s.extensions
                .iter()
                .find(|e| e.name == name)
                .and_then(|e| e.reg.as_ref()?.shutdown_delivered_at)
        });
        extensions.push(ExtensionShutdown {
            name,
            pid: p.pid(),
            shutdown_delivered: delivered.is_some(),
            exit_after_delivery: match (delivered, exit) {
                (Some(d), Some(e)) => Some(e.at.saturating_duration_since(d)),
                _ => None,
            },
            killed: killed || (!already_exited && exit.is_some_and(|e| e.killed())),
            already_exited,
            exit_status: status(exit),
        });
    }

    // Children an extension or the runtime left behind in their groups.
    let groups: Vec<u32> = gen.read(|s| {
        s.runtime
            .iter()
            .chain(s.extensions.iter().filter_map(|e| e.process.as_ref()))
            .map(|p| p.pid())
            .collect()
    });
    sweep_groups(&groups);
    gen.closed.cancel();
    events.push(gen.id, EventKind::ShutdownEnded { reason });
    ShutdownReport {
        reason,
        generation: gen.id,
        runtime,
        extensions,
        duration: started.elapsed(),
    }
}

async fn stop_runtime(
    shared: &Shared,
    gen: &Generation,
    rt: &ManagedProcess,
    any_registered: bool,
    started: Instant,
    t0: tokio::time::Instant,
) -> RuntimeShutdown {
    let mut sigterm_sent = false;
    let mut killed = false;
    if rt.exited().is_none() {
        // SIGTERM only when some extension registered: that is what gives the runtime a
        // graceful-shutdown window at all.
        if any_registered {
            rt.signal_group(Signal::SIGTERM);
            sigterm_sent = true;
            shared.events.push(
                gen.id,
                EventKind::SigtermSent {
                    process: rt.label.clone(),
                },
            );
        }
        if !any_registered
            || rt
                .wait_exit_until(t0 + RUNTIME_SHUTDOWN_BUDGET)
                .await
                .is_none()
        {
            kill(shared, gen, rt);
            killed = true;
        }
    }
    let exit = rt.wait_exit_until(tokio::time::Instant::now() + REAP).await;
    RuntimeShutdown {
        name: rt.info.name.clone(),
        pid: rt.pid(),
        sigterm_sent,
        exited_after: exit.map(|e| e.at.saturating_duration_since(started)),
        killed,
        exit_status: status(exit),
    }
}

fn kill(shared: &Shared, gen: &Generation, p: &ManagedProcess) {
    p.signal_group(Signal::SIGKILL);
    shared.events.push(
        gen.id,
        EventKind::SigkillSent {
            process: p.label.clone(),
        },
    );
}

fn status(exit: Option<ExitInfo>) -> String {
    exit.map_or_else(|| "still running".to_string(), |e| e.to_string())
}
