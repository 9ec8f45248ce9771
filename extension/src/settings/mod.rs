//! Plain values that settings take, shared by the modules that act on them, so that none of
//! them needs the whole configuration: TLS modes, where root certificates come from, how
//! statements are prepared. `config` reads them from the environment.

pub mod fleet;
pub mod warmup;

use std::path::PathBuf;
use std::str::FromStr;

/// PostgreSQL's port when none is given (`PGPORT`, a connection string).
pub const DEFAULT_PORT: u16 = 5432;

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

impl SslMode {
    /// The value as `PGSSLMODE` spells it.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
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

/// How statements are prepared on the server (`WARMPOOL_PREPARED_STATEMENTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementMode {
    /// Under names of the connection's own, cached per connection. The default.
    Named,
    /// On the unnamed statement, parsed again with each execution in the same round trip:
    /// nothing is kept on the server, for poolers that cannot track named statements
    /// (PgBouncer before 1.21 in transaction mode, Supavisor).
    Unnamed,
}

impl FromStr for StatementMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "named" => Ok(StatementMode::Named),
            "unnamed" => Ok(StatementMode::Unnamed),
            other => Err(format!("unsupported value {other:?}: use named or unnamed")),
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
