//! The warm-state scenario: a handler's reference-data lookup served from the extension's warm
//! state instead of a query, measured in one run against the same private PostgreSQL; and the
//! extension's memory with 10,000 entries in its state store.
//!
//! ```text
//! cargo run --release -p warmpool-bench -- --warm-state [--quick] [--out DIR]
//! ```
//!
//! Each lookup is timed around the client call, in this process, through the extension's socket
//! (local mode, one warm connection). The ways of answering the same lookup alternate in rounds,
//! so other work on the machine touches them alike. Results: `warm_state.{json,md}`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use warmpool::{CachePolicy, Client};
use warmpool_tests::{Extension, PgServer};

use crate::stats::{fmt_us, ratio, Summary};

/// Rows of the reference table (about the world's countries).
const COUNTRIES: usize = 250;
/// Entries put in the state store for the memory measurement.
const STORE_ENTRIES: usize = 10_000;
/// Bytes of each of those values.
const VALUE_BYTES: usize = 200;

const ALL: &str = "SELECT code, name, region, currency FROM bench_countries ORDER BY code";
const POINT: &str = "SELECT name FROM bench_countries WHERE code = $1";

/// Options of the scenario.
pub struct WarmOpts {
    iterations: usize,
    rounds: usize,
    out: PathBuf,
    args: Vec<String>,
}

const USAGE: &str = "\
usage: warmpool-bench --warm-state [--quick] [--iterations N] [--rounds N] [--out DIR]

  --iterations N   measured lookups per way of answering (default 4000; quick 600)
  --rounds N       the ways alternate in N rounds (default 10; quick 3)
  --out DIR        results directory (default bench/results); writes warm_state.{json,md}";

/// Parses the arguments after `--warm-state`.
pub fn parse(args: &[String]) -> Result<WarmOpts, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = WarmOpts {
        iterations: if quick { 600 } else { 4000 },
        rounds: if quick { 3 } else { 10 },
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
        args: args.to_vec(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || it.next().cloned().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|_| format!("not a number: {s}"));
        match a.as_str() {
            "--warm-state" | "--quick" => {}
            "--iterations" => o.iterations = num(v()?)?.max(10),
            "--rounds" => o.rounds = num(v()?)?.clamp(1, 100),
            "--out" => o.out = PathBuf::from(v()?),
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok(o)
}

/// One way of answering a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// The whole reference table by a query.
    QueryAll,
    /// The whole reference table from the warm-up data set.
    WarmAll,
    /// One row by a query.
    QueryPoint,
    /// One row through the query result cache (a hit after the first).
    CachedPoint,
    /// One value from the state store.
    StorePoint,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::QueryAll => "query (250 rows)",
            Way::WarmAll => "client.warm (250 rows)",
            Way::QueryPoint => "query_one (1 row)",
            Way::CachedPoint => "query_cached (1 row, hit)",
            Way::StorePoint => "state().get (1 value)",
        }
    }

    fn call(&self) -> &'static str {
        match self {
            Way::QueryAll => "client.query(ALL, &[])",
            Way::WarmAll => "client.warm(\"countries\")",
            Way::QueryPoint => "client.query_one(POINT, &[&code])",
            Way::CachedPoint => "client.query_cached(POINT, &[&code], 1 h)",
            Way::StorePoint => "client.state().get(\"country:<code>\")",
        }
    }

    async fn run(self, c: &Client, i: usize) -> Result<(), warmpool::Error> {
        let code = code(i % COUNTRIES);
        match self {
            Way::QueryAll => expect(c.query(ALL, &[]).await?.len() == COUNTRIES),
            Way::WarmAll => expect(c.warm("countries").await?.len() == COUNTRIES),
            Way::QueryPoint => expect(
                !c.query_one(POINT, &[&code])
                    .await?
                    .get::<_, String>(0)
                    .is_empty(),
            ),
            Way::CachedPoint => {
                let policy = CachePolicy::ttl(Duration::from_secs(3600));
                expect(c.query_cached(POINT, &[&code], policy).await?.len() == 1)
            }
            Way::StorePoint => expect(c.state().get(&format!("country:{code}")).await?.is_some()),
        }
    }
}

fn expect(ok: bool) -> Result<(), warmpool::Error> {
    assert!(ok, "a lookup returned the wrong result");
    Ok(())
}

fn code(i: usize) -> String {
    format!("C{i:03}")
}

#[derive(Serialize)]
struct Measured {
    way: String,
    call: String,
    latency: Summary,
}

#[derive(Serialize)]
struct Saving {
    lookup: String,
    baseline: String,
    warm: String,
    /// Baseline p50 minus warm p50, µs per invocation.
    saving_p50_us: f64,
    /// Baseline mean minus warm mean, µs per invocation.
    saving_mean_us: f64,
    /// Baseline p50 over warm p50.
    speedup_p50: f64,
}

#[derive(Serialize)]
struct Memory {
    entries: usize,
    value_bytes: usize,
    key_bytes: usize,
    /// What the store charges against WARMPOOL_STATE_MAX_BYTES for them.
    charged_bytes: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    rss_delta_kib: u64,
    rss_delta_per_entry_bytes: f64,
}

#[derive(Serialize)]
struct Results {
    command: String,
    loadavg_start: String,
    loadavg_end: String,
    iterations: usize,
    rounds: usize,
    measured: Vec<Measured>,
    savings: Vec<Saving>,
    memory: Memory,
}

/// The extension's resident set, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs the scenario and writes its results.
pub async fn run(opts: WarmOpts) {
    let loadavg_start = crate::report::loadavg();
    eprintln!("warm state: starting PostgreSQL and seeding {COUNTRIES} countries ...");
    let pg = PgServer::start();
    pg.tokio_client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE bench_countries (code text PRIMARY KEY, name text NOT NULL,
                 region text NOT NULL, currency text NOT NULL);
             INSERT INTO bench_countries
                 SELECT 'C' || lpad(i::text, 3, '0'), 'Country ' || i, 'Region ' || (i % 7),
                        'CU' || (i % 40)
                 FROM generate_series(0, {}) i;
             ANALYZE bench_countries;",
            COUNTRIES - 1
        ))
        .await
        .expect("seed");
    let warmup = serde_json::json!({ "countries": ALL }).to_string();
    let prepare = serde_json::json!([ALL, POINT]).to_string();
    let mut ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_LOG", "info"),
            ("WARMPOOL_WARMUP", &warmup),
            ("WARMPOOL_PREPARE", &prepare),
        ],
    );
    ext.wait_for_log("warm-up data loaded", Duration::from_secs(30));
    let client = ext.client().await;
    for i in 0..COUNTRIES {
        let code = code(i);
        client
            .state()
            .put(&format!("country:{code}"), format!("Country {i}"), None)
            .await
            .expect("put");
    }

    let ways = [
        Way::QueryAll,
        Way::WarmAll,
        Way::QueryPoint,
        Way::CachedPoint,
        Way::StorePoint,
    ];
    // Unmeasured: fills every cache (client statements, the result cache) and the allocator.
    for way in ways {
        for i in 0..COUNTRIES.max(200) {
            way.run(&client, i).await.expect("warm-up lookup");
        }
    }
    eprintln!(
        "warm state: {} lookups per way in {} rounds ...",
        opts.iterations, opts.rounds
    );
    let per_round = opts.iterations.div_ceil(opts.rounds);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    for round in 0..opts.rounds {
        for (w, way) in ways.iter().enumerate() {
            for i in 0..per_round {
                let started = Instant::now();
                way.run(&client, round * per_round + i)
                    .await
                    .expect("lookup");
                samples[w].push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let measured: Vec<Measured> = ways
        .iter()
        .zip(&samples)
        .map(|(way, s)| Measured {
            way: way.name().into(),
            call: way.call().into(),
            latency: Summary::of(s, 0),
        })
        .collect();
    let saving = |lookup: &str, base: usize, warm: usize| {
        let (b, w) = (&measured[base].latency, &measured[warm].latency);
        Saving {
            lookup: lookup.into(),
            baseline: measured[base].way.clone(),
            warm: measured[warm].way.clone(),
            saving_p50_us: b.p50_us - w.p50_us,
            saving_mean_us: b.mean_us - w.mean_us,
            speedup_p50: ratio(b.p50_us, w.p50_us),
        }
    };
    let savings = vec![
        saving("the whole reference table", 0, 1),
        saving("one country by code", 2, 3),
        saving("one country by code", 2, 4),
    ];

    eprintln!("warm state: {STORE_ENTRIES} entries in the state store ...");
    let pid = ext.pid();
    let rss_before_kib = rss_kib(pid);
    let value = vec![b'x'; VALUE_BYTES];
    let mut key_bytes = 0;
    for i in 0..STORE_ENTRIES {
        let key = format!("session:{i:05}");
        key_bytes += key.len();
        client
            .state()
            .put(&key, value.clone(), None)
            .await
            .expect("put");
    }
    assert!(
        client.state().get("session:00000").await.unwrap().is_some(),
        "nothing evicted"
    );
    let rss_after_kib = rss_kib(pid);
    let rss_delta_kib = rss_after_kib.saturating_sub(rss_before_kib);
    let memory = Memory {
        entries: STORE_ENTRIES,
        value_bytes: VALUE_BYTES,
        key_bytes,
        charged_bytes: key_bytes + STORE_ENTRIES * (VALUE_BYTES + warmpool_extension_overhead()),
        rss_before_kib,
        rss_after_kib,
        rss_delta_kib,
        rss_delta_per_entry_bytes: rss_delta_kib as f64 * 1024.0 / STORE_ENTRIES as f64,
    };

    let results = Results {
        command: format!("warmpool-bench {}", opts.args.join(" ")),
        loadavg_start,
        loadavg_end: crate::report::loadavg(),
        iterations: per_round * opts.rounds,
        rounds: opts.rounds,
        measured,
        savings,
        memory,
    };
    write(&opts.out, &results);
}

/// The state store's per-entry charge, as the extension documents it
/// (`WARMPOOL_STATE_MAX_BYTES` in the README).
fn warmpool_extension_overhead() -> usize {
    96
}

fn write(out: &Path, r: &Results) {
    std::fs::create_dir_all(out).expect("results dir");
    let json = out.join("warm_state.json");
    std::fs::write(&json, serde_json::to_string_pretty(r).expect("json")).expect("write");
    let md = out.join("warm_state.md");
    std::fs::write(&md, markdown(r)).expect("write");
    eprintln!("wrote {}\nwrote {}", json.display(), md.display());
}

fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Warm state: reference data from memory instead of a query\n"
    );
    let _ = writeln!(
        s,
        "`{}`: {} timed lookups per way, alternating in {} rounds, through the extension's \
         socket (local mode, one warm TLS connection to a private PostgreSQL on this machine). \
         Load average {} at the start, {} at the end.\n",
        r.command, r.iterations, r.rounds, r.loadavg_start, r.loadavg_end
    );
    let _ = writeln!(s, "| Way | Call | p50 | mean | p99 |");
    let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: |");
    for m in &r.measured {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {} | {} |",
            m.way,
            m.call,
            fmt_us(m.latency.p50_us),
            fmt_us(m.latency.mean_us),
            fmt_us(m.latency.p99_us)
        );
    }
    let _ = writeln!(
        s,
        "\nPer-invocation saving (the baseline measured in the same run):\n"
    );
    let _ = writeln!(s, "| Lookup | Baseline | From warm state | Saving (p50) | Saving (mean) | Baseline / warm (p50) |");
    let _ = writeln!(s, "| --- | --- | --- | ---: | ---: | ---: |");
    for v in &r.savings {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1}× |",
            v.lookup,
            v.baseline,
            v.warm,
            fmt_us(v.saving_p50_us),
            fmt_us(v.saving_mean_us),
            v.speedup_p50
        );
    }
    let m = &r.memory;
    let _ = writeln!(
        s,
        "\nExtension memory with {} state-store entries ({}-byte values, {} bytes of keys; the \
         store charges {:.1} MiB against `WARMPOOL_STATE_MAX_BYTES`): resident set {:.1} MiB \
         before, {:.1} MiB after, +{:.1} MiB, about {:.0} bytes per entry.",
        m.entries,
        m.value_bytes,
        m.key_bytes,
        m.charged_bytes as f64 / 1048576.0,
        m.rss_before_kib as f64 / 1024.0,
        m.rss_after_kib as f64 / 1024.0,
        m.rss_delta_kib as f64 / 1024.0,
        m.rss_delta_per_entry_bytes
    );
    s
}
