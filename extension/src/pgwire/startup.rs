//! The first packet of a client connection: SSLRequest, GSSENCRequest, CancelRequest or a
//! StartupMessage, told apart by the code after the length. Parsed with no I/O; a packet's
//! length is checked before it is read.
//! <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-START-UP>

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// PostgreSQL's own limit on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_PACKET: usize = 10_000;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// The newest minor version of protocol 3 this endpoint serves. A client asking for a newer one
/// (3.2, PostgreSQL 18's) is told so with NegotiateProtocolVersion, and goes on with 3.0.
pub const MINOR: i32 = 0;

/// What a client's first packet asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// SSLRequest: answered `N`, and the client goes on without TLS (or hangs up).
    Ssl,
    /// GSSENCRequest: answered `N` too.
    GssEnc,
    /// CancelRequest for the session with this key.
    Cancel {
        /// The process id the session was given.
        pid: i32,
        /// The secret the session was given.
        secret: Vec<u8>,
    },
    /// StartupMessage.
    Startup(Startup),
}

/// A StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// The minor protocol version asked for (3.`minor`).
    pub minor: i32,
    /// The parameters, in order: `user`, `database`, `options`, run-time settings.
    pub params: Vec<(String, String)>,
    /// Protocol options (`_pq_.*`), none of which this endpoint recognises.
    pub protocol_options: Vec<String>,
}

impl Startup {
    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a first packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// The length is out of range.
    #[error("invalid length of startup packet: {0}")]
    Length(i64),
    /// A protocol other than 3.x.
    #[error(
        "unsupported frontend protocol {major}.{minor}: warmpool serves 3.0 (as PostgreSQL 7.4 \
         and later do)"
    )]
    Version {
        /// The major version asked for.
        major: i32,
        /// The minor version asked for.
        minor: i32,
    },
    /// The packet is not what its code says.
    #[error("invalid startup packet: {0}")]
    Malformed(&'static str),
}

/// Reads one first packet. `Ok(None)`: the client closed before sending one.
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<Option<Result<Packet, StartupError>>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = i64::from(i32::from_be_bytes(len));
    if !(8..=MAX_PACKET as i64).contains(&len) {
        return Ok(Some(Err(StartupError::Length(len))));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream.read_exact(&mut body).await?;
    Ok(Some(parse(&body)))
}

/// Parses a first packet's body (after its length).
pub fn parse(body: &[u8]) -> Result<Packet, StartupError> {
    let (code, rest) = body
        .split_first_chunk::<4>()
        .ok_or(StartupError::Malformed("no code"))?;
    match i32::from_be_bytes(*code) {
        SSL_REQUEST => Ok(Packet::Ssl),
        GSSENC_REQUEST => Ok(Packet::GssEnc),
        CANCEL_REQUEST => {
            let (pid, secret) = rest
                .split_first_chunk::<4>()
                .ok_or(StartupError::Malformed("a CancelRequest without a key"))?;
            // 4 bytes in protocol 3.0; up to 256 from 3.2.
            if !(4..=256).contains(&secret.len()) {
                return Err(StartupError::Malformed(
                    "a CancelRequest's key of invalid length",
                ));
            }
            Ok(Packet::Cancel {
                pid: i32::from_be_bytes(*pid),
                secret: secret.to_vec(),
            })
        }
        code => {
            let (major, minor) = (code >> 16, code & 0xffff);
            if major != 3 {
                return Err(StartupError::Version { major, minor });
            }
            let (params, protocol_options) = parameters(rest)?;
            Ok(Packet::Startup(Startup {
                minor,
                params,
                protocol_options,
            }))
        }
    }
}

/// Name and value pairs, each NUL-terminated, ended by an empty name.
#[allow(clippy::type_complexity)]
fn parameters(mut rest: &[u8]) -> Result<(Vec<(String, String)>, Vec<String>), StartupError> {
    let mut params = Vec::new();
    let mut options = Vec::new();
    loop {
        let name = take_cstr(&mut rest)?;
        if name.is_empty() {
            break;
        }
        let value = take_cstr(&mut rest)?;
        if name.starts_with("_pq_.") {
            options.push(name);
        } else {
            params.push((name, value));
        }
    }
    if !rest.is_empty() {
        return Err(StartupError::Malformed("bytes after the parameters"));
    }
    if !params.iter().any(|(n, _)| n == "user") {
        return Err(StartupError::Malformed("no user name given"));
    }
    Ok((params, options))
}

fn take_cstr(rest: &mut &[u8]) -> Result<String, StartupError> {
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Malformed(
            "a parameter without its terminating NUL",
        ))?;
    let s = std::str::from_utf8(&rest[..end])
        .map_err(|_| StartupError::Malformed("a parameter that is not UTF-8"))?
        .to_owned();
    *rest = &rest[end + 1..];
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(code: i32, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        for (n, v) in pairs {
            b.extend_from_slice(n.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn every_first_packet_is_told_apart() {
        assert_eq!(parse(&SSL_REQUEST.to_be_bytes()), Ok(Packet::Ssl));
        assert_eq!(parse(&GSSENC_REQUEST.to_be_bytes()), Ok(Packet::GssEnc));
        let cancel = [
            CANCEL_REQUEST.to_be_bytes(),
            7i32.to_be_bytes(),
            9i32.to_be_bytes(),
        ]
        .concat();
        assert_eq!(
            parse(&cancel),
            Ok(Packet::Cancel {
                pid: 7,
                secret: 9i32.to_be_bytes().to_vec()
            })
        );
        let p = parse(&startup(
            196_608,
            &[("user", "u"), ("database", "app"), ("_pq_.x", "1")],
        ))
        .unwrap();
        let Packet::Startup(s) = p else { panic!() };
        assert_eq!(s.minor, 0);
        assert_eq!(s.get("database"), Some("app"));
        assert_eq!(s.protocol_options, ["_pq_.x"]);
        let Ok(Packet::Startup(s)) = parse(&startup(196_610, &[("user", "u")])) else {
            panic!()
        };
        assert_eq!(s.minor, 2);
    }

    #[test]
    fn malformed_packets_are_refused_with_a_reason() {
        assert_eq!(
            parse(&startup(131_072, &[("user", "u")])),
            Err(StartupError::Version { major: 2, minor: 0 })
        );
        assert!(matches!(
            parse(&startup(196_608, &[("database", "app")])),
            Err(StartupError::Malformed(_))
        ));
        let mut torn = startup(196_608, &[("user", "u")]);
        torn.truncate(torn.len() - 2);
        assert!(matches!(parse(&torn), Err(StartupError::Malformed(_))));
        assert!(matches!(parse(&[1, 2]), Err(StartupError::Malformed(_))));
        let cancel = [CANCEL_REQUEST.to_be_bytes(), 7i32.to_be_bytes()].concat();
        assert!(matches!(parse(&cancel), Err(StartupError::Malformed(_))));
    }
}
