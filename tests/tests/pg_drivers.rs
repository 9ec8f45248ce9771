//! Drivers of other languages, unchanged, against a PostgreSQL-protocol endpoint: psycopg (sync
//! and async), asyncpg, Node's `pg` and `postgres`, pgJDBC, `psql` and `pgbench` (the Rust drivers
//! are in `pg_rust_drivers.rs`).
//!
//! Each driver runs a script of its own from `tests/drivers/` that takes the endpoint from the
//! libpq environment (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`) and goes through
//! one checklist: parameters of the common types, a unique violation, commit and rollback, a
//! prepared statement reused, 100,000 rows streamed, a cancel, COPY both ways, LISTEN/NOTIFY and
//! a session setting held across statements. A script prints one line per check and exits
//! non-zero if any failed; the test also counts the passed checks, so a script that stopped
//! early cannot pass.
//!
//! Which endpoint they talk to is decided in one place, [`target`]. The drivers are installed
//! on first use under this build's `target/tmp/drivers` (see `warmpool_tests::prereq`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use warmpool_tests::{prereq, Extension, PgServer};

/// A script that takes longer than this is stuck (a lost cancel would sleep 30 s per check);
/// it is killed and the test fails with what it printed.
const SCRIPT_LIMIT: Duration = Duration::from_secs(180);

/// How a driver reaches the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// The Unix socket `<dir>/.s.PGSQL.<port>`, which libpq-style drivers find from a
    /// directory in `PGHOST`.
    UnixSocket,
    /// TCP on loopback, with the endpoint's password: for drivers without Unix sockets
    /// (pgJDBC).
    Tcp,
}

/// Where a driver connects, in libpq's terms.
struct Target {
    /// A directory for a Unix socket, else a host name.
    host: String,
    port: u16,
    user: String,
    dbname: String,
    password: Option<String>,
    /// The process serving the endpoint, kept running as long as the target is used.
    _serving: Extension,
}

impl Target {
    /// The libpq environment for this target.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.dbname.clone()),
        ];
        if let Some(password) = &self.password {
            env.push(("PGPASSWORD", password.clone()));
        }
        env
    }
}

/// The endpoint under test: warmpool's, on its Unix socket or on its TCP listener.
fn target(pg: &PgServer, transport: Transport) -> Target {
    // A user name the database does not know: the extension logs in with its own credentials.
    let user = "any_function".to_string();
    match transport {
        Transport::UnixSocket => {
            let ext = Extension::start(pg, &[("WARMPOOL_MAX_SIZE", "8")]);
            Target {
                host: ext.dir().display().to_string(),
                port: 5432,
                user,
                dbname: pg.dbname().to_string(),
                password: None,
                _serving: ext,
            }
        }
        // Loopback without TLS (the driver's SSLRequest is answered N), the client
        // authenticated with SCRAM-SHA-256 against the endpoint's own password, which is not
        // the database's.
        Transport::Tcp => {
            let password = "endpoint-password-for-drivers";
            let (ext, port) =
                Extension::start_with_pg_tcp(pg, password, &[("WARMPOOL_MAX_SIZE", "8")]);
            Target {
                host: "127.0.0.1".to_string(),
                port,
                user,
                dbname: pg.dbname().to_string(),
                password: Some(password.to_string()),
                _serving: ext,
            }
        }
    }
}

/// Where the drivers are installed: under this build's target directory.
fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("drivers")
}

/// A script in `tests/drivers/`.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("drivers")
        .join(name)
}

/// What a finished program printed.
struct Finished {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` against `target` with only the target's libpq variables (none inherited), killing
/// it after [`SCRIPT_LIMIT`].
fn run(cmd: Command, target: &Target) -> Finished {
    run_with(cmd, target, |_| {})
}

/// [`run`], calling `during` with the child's pid while it runs.
fn run_with(mut cmd: Command, target: &Target, during: impl FnOnce(u32)) -> Finished {
    let inherited: Vec<_> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| k.to_string_lossy().starts_with("PG"))
        .collect();
    for k in inherited {
        cmd.env_remove(k);
    }
    cmd.envs(target.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let pid = child.id();
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let status = child.wait();
        let _ = done_tx.send(());
        (s, status)
    });
    during(pid);
    let timed_out = done_rx.recv_timeout(SCRIPT_LIMIT).is_err();
    if timed_out {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let (stdout, status) = waiter.join().expect("waiter thread");
    let stderr = stderr.join().expect("stderr thread");
    let status = status.unwrap_or_else(|e| panic!("waiting for {shown}: {e}"));
    eprintln!("{shown} ({status}):\n{stdout}{stderr}");
    assert!(
        !timed_out,
        "{shown} did not finish within {SCRIPT_LIMIT:?}:\n{stdout}{stderr}"
    );
    Finished {
        success: status.success(),
        stdout,
        stderr,
    }
}

/// Runs a driver script and asserts it passed all `checks` checks.
fn run_checklist(cmd: Command, target: &Target, checks: usize) -> Finished {
    let finished = run(cmd, target);
    let passed = finished
        .stdout
        .lines()
        .filter(|l| l.starts_with("ok "))
        .count();
    let failed: Vec<&str> = finished
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL "))
        .collect();
    assert!(
        finished.success && failed.is_empty(),
        "driver checks failed:\n{}\n{}",
        failed.join("\n"),
        finished.stderr
    );
    assert_eq!(
        passed, checks,
        "expected {checks} passed checks:\n{}{}",
        finished.stdout, finished.stderr
    );
    finished
}

fn python(script_name: &str) -> Command {
    let mut cmd = Command::new(prereq::python_drivers(&drivers_dir()));
    cmd.arg(script(script_name))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

fn node(script_name: &str) -> Command {
    let modules = prereq::node_drivers(&drivers_dir());
    let mut cmd = Command::new("node");
    cmd.arg(script(script_name)).env("NODE_PATH", modules);
    cmd
}

#[test]
fn psycopg_sync_and_async() {
    let pg = PgServer::start();
    let target = target(&pg, Transport::UnixSocket);
    run_checklist(python("psycopg_check.py"), &target, 20);
}

#[test]
fn asyncpg() {
    let pg = PgServer::start();
    let target = target(&pg, Transport::UnixSocket);
    run_checklist(python("asyncpg_check.py"), &target, 9);
}

#[test]
fn node_pg() {
    let pg = PgServer::start();
    let target = target(&pg, Transport::UnixSocket);
    run_checklist(node("pg_check.js"), &target, 9);
}

#[test]
fn node_postgres() {
    let pg = PgServer::start();
    let target = target(&pg, Transport::UnixSocket);
    run_checklist(node("postgres_check.js"), &target, 9);
}

#[test]
fn pgjdbc_over_tcp() {
    let jar = prereq::pgjdbc();
    let pg = PgServer::start();
    let target = target(&pg, Transport::Tcp);
    let mut cmd = Command::new("java");
    // A single source file runs without a separate javac step or class files left behind.
    cmd.arg("-cp").arg(jar).arg(script("PgJdbcCheck.java"));
    run_checklist(cmd, &target, 9);
}

#[test]
fn psql_script() {
    let pg = PgServer::start();
    let target = target(&pg, Transport::UnixSocket);
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(script("psql_check.sql"));
    let finished = run_checklist(cmd, &target, 7);
    for payload in ["from self", "from self again"] {
        let line = format!(" with payload \"{payload}\" received from server process with PID ");
        assert!(
            finished.stdout.contains(&line),
            "psql printed no notification with payload {payload:?}:\n{}",
            finished.stdout
        );
    }
}

/// psql's Ctrl-C: libpq sends a CancelRequest with the key the session was given, and the
/// statement ends in 57014.
#[test]
fn psql_cancel() {
    let pg = PgServer::start();
    let target = target(&pg, Transport::UnixSocket);
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "VERBOSITY=sqlstate",
    ])
    .args(["-c", "SELECT pg_sleep(30) AS cancel_probe"]);
    let sleeping = "SELECT count(*) FROM pg_stat_activity \
                    WHERE wait_event = 'PgSleep' AND query LIKE '%AS cancel_probe'";
    let finished = run_with(cmd, &target, |pid| {
        // The server's own view says when the statement runs; a Ctrl-C before that would
        // only stop psql.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while pg.superuser_psql(sleeping) != "1" {
            assert!(
                std::time::Instant::now() < deadline,
                "psql's statement never started"
            );
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    });
    assert!(!finished.success, "psql succeeded despite the cancel");
    assert!(
        finished.stderr.contains("57014"),
        "psql's statement did not end in 57014:\n{}",
        finished.stderr
    );
}

/// `pgbench -i`, then select-only runs in each query mode and a TPC-B-like run, none with a
/// failed transaction.
#[test]
fn pgbench_modes() {
    prereq::pgbench();
    let pg = PgServer::start();
    let target = target(&pg, Transport::UnixSocket);
    let mut init = Command::new("pgbench");
    init.args(["-i", "-q", "-s", "1"]);
    let finished = run(init, &target);
    assert!(finished.success, "pgbench -i failed:\n{}", finished.stderr);

    const CLIENTS: usize = 2;
    const PER_CLIENT: usize = 200;
    for (mode, select_only) in [
        ("simple", true),
        ("extended", true),
        ("prepared", true),
        ("prepared", false),
    ] {
        let mut cmd = Command::new("pgbench");
        cmd.args(["-n", "-M", mode, "-c", &CLIENTS.to_string(), "-j", "2"])
            .args(["-t", &PER_CLIENT.to_string()]);
        if select_only {
            cmd.arg("-S");
        }
        let finished = run(cmd, &target);
        assert!(
            finished.success,
            "pgbench -M {mode} failed:\n{}{}",
            finished.stdout, finished.stderr
        );
        let total = CLIENTS * PER_CLIENT;
        let processed = format!("number of transactions actually processed: {total}/{total}");
        assert!(
            finished.stdout.contains(&processed),
            "pgbench -M {mode}: expected `{processed}`:\n{}",
            finished.stdout
        );
        assert!(
            finished
                .stdout
                .contains("number of failed transactions: 0 (0.000%)"),
            "pgbench -M {mode}: failed transactions:\n{}",
            finished.stdout
        );
    }
}

/// Runs a heal script against the endpoint: each time it prints `PID <n>`, the extension is
/// frozen, server process `n` is ended and waited for, the extension thawed, and the script
/// told `GO`. Passes when the script exits 0 with `oks` ok lines and no FAIL line.
fn run_heal(mut cmd: Command, pg: &PgServer, target: &Target, oks: usize) {
    use std::io::{BufRead, BufReader, Write};
    let ext = &target._serving;
    for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("PG")) {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .envs(target.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the heal script");
    let pid = child.id();
    // The script is killed if it hangs, so the test fails instead.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(SCRIPT_LIMIT).is_err() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut out = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line.expect("the script's output");
        out.push_str(&line);
        out.push('\n');
        if let Some(n) = line.strip_prefix("PID ") {
            let n: i32 = n.trim().parse().expect("a pid");
            {
                let _frozen = ext.freeze();
                pg.terminate_backend(n.into());
            }
            writeln!(stdin, "GO").expect("tell the script to go on");
        }
    }
    let status = child.wait().expect("wait for the script");
    let _ = done_tx.send(());
    watchdog.join().expect("watchdog");
    eprintln!("{out}");
    assert!(
        status.success() && !out.contains("FAIL") && out.matches("ok   ").count() == oks,
        "the heal script failed ({status}):\n{out}\nextension log:\n{}",
        ext.logs()
    );
    // What the driver may show only as a closed connection, the extension said by name.
    assert!(
        ext.logs()
            .contains("its state cannot be restored lost=an open transaction"),
        "{}",
        ext.logs()
    );
}

#[test]
fn asyncpg_session_healed_after_a_freeze() {
    let pg = PgServer::start();
    let target = target(&pg, Transport::UnixSocket);
    run_heal(python("asyncpg_heal.py"), &pg, &target, 2);
}

#[test]
fn node_postgres_session_healed_after_a_freeze() {
    let pg = PgServer::start();
    let target = target(&pg, Transport::UnixSocket);
    run_heal(node("postgres_heal.js"), &pg, &target, 2);
}

#[test]
fn pgjdbc_session_healed_after_a_freeze() {
    let jar = prereq::pgjdbc();
    let pg = PgServer::start();
    let target = target(&pg, Transport::Tcp);
    let mut cmd = Command::new("java");
    cmd.arg("-cp").arg(jar).arg(script("PgJdbcHeal.java"));
    run_heal(cmd, &pg, &target, 2);
}
