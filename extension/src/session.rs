//! One client session: a socket connection from function code, served one request at a time.
//!
//! Outside a transaction each statement borrows a pooled connection for that statement alone.
//! A transaction pins one connection from Begin to Commit or Rollback; BEGIN goes to PostgreSQL
//! pipelined with the transaction's first statement, so it costs no round trip of its own.
//! The session's transaction state is an explicit [`TxState`]: a statement that fails inside a
//! transaction moves it to `Failed`, and from there only Rollback (or Commit, which rolls back
//! and says so) leaves, as in PostgreSQL:
//! <https://www.postgresql.org/docs/current/tutorial-transactions.html>.

use std::io;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use postgres_types::Type;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use warmpool::protocol::{
    sqlstate, Begin, Deadline, Execute, Hello, HelloOk, Prepare, PrepareOk, Request, Response,
    RowsEncoder, WireError, PROTOCOL_VERSION,
};
use warmpool::transport::{Framed, ReadError};

use tracing::{Instrument, Span};
use warmpool::protocol::{Invocation, Stats};

use crate::backend::{self, CancelToken, Reply};
use crate::config::Config;
use crate::conn::{PgConn, Start};
use crate::deadline::{self, Guard};
use crate::errors;
use crate::logging::invocation_span;
use crate::metrics::{Counters, Event, Meter};
use crate::pool::{GetError, Pool, PooledConn};
use crate::slots::Slot;

mod pipeline;
mod savepoint;
mod simple;

pub(crate) use crate::shared::{Shared, ROWS_CHUNK};

/// The transaction state of a session.
enum TxState {
    /// No transaction: statements borrow a connection each.
    Idle,
    /// A transaction holds `conn`. `begin` is the BEGIN still to be sent with the first statement.
    Open {
        conn: PooledConn,
        begin: Option<String>,
    },
    /// A statement in the transaction failed, or the transaction could not start. Statements get
    /// 25P02 until Rollback. `conn` is gone if the connection was lost; `begun` says whether
    /// BEGIN reached the server.
    Failed {
        conn: Option<PooledConn>,
        begun: bool,
    },
}

/// How a statement failed.
enum StmtError {
    /// The server refused the statement; the connection is fine.
    Sql(WireError),
    /// The connection to the database is unusable.
    Lost(WireError),
    /// The client's socket failed; the session is over.
    Client(io::Error),
    /// The client went away while the statement ran: the statement must be cancelled on the
    /// server before its connection can be used again.
    Gone(Box<CancelToken>),
}

impl StmtError {
    fn from_backend(e: &backend::Error) -> StmtError {
        if errors::connection_lost(e) {
            StmtError::Lost(errors::from_backend(e))
        } else {
            StmtError::Sql(errors::from_backend(e))
        }
    }
}

/// Serves one session until the client leaves, `shutdown` is cancelled, or a new session takes
/// its `slot` while it is idle.
pub async fn run<S>(stream: S, shared: Arc<Shared>, shutdown: CancellationToken, mut slot: Slot)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = Session {
        framed: Framed::new(stream, shared.config.max_frame),
        shared,
        tx: TxState::Idle,
        named: None,
        deadline: None,
        arrived: Instant::now(),
    };
    if session.handshake().await {
        session.serve(&shutdown, &mut slot).await;
    }
    session.abandon().await;
}

struct Session<S> {
    framed: Framed<S>,
    shared: Arc<Shared>,
    tx: TxState,
    /// The invocation the client named with an Invocation frame: its ids, its counters, and
    /// the span its requests run in.
    named: Option<(Arc<Invocation>, Arc<Counters>, Span)>,
    /// The client's deadline (a Deadline frame): nothing the session runs may outlive it.
    deadline: Option<SystemTime>,
    /// When the request being served reached the extension: its retry budget runs from then.
    arrived: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Reads Hello and answers it; false if the session must end.
    async fn handshake(&mut self) -> bool {
        let first = tokio::time::timeout(
            self.shared.config.handshake_timeout,
            self.framed.read::<Request>(),
        )
        .await;
        let refusal = match first {
            Err(_) => errors::protocol("no Hello within the handshake timeout"),
            Ok(Ok(Some(Request::Hello(Hello { version, client })))) => {
                if version == PROTOCOL_VERSION {
                    tracing::debug!(client = %client, "session opened");
                    let ok = Response::HelloOk(HelloOk {
                        version: PROTOCOL_VERSION,
                        server: format!("warmpool {}", env!("CARGO_PKG_VERSION")),
                        max_frame: self.shared.config.max_frame as u32,
                    });
                    return self.send(&ok).await.is_ok();
                }
                errors::protocol(format!(
                    "unsupported protocol version {version}: this extension speaks version \
                     {PROTOCOL_VERSION}; use a warmpool client of the same release"
                ))
            }
            Ok(Ok(Some(_))) => errors::protocol("the first frame of a session must be Hello"),
            Ok(Ok(None)) | Ok(Err(ReadError::Torn | ReadError::Io(_))) => return false,
            Ok(Err(ReadError::Frame(e))) => errors::from_frame(&e),
        };
        let _ = self.send(&Response::Error(refusal)).await;
        false
    }

    async fn serve(&mut self, shutdown: &CancellationToken, slot: &mut Slot) {
        loop {
            let idle_timeout = self.config().idle_session_timeout;
            // Only a session between requests with no transaction may give up its slot.
            let idle = matches!(self.tx, TxState::Idle);
            if idle {
                slot.idle();
            }
            // A transaction left open past the deadline holds its locks for an invocation that
            // has ended: it is rolled back at the deadline, not when the client next speaks.
            let tx_deadline = match &self.tx {
                TxState::Idle => None,
                _ => self.deadline.map(deadline::instant),
            };
            let next = tokio::select! {
                next = self.framed.read::<Request>() => next,
                _ = shutdown.cancelled() => {
                    let _ = self.send(&Response::Error(errors::shutting_down())).await;
                    return;
                }
                // Bounds a client that sends nothing, or a frame a byte at a time.
                _ = deadline::idle_for(idle_timeout) => {
                    tracing::info!("closing a session idle past WARMPOOL_IDLE_SESSION_TIMEOUT_MS");
                    let _ = self.send(&Response::Error(errors::idle_session(idle_timeout))).await;
                    return;
                }
                _ = deadline::sleep_until(tx_deadline) => {
                    tracing::info!("the session's deadline passed inside a transaction; rolling it back");
                    self.abandon().await;
                    self.tx = TxState::Failed { conn: None, begun: false };
                    self.deadline = None;
                    continue;
                }
                _ = slot.taken(), if idle => {
                    let e = errors::slot_taken(slot.max_sessions());
                    let _ = self.send(&Response::Error(e)).await;
                    return;
                }
            };
            let request = match next {
                Ok(Some(request)) => {
                    slot.busy();
                    self.arrived = self.framed.received_at();
                    request
                }
                Ok(None) | Err(ReadError::Torn | ReadError::Io(_)) => return,
                Err(ReadError::Frame(e)) => {
                    // The stream cannot be resynchronised after a bad frame: say why, then close.
                    tracing::warn!(error = %e, "malformed frame; closing the session");
                    let _ = self.send(&Response::Error(errors::from_frame(&e))).await;
                    return;
                }
            };
            if shutdown.is_cancelled() {
                let _ = self.send(&Response::Error(errors::shutting_down())).await;
                return;
            }
            // Counted and logged for the invocation the client named, or else for the classic
            // invocation in progress.
            let span = self.span();
            let counters = self.named.as_ref().map(|(_, c, _)| c.clone());
            let keep_going = Meter::scoped(counters, self.handle(request).instrument(span)).await;
            self.shared
                .last_activity_ms
                .store(crate::lifecycle::now_ms(), Ordering::Relaxed);
            if !keep_going {
                return;
            }
        }
    }

    /// The span a request runs in.
    fn span(&self) -> Span {
        match &self.named {
            Some((_, _, span)) => span.clone(),
            None => match self.shared.telemetry.current() {
                Some((_, span)) => span,
                None => Span::none(),
            },
        }
    }

    /// Serves one request; false if the session must end.
    async fn handle(&mut self, request: Request) -> bool {
        // Content PostgreSQL cannot receive (a NUL in SQL text) is the client's error: refused
        // here, before it reaches a connection, and with the transaction state unchanged, as a
        // client that checked it first would have left it.
        if let Err(e) = request.check_content() {
            return self.send(&Response::Error(e)).await.is_ok();
        }
        match request {
            Request::Hello(_) => {
                let e = errors::protocol("Hello may only be sent once, as the first frame");
                let _ = self.send(&Response::Error(e)).await;
                false
            }
            Request::Prepare(p) => self.prepare(p).await.is_ok(),
            Request::Execute(e) => self.execute(e).await.is_ok(),
            Request::Batch(sql) => self.batch(sql).await.is_ok(),
            Request::SimpleQuery(sql) => self.simple_query(sql).await.is_ok(),
            Request::Savepoint(s) => self.savepoint(s).await.is_ok(),
            Request::Begin(b) => self.begin(b).await.is_ok(),
            Request::Commit => self.commit().await.is_ok(),
            Request::Rollback => self.rollback().await.is_ok(),
            Request::Ping => self.send(&Response::Pong).await.is_ok(),
            Request::Pipeline(p) => self.pipeline(p).await.is_ok(),
            Request::Deadline(Deadline { unix_ms }) => {
                self.deadline = unix_ms.map(deadline::from_unix_ms);
                self.send(&Response::Ok).await.is_ok()
            }
            Request::Terminate => false,
            Request::State(r) => {
                crate::warm_serve::handle(&mut self.framed, &self.shared, r, self.deadline)
                    .await
                    .is_ok()
            }
            Request::Invocation(i) => {
                let i = i.bounded();
                self.named = (!i.request_id.is_empty()).then(|| {
                    let counters = self.shared.pool.meter().invocation(&i.request_id);
                    let span = invocation_span(&i.request_id, &i.trace_id);
                    (Arc::new(i), counters, span)
                });
                self.send(&Response::Ok).await.is_ok()
            }
            Request::Stats => {
                let stats: Stats = self
                    .shared
                    .telemetry
                    .stats(self.named.as_ref().map(|(i, _, _)| &**i));
                self.send(&Response::Stats(stats)).await.is_ok()
            }
        }
    }

    async fn send(&mut self, response: &Response) -> io::Result<()> {
        if let Response::Error(e) = response {
            self.shared.pool.meter().add(Event::Error(e.code()));
            match e.source {
                // The database's message can quote the statement's values: only the code.
                warmpool::protocol::ErrorSource::Database => {
                    tracing::debug!(code = e.code(), "the database refused a statement")
                }
                warmpool::protocol::ErrorSource::Extension => tracing::warn!(
                    code = e.code(),
                    error = e.message(),
                    "answered a request with an error"
                ),
            }
        }
        self.framed.queue_response(response);
        self.framed.flush().await
    }

    /// The deadline guard for a statement about to run on the connection `token` cancels in.
    fn guard<'a>(&self, shared: &'a Shared, token: &CancelToken) -> Guard<'a> {
        Guard::new(
            &shared.pool,
            token,
            self.deadline,
            shared.config.reset_timeout,
        )
    }

    fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Answers a statement's outcome and moves the transaction state on; an error only when the
    /// client's socket failed.
    ///
    /// A statement the deadline cancelled inside a transaction rolls the transaction back at
    /// once, so its locks go with it; statements after it get 25P02 until the client rolls back.
    async fn finish(
        &mut self,
        outcome: Result<Response, StmtError>,
        lease: Lease,
        guard: &Guard<'_>,
    ) -> io::Result<()> {
        let hit = guard.hit();
        let outcome = match outcome {
            Err(StmtError::Sql(e)) if hit && e.code() == sqlstate::QUERY_CANCELED => {
                Err(StmtError::Sql(errors::deadline_cancelled()))
            }
            other => other,
        };
        let response = self.settle_outcome(outcome, lease).await;
        if hit {
            if let TxState::Failed {
                conn: Some(_),
                begun,
            } = &self.tx
            {
                let begun = *begun;
                if let TxState::Failed {
                    conn: Some(conn), ..
                } = std::mem::replace(&mut self.tx, TxState::Idle)
                {
                    self.roll_back(conn, begun).await;
                }
                self.tx = TxState::Failed {
                    conn: None,
                    begun: false,
                };
            }
        }
        match response {
            Ok(response) => self.send(&response).await,
            Err(e) => Err(e),
        }
    }

    /// Moves the transaction state on after a statement; the response to send, or the client's
    /// socket error.
    async fn settle_outcome(
        &mut self,
        outcome: Result<Response, StmtError>,
        mut lease: Lease,
    ) -> io::Result<Response> {
        if !matches!(outcome, Err(StmtError::Client(_) | StmtError::Gone(_))) {
            self.queue_notices(lease.conn());
        }
        let response = match outcome {
            Ok(r) => {
                lease.release(self);
                r
            }
            Err(StmtError::Client(e)) => {
                // The client's socket failed while rows were going out to it: the statement may
                // still be running, for a reader that is gone, so it is cancelled as for a
                // client that left.
                let token = lease.conn().backend.cancel_token().clone();
                self.cancel_for_departed_client(lease, &token, "the client's socket failed")
                    .await;
                return Err(e);
            }
            Err(StmtError::Gone(token)) => {
                self.cancel_for_departed_client(lease, &token, "the client left")
                    .await;
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the client went away",
                ));
            }
            Err(StmtError::Sql(e)) => {
                lease.fail(self, true);
                Response::Error(e)
            }
            Err(StmtError::Lost(e)) => {
                lease.fail(self, false);
                Response::Error(e)
            }
        };
        Ok(response)
    }

    /// The client went away with a statement perhaps still running on `lease`'s connection:
    /// cancels it on the server, and pools the connection again only once it is idle.
    async fn cancel_for_departed_client(
        &mut self,
        mut lease: Lease,
        token: &CancelToken,
        why: &str,
    ) {
        let settled = settle(
            &self.shared.pool,
            lease.conn(),
            token,
            self.config().reset_timeout,
        )
        .await;
        tracing::info!(settled, "{why} mid-statement; cancelled it on the server");
        lease.fail(self, settled);
    }

    /// Queues the notices the database sent on `conn` for this session's client, ahead of the
    /// answer they came with.
    fn queue_notices(&mut self, conn: &PgConn) {
        let (notices, dropped) = conn.backend.notices().take();
        if dropped > 0 {
            tracing::debug!(
                dropped,
                "notices past the limit for one answer were dropped"
            );
        }
        for notice in notices {
            self.framed.queue_response(&Response::Notice(notice));
        }
    }

    /// Takes the connection a statement runs on.
    async fn lease(&mut self) -> Result<Lease, WireError> {
        match std::mem::replace(&mut self.tx, TxState::Idle) {
            TxState::Idle => self.get_conn().await.map(Lease::Pooled),
            TxState::Open { conn, begin } => Ok(Lease::Pinned(conn, begin)),
            failed @ TxState::Failed { .. } => {
                self.tx = failed;
                Err(in_failed_transaction())
            }
        }
    }

    /// A pooled connection, with the wait counted, and logged when it is long.
    ///
    /// The wait ends at the session's deadline, as a statement does: a server that has
    /// stopped answering can hold a connect (or the check of an idle connection) for up to
    /// `WARMPOOL_CONNECT_TIMEOUT_MS` at each try, past the invocation.
    async fn get_conn(&self) -> Result<PooledConn, WireError> {
        let started = Instant::now();
        let Some(got) = deadline::within(self.deadline, self.pool().get_for(self.arrived)).await
        else {
            self.pool().meter().add(Event::PoolWait(started.elapsed()));
            tracing::info!("the session's deadline passed while waiting for a database connection");
            return Err(errors::deadline_before_connection());
        };
        if let Ok(conn) = &got {
            // What the database said to the connection's last user is not this client's.
            conn.backend.notices().clear();
        }
        let waited = started.elapsed();
        self.pool().meter().add(Event::PoolWait(waited));
        let slow = self.shared.telemetry.settings().slow_pool_wait;
        if waited > slow {
            tracing::warn!(
                wait_ms = waited.as_millis() as u64,
                threshold_ms = slow.as_millis() as u64,
                pool_size = self.pool().size(),
                got = got.is_ok(),
                "waited long for a database connection (WARMPOOL_SLOW_POOL_WAIT_MS)"
            );
        }
        got.map_err(|e: GetError| crate::pool_errors::from_pool(&e, self.config()))
    }

    async fn prepare(&mut self, p: Prepare) -> io::Result<()> {
        let mut lease = match self.lease().await {
            Ok(l) => l,
            Err(e) => return self.send(&Response::Error(e)).await,
        };
        let shared = self.shared.clone();
        let mut retried = false;
        loop {
            let conn = lease.conn();
            let guard = self.guard(&shared, conn.backend.cancel_token());
            let prepared = guard.run(conn.prepare(&p.sql, &p.types)).await;
            let outcome = match prepared {
                Err(e) => Err(StmtError::Lost(e)),
                Ok(Err(e)) => Err(StmtError::from_backend(&e)),
                Ok(Ok(stmt)) => Ok(Response::PrepareOk(PrepareOk {
                    params: stmt.params().to_vec(),
                    columns: PgConn::columns(&stmt),
                })),
            };
            let outcome = absorb_cancel(&guard, lease.conn(), outcome).await;
            // Preparing changes nothing in the database, so a connection that died under it is
            // replaced and the statement prepared again; but a transaction that has begun must
            // stay on its own connection.
            let movable = match &lease {
                Lease::Pooled(_) => true,
                Lease::Pinned(_, begin) => begin.is_some(),
            };
            if !retried && movable && !guard.hit() && matches!(outcome, Err(StmtError::Lost(_))) {
                let Err(StmtError::Lost(e)) = outcome else {
                    unreachable!("matched above")
                };
                // The dead connection goes first: it holds a place in the pool.
                let (dead, begin) = match lease {
                    Lease::Pooled(conn) => (conn, None),
                    Lease::Pinned(conn, begin) => (conn, begin),
                };
                let pinned = begin.is_some();
                shared.pool.discard(dead);
                match self.replacement().await {
                    Some(fresh) => {
                        lease = match begin {
                            Some(begin) => Lease::Pinned(fresh, Some(begin)),
                            None => Lease::Pooled(fresh),
                        };
                        retried = true;
                        continue;
                    }
                    None => {
                        if pinned {
                            self.tx = TxState::Failed {
                                conn: None,
                                begun: false,
                            };
                        }
                        return self.send(&Response::Error(e)).await;
                    }
                }
            }
            return self.finish(outcome, lease, &guard).await;
        }
    }

    async fn execute(&mut self, ex: Execute) -> io::Result<()> {
        let mut lease = match self.lease().await {
            Ok(l) => l,
            Err(e) => return self.send(&Response::Error(e)).await,
        };
        let begin = lease.take_begin();
        let max_frame = self.config().max_frame;
        let started = Instant::now();
        let shared = self.shared.clone();
        let mut retried = false;
        loop {
            let written = self.framed.written();
            let guard = self.guard(&shared, lease.conn().backend.cancel_token());
            let outcome = run_execute(
                &mut self.framed,
                lease.conn(),
                begin.as_deref(),
                &ex,
                max_frame,
                &guard,
            )
            .await;
            let outcome = absorb_cancel(&guard, lease.conn(), outcome).await;
            // A transaction's first statement goes out together with its BEGIN. If the
            // connection died under it (terminated, the server restarted) nothing of the
            // transaction can have committed, and the client has been sent nothing of it: it
            // starts over, once, on another connection, as if it had been given that one.
            // Any later statement, or one outside a transaction, may have taken effect and is
            // never run twice.
            let first_of_transaction = begin.is_some() && self.framed.written() == written;
            if !retried
                && first_of_transaction
                && !guard.hit()
                && matches!(outcome, Err(StmtError::Lost(_)))
            {
                let Err(StmtError::Lost(e)) = outcome else {
                    unreachable!("matched above")
                };
                // The dead connection goes first: it holds a place in the pool.
                let Lease::Pinned(dead, _) = lease else {
                    unreachable!("a BEGIN is only pending on a transaction's connection")
                };
                shared.pool.discard(dead);
                match self.replacement().await {
                    Some(fresh) => {
                        lease = Lease::Pinned(fresh, None);
                        retried = true;
                        continue;
                    }
                    None => {
                        self.tx = TxState::Failed {
                            conn: None,
                            begun: false,
                        };
                        return self.send(&Response::Error(e)).await;
                    }
                }
            }
            if let Err(StmtError::Sql(e)) = &outcome {
                if matches!(
                    e.code(),
                    sqlstate::INVALID_SQL_STATEMENT_NAME | sqlstate::FEATURE_NOT_SUPPORTED
                ) {
                    // The server no longer knows the statement, or its plan changed shape after
                    // DDL: prepare it afresh next time.
                    lease.conn().forget(&ex.sql, &ex.types);
                }
            }
            lease.conn().note_statement(&ex.sql);
            self.pool().meter().add(Event::Query {
                rows: *outcome.as_ref().unwrap_or(&0),
                time: started.elapsed(),
            });
            return self
                .finish(outcome.map(Response::Complete), lease, &guard)
                .await;
        }
    }

    /// Another connection for a statement that can safely start over on one, after its own
    /// died under it; none if the pool cannot give one.
    async fn replacement(&self) -> Option<PooledConn> {
        match self.get_conn().await {
            Ok(conn) => {
                tracing::info!(
                    "the database connection died under a statement that had not taken \
                     effect; running it again on another connection"
                );
                Some(conn)
            }
            Err(e) => {
                tracing::debug!(
                    code = e.code(),
                    error = e.message(),
                    "no connection to run the statement again on"
                );
                None
            }
        }
    }

    async fn batch(&mut self, sql: String) -> io::Result<()> {
        let mut lease = match self.lease().await {
            Ok(l) => l,
            Err(e) => return self.send(&Response::Error(e)).await,
        };
        let begin = lease.take_begin();
        let pinned = lease.is_pinned();
        let shared = self.shared.clone();
        let conn = lease.conn();
        let started = Instant::now();
        let guard = self.guard(&shared, conn.backend.cancel_token());
        let ran = guard
            .run(run_batch(&mut conn.backend, begin.as_deref(), &sql))
            .await;
        let ran = match ran {
            Ok(ran) => ran,
            Err(e) => {
                return self.finish(Err(StmtError::Lost(e)), lease, &guard).await;
            }
        };
        if pinned {
            conn.note_statement(&sql);
        } else {
            conn.note_batch(&sql);
        }
        self.shared.pool.meter().add(Event::Query {
            rows: 0,
            time: started.elapsed(),
        });
        let outcome = ran
            .map(|()| Response::Ok)
            .map_err(|e| StmtError::from_backend(&e));
        let outcome = absorb_cancel(&guard, lease.conn(), outcome).await;
        self.finish(outcome, lease, &guard).await
    }

    async fn begin(&mut self, options: Begin) -> io::Result<()> {
        if !matches!(self.tx, TxState::Idle) {
            let e = WireError::extension(
                sqlstate::INVALID_TRANSACTION_STATE,
                "a transaction is already in progress in this session",
            );
            return self.send(&Response::Error(e)).await;
        }
        match self.get_conn().await {
            Ok(conn) => {
                self.tx = TxState::Open {
                    conn,
                    begin: Some(options.sql()),
                };
                self.send(&Response::Ok).await
            }
            Err(e) => {
                // The client may have pipelined statements behind Begin; they must not run
                // outside the transaction they were written for.
                self.tx = TxState::Failed {
                    conn: None,
                    begun: false,
                };
                self.send(&Response::Error(e)).await
            }
        }
    }

    async fn commit(&mut self) -> io::Result<()> {
        let response = match std::mem::replace(&mut self.tx, TxState::Idle) {
            TxState::Idle => Response::Error(WireError::extension(
                sqlstate::INVALID_TRANSACTION_STATE,
                "there is no transaction in progress",
            )),
            TxState::Open {
                conn,
                begin: Some(_),
            } => {
                // Nothing ran, so nothing reached the server.
                release(conn, self.shared.clone());
                Response::Ok
            }
            TxState::Open { conn, begin: None } => self.send_commit(conn).await,
            TxState::Failed { conn, begun } => {
                if let Some(conn) = conn {
                    self.roll_back(conn, begun).await;
                }
                Response::Error(WireError::extension(
                    sqlstate::IN_FAILED_TRANSACTION,
                    "the transaction was rolled back because a statement in it failed",
                ))
            }
        };
        self.send(&response).await
    }

    /// Sends COMMIT on the transaction's connection, bounded by the deadline like any statement
    /// and by `WARMPOOL_COMMIT_TIMEOUT_MS`, and says what became of the transaction. Never
    /// retried: a COMMIT whose outcome is unknown must not run twice.
    ///
    /// Past either bound the COMMIT is cancelled. An answer within the reset timeout is
    /// definite: committed, or cancelled before it committed (PostgreSQL then rolls the
    /// transaction back). Without one, the outcome is unknown, and the client is told so with
    /// 08007, never that it committed.
    async fn send_commit(&mut self, mut conn: PooledConn) -> Response {
        let shared = self.shared.clone();
        let limit = shared.config.commit_timeout;
        let guard = self
            .guard(&shared, conn.backend.cancel_token())
            .limited(limit, "WARMPOOL_COMMIT_TIMEOUT_MS");
        let result = guard.run(conn.backend.batch_execute("COMMIT")).await;
        let result = match result {
            Ok(result) => result,
            Err(_) => {
                shared.pool.discard(conn);
                let budget = shared.config.reset_timeout;
                return Response::Error(errors::commit_unknown(budget, guard.limit()));
            }
        };
        self.queue_notices(&conn);
        let response = match &result {
            Ok(()) => Response::Ok,
            Err(e) if guard.hit() && e.code() == Some(sqlstate::QUERY_CANCELED) => {
                Response::Error(match guard.limit() {
                    Some(_) => errors::commit_timed_out(limit),
                    None => errors::deadline_cancelled(),
                })
            }
            Err(e) => Response::Error(errors::from_backend(e)),
        };
        // A COMMIT that was answered, even with an error (a deferred constraint, a
        // serialization failure, the cancel), ended the transaction on the server, as its
        // ReadyForQuery says.
        let lost = matches!(&result, Err(e) if errors::connection_lost(e));
        if lost || !guard.settled(&mut conn).await {
            shared.pool.discard(conn);
        } else {
            release(conn, shared);
        }
        response
    }

    async fn rollback(&mut self) -> io::Result<()> {
        self.abandon().await;
        self.send(&Response::Ok).await
    }

    /// Ends any transaction without a word to the client: a Rollback, a session that went away,
    /// or shutdown.
    async fn abandon(&mut self) {
        match std::mem::replace(&mut self.tx, TxState::Idle) {
            TxState::Idle => {}
            TxState::Open { conn, begin } => self.roll_back(conn, begin.is_none()).await,
            TxState::Failed { conn, begun } => {
                if let Some(conn) = conn {
                    self.roll_back(conn, begun).await;
                }
            }
        }
    }

    /// Rolls back on `conn` within the reset timeout and returns it to the pool, or closes it
    /// if the rollback fails: a connection is never pooled inside a transaction.
    async fn roll_back(&self, mut conn: PooledConn, begun: bool) {
        if !begun {
            release(conn, self.shared.clone());
            return;
        }
        let budget = self.config().reset_timeout;
        let rolled_back = async {
            if !conn.backend.is_synced() && !conn.backend.resync().await {
                return Err(backend::Error::Closed);
            }
            conn.backend.batch_execute("ROLLBACK").await
        };
        match tokio::time::timeout(budget, rolled_back).await {
            Ok(Ok(())) => release(conn, self.shared.clone()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rollback failed; closing the connection");
                self.shared.pool.discard(conn);
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = budget.as_millis() as u64,
                    "rollback timed out; closing the connection"
                );
                self.shared.pool.discard(conn);
            }
        }
    }
}

/// The connection a statement runs on: borrowed from the pool for this statement, or the
/// transaction's own.
enum Lease {
    Pooled(PooledConn),
    Pinned(PooledConn, Option<String>),
}

impl Lease {
    fn conn(&mut self) -> &mut PooledConn {
        match self {
            Lease::Pooled(c) | Lease::Pinned(c, _) => c,
        }
    }

    fn is_pinned(&self) -> bool {
        matches!(self, Lease::Pinned(..))
    }

    fn take_begin(&mut self) -> Option<String> {
        match self {
            Lease::Pinned(_, begin) => begin.take(),
            Lease::Pooled(_) => None,
        }
    }

    /// The statement succeeded: a pooled connection goes back, a pinned one stays pinned.
    fn release<S>(self, session: &mut Session<S>) {
        match self {
            Lease::Pooled(conn) => release(conn, session.shared.clone()),
            Lease::Pinned(conn, begin) => session.tx = TxState::Open { conn, begin },
        }
    }

    /// The statement failed; `usable` says whether the connection survived.
    fn fail<S>(self, session: &mut Session<S>, usable: bool) {
        match self {
            Lease::Pooled(conn) if usable => release(conn, session.shared.clone()),
            Lease::Pooled(conn) => session.shared.pool.discard(conn),
            Lease::Pinned(conn, begin) => {
                let begun = begin.is_none();
                if usable {
                    session.tx = TxState::Failed {
                        conn: Some(conn),
                        begun,
                    };
                } else {
                    session.shared.pool.discard(conn);
                    session.tx = TxState::Failed { conn: None, begun };
                }
            }
        }
    }
}

/// Returns a connection to the pool, resetting its session state first if a statement may have
/// changed it. The reset runs in the background, so the client is not kept waiting for it, and
/// a connection whose reset fails or overruns is closed instead of pooled.
fn release(mut conn: PooledConn, shared: Arc<Shared>) {
    conn.last_used = Instant::now();
    if !conn.needs_reset() {
        return;
    }
    let budget = shared.config.reset_timeout;
    let guard = shared.pool.maintenance();
    let span = Span::current();
    crate::tasks::spawn(
        async move {
            let _guard = guard;
            match tokio::time::timeout(budget, conn.reset()).await {
                Ok(Ok(())) => drop(conn),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "session reset failed; closing the connection");
                    shared.pool.discard(conn);
                }
                Err(_) => {
                    tracing::warn!("session reset timed out; closing the connection");
                    shared.pool.discard(conn);
                }
            }
        }
        .instrument(span),
    );
}

fn in_failed_transaction() -> WireError {
    WireError::extension(
        sqlstate::IN_FAILED_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

/// Runs a batch through the simple query protocol, after `begin` if the transaction has yet
/// to start. BEGIN goes in the same write, ahead of the Query and followed by a Sync, so if it
/// fails the server skips the batch instead of running it outside the transaction.
async fn run_batch(
    backend: &mut backend::Backend,
    begin: Option<&str>,
    sql: &str,
) -> Result<(), backend::Error> {
    backend.start_query(begin, sql).await?;
    let mut outcome = Ok(());
    loop {
        match backend.read_simple().await {
            Ok(backend::Simple::Done) => break,
            Ok(_) => {}
            Err(e) if e.is_lost() => return Err(e),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if begin.is_some() {
        backend.finish_unit().await?;
    }
    outcome
}

/// Runs one statement and streams its rows to the client; returns the rows affected.
async fn run_execute<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    conn: &mut PgConn,
    begin: Option<&str>,
    ex: &Execute,
    max_frame: usize,
    guard: &Guard<'_>,
) -> Result<u64, StmtError> {
    let started = watch(
        framed,
        guard,
        conn.start(begin, &ex.sql, &ex.types, &ex.params),
    )
    .await?;
    match started {
        Ok(_) => {}
        Err(Start::Params(e)) => return Err(StmtError::Sql(e)),
        Err(Start::Backend(e)) => return Err(StmtError::from_backend(&e)),
    }
    let backend = &mut conn.backend;
    stream_rows(framed, guard, backend, max_frame, Answer::Whole).await?
}

/// How much of a request a statement's answer is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The whole request: it is read to its ReadyForQuery.
    Whole,
    /// One statement of several in the request: the rest is left to read.
    Step,
}

/// Streams one statement's rows to the client in frames of about [`ROWS_CHUNK`] bytes; returns
/// the rows affected, or the statement's error.
async fn stream_rows<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    guard: &Guard<'_>,
    backend: &mut backend::Backend,
    max_frame: usize,
    answer: Answer,
) -> Result<Result<u64, StmtError>, StmtError> {
    // Rows are copied into the frame straight from the backend's read buffer: one copy of each
    // row, no allocation per row or value. Rows already in the buffer are taken without a
    // trip through the reader and its watch on the client, which a large result would
    // otherwise pay once per row.
    let mut out = RowsOut {
        frame: None,
        bytes: 0,
        limit: max_frame.min(ROWS_CHUNK),
        max_frame,
    };
    let streamed = async {
        loop {
            let too_large = match backend.buffered_row() {
                Err(e) => return Ok(Err(StmtError::from_backend(&e))),
                Ok(Some(body)) => {
                    let sent = out.push(framed, u16::from_be_bytes([body[0], body[1]]), &body[2..]);
                    let sent = sent.await.map_err(StmtError::Client)?;
                    if sent.is_ok() {
                        backend.pop_row();
                    }
                    sent.err()
                }
                Ok(None) => {
                    let next = match answer {
                        Answer::Whole => watch(framed, guard, backend.read_row()).await?,
                        Answer::Step => watch(framed, guard, backend.read_step()).await?,
                    };
                    let row = match next {
                        Ok(Reply::Row(row)) => row,
                        Ok(Reply::Done(n)) => return Ok(Ok(n)),
                        Err(e) => return Ok(Err(StmtError::from_backend(&e))),
                    };
                    let count = backend::query::column_count(&row);
                    let sent = out.push(framed, count, row.buffer()).await;
                    sent.map_err(StmtError::Client)?.err()
                }
            };
            if let Some(len) = too_large {
                // The rest of the answer is read and dropped, so the connection stays usable.
                let skipped = match answer {
                    Answer::Whole => watch(framed, guard, backend.finish_unit()).await?,
                    Answer::Step => watch(framed, guard, backend.skip_rows()).await?,
                };
                if let Err(e) = skipped {
                    return Ok(Err(StmtError::from_backend(&e)));
                }
                return Ok(Err(StmtError::Sql(crate::errors::row_too_large(
                    len, max_frame,
                ))));
            }
        }
    }
    .await;
    match (&streamed, out.frame) {
        (Ok(Ok(_)), Some(f)) => f.finish(framed.write_buf()),
        // An error follows instead of the rest: the frame in progress goes.
        (_, Some(f)) => f.abandon(framed.write_buf()),
        (_, None) => {}
    }
    streamed
}

/// The Rows frame being filled, and where it must be sent.
struct RowsOut {
    frame: Option<RowsEncoder>,
    bytes: usize,
    /// A frame is sent once it would pass this many bytes.
    limit: usize,
    max_frame: usize,
}

impl RowsOut {
    /// Adds a row of `count` values to the frame, sending the frame first if the row would
    /// take it past its limit; `Err(len)` for a row too large for any frame.
    async fn push<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        framed: &mut Framed<S>,
        count: u16,
        values: &[u8],
    ) -> io::Result<Result<(), usize>> {
        let len = 2 + values.len();
        if len + 4 > self.max_frame {
            return Ok(Err(len));
        }
        if self.bytes + len + 4 > self.limit {
            if let Some(f) = self.frame.take() {
                f.finish(framed.write_buf());
                framed.flush().await?;
                self.bytes = 0;
            }
        }
        let f = self
            .frame
            .get_or_insert_with(|| RowsEncoder::begin(framed.write_buf()));
        f.push_raw(framed.write_buf(), count, values);
        self.bytes += len;
        Ok(Ok(()))
    }
}

/// Runs `work` unless the client closes its socket first, in which case the statement `work`
/// started must be cancelled. A long statement (a lock wait, `pg_sleep`) would otherwise keep
/// running, and holding its locks, for a client that is gone. The same goes when the session's
/// deadline passes: the statement is cancelled on the server, and ends with its 57014.
async fn watch<S, T>(
    framed: &mut Framed<S>,
    guard: &Guard<'_>,
    work: impl std::future::Future<Output = T>,
) -> Result<T, StmtError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut work = pin!(work);
    tokio::select! {
        biased;
        out = &mut work => return Ok(out),
        _ = framed.closed() => return Err(StmtError::Gone(Box::new(guard.token().clone()))),
        _ = deadline::sleep_until(guard.at()) => {}
    }
    guard.cancel(work).await.map_err(StmtError::Lost)
}

/// After the deadline cancelled a statement, makes sure the cancel cannot hit the connection's
/// next statement: a statement that finished just before the cancel arrived leaves it in
/// flight. The empty query queues behind it; if the cancel lands on it instead, the second one
/// proves the connection idle.
async fn absorb_cancel<T>(
    guard: &Guard<'_>,
    conn: &mut PgConn,
    outcome: Result<T, StmtError>,
) -> Result<T, StmtError> {
    if !guard.hit() || matches!(outcome, Err(StmtError::Lost(_) | StmtError::Gone(_))) {
        return outcome;
    }
    if guard.settled(conn).await {
        outcome
    } else {
        Err(StmtError::Lost(errors::deadline_cancelled()))
    }
}

/// Cancels what the connection is running and waits until it is idle again, so the cancel
/// cannot hit the next statement; false if that did not happen within `budget`.
async fn settle(
    pool: &crate::pool::Pool,
    conn: &mut PgConn,
    token: &CancelToken,
    budget: Duration,
) -> bool {
    let settled = tokio::time::timeout(budget, async {
        if let Err(e) = pool.cancel(token).await {
            tracing::warn!(error = %e, "CancelRequest failed");
            return false;
        }
        conn.settle_after_cancel().await
    })
    .await;
    matches!(settled, Ok(true))
}

fn check_params(expected: &[Type], given: &[warmpool::protocol::Param]) -> Result<(), StmtError> {
    crate::conn::check_params(expected, given).map_err(StmtError::Sql)
}
