//! Requests on a backend connection, written as messages and read back one answer at a time,
//! so a caller streams rows as they arrive.
//!
//! Every request ends with a Sync (or is a simple Query), whose ReadyForQuery closes its answer;
//! an error makes the server skip to that Sync, and the readers here read up to it before they
//! return the error, so the connection is ready for the next request either way.
//! <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY>

use std::sync::Arc;

use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use postgres_types::Type;
use warmpool::protocol::Column;

use super::{Backend, Error};

/// Result columns are asked for in binary, all of them: one format code applies to every
/// column, so no column count is needed before the statement runs.
const BINARY: i16 = 1;

/// A statement as the server described it.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The server-side name, or `None` for the unnamed statement, which is parsed again with
    /// every execution and keeps nothing on the server.
    name: Option<Arc<str>>,
    /// The SQL, kept for the unnamed statement.
    sql: Arc<str>,
    params: Vec<Type>,
    columns: Vec<Column>,
}

impl Statement {
    /// The parameter types.
    pub fn params(&self) -> &[Type] {
        &self.params
    }

    /// The result columns.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The server-side name, for a named statement.
    pub fn name(&self) -> Option<&Arc<str>> {
        self.name.as_ref()
    }
}

/// A statement's parameter and column types as the server described them, by OID.
#[derive(Debug, Default)]
pub struct Described {
    params: Vec<u32>,
    columns: Vec<(String, u32)>,
}

/// One step of a statement's answer.
#[derive(Debug)]
pub enum Reply {
    /// A row, its values as the server sent them.
    Row(DataRowBody),
    /// The statement completed: the rows it affected or returned.
    Done(u64),
}

/// One step of a simple query's answer, statement by statement.
#[derive(Debug)]
pub enum Simple {
    /// The columns of the rows that follow.
    Columns(Vec<String>),
    /// A row, its values as text.
    Row(DataRowBody),
    /// A statement completed, with the rows it affected or returned.
    Complete(u64),
    /// Every statement has run.
    Done,
}

/// A parameter value as the client encoded it (binary), or NULL.
pub type Param<'a> = Option<&'a [u8]>;

impl Backend {
    /// Prepares `sql` with the declared parameter `types` (0 lets the server infer one) and
    /// describes it, in one round trip. `named` keeps it on the server under a name of this
    /// connection's; otherwise the unnamed statement is used and nothing is kept.
    pub async fn prepare(
        &mut self,
        named: bool,
        sql: &str,
        types: &[u32],
    ) -> Result<Statement, Error> {
        let name = self.write_prepare(named, sql, types)?;
        self.flush().await?;
        let described = self.read_description().await?;
        self.finish_prepare(name, sql, described).await
    }

    /// Writes the Parse, Describe and Sync of [`Backend::prepare`]; returns the name given.
    pub fn write_prepare(
        &mut self,
        named: bool,
        sql: &str,
        types: &[u32],
    ) -> Result<Option<Arc<str>>, Error> {
        let name = named.then(|| self.next_name());
        self.write_closes();
        let written = frontend::parse(
            name.as_deref().unwrap_or(""),
            sql,
            types.iter().copied(),
            self.buf(),
        )
        .and_then(|()| frontend::describe(b'S', name.as_deref().unwrap_or(""), self.buf()));
        if let Err(e) = written {
            self.discard_unsent();
            return Err(e.into());
        }
        self.write_sync();
        Ok(name)
    }

    /// Reads the answer to one [`Backend::write_prepare`]: the parameter and column type OIDs.
    pub async fn read_description(&mut self) -> Result<Described, Error> {
        let mut described = Described::default();
        loop {
            match self.recv_in_unit().await? {
                Message::ParseComplete | Message::CloseComplete | Message::NoData => {}
                Message::ParameterDescription(body) => {
                    use fallible_iterator::FallibleIterator;
                    described.params = body.parameters().collect::<Vec<u32>>()?;
                }
                Message::RowDescription(body) => {
                    use fallible_iterator::FallibleIterator;
                    described.columns = body
                        .fields()
                        .map(|f| Ok((f.name().to_owned(), f.type_oid())))
                        .collect::<Vec<_>>()?;
                }
                Message::ReadyForQuery(_) => return Ok(described),
                _ => return Err(self.unexpected("the answer to Parse and Describe")),
            }
        }
    }

    /// The statement a description makes, its custom types looked up; nothing else may be
    /// waiting to be read.
    pub async fn finish_prepare(
        &mut self,
        name: Option<Arc<str>>,
        sql: &str,
        described: Described,
    ) -> Result<Statement, Error> {
        let mut params = Vec::with_capacity(described.params.len());
        for oid in described.params {
            params.push(self.resolve_type(oid).await?);
        }
        let mut columns = Vec::with_capacity(described.columns.len());
        for (name, oid) in described.columns {
            columns.push(Column {
                name,
                type_: self.resolve_type(oid).await?,
            });
        }
        Ok(Statement {
            name,
            sql: sql.into(),
            params,
            columns,
        })
    }

    /// Closes a named statement on the server with the next request.
    pub fn forget_statement(&mut self, statement: &Statement) {
        if let Some(name) = &statement.name {
            self.close_later(name.clone());
        }
    }

    /// Writes `sql` (a BEGIN, a COMMIT) without a Sync: it runs in the same request as what is
    /// written next, so if it fails, the server skips the rest of the request instead of
    /// running it outside the transaction.
    pub fn write_command(&mut self, sql: &str) -> Result<(), Error> {
        self.write_closes();
        frontend::parse("", sql, [], self.buf())?;
        bind(self, "", std::iter::empty(), &[], &[])?;
        frontend::execute("", 0, self.buf())?;
        Ok(())
    }

    /// Writes one execution of `statement` with `params` (binary), rows in binary; the unnamed
    /// statement is parsed again first, with the parameter types it was described with.
    pub fn write_execute<'p>(
        &mut self,
        statement: &Statement,
        params: impl ExactSizeIterator<Item = Param<'p>> + Clone,
    ) -> Result<(), Error> {
        self.write_execute_as(statement, params, &[BINARY], &[BINARY])
    }

    /// [`Backend::write_execute`] with the formats as the caller asks them, passed to Bind as
    /// they are: per parameter and per result column, text (0) or binary (1), or one code for
    /// all. <https://www.postgresql.org/docs/current/protocol-message-formats.html#PROTOCOL-MESSAGE-FORMATS-BIND>
    pub fn write_execute_as<'p>(
        &mut self,
        statement: &Statement,
        params: impl ExactSizeIterator<Item = Param<'p>> + Clone,
        param_formats: &[i16],
        result_formats: &[i16],
    ) -> Result<(), Error> {
        self.write_closes();
        if self.log_statements {
            self.log_statement(statement, params.clone());
        }
        let name = match &statement.name {
            Some(name) => name.as_ref(),
            None => {
                frontend::parse(
                    "",
                    &statement.sql,
                    statement.params.iter().map(Type::oid),
                    self.buf(),
                )?;
                ""
            }
        };
        bind(self, name, params, param_formats, result_formats)?;
        frontend::execute("", 0, self.buf())?;
        Ok(())
    }

    /// `WARMPOOL_LOG_STATEMENTS`: the statement and its parameter values, at debug level. The
    /// values go out binary-encoded: text types read as themselves, others as their bytes.
    fn log_statement<'p>(&self, statement: &Statement, params: impl Iterator<Item = Param<'p>>) {
        const SHOWN: usize = 256;
        let values: Vec<Option<String>> = params
            .map(|p| p.map(|v| String::from_utf8_lossy(&v[..v.len().min(SHOWN)]).into_owned()))
            .collect();
        tracing::debug!(
            statement = %statement.sql,
            name = statement.name.as_deref().unwrap_or(""),
            params = ?values,
            "executing statement"
        );
    }

    /// Ends a request: its answer closes with a ReadyForQuery.
    pub fn write_sync(&mut self) {
        frontend::sync(self.buf());
        self.expect_ready();
    }

    /// Writes a simple Query: any number of statements, rows in text.
    pub fn write_query(&mut self, sql: &str) -> Result<(), Error> {
        self.write_closes();
        frontend::query(sql, self.buf())?;
        self.expect_ready();
        Ok(())
    }

    /// Reads the answer to a command written by [`Backend::write_command`]; on an error the
    /// rest of the request is read too.
    pub async fn read_command(&mut self) -> Result<(), Error> {
        loop {
            match self.recv_in_unit().await? {
                Message::ParseComplete | Message::BindComplete | Message::CloseComplete => {}
                Message::CommandComplete(_) => return Ok(()),
                _ => return Err(self.unexpected("the answer to BEGIN")),
            }
        }
    }

    /// Sends `sql` as a simple Query, after `begin` if a transaction starts with it: BEGIN
    /// without a Sync, the Query, then a Sync, so that a failed BEGIN makes the server skip the
    /// query instead of running it outside the transaction. BEGIN's answer is read here; the
    /// query's follows with [`Backend::read_simple`], and after a BEGIN the Sync's with
    /// [`Backend::finish_unit`].
    pub async fn start_query(&mut self, begin: Option<&str>, sql: &str) -> Result<(), Error> {
        let written = match begin {
            Some(b) => self.write_command(b),
            None => Ok(()),
        }
        .and_then(|()| self.write_query(sql));
        if let Err(e) = written {
            self.discard_unsent();
            return Err(e);
        }
        if begin.is_some() {
            self.write_sync();
        }
        self.flush().await?;
        if begin.is_some() {
            self.read_begin_before_query().await?;
        }
        Ok(())
    }

    /// Reads the answer to a BEGIN written ahead of a simple Query and a Sync: when the BEGIN
    /// fails, the server skips the Query, and only the Sync is answered.
    async fn read_begin_before_query(&mut self) -> Result<(), Error> {
        loop {
            match self.recv().await {
                Ok(Message::ParseComplete | Message::BindComplete | Message::CloseComplete) => {}
                Ok(Message::CommandComplete(_)) => return Ok(()),
                Ok(_) => return Err(self.unexpected("the answer to BEGIN")),
                Err(Error::Db(db)) if !self.is_broken() => {
                    self.unsynced = self.unsynced.saturating_sub(1);
                    self.finish_unit().await?;
                    return Err(Error::Db(db));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next row of an execution, or its completion once its request's ReadyForQuery is
    /// read: for a request of one statement.
    pub async fn read_row(&mut self) -> Result<Reply, Error> {
        loop {
            match self.recv_in_unit().await? {
                Message::ParseComplete | Message::BindComplete | Message::CloseComplete => {}
                Message::DataRow(row) => return Ok(Reply::Row(self.checked(row)?)),
                Message::CommandComplete(body) => {
                    let rows = affected(body.tag()?);
                    self.finish_unit().await?;
                    return Ok(Reply::Done(rows));
                }
                Message::EmptyQueryResponse | Message::PortalSuspended => {
                    self.finish_unit().await?;
                    return Ok(Reply::Done(0));
                }
                Message::CopyInResponse(_) => self.refuse_copy_in(true).await?,
                Message::CopyOutResponse(_) => return Err(self.refuse_copy_out().await),
                _ => return Err(self.unexpected("the answer to Execute")),
            }
        }
    }

    /// The next row of one execution among several in a request, or its completion; a server
    /// error is returned as it comes, the rest of the request left to read.
    pub async fn read_step(&mut self) -> Result<Reply, Error> {
        loop {
            match self.recv().await? {
                Message::ParseComplete | Message::BindComplete | Message::CloseComplete => {}
                Message::DataRow(row) => return Ok(Reply::Row(self.checked(row)?)),
                Message::CommandComplete(body) => return Ok(Reply::Done(affected(body.tag()?))),
                Message::EmptyQueryResponse | Message::PortalSuspended => {
                    return Ok(Reply::Done(0))
                }
                // COPY among other statements would swallow them as copy data: the connection
                // cannot be followed any further.
                Message::CopyInResponse(_) | Message::CopyOutResponse(_) => {
                    self.broken = true;
                    return Err(Error::Unsupported(
                        "COPY is not available through warmpool's socket; its connection was \
                         closed",
                    ));
                }
                _ => return Err(self.unexpected("the answer to Execute")),
            }
        }
    }

    /// Reads past the rest of one statement's rows, among several in a request.
    pub async fn skip_rows(&mut self) -> Result<(), Error> {
        loop {
            if let Reply::Done(_) = self.read_step().await? {
                return Ok(());
            }
        }
    }

    /// The next step of a simple query's answer.
    pub async fn read_simple(&mut self) -> Result<Simple, Error> {
        loop {
            match self.recv_in_unit().await? {
                Message::RowDescription(body) => {
                    use fallible_iterator::FallibleIterator;
                    let names = body
                        .fields()
                        .map(|f| Ok(f.name().to_owned()))
                        .collect::<Vec<_>>()?;
                    return Ok(Simple::Columns(names));
                }
                Message::DataRow(row) => return Ok(Simple::Row(self.checked(row)?)),
                Message::CommandComplete(body) => {
                    return Ok(Simple::Complete(affected(body.tag()?)))
                }
                Message::EmptyQueryResponse => return Ok(Simple::Complete(0)),
                Message::ReadyForQuery(_) => return Ok(Simple::Done),
                // After a BEGIN, the Sync that followed the query was swallowed by copy-in mode.
                Message::CopyInResponse(_) => {
                    let resync = self.unsynced > 1;
                    self.refuse_copy_in(resync).await?
                }
                Message::CopyOutResponse(_) => return Err(self.refuse_copy_out().await),
                _ => return Err(self.unexpected("the answer to a simple query")),
            }
        }
    }

    /// Runs `sql` through the simple query protocol and discards any rows.
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.write_query(sql)?;
        self.flush().await?;
        loop {
            if let Simple::Done = self.read_simple().await? {
                return Ok(());
            }
        }
    }

    /// A run-time setting's value, by `SHOW` (its name is written into the statement: a
    /// caller passes a constant).
    pub async fn show(&mut self, name: &'static str) -> Result<String, Error> {
        let rows = self.text_rows(&format!("SHOW {name}")).await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten())
            .unwrap_or_default())
    }

    /// One round trip that proves the server answers: an empty query, which it does not parse.
    pub async fn check(&mut self) -> Result<(), Error> {
        self.batch_execute("").await
    }

    /// Reads the rest of the current request's answer, up to its ReadyForQuery.
    pub(crate) async fn finish_unit(&mut self) -> Result<(), Error> {
        loop {
            match self.recv().await {
                Ok(Message::ReadyForQuery(_)) => return Ok(()),
                Ok(_) => {}
                Err(Error::Db(_)) if !self.is_broken() => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next message of a request's answer; a server error is returned once the answer has
    /// been read to its end, so the connection is ready for the next request.
    async fn recv_in_unit(&mut self) -> Result<Message, Error> {
        match self.recv().await {
            Err(Error::Db(db)) if !self.is_broken() => {
                self.finish_unit().await?;
                Err(Error::Db(db))
            }
            other => other,
        }
    }

    /// A row whose lengths add up; any other is a broken server, and the connection is not
    /// used again.
    fn checked(&mut self, row: DataRowBody) -> Result<DataRowBody, Error> {
        if values_well_formed(column_count(&row), row.buffer()) {
            Ok(row)
        } else {
            Err(self.fail(malformed_row()))
        }
    }

    fn unexpected(&mut self, what: &str) -> Error {
        // The answer cannot be followed any further: the connection is not reused.
        self.broken = true;
        Error::protocol(format!("unexpected message in {what}"))
    }

    /// COPY FROM STDIN has no data to read here: CopyFail ends it with an error, and a Sync
    /// after it, because the server ignores the one sent before while in copy-in mode.
    /// <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-COPY>
    async fn refuse_copy_in(&mut self, sync: bool) -> Result<(), Error> {
        frontend::copy_fail(
            "COPY FROM STDIN is not available through warmpool's socket; send the rows as \
             INSERT statements or a batch",
            self.buf(),
        )?;
        if sync {
            frontend::sync(self.buf());
        }
        self.flush().await
    }

    /// COPY TO STDOUT: its data is read and dropped up to the end of the request, and the
    /// statement reported as refused.
    async fn refuse_copy_out(&mut self) -> Error {
        loop {
            match self.recv().await {
                Ok(Message::ReadyForQuery(_)) => break,
                Ok(_) | Err(Error::Db(_)) if !self.is_broken() => {}
                Ok(_) | Err(_) => return Error::Closed,
            }
        }
        Error::Unsupported(
            "COPY TO STDOUT is not available through warmpool's socket; run a SELECT",
        )
    }
}

fn bind<'p>(
    backend: &mut Backend,
    statement: &str,
    params: impl ExactSizeIterator<Item = Param<'p>>,
    param_formats: &[i16],
    result_formats: &[i16],
) -> Result<(), Error> {
    let result = frontend::bind(
        "",
        statement,
        param_formats.iter().copied(),
        params,
        |value, buf| match value {
            Some(v) => {
                buf.extend_from_slice(v);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        },
        result_formats.iter().copied(),
        backend.buf(),
    );
    match result {
        Ok(()) => Ok(()),
        Err(frontend::BindError::Conversion(e)) => Err(Error::protocol(e.to_string())),
        Err(frontend::BindError::Serialization(e)) => Err(Error::Io(e)),
    }
}

/// The row count at the end of a command tag (`INSERT 0 5`, `SELECT 3`); 0 for a command
/// without one.
fn affected(tag: &str) -> u64 {
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// How many columns `row` has.
pub fn column_count(row: &DataRowBody) -> u16 {
    use fallible_iterator::FallibleIterator;
    // The ranges' hint is the column count the row declares.
    u16::try_from(row.ranges().size_hint().0).unwrap_or(u16::MAX)
}

/// Whether a DataRow body (its column count, then its values) is exactly as long as its
/// values say.
pub(crate) fn row_is_well_formed(body: &[u8]) -> bool {
    match body.split_first_chunk::<2>() {
        Some((count, values)) => values_well_formed(u16::from_be_bytes(*count), values),
        None => false,
    }
}

/// Whether `values` holds exactly `count` values, each a length (-1 for NULL) and its bytes.
pub(crate) fn values_well_formed(count: u16, mut values: &[u8]) -> bool {
    for _ in 0..count {
        let Some((len, rest)) = values.split_first_chunk::<4>() else {
            return false;
        };
        values = match i32::from_be_bytes(*len) {
            -1 => rest,
            n => match usize::try_from(n).ok().and_then(|n| rest.get(n..)) {
                Some(rest) => rest,
                None => return false,
            },
        };
    }
    values.is_empty()
}

pub(crate) fn malformed_row() -> Error {
    Error::protocol("a DataRow whose value lengths do not match its size")
}

/// The values of a row, by column: `None` for NULL.
pub fn values(row: &DataRowBody) -> Values<'_> {
    use fallible_iterator::FallibleIterator;
    let ranges = row.ranges();
    Values {
        left: ranges.size_hint().0,
        ranges,
        buf: row.buffer(),
    }
}

/// The values of a row; see [`values`].
pub struct Values<'a> {
    ranges: postgres_protocol::message::backend::DataRowRanges<'a>,
    buf: &'a [u8],
    left: usize,
}

impl<'a> Iterator for Values<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        use fallible_iterator::FallibleIterator;
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The server's own framing: a malformed value could only come from a broken server,
        // and reads as NULL rather than shifting the columns after it.
        Some(match self.ranges.next() {
            Ok(Some(Some(r))) => self.buf.get(r),
            _ => None,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Values<'_> {}
