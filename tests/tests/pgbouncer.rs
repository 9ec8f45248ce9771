//! warmpool in front of PgBouncer in transaction mode.
//!
//! The extension keeps a cache of prepared statements per connection and reuses each statement
//! across invocations. Behind a transaction-mode pooler, each of the extension's connections is
//! a client of PgBouncer and gets a server connection per transaction only, so a statement
//! prepared in one transaction is executed on another server connection in the next: a cache
//! that assumed one server per connection would get `prepared statement "s3" does not exist`.
//! PgBouncer 1.21 and later track protocol-level prepared statements when
//! `max_prepared_statements` is set, and prepare them again wherever they are needed.
//!
//! Every PgBouncer here has two server connections, handed out in turn (`server_round_robin`),
//! and the tests first hold two transactions open at once so that both exist: consecutive
//! transactions then alternate between them. The control test shows that the same workload does
//! fail without `max_prepared_statements`, so the other tests are not passing by luck.

use std::collections::BTreeSet;

use warmpool::SqlState;
use warmpool_tests::pgbouncer::Options;
use warmpool_tests::{Extension, PgBouncer, PgServer};

/// The extension, configured as `pg` but connected through `bouncer`, with `env` on top.
fn extension(pg: &PgServer, bouncer: &PgBouncer, env: &[(&str, &str)]) -> Extension {
    let port = bouncer.port().to_string();
    let mut vars = vec![("PGPORT", port.as_str())];
    vars.extend_from_slice(env);
    Extension::start(pg, &vars)
}

async fn backend_pid(c: &warmpool::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Holds two transactions open at once through `bouncer`, on connections of the test's own, so
/// that PgBouncer opens both of its server connections; returns their backend pids.
async fn open_both_server_connections(pg: &PgServer, bouncer: &PgBouncer) -> BTreeSet<i32> {
    let config = bouncer.tokio_config(pg);
    let mut clients = Vec::new();
    for _ in 0..2 {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(pg.rustls_config());
        let (client, connection) = config.connect(tls).await.unwrap_or_else(|e| {
            panic!(
                "connect through PgBouncer: {e}; log:\n{}",
                bouncer.log_tail(20)
            )
        });
        tokio::spawn(connection);
        clients.push(client);
    }
    let mut pids = BTreeSet::new();
    for c in &clients {
        // The simple query protocol: no prepared statement of the test's own.
        let rows = c
            .simple_query("BEGIN; SELECT pg_backend_pid()")
            .await
            .unwrap();
        let pid = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        });
        pids.insert(pid.expect("a backend pid"));
    }
    assert_eq!(
        pids.len(),
        2,
        "two open transactions share a server connection"
    );
    for c in &clients {
        c.simple_query("COMMIT").await.unwrap();
    }
    pids
}

/// Backends of the application role on the server: PgBouncer's server connections.
fn server_backends(pg: &PgServer) -> BTreeSet<i32> {
    pg.superuser_psql(&format!(
        "SELECT pid FROM pg_stat_activity WHERE usename = '{}' AND backend_type = 'client backend'",
        pg.user()
    ))
    .lines()
    .map(|l| l.parse().unwrap())
    .collect()
}

/// How many database connections the extension opened (to PgBouncer).
fn connections_opened(ext: &Extension) -> usize {
    ext.logs().matches("opened a database connection").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_statements_from_many_sessions_and_connections() {
    let pg = PgServer::start();
    let bouncer = PgBouncer::start(&pg, &Options::default());
    let ext = extension(
        &pg,
        &bouncer,
        &[("WARMPOOL_MAX_SIZE", "4"), ("WARMPOOL_WARM_SIZE", "4")],
    );
    let servers = open_both_server_connections(&pg, &bouncer).await;
    let setup = ext.client().await;
    setup
        .batch_execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        .await
        .unwrap();
    setup
        .execute(
            "INSERT INTO counters SELECT g, 0 FROM generate_series(0, 2) g",
            &[],
        )
        .await
        .unwrap();

    // Eight function "invocations" at once, each with its own client (its own sessions), all
    // running the same statements: the extension's four connections each prepare them, and
    // PgBouncer maps them onto its two server connections.
    const TASKS: i32 = 8;
    const ROUNDS: i32 = 25;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let c = ext.client().await;
        tasks.spawn(async move {
            let add = c
                .prepare("SELECT $1::int + 1, pg_backend_pid()")
                .await
                .unwrap();
            let mut pids = BTreeSet::new();
            for i in 0..ROUNDS {
                let row = c.query_one(&add, &[&(t * 1000 + i)]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), t * 1000 + i + 1);
                pids.insert(row.get::<_, i32>(1));
                let n = c
                    .execute(
                        "UPDATE counters SET n = n + 1 WHERE id = $1",
                        &[&((t + i) % 3)],
                    )
                    .await
                    .unwrap();
                assert_eq!(n, 1);
                let name: String = c
                    .query_one("SELECT $1::text || '-' || $2::int", &[&"task", &t])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(name, format!("task-{t}"));
            }
            pids
        });
    }
    let mut seen = BTreeSet::new();
    for pids in tasks.join_all().await {
        seen.extend(pids);
    }

    let total: i64 = setup
        .query_one("SELECT sum(n)::int8 FROM counters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, i64::from(TASKS * ROUNDS));
    // The statements ran on PgBouncer's two server connections, which all four of the
    // extension's connections shared.
    assert!(
        seen.is_subset(&servers),
        "statements ran outside PgBouncer's two servers: {seen:?} {servers:?}"
    );
    assert_eq!(server_backends(&pg), servers);
    assert!(
        connections_opened(&ext) >= 4,
        "the extension opened fewer than four connections:\n{}",
        ext.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_runs_its_cached_statement_on_both_servers() {
    let pg = PgServer::start();
    let bouncer = PgBouncer::start(&pg, &Options::default());
    let ext = extension(&pg, &bouncer, &[("WARMPOOL_MAX_SIZE", "2")]);
    let servers = open_both_server_connections(&pg, &bouncer).await;
    let c = ext.client().await;
    // The extension prepares the statement once on its connection, and PgBouncer alternates that
    // connection's transactions between its servers: the one statement runs on both.
    let mut seen = BTreeSet::new();
    for i in 0..10 {
        let row = c
            .query_one("SELECT $1::int * 2, pg_backend_pid()", &[&i])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
        seen.insert(row.get::<_, i32>(1));
    }
    assert_eq!(seen, servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_without_max_prepared_statements_the_cache_breaks() {
    let pg = PgServer::start();
    let bouncer = PgBouncer::start(
        &pg,
        &Options {
            max_prepared_statements: 0,
            ..Options::default()
        },
    );
    let ext = extension(&pg, &bouncer, &[("WARMPOOL_MAX_SIZE", "2")]);
    open_both_server_connections(&pg, &bouncer).await;
    let c = ext.client().await;
    let mut failures = 0;
    for i in 0..10 {
        match c.query_one("SELECT $1::int * 2", &[&i]).await {
            Ok(row) => assert_eq!(row.get::<_, i32>(0), i * 2),
            Err(e) => {
                assert_eq!(e.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME), "{e}");
                failures += 1;
            }
        }
    }
    // Without tracking, a statement prepared on one server is unknown on the other.
    assert!(
        failures > 0,
        "every statement succeeded without max_prepared_statements: the tests do not \
         exercise PgBouncer's statement tracking"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_stay_on_one_server_and_commit_or_roll_back() {
    let pg = PgServer::start();
    let bouncer = PgBouncer::start(&pg, &Options::default());
    let ext = extension(&pg, &bouncer, &[("WARMPOOL_MAX_SIZE", "3")]);
    open_both_server_connections(&pg, &bouncer).await;
    let setup = ext.client().await;
    setup
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL);
             INSERT INTO acct VALUES (1, 100), (2, 100)",
        )
        .await
        .unwrap();

    const TASKS: i32 = 4;
    const ROUNDS: i32 = 10;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let c = ext.client().await;
        tasks.spawn(async move {
            let mut committed = 0;
            for i in 0..ROUNDS {
                let tx = c.transaction().await.unwrap();
                let first: i32 = tx
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .unwrap()
                    .get(0);
                tx.execute("UPDATE acct SET n = n - 1 WHERE id = $1", &[&1i32])
                    .await
                    .unwrap();
                tx.execute("UPDATE acct SET n = n + 1 WHERE id = $1", &[&2i32])
                    .await
                    .unwrap();
                let last: i32 = tx
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(
                    first, last,
                    "a transaction moved between server connections"
                );
                if (t + i) % 2 == 0 {
                    tx.commit().await.unwrap();
                    committed += 1;
                } else {
                    tx.rollback().await.unwrap();
                }
            }
            committed
        });
    }
    let committed: i32 = tasks.join_all().await.into_iter().sum();
    assert_eq!(committed, TASKS * ROUNDS / 2);
    let rows = setup
        .query("SELECT n FROM acct ORDER BY id", &[])
        .await
        .unwrap();
    let n: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(n, [100 - committed, 100 + committed]);

    // A failed statement aborts the transaction on its server; after the rollback, the same
    // cached statements serve the next transaction.
    let tx = setup.transaction().await.unwrap();
    let err = tx
        .execute("INSERT INTO acct VALUES ($1, 0)", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    tx.rollback().await.unwrap();
    let tx = setup.transaction().await.unwrap();
    tx.execute("INSERT INTO acct VALUES ($1, 0)", &[&3i32])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let count: i64 = setup
        .query_one("SELECT count(*) FROM acct", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_evicted_from_both_caches_are_prepared_again() {
    let pg = PgServer::start();
    // PgBouncer keeps three statements per server connection, the extension two per
    // connection: ten distinct statements in turn keep both evicting.
    let bouncer = PgBouncer::start(
        &pg,
        &Options {
            max_prepared_statements: 3,
            ..Options::default()
        },
    );
    let ext = extension(
        &pg,
        &bouncer,
        &[
            ("WARMPOOL_MAX_SIZE", "2"),
            ("WARMPOOL_STATEMENT_CACHE_SIZE", "2"),
        ],
    );
    open_both_server_connections(&pg, &bouncer).await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..3i32 {
        let c = ext.client().await;
        tasks.spawn(async move {
            for round in 0..4i32 {
                for k in 0..10i32 {
                    let sql = format!("SELECT $1::int + {k}");
                    let v = t * 100 + round;
                    let got: i32 = c
                        .query_one(sql.as_str(), &[&v])
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"))
                        .get(0);
                    assert_eq!(got, v + k, "{sql}");
                }
            }
        });
    }
    tasks.join_all().await;

    // On each server connection PgBouncer keeps at most three of the statements (this query's
    // own included), deallocating the least recently used.
    let c = ext.client().await;
    for _ in 0..4 {
        let prepared: i64 = c
            .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            (1..=3).contains(&prepared),
            "{prepared} statements prepared on a server connection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_an_abandoned_transaction_keeps_statements_working() {
    let pg = PgServer::start();
    let bouncer = PgBouncer::start(&pg, &Options::default());
    // One connection: whatever a session leaves behind is what the next one finds.
    let ext = extension(&pg, &bouncer, &[("WARMPOOL_MAX_SIZE", "1")]);
    let servers = open_both_server_connections(&pg, &bouncer).await;
    let c = ext.client().await;
    c.batch_execute(
        "CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL); INSERT INTO acct VALUES (1, 0)",
    )
    .await
    .unwrap();
    let count = "SELECT n FROM acct WHERE id = $1";
    let n = |row: warmpool::Row| row.get::<_, i32>(0);
    assert_eq!(n(c.query_one(count, &[&1i32]).await.unwrap()), 0);

    // A transaction abandoned mid-way, holding a row lock: the extension rolls it back on the
    // server connection PgBouncer pinned to it.
    {
        let tx = c.transaction().await.unwrap();
        tx.execute("UPDATE acct SET n = n + 1 WHERE id = $1", &[&1i32])
            .await
            .unwrap();
    }
    // A batch that opens a transaction and leaves it open, then changes session state: the
    // extension resets the connection (ROLLBACK, then its session reset) before reuse.
    c.batch_execute("BEGIN; UPDATE acct SET n = n + 10 WHERE id = 1")
        .await
        .unwrap();
    c.batch_execute("SET application_name = 'changed'")
        .await
        .unwrap();

    // Neither update happened, no server connection is left inside a transaction, and the
    // cached statements still run, on both servers. A reset that deallocated prepared
    // statements (DISCARD ALL, DEALLOCATE ALL) would make PgBouncer forget this connection's
    // statements while the extension still has them cached.
    assert_eq!(n(c.query_one(count, &[&1i32]).await.unwrap()), 0);
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        seen.insert(backend_pid(&c).await);
    }
    assert_eq!(seen, servers);
    assert_eq!(n(c.query_one(count, &[&1i32]).await.unwrap()), 0);
    assert_eq!(
        pg.superuser_psql(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
        ),
        "0"
    );
    c.execute("UPDATE acct SET n = n + 1 WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(n(c.query_one(count, &[&1i32]).await.unwrap()), 1);
}
