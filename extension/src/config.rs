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

use tokio_postgres::config::ChannelBinding;

/// libpq's `sslmode` values. <https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-PROTECTION>
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, without verifying the certificate.
    Prefer,
    /// TLS always, without verifying the certificate (unless a root certificate is configured,
    /// which makes it verify-ca, as in libpq).
    Require,
    /// TLS always, with the certificate chain verified against the trusted roots.
    VerifyCa,
    /// TLS always, with the chain and the host name verified. The default.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "unsupported sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The operating system's store, falling back to the Mozilla roots built in.
    System,
    /// A PEM bundle, such as RDS's `global-bundle.pem`.
    File(PathBuf),
}

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
/// `Debug` never shows the password: `tokio_postgres::Config` redacts it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connection parameters: `DATABASE_URL`, then `PGHOST`, `PGPORT` (5432), `PGUSER`,
    /// `PGPASSWORD`, `PGDATABASE` (the user name) and `PGAPPNAME` (`warmpool`) for anything the URL
    /// leaves out.
    pub pg: tokio_postgres::Config,
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
    /// `WARMPOOL_RESET_TIMEOUT_MS`: the bound on a health check, a session reset or a rollback of
    /// an abandoned transaction; a connection that overruns it is closed. Default 2000.
    pub reset_timeout: Duration,
    /// `WARMPOOL_SHUTDOWN_TIMEOUT_MS`: the bound on closing every connection at shutdown; what has
    /// not closed by then is dropped. Default 500.
    pub shutdown_timeout: Duration,
    /// `WARMPOOL_STATEMENT_CACHE_SIZE`: prepared statements kept per connection, least recently
    /// used evicted first. Default 256.
    pub statement_cache_size: usize,
    /// `WARMPOOL_MAX_FRAME_BYTES`: the largest socket frame accepted. Default 16 MiB.
    pub max_frame: usize,
    /// `WARMPOOL_INIT_REQUIRE_DATABASE`: fail the environment's Init when no warm connection can
    /// be opened. Default `false`: the failure is logged and connections are retried on demand,
    /// so a function that does not touch the database keeps working.
    pub init_require_database: bool,
    /// `WARMPOOL_MAX_SESSIONS`: most client sessions (socket connections) served at once; past
    /// it a new session waits up to the wait timeout, then gets 53300. Default 1024.
    pub max_sessions: usize,
    /// `WARMPOOL_HANDSHAKE_TIMEOUT_MS`: how long a new session may take to send Hello.
    /// Default 5000.
    pub handshake_timeout: Duration,
    /// `WARMPOOL_LOG_STATEMENTS`: log every statement with its parameter values at debug level,
    /// for debugging. Default `false`: parameters can hold secrets and personal data.
    pub log_statements: bool,
    /// `AWS_LAMBDA_MAX_CONCURRENCY`, set by Lambda Managed Instances: concurrent invocations per
    /// environment. Above 1 the environment is never frozen and extensions register for SHUTDOWN
    /// only. Default 1 (classic Lambda).
    pub max_concurrency: usize,
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
    /// `WARMPOOL_RESET_TIMEOUT_MS`.
    pub const RESET_TIMEOUT_MS: u64 = 2_000;
    /// `WARMPOOL_SHUTDOWN_TIMEOUT_MS`.
    pub const SHUTDOWN_TIMEOUT_MS: u64 = 500;
    /// `WARMPOOL_STATEMENT_CACHE_SIZE`.
    pub const STATEMENT_CACHE_SIZE: usize = 256;
    /// `WARMPOOL_MAX_FRAME_BYTES`.
    pub const MAX_FRAME_BYTES: usize = warmpool::protocol::DEFAULT_MAX_FRAME;
    /// `WARMPOOL_INIT_REQUIRE_DATABASE`.
    pub const INIT_REQUIRE_DATABASE: bool = false;
    /// `WARMPOOL_MAX_SESSIONS`.
    pub const MAX_SESSIONS: usize = 1024;
    /// `WARMPOOL_HANDSHAKE_TIMEOUT_MS`.
    pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
    /// `WARMPOOL_LOG_STATEMENTS`.
    pub const LOG_STATEMENTS: bool = false;
    /// `PGPORT`.
    pub const PORT: u16 = 5432;
    /// `PGAPPNAME`.
    pub const APPLICATION_NAME: &str = "warmpool";
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup`, so tests can pass their own environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());

        let mut url_ssl_mode = None;
        let mut url_root_cert = None;
        let mut pg = match get("DATABASE_URL") {
            Some(url) => {
                let (rest, mode, root) = take_tls_params(&url);
                url_ssl_mode = mode;
                url_root_cert = root;
                tokio_postgres::Config::from_str(&rest).map_err(|e| ConfigError {
                    variable: "DATABASE_URL",
                    reason: e.to_string(),
                })?
            }
            None => tokio_postgres::Config::new(),
        };

        if pg.get_hosts().is_empty() {
            match get("PGHOST") {
                Some(h) => {
                    for host in h.split(',') {
                        pg.host(host);
                    }
                }
                None => {
                    return Err(ConfigError {
                        variable: "PGHOST",
                        reason: "no database host: set DATABASE_URL or PGHOST".into(),
                    })
                }
            }
        }
        if pg.get_ports().is_empty() {
            let port = parse(&get, "PGPORT", defaults::PORT)?;
            pg.port(port);
        }
        if pg.get_user().is_none() {
            match get("PGUSER") {
                Some(u) => {
                    pg.user(&u);
                }
                None => {
                    return Err(ConfigError {
                        variable: "PGUSER",
                        reason: "no database user: set DATABASE_URL or PGUSER".into(),
                    })
                }
            }
        }
        if pg.get_password().is_none() {
            if let Some(p) = get("PGPASSWORD") {
                pg.password(p);
            }
        }
        if pg.get_dbname().is_none() {
            let db = get("PGDATABASE").or_else(|| pg.get_user().map(str::to_owned));
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
            shutdown_timeout: ms(
                "WARMPOOL_SHUTDOWN_TIMEOUT_MS",
                defaults::SHUTDOWN_TIMEOUT_MS,
            )?,
            statement_cache_size: parse(
                &get,
                "WARMPOOL_STATEMENT_CACHE_SIZE",
                defaults::STATEMENT_CACHE_SIZE,
            )?,
            max_frame: parse(&get, "WARMPOOL_MAX_FRAME_BYTES", defaults::MAX_FRAME_BYTES)?,
            init_require_database: parse(
                &get,
                "WARMPOOL_INIT_REQUIRE_DATABASE",
                defaults::INIT_REQUIRE_DATABASE,
            )?,
            max_concurrency,
            max_sessions: parse(&get, "WARMPOOL_MAX_SESSIONS", defaults::MAX_SESSIONS)?,
            handshake_timeout: ms(
                "WARMPOOL_HANDSHAKE_TIMEOUT_MS",
                defaults::HANDSHAKE_TIMEOUT_MS,
            )?,
            log_statements: parse(&get, "WARMPOOL_LOG_STATEMENTS", defaults::LOG_STATEMENTS)?,
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
        if self.max_concurrency == 0 {
            return fail("AWS_LAMBDA_MAX_CONCURRENCY", "must be at least 1");
        }
        if self.max_sessions == 0 {
            return fail("WARMPOOL_MAX_SESSIONS", "must be at least 1");
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
        if self.statement_cache_size == 0 {
            return fail("WARMPOOL_STATEMENT_CACHE_SIZE", "must be at least 1");
        }
        if self.max_frame < 1024 || self.max_frame > u32::MAX as usize {
            return fail(
                "WARMPOOL_MAX_FRAME_BYTES",
                "must be between 1024 and 4294967295",
            );
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
        Ok(())
    }
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
