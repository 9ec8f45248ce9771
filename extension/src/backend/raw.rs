//! Messages relayed whole, for a client that speaks PostgreSQL's protocol itself: what the
//! client sends goes to the server as it came, and what the server answers goes back as it came.
//! The connection still follows its own state from what passes through: each Sync or Query
//! expects a ReadyForQuery, whose status byte is the transaction status, and ParameterStatus
//! values are kept. <https://www.postgresql.org/docs/current/protocol-message-formats.html>

use bytes::{Buf, Bytes};
use postgres_protocol::message::backend::Header;
use tokio::io::AsyncReadExt;

use super::{Backend, DbError, Error, TxStatus, MAX_MESSAGE};

/// A message from the server, whole: its tag, its length and its body.
#[derive(Debug, Clone)]
pub struct RawMessage(Bytes);

impl RawMessage {
    /// The message's tag.
    pub fn tag(&self) -> u8 {
        self.0[0]
    }

    /// The message, as the server sent it.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The body, after the tag and length.
    pub fn body(&self) -> &[u8] {
        &self.0[5..]
    }

    /// A ReadyForQuery's status byte.
    pub fn ready_status(&self) -> Option<u8> {
        (self.tag() == b'Z').then(|| self.body().first().copied().unwrap_or(b'I'))
    }

    /// An ErrorResponse or NoticeResponse, parsed.
    pub fn db_error(&self) -> Option<DbError> {
        if !matches!(self.tag(), b'E' | b'N') {
            return None;
        }
        use postgres_protocol::message::backend::Message;
        match Message::parse(&mut bytes::BytesMut::from(self.bytes())) {
            Ok(Some(Message::ErrorResponse(body))) => DbError::parse(body.fields()).ok(),
            Ok(Some(Message::NoticeResponse(body))) => DbError::parse(body.fields()).ok(),
            _ => None,
        }
    }

    /// A CommandComplete's tag (`INSERT 0 1`, `SET`…).
    pub fn command_tag(&self) -> Option<&str> {
        if self.tag() != b'C' {
            return None;
        }
        let body = self.body();
        let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
        std::str::from_utf8(&body[..end]).ok()
    }
}

impl Backend {
    /// Appends a client's message, whole, to what goes out with the next flush. A Sync or a
    /// simple Query is answered by a ReadyForQuery, which the connection then expects.
    pub fn write_raw(&mut self, message: &[u8]) {
        if matches!(message.first(), Some(b'S' | b'Q')) {
            self.expect_ready();
        }
        self.write.extend_from_slice(message);
    }

    /// How many bytes wait to go out.
    pub fn unsent(&self) -> usize {
        self.write.len()
    }

    /// The next message from the server, whole. Cancel-safe: a message is taken out of the
    /// read buffer only once it is there whole. A FATAL error marks the connection unusable, as
    /// the server closes it after one.
    pub async fn recv_raw(&mut self) -> Result<RawMessage, Error> {
        loop {
            if let Some(m) = self.next_raw()? {
                return Ok(m);
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

    /// The next message if the read buffer holds it whole, without reading the socket.
    pub fn next_raw(&mut self) -> Result<Option<RawMessage>, Error> {
        let Some(header) = Header::parse(&self.read).map_err(|e| self.fail(e.into()))? else {
            self.read.reserve(5);
            return Ok(None);
        };
        let total = header.len() as usize + 1;
        if total > MAX_MESSAGE {
            return Err(self.fail(Error::protocol(format!(
                "a message of {total} bytes (tag {:?}) exceeds any PostgreSQL message",
                header.tag() as char
            ))));
        }
        if self.read.len() < total {
            self.read.reserve(total - self.read.len());
            return Ok(None);
        }
        let message = RawMessage(self.read.split_to(total).freeze());
        match message.tag() {
            b'Z' => {
                self.unsynced = self.unsynced.saturating_sub(1);
                self.status = match message.ready_status() {
                    Some(b'T') => TxStatus::InTransaction,
                    Some(b'E') => TxStatus::Failed,
                    Some(b'I') => TxStatus::Idle,
                    _ => {
                        return Err(self.fail(Error::protocol("a ReadyForQuery of unknown status")))
                    }
                };
            }
            b'S' => {
                let mut body = message.body();
                let name = cstr(&mut body);
                let value = cstr(&mut body);
                if let (Some(name), Some(value)) = (name, value) {
                    self.set_parameter(name, value);
                }
            }
            b'E' if message.db_error().is_none_or(|db| db.is_fatal()) => self.broken = true,
            _ => {}
        }
        if self.read.is_empty() && self.read.capacity() > super::KEEP_BUFFER {
            self.read = bytes::BytesMut::with_capacity(8 * 1024);
        }
        Ok(Some(message))
    }
}

/// A NUL-terminated string at the front of `buf`, which moves past it.
fn cstr<'a>(buf: &mut &'a [u8]) -> Option<&'a str> {
    let end = buf.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&buf[..end]).ok();
    buf.advance(end + 1);
    s
}
