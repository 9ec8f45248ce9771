//! The pool: bounded connections, concurrency without serialisation, clean reuse.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use warmpool::SqlState;
use warmpool_tests::{Extension, PgServer};

/// Server-side connections the extension holds right now.
async fn backends(direct: &tokio_postgres::Client) -> i64 {
    direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'warmpool'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Runs `tasks` concurrent queries and, meanwhile, samples how many connections the server sees.
async fn run_concurrently(pg: &PgServer, clients: Vec<warmpool::Client>, tasks: usize) -> i64 {
    let direct = pg.tokio_client().await;
    let done = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for i in 0..tasks {
        let c = clients[i % clients.len()].clone();
        handles.push(tokio::spawn(async move {
            let row = c
                .query_one("SELECT $1::int8 * 2, pg_sleep(0.02)::text", &[&(i as i64)])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i64>(0), i as i64 * 2);
        }));
    }
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(backends(&direct).await);
            }
            peak
        })
    };
    for h in handles {
        h.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap()
}

#[tokio::test]
async fn concurrent_tasks_never_exceed_max_size() {
    let pg = PgServer::start();
    let ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_MAX_SIZE", "4"),
            ("WARMPOOL_WAIT_TIMEOUT_MS", "30000"),
        ],
    );
    let one = ext.client().await;
    let peak = run_concurrently(&pg, vec![one], 32).await;
    assert!(
        (1..=4).contains(&peak),
        "peak {peak} connections with max 4"
    );

    let several = vec![ext.client().await, ext.client().await, ext.client().await];
    let peak = run_concurrently(&pg, several, 32).await;
    assert!(
        (1..=4).contains(&peak),
        "peak {peak} connections with max 4"
    );
}

#[tokio::test]
async fn one_client_runs_tasks_in_parallel() {
    // With four connections, four tasks that each wait on a barrier inside the database can only
    // finish if they run at the same time; serialised behind one session they would deadlock
    // until the lock timeout.
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "4")]);
    let c = ext.client().await;
    c.batch_execute("CREATE TABLE gate (id int)").await.unwrap();
    let holder = c.transaction().await.unwrap();
    holder
        .execute("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE", &[])
        .await
        .unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.query("SELECT count(*) FROM gate", &[]).await.unwrap();
            })
        })
        .collect();
    // The waiters are blocked on the lock, in the database, all at once.
    let direct = pg.tokio_client().await;
    loop {
        let waiting: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'warmpool' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 3 {
            break;
        }
        tokio::task::yield_now().await;
    }
    holder.commit().await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
}

#[tokio::test]
async fn exhausted_pool_times_out_with_53300() {
    let pg = PgServer::start();
    let ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_MAX_SIZE", "1"),
            ("WARMPOOL_WAIT_TIMEOUT_MS", "300"),
        ],
    );
    let c = ext.client().await;
    let tx = c.transaction().await.unwrap();
    tx.query("SELECT 1", &[]).await.unwrap();
    let err = c.query("SELECT 2", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    assert!(err.is_timeout());
    assert!(err.is_extension() && err.as_db_error().is_none());
    let text = err.to_string();
    assert!(
        text.contains("WARMPOOL_WAIT_TIMEOUT_MS") && text.contains("WARMPOOL_MAX_SIZE"),
        "{text}"
    );
    // A transaction that cannot get a connection fails, and nothing runs outside it.
    let tx2 = c.transaction().await.unwrap();
    let err = tx2
        .execute("CREATE TABLE should_not_exist (a int)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    drop(tx2);
    tx.commit().await.unwrap();
    let exists: bool = c
        .query_one("SELECT to_regclass('should_not_exist') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!exists);
}

#[tokio::test]
async fn connections_outlive_clients_and_keep_statements() {
    let pg = PgServer::start();
    let ext = Extension::start(
        &pg,
        &[("WARMPOOL_MAX_SIZE", "1"), ("WARMPOOL_WARM_SIZE", "1")],
    );
    let first = ext.client().await;
    let pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(first);
    let second = ext.client().await;
    let again: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid, again, "the server connection outlives the client");
    let prepared: i64 = second
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        prepared >= 2,
        "statements stay prepared on the connection: {prepared}"
    );
}

#[tokio::test]
async fn session_state_is_reset_but_statements_kept() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "1")]);
    let c = ext.client().await;
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    c.batch_execute(
        "SET search_path = nowhere; CREATE TEMP TABLE scratch (a int); SELECT pg_advisory_lock(42)",
    )
    .await
    .unwrap();
    let row = c
        .query_one(
            "SELECT pg_backend_pid(), current_setting('search_path'), to_regclass('pg_temp.scratch') IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), pid, "same connection");
    assert_eq!(row.get::<_, String>(1), "\"$user\", public");
    assert!(row.get::<_, bool>(2), "temp table dropped");
    let locks: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(locks, 0, "advisory lock released");
    let prepared: i64 = c
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(prepared >= 1, "prepared statements survive the reset");
}

#[tokio::test]
async fn repeated_statement_is_parsed_once() {
    // The server logs each Parse of the extended protocol; a repeated statement must cost
    // Bind/Execute only.
    let pg = PgServer::start();
    pg.set_config("log_min_duration_statement", "0");
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "1")]);
    let c = ext.client().await;
    for i in 0..10i32 {
        let row = c
            .query_one("SELECT $1::int4 AS marker_7f3a", &[&i])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), i);
    }
    let log = std::fs::read_to_string(pg.log_path()).unwrap();
    let parses = log
        .lines()
        .filter(|l| l.contains("parse") && l.contains("marker_7f3a"))
        .count();
    let executes = log
        .lines()
        .filter(|l| l.contains("execute") && l.contains("marker_7f3a"))
        .count();
    assert_eq!(executes, 10, "log:\n{log}");
    assert_eq!(parses, 1, "log:\n{log}");
}

#[tokio::test]
async fn sessions_past_the_limit_wait_then_get_53300() {
    let pg = PgServer::start();
    let ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_MAX_SESSIONS", "2"),
            ("WARMPOOL_WAIT_TIMEOUT_MS", "300"),
        ],
    );
    // Each client's session holds a transaction, so neither can give up its slot (an idle one
    // would: see `at_the_session_limit_a_new_session_takes_the_slot_of_the_longest_idle_one`).
    let a = ext.client().await;
    let b = ext.client().await;
    let ta = a.transaction().await.unwrap();
    ta.execute("SELECT 1", &[]).await.unwrap();
    let tb = b.transaction().await.unwrap();
    tb.execute("SELECT 1", &[]).await.unwrap();
    let err = warmpool::Client::connect_to(ext.socket())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    assert!(err.to_string().contains("WARMPOOL_MAX_SESSIONS"), "{err}");
    // A freed slot admits the next session.
    drop(tb);
    drop(b);
    let c = ext.client().await;
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    // The transaction that kept its slot is intact.
    assert_eq!(
        ta.query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
    ta.commit().await.unwrap();
}
