//! TLS and authentication between the extension and PostgreSQL, as libpq's `sslmode` defines
//! them, and what a client is told when they fail.
//!
//! The test server accepts TCP only through `hostssl` with SCRAM, so any query that succeeds
//! went over TLS; `sslmode_disable_is_refused_by_the_server` proves the server really refuses
//! plain TCP, so that the other successes mean something.

use std::time::Duration;

use warmpool::SqlState;
use warmpool_tests::{Extension, PgServer};

/// Long enough for any connection attempt to fail; a guard, not a timing assertion.
const LOG_GUARD: Duration = Duration::from_secs(30);

/// The error a query gets, with the extension's log in the message if it succeeds instead.
async fn query_error(ext: &Extension, sql: &str) -> warmpool::Error {
    let client = ext.client().await;
    match client.query_one(sql, &[]).await {
        Ok(_) => panic!("{sql} succeeded where it must fail; log:\n{}", ext.logs()),
        Err(e) => e,
    }
}

/// Whether the session to PostgreSQL that serves this client is encrypted, as the server sees it.
async fn server_sees_tls(client: &warmpool::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query pg_stat_ssl")
        .get(0)
}

/// `host=… hostaddr=127.0.0.1 …`: TLS checks the certificate against `host`, while the TCP
/// connection goes to `hostaddr`, so the name can be wrong while the address is right.
fn url_with_host_name(pg: &PgServer, host: &str) -> String {
    format!(
        "host={host} hostaddr=127.0.0.1 port={} user={} password={} dbname={}",
        pg.port(),
        pg.user(),
        pg.password(),
        pg.dbname()
    )
}

/// The libpq variables a `DATABASE_URL` must not be mixed with, emptied (the extension treats
/// an empty value as unset), so only the URL decides where to connect.
const NO_PG_ENV: [(&str, &str); 5] = [
    ("PGHOST", ""),
    ("PGPORT", ""),
    ("PGUSER", ""),
    ("PGPASSWORD", ""),
    ("PGDATABASE", ""),
];

#[tokio::test]
async fn verify_full_with_the_test_ca_is_tls() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[]);
    let client = ext.client().await;
    assert!(
        server_sees_tls(&client).await,
        "the pooled connection is not TLS"
    );
    let row = client
        .query_one(
            "SELECT version, cipher IS NOT NULL FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let version: String = row.get(0);
    assert!(version.starts_with("TLSv1."), "TLS version {version}");
    assert!(row.get::<_, bool>(1), "no cipher");
    // The pool's connection is the one the client's statements run on: it is the app role,
    // named warmpool, from 127.0.0.1.
    let row = client
        .query_one(
            "SELECT usename::text, application_name, client_addr::text \
             FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), pg.user());
    assert_eq!(row.get::<_, &str>(1), "warmpool");
    assert_eq!(row.get::<_, &str>(2), "127.0.0.1/32");
}

#[tokio::test]
async fn wrong_ca_fails_with_08006_naming_the_certificate_problem() {
    let pg = PgServer::start();
    let other_ca = pg.other_ca_path().display().to_string();
    // An unreachable database must not stop the extension: it starts and listens...
    let mut ext = Extension::start(&pg, &[("PGSSLROOTCERT", &other_ca)]);
    // ...after its warm-up connection has failed.
    ext.wait_for_log("could not open warm connections", LOG_GUARD);

    let e = query_error(&ext, "SELECT 1").await;
    assert_eq!(e.code(), Some(&SqlState::CONNECTION_FAILURE), "{e:?}");
    assert!(
        e.is_extension(),
        "raised by the extension, not PostgreSQL: {e:?}"
    );
    assert!(e.as_db_error().is_none(), "{e:?}");
    assert!(
        e.is_closed(),
        "08006 means the database is unreachable: {e:?}"
    );
    let text = e.to_string();
    // Helpful: says what was being done, that TLS failed, and why.
    assert!(text.contains("could not connect to the database"), "{text}");
    assert!(text.contains("TLS"), "{text}");
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    // ...and against what: the setting and the file it names.
    assert!(
        text.contains(&format!(
            "checked against the CA certificates in PGSSLROOTCERT ({other_ca})"
        )),
        "the error does not name PGSSLROOTCERT and its file: {text}"
    );

    // The extension keeps serving: the error is per request, not fatal.
    let client = ext.client().await;
    client.ping().await.unwrap();
}

/// An operator reads the extension's log, not the function's errors: the warning for a failed
/// warm-up must say why it failed, as the client's error does.
#[tokio::test]
async fn warm_up_failure_is_logged_with_its_cause() {
    let pg = PgServer::start();
    let other_ca = pg.other_ca_path().display().to_string();
    let mut wrong_ca = Extension::start(&pg, &[("PGSSLROOTCERT", &other_ca)]);
    let mut wrong_pw = Extension::start(&pg, &[("PGPASSWORD", "wrong")]);
    let ca_line = wrong_ca.wait_for_log("could not open warm connections", LOG_GUARD);
    let pw_line = wrong_pw.wait_for_log("could not open warm connections", LOG_GUARD);
    assert!(
        ca_line.contains("UnknownIssuer"),
        "the warm-up warning does not say the certificate is not trusted: {ca_line}"
    );
    assert!(
        ca_line.contains("PGSSLROOTCERT") && ca_line.contains(&other_ca),
        "the warm-up warning does not name PGSSLROOTCERT and its file: {ca_line}"
    );
    assert!(
        pw_line.contains("password authentication failed"),
        "the warm-up warning does not give PostgreSQL's error: {pw_line}"
    );
}

/// With no PGSSLROOTCERT the system's roots are used, which do not hold the test CA: the error
/// says so, and names the setting that would fix it.
#[tokio::test]
async fn unset_root_certificate_setting_is_named_when_the_certificate_is_refused() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("PGSSLROOTCERT", "")]);
    let e = query_error(&ext, "SELECT 1").await;
    assert_eq!(e.code(), Some(&SqlState::CONNECTION_FAILURE), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(
        text.contains("the system's trusted root certificates, since PGSSLROOTCERT is not set"),
        "{text}"
    );
}

/// A refused password names the setting it came from, and never the password.
#[tokio::test]
async fn wrong_password_names_the_setting_that_holds_it() {
    let pg = PgServer::start();
    let wrong = format!("Wr0ngUrlSecret{}", std::process::id());
    let url = format!(
        "postgres://{}:{wrong}@{}:{}/{}",
        pg.user(),
        pg.host(),
        pg.port(),
        pg.dbname()
    );
    let mut env: Vec<(&str, &str)> = NO_PG_ENV.to_vec();
    env.push(("DATABASE_URL", &url));
    let mut from_url = Extension::start(&pg, &env);
    let mut from_env = Extension::start(&pg, &[("PGPASSWORD", &wrong)]);
    for (ext, setting, other) in [
        (&mut from_url, "DATABASE_URL", "PGPASSWORD"),
        (&mut from_env, "PGPASSWORD", "DATABASE_URL"),
    ] {
        let e = query_error(ext, "SELECT 1").await;
        assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{e:?}");
        let detail = e
            .as_db_error()
            .and_then(|db| db.detail())
            .unwrap_or_default()
            .to_owned();
        assert!(
            detail.contains(&format!("check the password in {setting}")),
            "{setting}: {detail}"
        );
        assert!(!detail.contains(other), "{setting}: {detail}");
        let line = ext.wait_for_log("could not open warm connections", LOG_GUARD);
        assert!(
            line.contains(&format!("the password in {setting}")),
            "{setting}: {line}"
        );
        for text in [format!("{e} {e:?} {detail}"), ext.logs()] {
            assert!(!text.contains(&wrong), "the password shows: {text}");
            assert!(!text.contains(pg.password()), "a password shows: {text}");
        }
    }
}

#[tokio::test]
async fn wrong_host_name_fails_verify_full_but_passes_verify_ca() {
    let pg = PgServer::start();
    let url = url_with_host_name(&pg, "db.invalid.example");

    let mut env: Vec<(&str, &str)> = NO_PG_ENV.to_vec();
    env.push(("DATABASE_URL", &url));
    env.push(("PGSSLMODE", "verify-full"));
    let mut full = Extension::start(&pg, &env);
    full.wait_for_log("could not open warm connections", LOG_GUARD);
    let e = query_error(&full, "SELECT 1").await;
    assert_eq!(e.code(), Some(&SqlState::CONNECTION_FAILURE), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("not valid for name") && text.contains("db.invalid.example"),
        "verify-full must fail on the name, and say so: {text}"
    );
    assert!(
        !text.contains(pg.password()) && !format!("{e:?}").contains(pg.password()),
        "the password in DATABASE_URL shows in the error: {text}"
    );

    // The same settings with verify-ca check the chain only, which is good.
    env.retain(|(k, _)| *k != "PGSSLMODE");
    env.push(("PGSSLMODE", "verify-ca"));
    let ca = Extension::start(&pg, &env);
    let client = ca.client().await;
    assert!(
        server_sees_tls(&client).await,
        "verify-ca connection is not TLS"
    );

    // Control: the address part of the URL is right, so the right name passes verify-full.
    let good = url_with_host_name(&pg, pg.host());
    let mut env: Vec<(&str, &str)> = NO_PG_ENV.to_vec();
    env.push(("DATABASE_URL", &good));
    env.push(("PGSSLMODE", "verify-full"));
    let right = Extension::start(&pg, &env);
    let client = right.client().await;
    assert!(server_sees_tls(&client).await);
}

#[tokio::test]
async fn wrong_password_is_postgres_28p01() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("PGPASSWORD", "wrong")]);
    let e = query_error(&ext, "SELECT 1").await;
    assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{e:?}");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("PostgreSQL raised it, so as_db_error must be Some: {e:?}"));
    assert_eq!(db.severity(), "FATAL");
    assert!(
        db.message().contains("password authentication failed") && db.message().contains(pg.user()),
        "{db:?}"
    );
    assert!(!e.is_extension());
}

#[tokio::test]
async fn sslmode_disable_is_refused_by_the_server() {
    let pg = PgServer::start();
    let ext = Extension::start(&pg, &[("PGSSLMODE", "disable")]);
    let e = query_error(&ext, "SELECT 1").await;
    assert_eq!(
        e.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{e:?}"
    );
    let db = e.as_db_error().expect("PostgreSQL's own error");
    // pg_hba has no plain `host` line: only TLS gets in.
    assert!(
        db.message().contains("pg_hba.conf") && db.message().contains("no encryption"),
        "{db:?}"
    );
}

#[tokio::test]
async fn no_secret_leaks_into_logs_or_errors() {
    let pg = PgServer::start();
    let password = pg.password().to_owned();
    // A distinctive wrong password: a secret too, and it must not show either.
    let wrong = format!("Wr0ngSecret{}", std::process::id());
    let mut shown = Vec::new();

    // Password from PGPASSWORD, everything traced.
    let mut env_ext = Extension::start(&pg, &[("WARMPOOL_LOG", "trace")]);
    {
        let client = env_ext.client().await;
        let n: i32 = client
            .query_one("SELECT $1::int4 + 1", &[&41i32])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 42);
        let tx = client.transaction().await.unwrap();
        tx.batch_execute("CREATE TEMP TABLE t (a int)")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let e = client
            .query_one("SELECT * FROM no_such_table", &[])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE));
        shown.push(format!("{e} {e:?}"));
    }

    // Password inside DATABASE_URL.
    let url = pg.database_url();
    assert!(url.contains(&password));
    let mut env: Vec<(&str, &str)> = NO_PG_ENV.to_vec();
    env.push(("DATABASE_URL", &url));
    env.push(("WARMPOOL_LOG", "trace"));
    let mut url_ext = Extension::start(&pg, &env);
    {
        let client = url_ext.client().await;
        client.query_one("SELECT 1", &[]).await.unwrap();
    }

    // A wrong password: the failure is traced and reported, the attempted password is not.
    let mut bad_ext = Extension::start(&pg, &[("WARMPOOL_LOG", "trace"), ("PGPASSWORD", &wrong)]);
    {
        let e = query_error(&bad_ext, "SELECT 1").await;
        assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{e:?}");
        shown.push(format!("{e} {e:?} {:?}", e.as_db_error()));
    }

    let mut logs = String::new();
    for ext in [&mut env_ext, &mut url_ext, &mut bad_ext] {
        assert!(ext.terminate().success());
        // The last line the extension logs: everything before it has been read.
        ext.wait_for_log("connections closed", LOG_GUARD);
        logs.push_str(&ext.logs());
    }
    // The logs are verbose enough for a leak to have a chance to show.
    assert!(logs.contains("TRACE"), "trace logging is not on:\n{logs}");
    // bad_ext's warm-up failed: the failing authentication was traced.
    assert!(logs.contains("could not open warm connections"), "{logs}");

    for secret in [&password, &wrong] {
        assert!(
            !logs.contains(secret.as_str()),
            "a password is in the log:\n{logs}"
        );
        for text in &shown {
            assert!(
                !text.contains(secret.as_str()),
                "a password is in an error: {text}"
            );
        }
    }
}

/// Against a server that offers no TLS, `require` (and so every stronger mode) refuses to
/// connect rather than fall back to plain TCP; `prefer` on the same server connects in plain
/// TCP, which shows the server really accepts that.
#[tokio::test]
async fn sslmode_require_refuses_a_server_without_tls() {
    let pg = PgServer::start();
    let hba = pg.data_dir().join("pg_hba.conf");
    let mut rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    rules.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
    std::fs::write(&hba, rules).expect("write pg_hba.conf");
    pg.set_config("ssl", "off");

    let plain = Extension::start(&pg, &[("PGSSLMODE", "prefer")]);
    let client = plain.client().await;
    assert!(
        !server_sees_tls(&client).await,
        "the server must offer no TLS for this test"
    );
    drop(client);
    drop(plain);

    for mode in ["require", "verify-ca", "verify-full"] {
        let ext = Extension::start(&pg, &[("PGSSLMODE", mode)]);
        let e = query_error(&ext, "SELECT 1").await;
        assert_eq!(
            e.code(),
            Some(&SqlState::CONNECTION_FAILURE),
            "{mode}: {e:?}"
        );
        assert!(e.to_string().contains("TLS"), "{mode}: {e}");
    }
}
