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
