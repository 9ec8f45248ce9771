//! A function process that dies holding a transaction: it locks a row through the extension,
//! says so on stdout, then waits to be killed.
//!
//! Usage: `hold_tx <socket> <table> <id>`

use std::io::Write;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, table, id] = &args[..] else {
        panic!("usage: hold_tx <socket> <table> <id>");
    };
    let id: i32 = id.parse().expect("id");
    let client = warmpool::Client::connect_to(socket).await.expect("connect");
    let tx = client.transaction().await.expect("begin");
    let sql = format!("UPDATE {table} SET n = n + 1 WHERE id = $1");
    let n = tx.execute(sql.as_str(), &[&id]).await.expect("update");
    assert_eq!(n, 1);
    println!("locked");
    std::io::stdout().flush().expect("flush");
    std::future::pending::<()>().await;
    drop(tx);
}
