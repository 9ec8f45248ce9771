//! One pooled PostgreSQL connection: the backend connection, its statement cache, and what is
//! known about the session state it carries.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use postgres_types::Type;
use warmpool::protocol::{sqlstate, Param, WireError};

use crate::backend::{Backend, Error, Statement, TxStatus};
pub use crate::settings::StatementMode;

/// Undoes what a statement can leave behind in a session, but keeps prepared statements, which
/// `DISCARD ALL` would drop. <https://www.postgresql.org/docs/current/sql-discard.html> lists what
/// DISCARD ALL does; this is that list without DEALLOCATE ALL and DISCARD PLANS.
const RESET_SQL: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
     SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// A statement is cached under its SQL text and the parameter types its caller declared.
type StatementKey = (String, Vec<u32>);

/// A live connection to PostgreSQL.
pub struct PgConn {
    pub(crate) backend: Backend,
    pub(crate) statements: StatementCache,
    mode: StatementMode,
    /// A statement may have changed session state (SET, LISTEN, temp tables, locks…).
    dirty: bool,
    pub(crate) last_used: Instant,
    /// The pool's thaw epoch when this connection was last known alive.
    pub(crate) checked_epoch: u64,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("backend", &self.backend)
            .field("statements", &self.statements.len())
            .field("dirty", &self.dirty)
            .finish_non_exhaustive()
    }
}

impl PgConn {
    /// A connection whose statements are cached up to `cache_size`; without a cache, a named
    /// statement would have no owner to close it, so statements go unnamed.
    pub(crate) fn new(
        backend: Backend,
        cache_size: Option<NonZeroUsize>,
        mode: StatementMode,
    ) -> PgConn {
        let mode = if cache_size.is_none() {
            StatementMode::Unnamed
        } else {
            mode
        };
        PgConn {
            backend,
            statements: StatementCache::new(cache_size),
            mode,
            dirty: false,
            last_used: Instant::now(),
            checked_epoch: 0,
        }
    }

    /// Whether the server holds a transaction open on this connection, or may: an answer not
    /// read to its ReadyForQuery leaves the status unknown. Such a connection is never handed
    /// out again before a rollback.
    pub(crate) fn in_transaction(&self) -> bool {
        self.backend.status() != TxStatus::Idle || !self.backend.is_synced()
    }

    /// Notes that `sql` ran here, so the connection is reset before reuse if it may have changed
    /// session state.
    pub(crate) fn note_statement(&mut self, sql: &str) {
        if may_change_session(sql) {
            self.dirty = true;
        }
    }

    /// Notes that a batch ran: it can do anything.
    pub(crate) fn note_batch(&mut self, _sql: &str) {
        self.dirty = true;
    }

    /// Forgets every cached statement without closing it: the server has dropped them all
    /// (`DISCARD ALL`).
    pub(crate) fn forget_all_statements(&mut self) {
        self.statements.clear();
        self.backend.forget_closes();
    }

    /// Whether the connection must be reset before it is handed out again.
    pub(crate) fn needs_reset(&self) -> bool {
        self.dirty || self.in_transaction()
    }

    /// Resets session state, keeping prepared statements.
    pub(crate) async fn reset(&mut self) -> Result<(), Error> {
        if !self.backend.is_synced() && !self.backend.resync().await {
            return Err(Error::Closed);
        }
        if self.backend.status() != TxStatus::Idle {
            self.backend.batch_execute("ROLLBACK").await?;
        }
        if self.dirty {
            self.backend.batch_execute(RESET_SQL).await?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The statement for `sql` with the declared parameter `types`: from the cache, or
    /// prepared (named) or described (unnamed) now.
    pub(crate) async fn prepare(&mut self, sql: &str, types: &[u32]) -> Result<Statement, Error> {
        if let Some(stmt) = self.statements.get(sql, types) {
            return Ok(stmt);
        }
        let stmt = self
            .backend
            .prepare(self.mode == StatementMode::Named, sql, types)
            .await?;
        // Unnamed statements are cached too: their description spares a round trip, and each
        // execution parses them again.
        if let Some(evicted) = self.statements.insert(sql, types, stmt.clone()) {
            self.backend.forget_statement(&evicted);
        }
        Ok(stmt)
    }

    /// How every statement that streams its rows starts (an Execute, a cached query, a warm-up
    /// read): its statement from the cache or prepared now, its parameters checked against it,
    /// and its Bind and Execute written after `begin` if a transaction starts with it, all sent
    /// at once; BEGIN's answer is read. The rows follow with `backend.read_row()`.
    pub(crate) async fn start(
        &mut self,
        begin: Option<&str>,
        sql: &str,
        types: &[u32],
        params: &[Param],
    ) -> Result<Statement, Start> {
        let stmt = self.prepare(sql, types).await.map_err(Start::Backend)?;
        check_params(stmt.params(), params).map_err(Start::Params)?;
        let backend = &mut self.backend;
        let written = match begin {
            Some(b) => backend.write_command(b),
            None => Ok(()),
        }
        .and_then(|()| backend.write_execute(&stmt, params.iter().map(|p| p.value.as_deref())));
        if let Err(e) = written {
            backend.discard_unsent();
            return Err(Start::Backend(e));
        }
        backend.write_sync();
        backend.flush().await.map_err(Start::Backend)?;
        if begin.is_some() {
            backend.read_command().await.map_err(Start::Backend)?;
        }
        Ok(stmt)
    }

    /// The statement for `sql` if this connection has it cached.
    pub(crate) fn cached(&mut self, sql: &str, types: &[u32]) -> Option<Statement> {
        self.statements.get(sql, types)
    }

    /// Caches a statement prepared (or described) on this connection.
    pub(crate) fn remember(&mut self, sql: &str, types: &[u32], stmt: Statement) {
        if let Some(evicted) = self.statements.insert(sql, types, stmt) {
            self.backend.forget_statement(&evicted);
        }
    }

    /// Whether statements are kept on the server under names.
    pub(crate) fn named(&self) -> bool {
        self.mode == StatementMode::Named
    }

    /// Forgets a statement, for instance after the server said it no longer knows it or its
    /// plan changed shape.
    pub(crate) fn forget(&mut self, sql: &str, types: &[u32]) {
        if let Some(stmt) = self.statements.remove(sql, types) {
            self.backend.forget_statement(&stmt);
        }
    }

    /// Prepares `statements` (as a client's Prepare without declared types would) and caches
    /// them, so a client's first Prepare or Execute of one finds it here and costs no Parse. A
    /// statement the server refuses is logged and left for the client to prepare, which then
    /// reports the error; a connection is never refused for it.
    pub(crate) async fn prepare_configured(&mut self, statements: &[String], budget: Duration) {
        let prepared = tokio::time::timeout(budget, async {
            for sql in statements {
                if let Err(e) = self.prepare(sql, &[]).await {
                    if e.is_lost() {
                        return;
                    }
                    tracing::warn!(
                        sql = %sql,
                        error = %e,
                        "a WARMPOOL_PREPARE statement could not be prepared"
                    );
                }
            }
        })
        .await;
        if prepared.is_err() {
            tracing::warn!(
                budget_ms = budget.as_millis() as u64,
                "preparing WARMPOOL_PREPARE statements on a new connection timed out"
            );
        }
    }

    /// Checks that the server still answers, with an empty query (one round trip, no parsing).
    pub(crate) async fn check(&mut self) -> Result<(), Error> {
        if !self.backend.is_synced() && !self.backend.resync().await {
            return Err(Error::Closed);
        }
        self.backend.check().await
    }

    /// After a CancelRequest: whether the connection is idle again with no cancel left to land.
    /// A statement that finished just before the cancel arrived leaves it in flight; an empty
    /// query queues behind it, and if the cancel lands on that one instead, a second proves the
    /// connection idle.
    pub(crate) async fn settle_after_cancel(&mut self) -> bool {
        self.check().await.is_ok() || self.check().await.is_ok()
    }

    /// The result columns of `stmt`, as the protocol describes them.
    pub(crate) fn columns(stmt: &Statement) -> Vec<warmpool::protocol::Column> {
        stmt.columns().to_vec()
    }

    /// Closes the connection with a Terminate message, waiting at most `budget` for it to go
    /// out; past that the connection is dropped.
    /// <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-TERMINATION>
    pub(crate) async fn close(self, budget: Duration) -> bool {
        self.backend.close(budget).await
    }
}

/// Why a statement could not start.
#[derive(Debug)]
pub(crate) enum Start {
    /// The parameters do not match the statement: the caller's error, nothing was sent.
    Params(WireError),
    /// The database refused it, or the connection failed.
    Backend(Error),
}

/// Checks the parameters a caller encoded against the statement's types.
pub(crate) fn check_params(expected: &[Type], given: &[Param]) -> Result<(), WireError> {
    if expected.len() != given.len() {
        return Err(WireError::extension(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!(
                "the statement has {} parameters but {} were given",
                expected.len(),
                given.len()
            ),
        ));
    }
    for (i, (ty, p)) in expected.iter().zip(given).enumerate() {
        if ty.oid() != p.oid {
            return Err(WireError::extension(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "parameter ${} was encoded for type oid {} but the statement takes {} (oid {}); \
                     prepare the statement again",
                    i + 1,
                    p.oid,
                    ty.name(),
                    ty.oid()
                ),
            ));
        }
    }
    Ok(())
}

/// Statements prepared on one connection, least recently used evicted first; an evicted one is
/// closed on the server with the connection's next request.
pub(crate) struct StatementCache {
    cache: Option<LruCache<StatementKey, Statement>>,
}

impl StatementCache {
    fn new(size: Option<NonZeroUsize>) -> StatementCache {
        StatementCache {
            cache: size.map(LruCache::new),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, LruCache::len)
    }

    fn clear(&mut self) {
        if let Some(c) = self.cache.as_mut() {
            c.clear();
        }
    }

    fn get(&mut self, sql: &str, types: &[u32]) -> Option<Statement> {
        self.cache
            .as_mut()?
            .get(&(sql.to_owned(), types.to_vec()))
            .cloned()
    }

    /// Remembers a statement; returns the one evicted to make room, if any.
    fn insert(&mut self, sql: &str, types: &[u32], statement: Statement) -> Option<Statement> {
        let cache = self.cache.as_mut()?;
        match cache.push((sql.to_owned(), types.to_vec()), statement) {
            Some((key, evicted)) if key.0 != sql || key.1 != types => Some(evicted),
            _ => None,
        }
    }

    fn remove(&mut self, sql: &str, types: &[u32]) -> Option<Statement> {
        self.cache.as_mut()?.pop(&(sql.to_owned(), types.to_vec()))
    }
}

/// Whether a statement may leave state behind in the session. Plain reads and writes do not;
/// anything else (SET, LISTEN, CREATE TEMP TABLE, PREPARE, DECLARE…) and the functions that
/// change session state from inside a query make the connection be reset before reuse.
pub(crate) fn may_change_session(sql: &str) -> bool {
    const PLAIN: &[&str] = &[
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "WITH",
        "VALUES",
        "TABLE",
        "MERGE",
        "SHOW",
        "EXPLAIN",
        "COPY",
        "CALL",
        "LOCK",
        "COMMIT",
        "ROLLBACK",
        "BEGIN",
        "START",
        "END",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
    ];
    const SESSION_FUNCTIONS: &[&str] =
        &["SET_CONFIG", "ADVISORY_LOCK", "DBLINK_CONNECT", "SETSEED"];
    let upper = sql.to_ascii_uppercase();
    let keyword: String = strip_leading_noise(&upper)
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    if !PLAIN.contains(&keyword.as_str()) {
        return true;
    }
    // A temporary table created by SELECT INTO TEMP, or session-level advisory locks.
    upper.contains(" TEMP") || SESSION_FUNCTIONS.iter().any(|f| upper.contains(f))
}

fn strip_leading_noise(mut s: &str) -> &str {
    loop {
        let t = s.trim_start().trim_start_matches('(');
        if let Some(rest) = t.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = t.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::may_change_session;

    #[test]
    fn plain_statements_keep_the_session_clean() {
        for sql in [
            "SELECT 1",
            "  select * from t where id = $1",
            "-- comment\nINSERT INTO t VALUES (1)",
            "/* c */ (SELECT 1) UNION (SELECT 2)",
            "with x as (select 1) select * from x",
            "UPDATE t SET a = 1",
        ] {
            assert!(!may_change_session(sql), "{sql}");
        }
    }

    #[test]
    fn session_changes_are_noticed() {
        for sql in [
            "SET search_path = x",
            "set statement_timeout = 5",
            "LISTEN chan",
            "CREATE TEMP TABLE x (a int)",
            "SELECT set_config('a.b', 'c', false)",
            "SELECT pg_advisory_lock(1)",
            "SELECT * INTO TEMP t2 FROM t",
            "PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        ] {
            assert!(may_change_session(sql), "{sql}");
        }
    }
}
