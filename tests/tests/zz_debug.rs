use warmpool_tests::{Extension, PgServer};
#[tokio::test]
async fn dbg() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_LOG_LEVEL", "debug")]);
    let c = ext.client().await;
    let r = c.query("SELECT 1 FROM WHERE", &[]).await;
    println!("{r:?}");
    let r = c.query("SELECT 1", &[]).await;
    println!("{r:?}");
    println!("PGLOG {}", pg.log_tail(30));
}
