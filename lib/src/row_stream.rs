//! A statement's rows as a stream, read from the socket frame by frame: the extension sends
//! rows in frames of about 64 KiB, and [`RowStream`] holds one frame's rows at a time, so a
//! large result never sits whole in the function's memory.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_util::Stream;
use postgres_types::BorrowToSql;

use crate::client::Client;
use crate::conn::Conn;
use crate::error::Error;
use crate::ops;
use crate::protocol::{Begin, RawRow, Response};
use crate::row::Row;
use crate::statement::{Column, Statement, ToStatement};
use crate::transaction::TxSession;

/// The rows of [`Client::query_raw`] or [`crate::Transaction::query_raw`], as a
/// `Stream<Item = Result<Row, Error>>` (read it with `futures_util::TryStreamExt::try_next`,
/// re-exported as [`crate::stream::TryStreamExt`]).
///
/// The stream holds its session until its last row has been read. Dropped before that:
/// - from [`Client::query_raw`], the session is closed, not returned to the idle list; the
///   extension then cancels the statement on the database, so nothing keeps running for rows
///   nobody will read;
/// - from [`crate::Transaction::query_raw`], closing would roll the transaction back, so the
///   rest of the rows are read and thrown away, a frame at a time, before the transaction's next
///   request is answered. Dropped while a frame is half read (a `select!` that gave up on it),
///   the transaction's session is closed and the transaction can only roll back.
pub struct RowStream<'a> {
    rows: Pin<Box<dyn Stream<Item = Result<Row, Error>> + Send + 'a>>,
    columns: Arc<[Column]>,
    rows_affected: Arc<OnceLock<u64>>,
}

impl std::fmt::Debug for RowStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowStream")
            .field("columns", &self.columns)
            .field("rows_affected", &self.rows_affected.get())
            .finish_non_exhaustive()
    }
}

impl<'a> RowStream<'a> {
    fn new(holder: Holder<'a>, statement: &Statement, first: Option<Response>) -> RowStream<'a> {
        let rows_affected = Arc::new(OnceLock::new());
        let reader = Reader {
            holder,
            columns: statement.shared_columns(),
            pending: Vec::new().into_iter(),
            first,
            done: false,
            rows_affected: rows_affected.clone(),
        };
        let rows = futures_util::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        });
        RowStream {
            rows: Box::pin(rows),
            columns: statement.shared_columns(),
            rows_affected,
        }
    }

    pub(crate) fn on_session(
        client: Client,
        conn: Conn,
        statement: &Statement,
        first: Response,
    ) -> RowStream<'static> {
        RowStream::new(
            Holder::Session {
                client,
                conn: Some(conn),
            },
            statement,
            Some(first),
        )
    }

    pub(crate) fn in_transaction(
        session: tokio::sync::MutexGuard<'a, TxSession>,
        statement: &Statement,
    ) -> RowStream<'a> {
        RowStream::new(
            Holder::Transaction {
                session,
                finished: false,
            },
            statement,
            None,
        )
    }

    /// The result columns.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The number of rows the statement returned or affected, once the stream has ended;
    /// `None` before.
    pub fn rows_affected(&self) -> Option<u64> {
        self.rows_affected.get().copied()
    }
}

impl Stream for RowStream<'_> {
    type Item = Result<Row, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rows.as_mut().poll_next(cx)
    }
}

/// Where the stream's session comes from, and where it goes when the stream ends or is dropped.
// It lives in the stream's one boxed future, so its size costs no copies.
#[allow(clippy::large_enum_variant)]
enum Holder<'a> {
    /// A session of its own, back to the client's idle list once every row has been read.
    Session { client: Client, conn: Option<Conn> },
    /// The transaction's session.
    Transaction {
        session: tokio::sync::MutexGuard<'a, TxSession>,
        finished: bool,
    },
}

impl Holder<'_> {
    fn conn(&mut self) -> Result<&mut Conn, Error> {
        match self {
            Holder::Session { conn: Some(c), .. } => Ok(c),
            Holder::Session { conn: None, .. } => Err(Error::closed("the stream has ended")),
            Holder::Transaction { session, .. } => session.conn(),
        }
    }

    /// The answer has been read to its end.
    fn finish(&mut self) {
        match self {
            Holder::Session { client, conn } => {
                if let Some(conn) = conn.take() {
                    client.put_conn(conn);
                }
            }
            Holder::Transaction { finished, .. } => *finished = true,
        }
    }
}

impl Drop for Holder<'_> {
    fn drop(&mut self) {
        // A session's connection is simply dropped with it: its socket closes.
        if let Holder::Transaction {
            session,
            finished: false,
        } = self
        {
            if let Ok(conn) = session.conn() {
                conn.skip_rest_of_answer();
            }
        }
    }
}

struct Reader<'a> {
    holder: Holder<'a>,
    columns: Arc<[Column]>,
    /// The rows of the frame last read, not yet handed out.
    pending: std::vec::IntoIter<RawRow>,
    /// A frame read before the stream was made (to see whether the request reached the
    /// extension at all).
    first: Option<Response>,
    done: bool,
    rows_affected: Arc<OnceLock<u64>>,
}

impl Reader<'_> {
    async fn next(&mut self) -> Option<Result<Row, Error>> {
        loop {
            if let Some(raw) = self.pending.next() {
                return Some(Ok(Row::new(self.columns.clone(), raw.values)));
            }
            if self.done {
                return None;
            }
            let frame = match self.first.take() {
                Some(frame) => Ok(frame),
                None => match self.holder.conn() {
                    Ok(conn) => conn.recv().await,
                    Err(e) => Err(e),
                },
            };
            let end = match frame {
                Ok(Response::Rows(rows)) => {
                    self.pending = rows.into_iter();
                    continue;
                }
                Ok(Response::Complete(n)) => {
                    let _ = self.rows_affected.set(n);
                    None
                }
                Ok(Response::Error(e)) => Some(match self.holder.conn() {
                    Ok(conn) => conn.error(e),
                    Err(_) => Error::from_wire(e),
                }),
                Ok(other) => Some(match self.holder.conn() {
                    Ok(conn) => conn.unexpected(&other),
                    Err(e) => e,
                }),
                Err(e) => Some(e),
            };
            self.done = true;
            self.holder.finish();
            return end.map(Err);
        }
    }
}

/// Describes the statement if needed and sends its Execute, after the transaction's Begin if
/// that is still pending; the rows are left for the stream to read.
pub(crate) async fn start<T, P, I>(
    client: &Client,
    conn: &mut Conn,
    begin: &mut Option<Begin>,
    statement: &T,
    params: I,
) -> Result<Statement, Error>
where
    T: ?Sized + ToStatement,
    P: BorrowToSql,
    I: IntoIterator<Item = P>,
    I::IntoIter: ExactSizeIterator,
{
    let known = match statement.__statement() {
        Some(s) => Some(s.clone()),
        None => client.cached(statement.__sql(), &[]),
    };
    let statement = match known {
        Some(s) => s,
        None => {
            let s = ops::prepare(conn, begin, statement.__sql(), &[]).await?;
            client.remember(&s);
            s
        }
    };
    let params = ops::encode_params_iter(&statement, params)?;
    let request = ops::execute_request(&statement, params);
    if let Some(e) = ops::send(conn, begin, &[request]).await? {
        // Begin failed, so the transaction is failed too and the Execute is refused; its answer
        // is read so the session stays in step.
        let _ = ops::read_rows(conn, Some(&statement)).await;
        return Err(e);
    }
    Ok(statement)
}
