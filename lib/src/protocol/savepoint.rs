//! Savepoint (`V`): a savepoint inside the session's transaction, the frame behind
//! [`crate::Transaction::transaction`] and [`crate::Transaction::savepoint`].
//!
//! A frame of its own rather than SQL in a Batch because the extension must know of a
//! `ROLLBACK TO SAVEPOINT`: it is the one statement that takes a failed transaction back to a
//! usable one (<https://www.postgresql.org/docs/current/sql-rollback-to.html>), where the
//! extension otherwise refuses everything but Rollback.

use bytes::{BufMut, BytesMut};

use super::codec::{put_str, write_frame, Reader};
use super::FrameError;

pub(crate) const SAVEPOINT: u8 = b'V';

/// Longest savepoint name the protocol carries, in bytes; PostgreSQL itself keeps the first 63
/// bytes of an identifier (`NAMEDATALEN`).
pub const MAX_SAVEPOINT_NAME: usize = 1024;

/// What to do with a savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavepointOp {
    /// `SAVEPOINT name`.
    Create,
    /// `RELEASE SAVEPOINT name`: keeps the work done since it was created.
    Release,
    /// `ROLLBACK TO SAVEPOINT name`: undoes the work done since it was created, and takes a
    /// failed transaction back to a usable one.
    RollbackTo,
}

/// A savepoint request: an operation and the savepoint's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Savepoint {
    /// What to do.
    pub op: SavepointOp,
    /// The savepoint's name, as given: not empty, no NUL, at most [`MAX_SAVEPOINT_NAME`] bytes.
    /// It is always sent to PostgreSQL as a quoted identifier.
    pub name: String,
}

impl Savepoint {
    /// Whether `name` can name a savepoint; the reason if not.
    pub fn check_name(name: &str) -> Result<(), &'static str> {
        if name.is_empty() {
            Err("a savepoint name cannot be empty")
        } else if name.contains('\0') {
            Err("a savepoint name cannot contain a NUL byte")
        } else if name.len() > MAX_SAVEPOINT_NAME {
            Err("a savepoint name is limited to 1024 bytes")
        } else {
            Ok(())
        }
    }

    /// The SQL that performs this request, the name quoted as an identifier
    /// (<https://www.postgresql.org/docs/current/sql-syntax-lexical.html#SQL-SYNTAX-IDENTIFIERS>).
    pub fn sql(&self) -> String {
        let verb = match self.op {
            SavepointOp::Create => "SAVEPOINT",
            SavepointOp::Release => "RELEASE SAVEPOINT",
            SavepointOp::RollbackTo => "ROLLBACK TO SAVEPOINT",
        };
        format!("{verb} {}", quote_identifier(&self.name))
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        write_frame(buf, SAVEPOINT, |b| {
            b.put_u8(match self.op {
                SavepointOp::Create => 0,
                SavepointOp::Release => 1,
                SavepointOp::RollbackTo => 2,
            });
            put_str(b, &self.name);
        });
    }

    pub(crate) fn parse(r: &mut Reader) -> Result<Savepoint, FrameError> {
        let op = match r.u8("savepoint operation")? {
            0 => SavepointOp::Create,
            1 => SavepointOp::Release,
            2 => SavepointOp::RollbackTo,
            _ => return Err(FrameError::Invalid("unknown savepoint operation")),
        };
        let name = r.string("savepoint name")?;
        Savepoint::check_name(&name).map_err(FrameError::Invalid)?;
        Ok(Savepoint { op, name })
    }
}

/// `name` as a quoted SQL identifier: in double quotes, each double quote doubled.
pub fn quote_identifier(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}
