//! A connection to PostgreSQL at the message level, driven by the task that uses it.
//!
//! Messages are encoded and parsed by `postgres-protocol`, the rust-postgres project's no-I/O
//! protocol crate; this module owns the socket, the buffers and what the messages say about the
//! server's state: the transaction status of every ReadyForQuery, the ParameterStatus values,
//! BackendKeyData for a CancelRequest, and the names of the statements it prepared.
//! <https://www.postgresql.org/docs/current/protocol-flow.html>
//!
//! Nothing runs in a task of its own: the session that holds the connection writes a request
//! and reads its answer itself, so a statement costs no hand-off between tasks. Every read and
//! write is cancel-safe at the byte level (the buffers live here, not in a future); a request
//! whose future was dropped half way leaves ReadyForQuery messages unread, which
//! [`Backend::is_synced`] reports and [`Backend::resync`] reads past.

mod cancel;
pub mod connect;
mod error;
pub mod query;
pub mod raw;
mod stream;
pub(crate) mod types;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::backend::{Header, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use cancel::CancelToken;
pub use error::{DbError, Error};
pub use query::{Reply, Simple, Statement};

use crate::notices::Notices;
use stream::Stream;

/// The largest message taken from the server. A single value can be 1 GB in PostgreSQL; a
/// length beyond that is a broken stream, refused before anything is allocated for it.
const MAX_MESSAGE: usize = (1 << 30) + (1 << 20);

/// A read buffer that grew past this for one large message is given back once it is empty.
const KEEP_BUFFER: usize = 128 * 1024;

/// How many ParameterStatus values are kept; the server reports about fifteen.
const MAX_PARAMETERS: usize = 64;

/// The transaction status from the last ReadyForQuery.
/// <https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-READYFORQUERY>
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block; statements are refused until it ends.
    Failed,
}

/// One connection to PostgreSQL.
pub struct Backend {
    stream: Stream,
    read: BytesMut,
    write: BytesMut,
    status: TxStatus,
    /// Sync and Query messages sent whose ReadyForQuery has not been read yet.
    unsynced: u32,
    /// The socket failed or the server ended the session: nothing more can be sent.
    broken: bool,
    cancel: CancelToken,
    parameters: Vec<(String, String)>,
    /// Notices the server sent, for the client the connection serves.
    notices: Notices,
    /// `WARMPOOL_LOG_STATEMENTS`: statements and notices are logged with their text.
    log_statements: bool,
    names: Names,
    /// Statements evicted from the cache, closed on the server with the next request.
    to_close: Vec<Arc<str>>,
    pub(crate) types: types::TypeCache,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("pid", &self.cancel.process_id())
            .field("status", &self.status)
            .field("unsynced", &self.unsynced)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Names for the statements a connection prepares: a random 64-bit prefix drawn for the
/// connection, then a counter. Behind a pooler that moves a Bind to another server connection,
/// the name finds nothing there (an error), never another process's statement of the same name.
#[derive(Debug)]
struct Names {
    prefix: String,
    next: u64,
}

impl Names {
    fn new() -> Names {
        let mut id = [0u8; 8];
        // A failed draw still leaves the counter unique within the connection; the pid and time
        // keep prefixes apart between processes.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            id = (t ^ (u64::from(std::process::id()) << 32)).to_be_bytes();
        }
        Names {
            prefix: format!("wp{:016x}", u64::from_be_bytes(id)),
            next: 0,
        }
    }

    fn next(&mut self) -> Arc<str> {
        self.next += 1;
        format!("{}_{}", self.prefix, self.next).into()
    }

    /// Whether `name` is one this connection could have given.
    fn is_ours(&self, name: &str) -> bool {
        name.starts_with(&self.prefix)
    }
}

impl Backend {
    fn new(stream: Stream, read: BytesMut, cancel: CancelToken, log_statements: bool) -> Backend {
        Backend {
            stream,
            read,
            write: BytesMut::with_capacity(1024),
            status: TxStatus::Idle,
            unsynced: 0,
            broken: false,
            cancel,
            parameters: Vec::new(),
            notices: Notices::default(),
            log_statements,
            names: Names::new(),
            to_close: Vec::new(),
            types: types::TypeCache::default(),
        }
    }

    /// The transaction status of the last ReadyForQuery.
    pub fn status(&self) -> TxStatus {
        self.status
    }

    /// Whether every request's answer has been read to its ReadyForQuery.
    pub fn is_synced(&self) -> bool {
        self.unsynced == 0
    }

    /// Whether the connection can no longer be used.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// What a CancelRequest for this connection needs.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// The server's process id, as `pg_stat_activity` shows it.
    pub fn process_id(&self) -> i32 {
        self.cancel.process_id()
    }

    /// A run-time parameter as the server last reported it (`server_version`, `TimeZone`…).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every run-time parameter the server has reported, as it last reported it.
    pub fn parameters(&self) -> impl Iterator<Item = (&str, &str)> {
        self.parameters
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The notices the server sent, kept for the client the connection serves.
    pub fn notices(&self) -> &Notices {
        &self.notices
    }

    /// Whether `name` is a statement name this connection gives.
    pub fn is_our_statement(&self, name: &str) -> bool {
        self.names.is_ours(name)
    }

    pub(crate) fn next_name(&mut self) -> Arc<str> {
        self.names.next()
    }

    /// Closes `name` on the server with the next request, without a round trip of its own.
    pub(crate) fn close_later(&mut self, name: Arc<str>) {
        self.to_close.push(name);
    }

    /// Drops the Close messages not yet sent: their statements are gone already.
    pub(crate) fn forget_closes(&mut self) {
        self.to_close.clear();
    }

    /// Writes the Close messages of evicted statements ahead of a request; their CloseComplete
    /// answers are read, and skipped, with the request's.
    pub(crate) fn write_closes(&mut self) {
        for name in self.to_close.drain(..) {
            // A name we made holds no NUL; an error here would only mean a malformed name.
            let _ = frontend::close(b'S', &name, &mut self.write);
        }
    }

    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        &mut self.write
    }

    /// Marks the connection unusable: what was sent on it can no longer be followed.
    pub fn poison(&mut self) {
        self.broken = true;
    }

    /// Forgets a request that could not be written whole (a value the protocol cannot carry):
    /// nothing of it was sent.
    pub fn discard_unsent(&mut self) {
        self.write.clear();
    }

    /// Notes a Sync or Query message written: one more ReadyForQuery to read.
    pub(crate) fn expect_ready(&mut self) {
        self.unsynced += 1;
    }

    /// Sends what is buffered: the requests written since the last flush go out together, as
    /// one pipeline.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if self.broken {
            return Err(Error::Closed);
        }
        let written = async {
            self.stream.write_all_buf(&mut self.write).await?;
            self.stream.flush().await
        }
        .await;
        if let Err(e) = written {
            self.broken = true;
            return Err(e.into());
        }
        if self.write.capacity() > KEEP_BUFFER {
            self.write = BytesMut::with_capacity(1024);
        }
        Ok(())
    }

    /// The next message that answers a request. Notices, ParameterStatus and notifications are
    /// taken in passing; a ReadyForQuery updates the transaction status and is returned.
    pub(crate) async fn recv(&mut self) -> Result<Message, Error> {
        loop {
            match self.parse_one() {
                Ok(Some(message)) => match self.take_unasked(message) {
                    None => continue,
                    Some(Message::ReadyForQuery(body)) => {
                        self.unsynced = self.unsynced.saturating_sub(1);
                        self.status = match body.status() {
                            b'T' => TxStatus::InTransaction,
                            b'E' => TxStatus::Failed,
                            _ => TxStatus::Idle,
                        };
                        return Ok(Message::ReadyForQuery(body));
                    }
                    Some(Message::ErrorResponse(body)) => {
                        let mut db =
                            DbError::parse(body.fields()).map_err(|e| self.fail(e.into()))?;
                        self.explain_pooler(&mut db);
                        if db.is_fatal() {
                            self.broken = true;
                        }
                        return Err(Error::Db(db));
                    }
                    Some(other) => return Ok(other),
                },
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
            if self.broken {
                return Err(Error::Closed);
            }
            match self.stream.read_buf(&mut self.read).await {
                Ok(0) => return Err(self.fail(Error::Closed)),
                Ok(_) => {}
                Err(e) => return Err(self.fail(e.into())),
            }
        }
    }

    /// One whole message from the read buffer, if one is there. The length is checked before
    /// any room is made for the message.
    fn parse_one(&mut self) -> Result<Option<Message>, Error> {
        let Some(header) = Header::parse(&self.read)? else {
            self.read.reserve(5);
            return Ok(None);
        };
        let total = header.len() as usize + 1;
        if total > MAX_MESSAGE {
            return Err(Error::protocol(format!(
                "a message of {total} bytes (tag {:?}) exceeds any PostgreSQL message",
                header.tag() as char
            )));
        }
        if self.read.len() < total {
            self.read.reserve(total - self.read.len());
            return Ok(None);
        }
        let message = Message::parse(&mut self.read)?;
        if self.read.is_empty() && self.read.capacity() > KEEP_BUFFER {
            self.read = BytesMut::with_capacity(8 * 1024);
        }
        Ok(message)
    }

    /// The body of the whole DataRow at the front of the read buffer (its column count, then
    /// its values), if one is there. Rows the socket has already delivered are relayed
    /// straight from the buffer, with no message built and no future polled per row; the
    /// socket protocol's row encoding is PostgreSQL's. A row whose lengths do not add up is a
    /// broken server: an error, and the connection is not used again.
    pub fn buffered_row(&mut self) -> Result<Option<&[u8]>, Error> {
        let Some(header) = Header::parse(&self.read).map_err(|e| self.fail(e.into()))? else {
            return Ok(None);
        };
        let total = header.len() as usize + 1;
        if header.tag() != b'D' || self.read.len() < total {
            return Ok(None);
        }
        if !query::row_is_well_formed(&self.read[5..total]) {
            return Err(self.fail(query::malformed_row()));
        }
        Ok(Some(&self.read[5..total]))
    }

    /// Drops the row [`Backend::buffered_row`] returned.
    pub fn pop_row(&mut self) {
        if let Ok(Some(header)) = Header::parse(&self.read) {
            let total = (header.len() as usize + 1).min(self.read.len());
            bytes::Buf::advance(&mut self.read, total);
        }
        if self.read.is_empty() && self.read.capacity() > KEEP_BUFFER {
            self.read = BytesMut::with_capacity(8 * 1024);
        }
    }

    /// A server that does not know a statement this connection prepared, or finds it with
    /// another statement's parameters, is not the server it was prepared on: a pooler in
    /// transaction mode moved the request. The error says so and names the two fixes.
    fn explain_pooler(&self, db: &mut DbError) {
        use warmpool::protocol::sqlstate;
        let ours = matches!(
            db.code(),
            sqlstate::INVALID_SQL_STATEMENT_NAME
                | sqlstate::PROTOCOL_VIOLATION
                | sqlstate::DUPLICATE_PREPARED_STATEMENT
        ) && db.message().contains(&self.names.prefix);
        if !ours {
            return;
        }
        let message = format!(
            "{} (a connection pooler between warmpool and PostgreSQL sent this to a server \
             connection that does not hold the statement warmpool prepared; set \
             WARMPOOL_PREPARED_STATEMENTS=unnamed, or use PgBouncer 1.21 or later with \
             max_prepared_statements)",
            db.message()
        );
        db.set(b'M', message);
        db.set(
            b'H',
            "Set WARMPOOL_PREPARED_STATEMENTS=unnamed, or run PgBouncer 1.21 or later with \
             max_prepared_statements above zero."
                .to_owned(),
        );
    }

    /// Takes in passing what the server sends unasked (notices, parameter changes,
    /// notifications) and returns anything else.
    /// <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-ASYNC>
    fn take_unasked(&mut self, message: Message) -> Option<Message> {
        match message {
            Message::NoticeResponse(body) => {
                if let Ok(db) = DbError::parse(body.fields()) {
                    self.notice(db);
                }
                None
            }
            Message::ParameterStatus(body) => {
                if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                    self.set_parameter(name, value);
                }
                None
            }
            // Nothing on a pooled connection listens; a notification is dropped.
            Message::NotificationResponse(_) => None,
            other => Some(other),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.broken = true;
        e
    }

    fn notice(&mut self, db: DbError) {
        if self.log_statements {
            tracing::info!(
                code = db.code(),
                severity = db.severity(),
                message = db.message(),
                "the database sent a notice"
            );
        } else {
            tracing::debug!(code = db.code(), "the database sent a notice");
        }
        self.notices.push(db.to_wire());
    }

    fn set_parameter(&mut self, name: &str, value: &str) {
        if let Some((_, v)) = self.parameters.iter_mut().find(|(n, _)| n == name) {
            *v = value.to_owned();
        } else if self.parameters.len() < MAX_PARAMETERS {
            self.parameters.push((name.to_owned(), value.to_owned()));
        }
    }

    /// Reads past the answers of requests whose reader went away, up to their last
    /// ReadyForQuery; false if the connection failed on the way.
    pub async fn resync(&mut self) -> bool {
        while self.unsynced > 0 {
            match self.recv().await {
                Ok(_) | Err(Error::Db(_)) if !self.broken => {}
                _ => return false,
            }
        }
        !self.broken
    }

    /// Takes, without waiting, what the server sent while the connection sat idle: notices,
    /// parameter changes, or the FATAL and end of stream of a session it ended
    /// (`pg_terminate_backend`, a restart, `idle_session_timeout`). False if the connection can
    /// no longer be used.
    pub fn idle_check(&mut self) -> bool {
        use futures_util::FutureExt;
        if self.broken || !self.is_synced() {
            return !self.broken;
        }
        // A few reads at most: what an idle session is sent is small.
        for _ in 0..4 {
            match self.stream.read_buf(&mut self.read).now_or_never() {
                Some(Ok(0)) | Some(Err(_)) => {
                    self.broken = true;
                    break;
                }
                Some(Ok(_)) => {}
                None => break,
            }
        }
        loop {
            match self.parse_one().map(|m| m.map(|m| self.take_unasked(m))) {
                Ok(Some(None)) => {}
                Ok(Some(Some(Message::ErrorResponse(body)))) => {
                    let fatal = DbError::parse(body.fields()).map_or(true, |db| {
                        tracing::info!(
                            code = db.code(),
                            message = db.message(),
                            "the database ended an idle connection"
                        );
                        db.is_fatal()
                    });
                    self.broken |= fatal;
                }
                Ok(Some(_)) | Err(_) => {
                    // Nothing else may arrive unasked.
                    self.broken = true;
                    break;
                }
                Ok(None) => break,
            }
        }
        !self.broken
    }

    /// Ends the session with a Terminate message, waiting at most `budget` for it to go out.
    /// <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-TERMINATION>
    pub async fn close(mut self, budget: Duration) -> bool {
        let stream = std::mem::replace(&mut self.stream, Stream::Closed);
        if self.broken {
            return false;
        }
        terminate(stream, budget).await
    }
}

/// Sends Terminate, shuts the socket down, and waits for the server to close its end, which it
/// does once its session has ended: all within `budget`.
async fn terminate(mut stream: Stream, budget: Duration) -> bool {
    let mut buf = BytesMut::with_capacity(5);
    frontend::terminate(&mut buf);
    let sent = tokio::time::timeout(budget, async {
        stream.write_all_buf(&mut buf).await?;
        stream.shutdown().await?;
        let mut rest = [0u8; 256];
        while stream.read(&mut rest).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
    matches!(sent, Ok(Ok(())))
}

/// How long a dropped connection's Terminate may take to go out.
const DROP_CLOSE_BUDGET: Duration = Duration::from_millis(500);

impl Drop for Backend {
    /// A connection dropped without [`Backend::close`] (discarded after a failure, or returned
    /// to a pool that has closed) still says goodbye, so the server does not log an unexpected
    /// end of file; a broken one is just closed.
    fn drop(&mut self) {
        let stream = std::mem::replace(&mut self.stream, Stream::Closed);
        if self.broken || matches!(stream, Stream::Closed) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            crate::tasks::spawn(terminate(stream, DROP_CLOSE_BUDGET));
        }
    }
}
