//! What local mode and Lambda mode share: the socket, the pool, the server task, and an orderly
//! stop.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::lifecycle::now_ms;
use crate::shared::Shared;
use crate::telemetry::Telemetry;
use crate::{pgwire, pool, server, socket};

/// A running extension: socket bound, server accepting, pool built.
pub struct Service {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    maintenance: Option<JoinHandle<()>>,
    metrics: Option<JoinHandle<()>>,
}

/// What stopping did.
#[derive(Debug, Clone, Copy)]
pub struct StopReport {
    /// Connections closed with Terminate.
    pub closed: usize,
    /// Connections dropped because they did not close in time.
    pub dropped: usize,
    /// How long the stop took.
    pub elapsed: Duration,
}

impl Service {
    /// Builds the pool and binds the socket, then starts serving. The socket is bound first,
    /// so function code can connect while connections are still opening.
    pub async fn start(config: Config) -> Result<Service, Box<dyn std::error::Error>> {
        let config = Arc::new(config);
        let pool = pool::build(&config)?;
        // The PostgreSQL socket first: once the extension's own socket is there (what a
        // watcher of the directory waits for), both are.
        let pg_listener = match &config.pg_socket {
            Some(path) => {
                let bound = socket::bind(path).await.map_err(|e| {
                    format!(
                        "cannot bind the PostgreSQL socket {} (WARMPOOL_PG_SOCKET_DIR, \
                         WARMPOOL_PG_PORT): {e}",
                        path.display()
                    )
                })?;
                tracing::info!(socket = %path.display(), "accepting PostgreSQL clients");
                Some(bound)
            }
            None => None,
        };
        let pg_tcp = match &config.pg_tcp {
            Some(tcp) => match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, tcp.port)).await
            {
                Ok(listener) => {
                    tracing::info!(address = %SocketAddr::from((Ipv4Addr::LOCALHOST, tcp.port)), "listening for PostgreSQL clients on TCP");
                    Some((listener, pgwire::Verifier::new(tcp.password.expose())))
                }
                Err(e) => {
                    if let Some(path) = &config.pg_socket {
                        socket::remove(path);
                    }
                    return Err(format!(
                        "cannot listen on 127.0.0.1:{} (WARMPOOL_PG_TCP_PORT): {e}",
                        tcp.port
                    )
                    .into());
                }
            },
            None => None,
        };
        let (listener, uid) = match socket::bind(&config.socket_path).await {
            Ok(bound) => bound,
            Err(e) => {
                if let Some(path) = &config.pg_socket {
                    socket::remove(path);
                }
                return Err(format!(
                    "cannot bind the socket {} (WARMPOOL_SOCKET): {e}",
                    config.socket_path.display()
                )
                .into());
            }
        };
        tracing::info!(socket = %config.socket_path.display(), "listening");
        let telemetry = Arc::new(Telemetry::new(
            pool.meter().clone(),
            config.observability.clone(),
        ));
        let shared = Arc::new(Shared {
            pool,
            state: crate::state::State::new(&config),
            config,
            last_activity_ms: AtomicU64::new(now_ms()),
            telemetry,
        });
        let shutdown = CancellationToken::new();
        let pg_listeners = pgwire::Listeners {
            unix: pg_listener,
            tcp: pg_tcp,
        };
        let pg_server = (pg_listeners.unix.is_some() || pg_listeners.tcp.is_some()).then(|| {
            tokio::spawn(pgwire::serve(
                pg_listeners,
                shared.clone(),
                shutdown.clone(),
            ))
        });
        let server = tokio::spawn(server::serve(
            listener,
            uid,
            shared.clone(),
            shutdown.clone(),
        ));
        let server = match pg_server {
            // One handle for both: shutdown waits for, or aborts, the sessions of each.
            Some(pg) => tokio::spawn(async move {
                let (a, b) = tokio::join!(server, pg);
                for r in [a, b] {
                    if let Err(e) = r {
                        if e.is_panic() {
                            tracing::error!("a listener panicked");
                        }
                    }
                }
            }),
            None => server,
        };
        Ok(Service {
            shared,
            shutdown,
            server,
            maintenance: None,
            metrics: None,
        })
    }

    /// What sessions share: the pool, the configuration, the last activity.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Opens the warm connections, all at once.
    pub async fn warm(&self) -> Result<usize, pool::GetError> {
        pool::warm(&self.shared.pool, self.shared.config.warm_size).await
    }

    /// Reads the warm-up data sets, waiting at most `WARMPOOL_WARMUP_TIMEOUT_MS`; returns how many
    /// are loaded.
    pub async fn warm_up(&self) -> usize {
        crate::warm_load::warm_up(&self.shared).await
    }

    /// Checks idle connections and closes those beyond the warm size that have idled past the
    /// idle timeout, on a timer. Timers only run in an environment that is never frozen: local
    /// mode and Lambda Managed Instances.
    pub fn start_maintenance(&mut self) {
        let shared = self.shared.clone();
        self.maintenance = Some(tokio::spawn(async move {
            let config = &shared.config;
            let period = config
                .check_after_idle
                .min(config.idle_timeout / 2)
                .max(Duration::from_millis(100));
            loop {
                tokio::time::sleep(period).await;
                let closed = pool::reap_idle(
                    &shared.pool,
                    config.warm_size,
                    config.idle_timeout,
                    config.shutdown_timeout,
                )
                .await;
                if closed > 0 {
                    tracing::debug!(closed, "closed idle connections");
                }
                shared.pool.check_after_thaw();
                crate::warm_load::refresh_expired(&shared);
            }
        }));
    }

    /// Writes a metrics record every `WARMPOOL_METRICS_INTERVAL_MS`, where there is no INVOKE
    /// to write one per invocation: Lambda Managed Instances and local mode. Like maintenance,
    /// it needs an environment that is never frozen.
    pub fn start_metrics_interval(&mut self) {
        let telemetry = self.shared.telemetry.clone();
        let period = telemetry.settings().metrics_interval;
        self.metrics = Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                ticks.tick().await;
                telemetry.on_interval();
            }
        }));
    }

    /// Stops: no new sessions; open transactions roll back; every connection closes with
    /// Terminate within `budget`, or is dropped; the socket file is removed.
    pub async fn stop(self, budget: Duration) -> StopReport {
        let started = Instant::now();
        for task in [&self.maintenance, &self.metrics].into_iter().flatten() {
            task.abort();
        }
        self.shutdown.cancel();
        // Sessions get part of the budget to roll back; the rest closes connections.
        let drain = budget / 2;
        let mut server = self.server;
        if tokio::time::timeout(drain, &mut server).await.is_err() {
            // Aborting the server aborts its sessions; the connections they held are then closed
            // with the rest, never reused.
            tracing::warn!("sessions did not finish in time; aborting them");
            server.abort();
            let _ = server.await;
        }
        let left = budget.saturating_sub(started.elapsed());
        let (closed, dropped) = pool::close(&self.shared.pool, left).await;
        // Resets, refreshes and goodbyes still under way get what is left of the budget.
        let running = crate::tasks::drain(budget.saturating_sub(started.elapsed())).await;
        if running > 0 {
            tracing::debug!(
                running,
                "background tasks still running at the end of shutdown"
            );
        }
        socket::remove(&self.shared.config.socket_path);
        if let Some(path) = &self.shared.config.pg_socket {
            socket::remove(path);
        }
        StopReport {
            closed,
            dropped,
            elapsed: started.elapsed(),
        }
    }
}
