//! Notices and warnings the database raises while a statement runs (`RAISE NOTICE`, a
//! deprecation warning…): data of the function's session, delivered to the client that ran the
//! statement, never written to the extension's log unless `WARMPOOL_LOG_STATEMENTS` is on, since
//! their text can quote the statement's values.
//!
//! PostgreSQL sends a NoticeResponse at any time, not as part of a statement's answer
//! (<https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-ASYNC>), so the backend
//! connection collects them as it reads and the session that holds the connection hands them to
//! its client with its next answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use warmpool::protocol::WireError;

/// Notices kept for one answer: a statement that raises more (a loop of `RAISE NOTICE`) loses
/// the oldest, so a connection never holds more than this many.
pub const MAX_NOTICES: usize = 32;

/// The notices a connection has received and no client has been given yet.
#[derive(Debug, Clone, Default)]
pub struct Notices(Arc<Mutex<Pending>>);

#[derive(Debug, Default)]
struct Pending {
    notices: VecDeque<WireError>,
    dropped: u64,
}

impl Notices {
    pub(crate) fn push(&self, notice: WireError) {
        let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pending.notices.len() == MAX_NOTICES {
            pending.notices.pop_front();
            pending.dropped += 1;
        }
        pending.notices.push_back(notice);
    }

    /// Takes what has arrived, oldest first, and how many were dropped past [`MAX_NOTICES`].
    pub fn take(&self) -> (Vec<WireError>, u64) {
        let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = std::mem::take(&mut pending.dropped);
        (pending.notices.drain(..).collect(), dropped)
    }

    /// Forgets what has arrived: the connection goes to another client, which must not see it.
    pub fn clear(&self) {
        let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        pending.notices.clear();
        pending.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(n: usize) -> WireError {
        WireError::extension("01000", format!("notice {n}"))
    }

    #[test]
    fn a_flood_of_notices_keeps_the_newest_and_counts_the_rest() {
        let notices = Notices::default();
        for n in 0..MAX_NOTICES + 5 {
            notices.push(notice(n));
        }
        let (kept, dropped) = notices.take();
        assert_eq!(kept.len(), MAX_NOTICES);
        assert_eq!(dropped, 5);
        assert_eq!(kept[0].message(), "notice 5");
        assert_eq!(notices.take(), (vec![], 0), "taken once");
    }

    #[test]
    fn clearing_forgets_them() {
        let notices = Notices::default();
        notices.push(notice(1));
        notices.clear();
        assert_eq!(notices.take(), (vec![], 0));
    }
}
