//! Batches: several parameterised statements sent to the extension in one frame, which
//! pipelines them to PostgreSQL on one connection, optionally as one transaction.

use postgres_types::ToSql;

use crate::client::Client;
use crate::conn::Conn;
use crate::error::Error;
use crate::ops;
use crate::protocol::{
    sqlstate, Begin, Execute, FrameError, IsolationLevel, Param, Pipeline, Prepare, Request,
    Response, WireError,
};
use crate::row::Row;
use crate::statement::{Statement, ToStatement};

/// Statements to send together, built with [`Client::batch`].
///
/// ```no_run
/// # async fn f(client: &warmpool::Client) -> Result<(), warmpool::Error> {
/// let results = client
///     .batch()
///     .query("SELECT name FROM users WHERE id = $1", &[&1i64])
///     .execute("INSERT INTO audit (user_id) VALUES ($1)", &[&1i64])
///     .transaction(true)
///     .run()
///     .await?;
/// let name: &str = results[0].rows().expect("ran")[0].get(0);
/// # let _ = name;
/// # Ok(())
/// # }
/// ```
#[must_use = "a batch does nothing until it is run"]
pub struct Batch<'a> {
    client: &'a Client,
    transaction: Option<Begin>,
    items: Vec<Item<'a>>,
}

struct Item<'a> {
    sql: &'a str,
    statement: Option<&'a Statement>,
    params: &'a [&'a (dyn ToSql + Sync)],
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Parameters stay out of Debug output: they may be secrets.
        f.debug_struct("Batch")
            .field("transaction", &self.transaction)
            .field("statements", &self.items.len())
            .finish_non_exhaustive()
    }
}

/// What one statement of a batch did.
#[derive(Debug)]
pub enum BatchResult {
    /// The statement ran (and, in a transactional batch, the transaction committed): the rows
    /// it returned, none for a statement without results, and the number of rows it returned
    /// or affected.
    Done {
        /// The rows returned.
        rows: Vec<Row>,
        /// Rows returned or affected, as PostgreSQL's command tag counts them.
        rows_affected: u64,
    },
    /// The statement failed.
    Failed(Error),
    /// The statement ran, but another statement of its transactional batch failed, so its
    /// effects were rolled back.
    RolledBack,
    /// The statement was not run: another statement of its transactional batch failed first.
    NotRun,
}

impl BatchResult {
    /// The rows, if the statement ran and took effect.
    pub fn rows(&self) -> Option<&[Row]> {
        match self {
            BatchResult::Done { rows, .. } => Some(rows),
            _ => None,
        }
    }

    /// The rows returned or affected, if the statement ran and took effect.
    pub fn rows_affected(&self) -> Option<u64> {
        match self {
            BatchResult::Done { rows_affected, .. } => Some(*rows_affected),
            _ => None,
        }
    }

    /// The statement's own error, if it failed.
    pub fn error(&self) -> Option<&Error> {
        match self {
            BatchResult::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the statement ran and took effect.
    pub fn is_done(&self) -> bool {
        matches!(self, BatchResult::Done { .. })
    }
}

impl<'a> Batch<'a> {
    pub(crate) fn new(client: &'a Client) -> Batch<'a> {
        Batch {
            client,
            transaction: None,
            items: Vec::new(),
        }
    }

    /// Adds a statement whose rows are wanted.
    pub fn query<T>(mut self, statement: &'a T, params: &'a [&'a (dyn ToSql + Sync)]) -> Self
    where
        T: ?Sized + ToStatement,
    {
        self.items.push(Item {
            sql: statement.__sql(),
            statement: statement.__statement(),
            params,
        });
        self
    }

    /// Adds a statement whose affected-row count is wanted. The same as [`Batch::query`]: the
    /// result holds both.
    pub fn execute<T>(self, statement: &'a T, params: &'a [&'a (dyn ToSql + Sync)]) -> Self
    where
        T: ?Sized + ToStatement,
    {
        self.query(statement, params)
    }

    /// Runs the statements as one transaction (all take effect or none), or each on its own
    /// (the default), where a failure does not stop the statements after it.
    pub fn transaction(mut self, transaction: bool) -> Self {
        self.transaction = transaction.then(|| self.transaction.unwrap_or_default());
        self
    }

    /// Runs the statements as one transaction with this isolation level.
    pub fn isolation_level(mut self, level: IsolationLevel) -> Self {
        self.transaction
            .get_or_insert_with(Begin::default)
            .isolation = level;
        self
    }

    /// Runs the statements as one read-only (or read-write) transaction.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.transaction
            .get_or_insert_with(Begin::default)
            .read_only = Some(read_only);
        self
    }

    /// The number of statements.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch has no statements.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sends the batch in one frame and returns one result per statement, in order.
    ///
    /// Statements this client has not seen are described first (one round trip for all of
    /// them), so their parameters can be encoded. A parameter that cannot be encoded for its
    /// statement fails that statement without sending it; in a transactional batch, nothing is
    /// sent at all and the other statements are [`BatchResult::NotRun`].
    ///
    /// `Err` means the batch as a whole failed: the extension could not be reached, the batch
    /// is larger than the frame limit (nothing was sent), no database connection was free, or
    /// a transactional batch's COMMIT failed (then nothing took effect, unless the connection
    /// was lost during the COMMIT, when the outcome is unknown as for any COMMIT). A
    /// transactional batch the database did not answer by the deadline of
    /// [`crate::Client::with_deadline`] fails with 08007 (transaction_resolution_unknown): it
    /// may or may not have committed.
    pub async fn run(self) -> Result<Vec<BatchResult>, Error> {
        if self.items.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.client.take_conn().await?;
        let result = self.run_on(&mut conn).await;
        self.client.put_conn(conn);
        result
    }

    async fn run_on(&self, conn: &mut Conn) -> Result<Vec<BatchResult>, Error> {
        let statements = self.describe(conn).await?;
        // Each statement, ready to send, or the error that stops it.
        let slots: Vec<Result<Execute, Error>> = self
            .items
            .iter()
            .zip(&statements)
            .map(|(item, statement)| {
                let statement = statement.as_ref().map_err(clone_error)?;
                let params = ops::encode_params(statement, item.params)?;
                let execute = execute_request(statement, params);
                execute.check_content().map_err(Error::from_wire)?;
                Ok(execute)
            })
            .collect::<Vec<_>>();
        let transactional = self.transaction.is_some();
        if transactional && slots.iter().any(Result::is_err) {
            return Ok(slots
                .into_iter()
                .map(|s| match s {
                    Ok(_) => BatchResult::NotRun,
                    Err(e) => BatchResult::Failed(e),
                })
                .collect());
        }
        let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(slots.len());
        let mut sent = Vec::new();
        let mut requests = Vec::new();
        for (i, slot) in slots.into_iter().enumerate() {
            match slot {
                Ok(request) => {
                    sent.push(i);
                    requests.push(request);
                    results.push(None);
                }
                Err(e) => results.push(Some(BatchResult::Failed(e))),
            }
        }
        if !requests.is_empty() {
            let count = requests.len();
            let pipeline = Request::Pipeline(Pipeline {
                transaction: self.transaction,
                statements: requests,
            });
            pipeline.check_content().map_err(Error::from_wire)?;
            conn.queue_frame(&pipeline)
                .map_err(|e| too_large(e, count))?;
            conn.flush().await?;
            for &i in &sent {
                let statement = statements[i]
                    .as_ref()
                    .expect("sent statements were described");
                results[i] = Some(read_one(conn, statement).await?);
            }
            match conn.recv().await? {
                Response::Ok => {}
                Response::Error(e) => {
                    let e = conn.error(e);
                    let failed = results
                        .iter()
                        .any(|r| matches!(r, Some(BatchResult::Failed(_))));
                    // 08007: the transaction's outcome is unknown, so no statement of it may be
                    // reported rolled back.
                    let unknown = e.code().is_some_and(|c| {
                        c.code() == crate::protocol::sqlstate::TRANSACTION_RESOLUTION_UNKNOWN
                    });
                    if !transactional || !failed || unknown {
                        return Err(e);
                    }
                    for r in &mut results {
                        if matches!(r, Some(BatchResult::Done { .. })) {
                            *r = Some(BatchResult::RolledBack);
                        }
                    }
                }
                other => return Err(conn.unexpected(&other)),
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every statement has a result"))
            .collect())
    }

    /// The description of each statement: given, cached, or asked for (all unknown statements
    /// in one round trip). A statement the server refuses to describe keeps its error.
    async fn describe(&self, conn: &mut Conn) -> Result<Vec<Result<Statement, Error>>, Error> {
        let mut known: Vec<Option<Statement>> = self
            .items
            .iter()
            .map(|item| {
                item.statement
                    .cloned()
                    .or_else(|| self.client.cached(item.sql, &[]))
            })
            .collect();
        let mut unknown: Vec<&str> = Vec::new();
        for (item, k) in self.items.iter().zip(&known) {
            if k.is_none() && !unknown.contains(&item.sql) {
                unknown.push(item.sql);
            }
        }
        let mut described: Vec<Result<Statement, Error>> = Vec::with_capacity(unknown.len());
        if !unknown.is_empty() {
            // A statement PostgreSQL cannot receive fails alone, and is not sent.
            let mut refused = Vec::with_capacity(unknown.len());
            for sql in &unknown {
                let prepare = Request::Prepare(Prepare {
                    sql: (*sql).to_owned(),
                    types: Vec::new(),
                });
                match prepare.check_content() {
                    Ok(()) => {
                        conn.queue(&prepare)?;
                        refused.push(None);
                    }
                    Err(e) => refused.push(Some(Error::from_wire(e))),
                }
            }
            if refused.iter().any(Option::is_none) {
                conn.flush().await?;
            }
            for (sql, refused) in unknown.iter().zip(refused) {
                let d = match refused {
                    Some(e) => Err(e),
                    None => ops::read_prepared(conn, sql, Vec::new()).await,
                };
                if let Ok(s) = &d {
                    self.client.remember(s);
                }
                described.push(d);
            }
        }
        Ok(self
            .items
            .iter()
            .zip(known.iter_mut())
            .map(|(item, k)| match k.take() {
                Some(s) => Ok(s),
                None => {
                    let at = unknown
                        .iter()
                        .position(|u| *u == item.sql)
                        .expect("unknown statements were described");
                    described[at].as_ref().cloned().map_err(clone_error)
                }
            })
            .collect())
    }
}

fn execute_request(statement: &Statement, params: Vec<Param>) -> Execute {
    Execute {
        sql: statement.sql().to_owned(),
        types: statement.declared().to_vec(),
        params,
    }
}

/// Reads one statement's answer: rows then Complete, an Error, or NotRun.
async fn read_one(conn: &mut Conn, statement: &Statement) -> Result<BatchResult, Error> {
    let mut rows = Vec::new();
    loop {
        match conn.recv().await? {
            Response::Rows(batch) => {
                let shared = statement.shared_columns();
                rows.extend(
                    batch
                        .into_iter()
                        .map(|r| Row::new(shared.clone(), r.values)),
                );
            }
            Response::Complete(n) => {
                return Ok(BatchResult::Done {
                    rows,
                    rows_affected: n,
                })
            }
            Response::Error(e) => return Ok(BatchResult::Failed(conn.error(e))),
            Response::NotRun => return Ok(BatchResult::NotRun),
            other => return Err(conn.unexpected(&other)),
        }
    }
}

/// The same statement may appear several times in a batch, and each gets its own copy of the
/// error that stopped it.
fn clone_error(e: &Error) -> Error {
    e.duplicate()
}

fn too_large(e: FrameError, statements: usize) -> Error {
    match e {
        FrameError::TooLarge { size, limit } => Error::from_wire(WireError::extension(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "a batch of {statements} statements takes {size} bytes, over the frame limit of \
                 {limit} bytes that the extension accepts (WARMPOOL_MAX_FRAME_BYTES); nothing was \
                 sent: split it into smaller batches"
            ),
        )),
        other => Error::from_wire(WireError::extension(other.sqlstate(), other.to_string())),
    }
}
