//! The tokio-postgres API beyond query and execute: `simple_query` (text rows and counts),
//! `query_raw` (a row stream for large results) and `GenericClient` (code written once for a
//! client and a transaction).

use std::time::Duration;

use warmpool::stream::TryStreamExt;
use warmpool::{Error, GenericClient, SimpleQueryMessage, SqlState, ToSql};
use warmpool_tests::{Extension, PgServer};

/// Runs `f` until it returns `Some`, for a state the servers reach in the background.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn text_rows(messages: &[SimpleQueryMessage]) -> Vec<&warmpool::SimpleQueryRow> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn completions(messages: &[SimpleQueryMessage]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn simple_query_returns_text_rows_and_counts() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;

    let messages = c
        .simple_query(
            "CREATE TABLE t (id int, name text); \
             INSERT INTO t VALUES (1, 'one'), (2, NULL); \
             SELECT id, name AS \"Name\" FROM t ORDER BY id",
        )
        .await
        .unwrap();
    assert_eq!(completions(&messages), [0, 2, 2]);
    let described = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::RowDescription(columns) => Some(columns.clone()),
        _ => None,
    });
    let names: Vec<&str> = described
        .as_deref()
        .unwrap()
        .iter()
        .map(|c| c.name())
        .collect();
    assert_eq!(names, ["id", "Name"]);
    let rows = text_rows(&messages);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get(0), Some("1"));
    assert_eq!(rows[0].get("Name"), Some("one"));
    assert_eq!(rows[1].get("name"), None, "NULL, found case-insensitively");
    assert!(rows[0].try_get("missing").is_err());
    assert_eq!(rows[0].columns()[1].name(), "Name");

    // Many frames' worth of rows (about 1 MB) arrive whole and in order.
    let messages = c
        .simple_query("SELECT i, repeat('x', 200) FROM generate_series(1, 5000) i")
        .await
        .unwrap();
    let rows = text_rows(&messages);
    assert_eq!(rows.len(), 5000);
    for (n, row) in rows.iter().enumerate() {
        assert_eq!(row.get(0), Some((n + 1).to_string().as_str()));
        assert_eq!(row.get(1).map(str::len), Some(200));
    }
    assert_eq!(completions(&messages), [5000]);

    // An error stops the text where it happens, and rolls back what came before it: a text of
    // several statements is one implicit transaction in PostgreSQL.
    let err = c
        .simple_query(
            "INSERT INTO t VALUES (3, 'three'); SELECT 1/0; INSERT INTO t VALUES (4, 'four')",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // In a transaction, as its first request (BEGIN goes with it) and after.
    let tx = c.transaction().await.unwrap();
    let messages = tx.simple_query("DELETE FROM t WHERE id = 1").await.unwrap();
    assert_eq!(completions(&messages), [1]);
    let messages = tx.simple_query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(text_rows(&messages)[0].get(0), Some("1"));
    tx.rollback().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the transaction's delete rolled back");
}

#[tokio::test]
async fn query_raw_streams_rows_and_a_dropped_stream_cancels_its_statement() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "2")]);
    let c = ext.client().await;

    let limit = 50_000i32;
    let mut stream = c
        .query_raw(
            "SELECT g, repeat('y', g % 100) FROM generate_series(1, $1) g",
            [&limit as &(dyn ToSql + Sync)],
        )
        .await
        .unwrap();
    assert_eq!(stream.columns().len(), 2);
    let mut seen = 0;
    while let Some(row) = stream.try_next().await.unwrap() {
        seen += 1;
        assert_eq!(row.get::<_, i32>(0), seen);
        assert_eq!(row.get::<_, &str>(1).len(), (seen % 100) as usize);
    }
    assert_eq!(seen, limit);
    assert_eq!(stream.rows_affected(), Some(limit as u64));
    drop(stream);

    // Rows arrive while the statement still runs: the first frames come long before the last
    // row, which sleeps for 60 s.
    let mut stream = c
        .query_raw(
            "SELECT i, CASE WHEN i = 40000 THEN pg_sleep(60) END::text AS streamed_marker \
             FROM generate_series(1, 40000) i",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), stream.try_next())
        .await
        .expect("rows stream before the statement ends")
        .unwrap()
        .unwrap();
    assert_eq!(first.get::<_, i32>(0), 1);
    // Dropped half way: its session closes and the extension cancels the statement.
    drop(stream);
    let pg_client = pg.tokio_client().await;
    eventually("the dropped stream's statement is cancelled", async || {
        let running: i64 = pg_client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE '%streamed_marker%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (running == 0).then_some(())
    })
    .await;
    // The client carries on.
    let n: i32 = c.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);

    // A statement that fails after rows have gone out ends its stream with the error, never
    // with a plain end.
    let mut stream = c
        .query_raw(
            "SELECT 1 / (50000 - i) FROM generate_series(1, 50000) i",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    let mut rows_before = 0;
    let err = loop {
        match stream.try_next().await {
            Ok(Some(_)) => rows_before += 1,
            Ok(None) => panic!("the stream ended without the error"),
            Err(e) => break e,
        }
    };
    assert!(rows_before > 0, "rows came before the error");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    assert_eq!(stream.try_next().await.unwrap().map(|_| ()), None);
    drop(stream);
    // Parameters as any iterator of values; the wrong number is refused before anything runs.
    let err = c
        .query_raw("SELECT $1::int", Vec::<i32>::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expected 1 parameters"), "{err}");
    let rows: Vec<_> = c
        .query_raw(
            "SELECT $1::text || $2::text",
            vec!["a".to_owned(), "b".to_owned()],
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, &str>(0), "ab");
}

#[tokio::test]
async fn query_raw_in_a_transaction_leaves_it_usable_when_dropped_early() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    c.batch_execute("CREATE TABLE big AS SELECT g AS id FROM generate_series(1, 30000) g; CREATE TABLE kept (n int)")
        .await
        .unwrap();

    let tx = c.transaction().await.unwrap();
    tx.execute("INSERT INTO kept VALUES (1)", &[])
        .await
        .unwrap();
    {
        let mut stream = tx
            .query_raw("SELECT id FROM big ORDER BY id", std::iter::empty::<i32>())
            .await
            .unwrap();
        let first = stream.try_next().await.unwrap().unwrap();
        assert_eq!(first.get::<_, i32>(0), 1);
        // Dropped with most of its rows unread.
    }
    // The rest of the rows are read and thrown away before this answer.
    tx.execute("INSERT INTO kept VALUES (2)", &[])
        .await
        .unwrap();
    let all: Vec<_> = tx
        .query_raw("SELECT n FROM kept ORDER BY n", std::iter::empty::<i32>())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
        [1, 2]
    );
    tx.commit().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

/// Written once, for a client or a transaction.
async fn add_and_count(db: &impl GenericClient, n: i32) -> Result<i64, Error> {
    db.execute("INSERT INTO g VALUES ($1)", &[&n]).await?;
    let statement = db.prepare("SELECT count(*) FROM g").await?;
    let row = db.query_one(&statement, &[]).await?;
    assert!(db.query_opt("SELECT 1 WHERE false", &[]).await?.is_none());
    assert_eq!(db.query("SELECT 1", &[]).await?.len(), 1);
    db.batch_execute("SELECT 1").await?;
    assert_eq!(db.simple_query("SELECT 1").await?.len(), 3);
    let streamed: Vec<_> = db
        .query_raw("SELECT n FROM g", std::iter::empty::<i32>())
        .await?
        .try_collect()
        .await?;
    assert_eq!(streamed.len() as i64, row.get::<_, i64>(0));
    Ok(row.get(0))
}

#[tokio::test]
async fn generic_client_takes_a_client_or_a_transaction_in_a_spawned_task() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    c.batch_execute("CREATE TABLE g (n int)").await.unwrap();

    let client = c.clone();
    let n = tokio::spawn(async move { add_and_count(&client, 1).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);

    let client = c.clone();
    let n = tokio::spawn(async move {
        let mut tx = client.transaction().await?;
        let n = add_and_count(&tx, 2).await?;
        {
            // GenericClient::transaction on a transaction is a savepoint.
            let sp = GenericClient::transaction(&mut tx).await?;
            add_and_count(&sp, 3).await?;
        }
        tx.commit().await?;
        Ok::<_, Error>(n)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(n, 2);
    let n: i64 = c
        .query_one("SELECT count(*) FROM g", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the savepoint's row rolled back when it was dropped");
}
