//! Credentials against a real PostgreSQL: RDS IAM tokens accepted as the password (the pool is
//! built in-process, so the clock can be fixed and the token known), and a run that must not
//! leak a password, a token or an AWS secret into any log line, error or `Debug` output.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use warmpool_extension::config::Config;
use warmpool_extension::credentials::rds_iam::{auth_token, Target, TOKEN_REUSE};
use warmpool_extension::credentials::secrets_manager::parse_secret;
use warmpool_extension::credentials::{
    Auth, AwsSettings, Clock, CredentialsError, ErrorKind, Login, ManualClock, Origin, Provider,
    Secret,
};
use warmpool_extension::pool::{self, ConnectError, PooledConn};
use warmpool_extension::{pool_errors, tls};
use warmpool_tests::secrets_manager::{
    rds_secret, SecretsManagerStandIn, ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, SESSION_TOKEN,
};
use warmpool_tests::{Extension, PgServer};

/// 2024-01-02T03:04:05Z.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_164_645)
}

/// The extension's settings for `pg` in rds-iam mode, TLS verify-full, no password.
fn iam_config(pg: &PgServer) -> Config {
    let mut vars: HashMap<String, String> = pg.env().into_iter().collect();
    vars.remove("PGPASSWORD");
    vars.extend(
        [
            ("WARMPOOL_AUTH", "rds-iam"),
            ("AWS_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN),
            ("WARMPOOL_MAX_SIZE", "8"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    Config::from_lookup(|k| vars.get(k).cloned()).expect("config")
}

fn aws(config: &Config) -> AwsSettings {
    match &config.auth {
        Auth::RdsIam(aws) => aws.clone(),
        other => panic!("{other:?}"),
    }
}

/// The token the extension should sign at `at`, computed directly.
fn token_at(pg: &PgServer, config: &Config, at: SystemTime) -> Secret {
    let target = Target {
        host: pg.host().to_owned(),
        port: pg.port(),
        user: pg.user().to_owned(),
    };
    auth_token(&aws(config), &target, at).expect("sign")
}

/// Makes PostgreSQL accept `token` as the app role's password: in RDS the token is checked
/// by IAM, here it is checked the way any password is, which proves it reached the server
/// intact, over TLS, through SCRAM.
fn accept_as_password(pg: &PgServer, token: &Secret) {
    assert!(!token.expose().contains('\''));
    pg.superuser_psql(&format!("ALTER ROLE app PASSWORD '{}'", token.expose()));
}

/// Opens a connection (holding `held` so the pool cannot hand back an idle one).
async fn open(pool: &pool::Pool, held: &mut Vec<PooledConn>) -> Result<(), pool::GetError> {
    held.push(pool.get().await?);
    Ok(())
}

#[tokio::test]
async fn rds_iam_tokens_authenticate_against_postgresql() {
    let pg = PgServer::start();
    let config = iam_config(&pg);
    let clock = ManualClock::new(t0());
    let provider = Provider::with_clock(&config, Arc::new(clock.clone()));
    let pool = pool::build_with(&config, provider).expect("pool");
    let mut held = Vec::new();

    // The token for the fixed time is the password: the pool's connection authenticates.
    let first = token_at(&pg, &config, t0());
    assert!(first.expose().starts_with(&format!(
        "localhost:{}/?Action=connect&DBUser=app&",
        pg.port()
    )));
    accept_as_password(&pg, &first);
    open(&pool, &mut held)
        .await
        .expect("connect with the IAM token");
    let ssl = pg.superuser_psql(
        "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = 'app'",
    );
    assert_eq!(ssl, "t", "the token only travels over TLS");

    // Within the reuse window the cached token is used: no new signature, still accepted.
    clock.advance(TOKEN_REUSE - Duration::from_secs(1));
    open(&pool, &mut held).await.expect("cached token");

    // Still within the window, but the server now expects a token signed later (as if the
    // cached one had been refused): one fresh token, one retry, success.
    let retried = token_at(&pg, &config, clock.now());
    assert_ne!(retried, first);
    accept_as_password(&pg, &retried);
    open(&pool, &mut held)
        .await
        .expect("retry with a fresh token");

    // A freeze far longer than the token's lifetime: the wall clock at use time makes a new
    // token; the stale one would be refused.
    clock.advance(Duration::from_secs(2 * 3600));
    let thawed = token_at(&pg, &config, clock.now());
    accept_as_password(&pg, &thawed);
    open(&pool, &mut held)
        .await
        .expect("a new token after the thaw");

    // Both attempts refused: 28P01, naming the provider, the user and the endpoint, and
    // showing no token.
    pg.superuser_psql("ALTER ROLE app PASSWORD 'not-a-token'");
    clock.advance(Duration::from_secs(1));
    let e = open(&pool, &mut held).await.unwrap_err();
    let wire = match &e {
        deadpool::managed::PoolError::Backend(c) => {
            assert!(c.is_auth_failure(), "{c:?}");
            pool_errors::from_connect(c)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(wire.code(), "28P01");
    let shown = format!("{e} | {e:?} | {wire} | {wire:?}");
    assert!(shown.contains("rds-iam token for user \"app\""), "{shown}");
    assert!(shown.contains("retried once"), "{shown}");
    assert!(!shown.contains("X-Amz-Signature"), "{shown}");
    assert!(!shown.contains("Action=connect"), "{shown}");
}

/// Everything a run with known secrets produces: the extension's log at trace level through a
/// rotation, an auth failure and a Secrets Manager failure; the errors the function gets; and
/// the `Debug` of every configuration, credential and error type. None may contain a password,
/// a token, the AWS secret key or the session token.
#[tokio::test]
async fn no_secret_appears_in_logs_errors_or_debug() {
    let pg = PgServer::start();
    let password = pg.password().to_owned();
    let rotated = "Rotated-Password-7c1f";
    let secret_id = "prod/leak-check/db";
    let sm = SecretsManagerStandIn::start(secret_id, rds_secret(&pg, &password));
    let mut shown: Vec<String> = Vec::new();

    // A run of the real binary at trace level.
    let owned = sm.env(secret_id);
    let mut env: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.push(("WARMPOOL_LOG", "trace"));
    env.push(("WARMPOOL_SECRET_TTL_MS", "600000"));
    // Every checkout opens a new connection, so each step below authenticates.
    env.push(("WARMPOOL_MAX_CONNECTION_LIFETIME_MS", "1"));
    let mut ext = Extension::start(&pg, &env);
    ext.wait_for_log("pool warmed", Duration::from_secs(20));
    let client = ext.client().await;
    let tx = client.transaction().await.unwrap();
    pg.superuser_psql(&format!("ALTER ROLE app PASSWORD '{rotated}'"));
    sm.set_secret(rds_secret(&pg, rotated));
    client
        .query_one("SELECT 1", &[])
        .await
        .expect("rotation is seamless");
    tx.commit().await.unwrap();
    // A secret that stays wrong: the function gets an error.
    sm.set_secret(rds_secret(&pg, "Wrong-Password-9d2e"));
    pg.superuser_psql("ALTER ROLE app PASSWORD 'Other-Password-3b4a'");
    let e = client.query_one("SELECT 1", &[]).await.unwrap_err();
    shown.push(format!("{e} {e:?}"));
    ext.terminate();
    let logs = ext.logs();
    assert!(logs.contains("TRACE"), "trace logging was on");
    assert!(logs.contains("fetched the database secret"), "{logs}");
    assert!(logs.contains("retrying once with fresh ones"), "{logs}");
    shown.push(logs);

    // The rds-iam binary at trace level: its token is never logged.
    let mut iam_env: Vec<(&str, &str)> = owned
        .iter()
        .filter(|(k, _)| !k.starts_with("PG") && k != "WARMPOOL_SECRET_ID")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    iam_env.extend([
        ("WARMPOOL_AUTH", "rds-iam"),
        ("WARMPOOL_LOG", "trace"),
        ("PGPASSWORD", ""),
    ]);
    let mut iam = Extension::start(&pg, &iam_env);
    iam.wait_for_log("pool warmed", Duration::from_secs(20));
    let e = iam
        .client()
        .await
        .query_one("SELECT 1", &[])
        .await
        .unwrap_err();
    shown.push(format!("{e} {e:?}"));
    iam.terminate();
    shown.push(iam.logs());

    // In process: the Debug of every configuration and credential type.
    let iam_config = iam_config(&pg);
    let clock = ManualClock::new(t0());
    let token = token_at(&pg, &iam_config, t0());
    let iam_provider = Provider::with_clock(&iam_config, Arc::new(clock.clone()));
    let login = iam_provider.login().await.unwrap();
    assert_eq!(login.password.as_ref(), Some(&token));
    shown.push(format!(
        "{iam_config:?} {iam_provider:?} {login:?} {:?}",
        aws(&iam_config)
    ));
    let iam_pool = pool::build_with(&iam_config, iam_provider).unwrap();
    let refused = iam_pool.get().await.unwrap_err();
    shown.push(format!("{iam_pool:?} {refused} {refused:?}"));

    let sm_vars: HashMap<String, String> =
        pg.env().into_iter().chain(owned.iter().cloned()).collect();
    let sm_config = Config::from_lookup(|k| sm_vars.get(k).cloned()).unwrap();
    let sm_pool = pool::build(&sm_config).unwrap();
    let mut conns = Vec::new();
    sm.set_secret(rds_secret(&pg, rotated));
    pg.superuser_psql(&format!("ALTER ROLE app PASSWORD '{rotated}'"));
    conns.push(sm_pool.get().await.unwrap());
    shown.push(format!(
        "{sm_config:?} {:?} {sm_pool:?} {:?}",
        sm_config.auth, conns[0]
    ));

    let mut static_vars: HashMap<String, String> = pg.env().into_iter().collect();
    static_vars.insert("PGPASSWORD".into(), password.clone());
    let static_config = Config::from_lookup(|k| static_vars.get(k).cloned()).unwrap();
    static_vars.insert(
        "DATABASE_URL".into(),
        format!("postgres://app:{password}@localhost/app"),
    );
    let url_config = Config::from_lookup(|k| static_vars.get(k).cloned()).unwrap();
    shown.push(format!(
        "{static_config:?} {url_config:?} {:?}",
        pool::build(&static_config).unwrap()
    ));
    let static_pool = pool::build(&static_config).unwrap();
    let static_refused = static_pool.get().await.unwrap_err();
    shown.push(format!("{static_refused} {static_refused:?}"));
    if let deadpool::managed::PoolError::Backend(c) = &static_refused {
        let wire = pool_errors::from_connect(c);
        shown.push(format!("{wire} {wire:?}"));
    }

    // Configuration errors around secrets.
    for (k, v) in [
        ("PGPASSWORD", password.as_str()),
        ("WARMPOOL_AUTH", "bogus"),
    ] {
        let mut vars = sm_vars.clone();
        vars.insert(k.into(), v.into());
        let e = Config::from_lookup(|k| vars.get(k).cloned()).unwrap_err();
        shown.push(format!("{e} {e:?}"));
    }
    let mut vars = static_vars.clone();
    vars.insert("PGSSLROOTCERT".into(), "/nonexistent/ca.pem".into());
    let bad_tls = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let e = pool::build(&bad_tls).unwrap_err();
    shown.push(format!("{e} {e:?}"));
    if let Err(e) = tls::connector(bad_tls.ssl_mode, &bad_tls.root_certs) {
        shown.push(format!("{e} {e:?}"));
    }

    // Every credential error kind and connect error, with their wire forms.
    let origins = [
        Origin::Static {
            password_from: Some("DATABASE_URL"),
        },
        Origin::Static {
            password_from: None,
        },
        Origin::SecretsManager {
            secret_id: secret_id.into(),
        },
        Origin::RdsIam {
            user: "app".into(),
            endpoint: format!("localhost:{}", pg.port()),
        },
    ];
    let kinds = [
        ErrorKind::Unreachable {
            endpoint: sm.endpoint(),
            reason: "connect: refused".into(),
        },
        ErrorKind::Refused {
            status: 400,
            error_type: "AccessDeniedException".into(),
            message: "no".into(),
        },
        parse_secret(&format!(
            r#"{{"username":"app","password":{{"v":"{password}"}}}}"#
        ))
        .unwrap_err(),
        parse_secret(&format!(
            r#"{{"username":"app","password":"{password}","port":"{password}"}}"#
        ))
        .unwrap_err(),
        ErrorKind::NoHost,
        ErrorKind::Signing("bad".into()),
        ErrorKind::Timeout(Duration::from_secs(5)),
    ];
    for origin in &origins {
        for kind in &kinds {
            let e = CredentialsError::new(origin.clone(), kind.clone());
            let c = ConnectError::from(e.clone());
            let wire = pool_errors::from_connect(&c);
            shown.push(format!("{e} {e:?} {c} {c:?} {wire} {wire:?} {origin}"));
        }
    }
    let timeout = ConnectError::Timeout {
        phase: "connecting to the database",
        after: Duration::from_secs(5),
    };
    shown.push(format!(
        "{timeout} {timeout:?} {}",
        pool_errors::from_connect(&timeout)
    ));
    let secret = parse_secret(&rds_secret(&pg, &password).to_string()).unwrap();
    shown.push(format!("{secret:?} {:?}", Secret::new(password.clone())));
    let mut login = Login::default();
    login.password = Some(Secret::new(password.clone()));
    shown.push(format!("{login:?}"));

    // Nothing shown may hold a secret. The checks above made sure there was something to show.
    let forbidden = [
        password.as_str(),
        rotated,
        "Wrong-Password-9d2e",
        "Other-Password-3b4a",
        SECRET_ACCESS_KEY,
        SESSION_TOKEN,
        token.expose(),
        "X-Amz-Signature",
        "Action=connect",
    ];
    for text in &shown {
        for secret in forbidden {
            assert!(
                !text.contains(secret),
                "{secret:?} appears in:\n{}",
                text.replace(secret, "<<<HERE>>>")
            );
        }
    }
}
