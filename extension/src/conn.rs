//! One pooled PostgreSQL connection: the tokio-postgres client, the task that drives it, its
//! statement cache, and what is known about the session state it carries.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use postgres_types::{Kind, Type};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Statement};

use crate::notices::Notices;

/// Undoes what a statement can leave behind in a session, but keeps prepared statements, which
/// `DISCARD ALL` would drop. <https://www.postgresql.org/docs/current/sql-discard.html> lists what
/// DISCARD ALL does; this is that list without DEALLOCATE ALL and DISCARD PLANS.
const RESET_SQL: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
     SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// A statement is cached under its SQL text and the parameter types its caller declared.
type StatementKey = (String, Vec<u32>);

/// A live connection to PostgreSQL.
pub struct PgConn {
    pub(crate) client: Client,
    driver: Option<JoinHandle<()>>,
    /// Notices the database sent, for the client the connection serves.
    pub(crate) notices: Notices,
    pub(crate) statements: StatementCache,
    /// A statement may have changed session state (SET, LISTEN, temp tables, locks…).
    dirty: bool,
    /// A batch may have opened a transaction and left it open.
    maybe_in_transaction: bool,
    pub(crate) last_used: Instant,
    /// The pool's thaw epoch when this connection was last known alive.
    pub(crate) checked_epoch: u64,
    /// BEGIN was sent and neither COMMIT nor ROLLBACK has succeeded since. Such a connection is
    /// never handed out again, whatever dropped it.
    pub(crate) in_transaction: bool,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("statements", &self.statements.len())
            .field("dirty", &self.dirty)
            .finish_non_exhaustive()
    }
}

impl PgConn {
    pub(crate) fn new(
        client: Client,
        driver: JoinHandle<()>,
        notices: Notices,
        cache_size: NonZeroUsize,
    ) -> PgConn {
        PgConn {
            client,
            driver: Some(driver),
            notices,
            statements: StatementCache::new(cache_size),
            dirty: false,
            maybe_in_transaction: false,
            last_used: Instant::now(),
            checked_epoch: 0,
            in_transaction: false,
        }
    }

    /// Notes that `sql` ran here, so the connection is reset before reuse if it may have changed
    /// session state.
    pub(crate) fn note_statement(&mut self, sql: &str) {
        if may_change_session(sql) {
            self.dirty = true;
        }
    }

    /// Notes that a batch ran outside a transaction: it can do anything, including leave a
    /// transaction open.
    pub(crate) fn note_batch(&mut self, sql: &str) {
        self.dirty = true;
        let upper = sql.to_ascii_uppercase();
        if upper.contains("BEGIN") || upper.contains("START") {
            self.maybe_in_transaction = true;
        }
    }

    /// Whether the connection must be reset before it is handed out again.
    pub(crate) fn needs_reset(&self) -> bool {
        self.dirty || self.maybe_in_transaction
    }

    /// Resets session state, keeping prepared statements.
    pub(crate) async fn reset(&mut self) -> Result<(), tokio_postgres::Error> {
        if self.maybe_in_transaction {
            self.client.batch_execute("ROLLBACK").await?;
            self.maybe_in_transaction = false;
        }
        if self.dirty {
            self.client.batch_execute(RESET_SQL).await?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Prepares `statements` (as a client's Prepare without declared types would) and caches
    /// them, all pipelined in one round trip, so a client's first Prepare or Execute of one
    /// finds it here and costs no Parse. A statement the server refuses is logged and left for
    /// the client to prepare, which then reports the error; a connection is never refused for it.
    pub(crate) async fn prepare_configured(&mut self, statements: &[String], budget: Duration) {
        let client = &self.client;
        let prepared = tokio::time::timeout(
            budget,
            futures_util::future::join_all(statements.iter().map(|sql| client.prepare(sql))),
        )
        .await;
        let Ok(prepared) = prepared else {
            tracing::warn!(
                budget_ms = budget.as_millis() as u64,
                "preparing WARMPOOL_PREPARE statements on a new connection timed out"
            );
            return;
        };
        for (sql, result) in statements.iter().zip(prepared) {
            match result {
                Ok(stmt) => self.statements.insert(sql, &[], stmt),
                Err(e) => tracing::warn!(
                    sql = %sql,
                    error = %crate::errors::error_chain(&e),
                    "a WARMPOOL_PREPARE statement could not be prepared"
                ),
            }
        }
    }

    /// Checks that the server still answers, with an empty query (one round trip, no parsing).
    pub(crate) async fn check(&self) -> Result<(), tokio_postgres::Error> {
        self.client.simple_query("").await.map(drop)
    }

    /// After a CancelRequest: whether the connection is idle again with no cancel left to land.
    /// A statement that finished just before the cancel arrived leaves it in flight; an empty
    /// query queues behind it, and if the cancel lands on that one instead, a second proves the
    /// connection idle.
    pub(crate) async fn settle_after_cancel(&self) -> bool {
        self.check().await.is_ok() || self.check().await.is_ok()
    }

    /// The result columns of `stmt`, as the protocol describes them.
    pub(crate) fn columns(stmt: &tokio_postgres::Statement) -> Vec<warmpool::protocol::Column> {
        stmt.columns()
            .iter()
            .map(|c| warmpool::protocol::Column {
                name: c.name().to_owned(),
                type_: c.type_().clone(),
            })
            .collect()
    }

    /// Closes the connection with a Terminate message, waiting at most `budget` for it to go
    /// out; past that the connection is dropped.
    /// <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-TERMINATION>
    pub(crate) async fn close(mut self, budget: Duration) -> bool {
        let driver = self.driver.take();
        // Dropping the client closes its request channel; the driver then sends Terminate and
        // shuts the socket down.
        drop(self);
        match driver {
            Some(mut driver) => match tokio::time::timeout(budget, &mut driver).await {
                Ok(_) => true,
                Err(_) => {
                    driver.abort();
                    false
                }
            },
            None => true,
        }
    }
}

/// Statements prepared on one connection, least recently used evicted first. Dropping an
/// evicted `Statement` makes tokio-postgres close it on the server.
pub(crate) struct StatementCache {
    cache: LruCache<StatementKey, Statement>,
}

impl StatementCache {
    fn new(size: NonZeroUsize) -> StatementCache {
        StatementCache {
            cache: LruCache::new(size),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }

    /// The statement for `sql`, prepared on `client` unless it already is.
    pub(crate) async fn prepare(
        &mut self,
        client: &Client,
        sql: &str,
        types: &[u32],
    ) -> Result<Statement, tokio_postgres::Error> {
        let key = (sql.to_owned(), types.to_vec());
        if let Some(stmt) = self.cache.get(&key) {
            return Ok(stmt.clone());
        }
        let declared: Vec<Type> = types.iter().map(|oid| type_for_oid(*oid)).collect();
        let stmt = client.prepare_typed(sql, &declared).await?;
        self.cache.put(key, stmt.clone());
        Ok(stmt)
    }

    /// The statement for `sql` if it is prepared on this connection.
    pub(crate) fn cached(&mut self, sql: &str, types: &[u32]) -> Option<Statement> {
        self.cache.get(&(sql.to_owned(), types.to_vec())).cloned()
    }

    /// Remembers a statement prepared on this connection.
    pub(crate) fn insert(&mut self, sql: &str, types: &[u32], statement: Statement) {
        self.cache.put((sql.to_owned(), types.to_vec()), statement);
    }

    /// Forgets a statement, for instance after the server said its plan is no longer valid.
    pub(crate) fn forget(&mut self, sql: &str, types: &[u32]) {
        self.cache.pop(&(sql.to_owned(), types.to_vec()));
    }
}

/// Parse only sends a declared type's OID, so a type the client named by OID alone does not need
/// its name or kind here.
pub(crate) fn type_for_oid(oid: u32) -> Type {
    Type::from_oid(oid)
        .unwrap_or_else(|| Type::new(String::new(), oid, Kind::Simple, String::new()))
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
