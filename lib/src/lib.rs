//! Client for the `warmpool` AWS Lambda extension: PostgreSQL through pooled, pre-warmed
//! connections that outlive the function's invocations.
//!
//! The API follows tokio-postgres: [`Client::query`], [`Client::execute`], [`Transaction`],
//! `ToSql`/`FromSql` types from `postgres-types` (re-exported as [`types`]), and errors with
//! SQLSTATE codes.
//!
//! ```no_run
//! # async fn f() -> Result<(), warmpool::Error> {
//! // One client per process: it keeps its sessions with the extension across invocations.
//! let db = warmpool::Client::connect().await?;
//! let n: i64 = db.query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
//! let tx = db.transaction().await?;
//! tx.execute("DELETE FROM orders WHERE id = $1", &[&n]).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! # Cancellation
//! Dropping a request's future before it completes cancels its statement on the server: the
//! session it was using is closed, and the extension, seeing its client gone, sends PostgreSQL
//! a CancelRequest and returns the connection to the pool only once it is idle again (or closes
//! it). A dropped [`Transaction`] is rolled back the same way. Nothing keeps running, or holding
//! locks, for a caller that has stopped waiting; what may already have taken effect (a statement
//! outside a transaction that completed on the server before the cancel arrived) is not undone.
//!
//! # Deadlines
//! [`Client::with_deadline`] bounds every statement of a handle: at the deadline the extension
//! cancels what is running and rolls back an open transaction, and the call returns 57014
//! (`Error::is_timeout`), whatever the database does.
//!
//! # Layout
//! - [`protocol`]: the socket protocol's frames, with no I/O (shared with the extension).
//! - [`transport`]: frames over a byte stream, cancel safe on read.
//! - `client`, `transaction`, `ops`: the API and the request/response exchanges.
//! - `row`, `row_stream`, `simple_query`, `statement`, `error`: results, statements and errors.
//! - `generic_client`: [`GenericClient`], for code that takes a client or a transaction.
//! - `state`: warm state: the state store ([`Client::state`]), warm-up data sets
//!   ([`Client::warm`]) and the query result cache ([`Client::query_cached`]).

#![warn(missing_docs, unreachable_pub)]
// The README's examples compile as doctests.
#![cfg_attr(doctest, doc = include_str!("../../README.md"))]

pub mod protocol;
pub mod transport;

mod batch;
mod client;
mod conn;
mod error;
mod generic_client;
mod ops;
mod row;
mod row_stream;
mod simple_query;
mod state;
mod statement;
mod transaction;

pub use batch::{Batch, BatchResult};
pub use client::{Client, TransactionBuilder, DEFAULT_SOCKET, STATEMENT_CACHE_SIZE};
pub use error::{DbError, Error};
pub use generic_client::GenericClient;
pub use protocol::CacheOutcome;
pub use protocol::{IsolationLevel, Stats};
pub use row::{Row, RowIndex};
pub use row_stream::RowStream;
pub use simple_query::{SimpleColumn, SimpleIndex, SimpleQueryMessage, SimpleQueryRow};
pub use state::{CachePolicy, StateStore};
pub use statement::{Column, Statement, ToStatement};
pub use transaction::Transaction;

/// Byte buffers, as [`StateStore::get`] returns them.
pub use bytes::Bytes;

/// The `Stream` trait [`RowStream`] implements, and the extension traits that read it
/// (`try_next`, `try_collect`, …), so a function needs no `futures` dependency of its own.
pub mod stream {
    pub use futures_util::stream::{Stream, StreamExt, TryStreamExt};
}

/// `postgres-types`, for `ToSql`, `FromSql`, `Type` and the derive macros.
pub use postgres_types as types;
pub use postgres_types::{BorrowToSql, FromSql, ToSql, Type};

/// Error details, as in tokio-postgres.
pub mod error_types {
    pub use tokio_postgres::error::{ErrorPosition, SqlState};
}
pub use tokio_postgres::error::SqlState;
