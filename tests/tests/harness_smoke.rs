//! Checks the test harness itself: if these fail, every other integration test's verdict is
//! meaningless. In particular they prove that a successful TCP connection to a `PgServer`
//! implies TLS, and that a dropped server leaves nothing behind.

use std::time::Instant;
use tokio_postgres::error::SqlState;
use warmpool_tests::pg::{process_alive, PgServer};

#[tokio::test]
async fn server_speaks_tls_and_rejects_plain_tcp() {
    let started = Instant::now();
    let server = PgServer::start();
    eprintln!("PgServer::start() took {:?}", started.elapsed());

    let client = server.tokio_client().await;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query pg_stat_ssl");
    assert!(row.get::<_, bool>(0), "direct client connection is not TLS");

    let mut plain = server.tokio_config();
    plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let err = plain
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("plain TCP connection must be rejected");
    // Rejection by pg_hba (no `host` line) rather than, say, a wrong port: only then does a
    // working TLS connection prove anything.
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "unexpected error for plain TCP: {err:?}"
    );
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(
        message.contains("pg_hba.conf") && message.contains("no encryption"),
        "unexpected error for plain TCP: {message}"
    );

    // The harness's own admin path works and sees the app role as non-superuser.
    assert_eq!(
        server.superuser_psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'"),
        "f"
    );
}

#[test]
fn drop_stops_server_and_removes_temp_dir() {
    let server = PgServer::start();
    let pid = server.postmaster_pid().expect("postmaster.pid after start");
    assert!(
        process_alive(pid),
        "postmaster {pid} not running after start"
    );
    let dir = server.temp_dir().to_path_buf();
    assert!(dir.exists());

    drop(server);

    assert!(
        !process_alive(pid),
        "postmaster {pid} still running after drop"
    );
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

/// The fault-injection and configuration controls other tests rely on.
#[tokio::test]
async fn restart_stop_start_again_and_set_config() {
    let server = PgServer::start();

    // libpq (OpenSSL) with verify-full accepts the generated chain too, not only rustls.
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-At",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .envs(server.env())
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql verify-full: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");

    // A client trusting the unrelated CA must fail the handshake.
    let wrong = tokio_postgres_rustls::MakeRustlsConnect::new(
        warmpool_tests::pg::rustls_config_trusting(server.other_ca_pem()),
    );
    let err = server
        .tokio_config()
        .connect(wrong)
        .await
        .err()
        .expect("a client trusting the wrong CA must not connect");
    let chain = std::error::Error::source(&err).map(|e| e.to_string());
    assert!(
        chain.as_deref().unwrap_or("").contains("UnknownIssuer"),
        "expected a certificate verification failure, got: {err} / {chain:?}"
    );

    server.set_config("work_mem", "7MB");
    let client = server.tokio_client().await;
    let row = client.query_one("SHOW work_mem", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "7MB");

    let pid = server.postmaster_pid().unwrap();
    server.restart();
    assert_ne!(server.postmaster_pid(), Some(pid));
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "a connection from before the restart must be dead"
    );
    let client = server.tokio_client().await;
    client.simple_query("SELECT 1").await.unwrap();

    server.stop();
    assert_eq!(server.postmaster_pid(), None);
    assert!(server
        .tokio_config()
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
            server.rustls_config()
        ))
        .await
        .is_err());
    // Settings changed while stopped apply at the next start.
    server.set_config("work_mem", "9MB");
    server.start_again();
    let client = server.tokio_client().await;
    let row = client.query_one("SHOW work_mem", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "9MB");
}
