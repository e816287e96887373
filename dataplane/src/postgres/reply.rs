//! Messages the gateway itself writes to a PostgreSQL client: errors, notices, the
//! authentication request for the token, the session greeting and the one-byte TLS answers.
//!
//! Everything is appended to a caller-owned `BytesMut` so a driver can batch a whole reply into
//! one write. This module does not decide what to say (that is [`super::error`] and the session)
//! and it never copies upstream credentials: callers pass only text meant for the client.

use bytes::{BufMut, BytesMut};

/// The single byte answering an SSLRequest when the gateway will start TLS.
pub const SSL_ACCEPT: u8 = b'S';
/// The single byte answering an SSLRequest or GSSENCRequest the gateway refuses.
pub const SSL_REFUSE: u8 = b'N';

/// A SQLSTATE code as the client sees it (five characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(pub &'static str);

impl SqlState {
    /// `08P01` protocol_violation.
    pub const PROTOCOL_VIOLATION: Self = Self("08P01");
    /// `08006` connection_failure: the upstream could not be reached or misbehaved.
    pub const CONNECTION_FAILURE: Self = Self("08006");
    /// `0A000` feature_not_supported (also used by the server for unsupported protocol versions).
    pub const FEATURE_NOT_SUPPORTED: Self = Self("0A000");
    /// `28000` invalid_authorization_specification.
    pub const INVALID_AUTHORIZATION: Self = Self("28000");
    /// `28P01` invalid_password.
    pub const INVALID_PASSWORD: Self = Self("28P01");
    /// `42501` insufficient_privilege: a statement denied by policy.
    pub const INSUFFICIENT_PRIVILEGE: Self = Self("42501");
    /// `57P01` admin_shutdown.
    pub const ADMIN_SHUTDOWN: Self = Self("57P01");
    /// `53300` too_many_connections.
    pub const TOO_MANY_CONNECTIONS: Self = Self("53300");
    /// `54000` program_limit_exceeded.
    pub const PROGRAM_LIMIT_EXCEEDED: Self = Self("54000");
    /// `53000` insufficient_resources: the audit queue is full (fail closed).
    pub const INSUFFICIENT_RESOURCES: Self = Self("53000");
    /// `XX000` internal_error.
    pub const INTERNAL_ERROR: Self = Self("XX000");

    /// The five characters.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// Severity of an ErrorResponse or NoticeResponse, spelled as the server spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session continues.
    Error,
    /// The session ends after this message.
    Fatal,
    /// A notice.
    Notice,
    /// A warning notice.
    Warning,
}

impl Severity {
    /// The non-localized spelling (field `V`, also sent as `S`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
            Self::Notice => "NOTICE",
            Self::Warning => "WARNING",
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse the gateway writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// How bad it is.
    pub severity: Severity,
    /// SQLSTATE.
    pub code: SqlState,
    /// Primary message (field `M`).
    pub message: String,
    /// Optional detail (field `D`).
    pub detail: Option<String>,
    /// Optional hint (field `H`).
    pub hint: Option<String>,
}

impl ErrorFields {
    /// An error with only a code and message.
    pub fn new(severity: Severity, code: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// Adds a detail line.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a hint line.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    /// The status byte.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }

    /// Parses the status byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }
}

/// Writes `tag`, a length word and the body produced by `body`, then patches the length.
/// Replies are built from gateway text and bounded message sizes, so the length always fits;
/// if it somehow did not, the word saturates rather than wraps.
pub(crate) fn framed(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let start = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = u32::try_from(buf.len().saturating_sub(start)).unwrap_or(u32::MAX);
    if let Some(word) = buf.get_mut(start..start.saturating_add(4)) {
        word.copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends `s` as a C string. Interior NULs would end the field early and let text smuggle
/// extra fields, so they are dropped.
pub(crate) fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    for chunk in s.split(|&b| b == 0) {
        buf.put_slice(chunk);
    }
    buf.put_u8(0);
}

fn put_fields(buf: &mut BytesMut, fields: &ErrorFields) {
    let severity = fields.severity.as_str().as_bytes();
    buf.put_u8(b'S');
    put_cstr(buf, severity);
    buf.put_u8(b'V');
    put_cstr(buf, severity);
    buf.put_u8(b'C');
    put_cstr(buf, fields.code.as_str().as_bytes());
    buf.put_u8(b'M');
    put_cstr(buf, fields.message.as_bytes());
    if let Some(detail) = &fields.detail {
        buf.put_u8(b'D');
        put_cstr(buf, detail.as_bytes());
    }
    if let Some(hint) = &fields.hint {
        buf.put_u8(b'H');
        put_cstr(buf, hint.as_bytes());
    }
    buf.put_u8(0);
}

/// ErrorResponse (`E`).
pub fn error_response(buf: &mut BytesMut, fields: &ErrorFields) {
    framed(buf, b'E', |b| put_fields(b, fields));
}

/// NoticeResponse (`N`), e.g. "waiting for approval".
pub fn notice_response(buf: &mut BytesMut, fields: &ErrorFields) {
    framed(buf, b'N', |b| put_fields(b, fields));
}

/// AuthenticationCleartextPassword: asks the client for its token.
pub fn auth_cleartext_password(buf: &mut BytesMut) {
    framed(buf, b'R', |b| b.put_u32(3));
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    framed(buf, b'R', |b| b.put_u32(0));
}

/// ParameterStatus (`S`).
pub fn parameter_status(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    framed(buf, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// BackendKeyData (`K`) with the gateway's own cancel key, never the upstream's.
pub fn backend_key_data(buf: &mut BytesMut, process_id: u32, secret_key: u32) {
    framed(buf, b'K', |b| {
        b.put_u32(process_id);
        b.put_u32(secret_key);
    });
}

/// ReadyForQuery (`Z`).
pub fn ready_for_query(buf: &mut BytesMut, status: TransactionStatus) {
    framed(buf, b'Z', |b| b.put_u8(status.as_byte()));
}

/// NegotiateProtocolVersion (`v`): the newest version of protocol 3 we speak and the `_pq_.`
/// options we did not recognise. The version goes on the wire whole (major in the high 16
/// bits), as the server sends it, despite the protocol documentation's "newest minor": libpq 18
/// reads a bare minor as a downgrade below 3.0 and refuses the connection.
pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_minor: u16, unrecognized: &[&[u8]]) {
    framed(buf, b'v', |b| {
        b.put_u32((3u32 << 16) | u32::from(newest_minor));
        b.put_u32(u32::try_from(unrecognized.len()).unwrap_or(u32::MAX));
        for option in unrecognized {
            put_cstr(b, option);
        }
    });
}

/// A denied simple Query: the error, then ReadyForQuery, exactly as the server ends a failed
/// query, so the client stays in step without anything reaching the upstream.
pub fn refuse_simple_query(buf: &mut BytesMut, fields: &ErrorFields, status: TransactionStatus) {
    error_response(buf, fields);
    ready_for_query(buf, status);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_bytes_match_the_protocol() {
        let mut buf = BytesMut::new();
        error_response(
            &mut buf,
            &ErrorFields::new(Severity::Error, SqlState::INSUFFICIENT_PRIVILEGE, "no"),
        );
        let expected: &[u8] = b"E\0\0\0\x1eSERROR\0VERROR\0C42501\0Mno\0\0";
        assert_eq!(&buf[..], expected);
    }

    #[test]
    fn interior_nul_cannot_smuggle_fields() {
        let mut buf = BytesMut::new();
        parameter_status(&mut buf, b"a\0b", b"c");
        assert_eq!(&buf[..], b"S\0\0\0\x09ab\0c\0");
    }

    #[test]
    fn ready_for_query_and_auth_requests() {
        let mut buf = BytesMut::new();
        auth_cleartext_password(&mut buf);
        auth_ok(&mut buf);
        ready_for_query(&mut buf, TransactionStatus::Idle);
        assert_eq!(
            &buf[..],
            b"R\0\0\0\x08\0\0\0\x03R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I"
        );
    }

    /// Regression: the version went out as a bare minor (0), which libpq 18 refuses as
    /// "server requested downgrade to pre-3.0 protocol version".
    #[test]
    fn negotiate_protocol_version_carries_the_whole_version() {
        let mut buf = BytesMut::new();
        negotiate_protocol_version(&mut buf, 0, &[b"_pq_.x"]);
        assert_eq!(&buf[..], b"v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0");
        // And it decodes back to minor 0, whatever the split.
        let limits = crate::postgres::Limits::default();
        for split in 0..=buf.len() {
            let mut input = BytesMut::from(&buf[..split]);
            let first = crate::postgres::backend::decode_message(&mut input, &limits).unwrap();
            let frame = match first {
                Some(f) => f,
                None => {
                    input.extend_from_slice(&buf[split..]);
                    crate::postgres::backend::decode_message(&mut input, &limits)
                        .unwrap()
                        .unwrap()
                }
            };
            assert!(matches!(
                frame.message,
                crate::postgres::backend::BackendMessage::NegotiateProtocolVersion {
                    newest_minor: 0,
                    ..
                }
            ));
        }
    }
}
