//! A private PgBouncer in transaction mode in front of a [`PgServer`], per test.
//!
//! TLS with SCRAM from its clients, with the test server's certificate (issued for `localhost`, so
//! `verify-full` works against it), and TLS with `verify-full` to PostgreSQL. PgBouncer signs in
//! to PostgreSQL with the SCRAM keys of the client that authenticated to it, so `userlist.txt`
//! holds the role's SCRAM verifier, copied from `pg_authid`, and no password.
//!
//! The binary is PgBouncer 1.21 or later, for `max_prepared_statements`. Debian 12 ships 1.18, so
//! `bench/pgbouncer/build.sh` builds a current release from Debian's source package into a cache
//! outside the repository; [`PgBouncer::binary`] runs it on first use (it returns at once when
//! the build is cached) and fails, naming that command, when it cannot.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::pg::PgServer;

/// The first release with `max_prepared_statements`.
const MIN_VERSION: [u32; 2] = [1, 21];
/// How long PgBouncer may take to listen, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the pooler is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// `default_pool_size`: server connections per user and database.
    pub pool_size: u32,
    /// `max_prepared_statements`: 0 turns prepared-statement tracking off.
    pub max_prepared_statements: u32,
    /// `server_round_robin`: hand out idle server connections in turn rather than the most
    /// recently used first, so consecutive transactions of one client land on different servers.
    pub round_robin: bool,
    /// Run Debian 12's own package (PgBouncer 1.18), which predates `max_prepared_statements`
    /// (ignored then), instead of the 1.24 built from source.
    pub debian: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            pool_size: 2,
            max_prepared_statements: 100,
            round_robin: true,
            debian: false,
        }
    }
}

/// A running PgBouncer; stopped, and its directory removed, when dropped.
pub struct PgBouncer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl PgBouncer {
    /// The PgBouncer binary that `bench/pgbouncer/build.sh` builds, on first use:
    /// `$WARMPOOL_BENCH_CACHE/pgbouncer/bin/pgbouncer`, the cache defaulting to
    /// `~/.cache/warmpool-bench`. Panics, naming the build command, when it cannot be built or
    /// is older than 1.21.
    pub fn binary() -> PathBuf {
        let bin = crate::prereq::pgbouncer();
        let build = "bench/pgbouncer/build.sh (PgBouncer 1.24.1 from Debian's source package, \
                     cached outside the repository)";
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.lines()
                    .next()?
                    .strip_prefix("PgBouncer ")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| {
                panic!(
                    "PgBouncer 1.21 or later not found at {}: build it with {build}. Debian 12's \
                     pgbouncer package (1.18) cannot serve prepared statements in transaction mode",
                    bin.display()
                )
            });
        let numbers: Vec<u32> = version
            .split('.')
            .take(2)
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        assert!(
            numbers.as_slice() >= MIN_VERSION.as_slice(),
            "{} is PgBouncer {version}, older than 1.21 (no max_prepared_statements): rebuild it \
             with {build}",
            bin.display()
        );
        bin
    }

    /// Starts PgBouncer in transaction mode in front of `pg`'s database, for its application
    /// role, and waits until it accepts connections.
    pub fn start(pg: &PgServer, options: &Options) -> PgBouncer {
        let binary = if options.debian {
            crate::prereq::debian_pgbouncer()
        } else {
            PgBouncer::binary()
        };
        // Under /tmp, and open to `postgres`, which runs PgBouncer when the tests run as root.
        let dir = tempfile::Builder::new()
            .prefix("warmpool-pgbouncer-")
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir_in("/tmp")
            .expect("tempdir for PgBouncer");
        let d = dir.path();
        // A copy: the cache may sit in a home directory that `postgres` cannot enter.
        let bin = d.join("pgbouncer");
        fs::copy(&binary, &bin).unwrap_or_else(|e| panic!("copy {}: {e}", binary.display()));
        for name in ["server.crt", "server.key"] {
            fs::copy(pg.temp_dir().join(name), d.join(name))
                .unwrap_or_else(|e| panic!("copy {name}: {e}"));
        }
        fs::copy(pg.ca_path(), d.join("ca.pem")).expect("copy the test CA");
        let verifier = pg.superuser_psql(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{}'",
            pg.user()
        ));
        assert!(
            verifier.starts_with("SCRAM-SHA-256$"),
            "the test role has no SCRAM verifier"
        );

        let port = free_port();
        let ini = format!(
            "[databases]\n\
             {db} = host={host} port={pg_port} dbname={db}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {d}/userlist.txt\n\
             pool_mode = transaction\n\
             {prepared}\
             default_pool_size = {pool}\n\
             server_round_robin = {round_robin}\n\
             max_client_conn = 200\n\
             server_tls_sslmode = verify-full\n\
             server_tls_ca_file = {d}/ca.pem\n\
             client_tls_sslmode = require\n\
             client_tls_cert_file = {d}/server.crt\n\
             client_tls_key_file = {d}/server.key\n\
             logfile = {d}/pgbouncer.log\n\
             pidfile = {d}/pgbouncer.pid\n",
            db = pg.dbname(),
            host = pg.host(),
            pg_port = pg.port(),
            d = d.display(),
            // 1.18 does not know the setting and would refuse to start.
            prepared = if options.debian {
                String::new()
            } else {
                format!(
                    "max_prepared_statements = {}\n",
                    options.max_prepared_statements
                )
            },
            pool = options.pool_size,
            round_robin = u8::from(options.round_robin),
        );
        write(&d.join("pgbouncer.ini"), &ini);
        write(
            &d.join("userlist.txt"),
            &format!("\"{}\" \"{verifier}\"\n", pg.user()),
        );
        fs::set_permissions(d.join("server.key"), fs::Permissions::from_mode(0o600))
            .expect("chmod server.key");

        let mut cmd = Command::new(&bin);
        cmd.arg(d.join("pgbouncer.ini"))
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // PgBouncer refuses to run as root: as root, run it as `postgres`, which owns its files.
        if let Some((uid, gid)) = postgres_ids_if_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(d)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown -R postgres {} failed", d.display());
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut bouncer = PgBouncer {
            child: Some(child),
            dir,
            port,
        };
        bouncer.wait_until_listening();
        bouncer
    }

    /// The port PgBouncer listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The environment for the extension: `pg`'s, with the port pointed at PgBouncer. The host
    /// name and the CA stay the same, so the extension verifies PgBouncer's certificate in full.
    pub fn env(&self, pg: &PgServer) -> Vec<(String, String)> {
        let mut env = pg.env();
        for (k, v) in &mut env {
            if k == "PGPORT" {
                *v = self.port.to_string();
            }
        }
        env
    }

    /// Connection settings for `pg`'s application role through PgBouncer, with TLS, for a
    /// connection of the test's own.
    pub fn tokio_config(&self, pg: &PgServer) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(pg.host())
            .port(self.port)
            .user(pg.user())
            .password(pg.password())
            .dbname(pg.dbname())
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// The last lines of PgBouncer's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                panic!("PgBouncer exited ({status}); log:\n{}", self.log_tail(30));
            }
            assert!(
                Instant::now() < deadline,
                "PgBouncer did not listen within {START_TIMEOUT:?}; log:\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failing test unwinds.
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGINT is PgBouncer's "safe shutdown"; the pool's data is thrown away anyway, so SIGTERM
        // (immediate shutdown) is enough and does not wait for clients.
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Binds port 0 and releases it: racy against other tests, but PgBouncer fails loudly on a
/// taken port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// `postgres`'s uid and gid when this process is root; `None` otherwise.
fn postgres_ids_if_root() -> Option<(u32, u32)> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned));
    if euid.as_deref() != Some("0") {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("cannot run id");
        assert!(
            out.status.success(),
            "no `postgres` user to run PgBouncer as (apt-get install postgresql)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    Some((id("-u"), id("-g")))
}
