//! A SimpleQuery request: statements through PostgreSQL's simple query protocol, their rows
//! returned as text, as tokio-postgres' `simple_query`.
//!
//! Rows are read from the database one at a time (`simple_query_raw`) and sent in Rows frames
//! of about [`ROWS_CHUNK`] bytes, like an Execute's, so a large result is never held whole.

use std::io;
use std::pin::pin;
use std::time::Instant;

use futures_util::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::SimpleQueryMessage;
use warmpool::protocol::{sqlstate, Response, RowsEncoder, WireError};
use warmpool::transport::Framed;

use super::{absorb_cancel, send_begin, watch, Session, StmtError, ROWS_CHUNK};
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
        let guard = self.guard(&shared, &conn.client);
        let client = &conn.client;
        let mut began = false;
        let outcome = async {
            let (began_result, stream) = watch(&mut self.framed, &guard, async {
                tokio::join!(
                    send_begin(client, begin.as_deref()),
                    client.simple_query_raw(&sql)
                )
            })
            .await?;
            began_result.map_err(|e| StmtError::from_pg(&e))?;
            began = begin.is_some();
            let stream = stream.map_err(|e| StmtError::from_pg(&e))?;
            stream_messages(&mut self.framed, &guard, stream, max_frame).await
        }
        .await;
        let conn = lease.conn();
        if began {
            conn.in_transaction = true;
        }
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

/// Streams the statements' columns, text rows and completions to the client; returns the rows
/// sent, or the first statement error.
async fn stream_messages<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S>,
    guard: &Guard<'_>,
    stream: tokio_postgres::SimpleQueryStream,
    max_frame: usize,
) -> Result<u64, StmtError> {
    let mut stream = pin!(stream);
    let mut frame: Option<RowsEncoder> = None;
    let mut bytes = 0;
    let mut rows = 0u64;
    let streamed = async {
        loop {
            let message = match watch(framed, guard, stream.try_next()).await? {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(()),
                Err(e) => return Err(StmtError::from_pg(&e)),
            };
            match message {
                SimpleQueryMessage::RowDescription(columns) => {
                    if let Some(f) = frame.take() {
                        f.finish(framed.write_buf());
                    }
                    let names = columns.iter().map(|c| c.name().to_owned()).collect();
                    framed.queue_response(&Response::Columns(names));
                    flush_if_full(framed).await?;
                }
                SimpleQueryMessage::Row(row) => {
                    let value = |i: usize| row.get(i).map(str::as_bytes);
                    let len = RowsEncoder::row_len((0..row.len()).map(value));
                    if len + 4 > max_frame {
                        return Err(StmtError::Sql(WireError::extension(
                            sqlstate::PROGRAM_LIMIT_EXCEEDED,
                            format!(
                                "a result row of {len} bytes exceeds the frame limit of \
                                 {max_frame} bytes (WARMPOOL_MAX_FRAME_BYTES); the statement \
                                 ran, but its rows cannot be returned"
                            ),
                        )));
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
                    f.push(framed.write_buf(), (0..row.len()).map(value));
                    bytes += len;
                    rows += 1;
                }
                SimpleQueryMessage::CommandComplete(n) => {
                    if let Some(f) = frame.take() {
                        f.finish(framed.write_buf());
                    }
                    framed.queue_response(&Response::Complete(n));
                    // A script of many statements without rows must not pile up completions.
                    flush_if_full(framed).await?;
                }
                _ => {}
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
