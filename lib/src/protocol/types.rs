//! PostgreSQL types on the wire: a built-in type is its OID alone; any other type (enums, domains,
//! composites, arrays of them) carries its name, schema and kind, so the client can build the same
//! `postgres_types::Type` that tokio-postgres would have built, and derived `ToSql`/`FromSql`
//! implementations keep working.

use bytes::{BufMut, BytesMut};
use postgres_types::{Field, Kind, Type};

use super::codec::{put_count16, put_str, Reader};
use super::FrameError;

const BUILTIN: u8 = 0;
const SIMPLE: u8 = 1;
const ENUM: u8 = 2;
const PSEUDO: u8 = 3;
const ARRAY: u8 = 4;
const RANGE: u8 = 5;
const MULTIRANGE: u8 = 6;
const DOMAIN: u8 = 7;
const COMPOSITE: u8 = 8;

/// Custom types nest (an array of a domain over a composite…); a peer cannot make the decoder
/// recurse deeper than this.
const MAX_DEPTH: usize = 8;

pub(crate) fn put_type(buf: &mut BytesMut, ty: &Type) {
    if Type::from_oid(ty.oid()).is_some() {
        buf.put_u8(BUILTIN);
        buf.put_u32(ty.oid());
        return;
    }
    let (tag, inner) = match ty.kind() {
        Kind::Enum(_) => (ENUM, None),
        Kind::Pseudo => (PSEUDO, None),
        Kind::Array(t) => (ARRAY, Some(t)),
        Kind::Range(t) => (RANGE, Some(t)),
        Kind::Multirange(t) => (MULTIRANGE, Some(t)),
        Kind::Domain(t) => (DOMAIN, Some(t)),
        Kind::Composite(_) => (COMPOSITE, None),
        _ => (SIMPLE, None),
    };
    buf.put_u8(tag);
    buf.put_u32(ty.oid());
    put_str(buf, ty.name());
    put_str(buf, ty.schema());
    if let Some(inner) = inner {
        put_type(buf, inner);
    }
    match ty.kind() {
        Kind::Enum(labels) => {
            put_count16(buf, labels.len());
            for l in labels {
                put_str(buf, l);
            }
        }
        Kind::Composite(fields) => {
            put_count16(buf, fields.len());
            for f in fields {
                put_str(buf, f.name());
                put_type(buf, f.type_());
            }
        }
        _ => {}
    }
}

pub(crate) fn read_type(r: &mut Reader) -> Result<Type, FrameError> {
    read_type_at(r, 0)
}

fn read_type_at(r: &mut Reader, depth: usize) -> Result<Type, FrameError> {
    if depth > MAX_DEPTH {
        return Err(FrameError::Invalid("type nesting too deep"));
    }
    let tag = r.u8("type kind")?;
    let oid = r.u32("type oid")?;
    if tag == BUILTIN {
        return Type::from_oid(oid).ok_or(FrameError::Invalid("unknown built-in type oid"));
    }
    let name = r.string("type name")?;
    let schema = r.string("type schema")?;
    let kind = match tag {
        SIMPLE => Kind::Simple,
        PSEUDO => Kind::Pseudo,
        ENUM => {
            let n = r.count16(4, "enum labels")?;
            let labels = (0..n)
                .map(|_| r.string("enum label"))
                .collect::<Result<_, _>>()?;
            Kind::Enum(labels)
        }
        ARRAY => Kind::Array(read_type_at(r, depth + 1)?),
        RANGE => Kind::Range(read_type_at(r, depth + 1)?),
        MULTIRANGE => Kind::Multirange(read_type_at(r, depth + 1)?),
        DOMAIN => Kind::Domain(read_type_at(r, depth + 1)?),
        COMPOSITE => {
            let n = r.count16(9, "composite fields")?;
            let fields = (0..n)
                .map(|_| {
                    let name = r.string("field name")?;
                    Ok(Field::new(name, read_type_at(r, depth + 1)?))
                })
                .collect::<Result<_, FrameError>>()?;
            Kind::Composite(fields)
        }
        _ => return Err(FrameError::Invalid("unknown type kind")),
    };
    // A built-in OID sent with a full description (a peer whose type table is older than ours)
    // is the built-in type: keeping it as a custom `Type` would not equal `Type::from_oid`, and
    // would re-encode as a different descriptor.
    if let Some(builtin) = Type::from_oid(oid) {
        return Ok(builtin);
    }
    Ok(Type::new(name, oid, kind, schema))
}
