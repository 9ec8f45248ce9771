//! A Pipeline request: a batch of statements on one pooled connection, sent to PostgreSQL
//! before the first answer is read.
//!
//! tokio-postgres writes a request to its connection when the request's future is first
//! polled, so every future (BEGIN, each statement, COMMIT) is polled once, in order, before
//! any is awaited; their answers are then read in the same order, streaming rows to the client.
//! PostgreSQL runs the pipelined messages in order
//! (<https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-PIPELINING>):
//! in a transaction, once a statement fails every later one fails with 25P02 and the COMMIT
//! turns into a rollback, so nothing of a failed batch takes effect.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use futures_util::future::{maybe_done, BoxFuture, MaybeDone};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::{RowStream, Statement};
use warmpool::protocol::{sqlstate, ErrorSource, Execute, Pipeline, Response, WireError};

use super::{
    check_params, discard, release, settle, stream_rows, watch, RawParam, Session, StmtError,
    TxState, ROWS_CHUNK,
};
use crate::conn::{type_for_oid, PgConn};
use crate::deadline::Guard;
use crate::errors;
use crate::metrics::Event;
use crate::pool::PooledConn;

type Step<'c, T> = Pin<Box<MaybeDone<BoxFuture<'c, Result<T, tokio_postgres::Error>>>>>;

/// How a statement of the batch ended, as far as the database connection is concerned.
enum Ended {
    Ok,
    /// The statement ran on the server, but its rows could not be returned.
    Unreturned,
    Failed,
    Lost,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn pipeline(&mut self, p: Pipeline) -> io::Result<()> {
        if !matches!(self.tx, TxState::Idle) {
            let e = WireError::extension(
                sqlstate::INVALID_TRANSACTION_STATE,
                "a batch cannot run inside a transaction the session has open; commit or roll \
                 it back first",
            );
            return self.refuse(p.statements.len(), e).await;
        }
        let mut conn = match self.get_conn().await {
            Ok(conn) => conn,
            Err(e) => return self.refuse(p.statements.len(), e).await,
        };
        let cancel = conn.client.cancel_token();
        let max_frame = self.config().max_frame;
        let started = std::time::Instant::now();
        let shared = self.shared.clone();
        let guard = self.guard(&shared, &conn.client);
        let outcome = run(&mut self.framed, &mut conn, &p, max_frame, &guard).await;
        // Counted as one query per statement; the batch's database time goes to the first.
        // Rows and per-statement errors of a batch are not counted yet.
        for i in 0..p.statements.len() {
            self.shared.pool.meter().add(Event::Query {
                rows: 0,
                time: if i == 0 {
                    started.elapsed()
                } else {
                    std::time::Duration::ZERO
                },
            });
        }
        for ex in &p.statements {
            conn.note_statement(&ex.sql);
        }
        match outcome {
            Ok(Finish {
                last,
                keep_connection,
            }) => {
                self.queue_notices(&conn);
                // After the deadline cancelled a statement, the cancel must not be left to land
                // on the connection's next user.
                if keep_connection && guard.settled(&conn).await {
                    release(conn, self.shared.clone());
                } else {
                    discard(conn, self.shared.pool.meter());
                }
                self.framed.queue_response(&last);
                self.framed.flush().await
            }
            Err(StmtError::Gone(_)) if p.transaction.is_some() => {
                // A transaction left half way: closing the connection rolls it back.
                discard(conn, self.shared.pool.meter());
                Err(gone())
            }
            Err(StmtError::Gone(_)) => {
                let settled = settle(
                    &self.shared.pool,
                    &mut conn,
                    &cancel,
                    self.config().reset_timeout,
                )
                .await;
                tracing::info!(
                    settled,
                    "the client left mid-batch; cancelled it on the server"
                );
                if settled {
                    release(conn, self.shared.clone());
                } else {
                    discard(conn, self.shared.pool.meter());
                }
                Err(gone())
            }
            Err(StmtError::Client(e)) => {
                if p.transaction.is_some() || conn.in_transaction {
                    discard(conn, self.shared.pool.meter());
                } else {
                    release(conn, self.shared.clone());
                }
                Err(e)
            }
            Err(StmtError::Sql(_) | StmtError::Lost(_)) => {
                unreachable!("statement errors are answered, not returned")
            }
        }
    }

    /// Answers a batch that cannot start: no statement ran.
    async fn refuse(&mut self, statements: usize, e: WireError) -> io::Result<()> {
        for _ in 0..statements {
            self.framed.queue_response(&Response::NotRun);
        }
        self.framed.queue_response(&Response::Error(e));
        self.framed.flush().await
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the client went away")
}

/// The batch's last frame, and whether its connection may go back to the pool.
struct Finish {
    last: Response,
    keep_connection: bool,
}

/// Describes, sends and answers the batch. Every statement's answer is queued on `framed`;
/// the last frame (Ok, or the Error that says why nothing took effect) is returned.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut warmpool::transport::Framed<S>,
    conn: &mut PooledConn,
    p: &Pipeline,
    max_frame: usize,
    guard: &Guard<'_>,
) -> Result<Finish, StmtError> {
    let transactional = p.transaction.is_some();
    let described = match split_lost(watch(framed, guard, describe(conn, &p.statements)).await)? {
        Ok(described) => described,
        Err(e) => {
            // Only Parse went out: nothing ran.
            for _ in &p.statements {
                framed.queue_response(&Response::NotRun);
            }
            return Ok(Finish {
                last: Response::Error(e),
                keep_connection: false,
            });
        }
    };
    // Each statement ready to run, or the error that stops it before it is sent.
    let ready: Vec<Result<Statement, (WireError, bool)>> = described
        .into_iter()
        .zip(&p.statements)
        .map(|(d, ex)| {
            let stmt = d?;
            match check_params(stmt.params(), &ex.params) {
                Ok(()) => Ok(stmt),
                Err(StmtError::Sql(e)) => Err((e, false)),
                Err(_) => unreachable!("check_params only refuses"),
            }
        })
        .collect();
    let lost_early = ready.iter().any(|r| matches!(r, Err((_, true))));
    if transactional {
        if let Some(first) = ready.iter().position(Result::is_err) {
            for r in &ready {
                match r {
                    Ok(_) => framed.queue_response(&Response::NotRun),
                    Err((e, _)) => framed.queue_response(&Response::Error(e.clone())),
                }
            }
            return Ok(Finish {
                last: Response::Error(rolled_back(first)),
                keep_connection: !lost_early,
            });
        }
    }

    let PgConn {
        client,
        statements,
        in_transaction,
        ..
    } = &mut **conn;
    let client = &*client;
    let begin_sql = p.transaction.map(|b| b.sql());
    let mut begin: Option<Step<'_, ()>> = begin_sql.as_deref().map(|sql| {
        Box::pin(maybe_done(
            Box::pin(client.batch_execute(sql)) as BoxFuture<'_, _>
        ))
    });
    let mut steps: Vec<Option<Step<'_, RowStream>>> = ready
        .iter()
        .zip(&p.statements)
        .map(|(r, ex)| {
            let stmt = r.as_ref().ok()?.clone();
            let params: Vec<RawParam> = ex
                .params
                .iter()
                .map(|p| RawParam(p.value.clone()))
                .collect();
            let fut: BoxFuture<'_, _> =
                Box::pin(async move { client.query_raw(&stmt, params).await });
            Some(Box::pin(maybe_done(fut)))
        })
        .collect();
    let mut commit: Option<Step<'_, ()>> = transactional.then(|| {
        Box::pin(maybe_done(
            Box::pin(client.batch_execute("COMMIT")) as BoxFuture<'_, _>
        ))
    });
    if transactional {
        // Set before anything is sent: if this batch is abandoned half way, the connection is
        // never pooled inside its transaction.
        *in_transaction = true;
    }

    // Send everything: the first poll of each request writes it to the connection, in order.
    std::future::poll_fn(|cx| {
        if let Some(b) = begin.as_mut() {
            let _ = b.as_mut().poll(cx);
        }
        for s in steps.iter_mut().flatten() {
            let _ = s.as_mut().poll(cx);
        }
        if let Some(c) = commit.as_mut() {
            let _ = c.as_mut().poll(cx);
        }
        Poll::Ready(())
    })
    .await;

    let mut keep_connection = !lost_early;
    let mut begin_error = None;
    if let Some(mut b) = begin.take() {
        if let Err(e) = split_lost(watch(framed, guard, b.as_mut()).await)? {
            return Ok(lost(framed, p, 0, e, None, None, guard));
        }
        if let Some(Err(e)) = b.as_mut().take_output() {
            keep_connection &= !errors::connection_lost(&e);
            begin_error = Some(errors::from_pg(&e));
        }
    }
    let mut first_failure: Option<usize> = None;
    for (i, (step, ready)) in steps.iter_mut().zip(&ready).enumerate() {
        let ex = &p.statements[i];
        let skip = transactional && (begin_error.is_some() || first_failure.is_some());
        let ended = match (step.as_mut(), ready) {
            (None, Err((e, lost))) => {
                framed.queue_response(&Response::Error(e.clone()));
                if *lost {
                    Ended::Lost
                } else {
                    Ended::Failed
                }
            }
            (Some(step), _) => {
                if let Err(e) = split_lost(watch(framed, guard, step.as_mut()).await)? {
                    return Ok(lost(framed, p, i, e, begin_error, first_failure, guard));
                }
                let stream = step
                    .as_mut()
                    .take_output()
                    .expect("a finished step has its output");
                let answer = match stream {
                    Ok(stream) => {
                        match split_lost(stream_rows(framed, guard, stream, max_frame).await)? {
                            Ok(answer) => answer,
                            Err(e) => {
                                return Ok(lost(framed, p, i, e, begin_error, first_failure, guard))
                            }
                        }
                    }
                    Err(e) => Err(StmtError::from_pg(&e)),
                };
                match answer {
                    _ if skip => {
                        framed.queue_response(&Response::NotRun);
                        Ended::Ok
                    }
                    Ok(n) => {
                        framed.queue_response(&Response::Complete(n));
                        Ended::Ok
                    }
                    Err(StmtError::Sql(e)) if e.source == ErrorSource::Extension => {
                        framed.queue_response(&Response::Error(e));
                        Ended::Unreturned
                    }
                    Err(StmtError::Sql(e)) => {
                        if matches!(e.code(), "26000" | "0A000") {
                            statements.forget(&ex.sql, &ex.types);
                        }
                        framed.queue_response(&Response::Error(e));
                        Ended::Failed
                    }
                    Err(StmtError::Lost(e)) => {
                        framed.queue_response(&Response::Error(e));
                        Ended::Lost
                    }
                    Err(other) => return Err(other),
                }
            }
            (None, Ok(_)) => unreachable!("every ready statement has a step"),
        };
        match ended {
            Ended::Ok | Ended::Unreturned => {}
            Ended::Failed => {
                first_failure.get_or_insert(i);
            }
            Ended::Lost => {
                first_failure.get_or_insert(i);
                keep_connection = false;
            }
        }
        if framed.queued() >= ROWS_CHUNK {
            framed.flush().await.map_err(StmtError::Client)?;
        }
    }
    drop(steps);

    let last = match commit.take() {
        None => Response::Ok,
        Some(mut c) => {
            if let Err(e) = split_lost(watch(framed, guard, c.as_mut()).await)? {
                let n = p.statements.len();
                return Ok(lost(framed, p, n, e, begin_error, first_failure, guard));
            }
            match c.as_mut().take_output() {
                Some(Ok(())) => {
                    *in_transaction = false;
                    match (begin_error, first_failure) {
                        (Some(e), _) => Response::Error(e),
                        (None, Some(i)) => Response::Error(rolled_back(i)),
                        (None, None) => Response::Ok,
                    }
                }
                Some(Err(e)) => {
                    if errors::connection_lost(&e) {
                        keep_connection = false;
                    } else {
                        // A failed COMMIT ends the transaction on the server.
                        *in_transaction = false;
                    }
                    Response::Error(begin_error.unwrap_or_else(|| errors::from_pg(&e)))
                }
                None => unreachable!("a finished step has its output"),
            }
        }
    };
    Ok(Finish {
        last,
        keep_connection,
    })
}

/// Takes a lost connection out of a step's error, to be answered; any other error ends the
/// batch as before.
fn split_lost<T>(r: Result<T, StmtError>) -> Result<Result<T, WireError>, StmtError> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(StmtError::Lost(e)) => Ok(Err(e)),
        Err(other) => Err(other),
    }
}

/// The deadline passed and the database answered neither the batch nor the cancel in time
/// (`e` says so), with statements `from..` unanswered; the connection is closed.
///
/// Those statements were sent, so the database may still run them when it resumes: each is
/// answered with `e`, never NotRun, unless its transaction has already failed. A transaction
/// that had not failed may still commit, since its COMMIT was sent too: its outcome is
/// unknown (08007), as for a COMMIT.
fn lost<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut warmpool::transport::Framed<S>,
    p: &Pipeline,
    from: usize,
    e: WireError,
    begin_error: Option<WireError>,
    first_failure: Option<usize>,
    guard: &Guard<'_>,
) -> Finish {
    let transactional = p.transaction.is_some();
    let doomed = transactional && (begin_error.is_some() || first_failure.is_some());
    for _ in from..p.statements.len() {
        if doomed {
            framed.queue_response(&Response::NotRun);
        } else {
            framed.queue_response(&Response::Error(e.clone()));
        }
    }
    let last = match (transactional, begin_error, first_failure) {
        (false, _, _) => e,
        (true, Some(b), _) => b,
        (true, None, Some(i)) => rolled_back(i),
        (true, None, None) => errors::commit_unknown(guard.budget()),
    };
    Finish {
        last: Response::Error(last),
        keep_connection: false,
    }
}

/// The reason a transactional batch did not take effect when statement `index` failed.
fn rolled_back(index: usize) -> WireError {
    WireError::extension(
        sqlstate::IN_FAILED_TRANSACTION,
        format!(
            "the batch's transaction was rolled back because statement {} failed",
            index + 1
        ),
    )
}

/// Each statement's server-side description: cached on this connection, or prepared now, all
/// missing ones pipelined together. An error carries whether the connection was lost.
async fn describe(
    conn: &mut PgConn,
    statements: &[Execute],
) -> Vec<Result<Statement, (WireError, bool)>> {
    let PgConn {
        client,
        statements: cache,
        ..
    } = conn;
    let mut known: Vec<Option<Statement>> = statements
        .iter()
        .map(|ex| cache.cached(&ex.sql, &ex.types))
        .collect();
    // A statement PostgreSQL cannot receive is refused as the client's error, unsent.
    let refused: Vec<Option<WireError>> = statements
        .iter()
        .map(|ex| ex.check_content().err())
        .collect();
    let mut missing: Vec<(&str, &[u32])> = Vec::new();
    for ((ex, k), refused) in statements.iter().zip(&known).zip(&refused) {
        let key = (ex.sql.as_str(), ex.types.as_slice());
        if k.is_none() && refused.is_none() && !missing.contains(&key) {
            missing.push(key);
        }
    }
    let client = &*client;
    let mut prepares: Vec<Pin<Box<MaybeDone<BoxFuture<'_, _>>>>> = missing
        .iter()
        .map(|(sql, types)| {
            let declared: Vec<_> = types.iter().map(|o| type_for_oid(*o)).collect();
            let fut: BoxFuture<'_, Result<Statement, tokio_postgres::Error>> =
                Box::pin(async move { client.prepare_typed(sql, &declared).await });
            Box::pin(maybe_done(fut))
        })
        .collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for p in prepares.iter_mut() {
            done &= p.as_mut().poll(cx).is_ready();
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    let fresh: Vec<Result<Statement, (WireError, bool)>> = prepares
        .iter_mut()
        .zip(&missing)
        .map(
            |(p, (sql, types))| match p.as_mut().take_output().expect("every prepare finished") {
                Ok(stmt) => {
                    cache.insert(sql, types, stmt.clone());
                    Ok(stmt)
                }
                Err(e) => Err((errors::from_pg(&e), errors::connection_lost(&e))),
            },
        )
        .collect();
    statements
        .iter()
        .zip(known.iter_mut())
        .zip(refused)
        .map(|((ex, k), refused)| match (refused, k.take()) {
            (Some(e), _) => Err((e, false)),
            (None, Some(stmt)) => Ok(stmt),
            (None, None) => {
                let key = (ex.sql.as_str(), ex.types.as_slice());
                let at = missing.iter().position(|m| *m == key).expect("described");
                fresh[at].clone()
            }
        })
        .collect()
}
