//! The connection pool: deadpool's managed pool over backend connections
//! ([`crate::backend`]). deadpool keeps the pool (wait, create and recycle timeouts, fair
//! queueing); this manager opens, checks and closes the connections.
//!
//! Every new connection asks the credentials provider for its login, so a rotated secret or a
//! new IAM token is used from the next connection on, while open connections stay open. A
//! refusal with 28P01 or 28000 gets one fresh login and one retry before it becomes an error.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use futures_util::future::join_all;
use tokio::sync::watch;

use warmpool::protocol::sqlstate;

use crate::backend::{self, Backend, CancelToken};
use crate::config::Config;
use crate::conn::{PgConn, StatementMode};
use crate::credentials::{CredentialsError, ErrorKind, Login, Origin, Provider};
use crate::fleet::{Admission, Fleet};
use crate::metrics::{Event, Meter};
use crate::pgconfig::PgConfig;
use crate::retry::Backoff;
use crate::tls;

tokio::task_local! {
    /// The retry budget of the request a connection is being created for: when it arrived and
    /// when its budget ends. deadpool's `create` takes no arguments, and runs inside the
    /// request's own `get`, so the budget reaches it this way.
    static BUDGET: (tokio::time::Instant, tokio::time::Instant);
}

/// An idle connection checked out after at least this long is given a scheduler turn first, so
/// the runtime has read what the server sent it meanwhile; see `Manager::check`.
const YIELD_AFTER_IDLE: Duration = Duration::from_millis(50);

/// A connection checked out of the pool; it goes back when dropped.
pub type PooledConn = Object<Manager>;

/// Opens and recycles connections.
pub struct Manager {
    /// The connection settings, without whatever the credentials provider supplies.
    pg: PgConfig,
    tls: tls::Connector,
    credentials: Provider,
    /// `WARMPOOL_STATEMENT_CACHE_SIZE`; 0 caches nothing.
    cache_size: Option<NonZeroUsize>,
    /// `WARMPOOL_PREPARED_STATEMENTS`.
    statement_mode: StatementMode,
    /// `PGCHANNELBINDING` (or `channel_binding` in the URL).
    channel_binding: backend::connect::ChannelBinding,
    check_after_idle: Duration,
    reset_timeout: Duration,
    connect_timeout: Duration,
    max_lifetime: Option<Duration>,
    /// `WARMPOOL_PREPARE`: prepared on every connection as it opens.
    prepare: Arc<[String]>,
    /// Bumped when the environment thaws: a connection checked before the bump is checked again
    /// before its next use.
    thaw_epoch: AtomicU64,
    /// Counts connections opened and replaced.
    meter: Arc<Meter>,
    /// Backoff between connection attempts while the database refuses them.
    backoff: Backoff,
    /// `WARMPOOL_LOG_STATEMENTS`: notices are logged with their text.
    log_statements: bool,
    /// `WARMPOOL_FLEET_MAX_CONNECTIONS`: every new connection is admitted into the fleet's
    /// budget before it is used.
    fleet: Option<Fleet>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // PgConfig's Debug redacts the password.
        f.debug_struct("Manager")
            .field("pg", &self.pg)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Why a connection could not be opened or kept.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials provider failed: Secrets Manager unreachable or refusing, a malformed
    /// secret, a token that could not be signed.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The server refused the credentials (28P01 or 28000), after the one retry with fresh ones
    /// when the provider has fresh ones to give.
    #[error("{error} (credentials: {origin}{})", if *.retried { "; fetched again and retried once" } else { "" })]
    Auth {
        /// The server's refusal.
        #[source]
        error: backend::Error,
        /// Where the refused credentials came from.
        origin: Origin,
        /// Whether fresh credentials were tried too.
        retried: bool,
    },
    /// Any other failure of the database connection.
    #[error(transparent)]
    Database(#[from] backend::Error),
    /// The database refused the connections tried for this request within
    /// `WARMPOOL_RETRY_BUDGET_MS`, and it was not this request's turn to try again: the last
    /// refusal.
    // The last failure goes in parentheses: its text may start with the server's own severity
    // ("FATAL: sorry, too many clients already"), which a client shows after the severity of
    // the error that carries it.
    #[error("the database refused the last connection attempt ({0}); no new attempt within WARMPOOL_RETRY_BUDGET_MS while it refuses connections")]
    Unavailable(String),
    /// The fleet's connection budget is full, and none of its connections has been idle long
    /// enough to take. Not a failure of the database: it does not hold back other connection
    /// attempts, and the request waits for a slot on its own.
    #[error(
        "the fleet's connection budget is full: {connections} connections of fleet {fleet:?} \
         for WARMPOOL_FLEET_MAX_CONNECTIONS={max}, none of them idle longer than \
         WARMPOOL_FLEET_STEAL_IDLE_MS"
    )]
    FleetFull {
        /// The fleet's name.
        fleet: String,
        /// The budget.
        max: u32,
        /// The fleet's connections counted, the refused one included.
        connections: u64,
    },
    /// Obtaining credentials or connecting took longer than `WARMPOOL_CONNECT_TIMEOUT_MS`.
    #[error("{phase} took longer than {} ms (WARMPOOL_CONNECT_TIMEOUT_MS)", .after.as_millis())]
    Timeout {
        /// What was under way.
        phase: &'static str,
        /// The bound.
        after: Duration,
    },
}

impl ConnectError {
    /// The server refused the credentials: a wrong password, an expired token, a user that may
    /// not log in. Fresh credentials may succeed where these failed.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            ConnectError::Auth { .. } => true,
            ConnectError::Database(e) => is_auth_failure(e),
            _ => false,
        }
    }
}

/// 28P01 invalid_password (a wrong password or an expired IAM token) and 28000
/// invalid_authorization_specification (no pg_hba entry, or RDS refusing an IAM login).
fn is_auth_failure(e: &backend::Error) -> bool {
    matches!(
        e.code(),
        Some(sqlstate::INVALID_PASSWORD | sqlstate::INVALID_AUTHORIZATION_SPECIFICATION)
    )
}

impl Manager {
    /// One connection attempt with `login`, bounded by the connect timeout (TCP, TLS and
    /// authentication together).
    async fn connect(&self, login: &Login) -> Result<PgConn, ConnectError> {
        let pg = login
            .apply(&self.pg)
            .map_err(|kind| CredentialsError::new(self.credentials.origin().clone(), kind))?;
        let params = connect_params(&pg, &self.tls, self.channel_binding, self.log_statements)?;
        let connecting = backend::connect::connect(&params);
        let backend = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| ConnectError::Timeout {
                phase: "connecting to the database",
                after: self.connect_timeout,
            })??;
        let mut backend = backend;
        check_session_attrs(&mut backend, pg.get_target_session_attrs()).await?;
        if let Some(fleet) = &self.fleet {
            // Dropping the connection on a refusal closes it (Terminate) in the background.
            self.admit(fleet, &mut backend).await?;
        }
        tracing::debug!(
            user = pg.get_user().unwrap_or_default(),
            secret_version = login.version.as_deref(),
            pid = backend.process_id(),
            "opened a database connection"
        );
        let mut conn = PgConn::new(backend, self.cache_size, self.statement_mode);
        conn.checked_epoch = self.thaw_epoch.load(Ordering::Acquire);
        if !self.prepare.is_empty() {
            conn.prepare_configured(&self.prepare, self.connect_timeout)
                .await;
        }
        Ok(conn)
    }

    /// Admits a new connection into the fleet's budget, bounded by the connect timeout; a
    /// refusal, or a wait for the fleet's lock that ran out, is [`ConnectError::FleetFull`].
    async fn admit(&self, fleet: &Fleet, backend: &mut Backend) -> Result<(), ConnectError> {
        let budget = self.connect_timeout;
        let full = |connections| ConnectError::FleetFull {
            fleet: fleet.settings().name.clone(),
            max: fleet.settings().max_connections,
            connections,
        };
        let admitted = tokio::time::timeout(budget, fleet.admit(backend, budget))
            .await
            .map_err(|_| ConnectError::Timeout {
                phase: "admitting the connection into the fleet's budget",
                after: budget,
            })?;
        match admitted {
            Ok(Admission::Admitted { taken }) => {
                for t in &taken {
                    tracing::info!(
                        pid = t.pid,
                        idle_ms = t.idle_ms,
                        fleet = %fleet.settings().name,
                        "took a connection slot from an idle fleet connection"
                    );
                }
                if !taken.is_empty() {
                    self.meter.add(Event::FleetSlotsTaken(taken.len() as u64));
                }
                Ok(())
            }
            Ok(Admission::Full { connections }) => {
                tracing::info!(
                    fleet_connections = connections,
                    max = fleet.settings().max_connections,
                    "the fleet's connection budget is full; waiting for a slot"
                );
                Err(full(connections))
            }
            Err(e) if crate::fleet::is_lock_timeout(&e) => {
                tracing::info!("the fleet's lock stayed taken; waiting for a slot");
                Err(full(0))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Credentials from the provider, bounded by the connect timeout: a request waiting on
    /// another's fetch gives up as that one would.
    async fn bounded<T>(
        &self,
        fetching: impl std::future::Future<Output = Result<T, CredentialsError>>,
    ) -> Result<T, ConnectError> {
        match tokio::time::timeout(self.connect_timeout, fetching).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(CredentialsError::new(
                self.credentials.origin().clone(),
                ErrorKind::Timeout(self.connect_timeout),
            )
            .into()),
        }
    }

    /// One connection with the provider's current login, plus the one retry with fresh
    /// credentials after an authentication refusal.
    async fn create_once(&self) -> Result<PgConn, ConnectError> {
        let login = self.bounded(self.credentials.login()).await?;
        let first = match self.connect(&login).await {
            Err(ConnectError::Database(e)) if is_auth_failure(&e) => e,
            other => return other,
        };
        let origin = self.credentials.origin().clone();
        let Some(fresh) = self.bounded(self.credentials.fresh_login(&login)).await? else {
            return Err(ConnectError::Auth {
                error: first,
                origin,
                retried: false,
            });
        };
        tracing::info!(
            credentials = %origin,
            code = first.code().unwrap_or_default(),
            "the database refused the credentials; retrying once with fresh ones"
        );
        match self.connect(&fresh).await {
            Err(ConnectError::Database(error)) if is_auth_failure(&error) => {
                Err(ConnectError::Auth {
                    error,
                    origin,
                    retried: true,
                })
            }
            other => other,
        }
    }
}

impl managed::Manager for Manager {
    type Type = PgConn;
    type Error = ConnectError;

    /// Opens a connection with the provider's current login. When the server refuses it
    /// (rotated password, expired token), asks the provider for a fresh login and tries once
    /// more; only that second refusal becomes an error, naming where the credentials came from.
    ///
    /// While the database refuses connections, attempts wait their turn in the backoff (see
    /// `retry.rs`), so however many requests need a connection, the database sees one
    /// attempt per backoff step.
    async fn create(&self) -> Result<PgConn, ConnectError> {
        // Boxed: a connect (TLS, authentication, retries) is a large future, and deadpool holds
        // this one inside every checkout's future, which is moved on every statement even
        // when an idle connection is handed out and nothing connects.
        Box::pin(self.create_counted()).await
    }

    /// Runs on every checkout of an idle connection. deadpool bounds it with the recycle timeout,
    /// and a connection that fails it is closed and replaced.
    async fn recycle(&self, conn: &mut PgConn, metrics: &Metrics) -> RecycleResult<ConnectError> {
        let checked = self.check(conn, metrics).await;
        if let Err(e) = &checked {
            self.meter.add(Event::ConnectionReplaced);
            tracing::info!(reason = %e, age_ms = metrics.age().as_millis() as u64, "replacing a connection");
        }
        checked
    }
}

impl Manager {
    /// [`managed::Manager::create`], counted and paced by the backoff.
    async fn create_counted(&self) -> Result<PgConn, ConnectError> {
        let permit = if self.backoff.failing() {
            let (arrived, until) = BUDGET.try_with(|b| *b).unwrap_or_else(|_| {
                let now = tokio::time::Instant::now();
                (now, now + self.backoff.policy().budget)
            });
            Some(
                self.backoff
                    .permit(arrived, until)
                    .await
                    .map_err(ConnectError::Unavailable)?,
            )
        } else {
            None
        };
        let created = self.create_once().await;
        match (&created, permit) {
            (Ok(_), Some(permit)) => self.backoff.succeeded(permit),
            (Err(e), Some(permit)) if transient(e) => self.backoff.failed(permit, e),
            (Err(e), None) if transient(e) => self.backoff.first_failure(e),
            _ => {}
        }
        if created.is_ok() {
            self.meter.add(Event::ConnectionCreated);
        }
        created
    }

    /// Whether an idle connection may be handed out: open, young enough, outside a transaction,
    /// reset, and alive if it sat idle across a gap or a thaw.
    async fn check(&self, conn: &mut PgConn, metrics: &Metrics) -> RecycleResult<ConnectError> {
        // A connection the server closed while it sat idle (pg_terminate_backend, a restart,
        // idle_session_timeout) has the server's FATAL and the end of its stream waiting in
        // the socket; after a freeze the runtime may not have seen them yet. A yield lets it
        // poll for I/O first, then what arrived is read without waiting. A connection that
        // went back to the pool moments ago was idle too briefly for that to matter, and
        // skips the yield, which costs a trip through the scheduler on every statement.
        if conn.last_used.elapsed() >= YIELD_AFTER_IDLE {
            tokio::task::yield_now().await;
        }
        if !conn.backend.idle_check() {
            return Err(RecycleError::message("connection closed"));
        }
        if let Some(max) = self.max_lifetime {
            // Measured from the connect on the monotonic clock. A connection this old may be
            // logged in with a rotated-away password or point at a failed-over host; it is
            // closed here (dropping it sends Terminate) and a new one opened in its place.
            if metrics.age() >= max {
                tracing::debug!(
                    age_ms = metrics.age().as_millis() as u64,
                    "closing a connection past WARMPOOL_MAX_CONNECTION_LIFETIME_MS"
                );
                return Err(RecycleError::message(
                    "connection older than WARMPOOL_MAX_CONNECTION_LIFETIME_MS",
                ));
            }
        }
        if conn.in_transaction() {
            return Err(RecycleError::message(
                "connection left inside a transaction",
            ));
        }
        // The reset and the check below are boxed for the reason `create` is: most checkouts
        // need neither.
        if conn.needs_reset() {
            Box::pin(conn.reset())
                .await
                .map_err(|e| RecycleError::Backend(e.into()))?;
        }
        let epoch = self.thaw_epoch.load(Ordering::Acquire);
        if conn.checked_epoch < epoch || conn.last_used.elapsed() > self.check_after_idle {
            // After an idle gap (on Lambda, a freeze) a socket the server or a NAT has closed can
            // still read as open; one empty query tells.
            Box::pin(conn.check())
                .await
                .map_err(|e| RecycleError::Backend(e.into()))?;
        }
        conn.checked_epoch = epoch;
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

/// The pool of database connections.
#[derive(Clone, Debug)]
pub struct Pool {
    inner: managed::Pool<Manager>,
    /// How many thaw checks and session resets are running on connections taken out of the
    /// idle list; while one is, a request with no idle connection waits for it rather than open
    /// a new connection beside the ones being checked.
    checking: Arc<watch::Sender<usize>>,
    wait_timeout: Duration,
}

impl Pool {
    /// A connection, checked first if it sat idle across a gap or a thaw.
    ///
    /// When a new connection is needed and the database refuses it for a reason that may pass
    /// (see `transient`), tries again with backoff for up to `WARMPOOL_RETRY_BUDGET_MS`
    /// (see `retry.rs`). An idle connection is handed out without waiting for the backoff.
    pub async fn get(&self) -> Result<PooledConn, GetError> {
        self.get_for(std::time::Instant::now()).await
    }

    /// [`Pool::get`] for a request that reached the extension at `arrived`: its retry budget
    /// runs from then, so requests a client pipelined together share one budget rather than
    /// spend one each in turn.
    pub async fn get_for(&self, arrived: std::time::Instant) -> Result<PooledConn, GetError> {
        let mut waited_from = None;
        let got = self.get_waiting(arrived, &mut waited_from).await;
        if let Some(from) = waited_from {
            let meter = self.meter();
            meter.add(Event::FleetWait(from.elapsed()));
            if matches!(
                &got,
                Err(PoolError::Backend(ConnectError::FleetFull { .. }))
            ) {
                meter.add(Event::FleetRefusal);
            }
        }
        got
    }

    /// [`Pool::get_for`]; `waited_from` is set when the fleet's budget first made it wait.
    async fn get_waiting(
        &self,
        arrived: std::time::Instant,
        waited_from: &mut Option<Instant>,
    ) -> Result<PooledConn, GetError> {
        if *self.checking.borrow() > 0 && self.inner.status().available == 0 {
            let mut done = self.checking.subscribe();
            let _ = tokio::time::timeout(self.wait_timeout, done.wait_for(|n| *n == 0)).await;
        }
        // Not a timeout around the whole get: waiting for a busy pool is bounded by
        // WARMPOOL_WAIT_TIMEOUT_MS alone, and each attempt's wait for its turn by the budget.
        let policy = self.inner.manager().backoff.policy();
        let budget = policy.budget;
        let arrived = tokio::time::Instant::from_std(arrived);
        let until = arrived + budget;
        // A full fleet is waited out for as long as a busy pool would be.
        let fleet_until = arrived + budget.max(self.wait_timeout);
        let mut fleet_refusals = 0;
        loop {
            match BUDGET.scope((arrived, until), self.inner.get()).await {
                Err(PoolError::Backend(ConnectError::FleetFull { .. }))
                    if tokio::time::Instant::now() < fleet_until =>
                {
                    waited_from.get_or_insert_with(Instant::now);
                    fleet_refusals += 1;
                    let pause = crate::retry::delay(policy, fleet_refusals, crate::retry::jitter());
                    let wake = (tokio::time::Instant::now() + pause).min(fleet_until);
                    // The last try comes at the end of the wait; its refusal is the answer.
                    tokio::time::sleep_until(wake).await;
                }
                Err(PoolError::Backend(e))
                    if transient(&e)
                        && !budget.is_zero()
                        && tokio::time::Instant::now() < until => {}
                other => return other,
            }
        }
    }

    /// The counters of what the pool and its sessions do.
    pub fn meter(&self) -> &Arc<Meter> {
        &self.inner.manager().meter
    }

    /// Where new connections' credentials come from.
    pub fn credentials(&self) -> &Origin {
        self.inner.manager().credentials.origin()
    }

    /// Whether the pool has been closed for shutdown.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Connections open now, in use or idle.
    pub fn size(&self) -> usize {
        self.inner.status().size
    }

    /// The manager's reset bound, for session code that rolls back abandoned transactions.
    pub fn reset_timeout(&self) -> Duration {
        self.inner.manager().reset_timeout
    }

    /// Asks the server to cancel whatever `token`'s connection is running, over a new connection
    /// with the same TLS settings, as PostgreSQL's CancelRequest requires:
    /// <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-CANCELING-REQUESTS>.
    pub async fn cancel(&self, token: &CancelToken) -> std::io::Result<()> {
        token.cancel().await
    }

    /// Takes a connection out of the pool for good, counted as replaced; dropping it sends
    /// Terminate.
    /// How many thaws the environment has seen: a connection last checked before the latest
    /// one is checked again before it is used.
    pub(crate) fn thaw_epoch(&self) -> u64 {
        self.inner.manager().thaw_epoch.load(Ordering::Acquire)
    }

    /// The database the pool's connections are open on, if the settings name one.
    pub(crate) fn database(&self) -> Option<&str> {
        self.inner.manager().pg.get_dbname()
    }

    /// The user the pool's connections log in as, if the settings name one.
    pub(crate) fn user(&self) -> Option<&str> {
        self.inner.manager().pg.get_user()
    }

    pub(crate) fn discard(&self, conn: PooledConn) {
        self.meter().add(Event::ConnectionReplaced);
        drop(Object::take(conn));
    }

    /// Marks maintenance on a connection (a reset) as running until the guard is dropped; drop
    /// the connection first, so a waiter finds it idle.
    pub fn maintenance(&self) -> Maintenance {
        self.checking.send_modify(|n| *n += 1);
        Maintenance(self.checking.clone())
    }

    /// The environment has just thawed: every idle connection is suspect. Starts checking them
    /// all at once in the background, replacing any that died, and returns at once.
    pub fn check_after_thaw(&self) -> tokio::task::JoinHandle<usize> {
        self.inner
            .manager()
            .thaw_epoch
            .fetch_add(1, Ordering::AcqRel);
        let idle = self.inner.status().available;
        let guard = self.maintenance();
        let pool = self.clone();
        // In the INVOKE's span, so its log lines (a connection replaced) carry the request id.
        let span = tracing::Span::current();
        crate::tasks::spawn(tracing::Instrument::instrument(
            async move {
                // Only connections that are idle now: once a request has taken one, a get() here would
                // open a new connection beside it, which classic Lambda would then keep for good.
                let checked = join_all((0..idle).map(|_| async {
                    if pool.inner.status().available == 0 {
                        return None;
                    }
                    Some(pool.inner.get().await)
                }))
                .await;
                let ok = checked.iter().filter(|c| matches!(c, Some(Ok(_)))).count();
                drop(checked);
                drop(guard);
                tracing::debug!(idle, ok, "checked idle connections after a thaw");
                ok
            },
            span,
        ))
    }
}

/// Maintenance in progress; see [`Pool::maintenance`].
#[derive(Debug)]
pub struct Maintenance(Arc<watch::Sender<usize>>);

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Why a connection could not be had from the pool.
pub type GetError = PoolError<ConnectError>;

/// Builds the pool from the configuration. No connection is opened yet.
pub fn build(config: &Config) -> Result<Pool, BuildError> {
    build_with(config, Provider::from_config(config))
}

/// Builds the pool with the given credentials provider (tests inject one with a fixed clock).
pub fn build_with(config: &Config, credentials: Provider) -> Result<Pool, BuildError> {
    let tls = tls::connector(config.ssl_mode, &config.root_certs)?;
    let mut pg = config.pg.clone();
    if let Some(fleet) = &config.fleet {
        // The mark the fleet counts its connections by, in place of any name the connection
        // string gave.
        pg.application_name(fleet.application_name());
    }
    tracing::debug!(credentials = %credentials.origin(), "credentials provider");
    let manager = Manager {
        pg,
        tls,
        credentials,
        cache_size: NonZeroUsize::new(config.statement_cache_size),
        statement_mode: config.prepared_statements,
        channel_binding: channel_binding(config),
        check_after_idle: config.check_after_idle,
        reset_timeout: config.reset_timeout,
        connect_timeout: config.connect_timeout,
        max_lifetime: config.max_connection_lifetime,
        prepare: config.prepare.iter().cloned().collect(),
        thaw_epoch: AtomicU64::new(0),
        meter: Arc::new(Meter::new(config.max_concurrency.saturating_mul(4).max(64))),
        backoff: Backoff::new(config.retry),
        log_statements: config.log_statements,
        fleet: config.fleet.clone().map(Fleet::new),
    };
    let inner = managed::Pool::builder(manager)
        .max_size(config.max_size)
        .timeouts(Timeouts {
            wait: Some(config.wait_timeout),
            // Not bounded as a whole: create bounds each of its steps (fetching credentials,
            // connecting, and the one retry of both) by the connect timeout itself, so an error
            // says which step overran.
            create: None,
            recycle: Some(config.reset_timeout),
        })
        .runtime(deadpool::Runtime::Tokio1)
        .build()?;
    Ok(Pool {
        inner,
        checking: Arc::new(watch::Sender::new(0)),
        wait_timeout: config.wait_timeout,
    })
}

/// Opens up to `n` connections at once and returns them to the pool; returns how many opened.
pub async fn warm(pool: &Pool, n: usize) -> Result<usize, GetError> {
    let started = Instant::now();
    let results = join_all((0..n).map(|_| pool.inner.get())).await;
    let mut opened = 0;
    let mut first_error = None;
    let mut fleet_full = 0;
    for r in results {
        match r {
            Ok(_) => opened += 1,
            // The reserve shrinks to what the fleet's budget allows: an environment at Init
            // does not fail for a full fleet, and later requests wait for a slot.
            Err(PoolError::Backend(ConnectError::FleetFull { .. })) => fleet_full += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if fleet_full > 0 {
        tracing::info!(
            opened,
            refused = fleet_full,
            "the fleet's connection budget allowed fewer warm connections than WARMPOOL_WARM_SIZE"
        );
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
    let idle = pool.inner.retain(|_, _| false).removed;
    pool.inner.close();
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
        .inner
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

/// The connection settings as the backend connection takes them: the first host and port (the
/// configuration refuses more than one), the login, and TLS.
fn connect_params<'a>(
    pg: &'a PgConfig,
    tls: &'a tls::Connector,
    channel_binding: backend::connect::ChannelBinding,
    log_statements: bool,
) -> Result<backend::connect::Params<'a>, ConnectError> {
    use backend::connect::Target;
    let port = pg
        .get_ports()
        .first()
        .copied()
        .unwrap_or(crate::settings::DEFAULT_PORT);
    let target = match pg.get_hosts().first() {
        Some(crate::pgconfig::Host::Tcp(host)) => Target::Tcp {
            host: host.clone(),
            hostaddr: pg.get_hostaddrs().first().copied(),
            port,
        },
        Some(crate::pgconfig::Host::Unix(dir)) => Target::Unix(dir.clone(), port),
        None => Target::Tcp {
            host: "localhost".to_owned(),
            hostaddr: pg.get_hostaddrs().first().copied(),
            port,
        },
    };
    Ok(backend::connect::Params {
        target,
        user: pg.get_user().unwrap_or_default(),
        password: pg.get_password(),
        database: pg.get_dbname(),
        options: pg.get_options(),
        application_name: pg.get_application_name(),
        tls,
        channel_binding,
        log_statements,
    })
}

fn channel_binding(config: &Config) -> backend::connect::ChannelBinding {
    use backend::connect::ChannelBinding;
    match config.channel_binding {
        crate::pgconfig::ChannelBinding::Disable => ChannelBinding::Disable,
        crate::pgconfig::ChannelBinding::Require => ChannelBinding::Require,
        crate::pgconfig::ChannelBinding::Prefer => ChannelBinding::Prefer,
    }
}

/// `target_session_attrs`, as libpq checks it: a session that must (or must not) accept writes
/// is refused on a server where `transaction_read_only` says otherwise.
/// <https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNECT-TARGET-SESSION-ATTRS>
async fn check_session_attrs(
    backend: &mut backend::Backend,
    attrs: crate::pgconfig::TargetSessionAttrs,
) -> Result<(), ConnectError> {
    use crate::pgconfig::TargetSessionAttrs;
    let want_read_only = match attrs {
        TargetSessionAttrs::Any => return Ok(()),
        TargetSessionAttrs::ReadWrite => false,
        TargetSessionAttrs::ReadOnly => true,
    };
    let read_only = backend.show("transaction_read_only").await? == "on";
    if read_only != want_read_only {
        return Err(ConnectError::Database(backend::Error::Setup(format!(
            "target_session_attrs={}: the server's session is {}",
            if want_read_only {
                "read-only"
            } else {
                "read-write"
            },
            if read_only { "read-only" } else { "read-write" },
        ))));
    }
    Ok(())
}

/// Whether a failed connection attempt may succeed if tried again soon: the server is
/// unreachable, restarting, or out of connection slots. Refused credentials and configuration
/// errors are not retried here.
pub fn transient(e: &ConnectError) -> bool {
    match e {
        ConnectError::Timeout { .. } => true,
        ConnectError::Database(e) => match e.code() {
            None => !misconfigured(e),
            Some(c) => {
                // 08 connection exceptions, 53 insufficient resources (53300 too many
                // connections), 57P01-57P03 shutdown, crash recovery and start-up.
                c.starts_with("08")
                    || c.starts_with("53")
                    || matches!(
                        c,
                        sqlstate::ADMIN_SHUTDOWN
                            | sqlstate::CRASH_SHUTDOWN
                            | sqlstate::CANNOT_CONNECT_NOW
                    )
            }
        },
        ConnectError::Auth { .. }
        | ConnectError::Credentials(_)
        | ConnectError::Unavailable(_)
        // Waited for apart from the backoff: see `Pool::get_for`.
        | ConnectError::FleetFull { .. } => false,
    }
}

/// A failure no retry can cure: a certificate that does not verify, a protocol the server does
/// not speak, a setting the connection cannot be made under. TLS errors are `InvalidData` I/O
/// errors; refused, reset and timed-out sockets, and a socket file missing during a restart,
/// are other kinds.
fn misconfigured(e: &backend::Error) -> bool {
    match e {
        backend::Error::Setup(_) | backend::Error::Protocol(_) => true,
        backend::Error::Io(io) | backend::Error::Tls(io) => {
            matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::PermissionDenied
            ) || io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        }
        _ => false,
    }
}
