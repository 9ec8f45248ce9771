//! Configuration from the environment, the way libpq reads it, plus `WARMPOOL_*` pool settings.
//!
//! Every setting, its variable and its default are listed in [`Config`]'s field docs and in the
//! README's configuration table. A value that cannot be parsed stops start-up with a message that
//! names the variable: a pool that silently falls back to a default is worse than one that does
//! not start.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use crate::settings::{RootCerts, SslMode, StatementMode};

use crate::credentials::http::Endpoint;
use crate::credentials::secrets_manager::{default_endpoint, SecretsManagerSettings};
use crate::credentials::{Auth, AuthMode, AwsCredentials, AwsSettings, Secret};
use crate::pgconfig::{ChannelBinding, Host, PgConfig};
use crate::settings::fleet::FleetSettings;
use crate::settings::warmup::{parse_prepare, parse_warmup, WarmQuery};

/// A bad setting: the variable, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.variable, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// The extension's configuration.
///
/// `Debug` never shows a password, a secret key or a token: `PgConfig` redacts the
/// password, and the credential types in [`crate::credentials`] redact theirs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connection parameters: `DATABASE_URL`, then `PGHOST`, `PGPORT` (5432), `PGUSER`,
    /// `PGPASSWORD`, `PGDATABASE` (the user name) and `PGAPPNAME` (`warmpool`) for anything the URL
    /// leaves out.
    pub pg: PgConfig,
    /// `PGSSLMODE`, or `sslmode` in the URL. Default `verify-full`.
    pub ssl_mode: SslMode,
    /// `PGSSLROOTCERT`, or `sslrootcert` in the URL: a PEM file, or `system`. Default `system`.
    pub root_certs: RootCerts,
    /// `PGCHANNELBINDING`: `disable`, `prefer` or `require`. Default `prefer`.
    pub channel_binding: ChannelBinding,
    /// `WARMPOOL_SOCKET`: the Unix socket path. Default `/tmp/warmpool.sock`.
    pub socket_path: PathBuf,
    /// `WARMPOOL_MAX_SIZE`: most connections open at once. Default 4, or on Lambda Managed
    /// Instances `AWS_LAMBDA_MAX_CONCURRENCY`, so every concurrent invocation can hold one.
    pub max_size: usize,
    /// `WARMPOOL_WARM_SIZE`: connections opened at start and kept open. Default 1.
    pub warm_size: usize,
    /// `WARMPOOL_WAIT_TIMEOUT_MS`: how long a request waits for a free connection before it
    /// fails with 53300. Default 5000.
    pub wait_timeout: Duration,
    /// `WARMPOOL_CONNECT_TIMEOUT_MS`: how long opening one connection (TCP, TLS, auth) may take.
    /// Default 5000.
    pub connect_timeout: Duration,
    /// `WARMPOOL_IDLE_TIMEOUT_MS`: connections beyond the warm size idle this long are closed.
    /// Default 300000.
    pub idle_timeout: Duration,
    /// `WARMPOOL_CHECK_AFTER_IDLE_MS`: a connection idle longer than this is checked with an empty
    /// query before it is handed out, since a dead socket can still look open. Default 1000.
    pub check_after_idle: Duration,
    /// `WARMPOOL_RESET_TIMEOUT_MS`: the bound on a health check, a session reset, a rollback of
    /// an abandoned transaction, or the cancel of a statement past the client's deadline; a
    /// connection that overruns it is closed. Default 2000.
    pub reset_timeout: Duration,
    /// `WARMPOOL_COMMIT_TIMEOUT_MS`: the bound on a COMMIT the client sends with no earlier
    /// deadline of its own. Past it the COMMIT is cancelled: answered, the outcome is definite
    /// (committed, or rolled back); unanswered within the reset timeout, the client gets 08007.
    /// Default 30000.
    pub commit_timeout: Duration,
    /// `WARMPOOL_SHUTDOWN_TIMEOUT_MS`: the bound on closing every connection at shutdown; what has
    /// not closed by then is dropped. Default 500.
    pub shutdown_timeout: Duration,
    /// `WARMPOOL_STATEMENT_CACHE_SIZE`: prepared statements kept per connection, least recently
    /// used evicted first. Default 256. 0 keeps none, and statements then go unnamed.
    pub statement_cache_size: usize,
    /// `WARMPOOL_PREPARED_STATEMENTS`: `named` (the default) prepares each statement once per
    /// connection under a name unique to it; `unnamed` keeps nothing on the server, for poolers
    /// in transaction mode that cannot track named statements.
    pub prepared_statements: StatementMode,
    /// `WARMPOOL_MAX_FRAME_BYTES`: the largest socket frame accepted. Default 16 MiB.
    pub max_frame: usize,
    /// `WARMPOOL_INIT_REQUIRE_DATABASE`: fail the environment's Init when no warm connection can
    /// be opened. Default `false`: the failure is logged and connections are retried on demand,
    /// so a function that does not touch the database keeps working.
    pub init_require_database: bool,
    /// `WARMPOOL_MAX_SESSIONS`: most client sessions (socket connections) served at once; past
    /// it a new session takes the slot of the longest-idle session with no transaction (closed
    /// with 57P05), or else waits up to the wait timeout, then gets 53300. Default 1024.
    pub max_sessions: usize,
    /// `WARMPOOL_HANDSHAKE_TIMEOUT_MS`: how long a new session may take to send Hello.
    /// Default 5000.
    pub handshake_timeout: Duration,
    /// `WARMPOOL_IDLE_SESSION_TIMEOUT_MS`: a session that sends no whole frame for this long,
    /// counted while the environment runs (not while it is frozen), is closed with 57P05; an
    /// open transaction in it is rolled back. `0` means never. Default 600000 (ten minutes).
    pub idle_session_timeout: Option<Duration>,
    /// `WARMPOOL_RETRY_BASE_MS`, `WARMPOOL_RETRY_MAX_MS`, `WARMPOOL_RETRY_BUDGET_MS`: while the
    /// database refuses new connections, attempts are spaced by a jittered backoff that starts
    /// at the base (default 50) and doubles up to the max (default 1000), one attempt at a time
    /// for the whole pool; a request keeps waiting for a connection for up to the budget
    /// (default 3000; `0` disables retries), counted from when it reached the extension, before
    /// the error goes to the client. Statements are never retried.
    pub retry: crate::retry::Policy,
    /// `WARMPOOL_LOG_STATEMENTS`: log every statement with its parameter values at debug level,
    /// for debugging. Default `false`: parameters can hold secrets and personal data.
    pub log_statements: bool,
    /// `AWS_LAMBDA_MAX_CONCURRENCY`, set by Lambda Managed Instances: concurrent invocations per
    /// environment. Above 1 the environment is never frozen and extensions register for SHUTDOWN
    /// only. Default 1 (classic Lambda).
    pub max_concurrency: usize,
    /// `WARMPOOL_FLEET_MAX_CONNECTIONS`, `WARMPOOL_FLEET_NAME`, `WARMPOOL_FLEET_STEAL_IDLE_MS`:
    /// a budget of server connections for every environment of the fleet together, kept by
    /// taking idle connections of frozen environments (see `fleet.rs`). Off by default
    /// (`WARMPOOL_FLEET_MAX_CONNECTIONS` unset or `0`). The name defaults to
    /// `AWS_LAMBDA_FUNCTION_NAME`; the idle threshold to 2000 ms.
    pub fleet: Option<FleetSettings>,
    /// `WARMPOOL_AUTH`: where each new connection's credentials come from: `static` (the
    /// password in `DATABASE_URL` or `PGPASSWORD`), `secrets-manager` (`WARMPOOL_SECRET_ID`) or
    /// `rds-iam` (an IAM token per connection). Default `static`. The AWS modes read the role's
    /// credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and
    /// the region from `AWS_REGION` (or `AWS_DEFAULT_REGION`), all set by Lambda.
    pub auth: Auth,
    /// `WARMPOOL_MAX_CONNECTION_LIFETIME_MS`: a connection older than this is closed instead of
    /// being handed out, so none outlives a credential rotation (or a failover's DNS change)
    /// by long. `0` means no limit. Default 3600000 (one hour, PgBouncer's `server_lifetime`).
    pub max_connection_lifetime: Option<Duration>,
    /// `WARMPOOL_PREPARE` (a JSON array of SQL statements) or `WARMPOOL_PREPARE_FILE` (a file
    /// holding one): statements prepared on every connection as it opens, so their first
    /// execution costs no Parse. Default none.
    pub prepare: Vec<String>,
    /// `WARMPOOL_WARMUP` (a JSON object from name to SQL, or to `{"sql": ..., "ttl_ms": ...}`)
    /// or `WARMPOOL_WARMUP_FILE` (a file holding one): data sets read at Init and served from
    /// memory. Default none.
    pub warmup: Vec<WarmQuery>,
    /// `WARMPOOL_WARMUP_TIMEOUT_MS`: how long Init waits for the warm-up data sets; those not
    /// loaded by then keep being retried in the background. Default 2000.
    pub warmup_timeout: Duration,
    /// `WARMPOOL_STATE_MAX_BYTES`: the state store's budget (keys, values and 96 bytes per
    /// entry); least recently used entries are evicted past it. Default 16 MiB.
    pub state_max_bytes: usize,
    /// `WARMPOOL_QUERY_CACHE_MAX_BYTES`: the query result cache's budget, counted like the
    /// store's. Default 16 MiB.
    pub query_cache_max_bytes: usize,
    /// Logs and metrics; see [`Observability`].
    pub observability: Observability,
    /// `WARMPOOL_RUNTIME_THREADS`: threads of the extension's async runtime. `1` (the default)
    /// runs everything on one thread, where a statement's hand-offs between the session task
    /// and the database connection's task cost no cross-thread wake-up; more spreads sessions
    /// over that many threads, for many concurrent sessions doing CPU work (large results).
    pub runtime_threads: usize,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, as CloudWatch Logs Insights reads it.
    Json,
    /// Plain text for a terminal.
    Text,
}

/// Logs and metrics settings.
#[derive(Debug, Clone)]
pub struct Observability {
    /// `WARMPOOL_LOG_FORMAT`: `json` or `text`. Default `json` on Lambda (when
    /// `AWS_LAMBDA_RUNTIME_API` is set), `text` outside it.
    pub log_format: LogFormat,
    /// `WARMPOOL_METRICS`: write CloudWatch Embedded Metric Format records on stdout.
    /// Default `true`.
    pub metrics: bool,
    /// `WARMPOOL_METRICS_NAMESPACE`: the CloudWatch namespace of the metrics. Default `warmpool`.
    pub namespace: String,
    /// `WARMPOOL_METRICS_INTERVAL_MS`: on Lambda Managed Instances and in local mode, one record
    /// per this interval (classic Lambda writes one per invocation). Default 60000.
    pub metrics_interval: Duration,
    /// `WARMPOOL_SLOW_POOL_WAIT_MS`: a request that waits longer than this for a pooled
    /// connection logs a warning. Default 100.
    pub slow_pool_wait: Duration,
    /// `AWS_LAMBDA_FUNCTION_NAME`, set by Lambda: the metrics' `FunctionName` dimension.
    /// Default `local`.
    pub function_name: String,
    /// Whether the fleet budget is on (`WARMPOOL_FLEET_MAX_CONNECTIONS`): its metrics are in
    /// the records only then, since each metric name is a CloudWatch metric the user pays for.
    pub fleet_metrics: bool,
}

/// Defaults, in one place.
pub mod defaults {
    /// `WARMPOOL_SOCKET`.
    pub const SOCKET: &str = "/tmp/warmpool.sock";
    /// `WARMPOOL_MAX_SIZE`.
    pub const MAX_SIZE: usize = 4;
    /// `WARMPOOL_WARM_SIZE`.
    pub const WARM_SIZE: usize = 1;
    /// `WARMPOOL_WAIT_TIMEOUT_MS`.
    pub const WAIT_TIMEOUT_MS: u64 = 5_000;
    /// `WARMPOOL_CONNECT_TIMEOUT_MS`.
    pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
    /// `WARMPOOL_IDLE_TIMEOUT_MS`.
    pub const IDLE_TIMEOUT_MS: u64 = 300_000;
    /// `WARMPOOL_CHECK_AFTER_IDLE_MS`.
    pub const CHECK_AFTER_IDLE_MS: u64 = 1_000;
    /// `WARMPOOL_FLEET_MAX_CONNECTIONS`: no budget.
    pub const FLEET_MAX_CONNECTIONS: u32 = 0;
    /// `WARMPOOL_FLEET_STEAL_IDLE_MS`: twice the check after idle, so a connection idle long
    /// enough to be taken is always checked before its environment uses it again, and the
    /// pause between two statements of a running invocation is rarely this long.
    pub const FLEET_STEAL_IDLE_MS: u64 = 2 * CHECK_AFTER_IDLE_MS;
    /// `WARMPOOL_RESET_TIMEOUT_MS`.
    pub const RESET_TIMEOUT_MS: u64 = 2_000;
    /// `WARMPOOL_COMMIT_TIMEOUT_MS`: long enough for a COMMIT that waits on synchronous
    /// replication or runs deferred triggers, short of holding a session for a database that
    /// has stopped answering.
    pub const COMMIT_TIMEOUT_MS: u64 = 30_000;
    /// `WARMPOOL_SHUTDOWN_TIMEOUT_MS`.
    pub const SHUTDOWN_TIMEOUT_MS: u64 = 500;
    /// `WARMPOOL_STATEMENT_CACHE_SIZE`.
    pub const STATEMENT_CACHE_SIZE: usize = 256;
    /// `WARMPOOL_PREPARED_STATEMENTS`.
    pub const PREPARED_STATEMENTS: super::StatementMode = super::StatementMode::Named;
    /// `WARMPOOL_MAX_FRAME_BYTES`.
    pub const MAX_FRAME_BYTES: usize = warmpool::protocol::DEFAULT_MAX_FRAME;
    /// `WARMPOOL_INIT_REQUIRE_DATABASE`.
    pub const INIT_REQUIRE_DATABASE: bool = false;
    /// `WARMPOOL_MAX_SESSIONS`.
    pub const MAX_SESSIONS: usize = 1024;
    /// `WARMPOOL_HANDSHAKE_TIMEOUT_MS`.
    pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
    /// `WARMPOOL_IDLE_SESSION_TIMEOUT_MS`.
    pub const IDLE_SESSION_TIMEOUT_MS: u64 = 600_000;
    /// `WARMPOOL_RETRY_BASE_MS`.
    pub const RETRY_BASE_MS: u64 = 50;
    /// `WARMPOOL_RETRY_MAX_MS`.
    pub const RETRY_MAX_MS: u64 = 1_000;
    /// `WARMPOOL_RETRY_BUDGET_MS`.
    pub const RETRY_BUDGET_MS: u64 = 3_000;
    /// `WARMPOOL_LOG_STATEMENTS`.
    pub const LOG_STATEMENTS: bool = false;
    /// `PGPORT`.
    pub const PORT: u16 = crate::settings::DEFAULT_PORT;
    /// `PGAPPNAME`.
    pub const APPLICATION_NAME: &str = "warmpool";
    /// `WARMPOOL_AUTH`.
    pub const AUTH: &str = "static";
    /// `WARMPOOL_SECRET_TTL_MS`: five minutes, the default of AWS's own Parameters and Secrets
    /// Lambda Extension (`SECRETS_MANAGER_TTL`), so a rotated secret is picked up by new
    /// connections within minutes even before the old password stops working.
    /// <https://docs.aws.amazon.com/secretsmanager/latest/userguide/retrieving-secrets_lambda.html>
    pub const SECRET_TTL_MS: u64 = 300_000;
    /// `WARMPOOL_MAX_CONNECTION_LIFETIME_MS`.
    pub const MAX_CONNECTION_LIFETIME_MS: u64 = 3_600_000;
    /// `WARMPOOL_WARMUP_TIMEOUT_MS`.
    pub const WARMUP_TIMEOUT_MS: u64 = 2_000;
    /// `WARMPOOL_STATE_MAX_BYTES`.
    pub const STATE_MAX_BYTES: usize = 16 * 1024 * 1024;
    /// `WARMPOOL_QUERY_CACHE_MAX_BYTES`.
    pub const QUERY_CACHE_MAX_BYTES: usize = 16 * 1024 * 1024;
    /// `WARMPOOL_METRICS`.
    pub const METRICS: bool = true;
    /// `WARMPOOL_METRICS_NAMESPACE`.
    pub const METRICS_NAMESPACE: &str = "warmpool";
    /// `WARMPOOL_METRICS_INTERVAL_MS`: CloudWatch's finest standard resolution.
    pub const METRICS_INTERVAL_MS: u64 = 60_000;
    /// `WARMPOOL_SLOW_POOL_WAIT_MS`.
    pub const SLOW_POOL_WAIT_MS: u64 = 100;
    /// `AWS_LAMBDA_FUNCTION_NAME` outside Lambda.
    pub const FUNCTION_NAME: &str = "local";
    /// `WARMPOOL_RUNTIME_THREADS`.
    pub const RUNTIME_THREADS: usize = 1;
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup`, so tests can pass their own environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let mode: AuthMode = get("WARMPOOL_AUTH")
            .unwrap_or_else(|| defaults::AUTH.into())
            .trim()
            .parse()
            .map_err(|reason| ConfigError {
                variable: "WARMPOOL_AUTH",
                reason,
            })?;
        // A secret names the user, and may name the host, port and database: with one, the
        // settings may leave those out, and what they leave out is filled in per connection.
        let from_secret = mode == AuthMode::SecretsManager;

        let mut url_ssl_mode = None;
        let mut url_root_cert = None;
        let mut pg = match get("DATABASE_URL") {
            Some(url) => {
                let (rest, mode, root) = take_tls_params(&url);
                url_ssl_mode = mode;
                url_root_cert = root;
                PgConfig::from_str(&rest).map_err(|e| ConfigError {
                    variable: "DATABASE_URL",
                    reason: e.to_string(),
                })?
            }
            None => PgConfig::new(),
        };

        if pg.get_hosts().is_empty() {
            match get("PGHOST") {
                Some(h) => {
                    for host in h.split(',') {
                        pg.host(host);
                    }
                }
                None if from_secret => {}
                None => {
                    return Err(ConfigError {
                        variable: "PGHOST",
                        reason: "no database host: set DATABASE_URL or PGHOST".into(),
                    })
                }
            }
        }
        // With a secret and no PGPORT, the secret's port (or 5432) is used per connection.
        if pg.get_ports().is_empty() && (get("PGPORT").is_some() || !from_secret) {
            pg.port(parse(&get, "PGPORT", defaults::PORT)?);
        }
        if pg.get_user().is_none() {
            match get("PGUSER") {
                Some(u) => {
                    pg.user(&u);
                }
                None if from_secret => {}
                None => {
                    return Err(ConfigError {
                        variable: "PGUSER",
                        reason: "no database user: set DATABASE_URL or PGUSER".into(),
                    })
                }
            }
        }
        // The setting the password comes from, so that a refused password names it.
        let password_from = if pg.get_password().is_some() {
            Some("DATABASE_URL")
        } else if get("PGPASSWORD").is_some() {
            Some("PGPASSWORD")
        } else {
            None
        };
        if mode != AuthMode::Static {
            // A password beside a secret or a token would be ignored, or worse, used: refuse it.
            if let Some(variable) = password_from {
                return Err(ConfigError {
                    variable,
                    reason: format!(
                        "sets a password, but with WARMPOOL_AUTH={mode} the password comes from \
                         the provider; remove it"
                    ),
                });
            }
        } else if pg.get_password().is_none() {
            if let Some(p) = get("PGPASSWORD") {
                pg.password(p);
            }
        }
        if pg.get_dbname().is_none() {
            // With a secret, the user (and so libpq's default database) is known per connection.
            let user = if from_secret { None } else { pg.get_user() };
            let db = get("PGDATABASE").or_else(|| user.map(str::to_owned));
            if let Some(db) = db {
                pg.dbname(&db);
            }
        }
        if pg.get_application_name().is_none() {
            let name = get("PGAPPNAME").unwrap_or_else(|| defaults::APPLICATION_NAME.into());
            pg.application_name(&name);
        }

        let ssl_mode = match url_ssl_mode.or_else(|| get("PGSSLMODE")) {
            Some(m) => m.parse().map_err(|reason| ConfigError {
                variable: "PGSSLMODE",
                reason,
            })?,
            None => SslMode::VerifyFull,
        };
        let root_certs = match url_root_cert.or_else(|| get("PGSSLROOTCERT")) {
            None => RootCerts::System,
            Some(s) if s == "system" => RootCerts::System,
            Some(path) => RootCerts::File(PathBuf::from(path)),
        };
        let channel_binding = match get("PGCHANNELBINDING").as_deref() {
            None | Some("prefer") => ChannelBinding::Prefer,
            Some("disable") => ChannelBinding::Disable,
            Some("require") => ChannelBinding::Require,
            Some(other) => {
                return Err(ConfigError {
                    variable: "PGCHANNELBINDING",
                    reason: format!("{other:?}: use disable, prefer or require"),
                })
            }
        };
        pg.channel_binding(channel_binding);

        let ms = |var: &'static str, default: u64| -> Result<Duration, ConfigError> {
            parse(&get, var, default).map(Duration::from_millis)
        };
        let max_concurrency = parse(&get, "AWS_LAMBDA_MAX_CONCURRENCY", 1usize)?;
        let default_max_size = if max_concurrency > 1 {
            max_concurrency
        } else {
            defaults::MAX_SIZE
        };
        let config = Config {
            pg,
            ssl_mode,
            root_certs,
            channel_binding,
            socket_path: get("WARMPOOL_SOCKET")
                .unwrap_or_else(|| defaults::SOCKET.into())
                .into(),
            max_size: parse(&get, "WARMPOOL_MAX_SIZE", default_max_size)?,
            warm_size: parse(&get, "WARMPOOL_WARM_SIZE", defaults::WARM_SIZE)?,
            wait_timeout: ms("WARMPOOL_WAIT_TIMEOUT_MS", defaults::WAIT_TIMEOUT_MS)?,
            connect_timeout: ms("WARMPOOL_CONNECT_TIMEOUT_MS", defaults::CONNECT_TIMEOUT_MS)?,
            idle_timeout: ms("WARMPOOL_IDLE_TIMEOUT_MS", defaults::IDLE_TIMEOUT_MS)?,
            check_after_idle: ms(
                "WARMPOOL_CHECK_AFTER_IDLE_MS",
                defaults::CHECK_AFTER_IDLE_MS,
            )?,
            reset_timeout: ms("WARMPOOL_RESET_TIMEOUT_MS", defaults::RESET_TIMEOUT_MS)?,
            commit_timeout: ms("WARMPOOL_COMMIT_TIMEOUT_MS", defaults::COMMIT_TIMEOUT_MS)?,
            shutdown_timeout: ms(
                "WARMPOOL_SHUTDOWN_TIMEOUT_MS",
                defaults::SHUTDOWN_TIMEOUT_MS,
            )?,
            statement_cache_size: parse(
                &get,
                "WARMPOOL_STATEMENT_CACHE_SIZE",
                defaults::STATEMENT_CACHE_SIZE,
            )?,
            prepared_statements: parse(
                &get,
                "WARMPOOL_PREPARED_STATEMENTS",
                defaults::PREPARED_STATEMENTS,
            )?,
            max_frame: parse(&get, "WARMPOOL_MAX_FRAME_BYTES", defaults::MAX_FRAME_BYTES)?,
            init_require_database: parse(
                &get,
                "WARMPOOL_INIT_REQUIRE_DATABASE",
                defaults::INIT_REQUIRE_DATABASE,
            )?,
            max_concurrency,
            fleet: fleet(&get)?,
            max_sessions: parse(&get, "WARMPOOL_MAX_SESSIONS", defaults::MAX_SESSIONS)?,
            handshake_timeout: ms(
                "WARMPOOL_HANDSHAKE_TIMEOUT_MS",
                defaults::HANDSHAKE_TIMEOUT_MS,
            )?,
            idle_session_timeout: Some(ms(
                "WARMPOOL_IDLE_SESSION_TIMEOUT_MS",
                defaults::IDLE_SESSION_TIMEOUT_MS,
            )?)
            .filter(|d| !d.is_zero()),
            retry: crate::retry::Policy {
                base: ms("WARMPOOL_RETRY_BASE_MS", defaults::RETRY_BASE_MS)?,
                cap: ms("WARMPOOL_RETRY_MAX_MS", defaults::RETRY_MAX_MS)?,
                budget: ms("WARMPOOL_RETRY_BUDGET_MS", defaults::RETRY_BUDGET_MS)?,
            },
            log_statements: parse(&get, "WARMPOOL_LOG_STATEMENTS", defaults::LOG_STATEMENTS)?,
            auth: auth(&get, mode, password_from)?,
            max_connection_lifetime: Some(ms(
                "WARMPOOL_MAX_CONNECTION_LIFETIME_MS",
                defaults::MAX_CONNECTION_LIFETIME_MS,
            )?)
            .filter(|d| !d.is_zero()),
            prepare: from_json_setting(
                &get,
                "WARMPOOL_PREPARE",
                "WARMPOOL_PREPARE_FILE",
                parse_prepare,
            )?,
            warmup: from_json_setting(
                &get,
                "WARMPOOL_WARMUP",
                "WARMPOOL_WARMUP_FILE",
                parse_warmup,
            )?,
            warmup_timeout: ms("WARMPOOL_WARMUP_TIMEOUT_MS", defaults::WARMUP_TIMEOUT_MS)?,
            state_max_bytes: parse(&get, "WARMPOOL_STATE_MAX_BYTES", defaults::STATE_MAX_BYTES)?,
            query_cache_max_bytes: parse(
                &get,
                "WARMPOOL_QUERY_CACHE_MAX_BYTES",
                defaults::QUERY_CACHE_MAX_BYTES,
            )?,
            observability: observability(&get)?,
            runtime_threads: parse(&get, "WARMPOOL_RUNTIME_THREADS", defaults::RUNTIME_THREADS)?,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |variable, reason: &str| {
            Err(ConfigError {
                variable,
                reason: reason.into(),
            })
        };
        // The startup and password messages carry these as NUL-terminated strings, so a NUL
        // in one would fail every connection. Only DATABASE_URL can spell one (`%00`): an
        // environment variable cannot hold it.
        // <https://www.postgresql.org/docs/current/protocol-message-formats.html>
        let startup = [
            ("user", self.pg.get_user().map(str::as_bytes)),
            ("database name", self.pg.get_dbname().map(str::as_bytes)),
            ("options", self.pg.get_options().map(str::as_bytes)),
            (
                "application name",
                self.pg.get_application_name().map(str::as_bytes),
            ),
            ("password", self.pg.get_password()),
        ];
        for (what, value) in startup {
            if value.is_some_and(|v| v.contains(&0)) {
                return Err(ConfigError {
                    variable: "DATABASE_URL",
                    reason: format!(
                        "the {what} holds a NUL byte (%00), which PostgreSQL's protocol cannot carry"
                    ),
                });
            }
        }
        if self.max_concurrency == 0 {
            return fail("AWS_LAMBDA_MAX_CONCURRENCY", "must be at least 1");
        }
        if self.max_sessions == 0 {
            return fail("WARMPOOL_MAX_SESSIONS", "must be at least 1");
        }
        if !(1..=64).contains(&self.runtime_threads) {
            return fail("WARMPOOL_RUNTIME_THREADS", "must be between 1 and 64");
        }
        if self.retry.base.is_zero() {
            return fail("WARMPOOL_RETRY_BASE_MS", "must be greater than zero");
        }
        if self.retry.cap < self.retry.base {
            return fail(
                "WARMPOOL_RETRY_MAX_MS",
                "must not be below WARMPOOL_RETRY_BASE_MS",
            );
        }
        if self.handshake_timeout.is_zero() {
            return fail("WARMPOOL_HANDSHAKE_TIMEOUT_MS", "must be greater than zero");
        }
        if self.max_size == 0 {
            return fail("WARMPOOL_MAX_SIZE", "must be at least 1");
        }
        if self.warm_size > self.max_size {
            return fail("WARMPOOL_WARM_SIZE", "must not exceed WARMPOOL_MAX_SIZE");
        }
        if self.max_frame < 1024 || self.max_frame > u32::MAX as usize {
            return fail(
                "WARMPOOL_MAX_FRAME_BYTES",
                "must be between 1024 and 4294967295",
            );
        }
        if self.prepare.len() > self.statement_cache_size {
            return Err(ConfigError {
                variable: "WARMPOOL_PREPARE",
                reason: format!(
                    "lists {} statements but WARMPOOL_STATEMENT_CACHE_SIZE keeps {} per connection",
                    self.prepare.len(),
                    self.statement_cache_size
                ),
            });
        }
        if let Some(fleet) = &self.fleet {
            if fleet.steal_idle < self.check_after_idle {
                // A connection taken while idle for less than the check would be handed out
                // unchecked, and the statement sent on it would fail.
                return fail(
                    "WARMPOOL_FLEET_STEAL_IDLE_MS",
                    "must not be below WARMPOOL_CHECK_AFTER_IDLE_MS",
                );
            }
        }
        if self.commit_timeout.is_zero() {
            return fail("WARMPOOL_COMMIT_TIMEOUT_MS", "must be greater than zero");
        }
        if self.warmup_timeout.is_zero() {
            return fail("WARMPOOL_WARMUP_TIMEOUT_MS", "must be greater than zero");
        }
        if self.wait_timeout.is_zero() || self.connect_timeout.is_zero() {
            return fail(
                "WARMPOOL_WAIT_TIMEOUT_MS",
                "timeouts must be greater than zero",
            );
        }
        if self.channel_binding == ChannelBinding::Require && self.ssl_mode == SslMode::Disable {
            return fail(
                "PGCHANNELBINDING",
                "require needs TLS, but PGSSLMODE is disable",
            );
        }
        if let Auth::SecretsManager(sm) = &self.auth {
            if sm.ttl.is_zero() {
                return fail("WARMPOOL_SECRET_TTL_MS", "must be greater than zero");
            }
        }
        if matches!(self.auth, Auth::RdsIam(_)) {
            // RDS takes the token as a cleartext password: without TLS it would cross the
            // network readable, and `prefer` falls back to no TLS silently.
            // <https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAMDBAuth.Connecting.html>
            if matches!(self.ssl_mode, SslMode::Disable | SslMode::Prefer) {
                return fail(
                    "PGSSLMODE",
                    "WARMPOOL_AUTH=rds-iam sends a token as the password and needs TLS: use \
                     require, verify-ca or verify-full",
                );
            }
            // A token is signed for one host and port.
            match self.pg.get_hosts() {
                [Host::Tcp(_)] => {}
                [Host::Tcp(_), _, ..] => {
                    return fail(
                        "PGHOST",
                        "WARMPOOL_AUTH=rds-iam signs each token for one host: name exactly one",
                    )
                }
                _ => return fail("PGHOST", "WARMPOOL_AUTH=rds-iam needs a TCP host"),
            }
            if self.pg.get_ports().len() > 1 {
                return fail("PGPORT", "WARMPOOL_AUTH=rds-iam needs exactly one port");
            }
        }
        Ok(())
    }
}

/// The credential settings for `mode`.
fn auth(
    get: &impl Fn(&str) -> Option<String>,
    mode: AuthMode,
    password_from: Option<&'static str>,
) -> Result<Auth, ConfigError> {
    let secret_id = get("WARMPOOL_SECRET_ID");
    if mode != AuthMode::SecretsManager && secret_id.is_some() {
        return Err(ConfigError {
            variable: "WARMPOOL_SECRET_ID",
            reason: format!(
                "is set, but WARMPOOL_AUTH is {mode}: set WARMPOOL_AUTH=secrets-manager to use it"
            ),
        });
    }
    match mode {
        AuthMode::Static => Ok(Auth::Static { password_from }),
        AuthMode::RdsIam => Ok(Auth::RdsIam(aws_settings(get)?)),
        AuthMode::SecretsManager => {
            let secret_id = secret_id.ok_or(ConfigError {
                variable: "WARMPOOL_SECRET_ID",
                reason: "WARMPOOL_AUTH=secrets-manager needs the secret's name or ARN".into(),
            })?;
            let aws = aws_settings(get)?;
            let ttl = parse(get, "WARMPOOL_SECRET_TTL_MS", defaults::SECRET_TTL_MS)?;
            // The SDKs' service-specific endpoint variable first, then the global one, unless
            // configured endpoints are switched off.
            // <https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html>
            let ignore = parse(get, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", false)?;
            let (variable, url) = match (
                ignore,
                get("AWS_ENDPOINT_URL_SECRETS_MANAGER"),
                get("AWS_ENDPOINT_URL"),
            ) {
                (false, Some(url), _) => ("AWS_ENDPOINT_URL_SECRETS_MANAGER", url),
                (false, None, Some(url)) => ("AWS_ENDPOINT_URL", url),
                _ => ("AWS_REGION", default_endpoint(&aws.region)),
            };
            let endpoint =
                Endpoint::parse(url.trim()).map_err(|reason| ConfigError { variable, reason })?;
            Ok(Auth::SecretsManager(SecretsManagerSettings {
                secret_id,
                ttl: Duration::from_millis(ttl),
                endpoint,
                aws,
            }))
        }
    }
}

/// The role's credentials and region, from the variables Lambda sets
/// (<https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime>).
fn aws_settings(get: &impl Fn(&str) -> Option<String>) -> Result<AwsSettings, ConfigError> {
    let region = get("AWS_REGION")
        .or_else(|| get("AWS_DEFAULT_REGION"))
        .ok_or(ConfigError {
            variable: "AWS_REGION",
            reason: "not set: Lambda sets it; elsewhere set AWS_REGION".into(),
        })?;
    let required = |variable: &'static str| {
        get(variable).ok_or(ConfigError {
            variable,
            reason: "not set: the AWS credential modes sign with the role's credentials, which \
                     Lambda sets in the environment"
                .into(),
        })
    };
    Ok(AwsSettings {
        region: region.trim().to_owned(),
        credentials: AwsCredentials {
            access_key_id: required("AWS_ACCESS_KEY_ID")?,
            secret_access_key: Secret::new(required("AWS_SECRET_ACCESS_KEY")?),
            session_token: get("AWS_SESSION_TOKEN").map(Secret::new),
        },
    })
}

/// A list given inline in `inline` or in the file `file` names, parsed by `parse`; empty when
/// neither is set, an error when both are.
fn from_json_setting<T>(
    get: &impl Fn(&str) -> Option<String>,
    inline: &'static str,
    file: &'static str,
    parse: fn(&str) -> Result<Vec<T>, String>,
) -> Result<Vec<T>, ConfigError> {
    match (get(inline), get(file)) {
        (None, None) => Ok(Vec::new()),
        (Some(_), Some(_)) => Err(ConfigError {
            variable: file,
            reason: format!("set {inline} or {file}, not both"),
        }),
        (Some(text), None) => parse(&text).map_err(|reason| ConfigError {
            variable: inline,
            reason,
        }),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path.trim()).map_err(|e| ConfigError {
                variable: file,
                reason: format!("cannot read {path:?}: {e}"),
            })?;
            parse(&text).map_err(|reason| ConfigError {
                variable: file,
                reason: format!("{path:?}: {reason}"),
            })
        }
    }
}

fn observability(get: &impl Fn(&str) -> Option<String>) -> Result<Observability, ConfigError> {
    let ms = |var: &'static str, default: u64| -> Result<Duration, ConfigError> {
        parse(get, var, default).map(Duration::from_millis)
    };
    let log_format = match get("WARMPOOL_LOG_FORMAT").as_deref().map(str::trim) {
        None if get("AWS_LAMBDA_RUNTIME_API").is_some() => LogFormat::Json,
        None => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            return Err(ConfigError {
                variable: "WARMPOOL_LOG_FORMAT",
                reason: format!("{other:?}: use json or text"),
            })
        }
    };
    let metrics_interval = ms(
        "WARMPOOL_METRICS_INTERVAL_MS",
        defaults::METRICS_INTERVAL_MS,
    )?;
    if metrics_interval.is_zero() {
        return Err(ConfigError {
            variable: "WARMPOOL_METRICS_INTERVAL_MS",
            reason: "must be at least 1".into(),
        });
    }
    Ok(Observability {
        log_format,
        metrics: parse(get, "WARMPOOL_METRICS", defaults::METRICS)?,
        namespace: get("WARMPOOL_METRICS_NAMESPACE")
            .unwrap_or_else(|| defaults::METRICS_NAMESPACE.into()),
        metrics_interval,
        slow_pool_wait: ms("WARMPOOL_SLOW_POOL_WAIT_MS", defaults::SLOW_POOL_WAIT_MS)?,
        function_name: get("AWS_LAMBDA_FUNCTION_NAME")
            .unwrap_or_else(|| defaults::FUNCTION_NAME.into()),
        fleet_metrics: get("WARMPOOL_FLEET_MAX_CONNECTIONS")
            .is_some_and(|n| n.trim().parse::<u32>().is_ok_and(|n| n > 0)),
    })
}

/// The fleet budget's settings, if `WARMPOOL_FLEET_MAX_CONNECTIONS` turns it on.
fn fleet(get: &impl Fn(&str) -> Option<String>) -> Result<Option<FleetSettings>, ConfigError> {
    use crate::settings::fleet;
    let max_connections = parse(
        get,
        "WARMPOOL_FLEET_MAX_CONNECTIONS",
        defaults::FLEET_MAX_CONNECTIONS,
    )?;
    if max_connections == 0 {
        return Ok(None);
    }
    let name = match get("WARMPOOL_FLEET_NAME") {
        Some(name) => {
            fleet::check_name(&name).map_err(|reason| ConfigError {
                variable: "WARMPOOL_FLEET_NAME",
                reason,
            })?;
            name
        }
        None => match get("AWS_LAMBDA_FUNCTION_NAME") {
            Some(function) => {
                let name = fleet::default_name(&function);
                fleet::check_name(&name).map_err(|reason| ConfigError {
                    variable: "WARMPOOL_FLEET_NAME",
                    reason: format!(
                        "not set, and the function's name cannot stand for it: {reason}"
                    ),
                })?;
                name
            }
            None => {
                return Err(ConfigError {
                    variable: "WARMPOOL_FLEET_NAME",
                    reason: "must be set with WARMPOOL_FLEET_MAX_CONNECTIONS outside Lambda \
                             (there is no AWS_LAMBDA_FUNCTION_NAME to default to)"
                        .into(),
                })
            }
        },
    };
    let steal_idle = parse(
        get,
        "WARMPOOL_FLEET_STEAL_IDLE_MS",
        defaults::FLEET_STEAL_IDLE_MS,
    )?;
    Ok(Some(FleetSettings {
        name,
        max_connections,
        steal_idle: Duration::from_millis(steal_idle),
    }))
}

fn parse<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match get(variable) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError {
            variable,
            reason: format!("{v:?}: {e}"),
        }),
    }
}

/// Takes `sslmode` and `sslrootcert` out of a connection string: tokio-postgres knows no
/// `verify-ca`/`verify-full` and no `sslrootcert`, so they are handled here, as libpq does.
fn take_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let mut mode = None;
    let mut root = None;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), None, None);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| match kv.split_once('=') {
                Some(("sslmode", v)) => {
                    mode = Some(v.to_owned());
                    false
                }
                Some(("sslrootcert", v)) => {
                    root = Some(v.to_owned());
                    false
                }
                _ => true,
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, mode, root)
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|kv| match kv.split_once('=') {
                Some(("sslmode", v)) => {
                    mode = Some(v.to_owned());
                    false
                }
                Some(("sslrootcert", v)) => {
                    root = Some(v.to_owned());
                    false
                }
                _ => true,
            })
            .collect();
        (kept.join(" "), mode, root)
    }
}

impl crate::credentials::Provider {
    /// The credentials provider `config` asks for, on the system clock.
    pub fn from_config(config: &Config) -> crate::credentials::Provider {
        Self::with_clock(config, std::sync::Arc::new(crate::credentials::SystemClock))
    }

    /// The same, reading time from `clock`.
    pub fn with_clock(
        config: &Config,
        clock: std::sync::Arc<dyn crate::credentials::Clock>,
    ) -> crate::credentials::Provider {
        Self::new(&config.auth, &config.pg, config.connect_timeout, clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_spelled_out() {
        let c = config(&[("PGHOST", "db"), ("PGUSER", "app")]).unwrap();
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.root_certs, RootCerts::System);
        assert_eq!(c.socket_path, PathBuf::from("/tmp/warmpool.sock"));
        assert_eq!(c.max_size, defaults::MAX_SIZE);
        assert_eq!(c.warm_size, defaults::WARM_SIZE);
        assert_eq!(c.max_frame, 16 * 1024 * 1024);
        assert_eq!(c.pg.get_ports(), &[5432]);
        assert_eq!(c.pg.get_dbname(), Some("app"));
        assert_eq!(c.pg.get_application_name(), Some("warmpool"));
    }

    #[test]
    fn a_nul_byte_in_the_connection_settings_is_refused_without_showing_the_password() {
        for (url, what) in [
            ("postgres://a%00b@db/app", "user"),
            ("postgres://app@db/x%00y", "database name"),
            ("postgres://app:s3cr%00t@db/app", "password"),
            (
                "postgres://app@db/app?application_name=a%00",
                "application name",
            ),
        ] {
            let e = config(&[("DATABASE_URL", url)]).unwrap_err();
            assert_eq!(e.variable, "DATABASE_URL", "{url}: {e}");
            assert!(
                e.reason.contains(&format!("the {what} holds a NUL byte")),
                "{url}: {e}"
            );
            assert!(!e.to_string().contains("s3cr"), "{e}");
        }
    }

    #[test]
    fn the_fleet_budget_is_off_by_default_and_checked_when_on() {
        let base = [("PGHOST", "h"), ("PGUSER", "u")];
        let c = config(&base).unwrap();
        assert_eq!(c.fleet, None);
        assert!(!c.observability.fleet_metrics);
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            config(&all)
        };
        let c = with(&[
            ("WARMPOOL_FLEET_MAX_CONNECTIONS", "10"),
            ("AWS_LAMBDA_FUNCTION_NAME", "orders"),
        ])
        .unwrap();
        let fleet = c.fleet.unwrap();
        assert_eq!(fleet.name, "orders");
        assert_eq!(fleet.max_connections, 10);
        assert_eq!(
            fleet.steal_idle,
            Duration::from_millis(defaults::FLEET_STEAL_IDLE_MS)
        );
        assert!(c.observability.fleet_metrics);
        assert_eq!(
            with(&[("WARMPOOL_FLEET_MAX_CONNECTIONS", "0")])
                .unwrap()
                .fleet,
            None
        );
        for (vars, variable) in [
            (
                &[("WARMPOOL_FLEET_MAX_CONNECTIONS", "10")][..],
                "WARMPOOL_FLEET_NAME",
            ),
            (
                &[
                    ("WARMPOOL_FLEET_MAX_CONNECTIONS", "10"),
                    ("WARMPOOL_FLEET_NAME", "it's"),
                ][..],
                "WARMPOOL_FLEET_NAME",
            ),
            (
                &[("WARMPOOL_FLEET_MAX_CONNECTIONS", "ten")][..],
                "WARMPOOL_FLEET_MAX_CONNECTIONS",
            ),
            (
                &[
                    ("WARMPOOL_FLEET_MAX_CONNECTIONS", "10"),
                    ("WARMPOOL_FLEET_NAME", "orders"),
                    ("WARMPOOL_FLEET_STEAL_IDLE_MS", "500"),
                ][..],
                "WARMPOOL_FLEET_STEAL_IDLE_MS",
            ),
        ] {
            let e = with(vars).unwrap_err();
            assert_eq!(e.variable, variable, "{vars:?}: {e}");
        }
    }

    #[test]
    fn observability_defaults_and_bad_values() {
        let c = config(&[("PGHOST", "db"), ("PGUSER", "app")]).unwrap();
        let o = &c.observability;
        assert_eq!(o.log_format, LogFormat::Text, "text outside Lambda");
        assert!(o.metrics);
        assert_eq!(o.namespace, defaults::METRICS_NAMESPACE);
        assert_eq!(o.metrics_interval, Duration::from_millis(60_000));
        assert_eq!(o.slow_pool_wait, Duration::from_millis(100));
        assert_eq!(o.function_name, "local");
        let c = config(&[
            ("PGHOST", "db"),
            ("PGUSER", "app"),
            ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
            ("AWS_LAMBDA_FUNCTION_NAME", "orders"),
        ])
        .unwrap();
        assert_eq!(
            c.observability.log_format,
            LogFormat::Json,
            "json on Lambda"
        );
        assert_eq!(c.observability.function_name, "orders");
        for (var, value) in [
            ("WARMPOOL_LOG_FORMAT", "yaml"),
            ("WARMPOOL_METRICS", "yes"),
            ("WARMPOOL_METRICS_INTERVAL_MS", "0"),
            ("WARMPOOL_SLOW_POOL_WAIT_MS", "-1"),
        ] {
            let e = config(&[("PGHOST", "db"), ("PGUSER", "app"), (var, value)]).unwrap_err();
            assert_eq!(e.variable, var, "{e}");
        }
    }

    #[test]
    fn runtime_threads_default_to_one_and_are_bounded() {
        let c = config(&[("PGHOST", "h"), ("PGUSER", "u")]).unwrap();
        assert_eq!(c.runtime_threads, defaults::RUNTIME_THREADS);
        assert_eq!(c.runtime_threads, 1);
        let c = config(&[
            ("PGHOST", "h"),
            ("PGUSER", "u"),
            ("WARMPOOL_RUNTIME_THREADS", "4"),
        ])
        .unwrap();
        assert_eq!(c.runtime_threads, 4);
        for bad in ["0", "65", "two"] {
            let e = config(&[
                ("PGHOST", "h"),
                ("PGUSER", "u"),
                ("WARMPOOL_RUNTIME_THREADS", bad),
            ])
            .unwrap_err();
            assert_eq!(e.variable, "WARMPOOL_RUNTIME_THREADS", "{bad}");
        }
    }

    #[test]
    fn managed_instances_size_the_pool_to_the_concurrency() {
        let c = config(&[
            ("PGHOST", "h"),
            ("PGUSER", "u"),
            ("AWS_LAMBDA_MAX_CONCURRENCY", "16"),
        ])
        .unwrap();
        assert_eq!((c.max_concurrency, c.max_size), (16, 16));
        let c = config(&[
            ("PGHOST", "h"),
            ("PGUSER", "u"),
            ("AWS_LAMBDA_MAX_CONCURRENCY", "16"),
            ("WARMPOOL_MAX_SIZE", "3"),
        ])
        .unwrap();
        assert_eq!(c.max_size, 3);
        let e = config(&[
            ("PGHOST", "h"),
            ("PGUSER", "u"),
            ("WARMPOOL_INIT_REQUIRE_DATABASE", "yes"),
        ])
        .unwrap_err();
        assert_eq!(e.variable, "WARMPOOL_INIT_REQUIRE_DATABASE");
    }

    #[test]
    fn url_with_verify_full_and_root_cert() {
        let c = config(&[(
            "DATABASE_URL",
            "postgres://u:pw@h:6543/d?sslmode=verify-ca&sslrootcert=/ca.pem&connect_timeout=3",
        )])
        .unwrap();
        assert_eq!(c.ssl_mode, SslMode::VerifyCa);
        assert_eq!(c.root_certs, RootCerts::File("/ca.pem".into()));
        assert_eq!(c.pg.get_ports(), &[6543]);
        assert_eq!(c.pg.get_user(), Some("u"));
        assert_eq!(c.pg.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let e = config(&[
            ("PGHOST", "h"),
            ("PGUSER", "u"),
            ("WARMPOOL_MAX_SIZE", "lots"),
        ])
        .unwrap_err();
        assert_eq!(e.variable, "WARMPOOL_MAX_SIZE");
        assert!(e.to_string().contains("WARMPOOL_MAX_SIZE"), "{e}");
        let e = config(&[("PGHOST", "h"), ("PGUSER", "u"), ("PGSSLMODE", "allow")]).unwrap_err();
        assert_eq!(e.variable, "PGSSLMODE");
        let e = config(&[
            ("PGHOST", "h"),
            ("PGUSER", "u"),
            ("WARMPOOL_WARM_SIZE", "9"),
        ])
        .unwrap_err();
        assert_eq!(e.variable, "WARMPOOL_WARM_SIZE");
        let e = config(&[("PGUSER", "u")]).unwrap_err();
        assert_eq!(e.variable, "PGHOST");
        let e = config(&[("DATABASE_URL", "postgres://h:notaport/d")]).unwrap_err();
        assert_eq!(e.variable, "DATABASE_URL");
    }

    const AWS: [(&str, &str); 4] = [
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        ("AWS_SESSION_TOKEN", "session-token-value"),
    ];

    fn with_aws(vars: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let mut all = AWS.to_vec();
        all.extend_from_slice(vars);
        config(&all)
    }

    #[test]
    fn credential_defaults_are_spelled_out() {
        let c = config(&[("PGHOST", "db"), ("PGUSER", "app"), ("PGPASSWORD", "pw")]).unwrap();
        assert!(matches!(c.auth, Auth::Static { .. }));
        assert_eq!(
            c.max_connection_lifetime,
            Some(Duration::from_millis(defaults::MAX_CONNECTION_LIFETIME_MS))
        );
        assert_eq!(defaults::MAX_CONNECTION_LIFETIME_MS, 3_600_000);
        let c = config(&[
            ("PGHOST", "db"),
            ("PGUSER", "app"),
            ("WARMPOOL_MAX_CONNECTION_LIFETIME_MS", "0"),
        ])
        .unwrap();
        assert_eq!(c.max_connection_lifetime, None, "0 means no limit");

        let c = with_aws(&[
            ("WARMPOOL_AUTH", "secrets-manager"),
            ("WARMPOOL_SECRET_ID", "prod/app/db"),
        ])
        .unwrap();
        let Auth::SecretsManager(sm) = &c.auth else {
            panic!("{:?}", c.auth)
        };
        assert_eq!(sm.secret_id, "prod/app/db");
        assert_eq!(sm.ttl, Duration::from_millis(defaults::SECRET_TTL_MS));
        assert_eq!(defaults::SECRET_TTL_MS, 300_000);
        assert_eq!(
            sm.endpoint.url(),
            "https://secretsmanager.eu-west-1.amazonaws.com/"
        );
        // Host, port, user and database may all come from the secret.
        assert!(c.pg.get_hosts().is_empty());
        assert!(c.pg.get_ports().is_empty());
        assert_eq!(c.pg.get_user(), None);
        assert_eq!(c.pg.get_dbname(), None);
    }

    #[test]
    fn secrets_manager_settings() {
        let c = with_aws(&[
            ("WARMPOOL_AUTH", "secrets-manager"),
            (
                "WARMPOOL_SECRET_ID",
                "arn:aws:secretsmanager:eu-west-1:1:secret:x",
            ),
            ("WARMPOOL_SECRET_TTL_MS", "1000"),
            ("AWS_ENDPOINT_URL", "https://vpce.example.com"),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:4566"),
            ("PGHOST", "proxy.example.com"),
            ("PGUSER", "ignored-for-the-secret-s"),
        ])
        .unwrap();
        let Auth::SecretsManager(sm) = &c.auth else {
            panic!()
        };
        assert_eq!(sm.ttl, Duration::from_millis(1000));
        assert_eq!(sm.endpoint.url(), "http://127.0.0.1:4566/");
        assert_eq!(c.pg.get_hosts().len(), 1);
        // The database defaults to the secret's user, known per connection.
        assert_eq!(c.pg.get_dbname(), None);

        let c = with_aws(&[
            ("WARMPOOL_AUTH", "secrets-manager"),
            ("WARMPOOL_SECRET_ID", "x"),
            ("AWS_ENDPOINT_URL", "https://vpce.example.com"),
        ])
        .unwrap();
        let Auth::SecretsManager(sm) = &c.auth else {
            panic!()
        };
        assert_eq!(sm.endpoint.url(), "https://vpce.example.com/");
        let c = with_aws(&[
            ("WARMPOOL_AUTH", "secrets-manager"),
            ("WARMPOOL_SECRET_ID", "x"),
            ("AWS_ENDPOINT_URL", "https://vpce.example.com"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ])
        .unwrap();
        let Auth::SecretsManager(sm) = &c.auth else {
            panic!()
        };
        assert_eq!(
            sm.endpoint.url(),
            "https://secretsmanager.eu-west-1.amazonaws.com/"
        );
    }

    #[test]
    fn bad_credential_settings_name_their_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("WARMPOOL_AUTH", "iam")], "WARMPOOL_AUTH"),
            (
                &[("WARMPOOL_AUTH", "secrets-manager")],
                "WARMPOOL_SECRET_ID",
            ),
            (&[("WARMPOOL_SECRET_ID", "x")], "WARMPOOL_SECRET_ID"),
            (
                &[
                    ("WARMPOOL_AUTH", "secrets-manager"),
                    ("WARMPOOL_SECRET_ID", "x"),
                    ("PGPASSWORD", "pw"),
                ],
                "PGPASSWORD",
            ),
            (
                &[
                    ("WARMPOOL_AUTH", "secrets-manager"),
                    ("WARMPOOL_SECRET_ID", "x"),
                    ("DATABASE_URL", "postgres://u:pw@h/d"),
                ],
                "DATABASE_URL",
            ),
            (
                &[
                    ("WARMPOOL_AUTH", "secrets-manager"),
                    ("WARMPOOL_SECRET_ID", "x"),
                    ("WARMPOOL_SECRET_TTL_MS", "soon"),
                ],
                "WARMPOOL_SECRET_TTL_MS",
            ),
            (
                &[
                    ("WARMPOOL_AUTH", "secrets-manager"),
                    ("WARMPOOL_SECRET_ID", "x"),
                    ("WARMPOOL_SECRET_TTL_MS", "0"),
                ],
                "WARMPOOL_SECRET_TTL_MS",
            ),
            (
                &[
                    ("WARMPOOL_AUTH", "secrets-manager"),
                    ("WARMPOOL_SECRET_ID", "x"),
                    ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://sm.example.com"),
                ],
                "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            ),
            (
                &[("WARMPOOL_AUTH", "rds-iam"), ("PGSSLMODE", "disable")],
                "PGSSLMODE",
            ),
            (
                &[("WARMPOOL_AUTH", "rds-iam"), ("PGSSLMODE", "prefer")],
                "PGSSLMODE",
            ),
            (
                &[
                    ("WARMPOOL_AUTH", "rds-iam"),
                    ("PGHOST", "a,b"),
                    ("PGUSER", "u"),
                ],
                "PGHOST",
            ),
            (
                &[
                    ("WARMPOOL_AUTH", "rds-iam"),
                    ("PGHOST", "/tmp"),
                    ("PGUSER", "u"),
                ],
                "PGHOST",
            ),
            (
                &[("WARMPOOL_MAX_CONNECTION_LIFETIME_MS", "-1")],
                "WARMPOOL_MAX_CONNECTION_LIFETIME_MS",
            ),
        ];
        for (vars, variable) in cases {
            let mut all = vec![("PGHOST", "h"), ("PGUSER", "u")];
            all.extend_from_slice(vars);
            let e = with_aws(&all).unwrap_err();
            assert_eq!(e.variable, *variable, "{vars:?}: {e}");
            assert!(e.to_string().contains(variable), "{e}");
        }
        // The AWS modes need the role's credentials and the region.
        for missing in ["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            let mut all: Vec<(&str, &str)> =
                AWS.iter().copied().filter(|(k, _)| *k != missing).collect();
            all.extend([
                ("PGHOST", "h"),
                ("PGUSER", "u"),
                ("WARMPOOL_AUTH", "rds-iam"),
            ]);
            assert_eq!(config(&all).unwrap_err().variable, missing);
        }
        let e = with_aws(&[("WARMPOOL_AUTH", "rds-iam"), ("PGHOST", "h")]).unwrap_err();
        assert_eq!(e.variable, "PGUSER");
        // PGPASSWORD beside rds-iam is refused, and the message shows no password.
        let e = with_aws(&[
            ("WARMPOOL_AUTH", "rds-iam"),
            ("PGHOST", "h"),
            ("PGUSER", "u"),
            ("PGPASSWORD", "hunter2-secret"),
        ])
        .unwrap_err();
        assert_eq!(e.variable, "PGPASSWORD");
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e}");
    }

    #[test]
    fn rds_iam_settings() {
        let c = with_aws(&[
            ("WARMPOOL_AUTH", "rds-iam"),
            ("PGHOST", "db.abc.eu-west-1.rds.amazonaws.com"),
            ("PGUSER", "iam_user"),
        ])
        .unwrap();
        assert!(matches!(c.auth, Auth::RdsIam(_)));
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.pg.get_ports(), &[5432]);
        assert_eq!(c.pg.get_dbname(), Some("iam_user"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("session-token-value"), "{shown}");
    }

    #[test]
    fn warm_state_settings() {
        let c = config(&[("PGHOST", "h"), ("PGUSER", "u")]).unwrap();
        assert!(c.prepare.is_empty() && c.warmup.is_empty());
        assert_eq!(c.warmup_timeout, Duration::from_millis(2_000));
        assert_eq!(c.state_max_bytes, 16 * 1024 * 1024);
        assert_eq!(c.query_cache_max_bytes, 16 * 1024 * 1024);

        let c = config(&[
            ("PGHOST", "h"),
            ("PGUSER", "u"),
            ("WARMPOOL_PREPARE", r#"["SELECT 1"]"#),
            (
                "WARMPOOL_WARMUP",
                r#"{"c": {"sql": "SELECT 2", "ttl_ms": 5}}"#,
            ),
            ("WARMPOOL_STATE_MAX_BYTES", "1000"),
        ])
        .unwrap();
        assert_eq!(c.prepare, vec!["SELECT 1"]);
        assert_eq!(c.warmup[0].ttl, Some(Duration::from_millis(5)));
        assert_eq!(c.state_max_bytes, 1000);

        let dir = std::env::temp_dir().join(format!("warmpool-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("prepare.json");
        std::fs::write(&file, r#"["SELECT 3", "SELECT 4"]"#).unwrap();
        let path = file.display().to_string();
        let c = config(&[
            ("PGHOST", "h"),
            ("PGUSER", "u"),
            ("WARMPOOL_PREPARE_FILE", &path),
        ]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.unwrap().prepare.len(), 2);

        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("WARMPOOL_PREPARE", "SELECT 1")], "WARMPOOL_PREPARE"),
            (&[("WARMPOOL_WARMUP", r#"["SELECT 1"]"#)], "WARMPOOL_WARMUP"),
            (
                &[("WARMPOOL_WARMUP", "{}"), ("WARMPOOL_WARMUP_FILE", "/x")],
                "WARMPOOL_WARMUP_FILE",
            ),
            (
                &[("WARMPOOL_PREPARE_FILE", "/nonexistent/warmpool.json")],
                "WARMPOOL_PREPARE_FILE",
            ),
            (
                &[("WARMPOOL_WARMUP_TIMEOUT_MS", "0")],
                "WARMPOOL_WARMUP_TIMEOUT_MS",
            ),
            (
                &[("WARMPOOL_COMMIT_TIMEOUT_MS", "0")],
                "WARMPOOL_COMMIT_TIMEOUT_MS",
            ),
            (
                &[("WARMPOOL_STATE_MAX_BYTES", "lots")],
                "WARMPOOL_STATE_MAX_BYTES",
            ),
            (
                &[("WARMPOOL_QUERY_CACHE_MAX_BYTES", "-1")],
                "WARMPOOL_QUERY_CACHE_MAX_BYTES",
            ),
        ];
        for (vars, variable) in cases {
            let mut all = vec![("PGHOST", "h"), ("PGUSER", "u")];
            all.extend_from_slice(vars);
            let e = config(&all).unwrap_err();
            assert_eq!(e.variable, *variable, "{vars:?}: {e}");
        }
    }

    #[test]
    fn debug_redacts_the_password() {
        let c = config(&[
            ("DATABASE_URL", "postgres://u:hunter2-secret@h/d"),
            ("PGPASSWORD", "other-secret"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(!shown.contains("other-secret"), "{shown}");
    }
}
