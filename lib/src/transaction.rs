//! Transactions: one session, pinned to one database connection on the extension's side.

use postgres_types::{ToSql, Type};

use crate::client::{at_most_one, one, Client};
use crate::conn::Conn;
use crate::error::Error;
use crate::ops;
use crate::protocol::{Begin, Request};
use crate::row::Row;
use crate::statement::{Statement, ToStatement};

/// A database transaction. Dropped without [`Transaction::commit`], it rolls back: its session is
/// closed, and the extension rolls back a transaction whose session goes away.
pub struct Transaction<'a> {
    client: &'a Client,
    conn: Option<Conn>,
    /// Begin, until the first statement carries it.
    begin: Option<Begin>,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("started", &self.begin.is_none())
            .finish_non_exhaustive()
    }
}

impl<'a> Transaction<'a> {
    pub(crate) fn new(client: &'a Client, conn: Conn, begin: Begin) -> Transaction<'a> {
        Transaction {
            client,
            conn: Some(conn),
            begin: Some(begin),
        }
    }

    fn conn(&mut self) -> Result<&mut Conn, Error> {
        match self.conn.as_mut() {
            Some(c) if !c.is_broken() => Ok(c),
            _ => Err(Error::closed("the transaction's session is closed")),
        }
    }

    /// Describes a statement.
    pub async fn prepare(&mut self, sql: &str) -> Result<Statement, Error> {
        self.prepare_typed(sql, &[]).await
    }

    /// Describes a statement, declaring some parameter types.
    pub async fn prepare_typed(&mut self, sql: &str, types: &[Type]) -> Result<Statement, Error> {
        let oids: Vec<u32> = types.iter().map(Type::oid).collect();
        if let Some(s) = self.client.cached(sql, &oids) {
            return Ok(s);
        }
        let mut begin = self.begin.take();
        let result = ops::prepare(self.conn()?, &mut begin, sql, types).await;
        self.begin = begin;
        let statement = result?;
        self.client.remember(&statement);
        Ok(statement)
    }

    async fn run<T>(
        &mut self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(Vec<Row>, u64), Error>
    where
        T: ?Sized + ToStatement,
    {
        let client = self.client;
        let mut begin = self.begin.take();
        let result = client
            .run(self.conn()?, &mut begin, statement, params)
            .await;
        self.begin = begin;
        result
    }

    /// Runs a statement and returns its rows.
    pub async fn query<T>(
        &mut self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.run(statement, params).await.map(|(rows, _)| rows)
    }

    /// Runs a statement that returns exactly one row.
    pub async fn query_one<T>(
        &mut self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error>
    where
        T: ?Sized + ToStatement,
    {
        one(self.query(statement, params).await?)
    }

    /// Runs a statement that returns at most one row.
    pub async fn query_opt<T>(
        &mut self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        at_most_one(self.query(statement, params).await?)
    }

    /// Runs a statement and returns the number of rows it affected.
    pub async fn execute<T>(
        &mut self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.run(statement, params).await.map(|(_, n)| n)
    }

    /// Runs statements with the simple query protocol.
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        let mut begin = self.begin.take();
        let result = ops::batch(self.conn()?, &mut begin, sql).await;
        self.begin = begin;
        result
    }

    /// Commits. A transaction in which a statement failed is rolled back instead, and this
    /// returns an error (SQLSTATE 25P02) saying so.
    ///
    /// Under [`crate::Client::with_deadline`], a COMMIT still unanswered at the deadline is
    /// cancelled. If the database does not answer that either within
    /// `WARMPOOL_RESET_TIMEOUT_MS`, this returns 08007 (transaction_resolution_unknown): the
    /// transaction may or may not have committed, and is never reported committed. A COMMIT
    /// cancelled before it committed returns 57014, and the transaction was rolled back.
    pub async fn commit(mut self) -> Result<(), Error> {
        self.finish(Request::Commit).await
    }

    /// Rolls back.
    pub async fn rollback(mut self) -> Result<(), Error> {
        self.finish(Request::Rollback).await
    }

    async fn finish(&mut self, request: Request) -> Result<(), Error> {
        if self.begin.take().is_some() {
            // Nothing was sent, so there is nothing to end.
            if let Some(conn) = self.conn.take() {
                self.client.put_conn(conn);
            }
            return Ok(());
        }
        let result = ops::simple(self.conn()?, request).await;
        if let Some(conn) = self.conn.take() {
            self.client.put_conn(conn);
        }
        result
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.begin.is_some() {
                // Never started: the session is clean and can be reused.
                self.client.put_conn(conn);
            }
            // Otherwise dropping the session closes its socket, and the extension rolls the
            // transaction back before the database connection returns to its pool.
        }
    }
}
