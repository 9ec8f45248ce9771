//! warmpool's load test: what it saves against connect-per-invocation, in-function static
//! connections and PgBouncer, measured in one run on one private PostgreSQL (TLS, SCRAM).
//!
//! ```text
//! cargo run --release -p warmpool-bench            # the full run (a few minutes)
//! cargo run --release -p warmpool-bench -- --quick # smaller counts (under a minute)
//! cargo run -p warmpool-bench -- --smoke            # CI: every part once, results in a temp dir
//! cargo run --release -p warmpool-bench -- --help
//! ```
//!
//! See bench/README.md for the method. Results go to bench/results/.

mod copier;
mod fleet;
mod hop;
mod lambda;
mod memory;
mod micro;
mod pg;
mod pg_langs;
mod pgbouncer;
mod relay;
mod report;
mod setup;
mod stats;
mod warm_state;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lambda::{Scenario, Workload};

const USAGE: &str = "\
usage: warmpool-bench [--quick | --smoke] [options]

Starts a private PostgreSQL (TLS, scram-sha-256) and a PgBouncer, then measures:
the socket hop (micro), the scenarios through the local Lambda at each concurrency level,
cold starts, server connections, and a server-side kill during a freeze.

  --quick                 smaller counts and levels 1,4 (under a minute); results in
                          target/warmpool-bench/
  --smoke                 every part once with tiny counts, level 1, no PgBouncer, results in
                          a temporary directory that is removed; fails if any invocation
                          fails. For CI: it checks that the benchmark runs, never its times.
  --rtt 0,0.5,1           round-trip times (ms) of the simulated network between every
                          client of PostgreSQL and the server, each a run of every
                          scenario; 0 is plain loopback (default 0,0.5,1; quick and smoke
                          0.5). The relay's own cost is measured at a delay of 0 beside them
  --levels 1,8,32         concurrent environments (each its own local Lambda)
  --invocations N         measured invocations per workload and level, spread over the
                          environments (default 1000; quick 60)
  --rounds N              scenarios alternate in N rounds of bursts (default 10; quick 2)
  --scenarios LIST        connect,static-naive,static-prepared,warmpool,pgbouncer
  --workloads w1,w2       which workloads
  --w2-selects N          point selects in W2 (default 3)
  --rows N                rows in the seeded table (default 10000)
  --pgbouncer-pool N      PgBouncer default_pool_size (default 10)
  --micro-seconds S       seconds per micro-benchmark load (default 2; quick 0.3)
  --micro-concurrency L   concurrency levels of the micro-benchmark (default 1,4)
  --no-micro, --no-lambda, --no-kill, --no-fleet   skip a part (the fleet part runs in
                          full runs only; see --fleet below)
  --extension PATH        the extension binary to measure (default: build it)
  --out DIR               results directory (default bench/results; quick
                          target/warmpool-bench)
  --name NAME             results file name (default latest; quick; smoke)

warmpool-bench --warm-state [--quick]
                          the warm-state scenario alone: reference data from warm state
                          against a query, and the extension's memory with 10,000 store
                          entries (bench/results/warm_state.{json,md})

warmpool-bench --hop [--quick] [--baseline PATH]
  The hop, before and after: a statement through warmpool against its ping and in-process,
  for this build and an earlier one (--baseline), in alternating rounds; see bench/src/hop.rs.

warmpool-bench --memory [--quick] [--baseline PATH]
                          the extension's memory at rest, at the peak of 6 rounds of 1,000
                          concurrent sessions and 5 s after, against the goal of being back
                          within 2x of rest (bench/results/memory.{json,md}, and its section
                          of bench/RESULTS.md); --baseline measures another build first

warmpool-bench --fleet [--quick]
                          the fleet connection budget: 40 classic environments invoked in
                          waves of at most 8, warmpool without and with
                          WARMPOOL_FLEET_MAX_CONNECTIONS=10 and connect-per-invocation; server
                          connections at peak, failures, p50 and p99
                          (bench/results/fleet.{json,md}, and its section of bench/RESULTS.md)

warmpool-bench --pg [--quick]
                          the PostgreSQL-protocol endpoint: pgbench -S -M prepared through it
                          against straight to PostgreSQL over TLS at 1 and 8 clients, the added
                          time per statement against the floor, and W1 and W2 from Python
                          (psycopg) and Node.js (pg) against connecting per invocation
                          (bench/results/pg.{json,md}, and its section of bench/RESULTS.md); see
                          bench/src/pg.rs and bench/src/pg_langs.rs

warmpool-bench --render bench/results/latest.json
                          writes the chart and the tables (for a full run, in
                          bench/RESULTS.md) again from a results file";

pub struct Opts {
    pub quick: bool,
    pub smoke: bool,
    /// Round-trip times of the simulated network, ms; 0 is plain loopback.
    pub rtts_ms: Vec<f64>,
    pub levels: Vec<usize>,
    pub invocations: usize,
    pub rounds: usize,
    pub scenarios: Vec<Scenario>,
    pub workloads: Vec<Workload>,
    pub w2_selects: usize,
    pub rows: u32,
    pub pgbouncer_pool: u32,
    pub micro_seconds: f64,
    pub micro_concurrency: Vec<usize>,
    pub micro: bool,
    pub lambda: bool,
    pub kill: bool,
    /// The fleet connection budget part (bench/src/fleet.rs), in full runs only.
    pub fleet: bool,
    pub extension: Option<PathBuf>,
    pub out: PathBuf,
    pub out_given: bool,
    pub name: String,
    pub args: Vec<String>,
}

fn list<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| f(x.trim()).ok_or_else(|| format!("bad value {x:?}")))
        .collect()
}

fn parse_args() -> Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    // A smoke run is a (much) smaller quick run.
    let quick = smoke || args.iter().any(|a| a == "--quick");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = Opts {
        quick,
        smoke,
        rtts_ms: if quick {
            vec![0.5]
        } else {
            vec![0.0, 0.5, 1.0]
        },
        levels: if smoke {
            vec![1]
        } else if quick {
            vec![1, 4]
        } else {
            vec![1, 8, 32]
        },
        invocations: if smoke {
            12
        } else if quick {
            60
        } else {
            1000
        },
        rounds: if quick { 2 } else { 10 },
        scenarios: if smoke {
            Scenario::ALL
                .into_iter()
                .filter(|&s| s != Scenario::Pgbouncer)
                .collect()
        } else {
            Scenario::ALL.to_vec()
        },
        workloads: vec![Workload::W1, Workload::W2],
        w2_selects: 3,
        rows: 10_000,
        pgbouncer_pool: 10,
        micro_seconds: if smoke {
            0.1
        } else if quick {
            0.3
        } else {
            2.0
        },
        micro_concurrency: if smoke { vec![1] } else { vec![1, 4] },
        micro: true,
        lambda: true,
        kill: true,
        fleet: !quick,
        extension: None,
        // Quick and smoke results stay out of the repository: target/ is ignored, and a smoke
        // run's directory is a temporary one (see `run`).
        out: if quick {
            manifest.join("../target/warmpool-bench")
        } else {
            manifest.join("results")
        },
        out_given: false,
        name: if smoke {
            "smoke"
        } else if quick {
            "quick"
        } else {
            "latest"
        }
        .into(),
        args: args.clone(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|_| format!("not a number: {s}"));
        match a.as_str() {
            "--quick" | "--smoke" => {}
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--rtt" => {
                o.rtts_ms = list(&v()?, |x| {
                    x.parse::<f64>().ok().filter(|r| (0.0..=100.0).contains(r))
                })?;
                o.rtts_ms.dedup();
                if o.rtts_ms.is_empty() {
                    return Err("--rtt needs at least one round-trip time".into());
                }
            }
            "--levels" => o.levels = list(&v()?, |x| x.parse().ok().filter(|&n| n > 0))?,
            "--invocations" => o.invocations = num(v()?)?.max(1),
            "--rounds" => o.rounds = num(v()?)?.clamp(1, 100),
            "--scenarios" => o.scenarios = list(&v()?, Scenario::parse)?,
            "--workloads" => {
                o.workloads = list(&v()?, |x| match x.to_ascii_lowercase().as_str() {
                    "w1" => Some(Workload::W1),
                    "w2" => Some(Workload::W2),
                    _ => None,
                })?
            }
            "--w2-selects" => o.w2_selects = num(v()?)?.clamp(1, 100),
            "--rows" => o.rows = num(v()?)?.clamp(100, 10_000_000) as u32,
            "--pgbouncer-pool" => o.pgbouncer_pool = num(v()?)?.clamp(1, 200) as u32,
            "--micro-seconds" => {
                let s = v()?;
                o.micro_seconds = s
                    .parse::<f64>()
                    .ok()
                    .filter(|x| (0.05..=60.0).contains(x))
                    .ok_or(format!("bad seconds {s}"))?
            }
            "--micro-concurrency" => {
                o.micro_concurrency =
                    list(&v()?, |x| x.parse().ok().filter(|&n| (1..=16).contains(&n)))?
            }
            "--no-micro" => o.micro = false,
            "--no-lambda" => o.lambda = false,
            "--no-kill" => o.kill = false,
            "--no-fleet" => o.fleet = false,
            "--extension" => o.extension = Some(PathBuf::from(v()?)),
            "--out" => {
                o.out = PathBuf::from(v()?);
                o.out_given = true;
            }
            "--name" => o.name = v()?,
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    if o.levels.iter().any(|&l| l > 64) {
        return Err("at most 64 environments at once on this machine".into());
    }
    Ok(o)
}

fn main() {
    // The floor's echo process: this binary, started again by itself.
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--pingpong-echo") {
        if let Some(path) = args.next() {
            micro::echo(std::path::Path::new(&path));
        }
        return;
    }
    if let (Some("--render"), Some(path)) =
        (std::env::args().nth(1).as_deref(), std::env::args().nth(2))
    {
        match report::render_file(std::path::Path::new(&path)) {
            Ok(written) => written
                .iter()
                .for_each(|p| eprintln!("wrote {}", p.display())),
            Err(e) => {
                eprintln!("warmpool-bench: {e}");
                std::process::exit(2);
            }
        }
        return;
    }
    // The parts that run on their own: options parsed, run on a runtime of their own.
    type Part = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;
    let part = std::env::args().nth(1);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let alone: Option<Result<Part, String>> = match part.as_deref() {
        Some("--hop") => Some(hop::parse(&args).map(|o| Box::pin(hop::run_alone(o)) as _)),
        Some("--pg") => Some(pg::parse(&args).map(|o| Box::pin(pg::run_alone(o)) as _)),
        Some("--fleet") => Some(fleet::parse(&args).map(|o| Box::pin(fleet::run_alone(o)) as _)),
        _ => None,
    };
    if let Some(run) = alone {
        let run = run.unwrap_or_else(|e| {
            eprintln!("warmpool-bench: {e}");
            std::process::exit(2);
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(run);
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("--memory") {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let opts = memory::parse(&args).unwrap_or_else(|e| {
            eprintln!("warmpool-bench: {e}");
            std::process::exit(2);
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(memory::run_alone(opts));
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("--warm-state") {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let opts = warm_state::parse(&args).unwrap_or_else(|e| {
            eprintln!("warmpool-bench: {e}");
            std::process::exit(2);
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(warm_state::run(opts));
        return;
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("warmpool-bench: {e}");
            std::process::exit(2);
        }
    };
    let load = report::loadavg();
    if load
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        .is_some_and(|l| l > 1.5)
    {
        eprintln!("warning: load average {load}: other work is running; numbers will be noisier");
    }
    if !setup::is_release() {
        eprintln!("warning: a debug build; run with --release for meaningful numbers");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let failures = runtime.block_on(run(opts));
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("warmpool-bench: {f}");
        }
        std::process::exit(1);
    }
}

/// Progress on stderr, with the seconds since the start.
macro_rules! progress {
    ($started:expr, $($arg:tt)*) => {
        eprintln!("[{:6.1} s] {}", $started.elapsed().as_secs_f64(), format!($($arg)*))
    };
}

/// Runs the benchmark; returns what failed (only a smoke run counts failures).
async fn run(mut opts: Opts) -> Vec<String> {
    let started = Instant::now();
    // A smoke run writes into a directory removed at the end, so it leaves nothing behind.
    let smoke_dir = (opts.smoke && !opts.out_given).then(|| {
        tempfile::Builder::new()
            .prefix("warmpool-bench-smoke-")
            .tempdir()
            .expect("tempdir")
    });
    if let Some(d) = &smoke_dir {
        opts.out = d.path().to_owned();
    }
    progress!(started, "building the extension and the bench function ...");
    let extension = match &opts.extension {
        // Absolute: the layer directory links to it, and a relative link would dangle.
        Some(path) => match path.canonicalize() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("warmpool-bench: --extension {}: {e}", path.display());
                std::process::exit(2);
            }
        },
        None => warmpool_tests::ext::binary().to_path_buf(),
    };
    let function = setup::build_function();

    progress!(
        started,
        "starting PostgreSQL (TLS, scram-sha-256) and seeding {} rows ...",
        opts.rows
    );
    let pg = setup::start_postgres();
    let roles: Vec<String> = Scenario::ALL.iter().map(|&s| lambda::role(s)).collect();
    setup::seed(&pg, opts.rows, &roles);
    if opts.fleet || opts.smoke {
        fleet::create_roles(&pg);
    }

    let mut results = report::Results::new(&opts, &pg, &extension);

    if opts.micro {
        progress!(started, "micro-benchmark of the socket hop ...");
        results.micro = Some(
            micro::run(
                &pg,
                &extension,
                Duration::from_secs_f64(opts.micro_seconds),
                &opts.micro_concurrency,
                if opts.smoke {
                    500
                } else if opts.quick {
                    5_000
                } else {
                    20_000
                },
            )
            .await,
        );
        progress!(
            started,
            "the delay relay's own cost (delay 0) and the delays it adds ..."
        );
        results.relay = Some(
            micro::relay_cost(
                &pg,
                Duration::from_secs_f64(opts.micro_seconds),
                &opts.rtts_ms,
            )
            .await,
        );
    }

    let need_bouncer = (opts.lambda || opts.kill) && opts.scenarios.contains(&Scenario::Pgbouncer);
    let bouncer = if need_bouncer {
        progress!(
            started,
            "PgBouncer: building or finding a current release ..."
        );
        match pgbouncer::find_or_build() {
            Ok(b) => {
                if let Some(l) = &b.limitation {
                    eprintln!("  warning: {l}");
                }
                results.pgbouncer = Some(report::BouncerInfo {
                    version: b.version.clone(),
                    limitation: b.limitation.clone(),
                    pool_size: opts.pgbouncer_pool,
                });
                Some(b)
            }
            Err(e) => {
                eprintln!("  {e}: the pgbouncer scenario is skipped");
                results.notes.push(format!("PgBouncer unavailable: {e}"));
                None
            }
        }
    } else {
        None
    };

    let layer = tempfile::Builder::new()
        .prefix("warmpool-bench-layer-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::os::unix::fs::symlink(&extension, layer.path().join("warmpool"))
        .expect("symlink the extension");
    let sockets = tempfile::Builder::new()
        .prefix("warmpool-bench-sock-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    for &rtt_ms in &opts.rtts_ms {
        let rtt = Duration::from_secs_f64(rtt_ms / 1e3);
        // Every client of PostgreSQL (the extensions' pools, the functions' own connections,
        // PgBouncer) reaches it through the relay; the functions' Unix sockets to their
        // extensions are not delayed, as on Lambda.
        let relay = (!rtt.is_zero()).then(|| {
            relay::Relay::start(std::net::SocketAddr::from(([127, 0, 0, 1], pg.port())), rtt)
                .expect("start the delay relay")
        });
        let network = match &relay {
            Some(_) => format!("simulated network, RTT {rtt_ms} ms"),
            None => "loopback".to_owned(),
        };
        let ctx = lambda::Ctx {
            pg: &pg,
            pg_port: relay.as_ref().map_or(pg.port(), relay::Relay::port),
            rtt,
            function: function.clone(),
            layer: layer.path().to_owned(),
            sockets: sockets.path().to_owned(),
            pgbouncer: bouncer.clone(),
            pgbouncer_pool: opts.pgbouncer_pool,
            rows: opts.rows,
            w2_selects: opts.w2_selects,
            warmup: if opts.smoke {
                1
            } else if opts.quick {
                2
            } else {
                6
            },
            phase_limit: Duration::from_secs(if opts.quick { 20 } else { 90 }),
            timeout: Duration::from_secs(10),
        };

        if opts.lambda {
            for &level in &opts.levels {
                let per_env = opts.invocations.div_ceil(level).max(opts.rounds);
                progress!(
                    started,
                    "{network}: {level} environment(s) per scenario, {per_env} invocations each \
                     per workload, interleaved in {} rounds ...",
                    opts.rounds
                );
                let runs = lambda::run_level(
                    &ctx,
                    &opts.scenarios,
                    level,
                    per_env,
                    opts.rounds,
                    &opts.workloads,
                )
                .await;
                for r in runs {
                    eprintln!(" {}", r.scenario.name());
                    report::print_run(&r);
                    results.runs.push(r);
                }
            }
        }
        if opts.kill {
            for &scenario in &opts.scenarios {
                progress!(
                    started,
                    "{network}: server kill during a freeze: {} ...",
                    scenario.name()
                );
                let k = lambda::after_kill(&ctx, scenario, Duration::from_millis(1500)).await;
                results.after_kill.push(k);
            }
        }
        drop(ctx);
        drop(relay);
    }

    if opts.fleet {
        progress!(
            started,
            "the fleet connection budget: 40 environments in waves of 8, three configurations ..."
        );
        let f = fleet::FleetOpts::in_full_run(
            &extension,
            &opts.out,
            !opts.out_given && opts.name == "latest",
            &opts.args,
        );
        let r = fleet::run(&pg, &extension, &function, &f).await;
        for path in fleet::write(&r, &f) {
            eprintln!("wrote {}", path.display());
        }
    }
    let mut fleet_failures = Vec::new();
    if opts.smoke {
        progress!(
            started,
            "the fleet connection budget (4 environments in waves of 2, a budget of 2) ..."
        );
        let f = fleet::FleetOpts::smoke(&extension, &opts.out);
        let r = fleet::run(&pg, &extension, &function, &f).await;
        fleet::write(&r, &f);
        fleet_failures = fleet::failures(&r);
    }

    // The memory part runs on its own (`--memory`); a smoke run checks that it runs.
    let mut memory_failures = Vec::new();
    if opts.smoke {
        progress!(
            started,
            "memory after a burst (2 rounds of 20 sessions) ..."
        );
        let m = memory::MemOpts::smoke(&extension, &opts.out);
        let r = memory::run(&pg, &extension, &m).await;
        memory::write(&r, &m);
        memory_failures = memory::failures(&r);
    }

    results.elapsed_s = started.elapsed().as_secs_f64();
    results.machine.load_end = report::loadavg();
    let written = report::write(&results, &opts);
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    let failures = if opts.smoke {
        let mut f = smoke_failures(&results);
        f.extend(memory_failures);
        f.extend(fleet_failures);
        f
    } else {
        Vec::new()
    };
    progress!(started, "done");
    failures
}

/// What makes a smoke run fail: a part that did not run or an invocation that failed. Times are
/// never judged.
fn smoke_failures(results: &report::Results) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(m) = &results.micro {
        if m.comparisons.is_empty() {
            failures.push("the micro-benchmark measured nothing".into());
        }
    }
    if let Some(relay) = &results.relay {
        for m in &relay.measured {
            if m.relayed.latency.n == 0 || m.relayed.latency.errors > 0 {
                failures.push(format!(
                    "through the relay at {} ms, {}: {} measured, {} errors",
                    m.rtt_ms, m.operation, m.relayed.latency.n, m.relayed.latency.errors
                ));
            }
        }
    }
    for r in &results.runs {
        if let Some(why) = &r.skipped {
            failures.push(format!("{} skipped: {why}", r.scenario.name()));
        }
        for w in &r.workloads {
            if w.db.errors > 0 || w.db.n == 0 {
                failures.push(format!(
                    "{} at RTT {} ms, {}: {} measured, {} errors ({})",
                    r.scenario.name(),
                    r.rtt_ms,
                    w.workload.name(),
                    w.db.n,
                    w.db.errors,
                    r.error_samples.join("; ")
                ));
            }
        }
    }
    for k in &results.after_kill {
        let recovers = matches!(
            k.scenario,
            Scenario::Warmpool | Scenario::WarmpoolBatch | Scenario::Connect
        );
        if k.skipped.is_none() && recovers && !(k.first_ok && k.second_ok) {
            failures.push(format!(
                "{}: failed after the server killed its connection",
                k.scenario.name()
            ));
        }
    }
    failures
}
