//! What a well-formed request can still hold that PostgreSQL's own protocol cannot carry.
//!
//! A frame that decodes is not yet a request PostgreSQL can receive: SQL text travels in Parse
//! and Query messages as a NUL-terminated string, counts travel as 16-bit integers, and the
//! server reads no message larger than `PQ_LARGE_MESSAGE_LIMIT` (1 GiB less 2 bytes), closing the
//! connection on a longer one.
//! <https://www.postgresql.org/docs/current/protocol-message-types.html> and
//! <https://www.postgresql.org/docs/current/protocol-message-formats.html>.
//! tokio-postgres refuses such a message only while encoding it, with an error that looks like a
//! lost connection. So the client checks each request before it queues it and the extension
//! checks each one as it arrives: bad input is the caller's error, answered with a SQLSTATE that
//! says so, and never reaches a database connection.

use super::{sqlstate, Execute, Request, StateRequest, WireError};

/// The largest message body PostgreSQL reads for Parse, Bind and Query (`PQ_LARGE_MESSAGE_LIMIT`
/// in `src/include/libpq/libpq.h`: `MaxAllocSize - 1`, counting the 4-byte length itself).
pub const MAX_MESSAGE: usize = 0x3fff_fffe - 4;

/// The most items a 16-bit count in PostgreSQL's protocol (and in this one) can announce.
pub const MAX_COUNT: usize = u16::MAX as usize;

/// Room for what the extension adds to a statement's message besides the client's content:
/// statement and portal names, format codes, and one result format per column (at most 1664,
/// `MaxTupleAttributeNumber`, at 2 bytes each).
const MESSAGE_OVERHEAD: usize = 8 * 1024;

/// Checks that SQL text can be sent to PostgreSQL: it holds no NUL byte and fits one message.
pub fn check_sql(sql: &str) -> Result<(), WireError> {
    check_sql_within(sql, MAX_MESSAGE)
}

fn check_sql_within(sql: &str, max_message: usize) -> Result<(), WireError> {
    if let Some(at) = sql.bytes().position(|b| b == 0) {
        return Err(WireError::extension(
            sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
            format!(
                "the SQL text holds a NUL byte (0x00) at byte {at}: PostgreSQL receives SQL as a \
                 NUL-terminated string, so it cannot hold one; pass such a value as a parameter"
            ),
        ));
    }
    if sql.len().saturating_add(MESSAGE_OVERHEAD) > max_message {
        return Err(too_large(format!(
            "the SQL text of {} bytes is longer than PostgreSQL reads in one message ({} bytes)",
            sql.len(),
            max_message
        )));
    }
    Ok(())
}

fn too_large(message: String) -> WireError {
    WireError::extension(sqlstate::PROGRAM_LIMIT_EXCEEDED, message)
}

fn check_count(n: usize, what: &str) -> Result<(), WireError> {
    if n > MAX_COUNT {
        return Err(too_large(format!(
            "{n} {what} are more than the protocol's limit of {MAX_COUNT}"
        )));
    }
    Ok(())
}

fn check_types(types: &[u32]) -> Result<(), WireError> {
    check_count(types.len(), "parameter types")
}

impl Execute {
    /// Checks that PostgreSQL can receive this statement, as [`Request::check_content`] does
    /// for a request. A Pipeline's statements are checked one at a time with this, since each
    /// gets its own answer.
    pub fn check_content(&self) -> Result<(), WireError> {
        check_execute(self, MAX_MESSAGE)
    }
}

fn check_execute(e: &Execute, max_message: usize) -> Result<(), WireError> {
    check_sql_within(&e.sql, max_message)?;
    check_types(&e.types)?;
    check_count(e.params.len(), "parameters")?;
    // Bind carries each value with a 4-byte length and a 2-byte format code.
    let bind = e.params.iter().fold(MESSAGE_OVERHEAD, |n, p| {
        n.saturating_add(6)
            .saturating_add(p.value.as_ref().map_or(0, |v| v.len()))
    });
    if bind > max_message {
        return Err(too_large(format!(
            "the parameters take {bind} bytes, more than PostgreSQL reads in one message ({} \
             bytes)",
            max_message
        )));
    }
    Ok(())
}

impl Request {
    /// Checks that PostgreSQL can receive what this request carries (see the module docs):
    /// `Err` is the error to answer the request with, 22021 for a NUL byte in SQL text and 54000
    /// for a count or a size beyond the protocol's limits. Requests that carry no SQL pass, and
    /// so does a Pipeline whose statement count fits: each of its statements gets its own answer,
    /// so each is checked on its own with [`Execute::check_content`].
    pub fn check_content(&self) -> Result<(), WireError> {
        self.check_content_within(MAX_MESSAGE)
    }

    pub(crate) fn check_content_within(&self, max_message: usize) -> Result<(), WireError> {
        match self {
            Request::Prepare(p) => {
                check_sql_within(&p.sql, max_message)?;
                check_types(&p.types)
            }
            Request::Execute(e) => check_execute(e, max_message),
            Request::Batch(sql) | Request::SimpleQuery(sql) => check_sql_within(sql, max_message),
            // The name's own check (it also refuses a NUL byte) answers with invalid_name.
            Request::Savepoint(s) => crate::protocol::Savepoint::check_name(&s.name)
                .map_err(|why| WireError::extension(sqlstate::INVALID_NAME, why)),
            Request::Pipeline(p) => check_count(p.statements.len(), "pipeline statements"),
            Request::State(StateRequest::CachedExecute(c)) => {
                check_execute(&c.execute, max_message)
            }
            Request::Hello(_)
            | Request::Begin(_)
            | Request::Commit
            | Request::Rollback
            | Request::Ping
            | Request::Terminate
            | Request::State(_)
            | Request::Invocation(_)
            | Request::Stats
            | Request::Deadline(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::{CachedExecute, Param, Pipeline, Prepare};

    fn execute(sql: &str, params: Vec<Param>) -> Execute {
        Execute {
            sql: sql.into(),
            types: Vec::new(),
            params,
        }
    }

    #[test]
    fn a_nul_in_sql_is_refused_with_22021_in_every_request_that_carries_sql() {
        let sql = "SELECT 'a\0b'";
        let requests = [
            Request::Prepare(Prepare {
                sql: sql.into(),
                types: Vec::new(),
            }),
            Request::Execute(execute(sql, Vec::new())),
            Request::Batch(sql.into()),
            Request::State(StateRequest::CachedExecute(CachedExecute {
                ttl_ms: 1,
                swr_ms: 0,
                execute: execute(sql, Vec::new()),
            })),
        ];
        for r in requests {
            let e = r.check_content().expect_err("a NUL byte is refused");
            assert_eq!(e.code(), "22021", "{r:?}");
            assert!(e.message().contains("at byte 9"), "{e}");
            assert!(
                !e.message().contains("SELECT"),
                "the SQL is not quoted: {e}"
            );
        }
        // A Pipeline's statements are answered one by one, so they are checked one by one.
        let statements = vec![execute("SELECT 1", Vec::new()), execute(sql, Vec::new())];
        assert_eq!(statements[0].check_content(), Ok(()));
        assert_eq!(statements[1].check_content().unwrap_err().code(), "22021");
        let pipeline = Request::Pipeline(Pipeline {
            transaction: None,
            statements,
        });
        assert_eq!(pipeline.check_content(), Ok(()));
    }

    #[test]
    fn requests_postgresql_can_carry_pass() {
        let value = Some(Bytes::from_static(b"a\0b"));
        let requests = [
            Request::Execute(execute("SELECT $1", vec![Param { oid: 17, value }])),
            Request::Batch("SELECT 'ü'; SELECT 2".into()),
            Request::Ping,
            Request::State(StateRequest::Get { key: "k\0".into() }),
        ];
        for r in requests {
            assert_eq!(r.check_content(), Ok(()), "{r:?}");
        }
    }

    #[test]
    fn counts_beyond_sixteen_bits_are_refused_before_encoding() {
        let types = Request::Prepare(Prepare {
            sql: "SELECT 1".into(),
            types: vec![0; MAX_COUNT + 1],
        });
        let e = types.check_content().unwrap_err();
        assert_eq!(e.code(), "54000");
        assert!(e.message().contains("65536 parameter types"), "{e}");
        let params = vec![
            Param {
                oid: 23,
                value: None
            };
            MAX_COUNT + 1
        ];
        let e = Request::Execute(execute("SELECT 1", params))
            .check_content()
            .unwrap_err();
        assert_eq!(e.code(), "54000");
        let statements = vec![execute("SELECT 1", Vec::new()); MAX_COUNT + 1];
        let pipeline = Request::Pipeline(Pipeline {
            transaction: None,
            statements,
        });
        assert_eq!(pipeline.check_content().unwrap_err().code(), "54000");
    }

    #[test]
    fn a_message_longer_than_postgresql_reads_is_refused() {
        let limit = MESSAGE_OVERHEAD + 100;
        let long_sql = Request::Batch("x".repeat(101));
        assert_eq!(
            long_sql.check_content_within(limit).unwrap_err().code(),
            "54000"
        );
        assert_eq!(
            Request::Batch("x".repeat(100)).check_content_within(limit),
            Ok(())
        );
        let param = |n: usize| Param {
            oid: 17,
            value: Some(Bytes::from(vec![1u8; n])),
        };
        let big = Request::Execute(execute("SELECT $1, $2", vec![param(50), param(39)]));
        assert_eq!(big.check_content_within(limit).unwrap_err().code(), "54000");
        let fits = Request::Execute(execute("SELECT $1, $2", vec![param(50), param(38)]));
        assert_eq!(fits.check_content_within(limit), Ok(()));
    }
}
