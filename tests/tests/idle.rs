//! Clients that say nothing, or say it a byte at a time: the handshake timeout bounds the wait
//! for Hello, the idle session timeout (`WARMPOOL_IDLE_SESSION_TIMEOUT_MS`) every wait after it.
//! Either way the session ends with an error frame naming the setting, and the rest of the
//! extension goes on serving.

use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use warmpool::protocol::{
    ErrorSource, Hello, HelloOk, Request, Response, WireError, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use warmpool::transport::Framed;
use warmpool_tests::pg::process_alive;
use warmpool_tests::{Extension, PgServer};

/// A guard against a hung extension, not a timing assertion.
const GUARD: Duration = Duration::from_secs(30);

/// Pacing of the slow client: well under every timeout configured here, so the client is
/// never idle for a whole timeout between two bytes.
const BYTE_EVERY: Duration = Duration::from_millis(50);

fn encode(request: &Request) -> Vec<u8> {
    let mut buf = BytesMut::new();
    request.encode(&mut buf);
    buf.to_vec()
}

fn hello() -> Vec<u8> {
    encode(&Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        client: "idle-test".into(),
    }))
}

/// Reads until the extension closes the session; returns the frames it sent.
async fn frames_until_close(stream: &mut UnixStream) -> Vec<Response> {
    let mut bytes = Vec::new();
    tokio::time::timeout(GUARD, stream.read_to_end(&mut bytes))
        .await
        .expect("the extension never closed the session")
        .expect("read");
    let mut buf = BytesMut::from(&bytes[..]);
    let mut frames = Vec::new();
    while let Some(f) = Response::decode(&mut buf, DEFAULT_MAX_FRAME).expect("a well-formed frame")
    {
        frames.push(f);
    }
    assert!(buf.is_empty(), "a torn frame at the end: {:?}", &buf[..]);
    frames
}

/// Sends `bytes` one at a time, `BYTE_EVERY` apart, until the extension closes the session;
/// returns how many went out and what came back.
async fn trickle(stream: UnixStream, bytes: &[u8]) -> (usize, Vec<Response>) {
    let (mut read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        tokio::time::timeout(GUARD, read.read_to_end(&mut got))
            .await
            .expect("the extension never closed the trickling session")
            .expect("read");
        got
    });
    let mut sent = 0;
    for b in bytes {
        if reader.is_finished() || write.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(BYTE_EVERY).await;
    }
    let got = reader.await.unwrap();
    let mut buf = BytesMut::from(&got[..]);
    let mut frames = Vec::new();
    while let Some(f) = Response::decode(&mut buf, DEFAULT_MAX_FRAME).expect("a well-formed frame")
    {
        frames.push(f);
    }
    (sent, frames)
}

fn only_error(frames: &[Response]) -> &WireError {
    match frames {
        [Response::Error(e)] => e,
        other => panic!("expected one Error frame before the close, got {other:?}"),
    }
}

async fn assert_serving(ext: &Extension) {
    assert!(
        process_alive(ext.pid()),
        "the extension died:\n{}",
        ext.logs()
    );
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    let n: i32 = client.query_one("SELECT 5", &[]).await.unwrap().get(0);
    assert_eq!(n, 5);
}

#[tokio::test]
async fn silent_client_is_closed_at_the_handshake_timeout() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_HANDSHAKE_TIMEOUT_MS", "300")]);
    let mut stream = UnixStream::connect(ext.socket()).await.unwrap();
    let frames = frames_until_close(&mut stream).await;
    let e = only_error(&frames);
    assert_eq!(e.code(), "08P01", "{e:?}");
    assert!(e.message().contains("handshake timeout"), "{e:?}");
    assert_serving(&ext).await;
}

#[tokio::test]
async fn hello_a_byte_at_a_time_is_closed_at_the_handshake_timeout() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_HANDSHAKE_TIMEOUT_MS", "300")]);
    let stream = UnixStream::connect(ext.socket()).await.unwrap();
    // A Hello padded out so that, a byte every 50 ms, it would take far longer than 300 ms.
    let mut padded = hello();
    let client_len = u32::from_be_bytes(padded[7..11].try_into().unwrap()) as usize;
    let extra = 200;
    padded.extend(std::iter::repeat_n(b'x', extra));
    let body = (padded.len() - 5) as u32;
    padded[1..5].copy_from_slice(&body.to_be_bytes());
    padded[7..11].copy_from_slice(&((client_len + extra) as u32).to_be_bytes());
    let (sent, frames) = trickle(stream, &padded).await;
    assert!(
        sent < padded.len(),
        "the whole Hello went out before the close"
    );
    let e = only_error(&frames);
    assert_eq!(e.code(), "08P01", "{e:?}");
    assert!(e.message().contains("handshake timeout"), "{e:?}");
    assert_serving(&ext).await;
}

#[tokio::test]
async fn silent_session_is_closed_at_the_idle_session_timeout() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_IDLE_SESSION_TIMEOUT_MS", "300")]);
    let mut stream = UnixStream::connect(ext.socket()).await.unwrap();
    stream.write_all(&hello()).await.unwrap();
    let frames = frames_until_close(&mut stream).await;
    match &frames[..] {
        [Response::HelloOk(_), Response::Error(e)] => {
            assert_eq!(e.code(), "57P05", "{e:?}");
            assert_eq!(e.source, ErrorSource::Extension);
            assert!(
                e.message().contains("WARMPOOL_IDLE_SESSION_TIMEOUT_MS"),
                "{e:?}"
            );
        }
        other => panic!("expected HelloOk then a 57P05 Error, got {other:?}"),
    }
    assert_serving(&ext).await;
}

#[tokio::test]
async fn frame_a_byte_at_a_time_is_closed_at_the_idle_session_timeout() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_IDLE_SESSION_TIMEOUT_MS", "300")]);
    let mut stream = UnixStream::connect(ext.socket()).await.unwrap();
    stream.write_all(&hello()).await.unwrap();
    let mut ok = [0u8; 64];
    let n = stream.read(&mut ok).await.unwrap();
    assert!(
        matches!(
            Response::decode(&mut BytesMut::from(&ok[..n]), DEFAULT_MAX_FRAME),
            Ok(Some(Response::HelloOk(_)))
        ),
        "no HelloOk"
    );
    // A Batch whose SQL would take 30 s to arrive at this pace.
    let sql = "SELECT 1 ".repeat(64);
    let batch = encode(&Request::Batch(sql));
    let (sent, frames) = trickle(stream, &batch).await;
    assert!(
        sent < batch.len(),
        "the whole frame went out before the close"
    );
    let e = only_error(&frames);
    assert_eq!(e.code(), "57P05", "{e:?}");
    assert_serving(&ext).await;
}

#[tokio::test]
async fn idle_transaction_is_rolled_back_when_its_session_is_closed() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_IDLE_SESSION_TIMEOUT_MS", "300")]);
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("UPDATE t SET v = 1 WHERE id = 1", &[])
        .await
        .unwrap();
    // The transaction now holds the row lock and goes quiet. Blocking on the same row is the
    // signal: it returns once the extension has closed the session and rolled back.
    let direct = pg.tokio_client().await;
    direct
        .batch_execute("SET lock_timeout = '30s'")
        .await
        .unwrap();
    let n = direct
        .execute("UPDATE t SET v = v + 10 WHERE id = 1", &[])
        .await
        .expect("the abandoned transaction kept its lock");
    assert_eq!(n, 1);
    let v: i32 = direct
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 10, "the idle transaction's update must not be committed");
    let err = tx.commit().await.expect_err("the session was closed");
    assert!(err.is_closed(), "{err}");
}

#[tokio::test]
async fn client_replaces_sessions_closed_for_idleness() {
    let pg = PgServer::start();
    let mut ext = Extension::start(&pg, &[("WARMPOOL_IDLE_SESSION_TIMEOUT_MS", "200")]);
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    let n: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    ext.wait_for_log("closing a session idle", GUARD);
    // The client's only idle session is gone; the next request must not see that.
    let n: i32 = client.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    let tx = client.transaction().await.unwrap();
    let n: i32 = tx.query_one("SELECT 3", &[]).await.unwrap().get(0);
    tx.commit().await.unwrap();
    assert_eq!(n, 3);
}

/// Reads the next whole frame.
async fn next_frame(stream: &mut UnixStream, buf: &mut BytesMut) -> Response {
    loop {
        if let Some(f) = Response::decode(buf, DEFAULT_MAX_FRAME).expect("a well-formed frame") {
            return f;
        }
        let n = tokio::time::timeout(GUARD, stream.read_buf(buf))
            .await
            .expect("no frame from the extension")
            .expect("read");
        assert!(n > 0, "the extension closed the session");
    }
}

#[tokio::test]
async fn a_freeze_longer_than_the_idle_session_timeout_does_not_close_the_session() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let pg = PgServer::start();
    let mut ext = Extension::start(&pg, &[("WARMPOOL_IDLE_SESSION_TIMEOUT_MS", "3000")]);
    // Frozen after Init, as on Lambda, not during it.
    ext.wait_for_log("pool warmed", GUARD);
    let mut stream = UnixStream::connect(ext.socket()).await.unwrap();
    let mut buf = BytesMut::new();
    stream.write_all(&hello()).await.unwrap();
    assert!(matches!(
        next_frame(&mut stream, &mut buf).await,
        Response::HelloOk(_)
    ));
    // Frozen between invocations, as Lambda freezes an environment, for longer than the
    // timeout. The freeze's length is what is under test here, so it is a plain sleep.
    let pid = Pid::from_raw(ext.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    kill(pid, Signal::SIGCONT).unwrap();
    // Proof that the extension has run since the thaw and fired its timers that fell due: a
    // statement on another session cancelled at a deadline after the thaw, which a timer
    // firing must start. Every timer the freeze made due fires no later than that one.
    let probe = ext.client().await;
    let err = probe
        .with_deadline(SystemTime::now() + Duration::from_millis(100))
        .query("SELECT pg_sleep(30)", &[])
        .await
        .expect_err("the deadline cancels the probe");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    // The function's next request finds its session open: the frozen time counted for at most
    // one tick of the timeout.
    stream.write_all(&encode(&Request::Ping)).await.unwrap();
    match next_frame(&mut stream, &mut buf).await {
        Response::Pong => {
            eprintln!("LOGS {}", ext.logs());
        }
        other => panic!("the session did not survive the freeze: {other:?}"),
    }
    // Idle while the process runs, the session is still closed at the timeout.
    let frames = frames_until_close(&mut stream).await;
    match &frames[..] {
        [Response::Error(e)] => assert_eq!(e.code(), "57P05", "{e:?}"),
        other => panic!("expected a 57P05 Error, got {other:?}"),
    }
    assert!(
        !ext.logs().contains("panicked"),
        "the extension panicked:\n{}",
        ext.logs()
    );
}

/// A raw session past Hello, and its read buffer.
async fn raw_session(ext: &Extension) -> (UnixStream, BytesMut) {
    let mut stream = UnixStream::connect(ext.socket()).await.unwrap();
    let mut buf = BytesMut::new();
    stream.write_all(&hello()).await.unwrap();
    match next_frame(&mut stream, &mut buf).await {
        Response::HelloOk(_) => {}
        other => panic!("expected HelloOk, got {other:?}\n{}", ext.logs()),
    }
    (stream, buf)
}

/// Sends `request` on a raw session and returns the answer.
async fn ask(session: &mut (UnixStream, BytesMut), request: &Request) -> Response {
    session.0.write_all(&encode(request)).await.unwrap();
    next_frame(&mut session.0, &mut session.1).await
}

#[tokio::test]
async fn at_the_session_limit_a_new_session_takes_the_slot_of_the_longest_idle_one() {
    use warmpool::protocol::Begin;

    let pg = PgServer::start();
    let mut ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_MAX_SESSIONS", "4"),
            ("WARMPOOL_WAIT_TIMEOUT_MS", "300"),
        ],
    );
    // Every slot in use, oldest first. The two oldest hold transactions, so the longest-idle
    // session that may give up its slot is the third.
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(raw_session(&ext).await);
    }
    for s in &mut sessions[..2] {
        assert!(matches!(
            ask(s, &Request::Begin(Begin::default())).await,
            Response::Ok
        ));
    }
    // A fifth session is served at once, rather than waiting for the wait timeout and 53300.
    let client = warmpool::Client::connect_to(ext.socket())
        .await
        .unwrap_or_else(|e| panic!("the new session was refused: {e}\n{}", ext.logs()));
    let n: i32 = client.query_one("SELECT 5", &[]).await.unwrap().get(0);
    assert_eq!(n, 5);
    // The third session was told why, with the code the client replaces a session on.
    let frames = frames_until_close(&mut sessions[2].0).await;
    let e = only_error(&frames);
    assert_eq!(e.code(), "57P05", "{e:?}");
    assert_eq!(e.source, ErrorSource::Extension);
    assert!(e.message().contains("WARMPOOL_MAX_SESSIONS"), "{e:?}");
    ext.wait_for_log("closing the longest-idle session", GUARD);
    // The others are untouched: the transactions are still open, the fourth session serves.
    for i in [0, 1, 3] {
        assert!(
            matches!(ask(&mut sessions[i], &Request::Ping).await, Response::Pong),
            "session {i}"
        );
    }
    for i in [0, 1] {
        assert!(
            matches!(ask(&mut sessions[i], &Request::Commit).await, Response::Ok),
            "session {i}: its transaction was lost"
        );
    }
}

/// Answers Hello on a session of the stand-in extension below.
async fn accept_hello(listener: &tokio::net::UnixListener) -> Framed<UnixStream> {
    let (stream, _) = listener.accept().await.unwrap();
    let mut framed = Framed::new(stream, DEFAULT_MAX_FRAME);
    match framed.read::<Request>().await.unwrap() {
        Some(Request::Hello(_)) => {}
        other => panic!("expected Hello, got {other:?}"),
    }
    framed.queue_response(&Response::HelloOk(HelloOk {
        version: PROTOCOL_VERSION,
        server: "stand-in".into(),
        max_frame: DEFAULT_MAX_FRAME as u32,
    }));
    framed.flush().await.unwrap();
    framed
}

#[tokio::test]
async fn a_session_closed_as_the_client_names_its_invocation_is_replaced_without_an_error() {
    // The moment is a race in the real extension (a session closed for idleness, or for its
    // slot, just as the client writes to it), so a stand-in for the extension plays it: it
    // answers the client's next write on the first session with 57P05 instead of reading it,
    // as the extension does, and serves the second session.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warmpool.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let stand_in = tokio::spawn(async move {
        let mut first = accept_hello(&listener).await;
        first.get_ref().readable().await.unwrap();
        first.queue_response(&Response::Error(WireError::extension(
            "57P05",
            "closing this idle session to make room for a new one",
        )));
        first.flush().await.unwrap();
        drop(first);
        let mut second = accept_hello(&listener).await;
        let mut seen = Vec::new();
        while let Some(request) = second.read::<Request>().await.unwrap() {
            let answer = match &request {
                Request::Invocation(_) => Response::Ok,
                Request::Ping => Response::Pong,
                other => panic!("unexpected {other:?}"),
            };
            seen.push(request);
            second.queue_response(&answer);
            second.flush().await.unwrap();
        }
        seen
    });
    let client = warmpool::Client::connect_to(&path).await.unwrap();
    // The invocation's name goes out in front of the request, so the 57P05 comes where its Ok
    // was due.
    client.with_invocation("req-1", None).ping().await.expect(
        "a session closed before it read the request is replaced, and the request sent again",
    );
    drop(client);
    let seen = tokio::time::timeout(GUARD, stand_in)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&seen[..], [Request::Invocation(i), Request::Ping] if i.request_id == "req-1"),
        "{seen:?}"
    );
}
