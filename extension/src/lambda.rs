//! Running as an external Lambda extension, through the `lambda-extension` crate.
//!
//! The extension registers under its executable's file name, as Lambda requires
//! (<https://docs.aws.amazon.com/lambda/latest/dg/runtimes-extensions-api.html#extensions-registration-api-a>).
//! The crate reads the Extensions API endpoint from `AWS_LAMBDA_RUNTIME_API`, which is how the
//! local Lambda used by the tests points it at itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lambda_extension::{service_fn, Extension, LambdaEvent, NextEvent};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::lifecycle::{now_ms, Invocation, Lifecycle, OnInvoke};
use crate::service::Service;

/// Runs the extension until SHUTDOWN.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let managed_instances = config.max_concurrency > 1;
    let require_database = config.init_require_database;
    let lifecycle = Arc::new(Mutex::new(Lifecycle::new(
        config.check_after_idle,
        config.shutdown_timeout,
    )));

    // The socket is bound before registering, so the function can connect during its own Init.
    let mut service = Service::start(config).await.map_err(|e| e.to_string())?;
    let shared = service.shared().clone();

    let (shutdown_tx, mut shutdown_rx) = mpsc::channel::<(String, u64)>(1);
    let processor = {
        let lifecycle = lifecycle.clone();
        let shared = shared.clone();
        service_fn(move |event: LambdaEvent| {
            let lifecycle = lifecycle.clone();
            let shared = shared.clone();
            let shutdown_tx = shutdown_tx.clone();
            async move {
                match event.next {
                    NextEvent::Invoke(e) => {
                        // Writes the previous invocation's metrics record, and opens this one's
                        // span: what the extension logs until the next event carries its ids.
                        let span = shared.telemetry.on_invoke(&e.request_id, &e.tracing.value);
                        let _entered = span.enter();
                        let last = shared
                            .last_activity_ms
                            .load(std::sync::atomic::Ordering::Relaxed);
                        let action = lifecycle
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .on_invoke(
                                Invocation {
                                    request_id: e.request_id.clone(),
                                    deadline_ms: e.deadline_ms,
                                },
                                now_ms(),
                                last,
                            );
                        tracing::debug!(request_id = %e.request_id, deadline_ms = e.deadline_ms, ?action, "INVOKE");
                        if action == OnInvoke::CheckConnections {
                            // Returns at once: the extension answers /next without waiting on its
                            // own work, so it never lengthens the invocation.
                            shared.pool.check_after_thaw();
                        }
                        // Warm-up data sets past their time to live are re-read in the
                        // background; reads get the old rows until the new ones are in.
                        crate::warm_load::refresh_expired(&shared);
                    }
                    NextEvent::Shutdown(e) => {
                        tracing::info!(reason = %e.shutdown_reason, deadline_ms = e.deadline_ms, "SHUTDOWN");
                        shared.telemetry.on_shutdown();
                        let _ = shutdown_tx.send((e.shutdown_reason, e.deadline_ms)).await;
                        // The environment ends after SHUTDOWN; there is no next event to wait for.
                        std::future::pending::<()>().await;
                    }
                }
                Ok::<(), lambda_extension::Error>(())
            }
        })
    };

    // Lambda Managed Instances refuse INVOKE registration: the environment runs many
    // invocations at once and is never frozen.
    let events: &[&str] = if managed_instances {
        &["SHUTDOWN"]
    } else {
        &["INVOKE", "SHUTDOWN"]
    };
    let registered = Extension::new()
        .with_events(events)
        .with_events_processor(processor)
        .register()
        .await?;

    let warming = std::time::Instant::now();
    match service.warm().await {
        Ok(opened) => tracing::info!(
            opened,
            wanted = shared.config.warm_size,
            elapsed_ms = warming.elapsed().as_millis() as u64,
            credentials = %shared.pool.credentials(),
            "Init: warm connections open"
        ),
        Err(e) if require_database => {
            tracing::error!(error = %crate::errors::error_chain(&e), "Init: the database is unreachable (WARMPOOL_INIT_REQUIRE_DATABASE)");
            report_init_error(&registered.extension_id).await;
            return Err(format!("the database is unreachable: {e}").into());
        }
        Err(e) => {
            tracing::warn!(error = %crate::errors::error_chain(&e), "Init: the database is unreachable; connections will be opened on demand")
        }
    }
    service.warm_up().await;
    lifecycle.lock().unwrap_or_else(|p| p.into_inner()).ready();
    if managed_instances {
        // Never frozen, so timers run: idle connections are checked and reaped on a schedule,
        // and metrics are written per interval (there is no INVOKE to write them per invocation).
        service.start_maintenance();
        service.start_metrics_interval();
    }

    // Every way out is the same orderly stop: Terminate to each connection, the last metrics
    // record written, the socket removed. Lambda itself sends SHUTDOWN and then SIGKILL past its
    // deadline (<https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html#runtimes-lifecycle-shutdown>),
    // but an emulator, a container runtime or an operator may send SIGTERM or SIGINT, and the
    // Extensions API may go away.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // The run loop's first /next ends this extension's Init.
    let stop = tokio::select! {
        ended = registered.run() => Stop::ApiEnded(match ended {
            Ok(()) => "it closed".to_owned(),
            Err(e) => e.to_string(),
        }),
        Some((reason, deadline_ms)) = shutdown_rx.recv() => Stop::Shutdown { reason, deadline_ms },
        _ = term.recv() => Stop::Signal("SIGTERM"),
        _ = int.recv() => Stop::Signal("SIGINT"),
    };
    let (reason, deadline_ms) = match &stop {
        Stop::Shutdown {
            reason,
            deadline_ms,
        } => (reason.clone(), *deadline_ms),
        Stop::Signal(name) => {
            tracing::info!(signal = name, "stopping: a termination signal arrived");
            shared.telemetry.on_shutdown();
            (name.to_string(), 0)
        }
        Stop::ApiEnded(why) => {
            tracing::error!(error = %why, "stopping: the Extensions API loop ended");
            shared.telemetry.on_shutdown();
            ("the Extensions API loop ended".to_owned(), 0)
        }
    };
    let budget = lifecycle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .on_shutdown(now_ms(), deadline_ms)
        .unwrap_or(Duration::ZERO);
    let report = service.stop(budget).await;
    lifecycle.lock().unwrap_or_else(|p| p.into_inner()).closed();
    let totals = shared.telemetry.meter().totals();
    tracing::info!(
        reason = %reason,
        closed = report.closed,
        dropped = report.dropped,
        elapsed_ms = report.elapsed.as_millis() as u64,
        invocations = shared.telemetry.invocations(),
        queries = totals.queries,
        errors = totals.total_errors(),
        connections_created = totals.connections_created,
        connections_replaced = totals.connections_replaced,
        "SHUTDOWN: connections closed"
    );
    match stop {
        Stop::ApiEnded(why) => Err(format!("the Extensions API loop ended: {why}").into()),
        Stop::Shutdown { .. } | Stop::Signal(_) => Ok(()),
    }
}

/// Why the extension stops.
enum Stop {
    /// Lambda's SHUTDOWN event.
    Shutdown { reason: String, deadline_ms: u64 },
    /// SIGTERM or SIGINT: a requested stop.
    Signal(&'static str),
    /// The Extensions API closed the connection or failed: not a requested stop.
    ApiEnded(String),
}

/// Tells Lambda that Init failed, so the environment's Init fails with a reason.
async fn report_init_error(extension_id: &str) {
    let client = match lambda_runtime_api_client::Client::builder().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot report the Init error");
            return;
        }
    };
    match lambda_extension::requests::init_error(
        extension_id,
        "Extension.DatabaseUnreachable",
        None,
    ) {
        Ok(request) => {
            if let Err(e) = client.call(request).await {
                tracing::error!(error = %e, "cannot report the Init error");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot build the Init error report"),
    }
}
