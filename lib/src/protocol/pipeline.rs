//! Pipeline: several parameterised statements in one frame, optionally as one transaction.
//!
//! The extension sends every statement to PostgreSQL before it reads the first answer (the
//! extended query protocol allows this: <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-PIPELINING>),
//! so a batch costs one round trip to the extension and about one to the database.

use bytes::{BufMut, BytesMut};

use super::codec::{put_count16, Reader};
use super::request::{put_begin, put_execute_body, read_begin, read_execute_body};
use super::{Begin, Execute, FrameError};

/// A Pipeline request's tag.
pub(crate) const PIPELINE: u8 = b'M';
/// The answer for a statement of a Pipeline that did not run.
pub(crate) const NOT_RUN: u8 = b'm';

/// Statements to run back to back on one database connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// `Some` runs the statements as one transaction with these options: all are committed, or
    /// none is. `None` runs each on its own, and a failure does not stop the ones after it.
    pub transaction: Option<Begin>,
    /// The statements, in order; each as an Execute request.
    pub statements: Vec<Execute>,
}

impl Pipeline {
    pub(crate) fn encode_body(&self, b: &mut BytesMut) {
        match &self.transaction {
            None => b.put_u8(0),
            Some(begin) => {
                b.put_u8(1);
                put_begin(b, begin);
            }
        }
        put_count16(b, self.statements.len());
        for s in &self.statements {
            put_execute_body(b, s);
        }
    }

    pub(crate) fn parse_body(r: &mut Reader) -> Result<Pipeline, FrameError> {
        let transaction = match r.u8("pipeline mode")? {
            0 => None,
            1 => Some(read_begin(r)?),
            _ => return Err(FrameError::Invalid("pipeline mode out of range")),
        };
        // A statement takes at least 8 bytes: an empty SQL string and two empty counts.
        let n = r.count16(8, "pipeline statements")?;
        let statements = (0..n)
            .map(|_| read_execute_body(r))
            .collect::<Result<_, _>>()?;
        Ok(Pipeline {
            transaction,
            statements,
        })
    }
}
