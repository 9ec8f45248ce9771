//! Statements through PostgreSQL's simple query protocol with their rows returned as text, as
//! tokio-postgres' `simple_query`: [`crate::Client::simple_query`].

use std::sync::Arc;

use bytes::Bytes;

use crate::conn::Conn;
use crate::error::{Error, Kind};
use crate::ops;
use crate::protocol::{Begin, Request, Response};

/// A column of a [`SimpleQueryRow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleColumn {
    name: String,
}

impl SimpleColumn {
    /// The column's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One row of a simple query, its values as the text PostgreSQL sent.
#[derive(Debug, Clone)]
pub struct SimpleQueryRow {
    columns: Arc<[SimpleColumn]>,
    values: Vec<Option<Bytes>>,
}

impl SimpleQueryRow {
    /// The row's columns.
    pub fn columns(&self) -> &[SimpleColumn] {
        &self.columns
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// A value by column index or name; `None` for NULL.
    ///
    /// # Panics
    /// If the column does not exist or its text is not UTF-8; see [`SimpleQueryRow::try_get`].
    #[track_caller]
    pub fn get<I: SimpleIndex>(&self, idx: I) -> Option<&str> {
        match self.try_get(&idx) {
            Ok(v) => v,
            Err(e) => panic!("error retrieving column {}: {e}", idx.describe()),
        }
    }

    /// A value by column index or name; `None` for NULL.
    ///
    /// # Errors
    /// If the column does not exist, or its text is not UTF-8.
    pub fn try_get<I: SimpleIndex>(&self, idx: I) -> Result<Option<&str>, Error> {
        let i = idx
            .index(&self.columns)
            .filter(|i| *i < self.values.len())
            .ok_or_else(|| Error::new(Kind::Column(idx.describe()), None))?;
        match &self.values[i] {
            None => Ok(None),
            Some(v) => std::str::from_utf8(v)
                .map(Some)
                .map_err(|e| Error::new(Kind::FromSql(i), Some(Box::new(e)))),
        }
    }
}

/// A column index (`usize`) or name (`&str`) of a [`SimpleQueryRow`].
pub trait SimpleIndex {
    #[doc(hidden)]
    fn index(&self, columns: &[SimpleColumn]) -> Option<usize>;
    #[doc(hidden)]
    fn describe(&self) -> String;
}

impl SimpleIndex for usize {
    fn index(&self, columns: &[SimpleColumn]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
    fn describe(&self) -> String {
        self.to_string()
    }
}

impl SimpleIndex for str {
    fn index(&self, columns: &[SimpleColumn]) -> Option<usize> {
        // As tokio-postgres: an exact match first, then a case-insensitive one.
        columns.iter().position(|c| c.name == self).or_else(|| {
            columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(self))
        })
    }
    fn describe(&self) -> String {
        self.to_owned()
    }
}

impl<T: ?Sized + SimpleIndex> SimpleIndex for &T {
    fn index(&self, columns: &[SimpleColumn]) -> Option<usize> {
        T::index(*self, columns)
    }
    fn describe(&self) -> String {
        T::describe(*self)
    }
}

/// What a simple query returns, in order, as tokio-postgres' `SimpleQueryMessage`: for each
/// statement, its columns (if it returns rows) and its rows, then its completion.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SimpleQueryMessage {
    /// A row.
    Row(SimpleQueryRow),
    /// A statement finished; the number of rows it returned or affected.
    CommandComplete(u64),
    /// The columns of the rows that follow.
    RowDescription(Arc<[SimpleColumn]>),
}

/// Runs `sql` as a SimpleQuery request and collects its answer, as tokio-postgres'
/// `simple_query` does: for a result too large to hold, use [`crate::Client::query_raw`].
pub(crate) async fn run(
    conn: &mut Conn,
    begin: &mut Option<Begin>,
    sql: &str,
) -> Result<Vec<SimpleQueryMessage>, Error> {
    let begin_error = ops::send(conn, begin, &[Request::SimpleQuery(sql.to_owned())]).await?;
    let result = read(conn).await;
    match begin_error {
        Some(e) => Err(e),
        None => result,
    }
}

async fn read(conn: &mut Conn) -> Result<Vec<SimpleQueryMessage>, Error> {
    let mut messages = Vec::new();
    let mut columns: Arc<[SimpleColumn]> = Arc::new([]);
    loop {
        match conn.recv().await? {
            Response::Columns(names) => {
                columns = names
                    .into_iter()
                    .map(|name| SimpleColumn { name })
                    .collect();
                messages.push(SimpleQueryMessage::RowDescription(columns.clone()));
            }
            Response::Rows(rows) => messages.extend(rows.into_iter().map(|r| {
                SimpleQueryMessage::Row(SimpleQueryRow {
                    columns: columns.clone(),
                    values: r.values,
                })
            })),
            Response::Complete(n) => messages.push(SimpleQueryMessage::CommandComplete(n)),
            Response::Ok => return Ok(messages),
            Response::Error(e) => return Err(conn.error(e)),
            other => return Err(conn.unexpected(&other)),
        }
    }
}
