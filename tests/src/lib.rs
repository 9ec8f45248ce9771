//! Test harness: a private TLS PostgreSQL server per test, and the real extension binary.
//!
//! - [`pg`]: [`pg::PgServer`], a fresh cluster on its own port, TLS on, scram-sha-256 over
//!   `hostssl` only.
//! - [`certs`]: a test CA and server certificate.
//! - [`ext`]: [`ext::Extension`], the `warmpool` binary as a child process.
//! - [`fleet`]: many environments sharing a fleet's connection budget, and a sampler of the
//!   fleet's connections.
//! - [`pgbouncer`]: [`pgbouncer::PgBouncer`], a transaction-mode PgBouncer in front of a
//!   [`pg::PgServer`].
//! - [`secrets_manager`]: a Secrets Manager stand-in on loopback.
//! - [`logs`]: the extension's JSON log lines, read back.
//! - [`emf`]: a checker for CloudWatch Embedded Metric Format records.
//! - [`prereq`]: what the tests need from the machine (PostgreSQL, PgBouncer, `ss`), installed on
//!   first use.

pub mod certs;
pub mod emf;
pub mod ext;
pub mod fleet;
pub mod lambda_env;
pub mod logs;
pub mod pg;
pub mod pgbouncer;
pub mod prereq;
pub mod secrets_manager;

pub use ext::Extension;
pub use lambda_env::LambdaEnv;
pub use pg::PgServer;
pub use pgbouncer::PgBouncer;
