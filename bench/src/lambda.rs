//! The scenarios, run through the local Lambda: `level` environments at once (classic mode, so
//! each is frozen between its invocations), each invoked one call after another.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use local_lambda::{LocalLambda, Outcome, Role};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use warmpool_tests::PgServer;

use crate::pgbouncer::{self, PgBouncer};
use crate::relay::Relay;
use crate::setup::{self, Connections};
use crate::stats::Summary;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Connect,
    StaticNaive,
    StaticPrepared,
    Warmpool,
    WarmpoolBatch,
    Pgbouncer,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Connect,
        Scenario::StaticNaive,
        Scenario::StaticPrepared,
        Scenario::Warmpool,
        Scenario::WarmpoolBatch,
        Scenario::Pgbouncer,
    ];

    /// Whether the scenario's environments run the warmpool extension.
    pub fn has_extension(self) -> bool {
        matches!(self, Scenario::Warmpool | Scenario::WarmpoolBatch)
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::StaticNaive => "static-naive",
            Scenario::StaticPrepared => "static-prepared",
            Scenario::Warmpool => "warmpool",
            Scenario::WarmpoolBatch => "warmpool-batch",
            Scenario::Pgbouncer => "pgbouncer",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Connect => "connect-per-invocation (tokio-postgres, TLS + SCRAM each call)",
            Scenario::StaticNaive => {
                "in-function static, naive (&str statements, re-prepared each call)"
            }
            Scenario::StaticPrepared => {
                "in-function static, prepared once (in-process lower bound)"
            }
            Scenario::Warmpool => "warmpool (client crate, one statement at a time)",
            Scenario::WarmpoolBatch => {
                "warmpool batch (client crate, the handler's statements as one batch)"
            }
            Scenario::Pgbouncer => {
                "PgBouncer, transaction mode (TLS + SCRAM connect to it each call)"
            }
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Workload W1 or W2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workload {
    W1,
    W2,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
        }
    }
}

/// The handler's statements, as `bench-fn` sends them.
const SELECT: &str = "SELECT id, name, balance FROM bench_accounts WHERE id = $1";
const INSERT: &str = "INSERT INTO bench_events (account_id, amount) VALUES ($1, $2)";

/// What every run at one round-trip time shares.
pub struct Ctx<'a> {
    pub pg: &'a PgServer,
    /// The port every client of PostgreSQL uses: the server's own, or a relay's in front of it
    /// that adds `rtt` to each round trip.
    pub pg_port: u16,
    /// The simulated network's round-trip time, zero on plain loopback.
    pub rtt: Duration,
    pub function: PathBuf,
    /// A directory with `warmpool` (a symlink to the extension binary): the layer.
    pub layer: PathBuf,
    /// Where the environments' sockets go.
    pub sockets: PathBuf,
    pub pgbouncer: Option<pgbouncer::Binary>,
    pub pgbouncer_pool: u32,
    pub rows: u32,
    pub w2_selects: usize,
    pub warmup: usize,
    pub phase_limit: Duration,
    pub timeout: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadResult {
    pub workload: Workload,
    /// Database time per invocation, measured by the handler (connect included).
    pub db: Summary,
    /// The whole invocation as the caller sees it, through the local Lambda's Runtime API.
    pub invoke: Summary,
    /// Median of each step the handler timed: connect (connect and PgBouncer only), then for W2
    /// BEGIN (free for warmpool: it travels with the first statement), each select, the insert
    /// and COMMIT; for W1 the select.
    pub steps_p50_us: Vec<f64>,
    /// Database time of each environment's first invocation in a burst, after an idle gap
    /// (frozen while the other scenarios ran): what a thaw costs.
    #[serde(default)]
    pub after_gap: Summary,
    pub wall_s: f64,
    pub invocations_per_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Cold {
    /// Init (extensions, then the runtime until its first `next`), µs.
    pub init: Summary,
    /// The first invocation after Init, µs.
    pub first_invoke: Summary,
    /// Init plus the first invocation: what the first caller waits for.
    pub total: Summary,
    /// Database time of the first invocation, as the handler measured it.
    pub first_db: Summary,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: Scenario,
    /// The simulated round-trip time between the clients and PostgreSQL (0: plain loopback).
    #[serde(default)]
    pub rtt_ms: f64,
    pub level: usize,
    pub per_env: usize,
    pub cold: Cold,
    pub workloads: Vec<WorkloadResult>,
    pub connections: Connections,
    pub extension_peak_rss_kib: Option<u64>,
    pub error_samples: Vec<String>,
    pub skipped: Option<String>,
    pub wall_s: f64,
    /// The idle gaps this scenario's environments spent frozen between two bursts (µs).
    #[serde(default)]
    pub idle_gap: Summary,
}

pub(crate) struct Plan {
    pub(crate) rows: u32,
    pub(crate) w2_selects: usize,
}

/// A small PRNG for the payloads (xorshift64*).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded(a: u64, b: u64) -> Rng {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15 ^ a.wrapping_mul(0x1000_0000_01B3) ^ (b << 32) ^ 1);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn id(&mut self, rows: u32) -> i32 {
        1 + (self.next() % u64::from(rows)) as i32
    }
}

pub(crate) fn payload(w: Workload, rng: &mut Rng, plan: &Plan) -> Value {
    match w {
        Workload::W1 => json!({"w": 1, "ids": [rng.id(plan.rows)]}),
        Workload::W2 => {
            let ids: Vec<i32> = (0..plan.w2_selects).map(|_| rng.id(plan.rows)).collect();
            json!({"w": 2, "ids": ids, "amount": 1 + (rng.next() % 100) as i32})
        }
    }
}

pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The handler's steps (connect, BEGIN, statements, COMMIT), µs.
fn steps_us(outcome: &Outcome) -> Vec<f64> {
    match outcome {
        Outcome::Ok(v) => v
            .get("steps_us")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The handler's answer, or why the invocation failed.
pub(crate) fn db_us(outcome: &Outcome) -> Result<f64, String> {
    match outcome {
        Outcome::Ok(v) => v
            .get("db_us")
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("answer without db_us: {v}")),
        Outcome::FunctionError(v) => Err(format!(
            "function error: {}",
            v.get("errorMessage")
                .and_then(Value::as_str)
                .unwrap_or(&v.to_string())
        )),
        other => Err(other.to_string()),
    }
}

/// The database role a scenario connects as, so the server log tells the scenarios apart.
pub fn role(scenario: Scenario) -> String {
    format!("bench_{}", scenario.name().replace('-', "_"))
}

fn build_env(
    ctx: &Ctx,
    scenario: Scenario,
    index: usize,
    pg_port: u16,
) -> Result<LocalLambda, String> {
    build_env_as(ctx, scenario, index, pg_port, &role(scenario), &[])
}

/// An environment of `scenario` that connects as `role`, with `extra` settings for the function
/// and its extension applied last (over the benchmark's own `WARMPOOL_*` variables).
pub(crate) fn build_env_as(
    ctx: &Ctx,
    scenario: Scenario,
    index: usize,
    pg_port: u16,
    role: &str,
    extra: &[(&str, &str)],
) -> Result<LocalLambda, String> {
    let mut b = LocalLambda::builder()
        .bootstrap(&ctx.function)
        .function_name(format!("bench-{}", scenario.name()))
        .timeout(ctx.timeout)
        .env("BENCH_SCENARIO", scenario.name());
    for (k, v) in ctx.pg.env() {
        let v = match k.as_str() {
            "PGPORT" => pg_port.to_string(),
            "PGUSER" => role.to_owned(),
            _ => v,
        };
        b = b.env(k, v);
    }
    // Names each environment's server connections in the server log.
    b = b.env("PGAPPNAME", format!("bench-env-{index}"));
    if scenario.has_extension() {
        // Settings under test (WARMPOOL_RUNTIME_THREADS…) from the benchmark's environment; the
        // ones below are the benchmark's own.
        for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("WARMPOOL_")) {
            b = b.env(k, v);
        }
        if std::env::var_os("WARMPOOL_PREPARE").is_none() {
            // The warm-up at Init a deployment would configure: the handler's statements are
            // prepared on the connection as it opens, as static prepared prepares them in its
            // Init, so a fresh environment's first query costs no Parse round trip.
            b = b.env(
                "WARMPOOL_PREPARE",
                serde_json::to_string(&[SELECT, INSERT]).expect("JSON"),
            );
        }
        b = b
            .extensions_dir(&ctx.layer)
            .env("WARMPOOL_LOG", "warn")
            .env(
                "WARMPOOL_SOCKET",
                ctx.sockets
                    .join(format!("env-{index}.sock"))
                    .display()
                    .to_string(),
            )
            // One directory, a port each, so environments do not meet on one socket.
            .env("WARMPOOL_PG_SOCKET_DIR", ctx.sockets.display().to_string())
            .env("WARMPOOL_PG_PORT", (20_000 + index).to_string());
    }
    for (k, v) in extra {
        b = b.env(*k, *v);
    }
    b.build().map_err(|e| e.to_string())
}

async fn shut_down(envs: Vec<Arc<LocalLambda>>) {
    let reports: Vec<_> = envs
        .iter()
        .map(|e| {
            let e = e.clone();
            async move { e.shutdown().await }
        })
        .collect();
    futures_util::future::join_all(reports).await;
    // Drop blocks (bounded) while it reaps the processes: off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(envs)).await;
}

/// What one invocation gave.
struct Sample {
    db_us: Result<f64, String>,
    steps_us: Vec<f64>,
    invoke_us: f64,
    init_us: Option<f64>,
}

/// Invokes every environment of a group `count` times, all environments at once, each one call
/// after another; stops early at `deadline`. Returns each environment's samples.
async fn burst(
    envs: &[Arc<LocalLambda>],
    w: Workload,
    count: usize,
    seed: u64,
    plan: &Arc<Plan>,
    deadline: Instant,
) -> (Vec<Vec<Sample>>, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = envs
        .iter()
        .enumerate()
        .map(|(i, env)| {
            let (env, plan) = (env.clone(), plan.clone());
            tokio::spawn(async move {
                let mut rng = Rng::seeded(seed, i as u64);
                let mut out = Vec::with_capacity(count);
                for _ in 0..count {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let inv = env.invoke(payload(w, &mut rng, &plan)).await;
                    out.push(Sample {
                        db_us: db_us(&inv.outcome),
                        steps_us: steps_us(&inv.outcome),
                        invoke_us: us(inv.duration),
                        init_us: inv.init_duration.map(us),
                    });
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.expect("environment task"));
    }
    (all, started.elapsed())
}

/// Per scenario and workload: what the bursts gathered.
#[derive(Default)]
struct Gathered {
    /// The first invocation of each environment in each burst: after an idle gap.
    after_gap: Vec<f64>,
    db: Vec<f64>,
    steps: Vec<Vec<f64>>,
    invoke: Vec<f64>,
    errors: usize,
    wall: Duration,
}

/// Runs every scenario at one level, interleaved: each scenario gets `level` environments, all
/// created up front; cold starts are measured scenario by scenario; then, in `rounds` rounds,
/// each workload runs a burst per scenario (the scenario order rotating), so background load on
/// the machine touches every scenario alike.
pub async fn run_level(
    ctx: &Ctx<'_>,
    scenarios: &[Scenario],
    level: usize,
    per_env: usize,
    rounds: usize,
    workloads: &[Workload],
) -> Vec<RunResult> {
    let phase_limit = ctx.phase_limit;
    let started = Instant::now();
    setup::wait_app_connections_closed(ctx.pg, Duration::from_secs(5));
    let offset = setup::log_offset(ctx.pg);
    let plan = Arc::new(Plan {
        rows: ctx.rows,
        w2_selects: ctx.w2_selects,
    });
    let mut results: Vec<RunResult> = scenarios
        .iter()
        .map(|&scenario| RunResult {
            scenario,
            rtt_ms: rtt_ms(ctx.rtt),
            level,
            per_env,
            cold: Cold::default(),
            workloads: Vec::new(),
            connections: Connections::default(),
            extension_peak_rss_kib: None,
            error_samples: Vec::new(),
            skipped: None,
            wall_s: 0.0,
            idle_gap: Summary::default(),
        })
        .collect();

    let mut bouncer = None;
    if scenarios.contains(&Scenario::Pgbouncer) {
        match Bouncer::start(ctx) {
            Ok(b) => bouncer = Some(b),
            Err(e) => {
                if let Some(r) = results
                    .iter_mut()
                    .find(|r| r.scenario == Scenario::Pgbouncer)
                {
                    r.skipped = Some(e);
                }
            }
        }
    }

    // Environments, and their cold starts, one scenario after another.
    let mut groups: Vec<Vec<Arc<LocalLambda>>> = Vec::new();
    for (k, &scenario) in scenarios.iter().enumerate() {
        let mut envs = Vec::new();
        if results[k].skipped.is_none() {
            let port = match scenario {
                Scenario::Pgbouncer => bouncer.as_ref().map_or(0, Bouncer::port),
                _ => ctx.pg_port,
            };
            for i in 0..level {
                match build_env(ctx, scenario, k * 1000 + i, port) {
                    Ok(e) => envs.push(Arc::new(e)),
                    Err(e) => {
                        results[k].skipped = Some(format!("building environment {i}: {e}"));
                        break;
                    }
                }
            }
        }
        if results[k].skipped.is_some() {
            shut_down(std::mem::take(&mut envs)).await;
        } else {
            let deadline = Instant::now() + phase_limit;
            let (cold, _) = burst(&envs, Workload::W1, 1, 7, &plan, deadline).await;
            let first: Vec<&Sample> = cold.iter().filter_map(|s| s.first()).collect();
            let ok: Vec<&&Sample> = first.iter().filter(|s| s.db_us.is_ok()).collect();
            let errors = first.len() - ok.len() + (level - first.len());
            let pick = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
                ok.iter().filter_map(|s| f(s)).collect()
            };
            results[k].cold = Cold {
                init: Summary::of(&pick(&|s| s.init_us), errors),
                first_invoke: Summary::of(&pick(&|s| Some(s.invoke_us)), errors),
                total: Summary::of(&pick(&|s| Some(s.init_us? + s.invoke_us)), errors),
                first_db: Summary::of(&pick(&|s| s.db_us.as_ref().ok().copied()), errors),
            };
            for s in &first {
                if let Err(e) = &s.db_us {
                    if results[k].error_samples.len() < 5 {
                        results[k].error_samples.push(format!("cold: {e}"));
                    }
                }
            }
            // Warm-up: statement caches, the first use of every code path.
            for (j, &w) in workloads.iter().enumerate() {
                let n = ctx.warmup.div_ceil(workloads.len()).max(1);
                let _ = burst(&envs, w, n, 11 + j as u64, &plan, deadline).await;
            }
        }
        groups.push(envs);
    }

    // The measured bursts, interleaved.
    let per_burst = per_env.div_ceil(rounds).max(1);
    let mut gathered: Vec<Vec<Gathered>> = scenarios
        .iter()
        .map(|_| workloads.iter().map(|_| Gathered::default()).collect())
        .collect();
    let deadline = Instant::now() + phase_limit * workloads.len() as u32;
    // When each scenario's last burst ended, and the idle gaps its environments saw (µs).
    let mut last_end: Vec<Option<Instant>> = vec![None; scenarios.len()];
    let mut gaps: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    for round in 0..rounds {
        for (j, &w) in workloads.iter().enumerate() {
            for step in 0..scenarios.len() {
                let k = (step + round) % scenarios.len();
                if groups[k].is_empty() {
                    continue;
                }
                let seed = 1000 + (round * 10 + j) as u64;
                let begun = Instant::now();
                if let Some(end) = last_end[k] {
                    gaps[k].push(us(begun - end));
                }
                let (samples, wall) = burst(&groups[k], w, per_burst, seed, &plan, deadline).await;
                last_end[k] = Some(Instant::now());
                let g = &mut gathered[k][j];
                g.wall += wall;
                for env in &samples {
                    if let Some(Ok(d)) = env.first().map(|s| &s.db_us) {
                        if round > 0 || j > 0 {
                            g.after_gap.push(*d);
                        }
                    }
                }
                for s in samples.into_iter().flatten() {
                    match s.db_us {
                        Ok(d) => {
                            g.db.push(d);
                            g.invoke.push(s.invoke_us);
                            for (i, &t) in s.steps_us.iter().enumerate() {
                                if g.steps.len() <= i {
                                    g.steps.push(Vec::new());
                                }
                                g.steps[i].push(t);
                            }
                        }
                        Err(e) => {
                            g.errors += 1;
                            if results[k].error_samples.len() < 5 {
                                results[k].error_samples.push(format!("{}: {e}", w.name()));
                            }
                        }
                    }
                }
            }
        }
    }

    for (k, envs) in groups.iter().enumerate() {
        if scenarios[k].has_extension() {
            results[k].extension_peak_rss_kib = envs
                .iter()
                .flat_map(|e| e.processes())
                .filter(|p| p.role == Role::Extension)
                .filter_map(|p| setup::peak_rss_kib(p.pid))
                .max();
        }
    }
    shut_down(groups.into_iter().flatten().collect()).await;
    if let Some(mut b) = bouncer {
        b.stop();
    }
    setup::wait_app_connections_closed(ctx.pg, Duration::from_secs(5));
    let wall_s = started.elapsed().as_secs_f64();
    for (k, r) in results.iter_mut().enumerate() {
        r.connections = setup::connections_since(ctx.pg, offset, &role(r.scenario));
        r.wall_s = wall_s;
        r.idle_gap = Summary::of(&gaps[k], 0);
        if r.skipped.is_some() {
            continue;
        }
        for (j, &w) in workloads.iter().enumerate() {
            let g = &gathered[k][j];
            r.workloads.push(WorkloadResult {
                workload: w,
                invocations_per_s: g.db.len() as f64 / g.wall.as_secs_f64().max(1e-9),
                db: Summary::of(&g.db, g.errors),
                invoke: Summary::of(&g.invoke, g.errors),
                steps_p50_us: g.steps.iter().map(|v| Summary::of(v, 0).p50_us).collect(),
                after_gap: Summary::of(&g.after_gap, 0),
                wall_s: g.wall.as_secs_f64(),
            });
        }
    }
    results
}

/// What happens when the server killed the connection while the environment was frozen.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AfterKill {
    pub scenario: Scenario,
    #[serde(default)]
    pub rtt_ms: f64,
    /// Server connections of the application role terminated during the freeze.
    pub terminated: u32,
    /// The first invocation after the thaw: its outcome and times.
    pub first_ok: bool,
    pub first_error: Option<String>,
    pub first_db_us: Option<f64>,
    pub first_invoke_us: f64,
    /// The next invocation: has the scenario recovered?
    pub second_ok: bool,
    pub second_error: Option<String>,
    pub skipped: Option<String>,
}

/// One environment: a cold and two warm W1 invocations, then, while it is frozen, the server
/// terminates every application connection (as `idle_session_timeout` or a failover would);
/// after a freeze longer than warmpool's check-after-idle threshold, two more W1 invocations.
pub async fn after_kill(ctx: &Ctx<'_>, scenario: Scenario, freeze: Duration) -> AfterKill {
    let mut out = AfterKill {
        scenario,
        rtt_ms: rtt_ms(ctx.rtt),
        terminated: 0,
        first_ok: false,
        first_error: None,
        first_db_us: None,
        first_invoke_us: 0.0,
        second_ok: false,
        second_error: None,
        skipped: None,
    };
    setup::wait_app_connections_closed(ctx.pg, Duration::from_secs(5));
    let mut bouncer = None;
    let mut port = ctx.pg_port;
    if scenario == Scenario::Pgbouncer {
        match Bouncer::start(ctx) {
            Ok(b) => {
                port = b.port();
                bouncer = Some(b);
            }
            Err(e) => {
                out.skipped = Some(e);
                return out;
            }
        }
    }
    let env = match build_env(ctx, scenario, 1000, port) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            out.skipped = Some(e);
            return out;
        }
    };
    let plan = Plan {
        rows: ctx.rows,
        w2_selects: ctx.w2_selects,
    };
    let mut rng = Rng::seeded(42, 0);
    for _ in 0..3 {
        let _ = env.invoke(payload(Workload::W1, &mut rng, &plan)).await;
    }
    out.terminated = ctx
        .pg
        .superuser_psql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE usename = '{}' AND backend_type = 'client backend'",
            role(scenario)
        ))
        .trim()
        .parse()
        .unwrap_or(0);
    tokio::time::sleep(freeze).await;
    let inv = env.invoke(payload(Workload::W1, &mut rng, &plan)).await;
    out.first_invoke_us = us(inv.duration);
    match db_us(&inv.outcome) {
        Ok(d) => {
            out.first_ok = true;
            out.first_db_us = Some(d);
        }
        Err(e) => out.first_error = Some(shorten(&e)),
    }
    let inv = env.invoke(payload(Workload::W1, &mut rng, &plan)).await;
    match db_us(&inv.outcome) {
        Ok(_) => out.second_ok = true,
        Err(e) => out.second_error = Some(shorten(&e)),
    }
    shut_down(vec![env]).await;
    if let Some(mut b) = bouncer {
        b.stop();
    }
    out
}

/// A round-trip time in milliseconds, as the results record it.
pub fn rtt_ms(rtt: Duration) -> f64 {
    rtt.as_secs_f64() * 1e3
}

/// PgBouncer for one part of the run. On a simulated network it stands where RDS Proxy does, a
/// host of its own: its server connections reach PostgreSQL through the relay (`ctx.pg_port`),
/// and the functions reach it through a relay of its own with the same round-trip time.
struct Bouncer {
    // Declared first so it is dropped first: no relayed connection outlives PgBouncer.
    relay: Option<Relay>,
    bouncer: PgBouncer,
}

impl Bouncer {
    fn start(ctx: &Ctx) -> Result<Bouncer, String> {
        let binary = ctx.pgbouncer.as_ref().ok_or("no PgBouncer binary")?;
        let bouncer = PgBouncer::start(ctx.pg, binary, ctx.pgbouncer_pool, ctx.pg_port)?;
        let relay = if ctx.rtt.is_zero() {
            None
        } else {
            let target = std::net::SocketAddr::from(([127, 0, 0, 1], bouncer.port()));
            Some(Relay::start(target, ctx.rtt).map_err(|e| format!("relay to PgBouncer: {e}"))?)
        };
        Ok(Bouncer { relay, bouncer })
    }

    fn port(&self) -> u16 {
        self.relay.as_ref().map_or(self.bouncer.port(), Relay::port)
    }

    fn stop(&mut self) {
        self.relay = None;
        self.bouncer.stop();
    }
}

fn shorten(s: &str) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}
