//! Types the server names by OID alone: a built-in type is known here; any other (an enum, a
//! domain, a composite, an array or range of one) is looked up in the catalog once per
//! connection, as tokio-postgres does, so the client can build the same `Type`.

use std::collections::HashMap;

use postgres_types::{Field, Kind, Type};

use super::query::Simple;
use super::{Backend, Error};

/// Types kept per connection; past this the cache starts over.
const MAX_TYPES: usize = 256;

/// Nesting a lookup follows (an array of a domain over a composite of ranges…).
const MAX_DEPTH: usize = 8;

/// The custom types a connection has looked up.
#[derive(Debug, Default)]
pub struct TypeCache(HashMap<u32, Type>);

impl Backend {
    /// The type with `oid`.
    pub async fn resolve_type(&mut self, oid: u32) -> Result<Type, Error> {
        if let Some(t) = Type::from_oid(oid) {
            return Ok(t);
        }
        self.lookup(oid, 0).await
    }

    fn lookup(
        &mut self,
        oid: u32,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Type, Error>> + Send + '_>> {
        Box::pin(async move {
            if let Some(t) = Type::from_oid(oid) {
                return Ok(t);
            }
            if let Some(t) = self.types.0.get(&oid) {
                return Ok(t.clone());
            }
            if depth > MAX_DEPTH {
                return Err(Error::protocol(format!("type {oid} nests too deeply")));
            }
            // The OID is a number: it is written into the statement as one.
            let rows = self
                .text_rows(&format!(
                    "SELECT t.typname, t.typtype, t.typelem, r.rngsubtype, t.typbasetype, \
                     n.nspname, t.typrelid \
                     FROM pg_catalog.pg_type t \
                     LEFT OUTER JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid \
                     INNER JOIN pg_catalog.pg_namespace n ON t.typnamespace = n.oid \
                     WHERE t.oid = {oid}"
                ))
                .await?;
            let Some(row) = rows.into_iter().next() else {
                return Err(Error::protocol(format!("type {oid} is not in pg_type")));
            };
            let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let number = |i: usize| text(i).parse::<u32>().unwrap_or(0);
            let (name, typtype, elem, subtype, base, schema, relid) = (
                text(0),
                text(1),
                number(2),
                number(3),
                number(4),
                text(5),
                number(6),
            );
            let kind = if typtype == "e" {
                let labels = self
                    .text_rows(&format!(
                        "SELECT enumlabel FROM pg_catalog.pg_enum WHERE enumtypid = {oid} \
                         ORDER BY enumsortorder"
                    ))
                    .await?;
                Kind::Enum(
                    labels
                        .into_iter()
                        .map(|r| r.into_iter().next().flatten().unwrap_or_default())
                        .collect(),
                )
            } else if typtype == "p" {
                Kind::Pseudo
            } else if base != 0 {
                Kind::Domain(self.lookup(base, depth + 1).await?)
            } else if elem != 0 {
                Kind::Array(self.lookup(elem, depth + 1).await?)
            } else if relid != 0 {
                let attributes = self
                    .text_rows(&format!(
                        "SELECT attname, atttypid FROM pg_catalog.pg_attribute \
                         WHERE attrelid = {relid} AND NOT attisdropped AND attnum > 0 \
                         ORDER BY attnum"
                    ))
                    .await?;
                let mut fields = Vec::with_capacity(attributes.len());
                for a in attributes {
                    let name = a.first().cloned().flatten().unwrap_or_default();
                    let oid = a
                        .get(1)
                        .cloned()
                        .flatten()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    fields.push(Field::new(name, self.lookup(oid, depth + 1).await?));
                }
                Kind::Composite(fields)
            } else if subtype != 0 {
                Kind::Range(self.lookup(subtype, depth + 1).await?)
            } else if typtype == "m" {
                let ranges = self
                    .text_rows(&format!(
                        "SELECT rngtypid FROM pg_catalog.pg_range WHERE rngmultitypid = {oid}"
                    ))
                    .await?;
                let range = ranges
                    .into_iter()
                    .next()
                    .and_then(|r| r.into_iter().next().flatten())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                Kind::Multirange(self.lookup(range, depth + 1).await?)
            } else {
                Kind::Simple
            };
            let ty = Type::new(name, oid, kind, schema);
            if self.types.0.len() >= MAX_TYPES {
                self.types.0.clear();
            }
            self.types.0.insert(oid, ty.clone());
            Ok(ty)
        })
    }

    /// The rows of a simple query (a catalog lookup, a `SHOW`), as text.
    pub(crate) async fn text_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        self.write_query(sql)?;
        self.flush().await?;
        let mut rows = Vec::new();
        loop {
            match self.read_simple().await? {
                Simple::Row(row) => rows.push(
                    super::query::values(&row)
                        .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                        .collect(),
                ),
                Simple::Done => return Ok(rows),
                Simple::Columns(_) | Simple::Complete(_) => {}
            }
        }
    }
}
