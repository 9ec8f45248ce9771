//! The benchmark's Lambda function (a `bootstrap` on `lambda_runtime`). `BENCH_SCENARIO` picks
//! how it reaches PostgreSQL, as real functions do:
//!
//! - `connect`: a fresh tokio-postgres connection (TLS, SCRAM) per invocation, closed at the end.
//! - `pgbouncer`: the same, to PgBouncer (`PGPORT` points at it).
//! - `static-naive`: one connection opened during Init and kept in a `static`; statements passed
//!   as `&str`, so tokio-postgres prepares them again on every call.
//! - `static-prepared`: the same connection with statements prepared once during Init.
//! - `warmpool`: the warmpool client, one statement at a time, through the extension.
//! - `warmpool-batch`: the warmpool client, the handler's statements as one batch (W2: one
//!   transaction), in one frame to the extension, which pipelines them to PostgreSQL.
//!
//! Connection settings come from `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE` and
//! `PGSSLROOTCERT` (TLS with the chain and host name verified).
//!
//! Payload: `{"w": 1, "ids": [7]}` runs W1 (one point select by primary key);
//! `{"w": 2, "ids": [1, 2, 3], "amount": 5}` runs W2 (a point select per id, then one insert, in
//! a transaction). The answer is `{"db_us": N, "rows": N, "steps_us": [...]}`: the time the
//! handler spent on the database, connect included, in microseconds, and its steps (connect
//! when there is one, then BEGIN, each statement and COMMIT for W2).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lambda_runtime::{service_fn, Error, LambdaEvent};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{Mutex, OnceCell};
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

const SELECT: &str = "SELECT id, name, balance FROM bench_accounts WHERE id = $1";
const INSERT: &str = "INSERT INTO bench_events (account_id, amount) VALUES ($1, $2)";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Connect,
    PgBouncer,
    StaticNaive,
    StaticPrepared,
    Warmpool,
    WarmpoolBatch,
}

#[derive(Deserialize)]
struct Request {
    w: u8,
    ids: Vec<i32>,
    #[serde(default)]
    amount: i32,
}

/// A connection kept for the life of the process, as `static` code keeps it.
struct Held {
    client: Client,
    select: Statement,
    insert: Statement,
}

struct State {
    scenario: Scenario,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    held: Option<Mutex<Held>>,
    warmpool: Option<warmpool::Client>,
}

static STATE: OnceCell<State> = OnceCell::const_new();

/// Times the steps of one invocation.
struct Steps {
    last: Instant,
    us: Vec<u64>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            last: Instant::now(),
            us: Vec::with_capacity(8),
        }
    }

    fn mark(&mut self) {
        let now = Instant::now();
        self.us.push((now - self.last).as_micros() as u64);
        self.last = now;
    }
}

fn env(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn tls() -> Result<MakeRustlsConnect, Error> {
    let pem = std::fs::read(env("PGSSLROOTCERT")?)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn pg_config() -> Result<tokio_postgres::Config, Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(env("PGHOST")?)
        .port(env("PGPORT")?.parse()?)
        .user(env("PGUSER")?)
        .password(env("PGPASSWORD")?)
        .dbname(env("PGDATABASE")?)
        .application_name(std::env::var("PGAPPNAME").as_deref().unwrap_or("bench-fn"))
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(5));
    Ok(config)
}

/// Opens a connection; its driver task is returned so a caller that closes the connection can
/// wait until Terminate has gone out (otherwise the freeze after the invocation would hold it).
async fn connect(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
) -> Result<(Client, tokio::task::JoinHandle<()>), Error> {
    let (client, connection) = config.connect(tls.clone()).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("connection ended: {e}");
        }
    });
    Ok((client, driver))
}

async fn init() -> Result<State, Error> {
    let scenario = match env("BENCH_SCENARIO")?.as_str() {
        "connect" => Scenario::Connect,
        "pgbouncer" => Scenario::PgBouncer,
        "static-naive" => Scenario::StaticNaive,
        "static-prepared" => Scenario::StaticPrepared,
        "warmpool" => Scenario::Warmpool,
        "warmpool-batch" => Scenario::WarmpoolBatch,
        other => return Err(format!("unknown BENCH_SCENARIO {other:?}").into()),
    };
    let mut state = State {
        scenario,
        config: pg_config().unwrap_or_default(),
        tls: tls()?,
        held: None,
        warmpool: None,
    };
    match scenario {
        Scenario::StaticNaive | Scenario::StaticPrepared => {
            let (client, _driver) = connect(&state.config, &state.tls).await?;
            let select = client.prepare(SELECT).await?;
            let insert = client.prepare(INSERT).await?;
            state.held = Some(Mutex::new(Held {
                client,
                select,
                insert,
            }));
        }
        Scenario::Warmpool | Scenario::WarmpoolBatch => {
            state.warmpool = Some(warmpool::Client::connect().await?)
        }
        Scenario::Connect | Scenario::PgBouncer => {}
    }
    Ok(state)
}

/// W1 and W2 on a tokio-postgres client, statements as text (prepared again on every call).
async fn run_text(client: &mut Client, req: &Request, steps: &mut Steps) -> Result<u64, Error> {
    if req.w == 1 {
        let rows = client.query(SELECT, &[&req.ids[0]]).await?;
        steps.mark();
        return Ok(rows.len() as u64);
    }
    let tx = client.transaction().await?;
    steps.mark();
    let mut n = 0;
    for id in &req.ids {
        n += tx.query(SELECT, &[id]).await?.len() as u64;
        steps.mark();
    }
    n += tx.execute(INSERT, &[&req.ids[0], &req.amount]).await?;
    steps.mark();
    tx.commit().await?;
    steps.mark();
    Ok(n)
}

/// W1 and W2 with statements prepared once.
async fn run_prepared(held: &mut Held, req: &Request, steps: &mut Steps) -> Result<u64, Error> {
    let Held {
        client,
        select,
        insert,
    } = held;
    if req.w == 1 {
        let n = client.query(&*select, &[&req.ids[0]]).await?.len() as u64;
        steps.mark();
        return Ok(n);
    }
    let tx = client.transaction().await?;
    steps.mark();
    let mut n = 0;
    for id in &req.ids {
        n += tx.query(&*select, &[id]).await?.len() as u64;
        steps.mark();
    }
    n += tx.execute(&*insert, &[&req.ids[0], &req.amount]).await?;
    steps.mark();
    tx.commit().await?;
    steps.mark();
    Ok(n)
}

/// W1 and W2 through warmpool, one statement at a time, as text (the client caches them).
/// BEGIN goes out with the first statement, so its step is (nearly) free.
async fn run_warmpool(
    client: &warmpool::Client,
    req: &Request,
    steps: &mut Steps,
) -> Result<u64, Error> {
    if req.w == 1 {
        let n = client.query(SELECT, &[&req.ids[0]]).await?.len() as u64;
        steps.mark();
        return Ok(n);
    }
    let tx = client.transaction().await?;
    steps.mark();
    let mut n = 0;
    for id in &req.ids {
        n += tx.query(SELECT, &[id]).await?.len() as u64;
        steps.mark();
    }
    n += tx.execute(INSERT, &[&req.ids[0], &req.amount]).await?;
    steps.mark();
    tx.commit().await?;
    steps.mark();
    Ok(n)
}

/// W1 and W2 through warmpool as one batch each: W2's selects and insert go out in one frame,
/// as one transaction. The batch is one step.
async fn run_warmpool_batch(
    client: &warmpool::Client,
    req: &Request,
    steps: &mut Steps,
) -> Result<u64, Error> {
    let ids: Vec<&(dyn warmpool::ToSql + Sync)> = req
        .ids
        .iter()
        .map(|id| id as &(dyn warmpool::ToSql + Sync))
        .collect();
    let first_id = &req.ids[0];
    let insert: [&(dyn warmpool::ToSql + Sync); 2] = [first_id, &req.amount];
    let mut batch = client.batch();
    let selects = if req.w == 1 { 1 } else { ids.len() };
    for id in ids.iter().take(selects) {
        batch = batch.query(SELECT, std::slice::from_ref(id));
    }
    if req.w == 2 {
        batch = batch.execute(INSERT, &insert).transaction(true);
    }
    let results = batch.run().await?;
    steps.mark();
    let mut n = 0;
    for r in results {
        match r {
            warmpool::BatchResult::Done { rows_affected, .. } => n += rows_affected,
            warmpool::BatchResult::Failed(e) => return Err(e.into()),
            other => return Err(format!("statement not applied: {other:?}").into()),
        }
    }
    Ok(n)
}

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let req: Request = serde_json::from_value(event.payload)?;
    if req.ids.is_empty() || !(1..=2).contains(&req.w) {
        return Err("payload needs w (1 or 2) and at least one id".into());
    }
    let state = STATE.get().ok_or("not initialised")?;
    let started = Instant::now();
    let mut steps = Steps::new();
    let (rows, driver) = match state.scenario {
        Scenario::Connect | Scenario::PgBouncer => {
            let (mut client, driver) = connect(&state.config, &state.tls).await?;
            steps.mark();
            let rows = run_text(&mut client, &req, &mut steps).await;
            drop(client);
            (rows, Some(driver))
        }
        Scenario::StaticNaive => {
            let mut held = state.held.as_ref().ok_or("no connection")?.lock().await;
            (run_text(&mut held.client, &req, &mut steps).await, None)
        }
        Scenario::StaticPrepared => {
            let mut held = state.held.as_ref().ok_or("no connection")?.lock().await;
            (run_prepared(&mut held, &req, &mut steps).await, None)
        }
        Scenario::Warmpool => {
            let client = state.warmpool.as_ref().ok_or("no client")?;
            (run_warmpool(client, &req, &mut steps).await, None)
        }
        Scenario::WarmpoolBatch => {
            let client = state.warmpool.as_ref().ok_or("no client")?;
            (run_warmpool_batch(client, &req, &mut steps).await, None)
        }
    };
    let db_us = started.elapsed().as_micros() as u64;
    if let Some(driver) = driver {
        // Outside the measured time: let Terminate go out before the environment freezes.
        let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
    }
    Ok(json!({"db_us": db_us, "rows": rows?, "steps_us": steps.us}))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Init: what real functions do outside the handler (connect, prepare).
    let state = init().await?;
    if STATE.set(state).is_err() {
        return Err("initialised twice".into());
    }
    lambda_runtime::run(service_fn(handle)).await
}
