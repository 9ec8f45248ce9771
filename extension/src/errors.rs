//! What the extension tells a client when something fails: every failure becomes a [`WireError`]
//! with a SQLSTATE, so function code can branch on `code()` as it would with tokio-postgres.

use warmpool::protocol::{sqlstate, FrameError, WireError};

use crate::backend;

/// 08001 sqlclient_unable_to_establish_sqlconnection: libpq's code for a connection the client
/// side could not set up, here because its credentials could not be obtained.
pub const UNABLE_TO_CONNECT: &str = sqlstate::UNABLE_TO_CONNECT;

/// An error from a statement: the server's own error, every field kept, where there is one;
/// otherwise the connection failed (08006).
pub fn from_backend(e: &backend::Error) -> WireError {
    match e {
        backend::Error::Db(db) => db.to_wire(),
        backend::Error::Unsupported(what) => {
            WireError::extension(sqlstate::FEATURE_NOT_SUPPORTED, *what)
        }
        other => WireError::extension(
            sqlstate::CONNECTION_FAILURE,
            format!("the database connection failed: {other}"),
        ),
    }
}

/// Whether a statement error means the connection itself is no longer usable.
pub fn connection_lost(e: &backend::Error) -> bool {
    e.is_lost()
}

/// A result row too large for one frame: the statement ran, but its rows cannot be returned.
pub fn row_too_large(len: usize, max_frame: usize) -> WireError {
    WireError::extension(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!(
            "a result row of {len} bytes exceeds the frame limit of {max_frame} bytes \
             (WARMPOOL_MAX_FRAME_BYTES); the statement ran, but its rows cannot be returned"
        ),
    )
}

/// The error a session gets once shutdown has begun.
pub fn shutting_down() -> WireError {
    WireError::extension(
        sqlstate::ADMIN_SHUTDOWN,
        "the warmpool extension is shutting down",
    )
}

/// A frame that could not be decoded.
pub fn from_frame(e: &FrameError) -> WireError {
    WireError::extension(e.sqlstate(), e.to_string())
}

/// 57014 query_canceled, PostgreSQL's own code for a cancelled statement.
pub const QUERY_CANCELED: &str = sqlstate::QUERY_CANCELED;

/// A statement cancelled because the session's deadline passed.
pub fn deadline_cancelled() -> WireError {
    WireError::extension(
        QUERY_CANCELED,
        "the statement was cancelled at the deadline the client set for it (the invocation's \
         deadline); any transaction it was in has been rolled back",
    )
}

/// The deadline passed and the server did not confirm the cancel in time; the connection is
/// closed. Closing it ends any transaction the statement was in without a commit; a statement
/// outside one that the server has received but not yet run may still run when it resumes.
pub fn deadline_unconfirmed(budget: std::time::Duration) -> WireError {
    WireError::extension(
        QUERY_CANCELED,
        format!(
            "the statement was cancelled at the client's deadline, and the database did not \
             confirm within {} ms (WARMPOOL_RESET_TIMEOUT_MS); its connection was closed, so a \
             transaction it was in is rolled back, but a statement outside a transaction may \
             still take effect if the database received it",
            budget.as_millis()
        ),
    )
}

/// The deadline passed while the request waited for a database connection: nothing was sent.
pub fn deadline_before_connection() -> WireError {
    WireError::extension(
        QUERY_CANCELED,
        "the deadline the client set (the invocation's deadline) passed while the request \
         waited for a database connection; nothing was sent to the database",
    )
}

/// The deadline (or `WARMPOOL_COMMIT_TIMEOUT_MS`, named by `limit`) passed and the database
/// answered neither the COMMIT nor its cancel within the budget: the transaction may have
/// committed or not. Never reported as committed, and never sent again. 08007
/// transaction_resolution_unknown is PostgreSQL's code for exactly this.
pub fn commit_unknown(budget: std::time::Duration, limit: Option<&str>) -> WireError {
    let what = match limit {
        Some(setting) => format!("the COMMIT ran past {setting}"),
        None => "the deadline the client set passed before the database answered COMMIT".into(),
    };
    WireError::extension(
        sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
        format!(
            "{what}, and the database did not answer the cancel within {} ms \
             (WARMPOOL_RESET_TIMEOUT_MS): whether the transaction committed is unknown; its \
             connection was closed",
            budget.as_millis()
        ),
    )
}

/// `WARMPOOL_COMMIT_TIMEOUT_MS` passed and the COMMIT was cancelled before it committed:
/// PostgreSQL rolled the transaction back.
pub fn commit_timed_out(limit: std::time::Duration) -> WireError {
    WireError::extension(
        QUERY_CANCELED,
        format!(
            "the COMMIT did not finish within {} ms (WARMPOOL_COMMIT_TIMEOUT_MS) and was \
             cancelled; the transaction was rolled back",
            limit.as_millis()
        ),
    )
}

/// 57P05 idle_session_timeout, PostgreSQL's own code for the same decision.
pub const IDLE_SESSION_TIMEOUT: &str = sqlstate::IDLE_SESSION_TIMEOUT;

/// The session sent no whole frame within the idle session timeout.
pub fn idle_session(limit: Option<std::time::Duration>) -> WireError {
    WireError::extension(
        IDLE_SESSION_TIMEOUT,
        format!(
            "closing the session after {} ms without a request (WARMPOOL_IDLE_SESSION_TIMEOUT_MS)",
            limit.unwrap_or_default().as_millis()
        ),
    )
}

/// The session was idle with no transaction when every slot was in use, and a new session took
/// its slot. The client opens another session, as after the idle session timeout.
pub fn slot_taken(max_sessions: usize) -> WireError {
    WireError::extension(
        IDLE_SESSION_TIMEOUT,
        format!(
            "closing this idle session to make room for a new one: all {max_sessions} sessions \
             (WARMPOOL_MAX_SESSIONS) are in use"
        ),
    )
}

/// A protocol violation other than a malformed frame.
pub fn protocol(message: impl Into<String>) -> WireError {
    WireError::extension(sqlstate::PROTOCOL_VIOLATION, message)
}

/// An error and all its causes. tokio-postgres' Display omits the cause, and for TLS failures the
/// innermost cause (an unknown issuer, a name mismatch) is the one a user needs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_codes() {
        assert_eq!(shutting_down().code(), "57P01");
        assert_eq!(protocol("x").code(), "08P01");
        let too_large = FrameError::TooLarge { size: 10, limit: 5 };
        assert_eq!(from_frame(&too_large).code(), "54000");
        assert_eq!(from_frame(&FrameError::UnknownTag(0)).code(), "08P01");
    }

    #[test]
    fn deadline_codes() {
        let budget = std::time::Duration::from_millis(500);
        assert_eq!(deadline_cancelled().code(), "57014");
        assert_eq!(deadline_before_connection().code(), "57014");
        let e = deadline_unconfirmed(budget);
        assert_eq!(e.code(), "57014");
        assert!(
            e.message().contains("WARMPOOL_RESET_TIMEOUT_MS"),
            "{}",
            e.message()
        );
        // Never a word that could be read as a commit.
        let e = commit_unknown(budget, None);
        assert_eq!(e.code(), "08007");
        assert!(e.message().contains("unknown"), "{}", e.message());
        assert_eq!(e.source, warmpool::protocol::ErrorSource::Extension);
    }
}
