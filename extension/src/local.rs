//! Running outside Lambda: serve until SIGTERM or SIGINT, then close every connection cleanly.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::session::Shared;
use crate::{pool, server, socket};

/// How long sessions get to finish after shutdown starts, before connections are closed.
const SESSION_DRAIN: Duration = Duration::from_millis(200);

/// Serves until a termination signal arrives.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        stop.cancel();
    });
    serve(config, shutdown).await
}

/// Builds the pool, binds the socket, warms connections and serves until `shutdown` is
/// cancelled; then closes the pool within the shutdown timeout and removes the socket.
pub async fn serve(
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = Arc::new(config);
    let pool = pool::build(&config)?;
    let (listener, uid) = socket::bind(&config.socket_path)
        .map_err(|e| format!("cannot bind {}: {e}", config.socket_path.display()))?;
    tracing::info!(socket = %config.socket_path.display(), "listening");

    // The socket is bound first, so clients can connect while connections open.
    let warming = {
        let pool = pool.clone();
        let n = config.warm_size;
        tokio::spawn(async move {
            if let Err(e) = pool::warm(&pool, n).await {
                tracing::warn!(error = %e, "could not open warm connections; will retry on demand");
            }
        })
    };
    let reaper = {
        let pool = pool.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let period = (config.idle_timeout / 2).max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(period).await;
                let n = pool::reap_idle(
                    &pool,
                    config.warm_size,
                    config.idle_timeout,
                    config.shutdown_timeout,
                )
                .await;
                if n > 0 {
                    tracing::debug!(closed = n, "closed idle connections");
                }
            }
        })
    };

    let shared = Arc::new(Shared {
        pool: pool.clone(),
        config: config.clone(),
    });
    server::serve(listener, uid, shared, shutdown, SESSION_DRAIN).await;
    warming.abort();
    reaper.abort();
    let (clean, dropped) = pool::close(&pool, config.shutdown_timeout).await;
    tracing::info!(closed = clean, dropped, "connections closed");
    socket::remove(&config.socket_path);
    Ok(())
}
