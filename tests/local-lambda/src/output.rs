//! The captured stdout/stderr lines of every process the environment started, in arrival order,
//! with a way to wait for a line (tests wait on output, never on sleeps).

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line a process wrote.
#[derive(Clone, Debug)]
pub struct OutputLine {
    /// Time since the [`crate::LocalLambda`] was built.
    pub at: Duration,
    /// Which Init the process belongs to (1 for the first).
    pub generation: u64,
    /// `extension:<file name>` or `runtime:<file name>`.
    pub process: String,
    pub pid: u32,
    pub stream: Stream,
    pub line: String,
}

impl fmt::Display for OutputLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} #{}] {}", self.process, self.generation, self.line)
    }
}

/// Returned when a waited-for line did not show up in time.
#[derive(Debug)]
pub struct WaitTimeout {
    pub waited_for: String,
    pub timeout: Duration,
    /// The last lines captured, to show what happened instead.
    pub recent: Vec<String>,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no {} within {:?}; last lines:",
            self.waited_for, self.timeout
        )?;
        for l in &self.recent {
            write!(f, "\n  {l}")?;
        }
        Ok(())
    }
}

impl std::error::Error for WaitTimeout {}

pub(crate) struct OutputLog {
    start: Instant,
    lines: Mutex<Vec<OutputLine>>,
    /// Bumped on every line so waiters re-check without polling.
    tick: watch::Sender<usize>,
    echo: bool,
}

impl OutputLog {
    pub fn new(start: Instant, echo: bool) -> Self {
        Self {
            start,
            lines: Mutex::new(Vec::new()),
            tick: watch::channel(0).0,
            echo,
        }
    }

    pub fn push(&self, generation: u64, process: &str, pid: u32, stream: Stream, line: String) {
        let line = OutputLine {
            at: self.start.elapsed(),
            generation,
            process: process.to_string(),
            pid,
            stream,
            line,
        };
        if self.echo {
            eprintln!("{line}");
        }
        self.lines.lock().unwrap().push(line);
        self.tick.send_modify(|n| *n += 1);
    }

    pub fn snapshot(&self) -> Vec<OutputLine> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for the first line (already captured or future) from a process whose label
    /// contains `process` and whose text contains `needle`.
    pub async fn wait_for(
        &self,
        process: &str,
        needle: &str,
        timeout: Duration,
    ) -> Result<OutputLine, WaitTimeout> {
        let mut rx = self.tick.subscribe();
        let find = || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.process.contains(process) && l.line.contains(needle))
                .cloned()
        };
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if let Some(l) = find() {
                    return l;
                }
                // The sender lives in `self`, so `changed` cannot fail while we borrow it.
                let _ = rx.changed().await;
            }
        })
        .await;
        waited.map_err(|_| {
            let lines = self.lines.lock().unwrap();
            WaitTimeout {
                waited_for: format!(
                    "line containing {needle:?} from a process matching {process:?}"
                ),
                timeout,
                recent: lines
                    .iter()
                    .rev()
                    .take(20)
                    .rev()
                    .map(|l| l.to_string())
                    .collect(),
            }
        })
    }
}
