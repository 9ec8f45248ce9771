//! The backend connection against a real PostgreSQL: every `sslmode`, SCRAM with and without
//! channel binding, authentication failures, a server that goes away in the middle of an
//! answer, errors inside pipelines, the transaction status, text and binary results, statement
//! names, cancellation, and reading past the answer of a request whose reader went away.
//!
//! The test server accepts TCP only as `hostssl` with SCRAM, so a connection over TCP that
//! succeeds has used TLS and SCRAM; its Unix socket trusts everyone unless a test says
//! otherwise.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use warmpool_extension::backend::connect::{connect, ChannelBinding, Params, Target};
use warmpool_extension::backend::query::{values, Param};
use warmpool_extension::backend::{Backend, Error, Reply, Simple, Statement, TxStatus};
use warmpool_extension::config::Config;
use warmpool_extension::tls::{self, Connector};
use warmpool_tests::PgServer;

/// What any one step may take before the test calls it a hang.
const LIMIT: Duration = Duration::from_secs(30);

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Row values as the server sent them, NULL as `None`.
type Rows = Vec<Vec<Option<Vec<u8>>>>;

/// Fails the test if `f` does not finish within [`LIMIT`].
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}

/// The connector for `pg`'s settings with `overrides` (an empty value removes the variable).
fn connector(pg: &PgServer, overrides: &[(&str, &str)]) -> Connector {
    let mut vars = pg.env();
    for (k, v) in overrides {
        vars.retain(|(name, _)| name != k);
        if !v.is_empty() {
            vars.push(((*k).to_owned(), (*v).to_owned()));
        }
    }
    let config = Config::from_lookup(|k| {
        vars.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    })
    .expect("configuration");
    tls::connector(config.ssl_mode, &config.root_certs).expect("TLS connector")
}

/// `pg` over TCP as its host name, connecting to 127.0.0.1.
fn tcp(pg: &PgServer) -> Target {
    tcp_as(pg, pg.host())
}

/// `pg` over TCP, its certificate verified for `host`.
fn tcp_as(pg: &PgServer, host: &str) -> Target {
    Target::Tcp {
        host: host.to_owned(),
        hostaddr: Some(LOOPBACK),
        port: pg.port(),
    }
}

fn unix(pg: &PgServer) -> Target {
    Target::Unix(pg.socket_dir(), pg.port())
}

/// Connects as the app role with `password`.
async fn open_with(
    pg: &PgServer,
    target: Target,
    tls: &Connector,
    channel_binding: ChannelBinding,
    password: &str,
) -> Result<Backend, Error> {
    let params = Params {
        target,
        user: pg.user(),
        password: Some(password.as_bytes()),
        database: Some(pg.dbname()),
        options: None,
        application_name: Some("backend-test"),
        tls,
        channel_binding,
        log_statements: false,
    };
    bounded("connecting", connect(&params)).await
}

async fn open(
    pg: &PgServer,
    target: Target,
    tls: &Connector,
    channel_binding: ChannelBinding,
) -> Result<Backend, Error> {
    open_with(pg, target, tls, channel_binding, pg.password()).await
}

/// A connection with full verification and channel binding preferred, as in production.
async fn verified(pg: &PgServer) -> Backend {
    let tls = connector(pg, &[]);
    open(pg, tcp(pg), &tls, ChannelBinding::Prefer)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", pg.log_tail(20)))
}

/// Runs `sql` through the simple query protocol and returns its rows as text.
async fn simple(b: &mut Backend, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
    b.write_query(sql)?;
    bounded("a simple query", async {
        b.flush().await?;
        let mut rows = Vec::new();
        loop {
            match b.read_simple().await? {
                Simple::Row(row) => rows.push(
                    values(&row)
                        .map(|v| v.map(|v| String::from_utf8(v.to_vec()).expect("text value")))
                        .collect(),
                ),
                Simple::Done => return Ok(rows),
                Simple::Columns(_) | Simple::Complete(_) => {}
            }
        }
    })
    .await
}

/// The single value of a simple query that returns one.
async fn scalar(b: &mut Backend, sql: &str) -> String {
    let rows = simple(b, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows[0][0].clone().unwrap_or_else(|| panic!("{sql}: NULL"))
}

/// Reads one execution's answer, a request of its own, with `read_row`: its rows and the count
/// its completion reports.
async fn read_rows(b: &mut Backend) -> Result<(Rows, u64), Error> {
    let mut rows = Vec::new();
    loop {
        match b.read_row().await? {
            Reply::Row(row) => rows.push(values(&row).map(|v| v.map(<[u8]>::to_vec)).collect()),
            Reply::Done(n) => return Ok((rows, n)),
        }
    }
}

/// Executes `statement` once, as a request of its own.
async fn execute(
    b: &mut Backend,
    statement: &Statement,
    params: &[Param<'_>],
) -> Result<(Rows, u64), Error> {
    b.write_execute(statement, params.iter().copied())?;
    b.write_sync();
    bounded("an execution", async {
        b.flush().await?;
        read_rows(b).await
    })
    .await
}

async fn prepare(b: &mut Backend, sql: &str) -> Statement {
    bounded("prepare", b.prepare(true, sql, &[]))
        .await
        .unwrap_or_else(|e| panic!("prepare {sql}: {e}"))
}

fn int4(v: i32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// An int4 parameter.
fn p4(v: &[u8]) -> Param<'_> {
    Some(v)
}

fn db_code(e: &Error) -> &str {
    e.code()
        .unwrap_or_else(|| panic!("expected a database error, got {e:?}"))
}

/// Whether the session behind `b` uses TLS, as the server itself reports it.
async fn server_says_tls(b: &mut Backend) -> bool {
    scalar(
        b,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .await
        == "t"
}

#[tokio::test]
async fn every_sslmode_as_libpq_defines_it() {
    let pg = PgServer::start();
    let ca = pg.ca_path().display().to_string();
    let other_ca = pg.other_ca_path().display().to_string();

    // disable: plain TCP, which pg_hba refuses (only hostssl is allowed).
    let tls = connector(&pg, &[("PGSSLMODE", "disable"), ("PGSSLROOTCERT", "")]);
    let e = open(&pg, tcp(&pg), &tls, ChannelBinding::Prefer)
        .await
        .expect_err("plain TCP must be refused by pg_hba");
    assert!(matches!(e, Error::Db(_)), "{e:?}");
    assert_eq!(db_code(&e), "28000", "{e}");
    assert!(e.is_lost(), "a refused login is FATAL: {e:?}");
    assert!(e.to_string().contains("no encryption"), "{e}");

    // prefer and require do not verify the certificate: with no CA configured, the system's
    // roots (which do not hold the test CA) would refuse it.
    for mode in ["prefer", "require"] {
        let tls = connector(&pg, &[("PGSSLMODE", mode), ("PGSSLROOTCERT", "")]);
        let mut b = open(&pg, tcp(&pg), &tls, ChannelBinding::Prefer)
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        assert!(server_says_tls(&mut b).await, "sslmode={mode}");
    }

    // verify-ca checks the chain only: a host name the certificate does not name passes.
    let tls = connector(&pg, &[("PGSSLMODE", "verify-ca"), ("PGSSLROOTCERT", &ca)]);
    for host in [pg.host(), "not-the-server.invalid"] {
        let mut b = open(&pg, tcp_as(&pg, host), &tls, ChannelBinding::Prefer)
            .await
            .unwrap_or_else(|e| panic!("verify-ca as {host}: {e}"));
        assert!(server_says_tls(&mut b).await, "verify-ca as {host}");
    }
    let tls = connector(
        &pg,
        &[("PGSSLMODE", "verify-ca"), ("PGSSLROOTCERT", &other_ca)],
    );
    let e = open(&pg, tcp(&pg), &tls, ChannelBinding::Prefer)
        .await
        .expect_err("verify-ca with a CA that did not sign the certificate");
    assert!(matches!(e, Error::Tls(_)), "{e:?}");

    // require with a CA configured verifies the chain, as libpq does.
    let tls = connector(
        &pg,
        &[("PGSSLMODE", "require"), ("PGSSLROOTCERT", &other_ca)],
    );
    let e = open(&pg, tcp(&pg), &tls, ChannelBinding::Prefer)
        .await
        .expect_err("require with PGSSLROOTCERT verifies the chain");
    assert!(matches!(e, Error::Tls(_)), "{e:?}");

    // verify-full: the chain and the name.
    let tls = connector(&pg, &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca)]);
    let mut b = open(&pg, tcp(&pg), &tls, ChannelBinding::Prefer)
        .await
        .unwrap_or_else(|e| panic!("verify-full: {e}"));
    assert!(server_says_tls(&mut b).await);
    let e = open(
        &pg,
        tcp_as(&pg, "not-the-server.invalid"),
        &tls,
        ChannelBinding::Prefer,
    )
    .await
    .expect_err("verify-full with a name the certificate does not hold");
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("must name the host"), "{e}");

    // verify-full against the wrong CA: refused in the handshake, and the message names the
    // setting that chose the CA.
    let tls = connector(
        &pg,
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &other_ca)],
    );
    let e = open(&pg, tcp(&pg), &tls, ChannelBinding::Prefer)
        .await
        .expect_err("verify-full with the wrong CA");
    assert!(matches!(e, Error::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("PGSSLROOTCERT"), "{e}");
    assert!(e.is_lost());
}

#[tokio::test]
async fn scram_with_and_without_channel_binding() {
    let pg = PgServer::start();
    let tls = connector(&pg, &[]);

    // Over TLS the server offers SCRAM-SHA-256-PLUS. Require succeeds only if the client chose
    // it and the server accepted the certificate hash it sent as binding data.
    for binding in [
        ChannelBinding::Disable,
        ChannelBinding::Prefer,
        ChannelBinding::Require,
    ] {
        let mut b = open(&pg, tcp(&pg), &tls, binding)
            .await
            .unwrap_or_else(|e| panic!("{binding:?} over TLS: {e}\n{}", pg.log_tail(10)));
        assert_eq!(scalar(&mut b, "SELECT current_user").await, pg.user());
        assert!(server_says_tls(&mut b).await);
    }

    // The Unix socket trusts the role: no SCRAM at all, so no binding either.
    let e = open(&pg, unix(&pg), &tls, ChannelBinding::Require)
        .await
        .expect_err("channel_binding=require over a trusted Unix socket");
    assert!(matches!(e, Error::Setup(_)), "{e:?}");
    assert!(e.to_string().contains("without channel binding"), "{e}");
    let mut b = open(&pg, unix(&pg), &tls, ChannelBinding::Prefer)
        .await
        .expect("prefer over the trusted Unix socket");
    assert_eq!(scalar(&mut b, "SELECT current_user").await, pg.user());
    drop(b);

    // SCRAM over the Unix socket: no TLS to bind to.
    let hba = pg.data_dir().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all postgres trust\n\
         local all all scram-sha-256\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("write pg_hba.conf");
    pg.reload();
    let e = open(&pg, unix(&pg), &tls, ChannelBinding::Require)
        .await
        .expect_err("channel_binding=require without TLS");
    assert!(matches!(e, Error::Setup(_)), "{e:?}");
    assert!(e.to_string().contains("needs TLS"), "{e}");
    for binding in [ChannelBinding::Disable, ChannelBinding::Prefer] {
        let mut b = open(&pg, unix(&pg), &tls, binding)
            .await
            .unwrap_or_else(|e| panic!("SCRAM over the Unix socket, {binding:?}: {e}"));
        assert_eq!(scalar(&mut b, "SELECT current_user").await, pg.user());
        assert!(!server_says_tls(&mut b).await);
    }
    let e = open_with(&pg, unix(&pg), &tls, ChannelBinding::Prefer, "wrong")
        .await
        .expect_err("a wrong password over the Unix socket");
    assert_eq!(db_code(&e), "28P01", "{e}");
}

#[tokio::test]
async fn a_wrong_password_is_the_servers_28p01_and_ends_the_connection() {
    let pg = PgServer::start();
    let tls = connector(&pg, &[]);
    for binding in [ChannelBinding::Disable, ChannelBinding::Require] {
        let e = open_with(&pg, tcp(&pg), &tls, binding, "not-the-password")
            .await
            .expect_err("a wrong password");
        let Error::Db(db) = &e else {
            panic!("{binding:?}: expected the server's error, got {e:?}");
        };
        assert_eq!(db.code(), "28P01", "{binding:?}: {e}");
        assert!(db.is_fatal(), "{binding:?}: {e}");
        assert!(e.is_lost(), "{binding:?}: {e}");
        // The secret never shows in what is reported.
        assert!(!format!("{e} {e:?}").contains("not-the-password"));
    }
    // The right one still works: the failures were the password's.
    verified(&pg).await;
}

/// Starts a result of endless rows on `b` and reads its first one, so the server is streaming
/// when the test strikes.
async fn start_streaming(b: &mut Backend) {
    // In the select list, not FROM: a set-returning function in FROM is computed whole before
    // its first row is sent.
    let statement = prepare(b, "SELECT generate_series(1, 1000000000), repeat('x', 200)").await;
    b.write_execute(&statement, std::iter::empty()).unwrap();
    b.write_sync();
    bounded("the first row", async {
        b.flush().await.unwrap();
        match b.read_row().await {
            Ok(Reply::Row(_)) => {}
            other => panic!("expected a row, got {other:?}"),
        }
    })
    .await;
}

/// Reads on until the connection fails; the error must say the connection is gone.
async fn read_until_lost(b: &mut Backend) -> Error {
    let e = bounded("reading from a connection the server ended", async {
        loop {
            if let Err(e) = b.read_row().await {
                return e;
            }
        }
    })
    .await;
    assert!(
        matches!(e, Error::Closed | Error::Io(_)) || e.as_db().is_some_and(|db| db.is_fatal()),
        "{e:?}"
    );
    assert!(e.is_lost(), "{e:?}");
    assert!(b.is_broken());
    // Nothing more is sent on it, and saying so takes no wait.
    let again = bounded("a request on a broken connection", b.check()).await;
    assert!(matches!(again, Err(Error::Closed)), "{again:?}");
    e
}

#[tokio::test]
async fn a_session_terminated_while_it_streams_rows_fails_the_reader() {
    let pg = PgServer::start();
    let mut b = verified(&pg).await;
    let pid = b.process_id();
    start_streaming(&mut b).await;
    // Waits (up to 10 s) until the backend has exited.
    let ended = pg.superuser_psql(&format!("SELECT pg_terminate_backend({pid}, 10000)"));
    assert_eq!(ended, "t", "{}", pg.log_tail(10));
    read_until_lost(&mut b).await;
}

#[tokio::test]
async fn a_backend_killed_while_it_streams_rows_fails_the_reader() {
    let pg = PgServer::start();
    let mut b = verified(&pg).await;
    let pid = b.process_id();
    assert!(pid > 0);
    start_streaming(&mut b).await;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -KILL {pid}");
    read_until_lost(&mut b).await;
}

#[tokio::test]
async fn an_error_in_a_pipeline_fails_only_its_own_request() {
    let pg = PgServer::start();
    let mut b = verified(&pg).await;
    let divide = prepare(&mut b, "SELECT 10 / $1::int4").await;
    let (one, zero, five) = (int4(1), int4(0), int4(5));
    for divisor in [&one, &zero, &five] {
        b.write_execute(&divide, [Some(divisor.as_slice())].into_iter())
            .unwrap();
        b.write_sync();
    }
    assert!(!b.is_synced());
    bounded("the pipeline", b.flush()).await.unwrap();

    let first = bounded("1st answer", read_rows(&mut b)).await.unwrap();
    assert_eq!(first, (vec![vec![Some(int4(10))]], 1));
    let second = bounded("2nd answer", read_rows(&mut b))
        .await
        .expect_err("division by zero");
    assert_eq!(db_code(&second), "22012", "{second}");
    assert!(!second.is_lost());
    let third = bounded("3rd answer", read_rows(&mut b)).await.unwrap();
    assert_eq!(third, (vec![vec![Some(int4(2))]], 1));
    assert!(b.is_synced());
    assert_eq!(b.status(), TxStatus::Idle);
}

#[tokio::test]
async fn an_error_in_a_transactional_pipeline_skips_the_rest_of_it() {
    let pg = PgServer::start();
    let mut b = verified(&pg).await;
    simple(&mut b, "CREATE TABLE t (v int4)").await.unwrap();
    let insert = prepare(&mut b, "INSERT INTO t VALUES (10 / $1::int4)").await;
    let (one, zero, five) = (int4(1), int4(0), int4(5));

    b.write_command("BEGIN").unwrap();
    for divisor in [&one, &zero, &five] {
        b.write_execute(&insert, [Some(divisor.as_slice())].into_iter())
            .unwrap();
    }
    b.write_command("COMMIT").unwrap();
    b.write_sync();
    bounded("the transaction", async {
        b.flush().await.unwrap();
        b.read_command().await.expect("BEGIN");
        assert!(matches!(b.read_step().await, Ok(Reply::Done(1))));
        let e = b.read_step().await.expect_err("division by zero");
        assert_eq!(db_code(&e), "22012", "{e}");
        assert!(!b.is_broken());
        // The server skips the third INSERT and the COMMIT: the next message is the Sync's
        // ReadyForQuery, which is all `read_simple` takes as `Done` (a BindComplete or a
        // CommandComplete would be something else).
        assert!(!b.is_synced());
        assert!(matches!(b.read_simple().await, Ok(Simple::Done)));
    })
    .await;
    assert!(b.is_synced());
    assert_eq!(b.status(), TxStatus::Failed);

    bounded("ROLLBACK", b.batch_execute("ROLLBACK"))
        .await
        .unwrap();
    assert_eq!(b.status(), TxStatus::Idle);
    assert_eq!(scalar(&mut b, "SELECT count(*) FROM t").await, "0");

    // The same request without the failure commits all three.
    b.write_command("BEGIN").unwrap();
    for divisor in [&one, &five, &five] {
        b.write_execute(&insert, [Some(divisor.as_slice())].into_iter())
            .unwrap();
    }
    b.write_command("COMMIT").unwrap();
    b.write_sync();
    bounded("the transaction", async {
        b.flush().await.unwrap();
        b.read_command().await.expect("BEGIN");
        for _ in 0..3 {
            assert!(matches!(b.read_step().await, Ok(Reply::Done(1))));
        }
        b.read_command().await.expect("COMMIT");
        assert!(matches!(b.read_simple().await, Ok(Simple::Done)));
    })
    .await;
    assert_eq!(b.status(), TxStatus::Idle);
    assert_eq!(
        scalar(&mut b, "SELECT string_agg(v::text, ',' ORDER BY v) FROM t").await,
        "2,2,10"
    );
}

#[tokio::test]
async fn the_transaction_status_follows_every_ready_for_query() {
    let pg = PgServer::start();
    let mut b = verified(&pg).await;
    assert_eq!(b.status(), TxStatus::Idle);

    let steps: &[(&str, bool, TxStatus)] = &[
        ("CREATE TABLE t (v int4)", true, TxStatus::Idle),
        ("SELECT 1", true, TxStatus::Idle),
        ("SELECT 1 / 0", false, TxStatus::Idle),
        ("BEGIN", true, TxStatus::InTransaction),
        ("INSERT INTO t VALUES (1)", true, TxStatus::InTransaction),
        ("SELECT 1 / 0", false, TxStatus::Failed),
        ("SELECT 1", false, TxStatus::Failed),
        ("ROLLBACK", true, TxStatus::Idle),
        ("BEGIN", true, TxStatus::InTransaction),
        ("INSERT INTO t VALUES (2)", true, TxStatus::InTransaction),
        ("SAVEPOINT a", true, TxStatus::InTransaction),
        ("INSERT INTO t VALUES (3)", true, TxStatus::InTransaction),
        ("SELECT 1 / 0", false, TxStatus::Failed),
        ("ROLLBACK TO a", true, TxStatus::InTransaction),
        ("COMMIT", true, TxStatus::Idle),
        ("BEGIN", true, TxStatus::InTransaction),
        ("SELECT 1 / 0", false, TxStatus::Failed),
        // COMMIT of a failed transaction rolls it back, and succeeds as a command.
        ("COMMIT", true, TxStatus::Idle),
    ];
    for &(sql, ok, status) in steps {
        let result = bounded(sql, b.batch_execute(sql)).await;
        assert_eq!(result.is_ok(), ok, "{sql}: {result:?}");
        assert_eq!(b.status(), status, "after {sql}");
        assert!(b.is_synced(), "after {sql}");
    }
    // The same through the extended protocol.
    let begin = prepare(&mut b, "BEGIN").await;
    execute(&mut b, &begin, &[]).await.unwrap();
    assert_eq!(b.status(), TxStatus::InTransaction);
    let divide = prepare(&mut b, "SELECT 1 / $1::int4").await;
    execute(&mut b, &divide, &[p4(&int4(0))])
        .await
        .expect_err("division by zero");
    assert_eq!(b.status(), TxStatus::Failed);
    let rollback = prepare(&mut b, "ROLLBACK").await;
    execute(&mut b, &rollback, &[]).await.unwrap();
    assert_eq!(b.status(), TxStatus::Idle);

    // Only what was committed outside a failed block is there.
    assert_eq!(
        scalar(&mut b, "SELECT string_agg(v::text, ',' ORDER BY v) FROM t").await,
        "2"
    );
}

#[tokio::test]
async fn simple_queries_answer_in_text_and_executions_in_binary() {
    let pg = PgServer::start();
    let mut b = verified(&pg).await;
    let rows = simple(&mut b, "SELECT 42::int4, NULL::int4, 'été'::text")
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![Some("42".to_owned()), None, Some("été".to_owned())]]
    );

    for named in [true, false] {
        let statement = bounded(
            "prepare",
            b.prepare(named, "SELECT 42::int4, NULL::int4, $1::int8", &[]),
        )
        .await
        .unwrap();
        assert_eq!(statement.name().is_some(), named);
        assert_eq!(statement.params().len(), 1);
        assert_eq!(statement.columns().len(), 3);
        let seven = 7i64.to_be_bytes();
        let (rows, n) = execute(&mut b, &statement, &[Some(&seven[..])])
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            rows,
            vec![vec![Some(vec![0, 0, 0, 42]), None, Some(seven.to_vec())]],
            "named: {named}"
        );
    }
}

#[tokio::test]
async fn result_formats_pass_through_as_asked_per_column() {
    let pg = PgServer::start();
    let mut b = verified(&pg).await;
    let statement = prepare(&mut b, "SELECT 42::int4, $1::int4, 'x'::text").await;
    // The parameter in text, the first column in text, the second in binary, the third in text.
    b.write_execute_as(&statement, [Some(&b"7"[..])].into_iter(), &[0], &[0, 1, 0])
        .unwrap();
    b.write_sync();
    let (rows, _) = bounded("an execution", async {
        b.flush().await?;
        read_rows(&mut b).await
    })
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![vec![
            Some(b"42".to_vec()),
            Some(vec![0, 0, 0, 7]),
            Some(b"x".to_vec())
        ]]
    );
    // One code for every column.
    b.write_execute_as(&statement, [Some(&b"8"[..])].into_iter(), &[0], &[0])
        .unwrap();
    b.write_sync();
    let (rows, _) = bounded("an execution", async {
        b.flush().await?;
        read_rows(&mut b).await
    })
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![vec![
            Some(b"42".to_vec()),
            Some(b"8".to_vec()),
            Some(b"x".to_vec())
        ]]
    );
}

#[tokio::test]
async fn statement_names_belong_to_their_connection() {
    let pg = PgServer::start();
    let mut a = verified(&pg).await;
    let mut b = verified(&pg).await;
    let sql = "SELECT $1::int4 + 1";
    let on_a = prepare(&mut a, sql).await;
    let on_b = prepare(&mut b, sql).await;
    let name_a = on_a.name().expect("named").to_string();
    let name_b = on_b.name().expect("named").to_string();
    assert_ne!(name_a, name_b);
    assert!(a.is_our_statement(&name_a) && !a.is_our_statement(&name_b));
    assert!(b.is_our_statement(&name_b) && !b.is_our_statement(&name_a));
    // Not the `s0`, `s1`… that other drivers give, which another client could hold, and a
    // prefix drawn per connection.
    let prefix = |name: &str| name.split('_').next().unwrap_or_default().to_owned();
    for name in [&name_a, &name_b] {
        assert!(name.starts_with("wp"), "{name}");
        assert!(prefix(name).len() > "wp".len(), "{name}");
    }
    assert_ne!(prefix(&name_a), prefix(&name_b));

    // Each server session holds only its own connection's name.
    let list = "SELECT string_agg(name, ',') FROM pg_prepared_statements";
    assert_eq!(scalar(&mut a, list).await, name_a);
    assert_eq!(scalar(&mut b, list).await, name_b);

    // One's statement sent on the other names nothing the other's session holds.
    for (conn, foreign) in [(&mut b, &on_a), (&mut a, &on_b)] {
        let e = execute(conn, foreign, &[p4(&int4(1))])
            .await
            .expect_err("another connection's statement");
        assert_eq!(db_code(&e), "26000", "{e}");
        assert!(!e.is_lost());
        assert!(conn.is_synced() && !conn.is_broken());
    }
    let (rows, _) = execute(&mut b, &on_b, &[p4(&int4(1))]).await.unwrap();
    assert_eq!(rows, vec![vec![Some(int4(2))]]);
    let (rows, _) = execute(&mut a, &on_a, &[p4(&int4(41))]).await.unwrap();
    assert_eq!(rows, vec![vec![Some(int4(42))]]);
}

#[tokio::test]
async fn a_cancelled_statement_ends_with_57014_and_the_connection_goes_on() {
    let pg = PgServer::start();
    let mut b = verified(&pg).await;
    let mut watcher = verified(&pg).await;
    let token = b.cancel_token().clone();
    let pid = b.process_id();
    let sleep = prepare(&mut b, "SELECT pg_sleep(30)").await;
    b.write_execute(&sleep, std::iter::empty()).unwrap();
    b.write_sync();
    bounded("sending pg_sleep", b.flush()).await.unwrap();

    let cancelled = async {
        // A cancel that arrives before the statement runs is ignored: wait until the server
        // shows it sleeping.
        let running = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active' \
             AND wait_event = 'PgSleep'"
        );
        while scalar(&mut watcher, &running).await != "1" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        token.cancel().await
    };
    let (answer, cancelled) = bounded("the cancelled statement", async {
        tokio::join!(read_rows(&mut b), cancelled)
    })
    .await;
    cancelled.expect("send the CancelRequest");
    let e = answer.expect_err("the cancelled statement");
    assert_eq!(db_code(&e), "57014", "{e}");
    assert!(!e.is_lost());
    assert!(!b.is_broken());
    assert!(b.is_synced());
    assert_eq!(b.status(), TxStatus::Idle);
    bounded("check", b.check())
        .await
        .expect("check after a cancel");
    assert_eq!(scalar(&mut b, "SELECT 6 * 7").await, "42");
}

#[tokio::test]
async fn resync_reads_past_the_answer_of_a_dropped_reader() {
    let pg = PgServer::start();
    let mut b = verified(&pg).await;
    let many = prepare(
        &mut b,
        "SELECT g, repeat('x', 50) FROM generate_series(1, 300000) g",
    )
    .await;
    let plus_one = prepare(&mut b, "SELECT $1::int4 + 1").await;

    b.write_execute(&many, std::iter::empty()).unwrap();
    b.write_sync();
    // Another request behind it, whose answer goes unread too.
    b.write_execute(&plus_one, [Some(int4(1).as_slice())].into_iter())
        .unwrap();
    b.write_sync();
    bounded("sending", b.flush()).await.unwrap();

    let mut read = 0u32;
    let reading = async {
        loop {
            match b.read_row().await {
                Ok(Reply::Row(_)) => read += 1,
                other => return other,
            }
        }
    };
    // Dropped part way: the reader stops wherever it was, perhaps inside a message.
    let stopped = timeout(Duration::from_millis(5), reading).await;
    assert!(stopped.is_err(), "the reader finished: {stopped:?}");
    assert!(read < 300_000, "{read}");
    assert!(!b.is_synced());

    assert!(bounded("resync", b.resync()).await);
    assert!(b.is_synced());
    assert!(!b.is_broken());
    assert_eq!(b.status(), TxStatus::Idle);
    let (rows, _) = execute(&mut b, &plus_one, &[p4(&int4(41))]).await.unwrap();
    assert_eq!(rows, vec![vec![Some(int4(42))]]);
    let (rows, n) = execute(&mut b, &many, &[]).await.unwrap();
    assert_eq!(n, 300_000);
    assert_eq!(rows.len(), 300_000);
    assert_eq!(rows[299_999][0], Some(int4(300_000)));
}

/// A "server" on 127.0.0.1 that reads the startup message and answers `reply`, then closes.
async fn fake_server(reply: Vec<u8>) -> (u16, tokio::task::JoinHandle<()>) {
    fake_server_then(reply, false).await
}

/// [`fake_server`]; with `linger`, the server reads whatever the client sends until the client
/// closes, instead of closing first.
async fn fake_server_then(reply: Vec<u8>, linger: bool) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let len = socket.read_i32().await.unwrap();
        let mut startup = vec![0; len as usize - 4];
        socket.read_exact(&mut startup).await.unwrap();
        socket.write_all(&reply).await.unwrap();
        if linger {
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        }
        socket.shutdown().await.unwrap();
    });
    (port, task)
}

fn plain_config() -> Config {
    Config::from_lookup(|k| match k {
        "PGHOST" => Some("localhost".to_owned()),
        "PGUSER" => Some("app".to_owned()),
        "PGSSLMODE" => Some("disable".to_owned()),
        _ => None,
    })
    .expect("configuration")
}

fn fake_params(tls: &Connector, port: u16) -> Params<'_> {
    Params {
        target: Target::Tcp {
            host: "localhost".to_owned(),
            hostaddr: Some(LOOPBACK),
            port,
        },
        user: "app",
        password: Some(b"secret"),
        database: None,
        options: None,
        application_name: None,
        tls,
        channel_binding: ChannelBinding::Prefer,
        log_statements: false,
    }
}

/// A message: its tag, its length, its body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    [&[tag][..], &(body.len() as u32 + 4).to_be_bytes(), body].concat()
}

/// A DataRow whose lengths do not add up is refused, from the buffer or from the socket: the
/// reader never hands out a row read some other way, and the connection is not used again.
#[tokio::test]
async fn a_row_whose_lengths_do_not_add_up_is_refused() {
    let config = plain_config();
    let tls = tls::connector(config.ssl_mode, &config.root_certs).expect("TLS connector");
    let one_value =
        |v: &[u8]| [&1u16.to_be_bytes()[..], &(v.len() as u32).to_be_bytes(), v].concat();
    // Two columns declared, one sent.
    let short = [&2u16.to_be_bytes()[..], &1u32.to_be_bytes(), b"2"].concat();
    // A value longer than its row.
    let long = [&1u16.to_be_bytes()[..], &9u32.to_be_bytes(), b"2"].concat();
    // Bytes left over after the values.
    let trailing = [&one_value(b"2")[..], b"x"].concat();
    for (what, bad) in [("short", short), ("long", long), ("trailing", trailing)] {
        let reply = [
            message(b'R', &0u32.to_be_bytes()),
            message(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]),
            message(b'Z', b"I"),
            message(b'T', &0u16.to_be_bytes()),
            message(b'D', &one_value(b"1")),
            message(b'D', &bad),
            message(b'C', b"SELECT 2\0"),
            message(b'Z', b"I"),
        ]
        .concat();
        let (port, server) = fake_server_then(reply, true).await;
        let mut b = bounded(what, connect(&fake_params(&tls, port)))
            .await
            .expect(what);
        bounded(what, b.start_query(None, "SELECT")).await.unwrap();
        assert!(matches!(
            bounded(what, b.read_simple()).await,
            Ok(Simple::Columns(_))
        ));
        match bounded(what, b.read_simple()).await {
            Ok(Simple::Row(row)) => {
                assert_eq!(
                    values(&row).collect::<Vec<_>>(),
                    [Some(&b"1"[..])],
                    "{what}"
                )
            }
            other => panic!("{what}: the good row: {other:?}"),
        }
        // The bad row is refused whether it is already buffered or still to be read.
        let refused = match b.buffered_row() {
            Ok(Some(row)) => panic!("{what}: a malformed row was handed out: {row:?}"),
            Ok(None) => match bounded(what, b.read_simple()).await {
                Ok(Simple::Row(row)) => panic!(
                    "{what}: a malformed row was handed out: {:?}",
                    values(&row).collect::<Vec<_>>()
                ),
                Ok(other) => panic!("{what}: {other:?}"),
                Err(e) => e,
            },
            Err(e) => e,
        };
        assert!(
            matches!(&refused, Error::Protocol(m) if m.contains("DataRow")),
            "{what}: {refused:?}"
        );
        assert!(b.is_broken(), "{what}: the connection would be used again");
        drop(b);
        bounded("the fake server", server).await.unwrap();
    }
}

#[tokio::test]
async fn a_server_that_breaks_the_framing_is_refused_without_waiting() {
    let config = plain_config();
    let tls = tls::connector(config.ssl_mode, &config.root_certs).expect("TLS connector");
    let too_large = [&b"R"[..], &0x7fff_fff0u32.to_be_bytes()].concat();
    let too_short = [&b"R"[..], &2u32.to_be_bytes()].concat();
    // AuthenticationOk, then half of a ParameterStatus.
    let torn = [
        &b"R"[..],
        &8u32.to_be_bytes(),
        &0u32.to_be_bytes(),
        b"S",
        &40u32.to_be_bytes(),
        b"Time",
    ]
    .concat();
    for (what, reply) in [
        ("an oversized length", too_large),
        ("a length below 4", too_short),
        ("a torn message", torn),
    ] {
        let (port, server) = fake_server(reply).await;
        let e = bounded(what, connect(&fake_params(&tls, port)))
            .await
            .expect_err(what);
        match what {
            "an oversized length" => {
                assert!(
                    matches!(&e, Error::Protocol(m) if m.contains("exceeds")),
                    "{e:?}"
                )
            }
            "a torn message" => assert!(matches!(e, Error::Closed), "{e:?}"),
            _ => assert!(matches!(e, Error::Io(_) | Error::Protocol(_)), "{e:?}"),
        }
        assert!(e.is_lost(), "{what}: {e:?}");
        bounded("the fake server", server).await.unwrap();
    }
}
