//! The hop, before and after: what a statement through warmpool costs beyond warmpool's own
//! `ping` and the same statement in-process, for two builds of the extension measured in
//! alternating rounds of one run.
//!
//! ```text
//! cargo run --release -p warmpool-bench -- --hop --baseline PATH [--quick] [--extension PATH] [--out DIR]
//! ```
//!
//! Each round runs, at concurrency 1 and for the same time each: in-process `SELECT 1` and the
//! 100-row select (tokio-postgres, statements prepared), then for each build its `ping`, its
//! `SELECT 1` and its 100-row select. The work inside the extension is a statement's p50 minus
//! its `ping` p50 minus the in-process p50; the goal is at most 10 µs. Results: `hop.{json,md}`,
//! and for a full run into the repository, the hop section of bench/RESULTS.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use warmpool_tests::PgServer;

use crate::micro::{consume_pg, consume_wp, load, Ext, Op, ROWS100};
use crate::stats::Summary;

/// The goal: a statement through warmpool costs at most its `ping` plus the in-process time
/// plus this, at p50.
const GOAL_US: f64 = 10.0;
const SELECT1: &str = "SELECT 1";

/// Options of the hop part.
pub struct HopOpts {
    rounds: u32,
    per_load: Duration,
    extension: Option<PathBuf>,
    baseline: Option<PathBuf>,
    out: PathBuf,
    full: bool,
}

const USAGE: &str = "\
usage: warmpool-bench --hop [--quick] [--baseline PATH] [--extension PATH] [--rounds N]
                      [--seconds S] [--out DIR]

  --baseline PATH    another extension binary (an earlier build), measured in the same rounds
  --extension PATH   the extension binary to measure (default: build it)
  --rounds N         rounds alternating every load (default 10; quick 4)
  --seconds S        seconds per load, over all rounds (default 4; quick 1)
  --out DIR          results directory (default bench/results; quick target/warmpool-bench);
                     writes hop.{json,md}";

/// Parses the arguments after `--hop`.
pub fn parse(args: &[String]) -> Result<HopOpts, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = HopOpts {
        rounds: if quick { 4 } else { 10 },
        per_load: Duration::from_secs(if quick { 1 } else { 4 }),
        extension: None,
        baseline: None,
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
        match a.as_str() {
            "--hop" | "--quick" => {}
            "--rounds" => {
                o.rounds = v()?
                    .parse::<u32>()
                    .map_err(|e| e.to_string())?
                    .clamp(1, 100)
            }
            "--seconds" => {
                let s: f64 = v()?.parse().map_err(|_| "--seconds: not a number")?;
                o.per_load = Duration::from_secs_f64(s.clamp(0.1, 600.0));
            }
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

/// One build's figures, µs at p50.
#[derive(Serialize)]
pub struct Build {
    pub build: String,
    pub binary: String,
    pub ping: Summary,
    pub select1: Summary,
    pub rows100: Summary,
    /// `SELECT 1` p50 minus ping p50 minus in-process p50.
    pub select1_inside_us: f64,
    /// The 100-row select p50 minus ping p50 minus in-process p50.
    pub rows100_inside_us: f64,
    pub goal_met: bool,
}

#[derive(Serialize)]
pub struct Results {
    pub rounds: u32,
    pub seconds_per_load: f64,
    pub loadavg_start: String,
    pub direct_select1: Summary,
    pub direct_rows100: Summary,
    pub builds: Vec<Build>,
}

/// Runs the part on a PostgreSQL of its own and writes its results.
pub async fn run_alone(opts: HopOpts) {
    eprintln!("hop: starting PostgreSQL ...");
    let pg = crate::setup::start_postgres();
    crate::setup::seed(&pg, 2000, &[]);
    let extension = match &opts.extension {
        Some(p) => p.clone(),
        None => warmpool_tests::ext::binary().to_path_buf(),
    };
    let results = run(&pg, &extension, &opts).await;
    for path in write(&results, &opts) {
        eprintln!("wrote {}", path.display());
    }
}

struct Measured {
    name: &'static str,
    binary: PathBuf,
    ping: Op,
    select1: Op,
    rows100: Op,
    samples: [Vec<f64>; 3],
    errors: [usize; 3],
    _ext: Ext,
}

/// Measures the baseline (if any) and `extension` in the same alternating rounds.
pub async fn run(pg: &PgServer, extension: &Path, opts: &HopOpts) -> Results {
    let loadavg_start = crate::report::loadavg();
    let direct = pg.tokio_client().await;
    let d_select1 = direct.prepare(SELECT1).await.expect("prepare");
    let d_rows100 = direct.prepare(ROWS100).await.expect("prepare");
    let direct = Arc::new((direct, d_select1, d_rows100));
    let d1: Op = {
        let direct = direct.clone();
        Arc::new(move |_| {
            let direct = direct.clone();
            Box::pin(async move {
                let row = direct
                    .0
                    .query_one(&direct.1, &[])
                    .await
                    .map_err(|e| e.to_string())?;
                let _: i32 = row.get(0);
                Ok(())
            })
        })
    };
    let d100: Op = {
        let direct = direct.clone();
        Arc::new(move |_| {
            let direct = direct.clone();
            Box::pin(async move {
                let rows = direct
                    .0
                    .query(&direct.2, &[&1000i32])
                    .await
                    .map_err(|e| e.to_string())?;
                consume_pg(&rows)
            })
        })
    };

    let mut builds = Vec::new();
    let named = opts
        .baseline
        .iter()
        .map(|b| ("baseline", b.clone()))
        .chain([("this build", extension.to_owned())]);
    for (name, binary) in named {
        let ext = Ext::start(
            pg,
            &binary,
            &[("WARMPOOL_MAX_SIZE", "1"), ("WARMPOOL_WARM_SIZE", "1")],
        );
        ext.wait_for("pool warmed", Duration::from_secs(30))
            .expect("the extension opened its warm connection");
        let wp = warmpool::Client::connect_to(&ext.socket)
            .await
            .expect("connect to the extension");
        let s1 = wp.prepare(SELECT1).await.expect("prepare through warmpool");
        let s100 = wp.prepare(ROWS100).await.expect("prepare through warmpool");
        let ping: Op = {
            let wp = wp.clone();
            Arc::new(move |_| {
                let wp = wp.clone();
                Box::pin(async move { wp.ping().await.map_err(|e| e.to_string()) })
            })
        };
        let select1: Op = {
            let (wp, st) = (wp.clone(), s1);
            Arc::new(move |_| {
                let (wp, st) = (wp.clone(), st.clone());
                Box::pin(async move {
                    let row = wp.query_one(&st, &[]).await.map_err(|e| e.to_string())?;
                    let _: i32 = row.get(0);
                    Ok(())
                })
            })
        };
        let rows100: Op = {
            let (wp, st) = (wp.clone(), s100);
            Arc::new(move |_| {
                let (wp, st) = (wp.clone(), st.clone());
                Box::pin(async move {
                    let rows = wp
                        .query(&st, &[&1000i32])
                        .await
                        .map_err(|e| e.to_string())?;
                    consume_wp(&rows)
                })
            })
        };
        builds.push(Measured {
            name,
            binary,
            ping,
            select1,
            rows100,
            samples: Default::default(),
            errors: [0; 3],
            _ext: ext,
        });
    }

    let slice = opts.per_load / opts.rounds;
    let (mut direct1, mut direct100) = (Vec::new(), Vec::new());
    let mut direct_errors = [0usize; 2];
    for round in 0..opts.rounds {
        eprintln!("hop: round {} of {}", round + 1, opts.rounds);
        let (s, _, e, _) = load(d1.clone(), 1, slice, 20, usize::MAX).await;
        direct1.extend(s);
        direct_errors[0] += e;
        let (s, _, e, _) = load(d100.clone(), 1, slice, 5, usize::MAX).await;
        direct100.extend(s);
        direct_errors[1] += e;
        // The builds take turns in alternating order, so neither always follows the other.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..builds.len()).collect()
        } else {
            (0..builds.len()).rev().collect()
        };
        for i in order {
            let b = &mut builds[i];
            for (k, op) in [b.ping.clone(), b.select1.clone(), b.rows100.clone()]
                .into_iter()
                .enumerate()
            {
                let (s, _, e, _) = load(op, 1, slice, 20, usize::MAX).await;
                b.samples[k].extend(s);
                b.errors[k] += e;
            }
        }
    }
    let direct_select1 = Summary::of(&direct1, direct_errors[0]);
    let direct_rows100 = Summary::of(&direct100, direct_errors[1]);
    let builds = builds
        .into_iter()
        .map(|b| {
            let ping = Summary::of(&b.samples[0], b.errors[0]);
            let select1 = Summary::of(&b.samples[1], b.errors[1]);
            let rows100 = Summary::of(&b.samples[2], b.errors[2]);
            let select1_inside_us = select1.p50_us - ping.p50_us - direct_select1.p50_us;
            let rows100_inside_us = rows100.p50_us - ping.p50_us - direct_rows100.p50_us;
            Build {
                build: b.name.to_owned(),
                binary: b.binary.display().to_string(),
                goal_met: select1_inside_us <= GOAL_US && rows100_inside_us <= GOAL_US,
                ping,
                select1,
                rows100,
                select1_inside_us,
                rows100_inside_us,
            }
        })
        .collect();
    Results {
        rounds: opts.rounds,
        seconds_per_load: opts.per_load.as_secs_f64(),
        loadavg_start,
        direct_select1,
        direct_rows100,
        builds,
    }
}

/// The results as a Markdown table.
pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Concurrency 1, p50 in µs; {} rounds alternating every load, {:.1} s per load in all; \
         load average at the start {}. In-process: `SELECT 1` {:.1}, the 100-row select {:.1}.\n",
        r.rounds,
        r.seconds_per_load,
        r.loadavg_start,
        r.direct_select1.p50_us,
        r.direct_rows100.p50_us
    );
    let _ = writeln!(
        md,
        "| Build | ping | `SELECT 1` | inside the extension | 100-row select | inside the extension | goal (≤ {GOAL_US} µs) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for b in &r.builds {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:+.1} | {:.1} | {:+.1} | {} |",
            b.build,
            b.ping.p50_us,
            b.select1.p50_us,
            b.select1_inside_us,
            b.rows100.p50_us,
            b.rows100_inside_us,
            if b.goal_met { "met" } else { "missed" }
        );
    }
    md
}

/// Writes `hop.json` and `hop.md`, and for a full run the section of bench/RESULTS.md.
pub fn write(r: &Results, opts: &HopOpts) -> Vec<PathBuf> {
    crate::report::write_part(&opts.out, "hop", r, &markdown(r), opts.full)
}
