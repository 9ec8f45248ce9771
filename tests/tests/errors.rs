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
