//! The messages the endpoint writes itself, rather than relays, and the framing of what
//! clients send; no I/O. <https://www.postgresql.org/docs/current/protocol-message-formats.html>

use bytes::{BufMut, BytesMut};

/// A message header: the tag and the 4-byte length, which counts itself.
pub const HEADER: usize = 5;

/// Appends a message with `tag` whose body `body` writes.
fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = i32::try_from(buf.len() - at).expect("a message over 2 GiB");
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the string early; none of ours holds one.
    buf.put_slice(s.replace('\0', "").as_bytes());
    buf.put_u8(0);
}

/// AuthenticationOk.
pub fn authentication_ok(buf: &mut BytesMut) {
    message(buf, b'R', |b| b.put_i32(0));
}

/// AuthenticationSASL: the mechanisms offered, in order of preference.
pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    message(buf, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            cstr(b, m);
        }
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue with the mechanism's challenge.
pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal with the mechanism's outcome.
pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// The body of a SASLInitialResponse (`p`): the mechanism chosen and its first message
/// (`None` when the client sent none, length -1).
pub fn sasl_initial_response(body: &[u8]) -> Option<(&str, Option<&[u8]>)> {
    let end = body.iter().position(|&b| b == 0)?;
    let mechanism = std::str::from_utf8(&body[..end]).ok()?;
    let (len, data) = body[end + 1..].split_first_chunk::<4>()?;
    match i32::from_be_bytes(*len) {
        -1 if data.is_empty() => Some((mechanism, None)),
        n if usize::try_from(n).ok() == Some(data.len()) => Some((mechanism, Some(data))),
        _ => None,
    }
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, b'S', |b| {
        cstr(b, name);
        cstr(b, value);
    });
}

/// BackendKeyData: what the client sends back in a CancelRequest.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    message(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// ReadyForQuery with the transaction status byte (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    message(buf, b'Z', |b| b.put_u8(status));
}

/// NegotiateProtocolVersion: the newest minor version served, and the protocol options
/// (`_pq_.*`) the client asked for that are not recognised.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unrecognised: &[String]) {
    message(buf, b'v', |b| {
        b.put_i32(minor);
        b.put_i32(i32::try_from(unrecognised.len()).unwrap_or(i32::MAX));
        for o in unrecognised {
            cstr(b, o);
        }
    });
}

/// Severity of an error the endpoint raises itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The session ends.
    Fatal,
}

/// An ErrorResponse: severity, SQLSTATE, message, and a detail or hint if given.
pub fn error(
    buf: &mut BytesMut,
    severity: Severity,
    code: &str,
    text: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let severity = match severity {
        Severity::Fatal => "FATAL",
    };
    message(buf, b'E', |b| {
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', text),
        ] {
            b.put_u8(field);
            cstr(b, value);
        }
        for (field, value) in [(b'D', detail), (b'H', hint)] {
            if let Some(v) = value {
                b.put_u8(field);
                cstr(b, v);
            }
        }
        b.put_u8(0);
    });
}

/// Why a client's bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field counts less than itself.
    #[error("a message of tag {tag:?} declares a length of {len}, less than its own 4 bytes")]
    TooShort {
        /// The message's tag.
        tag: char,
        /// The declared length.
        len: i32,
    },
    /// The message is longer than the endpoint accepts.
    #[error(
        "a message of tag {tag:?} declares {len} bytes, over the limit of {max} \
         (WARMPOOL_MAX_FRAME_BYTES)"
    )]
    TooLong {
        /// The message's tag.
        tag: char,
        /// The declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// The length of the whole message at the front of `buf` (tag included), once its header is
/// there; checked before any room is made for the body.
pub fn message_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let tag = header[0] as char;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(FrameError::TooShort { tag, len });
    }
    let len = len as usize;
    if len > max {
        return Err(FrameError::TooLong { tag, len, max });
    }
    Ok(Some(len + 1))
}

/// The first `N` NUL-terminated strings at the front of a message body, without allocating:
/// what the relay reads of every message it follows.
pub fn cstrs<const N: usize>(mut body: &[u8]) -> Option<[&str; N]> {
    let mut out = [""; N];
    for s in &mut out {
        let end = body.iter().position(|&b| b == 0)?;
        *s = std::str::from_utf8(&body[..end]).ok()?;
        body = &body[end + 1..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_as_postgresql_frames_them() {
        let mut b = BytesMut::new();
        ready_for_query(&mut b, b'I');
        assert_eq!(&b[..], b"Z\0\0\0\x05I");
        let mut b = BytesMut::new();
        parameter_status(&mut b, "a", "b");
        assert_eq!(&b[..], b"S\0\0\0\x08a\0b\0");
        let mut b = BytesMut::new();
        error(&mut b, Severity::Fatal, "08006", "gone", None, Some("h"));
        assert_eq!(
            &b[..],
            &b"E\0\0\0\x23SFATAL\0VFATAL\0C08006\0Mgone\0Hh\0\0"[..]
        );
    }

    #[test]
    fn sasl_messages_are_framed_and_parsed_as_postgresql_does() {
        let mut b = BytesMut::new();
        authentication_sasl(&mut b, &["SCRAM-SHA-256"]);
        assert_eq!(&b[..], b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
        let mut b = BytesMut::new();
        authentication_sasl_final(&mut b, b"v=x");
        assert_eq!(&b[..], b"R\0\0\0\x0b\0\0\0\x0cv=x");
        assert_eq!(
            sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x03n,,"),
            Some(("SCRAM-SHA-256", Some(&b"n,,"[..])))
        );
        assert_eq!(
            sasl_initial_response(b"M\0\xff\xff\xff\xff"),
            Some(("M", None))
        );
        // A length that does not match the bytes, and no length at all.
        assert_eq!(sasl_initial_response(b"M\0\0\0\0\x04n,,"), None);
        assert_eq!(sasl_initial_response(b"M\0"), None);
    }

    #[test]
    fn lengths_are_checked_before_the_body_arrives() {
        assert_eq!(message_len(b"Q\0\0", 100), Ok(None));
        assert_eq!(message_len(b"Q\0\0\0\x09", 100), Ok(Some(10)));
        assert!(matches!(
            message_len(b"Q\0\0\0\x03", 100),
            Err(FrameError::TooShort { .. })
        ));
        assert!(matches!(
            message_len(b"Q\x7f\0\0\0", 100),
            Err(FrameError::TooLong { .. })
        ));
        assert!(matches!(
            message_len(b"Q\xff\xff\xff\xff", 100),
            Err(FrameError::TooShort { .. })
        ));
    }
}
