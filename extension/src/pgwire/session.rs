//! One client connection of the PostgreSQL endpoint: the start-up, the relay, healing a server
//! connection that died while the session sat idle, and the end.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use warmpool::protocol::sqlstate;

use super::auth;
use super::keys::{Key, Keys};
use super::messages::{self, Severity};
use super::startup::{self, Packet, Startup};
use super::track::Track;
use super::ClientAuth;
use crate::backend::{self, TxStatus};
use crate::metrics::Event;
use crate::pool::PooledConn;
use crate::shared::Shared;

/// Buffered bytes past which a relay sends what it has before it reads on.
const FLUSH_AT: usize = 64 * 1024;

/// 08006 connection_failure: the session's server connection is gone.
const CONNECTION_FAILURE: &str = sqlstate::CONNECTION_FAILURE;
/// 08P01 protocol_violation.
const PROTOCOL_VIOLATION: &str = sqlstate::PROTOCOL_VIOLATION;

/// Serves one client connection to its end: a Unix socket's, whose peer was checked at accept,
/// or a TCP connection's, which must prove the password first.
pub async fn run<S>(
    mut stream: S,
    auth: ClientAuth,
    shared: Arc<Shared>,
    keys: Arc<Keys>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = shared.config.handshake_timeout;
    // The password is checked before anything else is looked at, the database included, as
    // PostgreSQL does: a client without it learns nothing of what is served.
    let handshake = {
        let (stream, shared, keys) = (&mut stream, &shared, &keys);
        async move {
            let startup = first_packets(stream, shared, keys).await?;
            if let ClientAuth::Password(verifier) = &auth {
                let user = startup.get("user").unwrap_or_default();
                auth::scram(stream, verifier, user).await?;
            }
            Some(startup)
        }
    };
    let startup = match tokio::time::timeout(timeout, handshake).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(_) => {
            let _ = refuse(
                &mut stream,
                PROTOCOL_VIOLATION,
                "no start-up within the handshake timeout (WARMPOOL_HANDSHAKE_TIMEOUT_MS)",
            )
            .await;
            return;
        }
    };
    let Some(mut session) = Session::start(stream, startup, shared, keys).await else {
        return;
    };
    let end = session.relay(&shutdown).await;
    session.end(end).await;
}

/// Reads first packets until a StartupMessage: SSLRequest and GSSENCRequest are answered `N`
/// (both listeners are local, and the server connection behind them has its own TLS), a
/// CancelRequest is forwarded and ends the connection.
async fn first_packets<S>(stream: &mut S, shared: &Shared, keys: &Keys) -> Option<Startup>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // libpq sends at most a GSSENCRequest and an SSLRequest before its StartupMessage.
    for _ in 0..3 {
        let packet = match startup::read(stream).await {
            Ok(Some(Ok(p))) => p,
            Ok(None) | Err(_) => return None,
            Ok(Some(Err(e))) => {
                let code = match e {
                    startup::StartupError::Version { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
                    _ => PROTOCOL_VIOLATION,
                };
                tracing::info!(error = %e, "refused a PostgreSQL client's startup packet");
                let _ = refuse(stream, code, &e.to_string()).await;
                return None;
            }
        };
        match packet {
            Packet::Ssl | Packet::GssEnc => {
                stream.write_all(b"N").await.ok()?;
            }
            Packet::Cancel { pid, secret } => {
                if let Some(token) = keys.find(pid, &secret) {
                    if let Err(e) = shared.pool.cancel(&token).await {
                        tracing::warn!(error = %e, "CancelRequest failed");
                    }
                }
                // The server sends nothing back for a CancelRequest, even an unknown one.
                return None;
            }
            Packet::Startup(s) => return Some(s),
        }
    }
    let _ = refuse(
        stream,
        PROTOCOL_VIOLATION,
        "too many requests before the startup message",
    )
    .await;
    None
}

/// Sends a FATAL error to a client that has not started, and ends its connection.
pub(super) async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    code: &str,
    text: &str,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    messages::error(&mut buf, Severity::Fatal, code, text, None, None);
    stream.write_all(&buf).await?;
    stream.shutdown().await
}

/// Why a relay ended.
enum End {
    /// The client said goodbye (Terminate) or closed its socket, with no request outstanding.
    Done,
    /// The client went away with a request outstanding: it is cancelled.
    Gone,
    /// The server connection is lost or unusable; the client was told.
    Lost,
    /// The extension is shutting down; the client was told.
    Shutdown,
}

struct Session<S> {
    client: S,
    /// What the client sent and has not been relayed yet.
    rbuf: BytesMut,
    /// What goes to the client with the next write.
    wbuf: BytesMut,
    shared: Arc<Shared>,
    conn: Option<PooledConn>,
    /// The server connection ended while the session was idle; the next request heals it.
    dead: bool,
    /// The settings the client started with, as SET statements.
    startup_sql: Vec<String>,
    track: Track,
    key: Key,
    /// When the request being answered started, for the statements' database time.
    busy_since: Option<Instant>,
    /// Extended-protocol messages have gone out since the last Sync: the server holds the
    /// pipeline's implicit transaction and its portals (a cursor read with Execute and Flush,
    /// a batch not yet synced), so the session is not idle, whatever has been answered.
    open_pipeline: bool,
}

/// What woke the relay.
enum Woke {
    Client(Result<Option<Bytes>, ClientError>),
    Server(Result<backend::raw::RawMessage, backend::Error>),
    Shutdown,
}

#[derive(Debug)]
enum ClientError {
    Io,
    Frame(messages::FrameError),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Takes a pooled connection for the client, applies the client's settings on it, and
    /// tells the client it is ready; `None` if the client was refused (and told why).
    async fn start(
        mut client: S,
        startup: Startup,
        shared: Arc<Shared>,
        keys: Arc<Keys>,
    ) -> Option<Session<S>> {
        let user = startup.get("user").unwrap_or_default().to_owned();
        let database = startup.get("database").unwrap_or(&user).to_owned();
        let serves = shared
            .pool
            .database()
            .or(shared.pool.user())
            .unwrap_or_default()
            .to_owned();
        if database != serves {
            let text = format!(
                "database \"{database}\" is not served here: this endpoint serves database \
                 \"{serves}\" only (connect with dbname={serves})"
            );
            let _ = refuse(&mut client, sqlstate::INVALID_CATALOG_NAME, &text).await;
            return None;
        }
        if startup
            .get("replication")
            .is_some_and(|r| r != "false" && r != "0" && r != "off")
        {
            let _ = refuse(
                &mut client,
                sqlstate::FEATURE_NOT_SUPPORTED,
                "replication connections are not served by warmpool's endpoint",
            )
            .await;
            return None;
        }
        let startup_sql = match settings_sql(&startup, shared.config.fleet.is_some()) {
            Ok(s) => s,
            Err(e) => {
                let _ = refuse(&mut client, PROTOCOL_VIOLATION, &e).await;
                return None;
            }
        };
        let mut conn = match shared.pool.get_for(std::time::Instant::now()).await {
            Ok(c) => c,
            Err(e) => {
                let e = crate::pool_errors::from_pool(&e, &shared.config);
                let _ = refuse(&mut client, e.code(), e.message()).await;
                return None;
            }
        };
        conn.backend.notices().clear();
        if !startup_sql.is_empty() {
            if let Err(e) = conn.backend.batch_execute(&startup_sql.join("; ")).await {
                let wire = crate::errors::from_backend(&e);
                let _ = refuse(&mut client, wire.code(), wire.message()).await;
                discard_or_reset(&shared, conn).await;
                return None;
            }
        }
        let key = keys.issue(conn.backend.cancel_token().clone());
        let mut buf = BytesMut::with_capacity(512);
        messages::authentication_ok(&mut buf);
        if startup.minor > startup::MINOR || !startup.protocol_options.is_empty() {
            messages::negotiate_protocol_version(
                &mut buf,
                startup::MINOR,
                &startup.protocol_options,
            );
        }
        for (name, value) in conn.backend.parameters() {
            messages::parameter_status(&mut buf, name, value);
        }
        messages::backend_key_data(&mut buf, key.pid, key.secret);
        messages::ready_for_query(&mut buf, b'I');
        if client.write_all(&buf).await.is_err() {
            discard_or_reset(&shared, conn).await;
            return None;
        }
        tracing::debug!(user = %user, pid = conn.backend.process_id(), "PostgreSQL client session started");
        Some(Session {
            client,
            rbuf: BytesMut::with_capacity(8 * 1024),
            wbuf: buf,
            shared,
            conn: Some(conn),
            dead: false,
            startup_sql,
            track: Track::default(),
            key,
            busy_since: None,
            open_pipeline: false,
        })
    }

    /// Relays messages both ways until the client or the server ends, or shutdown.
    async fn relay(&mut self, shutdown: &CancellationToken) -> End {
        let max = self.shared.config.max_frame;
        // One wait for the whole session, not one per message: each new `cancelled()` joins
        // and leaves the token's list of waiters under its lock.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            self.wbuf.clear();
            let woke = {
                let Session {
                    client,
                    rbuf,
                    conn,
                    dead,
                    ..
                } = self;
                let listen = conn.is_some() && !*dead;
                tokio::select! {
                    biased;
                    _ = &mut cancelled => Woke::Shutdown,
                    m = recv(conn), if listen => Woke::Server(m),
                    m = read_message(client, rbuf, max) => Woke::Client(m),
                }
            };
            let step = match woke {
                Woke::Shutdown => {
                    self.fatal(
                        sqlstate::ADMIN_SHUTDOWN,
                        "terminating connection: warmpool is shutting down",
                    )
                    .await;
                    return End::Shutdown;
                }
                // Logged for the invocation in progress, as the extension's own socket does.
                Woke::Server(m) => {
                    let span = self.invocation_span();
                    self.server_sent(m).instrument(span).await
                }
                Woke::Client(Ok(Some(m))) => {
                    let span = self.invocation_span();
                    self.client_sent_all(m, max).instrument(span).await
                }
                Woke::Client(Ok(None)) | Woke::Client(Err(ClientError::Io)) => {
                    return if self.outstanding() {
                        End::Gone
                    } else {
                        End::Done
                    };
                }
                Woke::Client(Err(ClientError::Frame(e))) => {
                    tracing::info!(error = %e, "a PostgreSQL client sent a malformed message; closing its session");
                    self.fatal(PROTOCOL_VIOLATION, &e.to_string()).await;
                    return if self.outstanding() {
                        End::Gone
                    } else {
                        End::Done
                    };
                }
            };
            if let Some(end) = step {
                return end;
            }
        }
    }

    /// The span of the classic invocation in progress, if any: what is logged for the session
    /// carries its request id.
    fn invocation_span(&self) -> tracing::Span {
        match self.shared.telemetry.current() {
            Some((_, span)) => span,
            None => tracing::Span::none(),
        }
    }

    /// Whether a request of the client's is still being answered.
    fn outstanding(&self) -> bool {
        self.open_pipeline || self.conn.as_ref().is_some_and(|c| !c.backend.is_synced())
    }

    /// A message from the client, and the others that came whole with it (a driver writes
    /// Bind, Execute and Sync at once), relayed to the server in order. A malformed one is left
    /// in the buffer for the next read to report.
    async fn client_sent_all(&mut self, first: Bytes, max: usize) -> Option<End> {
        let mut now = Instant::now();
        let mut next = Some(first);
        while let Some(m) = next {
            if let Some(end) = self.client_sent(m, &mut now).await {
                return Some(end);
            }
            next = match messages::message_len(&self.rbuf, max) {
                Ok(Some(len)) if self.rbuf.len() >= len => Some(self.rbuf.split_to(len).freeze()),
                _ => None,
            };
        }
        None
    }

    /// A message from the client, relayed to the server; healed first if the session is idle
    /// and its server connection has died. `now` is when it was read, moved on past a check or
    /// a heal.
    async fn client_sent(&mut self, m: Bytes, now: &mut Instant) -> Option<End> {
        let tag = m[0];
        if tag == b'X' {
            return Some(if self.outstanding() {
                End::Gone
            } else {
                End::Done
            });
        }
        if !self.outstanding() {
            if let Some(end) = self.ensure_alive(now).await {
                return Some(end);
            }
            self.busy_since.get_or_insert(*now);
        }
        let conn = self
            .conn
            .as_mut()
            .expect("a live connection after ensure_alive");
        self.track.client_message(tag, &m[messages::HEADER..], &m);
        match tag {
            b'S' => self.open_pipeline = false,
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'F' => self.open_pipeline = true,
            _ => {}
        }
        conn.backend.write_raw(&m);
        conn.last_used = *now;
        // Sync, Flush, Query and the end of a COPY ask for an answer; COPY data goes out in
        // chunks. Anything else waits for the message that completes its pipeline.
        if matches!(tag, b'S' | b'H' | b'Q' | b'c' | b'f') || conn.backend.unsent() >= FLUSH_AT {
            if let Err(e) = conn.backend.flush().await {
                tracing::info!(error = %e, "the database connection failed while a request was sent");
                self.fatal(CONNECTION_FAILURE, "the connection to the database was lost while a request was being sent; whether it took effect is unknown").await;
                return Some(End::Lost);
            }
        }
        None
    }

    /// Before a request on an idle session: the server connection is still there, checked
    /// after a thaw or an idle gap as pooled connections are, or else replaced with the
    /// session's state restored. `Some` if the session had to end.
    async fn ensure_alive(&mut self, now: &mut Instant) -> Option<End> {
        let Some(conn) = self.conn.as_mut() else {
            let end = self.heal().await;
            *now = Instant::now();
            return end;
        };
        let mut alive = !self.dead && conn.backend.idle_check();
        if alive {
            let epoch = self.shared.pool.thaw_epoch();
            let idle =
                now.saturating_duration_since(conn.last_used) > self.shared.config.check_after_idle;
            if conn.checked_epoch < epoch || idle {
                let budget = self.shared.config.reset_timeout;
                alive = matches!(tokio::time::timeout(budget, conn.check()).await, Ok(Ok(())));
                conn.checked_epoch = epoch;
                *now = Instant::now();
            }
        }
        if alive {
            return None;
        }
        let end = self.heal().await;
        *now = Instant::now();
        end
    }

    /// Moves the idle session to a new server connection, restoring what it had made of the
    /// old one; or, if that cannot be restored, ends it with an error that says what was lost.
    async fn heal(&mut self) -> Option<End> {
        let status = self
            .conn
            .as_ref()
            .map_or(TxStatus::Idle, |c| c.backend.status());
        if let Some(dead) = self.conn.take() {
            self.shared.pool.discard(dead);
        }
        self.key.update(None);
        let lost = match (status, self.track.unrestorable()) {
            (TxStatus::Idle, None) => None,
            (TxStatus::Idle, Some(what)) => Some(what),
            (_, Some(what)) => Some(format!("an open transaction, {what}")),
            (_, None) => Some("an open transaction".to_owned()),
        };
        if let Some(what) = lost {
            tracing::info!(lost = %what, "a PostgreSQL client session's database connection died while it was idle; its state cannot be restored");
            let text = format!(
                "the database connection behind this session was lost while the session was \
                 idle (for instance while the environment was frozen), and the session held \
                 what a new connection cannot restore: {what}; nothing of an open transaction \
                 was committed. Connect again."
            );
            self.fatal(CONNECTION_FAILURE, &text).await;
            return Some(End::Lost);
        }
        let mut conn = match self.shared.pool.get_for(std::time::Instant::now()).await {
            Ok(c) => c,
            Err(e) => {
                let e = crate::pool_errors::from_pool(&e, &self.shared.config);
                let text = format!(
                    "the database connection behind this session was lost while the session \
                     was idle, and no new one could be had: {}",
                    e.message()
                );
                self.fatal(CONNECTION_FAILURE, &text).await;
                return Some(End::Lost);
            }
        };
        conn.backend.notices().clear();
        let budget = self.shared.config.connect_timeout;
        let restored =
            tokio::time::timeout(budget, restore(&mut conn, &self.startup_sql, &self.track)).await;
        match restored {
            Ok(Ok(())) => {}
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => crate::errors::from_backend(&e).message().to_owned(),
                    _ => format!(
                        "it took longer than {} ms (WARMPOOL_CONNECT_TIMEOUT_MS)",
                        budget.as_millis()
                    ),
                };
                discard_or_reset(&self.shared, conn).await;
                let text = format!(
                    "the database connection behind this session was lost while the session \
                     was idle, and its state could not be restored on a new one: {why}"
                );
                self.fatal(CONNECTION_FAILURE, &text).await;
                return Some(End::Lost);
            }
        }
        tracing::info!(
            pid = conn.backend.process_id(),
            statements = self.track.parse_messages().count(),
            "a PostgreSQL client session's database connection died while it was idle; \
             restored the session on a new one"
        );
        self.key.update(Some(conn.backend.cancel_token().clone()));
        self.conn = Some(conn);
        self.dead = false;
        None
    }

    /// A message from the server, relayed to the client with whatever else has arrived whole.
    async fn server_sent(
        &mut self,
        m: Result<backend::raw::RawMessage, backend::Error>,
    ) -> Option<End> {
        let mut next = Some(m);
        while let Some(m) = next.take() {
            let m = match m {
                Ok(m) => m,
                Err(e) => return self.server_failed(&e).await,
            };
            let idle = !self.outstanding() && m.tag() != b'Z';
            if idle && m.tag() == b'E' && self.conn.as_ref().is_some_and(|c| c.backend.is_broken())
            {
                // The server ended the idle session (idle_session_timeout, a termination, a
                // restart): the client asked nothing, and the next request heals.
                tracing::info!(error = ?m.db_error().map(|d| d.message().to_owned()), "the database ended an idle PostgreSQL client session's connection");
                self.dead = true;
                break;
            }
            self.track
                .server_message(m.tag(), m.command_tag(), m.ready_status());
            self.count(&m);
            self.wbuf.extend_from_slice(m.bytes());
            // A large answer goes out as it comes, the server read no faster than the client.
            if self.wbuf.len() >= FLUSH_AT {
                if self.client.write_all(&self.wbuf).await.is_err() {
                    return Some(if self.outstanding() {
                        End::Gone
                    } else {
                        End::Done
                    });
                }
                self.wbuf.clear();
            }
            let conn = self.conn.as_mut()?;
            next = conn.backend.next_raw().transpose();
        }
        if !self.wbuf.is_empty() {
            if self.client.write_all(&self.wbuf).await.is_err() {
                return Some(if self.outstanding() {
                    End::Gone
                } else {
                    End::Done
                });
            }
            self.wbuf.clear();
        }
        None
    }

    /// Counts what a server message completes, for the metrics and the invocation's stats.
    fn count(&mut self, m: &backend::raw::RawMessage) {
        let meter = self.shared.pool.meter();
        match m.tag() {
            b'C' => {
                let rows = m
                    .command_tag()
                    .and_then(|t| t.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let now = Instant::now();
                let time = self
                    .busy_since
                    .replace(now)
                    .map_or(Default::default(), |t| now.saturating_duration_since(t));
                meter.add(Event::Query { rows, time });
            }
            b'E' => {
                if let Some(db) = m.db_error() {
                    meter.add(Event::Error(db.code()));
                }
            }
            b'Z' if !self.outstanding() => {
                self.busy_since = None;
                self.shared.last_activity_ms.store(
                    crate::lifecycle::now_ms(),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            _ => {}
        }
    }

    /// The server connection failed: while idle, the next request heals it; during a request,
    /// the client is told, since what the request did is unknown.
    async fn server_failed(&mut self, e: &backend::Error) -> Option<End> {
        if !self.outstanding() {
            tracing::info!(error = %e, "an idle PostgreSQL client session's database connection ended");
            self.dead = true;
            return None;
        }
        tracing::info!(error = %e, "the database connection failed during a PostgreSQL client's request");
        self.fatal(CONNECTION_FAILURE, "the connection to the database was lost during the request; whether it took effect is unknown").await;
        Some(End::Lost)
    }

    /// Sends a FATAL error after whatever is queued for the client.
    async fn fatal(&mut self, code: &str, text: &str) {
        messages::error(&mut self.wbuf, Severity::Fatal, code, text, None, None);
        let _ = self.client.write_all(&self.wbuf).await;
        let _ = self.client.shutdown().await;
    }

    /// Gives the server connection back: a request the client left is cancelled, then the
    /// session is reset (a transaction rolled back, `DISCARD ALL`) within the reset timeout,
    /// or the connection is closed if that fails.
    async fn end(mut self, end: End) {
        let Some(conn) = self.conn.take() else { return };
        if matches!(end, End::Lost) || self.dead {
            self.shared.pool.discard(conn);
            return;
        }
        if matches!(end, End::Gone) {
            let token = conn.backend.cancel_token().clone();
            if let Err(e) = self.shared.pool.cancel(&token).await {
                tracing::warn!(error = %e, "CancelRequest failed");
            }
        }
        discard_or_reset(&self.shared, conn).await;
    }
}

/// The next message from the session's server connection; pending forever without one.
async fn recv(conn: &mut Option<PooledConn>) -> Result<backend::raw::RawMessage, backend::Error> {
    match conn {
        Some(c) => c.backend.recv_raw().await,
        None => std::future::pending().await,
    }
}

/// The next whole message from the client. Cancel-safe: bytes stay in `rbuf` until a message
/// is whole, and its length is checked before room is made for it.
async fn read_message<S: AsyncRead + Unpin>(
    client: &mut S,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<Option<Bytes>, ClientError> {
    loop {
        if let Some(len) = messages::message_len(rbuf, max).map_err(ClientError::Frame)? {
            if rbuf.len() >= len {
                return Ok(Some(rbuf.split_to(len).freeze()));
            }
            rbuf.reserve(len - rbuf.len());
        } else {
            rbuf.reserve(messages::HEADER);
        }
        match client.read_buf(rbuf).await {
            Ok(0) => {
                return if rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(ClientError::Io)
                }
            }
            Ok(_) => {}
            Err(_) => return Err(ClientError::Io),
        }
    }
}

/// Rebuilds a session on a new connection: its settings, then its SQL-level and protocol-level
/// prepared statements. Nothing the server answers reaches the client.
async fn restore(
    conn: &mut PooledConn,
    startup: &[String],
    track: &Track,
) -> Result<(), backend::Error> {
    let sql: Vec<&str> = startup
        .iter()
        .map(String::as_str)
        .chain(track.replay_sql())
        .collect();
    if !sql.is_empty() {
        conn.backend.batch_execute(&sql.join(";\n")).await?;
    }
    let mut parses = track.parse_messages().peekable();
    if parses.peek().is_none() {
        return Ok(());
    }
    for p in parses {
        conn.backend.write_raw(p);
    }
    let mut sync = BytesMut::new();
    frontend::sync(&mut sync);
    conn.backend.write_raw(&sync);
    conn.backend.flush().await?;
    let mut failed = None;
    loop {
        let m = conn.backend.recv_raw().await?;
        match m.tag() {
            b'E' => failed = m.db_error(),
            b'Z' => break,
            _ => {}
        }
    }
    match failed {
        None => Ok(()),
        Some(db) => Err(backend::Error::Db(db)),
    }
}

/// Resets a connection a client session used and pools it again, or closes it: what is left
/// of a request is read, an open transaction rolled back, and `DISCARD ALL` drops what the
/// session made (settings, prepared statements, temporary tables, locks, `LISTEN`).
async fn discard_or_reset(shared: &Shared, mut conn: PooledConn) {
    let budget = shared.config.reset_timeout;
    let reset = tokio::time::timeout(budget, async {
        if !conn.backend.is_synced() && !conn.backend.resync().await {
            return Err(backend::Error::Closed);
        }
        if conn.backend.status() != TxStatus::Idle {
            conn.backend.batch_execute("ROLLBACK").await?;
        }
        conn.backend.batch_execute("DISCARD ALL").await
    })
    .await;
    match reset {
        Ok(Ok(())) => {
            // DISCARD ALL dropped the pool's own prepared statements too.
            conn.forget_all_statements();
            conn.last_used = std::time::Instant::now();
        }
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!(
                    "no answer within {} ms (WARMPOOL_RESET_TIMEOUT_MS)",
                    budget.as_millis()
                ),
            };
            tracing::info!(reason = %why, "could not reset a PostgreSQL client session's connection; closing it");
            shared.pool.discard(conn);
        }
    }
}

/// The client's start-up settings as SET statements, to apply on its server connection. Names
/// are checked, values quoted; `options` is read as libpq writes it (`-c name=value`,
/// `--name=value`). `application_name` is left to the fleet's mark when a fleet budget is on.
fn settings_sql(startup: &Startup, fleet: bool) -> Result<Vec<String>, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (name, value) in &startup.params {
        match name.as_str() {
            "user" | "database" | "replication" => {}
            "application_name" if fleet => {}
            "options" => pairs.extend(options(value)?),
            _ => pairs.push((name.clone(), value.clone())),
        }
    }
    pairs
        .into_iter()
        .map(|(name, value)| {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                return Err(format!(
                    "invalid setting name in the startup packet: {name:?}"
                ));
            }
            Ok(format!("SET {name} TO '{}'", value.replace('\'', "''")))
        })
        .collect()
}

/// The settings in a startup `options` value: `-c name=value` or `--name=value`, separated by
/// spaces, a backslash escaping the next character.
fn options(value: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("options: -c without a setting")?
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_owned()
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_owned()
        } else {
            return Err(format!("options: {w:?} is not a setting (-c name=value)"));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("options: {setting:?} has no value"))?;
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_settings_become_quoted_sets() {
        let s = Startup {
            minor: 0,
            params: vec![
                ("user".into(), "x".into()),
                ("application_name".into(), "it's".into()),
                (
                    "options".into(),
                    "-c search_path=a,b --statement-timeout=5s -cwork_mem=1MB".into(),
                ),
            ],
            protocol_options: vec![],
        };
        assert_eq!(
            settings_sql(&s, false).unwrap(),
            [
                "SET application_name TO 'it''s'",
                "SET search_path TO 'a,b'",
                "SET statement_timeout TO '5s'",
                "SET work_mem TO '1MB'",
            ]
        );
        assert_eq!(settings_sql(&s, true).unwrap().len(), 3);
        let bad = Startup {
            params: vec![("x; DROP TABLE t".into(), "1".into())],
            ..s
        };
        assert!(settings_sql(&bad, false).is_err());
    }
}
