//! Frames over a byte stream: the one place either side reads or writes the socket.

use std::io;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::{FrameError, Request, Response, HEADER_LEN};

/// A frame type that one side reads.
pub trait Decode: Sized {
    /// Decodes one frame from the front of `buf`, or `Ok(None)` until a whole frame is there.
    fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Self>, FrameError>;
}

impl Decode for Request {
    fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Self>, FrameError> {
        Request::decode(buf, max_frame)
    }
}

impl Decode for Response {
    fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Self>, FrameError> {
        Response::decode(buf, max_frame)
    }
}

/// Why reading a frame failed.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the stream in the middle of a frame.
    Torn,
    /// The bytes are not a valid frame.
    Frame(FrameError),
    /// The stream failed.
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Torn => f.write_str("the peer closed the socket in the middle of a frame"),
            ReadError::Frame(e) => e.fmt(f),
            ReadError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// What each buffer starts with: room for the frames of ordinary statements.
const INITIAL_CAPACITY: usize = 8 * 1024;

/// The most a buffer keeps between requests. A buffer that grew past it for a large frame goes
/// back to [`INITIAL_CAPACITY`] before the next request is read, so a long-lived session does
/// not hold the largest frame it ever carried (up to the frame limit, per buffer) for the rest
/// of its life. It is twice the extension's 64 KiB row chunks, what a buffer grows to for them
/// by doubling, so streaming a large result reuses one buffer on either side instead of
/// allocating one per frame.
const KEEP_CAPACITY: usize = 128 * 1024;

/// A stream with its read buffer. Partial frames live in the buffer, not in a future, so
/// [`Framed::read`] is cancel safe: a read dropped by `select!` loses nothing.
#[derive(Debug)]
pub struct Framed<S> {
    stream: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// The read buffer grew past [`KEEP_CAPACITY`]. Its capacity alone cannot tell: once a large
    /// frame is cut off the front, the buffer reports only what is left behind it, and takes the
    /// whole allocation back on its next reserve.
    read_grown: bool,
    max_frame: usize,
    /// Bytes written to the stream so far.
    written: u64,
    /// When bytes last came in from the stream.
    received: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Wraps `stream`, accepting frames up to `max_frame` bytes.
    pub fn new(stream: S, max_frame: usize) -> Framed<S> {
        Framed {
            stream,
            read_buf: BytesMut::with_capacity(INITIAL_CAPACITY),
            write_buf: BytesMut::with_capacity(INITIAL_CAPACITY),
            read_grown: false,
            max_frame,
            written: 0,
            received: Instant::now(),
        }
    }

    /// Changes the frame limit, for instance to the one the peer announced.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Reads the next frame; `Ok(None)` is a clean end of stream between frames.
    ///
    /// Cancel safe.
    pub async fn read<T: Decode>(&mut self) -> Result<Option<T>, ReadError> {
        self.shrink();
        loop {
            if let Some(frame) =
                T::decode(&mut self.read_buf, self.max_frame).map_err(ReadError::Frame)?
            {
                return Ok(Some(frame));
            }
            if self.read_buf.capacity() == self.read_buf.len() {
                self.read_buf.reserve(INITIAL_CAPACITY);
            }
            // Checked here, where a read from the socket follows anyway, and not on the path
            // of a frame already buffered.
            self.read_grown |= self.read_buf.capacity() > KEEP_CAPACITY;
            let n = self
                .stream
                .read_buf(&mut self.read_buf)
                .await
                .map_err(ReadError::Io)?;
            self.received = Instant::now();
            if n == 0 {
                return if self.read_buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Torn)
                };
            }
        }
    }

    /// Resolves once the peer has closed its end of the stream. Bytes that arrive in the
    /// meantime (a pipelined request) are kept for the next [`Framed::read`]; once a whole
    /// frame's worth is buffered it stops reading, so a busy peer cannot make it buffer more.
    ///
    /// Cancel safe: this is what a server selects on while a long statement runs, to notice a
    /// client that went away.
    pub async fn closed(&mut self) -> io::Result<()> {
        loop {
            if self.read_buf.len() > self.max_frame + HEADER_LEN {
                return std::future::pending().await;
            }
            if self.read_buf.capacity() == self.read_buf.len() {
                self.read_buf.reserve(INITIAL_CAPACITY);
                self.read_grown |= self.read_buf.capacity() > KEEP_CAPACITY;
            }
            let n = self.stream.read_buf(&mut self.read_buf).await?;
            self.received = Instant::now();
            if n == 0 {
                return Ok(());
            }
        }
    }

    /// Gives back what the buffers grew to for a large frame, between requests: both are empty
    /// (nothing is buffered for the next frame, and the last answer went out whole), and a
    /// frame decoded earlier from the read buffer keeps its own bytes alive until it is dropped.
    /// Costs two comparisons when there is nothing to give back.
    fn shrink(&mut self) {
        if self.read_grown && self.read_buf.is_empty() {
            self.read_buf = BytesMut::with_capacity(INITIAL_CAPACITY);
            self.read_grown = false;
        }
        if self.write_buf.capacity() > KEEP_CAPACITY && self.write_buf.is_empty() {
            self.write_buf = BytesMut::with_capacity(INITIAL_CAPACITY);
        }
    }

    /// Queues a frame to be written by the next [`Framed::flush`], unless it is larger than the
    /// frame limit, which the peer would refuse.
    pub fn queue_request(&mut self, frame: &Request) -> Result<(), FrameError> {
        let start = self.write_buf.len();
        frame.encode(&mut self.write_buf);
        let size = self.write_buf.len() - start - HEADER_LEN;
        if size > self.max_frame {
            self.write_buf.truncate(start);
            return Err(FrameError::TooLarge {
                size,
                limit: self.max_frame,
            });
        }
        Ok(())
    }

    /// Queues a frame to be written by the next [`Framed::flush`].
    pub fn queue_response(&mut self, frame: &Response) {
        frame.encode(&mut self.write_buf);
    }

    /// The buffer of bytes queued for the next [`Framed::flush`], for an encoder that writes a
    /// frame in place (see [`crate::protocol::RowsEncoder`]).
    pub fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.write_buf.len()
    }

    /// Writes every queued frame.
    ///
    /// Not cancel safe: a flush dropped half way leaves a torn frame on the stream, so the caller
    /// must then discard the connection.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf).await?;
            self.written += self.write_buf.len() as u64;
            self.write_buf.clear();
        }
        self.stream.flush().await
    }

    /// When bytes last came in from the stream. A frame [`Framed::read`] returns had arrived
    /// whole by then: a frame the peer pipelined behind another was read with it, so this is
    /// when that frame reached this side, not when its turn came.
    pub fn received_at(&self) -> Instant {
        self.received
    }

    /// Bytes flushed to the stream so far: unchanged across an exchange means the peer has
    /// been sent nothing of its answer.
    pub fn written(&self) -> u64 {
        self.written
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::StateResponse;

    const LARGE: usize = 1 << 20;

    #[tokio::test]
    async fn buffers_grown_for_a_large_frame_are_given_back_before_the_next_request() {
        let (a, b) = tokio::io::duplex(4 * LARGE);
        let mut client = Framed::new(a, 4 * LARGE);
        let mut server = Framed::new(b, 4 * LARGE);

        client
            .queue_request(&Request::Batch("x".repeat(LARGE)))
            .unwrap();
        client.flush().await.unwrap();
        assert!(client.write_buf.capacity() > LARGE);
        match server.read::<Request>().await.unwrap() {
            Some(Request::Batch(sql)) => assert_eq!(sql.len(), LARGE),
            other => panic!("expected the Batch, got {other:?}"),
        }
        let value = Bytes::from(vec![b'y'; LARGE]);
        server.queue_response(&Response::State(StateResponse::Value(value)));
        server.flush().await.unwrap();
        assert!(server.write_buf.capacity() > LARGE);

        match client.read::<Response>().await.unwrap() {
            Some(Response::State(StateResponse::Value(v))) => assert_eq!(v.len(), LARGE),
            other => panic!("expected the value, got {other:?}"),
        }
        // The next request of the session: each side starts it with small buffers again.
        client.queue_request(&Request::Ping).unwrap();
        client.flush().await.unwrap();
        assert!(matches!(
            server.read::<Request>().await,
            Ok(Some(Request::Ping))
        ));
        server.queue_response(&Response::Pong);
        server.flush().await.unwrap();
        assert!(matches!(
            client.read::<Response>().await,
            Ok(Some(Response::Pong))
        ));
        for (side, framed) in [("client", &client.read_buf), ("server", &server.read_buf)] {
            assert!(
                framed.capacity() <= INITIAL_CAPACITY,
                "the {side}'s read buffer kept {} bytes",
                framed.capacity()
            );
        }
        for (side, framed) in [("client", &client.write_buf), ("server", &server.write_buf)] {
            assert!(
                framed.capacity() <= INITIAL_CAPACITY,
                "the {side}'s write buffer kept {} bytes",
                framed.capacity()
            );
        }
    }

    #[tokio::test]
    async fn buffers_grown_for_row_chunks_are_kept() {
        let (a, b) = tokio::io::duplex(4 * LARGE);
        let mut client = Framed::new(a, 4 * LARGE);
        let mut server = Framed::new(b, 4 * LARGE);
        // A large result streams as frames of about 64 KiB: one buffer each side serves them
        // all, and none is given back between them.
        for _ in 0..8 {
            let chunk = Bytes::from(vec![b'r'; 64 * 1024 + 100]);
            server.queue_response(&Response::State(StateResponse::Value(chunk)));
            server.flush().await.unwrap();
            assert!(matches!(
                client.read::<Response>().await,
                Ok(Some(Response::State(StateResponse::Value(_))))
            ));
            assert!(
                !client.read_grown,
                "the client would reallocate for each chunk"
            );
            assert!(server.write_buf.capacity() <= KEEP_CAPACITY);
        }
    }
}
