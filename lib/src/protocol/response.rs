//! Frames the extension sends.

use bytes::{BufMut, Bytes, BytesMut};
use postgres_types::Type;

use super::codec::{put_count16, put_nullable, put_str, split_frame, write_frame, Reader};
use super::observability::{self, Stats};
use super::pipeline::NOT_RUN;
use super::simple::{put_columns, read_columns, COLUMNS};
use super::state::{self, StateResponse};
use super::types::{put_type, read_type};
use super::{ErrorSource, FrameError, WireError};

const HELLO_OK: u8 = b'h';
const PREPARE_OK: u8 = b'p';
const ROWS: u8 = b'd';
const COMPLETE: u8 = b'c';
const OK: u8 = b'k';
const PONG: u8 = b'y';
const ERROR: u8 = b'e';
// Not `n`, which the warm state's NotFound answer has.
const NOTICE: u8 = b'i';

/// Rows reserved up front when decoding a Rows frame; more grow the vector as they are read.
const MAX_PREALLOC_ROWS: usize = 1024;

/// A frame from the extension to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The handshake answer.
    HelloOk(HelloOk),
    /// A statement's description.
    PrepareOk(PrepareOk),
    /// Some of a statement's result rows; an Execute answers with zero or more of these, then
    /// [`Response::Complete`] or [`Response::Error`].
    Rows(Vec<RawRow>),
    /// A statement finished; the number of rows it returned or affected.
    Complete(u64),
    /// A Begin, Commit, Rollback or Batch succeeded.
    Ok,
    /// The answer to Ping.
    Pong,
    /// A request failed.
    Error(WireError),
    /// An answer about the extension's warm state (see [`StateResponse`]).
    State(StateResponse),
    /// The answer to Stats.
    Stats(Stats),
    /// A statement of a Pipeline did not run because an earlier statement of its transaction
    /// failed.
    NotRun,
    /// A notice or warning the database raised while serving the request being answered
    /// (`RAISE NOTICE`, a deprecation warning). It comes before the answer's last frame and is
    /// not itself an answer: the client hands it on and reads on.
    Notice(WireError),
    /// The names of the result columns of a statement of a SimpleQuery, before its rows.
    Columns(Vec<String>),
}

/// The extension's side of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloOk {
    /// The protocol version the extension speaks.
    pub version: u16,
    /// The extension's name and version, for logs.
    pub server: String,
    /// The largest frame body the extension accepts; the client checks before sending.
    pub max_frame: u32,
}

/// A statement's parameter types and result columns.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareOk {
    /// The type of each parameter.
    pub params: Vec<Type>,
    /// Each result column.
    pub columns: Vec<Column>,
}

/// One result column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The column's name.
    pub name: String,
    /// The column's type.
    pub type_: Type,
}

/// One row's values in PostgreSQL's binary format, `None` for NULL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawRow {
    /// One entry per column.
    pub values: Vec<Option<Bytes>>,
}

impl RawRow {
    /// The bytes this row takes in a Rows frame.
    pub fn encoded_len(&self) -> usize {
        2 + self
            .values
            .iter()
            .map(|v| 4 + v.as_ref().map_or(0, |b| b.len()))
            .sum::<usize>()
    }
}

/// Encodes a Rows frame a row at a time, straight from each value's bytes: a server streaming a
/// statement's rows copies every value once, into the frame, with no row held in between.
/// The frame it produces is the one [`Response::Rows`] encodes.
#[derive(Debug)]
pub struct RowsEncoder {
    len_at: usize,
    rows: u32,
}

impl RowsEncoder {
    /// Starts a Rows frame at the end of `buf`.
    pub fn begin(buf: &mut BytesMut) -> RowsEncoder {
        buf.put_u8(ROWS);
        let len_at = buf.len();
        buf.put_u32(0);
        buf.put_u32(0);
        RowsEncoder { len_at, rows: 0 }
    }

    /// The bytes a row of `values` takes in the frame.
    pub fn row_len<'v>(values: impl Iterator<Item = Option<&'v [u8]>>) -> usize {
        2 + values.map(|v| 4 + v.map_or(0, <[u8]>::len)).sum::<usize>()
    }

    /// Appends one row.
    pub fn push<'v>(
        &mut self,
        buf: &mut BytesMut,
        values: impl ExactSizeIterator<Item = Option<&'v [u8]>>,
    ) {
        put_count16(buf, values.len());
        for v in values {
            put_nullable(buf, v);
        }
        self.rows += 1;
    }

    /// Appends one row given as PostgreSQL's DataRow carries it: `count` values, each a
    /// length (-1 for NULL) and its bytes, which is this protocol's encoding of a row too. The
    /// caller has checked that `values` holds exactly `count` values.
    pub fn push_raw(&mut self, buf: &mut BytesMut, count: u16, values: &[u8]) {
        buf.put_u16(count);
        buf.put_slice(values);
        self.rows += 1;
    }

    /// Rows appended so far.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Takes the unfinished frame back out of `buf`, when the rows cannot all be sent: what
    /// follows it on the stream (an error) must not land inside it.
    pub fn abandon(self, buf: &mut BytesMut) {
        buf.truncate(self.len_at - 1);
    }

    /// Completes the frame: its length and row count.
    pub fn finish(self, buf: &mut BytesMut) {
        let len = buf.len() - self.len_at - 4;
        let len = u32::try_from(len).expect("frame body over 4 GiB");
        buf[self.len_at..self.len_at + 4].copy_from_slice(&len.to_be_bytes());
        buf[self.len_at + 4..self.len_at + 8].copy_from_slice(&self.rows.to_be_bytes());
    }
}

impl Response {
    /// Appends this frame to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Response::HelloOk(h) => write_frame(buf, HELLO_OK, |b| {
                b.put_u16(h.version);
                put_str(b, &h.server);
                b.put_u32(h.max_frame);
            }),
            Response::PrepareOk(p) => write_frame(buf, PREPARE_OK, |b| {
                put_count16(b, p.params.len());
                for t in &p.params {
                    put_type(b, t);
                }
                put_count16(b, p.columns.len());
                for c in &p.columns {
                    put_str(b, &c.name);
                    put_type(b, &c.type_);
                }
            }),
            Response::Rows(rows) => write_frame(buf, ROWS, |b| {
                b.put_u32(u32::try_from(rows.len()).expect("row count over u32"));
                for row in rows {
                    put_count16(b, row.values.len());
                    for v in &row.values {
                        put_nullable(b, v.as_deref());
                    }
                }
            }),
            Response::Complete(n) => write_frame(buf, COMPLETE, |b| b.put_u64(*n)),
            Response::Ok => write_frame(buf, OK, |_| {}),
            Response::Pong => write_frame(buf, PONG, |_| {}),
            Response::State(s) => s.encode(buf),
            Response::NotRun => write_frame(buf, NOT_RUN, |_| {}),
            Response::Error(e) => write_frame(buf, ERROR, |b| put_wire_error(b, e)),
            Response::Notice(e) => write_frame(buf, NOTICE, |b| put_wire_error(b, e)),
            Response::Stats(s) => write_frame(buf, observability::STATS_OK, |b| {
                observability::put_stats(b, s)
            }),
            Response::Columns(names) => put_columns(buf, names),
        }
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` until a whole frame has arrived.
    pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Response>, FrameError> {
        let Some((tag, body)) = split_frame(buf, max_frame)? else {
            return Ok(None);
        };
        Self::parse(tag, body).map(Some)
    }

    fn parse(tag: u8, body: Bytes) -> Result<Response, FrameError> {
        let mut r = Reader::new(body);
        let resp = match tag {
            HELLO_OK => Response::HelloOk(HelloOk {
                version: r.u16("protocol version")?,
                server: r.string("server name")?,
                max_frame: r.u32("max frame")?,
            }),
            PREPARE_OK => {
                let n = r.count16(5, "parameter types")?;
                let params = (0..n)
                    .map(|_| read_type(&mut r))
                    .collect::<Result<_, _>>()?;
                let n = r.count16(9, "columns")?;
                let columns = (0..n)
                    .map(|_| {
                        Ok(Column {
                            name: r.string("column name")?,
                            type_: read_type(&mut r)?,
                        })
                    })
                    .collect::<Result<_, FrameError>>()?;
                Response::PrepareOk(PrepareOk { params, columns })
            }
            ROWS => {
                let n = r.count32(2, "rows")?;
                // A row takes 2 bytes on the wire but 24 in memory: reserving for the whole count
                // would let a lying frame cost twelve times its size before it fails.
                let mut rows = Vec::with_capacity(n.min(MAX_PREALLOC_ROWS));
                for _ in 0..n {
                    let cols = r.count16(4, "row values")?;
                    let values = (0..cols)
                        .map(|_| r.nullable("row value"))
                        .collect::<Result<_, _>>()?;
                    rows.push(RawRow { values });
                }
                Response::Rows(rows)
            }
            COMPLETE => Response::Complete(r.u64("rows affected")?),
            OK => Response::Ok,
            PONG => Response::Pong,
            NOT_RUN => Response::NotRun,
            ERROR => Response::Error(read_wire_error(&mut r)?),
            NOTICE => Response::Notice(read_wire_error(&mut r)?),
            COLUMNS => Response::Columns(read_columns(&mut r)?),
            tag if state::is_response_tag(tag) => {
                Response::State(StateResponse::parse(tag, &mut r)?)
            }
            observability::STATS_OK => Response::Stats(observability::read_stats(&mut r)?),
            other => return Err(FrameError::UnknownTag(other)),
        };
        r.finish(tag)?;
        Ok(resp)
    }
}

/// An Error or Notice frame's body: who raised it, then its fields.
fn put_wire_error(b: &mut BytesMut, e: &WireError) {
    b.put_u8(match e.source {
        ErrorSource::Database => b'D',
        ErrorSource::Extension => b'W',
    });
    put_count16(b, e.fields.len());
    for (code, value) in &e.fields {
        b.put_u8(*code);
        put_str(b, value);
    }
}

fn read_wire_error(r: &mut Reader) -> Result<WireError, FrameError> {
    let source = match r.u8("error source")? {
        b'D' => ErrorSource::Database,
        b'W' => ErrorSource::Extension,
        _ => return Err(FrameError::Invalid("unknown error source")),
    };
    let n = r.count16(5, "error fields")?;
    let fields = (0..n)
        .map(|_| Ok((r.u8("error field code")?, r.string("error field")?)))
        .collect::<Result<_, FrameError>>()?;
    Ok(WireError { source, fields })
}
