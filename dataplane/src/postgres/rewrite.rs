//! DataRow rewriting for inline masking, and the type knowledge it needs.
//!
//! The masking engine decides what a value becomes; this module only re-encodes a DataRow with
//! some values replaced or nulled, recomputing every length so the client sees a well-formed
//! message. It also says which type OIDs carry text a detector may rewrite: a masked string in
//! an `int4` or a binary-format column would corrupt the client's decoding, so only text-like
//! types in text format are eligible, plus the few whose binary format is their text bytes. It does not choose columns or detect values.
//!
//! Binary COPY-out data ([`BinaryCopyRewriter`]) is re-encoded tuple by tuple in the same way:
//! the header passes unchanged, each field is offered to the caller, and lengths are rewritten,
//! so the client's binary decoder never sees a byte-level substitution.

use std::borrow::Cow;

use bytes::{Buf, BufMut, BytesMut};

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

/// Whether values of this type are sent in binary format as exactly their text bytes (the
/// server's `textsend`, `namesend`, `bpcharsend`, `varcharsend`, `unknownsend`, `json_send`).
/// Not `jsonb` (a version byte first), `xml` (re-encoded) or `"char"` (one raw byte).
pub fn binary_is_text(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::NAME | oid::TEXT | oid::JSON | oid::BPCHAR | oid::VARCHAR | oid::UNKNOWN
    )
}

/// Whether a described column may be rewritten: a text-like type in text format, or a type
/// whose binary format is its text (libpq clients ask for binary results, psycopg's
/// `binary=True` for instance, and would otherwise get NULL for every masked value).
pub fn is_rewritable(field: &FieldDescription) -> bool {
    match field.format {
        0 => is_text_like(field.type_oid),
        1 => binary_is_text(field.type_oid),
        _ => false,
    }
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

/// Appends a FunctionCallResponse carrying `value` (None: SQL NULL). A masked value can be
/// longer than the original, so the length is checked as for a DataRow; on error `out` is
/// left as it was.
pub fn function_call_response(
    value: Option<&[u8]>,
    limits: &Limits,
    out: &mut BytesMut,
) -> Result<(), PgError> {
    let len = value.map_or(0, <[u8]>::len).saturating_add(8);
    if len > limits.max_message_len || len > i32::MAX as usize {
        return Err(PgError::internal(format!(
            "rewritten FunctionCallResponse of {len} bytes exceeds the limit of {} bytes",
            limits.max_message_len
        )));
    }
    framed(out, b'V', |b| match value {
        None => b.put_i32(-1),
        Some(v) => {
            b.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
            b.put_slice(v);
        }
    });
    Ok(())
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

/// The first 11 bytes of a binary COPY stream.
pub const BINARY_COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Re-encodes a binary COPY-out stream (CopyData payloads) tuple by tuple, asking the caller
/// what each non-NULL field becomes. The server sends one tuple per CopyData, and so does this
/// rewriter, which keeps clients that decode one tuple per message (psycopg) working; a tuple
/// split across CopyData messages waits for its end, bounded by `Limits::max_message_len`.
#[derive(Debug, Default)]
pub struct BinaryCopyRewriter {
    carry: BytesMut,
    header_done: bool,
    ended: bool,
    fields: Vec<Option<(usize, usize)>>,
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn be_i16(buf: &[u8], at: usize) -> Option<i16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(i16::from_be_bytes(b.try_into().ok()?))
}

impl BinaryCopyRewriter {
    /// A rewriter at the start of a binary COPY-out stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes one CopyData payload and appends a CopyData message with every tuple it
    /// completed (rewritten) to `out`; returns how many values `edit` changed. An error is the
    /// upstream's: a stream that is not binary COPY, or a tuple over the message limit.
    pub fn push<F>(
        &mut self,
        data: &[u8],
        limits: &Limits,
        out: &mut BytesMut,
        mut edit: F,
    ) -> Result<usize, PgError>
    where
        F: FnMut(usize, &[u8]) -> CellEdit<'static>,
    {
        self.carry.extend_from_slice(data);
        let buf = &self.carry[..];
        let mut body = BytesMut::new();
        let mut pos = 0usize;
        let mut changed = 0usize;
        if !self.header_done {
            let Some(ext) = be_u32(buf, 15) else {
                return self.check_carry(limits).map(|()| 0);
            };
            let header_len = 19usize.saturating_add(ext as usize);
            if buf.get(..11) != Some(BINARY_COPY_SIGNATURE) {
                return Err(PgError::upstream("binary COPY data without its signature"));
            }
            let Some(header) = buf.get(..header_len) else {
                return self.check_carry(limits).map(|()| 0);
            };
            body.extend_from_slice(header);
            pos = header_len;
            self.header_done = true;
        }
        while pos < buf.len() {
            if self.ended {
                // Nothing follows the trailer in a well-formed stream; pass it on untouched.
                body.extend_from_slice(buf.get(pos..).unwrap_or_default());
                pos = buf.len();
                break;
            }
            let Some(count) = be_i16(buf, pos) else { break };
            if count == -1 {
                body.put_i16(-1);
                pos = pos.saturating_add(2);
                self.ended = true;
                continue;
            }
            let count = usize::try_from(count)
                .map_err(|_| PgError::upstream("negative field count in binary COPY data"))?;
            self.fields.clear();
            let mut at = pos.saturating_add(2);
            let mut complete = true;
            for _ in 0..count {
                let Some(len) = be_u32(buf, at) else {
                    complete = false;
                    break;
                };
                at = at.saturating_add(4);
                if len == u32::MAX {
                    self.fields.push(None);
                    continue;
                }
                let end = at.saturating_add(len as usize);
                if end > buf.len() {
                    complete = false;
                    break;
                }
                self.fields.push(Some((at, end)));
                at = end;
            }
            if !complete {
                break;
            }
            body.put_i16(i16::try_from(count).unwrap_or(i16::MAX));
            for (i, field) in self.fields.iter().enumerate() {
                let Some(value) = field.and_then(|(s, e)| buf.get(s..e)) else {
                    body.put_i32(-1);
                    continue;
                };
                let edited = edit(i, value);
                let new_value = match &edited {
                    CellEdit::Keep => Some(value),
                    CellEdit::Null => None,
                    CellEdit::Replace(v) => Some(v.as_ref()),
                };
                if !matches!(edited, CellEdit::Keep) {
                    changed = changed.saturating_add(1);
                }
                match new_value {
                    None => body.put_i32(-1),
                    Some(v) => {
                        body.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                        body.put_slice(v);
                    }
                }
            }
            pos = at;
        }
        self.carry.advance(pos);
        self.check_carry(limits)?;
        if body.len() > limits.max_message_len {
            return Err(PgError::internal(format!(
                "rewritten COPY data of {} bytes exceeds the limit of {} bytes",
                body.len(),
                limits.max_message_len
            )));
        }
        if !body.is_empty() {
            framed(out, b'd', |b| b.put_slice(&body));
        }
        Ok(changed)
    }

    fn check_carry(&self, limits: &Limits) -> Result<(), PgError> {
        if self.carry.len() > limits.max_message_len {
            return Err(PgError::upstream(format!(
                "a binary COPY tuple longer than {} bytes",
                limits.max_message_len
            )));
        }
        Ok(())
    }
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
        assert!(is_rewritable(&field(oid::TEXT, 1)));
        assert!(is_rewritable(&field(oid::VARCHAR, 1)));
        assert!(
            !is_rewritable(&field(oid::JSONB, 1)),
            "jsonb binary has a version byte"
        );
        assert!(!is_rewritable(&field(oid::CHAR, 1)));
        assert!(!is_rewritable(&field(23, 1)));
        assert!(!is_rewritable(&field(oid::TEXT, 2)));
        assert!(!is_rewritable(&field(23, 0)));
    }

    fn copy_tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&i16::try_from(fields.len()).unwrap().to_be_bytes());
        for f in fields {
            match f {
                None => t.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    t.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
                    t.extend_from_slice(v);
                }
            }
        }
        t
    }

    fn copy_header() -> Vec<u8> {
        let mut h = BINARY_COPY_SIGNATURE.to_vec();
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        h
    }

    /// The CopyData payloads of `out`, in order.
    fn copy_payloads(out: &BytesMut) -> Vec<Vec<u8>> {
        let mut buf = out.clone();
        let mut payloads = Vec::new();
        while let Some(f) = decode_message(&mut buf, &Limits::default()).unwrap() {
            match f.message {
                BackendMessage::CopyData(d) => payloads.push(d.to_vec()),
                other => panic!("not CopyData: {other:?}"),
            }
        }
        payloads
    }

    const SECRET: &[u8] = b"card 4111 1111 1111 1111";

    fn null_secrets(_: usize, v: &[u8]) -> CellEdit<'static> {
        if v == SECRET {
            CellEdit::Null
        } else {
            CellEdit::Keep
        }
    }

    #[test]
    fn binary_copy_keeps_one_tuple_per_message_and_rewrites_lengths() {
        let limits = Limits::default();
        let id = 7i32.to_be_bytes();
        let first = [copy_header(), copy_tuple(&[Some(&id), Some(SECRET), None])].concat();
        let second = copy_tuple(&[Some(&id), Some(b"plain"), Some(b"")]);
        let trailer = (-1i16).to_be_bytes().to_vec();
        let mut rw = BinaryCopyRewriter::new();
        let mut out = BytesMut::new();
        let mut changed = 0;
        for m in [&first, &second, &trailer] {
            changed += rw.push(m, &limits, &mut out, null_secrets).unwrap();
        }
        assert_eq!(changed, 1);
        let want_first = [copy_header(), copy_tuple(&[Some(&id), None, None])].concat();
        assert_eq!(copy_payloads(&out), vec![want_first, second, trailer]);
    }

    #[test]
    fn binary_copy_split_at_every_byte_gives_the_same_stream() {
        let limits = Limits::default();
        let id = 1i32.to_be_bytes();
        let stream = [
            copy_header(),
            copy_tuple(&[Some(&id), Some(SECRET)]),
            copy_tuple(&[None, Some(b"x")]),
            (-1i16).to_be_bytes().to_vec(),
        ]
        .concat();
        let want = [
            copy_header(),
            copy_tuple(&[Some(&id), None]),
            copy_tuple(&[None, Some(b"x")]),
            (-1i16).to_be_bytes().to_vec(),
        ]
        .concat();
        for split in 0..=stream.len() {
            let mut rw = BinaryCopyRewriter::new();
            let mut out = BytesMut::new();
            rw.push(&stream[..split], &limits, &mut out, null_secrets)
                .unwrap();
            rw.push(&stream[split..], &limits, &mut out, null_secrets)
                .unwrap();
            assert_eq!(copy_payloads(&out).concat(), want, "split at {split}");
        }
    }

    #[test]
    fn binary_copy_refuses_a_stream_without_signature_and_bounds_a_tuple() {
        let mut out = BytesMut::new();
        let mut rw = BinaryCopyRewriter::new();
        let bad = [b"NOTCOPY\n\xff\r\n\0".as_slice(), &[0; 8]].concat();
        assert!(
            rw.push(&bad, &Limits::default(), &mut out, null_secrets)
                .is_err()
        );
        let small = Limits {
            max_message_len: 64,
            ..Limits::default()
        };
        let mut rw = BinaryCopyRewriter::new();
        let mut huge = copy_header();
        huge.extend_from_slice(&1i16.to_be_bytes());
        huge.extend_from_slice(&1000i32.to_be_bytes());
        huge.extend_from_slice(&[b'x'; 100]);
        assert!(rw.push(&huge, &small, &mut out, null_secrets).is_err());
        assert!(out.is_empty());
    }

    proptest::proptest! {
        /// Whatever the upstream sends as binary COPY data, cut anywhere: no panic, and what
        /// reaches the client is whole CopyData messages.
        #[test]
        fn binary_copy_arbitrary_input_never_panics(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            cut in 0usize..400,
        ) {
            let limits = Limits::with_max_message_len(256);
            let stream = [copy_header(), tail].concat();
            let cut = cut.min(stream.len());
            let mut rw = BinaryCopyRewriter::new();
            let mut out = BytesMut::new();
            for part in [&stream[..cut], &stream[cut..]] {
                if rw.push(part, &limits, &mut out, null_secrets).is_err() {
                    break;
                }
            }
            let mut buf = out.clone();
            while let Some(f) = decode_message(&mut buf, &Limits::default()).unwrap() {
                proptest::prop_assert!(matches!(f.message, BackendMessage::CopyData(_)));
            }
            proptest::prop_assert!(buf.is_empty());
        }
    }
}
