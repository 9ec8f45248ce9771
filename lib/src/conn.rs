//! One socket connection to the extension: a session on the extension's side.

use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixStream;

use crate::error::{Error, Kind};
use crate::protocol::{
    sqlstate, ErrorSource, FrameError, Hello, Invocation, Request, Response, WireError,
    DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use crate::transport::{Framed, ReadError};

/// A session with the extension. Once a read or write fails half way, the stream's position in
/// the protocol is unknown, so the connection marks itself broken and is never reused.
pub(crate) struct Conn {
    framed: Framed<UnixStream>,
    broken: bool,
    /// The invocation last named to the extension on this session.
    invocation: Option<Arc<Invocation>>,
    /// Invocation frames queued whose Ok has not been read yet: they are pipelined with the
    /// request that follows, so naming the invocation costs no round trip.
    pending_acks: usize,
}

impl Conn {
    /// Connects and performs the handshake.
    pub(crate) async fn open(path: &Path) -> Result<Conn, Error> {
        let stream = UnixStream::connect(path).await.map_err(|e| {
            Error::new(
                Kind::Connect,
                Some(
                    format!(
                        "{}: {e} (is the warmpool extension layer attached, and WARMPOOL_SOCKET \
                         the same for the function and the extension?)",
                        path.display()
                    )
                    .into(),
                ),
            )
        })?;
        let mut conn = Conn {
            framed: Framed::new(stream, DEFAULT_MAX_FRAME),
            broken: false,
            invocation: None,
            pending_acks: 0,
        };
        conn.queue(&Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: format!("warmpool-client {}", env!("CARGO_PKG_VERSION")),
        }))?;
        conn.flush().await?;
        match conn.recv().await? {
            Response::HelloOk(ok) if ok.version == PROTOCOL_VERSION => {
                conn.framed.set_max_frame(ok.max_frame as usize);
                Ok(conn)
            }
            Response::HelloOk(ok) => Err(Error::protocol(format!(
                "the extension speaks protocol version {} but this client speaks {PROTOCOL_VERSION}",
                ok.version
            ))),
            Response::Error(e) => Err(conn.error(e)),
            other => Err(conn.unexpected(&other)),
        }
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Queues a request; a request over the frame limit fails here, before anything is sent.
    pub(crate) fn queue(&mut self, request: &Request) -> Result<(), Error> {
        self.framed
            .queue_request(request)
            .map_err(|e| Error::from_wire(WireError::extension(e.sqlstate(), e.to_string())))
    }

    /// Queues a request, returning the frame error itself so the caller can explain it.
    pub(crate) fn queue_frame(&mut self, request: &Request) -> Result<(), FrameError> {
        self.framed.queue_request(request)
    }

    /// Writes what is queued. Not cancel safe: a cancelled flush leaves the connection broken.
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        self.broken = true;
        self.framed.flush().await.map_err(Error::closed)?;
        self.broken = false;
        Ok(())
    }

    /// Reads one response. Cancel safe as to the bytes, but the caller's request is then left
    /// unanswered, so a cancelled caller leaves the connection broken.
    pub(crate) async fn recv(&mut self) -> Result<Response, Error> {
        while self.pending_acks > 0 {
            match self.read().await? {
                Response::Ok => self.pending_acks -= 1,
                // The extension never refuses an Invocation frame; if it did, the answers that
                // follow would be out of step with the requests.
                other => return Err(self.unexpected(&other)),
            }
        }
        self.read().await
    }

    /// Names `invocation` to the extension, unless this session already works for it. The frame
    /// is only queued: it leaves with the next request.
    pub(crate) fn announce(&mut self, invocation: Option<&Arc<Invocation>>) -> Result<(), Error> {
        if self.invocation.as_deref() == invocation.map(|i| &**i) {
            return Ok(());
        }
        let frame = invocation.map(|i| (**i).clone()).unwrap_or_default();
        self.queue(&Request::Invocation(frame))?;
        self.pending_acks += 1;
        self.invocation = invocation.cloned();
        Ok(())
    }

    async fn read(&mut self) -> Result<Response, Error> {
        self.broken = true;
        let frame = match self.framed.read::<Response>().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(Error::closed("the extension closed the session")),
            Err(ReadError::Frame(e)) => return Err(Error::protocol(e.to_string())),
            Err(e @ (ReadError::Torn | ReadError::Io(_))) => {
                return Err(Error::closed(e.to_string()))
            }
        };
        self.broken = false;
        Ok(frame)
    }

    /// An error frame. After some errors the extension closes the session, so the connection is
    /// not reused.
    pub(crate) fn error(&mut self, e: WireError) -> Error {
        if matches!(
            e.code(),
            sqlstate::ADMIN_SHUTDOWN
                | sqlstate::PROTOCOL_VIOLATION
                | sqlstate::PROGRAM_LIMIT_EXCEEDED
        ) && e.source == ErrorSource::Extension
        {
            self.broken = true;
        }
        Error::from_wire(e)
    }

    /// A response that does not fit the request: the stream is out of step.
    pub(crate) fn unexpected(&mut self, response: &Response) -> Error {
        self.broken = true;
        let name = match response {
            Response::HelloOk(_) => "HelloOk",
            Response::PrepareOk(_) => "PrepareOk",
            Response::Rows(_) => "Rows",
            Response::Complete(_) => "Complete",
            Response::Ok => "Ok",
            Response::Pong => "Pong",
            Response::NotRun => "NotRun",
            Response::Error(_) => "Error",
            Response::State(_) => "warm-state",
            Response::Stats(_) => "Stats",
        };
        Error::protocol(format!("unexpected {name} frame from the extension"))
    }
}
