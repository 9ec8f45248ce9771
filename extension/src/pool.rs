//! The connection pool: deadpool's managed pool over tokio-postgres connections.
//!
//! deadpool-postgres's own manager is not used because its connection wrapper aborts the driver
//! task when dropped, so a closed connection never sends Terminate and the server logs an
//! unexpected EOF; and its statement cache has no bound. This manager keeps deadpool's pool
//! (wait, create and recycle timeouts, fair queueing) and closes connections properly.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use futures_util::future::join_all;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::Config;
use crate::conn::PgConn;
use crate::tls;

/// The pool.
pub type Pool = managed::Pool<Manager>;

/// A connection checked out of the pool; it goes back when dropped.
pub type PooledConn = Object<Manager>;

/// Opens and recycles connections.
pub struct Manager {
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    cache_size: NonZeroUsize,
    check_after_idle: Duration,
    reset_timeout: Duration,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config's Debug redacts the password.
        f.debug_struct("Manager")
            .field("pg", &self.pg)
            .finish_non_exhaustive()
    }
}

impl managed::Manager for Manager {
    type Type = PgConn;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<PgConn, tokio_postgres::Error> {
        let (client, connection) = self.pg.connect(self.tls.clone()).await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection ended with an error");
            }
        });
        tracing::debug!("opened a database connection");
        Ok(PgConn::new(client, driver, self.cache_size))
    }

    /// Runs on every checkout of an idle connection. deadpool bounds it with the recycle timeout,
    /// and a connection that fails it is closed and replaced.
    async fn recycle(
        &self,
        conn: &mut PgConn,
        _: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        if conn.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        if conn.needs_reset() {
            conn.reset().await.map_err(RecycleError::Backend)?;
        } else if conn.last_used.elapsed() > self.check_after_idle {
            // After an idle gap (on Lambda, a freeze) a socket the server or a NAT has closed can
            // still read as open; one empty query tells.
            conn.check().await.map_err(RecycleError::Backend)?;
        }
        conn.last_used = Instant::now();
        Ok(())
    }
}

/// Why the pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    /// deadpool refused the settings.
    #[error("pool setup: {0}")]
    Pool(#[from] managed::BuildError),
}

/// Builds the pool from the configuration. No connection is opened yet.
pub fn build(config: &Config) -> Result<Pool, BuildError> {
    let (tls, ssl_mode) = tls::connector(config)?;
    let mut pg = config.pg.clone();
    pg.ssl_mode(ssl_mode);
    pg.connect_timeout(config.connect_timeout);
    let manager = Manager {
        pg,
        tls,
        cache_size: NonZeroUsize::new(config.statement_cache_size).unwrap_or(NonZeroUsize::MIN),
        check_after_idle: config.check_after_idle,
        reset_timeout: config.reset_timeout,
    };
    let pool = Pool::builder(manager)
        .max_size(config.max_size)
        .timeouts(Timeouts {
            wait: Some(config.wait_timeout),
            create: Some(config.connect_timeout),
            recycle: Some(config.reset_timeout),
        })
        .runtime(deadpool::Runtime::Tokio1)
        .build()?;
    Ok(pool)
}

/// Opens up to `n` connections at once and returns them to the pool; returns how many opened.
pub async fn warm(pool: &Pool, n: usize) -> Result<usize, PoolError<tokio_postgres::Error>> {
    let started = Instant::now();
    let results = join_all((0..n).map(|_| pool.get())).await;
    let mut opened = 0;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(_) => opened += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    tracing::info!(
        opened,
        wanted = n,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pool warmed"
    );
    match first_error {
        Some(e) if opened == 0 && n > 0 => Err(e),
        _ => Ok(opened),
    }
}

/// Closes every idle connection with Terminate, all at once, within `budget`; then closes the
/// pool so connections still in use are closed when they come back.
pub async fn close(pool: &Pool, budget: Duration) -> (usize, usize) {
    let idle = pool.retain(|_, _| false).removed;
    pool.close();
    let results = join_all(idle.into_iter().map(|c| c.close(budget))).await;
    let clean = results.iter().filter(|ok| **ok).count();
    (clean, results.len() - clean)
}

/// Closes connections beyond `keep` that have been idle for `idle_timeout`.
pub async fn reap_idle(
    pool: &Pool,
    keep: usize,
    idle_timeout: Duration,
    budget: Duration,
) -> usize {
    let mut kept = 0;
    let removed = pool
        .retain(|conn, _| {
            if conn.last_used.elapsed() < idle_timeout || kept < keep {
                kept += 1;
                true
            } else {
                false
            }
        })
        .removed;
    let n = removed.len();
    join_all(removed.into_iter().map(|c| c.close(budget))).await;
    n
}

/// The manager's reset bound, for session code that rolls back abandoned transactions.
pub fn reset_timeout(pool: &Pool) -> Duration {
    pool.manager().reset_timeout
}
