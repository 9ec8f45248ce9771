//! The accept loop: one task per session, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::session::{self, Shared};

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
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
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
                    sessions.spawn(session::run(stream, shared.clone(), shutdown.clone()));
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
