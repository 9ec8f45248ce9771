//! `Client::with_deadline` against a server that answers nothing at all: the postmaster and
//! every backend stopped with SIGSTOP, so neither the statement nor the CancelRequest is
//! answered. The client still gets its answer at the deadline (plus at most
//! `WARMPOOL_RESET_TIMEOUT_MS` for the cancel): 57014, or 08007 for a COMMIT whose outcome is
//! unknown, never a commit. The connection is closed, and once the server resumes the next
//! statement runs on a new one.
//!
//! Each test holds the server stopped until the answer arrives, or for [`STOPPED`] at most: an
//! answer read while the guard is held came while the server was stopped.

use std::time::{Duration, SystemTime};

use warmpool_tests::{Extension, PgServer};

/// How long a test keeps the server stopped waiting for an answer. The deadlines are 1 to 2 s
/// and the reset timeout 500 ms, so an answer that keeps its promise comes well within this.
const STOPPED: Duration = Duration::from_secs(8);

/// A guard against a hung test, never a timing assertion.
const GUARD: Duration = Duration::from_secs(30);

/// One connection, so the next statement's backend shows whether the abandoned connection left
/// the pool; a short reset timeout bounds the wait for a cancel that cannot be answered.
const ENV: &[(&str, &str)] = &[
    ("WARMPOOL_MAX_SIZE", "1"),
    ("WARMPOOL_RESET_TIMEOUT_MS", "500"),
    // The idle connection is handed out without a check, so the statement goes out on it.
    ("WARMPOOL_CHECK_AFTER_IDLE_MS", "600000"),
];

fn in_ms(ms: u64) -> SystemTime {
    SystemTime::now() + Duration::from_millis(ms)
}

async fn setup(ext: &Extension) -> warmpool::Client {
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    client
}

/// The backend serving `client`'s next statement (the extension's only connection).
async fn backend_pid(client: &warmpool::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

fn code(e: &warmpool::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Waits until a `pg_sleep` runs on the server.
async fn until_sleeping(direct: &tokio_postgres::Client) {
    let until = std::time::Instant::now() + GUARD;
    loop {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%' \
                 AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(std::time::Instant::now() < until, "the sleep never started");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_running_when_the_server_stops_gets_57014_and_its_transaction_is_lost() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, ENV);
    let client = setup(&ext).await;
    let before = backend_pid(&client).await;
    let direct = pg.tokio_client().await;
    let bounded = client.with_deadline(in_ms(2000));
    let tx = bounded.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    // The server stops while the statement runs, before the deadline.
    let answered = tokio::time::timeout(STOPPED, async {
        tokio::join!(tx.query("SELECT pg_sleep(3)", &[]), async {
            until_sleeping(&direct).await;
            pg.pause()
        })
    })
    .await;
    let (outcome, paused) = answered.expect("no answer while the server was stopped");
    drop(paused);
    let err = outcome.expect_err("the statement cannot have completed on a stopped server");
    assert_eq!(code(&err), Some("57014"), "{err}");
    assert!(err.is_timeout(), "{err}");
    // The transaction is lost: rolled back, never committed.
    let err = tx.commit().await.expect_err("the transaction was lost");
    assert_eq!(code(&err), Some("25P02"), "{err}");
    // The next statement runs on a new connection.
    let after = backend_pid(&client).await;
    assert_ne!(
        after, before,
        "the abandoned connection was handed out again"
    );
    pg.wait_backend_gone(before.into());
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the lost transaction's insert was committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_sent_while_the_server_is_stopped_gets_57014() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, ENV);
    let client = setup(&ext).await;
    let before = backend_pid(&client).await;
    let paused = pg.pause();
    let answered = tokio::time::timeout(
        STOPPED,
        client.with_deadline(in_ms(1000)).query_one("SELECT 1", &[]),
    )
    .await;
    drop(paused);
    let err = answered
        .expect("no answer while the server was stopped")
        .expect_err("a stopped server cannot answer");
    assert_eq!(code(&err), Some("57014"), "{err}");
    let after = backend_pid(&client).await;
    assert_ne!(
        after, before,
        "the abandoned connection was handed out again"
    );
    assert!(!ext.logs().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_stopped_server_never_answers_is_reported_unknown_never_committed() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, ENV);
    let client = setup(&ext).await;
    let before = backend_pid(&client).await;
    let bounded = client.with_deadline(in_ms(1500));
    let tx = bounded.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let paused = pg.pause();
    let answered = tokio::time::timeout(STOPPED, tx.commit()).await;
    drop(paused);
    let err = answered
        .expect("no answer while the server was stopped")
        .expect_err("a COMMIT the database never answered was reported committed");
    // PostgreSQL's transaction_resolution_unknown: it may or may not have committed.
    assert_eq!(code(&err), Some("08007"), "{err}");
    assert!(err.to_string().contains("unknown"), "{err}");
    assert!(err.is_timeout(), "{err}");
    let after = backend_pid(&client).await;
    assert_ne!(
        after, before,
        "the abandoned connection was handed out again"
    );
}

/// Without a deadline, `WARMPOOL_COMMIT_TIMEOUT_MS` bounds the COMMIT: the same answer, 08007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_with_no_deadline_is_bounded_by_the_commit_timeout() {
    let pg = PgServer::start();
    let mut env = ENV.to_vec();
    env.push(("WARMPOOL_COMMIT_TIMEOUT_MS", "1000"));
    let ext = Extension::start(&pg, &env);
    let client = setup(&ext).await;
    let before = backend_pid(&client).await;
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let paused = pg.pause();
    let answered = tokio::time::timeout(STOPPED, tx.commit()).await;
    drop(paused);
    let err = answered
        .expect("no answer while the server was stopped")
        .expect_err("a COMMIT the database never answered was reported committed");
    assert_eq!(code(&err), Some("08007"), "{err}");
    assert!(
        err.to_string().contains("WARMPOOL_COMMIT_TIMEOUT_MS"),
        "{err}"
    );
    let after = backend_pid(&client).await;
    assert_ne!(
        after, before,
        "the abandoned connection was handed out again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_stopped_server_never_answers_is_reported_unknown_never_committed() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, ENV);
    let client = setup(&ext).await;
    let insert = "INSERT INTO t VALUES ($1)";
    let batch = |id: i32, deadline: SystemTime| {
        let client = client.with_deadline(deadline);
        async move {
            client
                .batch()
                .execute(insert, &[&id])
                .transaction(true)
                .run()
                .await
        }
    };
    // Once, so the statement is described and prepared, and the batch goes out in one piece.
    batch(1, in_ms(60_000)).await.unwrap();
    let before = backend_pid(&client).await;
    let paused = pg.pause();
    let answered = tokio::time::timeout(STOPPED, batch(2, in_ms(1000))).await;
    drop(paused);
    let err = answered
        .unwrap_or_else(|_| panic!("no answer while the server was stopped\n{}", ext.logs()))
        .expect_err("a batch the database never answered was reported committed");
    assert_eq!(code(&err), Some("08007"), "{err}");
    let after = backend_pid(&client).await;
    assert_ne!(
        after, before,
        "the abandoned connection was handed out again"
    );
    assert!(!ext.logs().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_to_the_stopped_server_ends_at_the_deadline() {
    let pg = PgServer::start();
    // No connection is opened ahead, so the statement has to connect.
    let ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_WARM_SIZE", "0"),
            ("WARMPOOL_MAX_SIZE", "1"),
            ("WARMPOOL_RESET_TIMEOUT_MS", "500"),
        ],
    );
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    let paused = pg.pause();
    let answered = tokio::time::timeout(
        STOPPED,
        client.with_deadline(in_ms(1000)).query_one("SELECT 1", &[]),
    )
    .await;
    drop(paused);
    let err = answered
        .expect("no answer while the server was stopped")
        .expect_err("a stopped server cannot answer");
    assert_eq!(code(&err), Some("57014"), "{err}");
    assert!(err.to_string().contains("nothing was sent"), "{err}");
    let n: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}
