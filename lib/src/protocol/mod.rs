//! The socket protocol between the `warmpool` extension and its client, with no I/O in it.
//!
//! Every frame is a one-byte tag, a big-endian `u32` body length and the body. Decoding is
//! incremental: [`Request::decode`] and [`Response::decode`] take whatever bytes have arrived,
//! return `Ok(None)` until a whole frame is there, and check the declared length against the
//! frame limit before a byte is reserved for it. `docs/PROTOCOL.md` is the specification.
//!
//! Row values and parameters travel in PostgreSQL's binary format with their type, so the
//! extension forwards them without decoding and the client decodes them with `postgres-types`.
//! Statements are named by their SQL text, never by a server-side statement name, so any pooled
//! connection can run any statement (see
//! <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY>: a named
//! prepared statement belongs to one server session).

mod codec;
mod content;
mod deadline;
mod error;
mod observability;
#[cfg(test)]
mod observability_tests;
mod pipeline;
#[cfg(test)]
mod pipeline_tests;
mod request;
mod response;
mod savepoint;
#[cfg(test)]
mod savepoint_tests;
mod simple;
mod state;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod tests;
mod types;

pub use content::{check_sql, MAX_COUNT, MAX_MESSAGE};
pub use deadline::Deadline;
pub use error::{ErrorSource, FrameError, WireError};
pub use observability::{Invocation, Stats, MAX_REQUEST_ID, MAX_TRACE_ID};
pub use pipeline::Pipeline;
pub use request::{Begin, Execute, Hello, IsolationLevel, Param, Prepare, Request};
pub use response::{Column, HelloOk, PrepareOk, RawRow, Response, RowsEncoder};
pub use savepoint::{quote_identifier, Savepoint, SavepointOp, MAX_SAVEPOINT_NAME};
pub use state::{
    CacheOutcome, CachedExecute, CompareAndSet, Put, StateRequest, StateResponse, WarmOk,
};

/// The protocol version this build speaks. A peer with another version is refused at Hello.
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes before a frame's body: the tag and the body length.
pub const HEADER_LEN: usize = 5;

/// Default largest frame body, in bytes, that either side accepts (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// SQLSTATE codes that the extension raises itself, or acts on when PostgreSQL raises them.
/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>
pub mod sqlstate {
    /// A frame or request broke the protocol.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// A frame exceeded the frame size limit.
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// No pooled connection became free within the wait timeout, or the fleet's connection
    /// budget stayed full.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// A lock was not granted within `lock_timeout`.
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    /// The extension is shutting down.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// The database could not be reached.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// A COMMIT whose outcome is unknown: the deadline passed before the database answered it.
    pub const TRANSACTION_RESOLUTION_UNKNOWN: &str = "08007";
    /// The database did not open a connection, or answer a pooled connection's check, within
    /// its timeout: SQL/CLI's "connection timeout expired" (ODBC's `HYT01`), since PostgreSQL
    /// has no code for a timeout on the client's side of a connection.
    pub const CONNECTION_TIMEOUT: &str = "HYT01";
    /// A statement inside a transaction that has already failed.
    pub const IN_FAILED_TRANSACTION: &str = "25P02";
    /// A transaction request that does not fit the session's state.
    pub const INVALID_TRANSACTION_STATE: &str = "25000";
    /// A NUL byte in SQL text, which PostgreSQL's protocol cannot carry.
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    /// A savepoint request with no transaction open.
    pub const NO_ACTIVE_SQL_TRANSACTION: &str = "25P01";
    /// A name that cannot be used, such as a savepoint name with a NUL byte.
    pub const INVALID_NAME: &str = "42602";
    /// A statement cancelled: at the client's deadline, or by the database's
    /// `statement_timeout`.
    pub const QUERY_CANCELED: &str = "57014";
    /// The database ended a session left idle inside a transaction
    /// (`idle_in_transaction_session_timeout`).
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";
    /// Parameters that do not match the statement.
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    /// A warm-up data set name that is not configured.
    pub const UNDEFINED_OBJECT: &str = "42704";
    /// A failure inside the extension that no other code describes.
    pub const INTERNAL_ERROR: &str = "XX000";
    /// A wrong password, or an expired IAM token.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// No `pg_hba.conf` entry, or a role that may not log in.
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    /// A prepared statement the server does not know.
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    /// A prepared statement name already in use.
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
    /// Among others, "cached plan must not change result type" after DDL.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// The database's own shutdown or a crash of another backend.
    pub const CRASH_SHUTDOWN: &str = "57P02";
    /// The database cannot accept connections yet, or any more.
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// The database does not exist.
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// sqlclient_unable_to_establish_sqlconnection: a connection the client side could not set
    /// up.
    pub const UNABLE_TO_CONNECT: &str = "08001";
    /// The database ended a session idle past `idle_session_timeout`.
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    /// A serialization failure: the transaction may be retried as a whole.
    pub const SERIALIZATION_FAILURE: &str = "40001";
    /// A deadlock was detected and this transaction was chosen to end.
    pub const DEADLOCK_DETECTED: &str = "40P01";
}
