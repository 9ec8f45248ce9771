//! Lambda Managed Instances: one environment serves several invocations at once, is never
//! frozen, and external extensions may register for SHUTDOWN only.

mod common;

use std::time::Duration;

use common::{assert_gone, ok_value, Fixture, WAIT};
use local_lambda::{proc_state, EventKind, Outcome};
use serde_json::json;

#[tokio::test]
async fn eight_invocations_in_flight_at_once_without_freezing() {
    let fx = Fixture::new(&["recorder-shutdown-only"]);
    let lambda = fx.builder().concurrency(8).build().unwrap();

    // Each handler waits at a barrier for 8 parties: all 8 return only if all 8 were inside
    // the runtime at the same time.
    let all = futures_util::future::join_all((0..8).map(|_| lambda.invoke(json!({"barrier": 8}))));
    let results = tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("8 concurrent invocations must meet at the barrier");

    for inv in &results {
        assert_eq!(ok_value(inv), &json!({"barrier": 8}));
    }
    assert_eq!(lambda.init_count(), 1);
    assert!(!lambda.is_frozen());
    assert!(!lambda
        .events()
        .iter()
        .any(|e| matches!(e.kind, EventKind::Frozen)));
    let pids = lambda.pids();
    for pid in &pids {
        assert_ne!(proc_state(*pid), Some('T'), "pid {pid} is stopped");
    }

    let env = lambda.invoke(json!({"env": true})).await;
    let env = &ok_value(&env)["env"];
    assert_eq!(env["AWS_LAMBDA_MAX_CONCURRENCY"], "8");
    assert_eq!(
        env["AWS_LAMBDA_INITIALIZATION_TYPE"],
        "lambda-managed-instances"
    );

    let report = lambda.shutdown().await;
    assert!(
        report
            .extension("recorder-shutdown-only")
            .unwrap()
            .shutdown_delivered
    );
    let got = fx.received("recorder-shutdown-only");
    assert_eq!(got.len(), 1, "SHUTDOWN only, no INVOKE: {got:?}");
    assert_eq!(got[0]["shutdownReason"], "spindown");
    assert_gone(&pids);
}

#[tokio::test]
async fn invoke_registration_is_refused() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx.builder().concurrency(4).build().unwrap();

    let inv = lambda.invoke(json!({})).await;

    let Outcome::InitError(why) = &inv.outcome else {
        panic!("expected an init error, got {}", inv.outcome);
    };
    assert!(why.contains("Extension.InvalidEventType"), "{why}");
    lambda
        .wait_for_output("recorder", "403", WAIT)
        .await
        .unwrap();
    assert!(lambda.events().iter().any(
        |e| matches!(&e.kind, EventKind::RegistrationRefused { name, .. } if name == "recorder")
    ));
}

#[tokio::test]
async fn a_timeout_is_reported_but_not_enforced() {
    let fx = Fixture::new(&["recorder-shutdown-only"]);
    let lambda = fx
        .builder()
        .concurrency(2)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(lambda.invoke(json!({})).await.outcome.is_ok());
    let pids = lambda.pids();

    let slow = lambda.invoke(json!({"sleep_ms": 1_000})).await;

    // The caller gets a timeout; the code keeps running and nothing is reset.
    assert_eq!(slow.outcome, Outcome::Timeout);
    assert!(slow.reset.is_none());
    assert_eq!(lambda.pids(), pids);
    let late = slow.request_id.clone();
    lambda
        .wait_for_event(
            move |e| matches!(&e.kind, EventKind::ResponseReceived { request_id, .. } if *request_id == late),
            WAIT,
        )
        .await
        .expect("the late answer still arrives");
    assert!(lambda.invoke(json!({"n": 2})).await.outcome.is_ok());
    assert_eq!(lambda.init_count(), 1);
    assert!(fx.received("recorder-shutdown-only").is_empty());
}

#[tokio::test]
async fn shutdown_ends_invocations_in_flight() {
    let fx = Fixture::new(&["recorder-shutdown-only"]);
    let lambda = fx
        .builder()
        .concurrency(2)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    assert!(lambda.init().await.is_ok());
    assert!(!lambda.is_frozen(), "LMI environments are never frozen");

    let (inv, report) = tokio::join!(lambda.invoke(json!({"sleep_ms": 60_000})), async {
        lambda
            .wait_for_output("runtime", "handling", WAIT)
            .await
            .unwrap();
        lambda.shutdown().await
    });

    let Outcome::Crash(why) = &inv.outcome else {
        panic!(
            "expected the invocation to end with the environment, got {}",
            inv.outcome
        );
    };
    assert!(why.contains("shut down"), "{why}");
    assert!(inv.duration < Duration::from_secs(5), "{inv:?}");
    assert!(
        report
            .extension("recorder-shutdown-only")
            .unwrap()
            .shutdown_delivered
    );
}
