//! Frames the client sends.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{put_count16, put_nullable, put_str, split_frame, write_frame, Reader};
use super::deadline::{Deadline, DEADLINE};
use super::observability::{self, Invocation};
use super::pipeline::{Pipeline, PIPELINE};
use super::savepoint::{Savepoint, SAVEPOINT};
use super::simple::SIMPLE_QUERY;
use super::state::{self, StateRequest};
use super::FrameError;

const HELLO: u8 = b'H';
const PREPARE: u8 = b'P';
const EXECUTE: u8 = b'E';
const BATCH: u8 = b'Q';
const BEGIN: u8 = b'B';
const COMMIT: u8 = b'C';
const ROLLBACK: u8 = b'R';
const PING: u8 = b'Y';
const TERMINATE: u8 = b'X';

/// A frame from the client to the extension.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Opens a session; must be the first frame.
    Hello(Hello),
    /// Describes a statement: its parameter types and result columns.
    Prepare(Prepare),
    /// Runs a statement with parameters and streams its rows.
    Execute(Execute),
    /// Runs one or more statements without parameters (the simple query protocol).
    Batch(String),
    /// Starts a transaction that pins one connection until Commit or Rollback. BEGIN itself is
    /// sent to PostgreSQL together with the transaction's first statement.
    Begin(Begin),
    /// Commits the session's transaction.
    Commit,
    /// Rolls back the session's transaction.
    Rollback,
    /// Checks that the extension answers.
    Ping,
    /// Ends the session cleanly.
    Terminate,
    /// Reads or writes the extension's warm state (see [`StateRequest`]).
    State(StateRequest),
    /// Names the invocation the session's next requests belong to; answered with Ok.
    Invocation(Invocation),
    /// Asks for the counters of the session's invocation; answered with Stats.
    Stats,
    /// Runs several parameterised statements back to back, optionally as one transaction.
    Pipeline(Pipeline),
    /// Sets or lifts the deadline of the session's statements (see [`Deadline`]).
    Deadline(Deadline),
    /// Creates, releases or rolls back to a savepoint in the session's transaction.
    Savepoint(Savepoint),
    /// Runs one or more statements without parameters (the simple query protocol) and returns
    /// their rows as text: per statement, Columns, Rows and Complete; then Ok.
    SimpleQuery(String),
}

/// The handshake: the protocol version the client speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// [`super::PROTOCOL_VERSION`] of the client's build.
    pub version: u16,
    /// A free-form client name for the extension's logs.
    pub client: String,
}

/// A request to describe a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    /// The statement's SQL text, which is also its identity.
    pub sql: String,
    /// Parameter type OIDs given by the caller; 0 or missing ones are inferred by the server.
    pub types: Vec<u32>,
}

/// A request to run a statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Execute {
    /// The statement's SQL text.
    pub sql: String,
    /// The parameter type OIDs the statement was prepared with (as in [`Prepare::types`]).
    pub types: Vec<u32>,
    /// One value per parameter, in PostgreSQL's binary format.
    pub params: Vec<Param>,
}

/// One parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The type OID the value was encoded for.
    pub oid: u32,
    /// The binary value, or `None` for NULL.
    pub value: Option<Bytes>,
}

/// Transaction isolation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationLevel {
    /// The server's default.
    #[default]
    Default,
    /// READ COMMITTED.
    ReadCommitted,
    /// REPEATABLE READ.
    RepeatableRead,
    /// SERIALIZABLE.
    Serializable,
}

/// Options of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Begin {
    /// Isolation level.
    pub isolation: IsolationLevel,
    /// `Some(true)` for READ ONLY, `Some(false)` for READ WRITE, `None` for the default.
    pub read_only: Option<bool>,
    /// `Some(true)` for DEFERRABLE, `Some(false)` for NOT DEFERRABLE, `None` for the default.
    pub deferrable: Option<bool>,
}

impl Begin {
    /// The SQL that starts this transaction.
    pub fn sql(&self) -> String {
        let mut sql = String::from("BEGIN");
        let mut modes = Vec::new();
        match self.isolation {
            IsolationLevel::Default => {}
            IsolationLevel::ReadCommitted => modes.push("ISOLATION LEVEL READ COMMITTED"),
            IsolationLevel::RepeatableRead => modes.push("ISOLATION LEVEL REPEATABLE READ"),
            IsolationLevel::Serializable => modes.push("ISOLATION LEVEL SERIALIZABLE"),
        }
        match self.read_only {
            Some(true) => modes.push("READ ONLY"),
            Some(false) => modes.push("READ WRITE"),
            None => {}
        }
        match self.deferrable {
            Some(true) => modes.push("DEFERRABLE"),
            Some(false) => modes.push("NOT DEFERRABLE"),
            None => {}
        }
        if !modes.is_empty() {
            sql.push(' ');
            sql.push_str(&modes.join(", "));
        }
        sql
    }
}

fn put_opt_bool(buf: &mut BytesMut, v: Option<bool>) {
    buf.put_u8(match v {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
}

fn read_opt_bool(r: &mut Reader, what: &'static str) -> Result<Option<bool>, FrameError> {
    match r.u8(what)? {
        0 => Ok(None),
        1 => Ok(Some(false)),
        2 => Ok(Some(true)),
        _ => Err(FrameError::Invalid("transaction option out of range")),
    }
}

pub(crate) fn put_begin(b: &mut BytesMut, o: &Begin) {
    b.put_u8(match o.isolation {
        IsolationLevel::Default => 0,
        IsolationLevel::ReadCommitted => 1,
        IsolationLevel::RepeatableRead => 2,
        IsolationLevel::Serializable => 3,
    });
    put_opt_bool(b, o.read_only);
    put_opt_bool(b, o.deferrable);
}

pub(crate) fn read_begin(r: &mut Reader) -> Result<Begin, FrameError> {
    let isolation = match r.u8("isolation level")? {
        0 => IsolationLevel::Default,
        1 => IsolationLevel::ReadCommitted,
        2 => IsolationLevel::RepeatableRead,
        3 => IsolationLevel::Serializable,
        _ => return Err(FrameError::Invalid("isolation level out of range")),
    };
    Ok(Begin {
        isolation,
        read_only: read_opt_bool(r, "read only")?,
        deferrable: read_opt_bool(r, "deferrable")?,
    })
}

pub(crate) fn put_execute_body(b: &mut BytesMut, e: &Execute) {
    put_str(b, &e.sql);
    put_oids(b, &e.types);
    put_count16(b, e.params.len());
    for p in &e.params {
        b.put_u32(p.oid);
        put_nullable(b, p.value.as_deref());
    }
}

pub(crate) fn read_execute_body(r: &mut Reader) -> Result<Execute, FrameError> {
    let sql = r.string("sql")?;
    let types = read_oids(r)?;
    let n = r.count16(8, "parameters")?;
    let params = (0..n)
        .map(|_| {
            Ok(Param {
                oid: r.u32("parameter type")?,
                value: r.nullable("parameter value")?,
            })
        })
        .collect::<Result<_, FrameError>>()?;
    Ok(Execute { sql, types, params })
}

fn put_oids(buf: &mut BytesMut, oids: &[u32]) {
    put_count16(buf, oids.len());
    for oid in oids {
        buf.put_u32(*oid);
    }
}

fn read_oids(r: &mut Reader) -> Result<Vec<u32>, FrameError> {
    let n = r.count16(4, "parameter types")?;
    (0..n).map(|_| r.u32("parameter type")).collect()
}

impl Request {
    /// Appends this frame to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Request::Hello(h) => write_frame(buf, HELLO, |b| {
                b.put_u16(h.version);
                put_str(b, &h.client);
            }),
            Request::Prepare(p) => write_frame(buf, PREPARE, |b| {
                put_str(b, &p.sql);
                put_oids(b, &p.types);
            }),
            Request::Execute(e) => write_frame(buf, EXECUTE, |b| put_execute_body(b, e)),
            Request::Batch(sql) => write_frame(buf, BATCH, |b| put_str(b, sql)),
            Request::Begin(o) => write_frame(buf, BEGIN, |b| put_begin(b, o)),
            Request::Commit => write_frame(buf, COMMIT, |_| {}),
            Request::Rollback => write_frame(buf, ROLLBACK, |_| {}),
            Request::Ping => write_frame(buf, PING, |_| {}),
            Request::Terminate => write_frame(buf, TERMINATE, |_| {}),
            Request::State(s) => s.encode(buf),
            Request::Invocation(i) => write_frame(buf, observability::INVOCATION, |b| {
                observability::put_invocation(b, i)
            }),
            Request::Stats => write_frame(buf, observability::STATS, |_| {}),
            Request::Pipeline(p) => write_frame(buf, PIPELINE, |b| p.encode_body(b)),
            Request::Deadline(d) => d.encode(buf),
            Request::Savepoint(s) => s.encode(buf),
            Request::SimpleQuery(sql) => write_frame(buf, SIMPLE_QUERY, |b| put_str(b, sql)),
        }
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` until a whole frame has arrived.
    pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Request>, FrameError> {
        let Some((tag, body)) = split_frame(buf, max_frame)? else {
            return Ok(None);
        };
        Self::parse(tag, body).map(Some)
    }

    fn parse(tag: u8, body: Bytes) -> Result<Request, FrameError> {
        let mut r = Reader::new(body);
        let req = match tag {
            HELLO => Request::Hello(Hello {
                version: r.u16("protocol version")?,
                client: r.string("client name")?,
            }),
            PREPARE => Request::Prepare(Prepare {
                sql: r.string("sql")?,
                types: read_oids(&mut r)?,
            }),
            EXECUTE => Request::Execute(read_execute_body(&mut r)?),
            BATCH => Request::Batch(r.string("sql")?),
            BEGIN => Request::Begin(read_begin(&mut r)?),
            COMMIT => Request::Commit,
            ROLLBACK => Request::Rollback,
            PING => Request::Ping,
            TERMINATE => Request::Terminate,
            tag if state::is_request_tag(tag) => Request::State(StateRequest::parse(tag, &mut r)?),
            observability::INVOCATION => {
                Request::Invocation(observability::read_invocation(&mut r)?)
            }
            observability::STATS => Request::Stats,
            PIPELINE => Request::Pipeline(Pipeline::parse_body(&mut r)?),
            DEADLINE => Request::Deadline(Deadline::parse(&mut r)?),
            SAVEPOINT => Request::Savepoint(Savepoint::parse(&mut r)?),
            SIMPLE_QUERY => Request::SimpleQuery(r.string("sql")?),
            other => return Err(FrameError::UnknownTag(other)),
        };
        r.finish(tag)?;
        Ok(req)
    }
}
