//! The accept loop: one task per session, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use warmpool::protocol::{sqlstate, Response, WireError};
use warmpool::transport::Framed;

use crate::memory::Trim;
use crate::session;
use crate::shared::Shared;
use crate::slots::Slots;

/// Accepts sessions on `listener` until `shutdown` is cancelled, then waits for running sessions
/// to finish (each rolls back its transaction and says 57P01). If this future is dropped first,
/// the sessions still running are aborted; a connection they held is closed, never reused.
///
/// Only clients running as `uid` are served: the socket's mode already keeps others out, and the
/// peer check holds even if the mode is changed.
pub async fn serve(
    listener: UnixListener,
    uid: u32,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut sessions = JoinSet::new();
    let slots = Slots::new(shared.config.max_sessions);
    let mut trim = Trim::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => trim.closed(sessions.len()),
            _ = trim.due() => trim.run(sessions.len()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    match stream.peer_cred() {
                        Ok(cred) if cred.uid() == uid => {}
                        Ok(cred) => {
                            tracing::warn!(peer_uid = cred.uid(), "refused a client of another user");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "refused a client whose credentials could not be read");
                            continue;
                        }
                    }
                    sessions.spawn(admit(stream, slots.clone(), shared.clone(), shutdown.clone()));
                    trim.opened(sessions.len());
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

/// Serves a session once one of `WARMPOOL_MAX_SESSIONS` slots is free, or taken from the
/// longest-idle session (see [`crate::slots`]); a session that waits longer than the wait
/// timeout is told why (53300) and closed, never left hanging.
async fn admit(
    stream: UnixStream,
    slots: Arc<Slots>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let wait = shared.config.wait_timeout;
    match slots.admit(wait).await {
        Some(slot) => session::run(stream, shared, shutdown, slot).await,
        None => {
            tracing::warn!(
                max_sessions = shared.config.max_sessions,
                "refused a session: too many sessions"
            );
            let e = WireError::extension(
                sqlstate::TOO_MANY_CONNECTIONS,
                format!(
                    "too many sessions: all {} (WARMPOOL_MAX_SESSIONS) are in use, none of them \
                     idle outside a transaction, and none became free within {} ms \
                     (WARMPOOL_WAIT_TIMEOUT_MS)",
                    shared.config.max_sessions,
                    wait.as_millis()
                ),
            );
            shared
                .pool
                .meter()
                .add(crate::metrics::Event::Error(e.code()));
            let mut framed = Framed::new(stream, shared.config.max_frame);
            framed.queue_response(&Response::Error(e));
            let _ = framed.flush().await;
        }
    }
}
