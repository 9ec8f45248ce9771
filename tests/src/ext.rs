//! The real `warmpool` extension binary, run as a child process against a test database.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::pg::PgServer;

/// How long the extension may take to bind its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the extension binary once per test process, with the profile of the test binary, and
/// returns its path. Building here keeps tests from running a stale binary.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| built("warmpool-extension", "warmpool"))
}

/// The example `orders` function (a `lambda_runtime` bootstrap), built like [`binary`].
pub fn orders_function() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| built("warmpool-examples", "orders"))
}

/// Builds `bin` of `package` with the profile of the running test or program.
pub fn built(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> or target/<profile>/<program> → target/<profile>
    let mut profile_dir = exe.parent().expect("exe has a parent").to_owned();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let status = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cannot run cargo to build a test binary");
    assert!(status.success(), "building {package} --bin {bin} failed");
    let path = profile_dir.join(bin);
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// A `cargo` command for a build from inside a test, without the variables Cargo sets for the
/// test it runs (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`…). Build scripts watch some of them
/// (ring's declares `rerun-if-env-changed=CARGO_PKG_NAME`): passed on, they would make this
/// build recompile ring and everything above it, and the next plain `cargo test` recompile it
/// all back.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"]
            .iter()
            .any(|p| name.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&name.as_ref());
        if set_by_cargo {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

/// A running extension process. Stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Extension {
    child: Option<Child>,
    dir: TempDir,
    socket: PathBuf,
    logs: Arc<Mutex<String>>,
    raw: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Extension {
    /// Starts the extension against `pg` with verify-full TLS, plus `env` overrides, and waits
    /// until it is listening.
    pub fn start(pg: &PgServer, env: &[(&str, &str)]) -> Extension {
        Extension::start_with_env(Extension::vars(pg, env))
    }

    /// Starts the extension with exactly `vars` (plus a private socket path unless given).
    pub fn start_with_env(vars: Vec<(String, String)>) -> Extension {
        let mut ext = Extension::spawn(vars);
        ext.wait_for_log("listening", START_TIMEOUT);
        ext
    }

    /// Starts the extension like [`Extension::start`], with the PostgreSQL endpoint's TCP
    /// listener on a free port of 127.0.0.1 (`WARMPOOL_PG_TCP_PORT`) and `password`
    /// (`WARMPOOL_PG_PASSWORD`); returns it with the port, once the listener is bound. The port
    /// is free when picked but could be taken before the extension binds it; another is tried
    /// then.
    pub fn start_with_pg_tcp(
        pg: &PgServer,
        password: &str,
        env: &[(&str, &str)],
    ) -> (Extension, u16) {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind 127.0.0.1:0")
                .port()
                .to_string();
            let mut vars: Vec<(&str, &str)> = vec![
                ("WARMPOOL_PG_TCP_PORT", &port),
                ("WARMPOOL_PG_PASSWORD", password),
            ];
            vars.extend_from_slice(env);
            let mut ext = Extension::spawn(Extension::vars(pg, &vars));
            match ext.log_or_exit("listening for PostgreSQL clients on TCP", START_TIMEOUT) {
                Ok(_) => return (ext, port.parse().expect("a port")),
                Err(_) if attempt < ATTEMPTS && ext.logs().contains("Address already in use") => {}
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `pg`'s settings for the extension, with `env` over them.
    fn vars(pg: &PgServer, env: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = pg.env();
        vars.push(("WARMPOOL_LOG".into(), "debug".into()));
        // The format the extension logs in on Lambda, read back by the harness.
        vars.push(("WARMPOOL_LOG_FORMAT".into(), "json".into()));
        for (k, v) in env {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.to_string()));
        }
        vars
    }

    /// Runs the extension with exactly `vars` (plus a private socket path unless given), not
    /// waiting for it to listen.
    fn spawn(mut vars: Vec<(String, String)>) -> Extension {
        let dir = tempfile::Builder::new()
            .prefix("warmpool-ext-")
            .tempdir()
            .expect("tempdir");
        let socket = match vars.iter().find(|(k, _)| k == "WARMPOOL_SOCKET") {
            Some((_, v)) => PathBuf::from(v),
            None => {
                let s = dir.path().join("warmpool.sock");
                vars.push(("WARMPOOL_SOCKET".into(), s.display().to_string()));
                s
            }
        };
        // The PostgreSQL endpoint's socket in the extension's own directory, so extensions run
        // side by side do not meet in /tmp.
        if !vars.iter().any(|(k, _)| k == "WARMPOOL_PG_SOCKET_DIR") {
            vars.push((
                "WARMPOOL_PG_SOCKET_DIR".into(),
                dir.path().display().to_string(),
            ));
        }
        let mut cmd = Command::new(binary());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start the extension");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(String::new()));
        let raw = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        // Log lines and metrics records come on stdout; stderr has only what the extension says
        // before logging is set up (a bad setting).
        for (stream, is_stdout) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, true),
            (Box::new(stderr), false),
        ] {
            let logs = logs.clone();
            let raw = raw.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if is_stdout {
                        let mut raw = raw.lock().unwrap();
                        raw.push_str(&line);
                        raw.push('\n');
                    }
                    // A JSON log line is shown as `LEVEL message key=value ...`; a metrics
                    // record is kept in the raw output only.
                    let shown = match crate::logs::render(&line) {
                        Some(text) => text,
                        None if crate::logs::metric_records(&line).is_empty() => line,
                        None => continue,
                    };
                    let mut logs = logs.lock().unwrap();
                    logs.push_str(&shown);
                    logs.push('\n');
                    drop(logs);
                    let _ = tx.send(shown);
                }
            });
        }
        drop(tx);
        Extension {
            child: Some(child),
            dir,
            socket,
            logs,
            raw,
            lines,
        }
    }

    /// Waits until a log line containing `needle` appears; panics with the log on timeout or if
    /// the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.log_or_exit(needle, timeout)
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Extension::wait_for_log`], telling a timeout or an exit as an error.
    fn log_or_exit(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no log line with {needle:?} within {timeout:?}; log:\n{}",
                        self.logs()
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    return Err(format!(
                        "the extension exited ({status:?}) before logging {needle:?}; log:\n{}",
                        self.logs()
                    ));
                }
            }
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A private directory that is removed with the extension.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the extension has logged so far, each JSON line shown as
    /// `LEVEL message key=value ...` (see [`crate::logs::render`]).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Everything the extension has written on stdout so far, as written: JSON log lines and
    /// metrics records.
    pub fn stdout(&self) -> String {
        self.raw.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The process's resident set (`VmRSS`) in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// A client connected to this extension.
    pub async fn client(&self) -> warmpool::Client {
        warmpool::Client::connect_to(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("client connect: {e}; log:\n{}", self.logs()))
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        wait_or_kill(&mut child, Duration::from_secs(10))
    }
}

fn wait_or_kill(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for Extension {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            wait_or_kill(&mut child, Duration::from_secs(5));
        }
    }
}

/// The resident set size of process `pid`, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}
