//! The client function code uses.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use postgres_types::{BorrowToSql, ToSql, Type};

use crate::batch::Batch;
use crate::conn::{Conn, NoticeSink};
use crate::error::{DbError, Error, Kind};
use crate::ops;
use crate::protocol::{Begin, Invocation, IsolationLevel, Request, Response, Stats};
use crate::row::Row;
use crate::row_stream::RowStream;
use crate::simple_query::SimpleQueryMessage;
use crate::statement::{Statement, ToStatement};
use crate::transaction::Transaction;

/// The socket path when `WARMPOOL_SOCKET` is not set.
pub const DEFAULT_SOCKET: &str = "/tmp/warmpool.sock";

/// Idle sessions kept for reuse; more than this are closed when returned.
const MAX_IDLE: usize = 16;

/// A handle to the warmpool extension, for use from any number of tasks at once.
///
/// Each request takes an idle session (a socket connection) or opens one, so concurrent tasks
/// never wait behind one another. Cloning is cheap and shares sessions and the statement cache.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// The invocation this handle's requests belong to, from [`Client::with_invocation`].
    invocation: Option<Arc<Invocation>>,
    /// Milliseconds since the Unix epoch after which the extension cancels this handle's
    /// statements and rolls back its transactions; see [`Client::with_deadline`].
    deadline: Option<u64>,
}

/// Statements the client remembers (their parameter and column types, so a repeat costs no
/// Describe), the least recently used forgotten first: a function that builds SQL text per call
/// must not grow the cache with every call. The extension's own per-connection cache has the same
/// default size (`WARMPOOL_STATEMENT_CACHE_SIZE`).
pub const STATEMENT_CACHE_SIZE: usize = 256;

type StatementKey = (String, Vec<u32>);

struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Conn>>,
    statements: Mutex<LruCache<StatementKey, Statement>>,
    notices: Arc<NoticeSink>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.inner.path)
            .field(
                "request_id",
                &self.invocation.as_ref().map(|i| i.request_id.as_str()),
            )
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the extension at `WARMPOOL_SOCKET`, or at [`DEFAULT_SOCKET`].
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), warmpool::Error> {
    /// let db = warmpool::Client::connect().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A connect error (`is_closed()`) when no extension listens on the socket: the layer is not
    /// attached, or the function and the extension name different sockets.
    pub async fn connect() -> Result<Client, Error> {
        let path = std::env::var_os("WARMPOOL_SOCKET")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Client::connect_to(path).await
    }

    /// Connects to the extension at `path`.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), warmpool::Error> {
    /// let db = warmpool::Client::connect_to("/tmp/warmpool.sock").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::connect`], and 08P01 if the extension speaks another protocol version.
    pub async fn connect_to(path: impl AsRef<Path>) -> Result<Client, Error> {
        let path = path.as_ref().to_owned();
        let notices = Arc::new(NoticeSink::default());
        let conn = Conn::open(&path, notices.clone()).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                notices,
                path,
                idle: Mutex::new(vec![conn]),
                statements: Mutex::new(LruCache::new(
                    NonZeroUsize::new(STATEMENT_CACHE_SIZE).expect("a non-zero constant"),
                )),
            }),
            invocation: None,
            deadline: None,
        })
    }

    /// Calls `handler` with each notice or warning the database raises while this client's
    /// statements run (`RAISE NOTICE`, a deprecation warning), as tokio-postgres hands them out as
    /// `AsyncMessage::Notice`. The handler is shared by this client's clones and replaces any set
    /// before; it runs on the task awaiting the statement, before the statement's result returns,
    /// so keep it short. Without a handler, notices are dropped. The extension never writes a
    /// notice's text to its own log (only its SQLSTATE at debug level) unless
    /// `WARMPOOL_LOG_STATEMENTS` is on, since it can quote the statement's values; it keeps at
    /// most 32 for one answer, the newest.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), warmpool::Error> {
    /// let db = warmpool::Client::connect().await?;
    /// db.on_notice(|notice| eprintln!("{}: {}", notice.severity(), notice.message()));
    /// # Ok(()) }
    /// ```
    pub fn on_notice(&self, handler: impl Fn(&DbError) + Send + Sync + 'static) {
        self.inner.notices.set(Arc::new(handler));
    }

    /// A handle whose requests belong to one invocation: the extension tags its log lines with
    /// `request_id` (and its spans with `trace_id`, the `X-Amzn-Trace-Id` value), and counts
    /// what it does for [`Client::stats`]. It shares this client's sessions and statement cache.
    ///
    /// On classic Lambda the extension learns the request id from the INVOKE event as well; on
    /// Lambda Managed Instances, where many invocations run at once and extensions get no
    /// INVOKE, this is the only way it can tell them apart.
    pub fn with_invocation(&self, request_id: impl Into<String>, trace_id: Option<&str>) -> Client {
        Client {
            inner: self.inner.clone(),
            invocation: Some(Arc::new(Invocation {
                request_id: request_id.into(),
                trace_id: trace_id.unwrap_or_default().to_owned(),
            })),
            deadline: self.deadline,
        }
    }

    /// [`Client::with_invocation`] with the ids of a `lambda_runtime` context.
    #[cfg(feature = "lambda")]
    pub fn for_invocation(&self, context: &lambda_runtime::Context) -> Client {
        self.with_invocation(context.request_id.clone(), context.xray_trace_id.as_deref())
    }

    /// What the extension has done for this handle's invocation so far: statements, rows,
    /// database time, pool wait, connections opened and replaced, errors by SQLSTATE class.
    ///
    /// Without [`Client::with_invocation`], on classic Lambda the counters are those since the
    /// extension's last INVOKE event (the current invocation's, but for a request that races
    /// ahead of that event); on Managed Instances they are the environment's since the last
    /// metrics record, and [`Stats::request_id`] is empty.
    ///
    /// # Errors
    /// A closed-session error when the extension is not there.
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.with_conn_once(async |conn| {
            conn.queue(&Request::Stats)?;
            conn.flush().await?;
            match conn.recv().await? {
                Response::Stats(s) => Ok(s),
                Response::Error(e) => Err(conn.error(e)),
                other => Err(conn.unexpected(&other)),
            }
        })
        .await
    }

    /// A handle to the same sessions whose statements may not outlive `deadline`: at that instant
    /// the extension cancels whatever statement of this handle's is still running on the
    /// database and rolls back its open transaction, so nothing keeps running, or holding
    /// locks, for an invocation that has timed out. The cancelled statement fails with
    /// PostgreSQL's 57014 (query_canceled), as does a request still waiting for a database
    /// connection. Off unless asked for.
    ///
    /// The answer comes at the deadline even when the database answers nothing (stopped,
    /// stalled, cut off): at most `WARMPOOL_RESET_TIMEOUT_MS` later, the extension closes the
    /// connection and answers 57014; a transaction in flight is then lost, never committed. A
    /// COMMIT left unanswered fails with 08007 (transaction_resolution_unknown): it may or may
    /// not have committed. See [`crate::Error::is_timeout`].
    ///
    /// On Lambda, pass the invocation's deadline (`lambda_runtime::Context::deadline`), less a
    /// margin if the function should still have time to report the error before it is stopped.
    /// A deadline at the Unix epoch (a `deadline` of 0 ms, which some Lambda emulators send) is
    /// no deadline: the handle then has none, rather than one that cancels every statement.
    pub fn with_deadline(&self, deadline: std::time::SystemTime) -> Client {
        Client {
            inner: self.inner.clone(),
            invocation: self.invocation.clone(),
            deadline: (deadline > std::time::UNIX_EPOCH).then(|| crate::conn::unix_ms(deadline)),
        }
    }

    /// A handle to the same sessions with no deadline.
    pub fn without_deadline(&self) -> Client {
        Client {
            inner: self.inner.clone(),
            invocation: self.invocation.clone(),
            deadline: None,
        }
    }

    /// An idle session, or a new one; either carries this handle's deadline.
    pub(crate) async fn take_conn(&self) -> Result<Conn, Error> {
        loop {
            let idle = self
                .inner
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let mut conn = match idle {
                // The extension closes sessions left idle too long; one it closed is dropped
                // here rather than found out by the request.
                Some(conn) if conn.closed_while_idle() => continue,
                Some(conn) => conn,
                None => Conn::open(&self.inner.path, self.inner.notices.clone()).await?,
            };
            conn.set_deadline(self.deadline);
            conn.announce(self.invocation.as_ref())?;
            return Ok(conn);
        }
    }

    pub(crate) fn put_conn(&self, conn: Conn) {
        if conn.is_broken() {
            return;
        }
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Runs `f` on a session, which goes back to the idle list unless the exchange broke it. If
    /// the caller's future is dropped, the session is dropped with it.
    ///
    /// A session the extension closed for idleness just as the request went out answers 57P05
    /// instead of reading the request, or refuses the write: either way the request did not
    /// run, and `f` runs once more, on a new session (`f(true)`).
    async fn with_conn<T, Fut>(&self, f: impl Fn(bool) -> Fut) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        match f(false).await {
            result if is_idle_close(&result) => f(true).await,
            result => result,
        }
    }

    /// Runs `f` on one session, with no second try after an idle close: for exchanges that are
    /// not safe or not worth repeating as a whole.
    pub(crate) async fn with_conn_once<T>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.on_conn(false, f).await
    }

    /// Runs `f` on one session: an idle one, unless `fresh`, or a new one.
    async fn on_conn<T>(
        &self,
        fresh: bool,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut conn = if fresh {
            let mut conn = Conn::open(&self.inner.path, self.inner.notices.clone()).await?;
            conn.set_deadline(self.deadline);
            conn.announce(self.invocation.as_ref())?;
            conn
        } else {
            self.take_conn().await?
        };
        let result = f(&mut conn).await;
        self.put_conn(conn);
        result
    }

    /// How many statements this client remembers: at most [`STATEMENT_CACHE_SIZE`].
    pub fn cached_statements(&self) -> usize {
        self.inner
            .statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub(crate) fn cached(&self, sql: &str, types: &[u32]) -> Option<Statement> {
        let mut cache = self
            .inner
            .statements
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache.get(&(sql.to_owned(), types.to_vec())).cloned()
    }

    pub(crate) fn remember(&self, statement: &Statement) {
        let mut cache = self
            .inner
            .statements
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache.put(
            (statement.sql().to_owned(), statement.declared().to_vec()),
            statement.clone(),
        );
    }

    /// Describes a statement; cached by its SQL text, so a repeat costs nothing.
    ///
    /// # Errors
    /// As [`Client::query`]: a statement the database cannot parse gets its error here.
    pub async fn prepare(&self, sql: &str) -> Result<Statement, Error> {
        self.prepare_typed(sql, &[]).await
    }

    /// Describes a statement, declaring some parameter types.
    ///
    /// # Errors
    /// As [`Client::prepare`].
    pub async fn prepare_typed(&self, sql: &str, types: &[Type]) -> Result<Statement, Error> {
        let oids: Vec<u32> = types.iter().map(Type::oid).collect();
        if let Some(s) = self.cached(sql, &oids) {
            return Ok(s);
        }
        let statement = self
            .with_conn(|fresh| {
                self.on_conn(fresh, async |conn| {
                    ops::prepare(conn, &mut None, sql, types).await
                })
            })
            .await?;
        self.remember(&statement);
        Ok(statement)
    }

    /// Runs a statement and returns its rows.
    ///
    /// ```no_run
    /// # async fn f(db: &warmpool::Client) -> Result<(), warmpool::Error> {
    /// for row in db.query("SELECT id, name FROM users WHERE team = $1", &[&7i32]).await? {
    ///     let (id, name): (i64, &str) = (row.get(0), row.get("name"));
    ///     println!("{id} {name}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The database's error, SQLSTATE and all ([`Error::as_db_error`]); a parameter that does not
    /// fit the statement (22023) or SQL text with a NUL byte (22021), before anything is sent;
    /// 53300 when no database connection became free in time, 08006 or HYT01 when the database
    /// cannot be reached, 57014 at the handle's deadline. Dropping the future cancels the
    /// statement on the server (see the crate docs, "Cancellation").
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.with_conn(|fresh| {
            self.on_conn(fresh, async |conn| {
                self.run(conn, &mut None, statement, params).await
            })
        })
        .await
        .map(|(rows, _)| rows)
    }

    /// Runs a statement that returns exactly one row.
    ///
    /// ```no_run
    /// # async fn f(db: &warmpool::Client) -> Result<(), warmpool::Error> {
    /// let name: String = db
    ///     .query_one("SELECT name FROM users WHERE id = $1", &[&42i64])
    ///     .await?
    ///     .get(0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::query`], and an error if the statement returned no row or more than one.
    pub async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error>
    where
        T: ?Sized + ToStatement,
    {
        one(self.query(statement, params).await?)
    }

    /// Runs a statement that returns at most one row.
    ///
    /// # Errors
    /// As [`Client::query`], and an error if the statement returned more than one row.
    pub async fn query_opt<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        at_most_one(self.query(statement, params).await?)
    }

    /// Runs a statement and returns the number of rows it affected.
    ///
    /// ```no_run
    /// # async fn f(db: &warmpool::Client) -> Result<(), warmpool::Error> {
    /// let n = db.execute("UPDATE users SET seen = now() WHERE id = $1", &[&42i64]).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::query`]. A write whose outcome is unknown (its connection died under it) is
    /// reported as an error and never run again.
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.with_conn(|fresh| {
            self.on_conn(fresh, async |conn| {
                self.run(conn, &mut None, statement, params).await
            })
        })
        .await
        .map(|(_, n)| n)
    }

    /// Runs a statement and returns its rows as a stream, read from the socket as the
    /// extension sends them, about 64 KiB at a time, instead of collected whole: for results
    /// too large to hold. As tokio-postgres' `query_raw`, it takes the parameters as any
    /// iterator of values (`[&a as &dyn ToSql, &b]`, a `Vec<String>`, `std::iter::empty::<i32>()`).
    ///
    /// The stream holds a session of its own until its last row; dropped before that, the
    /// session is closed and the extension cancels the statement (see [`RowStream`]).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), warmpool::Error> {
    /// use warmpool::stream::TryStreamExt;
    ///
    /// let db = warmpool::Client::connect().await?;
    /// let mut rows = db
    ///     .query_raw("SELECT g FROM generate_series(1, $1) g", [1_000_000i32])
    ///     .await?;
    /// let mut sum = 0i64;
    /// while let Some(row) = rows.try_next().await? {
    ///     sum += i64::from(row.get::<_, i32>(0));
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::query`]; an error the statement raises after its first rows comes as the
    /// stream's last item.
    pub async fn query_raw<T, P, I>(
        &self,
        statement: &T,
        params: I,
    ) -> Result<RowStream<'static>, Error>
    where
        T: ?Sized + ToStatement,
        P: BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        let statement = match statement.__statement() {
            Some(s) => s.clone(),
            None => self.prepare(statement.__sql()).await?,
        };
        let request =
            ops::execute_request(&statement, ops::encode_params_iter(&statement, params)?);
        // The first frame of the answer is read here, so that a session the extension closed
        // for idleness just as the request went out is found before the stream is handed out,
        // and the request goes once more on a new session, as every other request does.
        let mut fresh = false;
        loop {
            let mut conn = if fresh {
                self.new_conn().await?
            } else {
                self.take_conn().await?
            };
            let first = async {
                conn.queue(&request)?;
                conn.flush().await?;
                conn.recv().await
            }
            .await;
            let first = match first {
                Ok(Response::Error(e)) => Err(conn.error(e)),
                other => other,
            };
            let failed = match first {
                Ok(first) => {
                    return Ok(RowStream::on_session(self.clone(), conn, &statement, first))
                }
                Err(e) => Err::<(), _>(e),
            };
            if !fresh && is_idle_close(&failed) {
                fresh = true;
                continue;
            }
            self.put_conn(conn);
            return failed.map(|()| unreachable!("an error"));
        }
    }

    /// Runs statements, separated by semicolons, through PostgreSQL's simple query protocol,
    /// and returns their rows with every value as text, as tokio-postgres' `simple_query`: for
    /// each statement, its columns and rows if it returns any, then its completion with the
    /// number of rows. Without parameters, so never build its SQL from untrusted input.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), warmpool::Error> {
    /// use warmpool::SimpleQueryMessage;
    ///
    /// let db = warmpool::Client::connect().await?;
    /// for message in db.simple_query("SELECT 1 AS one, NULL AS nothing; SELECT 2").await? {
    ///     if let SimpleQueryMessage::Row(row) = message {
    ///         println!("{:?} {:?}", row.get(0), row.get("nothing"));
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The error of the first statement that fails. PostgreSQL runs a text of several
    /// statements as one implicit transaction, so the statements before it are rolled back too,
    /// unless the text commits them itself.
    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        self.with_conn(|fresh| {
            self.on_conn(fresh, async |conn| {
                crate::simple_query::run(conn, &mut None, sql).await
            })
        })
        .await
    }

    /// A new session, with this handle's deadline and invocation.
    async fn new_conn(&self) -> Result<Conn, Error> {
        let mut conn = Conn::open(&self.inner.path, self.inner.notices.clone()).await?;
        conn.set_deadline(self.deadline);
        conn.announce(self.invocation.as_ref())?;
        Ok(conn)
    }

    /// Runs one or more statements separated by semicolons, without parameters or results.
    ///
    /// # Errors
    /// As [`Client::query`]; the statements before the failing one have run.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.with_conn(|fresh| {
            self.on_conn(fresh, async |conn| ops::batch(conn, &mut None, sql).await)
        })
        .await
    }

    /// A batch: statements sent to the extension in one frame and pipelined to PostgreSQL on
    /// one connection, optionally as one transaction. See [`Batch`].
    pub fn batch(&self) -> Batch<'_> {
        Batch::new(self)
    }

    /// Checks that the extension answers.
    ///
    /// # Errors
    /// A closed-session error when the extension is not there.
    pub async fn ping(&self) -> Result<(), Error> {
        self.with_conn(|fresh| {
            self.on_conn(fresh, async |conn| ops::simple(conn, Request::Ping).await)
        })
        .await
    }

    /// Starts a transaction. It holds one session, and one database connection once its first
    /// statement runs, until it commits or rolls back; dropped, it rolls back.
    ///
    /// ```no_run
    /// # async fn f(db: &warmpool::Client) -> Result<(), warmpool::Error> {
    /// let tx = db.transaction().await?;
    /// tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = $1", &[&1i32]).await?;
    /// tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = $1", &[&2i32]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A connect error if no session with the extension can be opened. BEGIN itself travels
    /// with the first statement, so the database's errors come from that statement.
    pub async fn transaction(&self) -> Result<Transaction<'_>, Error> {
        self.build_transaction().start().await
    }

    /// A transaction with options.
    pub fn build_transaction(&self) -> TransactionBuilder<'_> {
        TransactionBuilder {
            client: self,
            options: Begin::default(),
        }
    }

    /// Runs a statement given as text or as a [`Statement`], describing it first if this client
    /// has not seen it.
    pub(crate) async fn run<T>(
        &self,
        conn: &mut Conn,
        begin: &mut Option<Begin>,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(Vec<Row>, u64), Error>
    where
        T: ?Sized + ToStatement,
    {
        let known = match statement.__statement() {
            Some(s) => Some(s.clone()),
            None => self.cached(statement.__sql(), &[]),
        };
        match known {
            Some(s) => ops::execute(conn, begin, &s, params).await,
            None if params.is_empty() => {
                let (s, rows, n) = ops::prepare_and_execute(conn, begin, statement.__sql()).await?;
                self.remember(&s);
                Ok((rows, n))
            }
            None => {
                let s = ops::prepare(conn, begin, statement.__sql(), &[]).await?;
                self.remember(&s);
                ops::execute(conn, begin, &s, params).await
            }
        }
    }
}

/// The session was closed before the request reached the extension: its 57P05 came back
/// instead of an answer, or the write found the socket already closed.
fn is_idle_close<T>(result: &Result<T, Error>) -> bool {
    let Err(e) = result else {
        return false;
    };
    let not_sent = std::error::Error::source(e)
        .is_some_and(|s| s.downcast_ref::<crate::conn::NotSent>().is_some());
    not_sent
        || (e.is_extension()
            && e.code()
                .is_some_and(|c| c.code() == crate::conn::IDLE_SESSION_TIMEOUT))
}

pub(crate) fn one(mut rows: Vec<Row>) -> Result<Row, Error> {
    if rows.len() != 1 {
        return Err(Error::new(Kind::RowCount, None));
    }
    Ok(rows.remove(0))
}

pub(crate) fn at_most_one(mut rows: Vec<Row>) -> Result<Option<Row>, Error> {
    match rows.len() {
        0 => Ok(None),
        1 => Ok(rows.pop()),
        _ => Err(Error::new(Kind::RowCount, None)),
    }
}

/// Options for a transaction, as tokio-postgres' `TransactionBuilder`.
#[derive(Debug)]
pub struct TransactionBuilder<'a> {
    client: &'a Client,
    options: Begin,
}

impl<'a> TransactionBuilder<'a> {
    /// Sets the isolation level.
    pub fn isolation_level(mut self, level: IsolationLevel) -> Self {
        self.options.isolation = level;
        self
    }

    /// Makes the transaction read only, or read write.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.options.read_only = Some(read_only);
        self
    }

    /// Makes the transaction deferrable (with serializable, read only).
    pub fn deferrable(mut self, deferrable: bool) -> Self {
        self.options.deferrable = Some(deferrable);
        self
    }

    /// Starts the transaction. Nothing is sent yet: Begin travels with the first statement.
    pub async fn start(self) -> Result<Transaction<'a>, Error> {
        let conn = self.client.take_conn().await?;
        Ok(Transaction::new(self.client, conn, self.options))
    }
}

#[cfg(test)]
mod tests {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    fn sendable<T: Send + Sync + 'static>() {}

    #[test]
    fn client_is_clone_send_sync() {
        shareable::<super::Client>();
        shareable::<crate::Statement>();
        sendable::<crate::Error>();
        sendable::<crate::Row>();
    }
}
