//! Setup: the binaries, the database and its seed, and what the server log says about
//! connections.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use warmpool_tests::PgServer;

/// The cargo profile directory this program runs from (`target/release`, `target/debug`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe has a parent").to_owned();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

pub fn is_release() -> bool {
    profile_dir().file_name().is_some_and(|n| n == "release")
}

/// Builds the benchmark's function binary with this program's profile, as the test harness builds
/// the extension (without the variables Cargo set for this program, which would make the build
/// recompile dependencies, and the next `cargo run` recompile them back), and returns its path.
pub fn build_function() -> PathBuf {
    warmpool_tests::ext::built("warmpool-bench", "bench-fn")
}

/// Starts the private PostgreSQL with connection logging (to count server connections) and
/// room for every scenario's connections.
pub fn start_postgres() -> PgServer {
    let pg = PgServer::start();
    pg.set_config("log_connections", "on");
    pg.set_config("log_disconnections", "on");
    pg.set_config("max_connections", "300");
    pg.restart();
    pg
}

/// Creates and fills the tables the workloads use, and a login role per scenario (members of
/// `app`, with its password), so the server log tells the scenarios' connections apart.
pub fn seed(pg: &PgServer, rows: u32, roles: &[String]) {
    for role in roles {
        pg.superuser_psql(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{}' IN ROLE app",
            pg.password()
        ));
    }
    pg.superuser_psql(&format!(
        "SET ROLE app;
         CREATE TABLE bench_accounts (id int PRIMARY KEY, name text NOT NULL, balance bigint NOT NULL);
         INSERT INTO bench_accounts SELECT i, 'account ' || i, i * 10 FROM generate_series(1, {rows}) i;
         CREATE TABLE bench_events (id bigserial PRIMARY KEY, account_id int NOT NULL,
             amount int NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         ANALYZE bench_accounts;"
    ));
}

/// Client connections of the application roles (everyone but the superuser) open right now.
pub fn app_connections(pg: &PgServer) -> u32 {
    pg.superuser_psql(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE usename <> 'postgres' AND backend_type = 'client backend'",
    )
    .trim()
    .parse()
    .unwrap_or(0)
}

/// Waits (bounded) until no application connection is open; returns how many are left.
pub fn wait_app_connections_closed(pg: &PgServer, timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    loop {
        let n = app_connections(pg);
        if n == 0 || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Server connections of one role seen in a slice of the server log.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Connections {
    /// Connections authorised in the slice.
    pub opened: u32,
    /// The most open at once: the running balance of authorisations and disconnections, in log
    /// order (the slice starts with none open).
    pub peak: u32,
    /// The most opened by one environment (by `application_name`); `None` when the log does
    /// not name them (PgBouncer's server connections, which no environment opens itself).
    pub max_per_env: Option<u32>,
}

/// A position in the server log.
pub fn log_offset(pg: &PgServer) -> u64 {
    std::fs::metadata(pg.log_path()).map_or(0, |m| m.len())
}

/// Counts `role`'s connections in the log from `offset`.
pub fn connections_since(pg: &PgServer, offset: u64, role: &str) -> Connections {
    let log = std::fs::read(pg.log_path()).unwrap_or_default();
    let slice = log.get(offset as usize..).unwrap_or(&[]);
    count_connections(&String::from_utf8_lossy(slice), role)
}

fn count_connections(log: &str, role: &str) -> Connections {
    let authorized = format!("connection authorized: user={role} ");
    let user = format!(" user={role} ");
    let mut open = 0i64;
    let mut peak = 0i64;
    let mut opened = 0;
    let mut per_env: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for line in log.lines() {
        if line.contains(&authorized) {
            opened += 1;
            open += 1;
            peak = peak.max(open);
            if let Some(name) = line
                .split_once("application_name=bench-env-")
                .and_then(|(_, rest)| rest.split_whitespace().next())
            {
                *per_env.entry(name).or_default() += 1;
            }
        } else if line.contains("disconnection: session time:") && line.contains(&user) {
            open -= 1;
        }
    }
    Connections {
        opened,
        peak: peak.max(0) as u32,
        max_per_env: per_env.values().copied().max(),
    }
}

/// Size of a file in bytes.
pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The first line of a command's output, or "unknown".
pub fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `VmHWM` (peak resident set) of a process in KiB, from /proc.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_connections_from_the_log() {
        let log = "\
2026-11-27 10:00:00.000 UTC [1] LOG:  connection authorized: user=bench_x database=app application_name=bench-env-1 SSL enabled
2026-11-27 10:00:00.001 UTC [2] LOG:  connection authorized: user=bench_x database=app application_name=bench-env-2 SSL enabled
2026-11-27 10:00:00.002 UTC [3] LOG:  connection authorized: user=bench_x_y database=app
2026-11-27 10:00:00.003 UTC [1] LOG:  disconnection: session time: 0:00:00.003 user=bench_x database=app host=127.0.0.1 port=5
2026-11-27 10:00:00.004 UTC [4] LOG:  connection authorized: user=bench_x database=app application_name=bench-env-1 SSL enabled
";
        let c = count_connections(log, "bench_x");
        assert_eq!(c.opened, 3);
        assert_eq!(c.peak, 2);
        assert_eq!(c.max_per_env, Some(2));
    }
}
