//! Runs one read statement on a pooled connection and keeps its whole result, for the warm-up
//! data sets and the query result cache, which hold results rather than stream them.

use bytes::Bytes;
use warmpool::protocol::{sqlstate, Column, Param, RawRow, WireError};

use crate::backend::{self, Reply};
use crate::config::Config;
use crate::conn::Start;
use crate::deadline::Guard;
use crate::errors;
use crate::metrics::Event;
use crate::pool::{Pool, PooledConn};

/// A statement's whole result.
#[derive(Debug)]
pub struct Collected {
    /// Each column.
    pub columns: Vec<Column>,
    /// The rows.
    pub rows: Vec<RawRow>,
    /// The rows returned or affected.
    pub affected: u64,
}

/// Runs `sql` with `params` (typed as `types` declares, as in an Execute) on a connection from
/// `pool`, and returns its whole result.
///
/// `deadline` is the deadline of the session that waits for the result (none for background
/// reads): past it the statement is cancelled on the server, as a plain statement would be,
/// so a cached query or a warm-up read never outlives the invocation that asked for it.
pub async fn collect(
    pool: &Pool,
    config: &Config,
    sql: &str,
    types: &[u32],
    params: &[Param],
    deadline: Option<std::time::SystemTime>,
) -> Result<Collected, WireError> {
    // The wait for a connection ends at the deadline too: a server that does not answer can
    // hold a connect for the whole connect timeout.
    let waiting = std::time::Instant::now();
    let got = crate::deadline::within(deadline, pool.get()).await;
    // Counted as a statement's wait is, whether or not a connection came.
    pool.meter().add(Event::PoolWait(waiting.elapsed()));
    let mut conn = got
        .ok_or_else(errors::deadline_before_connection)?
        .map_err(|e| crate::pool_errors::from_pool(&e, config))?;
    let guard = Guard::new(
        pool,
        conn.backend.cancel_token(),
        deadline,
        config.reset_timeout,
    );
    let result = match guard.run(run(&mut conn, sql, types, params)).await {
        Ok(result) => result,
        // The server never confirmed the cancel: the connection's state is unknown.
        Err(e) => Err(Failure::Lost(e)),
    };
    let result = if guard.hit() && !matches!(result, Err(Failure::Lost(_))) {
        settle_cancel(&guard, &mut conn, result).await
    } else {
        result
    };
    conn.note_statement(sql);
    match &result {
        Err(Failure::Lost(_)) => pool.discard(conn),
        _ => give_back(conn, pool, config).await,
    }
    result.map_err(|f| match f {
        Failure::Sql(e) | Failure::Lost(e) => e,
    })
}

/// The deadline cancelled the statement: the cancel must not hit the connection's next one.
async fn settle_cancel(
    guard: &Guard<'_>,
    conn: &mut PooledConn,
    result: Result<Collected, Failure>,
) -> Result<Collected, Failure> {
    if !guard.settled(conn).await {
        return Err(Failure::Lost(errors::deadline_cancelled()));
    }
    match result {
        Err(Failure::Sql(e)) if e.code() == sqlstate::QUERY_CANCELED => {
            Err(Failure::Sql(errors::deadline_cancelled()))
        }
        other => other,
    }
}

enum Failure {
    Sql(WireError),
    Lost(WireError),
}

fn pg_failure(e: &backend::Error) -> Failure {
    if errors::connection_lost(e) {
        Failure::Lost(errors::from_backend(e))
    } else {
        Failure::Sql(errors::from_backend(e))
    }
}

async fn run(
    conn: &mut PooledConn,
    sql: &str,
    types: &[u32],
    params: &[Param],
) -> Result<Collected, Failure> {
    let stmt = match conn.start(None, sql, types, params).await {
        Ok(stmt) => stmt,
        Err(Start::Params(e)) => return Err(Failure::Sql(e)),
        Err(Start::Backend(e)) => return Err(pg_failure(&e)),
    };
    let backend = &mut conn.backend;
    let mut rows = Vec::new();
    let affected = loop {
        match backend.read_row().await.map_err(|e| pg_failure(&e))? {
            Reply::Row(row) => rows.push(RawRow {
                values: backend::query::values(&row)
                    .map(|v| v.map(Bytes::copy_from_slice))
                    .collect(),
            }),
            Reply::Done(n) => break n,
        }
    };
    Ok(Collected {
        columns: crate::conn::PgConn::columns(&stmt),
        rows,
        affected,
    })
}

/// Returns a connection to the pool, reset first if the statement may have changed session
/// state; closed if the reset fails.
async fn give_back(mut conn: PooledConn, pool: &Pool, config: &Config) {
    conn.last_used = std::time::Instant::now();
    if !conn.needs_reset() {
        return;
    }
    match tokio::time::timeout(config.reset_timeout, conn.reset()).await {
        Ok(Ok(())) => {}
        _ => {
            tracing::warn!("session reset after a cached statement failed; closing the connection");
            pool.discard(conn);
        }
    }
}
