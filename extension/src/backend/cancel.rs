//! CancelRequest: asking the server, on a connection of its own, to cancel what a session runs.
//! <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-CANCELING-REQUESTS>

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connect::Target;
use super::stream::Stream;
use crate::tls::Connector;

/// What cancelling a connection's statement takes: where the server is, and the key it gave
/// the connection. `Debug` leaves the key out.
#[derive(Clone)]
pub struct CancelToken {
    /// Shared: a token is cloned for every statement's deadline guard.
    target: std::sync::Arc<Target>,
    /// The connector, when the connection itself used TLS: the cancel goes the same way.
    tls: Option<Connector>,
    process_id: i32,
    secret_key: i32,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("target", &self.target)
            .field("process_id", &self.process_id)
            .finish_non_exhaustive()
    }
}

impl CancelToken {
    pub(crate) fn new(target: Target, tls: Option<Connector>) -> CancelToken {
        CancelToken {
            target: std::sync::Arc::new(target),
            tls,
            process_id: 0,
            secret_key: 0,
        }
    }

    pub(crate) fn set_key(&mut self, process_id: i32, secret_key: i32) {
        self.process_id = process_id;
        self.secret_key = secret_key;
    }

    /// The server process the token cancels in.
    pub fn process_id(&self) -> i32 {
        self.process_id
    }

    /// Sends the CancelRequest and waits until the server has read it and closed the
    /// connection. The server answers nothing: whether a statement was cancelled shows on the
    /// connection that ran it.
    pub async fn cancel(&self) -> std::io::Result<()> {
        let mut stream = self.target.open().await?;
        if let (Some(tls), Stream::Tcp(_)) = (&self.tls, &stream) {
            let Stream::Tcp(mut tcp) = stream else {
                unreachable!("matched above")
            };
            let mut request = BytesMut::new();
            frontend::ssl_request(&mut request);
            tcp.write_all(&request).await?;
            stream = match tcp.read_u8().await? {
                b'S' => {
                    let Target::Tcp { host, .. } = &*self.target else {
                        unreachable!("TLS is only negotiated over TCP")
                    };
                    Stream::Tls(Box::new(tls.handshake(host, tcp).await?))
                }
                _ => Stream::Tcp(tcp),
            };
        }
        let mut request = BytesMut::new();
        frontend::cancel_request(self.process_id, self.secret_key, &mut request);
        stream.write_all(&request).await?;
        stream.flush().await?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await?;
        Ok(())
    }
}
