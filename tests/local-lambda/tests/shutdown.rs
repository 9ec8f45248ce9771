//! Shutdown: spindown with SHUTDOWN to the extensions within the 2,000 ms budget, SIGKILL for
//! whoever overstays, and nothing left behind by `Drop`, even after a panic.

mod common;

use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{assert_gone, Fixture};
use local_lambda::ShutdownReason;
use serde_json::json;

#[tokio::test]
async fn shutdown_delivers_spindown_and_reports_the_exit_time() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx.builder().build().unwrap();
    assert!(lambda.invoke(json!({})).await.outcome.is_ok());
    let pids = lambda.pids();
    let before_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    let report = lambda.shutdown().await;

    assert_eq!(report.reason, ShutdownReason::Spindown);
    let rt = report.runtime.as_ref().unwrap();
    assert!(
        rt.sigterm_sent,
        "an extension is registered, so the runtime gets SIGTERM"
    );
    let rec = report.extension("recorder").unwrap();
    assert!(rec.shutdown_delivered && !rec.killed, "{report}");
    let took = rec.exit_after_delivery.expect("exit time measured");
    assert!(took < Duration::from_secs(1), "{report}");
    assert!(report.duration < Duration::from_secs(2), "{report}");

    let got = fx.received("recorder");
    let last = got.last().unwrap();
    assert_eq!(last["eventType"], "SHUTDOWN");
    assert_eq!(last["shutdownReason"], "spindown");
    let deadline = last["deadlineMs"].as_u64().unwrap();
    assert!(
        deadline >= before_ms + 1_900 && deadline <= before_ms + 2_100 + 1_000,
        "{deadline}"
    );
    assert_gone(&pids);
    assert!(lambda.pids().is_empty());
    assert!(matches!(
        lambda.invoke(json!({})).await.outcome,
        local_lambda::Outcome::Crash(_)
    ));
}

#[tokio::test]
async fn an_extension_that_ignores_shutdown_is_killed_at_the_deadline() {
    let fx = Fixture::new(&["recorder", "stubborn"]);
    let lambda = fx.builder().build().unwrap();
    assert!(lambda.invoke(json!({})).await.outcome.is_ok());
    let pids = lambda.pids();

    let report = lambda.shutdown().await;

    let stubborn = report.extension("stubborn").unwrap();
    assert!(stubborn.shutdown_delivered && stubborn.killed, "{report}");
    let polite = report.extension("recorder").unwrap();
    assert!(!polite.killed, "{report}");
    assert!(report.duration >= Duration::from_millis(1_950), "{report}");
    assert!(report.duration < Duration::from_secs(4), "{report}");
    assert_eq!(
        fx.received("stubborn").last().unwrap()["eventType"],
        "SHUTDOWN"
    );
    assert_gone(&pids);
}

#[tokio::test]
async fn drop_spins_down_and_frees_the_port() {
    let fx = Fixture::new(&["recorder"]);
    let lambda = fx.builder().build().unwrap();
    assert!(lambda.invoke(json!({})).await.outcome.is_ok());
    let pids = lambda.pids();
    let api = lambda.runtime_api();

    drop(lambda);

    assert_gone(&pids);
    assert_eq!(
        fx.received("recorder").last().unwrap()["shutdownReason"],
        "spindown"
    );
    assert!(
        TcpStream::connect(api).is_err(),
        "the Runtime API port is closed"
    );
}

#[test]
fn drop_during_a_panic_kills_everything() {
    let fx = Fixture::new(&["recorder", "stubborn"]);
    let builder = fx.builder();
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let lambda = builder.build().unwrap();
            assert!(lambda.invoke(json!({})).await.outcome.is_ok());
            assert!(lambda.is_frozen());
            tx.send((lambda.pids(), lambda.runtime_api())).unwrap();
            panic!("a test failing while the environment is frozen");
        })
    });
    assert!(test.join().is_err(), "the thread panicked");
    let (pids, api) = rx.recv().unwrap();
    assert_eq!(pids.len(), 3);
    assert_gone(&pids);
    assert!(TcpStream::connect(api).is_err());
    // Killed outright, no spindown: nobody got SHUTDOWN.
    assert!(fx
        .received("recorder")
        .iter()
        .all(|r| r["eventType"] != "SHUTDOWN"));
}
