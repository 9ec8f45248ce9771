//! A local AWS Lambda execution environment for end-to-end tests, demos and trying an extension
//! layer: it serves the Runtime and Extensions APIs, starts the extensions and the function's
//! runtime as real processes, and enforces the lifecycle (Init limit, function timeout, freeze
//! between invocations, resets, the 2-second shutdown) as Lambda does.
//!
//! ```no_run
//! # async fn demo() {
//! use local_lambda::{LocalLambda, Outcome};
//! use std::time::Duration;
//!
//! let lambda = LocalLambda::builder()
//!     .extensions_dir("target/lambda/extensions")
//!     .bootstrap("target/debug/my-function")
//!     .env("DATABASE_URL", "postgres://...")
//!     .timeout(Duration::from_secs(3))
//!     .build()
//!     .unwrap();
//! let inv = lambda.invoke(serde_json::json!({"hello": "world"})).await;
//! assert!(matches!(inv.outcome, Outcome::Ok(_)));
//! assert!(lambda.is_frozen()); // every process SIGSTOPped until the next invoke
//! let report = lambda.shutdown().await;
//! println!("{report}");
//! # }
//! ```
//!
//! See README.md for what is and is not emulated.

mod api;
mod config;
mod environment;
mod events;
mod extensions_api;
mod http;
mod lifecycle;
mod output;
mod process;
mod report;
mod runtime_api;

pub use api::{BuildError, LocalLambda, LocalLambdaBuilder};
pub use events::{Event, EventKind, ShutdownReason};
pub use output::{OutputLine, Stream, WaitTimeout};
pub use process::{proc_state, ExitInfo, ProcessInfo, Role};
pub use report::{ExtensionShutdown, Invocation, Outcome, RuntimeShutdown, ShutdownReport};
