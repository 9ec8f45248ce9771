//! The local demo: starts a private PostgreSQL (TLS, scram-sha-256), runs the `warmpool`
//! extension against it, and talks to it through the client, printing what happened.
//!
//! Run it with `cargo run -p warmpool-examples --bin demo`.

use std::time::{Duration, Instant};

use warmpool_tests::{Extension, PgServer};

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("starting a private PostgreSQL with TLS and scram-sha-256 ...");
    let pg = PgServer::start();
    println!("  listening on 127.0.0.1:{}", pg.port());

    println!("starting the warmpool extension ...");
    let mut ext = Extension::start(
        &pg,
        &[("WARMPOOL_LOG", "info"), ("WARMPOOL_WARM_SIZE", "2")],
    );
    ext.wait_for_log("pool warmed", Duration::from_secs(30));
    println!("  socket {}", ext.socket().display());

    let client = warmpool::Client::connect_to(ext.socket()).await?;
    client
        .batch_execute(
            "CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL, qty int NOT NULL);
             INSERT INTO orders (item, qty) SELECT 'item ' || i, i FROM generate_series(1, 100) i",
        )
        .await?;

    // A transaction: BEGIN travels with the first statement.
    let mut tx = client.transaction().await?;
    let id: i64 = tx
        .query_one(
            "INSERT INTO orders (item, qty) VALUES ($1, $2) RETURNING id",
            &[&"widget", &3i32],
        )
        .await?
        .get(0);
    tx.commit().await?;
    println!("inserted order {id} in a transaction");

    let sql = "SELECT item, qty FROM orders WHERE id = $1";
    let started = Instant::now();
    client.query_one(sql, &[&id]).await?;
    println!(
        "first point select (describe + execute): {}",
        ms(started.elapsed())
    );

    let n = 200;
    let started = Instant::now();
    for i in 0..n as i64 {
        let row = client.query_one(sql, &[&(1 + i % 100)]).await?;
        let _: &str = row.get("item");
    }
    println!(
        "{n} warm point selects, one at a time: {} each",
        ms(started.elapsed() / n as u32)
    );

    // Connecting directly costs TCP, TLS and SCRAM every time.
    let started = Instant::now();
    let direct = pg.tokio_client().await;
    direct.query_one(sql, &[&id]).await?;
    println!(
        "for comparison, one direct TLS connect + query: {}",
        ms(started.elapsed())
    );

    let held: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'warmpool'",
            &[],
        )
        .await?
        .get(0);
    println!("server connections held by warmpool: {held}");

    drop(client);
    let status = ext.terminate();
    println!("extension stopped on SIGTERM: {status}");
    Ok(())
}
