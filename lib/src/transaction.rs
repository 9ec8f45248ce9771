//! Transactions: one session, pinned to one database connection on the extension's side.

use postgres_types::{BorrowToSql, ToSql, Type};
use tokio::sync::Mutex;

use crate::client::{at_most_one, one, Client};
use crate::conn::Conn;
use crate::error::Error;
use crate::ops;
use crate::protocol::{Begin, Request, Savepoint, SavepointOp};
use crate::row::Row;
use crate::row_stream::RowStream;
use crate::simple_query::SimpleQueryMessage;
use crate::statement::{Statement, ToStatement};

/// A database transaction, or a savepoint inside one ([`Transaction::transaction`],
/// [`Transaction::savepoint`]).
///
/// Its statement methods take `&self`, as tokio-postgres' do; requests on its one session go
/// out one at a time, in the order they are awaited. A future dropped in the middle of a request
/// leaves the session closed, and the transaction can then only roll back.
///
/// Dropped without [`Transaction::commit`], it rolls back. A transaction's session is closed,
/// and the extension rolls back a transaction whose session goes away. A savepoint's
/// `ROLLBACK TO SAVEPOINT` is queued on the session, as tokio-postgres queues its ROLLBACK, and
/// goes out ahead of the outer transaction's next request.
pub struct Transaction<'a> {
    client: &'a Client,
    session: Session<'a>,
    /// The savepoint's name, for a transaction nested in another.
    savepoint: Option<String>,
    /// How deep in nested transactions this one is: 0 for a transaction, 1 for its first
    /// savepoint, …; the name of the savepoint [`Transaction::transaction`] opens.
    depth: u32,
    /// Committed or rolled back: nothing left for the drop to do.
    done: bool,
}

/// The session a transaction and its nested transactions share.
enum Session<'a> {
    Own(Box<Mutex<TxSession>>),
    Nested(&'a Mutex<TxSession>),
}

pub(crate) struct TxSession {
    conn: Option<Conn>,
    /// Begin, until the first request carries it.
    begin: Option<Begin>,
}

impl TxSession {
    pub(crate) fn conn(&mut self) -> Result<&mut Conn, Error> {
        match self.conn.as_mut() {
            Some(c) if !c.is_broken() => Ok(c),
            _ => Err(Error::closed("the transaction's session is closed")),
        }
    }

    /// The session and the Begin still to send, for one exchange; the Begin is kept if the
    /// exchange did not send it.
    async fn with<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Conn, &mut Option<Begin>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut begin = self.begin.take();
        let result = match self.conn.as_mut() {
            Some(c) if !c.is_broken() => f(c, &mut begin).await,
            _ => Err(Error::closed("the transaction's session is closed")),
        };
        self.begin = begin;
        result
    }
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("savepoint", &self.savepoint)
            .finish_non_exhaustive()
    }
}

impl<'a> Transaction<'a> {
    pub(crate) fn new(client: &'a Client, conn: Conn, begin: Begin) -> Transaction<'a> {
        Transaction {
            client,
            session: Session::Own(Box::new(Mutex::new(TxSession {
                conn: Some(conn),
                begin: Some(begin),
            }))),
            savepoint: None,
            depth: 0,
            done: false,
        }
    }

    fn session(&self) -> &Mutex<TxSession> {
        match &self.session {
            Session::Own(m) => m,
            Session::Nested(m) => m,
        }
    }

    /// Describes a statement.
    ///
    /// # Errors
    /// The database's error if the statement is invalid; a closed-session error if an earlier
    /// request of the transaction was dropped half way.
    pub async fn prepare(&self, sql: &str) -> Result<Statement, Error> {
        self.prepare_typed(sql, &[]).await
    }

    /// Describes a statement, declaring some parameter types.
    ///
    /// # Errors
    /// As [`Transaction::prepare`].
    pub async fn prepare_typed(&self, sql: &str, types: &[Type]) -> Result<Statement, Error> {
        let oids: Vec<u32> = types.iter().map(Type::oid).collect();
        if let Some(s) = self.client.cached(sql, &oids) {
            return Ok(s);
        }
        let statement = self
            .session()
            .lock()
            .await
            .with(async |conn, begin| ops::prepare(conn, begin, sql, types).await)
            .await?;
        self.client.remember(&statement);
        Ok(statement)
    }

    async fn run<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(Vec<Row>, u64), Error>
    where
        T: ?Sized + ToStatement,
    {
        let client = self.client;
        self.session()
            .lock()
            .await
            .with(async |conn, begin| client.run(conn, begin, statement, params).await)
            .await
    }

    /// Runs a statement and returns its rows.
    ///
    /// # Errors
    /// The database's error; after one, the transaction is failed and every later statement
    /// fails with 25P02 until it rolls back (to a savepoint, or whole).
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.run(statement, params).await.map(|(rows, _)| rows)
    }

    /// Runs a statement that returns exactly one row.
    ///
    /// # Errors
    /// As [`Transaction::query`], and an error if the statement returned no row or several.
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
    /// As [`Transaction::query`], and an error if the statement returned several rows.
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

    /// Runs a statement and returns its rows as a stream, read from the socket as they arrive
    /// (see [`RowStream`]). The stream holds the transaction's session until it ends or is
    /// dropped; dropped early, the rest of its rows are read and thrown away before the
    /// transaction's next request is answered, so the transaction stays usable.
    ///
    /// # Errors
    /// As [`Transaction::query`]; the statement's own error may instead come as the stream's
    /// last item.
    pub async fn query_raw<T, P, I>(&self, statement: &T, params: I) -> Result<RowStream<'_>, Error>
    where
        T: ?Sized + ToStatement,
        P: BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut session = self.session().lock().await;
        let mut begin = session.begin.take();
        let started = match session.conn() {
            Ok(conn) => {
                crate::row_stream::start(self.client, conn, &mut begin, statement, params).await
            }
            Err(e) => Err(e),
        };
        session.begin = begin;
        let statement = started?;
        Ok(RowStream::in_transaction(session, &statement))
    }

    /// Runs a statement and returns the number of rows it affected.
    ///
    /// # Errors
    /// As [`Transaction::query`].
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.run(statement, params).await.map(|(_, n)| n)
    }

    /// Runs statements with the simple query protocol.
    ///
    /// # Errors
    /// As [`Transaction::query`].
    pub async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.session()
            .lock()
            .await
            .with(async |conn, begin| ops::batch(conn, begin, sql).await)
            .await
    }

    /// Runs statements with the simple query protocol and returns their rows as text, as
    /// [`Client::simple_query`].
    ///
    /// # Errors
    /// As [`Transaction::query`].
    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        self.session()
            .lock()
            .await
            .with(async |conn, begin| crate::simple_query::run(conn, begin, sql).await)
            .await
    }

    /// A nested transaction: a savepoint (`sp_1`, `sp_2`, … by depth), as tokio-postgres'
    /// `Transaction::transaction`. Its commit releases the savepoint; its rollback, or its drop
    /// without a commit, rolls back to it, undoing its work and nothing of the outer
    /// transaction's. Rolling back to a savepoint also ends a failure inside it: the outer
    /// transaction carries on.
    ///
    /// # Errors
    /// The database's or the extension's error if the savepoint could not be created (for
    /// instance 25P02 in a transaction that has already failed).
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, Error> {
        // As tokio-postgres: a name per depth. A savepoint of the same name as an earlier one
        // hides it until released, and ROLLBACK TO or RELEASE names the newest
        // (<https://www.postgresql.org/docs/current/sql-savepoint.html>).
        let name = format!("sp_{}", self.depth + 1);
        self.savepoint(name).await
    }

    /// A nested transaction on a savepoint of the given name, as tokio-postgres'
    /// `Transaction::savepoint`. The name is sent as a quoted identifier, so any text is safe.
    ///
    /// # Errors
    /// SQLSTATE 42602 (invalid_name) for an empty name, one with a NUL byte or one over
    /// [`crate::protocol::MAX_SAVEPOINT_NAME`] bytes, before anything is sent; otherwise as
    /// [`Transaction::transaction`].
    pub async fn savepoint(&mut self, name: impl Into<String>) -> Result<Transaction<'_>, Error> {
        let name = name.into();
        if let Err(why) = Savepoint::check_name(&name) {
            return Err(Error::from_wire(crate::protocol::WireError::extension(
                crate::protocol::sqlstate::INVALID_NAME,
                why,
            )));
        }
        let request = Request::Savepoint(Savepoint {
            op: SavepointOp::Create,
            name: name.clone(),
        });
        self.session()
            .lock()
            .await
            .with(async |conn, begin| ops::request_ok(conn, begin, request).await)
            .await?;
        Ok(Transaction {
            client: self.client,
            session: Session::Nested(self.session()),
            savepoint: Some(name),
            depth: self.depth + 1,
            done: false,
        })
    }

    /// Commits: a transaction's work becomes visible to others; a nested transaction's
    /// savepoint is released, its work kept in the outer transaction.
    ///
    /// # Errors
    /// A transaction in which a statement failed is rolled back instead, and this returns an
    /// error (SQLSTATE 25P02) saying so. A commit the database refuses (a deferred constraint,
    /// a serialization failure) returns its error, and nothing was committed.
    ///
    /// Under [`crate::Client::with_deadline`], a COMMIT still unanswered at the deadline is
    /// cancelled. If the database does not answer that either within
    /// `WARMPOOL_RESET_TIMEOUT_MS`, this returns 08007 (transaction_resolution_unknown): the
    /// transaction may or may not have committed, and is never reported committed. A COMMIT
    /// cancelled before it committed returns 57014, and the transaction was rolled back.
    pub async fn commit(mut self) -> Result<(), Error> {
        self.done = true;
        match self.savepoint.clone() {
            Some(name) => self.end_savepoint(SavepointOp::Release, name).await,
            None => self.finish(Request::Commit).await,
        }
    }

    /// Rolls back: the whole transaction, or a nested transaction's work since its savepoint.
    ///
    /// # Errors
    /// A closed-session error if the request could not be made; the transaction is then rolled
    /// back by the extension when the session closes.
    pub async fn rollback(mut self) -> Result<(), Error> {
        self.done = true;
        match self.savepoint.clone() {
            Some(name) => self.end_savepoint(SavepointOp::RollbackTo, name).await,
            None => self.finish(Request::Rollback).await,
        }
    }

    async fn end_savepoint(&self, op: SavepointOp, name: String) -> Result<(), Error> {
        let request = Request::Savepoint(Savepoint { op, name });
        self.session()
            .lock()
            .await
            .with(async |conn, begin| ops::request_ok(conn, begin, request).await)
            .await
    }

    async fn finish(&mut self, request: Request) -> Result<(), Error> {
        let Session::Own(session) = &mut self.session else {
            unreachable!("only an outer transaction ends with Commit or Rollback")
        };
        let session = session.get_mut();
        if session.begin.take().is_some() {
            // Nothing was sent, so there is nothing to end.
            if let Some(conn) = session.conn.take() {
                self.client.put_conn(conn);
            }
            return Ok(());
        }
        let result = match session.conn() {
            Ok(conn) => ops::simple(conn, request).await,
            Err(e) => Err(e),
        };
        if let Some(conn) = session.conn.take() {
            self.client.put_conn(conn);
        }
        result
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match &mut self.session {
            Session::Own(session) => {
                let session = session.get_mut();
                if let Some(conn) = session.conn.take() {
                    if session.begin.is_some() {
                        // Never started: the session is clean and can be reused.
                        self.client.put_conn(conn);
                    }
                    // Otherwise dropping the session closes its socket, and the extension rolls
                    // the transaction back before the database connection returns to its pool.
                }
            }
            Session::Nested(session) => {
                let Some(name) = self.savepoint.take() else {
                    return;
                };
                // Nothing else can hold the lock: every request of this transaction borrows it,
                // so none is in flight while it drops.
                if let Ok(mut session) = session.try_lock() {
                    if let Some(conn) = session.conn.as_mut() {
                        conn.queue_unawaited(&Request::Savepoint(Savepoint {
                            op: SavepointOp::RollbackTo,
                            name,
                        }));
                    }
                }
            }
        }
    }
}
