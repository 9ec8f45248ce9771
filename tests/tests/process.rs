//! The extension as a process: start-up checks, its socket file, the version flag, shutdown on
//! SIGTERM, and a database that goes away and comes back.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::net::{UnixListener, UnixSocket, UnixStream};
use warmpool::SqlState;
use warmpool_tests::{ext, Extension, PgServer};

/// A guard against a process that should have exited but serves on: not a timing assertion.
const EXIT_GUARD: Duration = Duration::from_secs(30);

/// A guard for waiting on the server log.
const LOG_GUARD: Duration = Duration::from_secs(30);

/// Runs the extension binary with exactly `env` (plus PATH) and `args` until it exits, and
/// returns its output. A process still running after [`EXIT_GUARD`] is killed and the test fails.
fn run_to_exit(args: &[&str], env: &[(String, String)]) -> Output {
    let child = Command::new(ext::binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // These tests are about the extension's own socket: the PostgreSQL endpoint is off.
        .env("WARMPOOL_PG_SOCKET_DIR", "")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the extension binary");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(EXIT_GUARD) {
        Ok(out) => out.expect("wait for the extension"),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let out = rx.recv().expect("waiter thread").expect("wait");
            panic!(
                "the extension was still running after {EXIT_GUARD:?} where it should have exited; \
                 stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `env` with `name` set to `value` (or removed, for `None`).
fn with(env: &[(String, String)], name: &str, value: Option<&str>) -> Vec<(String, String)> {
    let mut env: Vec<_> = env.iter().filter(|(k, _)| k != name).cloned().collect();
    if let Some(v) = value {
        env.push((name.into(), v.into()));
    }
    env
}

/// Runs the binary, expecting it to refuse to start; returns stderr.
fn refused(env: &[(String, String)]) -> String {
    let out = run_to_exit(&[], env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "the extension exited successfully: {:?}\n{stderr}",
        out.status
    );
    assert!(
        out.status.code().is_some(),
        "the extension died of a signal rather than exiting: {:?}\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked"),
        "a refusal must not be a panic:\n{stderr}"
    );
    stderr
}

/// PIDs of the backends that serve the extension (the pool's application_name).
async fn warmpool_backends(admin: &tokio_postgres::Client) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'warmpool' ORDER BY pid",
            &[],
        )
        .await
        .expect("query pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Server log lines of backend `pid` ([`server_logging_disconnections`] sets `log_line_prefix`
/// to `%m [%p] `).
fn backend_lines(log: &str, pid: i32) -> Vec<&str> {
    let tag = format!("[{pid}] ");
    log.lines().filter(|l| l.contains(&tag)).collect()
}

/// Waits until the server has logged the disconnection of every backend in `pids`
/// (`log_disconnections = on`), and returns the log. PostgreSQL logs a disconnection after the
/// backend has left pg_stat_activity, so afterwards none of them is listed there.
fn wait_for_disconnections(pg: &PgServer, pids: &[i32]) -> String {
    let deadline = Instant::now() + LOG_GUARD;
    loop {
        let log = fs::read_to_string(pg.log_path()).unwrap_or_default();
        let all_gone = pids.iter().all(|pid| {
            backend_lines(&log, *pid)
                .iter()
                .any(|l| l.contains("disconnection: session time"))
        });
        if all_gone {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "backends {pids:?} did not all disconnect within {LOG_GUARD:?}; server log:\n{}",
            pg.log_tail(40)
        );
        // The server log is a file with no change notification: poll it.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The log lines that say a backend's client went away without a Terminate message: a clean
/// EOF without one, or (as PostgreSQL 15 logs a killed TLS client) a reset.
fn unclean_lines<'a>(log: &'a str, pids: &[i32]) -> Vec<&'a str> {
    pids.iter()
        .flat_map(|pid| backend_lines(log, *pid))
        .filter(|l| {
            l.contains("unexpected EOF on client connection")
                || l.contains("could not receive data from client")
                || l.contains("SSL error")
        })
        .collect()
}

/// A server that logs each backend's exit with its PID.
fn server_logging_disconnections() -> PgServer {
    let pg = PgServer::start();
    pg.set_config("log_line_prefix", "%m [%p] ");
    pg.set_config("log_disconnections", "on");
    pg
}

#[test]
fn bad_config_stops_startup_naming_the_variable() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("warmpool.sock");
    let base = with(
        &pg.env(),
        "WARMPOOL_SOCKET",
        Some(&socket.display().to_string()),
    );

    for (variable, value, expected) in [
        (
            "WARMPOOL_MAX_SIZE",
            Some("lots"),
            &["WARMPOOL_MAX_SIZE", "lots"][..],
        ),
        (
            "PGSSLMODE",
            Some("bogus"),
            &["PGSSLMODE", "bogus", "verify-full"][..],
        ),
        ("PGHOST", None, &["PGHOST", "DATABASE_URL"][..]),
    ] {
        let stderr = refused(&with(&base, variable, value));
        for word in expected {
            assert!(
                stderr.contains(word),
                "{variable}={value:?}: the message should mention {word}:\n{stderr}"
            );
        }
        assert!(
            !socket.exists(),
            "{variable}={value:?}: the socket was bound anyway"
        );
    }

    // Control: the same environment without a bad setting starts and listens.
    let ext = Extension::start_with_env(base);
    assert!(fs::symlink_metadata(&socket)
        .unwrap()
        .file_type()
        .is_socket());
    drop(ext);
}

#[test]
fn version_flag_prints_the_version() {
    // No configuration at all: --version needs none.
    let out = run_to_exit(&["--version"], &[]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    let line = stdout.trim_end();
    assert_eq!(line.lines().count(), 1, "{stdout:?}");
    let version = line
        .strip_prefix("warmpool ")
        .unwrap_or_else(|| panic!("expected `warmpool <version>`, got {line:?}"));
    let parts: Vec<&str> = version.split('.').collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u64>().is_ok()),
        "not a x.y.z version: {version:?}"
    );
    // The workspace gives every crate the same version.
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn socket_file_is_mode_0600() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let meta = fs::symlink_metadata(ext.socket()).expect("socket file");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o600,
        "socket mode {:o}",
        meta.permissions().mode()
    );
    let me = fs::metadata("/proc/self").expect("/proc/self").uid();
    assert_eq!(meta.uid(), me, "the socket belongs to the extension's user");
}

#[tokio::test]
async fn stale_socket_file_is_replaced() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("warmpool.sock");
    // A socket file left by a process that died: bound, then closed without unlinking.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let stale = fs::symlink_metadata(&socket).expect("the stale file stays");
    assert!(stale.file_type().is_socket());
    // A second name keeps the stale inode allocated, so a new socket cannot reuse its number
    // and "a different inode" really means "replaced".
    fs::hard_link(&socket, dir.path().join("stale.sock")).expect("link the stale socket");

    let path = socket.display().to_string();
    let ext = Extension::start(&pg, &[("WARMPOOL_SOCKET", &path)]);
    assert!(
        ext.logs().contains("replacing a stale socket file"),
        "{}",
        ext.logs()
    );
    let now = fs::symlink_metadata(&socket).expect("socket file");
    assert!(now.file_type().is_socket());
    assert_ne!(now.ino(), stale.ino(), "the stale file was not replaced");
    let client = ext.client().await;
    let n: i32 = client.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
}

#[test]
fn socket_path_that_is_a_regular_file_is_refused() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("warmpool.sock");
    fs::write(&path, "not ours to delete\n").expect("write");
    let env = with(
        &pg.env(),
        "WARMPOOL_SOCKET",
        Some(&path.display().to_string()),
    );

    let stderr = refused(&env);
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert!(
        stderr.contains(&path.display().to_string()),
        "the path is not named: {stderr}"
    );
    let meta = fs::symlink_metadata(&path).expect("the file is still there");
    assert!(meta.file_type().is_file());
    assert_eq!(fs::read_to_string(&path).unwrap(), "not ours to delete\n");
}

#[test]
fn socket_path_in_a_missing_directory_is_refused_naming_the_setting() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let path = missing.join("warmpool.sock");
    let env = with(
        &pg.env(),
        "WARMPOOL_SOCKET",
        Some(&path.display().to_string()),
    );

    let stderr = refused(&env);
    assert!(stderr.contains("WARMPOOL_SOCKET"), "{stderr}");
    assert!(
        stderr.contains(&path.display().to_string()),
        "the path is not named: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "its directory {} does not exist",
            missing.display()
        )),
        "the missing directory is not named: {stderr}"
    );
    assert!(!missing.exists(), "the directory was created");
}

#[test]
fn socket_path_held_by_a_live_listener_is_refused() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("warmpool.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let ino = fs::symlink_metadata(&path).unwrap().ino();
    let env = with(
        &pg.env(),
        "WARMPOOL_SOCKET",
        Some(&path.display().to_string()),
    );

    let stderr = refused(&env);
    assert!(stderr.contains("in use"), "{stderr}");
    // The live listener still owns the path: same file, still accepting.
    assert_eq!(fs::symlink_metadata(&path).unwrap().ino(), ino);
    let mut client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    listener.set_nonblocking(false).unwrap();
    // The extension's own probe connected first; accept until ours, which writes a byte.
    std::io::Write::write_all(&mut client, b"x").unwrap();
    loop {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut byte = [0u8; 1];
        if conn.read(&mut byte).unwrap_or(0) == 1 {
            assert_eq!(&byte, b"x");
            break;
        }
    }
}

/// A listener on `path` that never accepts, with its backlog full: a further connect to it cannot
/// complete. Returns the listener and the connections that fill its backlog; keep both.
async fn listener_that_never_accepts(path: &Path) -> (UnixListener, Vec<UnixStream>) {
    let socket = UnixSocket::new_stream().expect("socket");
    socket.bind(path).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let mut queued = Vec::new();
    // Linux queues backlog + 1 connections; a non-blocking connect after those fails with
    // EAGAIN, where a blocking one waits. The bound only keeps this loop finite.
    for _ in 0..64 {
        match UnixStream::connect(path).await {
            Ok(s) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return (listener, queued),
            Err(e) => panic!("connect to the test listener: {e}"),
        }
    }
    panic!("the backlog of {} did not fill", path.display());
}

/// Whether process `pid` has a handler installed for SIGTERM (its `SigCgt` mask in
/// /proc/<pid>/status), or `None` once the process is gone.
fn catches_sigterm(pid: u32) -> Option<bool> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
    let mask = u64::from_str_radix(mask.trim(), 16).expect("SigCgt is hex");
    Some(mask & (1 << (Signal::SIGTERM as u64 - 1)) != 0)
}

#[tokio::test]
async fn socket_path_held_by_a_listener_that_never_accepts_is_refused() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("warmpool.sock");
    let (_listener, _queued) = listener_that_never_accepts(&path).await;
    let ino = fs::symlink_metadata(&path).unwrap().ino();
    let shown = path.display().to_string();
    let env = with(&pg.env(), "WARMPOOL_SOCKET", Some(&shown));

    // The probe of the socket file does not wait on a connect that cannot complete: the
    // extension refuses (run_to_exit fails the test if it is still running after its guard),
    // and says what it found, naming the setting and the path.
    let out = run_to_exit(&[], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{:?}\n{stdout}\n{stderr}",
        out.status
    );
    for word in ["WARMPOOL_SOCKET", shown.as_str(), "accepts no connection"] {
        assert!(
            stderr.contains(word),
            "the refusal should mention {word:?}:\n{stderr}"
        );
    }
    assert!(
        stdout.contains("refusing to start: another process holds the socket"),
        "no log line says what was found:\n{stdout}"
    );
    // The listener still owns the path.
    assert_eq!(fs::symlink_metadata(&path).unwrap().ino(), ino);
}

#[tokio::test]
async fn sigterm_ends_startup_on_a_socket_path_that_never_accepts() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("warmpool.sock");
    let (_listener, _queued) = listener_that_never_accepts(&path).await;
    let env = with(
        &pg.env(),
        "WARMPOOL_SOCKET",
        Some(&path.display().to_string()),
    );
    let mut child = ChildGuard(
        Command::new(ext::binary())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WARMPOOL_PG_SOCKET_DIR", "")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the extension binary"),
    );
    let pid = child.0.id();
    // Once the extension handles SIGTERM itself, the signal is only as good as its handling:
    // wait for the handler (or for the process to have exited already), then signal.
    let deadline = Instant::now() + EXIT_GUARD;
    while catches_sigterm(pid) == Some(false) && child.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "no SIGTERM handler within {EXIT_GUARD:?}"
        );
        // /proc has no change notification: poll it.
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    // The listener stays up for the whole wait: an exit is the extension's doing.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.0.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the extension ignored SIGTERM during start-up"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child process killed when the test ends, whatever its outcome.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sigterm_closes_connections_cleanly() {
    let pg = server_logging_disconnections();
    let admin = pg.tokio_client().await;
    let mut ext = Extension::start(&pg, &[("WARMPOOL_WARM_SIZE", "2")]);
    ext.wait_for_log("pool warmed", LOG_GUARD);
    let client = ext.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    // Concurrent statements and a transaction: the pool grows past its warm connections.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT count(*) FROM pg_sleep(0.05)", &[]),
        client.query_one("SELECT count(*) FROM pg_sleep(0.05)", &[]),
        client.query_one("SELECT count(*) FROM pg_sleep(0.05)", &[]),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    let pids = warmpool_backends(&admin).await;
    assert!(
        pids.len() >= 2,
        "expected the pool's connections, found {pids:?}"
    );

    let status = ext.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; log:\n{}",
        ext.logs()
    );
    assert!(!ext.socket().exists(), "the socket file was left behind");
    let closed = ext.wait_for_log("connections closed", LOG_GUARD);
    assert!(closed.contains("dropped=0"), "{closed}");

    let log = wait_for_disconnections(&pg, &pids);
    assert_eq!(warmpool_backends(&admin).await, Vec::<i32>::new());
    let unclean = unclean_lines(&log, &pids);
    assert!(
        unclean.is_empty(),
        "backends closed without a Terminate message:\n{}",
        unclean.join("\n")
    );

    // Control: the same check does see a client that vanishes without Terminate.
    let killed = Extension::start(&pg, &[]);
    killed
        .client()
        .await
        .query_one("SELECT 1", &[])
        .await
        .unwrap();
    let pids = warmpool_backends(&admin).await;
    assert!(!pids.is_empty());
    kill(Pid::from_raw(killed.pid() as i32), Signal::SIGKILL).unwrap();
    let log = wait_for_disconnections(&pg, &pids);
    assert!(
        !unclean_lines(&log, &pids).is_empty(),
        "SIGKILL left no trace in the server log, so the check above proves nothing:\n{}",
        pids.iter()
            .flat_map(|p| backend_lines(&log, *p))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn sigterm_rolls_back_an_open_transaction() {
    let pg = server_logging_disconnections();
    let admin = pg.tokio_client().await;
    let mut ext = Extension::start(&pg, &[]);
    let client = ext.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    assert_eq!(
        tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap(),
        1
    );
    // The insert's backend holds a transaction id: the transaction is open on the server, and
    // the row is not visible to anyone else.
    let open: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'warmpool' \
             AND backend_xid IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 1, "no open transaction on the server");
    let n: i64 = admin
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let pids = warmpool_backends(&admin).await;

    let status = ext.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; log:\n{}",
        ext.logs()
    );

    let e = tx
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .expect_err("the session must be gone");
    assert!(
        e.is_closed() || e.code() == Some(&SqlState::ADMIN_SHUTDOWN),
        "expected a closed session or 57P01, got {e:?}"
    );
    drop(tx);

    let log = wait_for_disconnections(&pg, &pids);
    let n: i64 = admin
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the uncommitted insert is visible");
    // Rolled back by the extension, not abandoned for the server to abort.
    let unclean = unclean_lines(&log, &pids);
    assert!(
        unclean.is_empty(),
        "backends closed without a Terminate message:\n{}",
        unclean.join("\n")
    );
}

#[tokio::test]
async fn database_going_away_is_08006_and_recovers() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = ext.client().await;
    let n: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);

    pg.stop();
    // The pooled connection's server said goodbye while it sat idle: the checkout reads that
    // before the request goes out on it, so the request is not sent into a closed connection.
    let e = client
        .query_one("SELECT 1", &[])
        .await
        .expect_err("the database is down");
    assert_eq!(
        e.code(),
        Some(&SqlState::CONNECTION_FAILURE),
        "{e:?}; log:\n{}",
        ext.logs()
    );
    assert!(e.is_closed(), "{e:?}");

    pg.start_again();
    let n: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .unwrap_or_else(|e| panic!("after the database came back: {e:?}; log:\n{}", ext.logs()))
        .get(0);
    assert_eq!(n, 1);
}
