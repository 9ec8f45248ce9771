//! Garbage on some sessions while another works: the extension answers each bad session with
//! an error or a close, and the working session never notices.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use warmpool::protocol::{Hello, Request, PROTOCOL_VERSION};
use warmpool_tests::pg::process_alive;
use warmpool_tests::{Extension, PgServer};

/// A guard against a hung extension, not a timing assertion.
const GUARD: Duration = Duration::from_secs(30);

/// xorshift64*: reproducible garbage without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One bad session: sometimes a good Hello first, then random bytes, sometimes with a frame
/// header in front so the body parsers see them; reads whatever comes back until the close.
async fn bad_session(ext_socket: std::path::PathBuf, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut stream = UnixStream::connect(&ext_socket).await.unwrap();
    let mut out = Vec::new();
    if rng.next() & 1 == 0 {
        let mut hello = BytesMut::new();
        Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: "garbage".into(),
        })
        .encode(&mut hello);
        out.extend_from_slice(&hello);
    }
    let len = (rng.next() % 200) as usize;
    let body = rng.bytes(len);
    if rng.next() & 1 == 0 {
        let tags = b"HPEQBCRYXLZ\0";
        out.push(tags[(rng.next() % tags.len() as u64) as usize]);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    }
    out.extend_from_slice(&body);
    // The extension may close before everything is written; that is one of the outcomes.
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(GUARD, stream.read_to_end(&mut sink))
        .await
        .expect("the extension neither answered nor closed a garbage session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_sessions_leave_a_working_session_alone() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = warmpool::Client::connect_to(ext.socket()).await.unwrap();
    client
        .batch_execute("CREATE TABLE g (n int PRIMARY KEY)")
        .await
        .unwrap();
    let socket = ext.socket().to_owned();
    let spray = tokio::spawn(async move {
        for round in 0..100u64 {
            let sessions = (0..8).map(|k| bad_session(socket.clone(), round * 8 + k + 1));
            futures_util::future::join_all(sessions).await;
        }
    });
    let mut n = 0;
    while !spray.is_finished() || n < 200 {
        client
            .execute("INSERT INTO g VALUES ($1)", &[&n])
            .await
            .unwrap_or_else(|e| panic!("insert {n} failed during the garbage: {e}"));
        n += 1;
    }
    spray.await.expect("a garbage session panicked");
    let count: i64 = client
        .query_one("SELECT count(*) FROM g", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, i64::from(n));
    assert!(
        process_alive(ext.pid()),
        "the extension died:\n{}",
        ext.logs()
    );
    assert!(!ext.logs().contains("panicked"), "{}", ext.logs());
}
