//! A private PgBouncer in transaction mode in front of the private PostgreSQL: TLS and SCRAM
//! from the function, TLS (verify-full) to the server.
//!
//! The binary comes from `pgbouncer/build.sh` (a current release from Debian's trixie source
//! package, cached outside the repository), or, when that fails, from Debian 12's own package
//! (1.18), which cannot serve the scenarios' prepared statements in transaction mode.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warmpool_tests::PgServer;

/// A PgBouncer binary and what it is.
#[derive(Clone, Debug)]
pub struct Binary {
    pub path: PathBuf,
    pub version: String,
    /// Set when the binary predates `max_prepared_statements` (1.21).
    pub limitation: Option<String>,
}

/// Builds (or finds in the cache) a current PgBouncer; falls back to the system's.
pub fn find_or_build() -> Result<Binary, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pgbouncer/build.sh");
    let built = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()));
    let why = match built {
        Ok(out) if out.status.success() => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.lines().last() {
                Some(path) => return Ok(describe(PathBuf::from(path.trim()))),
                None => "build.sh printed no path".to_owned(),
            }
        }
        Ok(out) => format!("build.sh failed ({})", out.status),
        Err(e) => e,
    };
    for fallback in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"] {
        if Path::new(fallback).exists() {
            let mut b = describe(PathBuf::from(fallback));
            b.limitation = Some(format!(
                "{why}; fell back to the system's PgBouncer {}, which predates \
                 max_prepared_statements (1.21): tokio-postgres' named statements fail behind it",
                b.version
            ));
            return Ok(b);
        }
    }
    Err(format!("no PgBouncer: {why}"))
}

fn describe(path: PathBuf) -> Binary {
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("PgBouncer ").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let modern = version
        .split('.')
        .take(2)
        .map(|p| p.parse::<u32>().unwrap_or(0))
        .collect::<Vec<_>>()
        >= vec![1, 21];
    Binary {
        limitation: (!modern)
            .then(|| format!("PgBouncer {version} predates max_prepared_statements (1.21)")),
        path,
        version,
    }
}

/// A running PgBouncer. Stopped (and its directory removed) on drop.
pub struct PgBouncer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl PgBouncer {
    /// Starts PgBouncer in front of `pg`, which it reaches on `pg_port` (the server's port, or a
    /// relay's in front of it), with `pool_size` server connections at most.
    pub fn start(
        pg: &PgServer,
        binary: &Binary,
        pool_size: u32,
        pg_port: u16,
    ) -> Result<PgBouncer, String> {
        let dir = tempfile::Builder::new()
            .prefix("warmpool-bench-pgb-")
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        let port = free_port();
        // Copied: the cache may sit in a home directory the `postgres` user cannot enter.
        let bin = d.join("pgbouncer");
        fs::copy(&binary.path, &bin).map_err(|e| format!("copy pgbouncer: {e}"))?;
        for name in ["server.crt", "server.key"] {
            fs::copy(pg.temp_dir().join(name), d.join(name)).map_err(|e| e.to_string())?;
        }
        fs::copy(pg.ca_path(), d.join("ca.pem")).map_err(|e| e.to_string())?;
        let user = crate::lambda::role(crate::lambda::Scenario::Pgbouncer);
        let verifier = pg.superuser_psql(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'"
        ));
        let prepared = if binary.limitation.is_none() {
            "max_prepared_statements = 200\n"
        } else {
            ""
        };
        let ini = format!(
            "[databases]\n\
             app = host=localhost port={pg_port} dbname=app\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {d}/userlist.txt\n\
             pool_mode = transaction\n\
             {prepared}\
             default_pool_size = {pool_size}\n\
             max_client_conn = 1000\n\
             server_tls_sslmode = verify-full\n\
             server_tls_ca_file = {d}/ca.pem\n\
             client_tls_sslmode = require\n\
             client_tls_cert_file = {d}/server.crt\n\
             client_tls_key_file = {d}/server.key\n\
             ignore_startup_parameters = extra_float_digits\n\
             log_connections = 0\n\
             log_disconnections = 0\n\
             logfile = {d}/pgbouncer.log\n\
             pidfile = {d}/pgbouncer.pid\n",
            d = d.display(),
        );
        write(&d.join("pgbouncer.ini"), &ini, 0o600)?;
        write(
            &d.join("userlist.txt"),
            &format!("\"{user}\" \"{verifier}\"\n"),
            0o600,
        )?;
        fs::set_permissions(d.join("server.key"), fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        let as_root = running_as_root();
        if as_root {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(d)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err("chown to postgres failed".into());
            }
        }
        // PgBouncer refuses to run as root.
        let mut cmd = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        let child = cmd
            .arg(d.join("pgbouncer.ini"))
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start pgbouncer: {e}"))?;
        let mut bouncer = PgBouncer {
            child: Some(child),
            dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "pgbouncer did not listen within 10 s; log:\n{}",
                    bouncer.log_tail()
                ));
            }
            if let Some(status) = bouncer.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                return Err(format!(
                    "pgbouncer exited ({status}); log:\n{}",
                    bouncer.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(bouncer)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops PgBouncer: SIGINT (safe shutdown), then SIGKILL after 3 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = fs::read_to_string(self.dir.path().join("pgbouncer.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if Instant::now() >= deadline {
                if let Some(pid) = pid {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}
