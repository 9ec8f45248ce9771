//! What every session shares: the pool, the configuration, the warm state and the telemetry.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::config::Config;
use crate::pool::Pool;
use crate::telemetry::Telemetry;

/// Rows are sent in frames of about this many bytes, so a large result streams instead of being
/// held whole in memory.
pub(crate) const ROWS_CHUNK: usize = 64 * 1024;

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    /// The connection pool.
    pub pool: Pool,
    /// The configuration.
    pub config: Arc<Config>,
    /// Wall-clock ms when a request last finished: a gap since then means a freeze.
    pub last_activity_ms: AtomicU64,
    /// The state store, the query result cache and the warm-up data sets.
    pub state: crate::state::State,
    /// Counters, metrics records and the invocation in progress.
    pub telemetry: Arc<Telemetry>,
}
