//! `Client::with_deadline`: nothing a handle with a deadline starts keeps running, or holding
//! locks, past that deadline. A running statement is cancelled on the server (CancelRequest),
//! and the transaction it was in, or a transaction merely left open, is rolled back.

use std::time::{Duration, SystemTime};

use warmpool_tests::{Extension, PgServer};

/// A guard against a hung test, never a timing assertion.
const GUARD: &str = "30s";

/// How long a test waits for a log line before it fails.
const GUARD_WAIT: Duration = Duration::from_secs(30);

async fn setup(pg: &PgServer, ext: &Extension) -> warmpool::Client {
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)")
        .await
        .unwrap();
    let _ = pg;
    client
}

/// A direct connection whose lock waits end at the guard instead of hanging the test.
async fn direct(pg: &PgServer) -> tokio_postgres::Client {
    let direct = pg.tokio_client().await;
    direct
        .batch_execute(&format!("SET lock_timeout = '{GUARD}'"))
        .await
        .unwrap();
    direct
}

async fn sleeping_backends(direct: &tokio_postgres::Client) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%' \
             AND state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn soon() -> SystemTime {
    SystemTime::now() + Duration::from_millis(1500)
}

#[tokio::test]
async fn statement_is_cancelled_on_the_server_at_the_deadline() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = setup(&pg, &ext).await;
    let bounded = client.with_deadline(soon());
    let err = bounded
        .query("SELECT pg_sleep(600)", &[])
        .await
        .expect_err("pg_sleep(600) must not outlive the deadline");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("deadline"), "{err}");
    let direct = direct(&pg).await;
    assert_eq!(
        sleeping_backends(&direct).await,
        0,
        "the statement still runs"
    );
    // The connection it ran on is clean and back in service, for this handle and others.
    let n: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    assert!(!ext.logs().contains("panicked"));
}

#[tokio::test]
async fn no_deadline_no_cancel() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = setup(&pg, &ext).await;
    // Without with_deadline nothing is bounded: a statement longer than any deadline used in
    // these tests completes.
    let bounded = client.with_deadline(SystemTime::now() + Duration::from_secs(3600));
    bounded.query("SELECT pg_sleep(0.5)", &[]).await.unwrap();
    client.query("SELECT pg_sleep(0.5)", &[]).await.unwrap();
    let unbounded = bounded.without_deadline();
    unbounded.query("SELECT pg_sleep(0.5)", &[]).await.unwrap();
}

#[tokio::test]
async fn transaction_at_the_deadline_is_rolled_back_and_its_locks_released() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = setup(&pg, &ext).await;
    let bounded = client.with_deadline(soon());
    let tx = bounded.transaction().await.unwrap();
    tx.execute("UPDATE t SET v = 1 WHERE id = 1", &[])
        .await
        .unwrap();
    let err = tx
        .query("SELECT pg_sleep(600)", &[])
        .await
        .expect_err("cancelled at the deadline");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    // The row lock went with the rollback: a direct update does not wait for it.
    let direct = direct(&pg).await;
    direct
        .batch_execute("SET lock_timeout = '1ms'")
        .await
        .unwrap();
    direct
        .execute("UPDATE t SET v = v + 10 WHERE id = 1", &[])
        .await
        .expect("the cancelled transaction still holds its row lock");
    let err = tx
        .commit()
        .await
        .expect_err("the transaction was rolled back");
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"), "{err}");
    let v: i32 = direct
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        v, 10,
        "the update of the cancelled transaction was committed"
    );
    assert_eq!(sleeping_backends(&direct).await, 0);
}

#[tokio::test]
async fn transaction_left_open_is_rolled_back_at_the_deadline() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = setup(&pg, &ext).await;
    let bounded = client.with_deadline(soon());
    let tx = bounded.transaction().await.unwrap();
    tx.execute("UPDATE t SET v = 1 WHERE id = 1", &[])
        .await
        .unwrap();
    // The transaction sits idle holding the row lock. The direct update waits for it, and
    // returns once the extension rolls back at the deadline: that is the signal.
    let direct = direct(&pg).await;
    direct
        .execute("UPDATE t SET v = v + 10 WHERE id = 1", &[])
        .await
        .expect("the open transaction kept its lock past the deadline");
    let err = tx.commit().await.expect_err("rolled back at the deadline");
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"), "{err}");
    let v: i32 = direct
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 10);
}

#[tokio::test]
async fn a_lock_wait_is_cancelled_at_the_deadline() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = setup(&pg, &ext).await;
    let direct = direct(&pg).await;
    direct
        .batch_execute("BEGIN; UPDATE t SET v = 5 WHERE id = 1")
        .await
        .unwrap();
    let err = client
        .with_deadline(soon())
        .execute("UPDATE t SET v = 7 WHERE id = 1", &[])
        .await
        .expect_err("the lock wait must end at the deadline");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    direct.batch_execute("COMMIT").await.unwrap();
    let v: i32 = direct
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 5, "the cancelled update must not have been applied");
}

#[tokio::test]
async fn a_batch_is_cancelled_and_rolled_back_at_the_deadline() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = setup(&pg, &ext).await;
    let bounded = client.with_deadline(soon());
    let id = 1i32;
    let outcome = bounded
        .batch()
        .execute("UPDATE t SET v = v + 1 WHERE id = $1", &[&id])
        .query("SELECT pg_sleep(600)", &[])
        .transaction(true)
        .run()
        .await;
    // The sleep was cancelled on the server with 57014, whether the batch as a whole or its
    // statement reports it.
    let codes: Vec<String> = match &outcome {
        Err(e) => vec![e.code().map(|c| c.code().to_owned()).unwrap_or_default()],
        Ok(results) => results
            .iter()
            .filter_map(|r| r.error())
            .map(|e| e.code().map(|c| c.code().to_owned()).unwrap_or_default())
            .collect(),
    };
    assert!(codes.iter().any(|c| c == "57014"), "{outcome:?}");
    let direct = direct(&pg).await;
    assert_eq!(
        sleeping_backends(&direct).await,
        0,
        "the statement still runs"
    );
    // Nothing of the batch took effect, and the row is not left locked.
    let v: i32 = direct
        .query_one("UPDATE t SET v = v WHERE id = 1 RETURNING v", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 0, "the batch's update was committed");
}

#[tokio::test]
async fn a_cached_query_that_misses_is_cancelled_at_the_deadline() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = setup(&pg, &ext).await;
    let bounded = client.with_deadline(soon());
    let err = bounded
        .query_cached("SELECT pg_sleep(600)::text", &[], Duration::from_secs(60))
        .await
        .expect_err("a cache miss must not outlive the deadline");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(err.to_string().contains("deadline"), "{err}");
    let direct = direct(&pg).await;
    assert_eq!(
        sleeping_backends(&direct).await,
        0,
        "the statement still runs"
    );
    // Nothing was cached, and the connection is clean and back in service.
    let (rows, outcome) = client
        .query_cached_outcome("SELECT 'ok'::text", &[], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "ok", "{outcome:?}");
    assert!(!ext.logs().contains("panicked"));
}

#[tokio::test]
async fn a_warm_up_read_that_goes_to_the_database_is_cancelled_at_the_deadline() {
    let pg = PgServer::start();
    // The table is missing at Init, so the data set is not loaded and a read runs the query.
    let mut ext = Extension::start(
        &pg,
        &[
            (
                "WARMPOOL_WARMUP",
                r#"{"slow": "SELECT pg_sleep(s)::text FROM nap"}"#,
            ),
            ("WARMPOOL_WARMUP_TIMEOUT_MS", "200"),
        ],
    );
    ext.wait_for_log(
        "not all loaded within WARMPOOL_WARMUP_TIMEOUT_MS",
        GUARD_WAIT,
    );
    let client = setup(&pg, &ext).await;
    client
        .batch_execute("CREATE TABLE nap (s float8); INSERT INTO nap VALUES (600)")
        .await
        .unwrap();
    let err = client
        .with_deadline(soon())
        .warm("slow")
        .await
        .expect_err("a warm-up read must not outlive the deadline");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(err.to_string().contains("deadline"), "{err}");
    // The session's connection is clean and back in service.
    let n: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    assert!(!ext.logs().contains("panicked"));
}

/// A COMMIT is bounded even without a deadline: one that the database holds past
/// `WARMPOOL_COMMIT_TIMEOUT_MS` (here, a deferred trigger that sleeps) is cancelled, the client
/// is told it was rolled back, and nothing of the transaction is committed.
#[tokio::test]
async fn a_commit_past_the_commit_timeout_is_cancelled_and_rolled_back() {
    let pg = PgServer::start();
    let ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_COMMIT_TIMEOUT_MS", "500"),
            ("WARMPOOL_MAX_SIZE", "1"),
        ],
    );
    let client = setup(&pg, &ext).await;
    client
        .batch_execute(
            "CREATE FUNCTION slow_check() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(600); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED \
             FOR EACH ROW EXECUTE FUNCTION slow_check()",
        )
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (2, 0)", &[])
        .await
        .unwrap();
    let err = tx
        .commit()
        .await
        .expect_err("a COMMIT held past the commit timeout was reported committed");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(
        err.to_string().contains("WARMPOOL_COMMIT_TIMEOUT_MS"),
        "{err}"
    );
    assert!(err.to_string().contains("rolled back"), "{err}");
    let direct = direct(&pg).await;
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM t WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the cancelled COMMIT committed its row");
    assert_eq!(sleeping_backends(&direct).await, 0);
    let sleeping_triggers: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'COMMIT' AND state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sleeping_triggers, 0, "the COMMIT still runs");
    // The connection was settled and serves the next transaction, which commits.
    client
        .batch_execute("DROP TRIGGER slow ON t")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (3, 0)", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM t WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    assert!(ext.logs().contains("WARMPOOL_COMMIT_TIMEOUT_MS"));
    assert!(!ext.logs().contains("panicked"));
}
