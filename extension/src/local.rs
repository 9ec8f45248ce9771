//! Running outside Lambda: serve until SIGTERM or SIGINT, then close every connection cleanly.

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::service::Service;

/// Serves until a termination signal arrives.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let budget = config.shutdown_timeout;
    // A signal during start-up ends it: nothing is serving yet, so there is nothing to drain.
    let mut service = tokio::select! {
        started = Service::start(config) => started?,
        _ = term.recv() => {
            tracing::info!("SIGTERM during start-up: exiting");
            return Ok(());
        }
        _ = int.recv() => {
            tracing::info!("SIGINT during start-up: exiting");
            return Ok(());
        }
    };
    let shared = service.shared().clone();
    let warming = crate::tasks::spawn(async move {
        if let Err(e) = crate::pool::warm(&shared.pool, shared.config.warm_size).await {
            tracing::warn!(error = %crate::errors::error_chain(&e), "could not open warm connections; will retry on demand");
        }
        crate::warm_load::warm_up(&shared).await;
    });
    service.start_maintenance();
    service.start_metrics_interval();
    let telemetry = service.shared().telemetry.clone();
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    warming.abort();
    telemetry.on_shutdown();
    let report = service.stop(budget).await;
    let totals = telemetry.meter().totals();
    tracing::info!(
        closed = report.closed,
        dropped = report.dropped,
        elapsed_ms = report.elapsed.as_millis() as u64,
        queries = totals.queries,
        errors = totals.total_errors(),
        connections_created = totals.connections_created,
        connections_replaced = totals.connections_replaced,
        "connections closed"
    );
    Ok(())
}
