//! A private, real PostgreSQL server per test.
//!
//! Each [`PgServer`] is its own cluster in its own temporary directory, on its own TCP port
//! and its own Unix-socket directory, so tests can run in parallel, restart or stop "their"
//! database for fault tests, and never see another test's connections in `pg_stat_activity`.
//!
//! The server is deliberately strict so that tests prove what they claim:
//! - TCP only accepts `hostssl` with SCRAM (no plain `host` line): a test that connects over
//!   TCP at all has proved TLS and SCRAM work.
//! - The certificate is a leaf signed by a test CA, so clients can use `verify-full`.
//! - The Unix socket is `trust` for the `postgres` superuser, which is how the harness itself
//!   administers the server (through `psql`), independent of the code under test.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (as on the build machines),
//! every file the server touches is chowned to `postgres` and the server tools run through
//! `runuser -u postgres --`; otherwise they run as the current user.
//!
//! Cleanup happens in `Drop`, which also runs while a failing test unwinds. It cannot run if
//! the test process is killed (SIGKILL, Ctrl-C), in which case a postmaster may survive.

use crate::certs::TestCerts;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Role and database the code under test uses (never a superuser, like in production).
const APP_USER: &str = "app";
const APP_DB: &str = "app";
/// Name the server certificate is issued for; `verify-full` checks it.
const HOST: &str = "localhost";
/// Overrides live in their own file, included last from postgresql.conf, so `set_config`
/// can rewrite it wholesale without parsing what initdb generated.
const OVERRIDES_FILE: &str = "warmpool_test.conf";
/// Bind-then-release port picking is racy against parallel tests; a few retries make it
/// practically reliable.
const PORT_ATTEMPTS: usize = 10;

/// A running (or, after [`PgServer::stop`], stopped) private PostgreSQL cluster.
pub struct PgServer {
    /// `Option` only so `Drop` can remove it explicitly and report failures.
    dir: Option<TempDir>,
    root: PathBuf,
    bindir: PathBuf,
    psql: PathBuf,
    /// True when we are root and must act as `postgres` for the server side.
    as_postgres: bool,
    port: u16,
    password: String,
    superuser_password: String,
    certs: TestCerts,
    /// Every setting written to [`OVERRIDES_FILE`], including the harness's own.
    settings: Mutex<BTreeMap<String, String>>,
}

impl PgServer {
    /// Creates, configures and starts a fresh cluster with role and database `app`.
    ///
    /// Panics with a descriptive message (including the server log tail where relevant) if
    /// anything fails, since a test cannot do anything useful without its database.
    pub fn start() -> PgServer {
        let bindir = find_bindir();
        let psql = find_psql(&bindir);
        let as_postgres = running_as_root();

        // Under /tmp rather than $TMPDIR: the Unix socket path must stay under ~107 bytes,
        // and when we are root, `postgres` must be able to traverse every parent directory.
        let dir = tempfile::Builder::new()
            .prefix("warmpool-pg-")
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("cannot create temp dir for PostgreSQL in /tmp: {e}"));
        let root = dir.path().to_path_buf();

        let mut server = PgServer {
            dir: Some(dir),
            root,
            bindir,
            psql,
            as_postgres,
            port: 0,
            password: random_alphanumeric(24),
            superuser_password: random_alphanumeric(24),
            certs: TestCerts::generate(),
            settings: Mutex::new(BTreeMap::new()),
        };
        // From here on `server` exists, so any panic below still stops and removes it.
        server.write_initial_files();
        server.initdb();
        server.configure();
        server.start_on_free_port();
        server.create_app_role_and_db();
        server
    }

    /// TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host name to connect to; matches the certificate's SAN for `verify-full`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// Non-superuser application role.
    pub fn user(&self) -> &str {
        APP_USER
    }

    /// Password of [`Self::user`] (alphanumeric, so it needs no escaping in URLs or conninfo).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Database owned by [`Self::user`].
    pub fn dbname(&self) -> &str {
        APP_DB
    }

    /// Password of the `postgres` superuser (for TCP; the harness itself uses the socket).
    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.certs.ca_pem
    }

    /// PEM of a CA that did *not* sign the server certificate.
    pub fn other_ca_pem(&self) -> &str {
        &self.certs.other_ca_pem
    }

    /// World-readable file holding [`Self::ca_pem`] (for PGSSLROOTCERT-style configuration).
    pub fn ca_path(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// World-readable file holding [`Self::other_ca_pem`].
    pub fn other_ca_path(&self) -> PathBuf {
        self.root.join("other-ca.pem")
    }

    /// Directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("sock")
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The temp directory holding everything; it is gone once the server is dropped.
    pub fn temp_dir(&self) -> &Path {
        &self.root
    }

    /// The server log (stderr of the postmaster and all backends).
    pub fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// The last `lines` lines of the server log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        tail(&log, lines)
    }

    /// PID of the running postmaster, from `postmaster.pid`; `None` when it is not running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pidfile = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pidfile.lines().next()?.trim().parse().ok()
    }

    /// `postgres://app:PASSWORD@localhost:PORT/app`.
    pub fn database_url(&self) -> String {
        format!(
            "postgres://{APP_USER}:{}@{HOST}:{}/{APP_DB}",
            self.password, self.port
        )
    }

    /// libpq-style environment for a client of this server, with full TLS verification.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("PGHOST", HOST.to_string()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", APP_USER.to_string()),
            ("PGPASSWORD", self.password.clone()),
            ("PGDATABASE", APP_DB.to_string()),
            ("PGSSLMODE", "verify-full".to_string()),
            ("PGSSLROOTCERT", self.ca_path().display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Runs `sql` as `postgres` in database `app` over the Unix socket (`psql -At`) and
    /// returns its stdout without the trailing newline. Panics with psql's stderr on error.
    pub fn superuser_psql(&self, sql: &str) -> String {
        self.superuser_psql_in(APP_DB, sql)
    }

    /// The pids of the backends serving the extension (its pool's `application_name`), in
    /// order, as the server lists them to a connection of the test's own.
    pub async fn warmpool_backends(&self) -> Vec<i32> {
        self.tokio_client()
            .await
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

    /// Like [`Self::superuser_psql`], in another database.
    pub fn superuser_psql_in(&self, dbname: &str, sql: &str) -> String {
        let out = self.psql_output(dbname, sql);
        if !out.status.success() {
            panic!(
                "psql as postgres failed ({}) running:\n{sql}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_string()
    }

    /// A rustls client configuration (ring provider) trusting only the test CA.
    pub fn rustls_config(&self) -> rustls::ClientConfig {
        rustls_config_trusting(&self.certs.ca_pem)
    }

    /// Connection settings for `app` over TCP with TLS required.
    ///
    /// With rustls, "require" still verifies the chain and the host name: rustls has no
    /// unverified mode, so this is effectively `verify-full`.
    pub fn tokio_config(&self) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(HOST)
            .port(self.port)
            .user(APP_USER)
            .password(&self.password)
            .dbname(APP_DB)
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(Duration::from_secs(10));
        cfg
    }

    /// A direct tokio-postgres connection (TLS, as `app`), independent of the code under test,
    /// for inspecting server state. The connection task is spawned on the current runtime.
    pub async fn tokio_client(&self) -> tokio_postgres::Client {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.rustls_config());
        let (client, connection) = self.tokio_config().connect(tls).await.unwrap_or_else(|e| {
            panic!(
                "direct TLS connection to test PostgreSQL on port {} failed: {e:?}\n\
                     server log tail:\n{}",
                self.port,
                self.log_tail(20)
            )
        });
        tokio::spawn(async move {
            // Errors here are expected in fault tests (server stopped or restarted).
            if let Err(e) = connection.await {
                eprintln!("test PostgreSQL connection ended: {e}");
            }
        });
        client
    }

    /// Restarts the server (`pg_ctl restart -m fast`), dropping every connection.
    pub fn restart(&self) {
        let out = self.pg_ctl(&["restart", "-m", "fast", "-w", "-l"], true);
        self.expect_success(&out, "pg_ctl restart");
    }

    /// Stops the server (`pg_ctl stop -m fast`); [`Self::start_again`] brings it back on the
    /// same port with the same data.
    pub fn stop(&self) {
        let out = self.pg_ctl(&["stop", "-m", "fast", "-w"], false);
        self.expect_success(&out, "pg_ctl stop");
    }

    /// Starts a server previously stopped with [`Self::stop`], on the same port (clients are
    /// configured with it). Panics if the port was taken in the meantime.
    pub fn start_again(&self) {
        let out = self.pg_ctl(&["start", "-w", "-l"], true);
        self.expect_success(&out, "pg_ctl start (start_again)");
    }

    /// Stops the whole server with SIGSTOP, as a server that no longer answers at all: the
    /// postmaster first, so it starts no new process, then every process it started (backends
    /// and background workers). Its sockets stay open, and the kernel still completes TCP
    /// connects to its listening port, but nothing is read or answered, not even a
    /// CancelRequest. Everything resumes (SIGCONT) when the returned guard is dropped, so a
    /// failing test leaves no server stopped.
    pub fn pause(&self) -> Paused {
        let postmaster = self
            .postmaster_pid()
            .expect("pause: the server is not running");
        signal(postmaster, nix::sys::signal::Signal::SIGSTOP);
        let mut pids = children_of(postmaster);
        for &pid in &pids {
            signal(pid, nix::sys::signal::Signal::SIGSTOP);
        }
        pids.push(postmaster);
        Paused { pids }
    }

    /// Sets a server parameter (value unquoted, e.g. `("idle_session_timeout", "2s")`) and,
    /// if the server is running, reloads it and waits until new sessions see the reload.
    ///
    /// Parameters that need a restart (e.g. `max_connections`) only take effect after
    /// [`Self::restart`]. Panics if the configuration files no longer parse.
    pub fn set_config(&self, name: &str, value: &str) {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), value.to_string());
        self.write_overrides();
        if self.is_running() {
            self.reload();
        }
    }

    /// Ends backend `pid` with `pg_terminate_backend` and waits until the server no longer
    /// lists it, as an `idle_session_timeout`, a failover or an operator would end it.
    pub fn terminate_backend(&self, pid: i64) {
        assert_eq!(
            self.superuser_psql(&format!("SELECT pg_terminate_backend({pid})")),
            "t",
            "backend {pid} was not there to end"
        );
        self.wait_backend_gone(pid);
    }

    /// Waits until the server no longer lists backend `pid` (its exit is asynchronous to the
    /// signal that ended it). Panics after 30 s.
    pub fn wait_backend_gone(&self, pid: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.superuser_psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        )) != "0"
        {
            assert!(Instant::now() < deadline, "backend {pid} never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `pg_ctl reload`, then waits until a new session reports a newer configuration load
    /// time: the signal is asynchronous, so without the wait a test could race the reload.
    /// Existing sessions apply the new configuration at their next idle point.
    pub fn reload(&self) {
        self.assert_config_parses();
        let before = self.superuser_psql_in("postgres", "SELECT pg_conf_load_time()");
        let out = self.pg_ctl(&["reload"], false);
        self.expect_success(&out, "pg_ctl reload");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.superuser_psql_in("postgres", "SELECT pg_conf_load_time()") != before {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "PostgreSQL did not reload its configuration within 10 s\nserver log tail:\n{}",
            self.log_tail(20)
        );
    }

    // ---- setup steps -------------------------------------------------------------------

    fn write_initial_files(&self) {
        self.write_file(&self.ca_path(), &self.certs.ca_pem, 0o644);
        self.write_file(&self.other_ca_path(), &self.certs.other_ca_pem, 0o644);
        self.write_file(
            &self.root.join("server.crt"),
            &self.certs.server_cert_pem,
            0o644,
        );
        // OpenSSL in the server refuses a key readable by group/others.
        self.write_file(
            &self.root.join("server.key"),
            &self.certs.server_key_pem,
            0o600,
        );
        self.write_file(
            &self.pwfile(),
            &format!("{}\n", self.superuser_password),
            0o600,
        );
        fs::create_dir(self.socket_dir()).expect("create socket dir");
        if self.as_postgres {
            // Covers the temp dir itself too, so `postgres` can create data/ and the log.
            chown_to_postgres(&self.root, true);
        }
    }

    fn initdb(&self) {
        let data = self.data_dir();
        let pwfile = format!("--pwfile={}", self.pwfile().display());
        let args: [&OsStr; 11] = [
            "-D".as_ref(),
            data.as_os_str(),
            "-U".as_ref(),
            "postgres".as_ref(),
            "--auth-local=trust".as_ref(),
            "--auth-host=scram-sha-256".as_ref(),
            pwfile.as_ref(),
            // UTF8 with C collation: real-world encoding, deterministic and fast sorting.
            "--encoding=UTF8".as_ref(),
            "--locale=C".as_ref(),
            // The cluster is thrown away; syncing it to disk only costs time.
            "--no-sync".as_ref(),
            "--no-instructions".as_ref(),
        ];
        let out = self.run_server_tool("initdb", &args);
        if !out.status.success() {
            panic!(
                "initdb failed ({}):\nstdout:\n{}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn configure(&self) {
        let data = self.data_dir();
        let pg_hba = "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n";
        self.write_file(&data.join("pg_hba.conf"), pg_hba, 0o600);

        let conf_path = data.join("postgresql.conf");
        let mut conf = fs::read_to_string(&conf_path).expect("read postgresql.conf");
        conf.push_str(&format!("\ninclude '{OVERRIDES_FILE}'\n"));
        self.write_file(&conf_path, &conf, 0o600);

        let path = |p: PathBuf| p.display().to_string();
        let defaults = [
            ("listen_addresses", "127.0.0.1".to_string()),
            ("unix_socket_directories", path(self.socket_dir())),
            ("ssl", "on".to_string()),
            ("ssl_cert_file", path(self.root.join("server.crt"))),
            ("ssl_key_file", path(self.root.join("server.key"))),
            ("password_encryption", "scram-sha-256".to_string()),
            ("max_connections", "100".to_string()),
            ("fsync", "off".to_string()),
            // pg_ctl -l sends the postmaster's stderr to our log file; a collector would
            // divert it elsewhere.
            ("logging_collector", "off".to_string()),
            ("log_destination", "stderr".to_string()),
            // English messages, so failure detection ("Address already in use") is reliable.
            ("lc_messages", "C".to_string()),
        ];
        let mut settings = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        for (name, value) in defaults {
            settings.insert(name.to_string(), value);
        }
    }

    fn start_on_free_port(&mut self) {
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = pick_free_port();
            self.settings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert("port".to_string(), self.port.to_string());
            self.write_overrides();

            let log_offset = fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize);
            let out = self.pg_ctl(&["start", "-w", "-l"], true);
            if out.status.success() {
                return;
            }
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            let this_attempt = log.get(log_offset..).unwrap_or(&log);
            if this_attempt.contains("Address already in use") && attempt < PORT_ATTEMPTS {
                continue;
            }
            self.expect_success(&out, "pg_ctl start");
        }
    }

    fn create_app_role_and_db(&self) {
        // Separate commands: CREATE DATABASE cannot run inside the implicit transaction of a
        // multi-statement string.
        self.superuser_psql_in(
            "postgres",
            &format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{}'", self.password),
        );
        self.superuser_psql_in(
            "postgres",
            &format!("CREATE DATABASE {APP_DB} OWNER {APP_USER}"),
        );
    }

    // ---- helpers -----------------------------------------------------------------------

    fn pwfile(&self) -> PathBuf {
        self.root.join("superuser.pw")
    }

    fn write_overrides(&self) {
        let settings = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::from("# Written by the warmpool test harness (PgServer).\n");
        for (name, value) in settings.iter() {
            // Every GUC accepts a quoted value, which sidesteps per-type quoting rules.
            text.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        drop(settings);
        self.write_file(&self.data_dir().join(OVERRIDES_FILE), &text, 0o600);
    }

    /// Catches a bad `set_config` before signalling the server, with a readable message;
    /// otherwise the server would keep the old configuration and only log the problem.
    fn assert_config_parses(&self) {
        let errors = self.superuser_psql_in(
            "postgres",
            "SELECT sourcefile || ':' || sourceline || ' ' || coalesce(name, '') || ': ' || error \
             FROM pg_file_settings \
             WHERE error IS NOT NULL AND error <> 'setting could not be applied'",
        );
        if !errors.is_empty() {
            panic!("invalid PostgreSQL configuration after set_config:\n{errors}");
        }
    }

    fn is_running(&self) -> bool {
        // Exit status 0 = running, 3 = not running.
        self.pg_ctl(&["status"], false).status.success()
    }

    /// Runs `pg_ctl <args> -D data`; with `with_log`, the last arg is `-l` and the log path
    /// follows it. The log must always be given to start/restart: without it the postmaster
    /// would inherit our stdout pipe and `output()` would wait for it forever.
    fn pg_ctl(&self, args: &[&str], with_log: bool) -> Output {
        let data = self.data_dir();
        let log = self.log_path();
        let mut full: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
        if with_log {
            full.push(log.as_os_str());
        }
        full.push("-D".as_ref());
        full.push(data.as_os_str());
        self.run_server_tool("pg_ctl", &full)
    }

    fn expect_success(&self, out: &Output, what: &str) {
        if !out.status.success() {
            panic!(
                "{what} failed ({}) for test PostgreSQL on port {}:\n{}{}\nserver log tail:\n{}",
                out.status,
                self.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(30)
            );
        }
    }

    /// Runs a server binary, as `postgres` when we are root.
    fn run_server_tool(&self, tool: &str, args: &[&OsStr]) -> Output {
        let exe = self.bindir.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args);
        sanitize(&mut cmd, &self.root);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
    }

    fn psql_output(&self, dbname: &str, sql: &str) -> Output {
        let mut cmd = Command::new(&self.psql);
        // -X: ignore ~/.psqlrc; ON_ERROR_STOP: make SQL errors a non-zero exit status.
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                dbname,
                "-c",
                sql,
            ]);
        sanitize(&mut cmd, &self.root);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.psql.display()))
    }

    /// Writes a file the server may read, owned by `postgres` when we are root.
    fn write_file(&self, path: &Path, contents: &str, mode: u32) {
        fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        if self.as_postgres {
            chown_to_postgres(path, false);
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Never panic here: Drop also runs while a failing test unwinds, and a second panic
        // would abort the whole test binary.
        let pid = self.postmaster_pid();
        // Immediate: the data is thrown away, so a clean shutdown checkpoint is wasted time.
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"], false);
        if let Some(pid) = pid {
            ensure_dead(pid);
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("warning: could not remove {}: {e}", path.display());
            }
        }
    }
}

/// A server stopped by [`PgServer::pause`]; dropping it resumes every process.
#[must_use = "the server resumes when this is dropped"]
#[derive(Debug)]
pub struct Paused {
    pids: Vec<u32>,
}

impl Paused {
    /// The stopped processes, the postmaster last.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for &pid in &self.pids {
            signal(pid, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

// ---- free helpers ------------------------------------------------------------------------

/// Sends `sig` to `pid`; a process that has already gone is not an error.
fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// The processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may contain spaces or ')', so split at the last ')'.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
    .collect()
}

/// `PG_BINDIR` if set, else the highest version under /usr/lib/postgresql (Debian layout).
/// `PG_BINDIR` if set, else the highest version under /usr/lib/postgresql (Debian layout),
/// installed first when missing.
fn find_bindir() -> PathBuf {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if !has_tools(&dir) {
            panic!(
                "PG_BINDIR={} does not contain initdb and pg_ctl",
                dir.display()
            );
        }
        return dir;
    }
    crate::prereq::postgres_server();
    let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            // Numeric compare: "9.6" < "15", which a string compare gets wrong.
            let version: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version?, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin \
             (apt-get install postgresql, or set PG_BINDIR to a directory with initdb and pg_ctl)"
        ),
    }
}

/// psql matching the server version if present, else the one on PATH.
fn find_psql(bindir: &Path) -> PathBuf {
    let local = bindir.join("psql");
    if local.is_file() {
        return local;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("psql"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| panic!("psql not found: apt-get install postgresql-client"))
}

/// Effective UID 0, read from /proc so we need neither libc nor a subprocess.
fn running_as_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

fn chown_to_postgres(path: &Path, recursive: bool) {
    let mut cmd = Command::new("chown");
    if recursive {
        cmd.arg("-R");
    }
    let out = cmd
        .arg("postgres:postgres")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run chown: {e}"));
    if !out.status.success() {
        panic!(
            "chown postgres:postgres {} failed (is there a `postgres` user?): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Keeps the caller's environment (e.g. PGHOST set for the code under test) from steering
/// the harness's own tools to a different server, and runs them from a directory `postgres`
/// can enter (initdb/postgres fail if they cannot resolve their working directory).
fn sanitize(cmd: &mut Command, cwd: &Path) {
    let pg_vars: Vec<OsString> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| k.to_string_lossy().starts_with("PG"))
        .collect();
    for k in pg_vars {
        cmd.env_remove(k);
    }
    cmd.env("LC_ALL", "C").current_dir(cwd).stdin(Stdio::null());
}

/// Asks the kernel for a free port by binding port 0. The port is released before PostgreSQL
/// binds it, so another process can take it in between; the caller retries on that.
fn pick_free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Waits for the (former) postmaster to exit, killing it if `pg_ctl stop` did not.
///
/// A zombie counts as dead: the postmaster is re-parented to PID 1 once pg_ctl exits, and
/// some container init processes never reap it.
fn ensure_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !process_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` exists and is not a zombie (per /proc/PID/stat).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: "pid (comm) state ...": comm may contain spaces or ')', so split at the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// A rustls client configuration (ring provider) trusting only the CA(s) in `ca_pem`; pass
/// [`PgServer::other_ca_pem`] to build a client that must fail verification.
pub fn rustls_config_trusting(ca_pem: &str) -> rustls::ClientConfig {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("parse test CA PEM"))
            .expect("add test CA to root store");
    }
    // Explicit provider: the process default may be unset, or set by other code to another.
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Random `[A-Za-z0-9]` string from the kernel RNG (no extra dependency needed).
fn random_alphanumeric(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut urandom = fs::File::open("/dev/urandom").expect("open /dev/urandom");
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        urandom.read_exact(&mut buf).expect("read /dev/urandom");
        // Reject bytes >= 248 (= 4 * 62) so every character is equally likely.
        for &b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[(b % 62) as usize] as char);
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
