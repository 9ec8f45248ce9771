//! The client's error type: opaque, with kinds, shaped like tokio-postgres' so code that matches
//! on `code()` or `as_db_error()` reads the same.

use std::fmt;

use tokio_postgres::error::{ErrorPosition, SqlState};

use crate::protocol::{ErrorSource, WireError};

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
    /// shutting down.
    pub fn is_closed(&self) -> bool {
        match self.0.kind {
            Kind::Closed | Kind::Connect => true,
            Kind::Extension => matches!(
                self.code(),
                Some(c) if *c == SqlState::ADMIN_SHUTDOWN || *c == SqlState::CONNECTION_FAILURE
                    || c.code() == crate::conn::IDLE_SESSION_TIMEOUT
            ),
            _ => false,
        }
    }

    /// Whether the request timed out, waiting for a pooled connection or for the database, or
    /// was cancelled at the deadline of [`crate::Client::with_deadline`], including a COMMIT
    /// the database did not answer by then (08007, outcome unknown).
    pub fn is_timeout(&self) -> bool {
        match self.0.kind {
            Kind::Extension => {
                matches!(self.code(), Some(c) if *c == SqlState::TOO_MANY_CONNECTIONS
                    || *c == SqlState::QUERY_CANCELED
                    || *c == SqlState::TRANSACTION_RESOLUTION_UNKNOWN)
                    || self
                        .0
                        .db
                        .as_ref()
                        .is_some_and(|d| d.message().contains("took longer than"))
            }
            Kind::Db => matches!(self.code(), Some(c) if *c == SqlState::QUERY_CANCELED),
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
