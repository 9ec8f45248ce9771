//! Framing and the primitive field encodings shared by requests and responses.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{FrameError, HEADER_LEN};

/// Cuts one whole frame off the front of `buf`, or returns `Ok(None)` while it is incomplete.
///
/// The declared length is checked against `max_frame` before any memory is reserved, so a peer
/// that declares a huge frame costs nothing. A partial frame stays in `buf`, owned by the caller's
/// connection, which is what makes a read loop built on this cancel safe.
pub(crate) fn split_frame(
    buf: &mut BytesMut,
    max_frame: usize,
) -> Result<Option<(u8, Bytes)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max_frame {
        return Err(FrameError::TooLarge {
            size: len,
            limit: max_frame,
        });
    }
    if buf.len() < HEADER_LEN + len {
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    Ok(Some((tag, buf.split_to(len).freeze())))
}

/// Writes a frame into the caller's buffer, back-filling the body length once the body is written.
pub(crate) fn write_frame(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let len_at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = buf.len() - len_at - 4;
    let len = u32::try_from(len).expect("frame body over 4 GiB");
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub(crate) fn put_str(buf: &mut BytesMut, s: &str) {
    put_bytes(buf, s.as_bytes());
}

pub(crate) fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u32(u32::try_from(b.len()).expect("field over 4 GiB"));
    buf.put_slice(b);
}

/// A nullable value: an `i32` length, `-1` for NULL, as in PostgreSQL's DataRow and Bind.
pub(crate) fn put_nullable(buf: &mut BytesMut, v: Option<&[u8]>) {
    match v {
        None => buf.put_i32(-1),
        Some(b) => {
            buf.put_i32(i32::try_from(b.len()).expect("value over 2 GiB"));
            buf.put_slice(b);
        }
    }
}

pub(crate) fn put_count16(buf: &mut BytesMut, n: usize) {
    buf.put_u16(u16::try_from(n).expect("more than 65535 items"));
}

/// Reads fields from one frame body. Every read checks the remaining length first, and slices
/// share the frame's allocation instead of copying it.
pub(crate) struct Reader {
    body: Bytes,
}

impl Reader {
    pub(crate) fn new(body: Bytes) -> Reader {
        Reader { body }
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), FrameError> {
        if self.body.remaining() < n {
            Err(FrameError::Truncated(what))
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        self.need(1, what)?;
        Ok(self.body.get_u8())
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        self.need(2, what)?;
        Ok(self.body.get_u16())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        self.need(4, what)?;
        Ok(self.body.get_u32())
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        self.need(8, what)?;
        Ok(self.body.get_u64())
    }

    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<Bytes, FrameError> {
        let len = self.u32(what)? as usize;
        self.need(len, what)?;
        Ok(self.body.split_to(len))
    }

    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, FrameError> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| FrameError::Invalid("string is not UTF-8"))
    }

    pub(crate) fn nullable(&mut self, what: &'static str) -> Result<Option<Bytes>, FrameError> {
        self.need(4, what)?;
        let len = self.body.get_i32();
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| FrameError::Invalid("negative length"))?;
        self.need(len, what)?;
        Ok(Some(self.body.split_to(len)))
    }

    /// A count of items that each take at least `min_item` bytes, checked against what is left so
    /// that a lying count cannot make the caller reserve memory for items that are not there.
    pub(crate) fn count16(
        &mut self,
        min_item: usize,
        what: &'static str,
    ) -> Result<usize, FrameError> {
        let n = self.u16(what)? as usize;
        self.need(n.saturating_mul(min_item), what)?;
        Ok(n)
    }

    /// As [`Reader::count16`], for a `u32` count.
    pub(crate) fn count32(
        &mut self,
        min_item: usize,
        what: &'static str,
    ) -> Result<usize, FrameError> {
        let n = self.u32(what)? as usize;
        self.need(n.saturating_mul(min_item), what)?;
        Ok(n)
    }

    /// Whether the whole body has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Fails unless the whole body was read.
    pub(crate) fn finish(self, tag: u8) -> Result<(), FrameError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes {
                tag,
                extra: self.body.len(),
            })
        }
    }
}
