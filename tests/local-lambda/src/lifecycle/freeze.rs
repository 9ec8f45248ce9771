//! Freeze and thaw. Between invocations Lambda freezes the whole environment: no process runs,
//! no timer fires. SIGSTOP to every process group is the local equivalent.
//! <https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html#runtimes-lifecycle-invoke>

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::environment::{Generation, Shared};
use crate::events::EventKind;
use crate::process::{group_members, proc_state};

pub(super) async fn freeze(shared: &Shared, gen: &Generation) {
    let procs = gen.read(|s| s.processes());
    for p in &procs {
        p.signal_group(Signal::SIGSTOP);
    }
    // kill() returns before the kernel has stopped the targets; wait until /proc shows every
    // member stopped, so "frozen" means frozen to whoever looks next. There is no notification
    // for a non-waited stop, hence the short polls; it takes well under a millisecond.
    let groups: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        let running = group_members(&groups)
            .into_iter()
            .any(|pid| !matches!(proc_state(pid), Some('T' | 't') | None));
        if !running {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    gen.update(|s| s.frozen = true);
    shared.events.push(gen.id, EventKind::Frozen);
}

pub(super) fn thaw(shared: &Shared, gen: &Generation) {
    let procs = gen.read(|s| s.processes());
    for p in &procs {
        p.signal_group(Signal::SIGCONT);
    }
    let was_frozen = gen.update(|s| std::mem::replace(&mut s.frozen, false));
    if was_frozen {
        shared.events.push(gen.id, EventKind::Thawed);
    }
}
