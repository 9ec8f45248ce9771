//! Results: JSON for machines, Markdown for people, an SVG chart of the latency distributions,
//! and the summary section of bench/README.md (full runs only).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warmpool_tests::PgServer;

use crate::lambda::{AfterKill, RunResult, Scenario, Workload};
use crate::micro::{MicroResults, RelayCost};
use crate::setup;
use crate::stats::{fmt_ratio, fmt_us, ratio, Summary};
use crate::Opts;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BouncerInfo {
    pub version: String,
    pub limitation: Option<String>,
    pub pool_size: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub rustc: String,
    pub postgres: String,
    pub git_commit: String,
    pub profile: String,
    /// /proc/loadavg when the run started and when it ended: other work on the machine shows
    /// here (the machine has 2 cores).
    pub load_start: String,
    pub load_end: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub command: String,
    pub quick: bool,
    pub levels: Vec<usize>,
    pub invocations_per_workload_and_level: usize,
    pub rounds: usize,
    pub scenarios: Vec<Scenario>,
    pub workloads: Vec<Workload>,
    pub w2_selects: usize,
    pub rows: u32,
    pub micro_seconds_per_load: f64,
    pub micro_concurrency: Vec<usize>,
    /// Round-trip times of the simulated network, ms, in the order they ran (0: loopback).
    #[serde(default = "loopback_only")]
    pub rtts_ms: Vec<f64>,
}

/// Results from before the simulated network ran on loopback only.
fn loopback_only() -> Vec<f64> {
    vec![0.0]
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub started_unix_s: u64,
    pub machine: Machine,
    pub settings: Settings,
    pub extension_binary_bytes: u64,
    pub pgbouncer: Option<BouncerInfo>,
    pub micro: Option<MicroResults>,
    /// What the delay relay costs by itself, and what it adds at each delay.
    #[serde(default)]
    pub relay: Option<RelayCost>,
    pub runs: Vec<RunResult>,
    pub after_kill: Vec<AfterKill>,
    pub notes: Vec<String>,
    pub not_done: Vec<String>,
    pub elapsed_s: f64,
}

impl Results {
    pub fn new(opts: &Opts, pg: &PgServer, extension: &Path) -> Results {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let repo = repo.display().to_string();
        Results {
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            machine: Machine {
                cpu,
                cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
                kernel: setup::command_line("uname", &["-sr"]),
                rustc: setup::command_line("rustc", &["-V"]),
                postgres: pg.superuser_psql("SHOW server_version"),
                git_commit: setup::command_line(
                    "git",
                    &["-C", &repo, "rev-parse", "--short", "HEAD"],
                ),
                profile: if setup::is_release() {
                    "release"
                } else {
                    "debug"
                }
                .into(),
                load_start: loadavg(),
                load_end: String::new(),
            },
            settings: Settings {
                command: format!(
                    "cargo run --release -p warmpool-bench --{}",
                    opts.args
                        .iter()
                        .map(|a| format!(" {a}"))
                        .collect::<String>()
                )
                .trim_end_matches(" --")
                .to_owned(),
                quick: opts.quick,
                levels: opts.levels.clone(),
                invocations_per_workload_and_level: opts.invocations,
                rounds: opts.rounds,
                scenarios: opts.scenarios.clone(),
                workloads: opts.workloads.clone(),
                w2_selects: opts.w2_selects,
                rows: opts.rows,
                micro_seconds_per_load: opts.micro_seconds,
                micro_concurrency: opts.micro_concurrency.clone(),
                rtts_ms: opts.rtts_ms.clone(),
            },
            extension_binary_bytes: setup::file_size(extension),
            pgbouncer: None,
            micro: None,
            relay: None,
            runs: Vec::new(),
            after_kill: Vec::new(),
            notes: Vec::new(),
            not_done: Vec::new(),
            elapsed_s: 0.0,
        }
    }

    fn run(&self, scenario: Scenario, level: usize) -> Option<&RunResult> {
        self.runs
            .iter()
            .find(|r| r.scenario == scenario && r.level == level && r.skipped.is_none())
    }

    fn db(&self, scenario: Scenario, level: usize, w: Workload) -> Option<&Summary> {
        self.run(scenario, level)?
            .workloads
            .iter()
            .find(|x| x.workload == w)
            .map(|x| &x.db)
            .filter(|s| s.n > 0)
    }

    fn p50(&self, scenario: Scenario, level: usize, w: Workload) -> f64 {
        self.db(scenario, level, w).map_or(f64::NAN, |s| s.p50_us)
    }
}

/// The three load averages from /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn busy(load: &str) -> bool {
    load.split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        .is_some_and(|l| l > 1.5)
}

/// One line per run on stderr, as the benchmark goes.
pub fn print_run(r: &RunResult) {
    if let Some(s) = &r.skipped {
        eprintln!("  skipped: {s}");
        return;
    }
    for w in &r.workloads {
        eprintln!(
            "  {}: db p50 {} p99 {} (n {}, errors {}), invoke p50 {}",
            w.workload.name(),
            fmt_us(w.db.p50_us),
            fmt_us(w.db.p99_us),
            w.db.n,
            w.db.errors,
            fmt_us(w.invoke.p50_us)
        );
    }
    eprintln!(
        "  cold p50 {} (init {}), server connections opened {} peak {}, {:.1} s",
        fmt_us(r.cold.total.p50_us),
        fmt_us(r.cold.init.p50_us),
        r.connections.opened,
        r.connections.peak,
        r.wall_s
    );
    for e in &r.error_samples {
        eprintln!("  error: {e}");
    }
}

/// Writes `<name>.json` and `<name>.svg` to the results directory, and the tables: for a full
/// run named `latest`, into bench/RESULTS.md between the results markers (the rest of that file
/// is left as it is); otherwise to `<name>.md` beside the JSON. Returns what it wrote.
pub fn write(results: &Results, opts: &Opts) -> Vec<PathBuf> {
    let _ = std::fs::create_dir_all(&opts.out);
    let json = opts.out.join(format!("{}.json", opts.name));
    let text = serde_json::to_string_pretty(results).expect("serialise results");
    let mut written = Vec::new();
    if std::fs::write(&json, text + "\n").is_ok() {
        written.push(json);
    }
    let full = !opts.quick && opts.lambda && opts.micro;
    written.extend(render(results, &opts.out, &opts.name, full));
    written
}

/// Renders a results file again (the chart, and the tables in bench/RESULTS.md for `latest` of
/// a full run), for instance after a change to the report's layout.
pub fn render_file(path: &Path) -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let results: Results =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("results file without a name")?;
    let full = !results.settings.quick && results.micro.is_some() && !results.runs.is_empty();
    Ok(render(&results, out, name, full))
}

/// The results file of the repository: hand-written text around the generated section.
fn results_md() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md")
}

fn render(results: &Results, out: &Path, name: &str, full: bool) -> Vec<PathBuf> {
    let mut written = Vec::new();
    let svg_name = format!("{name}.svg");
    let svg = out.join(&svg_name);
    if std::fs::write(&svg, chart(results)).is_ok() {
        written.push(svg.clone());
    }
    let results_md = results_md();
    let in_repo = out.canonicalize().ok()
        == Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("results")
            .canonicalize()
            .ok();
    if full && name == "latest" && in_repo {
        let body = markdown(results, &format!("results/{svg_name}"), None);
        let text = std::fs::read_to_string(&results_md).unwrap_or_default();
        if std::fs::write(&results_md, replace_section(&text, &body)).is_ok() {
            written.push(results_md);
        }
    } else {
        let md = out.join(format!("{name}.md"));
        let body = markdown(results, &svg_name, Some("warmpool benchmark results"));
        if std::fs::write(&md, body).is_ok() {
            written.push(md);
        }
    }
    written
}

const BEGIN: &str = "<!-- results:start -->";
const END: &str = "<!-- results:end -->";

/// `text` with what lies between the results markers replaced by `body`; the markers and
/// `body` are appended when `text` has none.
fn replace_section(text: &str, body: &str) -> String {
    replace_between(text, BEGIN, END, body)
}

/// Writes a part's `<name>.json` and `<name>.md` into `out`, and for a full run (`full`) its
/// section of bench/RESULTS.md, between `<!-- <name>:start -->` and `<!-- <name>:end -->`.
/// Returns the files written.
pub fn write_part(
    out: &Path,
    name: &str,
    results: &impl Serialize,
    md: &str,
    full: bool,
) -> Vec<PathBuf> {
    std::fs::create_dir_all(out).expect("results directory");
    let json = out.join(format!("{name}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(results).expect("json")).expect("write");
    let md_path = out.join(format!("{name}.md"));
    std::fs::write(&md_path, md).expect("write");
    let mut written = vec![json, md_path];
    if full {
        let results = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
        if let Ok(text) = std::fs::read_to_string(&results) {
            let (start, end) = (
                format!("<!-- {name}:start -->"),
                format!("<!-- {name}:end -->"),
            );
            let text = replace_between(&text, &start, &end, md);
            std::fs::write(&results, text).expect("write RESULTS.md");
            written.push(results);
        }
    }
    written
}

/// `text` with what lies between `begin` and `end` replaced by `body`; the markers and `body`
/// are appended when `text` has none.
pub fn replace_between(text: &str, begin: &str, end: &str, body: &str) -> String {
    let found = text.find(begin).and_then(|b| {
        let start = b + begin.len();
        Some((start, text[start..].find(end)? + start))
    });
    match found {
        Some((start, end)) => format!("{}\n{}\n{}", &text[..start], body.trim(), &text[end..]),
        None => {
            let sep = if text.is_empty() || text.ends_with("\n\n") {
                ""
            } else if text.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{text}{sep}{begin}\n{}\n{end}\n", body.trim())
        }
    }
}

fn machine_line(r: &Results) -> String {
    format!(
        "{} ({} cores), {}, loopback (and a simulated network over it where stated); PostgreSQL \
         {}, {}; {} build of commit {}",
        r.machine.cpu,
        r.machine.cores,
        r.machine.kernel,
        r.machine.postgres,
        r.pgbouncer
            .as_ref()
            .map_or("no PgBouncer".into(), |b| format!(
                "PgBouncer {}",
                b.version
            )),
        r.machine.profile,
        r.machine.git_commit
    )
}

/// The round-trip times in the order the results show them: 0.5 ms, the production case (RDS in
/// the same Availability Zone), first, then loopback, then the others from the shortest.
fn rtt_order(r: &Results) -> Vec<f64> {
    let mut rtts: Vec<f64> = r.settings.rtts_ms.clone();
    if rtts.is_empty() {
        rtts.push(0.0);
    }
    rtts.sort_by(|a, b| {
        rtt_rank(*a)
            .partial_cmp(&rtt_rank(*b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    rtts.dedup();
    rtts
}

/// Where a round-trip time comes in [`rtt_order`].
fn rtt_rank(rtt_ms: f64) -> (u8, f64) {
    if rtt_ms == 0.5 {
        (0, 0.0)
    } else if rtt_ms == 0.0 {
        (1, 0.0)
    } else {
        (2, rtt_ms)
    }
}

/// How the results name a network.
fn rtt_label(rtt_ms: f64) -> String {
    if rtt_ms == 0.0 {
        "loopback".into()
    } else {
        format!("RTT {rtt_ms} ms (simulated)")
    }
}

/// A network's name where space is short (the chart, the README's table).
fn short_label(rtt_ms: f64) -> String {
    if rtt_ms == 0.0 {
        "loopback".into()
    } else {
        format!("{rtt_ms} ms RTT")
    }
}

/// The results at one round-trip time: its runs and kills; the socket hop's micro-benchmark
/// (run on loopback) only in the loopback view.
fn at_rtt(r: &Results, rtt_ms: f64) -> Results {
    let mut v = r.clone();
    v.runs.retain(|x| x.rtt_ms == rtt_ms);
    v.after_kill.retain(|x| x.rtt_ms == rtt_ms);
    if rtt_ms != 0.0 {
        v.micro = None;
    }
    v.settings.rtts_ms = vec![rtt_ms];
    v
}

/// The summary table the repository's README quotes: p50 database time per invocation, each
/// network's row beside the others', warmpool as ratios to connect and to static prepared.
fn headline_table(r: &Results) -> String {
    let mut s = String::from(
        "| Workload, environments | network | warmpool | warmpool, one batch | connect per invocation | PgBouncer (transaction mode) | in-function static, prepared | in-function static, naive |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let views: Vec<(f64, Results)> = rtt_order(r)
        .into_iter()
        .map(|x| (x, at_rtt(r, x)))
        .collect();
    let mut first = true;
    let mut described = Vec::new();
    for &w in &r.settings.workloads {
        for &level in &r.settings.levels {
            for (rtt, v) in &views {
                let wp = v.p50(Scenario::Warmpool, level, w);
                let batch = v.p50(Scenario::WarmpoolBatch, level, w);
                let connect = v.p50(Scenario::Connect, level, w);
                let prepared = v.p50(Scenario::StaticPrepared, level, w);
                if !wp.is_finite() && !connect.is_finite() {
                    continue;
                }
                let cell = |x: f64| {
                    if !x.is_finite() {
                        "–".to_owned()
                    } else if first {
                        format!(
                            "{}: {} faster than connect, {} static",
                            fmt_us(x),
                            fmt_ratio(ratio(connect, x)),
                            fmt_ratio(ratio(x, prepared))
                        )
                    } else {
                        format!(
                            "{}: {}, {}",
                            fmt_us(x),
                            fmt_ratio(ratio(connect, x)),
                            fmt_ratio(ratio(x, prepared))
                        )
                    }
                };
                // Each workload is spelled out on its first row only.
                let what = if !described.contains(&w) {
                    described.push(w);
                    match w {
                        Workload::W1 => "W1 (1 point select)".to_owned(),
                        Workload::W2 => format!(
                            "W2 ({} selects + 1 insert in a transaction)",
                            r.settings.w2_selects
                        ),
                    }
                } else {
                    w.name().to_owned()
                };
                let (wp_cell, batch_cell) = (cell(wp), cell(batch));
                first = false;
                let _ = writeln!(
                    s,
                    "| {what}, {level} | {} | {wp_cell} | {batch_cell} | {} | {} | {} | {} |",
                    short_label(*rtt),
                    fmt_us(connect),
                    fmt_us(v.p50(Scenario::Pgbouncer, level, w)),
                    fmt_us(prepared),
                    fmt_us(v.p50(Scenario::StaticNaive, level, w)),
                );
            }
        }
    }
    s
}

/// The time to the first query of a cold environment: warm-up at Init (warmpool) against
/// connecting inside the function.
fn cold_lines(r: &Results) -> String {
    let mut s = String::new();
    for &level in &r.settings.levels {
        let first = |sc: Scenario| r.run(sc, level).map(|x| &x.cold);
        let (Some(wp), Some(connect)) = (first(Scenario::Warmpool), first(Scenario::Connect))
        else {
            continue;
        };
        let prepared = first(Scenario::StaticPrepared);
        let _ = writeln!(
            s,
            "- **Cold start at {level} environment(s)**, database time of a fresh environment's \
             first invocation (p50): warmpool, connected during Init, {} — {} sooner than \
             connecting inside the handler ({}){}. Init plus the first invocation: warmpool {}, \
             connect {}{}.",
            fmt_us(wp.first_db.p50_us),
            fmt_ratio(ratio(connect.first_db.p50_us, wp.first_db.p50_us)),
            fmt_us(connect.first_db.p50_us),
            prepared.map_or(String::new(), |p| format!(
                "; static prepared, which connects in its own Init, {}",
                fmt_us(p.first_db.p50_us)
            )),
            fmt_us(wp.total.p50_us),
            fmt_us(connect.total.p50_us),
            prepared.map_or(String::new(), |p| format!(
                ", static prepared {}",
                fmt_us(p.total.p50_us)
            )),
        );
    }
    s
}

/// One line on what the relay costs by itself, for the headline.
fn relay_line(r: &Results) -> Option<String> {
    let relay = r.relay.as_ref()?;
    let at0 = |op: &str| {
        relay
            .measured
            .iter()
            .find(|m| m.rtt_ms == 0.0 && m.operation.starts_with(op))
    };
    let select = at0("SELECT 1")?;
    let mut line = format!(
        "The simulated network's relay costs by itself (at a delay of 0, against the same \
         statement straight to the server, alternating): {:+.0} µs per round trip at p50 ({} \
         against {})",
        select.added_p50_us,
        fmt_us(select.relayed.latency.p50_us),
        fmt_us(select.direct.latency.p50_us)
    );
    if let Some(c) = at0("connect") {
        let _ = write!(
            line,
            ", {:+.0} µs per connect (TLS + SCRAM, {} against {})",
            c.added_p50_us,
            fmt_us(c.relayed.latency.p50_us),
            fmt_us(c.direct.latency.p50_us)
        );
    }
    for m in relay.measured.iter().filter(|m| m.rtt_ms > 0.0) {
        let _ = write!(
            line,
            "; at {} ms it adds {} per round trip",
            m.rtt_ms,
            fmt_us(m.added_p50_us)
        );
    }
    line.push('.');
    Some(line)
}

/// The relay's measurements as a table.
fn relay_section(r: &Results) -> String {
    let Some(relay) = &r.relay else {
        return String::new();
    };
    let mut s = format!(
        "## The simulated network\n\n\
         The relay (`bench/src/relay.rs`) measured by itself: one tokio-postgres connection in \
         this process (TLS), straight to the server and through a relay with the delay shown, \
         {:.1} s per operation, alternated in ten rounds. At a delay of 0 the difference is the \
         relay's own cost; at the others it should be the round-trip time plus that cost.\n\n\
         | operation | relay's RTT | direct p50 | relayed p50 | added p50 | added (mean) | direct p99 | relayed p99 | n |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        relay.seconds_per_load
    );
    for m in &relay.measured {
        let _ = writeln!(
            s,
            "| {} | {} ms | {} | {} | {:+.0} µs | {:+.0} µs | {} | {} | {} |",
            m.operation,
            m.rtt_ms,
            fmt_us(m.direct.latency.p50_us),
            fmt_us(m.relayed.latency.p50_us),
            m.added_p50_us,
            m.added_mean_us,
            fmt_us(m.direct.latency.p99_us),
            fmt_us(m.relayed.latency.p99_us),
            m.relayed.latency.n,
        );
    }
    s.push('\n');
    s
}

/// The headline numbers: ratios measured in this run.
fn headlines(r: &Results) -> String {
    let mut s = String::new();
    let levels = &r.settings.levels;
    for &w in &r.settings.workloads {
        for &level in levels {
            let wp = r.p50(Scenario::Warmpool, level, w);
            if !wp.is_finite() {
                continue;
            }
            let connect = r.p50(Scenario::Connect, level, w);
            let naive = r.p50(Scenario::StaticNaive, level, w);
            let prepared = r.p50(Scenario::StaticPrepared, level, w);
            let bouncer = r.p50(Scenario::Pgbouncer, level, w);
            let _ = writeln!(
                s,
                "- **{} at {level} environment(s)**, p50 database time per invocation: warmpool {} \
                 — {} faster than connect-per-invocation ({}), {} faster than PgBouncer ({}); \
                 {} the time of in-function static prepared ({}) and {} of static naive ({}).",
                w.name(),
                fmt_us(wp),
                fmt_ratio(ratio(connect, wp)),
                fmt_us(connect),
                fmt_ratio(ratio(bouncer, wp)),
                fmt_us(bouncer),
                fmt_ratio(ratio(wp, prepared)),
                fmt_us(prepared),
                fmt_ratio(ratio(wp, naive)),
                fmt_us(naive),
            );
            let batch = r.p50(Scenario::WarmpoolBatch, level, w);
            if batch.is_finite() {
                let _ = writeln!(
                    s,
                    "- **{} at {level} environment(s), as one batch**: warmpool batch {} — {} \
                     faster than connect-per-invocation; {} the time of in-function static \
                     prepared, {} of static naive, {} of warmpool one statement at a time.",
                    w.name(),
                    fmt_us(batch),
                    fmt_ratio(ratio(connect, batch)),
                    fmt_ratio(ratio(batch, prepared)),
                    fmt_ratio(ratio(batch, naive)),
                    fmt_ratio(ratio(batch, wp)),
                );
            }
        }
    }
    if let Some(m) = &r.micro {
        for c in m.comparisons.iter().filter(|c| c.concurrency == 1) {
            let _ = writeln!(
                s,
                "- **Socket hop, {} at concurrency 1**: {:+.0} µs per query at p50 over an in-process \
                 tokio-postgres connection ({} vs {}); throughput {} of it.",
                c.statement,
                c.overhead_p50_us,
                fmt_us(c.warmpool.latency.p50_us),
                fmt_us(c.direct.latency.p50_us),
                fmt_ratio(c.throughput_ratio)
            );
        }
        let _ = writeln!(
            s,
            "- **Floor**: a raw Unix-socket ping-pong between two processes takes {} (p50); \
             warmpool's `ping` (the hop without a database) {}, {} the floor.",
            fmt_us(m.floor.p50_us),
            fmt_us(m.warmpool_ping.latency.p50_us),
            fmt_ratio(ratio(m.warmpool_ping.latency.p50_us, m.floor.p50_us))
        );
    }
    s
}

fn scenario_table(r: &Results, w: Workload) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "**{}** ({}): database time per invocation, measured in the handler (connect included).\n",
        w.name(),
        match w {
            Workload::W1 => "one point select by primary key".to_owned(),
            Workload::W2 => format!(
                "{} point selects and one insert in a transaction",
                r.settings.w2_selects
            ),
        }
    );
    s.push_str("| envs | scenario | p50 | p95 | p99 | max | n | errors | speed-up vs connect (p50) | vs static prepared (p50) | invocation p50 | invocations/s |\n");
    s.push_str(
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for &level in &r.settings.levels {
        let connect = r.p50(Scenario::Connect, level, w);
        let prepared = r.p50(Scenario::StaticPrepared, level, w);
        for &scenario in &r.settings.scenarios {
            let Some(run) = r
                .runs
                .iter()
                .find(|x| x.scenario == scenario && x.level == level)
            else {
                continue;
            };
            if let Some(why) = &run.skipped {
                let _ = writeln!(
                    s,
                    "| {level} | {} | skipped: {why} |||||||||||",
                    scenario.name()
                );
                continue;
            }
            let Some(wr) = run.workloads.iter().find(|x| x.workload == w) else {
                continue;
            };
            let d = &wr.db;
            let _ = writeln!(
                s,
                "| {level} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                scenario.name(),
                fmt_us(d.p50_us),
                fmt_us(d.p95_us),
                fmt_us(d.p99_us),
                fmt_us(d.max_us),
                d.n,
                d.errors,
                fmt_ratio(ratio(connect, d.p50_us)),
                fmt_ratio(ratio(d.p50_us, prepared)),
                fmt_us(wr.invoke.p50_us),
                wr.invocations_per_s,
            );
        }
    }
    s
}

/// The median of each step the handler timed, per scenario, at each level.
fn steps_table(r: &Results, w: Workload) -> String {
    let mut labels: Vec<String> = match w {
        Workload::W1 => vec!["select".into()],
        Workload::W2 => {
            let mut l = vec!["BEGIN".to_owned()];
            l.extend((1..=r.settings.w2_selects).map(|i| format!("select {i}")));
            l.extend(["insert".to_owned(), "COMMIT".to_owned()]);
            l
        }
    };
    labels.insert(0, "connect".into());
    let mut s = format!(
        "**Where the time goes in {}** (median of each step as the handler timed it; warmpool's \
         BEGIN is sent with the first statement; warmpool-batch sends everything as one batch, \
         so it has one step, the sum):\n\n| envs | scenario | {} | sum of medians |\n| ---: | --- |{} ---: |\n",
        w.name(),
        labels.join(" | "),
        " ---: |".repeat(labels.len())
    );
    for &level in &r.settings.levels {
        for &sc in &r.settings.scenarios {
            let Some(run) = r.run(sc, level) else {
                continue;
            };
            let Some(wr) = run.workloads.iter().find(|x| x.workload == w) else {
                continue;
            };
            let mut cells: Vec<String> = wr.steps_p50_us.iter().map(|&t| fmt_us(t)).collect();
            if sc == Scenario::WarmpoolBatch {
                cells.clear();
            } else if !matches!(sc, Scenario::Connect | Scenario::Pgbouncer) {
                cells.insert(0, "–".into());
            }
            cells.resize(labels.len(), "–".into());
            let _ = writeln!(
                s,
                "| {level} | {} | {} | {} |",
                sc.name(),
                cells.join(" | "),
                fmt_us(wr.steps_p50_us.iter().sum())
            );
        }
    }
    s
}

/// The first invocation after an idle gap, against the rest.
fn gap_table(r: &Results) -> String {
    let mut s = String::from(
        "**After an idle gap.** Between its bursts each environment stays frozen while the other \
         scenarios run. Database time of each environment's first invocation after such a gap \
         (p50), beside the p50 of all invocations, and the gaps' median length:\n\n\
         | envs | scenario | idle gap p50 | W1 after a gap | W1 all | W2 after a gap | W2 all |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for run in r.runs.iter().filter(|x| x.skipped.is_none()) {
        let cell = |w: Workload| {
            run.workloads.iter().find(|x| x.workload == w).map_or(
                ("–".to_owned(), "–".to_owned()),
                |x| {
                    let gap = if x.after_gap.n > 0 {
                        format!("{} (n {})", fmt_us(x.after_gap.p50_us), x.after_gap.n)
                    } else {
                        "–".into()
                    };
                    (gap, fmt_us(x.db.p50_us))
                },
            )
        };
        let (g1, a1) = cell(Workload::W1);
        let (g2, a2) = cell(Workload::W2);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {g1} | {a1} | {g2} | {a2} |",
            run.level,
            run.scenario.name(),
            fmt_us(run.idle_gap.p50_us),
        );
    }
    s
}

fn connections_table(r: &Results) -> String {
    let mut s = String::from(
        "**Server connections** (application role, from the server's connection log) and cold \
         starts (Init plus the first invocation, per fresh environment):\n\n\
         | envs | scenario | opened | peak open | most by one environment | cold p50 | cold max | of which Init p50 | first invocation's db time p50 |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for run in r.runs.iter().filter(|x| x.skipped.is_none()) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.level,
            run.scenario.name(),
            run.connections.opened,
            run.connections.peak,
            run.connections
                .max_per_env
                .map_or("–".into(), |n| n.to_string()),
            fmt_us(run.cold.total.p50_us),
            fmt_us(run.cold.total.max_us),
            fmt_us(run.cold.init.p50_us),
            fmt_us(run.cold.first_db.p50_us),
        );
    }
    s
}

/// The goals beside what this run measured, one column per round-trip time (the order of
/// [`rtt_order`]). The goals are targets, not claims.
fn goals(r: &Results) -> String {
    let rtts = rtt_order(r);
    let per_rtt: Vec<Vec<GoalRow>> = rtts.iter().map(|&rtt| goal_rows(&at_rtt(r, rtt))).collect();
    // Every goal any column measured, in the order they first appear.
    let mut names: Vec<&str> = Vec::new();
    for row in per_rtt.iter().flatten() {
        if !names.contains(&row.0.as_str()) {
            names.push(&row.0);
        }
    }
    let mut s = format!(
        "| goal | {} |\n| --- |{}\n",
        rtts.iter()
            .map(|&x| rtt_label(x))
            .collect::<Vec<_>>()
            .join(" | "),
        " --- |".repeat(rtts.len())
    );
    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    for name in names {
        let cells: Vec<String> = per_rtt
            .iter()
            .map(|rows| match rows.iter().find(|x| x.0 == name) {
                Some((_, measured, ok)) => {
                    format!("{measured}: {}", ok.map_or("not measured", verdict))
                }
                None => "–".into(),
            })
            .collect();
        let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
    }
    s
}

/// One goal: what it asks, what this run measured, and whether that meets it.
type GoalRow = (String, String, Option<bool>);

/// The goals measured in `r` (the results at one round-trip time).
fn goal_rows(r: &Results) -> Vec<GoalRow> {
    let mut rows: Vec<GoalRow> = Vec::new();
    let mut row = |goal: &str, measured: String, ok: Option<bool>| {
        rows.push((goal.to_owned(), measured, ok));
    };
    let levels = &r.settings.levels;
    let per_level = |f: &dyn Fn(usize) -> f64| -> Vec<(usize, f64)> {
        levels
            .iter()
            .map(|&l| (l, f(l)))
            .filter(|(_, x)| x.is_finite())
            .collect()
    };
    let show = |v: &[(usize, f64)]| {
        v.iter()
            .map(|(l, x)| format!("{} at {l} env", fmt_ratio(*x)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let judge = |v: &[(usize, f64)], ok: &dyn Fn(f64) -> bool| {
        (!v.is_empty()).then(|| v.iter().all(|(_, x)| ok(*x)))
    };
    // The goals for production, where the database is a network round trip away (0.5 ms, as
    // RDS in the same Availability Zone).
    let vs_prepared = |sc: Scenario, w: Workload| {
        per_level(&|l| ratio(r.p50(sc, l, w), r.p50(Scenario::StaticPrepared, l, w)))
    };
    let w1p = vs_prepared(Scenario::Warmpool, Workload::W1);
    row(
        "production (RTT 0.5 ms): W1 through warmpool within 1.15× of in-function static \
         prepared (p50)",
        show(&w1p),
        judge(&w1p, &|x| x <= 1.15),
    );
    let w2p = vs_prepared(Scenario::Warmpool, Workload::W2);
    row(
        "production (RTT 0.5 ms): W2 one statement at a time no slower than in-function static \
         prepared (p50)",
        show(&w2p),
        judge(&w2p, &|x| x <= 1.0),
    );
    let w2b = vs_prepared(Scenario::WarmpoolBatch, Workload::W2);
    row(
        "production (RTT 0.5 ms): W2 as one batch at most 0.3× of in-function static prepared \
         (p50)",
        show(&w2b),
        judge(&w2b, &|x| x <= 0.3),
    );
    let first = |sc: Scenario, l: usize| r.run(sc, l).map_or(f64::NAN, |x| x.cold.first_db.p50_us);
    let cold = per_level(&|l| ratio(first(Scenario::Connect, l), first(Scenario::Warmpool, l)));
    row(
        "production (RTT 0.5 ms): a cold environment's first query, warm-up at Init (warmpool), \
         at least 5× sooner than one connecting inside the function (connect-per-invocation); \
         database time of the first invocation, p50",
        show(&cold),
        judge(&cold, &|x| x >= 5.0),
    );
    // The most W1 can gain over connect-per-invocation is what static prepared gains.
    let limit: Vec<(usize, f64, f64)> = levels
        .iter()
        .map(|&l| {
            let connect = r.p50(Scenario::Connect, l, Workload::W1);
            (
                l,
                ratio(connect, r.p50(Scenario::Warmpool, l, Workload::W1)),
                ratio(connect, r.p50(Scenario::StaticPrepared, l, Workload::W1)),
            )
        })
        .filter(|(_, x, y)| x.is_finite() && y.is_finite())
        .collect();
    row(
        "production (RTT 0.5 ms): W1 through warmpool against connect-per-invocation at least \
         0.85× of the limit this run implies (connect over static prepared, p50)",
        limit
            .iter()
            .map(|(l, x, y)| {
                format!(
                    "{} of a {} limit ({:.2} of it) at {l} env",
                    fmt_ratio(*x),
                    fmt_ratio(*y),
                    x / y
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        (!limit.is_empty()).then(|| limit.iter().all(|(_, x, y)| *x >= 0.85 * y)),
    );
    let w1 = per_level(&|l| {
        ratio(
            r.p50(Scenario::Connect, l, Workload::W1),
            r.p50(Scenario::Warmpool, l, Workload::W1),
        )
    });
    row(
        "W1 through warmpool at least 30× faster than connect-per-invocation (p50)",
        show(&w1),
        (!w1.is_empty()).then(|| w1.iter().all(|(_, x)| *x >= 30.0)),
    );
    let w2p = per_level(&|l| {
        ratio(
            r.p50(Scenario::Warmpool, l, Workload::W2),
            r.p50(Scenario::StaticPrepared, l, Workload::W2),
        )
    });
    row(
        "W2 through warmpool within 1.3× of in-function static prepared (p50)",
        show(&w2p),
        (!w2p.is_empty()).then(|| w2p.iter().all(|(_, x)| *x <= 1.3)),
    );
    let w2n = per_level(&|l| {
        ratio(
            r.p50(Scenario::Warmpool, l, Workload::W2),
            r.p50(Scenario::StaticNaive, l, Workload::W2),
        )
    });
    row(
        "W2 through warmpool no slower than in-function static naive (p50)",
        show(&w2n),
        (!w2n.is_empty()).then(|| w2n.iter().all(|(_, x)| *x <= 1.0)),
    );
    let w2b = per_level(&|l| {
        ratio(
            r.p50(Scenario::WarmpoolBatch, l, Workload::W2),
            r.p50(Scenario::StaticPrepared, l, Workload::W2),
        )
    });
    row(
        "W2 through the batch API at most 0.7× of static prepared (p50)",
        if w2b.is_empty() {
            "not measured in this run".into()
        } else {
            show(&w2b)
        },
        (!w2b.is_empty()).then(|| w2b.iter().all(|(_, x)| *x <= 0.7)),
    );
    if let Some(m) = &r.micro {
        if let Some(c) = m
            .comparisons
            .iter()
            .find(|c| c.concurrency == 1 && c.statement == "SELECT 1")
        {
            let hop = c.warmpool.latency.p50_us / m.floor.p50_us;
            row(
                "the hop costs at most 1.25× the raw socket ping-pong (SELECT 1 through warmpool \
                 over SELECT 1 in-process, p50, concurrency 1)",
                format!(
                    "overhead {:+.0} µs = {:.2}× the floor ({}); warmpool `ping` alone {} the floor",
                    c.overhead_p50_us,
                    c.overhead_p50_us / m.floor.p50_us,
                    fmt_us(m.floor.p50_us),
                    fmt_ratio(ratio(m.warmpool_ping.latency.p50_us, m.floor.p50_us)),
                ),
                Some(c.overhead_p50_us <= 1.25 * m.floor.p50_us && hop.is_finite()),
            );
        }
    }
    if let Some(k) = r
        .after_kill
        .iter()
        .find(|k| k.scenario == Scenario::Warmpool && k.skipped.is_none())
    {
        row(
            "no errors after a freeze that killed the connection",
            format!(
                "warmpool: first invocation {}, second {}",
                if k.first_ok { "ok" } else { "failed" },
                if k.second_ok { "ok" } else { "failed" }
            ),
            Some(k.first_ok && k.second_ok),
        );
    }
    let pools: Vec<(usize, u32)> = r
        .runs
        .iter()
        .filter(|x| x.scenario == Scenario::Warmpool && x.skipped.is_none())
        .filter_map(|x| Some((x.level, x.connections.max_per_env?)))
        .collect();
    if !pools.is_empty() {
        row(
            "server connections: one pool per environment, whatever the invocation count \
             (connections opened by one environment; one is needed here)",
            pools
                .iter()
                .map(|(l, n)| format!("at most {n} at {l} env"))
                .collect::<Vec<_>>()
                .join(", "),
            Some(pools.iter().all(|(_, n)| *n == 1)),
        );
    }
    rows
}

/// The tables of one run. `title` heads them in a file of their own; inside bench/RESULTS.md
/// they sit under the file's own title.
fn markdown(r: &Results, svg: &str, title: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(title) = title {
        let _ = writeln!(s, "# {title}\n");
    }
    let _ = writeln!(
        s,
        "- Command: `{}` ({:.0} s)",
        r.settings.command, r.elapsed_s
    );
    let _ = writeln!(s, "- Machine: {}", machine_line(r));
    let _ = writeln!(s, "- rustc: {}", r.machine.rustc);
    let _ = writeln!(
        s,
        "- Load average before the run: {}; at the end (the benchmark's own processes included): \
         {}.{}",
        r.machine.load_start,
        r.machine.load_end,
        if busy(&r.machine.load_start) {
            " **Other work was running on this 2-core machine**: absolute times are inflated and \
             noisier; the scenarios are interleaved so the ratios are less affected."
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "- Settings: levels {:?} (environments per scenario, invoked at once, each a local Lambda \
         frozen between its invocations); about {} measured invocations per workload, scenario \
         and level, in bursts interleaved across the scenarios in {} rounds; {} seeded rows; W2 = \
         {} selects + 1 insert in a transaction.",
        r.settings.levels,
        r.settings.invocations_per_workload_and_level,
        r.settings.rounds,
        r.settings.rows,
        r.settings.w2_selects
    );
    if let Some(b) = &r.pgbouncer {
        let _ = writeln!(
            s,
            "- PgBouncer {}: transaction mode, max_prepared_statements = 200, default_pool_size = {}, \
             TLS + SCRAM from the function, TLS verify-full to PostgreSQL.{}",
            b.version,
            b.pool_size,
            b.limitation.as_ref().map_or(String::new(), |l| format!(" **Limitation:** {l}"))
        );
    }
    let rtts = rtt_order(r);
    let _ = writeln!(
        s,
        "- Network: {}.{}",
        rtts.iter()
            .map(|&x| rtt_label(x))
            .collect::<Vec<_>>()
            .join(", "),
        if rtts.iter().any(|&x| x > 0.0) {
            " The simulated network is a TCP relay on loopback (`bench/src/relay.rs`; `tc netem` \
             is not available on this machine) between every client of PostgreSQL (the \
             extensions' pools, the functions' own connections, PgBouncer's server connections) \
             and the server: it holds each chunk it reads for half the round-trip time before \
             writing it on, in each direction, order preserved. It adds the propagation delay of \
             a network, not its bandwidth limits or losses. PgBouncer stands where RDS Proxy \
             does, on a host of its own: the functions reach it through a relay with the same \
             round-trip time. The Unix sockets between a function and its extension are not \
             delayed, as on Lambda."
        } else {
            ""
        }
    );
    for n in &r.notes {
        let _ = writeln!(s, "- Note: {n}");
    }
    let _ = writeln!(s, "\n## Headline (ratios measured in this run)\n");
    s.push_str(&headline_table(r));
    s.push('\n');
    if let Some(line) = relay_line(r) {
        let _ = writeln!(s, "{line}\n");
    }
    for &rtt in &rtts {
        let v = at_rtt(r, rtt);
        let _ = writeln!(s, "### {}\n", rtt_label(rtt));
        s.push_str(&headlines(&v));
        s.push_str(&cold_lines(&v));
        s.push('\n');
    }
    let _ = writeln!(s, "![latency distributions]({svg})\n");
    let _ = writeln!(s, "## Against the goals\n");
    s.push_str(&goals(r));
    s.push('\n');

    s.push_str(&relay_section(r));
    if let Some(m) = &r.micro {
        let _ = writeln!(s, "## The socket hop (loopback)\n");
        let _ = writeln!(
            s,
            "The same prepared statements through warmpool (extension in local mode, pool warm) and on \
             tokio-postgres connections held in this process (one per task), {:.1} s per load, \
             alternated in ten rounds. Latency per query; throughput of all tasks together.\n",
            m.seconds_per_load
        );
        s.push_str("| statement | concurrency | direct p50 | warmpool p50 | overhead p50 | overhead (mean) | direct p99 | warmpool p99 | direct ops/s | warmpool ops/s | throughput ratio |\n");
        s.push_str(
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for c in &m.comparisons {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:+.0} µs | {:+.0} µs | {} | {} | {:.0} | {:.0} | {} |",
                c.statement,
                c.concurrency,
                fmt_us(c.direct.latency.p50_us),
                fmt_us(c.warmpool.latency.p50_us),
                c.overhead_p50_us,
                c.overhead_mean_us,
                fmt_us(c.direct.latency.p99_us),
                fmt_us(c.warmpool.latency.p99_us),
                c.direct.ops_per_s,
                c.warmpool.ops_per_s,
                fmt_ratio(c.throughput_ratio),
            );
        }
        let floor = m.floor.p50_us;
        let _ = writeln!(
            s,
            "\nFloor: a raw Unix-socket ping-pong ({} bytes each way) between two processes: p50 {}, \
             p99 {} (n {}). warmpool `ping` (socket hop, no database), concurrency 1: p50 {}, p99 {} \
             = {} the floor. The SELECT 1 overhead at concurrency 1 is {} the floor.\n",
            32,
            fmt_us(floor),
            fmt_us(m.floor.p99_us),
            m.floor.n,
            fmt_us(m.warmpool_ping.latency.p50_us),
            fmt_us(m.warmpool_ping.latency.p99_us),
            fmt_ratio(ratio(m.warmpool_ping.latency.p50_us, floor)),
            m.comparisons
                .iter()
                .find(|c| c.concurrency == 1 && c.statement == "SELECT 1")
                .map_or("–".into(), |c| format!("{:.2}×", c.overhead_p50_us / floor)),
        );
    }

    let _ = writeln!(s, "## Scenarios through the local Lambda\n");
    for sc in &r.settings.scenarios {
        let _ = writeln!(s, "- `{}`: {}", sc.name(), sc.describe());
    }
    for &rtt in &rtts {
        let v = at_rtt(r, rtt);
        let _ = writeln!(s, "\n### {}\n", rtt_label(rtt));
        for &w in &v.settings.workloads {
            s.push_str(&scenario_table(&v, w));
            s.push('\n');
        }
        for &w in &v.settings.workloads {
            s.push_str(&steps_table(&v, w));
            s.push('\n');
        }
        s.push_str(&gap_table(&v));
        s.push('\n');
        s.push_str(&connections_table(&v));

        let errors: Vec<_> = v
            .runs
            .iter()
            .filter(|x| !x.error_samples.is_empty())
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(s, "\nError samples:\n");
            for run in errors {
                for e in &run.error_samples {
                    let _ = writeln!(s, "- {} at {}: `{}`", run.scenario.name(), run.level, e);
                }
            }
        }
    }

    if !r.after_kill.is_empty() {
        let _ = writeln!(
            s,
            "\n## The server kills the connections during a freeze\n\n\
             One environment per scenario: three W1 invocations, then every application connection is \
             terminated on the server (`pg_terminate_backend`, as `idle_session_timeout` or a failover \
             would) while the environment is frozen, then 1.5 s more of freeze (longer than warmpool's \
             check-after-idle threshold), then two more W1 invocations.\n\n\
             | network | scenario | terminated | first invocation after the thaw | its db time | second invocation |\n\
             | --- | --- | ---: | --- | ---: | --- |"
        );
        let mut kills: Vec<&AfterKill> = r.after_kill.iter().collect();
        kills.sort_by_key(|k| rtts.iter().position(|&x| x == k.rtt_ms));
        for k in kills {
            let net = rtt_label(k.rtt_ms);
            if let Some(why) = &k.skipped {
                let _ = writeln!(
                    s,
                    "| {net} | {} | skipped: {why} | | | |",
                    k.scenario.name()
                );
                continue;
            }
            let outcome = |ok: bool, e: &Option<String>| {
                if ok {
                    "ok".to_owned()
                } else {
                    format!(
                        "error: `{}`",
                        e.clone().unwrap_or_default().replace('|', "/")
                    )
                }
            };
            let _ = writeln!(
                s,
                "| {net} | {} | {} | {} | {} | {} |",
                k.scenario.name(),
                k.terminated,
                outcome(k.first_ok, &k.first_error),
                k.first_db_us.map_or("–".into(), fmt_us),
                outcome(k.second_ok, &k.second_error),
            );
        }
    }

    let _ = writeln!(s, "\n## Footprint\n");
    let _ = writeln!(
        s,
        "- Extension binary (release, stripped): {:.1} MiB",
        r.extension_binary_bytes as f64 / (1024.0 * 1024.0)
    );
    if let Some(m) = &r.micro {
        let _ = writeln!(
            s,
            "- Start to socket bound: {} (median of 5); start to warm connection open: {}",
            fmt_us(m.start_to_listening_us),
            fmt_us(m.start_to_warm_us)
        );
        if let Some(kib) = m.extension_peak_rss_kib {
            let _ = writeln!(
                s,
                "- Peak RSS after the micro-benchmark (pool of {} warm, 100-row results): {:.1} MiB",
                m.comparisons.iter().map(|c| c.concurrency).max().unwrap_or(1),
                kib as f64 / 1024.0
            );
        }
    }
    if let Some(kib) = r.runs.iter().filter_map(|x| x.extension_peak_rss_kib).max() {
        let _ = writeln!(
            s,
            "- Peak RSS of an extension in the Lambda scenarios (one warm connection): {:.1} MiB",
            kib as f64 / 1024.0
        );
    }

    if !r.not_done.is_empty() {
        let _ = writeln!(s, "\n## Not measured\n");
        for n in &r.not_done {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// An SVG of the database-time distributions: per workload and level, a bar from p50 to p99
/// (p95 ticked, max dotted) for each scenario, on a log scale.
fn chart(r: &Results) -> String {
    let scenarios: Vec<Scenario> = r.settings.scenarios.clone();
    let views: Vec<(f64, Results)> = rtt_order(r)
        .into_iter()
        .map(|x| (x, at_rtt(r, x)))
        .collect();
    let groups: Vec<(&Results, String, Workload, usize)> = views
        .iter()
        .flat_map(|(rtt, v)| {
            r.settings.workloads.iter().flat_map(move |&w| {
                r.settings
                    .levels
                    .iter()
                    .map(move |&l| (v, short_label(*rtt), w, l))
            })
        })
        .collect();
    let row_h = 16.0;
    let group_gap = 22.0;
    let left = 190.0;
    let width = 860.0;
    let plot_w = width - left - 30.0;
    let (lo, hi) = (10f64, 1_000_000f64); // 10 µs .. 1 s
    let x = |us: f64| {
        left + plot_w * ((us.clamp(lo, hi)).log10() - lo.log10()) / (hi.log10() - lo.log10())
    };
    let colors = [
        "#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#17becf", "#9467bd",
    ];
    let height = 60.0 + groups.len() as f64 * (scenarios.len() as f64 * row_h + group_gap) + 40.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"18\" font-size=\"13\">Database time per invocation: bar p50–p99, tick p95, dot max (log scale)</text>\n"
    );
    let axis_y = 36.0;
    let mut t = lo;
    while t <= hi {
        let label = if t < 1000.0 {
            format!("{t:.0} µs")
        } else {
            format!("{:.0} ms", t / 1000.0)
        };
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{axis_y}\" y2=\"{1:.0}\" stroke=\"#ddd\"/>\
             <text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\" fill=\"#555\">{label}</text>",
            x(t),
            height - 30.0,
            axis_y - 4.0
        );
        t *= 10.0;
    }
    let mut y = 50.0;
    for (v, network, w, level) in groups {
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{} · {} env · {network}</text>",
            y + 10.0,
            w.name(),
            level
        );
        for (i, &sc) in scenarios.iter().enumerate() {
            let cy = y + i as f64 * row_h + 8.0;
            let _ = writeln!(
                s,
                "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>",
                left - 6.0,
                cy + 4.0,
                sc.name()
            );
            if let Some(d) = v.db(sc, level, w) {
                let c = colors[i % colors.len()];
                let _ = writeln!(
                    s,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"8\" fill=\"{c}\" opacity=\"0.75\"/>\
                     <line x1=\"{3:.1}\" x2=\"{3:.1}\" y1=\"{4:.1}\" y2=\"{5:.1}\" stroke=\"black\"/>\
                     <circle cx=\"{6:.1}\" cy=\"{7:.1}\" r=\"2\" fill=\"{c}\"/>\
                     <text x=\"{8:.1}\" y=\"{9:.1}\" fill=\"#333\">{10}</text>",
                    x(d.p50_us),
                    cy - 4.0,
                    (x(d.p99_us) - x(d.p50_us)).max(1.0),
                    x(d.p95_us),
                    cy - 6.0,
                    cy + 6.0,
                    x(d.max_us),
                    cy,
                    x(d.max_us) + 5.0,
                    cy + 4.0,
                    fmt_us(d.p50_us)
                );
            }
        }
        y += scenarios.len() as f64 * row_h + group_gap;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_marked_section() {
        let text = "intro\n<!-- results:start -->\nold\n<!-- results:end -->\n\n## Soak\nkept\n";
        assert_eq!(
            replace_section(text, "new\n"),
            "intro\n<!-- results:start -->\nnew\n<!-- results:end -->\n\n## Soak\nkept\n"
        );
    }

    #[test]
    fn shows_the_production_round_trip_first_then_loopback() {
        let mut rtts = vec![0.0, 1.0, 0.5, 0.25];
        rtts.sort_by(|a, b| rtt_rank(*a).partial_cmp(&rtt_rank(*b)).expect("ordered"));
        assert_eq!(rtts, [0.5, 0.0, 0.25, 1.0]);
        assert_eq!(rtt_label(0.0), "loopback");
        assert_eq!(rtt_label(0.5), "RTT 0.5 ms (simulated)");
    }

    #[test]
    fn appends_the_section_when_the_markers_are_missing() {
        assert_eq!(
            replace_section("# Results\n", "new"),
            "# Results\n\n<!-- results:start -->\nnew\n<!-- results:end -->\n"
        );
        assert_eq!(
            replace_section("", "new"),
            "<!-- results:start -->\nnew\n<!-- results:end -->\n"
        );
    }
}
