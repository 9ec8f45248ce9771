//! The Deadline request (`L`): bounds the session's statements by the invocation's deadline.
//!
//! A Lambda invocation that times out is ended by the service, but a statement it started goes
//! on running on the database, holding its locks, unless someone cancels it. The client knows
//! the invocation's deadline (the Runtime API's `Lambda-Runtime-Deadline-Ms`), so it sends it;
//! the extension cancels what is still running at that instant and rolls back the session's
//! transaction.

use bytes::{BufMut, BytesMut};

use super::codec::{write_frame, Reader};
use super::FrameError;

pub(crate) const DEADLINE: u8 = b'L';

/// The instant, in milliseconds since the Unix epoch, after which nothing the session started
/// may keep running on the database. `None` (sent as 0) lifts the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// Milliseconds since 1970-01-01T00:00:00Z, as Lambda's `deadline_ms`; `None` for no bound.
    pub unix_ms: Option<u64>,
}

impl Deadline {
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        write_frame(buf, DEADLINE, |b| b.put_u64(self.unix_ms.unwrap_or(0)));
    }

    pub(crate) fn parse(r: &mut Reader) -> Result<Deadline, FrameError> {
        let ms = r.u64("deadline")?;
        Ok(Deadline {
            unix_ms: (ms != 0).then_some(ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use crate::protocol::{FrameError, Request, DEFAULT_MAX_FRAME};

    use super::Deadline;

    fn decode(bytes: &[u8]) -> Result<Option<Request>, FrameError> {
        Request::decode(&mut BytesMut::from(bytes), DEFAULT_MAX_FRAME)
    }

    #[test]
    fn layout_and_round_trip() {
        let ms = 1_800_000_000_123u64;
        let mut buf = BytesMut::new();
        Request::Deadline(Deadline { unix_ms: Some(ms) }).encode(&mut buf);
        let mut expected = vec![b'L', 0, 0, 0, 8];
        expected.extend_from_slice(&ms.to_be_bytes());
        assert_eq!(&buf[..], &expected[..]);
        assert_eq!(
            decode(&expected),
            Ok(Some(Request::Deadline(Deadline { unix_ms: Some(ms) })))
        );
    }

    #[test]
    fn zero_lifts_the_deadline() {
        let mut buf = BytesMut::new();
        Request::Deadline(Deadline { unix_ms: None }).encode(&mut buf);
        assert_eq!(&buf[..], &[b'L', 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            decode(&buf),
            Ok(Some(Request::Deadline(Deadline { unix_ms: None })))
        );
    }

    #[test]
    fn malformed_deadlines_are_refused() {
        assert_eq!(
            decode(&[b'L', 0, 0, 0, 4, 0, 0, 0, 1]),
            Err(FrameError::Truncated("deadline"))
        );
        assert_eq!(
            decode(&[b'L', 0, 0, 0, 0]),
            Err(FrameError::Truncated("deadline"))
        );
        let mut long = vec![b'L', 0, 0, 0, 9];
        long.extend_from_slice(&[0; 9]);
        assert_eq!(
            decode(&long),
            Err(FrameError::TrailingBytes {
                tag: b'L',
                extra: 1
            })
        );
        // A Deadline is a request only.
        assert!(crate::protocol::Response::decode(
            &mut BytesMut::from(&[b'L', 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1][..]),
            DEFAULT_MAX_FRAME
        )
        .is_err());
    }
}
