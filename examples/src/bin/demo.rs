//! The local demo: starts a private PostgreSQL (TLS, scram-sha-256), then runs the example
//! `orders` function with the `warmpool` extension in a local Lambda execution environment
//! (separate processes, frozen between invocations), and prints what happened.
//!
//! Run it with `cargo run -p warmpool-examples --bin demo`.

use std::time::{Duration, Instant};

use local_lambda::Outcome;
use serde_json::json;
use warmpool_tests::{LambdaEnv, PgServer};

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

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

    // The function times its own database work (begin, insert, count, commit); the rest of an
    // invocation is the local Lambda's HTTP round trips and SIGSTOP/SIGCONT, and the debug build.
    let n = 20;
    let mut db_times = Vec::new();
    let mut invocation_times = Vec::new();
    for i in 0..n {
        let inv = env
            .invoke(json!({"action": "create", "customer": format!("customer-{}", i % 3), "item": "widget", "qty": 1 + i}))
            .await;
        let Outcome::Ok(body) = &inv.outcome else {
            panic!("invocation failed: {:?}", inv.outcome);
        };
        let db_us = body["db_us"].as_u64().expect("the function reports db_us");
        db_times.push(Duration::from_micros(db_us));
        invocation_times.push(inv.duration);
    }
    let warm_db = median(&mut db_times);
    let warm_invocation = median(&mut invocation_times);
    println!(
        "{n} warm invocations (insert + count in a transaction), frozen between each, medians:"
    );
    println!(
        "  database time in the function, through warmpool:  {}",
        ms(warm_db)
    );
    println!(
        "  the rest of the invocation (local Lambda, debug build): {}",
        ms(warm_invocation.saturating_sub(warm_db))
    );
    let inv = env.invoke(json!({"action": "get", "id": 1})).await;
    println!(
        "read back order 1: {:?} in {}",
        inv.outcome,
        ms(inv.duration)
    );

    // The same transaction as a function without warmpool runs it when it connects per
    // invocation: TCP, TLS and SCRAM each time, in this same build and run.
    let mut fresh_times = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let mut direct = pg.tokio_client().await;
        let tx = direct.transaction().await.expect("begin");
        let customer = format!("customer-{}", i % 3);
        tx.query_one(
            "INSERT INTO orders (customer, item, qty) VALUES ($1, $2, $3) RETURNING id",
            &[&customer, &"widget", &(1 + i)],
        )
        .await
        .expect("insert");
        tx.query_one(
            "SELECT count(*) FROM orders WHERE customer = $1",
            &[&customer],
        )
        .await
        .expect("count");
        tx.commit().await.expect("commit");
        fresh_times.push(started.elapsed());
        drop(direct);
    }
    let fresh = median(&mut fresh_times);
    println!(
        "the same transaction over a fresh TLS + SCRAM connection each time, median: {}",
        ms(fresh)
    );
    println!(
        "  warmpool's database time is {:.1}x less",
        fresh.as_secs_f64() / warm_db.as_secs_f64().max(1e-9)
    );

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
