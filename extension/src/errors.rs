//! What the extension tells a client when something fails: every failure becomes a [`WireError`]
//! with a SQLSTATE, so function code can branch on `code()` as it would with tokio-postgres.

use deadpool::managed::{PoolError, TimeoutType};
use warmpool::protocol::{sqlstate, FrameError, WireError};

use crate::backend;
use crate::config::Config;
use crate::credentials::Origin;
use crate::pool::ConnectError;

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

/// An error getting a connection from the pool, naming the setting that governs it.
pub fn from_pool(e: &PoolError<ConnectError>, config: &Config) -> WireError {
    match e {
        PoolError::Timeout(TimeoutType::Wait) => WireError::extension(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "no pooled connection became free within {} ms (WARMPOOL_WAIT_TIMEOUT_MS); all {} \
                 connections (WARMPOOL_MAX_SIZE) are in use",
                config.wait_timeout.as_millis(),
                config.max_size
            ),
        ),
        PoolError::Timeout(TimeoutType::Create) => WireError::extension(
            sqlstate::CONNECTION_TIMEOUT,
            format!(
                "connecting to the database took longer than {} ms (WARMPOOL_CONNECT_TIMEOUT_MS)",
                config.connect_timeout.as_millis()
            ),
        ),
        PoolError::Timeout(TimeoutType::Recycle) => WireError::extension(
            sqlstate::CONNECTION_TIMEOUT,
            format!(
                "checking a pooled connection took longer than {} ms (WARMPOOL_RESET_TIMEOUT_MS)",
                config.reset_timeout.as_millis()
            ),
        ),
        PoolError::Backend(e) => from_connect(e),
        PoolError::Closed => shutting_down(),
        PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
            WireError::extension(sqlstate::INTERNAL_ERROR, e.to_string())
        }
    }
}

/// A connection that could not be opened. An authentication failure keeps the server's
/// SQLSTATE and fields and gains a DETAIL naming the credentials provider and the secret's id;
/// the secret itself is never part of any error.
pub fn from_connect(e: &ConnectError) -> WireError {
    match e {
        ConnectError::Database(e) => match e.as_db() {
            Some(db) => db.to_wire(),
            None => WireError::extension(
                sqlstate::CONNECTION_FAILURE,
                format!("could not connect to the database: {}", error_chain(e)),
            ),
        },
        ConnectError::Auth {
            error,
            origin,
            retried,
        } => {
            let mut wire = from_backend(error);
            let mut detail = format!("warmpool connected with {origin}");
            if *retried {
                detail.push_str(
                    "; after the refusal it fetched the credentials again and retried once, and \
                     was refused again",
                );
            }
            detail.push('.');
            match origin {
                Origin::Static {
                    password_from: Some(variable),
                } => detail.push_str(&format!(
                    " Static credentials cannot be refreshed: check the password in {variable}."
                )),
                Origin::Static {
                    password_from: None,
                } => detail.push_str(
                    " No password is set: set PGPASSWORD, or put the password in DATABASE_URL.",
                ),
                Origin::SecretsManager { .. } | Origin::RdsIam { .. } => {}
            }
            match wire.fields.iter_mut().find(|(code, _)| *code == b'D') {
                Some((_, existing)) => {
                    existing.push('\n');
                    existing.push_str(&detail);
                }
                None => wire.fields.push((b'D', detail)),
            }
            wire
        }
        ConnectError::Credentials(e) => WireError::extension(
            UNABLE_TO_CONNECT,
            format!("could not obtain database credentials: {e}"),
        ),
        // A timeout has a code of its own, so a client tells it apart without reading the
        // message (warmpool's `Error::is_timeout`).
        ConnectError::Timeout { .. } => {
            WireError::extension(sqlstate::CONNECTION_TIMEOUT, e.to_string())
        }
        ConnectError::Unavailable(_) => {
            WireError::extension(sqlstate::CONNECTION_FAILURE, e.to_string())
        }
    }
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

/// The deadline passed and the database answered neither the COMMIT nor its cancel within the
/// budget: the transaction may have committed or not. Never reported as committed, and never
/// sent again. 08007 transaction_resolution_unknown is PostgreSQL's code for exactly this.
pub fn commit_unknown(budget: std::time::Duration) -> WireError {
    WireError::extension(
        sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
        format!(
            "the deadline the client set passed before the database answered COMMIT, and it did \
             not answer the cancel within {} ms (WARMPOOL_RESET_TIMEOUT_MS): whether the \
             transaction committed is unknown; its connection was closed",
            budget.as_millis()
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
        let config = Config::from_lookup(|k| match k {
            "PGHOST" => Some("h".into()),
            "PGUSER" => Some("u".into()),
            _ => None,
        })
        .unwrap();
        let e = from_pool(&PoolError::Timeout(TimeoutType::Wait), &config);
        assert_eq!(e.code(), "53300");
        assert!(
            e.message().contains("WARMPOOL_WAIT_TIMEOUT_MS"),
            "{}",
            e.message()
        );
        assert_eq!(from_pool(&PoolError::Closed, &config).code(), "57P01");
        let e = from_pool(&PoolError::Timeout(TimeoutType::Create), &config);
        assert_eq!(e.code(), "HYT01");
        let e = from_pool(&PoolError::Timeout(TimeoutType::Recycle), &config);
        assert_eq!(e.code(), "HYT01");
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
        let e = commit_unknown(budget);
        assert_eq!(e.code(), "08007");
        assert!(e.message().contains("unknown"), "{}", e.message());
        assert_eq!(e.source, warmpool::protocol::ErrorSource::Extension);
    }

    #[test]
    fn credential_failures_name_the_provider_and_secret() {
        use crate::credentials::{CredentialsError, ErrorKind};
        use std::time::Duration;
        let origin = Origin::SecretsManager {
            secret_id: "prod/app/db".into(),
        };
        let e = ConnectError::from(CredentialsError::new(
            origin,
            ErrorKind::Refused {
                status: 400,
                error_type: "AccessDeniedException".into(),
                message: "not authorized".into(),
            },
        ));
        let wire = from_connect(&e);
        assert_eq!(wire.code(), UNABLE_TO_CONNECT);
        assert!(
            wire.message()
                .contains("secrets-manager secret \"prod/app/db\""),
            "{wire}"
        );
        assert!(wire.message().contains("AccessDeniedException"), "{wire}");
        let e = ConnectError::Timeout {
            phase: "connecting to the database",
            after: Duration::from_millis(250),
        };
        let wire = from_connect(&e);
        assert_eq!(wire.code(), "HYT01");
        assert!(
            wire.message()
                .contains("250 ms (WARMPOOL_CONNECT_TIMEOUT_MS)"),
            "{wire}"
        );
    }
}
