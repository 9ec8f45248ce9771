//! The micro-benchmark of the socket hop: the same statements through warmpool and on pooled
//! tokio-postgres connections inside this process, against the same server, in the same run;
//! plus the floor, a raw Unix-socket ping-pong between two processes.

use std::future::Future;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use warmpool_tests::PgServer;

use crate::stats::Summary;

/// The 100-row statement: a range of the seeded table.
pub(crate) const ROWS100: &str =
    "SELECT id, name, balance FROM bench_accounts WHERE id BETWEEN $1 AND $1 + 99";
const SELECT1: &str = "SELECT 1";
/// Direct and warmpool loads alternate in this many rounds, so that bursts of other work on the
/// machine touch both alike.
const ROUNDS: u32 = 10;
/// Bytes per ping-pong message, about the size of a small request frame.
const PING_BYTES: usize = 32;

/// One load: `concurrency` tasks, each running one statement after another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Load {
    pub concurrency: usize,
    pub latency: Summary,
    pub ops_per_s: f64,
}

/// One statement, direct and through warmpool, at one concurrency.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub statement: String,
    pub concurrency: usize,
    pub direct: Load,
    pub warmpool: Load,
    /// warmpool's p50 minus the direct p50, µs per query.
    pub overhead_p50_us: f64,
    /// warmpool's mean minus the direct mean (mean = concurrency / throughput), µs per query.
    pub overhead_mean_us: f64,
    /// warmpool's throughput over the direct throughput.
    pub throughput_ratio: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MicroResults {
    pub seconds_per_load: f64,
    /// Raw Unix-socket ping-pong between two processes, one at a time.
    pub floor: Summary,
    /// `Client::ping` through warmpool: the hop without a database.
    pub warmpool_ping: Load,
    pub comparisons: Vec<Comparison>,
    /// Extension start to socket bound ("listening"), median of several starts, µs.
    pub start_to_listening_us: f64,
    /// Extension start to its warm connection open, median, µs.
    pub start_to_warm_us: f64,
    /// The extension's peak RSS after the loads (pool of 4 warm), KiB.
    pub extension_peak_rss_kib: Option<u64>,
}

pub(crate) type Op =
    Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Runs `op(task)` in `concurrency` tasks for `duration` (at most `max_ops` each), after
/// `warmup` untimed calls per task.
pub(crate) async fn load(
    op: Op,
    concurrency: usize,
    duration: Duration,
    warmup: usize,
    max_ops: usize,
) -> (Vec<f64>, usize, usize, Duration) {
    let mut tasks = Vec::new();
    let started = Instant::now();
    let deadline = started + duration;
    for t in 0..concurrency {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..warmup {
                let _ = op(t).await;
            }
            let mut samples = Vec::with_capacity(4096);
            let mut errors = 0;
            let mut busy = Duration::ZERO;
            while samples.len() + errors < max_ops && Instant::now() < deadline {
                let s = Instant::now();
                let r = op(t).await;
                let d = s.elapsed();
                busy += d;
                match r {
                    Ok(()) => samples.push(d.as_secs_f64() * 1e6),
                    Err(_) => errors += 1,
                }
            }
            (samples, errors, busy)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut busy = Duration::ZERO;
    for t in tasks {
        let (s, e, b) = t.await.expect("load task");
        all.extend(s);
        errors += e;
        busy = busy.max(b);
    }
    let n = all.len();
    (all, n, errors, busy)
}

/// Alternates direct and warmpool loads in `rounds` rounds, merging the samples, so drift on
/// the machine touches both alike.
async fn compare(
    statement: &str,
    direct: Op,
    warmpool: Op,
    concurrency: usize,
    per_load: Duration,
    rounds: u32,
    warmup: usize,
) -> Comparison {
    let mut d = (Vec::new(), 0usize, Duration::ZERO);
    let mut w = (Vec::new(), 0usize, Duration::ZERO);
    for _ in 0..rounds {
        for (op, acc) in [(&direct, &mut d), (&warmpool, &mut w)] {
            let (s, _, e, busy) = load(
                op.clone(),
                concurrency,
                per_load / rounds,
                warmup,
                1_000_000,
            )
            .await;
            acc.0.extend(s);
            acc.1 += e;
            acc.2 += busy;
        }
    }
    let summarise = |(samples, errors, busy): (Vec<f64>, usize, Duration)| Load {
        concurrency,
        ops_per_s: samples.len() as f64 / busy.as_secs_f64().max(1e-9),
        latency: Summary::of(&samples, errors),
    };
    let direct = summarise(d);
    let warmpool = summarise(w);
    Comparison {
        statement: statement.to_owned(),
        concurrency,
        overhead_p50_us: warmpool.latency.p50_us - direct.latency.p50_us,
        overhead_mean_us: (concurrency as f64 * 1e6 / warmpool.ops_per_s)
            - (concurrency as f64 * 1e6 / direct.ops_per_s),
        throughput_ratio: warmpool.ops_per_s / direct.ops_per_s,
        direct,
        warmpool,
    }
}

struct DirectConn {
    client: tokio_postgres::Client,
    select1: tokio_postgres::Statement,
    rows100: tokio_postgres::Statement,
}

pub async fn run(
    pg: &PgServer,
    extension: &Path,
    per_load: Duration,
    concurrencies: &[usize],
    floor_iters: usize,
) -> MicroResults {
    let max_conc = concurrencies.iter().copied().max().unwrap_or(1);
    let (start_to_listening_us, start_to_warm_us) = start_times(pg, extension, 5);
    let mut floor_peer = Floor::start().await;
    let size = max_conc.to_string();
    let ext = Ext::start(
        pg,
        extension,
        &[
            ("WARMPOOL_MAX_SIZE", size.as_str()),
            ("WARMPOOL_WARM_SIZE", size.as_str()),
        ],
    );
    ext.wait_for("pool warmed", Duration::from_secs(30))
        .expect("the extension opened its warm connections");

    // The in-process pool: one TLS connection per task, statements prepared once.
    let mut direct = Vec::new();
    for _ in 0..max_conc {
        let client = pg.tokio_client().await;
        let select1 = client.prepare(SELECT1).await.expect("prepare");
        let rows100 = client.prepare(ROWS100).await.expect("prepare");
        direct.push(DirectConn {
            client,
            select1,
            rows100,
        });
    }
    let direct = Arc::new(direct);
    let wp = warmpool::Client::connect_to(&ext.socket)
        .await
        .expect("connect to the extension");
    let wp_select1 = wp.prepare(SELECT1).await.expect("prepare through warmpool");
    let wp_rows100 = wp.prepare(ROWS100).await.expect("prepare through warmpool");

    let d1: Op = {
        let direct = direct.clone();
        Arc::new(move |t| {
            let direct = direct.clone();
            Box::pin(async move {
                let c = &direct[t];
                let row = c
                    .client
                    .query_one(&c.select1, &[])
                    .await
                    .map_err(|e| e.to_string())?;
                let _: i32 = row.get(0);
                Ok(())
            })
        })
    };
    let w1: Op = {
        let (wp, st) = (wp.clone(), wp_select1.clone());
        Arc::new(move |_| {
            let (wp, st) = (wp.clone(), st.clone());
            Box::pin(async move {
                let row = wp.query_one(&st, &[]).await.map_err(|e| e.to_string())?;
                let _: i32 = row.get(0);
                Ok(())
            })
        })
    };
    let d100: Op = {
        let direct = direct.clone();
        Arc::new(move |t| {
            let direct = direct.clone();
            Box::pin(async move {
                let c = &direct[t];
                let rows = c
                    .client
                    .query(&c.rows100, &[&1000i32])
                    .await
                    .map_err(|e| e.to_string())?;
                consume_pg(&rows)
            })
        })
    };
    let w100: Op = {
        let (wp, st) = (wp.clone(), wp_rows100.clone());
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
    let ping: Op = {
        let wp = wp.clone();
        Arc::new(move |_| {
            let wp = wp.clone();
            Box::pin(async move { wp.ping().await.map_err(|e| e.to_string()) })
        })
    };

    let mut comparisons = Vec::new();
    for &c in concurrencies {
        eprintln!("  micro: SELECT 1 at concurrency {c}");
        comparisons
            .push(compare("SELECT 1", d1.clone(), w1.clone(), c, per_load, ROUNDS, 50).await);
        eprintln!("  micro: 100-row select at concurrency {c}");
        comparisons.push(
            compare(
                "100-row select",
                d100.clone(),
                w100.clone(),
                c,
                per_load,
                ROUNDS,
                50,
            )
            .await,
        );
    }
    // The floor and warmpool's ping alternate in the same rounds, so that both meet the same
    // machine: on a small VM a wake-up costs a few microseconds when the two processes share a
    // core and tens when it must wake another, and which one a phase gets can change from one
    // phase to the next.
    eprintln!("  micro: warmpool ping and the socket floor, alternating");
    let (mut floor_samples, mut floor_errors) = (Vec::new(), 0);
    let (mut ping_samples, mut ping_errors, mut ping_busy) = (Vec::new(), 0, Duration::ZERO);
    let floor_round = (floor_iters / ROUNDS as usize).max(1);
    for _ in 0..ROUNDS {
        let (peer, (samples, errors)) = floor_peer.round_on_worker(floor_round).await;
        floor_peer = peer;
        floor_samples.extend(samples);
        floor_errors += errors;
        let (samples, _, errors, busy) =
            load(ping.clone(), 1, per_load / 2 / ROUNDS, 50, 1_000_000).await;
        ping_samples.extend(samples);
        ping_errors += errors;
        ping_busy += busy;
    }
    let warmpool_ping = Load {
        concurrency: 1,
        ops_per_s: ping_samples.len() as f64 / ping_busy.as_secs_f64().max(1e-9),
        latency: Summary::of(&ping_samples, ping_errors),
    };
    assert!(
        !floor_samples.is_empty(),
        "the floor's echo process stopped answering ({floor_errors} errors)"
    );
    let floor = Summary::of(&floor_samples, floor_errors);
    floor_peer.stop().await;
    let extension_peak_rss_kib = crate::setup::peak_rss_kib(ext.pid());
    drop(wp);
    drop(ext);
    drop(direct);

    MicroResults {
        seconds_per_load: per_load.as_secs_f64(),
        floor,
        warmpool_ping,
        comparisons,
        start_to_listening_us,
        start_to_warm_us,
        extension_peak_rss_kib,
    }
}

/// One operation on a tokio-postgres connection, straight to the server and through the delay
/// relay, alternated in rounds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Relayed {
    pub operation: String,
    /// The relay's round-trip time, ms (0: the relay's own cost).
    pub rtt_ms: f64,
    pub direct: Load,
    pub relayed: Load,
    /// The relayed p50 minus the direct p50, µs.
    pub added_p50_us: f64,
    /// The relayed mean minus the direct mean, µs.
    pub added_mean_us: f64,
}

/// What the simulated network costs by itself: at a delay of 0 the relay's own cost, per round
/// trip (`SELECT 1`) and per connect (TLS + SCRAM); at each delay, what it adds to a round trip.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelayCost {
    pub seconds_per_load: f64,
    pub measured: Vec<Relayed>,
}

/// Measures the relay at a delay of 0 (`SELECT 1` and a connect) and `SELECT 1` at each non-zero
/// round-trip time in `rtts_ms`, each against the same operation straight to the server.
pub async fn relay_cost(pg: &PgServer, per_load: Duration, rtts_ms: &[f64]) -> RelayCost {
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], pg.port()));
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(pg.rustls_config());
    // A connect takes milliseconds: even a smoke run's loads must be long enough to hold some.
    let per_load = per_load.max(Duration::from_millis(500));
    let mut measured = Vec::new();
    let mut delays = vec![0.0];
    delays.extend(rtts_ms.iter().copied().filter(|&r| r > 0.0));
    for rtt_ms in delays {
        let relay = crate::relay::Relay::start(target, Duration::from_secs_f64(rtt_ms / 1e3))
            .expect("start the delay relay");
        let relayed_config = config_on_port(pg, relay.port());
        let mut ops = vec![(
            "SELECT 1",
            select1(pg.tokio_config(), tls.clone()).await,
            select1(relayed_config.clone(), tls.clone()).await,
        )];
        if rtt_ms == 0.0 {
            ops.push((
                "connect (TLS + SCRAM)",
                connect(pg.tokio_config(), tls.clone()),
                connect(relayed_config, tls.clone()),
            ));
        }
        for (operation, direct, relayed) in ops {
            eprintln!("  relay at {rtt_ms} ms: {operation}, direct and relayed");
            // Few warm-up calls: a connect takes milliseconds, and each round is short.
            let c = compare(operation, direct, relayed, 1, per_load, ROUNDS, 2).await;
            measured.push(Relayed {
                operation: operation.to_owned(),
                rtt_ms,
                added_p50_us: c.overhead_p50_us,
                added_mean_us: c.overhead_mean_us,
                direct: c.direct,
                relayed: c.warmpool,
            });
        }
        drop(relay);
    }
    RelayCost {
        seconds_per_load: per_load.as_secs_f64(),
        measured,
    }
}

/// The server's connection settings with another port (`Config::port` adds a port, for a list of
/// hosts, rather than replacing it).
fn config_on_port(pg: &PgServer, port: u16) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(pg.host())
        .port(port)
        .user(pg.user())
        .password(pg.password())
        .dbname(pg.dbname())
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(10));
    config
}

/// `SELECT 1`, prepared, on one connection opened with `config`.
async fn select1(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
) -> Op {
    let (client, connection) = config.connect(tls).await.expect("connect");
    tokio::spawn(connection);
    let statement = client.prepare(SELECT1).await.expect("prepare");
    let client = Arc::new(client);
    Arc::new(move |_| {
        let (client, statement) = (client.clone(), statement.clone());
        Box::pin(async move {
            let row = client
                .query_one(&statement, &[])
                .await
                .map_err(|e| e.to_string())?;
            let _: i32 = row.get(0);
            Ok(())
        })
    })
}

/// A connect (TLS + SCRAM) with `config`; the connection is closed outside the timed part.
fn connect(config: tokio_postgres::Config, tls: tokio_postgres_rustls::MakeRustlsConnect) -> Op {
    let config = Arc::new(config);
    Arc::new(move |_| {
        let (config, tls) = (config.clone(), tls.clone());
        Box::pin(async move {
            let (client, connection) = config.connect(tls).await.map_err(|e| e.to_string())?;
            drop(client);
            tokio::spawn(connection);
            Ok(())
        })
    })
}

pub(crate) fn consume_pg(rows: &[tokio_postgres::Row]) -> Result<(), String> {
    let mut sum = 0i64;
    for r in rows {
        let id: i32 = r.get(0);
        let name: &str = r.get(1);
        let balance: i64 = r.get(2);
        sum += i64::from(id) + name.len() as i64 + balance;
    }
    (rows.len() == 100 && sum > 0)
        .then_some(())
        .ok_or_else(|| "expected 100 rows".into())
}

pub(crate) fn consume_wp(rows: &[warmpool::Row]) -> Result<(), String> {
    let mut sum = 0i64;
    for r in rows {
        let id: i32 = r.get(0);
        let name: &str = r.get(1);
        let balance: i64 = r.get(2);
        sum += i64::from(id) + name.len() as i64 + balance;
    }
    (rows.len() == 100 && sum > 0)
        .then_some(())
        .ok_or_else(|| "expected 100 rows".into())
}

/// Medians over `n` fresh starts of the extension (local mode, one warm connection): time to
/// a socket that accepts connections, and to the "pool warmed" log line.
fn start_times(pg: &PgServer, extension: &Path, n: usize) -> (f64, f64) {
    let mut listening = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let ext = Ext::start(pg, extension, &[("WARMPOOL_WARM_SIZE", "1")]);
        let deadline = started + Duration::from_secs(10);
        while UnixStream::connect(&ext.socket).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        listening.push(started.elapsed().as_secs_f64() * 1e6);
        if ext.wait_for("pool warmed", Duration::from_secs(10)).is_ok() {
            warm.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    (
        Summary::of(&listening, 0).p50_us,
        Summary::of(&warm, 0).p50_us,
    )
}

/// The extension in local mode as a child process, with its log read on a thread. Stopped with
/// SIGTERM (then SIGKILL) when dropped.
pub(crate) struct Ext {
    child: std::process::Child,
    pub(crate) socket: std::path::PathBuf,
    lines: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Ext {
    pub(crate) fn start(pg: &PgServer, binary: &Path, env: &[(&str, &str)]) -> Ext {
        let dir = tempfile::Builder::new()
            .prefix("warmpool-bench-ext-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let socket = dir.path().join("warmpool.sock");
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(pg.env())
            // Settings under test, such as WARMPOOL_RUNTIME_THREADS, from the benchmark's own
            // environment; the ones below are the benchmark's.
            .envs(std::env::vars().filter(|(k, _)| k.starts_with("WARMPOOL_")))
            .env("WARMPOOL_LOG", "info")
            .env("WARMPOOL_SOCKET", &socket)
            .env(
                "WARMPOOL_PG_SOCKET_DIR",
                socket.parent().expect("the socket's directory"),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start the extension");
        // Logs go to stdout.
        let stderr = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ext {
            child,
            socket,
            lines,
            _dir: dir,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines that arrived since the last read of them.
    pub(crate) fn drain(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Waits for a log line containing `needle`.
    pub(crate) fn wait_for(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("no {needle:?} from the extension: {e}")),
            }
        }
    }
}

impl Drop for Ext {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The floor: a small message and its echo over a Unix socket between this process and a
/// child, the least a hop can cost on the machine.
///
/// Both ends do their I/O the way the hop does: this end on the benchmark's tokio runtime, as
/// the warmpool client, the child on a one-thread tokio runtime, as the extension. The child is
/// started once, before the loads, and lives as long as the extension: on a small VM a wake-up
/// costs a few microseconds when both processes share a core and tens when another core must
/// be woken, and where the scheduler keeps a process depends on how long it has run beside
/// the other.
pub(crate) struct Floor {
    stream: tokio::net::UnixStream,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Floor {
    pub(crate) async fn start() -> Floor {
        let dir = tempfile::Builder::new()
            .prefix("warmpool-bench-floor-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let path = dir.path().join("floor.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind floor socket");
        let exe = std::env::current_exe().expect("current_exe");
        let child = Command::new(exe)
            .arg("--pingpong-echo")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the echo process");
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the echo process did not connect")
            .expect("accept");
        Floor {
            stream,
            child,
            _dir: dir,
        }
    }

    /// [`Floor::round`] on a worker thread, as the loads' tasks run: the future `block_on`
    /// drives runs on a thread that is woken by the workers, one more wake-up per message.
    pub(crate) async fn round_on_worker(self, iters: usize) -> (Floor, (Vec<f64>, usize)) {
        tokio::spawn(async move {
            let mut floor = self;
            let out = floor.round(iters).await;
            (floor, out)
        })
        .await
        .expect("floor task")
    }

    /// `iters` round trips after a warm-up; their times in microseconds, and the errors.
    pub(crate) async fn round(&mut self, iters: usize) -> (Vec<f64>, usize) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let msg = [7u8; PING_BYTES];
        let mut buf = [0u8; PING_BYTES];
        let mut samples = Vec::with_capacity(iters);
        let stop = Instant::now() + Duration::from_secs(20);
        for i in 0..iters + 100 {
            if Instant::now() > stop {
                break;
            }
            let s = Instant::now();
            let ok = self.stream.write_all(&msg).await.is_ok()
                && self.stream.read_exact(&mut buf).await.is_ok();
            let d = s.elapsed().as_secs_f64() * 1e6;
            if !ok {
                return (samples, 1);
            }
            if i >= 100 {
                samples.push(d);
            }
        }
        (samples, 0)
    }

    /// Hangs up; the child exits once it reads the end of the stream.
    pub(crate) async fn stop(self) {
        let Floor {
            stream, mut child, ..
        } = self;
        drop(stream);
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    }
}

/// A [`Floor`] pair driven from a thread of its own with blocking I/O, as each pgbench thread
/// drives its connection: for the floor at a concurrency, many such pairs at once.
pub(crate) struct BlockingFloor {
    stream: UnixStream,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Floor {
    /// The same pair (the same child), for [`concurrent_round`].
    pub(crate) fn into_blocking(self) -> BlockingFloor {
        let Floor {
            stream,
            child,
            _dir,
        } = self;
        let stream = stream.into_std().expect("the floor's socket");
        stream
            .set_nonblocking(false)
            .expect("a blocking floor socket");
        BlockingFloor {
            stream,
            child,
            _dir,
        }
    }
}

impl BlockingFloor {
    fn ping(&mut self, msg: &[u8; PING_BYTES], buf: &mut [u8; PING_BYTES]) -> bool {
        use std::io::{Read, Write};
        self.stream.write_all(msg).is_ok() && self.stream.read_exact(buf).is_ok()
    }

    /// Hangs up; the child exits once it reads the end of the stream.
    pub(crate) fn stop(self) {
        let BlockingFloor {
            stream, mut child, ..
        } = self;
        drop(stream);
        let _ = child.wait();
    }
}

/// Round trips on all `pairs` at once for `window`, each pair's client on a thread of its own,
/// after a warm-up of each: the round trips' times in microseconds, and the errors. The floor
/// of a hop when as many run together on the same cores: N pairs for N clients.
pub(crate) fn concurrent_round(pairs: &mut [BlockingFloor], window: Duration) -> (Vec<f64>, usize) {
    let start = std::sync::Barrier::new(pairs.len());
    let outcomes: Vec<(Vec<f64>, usize)> = std::thread::scope(|scope| {
        let threads: Vec<_> = pairs
            .iter_mut()
            .map(|pair| {
                let start = &start;
                scope.spawn(move || {
                    let msg = [7u8; PING_BYTES];
                    let mut buf = [0u8; PING_BYTES];
                    let warm = (0..100).all(|_| pair.ping(&msg, &mut buf));
                    // Every pair waits for the others, so the window sees all of them at once.
                    start.wait();
                    if !warm {
                        return (Vec::new(), 1);
                    }
                    let mut samples = Vec::with_capacity(16 * 1024);
                    let stop = Instant::now() + window;
                    while Instant::now() < stop {
                        let s = Instant::now();
                        if !pair.ping(&msg, &mut buf) {
                            return (samples, 1);
                        }
                        samples.push(s.elapsed().as_secs_f64() * 1e6);
                    }
                    (samples, 0)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("floor thread"))
            .collect()
    });
    let errors = outcomes.iter().map(|(_, e)| e).sum();
    (outcomes.into_iter().flat_map(|(s, _)| s).collect(), errors)
}

/// The child side of [`Floor`]: echoes fixed-size messages until the parent hangs up,
/// on a one-thread tokio runtime like the extension's.
pub fn echo(path: &Path) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let Ok(mut stream) = tokio::net::UnixStream::connect(path).await else {
            return;
        };
        // No timeout: it waits through the loads, and the end of the stream (the parent hung
        // up or died) ends it.
        let mut buf = [0u8; PING_BYTES];
        while stream.read_exact(&mut buf).await.is_ok() {
            if stream.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
}
