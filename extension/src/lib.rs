//! The `warmpool` extension: pooled, pre-warmed PostgreSQL connections served to function code
//! over a Unix socket.
//!
//! # Layout
//! - [`config`]: settings from the environment, with every default spelled out.
//! - [`settings`]: the plain values settings take (sslmode, root certificates, statement mode).
//! - `pgconfig`: connection settings, from libpq's URL and keyword connection strings.
//! - [`credentials`]: each new connection's credentials: static, a Secrets Manager secret, or
//!   an RDS IAM token.
//! - [`tls`]: rustls for each libpq `sslmode`.
//! - [`backend`]: a connection to PostgreSQL at the message level, driven by the task that
//!   uses it: TLS, SCRAM, statements named per connection, transaction status from each
//!   ReadyForQuery.
//! - `conn`: one database connection, its statement cache and session-state tracking.
//! - `notices`: the database's notices, kept for the client that ran the statement.
//! - [`pool`]: the deadpool pool of those connections: warm-up, health checks, clean close.
//! - [`pool_errors`]: a connection that could not be had, as the client is told it.
//! - `socket`: binding the Unix socket.
//! - [`memory`]: giving memory back to the system once a burst of sessions is over.
//! - `server`: the accept loop.
//! - `slots`: the `WARMPOOL_MAX_SESSIONS` session slots; the longest-idle one goes to a new
//!   session when all are in use.
//! - `shared`: what every session shares.
//! - `session`: one client session and its transaction state.
//! - [`state`]: warm state: the state store, the query result cache, warm-up data sets.
//! - `warm_load`: running the warm-up queries at Init and when their data expire.
//! - `warm_serve`: the session's side of the warm-state requests.
//! - [`errors`]: every failure as an error frame with a SQLSTATE.
//! - [`logging`]: JSON (or text) log lines on stdout, tagged with the invocation's ids.
//! - `metrics`: counters per invocation, per metrics record, and since start.
//! - `emf`: those counters as CloudWatch Embedded Metric Format records.
//! - `telemetry`: when records are written: per invocation, per interval, at SHUTDOWN.
//! - `otel` (cargo feature `otel`): OpenTelemetry export of spans, in the X-Ray trace.
//! - `service`: what both modes share: start serving, stop in order.
//! - [`lifecycle`]: the Lambda lifecycle state machine (Init, Ready, Draining, Closed).
//! - [`lambda`]: running as a Lambda extension: register, warm at Init, INVOKE, SHUTDOWN.
//! - [`local`]: running outside Lambda until SIGTERM or SIGINT.

#![warn(missing_docs)]

pub mod backend;
pub mod config;
pub(crate) mod conn;
pub mod credentials;
pub(crate) mod deadline;
pub(crate) mod emf;
pub mod errors;
pub(crate) mod fleet;
pub mod lambda;
pub mod lifecycle;
pub mod local;
pub mod logging;
pub mod memory;
pub(crate) mod metrics;
pub(crate) mod notices;
#[cfg(feature = "otel")]
pub mod otel;
mod pgconfig;
pub mod pool;
pub mod pool_errors;
pub(crate) mod retry;
pub(crate) mod server;
pub(crate) mod service;
pub(crate) mod session;
pub mod settings;
pub(crate) mod shared;
pub(crate) mod slots;
pub(crate) mod socket;
pub mod state;
pub(crate) mod tasks;
pub(crate) mod telemetry;
pub mod tls;
pub(crate) mod warm_load;
pub(crate) mod warm_serve;
