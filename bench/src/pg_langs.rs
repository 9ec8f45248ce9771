//! W1 and W2 from the languages functions are written in, through the PostgreSQL-protocol
//! endpoint: the language part of `--pg`.
//!
//! Each language's script (`bench/pg_w.py`, psycopg 3; `bench/pg_w.js`, node-postgres) times
//! both workloads three ways: a module-level connection to the endpoint, a connection straight
//! to PostgreSQL opened and closed in every invocation (TLS verify-full + SCRAM each time), and a
//! module-level direct connection. The goal, for W1 in each language: connecting per invocation
//! at least 20× the endpoint's time at p50. W2 (a transaction of three point selects and an
//! insert) is reported with the same ratios and no goal.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use warmpool_tests::PgServer;

use crate::stats::{fmt_us, Summary};

/// The goal for W1: connecting per invocation at least this many times the endpoint's p50.
pub const GOAL_W1_RATIO: f64 = 20.0;

/// A language the part can run, with its script.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Lang {
    Python,
    Node,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::Python, Lang::Node];

    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "python" | "py" => Some(Lang::Python),
            "node" | "js" => Some(Lang::Node),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Lang::Python => "Python",
            Lang::Node => "Node.js",
        }
    }

    fn script(self) -> PathBuf {
        let file = match self {
            Lang::Python => "pg_w.py",
            Lang::Node => "pg_w.js",
        };
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file)
    }
}

/// What the language part runs.
#[derive(Clone, Debug)]
pub struct LangOpts {
    pub langs: Vec<Lang>,
    /// Invocations of each scenario and workload per round.
    pub invocations: u32,
    pub rounds: u32,
    /// Rows of bench_accounts, the range the point selects draw from.
    pub rows: u32,
}

/// The interpreters and libraries, installed by the test set-up when missing.
pub struct Drivers {
    python: Option<PathBuf>,
    node_modules: Option<PathBuf>,
}

/// Installs (when missing) what `langs` need, under target/warmpool-bench/drivers.
pub fn drivers(langs: &[Lang]) -> Drivers {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/warmpool-bench/drivers");
    Drivers {
        python: langs
            .contains(&Lang::Python)
            .then(|| warmpool_tests::prereq::python_drivers(&dir)),
        node_modules: langs
            .contains(&Lang::Node)
            .then(|| warmpool_tests::prereq::node_drivers(&dir)),
    }
}

/// One workload in one language, µs per invocation.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    /// `W1` or `W2`.
    pub workload: &'static str,
    pub endpoint: Summary,
    pub connect: Summary,
    pub static_direct: Summary,
    /// Connect-per-invocation p50 over the endpoint's p50.
    pub connect_over_endpoint: f64,
    /// The endpoint's p50 over the module-level direct connection's p50.
    pub endpoint_over_static: f64,
    /// Judged for W1 only.
    pub goal_met: Option<bool>,
}

/// One language's results.
#[derive(Clone, Debug, Serialize)]
pub struct Language {
    pub language: &'static str,
    /// The driver's version, and the library or runtime under it.
    pub driver: String,
    pub workloads: Vec<Workload>,
    /// bench_events rows after the run, each a committed W2 (the table is emptied before).
    pub w2_rows: u64,
    /// The script's run, start-up and warm-up included, s.
    pub wall_s: f64,
}

/// The language part's results.
#[derive(Clone, Debug, Serialize)]
pub struct Langs {
    pub rounds: u32,
    pub invocations_per_round: u32,
    pub languages: Vec<Language>,
}

/// Runs each language's script against the endpoint in `endpoint_dir` and against `pg`.
pub async fn run(pg: &PgServer, endpoint_dir: &Path, drivers: &Drivers, opts: &LangOpts) -> Langs {
    let mut languages = Vec::new();
    for &lang in &opts.langs {
        eprintln!(
            "pg: {} W1 and W2, {} rounds of {} invocations per scenario",
            lang.name(),
            opts.rounds,
            opts.invocations
        );
        let script = lang.script();
        let mut cmd = match lang {
            Lang::Python => {
                let python = drivers.python.as_ref().expect("Python drivers installed");
                let mut cmd = crate::pg::with_env(python, &crate::pg::direct_env(pg));
                cmd.env("PYTHONDONTWRITEBYTECODE", "1");
                cmd
            }
            Lang::Node => {
                let modules = drivers
                    .node_modules
                    .as_ref()
                    .expect("Node.js drivers installed");
                let mut cmd = crate::pg::with_env(Path::new("node"), &crate::pg::direct_env(pg));
                cmd.env("NODE_PATH", modules);
                cmd
            }
        };
        cmd.arg(&script)
            .args([
                opts.invocations.to_string(),
                opts.rounds.to_string(),
                opts.rows.to_string(),
            ])
            .env("WP_ENDPOINT_DIR", endpoint_dir)
            .env("WP_ENDPOINT_DB", pg.dbname());
        // Each language's W2 inserts are counted on an empty table.
        pg.superuser_psql("TRUNCATE bench_events");
        languages.push(run_script(pg, lang, cmd).await);
    }
    Langs {
        rounds: opts.rounds,
        invocations_per_round: opts.invocations,
        languages,
    }
}

async fn run_script(pg: &PgServer, lang: Lang, mut cmd: Command) -> Language {
    let script = lang.script();
    let start = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("script task")
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let wall_s = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{}'s JSON: {e}", script.display()));
    let workloads = ["w1", "w2"].map(|w| workload(&v, w));
    let w2_rows: u64 = pg
        .superuser_psql("SELECT count(*) FROM bench_events")
        .trim()
        .parse()
        .expect("a row count");
    // Every W2 that the script counted as done committed its insert, and no other did: an
    // invocation that failed rolled back, so the table holds the warm-up's and the timed ones.
    let w2 = &workloads[1];
    let warmup = v["warmup_w2"].as_u64().unwrap_or(0);
    let done = (w2.endpoint.n + w2.connect.n + w2.static_direct.n) as u64;
    assert_eq!(
        w2_rows,
        warmup + done,
        "{}: bench_events rows against the W2 transactions the script saw committed",
        lang.name()
    );
    Language {
        language: lang.name(),
        driver: v["driver"].as_str().unwrap_or_default().to_owned(),
        workloads: workloads.into(),
        w2_rows,
        wall_s,
    }
}

/// The summaries and ratios of workload `w` (`w1`, `w2`) in a script's JSON.
fn workload(v: &serde_json::Value, w: &str) -> Workload {
    let summary = |name: &str| {
        let samples: Vec<f64> = v["samples_us"][w][name]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default();
        let errors = v["errors"][w][name].as_u64().unwrap_or(0) as usize;
        Summary::of(&samples, errors)
    };
    let (endpoint, connect, static_direct) =
        (summary("endpoint"), summary("connect"), summary("static"));
    let connect_over_endpoint = crate::stats::ratio(connect.p50_us, endpoint.p50_us);
    let is_w1 = w == "w1";
    Workload {
        workload: if is_w1 { "W1" } else { "W2" },
        goal_met: is_w1.then_some(
            connect_over_endpoint >= GOAL_W1_RATIO && endpoint.errors == 0 && endpoint.n > 0,
        ),
        endpoint_over_static: crate::stats::ratio(endpoint.p50_us, static_direct.p50_us),
        connect_over_endpoint,
        endpoint,
        connect,
        static_direct,
    }
}

/// The language part as a Markdown table, appended to `md`.
pub fn markdown(md: &mut String, l: &Langs) {
    let drivers: Vec<String> = l
        .languages
        .iter()
        .map(|x| format!("{}: {}, {:.0} s", x.language, x.driver, x.wall_s))
        .collect();
    let _ = writeln!(
        md,
        "W1 (one point select by primary key) and W2 (BEGIN, three point selects, one insert, \
         COMMIT) per invocation from each language, {} rounds of {} invocations per scenario and \
         workload, scenarios in rotating order, concurrency 1 ({}). Endpoint: a module-level \
         connection to the endpoint; connect: straight to PostgreSQL, connected and closed in \
         every invocation (TLS verify-full + SCRAM); static: a module-level direct connection \
         (TLS). p50 (p95):\n",
        l.rounds,
        l.invocations_per_round,
        drivers.join("; ")
    );
    let _ = writeln!(
        md,
        "| Language | Workload | endpoint | connect | static | connect / endpoint | \
         endpoint / static | errors (e/c/s) | goal (W1: ≥ {GOAL_W1_RATIO}×) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let cell = |s: &Summary| format!("{} ({})", fmt_us(s.p50_us), fmt_us(s.p95_us));
    for x in &l.languages {
        for w in &x.workloads {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {:.1}× | {:.2}× | {}/{}/{} | {} |",
                x.language,
                w.workload,
                cell(&w.endpoint),
                cell(&w.connect),
                cell(&w.static_direct),
                w.connect_over_endpoint,
                w.endpoint_over_static,
                w.endpoint.errors,
                w.connect.errors,
                w.static_direct.errors,
                match w.goal_met {
                    Some(true) => "met",
                    Some(false) => "missed",
                    None => "—",
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script_json(endpoint: &[f64], connect: &[f64], endpoint_errors: u64) -> serde_json::Value {
        serde_json::json!({
            "driver": "test",
            "warmup_w2": 20,
            "samples_us": {
                "w1": {"endpoint": endpoint, "connect": connect, "static": [100.0]},
                "w2": {"endpoint": endpoint, "connect": connect, "static": [100.0]},
            },
            "errors": {
                "w1": {"endpoint": endpoint_errors, "connect": 0, "static": 0},
                "w2": {"endpoint": 0, "connect": 0, "static": 0},
            },
        })
    }

    #[test]
    fn judges_w1_only_and_counts_endpoint_errors_against_it() {
        let v = script_json(&[200.0, 210.0, 220.0], &[5000.0, 5000.0, 5000.0], 0);
        let w1 = workload(&v, "w1");
        assert_eq!(w1.workload, "W1");
        assert!((w1.connect_over_endpoint - 5000.0 / 210.0).abs() < 1e-9);
        assert_eq!(w1.goal_met, Some(true));
        assert!((w1.endpoint_over_static - 2.1).abs() < 1e-9);
        assert_eq!(workload(&v, "w2").goal_met, None);

        let slow = script_json(&[300.0], &[5000.0], 0);
        assert_eq!(workload(&slow, "w1").goal_met, Some(false));
        let failing = script_json(&[200.0], &[5000.0], 1);
        assert_eq!(workload(&failing, "w1").goal_met, Some(false));
        let none = script_json(&[], &[5000.0], 0);
        assert_eq!(workload(&none, "w1").goal_met, Some(false));
    }
}
