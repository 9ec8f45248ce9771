//! PostgreSQL's own protocol on a Unix socket named as PostgreSQL names its own
//! (`/tmp/.s.PGSQL.5432` by default), so any language's driver connects unchanged with
//! `host=/tmp`: psycopg, asyncpg, node-postgres, postgres.js, pgJDBC, sqlx, tokio-postgres, libpq.
//!
//! Session mode: each client connection is given one pooled server connection for its whole
//! life, and messages are relayed whole in both directions, so everything a driver does works
//! (prepared statements, portals, `SET`, `COPY`, `LISTEN`/`NOTIFY`, pipelining, text and binary).
//! The extension acts only at the edges: the start-up (it authenticates the client by the
//! socket's owner and applies the client's settings), a cancel (the client is given a key of
//! the extension's own), the end (the connection is reset and pooled again), and a server
//! connection that died while its session sat idle (see `track.rs`).
//! <https://www.postgresql.org/docs/current/protocol.html>

mod keys;
pub(crate) mod messages;
mod session;
pub(crate) mod startup;
pub(crate) mod track;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

pub(crate) use keys::Keys;

/// The socket file for `port` in `dir`, as libpq looks for it.
/// <https://www.postgresql.org/docs/current/runtime-config-connection.html#GUC-UNIX-SOCKET-DIRECTORIES>
pub fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// Accepts client connections on `listener` until `shutdown`, then waits for the sessions to end
/// (each tells its client the server is shutting down, 57P01, and gives its connection back).
/// Only processes running as `uid` are served, as on the extension's own socket.
pub async fn serve(
    listener: UnixListener,
    uid: u32,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let keys = Arc::new(Keys::default());
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
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
                    sessions.spawn(session::run(stream, shared.clone(), keys.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    while sessions.join_next().await.is_some() {}
}
