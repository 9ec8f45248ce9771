//! Resets: a timeout or a crash ends the environment (SHUTDOWN with the reason, processes
//! stopped) and the next invocation runs a fresh Init with new processes.

mod common;

use std::time::Duration;

use common::{assert_gone, ok_value, Fixture, WAIT};
use local_lambda::{EventKind, Outcome, ShutdownReason};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

#[tokio::test]
async fn timeout_resets_the_environment() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx
        .builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    assert!(lambda.init().await.is_ok());
    assert!(
        lambda.is_frozen(),
        "Lambda freezes the environment after Init"
    );
    let old = lambda.pids();

    let inv = lambda.invoke(json!({"sleep_ms": 60_000})).await;

    assert_eq!(inv.outcome, Outcome::Timeout);
    assert!(inv.duration >= Duration::from_secs(1));
    let reset = inv.reset.expect("the timeout reset the environment");
    assert_eq!(reset.reason, ShutdownReason::Timeout);
    let rec = reset.extension("recorder").unwrap();
    assert!(rec.shutdown_delivered && !rec.killed, "{reset}");
    let got = fx.received("recorder");
    assert_eq!(got.last().unwrap()["eventType"], "SHUTDOWN");
    assert_eq!(got.last().unwrap()["shutdownReason"], "timeout");
    assert_gone(&old);

    let next = lambda.invoke(json!({"after": "timeout"})).await;
    assert_eq!(ok_value(&next), &json!({"after": "timeout"}));
    assert!(next.init_duration.is_some(), "a fresh Init");
    assert_eq!(lambda.init_count(), 2);
    let new = lambda.pids();
    assert!(
        new.iter().all(|p| !old.contains(p)),
        "new processes: {old:?} -> {new:?}"
    );
}

#[tokio::test]
async fn runtime_crash_resets_the_environment() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx.builder().build().unwrap();
    assert!(lambda.invoke(json!({})).await.outcome.is_ok());
    let old = lambda.pids();

    let inv = lambda.invoke(json!({"exit": 7})).await;

    let Outcome::Crash(why) = &inv.outcome else {
        panic!("expected a crash, got {}", inv.outcome);
    };
    assert!(
        why.contains("runtime") && why.contains("exit code 7"),
        "{why}"
    );
    let reset = inv.reset.unwrap();
    assert_eq!(reset.reason, ShutdownReason::Failure);
    let got = fx.received("recorder");
    assert_eq!(got.last().unwrap()["shutdownReason"], "failure");
    assert_gone(&old);

    let next = lambda.invoke(json!({"n": 3})).await;
    assert_eq!(ok_value(&next), &json!({"n": 3}));
    assert_eq!(lambda.init_count(), 2);
}

#[tokio::test]
async fn extension_killed_during_the_freeze_fails_the_environment() {
    let fx = Fixture::new(&["recorder", "zz-bystander"]);
    let lambda = fx.builder().build().unwrap();
    assert!(lambda.invoke(json!({})).await.outcome.is_ok());
    let old = lambda.pids();
    let victim = lambda
        .processes()
        .into_iter()
        .find(|p| p.name == "recorder")
        .unwrap()
        .pid;

    // Something outside kills the extension while the environment is frozen.
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    lambda
        .wait_for_event(
            move |e| matches!(e.kind, EventKind::ProcessExited { pid, .. } if pid == victim),
            WAIT,
        )
        .await
        .expect("the exit was noticed");

    // The next invocation finds the environment failed: reset ("failure"), fresh Init.
    let next = lambda.invoke(json!({"n": 2})).await;
    assert_eq!(ok_value(&next), &json!({"n": 2}));
    assert_eq!(lambda.init_count(), 2);
    let resets = lambda.resets();
    assert_eq!(resets.len(), 1);
    assert_eq!(resets[0].reason, ShutdownReason::Failure);
    assert!(resets[0].extension("recorder").unwrap().already_exited);
    let bystander = fx.received("zz-bystander");
    assert!(bystander
        .iter()
        .any(|r| r["eventType"] == "SHUTDOWN" && r["shutdownReason"] == "failure"));
    assert_gone(&old);
}
