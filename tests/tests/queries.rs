//! Queries through the extension: results, parameters, statements, batches.

use warmpool_tests::{Extension, PgServer};

#[tokio::test]
async fn select_with_parameters() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = ext.client().await;
    let row = client
        .query_one("SELECT $1::int4 + 1 AS n, $2::text AS s", &[&41i32, &"hi"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>("n"), 42);
    assert_eq!(row.get::<_, &str>(1), "hi");
    let rows = client
        .query("SELECT generate_series(1, 1000)", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1000);
    assert_eq!(rows[999].get::<_, i32>(0), 1000);
}

#[tokio::test]
async fn a_result_of_many_frames_arrives_whole() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = ext.client().await;
    // About 800 KiB of rows: streamed in frames of at most 64 KiB, nulls and empty strings
    // among them.
    let rows = client
        .query(
            "SELECT i, repeat('x', i % 300), CASE WHEN i % 7 = 0 THEN NULL ELSE i END \
             FROM generate_series(1, 5000) i",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5000);
    for (n, row) in rows.iter().enumerate() {
        let i = n as i32 + 1;
        assert_eq!(row.get::<_, i32>(0), i);
        assert_eq!(row.get::<_, String>(1), "x".repeat((i % 300) as usize));
        assert_eq!(
            row.get::<_, Option<i32>>(2),
            (i % 7 != 0).then_some(i),
            "row {i}"
        );
    }
}

#[tokio::test]
async fn a_row_over_the_frame_limit_after_rows_already_sent_leaves_the_session_usable() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_FRAME_BYTES", "4096")]);
    let client = ext.client().await;
    // Rows in frames of up to 4 KiB, then one row of 100 kB, which no frame can hold.
    let e = client
        .query(
            "SELECT repeat('x', CASE WHEN i = 3000 THEN 100000 ELSE 10 END) \
             FROM generate_series(1, 3000) i",
            &[],
        )
        .await
        .expect_err("a row over the frame limit");
    assert_eq!(e.code().map(|c| c.code()), Some("54000"), "{e}");
    assert!(e.to_string().contains("WARMPOOL_MAX_FRAME_BYTES"), "{e}");
    let n: i32 = client.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
}
