//! Statements, as the client knows them: SQL text plus the description the extension returned.

use std::sync::Arc;

use postgres_types::Type;

/// A result column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    name: String,
    type_: Type,
}

impl Column {
    pub(crate) fn new(name: String, type_: Type) -> Column {
        Column { name, type_ }
    }

    /// The column's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The column's type.
    pub fn type_(&self) -> &Type {
        &self.type_
    }
}

/// A described statement. It is identified by its SQL text, not by a name on one server
/// connection, so any of the extension's pooled connections can run it.
#[derive(Debug, Clone)]
pub struct Statement(Arc<StatementInner>);

#[derive(Debug)]
struct StatementInner {
    sql: String,
    declared: Vec<u32>,
    params: Vec<Type>,
    columns: Arc<[Column]>,
}

impl Statement {
    pub(crate) fn new(
        sql: String,
        declared: Vec<u32>,
        params: Vec<Type>,
        columns: Vec<Column>,
    ) -> Statement {
        Statement(Arc::new(StatementInner {
            sql,
            declared,
            params,
            columns: columns.into(),
        }))
    }

    /// The statement's SQL text.
    pub fn sql(&self) -> &str {
        &self.0.sql
    }

    /// The parameter types.
    pub fn params(&self) -> &[Type] {
        &self.0.params
    }

    /// The result columns.
    pub fn columns(&self) -> &[Column] {
        &self.0.columns
    }

    pub(crate) fn declared(&self) -> &[u32] {
        &self.0.declared
    }

    pub(crate) fn shared_columns(&self) -> Arc<[Column]> {
        self.0.columns.clone()
    }
}

mod sealed {
    pub trait Sealed {}
}

/// What `query` and friends accept: SQL text or a [`Statement`].
pub trait ToStatement: sealed::Sealed {
    #[doc(hidden)]
    fn __sql(&self) -> &str;
    #[doc(hidden)]
    fn __statement(&self) -> Option<&Statement>;
}

impl sealed::Sealed for str {}
impl ToStatement for str {
    fn __sql(&self) -> &str {
        self
    }
    fn __statement(&self) -> Option<&Statement> {
        None
    }
}

impl sealed::Sealed for String {}
impl ToStatement for String {
    fn __sql(&self) -> &str {
        self
    }
    fn __statement(&self) -> Option<&Statement> {
        None
    }
}

impl sealed::Sealed for Statement {}
impl ToStatement for Statement {
    fn __sql(&self) -> &str {
        self.sql()
    }
    fn __statement(&self) -> Option<&Statement> {
        Some(self)
    }
}
