//! Result rows: values stay in PostgreSQL's binary format until `get` decodes them with
//! `postgres-types`, exactly as tokio-postgres does.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use postgres_types::FromSql;

use crate::error::{Error, Kind};
use crate::statement::Column;

/// One result row.
pub struct Row {
    columns: Arc<[Column]>,
    values: Vec<Option<Bytes>>,
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Row")
            .field("columns", &self.columns)
            .finish()
    }
}

impl Row {
    pub(crate) fn new(columns: Arc<[Column]>, values: Vec<Option<Bytes>>) -> Row {
        Row { columns, values }
    }

    /// The row's columns.
    pub fn columns(&self) -> &[Column] {
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

    /// Decodes a value by column index or name.
    ///
    /// # Panics
    /// If the column does not exist or the value cannot be decoded as `T`; see [`Row::try_get`].
    #[track_caller]
    pub fn get<'a, I, T>(&'a self, idx: I) -> T
    where
        I: RowIndex + fmt::Display,
        T: FromSql<'a>,
    {
        match self.try_get(&idx) {
            Ok(v) => v,
            Err(e) => panic!("error retrieving column {idx}: {e}"),
        }
    }

    /// Decodes a value by column index or name.
    pub fn try_get<'a, I, T>(&'a self, idx: I) -> Result<T, Error>
    where
        I: RowIndex + fmt::Display,
        T: FromSql<'a>,
    {
        let i = idx
            .__idx(&self.columns)
            .filter(|i| *i < self.values.len())
            .ok_or_else(|| Error::new(Kind::Column(idx.to_string()), None))?;
        let ty = self.columns[i].type_();
        if !T::accepts(ty) {
            return Err(Error::new(
                Kind::FromSql(i),
                Some(
                    format!(
                        "cannot convert between the Rust type `{}` and the Postgres type `{}`",
                        std::any::type_name::<T>(),
                        ty
                    )
                    .into(),
                ),
            ));
        }
        T::from_sql_nullable(ty, self.values[i].as_deref())
            .map_err(|e| Error::new(Kind::FromSql(i), Some(e)))
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A column index (`usize`) or name (`&str`).
pub trait RowIndex: sealed::Sealed {
    #[doc(hidden)]
    fn __idx(&self, columns: &[Column]) -> Option<usize>;
}

impl sealed::Sealed for usize {}
impl RowIndex for usize {
    fn __idx(&self, columns: &[Column]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
}

impl sealed::Sealed for str {}
impl RowIndex for str {
    fn __idx(&self, columns: &[Column]) -> Option<usize> {
        // As tokio-postgres: an exact match first, then a case-insensitive one.
        columns.iter().position(|c| c.name() == self).or_else(|| {
            columns
                .iter()
                .position(|c| c.name().eq_ignore_ascii_case(self))
        })
    }
}

impl<T: ?Sized + sealed::Sealed> sealed::Sealed for &T {}
impl<T: ?Sized + RowIndex> RowIndex for &T {
    fn __idx(&self, columns: &[Column]) -> Option<usize> {
        T::__idx(*self, columns)
    }
}
