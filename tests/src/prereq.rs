//! What the tests and the demo need from the machine, installed on first use: PostgreSQL's server
//! binaries and client, `runuser`, `ss`, a PgBouncer recent enough for prepared statements in
//! transaction mode, and the drivers of other languages that the PostgreSQL-protocol tests run
//! (psycopg and asyncpg in a Python venv, `pg` and `postgres` for Node.js, pgJDBC with a JDK). `cargo test --workspace` on a machine with only Rust (and Debian's apt) sets
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

/// Versions the driver scripts are written against: psycopg 3.2 brought `Connection.notifies`
/// with a timeout and `cancel_safe`; `pg-copy-streams` is how `pg` does COPY.
const PYTHON_DRIVERS: &[&str] = &["psycopg[binary]>=3.2,<4", "asyncpg>=0.29,<1"];
const PYTHON_MODULES: &str = "import psycopg, psycopg_binary, asyncpg";
const NODE_DRIVERS: &[&str] = &["pg@8", "postgres@3", "pg-copy-streams@6"];
/// Where Debian's `libpostgresql-jdbc-java` puts pgJDBC.
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// `pgbench`, from PostgreSQL's client package.
pub fn pgbench() {
    ensure(&[Package {
        name: "postgresql-client",
        present: || on_path("pgbench"),
    }]);
}

/// A Python venv at `dir/venv` with psycopg (and its binary libpq) and asyncpg, created when
/// it is missing or broken; returns its interpreter.
pub fn python_drivers(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let python = venv.join("bin/python");
    let ready = || {
        Command::new(&python)
            .args(["-c", PYTHON_MODULES])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready() {
        return python;
    }
    ensure(&[Package {
        name: "python3-venv",
        present: || {
            Command::new("python3")
                .args(["-c", "import venv, ensurepip"])
                .output()
                .is_ok_and(|o| o.status.success())
        },
    }]);
    let _lock = lock();
    if ready() {
        return python;
    }
    create_dir(dir);
    // --clear: a venv left half made by an interrupted install is made again.
    run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv));
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_DRIVERS));
    assert!(
        ready(),
        "`{PYTHON_MODULES}` still fails in {}",
        venv.display()
    );
    python
}

/// A `node_modules` at `dir/node/node_modules` with `pg`, `pg-copy-streams` and `postgres`,
/// installed when missing; returns that directory, for `NODE_PATH`. Also makes sure `node` is
/// there.
pub fn node_drivers(dir: &Path) -> PathBuf {
    let prefix = dir.join("node");
    let modules = prefix.join("node_modules");
    let ready = || {
        on_path("node")
            && NODE_DRIVERS.iter().all(|spec| {
                let name = spec.rsplit_once('@').map_or(*spec, |(n, _)| n);
                modules.join(name).join("package.json").is_file()
            })
    };
    if ready() {
        return modules;
    }
    ensure(&[Package {
        name: "nodejs npm",
        present: || on_path("node") && on_path("npm"),
    }]);
    let _lock = lock();
    if ready() {
        return modules;
    }
    create_dir(&prefix);
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&prefix)
        .args(NODE_DRIVERS));
    assert!(
        ready(),
        "{NODE_DRIVERS:?} still missing in {}",
        modules.display()
    );
    modules
}

/// pgJDBC from Debian's package, and a JDK to run the Java check (`java` launching a source
/// file compiles it, so it needs `javac`'s compiler too); returns the jar.
pub fn pgjdbc() -> PathBuf {
    ensure(&[
        Package {
            name: "default-jdk-headless",
            present: || on_path("java") && on_path("javac"),
        },
        Package {
            name: "libpostgresql-jdbc-java",
            present: || Path::new(PGJDBC_JAR).is_file(),
        },
    ]);
    PathBuf::from(PGJDBC_JAR)
}

fn create_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
}

/// Runs an install step, failing with the command and its output.
fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    eprintln!("installing: {shown}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}): run it by hand to see why\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
