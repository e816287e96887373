//! The client-side session state machine: startup negotiation, the token exchange, and just
//! enough tracking of the message flow (COPY, errors in extended mode) to keep the client and
//! the server in step when the gateway answers in the server's place.
//!
//! The driver owns the socket and loops on [`ClientSession::read`], which decodes with the
//! decoder the current state calls for and returns a [`ClientEvent`]; replies the session can
//! give on its own (TLS answers, the password request, NegotiateProtocolVersion) are written into
//! the driver's output buffer. Decisions stay outside: the driver verifies the token, checks
//! access and policy, then calls [`ClientSession::accept`], [`ClientSession::refuse`] or
//! [`ClientSession::enter_extended_error`].
//!
//! ```text
//!  ExpectStartup ──SSLRequest──► 'S' → StartTls (driver handshakes, tls_established)
//!       │  ├─TLS ClientHello (sslnegotiation=direct)──► StartDirectTls (bytes left in input)
//!       │  ├─SSLRequest/GSSENCRequest──► 'N', stay
//!       │  └─CancelRequest──► Cancel(key) → Closed
//!       ▼ StartupMessage 3.x (NegotiateProtocolVersion if 3.1+ or _pq_ options)
//!  ExpectPassword ──PasswordMessage──► Token(bytes)
//!       ▼
//!  AwaitingAuthorization ──accept()──► Ready ◄──────────────┐
//!                        └─refuse()──► Closed               │ ReadyForQuery / CopyDone
//!  Ready ──(server) CopyInResponse──► InCopyIn ──CopyDone/CopyFail─┤
//!  Ready ──(server) CopyOutResponse─► InCopyOut ──(server) CopyDone┘
//!  Ready ──enter_extended_error()──► ExtendedError ──Sync──► Ready
//! ```
//!
//! It does not verify tokens, run TLS, or decide statements.

use bytes::{Bytes, BytesMut};

use super::backend::BackendMessage;
use super::error::{PgError, quote};
use super::frontend::{
    self, CancelKey, FrontendFrame, FrontendMessage, ProtocolVersion, StartupPacket,
};
use super::limits::Limits;
use super::reply::{self, TransactionStatus};

/// How many SSLRequest/GSSENCRequest packets a client may send before its StartupMessage. The
/// server accepts one of each; more is a client looping.
pub const MAX_NEGOTIATION_PACKETS: usize = 2;

/// The content type of a TLS handshake record: the first byte of a ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The ALPN protocol PostgreSQL clients offer and a direct TLS connection must negotiate.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Per-listener settings the session needs.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// Whether a TLS certificate is configured, so SSLRequest is answered `S`.
    pub tls_available: bool,
    /// Whether a client may authenticate without TLS (loopback tests only).
    pub allow_plaintext: bool,
    /// Size limits.
    pub limits: Limits,
}

/// What the session waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// SSLRequest, GSSENCRequest, CancelRequest or StartupMessage.
    ExpectStartup,
    /// The PasswordMessage carrying the token.
    ExpectPassword,
    /// The driver's verdict on the token (input is left buffered meanwhile).
    AwaitingAuthorization,
    /// Any query-phase message.
    Ready,
    /// CopyData/CopyDone/CopyFail from the client.
    InCopyIn,
    /// The server's COPY data; client messages are handled as in `Ready`.
    InCopyOut,
    /// A Sync: the gateway refused a message in extended mode and discards the rest of the batch.
    ExtendedError,
    /// Nothing: the session is over.
    Closed,
}

/// The StartupMessage as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupInfo {
    /// Protocol version requested.
    pub version: ProtocolVersion,
    /// `user`: recorded, but identity comes from the token.
    pub user: Bytes,
    /// `database`, if given.
    pub database: Option<Bytes>,
    /// All parameters in wire order.
    pub params: Vec<(Bytes, Bytes)>,
}

/// What the driver has to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A reply was written to the output buffer; keep reading.
    Replied,
    /// `S` was written: flush it, run the TLS handshake, call
    /// [`ClientSession::tls_established`], continue with decrypted bytes.
    StartTls,
    /// The client opened with a TLS ClientHello instead of an SSLRequest (libpq 17+
    /// `sslnegotiation=direct`). The hello is still in the input buffer: hand all of it to the
    /// TLS handshake, require the `postgresql` ALPN protocol (as the server does, so a TLS
    /// connection meant for another service cannot be replayed here), then call
    /// [`ClientSession::tls_established`].
    StartDirectTls,
    /// A cancel request: look the key up among the gateway's sessions, forward the cancel to the
    /// matching upstream, close this connection without replying (as the server does).
    Cancel(CancelKey),
    /// The client's password, which is its token. Verify it, check access, connect upstream,
    /// then call `accept` or `refuse`.
    Token(Bytes),
    /// A query-phase message to decide on and forward (or refuse).
    Message(FrontendFrame),
    /// A message discarded while skipping to Sync after a refused extended-mode message.
    Skipped,
    /// The client said goodbye: close both sides.
    Terminate,
}

/// The client session state machine.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    state: ClientState,
    tls_active: bool,
    negotiations: usize,
    startup: Option<StartupInfo>,
    status: TransactionStatus,
}

impl ClientSession {
    /// A new session on a fresh connection.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            state: ClientState::ExpectStartup,
            tls_active: false,
            negotiations: 0,
            startup: None,
            status: TransactionStatus::Idle,
        }
    }

    /// What the session waits for.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The StartupMessage, once received.
    pub fn startup(&self) -> Option<&StartupInfo> {
        self.startup.as_ref()
    }

    /// Whether TLS is running on the client connection.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Transaction status from the latest ReadyForQuery the client saw.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.status
    }

    /// The driver finished the TLS handshake after [`ClientEvent::StartTls`].
    pub fn tls_established(&mut self) {
        self.tls_active = true;
    }

    /// Decodes the next client message and advances. `Ok(None)`: need more bytes (or, in
    /// `AwaitingAuthorization`, wait for the driver). On `Err` write
    /// [`ClientSession::refuse`]'s reply and close.
    pub fn read(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<ClientEvent>, PgError> {
        let limits = self.config.limits;
        match self.state {
            ClientState::ExpectStartup => {
                // A startup packet's length word starting with 0x16 would announce hundreds of
                // megabytes, so a first byte of 0x16 can only be a TLS handshake record.
                if !self.tls_active
                    && self.negotiations == 0
                    && input.first() == Some(&TLS_HANDSHAKE_RECORD)
                {
                    if !self.config.tls_available {
                        return Err(PgError::client(
                            "direct TLS connection refused: this listener has no TLS configured",
                        ));
                    }
                    self.negotiations = MAX_NEGOTIATION_PACKETS;
                    return Ok(Some(ClientEvent::StartDirectTls));
                }
                let Some(packet) = frontend::decode_startup(input, &limits)? else {
                    return Ok(None);
                };
                self.on_startup_packet(packet, input, out).map(Some)
            }
            ClientState::ExpectPassword => {
                let Some(frame) = frontend::decode_message(input, &limits)? else {
                    return Ok(None);
                };
                self.on_password(frame).map(Some)
            }
            ClientState::AwaitingAuthorization | ClientState::Closed => Ok(None),
            ClientState::Ready
            | ClientState::InCopyIn
            | ClientState::InCopyOut
            | ClientState::ExtendedError => {
                let Some(frame) = frontend::decode_message(input, &limits)? else {
                    return Ok(None);
                };
                self.on_query_phase(frame).map(Some)
            }
        }
    }

    fn on_startup_packet(
        &mut self,
        packet: StartupPacket,
        input: &BytesMut,
        out: &mut BytesMut,
    ) -> Result<ClientEvent, PgError> {
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                self.negotiations = self.negotiations.saturating_add(1);
                if self.negotiations > MAX_NEGOTIATION_PACKETS {
                    return Err(PgError::client("too many encryption requests"));
                }
                if self.tls_active {
                    return Err(PgError::client("SSLRequest inside an encrypted connection"));
                }
                if packet == StartupPacket::SslRequest && self.config.tls_available {
                    // Bytes already buffered were sent in clear before the handshake: accepting
                    // them would let a man in the middle inject commands into the TLS session.
                    if !input.is_empty() {
                        return Err(PgError::client(
                            "received unencrypted data after SSLRequest",
                        ));
                    }
                    out.extend_from_slice(&[reply::SSL_ACCEPT]);
                    return Ok(ClientEvent::StartTls);
                }
                out.extend_from_slice(&[reply::SSL_REFUSE]);
                Ok(ClientEvent::Replied)
            }
            StartupPacket::CancelRequest(key) => {
                self.state = ClientState::Closed;
                Ok(ClientEvent::Cancel(key))
            }
            StartupPacket::Startup { version, params } => {
                if version.major != 3 {
                    return Err(PgError::UnsupportedProtocolVersion {
                        major: version.major,
                        minor: version.minor,
                    });
                }
                if !self.tls_active && !self.config.allow_plaintext {
                    return Err(PgError::ClientTlsRequired);
                }
                let find = |name: &[u8]| {
                    params
                        .iter()
                        .find(|(n, _)| n.as_ref() == name)
                        .map(|(_, v)| v.clone())
                };
                let user = find(b"user")
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| PgError::client("no user name specified in startup packet"))?;
                let database = find(b"database");
                let unrecognized: Vec<&[u8]> = params
                    .iter()
                    .filter(|(n, _)| n.starts_with(b"_pq_."))
                    .map(|(n, _)| n.as_ref())
                    .collect();
                if version.minor > 0 || !unrecognized.is_empty() {
                    reply::negotiate_protocol_version(out, 0, &unrecognized);
                }
                reply::auth_cleartext_password(out);
                self.startup = Some(StartupInfo {
                    version,
                    user,
                    database,
                    params,
                });
                self.state = ClientState::ExpectPassword;
                Ok(ClientEvent::Replied)
            }
        }
    }

    fn on_password(&mut self, frame: FrontendFrame) -> Result<ClientEvent, PgError> {
        let FrontendMessage::AuthResponse(body) = &frame.message else {
            return Err(PgError::client(format!(
                "expected a password message, got `{}`",
                quote(frame.raw.get(..1).unwrap_or_default())
            )));
        };
        let token = frontend::password_from_auth_response(body)?;
        if token.is_empty() {
            return Err(PgError::ClientAuth {
                reason: "empty token".into(),
            });
        }
        let token = body.slice_ref(token);
        self.state = ClientState::AwaitingAuthorization;
        Ok(ClientEvent::Token(token))
    }

    fn on_query_phase(&mut self, frame: FrontendFrame) -> Result<ClientEvent, PgError> {
        if matches!(frame.message, FrontendMessage::Terminate) {
            self.state = ClientState::Closed;
            return Ok(ClientEvent::Terminate);
        }
        // Authentication is over: a late password or SASL message is not forwarded, where it
        // could only confuse the upstream's own authentication state.
        if matches!(frame.message, FrontendMessage::AuthResponse(_)) {
            return Err(PgError::client(
                "unexpected password message after authentication",
            ));
        }
        match self.state {
            ClientState::ExtendedError => {
                if matches!(frame.message, FrontendMessage::Sync) {
                    // The Sync goes upstream so the server ends the batch's implicit transaction
                    // and its ReadyForQuery reaches the client.
                    self.state = ClientState::Ready;
                    Ok(ClientEvent::Message(frame))
                } else {
                    Ok(ClientEvent::Skipped)
                }
            }
            ClientState::InCopyIn => match frame.message {
                FrontendMessage::CopyDone | FrontendMessage::CopyFail { .. } => {
                    self.state = ClientState::Ready;
                    Ok(ClientEvent::Message(frame))
                }
                FrontendMessage::CopyData(_) | FrontendMessage::Sync | FrontendMessage::Flush => {
                    Ok(ClientEvent::Message(frame))
                }
                _ => Err(PgError::client(format!(
                    "unexpected message `{}` during COPY from stdin",
                    quote(frame.raw.get(..1).unwrap_or_default())
                ))),
            },
            // Copy messages in Ready are forwarded too: a client may pipeline CopyData behind
            // its COPY statement before the server's CopyInResponse arrives, and the server
            // ignores stray ones itself.
            _ => Ok(ClientEvent::Message(frame)),
        }
    }

    /// Token verified and upstream ready: greets the client with AuthenticationOk, the
    /// parameters, the gateway's own cancel key and ReadyForQuery.
    pub fn accept(
        &mut self,
        out: &mut BytesMut,
        parameters: &[(Bytes, Bytes)],
        cancel_key: CancelKey,
        status: TransactionStatus,
    ) -> Result<(), PgError> {
        if self.state != ClientState::AwaitingAuthorization {
            return Err(PgError::internal(format!(
                "accept called in state {:?}",
                self.state
            )));
        }
        reply::auth_ok(out);
        for (name, value) in parameters {
            reply::parameter_status(out, name, value);
        }
        reply::backend_key_data(out, cancel_key.process_id, cancel_key.secret_key);
        reply::ready_for_query(out, status);
        self.status = status;
        self.state = ClientState::Ready;
        Ok(())
    }

    /// Writes the ErrorResponse for `error` (fatal errors close the session). A denied statement
    /// is not answered here: the driver hands it to
    /// [`ResponseSequencer::refuse`](super::sequencer::ResponseSequencer::refuse), so the server
    /// fails in its place and its transaction state stays true.
    pub fn refuse(&mut self, error: &PgError, out: &mut BytesMut) {
        reply::error_response(out, &error.to_error_fields());
        if error.severity() == reply::Severity::Fatal {
            self.state = ClientState::Closed;
        }
    }

    /// The driver refused an extended-mode message (Parse/Bind/Describe/Execute/Close) and sent
    /// the error: discard the client's messages until Sync, as the server does after an error.
    pub fn enter_extended_error(&mut self) {
        if self.state != ClientState::Closed {
            self.state = ClientState::ExtendedError;
        }
    }

    /// Follows the server's messages that change what the client may send next.
    pub fn observe_backend(&mut self, message: &BackendMessage) {
        match message {
            BackendMessage::CopyInResponse(_) | BackendMessage::CopyBothResponse(_)
                if self.state == ClientState::Ready =>
            {
                self.state = ClientState::InCopyIn;
            }
            BackendMessage::CopyOutResponse(_) if self.state == ClientState::Ready => {
                self.state = ClientState::InCopyOut;
            }
            BackendMessage::CopyDone if self.state == ClientState::InCopyOut => {
                self.state = ClientState::Ready;
            }
            BackendMessage::ReadyForQuery(status) => {
                self.status = *status;
                if matches!(self.state, ClientState::InCopyIn | ClientState::InCopyOut) {
                    self.state = ClientState::Ready;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
