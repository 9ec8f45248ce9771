//! SimpleQuery (`U`) and its Columns answer (`r`): statements run through PostgreSQL's simple
//! query protocol with their rows returned as text, the frames behind
//! [`crate::Client::simple_query`]. Batch (`Q`) runs the same way but answers only Ok.
//!
//! The answer, per statement: Columns (if the statement returns rows), zero or more Rows frames
//! whose values are the text PostgreSQL sent (the simple query protocol's format,
//! <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-SIMPLE-QUERY>),
//! then Complete; after the last statement, Ok. An Error ends the answer instead.

use bytes::BytesMut;

use super::codec::{put_count16, put_str, write_frame, Reader};
use super::FrameError;

pub(crate) const SIMPLE_QUERY: u8 = b'U';
pub(crate) const COLUMNS: u8 = b'r';

pub(crate) fn put_columns(buf: &mut BytesMut, names: &[String]) {
    write_frame(buf, COLUMNS, |b| {
        put_count16(b, names.len());
        for name in names {
            put_str(b, name);
        }
    });
}

pub(crate) fn read_columns(r: &mut Reader) -> Result<Vec<String>, FrameError> {
    let n = r.count16(4, "column names")?;
    (0..n).map(|_| r.string("column name")).collect()
}
