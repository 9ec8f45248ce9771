//! The `warmpool` extension binary.

use std::process::ExitCode;

use warmpool_extension::config::Config;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("warmpool {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // The settings come first: a bad one is reported on stderr, before any log line.
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warmpool: {e}");
            return ExitCode::from(2);
        }
    };
    warmpool_extension::memory::tune();
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
    // Inside the runtime: with the `otel` feature the span exporter runs on it.
    let entered = runtime.enter();
    let directives = std::env::var("WARMPOOL_LOG").unwrap_or_else(|_| "info".into());
    warmpool_extension::logging::init(&directives, config.observability.log_format);
    drop(entered);
    // Lambda sets AWS_LAMBDA_RUNTIME_API for every process of an execution environment.
    let result = if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        runtime.block_on(warmpool_extension::lambda::run(config))
    } else {
        runtime
            .block_on(warmpool_extension::local::run(config))
            .map_err(|e| e.to_string().into())
    };
    // From this thread, while the runtime's workers still run the exporter's task.
    #[cfg(feature = "otel")]
    warmpool_extension::otel::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warmpool: {e}");
            ExitCode::FAILURE
        }
    }
}
