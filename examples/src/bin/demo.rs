//! The local demo: starts a private PostgreSQL (TLS, scram-sha-256), then runs the example
//! `orders` function with the `warmpool` extension in a local Lambda execution environment
//! (separate processes, frozen between invocations), and prints what happened.
//!
//! Run it with `cargo run -p warmpool-examples --bin demo`.

use std::time::{Duration, Instant};

use serde_json::json;
use warmpool_tests::{LambdaEnv, PgServer};

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Sessions the server has accepted from the application role since it started.
async fn sessions_opened(pg: &PgServer) -> i64 {
    let direct = pg.tokio_client().await;
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'warmpool'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    println!("starting a private PostgreSQL with TLS and scram-sha-256 ...");
    let pg = PgServer::start();
    pg.set_config("log_connections", "on");
    println!("  listening on 127.0.0.1:{}", pg.port());

    println!(
        "building and starting a local Lambda: the warmpool extension + the orders function ..."
    );
    let env = LambdaEnv::classic(
        &pg,
        &[("WARMPOOL_LOG", "info"), ("WARMPOOL_WARM_SIZE", "1")],
    );

    let first = env.invoke(json!({"action": "setup"})).await;
    println!(
        "invocation 1 (cold: Init {} + setup): {} -> {:?}",
        first.init_duration.map(ms).unwrap_or_default(),
        ms(first.duration),
        first.outcome
    );

    let n = 20;
    let mut total = Duration::ZERO;
    for i in 0..n {
        let inv = env
            .invoke(json!({"action": "create", "customer": format!("customer-{}", i % 3), "item": "widget", "qty": 1 + i}))
            .await;
        assert!(inv.outcome.is_ok(), "{:?}", inv.outcome);
        total += inv.duration;
    }
    println!(
        "{n} warm invocations (insert + count in a transaction), frozen between each: {} each",
        ms(total / n as u32)
    );
    let inv = env.invoke(json!({"action": "get", "id": 1})).await;
    println!(
        "read back order 1: {:?} in {}",
        inv.outcome,
        ms(inv.duration)
    );

    // What every invocation would pay without warmpool: a fresh TCP + TLS + SCRAM connection.
    let started = Instant::now();
    let direct = pg.tokio_client().await;
    direct
        .query_one("SELECT 1", &[])
        .await
        .expect("direct query");
    println!(
        "for comparison, one direct TLS connect + query: {}",
        ms(started.elapsed())
    );
    drop(direct);

    let held = sessions_opened(&pg).await;
    let log = std::fs::read_to_string(pg.log_path()).unwrap_or_default();
    let opened = log
        .lines()
        .filter(|l| l.contains("connection authorized") && l.contains("application_name=warmpool"))
        .count();
    println!("connections warmpool opened: {opened}; open now: {held}");

    let report = env.lambda.shutdown().await;
    println!("{report}");
    println!(
        "warmpool connections left after SHUTDOWN: {}",
        sessions_opened(&pg).await
    );
}
