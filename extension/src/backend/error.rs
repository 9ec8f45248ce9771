//! What can go wrong on a backend connection: the server's own errors, kept field by field, and
//! failures of the connection itself.

use std::fmt;
use std::io;

use postgres_protocol::message::backend::ErrorFields;
use warmpool::protocol::{ErrorSource, WireError};

/// An ErrorResponse (or NoticeResponse) with every field the server sent, in order.
/// <https://www.postgresql.org/docs/current/protocol-error-fields.html>
#[derive(Clone, PartialEq, Eq)]
pub struct DbError {
    fields: Vec<(u8, String)>,
}

impl DbError {
    pub(crate) fn parse(mut fields: ErrorFields<'_>) -> io::Result<DbError> {
        use fallible_iterator::FallibleIterator;
        let mut out = Vec::new();
        while let Some(f) = fields.next()? {
            out.push((
                f.type_(),
                String::from_utf8_lossy(f.value_bytes()).into_owned(),
            ));
        }
        Ok(DbError { fields: out })
    }

    /// A field by its code (`b'C'` the SQLSTATE, `b'M'` the message…).
    pub fn field(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    /// The SQLSTATE code; empty if the server sent none.
    pub fn code(&self) -> &str {
        self.field(b'C').unwrap_or_default()
    }

    /// The primary message.
    pub fn message(&self) -> &str {
        self.field(b'M').unwrap_or_default()
    }

    /// The severity, untranslated (`V`) where the server sent it.
    pub fn severity(&self) -> &str {
        self.field(b'V')
            .or_else(|| self.field(b'S'))
            .unwrap_or_default()
    }

    /// FATAL and PANIC end the server's session: the connection is gone after them.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity(), "FATAL" | "PANIC")
    }

    /// The error as a client receives it, every field kept.
    pub fn to_wire(&self) -> WireError {
        WireError {
            source: ErrorSource::Database,
            fields: self.fields.clone(),
        }
    }

    /// Replaces (or adds) one field.
    pub(crate) fn set(&mut self, code: u8, value: String) {
        match self.fields.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => *v = value,
            None => self.fields.push((code, value)),
        }
    }
}

impl fmt::Debug for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbError")
            .field("code", &self.code())
            .field("message", &self.message())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity(), self.message())?;
        if let Some(detail) = self.field(b'D') {
            write!(f, "; {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}

/// A failure on a backend connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused something and said why. The connection survives unless
    /// [`DbError::is_fatal`].
    #[error("{0}")]
    Db(DbError),
    /// Reading or writing the socket failed, TLS included.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS handshake failed: a certificate refused, a protocol not agreed.
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    /// The server closed the connection.
    #[error("the database closed the connection")]
    Closed,
    /// The server sent something the protocol does not allow at this point.
    #[error("protocol violation by the database: {0}")]
    Protocol(String),
    /// The server ran into something warmpool does not relay (COPY); the connection is fine.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The connection could not be set up as configured (TLS refused, channel binding not
    /// possible, an authentication method that is not supported).
    #[error("{0}")]
    Setup(String),
}

impl Error {
    /// The server's error, if this is one.
    pub fn as_db(&self) -> Option<&DbError> {
        match self {
            Error::Db(db) => Some(db),
            _ => None,
        }
    }

    /// The SQLSTATE of the server's error, if this is one.
    pub fn code(&self) -> Option<&str> {
        self.as_db().map(DbError::code)
    }

    /// Whether the connection can no longer be used after this error.
    pub fn is_lost(&self) -> bool {
        match self {
            Error::Db(db) => db.is_fatal(),
            Error::Unsupported(_) => false,
            _ => true,
        }
    }

    pub(crate) fn protocol(what: impl Into<String>) -> Error {
        Error::Protocol(what.into())
    }
}
