//! Decoding what a PostgreSQL client sends, and encoding what the gateway sends upstream when it
//! acts as a client itself.
//!
//! Two decoders, because the wire has two shapes: [`decode_startup`] for the untagged
//! startup-phase packets (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage) and
//! [`decode_message`] for tagged messages afterwards. Both are incremental over a `BytesMut`:
//! `Ok(None)` means "need more", a frame is returned only when complete, and every announced
//! length is checked against [`Limits`] before anything is buffered for it. Frames keep the raw
//! bytes so the driver forwards an allowed message unchanged. This module does not know session
//! state (which decoder applies when, what a `p` message means): see `client_session`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codec::{self, Reader};
use super::error::{PgError, quote};
use super::limits::{Limits, MAX_AUTH_MESSAGE, MAX_SMALL_MESSAGE};
use super::reply::{framed, put_cstr};

/// Request code of SSLRequest.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// Request code of GSSENCRequest.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Request code of CancelRequest.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A protocol version from a StartupMessage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolVersion {
    /// Major version (3 for every client of the last twenty years).
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

impl ProtocolVersion {
    /// Protocol 3.0, the only version the gateway speaks.
    pub const V3_0: Self = Self { major: 3, minor: 0 };

    /// The version as the 32-bit code on the wire.
    pub fn code(self) -> u32 {
        (u32::from(self.major) << 16) | u32::from(self.minor)
    }
}

/// A cancel key: the process id and secret from BackendKeyData, echoed in CancelRequest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// The process id the key names.
    pub process_id: u32,
    /// The secret that proves the canceller saw BackendKeyData.
    pub secret_key: u32,
}

impl std::fmt::Debug for CancelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret lets anyone cancel the session's queries: keep it out of logs.
        f.debug_struct("CancelKey")
            .field("process_id", &self.process_id)
            .finish_non_exhaustive()
    }
}

/// A startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// The client asks to cancel the query of another session.
    CancelRequest(CancelKey),
    /// The session's first real message.
    Startup {
        /// Requested protocol version.
        version: ProtocolVersion,
        /// `name`/`value` pairs in wire order (`user`, `database`, `options`, `_pq_.*`, ...).
        /// Empty when the major version is not 3: their layout is unknown.
        params: Vec<(Bytes, Bytes)>,
    },
}

impl StartupPacket {
    /// The value of one StartupMessage parameter.
    pub fn param(&self, name: &[u8]) -> Option<&Bytes> {
        match self {
            Self::Startup { params, .. } => params
                .iter()
                .find(|(n, _)| n.as_ref() == name)
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

fn startup_error(reason: impl Into<String>) -> PgError {
    PgError::client(format!("invalid startup packet: {}", reason.into()))
}

/// Decodes one startup-phase packet.
pub fn decode_startup(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<StartupPacket>, PgError> {
    let Some(word) = buf.get(..4) else {
        return Ok(None);
    };
    let word: [u8; 4] = word
        .try_into()
        .map_err(|_| PgError::internal("four-byte slice is not four bytes"))?;
    let len = usize::try_from(u32::from_be_bytes(word)).unwrap_or(usize::MAX);
    if len < 8 {
        return Err(startup_error(format!("length {len} is below 8")));
    }
    if len > limits.max_startup_packet {
        return Err(PgError::ClientMessageTooLong {
            tag: '\0',
            len,
            limit: limits.max_startup_packet,
        });
    }
    if buf.len() < len {
        buf.reserve(len.saturating_sub(buf.len()));
        return Ok(None);
    }
    // Copied out rather than split off: the startup parameters live as long as the session,
    // and a slice would keep the whole first read buffer alive with them.
    let packet = Bytes::copy_from_slice(buf.get(..len).unwrap_or_default());
    buf.advance(len);
    let mut r = Reader::new(packet.slice(4..));
    let code = r
        .u32()
        .ok_or_else(|| startup_error("missing request code"))?;
    let fixed = |expected: usize, what: &str| {
        if len == expected {
            Ok(())
        } else {
            Err(startup_error(format!(
                "{what} of length {len}, expected {expected}"
            )))
        }
    };
    match code {
        SSL_REQUEST_CODE => {
            fixed(8, "SSLRequest")?;
            Ok(Some(StartupPacket::SslRequest))
        }
        GSSENC_REQUEST_CODE => {
            fixed(8, "GSSENCRequest")?;
            Ok(Some(StartupPacket::GssEncRequest))
        }
        CANCEL_REQUEST_CODE => {
            fixed(16, "CancelRequest")?;
            let process_id = r
                .u32()
                .ok_or_else(|| startup_error("short CancelRequest"))?;
            let secret_key = r
                .u32()
                .ok_or_else(|| startup_error("short CancelRequest"))?;
            Ok(Some(StartupPacket::CancelRequest(CancelKey {
                process_id,
                secret_key,
            })))
        }
        code => {
            let version = ProtocolVersion {
                major: u16::try_from(code >> 16).unwrap_or(u16::MAX),
                minor: u16::try_from(code & 0xffff).unwrap_or(u16::MAX),
            };
            let params = if version.major == 3 {
                startup_params(r, limits)?
            } else {
                Vec::new()
            };
            Ok(Some(StartupPacket::Startup { version, params }))
        }
    }
}

fn startup_params(mut r: Reader, limits: &Limits) -> Result<Vec<(Bytes, Bytes)>, PgError> {
    let mut params = Vec::new();
    loop {
        let name = r
            .cstr()
            .ok_or_else(|| startup_error("expected terminator as last byte"))?;
        if name.is_empty() {
            break;
        }
        let value = r
            .cstr()
            .ok_or_else(|| startup_error(format!("missing value for `{}`", quote(&name))))?;
        if params.len() >= limits.max_startup_params {
            return Err(startup_error(format!(
                "more than {} parameters",
                limits.max_startup_params
            )));
        }
        params.push((name, value));
    }
    if !r.is_empty() {
        return Err(startup_error("bytes after the terminator"));
    }
    Ok(params)
}

/// Whether Describe or Close names a prepared statement or a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `S`: a prepared statement.
    Statement,
    /// `P`: a portal.
    Portal,
}

/// A Bind message. Parameters stay in the frame; [`Bind::params`] walks them without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Destination portal (empty: the unnamed portal).
    pub portal: Bytes,
    /// Source prepared statement (empty: the unnamed statement).
    pub statement: Bytes,
    /// Number of parameter values.
    pub param_count: u16,
    /// Format codes, parameter values and result format codes, validated at decode.
    tail: Bytes,
}

impl Bind {
    /// The parameter values in order; `None` is SQL NULL.
    pub fn params(&self) -> impl Iterator<Item = Option<Bytes>> + '_ {
        let mut r = Reader::new(self.tail.clone());
        let formats = r.u16().unwrap_or(0);
        let _ = r.bytes(usize::from(formats).saturating_mul(2));
        let _ = r.u16();
        (0..self.param_count).map_while(move |_| r.nullable())
    }
}

/// A message from the client after startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    /// `Q`: simple query, possibly several statements.
    Query {
        /// The SQL text without its NUL.
        sql: Bytes,
    },
    /// `P`: create a prepared statement.
    Parse {
        /// Statement name (empty: the unnamed statement).
        statement: Bytes,
        /// The SQL text.
        sql: Bytes,
        /// Number of parameter type OIDs specified.
        param_type_count: u16,
    },
    /// `B`: bind parameters to a statement, creating a portal.
    Bind(Bind),
    /// `D`: describe a statement or portal.
    Describe {
        /// Statement or portal.
        target: Target,
        /// Its name.
        name: Bytes,
    },
    /// `E`: execute a portal.
    Execute {
        /// Portal name.
        portal: Bytes,
        /// Row limit, 0 for none.
        max_rows: u32,
    },
    /// `S`: end of an extended-query batch.
    Sync,
    /// `H`: ask the server to flush its output.
    Flush,
    /// `C`: close a statement or portal.
    Close {
        /// Statement or portal.
        target: Target,
        /// Its name.
        name: Bytes,
    },
    /// `d`: COPY data.
    CopyData(Bytes),
    /// `c`: end of COPY data.
    CopyDone,
    /// `f`: the client aborts a COPY FROM STDIN.
    CopyFail {
        /// Its reason.
        message: Bytes,
    },
    /// `F`: legacy function call.
    FunctionCall {
        /// The function's OID.
        function_oid: u32,
    },
    /// `X`: the client is leaving.
    Terminate,
    /// `p`: PasswordMessage, SASLInitialResponse or SASLResponse; which one depends on what was
    /// asked, so the body is left to the session.
    AuthResponse(Bytes),
}

/// A decoded client message and the exact bytes it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendFrame {
    /// Tag, length and body as received: what the driver forwards when the message is allowed.
    pub raw: Bytes,
    /// The parsed view.
    pub message: FrontendMessage,
}

/// The ceiling for one message type: bulk messages get the configured limit, the rest the small
/// limit the server also applies, so a `S` claiming a gigabyte is refused at once.
fn limit_for(tag: u8, limits: &Limits) -> usize {
    match tag {
        b'Q' | b'P' | b'B' | b'F' | b'd' => limits.max_message_len,
        b'p' => MAX_AUTH_MESSAGE.min(limits.max_message_len),
        _ => MAX_SMALL_MESSAGE.min(limits.max_message_len),
    }
}

fn tag_char(tag: u8) -> char {
    char::from(tag)
}

fn malformed(tag: u8) -> PgError {
    PgError::client(format!(
        "malformed message `{}`",
        tag_char(tag).escape_default()
    ))
}

/// Decodes one tagged client message.
pub fn decode_message(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<FrontendFrame>, PgError> {
    let Some(header) = codec::peek_header(buf) else {
        return Ok(None);
    };
    if !matches!(
        header.tag,
        b'Q' | b'P'
            | b'B'
            | b'D'
            | b'E'
            | b'S'
            | b'H'
            | b'C'
            | b'd'
            | b'c'
            | b'f'
            | b'F'
            | b'X'
            | b'p'
    ) {
        return Err(PgError::client(format!(
            "invalid frontend message type `{}`",
            quote(&[header.tag])
        )));
    }
    if header.len < 4 {
        return Err(PgError::client(format!(
            "invalid message length {} for `{}`",
            header.len,
            tag_char(header.tag).escape_default()
        )));
    }
    let limit = limit_for(header.tag, limits);
    if header.len > limit {
        return Err(PgError::ClientMessageTooLong {
            tag: tag_char(header.tag),
            len: header.len,
            limit,
        });
    }
    let Some((raw, body)) = codec::split_frame(buf, header) else {
        return Ok(None);
    };
    let message = parse_body(header.tag, body, limits)?;
    Ok(Some(FrontendFrame { raw, message }))
}

fn target(byte: u8, tag: u8) -> Result<Target, PgError> {
    match byte {
        b'S' => Ok(Target::Statement),
        b'P' => Ok(Target::Portal),
        _ => Err(PgError::client(format!(
            "invalid target `{}` in `{}`",
            quote(&[byte]),
            tag_char(tag)
        ))),
    }
}

fn parse_body(tag: u8, body: Bytes, limits: &Limits) -> Result<FrontendMessage, PgError> {
    let bad = || malformed(tag);
    let mut r = Reader::new(body);
    let message = match tag {
        b'Q' => FrontendMessage::Query {
            sql: r.cstr().ok_or_else(bad)?,
        },
        b'P' => {
            let statement = r.cstr().ok_or_else(bad)?;
            let sql = r.cstr().ok_or_else(bad)?;
            let param_type_count = r.u16().ok_or_else(bad)?;
            if usize::from(param_type_count) > limits.max_bind_params {
                return Err(PgError::client(format!(
                    "Parse declares {param_type_count} parameters, the limit is {}",
                    limits.max_bind_params
                )));
            }
            r.bytes(usize::from(param_type_count).saturating_mul(4))
                .ok_or_else(bad)?;
            FrontendMessage::Parse {
                statement,
                sql,
                param_type_count,
            }
        }
        b'B' => parse_bind(&mut r, limits)?,
        b'D' | b'C' => {
            let t = target(r.u8().ok_or_else(bad)?, tag)?;
            let name = r.cstr().ok_or_else(bad)?;
            if tag == b'D' {
                FrontendMessage::Describe { target: t, name }
            } else {
                FrontendMessage::Close { target: t, name }
            }
        }
        b'E' => FrontendMessage::Execute {
            portal: r.cstr().ok_or_else(bad)?,
            max_rows: r.u32().ok_or_else(bad)?,
        },
        b'S' => FrontendMessage::Sync,
        b'H' => FrontendMessage::Flush,
        b'X' => FrontendMessage::Terminate,
        b'c' => FrontendMessage::CopyDone,
        b'd' => FrontendMessage::CopyData(r.rest()),
        b'f' => FrontendMessage::CopyFail {
            message: r.cstr().ok_or_else(bad)?,
        },
        b'F' => {
            let function_oid = r.u32().ok_or_else(bad)?;
            // Arguments are forwarded untouched; the upstream validates them.
            let _ = r.rest();
            FrontendMessage::FunctionCall { function_oid }
        }
        b'p' => FrontendMessage::AuthResponse(r.rest()),
        _ => return Err(bad()),
    };
    if !r.is_empty() {
        return Err(PgError::client(format!(
            "{} trailing bytes in `{}`",
            r.remaining(),
            tag_char(tag).escape_default()
        )));
    }
    Ok(message)
}

fn parse_bind(r: &mut Reader, limits: &Limits) -> Result<FrontendMessage, PgError> {
    let bad = || malformed(b'B');
    let portal = r.cstr().ok_or_else(bad)?;
    let statement = r.cstr().ok_or_else(bad)?;
    let tail = r.rest();
    let mut t = Reader::new(tail.clone());
    let formats = t.u16().ok_or_else(bad)?;
    t.bytes(usize::from(formats).saturating_mul(2))
        .ok_or_else(bad)?;
    let param_count = t.u16().ok_or_else(bad)?;
    if usize::from(param_count) > limits.max_bind_params {
        return Err(PgError::client(format!(
            "Bind carries {param_count} parameters, the limit is {}",
            limits.max_bind_params
        )));
    }
    if formats > 1 && formats != param_count {
        return Err(PgError::client(format!(
            "Bind has {formats} parameter formats for {param_count} parameters"
        )));
    }
    for _ in 0..param_count {
        t.nullable().ok_or_else(bad)?;
    }
    let results = t.u16().ok_or_else(bad)?;
    t.bytes(usize::from(results).saturating_mul(2))
        .ok_or_else(bad)?;
    if !t.is_empty() {
        return Err(PgError::client("trailing bytes in `B`"));
    }
    Ok(FrontendMessage::Bind(Bind {
        portal,
        statement,
        param_count,
        tail,
    }))
}

/// The body of a PasswordMessage: the password (here: the caller's token) without its NUL.
pub fn password_from_auth_response(body: &[u8]) -> Result<&[u8], PgError> {
    match body.split_last() {
        Some((0, password)) if !password.contains(&0) => Ok(password),
        _ => Err(PgError::client(
            "malformed password message: expected one NUL-terminated string",
        )),
    }
}

// --- Encoders: the gateway speaking as a client to the upstream. ---

/// StartupMessage for protocol 3.0 with the given parameters.
pub fn encode_startup(buf: &mut BytesMut, params: &[(&[u8], &[u8])]) {
    let start = buf.len();
    buf.put_u32(0);
    buf.put_u32(ProtocolVersion::V3_0.code());
    for (name, value) in params {
        put_cstr(buf, name);
        put_cstr(buf, value);
    }
    buf.put_u8(0);
    patch_len(buf, start);
}

/// SSLRequest.
pub fn encode_ssl_request(buf: &mut BytesMut) {
    buf.put_u32(8);
    buf.put_u32(SSL_REQUEST_CODE);
}

/// CancelRequest, sent on a fresh connection to the upstream with the upstream's key.
pub fn encode_cancel_request(buf: &mut BytesMut, key: CancelKey) {
    buf.put_u32(16);
    buf.put_u32(CANCEL_REQUEST_CODE);
    buf.put_u32(key.process_id);
    buf.put_u32(key.secret_key);
}

/// PasswordMessage carrying a cleartext password or an md5 hash.
pub fn encode_password(buf: &mut BytesMut, password: &[u8]) {
    framed(buf, b'p', |b| put_cstr(b, password));
}

/// SASLInitialResponse.
pub fn encode_sasl_initial_response(buf: &mut BytesMut, mechanism: &[u8], data: &[u8]) {
    framed(buf, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
        b.put_slice(data);
    });
}

/// SASLResponse.
pub fn encode_sasl_response(buf: &mut BytesMut, data: &[u8]) {
    framed(buf, b'p', |b| b.put_slice(data));
}

/// Simple Query.
pub fn encode_query(buf: &mut BytesMut, sql: &[u8]) {
    framed(buf, b'Q', |b| put_cstr(b, sql));
}

/// Parse of the unnamed statement with no parameter types.
pub fn encode_parse(buf: &mut BytesMut, sql: &[u8]) {
    framed(buf, b'P', |b| {
        put_cstr(b, b"");
        put_cstr(b, sql);
        b.put_u16(0);
    });
}

/// Terminate.
pub fn encode_terminate(buf: &mut BytesMut) {
    framed(buf, b'X', |_| {});
}

fn patch_len(buf: &mut BytesMut, start: usize) {
    let len = u32::try_from(buf.len().saturating_sub(start)).unwrap_or(u32::MAX);
    if let Some(word) = buf.get_mut(start..start.saturating_add(4)) {
        word.copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests;
