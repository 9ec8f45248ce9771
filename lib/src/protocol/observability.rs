//! Frames for observability: which invocation a session works for (`I`), and the counters of
//! that invocation (`T`, answered by `t`).

use bytes::{BufMut, BytesMut};

use super::codec::{put_count16, put_str, Reader};
use super::FrameError;

pub(super) const INVOCATION: u8 = b'I';
pub(super) const STATS: u8 = b'T';
pub(super) const STATS_OK: u8 = b't';

/// The longest request id the extension keeps: Lambda's are UUIDs (36 bytes). Ids ride on every
/// log line and key the per-invocation counters, so a longer one is cut, not stored whole.
pub const MAX_REQUEST_ID: usize = 256;
/// The longest trace id the extension keeps. An X-Ray trace header (`Root=…;Parent=…;Sampled=…`
/// and optional `Lineage`) is well under this:
/// <https://docs.aws.amazon.com/xray/latest/devguide/xray-concepts.html#xray-concepts-tracingheader>.
pub const MAX_TRACE_ID: usize = 1024;

/// The invocation a session's next requests belong to: Lambda's request id and, when the
/// function is traced, its X-Ray trace header. An empty request id means "no invocation".
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Invocation {
    /// The Lambda request id (`Context::request_id`); empty to clear. The extension keeps at
    /// most [`MAX_REQUEST_ID`] bytes of it.
    pub request_id: String,
    /// The `X-Amzn-Trace-Id` value (`Context::xray_trace_id`); empty when there is none. The
    /// extension keeps at most [`MAX_TRACE_ID`] bytes of it.
    pub trace_id: String,
}

impl Invocation {
    /// The ids cut to [`MAX_REQUEST_ID`] and [`MAX_TRACE_ID`] bytes, at a character boundary.
    pub fn bounded(mut self) -> Invocation {
        cut(&mut self.request_id, MAX_REQUEST_ID);
        cut(&mut self.trace_id, MAX_TRACE_ID);
        self
    }
}

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.shrink_to_fit();
    }
}

/// What the extension did for one invocation, or, when the invocation is not known, for the
/// environment since its last metrics record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// The request id the counters belong to; empty when they are the environment's.
    pub request_id: String,
    /// Statements run (Execute and Batch requests).
    pub queries: u64,
    /// Rows returned or affected.
    pub rows: u64,
    /// Time statements held a database connection, in microseconds.
    pub database_time_us: u64,
    /// Time spent waiting for a pooled connection, in microseconds.
    pub pool_wait_us: u64,
    /// New database connections opened.
    pub connections_created: u64,
    /// Connections closed because they were broken, failed a health check or were too old.
    pub connections_replaced: u64,
    /// Answers served from a cache without a query.
    pub cache_hits: u64,
    /// Warm-state reads served from the extension's memory.
    pub state_hits: u64,
    /// Errors answered, by SQLSTATE class (the code's first two characters), sorted by class.
    pub errors: Vec<(String, u64)>,
    /// Fleet connections ended to make room under the fleet's budget
    /// (`WARMPOOL_FLEET_MAX_CONNECTIONS`).
    pub fleet_slots_taken: u64,
    /// Requests that waited for a slot of the fleet's budget.
    pub fleet_waits: u64,
    /// Time requests waited for a slot of the fleet's budget, in microseconds.
    pub fleet_wait_us: u64,
    /// Requests refused because the fleet's budget stayed full (53300).
    pub fleet_refusals: u64,
}

impl Stats {
    /// Errors of every class.
    pub fn total_errors(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }
}

pub(super) fn put_invocation(b: &mut BytesMut, i: &Invocation) {
    put_str(b, &i.request_id);
    put_str(b, &i.trace_id);
}

pub(super) fn read_invocation(r: &mut Reader) -> Result<Invocation, FrameError> {
    Ok(Invocation {
        request_id: r.string("request id")?,
        trace_id: r.string("trace id")?,
    })
}

pub(super) fn put_stats(b: &mut BytesMut, s: &Stats) {
    put_str(b, &s.request_id);
    for n in [
        s.queries,
        s.rows,
        s.database_time_us,
        s.pool_wait_us,
        s.connections_created,
        s.connections_replaced,
        s.cache_hits,
        s.state_hits,
    ] {
        b.put_u64(n);
    }
    put_count16(b, s.errors.len());
    for (class, n) in &s.errors {
        put_str(b, class);
        b.put_u64(*n);
    }
    // After the errors, so a reader that predates them finds the fields it knows in place.
    for n in [
        s.fleet_slots_taken,
        s.fleet_waits,
        s.fleet_wait_us,
        s.fleet_refusals,
    ] {
        b.put_u64(n);
    }
}

pub(super) fn read_stats(r: &mut Reader) -> Result<Stats, FrameError> {
    let request_id = r.string("request id")?;
    let mut counters = [0u64; 8];
    for c in &mut counters {
        *c = r.u64("counter")?;
    }
    // Each entry is at least a 4-byte string length and an 8-byte count.
    let n = r.count16(12, "error classes")?;
    let errors = (0..n)
        .map(|_| Ok((r.string("error class")?, r.u64("error count")?)))
        .collect::<Result<_, FrameError>>()?;
    // An extension that predates the fleet's counters ends the frame after the errors.
    let mut fleet = [0u64; 4];
    if !r.is_empty() {
        for c in &mut fleet {
            *c = r.u64("fleet counter")?;
        }
    }
    let [queries, rows, database_time_us, pool_wait_us, connections_created, connections_replaced, cache_hits, state_hits] =
        counters;
    let [fleet_slots_taken, fleet_waits, fleet_wait_us, fleet_refusals] = fleet;
    Ok(Stats {
        request_id,
        queries,
        rows,
        database_time_us,
        pool_wait_us,
        connections_created,
        connections_replaced,
        cache_hits,
        state_hits,
        errors,
        fleet_slots_taken,
        fleet_waits,
        fleet_wait_us,
        fleet_refusals,
    })
}
