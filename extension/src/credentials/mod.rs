//! Where each new connection's credentials come from: the configuration (`static`), an AWS
//! Secrets Manager secret (`secrets-manager`), or an RDS IAM token (`rds-iam`), chosen by
//! `WARMPOOL_AUTH`.
//!
//! The pool asks for a [`Login`] every time it opens a connection, and once more, fresh, when
//! PostgreSQL refuses one with 28P01 or 28000: that is how a rotated password or an expired
//! token is picked up without an error reaching the function. Connections already open are not
//! touched: PostgreSQL checks credentials only when a connection authenticates, and RDS checks
//! IAM tokens only then too.
//!
//! # Why not the AWS SDK
//! The issue asked to weigh `aws-config` + `aws-sdk-secretsmanager` against a lean signed
//! request. Measured on the build machine (x86_64, 2 cores, release profile: LTO, one codegen
//! unit, stripped; medians of 60 runs each, two rounds agreeing within 0.7 ms):
//!
//! | build | `target/release/warmpool` | exec to listening | exec to first secret |
//! | --- | --- | --- | --- |
//! | before credentials | 5,163,560 bytes | 2.0 ms | n/a |
//! | + aws-config 1.13 and aws-sdk-secretsmanager 1.125, defaults | 15,607,280 bytes (+10.4 MB, 3.0×) | 2.3 ms | 8.5–9.2 ms |
//! | this module (aws-sigv4; hyper and rustls were already in) | 5,873,808 bytes (+0.7 MB, +14 %) | 1.85 ms | 3.0–3.1 ms |
//!
//! "Exec to first secret" is one GetSecretValue answered by a stand-in on loopback over plain
//! HTTP, so it is the client's own cost: the SDK's is loading its configuration and building
//! its client (about 3.4 ms) before the request. Neither build does any AWS work before the
//! socket listens. The SDK brings its own HTTP and TLS stack (aws-lc-rs), a credential chain
//! Lambda does not need (profiles, SSO, IMDS, credential processes), retries and endpoint
//! rules; the extension needs one API call with the environment's credentials, so it signs that
//! call with `aws-sigv4` (AWS's own signer, as AWS's Rust RDS IAM example does) and sends it
//! with the hyper and rustls it already had.
//!
//! # Layout
//! - [`secret`]: [`Secret`], a string whose `Debug` is redacted.
//! - [`clock`]: the wall clock that expiry is judged by, injectable for tests.
//! - [`aws`]: the role's credentials from the environment, and signing.
//! - [`rds_iam`]: IAM tokens.
//! - [`secrets_manager`]: GetSecretValue and the secret's JSON.
//! - [`http`]: one HTTPS request at a time.

pub mod aws;
pub mod clock;
pub mod http;
pub mod rds_iam;
pub mod secret;
pub mod secrets_manager;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use aws::{AwsCredentials, AwsSettings};
pub use clock::{Clock, ManualClock, SystemClock};
pub use secret::Secret;
pub use secrets_manager::{DbSecret, SecretsManagerSettings};

use clock::fresh;
use rds_iam::{Target, TokenCache};
use secrets_manager::SecretsManagerClient;

/// `WARMPOOL_AUTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `static`: the password in `DATABASE_URL` or `PGPASSWORD`. The default.
    Static,
    /// `secrets-manager`: the secret `WARMPOOL_SECRET_ID`.
    SecretsManager,
    /// `rds-iam`: an RDS IAM token per connection.
    RdsIam,
}

impl AuthMode {
    /// The name used in `WARMPOOL_AUTH`, logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            AuthMode::Static => "static",
            AuthMode::SecretsManager => "secrets-manager",
            AuthMode::RdsIam => "rds-iam",
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<AuthMode, String> {
        match s {
            "static" => Ok(AuthMode::Static),
            "secrets-manager" => Ok(AuthMode::SecretsManager),
            "rds-iam" => Ok(AuthMode::RdsIam),
            other => Err(format!("{other:?}: use static, secrets-manager or rds-iam")),
        }
    }
}

/// The credential settings, per mode.
#[derive(Debug, Clone)]
pub enum Auth {
    /// From the connection settings.
    Static {
        /// The setting that holds the password, `DATABASE_URL` or `PGPASSWORD`; none if
        /// neither sets one.
        password_from: Option<&'static str>,
    },
    /// From a secret.
    SecretsManager(SecretsManagerSettings),
    /// IAM tokens, signed with these AWS settings.
    RdsIam(AwsSettings),
}

impl Auth {
    /// The mode.
    pub fn mode(&self) -> AuthMode {
        match self {
            Auth::Static { .. } => AuthMode::Static,
            Auth::SecretsManager(_) => AuthMode::SecretsManager,
            Auth::RdsIam(_) => AuthMode::RdsIam,
        }
    }
}

/// Where credentials came from, for logs and errors: the provider and the secret's id, never
/// the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The connection settings.
    Static {
        /// The setting that holds the password, `DATABASE_URL` or `PGPASSWORD`; none if
        /// neither sets one.
        password_from: Option<&'static str>,
    },
    /// A Secrets Manager secret.
    SecretsManager {
        /// Its name or ARN.
        secret_id: String,
    },
    /// RDS IAM tokens.
    RdsIam {
        /// The database user.
        user: String,
        /// `host:port` the tokens are signed for.
        endpoint: String,
    },
}

impl Origin {
    /// The provider.
    pub fn mode(&self) -> AuthMode {
        match self {
            Origin::Static { .. } => AuthMode::Static,
            Origin::SecretsManager { .. } => AuthMode::SecretsManager,
            Origin::RdsIam { .. } => AuthMode::RdsIam,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Static {
                password_from: Some(variable),
            } => write!(f, "static credentials (the password in {variable})"),
            Origin::Static {
                password_from: None,
            } => f.write_str(
                "static credentials (no password: neither DATABASE_URL nor PGPASSWORD sets one)",
            ),
            Origin::SecretsManager { secret_id } => {
                write!(
                    f,
                    "secrets-manager secret {secret_id:?} (WARMPOOL_SECRET_ID)"
                )
            }
            Origin::RdsIam { user, endpoint } => {
                write!(f, "rds-iam token for user {user:?} at {endpoint}")
            }
        }
    }
}

/// What went wrong getting credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request never got an answer: DNS, TCP, TLS, or the connection broke.
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable {
        /// The endpoint URL.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// Secrets Manager answered with an error: access denied, no such secret, throttled…
    #[error("Secrets Manager answered HTTP {status} {error_type}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The AWS error type, such as `AccessDeniedException`.
        error_type: String,
        /// AWS's message (it names resources, never secret values).
        message: String,
    },
    /// The secret is not in the shape RDS rotation writes.
    #[error("{0}")]
    Malformed(String),
    /// Neither the secret nor the settings name a database host.
    #[error(
        "no database host: the secret has no \"host\" and neither DATABASE_URL nor PGHOST sets one"
    )]
    NoHost,
    /// A request could not be signed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// Fetching took longer than the connect timeout.
    #[error("took longer than {} ms (WARMPOOL_CONNECT_TIMEOUT_MS)", .0.as_millis())]
    Timeout(Duration),
}

impl ErrorKind {
    /// Whether trying again later may succeed: the service was unreachable, slow, throttling or
    /// failing on its side.
    pub fn is_transient(&self) -> bool {
        match self {
            ErrorKind::Unreachable { .. } | ErrorKind::Timeout(_) => true,
            ErrorKind::Refused {
                status, error_type, ..
            } => *status >= 500 || error_type.contains("Throttl") || *status == 429,
            ErrorKind::Malformed(_) | ErrorKind::NoHost | ErrorKind::Signing(_) => false,
        }
    }
}

/// Credentials could not be had. The message names the provider and the secret's id.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{origin}: {kind}")]
pub struct CredentialsError {
    origin: Origin,
    kind: ErrorKind,
}

impl CredentialsError {
    /// A new error.
    pub fn new(origin: Origin, kind: ErrorKind) -> CredentialsError {
        CredentialsError { origin, kind }
    }

    /// Where the credentials were to come from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

/// The credentials for one connection attempt: what they set over the configured connection
/// settings. `Debug` redacts the password.
#[derive(Debug, Clone, Default)]
pub struct Login {
    /// The user, when the provider names it (a secret does).
    pub user: Option<String>,
    /// The password or token.
    pub password: Option<Secret>,
    /// The host, used when the settings name none.
    pub host: Option<String>,
    /// The port, used when the settings name none.
    pub port: Option<u16>,
    /// The database, used when the settings name none.
    pub dbname: Option<String>,
    /// The secret's version, for logs.
    pub version: Option<String>,
    /// Bumped at every fetch, so concurrent refusals of one login trigger one fetch, not many.
    generation: u64,
}

impl Login {
    /// `template` with these credentials applied. The settings' own host, port and database
    /// win over the secret's (an RDS Proxy endpoint in front of the instance the secret names,
    /// say); the user and password always come from the login when it has them.
    pub fn apply(
        &self,
        template: &crate::pgconfig::PgConfig,
    ) -> Result<crate::pgconfig::PgConfig, ErrorKind> {
        let mut pg = template.clone();
        if let Some(user) = &self.user {
            pg.user(user);
        }
        if let Some(password) = &self.password {
            pg.password(password.expose());
        }
        if pg.get_hosts().is_empty() {
            match &self.host {
                Some(host) => {
                    pg.host(host);
                }
                None => return Err(ErrorKind::NoHost),
            }
        }
        if pg.get_ports().is_empty() {
            pg.port(self.port.unwrap_or(crate::settings::DEFAULT_PORT));
        }
        if pg.get_dbname().is_none() {
            // libpq's default: the database named after the user.
            let db = self
                .dbname
                .clone()
                .or_else(|| pg.get_user().map(str::to_owned));
            if let Some(db) = db {
                pg.dbname(&db);
            }
        }
        Ok(pg)
    }
}

/// After a failed fetch with a usable value cached, how long to keep using that value before
/// asking Secrets Manager again. Without it, every new connection during an outage would wait
/// out the fetch timeout first.
const RETRY_FETCH_AFTER: Duration = Duration::from_secs(30);

/// Hands out a [`Login`] per connection attempt.
#[derive(Debug)]
pub struct Provider {
    origin: Origin,
    source: Source,
    clock: Arc<dyn Clock>,
    fetch_timeout: Duration,
}

#[derive(Debug)]
enum Source {
    Static,
    SecretsManager {
        client: SecretsManagerClient,
        cache: tokio::sync::Mutex<Option<Cached>>,
        generation: AtomicU64,
    },
    RdsIam(TokenCache),
}

#[derive(Debug)]
struct Cached {
    login: Arc<Login>,
    fetched_at: SystemTime,
    /// When the last attempt to fetch it again failed.
    failed_at: Option<SystemTime>,
}

impl Provider {
    /// The provider for `auth`, logging in to the server `pg` names, each fetch bounded by
    /// `fetch_timeout`, reading time from `clock` (tests sign for a fixed time or jump past
    /// expiry). `Config` builds one from the environment.
    pub fn new(
        auth: &Auth,
        pg: &crate::pgconfig::PgConfig,
        fetch_timeout: std::time::Duration,
        clock: Arc<dyn Clock>,
    ) -> Provider {
        let (origin, source) = match auth {
            Auth::Static { password_from } => (
                Origin::Static {
                    password_from: *password_from,
                },
                Source::Static,
            ),
            Auth::SecretsManager(settings) => (
                Origin::SecretsManager {
                    secret_id: settings.secret_id.clone(),
                },
                Source::SecretsManager {
                    client: SecretsManagerClient::new(settings.clone()),
                    cache: tokio::sync::Mutex::new(None),
                    generation: AtomicU64::new(0),
                },
            ),
            Auth::RdsIam(aws) => {
                let target = rds_iam_target(pg);
                let origin = Origin::RdsIam {
                    user: target.user.clone(),
                    endpoint: format!("{}:{}", target.host, target.port),
                };
                (origin, Source::RdsIam(TokenCache::new(aws.clone(), target)))
            }
        };
        Provider {
            origin,
            source,
            clock,
            fetch_timeout,
        }
    }

    /// Where credentials come from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Credentials for a new connection: cached while fresh.
    pub async fn login(&self) -> Result<Arc<Login>, CredentialsError> {
        match &self.source {
            Source::Static => Ok(Arc::new(Login::default())),
            Source::RdsIam(tokens) => self.token(tokens, false),
            Source::SecretsManager {
                client,
                cache,
                generation,
            } => {
                // Held across the fetch, so a burst of new connections makes one request.
                let mut cached = cache.lock().await;
                let now = self.clock.now();
                if let Some(c) = cached.as_ref() {
                    let backing_off = c
                        .failed_at
                        .is_some_and(|at| fresh(at, now, RETRY_FETCH_AFTER));
                    if fresh(c.fetched_at, now, client.settings.ttl) || backing_off {
                        return Ok(c.login.clone());
                    }
                }
                match self.fetch(client, generation).await {
                    Ok(login) => {
                        *cached = Some(Cached {
                            login: login.clone(),
                            fetched_at: now,
                            failed_at: None,
                        });
                        Ok(login)
                    }
                    // Past the TTL but Secrets Manager cannot be reached (or is failing or
                    // throttling): the value it gave last is still the best guess, and if it
                    // has been rotated away the connection fails with 28P01, which fetches
                    // again. An answer that is not transient (access denied, no such secret, a
                    // malformed value) is reported, not papered over.
                    Err(e) => match cached.as_mut() {
                        Some(c) if e.kind().is_transient() => {
                            tracing::warn!(credentials = %self.origin, error = %e.kind,
                                "cannot fetch the secret again; using the value fetched before");
                            c.failed_at = Some(now);
                            Ok(c.login.clone())
                        }
                        _ => Err(e),
                    },
                }
            }
        }
    }

    /// Credentials to retry with after the server refused `refused`: fetched again (a secret)
    /// or newly signed (a token). `None` for static credentials, where nothing new can be had.
    pub async fn fresh_login(
        &self,
        refused: &Login,
    ) -> Result<Option<Arc<Login>>, CredentialsError> {
        match &self.source {
            Source::Static => Ok(None),
            Source::RdsIam(tokens) => self.token(tokens, true).map(Some),
            Source::SecretsManager {
                client,
                cache,
                generation,
            } => {
                let mut cached = cache.lock().await;
                if let Some(c) = cached.as_ref() {
                    if c.login.generation != refused.generation {
                        // Another connection refetched since this one got its login.
                        return Ok(Some(c.login.clone()));
                    }
                }
                let now = self.clock.now();
                let login = self.fetch(client, generation).await?;
                *cached = Some(Cached {
                    login: login.clone(),
                    fetched_at: now,
                    failed_at: None,
                });
                Ok(Some(login))
            }
        }
    }

    fn token(&self, tokens: &TokenCache, fresh: bool) -> Result<Arc<Login>, CredentialsError> {
        let now = self.clock.now();
        let token = if fresh {
            tokens.fresh_token(now)
        } else {
            tokens.token(now)
        }
        .map_err(|e| CredentialsError::new(self.origin.clone(), ErrorKind::Signing(e)))?;
        Ok(Arc::new(Login {
            user: Some(tokens.target().user.clone()),
            password: Some(token),
            ..Login::default()
        }))
    }

    async fn fetch(
        &self,
        client: &SecretsManagerClient,
        generation: &AtomicU64,
    ) -> Result<Arc<Login>, CredentialsError> {
        let started = std::time::Instant::now();
        let fetched = tokio::time::timeout(self.fetch_timeout, client.fetch(self.clock.now()))
            .await
            .unwrap_or(Err(ErrorKind::Timeout(self.fetch_timeout)))
            .map_err(|kind| CredentialsError::new(self.origin.clone(), kind))?;
        tracing::info!(
            credentials = %self.origin,
            version = %fetched.version_id.as_deref().unwrap_or("unknown"),
            user = %fetched.username,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "fetched the database secret"
        );
        Ok(Arc::new(Login {
            user: Some(fetched.username),
            password: Some(fetched.password),
            host: fetched.host,
            port: fetched.port,
            dbname: fetched.dbname,
            version: fetched.version_id,
            generation: generation.fetch_add(1, Ordering::AcqRel) + 1,
        }))
    }
}

/// The endpoint and user an IAM token is for. The configuration has checked there is exactly
/// one TCP host and port and a user.
fn rds_iam_target(pg: &crate::pgconfig::PgConfig) -> Target {
    let host = match pg.get_hosts().first() {
        Some(crate::pgconfig::Host::Tcp(h)) => h.clone(),
        _ => String::new(),
    };
    Target {
        host,
        port: pg
            .get_ports()
            .first()
            .copied()
            .unwrap_or(crate::settings::DEFAULT_PORT),
        user: pg.get_user().unwrap_or_default().to_owned(),
    }
}
