//! The client's error type: opaque, with kinds, shaped like tokio-postgres' so code that matches
//! on `code()` or `as_db_error()` reads the same.

use std::fmt;

use tokio_postgres::error::{ErrorPosition, SqlState};

use crate::protocol::{sqlstate, ErrorSource, WireError};

/// An error from warmpool: from PostgreSQL, from the extension, or from the socket between.
pub struct Error(Box<Inner>);

struct Inner {
    kind: Kind,
    db: Option<DbError>,
    cause: Option<Box<dyn std::error::Error + Sync + Send>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// PostgreSQL refused the request.
    Db,
    /// The extension refused the request (pool timeout, shutdown, bad frame…).
    Extension,
    /// The socket to the extension could not be opened.
    Connect,
    /// The socket closed or failed.
    Closed,
    /// The extension broke the protocol.
    Protocol,
    /// A parameter could not be encoded.
    ToSql(usize),
    /// A column could not be decoded.
    FromSql(usize),
    /// A column name or index that does not exist.
    Column(String),
    /// The number of parameters does not match the statement.
    Parameters { expected: usize, given: usize },
    /// `query_one` found no row, or more than one.
    RowCount,
    /// A typed value for the state store could not be serialized or deserialized.
    Value,
}

impl Error {
    pub(crate) fn new(
        kind: Kind,
        cause: Option<Box<dyn std::error::Error + Sync + Send>>,
    ) -> Error {
        Error(Box::new(Inner {
            kind,
            db: None,
            cause,
        }))
    }

    pub(crate) fn from_wire(e: WireError) -> Error {
        let kind = match e.source {
            ErrorSource::Database => Kind::Db,
            ErrorSource::Extension => Kind::Extension,
        };
        Error(Box::new(Inner {
            kind,
            db: Some(DbError::from_wire(e)),
            cause: None,
        }))
    }

    /// A copy, for an error that stops several statements; the cause keeps its message only.
    pub(crate) fn duplicate(&self) -> Error {
        Error(Box::new(Inner {
            kind: self.0.kind.clone(),
            db: self.0.db.clone(),
            cause: self.0.cause.as_ref().map(|c| c.to_string().into()),
        }))
    }

    pub(crate) fn closed(cause: impl Into<Box<dyn std::error::Error + Sync + Send>>) -> Error {
        Error::new(Kind::Closed, Some(cause.into()))
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::new(Kind::Protocol, Some(message.into().into()))
    }

    /// The SQLSTATE, for errors from PostgreSQL and from the extension alike.
    pub fn code(&self) -> Option<&SqlState> {
        self.0.db.as_ref().map(DbError::code)
    }

    /// The database's error, with every field PostgreSQL sent; `None` unless PostgreSQL itself
    /// raised it.
    pub fn as_db_error(&self) -> Option<&DbError> {
        match self.0.kind {
            Kind::Db => self.0.db.as_ref(),
            _ => None,
        }
    }

    /// The error's fields whoever raised it, PostgreSQL or the extension.
    pub fn fields(&self) -> Option<&DbError> {
        self.0.db.as_ref()
    }

    /// Whether the connection to the extension or to the database is gone, or the extension is
    /// shutting down: the socket failed, or the extension answered 57P01 (shutting down),
    /// 08006 (the database unreachable), HYT01 (the database did not connect in time) or 57P05
    /// (the session closed for idleness).
    pub fn is_closed(&self) -> bool {
        match self.0.kind {
            Kind::Closed | Kind::Connect => true,
            Kind::Extension => matches!(
                self.code().map(SqlState::code),
                Some(
                    sqlstate::ADMIN_SHUTDOWN
                        | sqlstate::CONNECTION_FAILURE
                        | sqlstate::CONNECTION_TIMEOUT
                        | crate::conn::IDLE_SESSION_TIMEOUT
                )
            ),
            _ => false,
        }
    }

    /// Whether a time limit ended the request, decided by its SQLSTATE alone:
    /// - 57014 (query_canceled): the statement was cancelled at the deadline of
    ///   [`crate::Client::with_deadline`], or by the database's own `statement_timeout` (a
    ///   statement cancelled by `pg_cancel_backend` has the same code);
    /// - 08007 from the extension: a COMMIT the database did not answer by the deadline
    ///   (its outcome is unknown);
    /// - 53300 from the extension: no pooled connection became free within
    ///   `WARMPOOL_WAIT_TIMEOUT_MS` (from the database, 53300 is its `max_connections`, not a
    ///   timeout);
    /// - HYT01 from the extension: the database did not connect, or answer a pooled
    ///   connection's check, in time;
    /// - 25P03 and 57P05 from the database: its `idle_in_transaction_session_timeout` or
    ///   `idle_session_timeout` ended the session; 57P05 from the extension: it closed a session
    ///   left idle past `WARMPOOL_IDLE_SESSION_TIMEOUT_MS`.
    ///
    /// `lock_timeout` is not among them: its 55P03 is also what `NOWAIT` raises.
    pub fn is_timeout(&self) -> bool {
        let Some(code) = self.code().map(SqlState::code) else {
            return false;
        };
        match self.0.kind {
            Kind::Extension => matches!(
                code,
                sqlstate::QUERY_CANCELED
                    | sqlstate::TOO_MANY_CONNECTIONS
                    | sqlstate::TRANSACTION_RESOLUTION_UNKNOWN
                    | sqlstate::CONNECTION_TIMEOUT
                    | crate::conn::IDLE_SESSION_TIMEOUT
            ),
            Kind::Db => matches!(
                code,
                sqlstate::QUERY_CANCELED
                    | sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
                    | crate::conn::IDLE_SESSION_TIMEOUT
            ),
            _ => false,
        }
    }

    /// Whether the extension raised this error itself rather than PostgreSQL.
    pub fn is_extension(&self) -> bool {
        self.0.kind == Kind::Extension
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.0.kind)
            .field("db", &self.0.db)
            .field("cause", &self.0.cause)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.kind {
            Kind::Db | Kind::Extension => {
                if let Some(db) = &self.0.db {
                    return fmt::Display::fmt(db, f);
                }
                f.write_str("database error")?
            }
            Kind::Connect => f.write_str("cannot connect to the warmpool extension")?,
            Kind::Closed => f.write_str("the connection to the warmpool extension closed")?,
            Kind::Protocol => f.write_str("protocol error")?,
            Kind::ToSql(i) => write!(f, "error serializing parameter {i}")?,
            Kind::FromSql(i) => write!(f, "error deserializing column {i}")?,
            Kind::Column(c) => write!(f, "invalid column `{c}`")?,
            Kind::Parameters { expected, given } => {
                write!(f, "expected {expected} parameters but got {given}")?
            }
            Kind::RowCount => f.write_str("query returned an unexpected number of rows")?,
            Kind::Value => f.write_str("error converting a stored value")?,
        }
        if let Some(cause) = &self.0.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if let Some(db) = &self.0.db {
            return Some(db);
        }
        self.0.cause.as_ref().map(|c| &**c as _)
    }
}

/// A PostgreSQL error, with the same accessors as `tokio_postgres::error::DbError`.
/// <https://www.postgresql.org/docs/current/protocol-error-fields.html>
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    code: SqlState,
    position: Option<ErrorPosition>,
    line: Option<u32>,
    wire: WireError,
}

impl DbError {
    pub(crate) fn from_wire(wire: WireError) -> DbError {
        let code = SqlState::from_code(wire.code());
        let position = match (wire.field(b'P'), wire.field(b'p'), wire.field(b'q')) {
            (Some(p), _, _) => p.parse().ok().map(ErrorPosition::Original),
            (None, Some(p), Some(q)) => p.parse().ok().map(|position| ErrorPosition::Internal {
                position,
                query: q.to_owned(),
            }),
            _ => None,
        };
        let line = wire.field(b'L').and_then(|l| l.parse().ok());
        DbError {
            code,
            position,
            line,
            wire,
        }
    }

    /// The severity, localized (`S`).
    pub fn severity(&self) -> &str {
        self.wire.field(b'S').unwrap_or("ERROR")
    }
    /// The SQLSTATE code (`C`).
    pub fn code(&self) -> &SqlState {
        &self.code
    }
    /// The primary message (`M`).
    pub fn message(&self) -> &str {
        self.wire.message()
    }
    /// Detail (`D`).
    pub fn detail(&self) -> Option<&str> {
        self.wire.field(b'D')
    }
    /// Hint (`H`).
    pub fn hint(&self) -> Option<&str> {
        self.wire.field(b'H')
    }
    /// The error's position in the statement (`P`, or `p` with `q`).
    pub fn position(&self) -> Option<&ErrorPosition> {
        self.position.as_ref()
    }
    /// Context (`W`).
    pub fn where_(&self) -> Option<&str> {
        self.wire.field(b'W')
    }
    /// Schema name (`s`).
    pub fn schema(&self) -> Option<&str> {
        self.wire.field(b's')
    }
    /// Table name (`t`).
    pub fn table(&self) -> Option<&str> {
        self.wire.field(b't')
    }
    /// Column name (`c`).
    pub fn column(&self) -> Option<&str> {
        self.wire.field(b'c')
    }
    /// Data type name (`d`).
    pub fn datatype(&self) -> Option<&str> {
        self.wire.field(b'd')
    }
    /// Constraint name (`n`).
    pub fn constraint(&self) -> Option<&str> {
        self.wire.field(b'n')
    }
    /// Source file of the server (`F`).
    pub fn file(&self) -> Option<&str> {
        self.wire.field(b'F')
    }
    /// Source line of the server (`L`).
    pub fn line(&self) -> Option<u32> {
        self.line
    }
    /// Server routine (`R`).
    pub fn routine(&self) -> Option<&str> {
        self.wire.field(b'R')
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity(), self.message())?;
        if let Some(detail) = self.detail() {
            write!(f, "\nDETAIL: {detail}")?;
        }
        if let Some(hint) = self.hint() {
            write!(f, "\nHINT: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn raised(source: ErrorSource, code: &str, message: &str) -> Error {
        let mut e = WireError::extension(code, message);
        e.source = source;
        Error::from_wire(e)
    }

    fn extension(code: &str) -> Error {
        raised(ErrorSource::Extension, code, "a message in any language")
    }

    fn database(code: &str) -> Error {
        raised(
            ErrorSource::Database,
            code,
            "ein Text in irgendeiner Sprache",
        )
    }

    #[test]
    fn timeouts_are_told_by_their_code() {
        for e in [
            extension("57014"),
            extension("53300"),
            extension("HYT01"),
            extension("57P05"),
            database("57014"),
            database("25P03"),
            database("57P05"),
        ] {
            assert!(e.is_timeout(), "{e:?}");
        }
        // The message does not matter, in whatever language the server speaks.
        assert!(raised(
            ErrorSource::Database,
            "57014",
            "Abbruch wegen Zeitüberschreitung"
        )
        .is_timeout());
        for e in [
            // The database's too_many_connections is its max_connections, not a wait.
            database("53300"),
            database("55P03"),
            database("23505"),
            extension("08006"),
            extension("57P01"),
            extension("08P01"),
            // A message that reads like a timeout is not one without the code.
            raised(
                ErrorSource::Extension,
                "08006",
                "connecting took longer than 5000 ms",
            ),
            Error::closed("the socket closed"),
            Error::protocol("bad frame"),
        ] {
            assert!(!e.is_timeout(), "{e:?}");
        }
    }

    #[test]
    fn closed_is_told_by_its_code() {
        for e in [
            extension("57P01"),
            extension("08006"),
            extension("HYT01"),
            extension("57P05"),
            Error::closed("the socket closed"),
        ] {
            assert!(e.is_closed(), "{e:?}");
        }
        for e in [database("08006"), extension("53300"), database("57014")] {
            assert!(!e.is_closed(), "{e:?}");
        }
    }
}
