//! The `warmpool` extension: pooled, pre-warmed PostgreSQL connections served to function code
//! over a Unix socket.
//!
//! # Layout
//! - [`config`]: settings from the environment, with every default spelled out.
//! - [`credentials`]: each new connection's credentials: static, a Secrets Manager secret, or
//!   an RDS IAM token.
//! - [`tls`]: rustls for each libpq `sslmode`.
//! - [`conn`]: one database connection, its statement cache and session-state tracking.
//! - [`pool`]: the deadpool pool of those connections: warm-up, health checks, clean close.
//! - [`socket`]: binding the Unix socket.
//! - [`server`]: the accept loop.
//! - [`session`]: one client session and its transaction state.
//! - [`errors`]: every failure as an error frame with a SQLSTATE.
//! - [`service`]: what both modes share: start serving, stop in order.
//! - [`lifecycle`]: the Lambda lifecycle state machine (Init, Ready, Draining, Closed).
//! - [`lambda`]: running as a Lambda extension: register, warm at Init, INVOKE, SHUTDOWN.
//! - [`local`]: running outside Lambda until SIGTERM or SIGINT.

#![warn(missing_docs)]

pub mod config;
pub mod conn;
pub mod credentials;
pub mod deadline;
pub mod errors;
pub mod lambda;
pub mod lifecycle;
pub mod local;
pub mod pool;
pub mod retry;
pub mod server;
pub mod service;
pub mod session;
pub mod socket;
pub mod tls;
