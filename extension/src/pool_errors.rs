//! What a client is told when no database connection could be had: each pool and connect
//! failure as a [`WireError`] with a SQLSTATE, naming the setting that governs it.

use deadpool::managed::{PoolError, TimeoutType};
use warmpool::protocol::{sqlstate, WireError};

use crate::config::Config;
use crate::credentials::Origin;
use crate::errors::{error_chain, from_backend, shutting_down, UNABLE_TO_CONNECT};
use crate::pool::ConnectError;

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
        ConnectError::FleetFull { .. } => WireError::extension(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "{e}; waited for a slot up to WARMPOOL_WAIT_TIMEOUT_MS (or WARMPOOL_RETRY_BUDGET_MS \
                 if longer)"
            ),
        ),
        ConnectError::Unavailable(_) => {
            WireError::extension(sqlstate::CONNECTION_FAILURE, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_codes_name_their_settings() {
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
