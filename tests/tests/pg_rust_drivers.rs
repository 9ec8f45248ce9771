//! Rust drivers that do not link warmpool, unchanged, against the PostgreSQL-protocol endpoint:
//! tokio-postgres and sqlx, each through the checklist the other languages' drivers go through
//! in `pg_drivers.rs` (parameters of the common types, a unique violation with its SQLSTATE and
//! constraint, commit and rollback, a prepared statement reused 100 times, 100,000 rows
//! streamed, a cancel, COPY both ways, LISTEN/NOTIFY, a `SET search_path` held), and sqlx's
//! session healed after its server connection ended while the environment was frozen
//! (tokio-postgres's is in `pg_endpoint.rs`), and a pipeline larger than the sockets buffer.
//!
//! A checklist runs every check and fails naming each one that failed, so one failure does not
//! hide the others.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use warmpool_tests::{Extension, PgServer};

/// A guard against a hung check, never a timing assertion.
const GUARD: Duration = Duration::from_secs(60);
const ROWS: i64 = 100_000;

type Check<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// Runs each check in turn and fails the test naming every check that failed.
async fn checklist<'a>(driver: &str, checks: Vec<(&str, Check<'a>)>) {
    let mut failed = Vec::new();
    for (name, check) in checks {
        match tokio::time::timeout(GUARD, check).await {
            Ok(Ok(())) => eprintln!("ok   {driver}: {name}"),
            Ok(Err(e)) => failed.push(format!("FAIL {driver}: {name}: {e}")),
            Err(_) => failed.push(format!("FAIL {driver}: {name}: no answer within {GUARD:?}")),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// The values every driver sends and reads back: one of each common type, and a NULL.
mod values {
    pub fn timestamp() -> chrono::DateTime<chrono::Utc> {
        use chrono::TimeZone;
        chrono::Utc
            .with_ymd_and_hms(2024, 2, 29, 12, 34, 56)
            .unwrap()
            .checked_add_signed(chrono::Duration::microseconds(789_000))
            .unwrap()
    }
    pub fn numeric() -> rust_decimal::Decimal {
        "12345.6789".parse().unwrap()
    }
    pub fn uuid() -> uuid::Uuid {
        "12345678-1234-5678-1234-567812345678".parse().unwrap()
    }
    pub fn json() -> serde_json::Value {
        serde_json::json!({"a": [1, 2, null], "b": "x"})
    }
    pub const TEXT: &str = "héllo 'quoted'";
    pub const BYTES: &[u8] = b"\x00\x01\xfe\xff";
    pub const BIG: i64 = (1 << 40) + 1;
    pub const TYPES_SQL: &str = "SELECT $1::int4, $2::int8, $3::text, $4::numeric, $5::bool, \
        $6::timestamptz, $7::bytea, $8::uuid, $9::jsonb, $10::text, $11::float8";
}

mod tokio_pg {
    use super::*;
    use tokio_postgres::{AsyncMessage, Client, NoTls};

    /// A client of the endpoint in `ext`'s directory, with its notifications forwarded.
    pub async fn connect(
        ext: &Extension,
        pg: &PgServer,
    ) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let config = format!(
            "host={} port=5432 user=any_function dbname={}",
            ext.dir().display(),
            pg.dbname()
        );
        let (client, mut connection) = tokio_postgres::connect(&config, NoTls)
            .await
            .expect("connect to the endpoint");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message {
                    let _ = tx.send(n.payload().to_owned());
                }
            }
        });
        (client, rx)
    }

    pub async fn until_sleeping(watch: &Client, pid: i32) -> Result<(), String> {
        loop {
            let event: Option<String> = watch
                .query_one(
                    "SELECT wait_event FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if event.as_deref() == Some("PgSleep") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_goes_through_the_checklist() {
    use tokio_postgres::error::SqlState;
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "8")]);
    let (client, mut notifications) = tokio_pg::connect(&ext, &pg).await;
    let (other, _) = tokio_pg::connect(&ext, &pg).await;
    let client = &client;
    let other = &other;
    client
        .batch_execute(
            "CREATE TABLE drv (id int PRIMARY KEY, v text, CONSTRAINT drv_v_key UNIQUE (v)); \
             CREATE TABLE drv_copy (id int, name text)",
        )
        .await
        .unwrap();

    let checks: Vec<(&str, Check)> = vec![
        (
            "types, binary",
            Box::pin(async {
                let row = client
                    .query_one(
                        values::TYPES_SQL,
                        &[
                            &7i32,
                            &values::BIG,
                            &values::TEXT,
                            &values::numeric(),
                            &true,
                            &values::timestamp(),
                            &values::BYTES,
                            &values::uuid(),
                            &values::json(),
                            &None::<String>,
                            &1.5f64,
                        ],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                ensure(row.get::<_, i32>(0) == 7, || "int4".into())?;
                ensure(row.get::<_, i64>(1) == values::BIG, || "int8".into())?;
                ensure(row.get::<_, &str>(2) == values::TEXT, || "text".into())?;
                ensure(
                    row.get::<_, rust_decimal::Decimal>(3) == values::numeric(),
                    || "numeric".into(),
                )?;
                ensure(row.get::<_, bool>(4), || "bool".into())?;
                ensure(
                    row.get::<_, chrono::DateTime<chrono::Utc>>(5) == values::timestamp(),
                    || "timestamptz".into(),
                )?;
                ensure(row.get::<_, &[u8]>(6) == values::BYTES, || "bytea".into())?;
                ensure(row.get::<_, uuid::Uuid>(7) == values::uuid(), || {
                    "uuid".into()
                })?;
                ensure(row.get::<_, serde_json::Value>(8) == values::json(), || {
                    "jsonb".into()
                })?;
                ensure(row.get::<_, Option<&str>>(9).is_none(), || "null".into())?;
                ensure(row.get::<_, f64>(10) == 1.5, || "float8".into())
            }),
        ),
        (
            "unique violation 23505",
            Box::pin(async {
                client
                    .execute("INSERT INTO drv VALUES (1, 'one')", &[])
                    .await
                    .map_err(|e| e.to_string())?;
                let err = client
                    .execute("INSERT INTO drv VALUES (2, 'one')", &[])
                    .await
                    .err()
                    .ok_or("no error")?;
                let db = err
                    .as_db_error()
                    .ok_or(format!("not a server error: {err}"))?;
                ensure(db.code() == &SqlState::UNIQUE_VIOLATION, || {
                    format!("sqlstate {}", db.code().code())
                })?;
                ensure(db.constraint() == Some("drv_v_key"), || {
                    format!("constraint {:?}", db.constraint())
                })
            }),
        ),
        (
            "commit and rollback",
            Box::pin(async {
                let run = |sql: &'static str| async move {
                    client.batch_execute(sql).await.map_err(|e| e.to_string())
                };
                run("BEGIN; INSERT INTO drv VALUES (10, 'committed'); COMMIT").await?;
                run("BEGIN; INSERT INTO drv VALUES (11, 'rolled back'); ROLLBACK").await?;
                let ids: Vec<i32> = client
                    .query("SELECT id FROM drv WHERE id >= 10 ORDER BY id", &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                ensure(ids == [10], || format!("ids {ids:?}"))
            }),
        ),
        (
            "prepared statement reused 100 times",
            Box::pin(async {
                let sql = "SELECT $1::int8 * 2 AS reuse_probe";
                let stmt = client.prepare(sql).await.map_err(|e| e.to_string())?;
                let mut total = 0i64;
                for i in 0..100i64 {
                    let row = client
                        .query_one(&stmt, &[&i])
                        .await
                        .map_err(|e| e.to_string())?;
                    total += row.get::<_, i64>(0);
                }
                ensure(total == 9900, || format!("sum {total}"))?;
                let n: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
                        &[&sql],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                ensure(n == 1, || {
                    format!("{n} server-side statements for the query")
                })
            }),
        ),
        (
            "100000 rows streamed",
            Box::pin(async {
                // Rows handed to the caller as they arrive, not collected first.
                let stmt = client
                    .prepare("SELECT i FROM generate_series(1, $1::int8) AS i")
                    .await
                    .map_err(|e| e.to_string())?;
                let (mut n, mut sum) = (0i64, 0i64);
                let rows = client
                    .query_raw(&stmt, std::iter::once(ROWS))
                    .await
                    .map_err(|e| e.to_string())?;
                futures_util::pin_mut!(rows);
                while let Some(row) = rows.try_next().await.map_err(|e| e.to_string())? {
                    n += 1;
                    sum += row.get::<_, i64>(0);
                }
                ensure(n == ROWS && sum == ROWS * (ROWS + 1) / 2, || {
                    format!("{n} rows, sum {sum}")
                })
            }),
        ),
        (
            "COPY FROM STDIN and TO STDOUT",
            Box::pin(async {
                let sink = client
                    .copy_in("COPY drv_copy FROM STDIN")
                    .await
                    .map_err(|e| e.to_string())?;
                futures_util::pin_mut!(sink);
                for chunk in 0..3 {
                    let lines: String = (chunk * 500..(chunk + 1) * 500)
                        .map(|i| format!("{i}\tn{i}\n"))
                        .collect();
                    sink.send(Bytes::from(lines))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let copied = sink.finish().await.map_err(|e| e.to_string())?;
                ensure(copied == 1500, || format!("COPY {copied}"))?;
                let out = client
                    .copy_out("COPY (SELECT * FROM drv_copy ORDER BY id) TO STDOUT")
                    .await
                    .map_err(|e| e.to_string())?;
                let chunks: Vec<Bytes> = out.try_collect().await.map_err(|e| e.to_string())?;
                let text = String::from_utf8(chunks.concat()).map_err(|e| e.to_string())?;
                let lines: Vec<&str> = text.lines().collect();
                ensure(lines.len() == 1500 && lines[1001] == "1001\tn1001", || {
                    format!("{} lines, {:?}", lines.len(), lines.get(1001))
                })
            }),
        ),
        (
            "LISTEN/NOTIFY",
            Box::pin(async {
                client
                    .batch_execute("LISTEN drv_channel")
                    .await
                    .map_err(|e| e.to_string())?;
                other
                    .batch_execute("NOTIFY drv_channel, 'from other'")
                    .await
                    .map_err(|e| e.to_string())?;
                let payload = notifications.recv().await.ok_or("the connection ended")?;
                ensure(payload == "from other", || payload.clone())?;
                client
                    .batch_execute("UNLISTEN drv_channel")
                    .await
                    .map_err(|e| e.to_string())
            }),
        ),
        (
            "SET search_path held",
            Box::pin(async {
                client
                    .batch_execute(
                        "CREATE SCHEMA sp; CREATE TABLE sp.only_here (v int); \
                         INSERT INTO sp.only_here VALUES (42); SET search_path TO sp, public",
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                for _ in 0..3 {
                    let v: i32 = client
                        .query_one("SELECT v FROM only_here", &[])
                        .await
                        .map_err(|e| e.to_string())?
                        .get(0);
                    ensure(v == 42, || format!("value {v}"))?;
                }
                let path: String = client
                    .query_one("SHOW search_path", &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                ensure(path == "sp, public", || format!("search_path {path}"))
            }),
        ),
        // Last: PostgreSQL's postmaster signals a cancelled backend twice (its pid, then its
        // process group), and on a busy machine the second SIGINT can land on the statement
        // after the cancelled one, a COPY waiting for data above all.
        (
            "cancel of pg_sleep(30) 57014",
            Box::pin(async {
                let pid: i32 = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                let token = client.cancel_token();
                let sleeping = client.batch_execute("SELECT pg_sleep(30)");
                let cancel = async {
                    tokio_pg::until_sleeping(other, pid).await?;
                    // A CancelRequest with the key the endpoint gave this session, on a
                    // connection of its own to the endpoint's socket.
                    token
                        .cancel_query(tokio_postgres::NoTls)
                        .await
                        .map_err(|e| e.to_string())
                };
                let (slept, cancelled) = tokio::join!(sleeping, cancel);
                cancelled?;
                let err = slept.err().ok_or("pg_sleep(30) finished")?;
                ensure(err.code() == Some(&SqlState::QUERY_CANCELED), || {
                    format!("{err}")
                })?;
                let after: i32 = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                ensure(after == pid, || {
                    "the session moved to another backend".into()
                })
            }),
        ),
    ];
    checklist("tokio-postgres", checks).await;
}

mod sqlx_pg {
    use super::*;
    use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
    use sqlx::Connection;

    /// sqlx's options for the endpoint in `ext`'s directory: a directory as the socket, as
    /// libpq's `host=/tmp`, and a user name the database does not know.
    pub fn options(ext: &Extension, pg: &PgServer) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .socket(ext.dir())
            .port(5432)
            .username("any_function")
            .database(pg.dbname())
            .ssl_mode(PgSslMode::Disable)
    }

    pub async fn connect(ext: &Extension, pg: &PgServer) -> PgConnection {
        PgConnection::connect_with(&options(ext, pg))
            .await
            .expect("sqlx connects to the endpoint")
    }
}

fn sqlx_err(e: sqlx::Error) -> String {
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_goes_through_the_checklist() {
    use sqlx::postgres::{PgListener, PgPoolOptions};
    use sqlx::{Connection, Row};
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "8")]);
    let conn = tokio::sync::Mutex::new(sqlx_pg::connect(&ext, &pg).await);
    let other = tokio::sync::Mutex::new(sqlx_pg::connect(&ext, &pg).await);
    sqlx::raw_sql(
        "CREATE TABLE drv (id int PRIMARY KEY, v text, CONSTRAINT drv_v_key UNIQUE (v)); \
         CREATE TABLE drv_copy (id int, name text)",
    )
    .execute(&mut *conn.lock().await)
    .await
    .unwrap();
    let (conn, other) = (&conn, &other);
    let (ext_ref, pg_ref) = (&ext, &pg);

    let checks: Vec<(&str, Check)> = vec![
        (
            "types, binary",
            Box::pin(async {
                let mut c = conn.lock().await;
                let row = sqlx::query(values::TYPES_SQL)
                    .bind(7i32)
                    .bind(values::BIG)
                    .bind(values::TEXT)
                    .bind(values::numeric())
                    .bind(true)
                    .bind(values::timestamp())
                    .bind(values::BYTES)
                    .bind(values::uuid())
                    .bind(values::json())
                    .bind(None::<String>)
                    .bind(1.5f64)
                    .fetch_one(&mut *c)
                    .await
                    .map_err(sqlx_err)?;
                let get = |e: sqlx::Error| e.to_string();
                ensure(row.try_get::<i32, _>(0).map_err(get)? == 7, || {
                    "int4".into()
                })?;
                ensure(
                    row.try_get::<i64, _>(1).map_err(get)? == values::BIG,
                    || "int8".into(),
                )?;
                ensure(
                    row.try_get::<String, _>(2).map_err(get)? == values::TEXT,
                    || "text".into(),
                )?;
                ensure(
                    row.try_get::<rust_decimal::Decimal, _>(3).map_err(get)? == values::numeric(),
                    || "numeric".into(),
                )?;
                ensure(row.try_get::<bool, _>(4).map_err(get)?, || "bool".into())?;
                ensure(
                    row.try_get::<chrono::DateTime<chrono::Utc>, _>(5)
                        .map_err(get)?
                        == values::timestamp(),
                    || "timestamptz".into(),
                )?;
                ensure(
                    row.try_get::<Vec<u8>, _>(6).map_err(get)? == values::BYTES,
                    || "bytea".into(),
                )?;
                ensure(
                    row.try_get::<uuid::Uuid, _>(7).map_err(get)? == values::uuid(),
                    || "uuid".into(),
                )?;
                ensure(
                    row.try_get::<serde_json::Value, _>(8).map_err(get)? == values::json(),
                    || "jsonb".into(),
                )?;
                ensure(
                    row.try_get::<Option<String>, _>(9).map_err(get)?.is_none(),
                    || "null".into(),
                )?;
                ensure(row.try_get::<f64, _>(10).map_err(get)? == 1.5, || {
                    "float8".into()
                })
            }),
        ),
        (
            "unique violation 23505",
            Box::pin(async {
                let mut c = conn.lock().await;
                sqlx::query("INSERT INTO drv VALUES ($1, $2)")
                    .bind(1i32)
                    .bind("one")
                    .execute(&mut *c)
                    .await
                    .map_err(sqlx_err)?;
                let err = sqlx::query("INSERT INTO drv VALUES ($1, $2)")
                    .bind(2i32)
                    .bind("one")
                    .execute(&mut *c)
                    .await
                    .err()
                    .ok_or("no error")?;
                let db = err
                    .as_database_error()
                    .ok_or(format!("not a server error: {err}"))?;
                ensure(db.code().as_deref() == Some("23505"), || {
                    format!("sqlstate {:?}", db.code())
                })?;
                ensure(db.constraint() == Some("drv_v_key"), || {
                    format!("constraint {:?}", db.constraint())
                })
            }),
        ),
        (
            "commit and rollback",
            Box::pin(async {
                let mut c = conn.lock().await;
                let mut tx = c.begin().await.map_err(sqlx_err)?;
                sqlx::query("INSERT INTO drv VALUES (10, 'committed')")
                    .execute(&mut *tx)
                    .await
                    .map_err(sqlx_err)?;
                tx.commit().await.map_err(sqlx_err)?;
                let mut tx = c.begin().await.map_err(sqlx_err)?;
                sqlx::query("INSERT INTO drv VALUES (11, 'rolled back')")
                    .execute(&mut *tx)
                    .await
                    .map_err(sqlx_err)?;
                tx.rollback().await.map_err(sqlx_err)?;
                let ids: Vec<i32> =
                    sqlx::query_scalar("SELECT id FROM drv WHERE id >= 10 ORDER BY id")
                        .fetch_all(&mut *c)
                        .await
                        .map_err(sqlx_err)?;
                ensure(ids == [10], || format!("ids {ids:?}"))
            }),
        ),
        (
            "prepared statement reused 100 times",
            Box::pin(async {
                // sqlx prepares each query once per connection and keeps it in its cache.
                let mut c = conn.lock().await;
                let sql = "SELECT $1::int8 * 2 AS reuse_probe";
                let mut total = 0i64;
                for i in 0..100i64 {
                    let v: i64 = sqlx::query_scalar(sql)
                        .bind(i)
                        .fetch_one(&mut *c)
                        .await
                        .map_err(sqlx_err)?;
                    total += v;
                }
                ensure(total == 9900, || format!("sum {total}"))?;
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
                )
                .bind(sql)
                .fetch_one(&mut *c)
                .await
                .map_err(sqlx_err)?;
                ensure(n == 1, || {
                    format!("{n} server-side statements for the query")
                })
            }),
        ),
        (
            "100000 rows streamed",
            Box::pin(async {
                let mut c = conn.lock().await;
                let mut rows =
                    sqlx::query_scalar::<_, i64>("SELECT i FROM generate_series(1, $1::int8) AS i")
                        .bind(ROWS)
                        .fetch(&mut *c);
                let (mut n, mut sum) = (0i64, 0i64);
                while let Some(v) = rows.try_next().await.map_err(sqlx_err)? {
                    n += 1;
                    sum += v;
                }
                ensure(n == ROWS && sum == ROWS * (ROWS + 1) / 2, || {
                    format!("{n} rows, sum {sum}")
                })
            }),
        ),
        (
            "COPY FROM STDIN and TO STDOUT",
            Box::pin(async {
                let mut c = conn.lock().await;
                let mut copy = c
                    .copy_in_raw("COPY drv_copy FROM STDIN")
                    .await
                    .map_err(sqlx_err)?;
                for chunk in 0..3 {
                    let lines: String = (chunk * 500..(chunk + 1) * 500)
                        .map(|i| format!("{i}\tn{i}\n"))
                        .collect();
                    copy.send(lines.as_bytes()).await.map_err(sqlx_err)?;
                }
                let copied = copy.finish().await.map_err(sqlx_err)?;
                ensure(copied == 1500, || format!("COPY {copied}"))?;
                let chunks: Vec<Bytes> = c
                    .copy_out_raw("COPY (SELECT * FROM drv_copy ORDER BY id) TO STDOUT")
                    .await
                    .map_err(sqlx_err)?
                    .try_collect()
                    .await
                    .map_err(sqlx_err)?;
                let text = String::from_utf8(chunks.concat()).map_err(|e| e.to_string())?;
                let lines: Vec<&str> = text.lines().collect();
                ensure(lines.len() == 1500 && lines[1001] == "1001\tn1001", || {
                    format!("{} lines, {:?}", lines.len(), lines.get(1001))
                })
            }),
        ),
        (
            "LISTEN/NOTIFY",
            Box::pin(async {
                // PgListener holds a connection of its own, from a pool of the endpoint.
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(sqlx_pg::options(ext_ref, pg_ref))
                    .await
                    .map_err(sqlx_err)?;
                let mut listener = PgListener::connect_with(&pool).await.map_err(sqlx_err)?;
                listener.listen("drv_channel").await.map_err(sqlx_err)?;
                sqlx::query("NOTIFY drv_channel, 'from other'")
                    .execute(&mut *other.lock().await)
                    .await
                    .map_err(sqlx_err)?;
                let n = listener.recv().await.map_err(sqlx_err)?;
                ensure(n.payload() == "from other", || n.payload().to_owned())?;
                drop(listener);
                pool.close().await;
                Ok(())
            }),
        ),
        (
            "SET search_path held",
            Box::pin(async {
                let mut c = conn.lock().await;
                sqlx::raw_sql(
                    "CREATE SCHEMA sp; CREATE TABLE sp.only_here (v int); \
                     INSERT INTO sp.only_here VALUES (42); SET search_path TO sp, public",
                )
                .execute(&mut *c)
                .await
                .map_err(sqlx_err)?;
                for _ in 0..3 {
                    let v: i32 = sqlx::query_scalar("SELECT v FROM only_here")
                        .fetch_one(&mut *c)
                        .await
                        .map_err(sqlx_err)?;
                    ensure(v == 42, || format!("value {v}"))?;
                }
                let path: String = sqlx::query_scalar("SHOW search_path")
                    .fetch_one(&mut *c)
                    .await
                    .map_err(sqlx_err)?;
                ensure(path == "sp, public", || format!("search_path {path}"))
            }),
        ),
        // Last: PostgreSQL's postmaster signals a cancelled backend twice (its pid, then its
        // process group), and on a busy machine the second SIGINT can land on the statement
        // after the cancelled one, a COPY waiting for data above all.
        (
            "cancel of pg_sleep(30) 57014",
            Box::pin(async {
                // sqlx sends no CancelRequest of its own (dropping a query's future leaves the
                // statement running): the cancel comes from another session, through the
                // endpoint, with pg_cancel_backend.
                let mut c = conn.lock().await;
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut *c)
                    .await
                    .map_err(sqlx_err)?;
                let sleeping = sqlx::query("SELECT pg_sleep(30)").execute(&mut *c);
                let cancel = async {
                    let mut o = other.lock().await;
                    loop {
                        let event: Option<String> = sqlx::query_scalar(
                            "SELECT wait_event FROM pg_stat_activity WHERE pid = $1",
                        )
                        .bind(pid)
                        .fetch_one(&mut *o)
                        .await
                        .map_err(sqlx_err)?;
                        if event.as_deref() == Some("PgSleep") {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let done: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
                        .bind(pid)
                        .fetch_one(&mut *o)
                        .await
                        .map_err(sqlx_err)?;
                    ensure(done, || "pg_cancel_backend found no backend".into())
                };
                let (slept, cancelled) = tokio::join!(sleeping, cancel);
                cancelled?;
                let err = slept.err().ok_or("pg_sleep(30) finished")?;
                let code = err.as_database_error().and_then(|d| d.code());
                ensure(code.as_deref() == Some("57014"), || format!("{err}"))?;
                let after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut *c)
                    .await
                    .map_err(sqlx_err)?;
                ensure(after == pid, || {
                    "the session moved to another backend".into()
                })
            }),
        ),
    ];
    checklist("sqlx", checks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlx_session_is_healed_after_a_freeze_and_an_open_transaction_is_not() {
    use sqlx::{Connection, Row};
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);

    // An idle session with a SET and a prepared statement (sqlx's cache): after its server
    // connection ends while the environment is frozen, the statement runs again, the SET in
    // force, on a new server connection.
    let mut conn = sqlx_pg::connect(&ext, &pg).await;
    sqlx::raw_sql(
        "CREATE SCHEMA healing; CREATE TABLE healing.t (a int); \
         INSERT INTO healing.t VALUES (42); SET search_path TO healing, public",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let probe = "SELECT a, current_setting('search_path'), pg_backend_pid() FROM t WHERE a = $1";
    let row = sqlx::query(probe)
        .bind(42)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let before: i32 = row.get(2);
    {
        let _frozen = ext.freeze();
        pg.terminate_backend(before.into());
    }
    let row = tokio::time::timeout(GUARD, sqlx::query(probe).bind(42).fetch_one(&mut conn))
        .await
        .expect("no answer")
        .unwrap_or_else(|e| panic!("the healed statement failed: {e}\n{}", ext.logs()));
    let (a, path, after): (i32, String, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(a, 42);
    assert_eq!(path, "healing, public", "the session's SET was lost");
    assert_ne!(after, before, "the statement ran on the ended connection");
    assert!(
        ext.logs().contains("restored the session on a new one"),
        "{}",
        ext.logs()
    );

    // A transaction open at the freeze: its COMMIT fails and nothing of it is committed.
    let mut other = sqlx_pg::connect(&ext, &pg).await;
    sqlx::query("CREATE TABLE healing.tx (a int)")
        .execute(&mut other)
        .await
        .unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("INSERT INTO healing.tx VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    {
        let _frozen = ext.freeze();
        pg.terminate_backend(pid.into());
    }
    let err = tokio::time::timeout(GUARD, tx.commit())
        .await
        .expect("no answer")
        .expect_err("a COMMIT on a connection that died was reported committed");
    let code = err.as_database_error().and_then(|d| d.code());
    assert_eq!(code.as_deref(), Some("08006"), "{err}\n{}", ext.logs());
    assert!(err.to_string().contains("open transaction"), "{err}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM healing.tx")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0, "the transaction's row was committed");
}

/// A client that pipelines far more than the sockets buffer, in both directions (1,000
/// statements sent before the first answer is read, 20 MB of answers), reading as it writes as
/// drivers do: the relay never stops reading the server while it writes to it for long enough
/// to stall both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_larger_than_the_socket_buffers_goes_through() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let (client, _) = tokio_pg::connect(&ext, &pg).await;
    let stmt = client
        .prepare("SELECT $1::int4, repeat('x', 20000)")
        .await
        .unwrap();
    let sent: Vec<i32> = (0..1_000).collect();
    let (client, stmt) = (&client, &stmt);
    let queries = sent
        .iter()
        .map(|i| async move { client.query_one(stmt, &[i]).await });
    let rows = tokio::time::timeout(GUARD, futures_util::future::join_all(queries))
        .await
        .expect("the pipeline stalled");
    for (i, row) in sent.iter().zip(rows) {
        let row = row.unwrap();
        assert_eq!(row.get::<_, i32>(0), *i, "answers out of order");
        assert_eq!(row.get::<_, &str>(1).len(), 20_000);
    }
}
