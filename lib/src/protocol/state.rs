//! Frames for the extension's warm state: the key/value state store, warm-up data sets and the
//! query result cache. They share the framing of every other frame; `docs/PROTOCOL.md`, section
//! "Warm state", specifies their bodies.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{put_count16, put_nullable, put_str, write_frame, Reader};
use super::request::{put_execute_body, read_execute_body};
use super::types::{put_type, read_type};
use super::{Column, Execute, FrameError};

const GET: u8 = b'G';
const PUT: u8 = b'S';
const DELETE: u8 = b'D';
const COMPARE_AND_SET: u8 = b'A';
const WARM: u8 = b'W';
const CACHED_EXECUTE: u8 = b'K';

const VALUE: u8 = b'v';
const NOT_FOUND: u8 = b'n';
const APPLIED: u8 = b'a';
const WARM_OK: u8 = b'w';
const CACHED: u8 = b'f';

/// Whether `tag` is one of this module's request tags.
pub(crate) fn is_request_tag(tag: u8) -> bool {
    matches!(
        tag,
        GET | PUT | DELETE | COMPARE_AND_SET | WARM | CACHED_EXECUTE
    )
}

/// Whether `tag` is one of this module's response tags.
pub(crate) fn is_response_tag(tag: u8) -> bool {
    matches!(tag, VALUE | NOT_FOUND | APPLIED | WARM_OK | CACHED)
}

/// A warm-state request from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum StateRequest {
    /// Reads a key of the state store; answered by Value or NotFound.
    Get {
        /// The key.
        key: String,
    },
    /// Writes a key; answered by Ok.
    Put(Put),
    /// Removes a key; answered by Applied (whether the key was there).
    Delete {
        /// The key.
        key: String,
    },
    /// Writes a key only if its current value is the expected one; answered by Applied.
    CompareAndSet(CompareAndSet),
    /// Reads a warm-up data set by name; answered by WarmOk, Rows frames and Complete.
    Warm {
        /// The data set's configured name.
        name: String,
    },
    /// Runs a statement through the query result cache; answered by Cached, Rows frames and
    /// Complete, exactly like an Execute after its first frame.
    CachedExecute(CachedExecute),
}

/// A write to the state store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// The key.
    pub key: String,
    /// The value, opaque to the extension.
    pub value: Bytes,
    /// Time to live in milliseconds; `None` keeps the value until it is overwritten, deleted or
    /// evicted.
    pub ttl_ms: Option<u64>,
}

/// A conditional write to the state store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareAndSet {
    /// The key.
    pub key: String,
    /// The value the key must hold now; `None` means the key must be absent.
    pub expected: Option<Bytes>,
    /// The value to write; `None` deletes the key.
    pub new: Option<Bytes>,
    /// Time to live of the new value in milliseconds, as in [`Put::ttl_ms`].
    pub ttl_ms: Option<u64>,
}

/// A statement to answer from the query result cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedExecute {
    /// How long a result stays fresh, in milliseconds (at least 1).
    pub ttl_ms: u64,
    /// How long past its freshness a result may still be served while a refresh runs in the
    /// background (stale-while-revalidate), in milliseconds; 0 for none.
    pub swr_ms: u64,
    /// The statement and its parameters; together they are the cache key.
    pub execute: Execute,
}

/// A warm-state response from the extension.
#[derive(Debug, Clone, PartialEq)]
pub enum StateResponse {
    /// The value of a key.
    Value(Bytes),
    /// The key is absent or expired.
    NotFound,
    /// Whether a Delete or CompareAndSet changed the store.
    Applied(bool),
    /// The columns of a warm-up data set; its rows follow.
    WarmOk(WarmOk),
    /// Where a cached statement's result came from; its rows follow.
    Cached(CacheOutcome),
}

/// The head of a warm-up data set.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmOk {
    /// Each column.
    pub columns: Vec<Column>,
    /// How long ago the rows were read from the database, in milliseconds.
    pub age_ms: u64,
}

/// Where a cached statement's result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// From the cache, within its time to live.
    Hit,
    /// From the cache, past its time to live but within the stale-while-revalidate window; a
    /// refresh runs in the background.
    Stale,
    /// From the database; the result is now cached.
    Miss,
}

fn put_ttl(buf: &mut BytesMut, ttl_ms: Option<u64>) {
    buf.put_u64(ttl_ms.unwrap_or(0));
}

fn read_ttl(r: &mut Reader) -> Result<Option<u64>, FrameError> {
    Ok(Some(r.u64("time to live")?).filter(|t| *t > 0))
}

impl StateRequest {
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        match self {
            StateRequest::Get { key } => write_frame(buf, GET, |b| put_str(b, key)),
            StateRequest::Put(p) => write_frame(buf, PUT, |b| {
                put_str(b, &p.key);
                put_nullable(b, Some(&p.value));
                put_ttl(b, p.ttl_ms);
            }),
            StateRequest::Delete { key } => write_frame(buf, DELETE, |b| put_str(b, key)),
            StateRequest::CompareAndSet(c) => write_frame(buf, COMPARE_AND_SET, |b| {
                put_str(b, &c.key);
                put_nullable(b, c.expected.as_deref());
                put_nullable(b, c.new.as_deref());
                put_ttl(b, c.ttl_ms);
            }),
            StateRequest::Warm { name } => write_frame(buf, WARM, |b| put_str(b, name)),
            StateRequest::CachedExecute(c) => write_frame(buf, CACHED_EXECUTE, |b| {
                b.put_u64(c.ttl_ms);
                b.put_u64(c.swr_ms);
                put_execute_body(b, &c.execute);
            }),
        }
    }

    pub(crate) fn parse(tag: u8, r: &mut Reader) -> Result<StateRequest, FrameError> {
        Ok(match tag {
            GET => StateRequest::Get {
                key: r.string("key")?,
            },
            PUT => StateRequest::Put(Put {
                key: r.string("key")?,
                value: r
                    .nullable("value")?
                    .ok_or(FrameError::Invalid("a stored value cannot be NULL"))?,
                ttl_ms: read_ttl(r)?,
            }),
            DELETE => StateRequest::Delete {
                key: r.string("key")?,
            },
            COMPARE_AND_SET => StateRequest::CompareAndSet(CompareAndSet {
                key: r.string("key")?,
                expected: r.nullable("expected value")?,
                new: r.nullable("new value")?,
                ttl_ms: read_ttl(r)?,
            }),
            WARM => StateRequest::Warm {
                name: r.string("warm-up name")?,
            },
            CACHED_EXECUTE => {
                let ttl_ms = r.u64("time to live")?;
                if ttl_ms == 0 {
                    return Err(FrameError::Invalid(
                        "a cached statement needs a time to live",
                    ));
                }
                StateRequest::CachedExecute(CachedExecute {
                    ttl_ms,
                    swr_ms: r.u64("stale-while-revalidate window")?,
                    execute: read_execute_body(r)?,
                })
            }
            other => return Err(FrameError::UnknownTag(other)),
        })
    }
}

impl StateResponse {
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        match self {
            StateResponse::Value(v) => write_frame(buf, VALUE, |b| put_nullable(b, Some(v))),
            StateResponse::NotFound => write_frame(buf, NOT_FOUND, |_| {}),
            StateResponse::Applied(a) => write_frame(buf, APPLIED, |b| b.put_u8(u8::from(*a))),
            StateResponse::WarmOk(w) => write_frame(buf, WARM_OK, |b| {
                put_count16(b, w.columns.len());
                for c in &w.columns {
                    put_str(b, &c.name);
                    put_type(b, &c.type_);
                }
                b.put_u64(w.age_ms);
            }),
            StateResponse::Cached(o) => write_frame(buf, CACHED, |b| {
                b.put_u8(match o {
                    CacheOutcome::Hit => 0,
                    CacheOutcome::Stale => 1,
                    CacheOutcome::Miss => 2,
                })
            }),
        }
    }

    pub(crate) fn parse(tag: u8, r: &mut Reader) -> Result<StateResponse, FrameError> {
        Ok(match tag {
            VALUE => StateResponse::Value(
                r.nullable("value")?
                    .ok_or(FrameError::Invalid("a stored value cannot be NULL"))?,
            ),
            NOT_FOUND => StateResponse::NotFound,
            APPLIED => match r.u8("applied")? {
                0 => StateResponse::Applied(false),
                1 => StateResponse::Applied(true),
                _ => return Err(FrameError::Invalid("applied flag out of range")),
            },
            WARM_OK => {
                let n = r.count16(9, "columns")?;
                let columns = (0..n)
                    .map(|_| {
                        Ok(Column {
                            name: r.string("column name")?,
                            type_: read_type(r)?,
                        })
                    })
                    .collect::<Result<Vec<_>, FrameError>>()?;
                StateResponse::WarmOk(WarmOk {
                    columns,
                    age_ms: r.u64("age")?,
                })
            }
            CACHED => StateResponse::Cached(match r.u8("cache outcome")? {
                0 => CacheOutcome::Hit,
                1 => CacheOutcome::Stale,
                2 => CacheOutcome::Miss,
                _ => return Err(FrameError::Invalid("cache outcome out of range")),
            }),
            other => return Err(FrameError::UnknownTag(other)),
        })
    }
}
