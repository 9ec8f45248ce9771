//! A long-lived environment: one client session that names a new invocation before each
//! statement, hundreds of thousands of times, as `Client::for_invocation` does on every
//! invocation of a function that keeps its client. Nothing the extension keeps for the session
//! may grow with the number of invocations: not its memory, not its log lines, and closing the
//! session must not take the extension down.
//!
//! The CI runs 200,000 invocations; `WARMPOOL_LONG_SESSION_INVOCATIONS` sets another count.

use std::time::Duration;

use warmpool_tests::ext::rss_kib;
use warmpool_tests::pg::process_alive;
use warmpool_tests::{Extension, PgServer};

/// Where memory is measured first: past the pool's and the allocator's warm-up.
const FIRST_MEASURE: usize = 10_000;
/// How much the resident set may move between the first and the last measure. A chain of
/// invocation spans grew it by about 300 bytes an invocation (+57 MB over 190,000).
const RSS_SLACK_KIB: u64 = 4 * 1024;
/// The longest log line allowed: one invocation's ids and one event's fields.
const LONGEST_LINE: usize = 1024;
/// A guard against a hung run, never a timing assertion.
const GUARD: Duration = Duration::from_secs(600);

fn invocations() -> usize {
    std::env::var("WARMPOOL_LONG_SESSION_INVOCATIONS")
        .ok()
        .map(|v| {
            v.parse()
                .expect("WARMPOOL_LONG_SESSION_INVOCATIONS must be a number")
        })
        .unwrap_or(200_000)
}

/// A statement the database refuses, in invocation `i`: the extension logs it (at debug, for
/// the session module) inside that invocation's span, which is the line whose length is checked.
async fn logged_refusal(db: &warmpool::Client, i: usize) {
    let e = db
        .with_invocation(format!("req-{i}"), None)
        .query_one("SELECT 1 / 0", &[])
        .await
        .expect_err("division by zero");
    assert_eq!(e.code().map(|c| c.code()), Some("22012"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_carries_hundreds_of_thousands_of_invocations() {
    let total = invocations();
    assert!(
        total > FIRST_MEASURE,
        "at least {FIRST_MEASURE} invocations"
    );
    let pg = PgServer::start();
    // Text lines print every span an event is in: a chain of invocation spans shows there
    // first. Only the session module's debug lines, so the log holds a few lines and not one per
    // statement.
    let mut ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_LOG", "info,warmpool_extension::session=debug"),
            ("WARMPOOL_LOG_FORMAT", "text"),
            ("WARMPOOL_METRICS", "false"),
        ],
    );
    let pid = ext.pid();
    let db = ext.client().await;

    let run = async {
        let mut first_rss = 0;
        for i in 0..total {
            let invocation = db.with_invocation(format!("req-{i}"), None);
            if i % 10 == 0 {
                // SQL text never seen before, as a function that builds its SQL sends: both
                // statement caches (the client's, and the extension's on each connection) must
                // forget as much as they learn.
                let row = invocation
                    .query_one(format!("SELECT $1::int8 AS c{i}").as_str(), &[&(i as i64)])
                    .await
                    .unwrap_or_else(|e| panic!("invocation {i}: {e}"));
                assert_eq!(row.get::<_, i64>(0), i as i64);
            } else {
                // The rest ask for their counters, which the extension answers without the
                // database: each still names its invocation and runs in its span, at a fraction
                // of a statement's cost, which keeps this test's 200,000 within CI's time.
                let stats = invocation
                    .stats()
                    .await
                    .unwrap_or_else(|e| panic!("invocation {i}: {e}"));
                assert_eq!(stats.request_id, format!("req-{i}"));
            }
            if i + 1 == FIRST_MEASURE {
                logged_refusal(&db, i).await;
                first_rss = rss_kib(pid);
            }
        }
        logged_refusal(&db, total).await;
        (first_rss, rss_kib(pid))
    };
    let (first_rss, last_rss) = tokio::time::timeout(GUARD, run)
        .await
        .expect("the invocations did not finish");
    assert!(
        db.cached_statements() <= warmpool::STATEMENT_CACHE_SIZE,
        "the client remembers {} statements",
        db.cached_statements()
    );
    eprintln!(
        "extension RSS: {first_rss} KiB after {FIRST_MEASURE} invocations, {last_rss} KiB after \
         {total}"
    );
    assert!(
        last_rss <= first_rss + RSS_SLACK_KIB,
        "the extension grew from {first_rss} KiB after {FIRST_MEASURE} invocations to \
         {last_rss} KiB after {total}"
    );

    // Closing the session drops everything it held.
    drop(db);
    let db = ext.client().await;
    let row = db
        .query_one("SELECT 'still serving'::text", &[])
        .await
        .unwrap_or_else(|e| panic!("after the long session closed: {e}; log:\n{}", ext.logs()));
    assert_eq!(row.get::<_, &str>(0), "still serving");
    assert!(process_alive(pid), "the extension exited");
    drop(db);

    // The log is read on another thread: wait until the last refusal's line is in.
    ext.wait_for_log(&format!("req-{total}"), Duration::from_secs(30));
    let out = ext.stdout();
    let refusals: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("the database refused a statement"))
        .collect();
    assert_eq!(refusals.len(), 2, "two refusals logged:\n{out}");
    assert!(
        refusals[1].contains(&format!("req-{total}")),
        "the line names its invocation: {}",
        refusals[1]
    );
    assert!(
        !refusals[1].contains(&format!("req-{}", total - 1)),
        "the line names no earlier invocation: {:.300}",
        refusals[1]
    );
    let longest = out.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest <= LONGEST_LINE,
        "a log line of {longest} bytes: {:.300}",
        out.lines().max_by_key(|l| l.len()).unwrap_or_default()
    );
    let status = ext.terminate();
    assert!(status.success(), "the extension stopped with {status}");
}

/// The same through raw frames, with nothing but Invocation frames: each names a new invocation
/// while the session's requests run in the previous one's span.
#[tokio::test]
async fn a_session_of_invocation_frames_alone_ends_cleanly() {
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use warmpool::protocol::{
        Hello, Invocation, Request, Response, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
    };

    const FRAMES: usize = 100_000;
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_LOG", "info")]);
    let pid = ext.pid();
    let mut stream = tokio::net::UnixStream::connect(ext.socket())
        .await
        .expect("connect");
    let mut out = BytesMut::new();
    Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        client: "long-session-test".into(),
    })
    .encode(&mut out);
    for i in 0..FRAMES {
        Request::Invocation(Invocation {
            request_id: format!("req-{i}"),
            trace_id: String::new(),
        })
        .encode(&mut out);
    }
    Request::Terminate.encode(&mut out);
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(&out).await.expect("write");
    };
    let mut answers = BytesMut::new();
    let read = async {
        let until_closed =
            async { while reader.read_buf(&mut answers).await.expect("read") != 0 {} };
        tokio::time::timeout(GUARD, until_closed)
            .await
            .expect("the extension did not close the session");
    };
    tokio::join!(write, read);
    let mut oks = 0;
    while let Some(frame) = Response::decode(&mut answers, DEFAULT_MAX_FRAME).expect("a frame") {
        match frame {
            Response::HelloOk(_) => {}
            Response::Ok => oks += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(oks, FRAMES, "one Ok per Invocation frame");

    let db = ext.client().await;
    let row = db
        .query_one("SELECT 2::int4", &[])
        .await
        .unwrap_or_else(|e| panic!("after the session closed: {e}; log:\n{}", ext.logs()));
    assert_eq!(row.get::<_, i32>(0), 2);
    assert!(process_alive(pid), "the extension exited");
}

/// A request id far longer than any Lambda's is cut before it is kept: it rides on every log line
/// of its invocation and keys that invocation's counters.
#[tokio::test]
async fn an_oversized_request_id_is_cut() {
    let pg = PgServer::start();
    let mut ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_LOG", "info,warmpool_extension::session=debug"),
            ("WARMPOOL_LOG_FORMAT", "text"),
        ],
    );
    let db = ext.client().await;
    let id = "r".repeat(100_000);
    let named = db.with_invocation(id.as_str(), Some(&"t".repeat(100_000)));
    let e = named
        .query_one("SELECT 1 / 0", &[])
        .await
        .expect_err("division by zero");
    assert_eq!(e.code().map(|c| c.code()), Some("22012"), "{e}");
    let stats = named.stats().await.expect("stats");
    assert!(
        stats.request_id.len() == warmpool::protocol::MAX_REQUEST_ID
            && id.starts_with(&stats.request_id),
        "the extension kept {} bytes of the request id",
        stats.request_id.len()
    );
    assert_eq!(stats.errors, vec![("22".to_owned(), 1)]);
    ext.wait_for_log("the database refused a statement", GUARD);
    let out = ext.stdout();
    let line = out
        .lines()
        .find(|l| l.contains("the database refused a statement"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{out:.2000}"));
    assert!(
        line.len() <= warmpool::protocol::MAX_REQUEST_ID + warmpool::protocol::MAX_TRACE_ID + 512,
        "a log line of {} bytes",
        line.len()
    );
}
