//! The Lambda layer, tested as a layer.
//!
//! Every test here first runs `scripts/build-layer --check-tools`, the command users run, once per
//! test process: it builds both layer zips and the example function against glibc 2.34 (a no-op
//! when nothing changed) and installs the tools these checks use. Then the tests read what a user
//! would upload: the zips, not the build directory.
//!
//! - the zips hold `extensions/warmpool` (and the function zip `bootstrap`), mode 0755, and
//!   nothing else, and unpack to the binaries just built;
//! - every binary is a 64-bit ELF for its architecture, with the right dynamic loader, linked to
//!   glibc's own libraries only and to no symbol version newer than GLIBC_2.34 (Amazon Linux
//!   2023, `provided.al2023`);
//! - both extensions answer `--version`, the arm64 one under `qemu-aarch64-static`;
//! - the unpacked x86_64 layer serves as `/opt` of the local Lambda emulator, with the example
//!   function as the runtime, and invocations succeed against a real TLS PostgreSQL;
//! - `template.yaml` passes `cfn-lint`.
//!
//! The first build on a machine compiles two targets in release mode with LTO, which takes
//! minutes, and so does the rebuild after any change to the extension. So these tests are
//! `#[ignore]`d, with that reason, in a plain `cargo test --workspace` (which lists them as
//! ignored), and `scripts/build-layer --check` runs them with `--include-ignored` after a visible
//! build. CI runs that check.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use warmpool_tests::PgServer;

/// Amazon Linux 2023's glibc, the newest a binary may require.
const MAX_GLIBC: (u32, u32) = (2, 34);

struct Arch {
    /// The name in the zip's file name, as Lambda spells the architecture.
    name: &'static str,
    rust_target: &'static str,
    /// ELF `e_machine`.
    machine: u16,
    interpreter: &'static str,
}

const X86_64: Arch = Arch {
    name: "x86_64",
    rust_target: "x86_64-unknown-linux-gnu",
    machine: 62, // EM_X86_64
    interpreter: "/lib64/ld-linux-x86-64.so.2",
};

const ARM64: Arch = Arch {
    name: "arm64",
    rust_target: "aarch64-unknown-linux-gnu",
    machine: 183, // EM_AARCH64
    interpreter: "/lib/ld-linux-aarch64.so.1",
};

const ARCHS: [&Arch; 2] = [&X86_64, &ARM64];

/// glibc's own libraries, the only ones the binaries may need. Notably absent: `libgcc_s.so.1`,
/// which a plain `cargo build` links for unwinding; zig links its unwinder statically, so the
/// layer relies on nothing of the runtime image but glibc.
const GLIBC_LIBS: [&str; 8] = [
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libutil.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn out_dir() -> PathBuf {
    repo_root().join("target/lambda-layer")
}

fn layer_zip(arch: &Arch) -> PathBuf {
    out_dir().join(format!("warmpool-layer-{}.zip", arch.name))
}

fn function_zip() -> PathBuf {
    out_dir().join("warmpool-example-orders-x86_64.zip")
}

fn built_binary(arch: &Arch, name: &str) -> PathBuf {
    out_dir()
        .join("cargo")
        .join(arch.rust_target)
        .join("release")
        .join(name)
}

/// Runs the layer build once per test process. A failure fails every test with the script's
/// own message (its output is not captured, so the build log is above).
fn build() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let script = repo_root().join("scripts/build-layer");
        let status = Command::new("bash")
            .arg(&script)
            .arg("--check-tools")
            .current_dir(repo_root())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} --check-tools failed: {status}",
                script.display()
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("UTF-8 output")
}

/// Unpacks `zip` into `dir` with Info-ZIP's `unzip`, which applies the stored Unix modes as
/// Lambda does when it unpacks a layer into `/opt`.
fn unzip(zip: &Path, dir: &Path) {
    run(Command::new("unzip").arg("-q").arg(zip).arg("-d").arg(dir));
}

// --- Zip ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct ZipEntry {
    name: String,
    /// The high byte of "version made by": 3 is Unix, the only system whose modes unpackers
    /// apply.
    made_by_system: u8,
    /// The Unix `st_mode` in the high half of the external attributes.
    mode: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Reads a zip's central directory: what every unpacker, Lambda's included, goes by.
fn zip_entries(zip: &Path) -> Vec<ZipEntry> {
    let b = std::fs::read(zip).unwrap_or_else(|e| panic!("{}: {e}", zip.display()));
    assert!(b.len() >= 22, "{}: too short for a zip", zip.display());
    let eocd = (0..=b.len() - 22)
        .rev()
        .find(|&i| u32_at(&b, i) == 0x0605_4b50)
        .unwrap_or_else(|| panic!("{}: no end of central directory", zip.display()));
    let count = u16_at(&b, eocd + 10) as usize;
    let mut at = u32_at(&b, eocd + 16) as usize;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        assert_eq!(u32_at(&b, at), 0x0201_4b50, "bad central directory header");
        let name_len = u16_at(&b, at + 28) as usize;
        let extra_len = u16_at(&b, at + 30) as usize;
        let comment_len = u16_at(&b, at + 32) as usize;
        entries.push(ZipEntry {
            name: String::from_utf8(b[at + 46..at + 46 + name_len].to_vec()).expect("UTF-8 name"),
            made_by_system: (u16_at(&b, at + 4) >> 8) as u8,
            mode: u32_at(&b, at + 38) >> 16,
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    entries
}

fn unix_entry(name: &str, mode: u32) -> ZipEntry {
    ZipEntry {
        name: name.into(),
        made_by_system: 3,
        mode,
    }
}

#[test]
#[ignore = "builds the Lambda layer (minutes cold): run by scripts/build-layer --check"]
fn layer_zips_hold_only_an_executable_extensions_warmpool() {
    build();
    for arch in ARCHS {
        let zip = layer_zip(arch);
        assert_eq!(
            zip_entries(&zip),
            [
                unix_entry("extensions/", 0o040755),
                unix_entry("extensions/warmpool", 0o100755),
            ],
            "{}",
            zip.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        unzip(&zip, dir.path());
        let unpacked = dir.path().join("extensions/warmpool");
        let meta = std::fs::symlink_metadata(&unpacked).expect("extensions/warmpool unpacked");
        assert!(meta.is_file(), "{}: not a regular file", unpacked.display());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o755,
            "mode after unzip"
        );
        assert!(
            std::fs::read(&unpacked).unwrap()
                == std::fs::read(built_binary(arch, "warmpool")).unwrap(),
            "{} does not hold the binary just built: a stale zip?",
            zip.display()
        );
        eprintln!(
            "{}: {} bytes, extensions/warmpool {} bytes",
            zip.display(),
            std::fs::metadata(&zip).unwrap().len(),
            meta.len()
        );
    }
}

#[test]
#[ignore = "builds the Lambda layer (minutes cold): run by scripts/build-layer --check"]
fn function_zip_holds_an_executable_bootstrap() {
    build();
    assert_eq!(
        zip_entries(&function_zip()),
        [unix_entry("bootstrap", 0o100755)]
    );
}

// --- ELF ---------------------------------------------------------------------------------------

/// The ELF header fields that decide where a binary can run: its machine and its dynamic loader.
fn elf_machine_and_interpreter(path: &Path) -> (u16, String) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..4], b"\x7fELF", "{}: not ELF", path.display());
    assert_eq!(b[4], 2, "{}: not 64-bit", path.display());
    assert_eq!(b[5], 1, "{}: not little-endian", path.display());
    let machine = u16_at(&b, 18);
    let phoff = u64_at(&b, 32) as usize;
    let phentsize = u16_at(&b, 54) as usize;
    let phnum = u16_at(&b, 56) as usize;
    let interp = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&ph| u32_at(&b, ph) == 3) // PT_INTERP
        .map(|ph| {
            let off = u64_at(&b, ph + 8) as usize;
            let len = u64_at(&b, ph + 32) as usize;
            String::from_utf8(b[off..off + len].to_vec())
                .expect("UTF-8 interpreter")
                .trim_end_matches('\0')
                .to_owned()
        })
        .unwrap_or_else(|| panic!("{}: no PT_INTERP (static?)", path.display()));
    (machine, interp)
}

/// Every `GLIBC_x.y[.z]` symbol version the binary's dynamic symbols require, parsed from
/// `objdump -T`, sorted.
fn glibc_versions(path: &Path) -> Vec<Vec<u32>> {
    let dump = stdout(Command::new("objdump").arg("-T").arg(path));
    let mut versions: Vec<Vec<u32>> = dump
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|v| v.split('.').map(|n| n.parse().ok()).collect())
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

/// The `NEEDED` entries of the dynamic section, from `objdump -p`.
fn needed_libraries(path: &Path) -> Vec<String> {
    stdout(Command::new("objdump").arg("-p").arg(path))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Whether a `GLIBC_` version (its numbers) is newer than Amazon Linux 2023's.
fn newer_than_al2023(version: &[u32]) -> bool {
    version > &[MAX_GLIBC.0, MAX_GLIBC.1][..]
}

fn check_runs_on_al2023(arch: &Arch, path: &Path) {
    let (machine, interp) = elf_machine_and_interpreter(path);
    assert_eq!(machine, arch.machine, "{}: e_machine", path.display());
    assert_eq!(
        interp,
        arch.interpreter,
        "{}: dynamic loader",
        path.display()
    );

    let needed = needed_libraries(path);
    assert!(!needed.is_empty(), "{}: no NEEDED entries", path.display());
    for lib in &needed {
        assert!(
            GLIBC_LIBS.contains(&lib.as_str()),
            "{} needs {lib}, which is not part of glibc",
            path.display()
        );
    }

    let versions = glibc_versions(path);
    // Guards against a change in objdump's output making this check vacuous.
    assert!(
        !versions.is_empty(),
        "{}: no GLIBC_ symbol versions found",
        path.display()
    );
    let newest = versions.last().unwrap();
    let show = |v: &Vec<u32>| v.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
    eprintln!(
        "{} ({}): needs {}; glibc versions {}",
        path.display(),
        arch.name,
        needed.join(", "),
        versions.iter().map(show).collect::<Vec<_>>().join(" ")
    );
    assert!(
        !newer_than_al2023(newest),
        "{} requires GLIBC_{}, newer than Amazon Linux 2023's {}.{}",
        path.display(),
        show(newest),
        MAX_GLIBC.0,
        MAX_GLIBC.1
    );
}

/// Not ignored, and quick: the check above catches a binary from a plain `cargo build` (this
/// test program), which needs `libgcc_s.so.1`.
#[test]
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
fn the_al2023_check_rejects_a_plain_cargo_build() {
    let me = std::env::current_exe().expect("current_exe");
    let (machine, _) = elf_machine_and_interpreter(&me);
    assert_eq!(machine, X86_64.machine);
    assert!(
        !glibc_versions(&me).is_empty(),
        "objdump -T found no GLIBC_ versions"
    );
    assert!(newer_than_al2023(&[2, 35]) && newer_than_al2023(&[3, 0]));
    assert!(!newer_than_al2023(&[2, 34]) && !newer_than_al2023(&[2, 3, 4]));
    let verdict = std::panic::catch_unwind(|| check_runs_on_al2023(&X86_64, &me));
    let message = verdict
        .expect_err("a plain cargo build passed the Amazon Linux 2023 check")
        .downcast::<String>()
        .map(|m| *m)
        .unwrap_or_default();
    assert!(message.contains("libgcc_s.so.1"), "{message}");
}

#[test]
#[ignore = "builds the Lambda layer (minutes cold): run by scripts/build-layer --check"]
fn binaries_need_nothing_newer_than_glibc_2_34() {
    build();
    for arch in ARCHS {
        let dir = tempfile::tempdir().expect("tempdir");
        unzip(&layer_zip(arch), dir.path());
        check_runs_on_al2023(arch, &dir.path().join("extensions/warmpool"));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    unzip(&function_zip(), dir.path());
    check_runs_on_al2023(&X86_64, &dir.path().join("bootstrap"));
}

/// A command that runs a binary of `arch` here: directly on its own architecture, under
/// qemu-user otherwise, with the target's glibc from Debian's cross packages.
fn runner(arch: &Arch, binary: &Path) -> Command {
    let host = std::env::consts::ARCH;
    let native = matches!(
        (host, arch.name),
        ("x86_64", "x86_64") | ("aarch64", "arm64")
    );
    if native {
        return Command::new(binary);
    }
    let (qemu, sysroot) = match arch.name {
        "arm64" => ("qemu-aarch64-static", "/usr/aarch64-linux-gnu"),
        _ => ("qemu-x86_64-static", "/usr/x86_64-linux-gnu"),
    };
    let mut cmd = Command::new(qemu);
    cmd.arg("-L").arg(sysroot).arg(binary);
    cmd
}

#[test]
#[ignore = "builds the Lambda layer (minutes cold): run by scripts/build-layer --check"]
fn both_extensions_start_and_answer_version() {
    build();
    for arch in ARCHS {
        let dir = tempfile::tempdir().expect("tempdir");
        unzip(&layer_zip(arch), dir.path());
        let out = stdout(runner(arch, &dir.path().join("extensions/warmpool")).arg("--version"));
        assert_eq!(
            out.trim(),
            format!("warmpool {}", env!("CARGO_PKG_VERSION")),
            "{}",
            arch.name
        );
    }
}

// --- The layer in the local Lambda emulator -----------------------------------------------------

/// The `local-lambda` command, built once with the profile of this test binary.
fn local_lambda() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let mut profile_dir = exe.parent().expect("exe has a parent").to_owned();
        if profile_dir.file_name().is_some_and(|n| n == "deps") {
            profile_dir.pop();
        }
        let mut cmd = warmpool_tests::ext::cargo();
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "warmpool-local-lambda",
            "--bin",
            "local-lambda",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if let Some(target_dir) = profile_dir.parent() {
            cmd.arg("--target-dir").arg(target_dir);
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cannot run cargo to build local-lambda");
        assert!(status.success(), "building local-lambda failed");
        let bin = profile_dir.join("local-lambda");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
}

#[test]
#[ignore = "builds the Lambda layer (minutes cold): run by scripts/build-layer --check"]
fn unzipped_layer_serves_the_example_function_in_the_local_lambda() {
    build();
    let pg = PgServer::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    // What Lambda does with a function and its layer: the layer unpacked as /opt, the
    // function's zip as the task root.
    let opt = tmp.path().join("opt");
    let task = tmp.path().join("task");
    unzip(&layer_zip(&X86_64), &opt);
    unzip(&function_zip(), &task);

    let mut cmd = Command::new(local_lambda());
    cmd.arg("--extensions")
        .arg(opt.join("extensions"))
        .arg("--bootstrap")
        .arg(task.join("bootstrap"))
        .args(["--function-name", "warmpool-orders", "--events"])
        // Generous for a loaded CI machine; a healthy run takes milliseconds.
        .args(["--timeout-ms", "15000", "--init-timeout-ms", "10000"]);
    let mut env = pg.env();
    env.push((
        "WARMPOOL_SOCKET".into(),
        tmp.path().join("warmpool.sock").display().to_string(),
    ));
    env.push((
        "WARMPOOL_PG_SOCKET_DIR".into(),
        tmp.path().display().to_string(),
    ));
    env.push(("WARMPOOL_LOG".into(), "debug".into()));
    for (k, v) in env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    cmd.args([
        "--invoke",
        r#"{"action":"setup"}"#,
        "--invoke",
        r#"{"action":"backend"}"#,
    ]);
    let out = cmd.output().expect("cannot run local-lambda");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "local-lambda failed ({}):\n{text}",
        out.status
    );

    // The emulator's own report, for the record (shown with --nocapture).
    for line in text.lines().filter(|l| {
        l.starts_with("invocation ")
            || l.starts_with("shutdown ")
            || ["cold start", "outcome", "duration", "extension warmpool"]
                .iter()
                .any(|k| l.trim_start().starts_with(k))
    }) {
        eprintln!("{line}");
    }

    // Started from the unpacked layer, as an external extension under its file name.
    assert!(
        text.contains("external extension warmpool registered for"),
        "the layer's extension did not register:\n{text}"
    );
    let outcomes: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  outcome      "))
        .collect();
    assert_eq!(outcomes.len(), 2, "two invocations expected:\n{text}");
    assert_eq!(outcomes[0], r#"ok: {"ok":true}"#, "setup:\n{text}");
    let backend: serde_json::Value = serde_json::from_str(
        outcomes[1]
            .strip_prefix("ok: ")
            .unwrap_or_else(|| panic!("backend failed:\n{text}")),
    )
    .expect("backend answer is JSON");
    assert!(
        backend["pid"].as_i64().is_some_and(|pid| pid > 0),
        "backend answer without a server pid: {backend}\n{text}"
    );
    // The extension closed its connections and exited by itself at SHUTDOWN.
    let ext_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("extension warmpool (pid"))
        .unwrap_or_else(|| panic!("no shutdown line for the extension:\n{text}"));
    assert!(
        ext_line.contains("got SHUTDOWN, exited") && !ext_line.contains("SIGKILL"),
        "the extension did not exit cleanly at SHUTDOWN: {ext_line}\n{text}"
    );
    // The setup invocation reached the database through the layer.
    assert_eq!(
        pg.superuser_psql("SELECT to_regclass('public.orders') IS NOT NULL"),
        "t"
    );
}

// --- template.yaml -----------------------------------------------------------------------------

#[test]
#[ignore = "builds the Lambda layer (minutes cold): run by scripts/build-layer --check"]
fn template_passes_cfn_lint() {
    build();
    let cfn_lint = out_dir().join("venv/bin/cfn-lint");
    let out = Command::new(&cfn_lint)
        .arg("--")
        .arg(repo_root().join("template.yaml"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cfn_lint.display()));
    assert!(
        out.status.success(),
        "cfn-lint template.yaml ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
