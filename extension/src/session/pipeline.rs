//! A Pipeline request: a batch of statements on one pooled connection, all written to
//! PostgreSQL before the first answer is read.
//!
//! PostgreSQL runs pipelined messages in order
//! (<https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-PIPELINING>).
//! Outside a transaction each statement is a request of its own, ended by its own Sync, so one
//! failing does not stop the others. A transactional batch is one request: BEGIN, the
//! statements and COMMIT, then one Sync. Once a statement fails the server skips everything up
//! to the Sync, COMMIT included, so nothing of a failed batch takes effect, and the extension
//! rolls the failed transaction back.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use warmpool::protocol::{sqlstate, ErrorSource, Execute, Pipeline, Response, WireError};

use super::{
    check_params, release, settle, stream_rows, watch, Answer, Session, StmtError, TxState,
    ROWS_CHUNK,
};
use crate::backend::{self, Statement, TxStatus};
use crate::conn::PgConn;
use crate::deadline::Guard;
use crate::errors;
use crate::metrics::Event;
use crate::pool::PooledConn;

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
        let cancel = conn.backend.cancel_token().clone();
        let max_frame = self.config().max_frame;
        let started = std::time::Instant::now();
        let shared = self.shared.clone();
        let guard = self.guard(&shared, &cancel);
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
                if keep_connection && guard.settled(&mut conn).await {
                    release(conn, self.shared.clone());
                } else {
                    self.shared.pool.discard(conn);
                }
                self.framed.queue_response(&last);
                self.framed.flush().await
            }
            Err(StmtError::Gone(_)) if p.transaction.is_some() => {
                // A transaction left half way: closing the connection rolls it back.
                self.shared.pool.discard(conn);
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
                    self.shared.pool.discard(conn);
                }
                Err(gone())
            }
            Err(StmtError::Client(e)) => {
                if p.transaction.is_some() || conn.in_transaction() {
                    self.shared.pool.discard(conn);
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

    let begin_sql = p.transaction.map(|b| b.sql());
    let backend = &mut conn.backend;
    let written = write(backend, begin_sql.as_deref(), &ready, &p.statements);
    if let Err(e) = written {
        // Nothing of a request that could not be written whole goes out; the connection's
        // count of answers would no longer match, so it is not reused.
        backend.discard_unsent();
        backend.poison();
        for _ in &p.statements {
            framed.queue_response(&Response::NotRun);
        }
        return Ok(Finish {
            last: Response::Error(errors::from_backend(&e)),
            keep_connection: false,
        });
    }
    if let Err(e) = split_lost(
        watch(framed, guard, async {
            backend
                .flush()
                .await
                .map_err(|e| StmtError::from_backend(&e))
        })
        .await
        .and_then(|r| r),
    )? {
        return Ok(lost(framed, p, 0, e, None, None, guard));
    }

    let mut keep_connection = !lost_early;
    let mut begin_error = None;
    if begin_sql.is_some() {
        let answered = match split_lost(watch(framed, guard, backend.read_command()).await)? {
            Ok(answered) => answered,
            Err(e) => return Ok(lost(framed, p, 0, e, None, None, guard)),
        };
        match answered {
            Ok(()) => {}
            Err(e) if e.is_lost() => {
                return Ok(lost(
                    framed,
                    p,
                    0,
                    errors::from_backend(&e),
                    None,
                    None,
                    guard,
                ))
            }
            // read_command read the rest of the request: nothing else ran.
            Err(e) => begin_error = Some(errors::from_backend(&e)),
        }
    }
    let answer = if transactional {
        Answer::Step
    } else {
        Answer::Whole
    };
    let mut first_failure: Option<usize> = None;
    // Statements the server no longer knows, forgotten once the batch is answered.
    let mut forgotten: Vec<usize> = Vec::new();
    for (i, ready) in ready.iter().enumerate() {
        let ended = match ready {
            Err((e, lost)) => {
                framed.queue_response(&Response::Error(e.clone()));
                if *lost {
                    Ended::Lost
                } else {
                    Ended::Failed
                }
            }
            // The server skipped it: the transaction had already failed.
            Ok(_) if transactional && (begin_error.is_some() || first_failure.is_some()) => {
                framed.queue_response(&Response::NotRun);
                Ended::Ok
            }
            Ok(_) => {
                let answered =
                    match split_lost(stream_rows(framed, guard, backend, max_frame, answer).await)?
                    {
                        Ok(answer) => answer,
                        Err(e) => {
                            return Ok(lost(framed, p, i, e, begin_error, first_failure, guard))
                        }
                    };
                match answered {
                    Ok(n) => {
                        framed.queue_response(&Response::Complete(n));
                        Ended::Ok
                    }
                    Err(StmtError::Sql(e)) if e.source == ErrorSource::Extension => {
                        framed.queue_response(&Response::Error(e));
                        Ended::Unreturned
                    }
                    Err(StmtError::Sql(e)) => {
                        if matches!(
                            e.code(),
                            sqlstate::INVALID_SQL_STATEMENT_NAME | sqlstate::FEATURE_NOT_SUPPORTED
                        ) {
                            forgotten.push(i);
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
        if !keep_connection {
            break;
        }
        if framed.queued() >= ROWS_CHUNK {
            framed.flush().await.map_err(StmtError::Client)?;
        }
    }
    if !keep_connection {
        // The connection failed part way: what was not answered did not run here.
        let answered = first_failure.map_or(p.statements.len(), |i| i + 1);
        for _ in answered..p.statements.len() {
            framed.queue_response(&Response::NotRun);
        }
        return Ok(Finish {
            last: Response::Error(
                begin_error.unwrap_or_else(|| rolled_back(first_failure.unwrap_or(0))),
            ),
            keep_connection: false,
        });
    }

    let last = if !transactional {
        Response::Ok
    } else {
        // The COMMIT's answer, unless the server skipped it; then the request's end.
        let failed_before = begin_error.is_some() || first_failure.is_some();
        let commit = if failed_before {
            Ok(())
        } else {
            let answered = match split_lost(watch(framed, guard, backend.read_command()).await)? {
                Ok(answered) => answered,
                Err(e) => {
                    let n = p.statements.len();
                    return Ok(lost(framed, p, n, e, begin_error, first_failure, guard));
                }
            };
            match answered {
                Ok(()) => Ok(()),
                Err(e) if e.is_lost() => {
                    let n = p.statements.len();
                    return Ok(lost(
                        framed,
                        p,
                        n,
                        errors::from_backend(&e),
                        begin_error,
                        first_failure,
                        guard,
                    ));
                }
                // read_command read the rest of the request.
                Err(e) => Err(e),
            }
        };
        let ended = if failed_before || commit.is_ok() {
            match split_lost(watch(framed, guard, backend.finish_unit()).await)? {
                Ok(ended) => ended,
                Err(e) => {
                    let n = p.statements.len();
                    return Ok(lost(framed, p, n, e, begin_error, first_failure, guard));
                }
            }
        } else {
            Ok(())
        };
        if let Err(e) = ended {
            let n = p.statements.len();
            return Ok(lost(
                framed,
                p,
                n,
                errors::from_backend(&e),
                begin_error,
                first_failure,
                guard,
            ));
        }
        // A failed transaction stays open on the server until it is rolled back.
        if backend.status() != TxStatus::Idle {
            let rolled = split_lost(watch(framed, guard, backend.batch_execute("ROLLBACK")).await)?;
            keep_connection &= matches!(rolled, Ok(Ok(())));
        }
        match (begin_error, first_failure, commit) {
            (Some(e), _, _) => Response::Error(e),
            (None, Some(i), _) => Response::Error(rolled_back(i)),
            (None, None, Err(e)) => Response::Error(errors::from_backend(&e)),
            (None, None, Ok(())) => Response::Ok,
        }
    };
    for i in forgotten {
        let ex = &p.statements[i];
        conn.forget(&ex.sql, &ex.types);
    }
    Ok(Finish {
        last,
        keep_connection,
    })
}

/// Writes the whole batch: each statement a request of its own, or, for a transaction, BEGIN,
/// the statements and COMMIT as one request.
fn write(
    backend: &mut backend::Backend,
    begin: Option<&str>,
    ready: &[Result<Statement, (WireError, bool)>],
    statements: &[Execute],
) -> Result<(), backend::Error> {
    if let Some(b) = begin {
        backend.write_command(b)?;
    }
    for (r, ex) in ready.iter().zip(statements) {
        if let Ok(stmt) = r {
            backend.write_execute(stmt, ex.params.iter().map(|p| p.value.as_deref()))?;
            if begin.is_none() {
                backend.write_sync();
            }
        }
    }
    if begin.is_some() {
        backend.write_command("COMMIT")?;
        backend.write_sync();
    }
    Ok(())
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
        (true, None, None) => errors::commit_unknown(guard.budget(), guard.limit()),
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
    let mut known: Vec<Option<Statement>> = statements
        .iter()
        .map(|ex| conn.cached(&ex.sql, &ex.types))
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
    let fresh = prepare_all(conn, &missing).await;
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

/// Prepares `missing` in one round trip (their custom types looked up after), caching each.
async fn prepare_all(
    conn: &mut PgConn,
    missing: &[(&str, &[u32])],
) -> Vec<Result<Statement, (WireError, bool)>> {
    let failed = |e: &backend::Error| (errors::from_backend(e), errors::connection_lost(e));
    if missing.is_empty() {
        return Vec::new();
    }
    let named = conn.named();
    let mut names = Vec::with_capacity(missing.len());
    for (sql, types) in missing {
        match conn.backend.write_prepare(named, sql, types) {
            Ok(name) => names.push(Ok(name)),
            Err(e) => names.push(Err(failed(&e))),
        }
    }
    if let Err(e) = conn.backend.flush().await {
        return missing.iter().map(|_| Err(failed(&e))).collect();
    }
    let mut described = Vec::with_capacity(missing.len());
    for name in names {
        described.push(match name {
            Ok(name) => match conn.backend.read_description().await {
                Ok(d) => Ok((name, d)),
                Err(e) => Err(failed(&e)),
            },
            Err(e) => Err(e),
        });
    }
    let mut fresh = Vec::with_capacity(missing.len());
    for ((sql, types), d) in missing.iter().zip(described) {
        fresh.push(match d {
            Ok((name, d)) => match conn.backend.finish_prepare(name, sql, d).await {
                Ok(stmt) => {
                    conn.remember(sql, types, stmt.clone());
                    Ok(stmt)
                }
                Err(e) => Err(failed(&e)),
            },
            Err(e) => Err(e),
        });
    }
    fresh
}
