use std::fmt;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The declared body length is over the limit; nothing was allocated for it.
    TooLarge {
        /// Declared body length.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The tag names no frame this side accepts.
    UnknownTag(u8),
    /// The body ended before a field it declares.
    Truncated(&'static str),
    /// The body holds bytes after its last field.
    TrailingBytes {
        /// The frame's tag.
        tag: u8,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A field holds a value the protocol does not allow.
    Invalid(&'static str),
}

impl FrameError {
    /// The SQLSTATE an error frame carries for this failure.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => super::sqlstate::PROGRAM_LIMIT_EXCEEDED,
            _ => super::sqlstate::PROTOCOL_VIOLATION,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { size, limit } => write!(
                f,
                "frame of {size} bytes exceeds the limit of {limit} bytes (WARMPOOL_MAX_FRAME_BYTES)"
            ),
            FrameError::UnknownTag(tag) => write!(f, "unknown frame tag 0x{tag:02x}"),
            FrameError::Truncated(what) => write!(f, "frame truncated while reading {what}"),
            FrameError::TrailingBytes { tag, extra } => {
                write!(f, "frame 0x{tag:02x} has {extra} trailing bytes")
            }
            FrameError::Invalid(what) => write!(f, "invalid frame: {what}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Who raised an error carried by an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// PostgreSQL sent it as an ErrorResponse; every field is the server's.
    Database,
    /// The extension raised it (pool timeout, protocol violation, shutdown, unreachable database).
    Extension,
}

/// An error as it crosses the socket: the fields of PostgreSQL's ErrorResponse, keyed by the same
/// one-byte codes (`S`, `V`, `C`, `M`, `D`, `H`, `P`, `p`, `q`, `W`, `s`, `t`, `c`, `d`, `n`,
/// `F`, `L`, `R`), so nothing is lost between the server and the function.
/// <https://www.postgresql.org/docs/current/protocol-error-fields.html>
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// Who raised it.
    pub source: ErrorSource,
    /// Field code and value pairs, in the order received.
    pub fields: Vec<(u8, String)>,
}

impl WireError {
    /// An error raised by the extension itself.
    pub fn extension(code: &str, message: impl Into<String>) -> WireError {
        WireError {
            source: ErrorSource::Extension,
            fields: vec![
                (b'S', "ERROR".to_owned()),
                (b'V', "ERROR".to_owned()),
                (b'C', code.to_owned()),
                (b'M', message.into()),
            ],
        }
    }

    /// The value of one field, if present.
    pub fn field(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    /// The SQLSTATE code (`C`).
    pub fn code(&self) -> &str {
        self.field(b'C').unwrap_or(super::sqlstate::INTERNAL_ERROR)
    }

    /// The primary message (`M`).
    pub fn message(&self) -> &str {
        self.field(b'M').unwrap_or("")
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = self.field(b'S').unwrap_or("ERROR");
        write!(f, "{severity}: {} ({})", self.message(), self.code())
    }
}
