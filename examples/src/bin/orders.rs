//! An orders function on `lambda_runtime` that reaches PostgreSQL through the warmpool
//! extension. Deploy it as the `bootstrap` of a `provided.al2023` function with the warmpool
//! layer attached; it needs no database settings of its own.
//!
//! Events (`action` picks one):
//! - `{"action":"setup"}` creates the table.
//! - `{"action":"create","customer":"ada","item":"widget","qty":2}` inserts an order and counts
//!   the customer's orders, in one transaction, and says how long that took (`db_us`).
//! - `{"action":"get","id":1}` reads an order.
//! - `{"action":"count"}` counts the orders.
//! - `{"action":"backend"}` returns the server process id of the connection that answered.
//! - `{"action":"noop"}` touches no database.
//! - `{"action":"stats","queries":3}` runs `SELECT 1` that many times and returns what the
//!   extension counted for this invocation (`Client::stats`).
//! - `{"action":"crash_in_transaction","id":1}` locks an order in a transaction and then kills
//!   the process, as a crashing function would.

use lambda_runtime::{service_fn, Context, Error, LambdaEvent};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

/// One client per process, created on first use and shared by every invocation (and, on
/// Lambda Managed Instances, by concurrent ones).
static CLIENT: OnceCell<warmpool::Client> = OnceCell::const_new();

/// The shared client, as a handle for this invocation: the extension tags its log lines and
/// counts its work with the invocation's request id.
async fn client(context: &Context) -> Result<warmpool::Client, warmpool::Error> {
    let shared = CLIENT.get_or_try_init(warmpool::Client::connect).await?;
    Ok(shared.for_invocation(context))
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Request {
    Setup,
    Create {
        customer: String,
        item: String,
        qty: i32,
    },
    Get {
        id: i64,
    },
    Count,
    Backend,
    Noop,
    Stats {
        queries: u32,
    },
    CrashInTransaction {
        id: i64,
    },
}

async fn handle(event: LambdaEvent<Request>) -> Result<Value, Error> {
    let ctx = &event.context;
    match event.payload {
        Request::Setup => {
            client(ctx)
                .await?
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS orders (
                        id bigserial PRIMARY KEY,
                        customer text NOT NULL,
                        item text NOT NULL,
                        qty int NOT NULL CHECK (qty > 0),
                        created_at timestamptz NOT NULL DEFAULT now())",
                )
                .await?;
            Ok(json!({"ok": true}))
        }
        Request::Create {
            customer,
            item,
            qty,
        } => {
            let db = client(ctx).await?;
            // The database time as the function sees it, for the demo to set beside a fresh
            // connection's.
            let started = std::time::Instant::now();
            let tx = db.transaction().await?;
            let id: i64 = tx
                .query_one(
                    "INSERT INTO orders (customer, item, qty) VALUES ($1, $2, $3) RETURNING id",
                    &[&customer, &item, &qty],
                )
                .await?
                .get(0);
            let count: i64 = tx
                .query_one(
                    "SELECT count(*) FROM orders WHERE customer = $1",
                    &[&customer],
                )
                .await?
                .get(0);
            tx.commit().await?;
            let db_us = started.elapsed().as_micros() as u64;
            Ok(json!({"id": id, "customer_orders": count, "db_us": db_us}))
        }
        Request::Get { id } => {
            let row = client(ctx)
                .await?
                .query_opt(
                    "SELECT customer, item, qty FROM orders WHERE id = $1",
                    &[&id],
                )
                .await?;
            Ok(match row {
                Some(r) => json!({
                    "id": id,
                    "customer": r.get::<_, &str>(0),
                    "item": r.get::<_, &str>(1),
                    "qty": r.get::<_, i32>(2),
                }),
                None => json!({"id": id, "found": false}),
            })
        }
        Request::Count => {
            let n: i64 = client(ctx)
                .await?
                .query_one("SELECT count(*) FROM orders", &[])
                .await?
                .get(0);
            Ok(json!({"orders": n}))
        }
        Request::Backend => {
            let pid: i32 = client(ctx)
                .await?
                .query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0);
            Ok(json!({"pid": pid, "request_id": event.context.request_id}))
        }
        Request::Noop => Ok(json!({"ok": true})),
        Request::Stats { queries } => {
            let db = client(ctx).await?;
            for _ in 0..queries {
                db.query_one("SELECT 1", &[]).await?;
            }
            let s = db.stats().await?;
            Ok(json!({
                "request_id": s.request_id,
                "queries": s.queries,
                "rows": s.rows,
                "database_time_us": s.database_time_us,
                "pool_wait_us": s.pool_wait_us,
                "connections_created": s.connections_created,
                "connections_replaced": s.connections_replaced,
                "errors": s.total_errors(),
            }))
        }
        Request::CrashInTransaction { id } => {
            let db = client(ctx).await?;
            let tx = db.transaction().await?;
            tx.execute("UPDATE orders SET qty = qty + 1000 WHERE id = $1", &[&id])
                .await?;
            std::process::exit(70);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Sequential on classic Lambda; concurrent when AWS_LAMBDA_MAX_CONCURRENCY is above 1.
    lambda_runtime::run_concurrent(service_fn(handle)).await
}
