//! The PostgreSQL-protocol endpoint: what the session-mode relay adds to a statement, seen by
//! PostgreSQL's own drivers.
//!
//! ```text
//! cargo run --release -p warmpool-bench -- --pg [--quick] [--extension PATH] [--out DIR]
//! ```
//!
//! 1. `pgbench -S -M prepared` (select-only on `pgbench -i` tables) through the endpoint against
//!    pgbench straight to PostgreSQL over TLS on loopback, at 1 and 8 clients, in rounds of
//!    rotating order. The added time per statement is the endpoint's `latency average` minus the
//!    direct one; the goal is at most 1.5× the floor: one raw Unix-socket ping-pong between two
//!    processes, measured in each round. Two references run in the same rounds: the floor at
//!    the level's concurrency (as many ping-pong pairs at once as clients), and a relay that
//!    only copies bytes (`copier.rs`) between pgbench and PostgreSQL's own socket, against
//!    pgbench straight to that socket: what any process in the path adds at that load. The CPU
//!    time the extension and the copier spend per statement is read from the kernel's
//!    scheduler statistics.
//! 2. W1 and W2 from Python (psycopg) and Node.js (node-postgres), `pg_langs.rs`: a module-level
//!    connection to the endpoint against connecting straight to PostgreSQL in every invocation
//!    (TLS + SCRAM each time) and against a module-level direct connection; the goal is the
//!    endpoint at least 20× faster than connecting per invocation in W1, at p50.
//!
//! Results: `pg.{json,md}`, and for a full run into the repository, the pg section of
//! bench/RESULTS.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use warmpool_tests::PgServer;

use crate::copier::{process_cpu, Copier};
use crate::micro::{BlockingFloor, Ext, Floor};
use crate::pg_langs::{Lang, LangOpts, Langs};
use crate::stats::Summary;

/// The relay's goal: a statement through the endpoint costs at most this many floors more than
/// the same statement straight to PostgreSQL.
const GOAL_FLOORS: f64 = 1.5;
const CLIENTS: [usize; 2] = [1, 8];
/// Rows of the table W1 reads.
const W1_ROWS: u32 = 10_000;
/// Ping-pongs of the floor per round.
const FLOOR_ITERS: usize = 2_000;
/// How long the pairs of the floor at a concurrency run at once, per round and level.
const CONCURRENT_FLOOR_WINDOW: Duration = Duration::from_millis(300);

/// Options of the pg part.
pub struct PgOpts {
    rounds: u32,
    seconds: u32,
    langs: LangOpts,
    extension: Option<PathBuf>,
    out: PathBuf,
    full: bool,
}

const USAGE: &str = "\
usage: warmpool-bench --pg [--quick] [--rounds N] [--seconds S] [--langs L,..|--no-langs]
                      [--lang-invocations N] [--extension PATH] [--out DIR]

  --rounds N           rounds, the targets in rotating order (default 10 of pgbench and 5
                       of the languages; quick 2)
  --seconds S          pgbench -T of each run, whole seconds (default 1)
  --langs L,..         languages timing W1 and W2: python, node (default both)
  --lang-invocations N invocations per scenario, workload and round (default 150; quick 30)
  --no-langs           pgbench only
  --extension PATH     the extension binary to measure (default: build it)
  --out DIR            results directory (default bench/results; quick target/warmpool-bench);
                       writes pg.{json,md}";

/// Parses the arguments after `--pg`.
pub fn parse(args: &[String]) -> Result<PgOpts, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = PgOpts {
        rounds: if quick { 2 } else { 10 },
        seconds: 1,
        langs: LangOpts {
            langs: Lang::ALL.to_vec(),
            invocations: if quick { 30 } else { 150 },
            rounds: if quick { 2 } else { 5 },
            rows: W1_ROWS,
        },
        extension: None,
        out: if quick {
            manifest.join("../target/warmpool-bench")
        } else {
            manifest.join("results")
        },
        full: !quick,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().cloned().ok_or(format!("{a} needs a value"));
        let num = |s: String, max: u32| {
            s.parse::<u32>()
                .map(|n| n.clamp(1, max))
                .map_err(|_| format!("{a}: not a number: {s}"))
        };
        match a.as_str() {
            "--pg" | "--quick" => {}
            "--rounds" => {
                o.rounds = num(v()?, 100)?;
                o.langs.rounds = o.rounds;
            }
            "--seconds" => o.seconds = num(v()?, 600)?,
            "--lang-invocations" => o.langs.invocations = num(v()?, 100_000)?,
            "--langs" => {
                o.langs.langs = v()?
                    .split(',')
                    .map(|s| Lang::parse(s.trim()).ok_or(format!("--langs: unknown {s:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--no-langs" => o.langs.langs.clear(),
            "--extension" => o.extension = Some(PathBuf::from(v()?)),
            "--out" => {
                o.out = PathBuf::from(v()?);
                o.full = false;
            }
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(o)
}

/// One pgbench run.
#[derive(Clone, Debug, Serialize)]
pub struct PgbenchRun {
    pub target: &'static str,
    pub clients: usize,
    pub round: u32,
    /// pgbench's `latency average`, µs.
    pub latency_avg_us: f64,
    /// pgbench's `tps` (without the initial connection time).
    pub tps: f64,
    pub transactions: u64,
    pub failed: u64,
    /// The CPU time of the relay in the path (the extension, or the copier) during the run, µs.
    pub relay_cpu_us: Option<f64>,
}

/// One target at one client count, over all rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The median of the rounds' `latency average`, µs.
    pub latency_avg_us: f64,
    /// The median of the rounds' tps.
    pub tps: f64,
    pub transactions: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Level {
    pub clients: usize,
    pub endpoint: Target,
    pub direct: Target,
    /// Endpoint minus direct latency average, µs per statement: the median over the rounds of
    /// the difference within each round.
    pub added_us: f64,
    /// `added_us` over the unloaded floor's mean (pgbench's latency average is a mean too).
    pub added_floors: f64,
    /// The floor at this level's concurrency: as many ping-pong pairs at once as clients, each
    /// pair's client on a thread of its own, µs per round trip.
    pub concurrent_floor: Summary,
    /// `added_us` over `concurrent_floor`'s mean; the goal is judged on this.
    pub added_concurrent_floors: f64,
    /// Endpoint tps over direct tps.
    pub tps_ratio: f64,
    /// Through the byte-copying relay and straight to PostgreSQL's Unix socket.
    pub copier: Target,
    pub unix: Target,
    /// Copier minus straight-to-the-socket latency average, µs per statement: the median over
    /// the rounds of the difference within each round.
    pub copier_added_us: f64,
    /// `added_us` over `copier_added_us`.
    pub added_copiers: f64,
    /// CPU time per statement of the extension through the endpoint runs, and of the copier
    /// through its runs, µs.
    pub endpoint_cpu_us: f64,
    pub copier_cpu_us: f64,
    /// Judged against the unloaded floor, as the goal is written.
    pub goal_met: bool,
}

#[derive(Serialize)]
pub struct Results {
    pub rounds: u32,
    pub seconds_per_run: u32,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub pgbench: String,
    /// The unloaded floor, one Unix-socket ping-pong between two processes, µs per round trip.
    pub floor: Summary,
    pub levels: Vec<Level>,
    pub runs: Vec<PgbenchRun>,
    /// W1 and W2 from the languages.
    pub langs: Option<Langs>,
}

/// Runs the part on a PostgreSQL of its own and writes its results.
pub async fn run_alone(opts: PgOpts) {
    warmpool_tests::prereq::pgbench();
    let drivers = crate::pg_langs::drivers(&opts.langs.langs);
    eprintln!("pg: starting PostgreSQL ...");
    let pg = PgServer::start();
    crate::setup::seed(&pg, W1_ROWS, &[]);
    let init = pgbench_cmd(&direct_env(&pg))
        .args(["-i", "-q", "-s", "1"])
        .output()
        .expect("run pgbench -i");
    assert!(
        init.status.success(),
        "pgbench -i failed:\n{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let extension = match &opts.extension {
        Some(p) => p.clone(),
        None => warmpool_tests::ext::binary().to_path_buf(),
    };
    let results = run(&pg, &extension, &drivers, &opts).await;
    for path in write(&results, &opts) {
        eprintln!("wrote {}", path.display());
    }
}

/// libpq's variables for pgbench straight to PostgreSQL: TLS on loopback, verify-full, SCRAM.
pub(crate) fn direct_env(pg: &PgServer) -> Vec<(String, String)> {
    pg.env()
}

/// libpq's variables for pgbench straight to PostgreSQL's Unix socket in `dir` (its own, or the
/// copier's): no TLS, as a local socket needs none.
fn unix_env(pg: &PgServer, dir: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = pg
        .env()
        .into_iter()
        .filter(|(k, _)| k != "PGHOST" && k != "PGSSLMODE")
        .collect();
    env.push(("PGHOST".to_owned(), dir.display().to_string()));
    env.push(("PGSSLMODE".to_owned(), "disable".to_owned()));
    env
}

/// libpq's variables for the endpoint: its socket directory, a user name the database does not
/// know (the extension logs in with its own credentials) and no password.
fn endpoint_env(pg: &PgServer, dir: &Path) -> Vec<(String, String)> {
    [
        ("PGHOST", dir.display().to_string()),
        ("PGPORT", "5432".to_owned()),
        ("PGUSER", "any_function".to_owned()),
        ("PGDATABASE", pg.dbname().to_owned()),
        ("PGSSLMODE", "disable".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A command with libpq's variables from `env` only, none from this process.
pub(crate) fn with_env(program: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    cmd
}

fn pgbench_cmd(env: &[(String, String)]) -> Command {
    with_env(Path::new("pgbench"), env)
}

/// One `pgbench -n -S -M prepared` run of `seconds` at `clients` clients (as many threads).
fn pgbench(
    env: &[(String, String)],
    clients: usize,
    seconds: u32,
) -> Result<(f64, f64, u64, u64), String> {
    let c = clients.to_string();
    let out = pgbench_cmd(env)
        .args(["-n", "-S", "-M", "prepared", "-c", &c, "-j", &c, "-T"])
        .arg(seconds.to_string())
        .output()
        .map_err(|e| format!("run pgbench: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_pgbench(&stdout).ok_or_else(|| format!("unexpected pgbench output:\n{stdout}"))
}

/// pgbench's latency average (µs), tps, transactions processed and failed.
fn parse_pgbench(out: &str) -> Option<(f64, f64, u64, u64)> {
    let after = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
    };
    let latency_ms: f64 = after("latency average = ")?.parse().ok()?;
    let tps: f64 = after("tps = ")?.parse().ok()?;
    let processed: u64 = after("number of transactions actually processed: ")?
        .split('/')
        .next()?
        .parse()
        .ok()?;
    let failed: u64 =
        after("number of failed transactions: ").map_or(Some(0), |s| s.parse().ok())?;
    Some((latency_ms * 1000.0, tps, processed, failed))
}

/// Measures both parts with `extension` serving the endpoint.
pub async fn run(
    pg: &PgServer,
    extension: &Path,
    drivers: &crate::pg_langs::Drivers,
    opts: &PgOpts,
) -> Results {
    let loadavg_start = crate::report::loadavg();
    let version = Command::new("pgbench")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let max = CLIENTS.iter().max().copied().unwrap_or(1).to_string();
    let ext = Ext::start(
        pg,
        extension,
        &[("WARMPOOL_MAX_SIZE", &max), ("WARMPOOL_WARM_SIZE", &max)],
    );
    ext.wait_for("pool warmed", Duration::from_secs(30))
        .expect("the extension opened its warm connections");
    let dir = ext.socket.parent().expect("socket directory").to_owned();
    let copier = Copier::start(
        pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port())),
        pg.port(),
    );
    let targets = [
        ("endpoint", endpoint_env(pg, &dir)),
        ("direct", direct_env(pg)),
        ("copier", unix_env(pg, copier.dir())),
        ("unix", unix_env(pg, &pg.socket_dir())),
    ];

    let mut floor_peer = Floor::start().await;
    let mut floor_samples = Vec::new();
    let mut floor_errors = 0;
    // The pairs of each level's floor, started once before the loads, as the unloaded one is.
    let mut level_pairs: Vec<Vec<BlockingFloor>> = Vec::new();
    for &clients in &CLIENTS {
        let mut pairs = Vec::new();
        for _ in 0..clients {
            pairs.push(Floor::start().await.into_blocking());
        }
        level_pairs.push(pairs);
    }
    let mut level_samples: Vec<(Vec<f64>, usize)> = vec![(Vec::new(), 0); CLIENTS.len()];
    let mut runs = Vec::new();
    for round in 0..opts.rounds {
        eprintln!("pg: pgbench round {} of {}", round + 1, opts.rounds);
        let (peer, (samples, errors)) = floor_peer.round_on_worker(FLOOR_ITERS).await;
        floor_peer = peer;
        floor_samples.extend(samples);
        floor_errors += errors;
        for (level, &clients) in CLIENTS.iter().enumerate() {
            let mut pairs = std::mem::take(&mut level_pairs[level]);
            let (pairs, (samples, errors)) = tokio::task::spawn_blocking(move || {
                let out = crate::micro::concurrent_round(&mut pairs, CONCURRENT_FLOOR_WINDOW);
                (pairs, out)
            })
            .await
            .expect("floor task");
            level_pairs[level] = pairs;
            level_samples[level].0.extend(samples);
            level_samples[level].1 += errors;
            // The targets take turns in an order that rotates each round, so none always
            // follows another.
            for k in 0..targets.len() {
                let (target, env) = &targets[(round as usize + k) % targets.len()];
                let env = env.clone();
                let seconds = opts.seconds;
                let relay_cpu = || match *target {
                    "endpoint" => Some(process_cpu(ext.pid())),
                    "copier" => Some(copier.cpu()),
                    _ => None,
                };
                let before = relay_cpu();
                let (latency_avg_us, tps, transactions, failed) =
                    tokio::task::spawn_blocking(move || pgbench(&env, clients, seconds))
                        .await
                        .expect("pgbench task")
                        .unwrap_or_else(|e| panic!("{target}, {clients} clients: {e}"));
                let relay_cpu_us = before
                    .zip(relay_cpu())
                    .map(|(b, a)| a.saturating_sub(b).as_secs_f64() * 1e6);
                runs.push(PgbenchRun {
                    target,
                    clients,
                    round,
                    latency_avg_us,
                    tps,
                    transactions,
                    failed,
                    relay_cpu_us,
                });
            }
        }
    }
    copier.stop();
    assert!(
        !floor_samples.is_empty(),
        "the floor's echo process stopped answering ({floor_errors} errors)"
    );
    let floor = Summary::of(&floor_samples, floor_errors);
    floor_peer.stop().await;
    for pairs in level_pairs {
        tokio::task::spawn_blocking(move || pairs.into_iter().for_each(BlockingFloor::stop))
            .await
            .expect("floor task");
    }

    let levels = CLIENTS
        .iter()
        .zip(level_samples)
        .map(|(&clients, (samples, errors))| {
            assert!(
                !samples.is_empty(),
                "the {clients}-pair floor's echo processes stopped answering ({errors} errors)"
            );
            let concurrent_floor = Summary::of(&samples, errors);
            let of = |target: &str| -> Vec<&PgbenchRun> {
                runs.iter()
                    .filter(|r| r.clients == clients && r.target == target)
                    .collect()
            };
            let agg = |rs: &[&PgbenchRun]| Target {
                latency_avg_us: median(rs.iter().map(|r| r.latency_avg_us).collect()),
                tps: median(rs.iter().map(|r| r.tps).collect()),
                transactions: rs.iter().map(|r| r.transactions).sum(),
                failed: rs.iter().map(|r| r.failed).sum(),
            };
            // Paired by round: the runs of a round saw the same machine, so bursts of other
            // work cancel out of their difference.
            let added = |through: &[&PgbenchRun], straight: &[&PgbenchRun]| {
                median(
                    through
                        .iter()
                        .zip(straight)
                        .map(|(t, s)| t.latency_avg_us - s.latency_avg_us)
                        .collect(),
                )
            };
            // All the relay's CPU time over all the statements it relayed, at this level.
            let cpu_per_statement = |rs: &[&PgbenchRun]| {
                let cpu: f64 = rs.iter().filter_map(|r| r.relay_cpu_us).sum();
                let statements: u64 = rs.iter().map(|r| r.transactions).sum();
                cpu / statements.max(1) as f64
            };
            let (e, d, c, u) = (of("endpoint"), of("direct"), of("copier"), of("unix"));
            let added_us = added(&e, &d);
            let copier_added_us = added(&c, &u);
            let (endpoint, direct) = (agg(&e), agg(&d));
            let added_floors = added_us / floor.mean_us;
            let added_concurrent_floors = added_us / concurrent_floor.mean_us;
            Level {
                clients,
                tps_ratio: crate::stats::ratio(endpoint.tps, direct.tps),
                goal_met: added_floors <= GOAL_FLOORS && endpoint.failed == 0,
                added_us,
                added_floors,
                concurrent_floor,
                added_concurrent_floors,
                endpoint_cpu_us: cpu_per_statement(&e),
                copier_cpu_us: cpu_per_statement(&c),
                added_copiers: added_us / copier_added_us,
                copier_added_us,
                copier: agg(&c),
                unix: agg(&u),
                endpoint,
                direct,
            }
        })
        .collect();

    let langs = if opts.langs.langs.is_empty() {
        None
    } else {
        Some(crate::pg_langs::run(pg, &dir, drivers, &opts.langs).await)
    };
    drop(ext);
    Results {
        rounds: opts.rounds,
        seconds_per_run: opts.seconds,
        loadavg_start,
        loadavg_end: crate::report::loadavg(),
        pgbench: version,
        floor,
        levels,
        runs,
        langs,
    }
}

/// The median, NaN for none.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The results as Markdown tables.
pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "`pgbench -S -M prepared` (scale 1), {} rounds of rotating order, `-T {}` each, medians \
         over the rounds (an added time: of the differences within a round); {}. Load average \
         {} at the start, {} at the end. Floor (one Unix-socket ping-pong between two processes \
         alone, same run): mean {:.1} µs, p50 {:.1} µs; the goal is judged against its mean. \
         For reference, in the same rounds: the floor at the level's concurrency (as many \
         ping-pong pairs at once as pgbench has clients), and a relay that only copies bytes, on \
         one thread, between pgbench and PostgreSQL's own Unix socket, against pgbench straight \
         to that socket: what any process in the path adds at that load. CPU per statement: the \
         extension's and the copier's own, from the kernel's scheduler statistics.\n",
        r.rounds,
        r.seconds_per_run,
        r.pgbench,
        r.loadavg_start,
        r.loadavg_end,
        r.floor.mean_us,
        r.floor.p50_us
    );
    let _ = writeln!(
        md,
        "| Clients | direct (TLS) latency avg | endpoint latency avg | added per statement | in \
         floors (mean) | in floors (p50) | floor at this concurrency (mean) | in floors at this \
         concurrency | byte copier's added | endpoint's added in copier's | CPU per statement: \
         extension / copier | direct tps | endpoint tps | tps ratio | goal (≤ {GOAL_FLOORS}× \
         the floor) |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for l in &r.levels {
        let _ = writeln!(
            md,
            "| {} | {:.1} µs | {:.1} µs | {:+.1} µs | {:.2}× | {:.2}× | {:.1} µs | {:.2}× | {:+.1} µs | {:.2}× | {:.1} µs / {:.1} µs | {:.0} | {:.0} | {:.2}× | {} |",
            l.clients,
            l.direct.latency_avg_us,
            l.endpoint.latency_avg_us,
            l.added_us,
            l.added_floors,
            l.added_us / r.floor.p50_us,
            l.concurrent_floor.mean_us,
            l.added_concurrent_floors,
            l.copier_added_us,
            l.added_copiers,
            l.endpoint_cpu_us,
            l.copier_cpu_us,
            l.direct.tps,
            l.endpoint.tps,
            l.tps_ratio,
            if l.goal_met { "met" } else { "missed" }
        );
    }
    let failed: u64 = r
        .levels
        .iter()
        .map(|l| l.endpoint.failed + l.direct.failed + l.copier.failed + l.unix.failed)
        .sum();
    let _ = writeln!(md, "\nFailed transactions: {failed}.");
    if let Some(l) = &r.langs {
        md.push('\n');
        crate::pg_langs::markdown(&mut md, l);
    }
    md
}

/// Writes `pg.json` and `pg.md`, and for a full run the section of bench/RESULTS.md.
pub fn write(r: &Results, opts: &PgOpts) -> Vec<PathBuf> {
    crate::report::write_part(&opts.out, "pg", r, &markdown(r), opts.full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_15_output() {
        let out = "transaction type: <builtin: select only>\n\
                   scaling factor: 1\n\
                   number of transactions actually processed: 20731\n\
                   number of failed transactions: 0 (0.000%)\n\
                   latency average = 0.096 ms\n\
                   initial connection time = 7.904 ms\n\
                   tps = 10368.162381 (without initial connection time)\n";
        let (lat, tps, n, failed) = parse_pgbench(out).expect("parsed");
        assert!((lat - 96.0).abs() < 1e-9);
        assert!((tps - 10368.162381).abs() < 1e-6);
        assert_eq!((n, failed), (20731, 0));
        assert!(parse_pgbench("pgbench: error: connection failed").is_none());
    }
}
