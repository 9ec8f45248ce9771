//! What the tests and the demo need from the machine, installed on first use: PostgreSQL's server
//! binaries and client, `runuser`, `ss`, and a PgBouncer recent enough for prepared statements in
//! transaction mode. `cargo test --workspace` on a machine with only Rust (and Debian's apt) sets
//! itself up; where it cannot (not root, no apt-get), the test fails with the command to run.
//!
//! Test binaries run in parallel and each may find the same thing missing: every install runs
//! under one lock file in the cache directory ([`cache_dir`]), and checks again once it holds
//! the lock.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

/// Where what is built once is kept (PgBouncer, and the lock every install takes):
/// `$WARMPOOL_BENCH_CACHE`, else `~/.cache/warmpool-bench`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("WARMPOOL_BENCH_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/warmpool-bench")))
        .expect("neither WARMPOOL_BENCH_CACHE nor HOME is set")
}

/// A Debian package and how to tell it is installed.
struct Package {
    name: &'static str,
    present: fn() -> bool,
}

/// PostgreSQL's server binaries and the `postgres` user that runs them.
pub fn postgres_server() {
    ensure(&[
        Package {
            name: "postgresql",
            present: || {
                glob_initdb()
                    && Command::new("id")
                        .arg("postgres")
                        .output()
                        .is_ok_and(|o| o.status.success())
            },
        },
        Package {
            name: "postgresql-client",
            present: || on_path("psql"),
        },
        Package {
            name: "util-linux",
            present: || on_path("runuser"),
        },
    ]);
}

/// `ss`, which the fault tests use to see bytes waiting in a backend's socket.
pub fn ss() {
    ensure(&[Package {
        name: "iproute2",
        present: || on_path("ss"),
    }]);
}

/// A PgBouncer of 1.21 or later, built once by `bench/pgbouncer/build.sh` into its cache, which
/// is what the script prints.
pub fn pgbouncer() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/pgbouncer/build.sh");
    let _lock = lock();
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "building PgBouncer failed: run `bash {}` as root (it needs apt-get for its build \
         dependencies and Debian's source package)\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    *built = Some(path.clone());
    path
}

/// Debian 12's own PgBouncer package (1.18), older than 1.21: it does not track prepared
/// statements, as many production poolers still do not.
pub fn debian_pgbouncer() -> PathBuf {
    const PATH: &str = "/usr/sbin/pgbouncer";
    ensure(&[Package {
        name: "pgbouncer",
        present: || Path::new(PATH).exists(),
    }]);
    PathBuf::from(PATH)
}

fn ensure(packages: &[Package]) {
    if packages.iter().all(|p| (p.present)()) {
        return;
    }
    let _lock = lock();
    let missing: Vec<&str> = packages
        .iter()
        .filter(|p| !(p.present)())
        .map(|p| p.name)
        .collect();
    if missing.is_empty() {
        return;
    }
    let command = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !running_as_root() || !on_path("apt-get") {
        panic!("missing {}: run `{command}` as root", missing.join(", "));
    }
    eprintln!("installing {}", missing.join(" "));
    let status = Command::new("sh")
        .args(["-c", &command])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
    assert!(status.success(), "`{command}` failed ({status})");
    for p in packages {
        assert!((p.present)(), "{} still missing after `{command}`", p.name);
    }
}

/// The machine-wide install lock, held until the returned guard drops.
fn lock() -> Flock<File> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join("install.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    Flock::lock(file, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("cannot lock {}: {e}", path.display()))
}

fn glob_initdb() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("bin/initdb").is_file())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        == Some("0")
}
