//! [`GenericClient`]: code that runs statements, written once for a [`Client`] and a
//! [`Transaction`] alike, as tokio-postgres' `GenericClient`.

use std::future::Future;

use postgres_types::{BorrowToSql, ToSql, Type};

use crate::client::Client;
use crate::error::Error;
use crate::row::Row;
use crate::row_stream::RowStream;
use crate::simple_query::SimpleQueryMessage;
use crate::statement::{Statement, ToStatement};
use crate::transaction::Transaction;

mod sealed {
    pub trait Sealed {}
}

/// The statement methods a [`Client`] and a [`Transaction`] share, so a function can take
/// either:
///
/// ```no_run
/// use warmpool::{Error, GenericClient};
///
/// async fn add_order(db: &impl GenericClient, item: &str) -> Result<u64, Error> {
///     db.execute("INSERT INTO orders (item) VALUES ($1)", &[&item]).await
/// }
///
/// # async fn f() -> Result<(), Error> {
/// let db = warmpool::Client::connect().await?;
/// add_order(&db, "tea").await?;
/// let tx = db.transaction().await?;
/// add_order(&tx, "cake").await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
///
/// Each method's future is `Send`, so the function can run in a spawned tokio task. Each
/// method does what the inherent method of the same name does; see [`Client`] and
/// [`Transaction`] for them and their errors.
pub trait GenericClient: sealed::Sealed + Sync {
    /// Runs a statement and returns the number of rows it affected.
    ///
    /// # Errors
    /// As [`Client::execute`].
    fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, Error>> + Send
    where
        T: ?Sized + ToStatement + Sync;

    /// Runs a statement and returns its rows.
    ///
    /// # Errors
    /// As [`Client::query`].
    fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send
    where
        T: ?Sized + ToStatement + Sync;

    /// Runs a statement that returns exactly one row.
    ///
    /// # Errors
    /// As [`Client::query_one`].
    fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row, Error>> + Send
    where
        T: ?Sized + ToStatement + Sync;

    /// Runs a statement that returns at most one row.
    ///
    /// # Errors
    /// As [`Client::query_opt`].
    fn query_opt<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, Error>> + Send
    where
        T: ?Sized + ToStatement + Sync;

    /// Runs a statement and returns its rows as a stream.
    ///
    /// # Errors
    /// As [`Client::query_raw`].
    fn query_raw<'a, T, P, I>(
        &'a self,
        statement: &'a T,
        params: I,
    ) -> impl Future<Output = Result<RowStream<'a>, Error>> + Send
    where
        T: ?Sized + ToStatement + Sync,
        P: BorrowToSql,
        I: IntoIterator<Item = P> + Send,
        I::IntoIter: ExactSizeIterator;

    /// Describes a statement.
    ///
    /// # Errors
    /// As [`Client::prepare`].
    fn prepare(&self, sql: &str) -> impl Future<Output = Result<Statement, Error>> + Send;

    /// Describes a statement, declaring some parameter types.
    ///
    /// # Errors
    /// As [`Client::prepare_typed`].
    fn prepare_typed(
        &self,
        sql: &str,
        types: &[Type],
    ) -> impl Future<Output = Result<Statement, Error>> + Send;

    /// Runs statements with the simple query protocol, without results.
    ///
    /// # Errors
    /// As [`Client::batch_execute`].
    fn batch_execute(&self, sql: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// Runs statements with the simple query protocol and returns their rows as text.
    ///
    /// # Errors
    /// As [`Client::simple_query`].
    fn simple_query(
        &self,
        sql: &str,
    ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, Error>> + Send;

    /// A transaction: on a [`Client`], a new one; in a [`Transaction`], a nested one (a
    /// savepoint).
    ///
    /// # Errors
    /// As [`Client::transaction`] and [`Transaction::transaction`].
    fn transaction(&mut self) -> impl Future<Output = Result<Transaction<'_>, Error>> + Send;
}

/// Implements the trait by calling the inherent methods of the same names.
macro_rules! generic_client {
    ($ty:ty, $transaction:ident) => {
        impl sealed::Sealed for $ty {}

        impl GenericClient for $ty {
            fn execute<T>(
                &self,
                statement: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<u64, Error>> + Send
            where
                T: ?Sized + ToStatement + Sync,
            {
                <$ty>::execute(self, statement, params)
            }

            fn query<T>(
                &self,
                statement: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<Vec<Row>, Error>> + Send
            where
                T: ?Sized + ToStatement + Sync,
            {
                <$ty>::query(self, statement, params)
            }

            fn query_one<T>(
                &self,
                statement: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<Row, Error>> + Send
            where
                T: ?Sized + ToStatement + Sync,
            {
                <$ty>::query_one(self, statement, params)
            }

            fn query_opt<T>(
                &self,
                statement: &T,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<Option<Row>, Error>> + Send
            where
                T: ?Sized + ToStatement + Sync,
            {
                <$ty>::query_opt(self, statement, params)
            }

            fn query_raw<'a, T, P, I>(
                &'a self,
                statement: &'a T,
                params: I,
            ) -> impl Future<Output = Result<RowStream<'a>, Error>> + Send
            where
                T: ?Sized + ToStatement + Sync,
                P: BorrowToSql,
                I: IntoIterator<Item = P> + Send,
                I::IntoIter: ExactSizeIterator,
            {
                // A client's stream is `RowStream<'static>`; the `Ok(..?)` narrows it to the
                // trait's lifetime, which the future's output type cannot do by itself.
                #[allow(clippy::needless_question_mark)]
                async move {
                    Ok(<$ty>::query_raw(self, statement, params).await?)
                }
            }

            fn prepare(&self, sql: &str) -> impl Future<Output = Result<Statement, Error>> + Send {
                <$ty>::prepare(self, sql)
            }

            fn prepare_typed(
                &self,
                sql: &str,
                types: &[Type],
            ) -> impl Future<Output = Result<Statement, Error>> + Send {
                <$ty>::prepare_typed(self, sql, types)
            }

            fn batch_execute(&self, sql: &str) -> impl Future<Output = Result<(), Error>> + Send {
                <$ty>::batch_execute(self, sql)
            }

            fn simple_query(
                &self,
                sql: &str,
            ) -> impl Future<Output = Result<Vec<SimpleQueryMessage>, Error>> + Send {
                <$ty>::simple_query(self, sql)
            }

            fn transaction(
                &mut self,
            ) -> impl Future<Output = Result<Transaction<'_>, Error>> + Send {
                <$ty>::$transaction(self)
            }
        }
    };
}

generic_client!(Client, transaction);
generic_client!(Transaction<'_>, transaction);
