//! The reference for what any relay process costs: one that copies bytes between a client's
//! Unix socket and PostgreSQL's own, understanding nothing of what it copies.
//!
//! The endpoint's added time per statement is two more wake-ups and context switches, two more
//! system calls on a socket and the relay's own work. The first three are the price of a process
//! in the path, whatever it does; under a load that fills the machine's cores they are also
//! queued behind everything else that runs. This copier pays them and nothing more: one thread,
//! one `copy_bidirectional` per connection, as the extension runs its sessions on one thread by
//! default. Measured in the same rounds as the endpoint, its added time (through it against
//! straight to PostgreSQL's socket) is the least a relay can add on this machine at that load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

pub struct Copier {
    dir: tempfile::TempDir,
    tid: u32,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Copier {
    /// Listens at `<its directory>/.s.PGSQL.<port>` and copies every connection to `target`,
    /// PostgreSQL's socket file.
    pub fn start(target: PathBuf, port: u16) -> Copier {
        let dir = tempfile::Builder::new()
            .prefix("warmpool-bench-copier-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let listener =
            std::os::unix::net::UnixListener::bind(dir.path().join(format!(".s.PGSQL.{port}")))
                .expect("bind the copier's socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _ = tid_tx.send(thread_id());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the copier's runtime");
            runtime.block_on(serve(listener, target, stopped));
        });
        let tid = tid_rx.recv().expect("the copier's thread started");
        Copier {
            dir,
            tid,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The directory to give libpq as its host.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CPU time its thread has used so far.
    pub fn cpu(&self) -> Duration {
        cpu_of(&format!("/proc/self/task/{}/schedstat", self.tid))
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Copier {
    fn drop(&mut self) {
        self.halt();
    }
}

async fn serve(
    listener: std::os::unix::net::UnixListener,
    target: PathBuf,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = UnixListener::from_std(listener).expect("register the copier's socket");
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((mut client, _)) = accepted else { continue };
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = UnixStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }
    }
}

/// This thread's id, from `/proc/thread-self` (`<pid>/task/<tid>`).
fn thread_id() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .expect("/proc/thread-self names this thread")
}

/// The CPU time a `schedstat` file reports (its first field, in nanoseconds); zero if it cannot
/// be read.
fn cpu_of(schedstat: &str) -> Duration {
    std::fs::read_to_string(schedstat)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// The CPU time every thread of process `pid` has used so far.
pub fn process_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    tasks
        .filter_map(Result::ok)
        .map(|t| cpu_of(&t.path().join("schedstat").display().to_string()))
        .sum()
}
