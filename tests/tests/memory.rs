//! The extension gives memory back: after a burst of sessions, or after a session carried a
//! large frame, its resident set returns to within twice its resting size. On a 128 MB Lambda
//! function the extension shares the memory with the function, so what a burst takes must not
//! stay taken.
//!
//! Each test measures the real extension's `VmRSS` from /proc at rest, drives the load, then
//! polls until the resident set is back within bound. The poll's limit is generous and is no
//! claim about speed: a process that keeps the memory never gets there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use warmpool_tests::{Extension, PgServer};

/// Sessions open at once in each round of the burst: enough to take the resident set well past
/// twice its rest (each open session holds some tens of KiB), few enough for a quick test.
/// `warmpool-bench --memory` runs 6 rounds of 1,000.
const SESSIONS: usize = 500;
/// Rounds of the burst.
const ROUNDS: usize = 2;
/// How long the resident set may take to come back. The extension gives memory back within a
/// second or two of the sessions closing; this only stops a failing test from hanging.
const SETTLE: Duration = Duration::from_secs(15);

/// The extension's settings for these tests: info logs (debug would log every session twice) and
/// room for the burst's sessions.
fn start(pg: &PgServer) -> Extension {
    Extension::start(
        pg,
        &[
            ("WARMPOOL_LOG", "info"),
            ("WARMPOOL_MAX_SESSIONS", "1024"),
            ("WARMPOOL_WAIT_TIMEOUT_MS", "30000"),
        ],
    )
}

/// The resident set at rest: after a first statement has warmed the pool, the allocator and the
/// client's session, once two readings a little apart agree.
async fn resting_rss(ext: &Extension) -> u64 {
    let mut last = ext.rss_kib();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = ext.rss_kib();
        if now.abs_diff(last) < 64 {
            return now;
        }
        last = now;
    }
    last
}

/// Polls until the resident set is at most `bound` KiB; returns the last reading.
async fn settles_within(ext: &Extension, bound: u64) -> u64 {
    let started = Instant::now();
    loop {
        let rss = ext.rss_kib();
        if rss <= bound || started.elapsed() > SETTLE {
            return rss;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_to_rest_after_a_burst_of_sessions() {
    let pg = PgServer::start();
    let ext = start(&pg);
    // The function's own client keeps its session through the burst, as a long-lived one does.
    let function = ext.client().await;
    let one: i32 = function.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let rest = resting_rss(&ext).await;

    let mut peak = rest;
    for round in 0..ROUNDS {
        // Every session connects and runs a statement, then waits for the others, so all of a
        // round's sessions are open at once when the resident set is read.
        let all_done = Arc::new(Barrier::new(SESSIONS + 1));
        let may_close = Arc::new(Barrier::new(SESSIONS + 1));
        let mut tasks = Vec::with_capacity(SESSIONS);
        for i in 0..SESSIONS {
            let socket = ext.socket().to_owned();
            let (all_done, may_close) = (all_done.clone(), may_close.clone());
            tasks.push(tokio::spawn(async move {
                let outcome = async {
                    let client = warmpool::Client::connect_to(&socket).await?;
                    let n = i as i32;
                    let row = client.query_one("SELECT $1::int4 + 1", &[&n]).await?;
                    Ok::<_, warmpool::Error>((client, row.get::<_, i32>(0) == n + 1))
                }
                .await;
                all_done.wait().await;
                may_close.wait().await;
                outcome.map(|(_client, right)| right)
            }));
        }
        all_done.wait().await;
        peak = peak.max(ext.rss_kib());
        may_close.wait().await;
        for task in tasks {
            match task.await.unwrap() {
                Ok(right) => assert!(right, "round {round}: a session got a wrong answer"),
                Err(e) => panic!("round {round}: a session failed: {e}"),
            }
        }
    }
    // The function's session is still served after the burst.
    let two: i32 = function.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);

    let after = settles_within(&ext, 2 * rest).await;
    eprintln!(
        "resident set: {rest} KiB at rest, {peak} KiB at the burst's peak, {after} KiB after"
    );
    assert!(
        peak > rest + rest / 2,
        "the burst did not raise the resident set ({rest} KiB at rest, {peak} KiB at its \
         peak): the test measures nothing"
    );
    assert!(
        after <= 2 * rest,
        "the extension kept the burst's memory: {rest} KiB at rest, {peak} KiB at the peak of \
         {ROUNDS} rounds of {SESSIONS} sessions, still {after} KiB {} s after they closed",
        SETTLE.as_secs()
    );
}

/// Sessions that each carry large frames and then stay open.
const LARGE_SESSIONS: usize = 100;
/// The size of those frames' value.
const LARGE: usize = 512 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_no_large_buffer_after_a_large_frame() {
    let pg = PgServer::start();
    let ext = start(&pg);
    let client = ext.client().await;
    // The value lives in the state store from the start, so the rest counts it.
    let big = bytes::Bytes::from(vec![b'x'; LARGE]);
    client.state().put("big", big.clone(), None).await.unwrap();
    let rest = resting_rss(&ext).await;

    // Each session sends one large request frame (the value, put again) and gets one large
    // response frame (the value, read back), then stays open and idle, as a function's client
    // keeps its sessions. The state store holds one copy of the value throughout, so what the
    // sessions keep is their own.
    let mut sessions = Vec::with_capacity(LARGE_SESSIONS);
    for _ in 0..LARGE_SESSIONS {
        let session = ext.client().await;
        session.state().put("big", big.clone(), None).await.unwrap();
        let value = session.state().get("big").await.unwrap();
        assert_eq!(value.as_deref(), Some(&big[..]));
        sessions.push(session);
    }
    let peak = ext.rss_kib();
    let after = settles_within(&ext, 2 * rest).await;
    eprintln!(
        "resident set: {rest} KiB at rest, {peak} KiB after the large frames, {after} KiB after"
    );
    assert!(
        after <= 2 * rest,
        "the sessions kept their large buffers: {rest} KiB at rest, {peak} KiB after \
         {LARGE_SESSIONS} sessions sent and received a {} KiB frame each, still {after} KiB {} s \
         later with the sessions open",
        LARGE / 1024,
        SETTLE.as_secs()
    );
    // The sessions are still served.
    for session in &sessions {
        assert_eq!(
            session.state().get("big").await.unwrap().map(|v| v.len()),
            Some(LARGE)
        );
    }
}
