//! Credentials that rotate: a Secrets Manager secret (served by a loopback stand-in that speaks
//! GetSecretValue) and the real PostgreSQL role's password changed together, as RDS rotation
//! does, while a function keeps querying through the extension.

use std::time::Duration;

use warmpool::SqlState;
use warmpool_tests::secrets_manager::{rds_secret, Mode, SecretsManagerStandIn};
use warmpool_tests::{Extension, PgServer};

const SECRET_ID: &str = "prod/orders/db";

/// The extension in secrets-manager mode against `sm`, plus `extra` settings.
fn start(pg: &PgServer, sm: &SecretsManagerStandIn, extra: &[(&str, &str)]) -> Extension {
    let owned = sm.env(SECRET_ID);
    let mut env: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.extend_from_slice(extra);
    let mut ext = Extension::start(pg, &env);
    // The warm connections open in the background; the tests count connections and fetches,
    // so they start once that is done.
    ext.wait_for_log("pool warmed", Duration::from_secs(20));
    ext
}

/// Changes the role's password on the server, as rotation's setSecret step does.
fn alter_password(pg: &PgServer, password: &str) {
    pg.superuser_psql(&format!("ALTER ROLE app PASSWORD '{password}'"));
}

/// Backend pids of the extension's connections.
fn backends(pg: &PgServer) -> Vec<i32> {
    let out = pg.superuser_psql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'warmpool' ORDER BY pid",
    );
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

async fn pid(c: &warmpool::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap_or_else(|e| panic!("query failed: {e}"))
        .get(0)
}

/// Single-user rotation: the password changes on the server first, and new connections fail
/// with the cached secret until it is fetched again. The refusal triggers one fresh fetch and a
/// retry, so the function never sees an error; the connection opened before the rotation stays
/// open and keeps working.
#[tokio::test]
async fn rotation_is_invisible_to_the_function() {
    let pg = PgServer::start();
    let sm = SecretsManagerStandIn::start(SECRET_ID, rds_secret(&pg, pg.password()));
    // A long TTL: only the refusal can make the extension fetch again.
    let ext = start(&pg, &sm, &[("WARMPOOL_SECRET_TTL_MS", "600000")]);
    let client = ext.client().await;

    let tx = client.transaction().await.unwrap();
    let old: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sm.fetches(), 1, "one fetch for the warm connection");

    alter_password(&pg, "rotated-password-2");
    sm.set_secret(rds_secret(&pg, "rotated-password-2"));

    // The transaction pins the old connection, so this statement needs a new one.
    let new = pid(&client).await;
    assert_ne!(new, old);
    assert_eq!(sm.fetches(), 2, "exactly one fresh fetch after the refusal");
    // The connection opened with the old password is still open and usable.
    let still: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(still, old);
    tx.commit().await.unwrap();
    let open = backends(&pg);
    assert!(open.contains(&old) && open.contains(&new), "{open:?}");

    // Many more statements, all fine, with no further fetches.
    for _ in 0..20 {
        pid(&client).await;
    }
    assert_eq!(sm.fetches(), 2);
    let logs = ext.logs();
    assert!(
        logs.contains("retrying once with fresh ones"),
        "the retry is logged:\n{logs}"
    );
    assert!(
        pg.log_tail(200)
            .contains("password authentication failed for user \"app\""),
        "the first attempt really was refused by PostgreSQL"
    );
}

/// A short TTL picks up a rotated secret without any refusal, and
/// WARMPOOL_MAX_CONNECTION_LIFETIME_MS replaces the connection opened with the old one.
#[tokio::test]
async fn old_connections_are_recycled_and_new_ones_use_the_new_secret() {
    let pg = PgServer::start();
    let sm = SecretsManagerStandIn::start(SECRET_ID, rds_secret(&pg, pg.password()));
    let ext = start(
        &pg,
        &sm,
        &[
            ("WARMPOOL_SECRET_TTL_MS", "100"),
            ("WARMPOOL_MAX_CONNECTION_LIFETIME_MS", "700"),
            ("WARMPOOL_CHECK_AFTER_IDLE_MS", "100000"),
        ],
    );
    let client = ext.client().await;
    let first = pid(&client).await;
    assert_eq!(pid(&client).await, first, "reused within its lifetime");

    // Dual-user style: the new password works at once, and the old one stops working too.
    alter_password(&pg, "rotated-password-3");
    sm.set_secret(rds_secret(&pg, "rotated-password-3"));
    tokio::time::sleep(Duration::from_millis(800)).await;

    let second = pid(&client).await;
    assert_ne!(
        second, first,
        "the connection past its lifetime was replaced"
    );
    assert_eq!(sm.fetches(), 2, "the expired TTL fetched the new version");
    let logs = ext.logs();
    assert!(
        !logs.contains("refused the credentials"),
        "no refusal was needed:\n{logs}"
    );
    assert!(logs.contains("version=v2"), "{logs}");
    // The old connection was closed, not leaked.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while backends(&pg).contains(&first) {
        assert!(std::time::Instant::now() < deadline, "{:?}", backends(&pg));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Max lifetime with static credentials, the default provider.
#[tokio::test]
async fn max_lifetime_recycles_static_connections() {
    let pg = PgServer::start();
    let mut ext = Extension::start(&pg, &[("WARMPOOL_MAX_CONNECTION_LIFETIME_MS", "300")]);
    ext.wait_for_log("pool warmed", Duration::from_secs(20));
    let client = ext.client().await;
    let first = pid(&client).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = pid(&client).await;
    assert_ne!(first, second);
    assert_eq!(pid(&client).await, second);
}

/// When the fresh secret is refused too, the function gets PostgreSQL's 28P01 with a DETAIL
/// naming the provider and the secret's id, and neither password anywhere.
#[tokio::test]
async fn a_secret_that_stays_wrong_is_an_error_naming_the_secret() {
    let pg = PgServer::start();
    let sm = SecretsManagerStandIn::start(SECRET_ID, rds_secret(&pg, "wrong-password-1"));
    let ext = start(&pg, &sm, &[("WARMPOOL_WARM_SIZE", "0")]);
    let client = ext.client().await;
    sm.set_secret(rds_secret(&pg, "wrong-password-2"));
    let e = client.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{e:?}");
    let text = format!("{e} {e:?}");
    assert!(text.contains("secrets-manager"), "{text}");
    assert!(text.contains(SECRET_ID), "{text}");
    assert!(text.contains("retried once"), "{text}");
    assert!(!text.contains("wrong-password"), "{text}");
    // One fetch, then one fresh fetch per refusal (a query can take more than one connection
    // attempt: its Prepare and its Execute each ask the pool), and nothing else.
    let logs = ext.logs();
    let retries = logs.matches("retrying once with fresh ones").count();
    assert!(retries >= 1, "{logs}");
    assert_eq!(sm.fetches(), 1 + retries, "{logs}");

    // Fixing the secret fixes the next connection.
    sm.set_secret(rds_secret(&pg, pg.password()));
    let ok: i32 = client.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(ok, 7);
    assert!(!ext.logs().contains("wrong-password"));
}

/// Secrets Manager refusing (no such secret, access denied) is 08001 naming the secret;
/// Secrets Manager failing after a successful fetch leaves the cached secret in use.
#[tokio::test]
async fn secrets_manager_errors() {
    let pg = PgServer::start();
    let sm = SecretsManagerStandIn::start("another/secret", rds_secret(&pg, pg.password()));
    let ext = start(&pg, &sm, &[("WARMPOOL_WARM_SIZE", "0")]);
    let e = ext
        .client()
        .await
        .query_one("SELECT 1", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().map(SqlState::code), Some("08001"), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(SECRET_ID), "{text}");
    assert!(text.contains("ResourceNotFoundException"), "{text}");
    drop(ext);

    let sm = SecretsManagerStandIn::start(SECRET_ID, rds_secret(&pg, pg.password()));
    sm.set_mode(Mode::Deny);
    let ext = start(&pg, &sm, &[("WARMPOOL_WARM_SIZE", "0")]);
    let client = ext.client().await;
    let e = client.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(e.to_string().contains("AccessDeniedException"), "{e}");

    // Once a value is cached, an outage past the TTL keeps using it.
    sm.set_mode(Mode::Serve);
    let ext = start(
        &pg,
        &sm,
        &[
            ("WARMPOOL_SECRET_TTL_MS", "50"),
            ("WARMPOOL_MAX_CONNECTION_LIFETIME_MS", "100"),
        ],
    );
    let client = ext.client().await;
    pid(&client).await;
    sm.set_mode(Mode::Fail);
    tokio::time::sleep(Duration::from_millis(200)).await;
    pid(&client).await;
    assert!(
        ext.logs().contains("using the value fetched before"),
        "{}",
        ext.logs()
    );
    // The requests were signed for the stand-in's region with the session token.
    for r in sm.requests() {
        assert!(r.headers["authorization"].contains("/eu-west-1/secretsmanager/aws4_request"));
        assert_eq!(r.body, r#"{"SecretId":"prod/orders/db"}"#);
    }
}

/// A burst of new connections refused at once fetches the secret again once, not once each.
#[tokio::test]
async fn a_burst_of_refusals_fetches_once() {
    let pg = PgServer::start();
    let sm = SecretsManagerStandIn::start(SECRET_ID, rds_secret(&pg, pg.password()));
    let ext = start(
        &pg,
        &sm,
        &[
            ("WARMPOOL_MAX_SIZE", "4"),
            ("WARMPOOL_SECRET_TTL_MS", "600000"),
        ],
    );
    let client = ext.client().await;
    assert_eq!(sm.fetches(), 1);
    // Holds the lock the statements below wait for; opened before the rotation, which leaves
    // open sessions alone.
    let gate = pg.tokio_client().await;
    gate.batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    alter_password(&pg, "rotated-password-4");
    sm.set_secret(rds_secret(&pg, "rotated-password-4"));

    // Four statements at once, each waiting on the gate, need four connections: the warm one
    // and three new ones, all refused with the cached secret at first.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                c.query_one(
                    "SELECT pg_backend_pid(), pg_advisory_xact_lock_shared(4242)::text",
                    &[],
                )
                .await
                .map(|r| r.get::<_, i32>(0))
            })
        })
        .collect();
    // All four running at once, each on its own connection: then the gate opens.
    loop {
        let waiting: i64 = gate
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 4 {
            break;
        }
        assert!(
            !tasks.iter().any(|t| t.is_finished()),
            "a statement ended before the gate opened"
        );
        tokio::task::yield_now().await;
    }
    gate.batch_execute("SELECT pg_advisory_unlock(4242)")
        .await
        .unwrap();
    let mut pids = Vec::new();
    for t in tasks {
        pids.push(t.await.unwrap().expect("no statement sees the rotation"));
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4, "{pids:?}");
    let logs = ext.logs();
    assert!(
        logs.matches("retrying once with fresh ones").count() >= 2,
        "{logs}"
    );
    assert_eq!(
        sm.fetches(),
        2,
        "one fetch shared by every refused connection:\n{logs}"
    );
}
