//! PostgreSQL's own protocol on a Unix socket named as PostgreSQL names its own
//! (`/tmp/.s.PGSQL.5432` by default), so any language's driver connects unchanged with
//! `host=/tmp`: psycopg, asyncpg, node-postgres, postgres.js, sqlx, tokio-postgres, libpq. For
//! drivers without Unix sockets (pgJDBC), the same endpoint on `127.0.0.1:<port>`
//! (`WARMPOOL_PG_TCP_PORT`), where a client proves it knows `WARMPOOL_PG_PASSWORD` with
//! SCRAM-SHA-256 (see `auth.rs`), since any process of the machine can reach a TCP port.
//!
//! Session mode: each client connection is given one pooled server connection for its whole
//! life, and messages are relayed whole in both directions, so everything a driver does works
//! (prepared statements, portals, `SET`, `COPY`, `LISTEN`/`NOTIFY`, pipelining, text and binary).
//! The extension acts only at the edges: the start-up (it authenticates the client by the
//! socket's owner or the password, and applies the client's settings), a cancel (the client is given a key of
//! the extension's own), the end (the connection is reset and pooled again), and a server
//! connection that died while its session sat idle (see `track.rs`).
//! <https://www.postgresql.org/docs/current/protocol.html>

mod auth;
mod keys;
pub(crate) mod messages;
pub(crate) mod scram;
mod session;
pub(crate) mod startup;
pub(crate) mod track;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

pub(crate) use keys::Keys;
pub(crate) use scram::Verifier;

/// The socket file for `port` in `dir`, as libpq looks for it.
/// <https://www.postgresql.org/docs/current/runtime-config-connection.html#GUC-UNIX-SOCKET-DIRECTORIES>
pub fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// Where the endpoint listens; either may be off.
#[derive(Debug, Default)]
pub struct Listeners {
    /// The Unix socket, served to processes running as this uid, as the extension's own socket.
    pub unix: Option<(UnixListener, u32)>,
    /// A TCP listener on loopback, for drivers without Unix sockets (pgJDBC), served to clients
    /// that prove they know the password (SCRAM-SHA-256).
    pub tcp: Option<(TcpListener, Verifier)>,
}

/// How a session's client is authenticated.
#[derive(Debug, Clone)]
pub(crate) enum ClientAuth {
    /// By the Unix socket's peer credentials, checked at accept.
    Peer,
    /// By SCRAM-SHA-256 against this verifier, after the StartupMessage.
    Password(Arc<Verifier>),
}

/// Accepts client connections until `shutdown`, then waits for the sessions to end (each tells
/// its client the server is shutting down, 57P01, and gives its connection back). Both
/// listeners share one set of cancel keys, so a CancelRequest may come in on either.
pub async fn serve(listeners: Listeners, shared: Arc<Shared>, shutdown: CancellationToken) {
    let Listeners { unix, tcp } = listeners;
    let tcp = tcp.map(|(l, v)| (l, Arc::new(v)));
    let keys = Arc::new(Keys::default());
    let mut sessions = JoinSet::new();
    // As many sessions as the extension's own socket serves, each waiting for its turn at
    // most the wait timeout: a client past that is told why, as PostgreSQL tells one past
    // max_connections, rather than left waiting.
    let permits = Arc::new(Semaphore::new(shared.config.max_sessions));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = accept_unix(unix.as_ref()) => match accepted {
                Ok((stream, uid)) => {
                    match stream.peer_cred() {
                        Ok(cred) if cred.uid() == uid => {}
                        Ok(cred) => {
                            tracing::warn!(peer_uid = cred.uid(), "refused a PostgreSQL client of another user");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "refused a PostgreSQL client whose credentials could not be read");
                            continue;
                        }
                    }
                    let (shared, keys, shutdown) = (shared.clone(), keys.clone(), shutdown.clone());
                    sessions.spawn(admitted(permits.clone(), shared.clone(), stream, move |stream| {
                        session::run(stream, ClientAuth::Peer, shared, keys, shutdown)
                    }));
                }
                Err(e) => accept_failed(e).await,
            },
            accepted = accept_tcp(tcp.as_ref()) => match accepted {
                Ok((stream, verifier)) => {
                    // Small messages both ways: Nagle's delay would hold each behind the last.
                    let _ = stream.set_nodelay(true);
                    let auth = ClientAuth::Password(verifier);
                    let (shared, keys, shutdown) = (shared.clone(), keys.clone(), shutdown.clone());
                    sessions.spawn(admitted(permits.clone(), shared.clone(), stream, move |stream| {
                        session::run(stream, auth, shared, keys, shutdown)
                    }));
                }
                Err(e) => accept_failed(e).await,
            },
        }
    }
    drop((unix, tcp));
    while sessions.join_next().await.is_some() {}
}

/// Serves a client once one of `WARMPOOL_MAX_SESSIONS` places is free, waiting at most the wait
/// timeout; past it the client gets FATAL 53300 and is closed.
async fn admitted<S, F>(
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut stream: S,
    serve: impl FnOnce(S) -> F,
) where
    S: tokio::io::AsyncWrite + Unpin,
    F: std::future::Future<Output = ()>,
{
    let wait = shared.config.wait_timeout;
    match tokio::time::timeout(wait, permits.acquire_owned()).await {
        Ok(Ok(permit)) => {
            serve(stream).await;
            drop(permit);
        }
        _ => {
            let max = shared.config.max_sessions;
            tracing::warn!(
                max_sessions = max,
                "refused a PostgreSQL client: too many sessions"
            );
            let text = format!(
                "too many sessions: all {max} (WARMPOOL_MAX_SESSIONS) are open, and none ended \
                 within {} ms (WARMPOOL_WAIT_TIMEOUT_MS)",
                wait.as_millis()
            );
            let mut buf = bytes::BytesMut::new();
            messages::error(
                &mut buf,
                messages::Severity::Fatal,
                warmpool::protocol::sqlstate::TOO_MANY_CONNECTIONS,
                &text,
                None,
                None,
            );
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(&buf).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// The next client of the Unix socket, with the uid it must run as; pending forever without
/// the socket. Cancel safe, as `UnixListener::accept` is.
async fn accept_unix(
    listener: Option<&(UnixListener, u32)>,
) -> io::Result<(tokio::net::UnixStream, u32)> {
    match listener {
        Some((l, uid)) => l.accept().await.map(|(s, _)| (s, *uid)),
        None => std::future::pending().await,
    }
}

/// The next client of the TCP listener, with the verifier of its password; pending forever
/// without the listener. Cancel safe, as `TcpListener::accept` is.
async fn accept_tcp(
    listener: Option<&(TcpListener, Arc<Verifier>)>,
) -> io::Result<(tokio::net::TcpStream, Arc<Verifier>)> {
    match listener {
        Some((l, v)) => l.accept().await.map(|(s, _)| (s, v.clone())),
        None => std::future::pending().await,
    }
}

async fn accept_failed(e: io::Error) {
    // Out of file descriptors, most likely: back off instead of spinning.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
