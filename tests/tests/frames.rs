//! The socket protocol on the wire: raw frames, good and malformed, sent straight to the real
//! extension over its Unix socket (docs/PROTOCOL.md is the specification).
//!
//! A malformed frame ends its own session (Error frame, then close) and nothing else: every
//! test that breaks a session also checks that a client opened before it still answers and that
//! a new client can connect.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use warmpool::protocol::{
    ErrorSource, Execute, Hello, HelloOk, Param, RawRow, Request, Response, WireError,
    DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use warmpool_tests::pg::process_alive;
use warmpool_tests::{Extension, PgServer};

/// A guard against a hung extension, not a timing assertion: every read normally returns at
/// once, and a read that does not return within this fails the test instead of hanging it.
const READ_GUARD: Duration = Duration::from_secs(30);

/// One raw session: the socket and what has been read from it but not yet decoded.
struct Raw {
    stream: UnixStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(ext: &Extension) -> Raw {
        let stream = UnixStream::connect(ext.socket())
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", ext.socket().display()));
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects and completes the handshake.
    async fn open(ext: &Extension) -> (Raw, HelloOk) {
        let mut raw = Raw::connect(ext).await;
        let ok = raw.handshake().await;
        (raw, ok)
    }

    async fn handshake(&mut self) -> HelloOk {
        self.send(&hello(PROTOCOL_VERSION)).await;
        match self.recv().await {
            Response::HelloOk(ok) => ok,
            other => panic!("expected HelloOk, got {other:?}"),
        }
    }

    async fn send(&mut self, request: &Request) {
        let mut buf = BytesMut::new();
        request.encode(&mut buf);
        self.send_bytes(&buf).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to the extension");
        self.stream.flush().await.expect("flush");
    }

    /// Reads one whole response; panics on end of stream or a frame that does not decode.
    async fn recv(&mut self) -> Response {
        loop {
            match Response::decode(&mut self.buf, DEFAULT_MAX_FRAME) {
                Ok(Some(r)) => return r,
                Ok(None) => {}
                Err(e) => panic!("the extension sent a malformed frame: {e}"),
            }
            let n = tokio::time::timeout(READ_GUARD, self.stream.read_buf(&mut self.buf))
                .await
                .expect("the extension did not answer")
                .expect("read from the extension");
            assert!(
                n > 0,
                "the extension closed the session where a response was due (buffered: {:?})",
                &self.buf[..]
            );
        }
    }

    /// Reads one response, which must be an Error frame.
    async fn recv_error(&mut self) -> WireError {
        match self.recv().await {
            Response::Error(e) => e,
            other => panic!("expected an Error frame, got {other:?}"),
        }
    }

    /// Asserts that the extension closes the session with nothing more to say: a clean end of
    /// stream, not a reset and not another frame.
    async fn expect_eof(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread bytes before the end of the session: {:?}",
            &self.buf[..]
        );
        let mut rest = Vec::new();
        let read = tokio::time::timeout(READ_GUARD, self.stream.read_to_end(&mut rest))
            .await
            .expect("the extension did not close the session");
        match read {
            Ok(_) => assert!(
                rest.is_empty(),
                "expected the session to close, got more bytes: {rest:?}"
            ),
            Err(e) => panic!("expected a clean close, got {e}"),
        }
    }
}

fn hello(version: u16) -> Request {
    Request::Hello(Hello {
        version,
        client: "warmpool-tests/frames".into(),
    })
}

/// A frame with exactly `body` as its body, whatever the tag.
fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn int4(n: i32) -> Bytes {
    Bytes::copy_from_slice(&n.to_be_bytes())
}

fn execute(sql: &str, params: Vec<Param>) -> Request {
    Request::Execute(Execute {
        sql: sql.into(),
        types: vec![],
        params,
    })
}

fn assert_extension_error(e: &WireError, code: &str) {
    assert_eq!(e.source, ErrorSource::Extension, "{e:?}");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(!e.message().is_empty(), "an error without a message: {e:?}");
}

/// The extension, its process alive, still serves a client opened before the bad session and
/// accepts a new one.
async fn assert_still_serving(ext: &Extension, before: &warmpool::Client) {
    assert!(
        process_alive(ext.pid()),
        "the extension died; log:\n{}",
        ext.logs()
    );
    let n: i32 = before
        .query_one("SELECT 1", &[])
        .await
        .unwrap_or_else(|e| {
            panic!(
                "client opened before the bad session: {e}; log:\n{}",
                ext.logs()
            )
        })
        .get(0);
    assert_eq!(n, 1);
    let fresh = warmpool::Client::connect_to(ext.socket())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "new client after the bad session: {e}; log:\n{}",
                ext.logs()
            )
        });
    let n: i32 = fresh.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    assert!(
        !ext.logs().contains("panicked"),
        "the extension panicked; log:\n{}",
        ext.logs()
    );
}

/// Ping answered by Pong: the session is still in step.
async fn assert_session_usable(raw: &mut Raw) {
    raw.send(&Request::Ping).await;
    assert_eq!(raw.recv().await, Response::Pong);
    raw.send(&execute("SELECT $1::int4 AS n", vec![param_int4(7)]))
        .await;
    assert_eq!(
        raw.recv().await,
        Response::Rows(vec![RawRow {
            values: vec![Some(int4(7))]
        }])
    );
    assert_eq!(raw.recv().await, Response::Complete(1));
}

fn param_int4(n: i32) -> Param {
    Param {
        oid: 23,
        value: Some(int4(n)),
    }
}

#[tokio::test]
async fn good_handshake() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let mut raw = Raw::connect(&ext).await;
    raw.send(&hello(PROTOCOL_VERSION)).await;
    match raw.recv().await {
        Response::HelloOk(ok) => {
            assert_eq!(ok.version, 1);
            assert_eq!(ok.version, PROTOCOL_VERSION);
            assert_eq!(ok.max_frame as usize, DEFAULT_MAX_FRAME);
            assert!(ok.server.starts_with("warmpool "), "{ok:?}");
        }
        other => panic!("expected HelloOk, got {other:?}"),
    }
    assert_session_usable(&mut raw).await;
    // Terminate: the extension closes without a word.
    raw.send(&Request::Terminate).await;
    raw.expect_eof().await;
}

#[tokio::test]
async fn wrong_protocol_version_is_refused_naming_both_versions() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let before = ext.client().await;

    let mut raw = Raw::connect(&ext).await;
    raw.send(&hello(7)).await;
    let e = raw.recv_error().await;
    assert_extension_error(&e, "08P01");
    let m = e.message();
    assert!(
        m.contains("version 7"),
        "the client's version is not named: {m}"
    );
    assert!(
        m.contains(&format!("version {PROTOCOL_VERSION}")),
        "the extension's version is not named: {m}"
    );
    raw.expect_eof().await;

    assert_still_serving(&ext, &before).await;
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let before = ext.client().await;

    let mut raw = Raw::connect(&ext).await;
    raw.send(&Request::Ping).await;
    let e = raw.recv_error().await;
    assert_extension_error(&e, "08P01");
    assert!(e.message().contains("Hello"), "{e:?}");
    raw.expect_eof().await;

    // A second Hello later is a violation too.
    let (mut raw, _) = Raw::open(&ext).await;
    raw.send(&hello(PROTOCOL_VERSION)).await;
    assert_extension_error(&raw.recv_error().await, "08P01");
    raw.expect_eof().await;

    assert_still_serving(&ext, &before).await;
}

#[tokio::test]
async fn unknown_tag_after_handshake() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let before = ext.client().await;

    let (mut raw, _) = Raw::open(&ext).await;
    raw.send_bytes(&frame(b'Z', &[])).await;
    let e = raw.recv_error().await;
    assert_extension_error(&e, "08P01");
    assert!(e.message().contains("0x5a"), "the tag is not named: {e:?}");
    raw.expect_eof().await;

    // A response tag sent as a request is just as unknown.
    let (mut raw, _) = Raw::open(&ext).await;
    raw.send_bytes(&frame(b'y', &[])).await;
    assert_extension_error(&raw.recv_error().await, "08P01");
    raw.expect_eof().await;

    assert_still_serving(&ext, &before).await;
}

#[tokio::test]
async fn oversized_frame_is_refused_from_its_header() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_FRAME_BYTES", "4096")]);
    let before = ext.client().await;

    let (mut raw, ok) = Raw::open(&ext).await;
    assert_eq!(
        ok.max_frame, 4096,
        "HelloOk must announce the configured limit"
    );
    // A Batch declaring a 1 MiB body. Only the 5-byte header is sent: the answer must come
    // without the body, which the extension must neither wait for nor reserve memory for.
    let mut header = BytesMut::new();
    header.put_u8(b'Q');
    header.put_u32(1024 * 1024);
    raw.send_bytes(&header).await;
    let e = raw.recv_error().await;
    assert_extension_error(&e, "54000");
    assert!(
        e.message().contains("WARMPOOL_MAX_FRAME_BYTES"),
        "the message should name the setting: {e:?}"
    );
    raw.expect_eof().await;

    // One byte over the limit is refused too...
    let (mut raw, _) = Raw::open(&ext).await;
    raw.send_bytes(&[b'Q', 0, 0, 0x10, 0x01]).await;
    assert_extension_error(&raw.recv_error().await, "54000");
    raw.expect_eof().await;

    // ...and a frame of exactly the limit is served.
    let sql = format!("{:<4092}", "SELECT 1");
    let batch = Request::Batch(sql);
    let mut encoded = BytesMut::new();
    batch.encode(&mut encoded);
    assert_eq!(encoded.len(), 5 + 4096);
    let (mut raw, _) = Raw::open(&ext).await;
    raw.send(&batch).await;
    assert_eq!(raw.recv().await, Response::Ok);
    assert_session_usable(&mut raw).await;

    assert_still_serving(&ext, &before).await;
}

#[tokio::test]
async fn truncated_frame_is_a_protocol_violation() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let before = ext.client().await;

    // Prepare whose sql string claims 100 bytes; the frame's own length (9) is consistent.
    let mut prepare = BytesMut::new();
    prepare.put_u32(100);
    prepare.put_slice(b"SELEC");
    // Execute whose parameter count claims 1000 parameters in a body with room for none.
    let mut execute = BytesMut::new();
    execute.put_u32(8);
    execute.put_slice(b"SELECT 1");
    execute.put_u16(0);
    execute.put_u16(1000);
    // Prepare whose body ends inside the type count.
    let mut short = BytesMut::new();
    short.put_u32(8);
    short.put_slice(b"SELECT 1");
    short.put_u8(0);

    for (what, tag, body) in [
        ("string length", b'P', prepare),
        ("parameter count", b'E', execute),
        ("missing field", b'P', short),
    ] {
        let (mut raw, _) = Raw::open(&ext).await;
        raw.send_bytes(&frame(tag, &body)).await;
        let e = raw.recv_error().await;
        assert_extension_error(&e, "08P01");
        assert!(e.message().contains("truncated"), "{what}: {e:?}");
        raw.expect_eof().await;
    }

    assert_still_serving(&ext, &before).await;
}

#[tokio::test]
async fn trailing_bytes_are_a_protocol_violation() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let before = ext.client().await;

    // Ping has no fields.
    let (mut raw, _) = Raw::open(&ext).await;
    raw.send_bytes(&frame(b'Y', &[1, 2, 3])).await;
    let e = raw.recv_error().await;
    assert_extension_error(&e, "08P01");
    assert!(e.message().contains("trailing"), "{e:?}");
    raw.expect_eof().await;

    // A well-formed Prepare with one byte too many.
    let mut body = BytesMut::new();
    body.put_u32(8);
    body.put_slice(b"SELECT 1");
    body.put_u16(0);
    body.put_u8(0);
    let (mut raw, _) = Raw::open(&ext).await;
    raw.send_bytes(&frame(b'P', &body)).await;
    assert_extension_error(&raw.recv_error().await, "08P01");
    raw.expect_eof().await;

    assert_still_serving(&ext, &before).await;
}

#[tokio::test]
async fn torn_frame_closes_the_session_quietly() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let before = ext.client().await;

    let (mut raw, _) = Raw::open(&ext).await;
    let mut body = BytesMut::new();
    body.put_u32(8);
    body.put_slice(b"SELECT 1");
    body.put_u16(0);
    let whole = frame(b'P', &body);
    // The header and half the body, then the client's side of the stream ends.
    raw.send_bytes(&whole[..5 + body.len() / 2]).await;
    raw.stream
        .shutdown()
        .await
        .expect("shut down the write side");
    // Nobody is left to read an error: the extension closes without one.
    raw.expect_eof().await;

    assert_still_serving(&ext, &before).await;
}

/// PROTOCOL.md: "Parameters that do not match the statement, for example a different number of
/// them than the statement has, are refused with SQLSTATE 22023." The session stays usable.
#[tokio::test]
async fn execute_with_wrong_parameters_keeps_the_session() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let before = ext.client().await;

    let (mut raw, _) = Raw::open(&ext).await;
    // A parameter encoded for text (25) where the statement takes int4.
    raw.send(&execute(
        "SELECT $1::int4 AS n",
        vec![Param {
            oid: 25,
            value: Some(Bytes::from_static(b"7")),
        }],
    ))
    .await;
    let e = raw.recv_error().await;
    assert_extension_error(&e, "22023");
    assert_session_usable(&mut raw).await;

    // No parameter where the statement has one, and two where it has one. The codes are
    // checked last, so that a wrong code does not hide whether the session survived.
    let mut codes = Vec::new();
    for params in [vec![], vec![param_int4(1), param_int4(2)]] {
        let given = params.len();
        raw.send(&execute("SELECT $1::int4 AS n", params)).await;
        let e = raw.recv_error().await;
        assert_eq!(e.source, ErrorSource::Extension, "{e:?}");
        assert!(
            e.message().contains("1 parameters")
                && e.message().contains(&format!("{given} were given")),
            "the message should give both counts: {e:?}"
        );
        assert_session_usable(&mut raw).await;
        codes.push(e.code().to_owned());
    }
    // 08P01 from the extension means "this session is over" (PROTOCOL.md, "Errors that close
    // the session"; the Rust client discards a session on it), yet this session goes on.
    assert_eq!(
        codes,
        ["22023", "22023"],
        "a parameter count mismatch must be 22023 (invalid_parameter_value), as PROTOCOL.md says"
    );

    assert_still_serving(&ext, &before).await;
}

/// Bytes that are not a valid binary int4 reach PostgreSQL, whose own error comes back (source
/// `D`), and the session and its database connection stay usable.
#[tokio::test]
async fn invalid_parameter_bytes_get_postgres_error() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let before = ext.client().await;

    let (mut raw, _) = Raw::open(&ext).await;
    for (bytes, code, message) in [
        // int4recv reads 4 bytes: with 3, pq_getmsgint runs out of data.
        (
            &b"\x00\x00\x07"[..],
            "08P01",
            "insufficient data left in message",
        ),
        // With 5, one byte is left over after int4recv.
        (
            &b"\x00\x00\x00\x07\x00"[..],
            "22P03",
            "incorrect binary data format",
        ),
    ] {
        raw.send(&execute(
            "SELECT $1::int4 AS n",
            vec![Param {
                oid: 23,
                value: Some(Bytes::copy_from_slice(bytes)),
            }],
        ))
        .await;
        let e = raw.recv_error().await;
        assert_eq!(e.source, ErrorSource::Database, "{e:?}");
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(message), "{e:?}");
        // PostgreSQL's own fields come through, not just the extension's four.
        assert!(
            e.field(b'R').is_some(),
            "the routine field is missing: {e:?}"
        );
        assert_session_usable(&mut raw).await;
    }

    assert_still_serving(&ext, &before).await;
}

/// Reads the answers to a Pipeline: each statement's frames, then the last one for the batch.
async fn recv_pipeline(raw: &mut Raw, statements: usize) -> (Vec<Response>, Response) {
    let mut answers = Vec::new();
    while answers.len() < statements {
        match raw.recv().await {
            Response::Rows(_) => {}
            other => answers.push(other),
        }
    }
    (answers, raw.recv().await)
}

/// SQL text holding a NUL byte, which PostgreSQL's protocol cannot carry, is the client's error
/// (22021) in every request that carries SQL: the session goes on, a transaction stays open,
/// and the database connection is neither closed nor replaced.
#[tokio::test]
async fn nul_in_sql_is_refused_without_touching_the_database_connection() {
    use warmpool::protocol::{Begin, CachedExecute, Pipeline, Prepare, StateRequest};

    let pg = PgServer::start();
    // One connection at most: a replaced connection shows as another backend.
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "1")]);
    let before = ext.client().await;
    let (mut raw, _) = Raw::open(&ext).await;
    assert_session_usable(&mut raw).await;
    let backends = pg.warmpool_backends().await;
    assert_eq!(backends.len(), 1, "{backends:?}");

    let nul = "SELECT 'a\0b' AS t";
    let good = || execute("SELECT $1::int4 AS n", vec![param_int4(7)]);
    let Request::Execute(good_statement) = good() else {
        unreachable!()
    };
    let Request::Execute(nul_statement) = execute(nul, vec![]) else {
        unreachable!()
    };
    let refused = [
        Request::Prepare(Prepare {
            sql: nul.into(),
            types: vec![],
        }),
        execute(nul, vec![]),
        Request::Batch(format!("SELECT 1; {nul}")),
        Request::State(StateRequest::CachedExecute(CachedExecute {
            ttl_ms: 60_000,
            swr_ms: 0,
            execute: nul_statement.clone(),
        })),
    ];
    let mut codes = Vec::new();
    for request in &refused {
        raw.send(request).await;
        let e = raw.recv_error().await;
        assert_eq!(e.source, ErrorSource::Extension, "{e:?}");
        assert!(e.message().contains("NUL byte"), "{e:?}");
        assert_session_usable(&mut raw).await;
        codes.push(e.code().to_owned());
    }

    // In a transaction the refused statement leaves the transaction as it was.
    raw.send(&Request::Begin(Begin::default())).await;
    assert_eq!(raw.recv().await, Response::Ok);
    raw.send(&execute(nul, vec![])).await;
    codes.push(raw.recv_error().await.code().to_owned());
    raw.send(&good()).await;
    assert!(matches!(raw.recv().await, Response::Rows(_)));
    assert_eq!(raw.recv().await, Response::Complete(1));
    raw.send(&Request::Commit).await;
    assert_eq!(raw.recv().await, Response::Ok);

    // A batch answers each statement: the refused one with its error, the others run...
    raw.send(&Request::Pipeline(Pipeline {
        transaction: None,
        statements: vec![
            good_statement.clone(),
            nul_statement.clone(),
            good_statement.clone(),
        ],
    }))
    .await;
    let (answers, last) = recv_pipeline(&mut raw, 3).await;
    assert_eq!(answers[0], Response::Complete(1));
    let Response::Error(e) = &answers[1] else {
        panic!("{answers:?}")
    };
    codes.push(e.code().to_owned());
    assert_eq!(answers[2], Response::Complete(1));
    assert_eq!(last, Response::Ok);
    // ...or, in a transaction, none of them is sent.
    raw.send(&Request::Pipeline(Pipeline {
        transaction: Some(Begin::default()),
        statements: vec![good_statement, nul_statement],
    }))
    .await;
    let (answers, last) = recv_pipeline(&mut raw, 2).await;
    assert_eq!(answers[0], Response::NotRun);
    let Response::Error(e) = &answers[1] else {
        panic!("{answers:?}")
    };
    codes.push(e.code().to_owned());
    let Response::Error(last) = last else {
        panic!("{last:?}")
    };
    assert_eq!(last.code(), "25P02", "{last:?}");
    assert_session_usable(&mut raw).await;

    assert_eq!(
        pg.warmpool_backends().await,
        backends,
        "the database connection was replaced; log:\n{}",
        ext.logs()
    );
    assert_eq!(codes, ["22021"; 7], "22021 character_not_in_repertoire");
    assert_still_serving(&ext, &before).await;
}
