//! The fleet connection budget: a fleet of classic environments, more of them than ever run at
//! once, and the server connections it holds, with warmpool's fleet budget
//! (`WARMPOOL_FLEET_MAX_CONNECTIONS`), without it, and with connect-per-invocation.
//!
//! ```text
//! cargo run --release -p warmpool-bench -- --fleet [--quick] [--extension PATH] [--out DIR]
//! ```
//!
//! Each configuration gets 40 environments of its own (`--envs`), frozen between invocations,
//! connecting as a role of its own. Init runs in waves of at most 8 environments (`--wave`);
//! then the environments are invoked in waves: the next 8 in turn, all at once, each a few
//! calls one after another (`--calls`), with a pause between waves (`--pause-ms`), until every
//! environment has had the same number of invocations. Every wave but the first wants
//! connections that the waves before it hold, which is what a budget smaller than the fleet has
//! to deal with. A sampler reads `pg_stat_activity` every few milliseconds on a connection of
//! its own and counts the configuration's client backends, and those of them past their
//! admission into the budget. Results: `fleet.{json,md}`, and for a full run into the
//! repository, the fleet section of bench/RESULTS.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use local_lambda::LocalLambda;
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use warmpool_tests::PgServer;

use crate::lambda::{self, Ctx, Plan, Rng, Scenario, Workload};
use crate::relay::Relay;
use crate::setup;
use crate::stats::{fmt_ratio, fmt_us, ratio, Summary};

/// The goal on time: the p50 with the budget at most this many times the p50 without.
const GOAL_P50_RATIO: f64 = 1.5;
/// The start of the statements a new fleet connection runs to be admitted
/// (`extension/src/fleet.rs`): a connection whose last statement is this one has not been used
/// past its admission.
const ADMISSION: &str = "BEGIN; SET LOCAL lock_timeout%";
/// How often the sampler reads `pg_stat_activity`.
const SAMPLE_EVERY: Duration = Duration::from_millis(2);
/// The steal threshold the extension uses when `WARMPOOL_FLEET_STEAL_IDLE_MS` is not set.
const DEFAULT_STEAL_IDLE_MS: &str = "2000";

/// Options of the fleet part.
pub struct FleetOpts {
    envs: usize,
    wave: usize,
    calls: usize,
    invocations: usize,
    budget: u32,
    pause: Duration,
    rtt_ms: f64,
    rows: u32,
    extension: Option<PathBuf>,
    out: PathBuf,
    /// Writes the section of bench/RESULTS.md (a full run into bench/results).
    full: bool,
    args: Vec<String>,
}

const USAGE: &str = "\
usage: warmpool-bench --fleet [--quick] [--budget N] [--envs N] [--wave N] [--calls N]
                      [--invocations N] [--pause-ms MS] [--rtt MS] [--extension PATH] [--out DIR]

  --budget N         WARMPOOL_FLEET_MAX_CONNECTIONS of the budget configuration (default 10)
  --envs N           environments per configuration (default 40)
  --wave N           environments invoked at once, and started at once (default 8)
  --calls N          invocations of each environment in a wave, one after another (default 5;
                     quick 3)
  --invocations N    invocations per configuration, spread evenly over the environments
                     (default 1000; quick 240), rounded up to whole rounds of waves
  --pause-ms MS      pause between two waves (default 500)
  --rtt MS           simulated round trip to PostgreSQL, 0 for loopback (default 0.5)
  --extension PATH   the extension binary to measure (default: build it)
  --out DIR          results directory (default bench/results; quick target/warmpool-bench);
                     writes fleet.{json,md}";

impl FleetOpts {
    /// The part as the default full run runs it: its own defaults, results in `out`, and the
    /// section of bench/RESULTS.md when `out` is bench/results.
    pub fn in_full_run(extension: &Path, out: &Path, full: bool, args: &[String]) -> FleetOpts {
        let mut o = parse(&[]).expect("the defaults parse");
        o.extension = Some(extension.to_owned());
        o.out = out.to_owned();
        o.full = full;
        o.args = args.to_vec();
        o
    }
}

impl FleetOpts {
    /// What a smoke run measures: a fleet of 4 in waves of 2 with a budget of 2, to check that
    /// the part runs.
    pub fn smoke(extension: &Path, out: &Path) -> FleetOpts {
        let mut o = FleetOpts::in_full_run(extension, out, false, &["--smoke".into()]);
        o.envs = 4;
        o.wave = 2;
        o.calls = 2;
        o.invocations = 8;
        o.budget = 2;
        o.pause = Duration::from_millis(100);
        o
    }
}

/// What makes a smoke run fail: an Init or an invocation that failed. Neither connections nor
/// times are judged.
pub fn failures(r: &Results) -> Vec<String> {
    r.configurations
        .iter()
        .filter(|m| m.failed > 0 || m.init_failures > 0 || m.db.n == 0)
        .map(|m| {
            format!(
                "fleet, {}: {} of {} invocations and {} Init(s) failed ({})",
                m.configuration,
                m.failed,
                m.invocations,
                m.init_failures,
                m.failure_samples.join("; ")
            )
        })
        .collect()
}

/// Parses the arguments after `--fleet`.
pub fn parse(args: &[String]) -> Result<FleetOpts, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = FleetOpts {
        envs: 40,
        wave: 8,
        calls: if quick { 3 } else { 5 },
        invocations: if quick { 240 } else { 1000 },
        budget: 10,
        pause: Duration::from_millis(500),
        rtt_ms: 0.5,
        rows: 10_000,
        extension: None,
        out: if quick {
            manifest.join("../target/warmpool-bench")
        } else {
            manifest.join("results")
        },
        full: !quick,
        args: args.to_vec(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().cloned().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|_| format!("not a number: {s}"));
        match a.as_str() {
            "--fleet" | "--quick" => {}
            "--budget" => o.budget = num(v()?)?.clamp(1, 100) as u32,
            "--envs" => o.envs = num(v()?)?.clamp(1, 64),
            "--wave" => o.wave = num(v()?)?.clamp(1, 64),
            "--calls" => o.calls = num(v()?)?.clamp(1, 1000),
            "--invocations" => o.invocations = num(v()?)?.max(1),
            "--pause-ms" => o.pause = Duration::from_millis(num(v()?)?.min(60_000) as u64),
            "--rtt" => {
                let s = v()?;
                o.rtt_ms = s
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=100.0).contains(r))
                    .ok_or(format!("bad round-trip time {s}"))?
            }
            "--extension" => o.extension = Some(PathBuf::from(v()?)),
            "--out" => {
                o.out = PathBuf::from(v()?);
                o.full = false;
            }
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    o.wave = o.wave.min(o.envs);
    Ok(o)
}

/// The three ways the fleet reaches PostgreSQL.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    NoBudget,
    Budget,
    Connect,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::NoBudget, Kind::Budget, Kind::Connect];

    fn key(self) -> &'static str {
        match self {
            Kind::NoBudget => "warmpool",
            Kind::Budget => "warmpool-budget",
            Kind::Connect => "connect",
        }
    }

    /// Each configuration connects as a role of its own: the sampler counts by role, and the
    /// budget counts the fleet's connections of its own role only.
    fn role(self) -> String {
        format!("bench_fleet_{}", self.key().replace('-', "_"))
    }

    fn scenario(self) -> Scenario {
        match self {
            Kind::NoBudget | Kind::Budget => Scenario::Warmpool,
            Kind::Connect => Scenario::Connect,
        }
    }
}

/// One configuration, measured.
#[derive(Serialize)]
pub struct Measured {
    pub configuration: String,
    pub description: String,
    pub role: String,
    /// `WARMPOOL_FLEET_MAX_CONNECTIONS`, when set.
    pub budget: Option<u32>,
    /// The most client backends of the role at once, while the environments started.
    pub peak_init: u32,
    /// The most client backends of the role at once, while they were invoked.
    pub peak_invocations: u32,
    /// `pg_stat_activity` samples taken, and the mean time between two.
    pub samples: usize,
    pub sample_interval_ms: f64,
    /// Samples that counted more backends than the budget.
    pub samples_over_budget: usize,
    /// The most backends at once past their admission (see [`Sample::admitted`]).
    pub peak_admitted: u32,
    /// Server connections the role opened (the server's connection log).
    pub connections_opened: u32,
    /// Environments whose Init failed.
    pub init_failures: usize,
    pub invocations: usize,
    pub failed: usize,
    pub failure_samples: Vec<String>,
    /// The extensions' fleet metrics, summed over their EMF records.
    pub fleet: FleetCounts,
    /// Database time per invocation, as the handler measured it (connect included).
    pub db: Summary,
    /// The first call of each environment in each wave: thawed after the other waves ran.
    pub first_in_wave: Summary,
    /// The later calls of a wave: the environment ran a moment before.
    pub later_in_wave: Summary,
    pub init_s: f64,
    pub invoke_s: f64,
}

/// What the extensions of a configuration report about the budget: the sums of their EMF
/// metrics over every record (one per Init and per invocation on classic Lambda).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct FleetCounts {
    /// `FleetSlotsTaken`: connections of other environments ended to make room.
    pub slots_taken: u64,
    /// `FleetWaits`: requests that waited for a slot.
    pub waits: u64,
    /// `FleetWaitTime`, ms.
    pub wait_ms: f64,
    /// `FleetRefusals`: requests answered 53300 for want of a slot.
    pub refusals: u64,
    /// `ConnectionsCreated`.
    pub connections_created: u64,
}

impl FleetCounts {
    fn add(&mut self, record: &serde_json::Value) {
        let n = |name: &str| record.get(name).and_then(serde_json::Value::as_f64);
        let count = |name: &str| n(name).unwrap_or(0.0) as u64;
        self.slots_taken += count("FleetSlotsTaken");
        self.waits += count("FleetWaits");
        self.wait_ms += n("FleetWaitTime").unwrap_or(0.0);
        self.refusals += count("FleetRefusals");
        self.connections_created += count("ConnectionsCreated");
    }
}

/// Shuts the environments down (the extensions write their last metrics record at SHUTDOWN),
/// then reads the metrics records their extensions wrote, and lets them go.
async fn shut_down_counting(envs: Vec<Arc<LocalLambda>>) -> FleetCounts {
    futures_util::future::join_all(envs.iter().map(|e| {
        let e = e.clone();
        async move { e.shutdown().await }
    }))
    .await;
    let mut counts = FleetCounts::default();
    for env in &envs {
        for line in env.output() {
            if !line.process.starts_with("extension:") {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line.line.trim()) {
                if v.get("_aws").is_some() {
                    counts.add(&v);
                }
            }
        }
    }
    // Drop blocks (bounded) while it reaps the processes: off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(envs)).await;
    counts
}

/// A goal line and whether the run met it.
#[derive(Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Serialize)]
pub struct Results {
    pub command: String,
    pub profile: String,
    pub machine: String,
    pub rtt_ms: f64,
    pub envs: usize,
    pub wave: usize,
    pub calls: usize,
    pub rounds: usize,
    pub pause_ms: u64,
    pub budget: u32,
    pub steal_idle_ms: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub elapsed_s: f64,
    pub configurations: Vec<Measured>,
    pub goals: Vec<Goal>,
}

/// Runs the part on a PostgreSQL of its own and writes its results.
pub async fn run_alone(opts: FleetOpts) {
    eprintln!("fleet: building the extension and the bench function ...");
    let extension = match &opts.extension {
        Some(p) => p.canonicalize().unwrap_or_else(|e| {
            eprintln!("warmpool-bench: --extension {}: {e}", p.display());
            std::process::exit(2);
        }),
        None => warmpool_tests::ext::binary().to_path_buf(),
    };
    let function = setup::build_function();
    eprintln!(
        "fleet: starting PostgreSQL and seeding {} rows ...",
        opts.rows
    );
    let pg = setup::start_postgres();
    setup::seed(&pg, opts.rows, &[]);
    create_roles(&pg);
    let results = run(&pg, &extension, &function, &opts).await;
    for path in write(&results, &opts) {
        eprintln!("wrote {}", path.display());
    }
}

/// Creates the roles the part connects as, on a server the benchmark seeded.
pub fn create_roles(pg: &PgServer) {
    for kind in Kind::ALL {
        pg.superuser_psql(&format!(
            "CREATE ROLE {} LOGIN PASSWORD '{}' IN ROLE app",
            kind.role(),
            pg.password()
        ));
    }
    pg.superuser_psql(&format!(
        "CREATE ROLE {SAMPLER_ROLE} LOGIN PASSWORD '{}' IN ROLE pg_read_all_stats",
        pg.password()
    ));
}

/// Runs the three configurations on `pg` (seeded, with [`create_roles`]).
pub async fn run(pg: &PgServer, extension: &Path, function: &Path, opts: &FleetOpts) -> Results {
    let started = Instant::now();
    let loadavg_start = crate::report::loadavg();
    let layer = tempfile::Builder::new()
        .prefix("warmpool-bench-layer-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::os::unix::fs::symlink(extension, layer.path().join("warmpool"))
        .expect("symlink the extension");
    let sockets = tempfile::Builder::new()
        .prefix("warmpool-bench-sock-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let rtt = Duration::from_secs_f64(opts.rtt_ms / 1e3);
    let relay = (!rtt.is_zero()).then(|| {
        Relay::start(std::net::SocketAddr::from(([127, 0, 0, 1], pg.port())), rtt)
            .expect("start the delay relay")
    });
    let ctx = Ctx {
        pg,
        pg_port: relay.as_ref().map_or(pg.port(), Relay::port),
        rtt,
        function: function.to_owned(),
        layer: layer.path().to_owned(),
        sockets: sockets.path().to_owned(),
        pgbouncer: None,
        pgbouncer_pool: 0,
        rows: opts.rows,
        w2_selects: 3,
        warmup: 0,
        phase_limit: Duration::from_secs(600),
        timeout: Duration::from_secs(10),
    };
    let rounds = opts.invocations.div_ceil(opts.envs * opts.calls).max(1);
    let mut configurations = Vec::new();
    for kind in Kind::ALL {
        eprintln!(
            "[{:6.1} s] fleet: {} ({} environments, waves of {}, {} rounds of {} call(s)) ...",
            started.elapsed().as_secs_f64(),
            describe(kind, opts.budget),
            opts.envs,
            opts.wave,
            rounds,
            opts.calls
        );
        let m = measure(&ctx, kind, opts, rounds).await;
        eprintln!(
            "  peak connections {} at Init, {} invoked; {} invocations, {} failed; db p50 {}, p99 {}",
            m.peak_init,
            m.peak_invocations,
            m.invocations,
            m.failed,
            fmt_us(m.db.p50_us),
            fmt_us(m.db.p99_us)
        );
        configurations.push(m);
    }
    drop(ctx);
    drop(relay);

    let goals = goals(&configurations, opts.budget);
    let results = Results {
        command: format!("warmpool-bench {}", opts.args.join(" "))
            .trim_end()
            .to_owned(),
        profile: if setup::is_release() {
            "release"
        } else {
            "debug"
        }
        .into(),
        machine: format!(
            "{} ({} cores)",
            setup::command_line(
                "sh",
                &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]
            )
            .trim(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        rtt_ms: opts.rtt_ms,
        envs: opts.envs,
        wave: opts.wave,
        calls: opts.calls,
        rounds,
        pause_ms: opts.pause.as_millis() as u64,
        budget: opts.budget,
        steal_idle_ms: std::env::var("WARMPOOL_FLEET_STEAL_IDLE_MS")
            .unwrap_or_else(|_| format!("{DEFAULT_STEAL_IDLE_MS} (default)")),
        loadavg_start,
        loadavg_end: crate::report::loadavg(),
        elapsed_s: started.elapsed().as_secs_f64(),
        configurations,
        goals,
    };
    for g in &results.goals {
        eprintln!(
            "  goal {}: {} ({})",
            if g.met { "met" } else { "MISSED" },
            g.goal,
            g.measured
        );
    }
    results
}

fn describe(kind: Kind, budget: u32) -> String {
    match kind {
        Kind::NoBudget => "warmpool, no fleet budget".into(),
        Kind::Budget => format!("warmpool, WARMPOOL_FLEET_MAX_CONNECTIONS={budget}"),
        Kind::Connect => "connect-per-invocation (TLS + SCRAM each call)".into(),
    }
}

/// The role the sampler connects as: it reads every session's row of `pg_stat_activity` (a
/// role without `pg_read_all_stats` sees other roles' rows without their backend type).
const SAMPLER_ROLE: &str = "bench_fleet_sampler";

/// One reading of `pg_stat_activity`.
#[derive(Clone, Copy)]
struct Sample {
    /// When, since the configuration started.
    at: Duration,
    /// The role's client backends.
    backends: u32,
    /// Those of them past their admission into the fleet's budget: not counting connections
    /// that have run nothing yet, or nothing but the admission (waiting for the fleet's lock,
    /// counting, or refused and about to close).
    admitted: u32,
}

/// Counts the role's client backends in `pg_stat_activity` until told to stop, on a connection
/// of its own (as [`SAMPLER_ROLE`], none of the counted roles), from `origin` on.
async fn sample(
    pg: &PgServer,
    role: String,
    origin: Instant,
    ready: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Vec<Sample> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(pg.rustls_config());
    let (client, connection) = pg
        .tokio_config()
        .user(SAMPLER_ROLE)
        .connect(tls)
        .await
        .expect("the sampler's connection");
    let driver = tokio::spawn(connection);
    let query = client
        .prepare(
            "SELECT count(*)::int, count(*) FILTER (WHERE query <> '' AND query NOT LIKE $2)::int \
             FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'",
        )
        .await
        .expect("prepare the sampler's query");
    let _ = ready.send(());
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = Vec::with_capacity(1 << 16);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = every.tick() => {}
        }
        let at = origin.elapsed();
        match client.query_one(&query, &[&role, &ADMISSION]).await {
            Ok(row) => samples.push(Sample {
                at,
                backends: row.get::<_, i32>(0).max(0) as u32,
                admitted: row.get::<_, i32>(1).max(0) as u32,
            }),
            Err(e) => {
                eprintln!("  fleet sampler: {e}");
                break;
            }
        }
    }
    drop(client);
    let _ = driver.await;
    samples
}

/// What one invocation gave.
struct Call {
    first: bool,
    db_us: Result<f64, String>,
}

/// Runs one wave: every environment of `envs` at once, each `calls` invocations one after
/// another.
async fn wave(envs: &[Arc<LocalLambda>], calls: usize, seed: u64, plan: &Arc<Plan>) -> Vec<Call> {
    let tasks: Vec<_> = envs
        .iter()
        .enumerate()
        .map(|(i, env)| {
            let (env, plan) = (env.clone(), plan.clone());
            tokio::spawn(async move {
                let mut rng = Rng::seeded(seed, i as u64);
                let mut out = Vec::with_capacity(calls);
                for c in 0..calls {
                    let inv = env
                        .invoke(lambda::payload(Workload::W1, &mut rng, &plan))
                        .await;
                    out.push(Call {
                        first: c == 0,
                        db_us: lambda::db_us(&inv.outcome),
                    });
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("environment task"));
    }
    all
}

/// One configuration: its environments started and invoked in waves, its connections sampled.
async fn measure(ctx: &Ctx<'_>, kind: Kind, opts: &FleetOpts, rounds: usize) -> Measured {
    setup::wait_app_connections_closed(ctx.pg, Duration::from_secs(10));
    let offset = setup::log_offset(ctx.pg);
    let role = kind.role();
    let budget = opts.budget.to_string();
    let settings: Vec<(&str, &str)> = match kind {
        // Set to 0 rather than left out, so a budget in the benchmark's own environment (passed
        // on to the extensions) cannot turn it on here.
        Kind::NoBudget => vec![("WARMPOOL_FLEET_MAX_CONNECTIONS", "0")],
        Kind::Budget => vec![("WARMPOOL_FLEET_MAX_CONNECTIONS", &budget)],
        Kind::Connect => Vec::new(),
    };
    let origin = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let (ready, sampling) = oneshot::channel();
    let sampler = {
        let (pg, role) = (ctx.pg, role.clone());
        // The sampler borrows the server, so it runs beside the waves rather than as a task.
        async move { sample(pg, role, origin, ready, stopped).await }
    };
    let waves = async {
        // Nothing starts before the sampler is connected, so no connection goes uncounted.
        sampling.await.expect("the sampler connected to PostgreSQL");
        let mut failures = Vec::new();
        let mut envs = Vec::new();
        for i in 0..opts.envs {
            match lambda::build_env_as(
                ctx,
                kind.scenario(),
                2000 + i,
                ctx.pg_port,
                &role,
                &settings,
            ) {
                Ok(e) => envs.push(Arc::new(e)),
                Err(e) => panic!("building fleet environment {i}: {e}"),
            }
        }
        // Init in waves too, as a fleet grows under load that never runs more than a wave at once.
        let mut init_failures = 0;
        for group in envs.chunks(opts.wave) {
            let inits = group.iter().map(|e| {
                let e = e.clone();
                async move { e.init().await }
            });
            for r in futures_util::future::join_all(inits).await {
                if let Err(e) = r {
                    init_failures += 1;
                    if failures.len() < 5 {
                        failures.push(format!("Init: {}", shorten(&e)));
                    }
                }
            }
        }
        let init_end = origin.elapsed();

        let plan = Arc::new(Plan {
            rows: ctx.rows,
            w2_selects: ctx.w2_selects,
        });
        let mut calls = Vec::new();
        let mut n = 0u64;
        for _ in 0..rounds {
            for group in envs.chunks(opts.wave) {
                if n > 0 {
                    tokio::time::sleep(opts.pause).await;
                }
                calls.extend(wave(group, opts.calls, 100 + n, &plan).await);
                n += 1;
            }
        }
        let invoke_end = origin.elapsed();
        let _ = stop.send(true);
        (envs, init_failures, failures, calls, init_end, invoke_end)
    };
    let (samples, (envs, init_failures, mut failures, calls, init_end, invoke_end)) =
        tokio::join!(sampler, waves);
    let fleet = shut_down_counting(envs).await;
    setup::wait_app_connections_closed(ctx.pg, Duration::from_secs(10));
    let connections = setup::connections_since(ctx.pg, offset, &role);

    let peak = |from: Duration, to: Duration, n: fn(&Sample) -> u32| {
        samples
            .iter()
            .filter(|s| (from..to).contains(&s.at))
            .map(n)
            .max()
            .unwrap_or(0)
    };
    let (mut db, mut first, mut later, mut failed) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for c in &calls {
        match &c.db_us {
            Ok(d) => {
                db.push(*d);
                if c.first {
                    first.push(*d);
                } else {
                    later.push(*d);
                }
            }
            Err(e) => {
                failed += 1;
                if failures.len() < 5 {
                    failures.push(shorten(e));
                }
            }
        }
    }
    let span = samples.last().map_or(Duration::ZERO, |s| s.at)
        - samples.first().map_or(Duration::ZERO, |s| s.at);
    Measured {
        configuration: kind.key().into(),
        description: describe(kind, opts.budget),
        role,
        budget: (kind == Kind::Budget).then_some(opts.budget),
        peak_init: peak(Duration::ZERO, init_end, |s| s.backends),
        peak_invocations: peak(init_end, Duration::MAX, |s| s.backends),
        samples: samples.len(),
        sample_interval_ms: span.as_secs_f64() * 1e3
            / samples.len().saturating_sub(1).max(1) as f64,
        samples_over_budget: samples.iter().filter(|s| s.backends > opts.budget).count(),
        peak_admitted: peak(Duration::ZERO, Duration::MAX, |s| s.admitted),
        connections_opened: connections.opened,
        init_failures,
        invocations: calls.len(),
        failed,
        failure_samples: failures,
        fleet,
        db: Summary::of(&db, failed),
        first_in_wave: Summary::of(&first, 0),
        later_in_wave: Summary::of(&later, 0),
        init_s: init_end.as_secs_f64(),
        invoke_s: (invoke_end - init_end).as_secs_f64(),
    }
}

fn goals(configurations: &[Measured], budget: u32) -> Vec<Goal> {
    let find = |key: &str| configurations.iter().find(|m| m.configuration == key);
    let mut goals = Vec::new();
    if let Some(b) = find(Kind::Budget.key()) {
        let peak = b.peak_init.max(b.peak_invocations);
        // What the budget governs: connections that have been admitted. A connection exists,
        // and is listed, for the moment between its connect and its admission (or refusal);
        // the README states that the count can pass the budget by those.
        goals.push(Goal {
            goal: format!(
                "server connections at peak at most the budget ({budget}), outside moments of \
                 connecting"
            ),
            measured: format!(
                "{} at peak past their admission; counting connections still being opened, \
                 admitted or refused too, {peak} at peak ({} at Init, {} invoked), {} of {} \
                 samples over {budget}",
                b.peak_admitted, b.peak_init, b.peak_invocations, b.samples_over_budget, b.samples
            ),
            met: b.peak_admitted <= budget,
        });
        goals.push(Goal {
            goal: "no failed invocation".into(),
            measured: format!(
                "{} of {} failed, {} Init(s) failed",
                b.failed, b.invocations, b.init_failures
            ),
            met: b.failed == 0 && b.init_failures == 0,
        });
        if let Some(n) = find(Kind::NoBudget.key()) {
            let r = ratio(b.db.p50_us, n.db.p50_us);
            goals.push(Goal {
                goal: format!(
                    "p50 with the budget within {GOAL_P50_RATIO}× of warmpool without a budget"
                ),
                measured: format!(
                    "{} against {}: {}",
                    fmt_us(b.db.p50_us),
                    fmt_us(n.db.p50_us),
                    fmt_ratio(r)
                ),
                met: r.is_finite() && r <= GOAL_P50_RATIO,
            });
        }
    }
    goals
}

/// The results as Markdown; `title` heads them in a file of their own (inside
/// bench/RESULTS.md the section's heading and prose stand above the markers).
pub fn markdown(r: &Results, title: bool) -> String {
    let mut s = String::new();
    if title {
        let _ = writeln!(s, "# The fleet connection budget\n");
    }
    let _ = writeln!(
        s,
        "`{}` ({} build; {}; {}): per configuration {} classic environments, started and \
         invoked in waves of at most {} at once, {} call(s) of W1 per environment in a wave, a \
         pause of {} ms between waves, {} round(s) of waves; budget {} \
         (`WARMPOOL_FLEET_STEAL_IDLE_MS` {}). Load average {} at the start, {} at the end; \
         {:.0} s in all. Method: [README.md](README.md#the-fleet-connection-budget); data: \
         [results/fleet.json](results/fleet.json).\n",
        r.command,
        r.profile,
        r.machine,
        if r.rtt_ms > 0.0 {
            format!("simulated network, RTT {} ms", r.rtt_ms)
        } else {
            "loopback".into()
        },
        r.envs,
        r.wave,
        r.calls,
        r.pause_ms,
        r.rounds,
        r.budget,
        r.steal_idle_ms,
        r.loadavg_start,
        r.loadavg_end,
        r.elapsed_s
    );
    let _ = writeln!(
        s,
        "| Configuration | Peak connections (Init / invoked) | Opened | Invocations | Failed | \
         DB p50 | DB p99 | First in a wave p50 / p99 | Later p50 | p50 vs warmpool |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let base = r
        .configurations
        .iter()
        .find(|m| m.configuration == Kind::NoBudget.key())
        .map_or(f64::NAN, |m| m.db.p50_us);
    for m in &r.configurations {
        let _ = writeln!(
            s,
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
            m.description,
            m.peak_init,
            m.peak_invocations,
            m.connections_opened,
            m.invocations,
            m.failed + m.init_failures,
            fmt_us(m.db.p50_us),
            fmt_us(m.db.p99_us),
            fmt_us(m.first_in_wave.p50_us),
            fmt_us(m.first_in_wave.p99_us),
            fmt_us(m.later_in_wave.p50_us),
            fmt_ratio(ratio(m.db.p50_us, base))
        );
    }
    let _ = writeln!(s);
    for m in r.configurations.iter().filter(|m| m.budget.is_some()) {
        let f = &m.fleet;
        let _ = writeln!(
            s,
            "With the budget, the extensions' metrics: {} connection slots taken from idle \
             environments (`FleetSlotsTaken`), {} waits for a slot (`FleetWaits`, {:.1} s in all, \
             {} per wait on average), {} requests refused (`FleetRefusals`), {} connections \
             created (`ConnectionsCreated`, against {} opened in the server's log: the rest were \
             refused at admission and closed). Not counting connections that had run nothing \
             yet or nothing but their admission (new, waiting for the fleet's lock, or refused \
             and closing), the most at once was {}.\n",
            f.slots_taken,
            f.waits,
            f.wait_ms / 1e3,
            fmt_us(f.wait_ms * 1e3 / f.waits.max(1) as f64),
            f.refusals,
            f.connections_created,
            m.connections_opened,
            m.peak_admitted
        );
    }
    for g in &r.goals {
        let _ = writeln!(
            s,
            "- {}: {}: {}.",
            if g.met { "Met" } else { "**Missed**" },
            g.goal,
            g.measured
        );
    }
    let sampled: Vec<String> = r
        .configurations
        .iter()
        .map(|m| {
            format!(
                "{} {} samples, one every {:.1} ms",
                m.configuration, m.samples, m.sample_interval_ms
            )
        })
        .collect();
    let _ = writeln!(s, "\n`pg_stat_activity` sampled: {}.", sampled.join("; "));
    for m in r
        .configurations
        .iter()
        .filter(|m| !m.failure_samples.is_empty())
    {
        let _ = writeln!(
            s,
            "\n{}: failures, for example: {}",
            m.configuration,
            m.failure_samples.join("; ")
        );
    }
    s
}

const BEGIN: &str = "<!-- fleet:start -->";
const END: &str = "<!-- fleet:end -->";

/// Writes `fleet.json` and `fleet.md`, and for a full run into the repository the section of
/// bench/RESULTS.md between its fleet markers.
pub fn write(r: &Results, opts: &FleetOpts) -> Vec<PathBuf> {
    let mut written = Vec::new();
    std::fs::create_dir_all(&opts.out).expect("results directory");
    let json = opts.out.join("fleet.json");
    std::fs::write(&json, serde_json::to_string_pretty(r).expect("json") + "\n")
        .expect("write fleet.json");
    written.push(json);
    let md = opts.out.join("fleet.md");
    std::fs::write(&md, markdown(r, true)).expect("write fleet.md");
    written.push(md);
    if opts.full {
        let results_md = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
        let text = std::fs::read_to_string(&results_md).unwrap_or_default();
        let text = crate::report::replace_between(&text, BEGIN, END, &markdown(r, false));
        std::fs::write(&results_md, text).expect("write RESULTS.md");
        written.push(results_md);
    }
    written
}

fn shorten(s: &str) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(key: &str, p50: f64, peak: u32, failed: usize) -> Measured {
        Measured {
            configuration: key.into(),
            description: key.into(),
            role: String::new(),
            budget: None,
            peak_init: peak,
            peak_invocations: peak,
            samples: 10,
            sample_interval_ms: 2.0,
            samples_over_budget: 0,
            peak_admitted: peak,
            connections_opened: 0,
            init_failures: 0,
            invocations: 100,
            failed,
            failure_samples: Vec::new(),
            fleet: FleetCounts::default(),
            db: Summary {
                n: 100,
                p50_us: p50,
                ..Summary::default()
            },
            first_in_wave: Summary::default(),
            later_in_wave: Summary::default(),
            init_s: 0.0,
            invoke_s: 0.0,
        }
    }

    #[test]
    fn goals_judge_the_budget_configuration() {
        let mut budget = measured("warmpool-budget", 290.0, 10, 0);
        // Connections being opened at that moment pass the budget; the goal is on the others.
        budget.peak_invocations = 18;
        let ok = [measured("warmpool", 200.0, 45, 0), budget];
        assert!(goals(&ok, 10).iter().all(|g| g.met));
        let bad = [
            measured("warmpool", 200.0, 45, 0),
            measured("warmpool-budget", 310.0, 11, 1),
        ];
        let g = goals(&bad, 10);
        assert_eq!(g.len(), 3);
        assert!(g.iter().all(|g| !g.met));
    }

    #[test]
    fn a_smoke_run_fails_on_a_failed_invocation_only() {
        let results = |configurations| Results {
            command: String::new(),
            profile: String::new(),
            machine: String::new(),
            rtt_ms: 0.5,
            envs: 4,
            wave: 2,
            calls: 2,
            rounds: 1,
            pause_ms: 100,
            budget: 2,
            steal_idle_ms: String::new(),
            loadavg_start: String::new(),
            loadavg_end: String::new(),
            elapsed_s: 0.0,
            configurations,
            goals: Vec::new(),
        };
        // Over the budget and slower: not a smoke failure.
        let slow = results(vec![measured("warmpool-budget", 9e6, 40, 0)]);
        assert!(failures(&slow).is_empty());
        let failed = results(vec![measured("warmpool-budget", 200.0, 2, 1)]);
        assert_eq!(failures(&failed).len(), 1);
    }
}
