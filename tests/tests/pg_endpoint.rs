//! warmpool's PostgreSQL-protocol endpoint, driven by tokio-postgres and by hand-made packets:
//! a session healed after its server connection died while the environment was frozen (its
//! `SET` still in force, its prepared statement still there), a session whose open transaction
//! cannot be healed (a clear 08006, nothing committed), a database other than the pool's, the
//! reset of a connection a client left, and bad input of every kind, after which other sessions
//! keep working. On the TCP listener: tokio-postgres with the endpoint's password, a wrong
//! password refused with 28P01 before anything else is looked at, and the listener off by
//! default and refused without its password.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::NoTls;
use warmpool_tests::{ext, Extension, PgServer};

/// A guard against a hung test, never a timing assertion.
const GUARD: Duration = Duration::from_secs(30);

fn socket(ext: &Extension) -> std::path::PathBuf {
    ext.dir().join(".s.PGSQL.5432")
}

async fn connect(ext: &Extension, pg: &PgServer) -> tokio_postgres::Client {
    connect_as(ext, "a_function", pg.dbname()).await.unwrap()
}

async fn connect_as(
    ext: &Extension,
    user: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let config = format!(
        "host={} port=5432 user={user} dbname={dbname}",
        ext.dir().display()
    );
    let (client, connection) = tokio_postgres::connect(&config, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

#[tokio::test]
async fn a_session_whose_connection_died_while_frozen_goes_on_with_its_settings_and_statements() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = connect(&ext, &pg).await;
    client
        .batch_execute(
            "CREATE SCHEMA healing; CREATE TABLE healing.t (a int); \
             INSERT INTO healing.t VALUES (42); SET search_path TO healing, public",
        )
        .await
        .unwrap();
    let stmt = client
        .prepare("SELECT a, current_setting('search_path'), pg_backend_pid() FROM t")
        .await
        .unwrap();
    let row = client.query_one(&stmt, &[]).await.unwrap();
    let before: i32 = row.get(2);
    {
        // The environment frozen while its connection is ended, as a server's
        // idle_session_timeout or a failover would end it.
        let _frozen = ext.freeze();
        pg.terminate_backend(before.into());
    }
    let row = tokio::time::timeout(GUARD, client.query_one(&stmt, &[]))
        .await
        .expect("no answer")
        .unwrap_or_else(|e| panic!("the healed statement failed: {e}\n{}", ext.logs()));
    let (a, path, after): (i32, String, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(a, 42);
    assert_eq!(path, "healing, public", "the session's SET was lost");
    assert_ne!(after, before, "the statement ran on the ended connection");
    assert!(
        ext.logs().contains("restored the session on a new one"),
        "{}",
        ext.logs()
    );
}

#[tokio::test]
async fn a_transaction_open_when_the_connection_died_ends_the_session_with_08006_and_commits_nothing(
) {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = connect(&ext, &pg).await;
    client
        .batch_execute("CREATE TABLE t (a int)")
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap();
    // Held, so that tokio-postgres does not close it (a request of its own) after the thaw.
    let backend_pid = client.prepare("SELECT pg_backend_pid()").await.unwrap();
    let pid: i32 = client.query_one(&backend_pid, &[]).await.unwrap().get(0);
    {
        let _frozen = ext.freeze();
        pg.terminate_backend(pid.into());
    }
    let err = tokio::time::timeout(GUARD, client.batch_execute("COMMIT"))
        .await
        .expect("no answer")
        .expect_err("a COMMIT on a connection that died was reported committed");
    assert_eq!(code(&err), Some("08006"), "{err}\n{}", ext.logs());
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("open transaction"), "{message}");
    let other = connect(&ext, &pg).await;
    let n: i64 = other
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the transaction's row was committed");
}

#[tokio::test]
async fn temporary_tables_and_listen_are_named_when_they_block_a_heal() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = connect(&ext, &pg).await;
    client
        .batch_execute("CREATE TEMP TABLE scratch (a int); LISTEN jobs")
        .await
        .unwrap();
    let backend_pid = client.prepare("SELECT pg_backend_pid()").await.unwrap();
    let pid: i32 = client.query_one(&backend_pid, &[]).await.unwrap().get(0);
    {
        let _frozen = ext.freeze();
        pg.terminate_backend(pid.into());
    }
    let err = client
        .simple_query("SELECT 1")
        .await
        .expect_err("a session that lost its temporary table went on");
    assert_eq!(code(&err), Some("08006"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("temporary tables") && message.contains("LISTEN"),
        "{message}"
    );
}

#[tokio::test]
async fn a_client_that_leaves_gives_its_connection_back_reset() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_SIZE", "1")]);
    let first = connect(&ext, &pg).await;
    first
        .batch_execute("SET work_mem = '7MB'; CREATE TEMP TABLE left_behind (a int)")
        .await
        .unwrap();
    first.prepare("SELECT 1").await.unwrap();
    let pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(first);
    // The pool's only connection, once given back.
    let second = tokio::time::timeout(GUARD, connect(&ext, &pg))
        .await
        .expect("the connection never came back");
    let row = second
        .query_one(
            "SELECT pg_backend_pid(), current_setting('work_mem'), \
             (SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT 1'), \
             to_regclass('pg_temp.left_behind') IS NULL",
            &[],
        )
        .await
        .unwrap();
    let (again, work_mem, prepared, no_temp): (i32, String, i64, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(again, pid, "the connection was not reused");
    assert_ne!(
        work_mem, "7MB",
        "a setting of the last client is still in force"
    );
    assert_eq!(
        prepared, 0,
        "the last client's statements are still prepared"
    );
    assert!(no_temp, "the last client's temporary table is still there");
}

#[tokio::test]
async fn a_database_other_than_the_pools_is_refused_by_name() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let Err(err) = connect_as(&ext, "x", "elsewhere").await else {
        panic!("a session on another database was served");
    };
    assert_eq!(code(&err), Some("3D000"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("elsewhere") && message.contains(pg.dbname()),
        "{message}"
    );
}

/// Sends `bytes` on a new connection to the endpoint and returns what comes back before the
/// endpoint closes it.
async fn exchange(path: &Path, bytes: &[u8], close_after: bool) -> Vec<u8> {
    let mut s = UnixStream::connect(path).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close_after {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("the endpoint neither answered nor closed")
        .unwrap();
    out
}

fn startup(user: &str, db: &str, version: i32) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

/// The messages in `bytes` (after the one-byte answer to an SSLRequest, if any): tag and body.
fn messages(mut bytes: &[u8]) -> Vec<(u8, &[u8])> {
    if bytes.first() == Some(&b'N') {
        bytes = &bytes[1..];
    }
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let Some(body) = bytes.get(5..1 + len) else {
            break;
        };
        out.push((bytes[0], body));
        bytes = &bytes[1 + len..];
    }
    out
}

/// The SQLSTATE of the first ErrorResponse in `bytes`.
fn error_code(bytes: &[u8]) -> Option<String> {
    let (_, body) = messages(bytes).into_iter().find(|(t, _)| *t == b'E')?;
    let mut fields = body;
    while let Some((&field, rest)) = fields.split_first() {
        let end = rest.iter().position(|&b| b == 0)?;
        if field == b'C' {
            return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
        }
        fields = &rest[end + 1..];
    }
    None
}

fn ready(bytes: &[u8]) -> bool {
    messages(bytes).iter().any(|(t, _)| *t == b'Z')
}

#[tokio::test]
async fn bad_input_gets_an_error_or_a_close_and_other_sessions_keep_working() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_MAX_FRAME_BYTES", "65536")]);
    let path = socket(&ext);
    let bystander = connect(&ext, &pg).await;

    // A length below the minimum, and one over PostgreSQL's startup limit.
    for len in [3i32, 1_000_000] {
        let out = exchange(&path, &len.to_be_bytes(), false).await;
        assert_eq!(error_code(&out).as_deref(), Some("08P01"), "{len}: {out:?}");
    }
    // Protocol 2.0.
    let out = exchange(&path, &startup("u", pg.dbname(), 2 << 16), false).await;
    assert_eq!(error_code(&out).as_deref(), Some("0A000"), "{out:?}");
    // A startup packet with no user.
    let mut no_user = 196_608i32.to_be_bytes().to_vec();
    no_user.extend_from_slice(b"database\0app\0\0");
    let mut m = ((no_user.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend_from_slice(&no_user);
    let out = exchange(&path, &m, false).await;
    assert_eq!(error_code(&out).as_deref(), Some("08P01"), "{out:?}");
    // Half a startup packet, then the client stops sending: the handshake timeout closes it
    // (or the close of its write side does).
    let out = exchange(&path, &startup("u", pg.dbname(), 196_608)[..9], true).await;
    assert!(!ready(&out), "half a start-up was served: {out:?}");

    // After a good start-up: a message longer than the limit, then a length below 4.
    for bad in [
        [&b"Q"[..], &1_000_000i32.to_be_bytes()].concat(),
        [&b"Q"[..], &2i32.to_be_bytes()].concat(),
    ] {
        let mut bytes = startup("u", pg.dbname(), 196_608);
        bytes.extend_from_slice(&bad);
        let out = exchange(&path, &bytes, false).await;
        assert!(ready(&out), "no ReadyForQuery after the start-up: {out:?}");
        assert_eq!(error_code(&out).as_deref(), Some("08P01"), "{out:?}");
    }
    // SSLRequest is answered N, and the start-up goes on.
    let mut bytes = [8i32.to_be_bytes(), 80_877_103i32.to_be_bytes()].concat();
    bytes.extend_from_slice(&startup("u", pg.dbname(), 196_608));
    bytes.extend_from_slice(b"X\0\0\0\x04");
    let out = exchange(&path, &bytes, false).await;
    assert_eq!(out.first(), Some(&b'N'), "{out:?}");
    assert!(error_code(&out).is_none(), "{out:?}");

    let n: i32 = bystander.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    assert!(!ext.logs().contains("panicked"));
}

/// The endpoint's password in the TCP tests; not the database's.
const TCP_PASSWORD: &str = "endpoint-pw-4b1d";

async fn connect_tcp(
    port: u16,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let config =
        format!("host=127.0.0.1 port={port} user={user} password={password} dbname={dbname}");
    let (client, connection) = tokio_postgres::connect(&config, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test]
async fn tokio_postgres_over_tcp_with_the_endpoints_password_is_served() {
    let pg = PgServer::start();
    let (ext, port) = Extension::start_with_pg_tcp(&pg, TCP_PASSWORD, &[]);
    // tokio-postgres checks the server's SCRAM signature: a connect proves the endpoint knows
    // the password too.
    let client = connect_tcp(port, "a_jvm_function", TCP_PASSWORD, pg.dbname())
        .await
        .unwrap_or_else(|e| panic!("connect over TCP: {e}\n{}", ext.logs()));
    let row = client
        .query_one("SELECT current_user::text, $1::int + 1", &[&41i32])
        .await
        .unwrap();
    let (user, n): (String, i32) = (row.get(0), row.get(1));
    assert_eq!(user, pg.user(), "the session runs as the pool's user");
    assert_eq!(n, 42);
    // The Unix socket is served beside it, with no password.
    let local = connect(&ext, &pg).await;
    let n: i32 = local.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    // A cancel over TCP reaches the statement of a TCP session.
    let token = client.cancel_token();
    let sleeping = client.query_one("SELECT pg_sleep(30) AS tcp_cancel_probe", &[]);
    let cancel = async {
        let probe = "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event = 'PgSleep' AND query LIKE '%AS tcp_cancel_probe'";
        while pg.superuser_psql(probe) != "1" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        token.cancel_query(NoTls).await.unwrap();
    };
    let (slept, ()) = tokio::time::timeout(GUARD, async { tokio::join!(sleeping, cancel) })
        .await
        .expect("the cancel never landed");
    let err = slept.expect_err("the statement was not cancelled");
    assert_eq!(code(&err), Some("57014"), "{err}");
    assert!(
        !ext.stdout().contains(TCP_PASSWORD),
        "the endpoint's password is in the log"
    );
}

#[tokio::test]
async fn a_wrong_password_over_tcp_is_refused_with_28p01_before_the_database_is_looked_at() {
    let pg = PgServer::start();
    let (ext, port) = Extension::start_with_pg_tcp(&pg, TCP_PASSWORD, &[]);
    for dbname in [pg.dbname(), "no_such_database"] {
        let Err(err) = connect_tcp(port, "someone", "not-the-password", dbname).await else {
            panic!("a wrong password was accepted");
        };
        assert_eq!(code(&err), Some("28P01"), "{err}\n{}", ext.logs());
        assert_eq!(
            err.as_db_error().unwrap().message(),
            "password authentication failed for user \"someone\""
        );
    }
    // The database's own password is not the endpoint's either.
    let Err(err) = connect_tcp(port, pg.user(), pg.password(), pg.dbname()).await else {
        panic!("the database's password was accepted on the endpoint");
    };
    assert_eq!(code(&err), Some("28P01"), "{err}");

    // By hand: an SSLRequest is answered N, the StartupMessage with AuthenticationSASL
    // offering SCRAM-SHA-256 only, and a message other than a SASL response ends it with 08P01.
    let mut bytes = [8i32.to_be_bytes(), 80_877_103i32.to_be_bytes()].concat();
    bytes.extend_from_slice(&startup("u", pg.dbname(), 196_608));
    bytes.extend_from_slice(b"Q\0\0\0\x0dSELECT 1\0");
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("the endpoint neither answered nor closed")
        .unwrap();
    assert_eq!(out.first(), Some(&b'N'), "{out:?}");
    let sasl = messages(&out);
    assert_eq!(sasl[0].0, b'R', "{out:?}");
    assert_eq!(sasl[0].1, b"\0\0\0\x0aSCRAM-SHA-256\0\0", "{out:?}");
    assert_eq!(error_code(&out).as_deref(), Some("08P01"), "{out:?}");
    assert!(
        !ready(&out),
        "a client that never authenticated was served: {out:?}"
    );

    let logs = ext.stdout();
    assert!(!logs.contains(TCP_PASSWORD) && !logs.contains("not-the-password"));
}

/// The TCP listening sockets process `pid` holds, from its descriptors and the kernel's table.
fn tcp_listeners(pid: u32) -> usize {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .flat_map(|t| {
            std::fs::read_to_string(format!("/proc/{pid}/net/{t}"))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN; the tenth field is the socket's inode.
            f.get(3) == Some(&"0A") && f.get(9).is_some_and(|i| inodes.iter().any(|x| x == i))
        })
        .count()
}

#[tokio::test]
async fn the_tcp_listener_is_off_by_default_and_refused_without_its_password() {
    let pg = PgServer::start();
    {
        let ext = Extension::start(&pg, &[]);
        let _ = connect(&ext, &pg).await;
        assert_eq!(tcp_listeners(ext.pid()), 0, "a TCP listener by default");
    }
    {
        let (ext, _) = Extension::start_with_pg_tcp(&pg, TCP_PASSWORD, &[]);
        assert_eq!(
            tcp_listeners(ext.pid()),
            1,
            "the check above cannot see a listener"
        );
    }
    // A port without the password: the extension does not start, and says which settings.
    let mut env = pg.env();
    env.push(("WARMPOOL_PG_SOCKET_DIR".into(), String::new()));
    env.push((
        "WARMPOOL_SOCKET".into(),
        pg.temp_dir().join("tcp-refused.sock").display().to_string(),
    ));
    env.push(("WARMPOOL_PG_TCP_PORT".into(), "6543".into()));
    let child = std::process::Command::new(ext::binary())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(GUARD) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("the extension served with a TCP port and no password");
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARMPOOL_PG_TCP_PORT") && stderr.contains("WARMPOOL_PG_PASSWORD"),
        "{stderr}"
    );
}

/// A message as a client frames it.
fn frontend(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads from `s` until a message with `tag` has arrived; returns every message read.
async fn read_until(s: &mut UnixStream, buf: &mut Vec<u8>, tag: u8) -> Vec<(u8, Vec<u8>)> {
    loop {
        let got: Vec<(u8, Vec<u8>)> = messages(buf)
            .into_iter()
            .map(|(t, b)| (t, b.to_vec()))
            .collect();
        if got.iter().any(|(t, _)| *t == tag) {
            buf.clear();
            return got;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(GUARD, s.read(&mut chunk))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "the endpoint closed the session: {got:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A cursor read in steps (Execute with a row limit, then Flush, no Sync: what postgres.js and
/// pgJDBC do for large results) leaves the server in the middle of a pipeline. However long the
/// client waits between steps, the endpoint must not check or heal the connection there: a
/// check would end the pipeline's implicit transaction and its portal with it.
#[tokio::test]
async fn a_portal_read_in_steps_survives_a_pause_between_them() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("WARMPOOL_CHECK_AFTER_IDLE_MS", "20")]);
    let mut s = UnixStream::connect(socket(&ext)).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(&startup("u", pg.dbname(), 196_608))
        .await
        .unwrap();
    read_until(&mut s, &mut buf, b'Z').await;
    let mut first = frontend(b'P', b"\0SELECT generate_series(1, 3)\0\0\0");
    first.extend(frontend(b'B', b"\0\0\0\0\0\0\0\0"));
    first.extend(frontend(b'E', b"\0\0\0\0\x01"));
    first.extend(frontend(b'H', b""));
    s.write_all(&first).await.unwrap();
    let got = read_until(&mut s, &mut buf, b's').await;
    assert_eq!(got.iter().filter(|(t, _)| *t == b'D').count(), 1, "{got:?}");
    // The pause is the input under test: longer than WARMPOOL_CHECK_AFTER_IDLE_MS.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut next = frontend(b'E', b"\0\0\0\0\x01");
    next.extend(frontend(b'H', b""));
    s.write_all(&next).await.unwrap();
    let got = read_until(&mut s, &mut buf, b's').await;
    assert!(
        !got.iter().any(|(t, _)| *t == b'E'),
        "the portal was lost in the pause: {got:?}"
    );
    assert_eq!(got.iter().filter(|(t, _)| *t == b'D').count(), 1, "{got:?}");
    s.write_all(&frontend(b'S', b"")).await.unwrap();
    read_until(&mut s, &mut buf, b'Z').await;
}

/// Sessions are bounded as on the extension's own socket: past `WARMPOOL_MAX_SESSIONS`, a client
/// waits up to the wait timeout for one to end, then gets 53300 naming the setting.
#[tokio::test]
async fn sessions_past_the_limit_are_refused_by_name_once_the_wait_runs_out() {
    let pg = PgServer::start();
    let ext = Extension::start(
        &pg,
        &[
            ("WARMPOOL_MAX_SESSIONS", "1"),
            ("WARMPOOL_WAIT_TIMEOUT_MS", "300"),
        ],
    );
    let first = connect(&ext, &pg).await;
    let Err(err) = connect_as(&ext, "x", pg.dbname()).await else {
        panic!("a session past WARMPOOL_MAX_SESSIONS was served");
    };
    assert_eq!(code(&err), Some("53300"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("WARMPOOL_MAX_SESSIONS"), "{message}");
    drop(first);
    // The place is free once the first session has ended; connecting is retried until then.
    let until = std::time::Instant::now() + GUARD;
    let second = loop {
        match connect_as(&ext, "x", pg.dbname()).await {
            Ok(c) => break c,
            Err(e) if code(&e) == Some("53300") && std::time::Instant::now() < until => {}
            Err(e) => panic!("{e}"),
        }
    };
    let n: i32 = second.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}
