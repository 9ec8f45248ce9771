//! Transactions pin one connection, commit and roll back as PostgreSQL does, and never leave a
//! lock behind when their client goes away.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use warmpool::SqlState;
use warmpool_tests::{Extension, PgServer};

async fn setup(c: &warmpool::Client) {
    c.batch_execute("CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL); INSERT INTO acct VALUES (1, 0), (2, 0)")
        .await
        .unwrap();
}

async fn count(c: &warmpool::Client, id: i32) -> i32 {
    c.query_one("SELECT n FROM acct WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn commit_is_visible_rollback_is_not() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;

    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE acct SET n = n + 1 WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    // Inside the transaction the change is visible; outside it is not yet.
    assert_eq!(
        tx.query_one("SELECT n FROM acct WHERE id = 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    assert_eq!(count(&c, 1).await, 0);
    let pid_a: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let pid_b: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid_a, pid_b, "a transaction stays on one connection");
    tx.commit().await.unwrap();
    assert_eq!(count(&c, 1).await, 1);

    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE acct SET n = 100 WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(&c, 1).await, 1);

    // A transaction with nothing in it commits without touching the database.
    c.transaction().await.unwrap().commit().await.unwrap();
}

#[tokio::test]
async fn dropped_transaction_rolls_back() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "1")]);
    let c = ext.client().await;
    setup(&c).await;
    {
        let tx = c.transaction().await.unwrap();
        tx.execute("UPDATE acct SET n = 5 WHERE id = 2", &[])
            .await
            .unwrap();
    }
    // With one pooled connection, this only runs once the abandoned transaction has been rolled
    // back and its connection returned.
    assert_eq!(count(&c, 2).await, 0);
    c.execute("UPDATE acct SET n = n + 1 WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(count(&c, 2).await, 1);
}

#[tokio::test]
async fn failed_statement_aborts_the_transaction() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE acct SET n = 9 WHERE id = 1", &[])
        .await
        .unwrap();
    let err = tx
        .execute("INSERT INTO acct VALUES (1, 0)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    let err = tx.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    let err = tx.commit().await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(count(&c, 1).await, 0);
}

#[tokio::test]
async fn transaction_options_and_batches() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;
    let tx = c
        .build_transaction()
        .isolation_level(warmpool::IsolationLevel::Serializable)
        .read_only(true)
        .start()
        .await
        .unwrap();
    let level: String = tx
        .query_one("SHOW transaction_isolation", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(level, "serializable");
    let err = tx.execute("UPDATE acct SET n = 1", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    tx.rollback().await.unwrap();

    let tx = c.transaction().await.unwrap();
    tx.batch_execute("UPDATE acct SET n = 7 WHERE id = 1; UPDATE acct SET n = 8 WHERE id = 2")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((count(&c, 1).await, count(&c, 2).await), (7, 8));
}

#[tokio::test]
async fn killed_client_leaves_no_lock() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;

    let mut holder = Command::new(env!("CARGO_BIN_EXE_hold_tx"))
        .args([ext.socket().to_str().unwrap(), "acct", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");

    // While the holder lives, its row lock blocks writers.
    let direct = pg.tokio_client().await;
    direct
        .batch_execute("SET lock_timeout = '200ms'")
        .await
        .unwrap();
    let blocked = direct
        .execute("UPDATE acct SET n = 50 WHERE id = 1", &[])
        .await
        .unwrap_err();
    assert_eq!(
        blocked.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
    );

    holder.kill().unwrap();
    holder.wait().unwrap();

    // Once the process is gone, its transaction is rolled back: the row unlocks (well within
    // the lock timeout) and its update never happened.
    direct
        .batch_execute("SET lock_timeout = '1s'")
        .await
        .unwrap();
    direct
        .execute("UPDATE acct SET n = n + 10 WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(count(&c, 1).await, 10);
}

#[tokio::test]
async fn statement_methods_take_a_shared_reference() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;
    // No `mut`: as with tokio-postgres.
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE acct SET n = 3 WHERE id = 1", &[])
        .await
        .unwrap();
    // Requests from two futures at once on the one session go one after the other, on the
    // transaction's one connection.
    let (a, b) = tokio::join!(
        tx.query_one("SELECT pg_backend_pid(), n FROM acct WHERE id = 1", &[]),
        tx.query_one("SELECT pg_backend_pid(), n FROM acct WHERE id = 1", &[]),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.get::<_, i32>(0), b.get::<_, i32>(0));
    assert_eq!((a.get::<_, i32>(1), b.get::<_, i32>(1)), (3, 3));
    tx.commit().await.unwrap();
    assert_eq!(count(&c, 1).await, 3);

    // A request whose future is dropped half way leaves the transaction's session closed: the
    // transaction can only roll back, and the extension rolls it back.
    let tx = c.transaction().await.unwrap();
    tx.execute("UPDATE acct SET n = 99 WHERE id = 1", &[])
        .await
        .unwrap();
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        tx.query("SELECT pg_sleep(30)", &[]),
    )
    .await;
    assert!(gave_up.is_err(), "the sleep cannot finish in 200 ms");
    let err = tx.execute("SELECT 1", &[]).await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    assert!(tx.commit().await.unwrap_err().is_closed());
    assert_eq!(count(&c, 1).await, 3);
}

#[tokio::test]
async fn savepoints_roll_back_and_release_as_in_postgres() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;

    let mut tx = c.transaction().await.unwrap();
    // The first request of the transaction is a savepoint: BEGIN goes out with it.
    {
        let sp = tx.transaction().await.unwrap();
        sp.execute("UPDATE acct SET n = 10 WHERE id = 1", &[])
            .await
            .unwrap();
        sp.rollback().await.unwrap();
    }
    tx.execute("UPDATE acct SET n = n + 1 WHERE id = 2", &[])
        .await
        .unwrap();
    {
        // Dropped without commit: rolled back, by a request queued on the session that goes
        // out ahead of the next one.
        let sp = tx.transaction().await.unwrap();
        sp.execute("UPDATE acct SET n = 20 WHERE id = 1", &[])
            .await
            .unwrap();
    }
    let n: i32 = tx
        .query_one("SELECT n FROM acct WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 0,
        "the dropped savepoint's work is gone inside the transaction"
    );
    {
        let mut sp = tx.savepoint("outer").await.unwrap();
        sp.execute("UPDATE acct SET n = 30 WHERE id = 1", &[])
            .await
            .unwrap();
        {
            // Nested two deep, dropped: only the inner work goes.
            let inner = sp.transaction().await.unwrap();
            inner
                .execute("UPDATE acct SET n = 40 WHERE id = 2", &[])
                .await
                .unwrap();
        }
        sp.commit().await.unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(
        count(&c, 1).await,
        30,
        "the released savepoint's work commits"
    );
    assert_eq!(
        count(&c, 2).await,
        1,
        "the outer transaction's work commits"
    );
}

#[tokio::test]
async fn rolling_back_to_a_savepoint_ends_a_failure_inside_it() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;

    let mut tx = c.transaction().await.unwrap();
    tx.execute("UPDATE acct SET n = 1 WHERE id = 1", &[])
        .await
        .unwrap();
    {
        let sp = tx.transaction().await.unwrap();
        let err = sp
            .execute("INSERT INTO acct VALUES (1, 0)", &[])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
        let err = sp.query("SELECT 1", &[]).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
        sp.rollback().await.unwrap();
    }
    tx.execute("UPDATE acct SET n = 2 WHERE id = 2", &[])
        .await
        .unwrap();
    {
        // The same, the savepoint dropped rather than rolled back.
        let sp = tx.transaction().await.unwrap();
        sp.execute("INSERT INTO acct VALUES (2, 0)", &[])
            .await
            .unwrap_err();
    }
    tx.execute("UPDATE acct SET n = n + 1 WHERE id = 2", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((count(&c, 1).await, count(&c, 2).await), (1, 3));

    // A savepoint outside a transaction's reach: a failed transaction cannot open one.
    let mut tx = c.transaction().await.unwrap();
    tx.execute("SELECT 1/0", &[]).await.unwrap_err();
    let err = tx.transaction().await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    let err = tx.commit().await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
}

#[tokio::test]
async fn savepoint_names_are_quoted_and_checked() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;

    let mut tx = c.transaction().await.unwrap();
    // Any text is a name: it is sent as a quoted identifier, never as SQL.
    let name = r#"a "b"; UPDATE acct SET n = 666; --"#;
    {
        let sp = tx.savepoint(name).await.unwrap();
        sp.execute("UPDATE acct SET n = 5 WHERE id = 1", &[])
            .await
            .unwrap();
        sp.commit().await.unwrap();
    }
    for bad in ["", "a\0b"] {
        let err = tx.savepoint(bad).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::INVALID_NAME), "{bad:?}: {err}");
    }
    // A refused name sends nothing: the transaction is unharmed.
    tx.commit().await.unwrap();
    assert_eq!((count(&c, 1).await, count(&c, 2).await), (5, 0));
}
