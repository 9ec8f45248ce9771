//! The Init phase: start every external extension, wait until all have registered, start the
//! runtime, and wait until the runtime and every extension have called `next`.
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-extensions-api.html#runtimes-extensions-api-reg>

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::log_stream_name;
use crate::environment::{ExtensionSlot, Generation, Phase, Shared, Wait};
use crate::events::{EventKind, ShutdownReason};
use crate::lifecycle::InitFailure;
use crate::process::{ManagedProcess, Role, SpawnSpec};

type InitResult = Result<Arc<Generation>, (Arc<Generation>, InitFailure)>;

pub(super) async fn run(shared: &Arc<Shared>) -> InitResult {
    let cfg = &shared.config;
    let id = shared.init_count.fetch_add(1, Ordering::SeqCst) + 1;
    let gen = Arc::new(Generation::new(id, cfg.is_lmi()));
    *shared.current.lock().unwrap() = Some(gen.clone());
    shared.events.push(id, EventKind::InitStarted);

    let result = phases(shared, &gen).await;
    let error = result.as_ref().err().map(|f| f.message.clone());
    if error.is_none() {
        gen.update(|s| s.phase = Phase::Ready);
    }
    shared.events.push(id, EventKind::InitEnded { error });
    match result {
        Ok(()) => Ok(gen),
        Err(f) => Err((gen, f)),
    }
}

async fn phases(shared: &Arc<Shared>, gen: &Arc<Generation>) -> Result<(), InitFailure> {
    let cfg = &shared.config;
    let deadline = tokio::time::Instant::now() + cfg.init_timeout;
    let api = shared.api_addr.to_string();
    let stream = log_stream_name(&cfg.function_version);
    let failure = |message: String| InitFailure {
        reason: ShutdownReason::Failure,
        message,
    };

    // 1. Extension init: every executable of the extensions directory, as its own process.
    let exes = match &cfg.extensions_dir {
        Some(dir) => {
            list_executables(dir).map_err(|e| failure(format!("{}: {e}", dir.display())))?
        }
        None => Vec::new(),
    };
    let ext_env = cfg.extension_env(&api, &stream);
    for path in exes {
        let name = file_name(&path);
        gen.update(|s| {
            s.extensions.push(ExtensionSlot {
                name: name.clone(),
                external: true,
                process: None,
                reg: None,
            })
        });
        let spec = SpawnSpec {
            name: name.clone(),
            role: Role::Extension,
            path,
            cwd: cfg.task_root.clone(),
            env: ext_env.clone(),
        };
        let p = start(shared, gen, spec)
            .map_err(|e| failure(format!("could not start extension {name}: {e}")))?;
        gen.update(|s| {
            if let Some(slot) = s.extensions.iter_mut().find(|e| e.name == name) {
                slot.process = Some(p);
            }
        });
    }
    let all_registered = |s: &crate::environment::GenState| s.external().all(|e| e.reg.is_some());
    check(
        gen.wait_until(Some(deadline), all_registered).await,
        cfg,
        || {
            let missing: Vec<String> = gen.read(|s| {
                s.external()
                    .filter(|e| e.reg.is_none())
                    .map(|e| e.name.clone())
                    .collect()
            });
            format!("extensions never registered: {missing:?}")
        },
    )?;

    // 2. Runtime init (and function init, inside the runtime) once extensions have registered.
    let spec = SpawnSpec {
        name: file_name(&cfg.bootstrap),
        role: Role::Runtime,
        path: cfg.bootstrap.clone(),
        cwd: cfg.task_root.clone(),
        env: cfg.runtime_env(&api, &stream),
    };
    let rt = start(shared, gen, spec).map_err(|e| {
        failure(format!(
            "could not start the runtime {}: {e}",
            cfg.bootstrap.display()
        ))
    })?;
    gen.update(|s| s.runtime = Some(rt));

    // 3. Init ends when the runtime and every registered extension have called next.
    let ready = |s: &crate::environment::GenState| {
        s.runtime_next_calls >= 1 && s.registrations().all(|r| r.idle())
    };
    check(gen.wait_until(Some(deadline), ready).await, cfg, || {
        gen.read(|s| {
            let mut late: Vec<String> = s
                .extensions
                .iter()
                .filter(|e| e.reg.as_ref().is_some_and(|r| !r.idle()))
                .map(|e| format!("extension {}", e.name))
                .collect();
            if s.runtime_next_calls == 0 {
                late.push("the runtime".into());
            }
            format!("never called next: {}", late.join(", "))
        })
    })
}

fn check(
    wait: Wait,
    cfg: &crate::config::Config,
    pending: impl FnOnce() -> String,
) -> Result<(), InitFailure> {
    match wait {
        Wait::Met => Ok(()),
        Wait::Deadline => Err(InitFailure {
            reason: ShutdownReason::Timeout,
            message: format!("Init timed out after {:?}; {}", cfg.init_timeout, pending()),
        }),
        Wait::Failed(why) => Err(InitFailure {
            reason: ShutdownReason::Failure,
            message: why,
        }),
    }
}

/// Starts a process of `gen`; its exit is reported to `gen` (a failure unless shutting down).
fn start(
    shared: &Arc<Shared>,
    gen: &Arc<Generation>,
    spec: SpawnSpec,
) -> std::io::Result<Arc<ManagedProcess>> {
    let (g, events) = (gen.clone(), shared.events.clone());
    let p = ManagedProcess::spawn(
        spec,
        shared.output.clone(),
        gen.id,
        move |info, label, exit| {
            g.process_exited(&events, label, info.pid, exit.to_string());
        },
    )?;
    shared.all_processes.lock().unwrap().push(p.clone());
    shared.events.push(
        gen.id,
        EventKind::ProcessStarted {
            process: p.label.clone(),
            pid: p.pid(),
        },
    );
    Ok(p)
}

/// Lambda starts every file of /opt/extensions as an extension. Sorted for a stable order;
/// directories and non-executable files are skipped (they could not be started anyway).
fn list_executables(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // `metadata` follows symlinks: a symlinked executable counts.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}
