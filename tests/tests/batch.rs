//! Batches: several parameterised statements in one frame, pipelined by the extension on one
//! connection, each with its own result; as one transaction, all take effect or none does.

use warmpool::{BatchResult, SqlState, ToSql};
use warmpool_tests::{Extension, PgServer};

async fn setup(c: &warmpool::Client) {
    c.batch_execute(
        "CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL); \
         INSERT INTO item VALUES (1, 'one'), (2, 'two'), (3, 'three')",
    )
    .await
    .unwrap();
}

async fn ids(c: &warmpool::Client) -> Vec<i32> {
    c.query("SELECT id FROM item ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn code(r: &BatchResult) -> Option<&SqlState> {
    r.error().and_then(|e| e.code())
}

#[tokio::test]
async fn statements_run_in_order_on_one_connection_with_their_own_results() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;
    let prepared = c
        .prepare("SELECT name FROM item WHERE id = $1")
        .await
        .unwrap();

    let results = c
        .batch()
        .query("SELECT pg_backend_pid()", &[])
        .query(&prepared, &[&2i32])
        .execute("INSERT INTO item VALUES ($1, $2)", &[&4i32, &"four"])
        .query(
            "SELECT id, name FROM item WHERE id >= $1 ORDER BY id",
            &[&3i32],
        )
        .execute(
            "UPDATE item SET name = upper(name) WHERE id <= $1",
            &[&2i32],
        )
        .query("SELECT pg_backend_pid()", &[])
        .run()
        .await
        .unwrap();
    assert_eq!(results.len(), 6);
    assert!(results.iter().all(BatchResult::is_done), "{results:?}");
    let pid = |r: &BatchResult| r.rows().unwrap()[0].get::<_, i32>(0);
    assert_eq!(pid(&results[0]), pid(&results[5]), "one connection");
    assert_eq!(results[1].rows().unwrap()[0].get::<_, &str>(0), "two");
    assert_eq!(results[2].rows_affected(), Some(1));
    assert!(results[2].rows().unwrap().is_empty());
    let later: Vec<(i32, String)> = results[3]
        .rows()
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // The insert before it is visible: statements run in order.
    assert_eq!(later, vec![(3, "three".into()), (4, "four".into())]);
    assert_eq!(results[4].rows_affected(), Some(2));
    assert_eq!(ids(&c).await, vec![1, 2, 3, 4]);

    // An empty batch sends nothing and returns nothing.
    assert!(c.batch().run().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_transactional_batch_commits_everything() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;

    let results = c
        .batch()
        .query("SELECT name FROM item WHERE id = $1", &[&1i32])
        .query("SELECT txid_current()", &[])
        .execute("INSERT INTO item VALUES ($1, $2)", &[&10i32, &"ten"])
        .query("SELECT txid_current()", &[])
        .transaction(true)
        .run()
        .await
        .unwrap();
    assert!(results.iter().all(BatchResult::is_done), "{results:?}");
    let txid = |r: &BatchResult| r.rows().unwrap()[0].get::<_, i64>(0);
    assert_eq!(txid(&results[1]), txid(&results[3]), "one transaction");
    assert_eq!(ids(&c).await, vec![1, 2, 3, 10]);
}

#[tokio::test]
async fn a_failure_in_a_transactional_batch_applies_nothing() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;

    let results = c
        .batch()
        .execute("INSERT INTO item VALUES ($1, $2)", &[&20i32, &"twenty"])
        .execute("INSERT INTO item VALUES ($1, $2)", &[&1i32, &"duplicate"])
        .execute("INSERT INTO item VALUES ($1, $2)", &[&21i32, &"twenty-one"])
        .query("SELECT 1", &[])
        .transaction(true)
        .run()
        .await
        .unwrap();
    assert!(matches!(results[0], BatchResult::RolledBack), "{results:?}");
    assert_eq!(code(&results[1]), Some(&SqlState::UNIQUE_VIOLATION));
    assert!(matches!(results[2], BatchResult::NotRun), "{results:?}");
    assert!(matches!(results[3], BatchResult::NotRun), "{results:?}");
    assert_eq!(ids(&c).await, vec![1, 2, 3], "nothing applied");

    // The connection went back to the pool outside any transaction.
    let stuck = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(stuck, 0);
    let again = c
        .batch()
        .execute("INSERT INTO item VALUES ($1, $2)", &[&20i32, &"twenty"])
        .transaction(true)
        .run()
        .await
        .unwrap();
    assert!(again[0].is_done(), "{again:?}");
    assert_eq!(ids(&c).await, vec![1, 2, 3, 20]);
}

#[tokio::test]
async fn a_failure_outside_a_transaction_leaves_the_other_statements_alone() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;

    let results = c
        .batch()
        .execute("INSERT INTO item VALUES ($1, $2)", &[&30i32, &"thirty"])
        .execute("INSERT INTO item VALUES ($1, $2)", &[&2i32, &"duplicate"])
        .query("SELECT 1 / $1", &[&0i32])
        .execute("INSERT INTO item VALUES ($1, $2)", &[&31i32, &"thirty-one"])
        .run()
        .await
        .unwrap();
    assert_eq!(results[0].rows_affected(), Some(1));
    assert_eq!(code(&results[1]), Some(&SqlState::UNIQUE_VIOLATION));
    assert_eq!(code(&results[2]), Some(&SqlState::DIVISION_BY_ZERO));
    assert_eq!(results[3].rows_affected(), Some(1));
    assert_eq!(ids(&c).await, vec![1, 2, 3, 30, 31]);
}

#[tokio::test]
async fn parameter_errors_stop_their_statement_before_anything_is_sent() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;

    // A text value for an int parameter cannot be encoded: in a transaction nothing is sent.
    let results = c
        .batch()
        .execute("INSERT INTO item VALUES ($1, $2)", &[&40i32, &"forty"])
        .execute("INSERT INTO item VALUES ($1, $2)", &[&"41", &"forty-one"])
        .transaction(true)
        .run()
        .await
        .unwrap();
    assert!(matches!(results[0], BatchResult::NotRun), "{results:?}");
    let e = results[1].error().expect("the bad parameter fails");
    assert!(e.code().is_none(), "found on the client: {e}");
    assert!(e.to_string().contains("parameter 0"), "{e}");
    assert_eq!(ids(&c).await, vec![1, 2, 3]);

    // Outside a transaction only the bad statement is left out; a wrong parameter count and a
    // statement PostgreSQL cannot parse fail the same way.
    let too_few: &[&(dyn ToSql + Sync)] = &[&50i32];
    let results = c
        .batch()
        .execute("INSERT INTO item VALUES ($1, $2)", &[&"x", &"y"])
        .execute("INSERT INTO item VALUES ($1, $2)", too_few)
        .query("SELEC broken", &[])
        .execute("INSERT INTO item VALUES ($1, $2)", &[&42i32, &"forty-two"])
        .run()
        .await
        .unwrap();
    assert!(results[0].error().is_some(), "{results:?}");
    let e = results[1].error().expect("wrong count");
    assert!(
        e.to_string().contains("expected 2 parameters but got 1"),
        "{e}"
    );
    assert_eq!(code(&results[2]), Some(&SqlState::SYNTAX_ERROR));
    assert_eq!(results[3].rows_affected(), Some(1));
    assert_eq!(ids(&c).await, vec![1, 2, 3, 42]);

    // A statement the server cannot describe, in a transaction: nothing runs.
    let results = c
        .batch()
        .execute(
            "INSERT INTO item VALUES ($1, $2)",
            &[&43i32, &"forty-three"],
        )
        .query("SELECT nope FROM item", &[])
        .transaction(true)
        .run()
        .await
        .unwrap();
    assert!(matches!(results[0], BatchResult::NotRun), "{results:?}");
    assert_eq!(code(&results[1]), Some(&SqlState::UNDEFINED_COLUMN));
    assert_eq!(ids(&c).await, vec![1, 2, 3, 42]);
}

#[tokio::test]
async fn transaction_options_apply_to_the_whole_batch() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let c = ext.client().await;
    setup(&c).await;

    let results = c
        .batch()
        .query("SELECT current_setting('transaction_isolation')", &[])
        .execute("INSERT INTO item VALUES ($1, $2)", &[&60i32, &"sixty"])
        .isolation_level(warmpool::IsolationLevel::Serializable)
        .read_only(true)
        .run()
        .await
        .unwrap();
    assert!(matches!(results[0], BatchResult::RolledBack), "{results:?}");
    assert_eq!(
        code(&results[1]),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
    );
    let results = c
        .batch()
        .query("SELECT current_setting('transaction_isolation')", &[])
        .isolation_level(warmpool::IsolationLevel::Serializable)
        .run()
        .await
        .unwrap();
    assert_eq!(
        results[0].rows().unwrap()[0].get::<_, &str>(0),
        "serializable"
    );
    assert_eq!(ids(&c).await, vec![1, 2, 3]);
}

#[tokio::test]
async fn a_batch_over_the_frame_limit_is_refused_and_nothing_is_sent() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_FRAME_BYTES", "4096")]);
    let c = ext.client().await;
    setup(&c).await;

    let names: Vec<String> = (0..100).map(|i| format!("name number {i:040}")).collect();
    let ids_in: Vec<i32> = (100..200).collect();
    let params: Vec<[&(dyn ToSql + Sync); 2]> = ids_in
        .iter()
        .zip(&names)
        .map(|(i, n)| [i as &(dyn ToSql + Sync), n as &(dyn ToSql + Sync)])
        .collect();
    let mut batch = c.batch().transaction(true);
    for p in &params {
        batch = batch.execute("INSERT INTO item VALUES ($1, $2)", p);
    }
    assert_eq!(batch.len(), 100);
    let e = batch.run().await.expect_err("over the frame limit");
    assert_eq!(e.code(), Some(&SqlState::PROGRAM_LIMIT_EXCEEDED));
    let message = e.to_string();
    for needle in [
        "100 statements",
        "4096",
        "WARMPOOL_MAX_FRAME_BYTES",
        "nothing was sent",
    ] {
        assert!(message.contains(needle), "{needle} in {message}");
    }
    assert_eq!(ids(&c).await, vec![1, 2, 3]);

    // Split in two, it goes through.
    let mut first = c.batch().transaction(true);
    for p in &params[..10] {
        first = first.execute("INSERT INTO item VALUES ($1, $2)", p);
    }
    assert!(first.run().await.unwrap().iter().all(BatchResult::is_done));
    assert_eq!(ids(&c).await.len(), 13);
}
