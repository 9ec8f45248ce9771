//! The request/response exchanges, shared by [`crate::Client`] and [`crate::Transaction`].
//!
//! A transaction's Begin is queued in front of its first request and flushed with it, so it
//! costs no round trip of its own; its answer is read first.

use bytes::BytesMut;
use postgres_types::{BorrowToSql, IsNull, ToSql, Type};

use crate::conn::Conn;
use crate::error::{Error, Kind};
use crate::protocol::{Begin, Execute, Param, Prepare, Request, Response};
use crate::row::Row;
use crate::statement::{Column, Statement};

/// Queues `begin` (if still pending) and `requests`, flushes, and reads Begin's answer. Returns
/// Begin's error, if any, for the caller to report once it has read its own answers.
pub(crate) async fn send(
    conn: &mut Conn,
    begin: &mut Option<Begin>,
    requests: &[Request],
) -> Result<Option<Error>, Error> {
    // Checked before Begin is queued: a refused request must leave the transaction's Begin
    // pending for the next one, not queued without a reader for its answer.
    for r in requests {
        r.check_content().map_err(Error::from_wire)?;
    }
    let pending = begin.take();
    if let Some(b) = pending {
        conn.queue(&Request::Begin(b))?;
    }
    for r in requests {
        conn.queue(r)?;
    }
    conn.flush().await?;
    if pending.is_none() {
        return Ok(None);
    }
    match conn.recv().await? {
        Response::Ok => Ok(None),
        Response::Error(e) => Ok(Some(conn.error(e))),
        other => Err(conn.unexpected(&other)),
    }
}

fn prepare_request(sql: &str, types: &[Type]) -> Request {
    Request::Prepare(Prepare {
        sql: sql.to_owned(),
        types: types.iter().map(Type::oid).collect(),
    })
}

pub(crate) async fn read_prepared(
    conn: &mut Conn,
    sql: &str,
    declared: Vec<u32>,
) -> Result<Statement, Error> {
    match conn.recv().await? {
        Response::PrepareOk(ok) => Ok(Statement::new(
            sql.to_owned(),
            declared,
            ok.params,
            ok.columns
                .into_iter()
                .map(|c| Column::new(c.name, c.type_))
                .collect(),
        )),
        Response::Error(e) => Err(conn.error(e)),
        other => Err(conn.unexpected(&other)),
    }
}

/// Describes a statement.
pub(crate) async fn prepare(
    conn: &mut Conn,
    begin: &mut Option<Begin>,
    sql: &str,
    types: &[Type],
) -> Result<Statement, Error> {
    let begin_error = send(conn, begin, &[prepare_request(sql, types)]).await?;
    let result = read_prepared(conn, sql, types.iter().map(Type::oid).collect()).await;
    match begin_error {
        Some(e) => Err(e),
        None => result,
    }
}

/// Encodes parameters in the binary format for the statement's parameter types.
pub(crate) fn encode_params(
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Param>, Error> {
    encode_params_iter(statement, params.iter().map(|p| *p as &dyn ToSql))
}

/// [`encode_params`] for any values that lend a `ToSql`, as tokio-postgres' `query_raw` takes.
pub(crate) fn encode_params_iter<P, I>(
    statement: &Statement,
    params: I,
) -> Result<Vec<Param>, Error>
where
    P: BorrowToSql,
    I: IntoIterator<Item = P>,
    I::IntoIter: ExactSizeIterator,
{
    let params = params.into_iter();
    let types = statement.params();
    if types.len() != params.len() {
        return Err(Error::new(
            Kind::Parameters {
                expected: types.len(),
                given: params.len(),
            },
            None,
        ));
    }
    let mut buf = BytesMut::new();
    params
        .zip(types)
        .enumerate()
        .map(|(i, (p, ty))| {
            let value = match p
                .borrow_to_sql()
                .to_sql_checked(ty, &mut buf)
                .map_err(|e| Error::new(Kind::ToSql(i), Some(e)))?
            {
                IsNull::Yes => None,
                IsNull::No => Some(buf.split().freeze()),
            };
            Ok(Param {
                oid: ty.oid(),
                value,
            })
        })
        .collect()
}

pub(crate) fn execute_request(statement: &Statement, params: Vec<Param>) -> Request {
    Request::Execute(Execute {
        sql: statement.sql().to_owned(),
        types: statement.declared().to_vec(),
        params,
    })
}

/// Reads an Execute's answer: rows, then Complete or Error.
pub(crate) async fn read_rows(
    conn: &mut Conn,
    columns: Option<&Statement>,
) -> Result<(Vec<Row>, u64), Error> {
    let mut rows = Vec::new();
    loop {
        match conn.recv().await? {
            Response::Rows(batch) => {
                let Some(statement) = columns else {
                    return Err(conn.unexpected(&Response::Rows(batch)));
                };
                let shared = statement.shared_columns();
                rows.extend(
                    batch
                        .into_iter()
                        .map(|r| Row::new(shared.clone(), r.values)),
                );
            }
            Response::Complete(n) => return Ok((rows, n)),
            Response::Error(e) => return Err(conn.error(e)),
            other => return Err(conn.unexpected(&other)),
        }
    }
}

/// Runs a described statement.
pub(crate) async fn execute(
    conn: &mut Conn,
    begin: &mut Option<Begin>,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(Vec<Row>, u64), Error> {
    let params = encode_params(statement, params)?;
    let begin_error = send(conn, begin, &[execute_request(statement, params)]).await?;
    let result = read_rows(conn, Some(statement)).await;
    match begin_error {
        Some(e) => Err(e),
        None => result,
    }
}

/// Describes and runs a statement without parameters in one round trip: Prepare and Execute go
/// out together. Returns the description for the cache, and the result.
pub(crate) async fn prepare_and_execute(
    conn: &mut Conn,
    begin: &mut Option<Begin>,
    sql: &str,
) -> Result<(Statement, Vec<Row>, u64), Error> {
    let execute = Request::Execute(Execute {
        sql: sql.to_owned(),
        types: Vec::new(),
        params: Vec::new(),
    });
    let begin_error = send(conn, begin, &[prepare_request(sql, &[]), execute]).await?;
    let prepared = read_prepared(conn, sql, Vec::new()).await;
    let rows = read_rows(conn, prepared.as_ref().ok()).await;
    if let Some(e) = begin_error {
        return Err(e);
    }
    let statement = prepared?;
    let (rows, n) = rows?;
    Ok((statement, rows, n))
}

/// Runs statements with the simple query protocol.
pub(crate) async fn batch(
    conn: &mut Conn,
    begin: &mut Option<Begin>,
    sql: &str,
) -> Result<(), Error> {
    request_ok(conn, begin, Request::Batch(sql.to_owned())).await
}

/// Sends a request answered by Ok, after the transaction's Begin if that is still pending.
pub(crate) async fn request_ok(
    conn: &mut Conn,
    begin: &mut Option<Begin>,
    request: Request,
) -> Result<(), Error> {
    let begin_error = send(conn, begin, &[request]).await?;
    let result = expect_ok(conn).await;
    match begin_error {
        Some(e) => Err(e),
        None => result,
    }
}

/// Sends a request answered by Ok.
pub(crate) async fn simple(conn: &mut Conn, request: Request) -> Result<(), Error> {
    conn.queue(&request)?;
    conn.flush().await?;
    expect_ok(conn).await
}

async fn expect_ok(conn: &mut Conn) -> Result<(), Error> {
    match conn.recv().await? {
        Response::Ok | Response::Pong => Ok(()),
        Response::Error(e) => Err(conn.error(e)),
        other => Err(conn.unexpected(&other)),
    }
}
