//! Errors reach function code as they would from tokio-postgres: SQLSTATE, constraint, position.

use warmpool::error_types::ErrorPosition;
use warmpool::SqlState;
use warmpool_tests::{Extension, PgServer};

#[tokio::test]
async fn unique_violation_carries_code_and_constraint() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    c.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, email text CONSTRAINT users_email_key UNIQUE)",
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO users VALUES ($1, $2)",
        &[&1i32, &"a@example.com"],
    )
    .await
    .unwrap();
    let err = c
        .execute(
            "INSERT INTO users VALUES ($1, $2)",
            &[&2i32, &"a@example.com"],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.constraint(), Some("users_email_key"));
    assert_eq!(db.table(), Some("users"));
    assert_eq!(db.schema(), Some("public"));
    assert_eq!(db.severity(), "ERROR");
    assert!(
        db.detail().unwrap().contains("a@example.com"),
        "{:?}",
        db.detail()
    );
    assert!(db.routine().is_some() && db.file().is_some() && db.line().is_some());
    assert!(!err.is_closed() && !err.is_timeout());
    // The session survives the error.
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn syntax_error_carries_position() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    let err = c.query("SELECT 1 FROM WHERE", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::SYNTAX_ERROR));
    let db = err.as_db_error().unwrap();
    assert_eq!(db.position(), Some(&ErrorPosition::Original(15)));
    assert!(err.to_string().contains("syntax error"), "{err}");

    let err = c
        .query("SELECT no_such_column FROM pg_class", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_COLUMN));

    // A failing statement with parameters goes through Prepare first.
    let err = c
        .query("SELECT $1::int FROM nope", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));

    // An error raised inside a function carries the internal query and where.
    c.batch_execute(
        "CREATE FUNCTION boom() RETURNS int LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'boom' USING HINT = 'try again', DETAIL = 'it broke'; END $$",
    )
    .await
    .unwrap();
    let err = c.query_one("SELECT boom()", &[]).await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.message(), "boom");
    assert_eq!(db.hint(), Some("try again"));
    assert_eq!(db.detail(), Some("it broke"));
    assert!(db.where_().unwrap().contains("boom"), "{:?}", db.where_());
}

#[tokio::test]
async fn client_side_errors() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    // Parameter count is checked before anything is sent.
    let err = c.query("SELECT $1::int", &[]).await.unwrap_err();
    assert!(err.to_string().contains("parameters"), "{err}");
    let err = c
        .query("SELECT $1::int", &[&1i32, &2i32])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("expected 1 parameters but got 2"),
        "{err}"
    );
    // A Rust value of the wrong type for the parameter.
    let err = c.query("SELECT $1::int", &[&"text"]).await.unwrap_err();
    assert!(err.to_string().contains("serializing parameter 0"), "{err}");
    // query_one with no rows, query_opt with two.
    let err = c.query_one("SELECT 1 WHERE false", &[]).await.unwrap_err();
    assert!(
        err.to_string().contains("unexpected number of rows"),
        "{err}"
    );
    assert!(c
        .query_opt("SELECT 1 WHERE false", &[])
        .await
        .unwrap()
        .is_none());
    assert!(c
        .query_opt("SELECT generate_series(1, 2)", &[])
        .await
        .is_err());
    // Still usable.
    assert_eq!(
        c.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0),
        7
    );
}

#[tokio::test]
async fn missing_socket_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = warmpool::Client::connect_to(dir.path().join("none.sock"))
        .await
        .unwrap_err();
    assert!(err.is_closed());
    let text = err.to_string();
    assert!(
        text.contains("none.sock") && text.contains("warmpool extension"),
        "{text}"
    );
}

fn check_nul_refused(e: &warmpool::Error) {
    assert_eq!(
        e.code(),
        Some(&SqlState::CHARACTER_NOT_IN_REPERTOIRE),
        "{e}"
    );
    assert!(!e.is_closed(), "{e}");
    assert!(e.to_string().contains("NUL byte"), "{e}");
}

/// A NUL byte in SQL text cannot cross PostgreSQL's protocol. Through the client it is refused
/// before anything is sent, with 22021 (character_not_in_repertoire), by every call that takes
/// SQL: the session and a transaction in it go on, and the database connection is untouched.
#[tokio::test]
async fn nul_in_sql_is_the_callers_error_and_costs_no_connection() {
    let pg = PgServer::start();
    // One connection at most: a replaced connection shows as another backend.
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "1")]);
    let c = ext.client().await;
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    let backends = pg.warmpool_backends().await;
    assert_eq!(backends.len(), 1, "{backends:?}");

    let nul = "SELECT 'a\0b'";
    let mut errors = vec![
        c.prepare(nul).await.unwrap_err(),
        c.prepare_typed(nul, &[warmpool::Type::INT4])
            .await
            .unwrap_err(),
        c.query(nul, &[]).await.unwrap_err(),
        c.query_one("SELECT $1::int4 WHERE '\0' = ''", &[&1i32])
            .await
            .unwrap_err(),
        c.execute(nul, &[]).await.unwrap_err(),
        c.batch_execute(&format!("SELECT 1; {nul}"))
            .await
            .unwrap_err(),
        c.query_cached(nul, &[], std::time::Duration::from_secs(60))
            .await
            .unwrap_err(),
    ];
    let results = c
        .batch()
        .query("SELECT 1", &[])
        .query(nul, &[])
        .run()
        .await
        .unwrap();
    assert!(results[0].is_done(), "{results:?}");
    check_nul_refused(results[1].error().expect("the statement failed"));

    // In a transaction the refused statement leaves the transaction as it was.
    let tx = c.transaction().await.unwrap();
    errors.push(tx.query(nul, &[]).await.unwrap_err());
    errors.push(tx.batch_execute(nul).await.unwrap_err());
    tx.execute("CREATE TEMP TABLE t (n int)", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    errors.iter().for_each(check_nul_refused);
    assert_eq!(
        c.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0),
        2
    );
    assert_eq!(
        pg.warmpool_backends().await,
        backends,
        "the database connection was replaced; log:\n{}",
        ext.logs()
    );
    // Refused by the client itself: the extension never saw one of these requests.
    assert!(!ext.logs().contains("22021"), "log:\n{}", ext.logs());
}
