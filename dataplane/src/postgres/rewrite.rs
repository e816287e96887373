//! DataRow rewriting for inline masking, and the type knowledge it needs.
//!
//! The masking engine decides what a value becomes; this module only re-encodes a DataRow with
//! some values replaced or nulled, recomputing every length so the client sees a well-formed
//! message. It also says which type OIDs carry text a detector may rewrite: a masked string in
//! an `int4` or a binary-format column would corrupt the client's decoding, so only text-like
//! types in text format are eligible. It does not choose columns or detect values.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use super::backend::{DataRow, FieldDescription};
use super::error::PgError;
use super::limits::Limits;
use super::reply::framed;

/// Type OIDs whose text representation is free text (safe to replace with other text).
pub mod oid {
    /// `"char"`.
    pub const CHAR: u32 = 18;
    /// `name`.
    pub const NAME: u32 = 19;
    /// `text`.
    pub const TEXT: u32 = 25;
    /// `json`.
    pub const JSON: u32 = 114;
    /// `xml`.
    pub const XML: u32 = 142;
    /// `bpchar` (`char(n)`).
    pub const BPCHAR: u32 = 1042;
    /// `varchar`.
    pub const VARCHAR: u32 = 1043;
    /// `jsonb`.
    pub const JSONB: u32 = 3802;
    /// `unknown` (untyped literals).
    pub const UNKNOWN: u32 = 705;
}

/// Whether values of this type, in text format, may be replaced by arbitrary text. Numbers,
/// dates, booleans, UUIDs and arrays are not: a replacement would not parse on the client.
pub fn is_text_like(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::CHAR
            | oid::NAME
            | oid::TEXT
            | oid::JSON
            | oid::XML
            | oid::BPCHAR
            | oid::VARCHAR
            | oid::JSONB
            | oid::UNKNOWN
    )
}

/// Whether a described column may be rewritten: text-like type and text format.
pub fn is_rewritable(field: &FieldDescription) -> bool {
    field.format == 0 && is_text_like(field.type_oid)
}

/// What happens to one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellEdit<'a> {
    /// Send the value unchanged.
    Keep,
    /// Send SQL NULL.
    Null,
    /// Send these bytes instead.
    Replace(Cow<'a, [u8]>),
}

/// What a rewrite did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewriteStats {
    /// Values replaced or nulled.
    pub changed: usize,
}

/// Appends `row` to `out` as a DataRow, asking `edit(column, value)` for each value. The new
/// message's length is checked against `limits.max_message_len`, since a replacement can be
/// longer than what it replaces; on error `out` is left as it was.
pub fn rewrite_data_row<'v, F>(
    row: &'v DataRow,
    limits: &Limits,
    out: &mut BytesMut,
    mut edit: F,
) -> Result<RewriteStats, PgError>
where
    F: FnMut(usize, Option<&'v [u8]>) -> CellEdit<'v>,
{
    let start = out.len();
    let mut stats = RewriteStats::default();
    let mut values = 0usize;
    framed(out, b'D', |b| {
        b.put_u16(row.column_count);
        for (column, value) in row.values_ref().enumerate() {
            values = values.saturating_add(1);
            let edited = edit(column, value);
            let new_value: Option<&[u8]> = match &edited {
                CellEdit::Keep => value,
                CellEdit::Null => None,
                CellEdit::Replace(v) => Some(v.as_ref()),
            };
            if !matches!(edited, CellEdit::Keep) {
                stats.changed = stats.changed.saturating_add(1);
            }
            match new_value {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                    b.put_slice(v);
                }
            }
        }
    });
    let len = out.len().saturating_sub(start).saturating_sub(1);
    if values != usize::from(row.column_count) {
        out.truncate(start);
        return Err(PgError::internal("DataRow changed after validation"));
    }
    if len > limits.max_message_len || len > i32::MAX as usize {
        out.truncate(start);
        return Err(PgError::internal(format!(
            "rewritten DataRow of {len} bytes exceeds the limit of {} bytes",
            limits.max_message_len
        )));
    }
    Ok(stats)
}

/// Column name, type and format per column of a RowDescription: what column rules match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Column label.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
    /// Whether values may be rewritten.
    pub rewritable: bool,
}

/// Summarises a RowDescription for the masking engine.
pub fn columns(fields: &[FieldDescription]) -> Vec<ColumnInfo> {
    fields
        .iter()
        .map(|f| ColumnInfo {
            name: String::from_utf8_lossy(&f.name).into_owned(),
            type_oid: f.type_oid,
            format: f.format,
            rewritable: is_rewritable(f),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::postgres::backend::{BackendMessage, decode_message};

    fn row(values: &[Option<&[u8]>]) -> BytesMut {
        let mut buf = BytesMut::new();
        framed(&mut buf, b'D', |b| {
            b.put_u16(u16::try_from(values.len()).unwrap());
            for v in values {
                match v {
                    None => b.put_i32(-1),
                    Some(v) => {
                        b.put_i32(i32::try_from(v.len()).unwrap());
                        b.put_slice(v);
                    }
                }
            }
        });
        buf
    }

    #[test]
    fn rewrite_changes_lengths_and_decodes_back() {
        let limits = Limits::default();
        let mut input = row(&[Some(b"1"), Some(b"ann@example.com"), None]);
        let frame = decode_message(&mut input, &limits).unwrap().unwrap();
        let BackendMessage::DataRow(data) = frame.message else {
            panic!("not a DataRow")
        };
        let mut out = BytesMut::new();
        let stats = rewrite_data_row(&data, &limits, &mut out, |col, _| match col {
            1 => CellEdit::Replace(Cow::Borrowed(b"****")),
            0 => CellEdit::Null,
            _ => CellEdit::Keep,
        })
        .unwrap();
        assert_eq!(stats.changed, 2);
        let frame = decode_message(&mut out, &limits).unwrap().unwrap();
        let BackendMessage::DataRow(data) = frame.message else {
            panic!("not a DataRow")
        };
        let values: Vec<_> = data.values().collect();
        assert_eq!(
            values,
            vec![None, Some(bytes::Bytes::from_static(b"****")), None]
        );
        assert!(out.is_empty());
    }

    #[test]
    fn rewrite_over_the_limit_is_refused_and_leaves_output_alone() {
        let limits = Limits::with_max_message_len(64);
        let mut input = row(&[Some(b"x")]);
        let frame = decode_message(&mut input, &limits).unwrap().unwrap();
        let BackendMessage::DataRow(data) = frame.message else {
            panic!("not a DataRow")
        };
        let mut out = BytesMut::from(&b"keep"[..]);
        let big = vec![b'a'; 100];
        let err = rewrite_data_row(&data, &limits, &mut out, |_, _| {
            CellEdit::Replace(Cow::Owned(big.clone()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"));
        assert_eq!(&out[..], b"keep");
    }

    #[test]
    fn only_text_like_text_format_columns_are_rewritable() {
        let field = |type_oid, format| FieldDescription {
            name: bytes::Bytes::from_static(b"c"),
            table_oid: 0,
            column_attr: 0,
            type_oid,
            type_size: -1,
            type_modifier: -1,
            format,
        };
        assert!(is_rewritable(&field(oid::TEXT, 0)));
        assert!(is_rewritable(&field(oid::VARCHAR, 0)));
        assert!(!is_rewritable(&field(oid::TEXT, 1)));
        assert!(!is_rewritable(&field(23, 0)));
    }
}
