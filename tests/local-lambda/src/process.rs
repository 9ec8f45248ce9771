//! Child processes of the environment: spawned each in its own process group, with stdout and
//! stderr captured line by line, and an exit watcher.
//!
//! Lambda freezes and kills the whole environment, not just the processes it started: a helper
//! an extension forks is frozen with it. Starting every process as the leader of its own group
//! and signalling the group (`killpg`) gives the same reach for everything that does not leave
//! the group on purpose (`setsid`).
//!
//! Exits are watched with a blocking `wait()` on a plain thread rather than `tokio::process`, so
//! the watcher does not depend on which tokio runtime is alive, and `Drop` can wait for the
//! reaping synchronously.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::output::{OutputLog, Stream};

/// Which part of the environment a process plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An external extension, started from the extensions directory.
    Extension,
    /// The function's runtime (the `bootstrap`).
    Runtime,
}

/// A process of the environment, as reported by [`crate::LocalLambda::processes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The executable's file name.
    pub name: String,
    pub role: Role,
    pub pid: u32,
}

/// How a process ended.
#[derive(Clone, Copy, Debug)]
pub struct ExitInfo {
    /// When the exit was observed (the `wait()` returned).
    pub at: Instant,
    pub status: ExitStatus,
}

impl ExitInfo {
    /// True when the process was ended by SIGKILL.
    pub fn killed(&self) -> bool {
        self.status.signal() == Some(Signal::SIGKILL as i32)
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(s) => write!(f, "signal {sig} ({s})"),
                Err(_) => write!(f, "signal {sig}"),
            },
            _ => write!(f, "{}", self.status),
        }
    }
}

/// What to start.
pub(crate) struct SpawnSpec {
    pub name: String,
    pub role: Role,
    pub path: PathBuf,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
}

/// One-shot exit cell readable from async code (watch) and from `Drop` (condvar).
struct ExitCell {
    value: Mutex<Option<ExitInfo>>,
    cv: Condvar,
    tx: watch::Sender<Option<ExitInfo>>,
}

/// A started process. Cheap to share (`Arc`); signalling after the exit is a no-op.
pub(crate) struct ManagedProcess {
    pub info: ProcessInfo,
    /// `extension:<name>` or `runtime:<name>`: the label of its output lines and events.
    pub label: String,
    exit: Arc<ExitCell>,
}

impl ManagedProcess {
    /// Starts the process as the leader of a new process group. `on_exit` runs on the watcher
    /// thread once the process has been reaped.
    pub fn spawn(
        spec: SpawnSpec,
        output: Arc<OutputLog>,
        generation: u64,
        on_exit: impl FnOnce(&ProcessInfo, &str, ExitInfo) + Send + 'static,
    ) -> std::io::Result<Arc<Self>> {
        let mut cmd = Command::new(&spec.path);
        cmd.env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe. PR_SET_PDEATHSIG kills the child if the thread
        // that forked it dies: a safety net for a harness killed by SIGKILL or aborting, which
        // would otherwise leave stopped (frozen) processes behind. We spawn from the emulator's
        // runtime worker threads, which live as long as the emulator itself.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let role_name = match spec.role {
            Role::Extension => "extension",
            Role::Runtime => "runtime",
        };
        let label = format!("{role_name}:{}", spec.name);
        let info = ProcessInfo {
            name: spec.name,
            role: spec.role,
            pid,
        };

        let readers = [
            child
                .stdout
                .take()
                .map(|s| (Box::new(s) as Box<dyn Read + Send>, Stream::Stdout)),
            child
                .stderr
                .take()
                .map(|s| (Box::new(s) as Box<dyn Read + Send>, Stream::Stderr)),
        ];
        for (pipe, stream) in readers.into_iter().flatten() {
            let output = output.clone();
            let label = label.clone();
            std::thread::Builder::new()
                .name(format!("ll-out-{pid}"))
                .spawn(move || pump_lines(pipe, &output, generation, &label, pid, stream))?;
        }

        let (tx, _) = watch::channel(None);
        let exit = Arc::new(ExitCell {
            value: Mutex::new(None),
            cv: Condvar::new(),
            tx,
        });
        let cell = exit.clone();
        let (cb_info, cb_label) = (info.clone(), label.clone());
        std::thread::Builder::new()
            .name(format!("ll-wait-{pid}"))
            .spawn(move || {
                let status = match child.wait() {
                    Ok(s) => s,
                    // Only ECHILD is possible here; report it as a kill.
                    Err(_) => ExitStatus::from_raw(Signal::SIGKILL as i32),
                };
                let info = ExitInfo {
                    at: Instant::now(),
                    status,
                };
                *cell.value.lock().unwrap() = Some(info);
                cell.cv.notify_all();
                cell.tx.send_replace(Some(info));
                on_exit(&cb_info, &cb_label, info);
            })?;

        Ok(Arc::new(Self { info, label, exit }))
    }

    pub fn pid(&self) -> u32 {
        self.info.pid
    }

    pub fn exited(&self) -> Option<ExitInfo> {
        *self.exit.value.lock().unwrap()
    }

    /// Sends `sig` to the process group. Returns false if the group no longer exists.
    pub fn signal_group(&self, sig: Signal) -> bool {
        // The leader's pid is the group id (process_group(0) above). Linux does not hand out a
        // pid that is still some group's id, so the group cannot have been recycled while any
        // member lives.
        killpg(Pid::from_raw(self.info.pid as i32), sig).is_ok()
    }

    /// Waits for the exit until `deadline`.
    pub async fn wait_exit_until(&self, deadline: tokio::time::Instant) -> Option<ExitInfo> {
        let mut rx = self.exit.tx.subscribe();
        let waited = tokio::time::timeout_at(deadline, rx.wait_for(|v| v.is_some())).await;
        match waited {
            Ok(Ok(v)) => *v,
            _ => self.exited(),
        }
    }

    /// Blocking wait, for `Drop`.
    pub fn wait_exit_blocking(&self, timeout: Duration) -> Option<ExitInfo> {
        let guard = self.exit.value.lock().unwrap();
        let (guard, _) = self
            .exit
            .cv
            .wait_timeout_while(guard, timeout, |v| v.is_none())
            .unwrap();
        *guard
    }
}

fn pump_lines(
    pipe: Box<dyn Read + Send>,
    output: &OutputLog,
    generation: u64,
    label: &str,
    pid: u32,
    stream: Stream,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                output.push(generation, label, pid, stream, line.to_string());
            }
        }
    }
}

/// The scheduler state letter of `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`, ...), if the process
/// exists.
pub fn proc_state(pid: u32) -> Option<char> {
    parse_stat(pid).map(|(state, _)| state)
}

/// (state, process group) from `/proc/<pid>/stat`. The command name may contain spaces and
/// parentheses, so fields are counted after the last `)`.
fn parse_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Every live process whose process group is one of `groups` (the leaders and their children).
pub fn group_members(groups: &[u32]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| matches!(parse_stat(*pid), Some((s, g)) if groups.contains(&g) && s != 'Z'))
        .collect()
}
