//! A SimpleQuery request: statements through PostgreSQL's simple query protocol, their rows
//! returned as text, as tokio-postgres' `simple_query`.
//!
//! Rows are read from the database one at a time and sent in Rows frames
//! of about [`ROWS_CHUNK`] bytes, like an Execute's, so a large result is never held whole.

use std::io;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use warmpool::protocol::{Response, RowsEncoder};
use warmpool::transport::Framed;

use super::{absorb_cancel, watch, Session, StmtError, ROWS_CHUNK};
use crate::backend::query::values;
use crate::backend::{Backend, Simple};
use crate::deadline::Guard;
use crate::metrics::Event;

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(super) async fn simple_query(&mut self, sql: String) -> io::Result<()> {
        let mut lease = match self.lease().await {
            Ok(l) => l,
            Err(e) => return self.send(&Response::Error(e)).await,
        };
        let begin = lease.take_begin();
        let pinned = lease.is_pinned();
        let max_frame = self.config().max_frame;
        let shared = self.shared.clone();
        let started = Instant::now();
        let conn = lease.conn();
        let guard = self.guard(&shared, conn.backend.cancel_token());
        let outcome = run(
            &mut self.framed,
            &mut conn.backend,
            begin.as_deref(),
            &sql,
            &guard,
            max_frame,
        )
        .await;
        let conn = lease.conn();
        if pinned {
            conn.note_statement(&sql);
        } else {
            conn.note_batch(&sql);
        }
        self.shared.pool.meter().add(Event::Query {
            rows: *outcome.as_ref().unwrap_or(&0),
            time: started.elapsed(),
        });
        let outcome = absorb_cancel(&guard, lease.conn(), outcome).await;
        self.finish(outcome.map(|_| Response::Ok), lease, &guard)
            .await
    }
}

/// Sends the query, after `begin` if the transaction has yet to start (in the same write, with
/// a Sync after the Query, so a failed BEGIN makes the server skip the query), and streams its
/// answer; returns the rows sent, or the first statement error.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    backend: &mut Backend,
    begin: Option<&str>,
    sql: &str,
    guard: &Guard<'_>,
    max_frame: usize,
) -> Result<u64, StmtError> {
    let began = watch(framed, guard, backend.start_query(begin, sql)).await?;
    began.map_err(|e| StmtError::from_backend(&e))?;
    let streamed = stream_messages(framed, guard, backend, max_frame).await;
    // A client that went away leaves the rest to the cancel that follows.
    let departed = matches!(
        streamed,
        Err(StmtError::Gone(_) | StmtError::Lost(_) | StmtError::Client(_))
    );
    if begin.is_some() && !departed {
        // The Sync after the query closes the request.
        watch(framed, guard, backend.finish_unit())
            .await?
            .map_err(|e| StmtError::from_backend(&e))?;
    }
    streamed
}

/// Streams the statements' columns, text rows and completions to the client; returns the rows
/// sent, or the first statement error.
async fn stream_messages<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    guard: &Guard<'_>,
    backend: &mut Backend,
    max_frame: usize,
) -> Result<u64, StmtError> {
    let mut frame: Option<RowsEncoder> = None;
    let mut bytes = 0;
    let mut rows = 0u64;
    let streamed = async {
        loop {
            let message = match watch(framed, guard, backend.read_simple()).await? {
                Ok(Simple::Done) => return Ok(()),
                Ok(message) => message,
                Err(e) => return Err(StmtError::from_backend(&e)),
            };
            match message {
                Simple::Columns(names) => {
                    if let Some(f) = frame.take() {
                        f.finish(framed.write_buf());
                    }
                    framed.queue_response(&Response::Columns(names));
                    flush_if_full(framed).await?;
                }
                Simple::Row(row) => {
                    let len = RowsEncoder::row_len(values(&row));
                    if len + 4 > max_frame {
                        // The rest of the answer is read and dropped, so the connection stays
                        // usable.
                        if let Err(e) = watch(framed, guard, backend.finish_unit()).await? {
                            return Err(StmtError::from_backend(&e));
                        }
                        return Err(StmtError::Sql(crate::errors::row_too_large(len, max_frame)));
                    }
                    if bytes + len + 4 > max_frame.min(ROWS_CHUNK) {
                        if let Some(f) = frame.take() {
                            f.finish(framed.write_buf());
                        }
                    }
                    if frame.is_none() {
                        // Whatever is queued goes out before a new frame starts, so at most one
                        // frame's worth is ever held.
                        framed.flush().await.map_err(StmtError::Client)?;
                        bytes = 0;
                    }
                    let f = frame.get_or_insert_with(|| RowsEncoder::begin(framed.write_buf()));
                    f.push(framed.write_buf(), values(&row));
                    bytes += len;
                    rows += 1;
                }
                Simple::Complete(n) => {
                    if let Some(f) = frame.take() {
                        f.finish(framed.write_buf());
                    }
                    framed.queue_response(&Response::Complete(n));
                    // A script of many statements without rows must not pile up completions.
                    flush_if_full(framed).await?;
                }
                Simple::Done => unreachable!("returned above"),
            }
        }
    }
    .await;
    match (&streamed, frame) {
        (Ok(()), Some(f)) => f.finish(framed.write_buf()),
        // An error follows instead of the rest: the frame in progress goes.
        (_, Some(f)) => f.abandon(framed.write_buf()),
        (_, None) => {}
    }
    streamed.map(|()| rows)
}

async fn flush_if_full<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
) -> Result<(), StmtError> {
    if framed.queued() >= ROWS_CHUNK {
        framed.flush().await.map_err(StmtError::Client)?;
    }
    Ok(())
}
