//! Giving memory back to the system once a burst of sessions is over.
//!
//! The extension shares the function's memory (128 MB for the smallest functions), so what a
//! burst takes must not stay taken. Each session's buffers and task are freed when it ends, but
//! glibc's malloc keeps freed pages for reuse: the heap can only shrink from its top, down to
//! the last allocation still live, and allocations made during a burst by the sessions that
//! outlive it pin everything below. Measured before this module (`warmpool-bench --memory`,
//! release build): six rounds of 1,000 concurrent sessions took the resident set from 7.4 to
//! 74 MiB, and it stayed there. `malloc_trim(0)` also returns the free pages in the middle of
//! the heap (`madvise(MADV_DONTNEED)`, see malloc_trim(3)); with it the same burst left 8.4 MiB
//! 1.3 s after its last session closed. It walks every free chunk and holds the allocator's
//! lock meanwhile (8 to 12 ms after that burst, on the runtime's thread), so it runs once a burst
//! has ended, never per session or per statement.

use std::time::Duration;

use tokio::time::Instant;

use crate::deadline;

/// Sessions that must have ended since the most open at once before a trim is worth it: a
/// session leaves about 70 KiB behind (release build), so fewer than this leave about 2 MiB.
const BURST: usize = 32;

/// How long after a burst starts to wind down the trim runs, so it runs once for a burst whose
/// sessions end over a second or so, and not while a burst is still at its height.
const QUIET: Duration = Duration::from_secs(1);

/// Allocations of at least this size get pages of their own (mmap), which go back to the system
/// the moment they are freed: a large frame's buffers, in a session or in a database
/// connection, never stay in the heap.
const MMAP_THRESHOLD: usize = 256 * 1024;

/// Sets the allocator up, once, before the runtime starts.
///
/// glibc raises its mmap threshold to the size of each mmapped block freed (up to 32 MiB), so
/// after one large frame every later one comes from the heap and stays there once freed
/// (mallopt(3), "M_MMAP_THRESHOLD"). Setting the threshold turns that off, for the trim
/// threshold too, which stays at its 128 KiB. 256 KiB keeps the 64 KiB row chunks and their
/// buffers in the heap, where reuse is cheap. Measured with 100 open sessions that each sent
/// and received a 512 KiB frame (`tests/tests/memory.rs`, debug build): 25.4 MiB resident
/// afterwards with the threshold set, 27.5 MiB without, 17 MiB at rest.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters, under its lock; it takes no pointer.
    // It is called before any other thread exists. A refusal (0) leaves glibc's defaults, which
    // work, only with more memory kept.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

/// When to give memory back: after the number of open sessions fell by at least `BURST` and
/// to at most half of its high mark.
#[derive(Debug, Default)]
pub struct Trim {
    /// The most sessions open at once since the last trim.
    high: usize,
    /// When the next trim is due, if one is.
    due: Option<Instant>,
}

impl Trim {
    /// No trim due, no sessions seen.
    pub fn new() -> Trim {
        Trim::default()
    }

    /// A session opened; `open` sessions are open now.
    pub fn opened(&mut self, open: usize) {
        self.high = self.high.max(open);
    }

    /// A session ended; `open` sessions are still open.
    pub fn closed(&mut self, open: usize) {
        if self.due.is_none() && self.high >= open + BURST && open <= self.high / 2 {
            self.due = Some(Instant::now() + QUIET);
        }
    }

    /// Resolves when a trim is due; never when none is. Cancel safe.
    pub async fn due(&self) {
        deadline::sleep_until(self.due).await
    }

    /// Gives freed memory back to the system; `open` sessions are open now.
    pub fn run(&mut self, open: usize) {
        self.due = None;
        self.high = open;
        let before = resident_kib();
        let started = Instant::now();
        release();
        tracing::debug!(
            sessions = open,
            resident_kib_before = before,
            resident_kib_after = resident_kib(),
            took_us = started.elapsed().as_micros() as u64,
            "gave freed memory back to the system after a burst of sessions"
        );
    }
}

/// Returns the allocator's free pages to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() {
    // SAFETY: malloc_trim takes no pointer and touches only the allocator's own free chunks,
    // under the allocator's locks, so it is sound at any time from any thread. Its result (1
    // if memory was returned) needs no handling.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl's, or a platform's other than Linux) have no trim call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() {}

/// The process's resident set in KiB, for the log; 0 where /proc is not there.
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_that_winds_down_makes_a_trim_due() {
        let mut trim = Trim::new();
        for open in 1..=100 {
            trim.opened(open);
        }
        for open in (51..100).rev() {
            trim.closed(open);
            assert!(trim.due.is_none(), "due with {open} of 100 sessions open");
        }
        trim.closed(50);
        assert!(trim.due.is_some());
        trim.run(50);
        assert!(trim.due.is_none());
        // The high mark starts again from the sessions still open.
        trim.closed(40);
        assert!(trim.due.is_none());
    }

    #[test]
    fn a_few_sessions_never_make_a_trim_due() {
        let mut trim = Trim::new();
        for round in 0..100 {
            for open in 1..BURST {
                trim.opened(open);
            }
            for open in (0..BURST - 1).rev() {
                trim.closed(open);
                assert!(trim.due.is_none(), "round {round}: due with {open} open");
            }
        }
    }
}
