//! End to end on a local Lambda: the real extension and the example function as separate
//! processes, frozen with SIGSTOP between invocations, against a real TLS PostgreSQL.

use std::time::Duration;

use local_lambda::Outcome;
use serde_json::json;
use warmpool_tests::{LambdaEnv, PgServer};

async fn backend_pid(env: &LambdaEnv) -> i64 {
    env.call(json!({"action": "backend"})).await["pid"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_frozen_invocations_share_the_warm_connection() {
    let pg = PgServer::start();
    let env = LambdaEnv::classic(&pg, &[("WARMPOOL_WARM_SIZE", "1")]);
    env.call(json!({"action": "setup"})).await;
    let first = backend_pid(&env).await;
    for _ in 0..50 {
        assert!(
            env.lambda.is_frozen(),
            "the environment is frozen between invocations"
        );
        assert_eq!(backend_pid(&env).await, first, "same server connection");
    }
    assert_eq!(
        pg.warmpool_backends().await,
        vec![first as i32],
        "exactly the warm size"
    );
    assert_eq!(env.lambda.init_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_killed_during_a_freeze_costs_no_error() {
    let pg = PgServer::start();
    // Every thaw is treated as a gap, so each INVOKE checks idle connections.
    let env = LambdaEnv::classic(&pg, &[("WARMPOOL_CHECK_AFTER_IDLE_MS", "0")]);
    env.call(json!({"action": "setup"})).await;
    let before = backend_pid(&env).await;
    assert!(env.lambda.is_frozen());
    pg.terminate_backend(before);
    let after = backend_pid(&env).await;
    assert_ne!(before, after, "the dead connection was replaced");
    let logs = env.output();
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_timeout_during_a_freeze_costs_no_error() {
    let pg = PgServer::start();
    let env = LambdaEnv::classic(&pg, &[("WARMPOOL_CHECK_AFTER_IDLE_MS", "0")]);
    env.call(json!({"action": "setup"})).await;
    let before = backend_pid(&env).await;
    // The server ends idle sessions while the environment is frozen.
    pg.superuser_psql("ALTER ROLE app SET idle_session_timeout = '100ms'");
    // The setting applies to new sessions: replace the warm one so the new one carries it.
    pg.terminate_backend(before);
    let fresh = backend_pid(&env).await;
    assert!(env.lambda.is_frozen());
    // Wait (frozen) until the server has ended that session by its idle timeout.
    pg.wait_backend_gone(fresh);
    let after = backend_pid(&env).await;
    assert_ne!(fresh, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_during_a_freeze() {
    let pg = PgServer::start();
    let env = LambdaEnv::classic(&pg, &[("WARMPOOL_CHECK_AFTER_IDLE_MS", "0")]);
    env.call(json!({"action": "setup"})).await;
    let id = env
        .call(json!({"action": "create", "customer": "ada", "item": "lamp", "qty": 1}))
        .await["id"]
        .as_i64()
        .unwrap();
    assert!(env.lambda.is_frozen());
    pg.restart();
    let got = env.call(json!({"action": "get", "id": id})).await;
    assert_eq!(got["item"], "lamp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection_within_the_budget() {
    let pg = PgServer::start();
    let env = LambdaEnv::classic(&pg, &[("WARMPOOL_WARM_SIZE", "2")]);
    env.call(json!({"action": "setup"})).await;
    backend_pid(&env).await;
    assert!(!pg.warmpool_backends().await.is_empty());
    let report = env.lambda.shutdown().await;
    let ext = report
        .extension("warmpool")
        .expect("warmpool took part in the shutdown");
    assert!(ext.shutdown_delivered, "{report}");
    assert!(
        !ext.killed,
        "the extension exited before the 2 s deadline: {report}"
    );
    eprintln!("{report}");
    assert!(
        pg.warmpool_backends().await.is_empty(),
        "no warmpool backend left"
    );
    assert!(!env.socket().exists(), "the socket file is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_transaction_resets_and_leaves_no_lock() {
    let pg = PgServer::start();
    let env = LambdaEnv::classic(&pg, &[]);
    env.call(json!({"action": "setup"})).await;
    let id = env
        .call(json!({"action": "create", "customer": "bo", "item": "desk", "qty": 2}))
        .await["id"]
        .as_i64()
        .unwrap();
    let crashed = env
        .invoke(json!({"action": "crash_in_transaction", "id": id}))
        .await;
    assert!(
        matches!(crashed.outcome, Outcome::Crash(_)),
        "{:?}",
        crashed.outcome
    );
    let reset = crashed.reset.expect("the crash reset the environment");
    assert!(!reset.extension("warmpool").unwrap().killed, "{reset}");

    // The row is not locked and the update never happened.
    let direct = pg.tokio_client().await;
    direct
        .batch_execute("SET lock_timeout = '1s'")
        .await
        .unwrap();
    direct
        .execute("UPDATE orders SET qty = qty + 1 WHERE id = $1", &[&id])
        .await
        .unwrap();
    let got = env.call(json!({"action": "get", "id": id})).await;
    assert_eq!(got["qty"], 3);
    assert_eq!(
        env.lambda.init_count(),
        2,
        "a fresh Init followed the crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_the_database_down() {
    let pg = PgServer::start();
    pg.stop();
    let env = LambdaEnv::classic(&pg, &[("WARMPOOL_CONNECT_TIMEOUT_MS", "1000")]);
    // A function that does not touch the database works.
    assert_eq!(env.call(json!({"action": "noop"})).await["ok"], true);
    pg.start_again();
    env.call(json!({"action": "setup"})).await;
    backend_pid(&env).await;
    assert_eq!(env.lambda.init_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_can_require_the_database() {
    let pg = PgServer::start();
    pg.stop();
    let env = LambdaEnv::classic(
        &pg,
        &[
            ("WARMPOOL_CONNECT_TIMEOUT_MS", "1000"),
            ("WARMPOOL_INIT_REQUIRE_DATABASE", "true"),
        ],
    );
    let inv = env.invoke(json!({"action": "noop"})).await;
    assert!(
        matches!(inv.outcome, Outcome::InitError(_)),
        "{:?}",
        inv.outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_instances_serve_concurrent_invocations() {
    let pg = PgServer::start();
    let env = LambdaEnv::managed_instances(&pg, &[], 8);
    env.call(json!({"action": "setup"})).await;
    // Hold a lock every invocation needs; all eight must then be waiting in the database at
    // once, which only happens if they are served together.
    let direct = pg.tokio_client().await;
    direct
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let lambda = &env.lambda;
            async move { lambda.invoke(json!({"action": "count"})).await }
        })
        .collect();
    let waiter = async {
        let watcher = pg.tokio_client().await;
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'warmpool' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting == 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            pg.warmpool_backends().await.len() <= 8,
            "at most 8 connections"
        );
        direct.batch_execute("COMMIT").await.unwrap();
    };
    let (results, ()) = tokio::join!(futures_util::future::join_all(calls), waiter);
    for r in results {
        assert!(r.outcome.is_ok(), "{:?}", r.outcome);
    }
    assert!(!env.lambda.is_frozen(), "never frozen");
    assert!(pg.warmpool_backends().await.len() <= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_when_the_database_hangs() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let pg = PgServer::start();
    let env = LambdaEnv::classic(&pg, &[("WARMPOOL_WARM_SIZE", "2")]);
    env.call(json!({"action": "setup"})).await;
    backend_pid(&env).await;
    let backends = pg.warmpool_backends().await;
    assert!(!backends.is_empty());
    // The server processes behind warmpool's connections stop answering.
    for pid in &backends {
        kill(Pid::from_raw(*pid), Signal::SIGSTOP).unwrap();
    }
    let report = env.lambda.shutdown().await;
    for pid in &backends {
        kill(Pid::from_raw(*pid), Signal::SIGCONT).unwrap();
    }
    let ext = report
        .extension("warmpool")
        .expect("warmpool took part in the shutdown");
    assert!(ext.shutdown_delivered, "{report}");
    assert!(
        !ext.killed,
        "closes are bounded, so the extension exits on its own: {report}"
    );
    eprintln!("{report}");
}
