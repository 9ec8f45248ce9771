//! A client that goes away in the middle of a statement has it cancelled on the server
//! (CancelRequest), and its connection returns to the pool only once it is idle again.

use warmpool_tests::{Extension, PgServer};

/// Waits until the server runs `needle` on some backend, inside `pg_sleep`: the text shows as
/// active already while the statement is parsed, before its Execute has arrived.
async fn wait_until_running(direct: &tokio_postgres::Client, needle: &str) -> i32 {
    loop {
        let row = direct
            .query_opt(
                "SELECT pid FROM pg_stat_activity \
                 WHERE state = 'active' AND query = $1 AND wait_event = 'PgSleep'",
                &[&needle],
            )
            .await
            .unwrap();
        if let Some(r) = row {
            return r.get(0);
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn client_leaving_mid_query_cancels_it() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "1")]);
    let c = ext.client().await;
    let direct = pg.tokio_client().await;

    let sql = "SELECT pg_sleep(60)";
    let long = {
        let c = c.clone();
        tokio::spawn(async move { c.query(sql, &[]).await })
    };
    let pid = wait_until_running(&direct, sql).await;
    // Dropping the caller's future closes its session's socket.
    long.abort();
    let _ = long.await;

    // With one pooled connection, this runs only once the sleep was cancelled and the
    // connection is idle again; well before the sleep would have ended.
    let again: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, pid, "the same connection, reused after the cancel");
    // The server writes its log apart from answering: the line may land just after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(pg.log_path()).unwrap();
        if log.contains("canceling statement due to user request") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        // The server log is a file with no change notification: poll it.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test]
async fn client_leaving_mid_transaction_statement_releases_its_locks() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t VALUES (1, 0)")
        .await
        .unwrap();
    let direct = pg.tokio_client().await;

    let sql = "SELECT pg_sleep(60) FROM t";
    let long = {
        let c = c.clone();
        tokio::spawn(async move {
            let tx = c.transaction().await.unwrap();
            tx.execute("UPDATE t SET n = 1 WHERE id = 1", &[])
                .await
                .unwrap();
            tx.query(sql, &[]).await
        })
    };
    wait_until_running(&direct, sql).await;
    long.abort();
    let _ = long.await;

    // The row lock the transaction took is released (cancel, then rollback) and its update
    // never happened.
    direct
        .batch_execute("SET lock_timeout = '5s'")
        .await
        .unwrap();
    direct
        .execute("UPDATE t SET n = n + 10 WHERE id = 1", &[])
        .await
        .unwrap();
    let n: i32 = direct
        .query_one("SELECT n FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10);
}
