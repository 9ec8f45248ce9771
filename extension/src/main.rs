//! The `warmpool` extension binary.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use warmpool_extension::config::Config;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("warmpool {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let directives = std::env::var("WARMPOOL_LOG").unwrap_or_else(|_| "info".into());
    // tokio-postgres logs every statement with its bound parameter values at debug level, and
    // those may be secrets: only WARMPOOL_LOG_STATEMENTS=true lets them through.
    let statements = if std::env::var("WARMPOOL_LOG_STATEMENTS").as_deref() == Ok("true") {
        "tokio_postgres=debug"
    } else {
        "tokio_postgres=info"
    };
    let filter =
        EnvFilter::new(&directives).add_directive(statements.parse().expect("static directive"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warmpool: {e}");
            return ExitCode::from(2);
        }
    };
    // One thread by default (WARMPOOL_RUNTIME_THREADS): a statement's path is the session task
    // handing the request to the connection's driver task and back, and on one thread those
    // hand-offs are plain queue pushes instead of cross-thread wake-ups (a futex and often a
    // context switch each, tens of µs on a small VM). The extension's work is I/O: per
    // statement it spends microseconds of CPU, and the CPU-heavy part, TLS and SCRAM, happens
    // only when a connection opens.
    let built = if config.runtime_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.runtime_threads)
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warmpool: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Lambda sets AWS_LAMBDA_RUNTIME_API for every process of an execution environment.
    let result = if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        runtime.block_on(warmpool_extension::lambda::run(config))
    } else {
        runtime
            .block_on(warmpool_extension::local::run(config))
            .map_err(|e| e.to_string().into())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warmpool: {e}");
            ExitCode::FAILURE
        }
    }
}
