//! Memory after a burst: the extension's resident set at rest, at the peak of a burst of
//! concurrent sessions, and after the burst, against the goal of being back within twice the
//! resting size 5 s after the last session closed.
//!
//! ```text
//! cargo run --release -p warmpool-bench -- --memory [--quick] [--baseline PATH] [--out DIR]
//! ```
//!
//! Each round opens its sessions at once; each session (a warmpool client of its own) runs one
//! statement, waits until every session of the round has, and closes. The resident set
//! (`VmRSS`, /proc) is read while all of a round's sessions are open, and every 250 ms after
//! the last round. The function's own client keeps its session throughout, as a long-lived
//! one does. With `--baseline`, another build of the extension (an earlier commit's) is measured
//! the same way first, in the same run. Results: `memory.{json,md}`, and for a full run into the
//! repository, the memory section of bench/RESULTS.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Barrier;
use warmpool_tests::PgServer;

use crate::micro::Ext;

/// The goal: 5 s after a burst, the resident set is at most this many times the resting one.
const GOAL_RATIO: f64 = 2.0;
/// How often the resident set is read after the burst.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Options of the memory part.
pub struct MemOpts {
    rounds: usize,
    sessions: usize,
    after: Duration,
    extension: Option<PathBuf>,
    baseline: Option<PathBuf>,
    out: PathBuf,
    /// Writes the section of bench/RESULTS.md (a full run into bench/results).
    full: bool,
    args: Vec<String>,
}

const USAGE: &str = "\
usage: warmpool-bench --memory [--quick] [--rounds N] [--sessions N] [--after S]
                      [--extension PATH] [--baseline PATH] [--out DIR]

  --rounds N         rounds of the burst (default 6; quick 3)
  --sessions N       sessions open at once in each round (default 1000; quick 300; at most 1000,
                     under the extension's WARMPOOL_MAX_SESSIONS of 1024)
  --after S          seconds after the burst when the goal is judged (default 5)
  --extension PATH   the extension binary to measure (default: build it)
  --baseline PATH    another extension binary to measure first, the same way (an earlier build)
  --out DIR          results directory (default bench/results; quick target/warmpool-bench);
                     writes memory.{json,md}";

impl MemOpts {
    /// What a smoke run measures: a few sessions, to check the part runs.
    pub fn smoke(extension: &Path, out: &Path) -> MemOpts {
        MemOpts {
            rounds: 2,
            sessions: 20,
            after: Duration::from_secs(1),
            extension: Some(extension.to_owned()),
            baseline: None,
            out: out.to_owned(),
            full: false,
            args: vec!["--smoke".into()],
        }
    }
}

/// Parses the arguments after `--memory`.
pub fn parse(args: &[String]) -> Result<MemOpts, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = MemOpts {
        rounds: if quick { 3 } else { 6 },
        sessions: if quick { 300 } else { 1000 },
        after: Duration::from_secs(5),
        extension: None,
        baseline: None,
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
            "--memory" | "--quick" => {}
            "--rounds" => o.rounds = num(v()?)?.clamp(1, 100),
            "--sessions" => o.sessions = num(v()?)?.clamp(1, 1000),
            "--after" => o.after = Duration::from_secs(num(v()?)?.clamp(1, 600) as u64),
            "--extension" => o.extension = Some(PathBuf::from(v()?)),
            "--baseline" => o.baseline = Some(PathBuf::from(v()?)),
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

/// One extension build, measured.
#[derive(Serialize)]
pub struct Measured {
    /// "baseline" or "this build".
    pub build: String,
    pub binary: String,
    pub rest_kib: u64,
    /// The resident set with each round's sessions all open.
    pub rounds_kib: Vec<u64>,
    pub peak_kib: u64,
    /// The resident set `after_s` after the last round's sessions closed.
    pub after_kib: u64,
    pub after_s: f64,
    /// `after_kib` over `rest_kib`.
    pub after_ratio: f64,
    pub goal_met: bool,
    /// Seconds after the burst when the resident set was first within the goal, if it was.
    pub within_goal_after_s: Option<f64>,
    /// Every reading after the burst: seconds since the last session closed, KiB.
    pub samples: Vec<(f64, u64)>,
    /// Each time the extension gave memory back (its log), with how long that took.
    pub trims: Vec<Trimmed>,
    /// Sessions that failed (connect or statement): none, in a sound run.
    pub failed_sessions: usize,
    pub failure_samples: Vec<String>,
}

/// One time the extension gave freed memory back, from its log line.
#[derive(Serialize)]
pub struct Trimmed {
    pub took_us: Option<u64>,
    pub before_kib: Option<u64>,
    pub after_kib: Option<u64>,
}

/// A number field of a JSON log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("fields")
        .and_then(|f| f.get(name))
        .or_else(|| v.get(name))?
        .as_u64()
}

#[derive(Serialize)]
pub struct Results {
    pub command: String,
    pub profile: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub rounds: usize,
    pub sessions: usize,
    pub goal: String,
    pub measured: Vec<Measured>,
}

/// Runs the `--memory` part on its own: starts PostgreSQL, measures, writes the results.
pub async fn run_alone(opts: MemOpts) {
    eprintln!("memory: starting PostgreSQL ...");
    let pg = PgServer::start();
    let extension = match &opts.extension {
        Some(p) => p.canonicalize().unwrap_or_else(|e| {
            eprintln!("warmpool-bench: --extension {}: {e}", p.display());
            std::process::exit(2);
        }),
        None => warmpool_tests::ext::binary().to_path_buf(),
    };
    let results = run(&pg, &extension, &opts).await;
    for path in write(&results, &opts) {
        eprintln!("wrote {}", path.display());
    }
}

/// Measures the baseline (if any) and `extension`, one after the other, on `pg`.
pub async fn run(pg: &PgServer, extension: &Path, opts: &MemOpts) -> Results {
    let loadavg_start = crate::report::loadavg();
    let mut measured = Vec::new();
    let builds = opts
        .baseline
        .iter()
        .map(|b| ("baseline", b.as_path()))
        .chain([("this build", extension)]);
    for (build, binary) in builds {
        eprintln!(
            "memory: {build} ({}): {} rounds of {} sessions ...",
            binary.display(),
            opts.rounds,
            opts.sessions
        );
        let m = measure(pg, build, binary, opts).await;
        eprintln!(
            "  rest {} KiB, peak {} KiB, {} KiB {:.0} s after ({:.2}× rest): goal {}",
            m.rest_kib,
            m.peak_kib,
            m.after_kib,
            m.after_s,
            m.after_ratio,
            if m.goal_met { "met" } else { "missed" }
        );
        measured.push(m);
    }
    Results {
        command: format!("warmpool-bench {}", opts.args.join(" ")),
        profile: if crate::setup::is_release() {
            "release"
        } else {
            "debug"
        }
        .into(),
        loadavg_start,
        loadavg_end: crate::report::loadavg(),
        rounds: opts.rounds,
        sessions: opts.sessions,
        goal: format!(
            "{:.0} s after the burst, the resident set within {GOAL_RATIO}× the resting one",
            opts.after.as_secs_f64()
        ),
        measured,
    }
}

async fn measure(pg: &PgServer, build: &str, binary: &Path, opts: &MemOpts) -> Measured {
    let ext = Ext::start(
        pg,
        binary,
        &[
            ("WARMPOOL_MAX_SESSIONS", "1024"),
            // The line saying when memory was given back and how long that took.
            ("WARMPOOL_LOG", "info,warmpool_extension::memory=debug"),
            ("WARMPOOL_LOG_FORMAT", "json"),
            // A round's statements queue for the pool's four connections.
            ("WARMPOOL_WAIT_TIMEOUT_MS", "60000"),
        ],
    );
    ext.wait_for("pool warmed", Duration::from_secs(30))
        .expect("the extension opened its warm connection");
    let function = warmpool::Client::connect_to(&ext.socket)
        .await
        .expect("connect to the extension");
    function
        .query_one("SELECT 1", &[])
        .await
        .expect("first statement");
    let pid = ext.pid();
    let rest_kib = settled_rss(pid).await;

    let mut rounds_kib = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..opts.rounds {
        let (kib, failed) = round(&ext.socket, opts.sessions, pid).await;
        rounds_kib.push(kib);
        failures.extend(failed);
    }
    let closed = Instant::now();
    let mut samples = Vec::new();
    loop {
        let t = closed.elapsed();
        samples.push((t.as_secs_f64(), rss_kib(pid)));
        if t >= opts.after {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY.min(opts.after - t)).await;
    }
    // The function's session still works after the burst.
    if let Err(e) = function.query_one("SELECT 2", &[]).await {
        failures.push(format!("the function's session after the burst: {e}"));
    }
    let (after_s, after_kib) = *samples.last().expect("a sample");
    let trims = ext
        .drain()
        .iter()
        .filter(|l| l.contains("gave freed memory back"))
        .map(|l| Trimmed {
            took_us: field(l, "took_us"),
            before_kib: field(l, "resident_kib_before"),
            after_kib: field(l, "resident_kib_after"),
        })
        .collect();
    let bound = (rest_kib as f64 * GOAL_RATIO) as u64;
    Measured {
        build: build.into(),
        binary: binary.display().to_string(),
        rest_kib,
        peak_kib: rounds_kib.iter().copied().max().unwrap_or(rest_kib),
        rounds_kib,
        after_kib,
        after_s,
        after_ratio: after_kib as f64 / rest_kib.max(1) as f64,
        goal_met: after_kib <= bound,
        within_goal_after_s: samples.iter().find(|s| s.1 <= bound).map(|s| s.0),
        samples,
        trims,
        failed_sessions: failures.len(),
        failure_samples: failures.into_iter().take(5).collect(),
    }
}

/// One round: `n` sessions open at once, each runs a statement; returns the resident set with
/// all of them open, and what failed.
async fn round(socket: &Path, n: usize, pid: u32) -> (u64, Vec<String>) {
    let all_done = Arc::new(Barrier::new(n + 1));
    let may_close = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let socket = socket.to_owned();
        let (all_done, may_close) = (all_done.clone(), may_close.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = async {
                let client = warmpool::Client::connect_to(&socket).await?;
                let v = i as i32;
                let row = client.query_one("SELECT $1::int4 + 1", &[&v]).await?;
                Ok::<_, warmpool::Error>((client, row.get::<_, i32>(0) == v + 1))
            }
            .await;
            all_done.wait().await;
            may_close.wait().await;
            match outcome {
                Ok((_client, true)) => Ok(()),
                Ok((_, false)) => Err("a wrong answer".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        }));
    }
    all_done.wait().await;
    let kib = rss_kib(pid);
    may_close.wait().await;
    let mut failed = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(format!("a session's task failed: {e}")),
        }
    }
    (kib, failed)
}

/// The resident set once it stops moving after start-up (two readings 200 ms apart within 64
/// KiB, or after 5 s).
async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rss_kib(pid);
        if now.abs_diff(last) < 64 {
            return now;
        }
        last = now;
    }
    last
}

/// A process's resident set (`VmRSS`) in KiB, from /proc; 0 once it is gone.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// What makes a smoke run fail: a session that failed. Memory is not judged there.
pub fn failures(r: &Results) -> Vec<String> {
    r.measured
        .iter()
        .filter(|m| m.failed_sessions > 0)
        .map(|m| {
            format!(
                "memory, {}: {} sessions failed ({})",
                m.build,
                m.failed_sessions,
                m.failure_samples.join("; ")
            )
        })
        .collect()
}

const BEGIN: &str = "<!-- memory:start -->";
const END: &str = "<!-- memory:end -->";

/// Writes `memory.json` and `memory.md` to the results directory, and for a full run into the
/// repository the section of bench/RESULTS.md between its memory markers.
pub fn write(r: &Results, opts: &MemOpts) -> Vec<PathBuf> {
    let mut written = Vec::new();
    let _ = std::fs::create_dir_all(&opts.out);
    let json = opts.out.join("memory.json");
    if std::fs::write(&json, serde_json::to_string_pretty(r).expect("json") + "\n").is_ok() {
        written.push(json);
    }
    let md = opts.out.join("memory.md");
    if std::fs::write(&md, markdown(r, true)).is_ok() {
        written.push(md);
    }
    if opts.full {
        let results_md = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
        let text = std::fs::read_to_string(&results_md).unwrap_or_default();
        let body = markdown(r, false);
        let text = crate::report::replace_between(&text, BEGIN, END, &body);
        if std::fs::write(&results_md, text).is_ok() {
            written.push(results_md);
        }
    }
    written
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn markdown(r: &Results, title: bool) -> String {
    let mut s = String::new();
    // Inside bench/RESULTS.md the section's own heading stands above the markers.
    if title {
        let _ = writeln!(s, "# Memory after a burst of sessions\n");
    }
    let _ = writeln!(
        s,
        "`{}` ({} build): {} rounds of {} concurrent sessions, each a warmpool client of its \
         own running one statement, all of a round's sessions open at once; the function's own \
         client keeps its session throughout. Goal: {}. Load average {} at the start, {} at the \
         end. Method: [README.md](README.md#memory-after-a-burst); data: \
         [results/memory.json](results/memory.json).\n",
        r.command, r.profile, r.rounds, r.sessions, r.goal, r.loadavg_start, r.loadavg_end
    );
    let _ = writeln!(
        s,
        "| Build | At rest | Burst peak | After the burst | After / rest | Within {GOAL_RATIO}× after | Goal |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for m in &r.measured {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} ({:.0} s) | {:.2}× | {} | {} |",
            m.build,
            mib(m.rest_kib),
            mib(m.peak_kib),
            mib(m.after_kib),
            m.after_s,
            m.after_ratio,
            m.within_goal_after_s
                .map_or("never".into(), |t| format!("{t:.2} s")),
            if m.goal_met { "met" } else { "**missed**" }
        );
    }
    for m in r.measured.iter().filter(|m| !m.trims.is_empty()) {
        let took: Vec<String> = m
            .trims
            .iter()
            .map(|t| {
                format!(
                    "{:.1} ms ({} → {})",
                    t.took_us.unwrap_or(0) as f64 / 1000.0,
                    mib(t.before_kib.unwrap_or(0)),
                    mib(t.after_kib.unwrap_or(0))
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "\n{}: the extension gave freed memory back {} time(s) (`malloc_trim`, its runtime \
             thread busy meanwhile): {}.",
            m.build,
            m.trims.len(),
            took.join(", ")
        );
    }
    for m in &r.measured {
        if m.failed_sessions > 0 {
            let _ = writeln!(
                s,
                "\n{}: {} sessions failed: {}",
                m.build,
                m.failed_sessions,
                m.failure_samples.join("; ")
            );
        }
    }
    s
}
