//! One socket connection to the extension: a session on the extension's side.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::UnixStream;

use crate::error::{DbError, Error, Kind};
use crate::protocol::{
    sqlstate, Deadline, ErrorSource, FrameError, Hello, Invocation, Request, Response, WireError,
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
    /// The deadline the extension holds for this session.
    deadline: Option<u64>,
    /// The deadline the session's next request runs under.
    want_deadline: Option<u64>,
    /// Deadline frames sent whose Ok has not been read yet.
    deadline_acks: usize,
    /// Whether the rest of an Execute's answer (Rows frames, then Complete or Error) is still to
    /// come and nobody wants it: a row stream dropped before its end inside a transaction.
    draining: bool,
    /// Requests queued by a drop, which cannot wait for their answer (a savepoint rolled back
    /// because its transaction was dropped): their answers are read and set aside before the next
    /// request's, as tokio-postgres' `Transaction` drop queues its ROLLBACK. At most one per
    /// level of nested transactions, each of which took a round trip to create.
    unawaited: usize,
    /// Where the database's notices go.
    notices: Arc<NoticeSink>,
}

/// A handler for the notices and warnings the database raises while a client's statements run;
/// one for a [`crate::Client`] and its clones.
pub(crate) type NoticeHandler = Arc<dyn Fn(&DbError) + Send + Sync>;

/// The [`NoticeHandler`] a client's sessions share, if one is set.
#[derive(Default)]
pub(crate) struct NoticeSink(std::sync::Mutex<Option<NoticeHandler>>);

impl NoticeSink {
    pub(crate) fn set(&self, handler: NoticeHandler) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    fn deliver(&self, notice: WireError) {
        let handler = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(handler) = handler {
            handler(&DbError::from_wire(notice));
        }
    }
}

/// A request that could not be written because the extension had closed the session: it
/// closes only after it stops reading, so nothing of the request was read, and it did not run.
#[derive(Debug)]
pub(crate) struct NotSent(pub(crate) std::io::Error);

impl std::fmt::Display for NotSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request could not be sent: {}", self.0)
    }
}

impl std::error::Error for NotSent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The extension closed this session for idleness (PostgreSQL's `idle_session_timeout` code).
pub(crate) const IDLE_SESSION_TIMEOUT: &str = "57P05";

/// Milliseconds since the Unix epoch, as the protocol carries deadlines; at least 1, since 0
/// means none.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

impl Conn {
    /// Connects and performs the handshake.
    pub(crate) async fn open(path: &Path, notices: Arc<NoticeSink>) -> Result<Conn, Error> {
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
            deadline: None,
            want_deadline: None,
            deadline_acks: 0,
            draining: false,
            unawaited: 0,
            notices,
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

    /// Notes that the rest of the answer being read is to be skipped: its Rows frames and the
    /// Complete or Error that ends it are read and dropped before the next answer.
    pub(crate) fn skip_rest_of_answer(&mut self) {
        self.draining = true;
    }

    /// Queues a request whose answer nobody awaits: it goes out with the next request, and its
    /// Ok or Error is read and set aside before that request's answer. For a drop, which cannot
    /// await; nothing is queued on a broken session.
    pub(crate) fn queue_unawaited(&mut self, request: &Request) {
        if self.broken {
            return;
        }
        match self.queue_frame(request) {
            Ok(()) => self.unawaited += 1,
            Err(_) => self.broken = true,
        }
    }

    /// Sets the deadline the session's next requests run under; it reaches the extension in
    /// front of the next request, with no round trip of its own.
    pub(crate) fn set_deadline(&mut self, deadline: Option<u64>) {
        self.want_deadline = deadline;
    }

    /// Whether the extension has closed this idle session (for idleness, or because it is
    /// shutting down): anything to read, or the end of the stream, where no answer is due.
    pub(crate) fn closed_while_idle(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.framed.get_ref().try_read(&mut probe) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    /// Queues a request; a request over the frame limit, or one whose content PostgreSQL cannot
    /// receive (see [`Request::check_content`]), fails here, before anything is queued.
    pub(crate) fn queue(&mut self, request: &Request) -> Result<(), Error> {
        request.check_content().map_err(Error::from_wire)?;
        self.queue_frame(request)
            .map_err(|e| Error::from_wire(WireError::extension(e.sqlstate(), e.to_string())))
    }

    /// Queues a request, returning the frame error itself so the caller can explain it. A
    /// deadline set since the last request goes in front of it, whatever the request.
    pub(crate) fn queue_frame(&mut self, request: &Request) -> Result<(), FrameError> {
        if self.want_deadline != self.deadline {
            let deadline = Request::Deadline(Deadline {
                unix_ms: self.want_deadline,
            });
            self.framed.queue_request(&deadline)?;
            self.deadline = self.want_deadline;
            self.deadline_acks += 1;
        }
        self.framed.queue_request(request)
    }

    /// Writes what is queued. Not cancel safe: a cancelled flush leaves the connection broken.
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        self.broken = true;
        self.framed
            .flush()
            .await
            .map_err(|e| Error::closed(NotSent(e)))?;
        self.broken = false;
        Ok(())
    }

    /// Reads one response. Cancel safe as to the bytes, but the caller's request is then left
    /// unanswered, so a cancelled caller leaves the connection broken.
    pub(crate) async fn recv(&mut self) -> Result<Response, Error> {
        while self.pending_acks > 0 {
            match self.recv_one().await? {
                Response::Ok => self.pending_acks -= 1,
                // The extension never refuses an Invocation frame, but it may close the session
                // instead of reading it (57P05 for idleness or for its slot, 57P01 at shutdown):
                // that error is the session's, and says nothing behind it ran.
                Response::Error(e) => {
                    // Whatever else it may be, the answers that follow would be out of step.
                    self.broken = true;
                    return Err(self.error(e));
                }
                other => return Err(self.unexpected(&other)),
            }
        }
        while self.draining {
            match self.recv_one().await? {
                Response::Rows(_) => {}
                // An error here inside a transaction fails the transaction on the extension's
                // side, so the statements after it are refused there with 25P02: nothing is lost.
                Response::Complete(_) | Response::Error(_) => self.draining = false,
                other => return Err(self.unexpected(&other)),
            }
        }
        while self.unawaited > 0 {
            match self.recv_one().await? {
                // Likewise for a failed ROLLBACK TO SAVEPOINT: the extension holds the
                // transaction failed, so it cannot commit.
                Response::Ok | Response::Error(_) => self.unawaited -= 1,
                other => return Err(self.unexpected(&other)),
            }
        }
        while self.deadline_acks > 0 {
            match self.recv_one().await? {
                Response::Ok => self.deadline_acks -= 1,
                Response::Error(e) => {
                    self.deadline_acks -= 1;
                    self.deadline = None;
                    return Err(self.error(e));
                }
                other => return Err(self.unexpected(&other)),
            }
        }
        self.recv_one().await
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

    /// The next frame that answers a request; notices on the way go to the client's handler.
    async fn recv_one(&mut self) -> Result<Response, Error> {
        loop {
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
            match frame {
                Response::Notice(notice) => self.notices.deliver(notice),
                frame => return Ok(frame),
            }
        }
    }

    /// An error frame. After some errors the extension closes the session, so the connection is
    /// not reused.
    pub(crate) fn error(&mut self, e: WireError) -> Error {
        if matches!(
            e.code(),
            sqlstate::ADMIN_SHUTDOWN
                | IDLE_SESSION_TIMEOUT
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
            Response::Notice(_) => "Notice",
            Response::Columns(_) => "Columns",
        };
        Error::protocol(format!("unexpected {name} frame from the extension"))
    }
}
