//! Decoding what a PostgreSQL server sends.
//!
//! [`decode_message`] is incremental over a `BytesMut` like the frontend decoder: `Ok(None)` is
//! "need more", lengths are checked against [`Limits`] before buffering, and every frame keeps
//! its raw bytes so the driver forwards unchanged what it does not rewrite. Bulky payloads
//! (DataRow values, notice fields) stay inside the frame and are walked on demand rather than
//! copied into vectors. This module does not interpret results (see `rewrite` and `statement`)
//! and does not authenticate (see `upstream_auth`).

use bytes::{Bytes, BytesMut};

use super::codec::{self, Reader};
use super::error::{PgError, quote};
use super::frontend::CancelKey;
use super::limits::{Limits, MAX_NOTICE_FIELDS, MAX_SASL_MECHANISMS, MAX_SMALL_MESSAGE};
use super::reply::TransactionStatus;

/// An authentication request from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Authentication succeeded.
    Ok,
    /// Send the password in clear.
    CleartextPassword,
    /// Send `md5(md5(password + user) + salt)`.
    Md5Password {
        /// The salt.
        salt: [u8; 4],
    },
    /// Start SASL with one of these mechanisms.
    Sasl {
        /// Mechanism names, e.g. `SCRAM-SHA-256`.
        mechanisms: Vec<Bytes>,
    },
    /// A SASL challenge.
    SaslContinue(Bytes),
    /// The SASL outcome (server signature).
    SaslFinal(Bytes),
    /// A method the gateway does not implement (Kerberos, GSS, SSPI, ...), by code.
    Unsupported(u32),
}

impl Authentication {
    /// A readable name for the method, for errors.
    pub fn method_name(&self) -> String {
        match self {
            Self::Ok => "ok".into(),
            Self::CleartextPassword => "password".into(),
            Self::Md5Password { .. } => "md5".into(),
            Self::Sasl { .. } | Self::SaslContinue(_) | Self::SaslFinal(_) => "sasl".into(),
            Self::Unsupported(2) => "kerberos v5".into(),
            Self::Unsupported(6) => "scm credential".into(),
            Self::Unsupported(7 | 8) => "gss".into(),
            Self::Unsupported(9) => "sspi".into(),
            Self::Unsupported(code) => format!("code {code}"),
        }
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    /// Column name as the query labels it.
    pub name: Bytes,
    /// OID of the source table, 0 when the column is computed.
    pub table_oid: u32,
    /// Attribute number in the source table, 0 when computed.
    pub column_attr: i16,
    /// Type OID.
    pub type_oid: u32,
    /// Type size (negative: variable).
    pub type_size: i16,
    /// Type modifier.
    pub type_modifier: i32,
    /// 0 for text, 1 for binary.
    pub format: i16,
}

/// The fields of an ErrorResponse or NoticeResponse, kept in the frame and read on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeFields(Bytes);

impl NoticeFields {
    /// All `(code, value)` pairs in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, Bytes)> + '_ {
        let mut r = Reader::new(self.0.clone());
        std::iter::from_fn(move || {
            let code = r.u8()?;
            if code == 0 {
                return None;
            }
            Some((code, r.cstr()?))
        })
    }

    /// One field by its code (`C` SQLSTATE, `M` message, `S` severity, `D` detail, ...).
    pub fn get(&self, code: u8) -> Option<Bytes> {
        self.iter().find(|(c, _)| *c == code).map(|(_, v)| v)
    }

    /// The SQLSTATE (`C`) as text, empty when absent.
    pub fn code(&self) -> String {
        self.get(b'C')
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }

    /// The primary message (`M`), empty when absent.
    pub fn message(&self) -> String {
        self.get(b'M')
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }
}

/// A DataRow, values left in the frame. Validated at decode: the values exactly fill the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRow {
    /// Number of values.
    pub column_count: u16,
    /// The length-prefixed values.
    values: Bytes,
}

impl DataRow {
    /// The values in column order; `None` is SQL NULL. Zero-copy slices of the frame.
    pub fn values(&self) -> impl Iterator<Item = Option<Bytes>> + '_ {
        let mut r = Reader::new(self.values.clone());
        (0..self.column_count).map_while(move |_| r.nullable())
    }

    /// The values as borrowed slices, for rewriting without touching reference counts.
    pub fn values_ref(&self) -> impl Iterator<Item = Option<&[u8]>> + '_ {
        let mut rest: &[u8] = &self.values;
        (0..self.column_count).map_while(move |_| {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = i32::from_be_bytes(*len);
            if len == -1 {
                rest = tail;
                return Some(None);
            }
            let (value, tail) = tail.split_at_checked(usize::try_from(len).ok()?)?;
            rest = tail;
            Some(Some(value))
        })
    }
}

/// COPY response details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyResponse {
    /// 0 textual, 1 binary.
    pub format: u8,
    /// Number of columns.
    pub column_count: u16,
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    /// `R`.
    Authentication(Authentication),
    /// `S`.
    ParameterStatus {
        /// Parameter name.
        name: Bytes,
        /// Its value.
        value: Bytes,
    },
    /// `K`.
    BackendKeyData(CancelKey),
    /// `Z`.
    ReadyForQuery(TransactionStatus),
    /// `T`.
    RowDescription(Vec<FieldDescription>),
    /// `D`.
    DataRow(DataRow),
    /// `C`: the command tag, e.g. `SELECT 5`.
    CommandComplete {
        /// Tag without its NUL.
        tag: Bytes,
    },
    /// `I`.
    EmptyQueryResponse,
    /// `E`.
    ErrorResponse(NoticeFields),
    /// `N`.
    NoticeResponse(NoticeFields),
    /// `G`.
    CopyInResponse(CopyResponse),
    /// `H`.
    CopyOutResponse(CopyResponse),
    /// `W`.
    CopyBothResponse(CopyResponse),
    /// `d`.
    CopyData(Bytes),
    /// `c`.
    CopyDone,
    /// `A`.
    NotificationResponse {
        /// Notifying backend's process id.
        process_id: u32,
        /// Channel name.
        channel: Bytes,
        /// Payload.
        payload: Bytes,
    },
    /// `1`.
    ParseComplete,
    /// `2`.
    BindComplete,
    /// `3`.
    CloseComplete,
    /// `n`.
    NoData,
    /// `t`: number of parameters of a prepared statement.
    ParameterDescription {
        /// Parameter count.
        param_count: u16,
    },
    /// `s`.
    PortalSuspended,
    /// `V`: function result (`None`: NULL).
    FunctionCallResponse(Option<Bytes>),
    /// `v`.
    NegotiateProtocolVersion {
        /// Newest minor version the server supports.
        newest_minor: u32,
        /// Options it did not recognise.
        unrecognized: Vec<Bytes>,
    },
}

/// A decoded server message and the exact bytes it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendFrame {
    /// Tag, length and body as received.
    pub raw: Bytes,
    /// The parsed view.
    pub message: BackendMessage,
}

fn limit_for(tag: u8, limits: &Limits) -> usize {
    match tag {
        b'K' | b'Z' | b'I' | b'1' | b'2' | b'3' | b'n' | b's' | b'c' | b'C' | b'S' | b'R' => {
            MAX_SMALL_MESSAGE.min(limits.max_message_len)
        }
        _ => limits.max_message_len,
    }
}

fn malformed(tag: u8) -> PgError {
    PgError::upstream(format!(
        "malformed message `{}`",
        char::from(tag).escape_default()
    ))
}

/// Decodes one server message.
pub fn decode_message(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<BackendFrame>, PgError> {
    let Some(header) = codec::peek_header(buf) else {
        return Ok(None);
    };
    if !matches!(
        header.tag,
        b'R' | b'S'
            | b'K'
            | b'Z'
            | b'T'
            | b'D'
            | b'C'
            | b'I'
            | b'E'
            | b'N'
            | b'G'
            | b'H'
            | b'W'
            | b'd'
            | b'c'
            | b'A'
            | b'1'
            | b'2'
            | b'3'
            | b'n'
            | b't'
            | b's'
            | b'V'
            | b'v'
    ) {
        return Err(PgError::upstream(format!(
            "unknown backend message type `{}`",
            quote(&[header.tag])
        )));
    }
    if header.len < 4 {
        return Err(PgError::upstream(format!(
            "invalid message length {} for `{}`",
            header.len,
            char::from(header.tag).escape_default()
        )));
    }
    let limit = limit_for(header.tag, limits);
    if header.len > limit {
        return Err(PgError::UpstreamMessageTooLong {
            tag: char::from(header.tag),
            len: header.len,
            limit,
        });
    }
    let Some((raw, body)) = codec::split_frame(buf, header) else {
        return Ok(None);
    };
    let message = parse_body(header.tag, body, limits)?;
    Ok(Some(BackendFrame { raw, message }))
}

fn parse_body(tag: u8, body: Bytes, limits: &Limits) -> Result<BackendMessage, PgError> {
    let bad = || malformed(tag);
    let mut r = Reader::new(body);
    let message = match tag {
        b'R' => BackendMessage::Authentication(parse_auth(&mut r)?),
        b'S' => BackendMessage::ParameterStatus {
            name: r.cstr().ok_or_else(bad)?,
            value: r.cstr().ok_or_else(bad)?,
        },
        b'K' => BackendMessage::BackendKeyData(CancelKey {
            process_id: r.u32().ok_or_else(bad)?,
            secret_key: r.u32().ok_or_else(bad)?,
        }),
        b'Z' => {
            let status = r.u8().ok_or_else(bad)?;
            BackendMessage::ReadyForQuery(TransactionStatus::from_byte(status).ok_or_else(
                || PgError::upstream(format!("invalid transaction status `{}`", quote(&[status]))),
            )?)
        }
        b'T' => BackendMessage::RowDescription(parse_row_description(&mut r, limits)?),
        b'D' => {
            let column_count = r.u16().ok_or_else(bad)?;
            if usize::from(column_count) > limits.max_columns {
                return Err(PgError::upstream(format!(
                    "DataRow with {column_count} columns, the limit is {}",
                    limits.max_columns
                )));
            }
            let values = r.rest();
            let mut check = Reader::new(values.clone());
            for _ in 0..column_count {
                check.nullable().ok_or_else(bad)?;
            }
            if !check.is_empty() {
                return Err(bad());
            }
            BackendMessage::DataRow(DataRow {
                column_count,
                values,
            })
        }
        b'C' => BackendMessage::CommandComplete {
            tag: r.cstr().ok_or_else(bad)?,
        },
        b'I' => BackendMessage::EmptyQueryResponse,
        b'E' | b'N' => {
            let fields = r.rest();
            validate_notice(&fields).ok_or_else(bad)?;
            if tag == b'E' {
                BackendMessage::ErrorResponse(NoticeFields(fields))
            } else {
                BackendMessage::NoticeResponse(NoticeFields(fields))
            }
        }
        b'G' | b'H' | b'W' => {
            let format = r.u8().ok_or_else(bad)?;
            let column_count = r.u16().ok_or_else(bad)?;
            r.bytes(usize::from(column_count).saturating_mul(2))
                .ok_or_else(bad)?;
            let copy = CopyResponse {
                format,
                column_count,
            };
            match tag {
                b'G' => BackendMessage::CopyInResponse(copy),
                b'H' => BackendMessage::CopyOutResponse(copy),
                _ => BackendMessage::CopyBothResponse(copy),
            }
        }
        b'd' => BackendMessage::CopyData(r.rest()),
        b'c' => BackendMessage::CopyDone,
        b'A' => BackendMessage::NotificationResponse {
            process_id: r.u32().ok_or_else(bad)?,
            channel: r.cstr().ok_or_else(bad)?,
            payload: r.cstr().ok_or_else(bad)?,
        },
        b'1' => BackendMessage::ParseComplete,
        b'2' => BackendMessage::BindComplete,
        b'3' => BackendMessage::CloseComplete,
        b'n' => BackendMessage::NoData,
        b's' => BackendMessage::PortalSuspended,
        b't' => {
            let param_count = r.u16().ok_or_else(bad)?;
            r.bytes(usize::from(param_count).saturating_mul(4))
                .ok_or_else(bad)?;
            BackendMessage::ParameterDescription { param_count }
        }
        b'V' => BackendMessage::FunctionCallResponse(r.nullable().ok_or_else(bad)?),
        b'v' => {
            // The whole version (major in the high 16 bits), as the server sends it.
            let newest_minor = r.u32().ok_or_else(bad)? & 0xffff;
            let count = r.u32().ok_or_else(bad)?;
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            if count > limits.max_startup_params {
                return Err(bad());
            }
            let mut unrecognized = Vec::with_capacity(count);
            for _ in 0..count {
                unrecognized.push(r.cstr().ok_or_else(bad)?);
            }
            BackendMessage::NegotiateProtocolVersion {
                newest_minor,
                unrecognized,
            }
        }
        _ => return Err(bad()),
    };
    if !r.is_empty() {
        return Err(PgError::upstream(format!(
            "{} trailing bytes in `{}`",
            r.remaining(),
            char::from(tag).escape_default()
        )));
    }
    Ok(message)
}

fn parse_auth(r: &mut Reader) -> Result<Authentication, PgError> {
    let bad = || malformed(b'R');
    let code = r.u32().ok_or_else(bad)?;
    Ok(match code {
        0 => Authentication::Ok,
        3 => Authentication::CleartextPassword,
        5 => {
            let salt = r.bytes(4).ok_or_else(bad)?;
            let salt: [u8; 4] = salt.as_ref().try_into().map_err(|_| bad())?;
            Authentication::Md5Password { salt }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let name = r.cstr().ok_or_else(bad)?;
                if name.is_empty() {
                    break;
                }
                if mechanisms.len() >= MAX_SASL_MECHANISMS {
                    return Err(PgError::upstream(format!(
                        "more than {MAX_SASL_MECHANISMS} SASL mechanisms offered"
                    )));
                }
                mechanisms.push(name);
            }
            Authentication::Sasl { mechanisms }
        }
        11 => Authentication::SaslContinue(r.rest()),
        12 => Authentication::SaslFinal(r.rest()),
        2 | 6 | 7 | 9 => Authentication::Unsupported(code),
        // GSS continuation carries opaque data we would never read.
        8 => {
            let _ = r.rest();
            Authentication::Unsupported(code)
        }
        other => {
            return Err(PgError::upstream(format!(
                "unknown authentication request code {other}"
            )));
        }
    })
}

fn parse_row_description(
    r: &mut Reader,
    limits: &Limits,
) -> Result<Vec<FieldDescription>, PgError> {
    let bad = || malformed(b'T');
    let count = r.u16().ok_or_else(bad)?;
    if usize::from(count) > limits.max_columns {
        return Err(PgError::upstream(format!(
            "RowDescription with {count} columns, the limit is {}",
            limits.max_columns
        )));
    }
    // Each field takes at least 19 bytes, so a count the body cannot hold is refused before the
    // vector is sized from it.
    if usize::from(count).saturating_mul(19) > r.remaining() {
        return Err(bad());
    }
    let mut fields = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        fields.push(FieldDescription {
            name: r.cstr().ok_or_else(bad)?,
            table_oid: r.u32().ok_or_else(bad)?,
            column_attr: r.i16().ok_or_else(bad)?,
            type_oid: r.u32().ok_or_else(bad)?,
            type_size: r.i16().ok_or_else(bad)?,
            type_modifier: r.i32().ok_or_else(bad)?,
            format: r.i16().ok_or_else(bad)?,
        });
    }
    Ok(fields)
}

fn validate_notice(fields: &Bytes) -> Option<()> {
    let mut r = Reader::new(fields.clone());
    for _ in 0..=MAX_NOTICE_FIELDS {
        if r.u8()? == 0 {
            return r.is_empty().then_some(());
        }
        r.cstr()?;
    }
    None
}

/// The upstream's one-byte answer to SSLRequest: `Ok(Some(true))` for `S`, `Ok(Some(false))` for
/// `N`, `Ok(None)` while nothing arrived. Anything else (an old server's ErrorResponse) is an
/// upstream protocol violation.
pub fn decode_ssl_response(buf: &mut BytesMut) -> Result<Option<bool>, PgError> {
    let Some(&b) = buf.first() else {
        return Ok(None);
    };
    let answer = match b {
        b'S' => true,
        b'N' => false,
        other => {
            return Err(PgError::upstream(format!(
                "unexpected answer `{}` to SSLRequest",
                quote(&[other])
            )));
        }
    };
    let _ = buf.split_to(1);
    Ok(Some(answer))
}

#[cfg(test)]
mod tests;
