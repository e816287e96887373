//! Authenticating the gateway to the upstream PostgreSQL server with the credential it holds.
//!
//! A sans-IO state machine: [`UpstreamAuth::start`] writes the StartupMessage, then each server
//! message goes into [`UpstreamAuth::on_message`] (or raw bytes into [`UpstreamAuth::feed`]),
//! which writes any answer into the caller's output buffer, until the server is ready for
//! queries. SCRAM-SHA-256 (with `tls-server-end-point` channel binding when the driver supplies
//! the certificate hash), md5 and cleartext are supported. The password never appears in an
//! error or in `Debug` output: failures keep only the server's SQLSTATE and message. This module
//! does not open sockets or TLS and does not pick the credential (configuration does).

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};

use super::backend::{self, Authentication, BackendMessage, NoticeFields};
use super::error::{PgError, quote};
use super::frontend::{self, CancelKey};
use super::limits::Limits;
use super::reply::TransactionStatus;

/// Most ParameterStatus messages accepted before ReadyForQuery (servers send about fifteen).
pub const MAX_UPSTREAM_PARAMETERS: usize = 256;

/// The upstream password. Its `Debug` is redacted and it is never formatted into errors.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamPassword(Vec<u8>);

impl UpstreamPassword {
    /// Wraps a password read from the configured file or environment variable.
    pub fn new(password: impl Into<Vec<u8>>) -> Self {
        Self(password.into())
    }

    fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for UpstreamPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamPassword(<redacted>)")
    }
}

/// What the gateway logs in as upstream.
#[derive(Debug, Clone)]
pub struct UpstreamCredential {
    /// Upstream role.
    pub user: String,
    /// Its password.
    pub password: UpstreamPassword,
    /// Upstream database.
    pub database: String,
}

/// What the server told us once it is ready: the driver relays the parameters to the client
/// and keeps the cancel key to forward cancels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamReady {
    /// ParameterStatus pairs in arrival order.
    pub parameters: Vec<(Bytes, Bytes)>,
    /// The upstream's cancel key (absent on some poolers).
    pub cancel_key: Option<CancelKey>,
    /// Transaction status from the first ReadyForQuery.
    pub status: TransactionStatus,
    /// How the gateway authenticated: `SCRAM-SHA-256-PLUS`, `SCRAM-SHA-256`, `md5`,
    /// `password` or `trust`; logged so an operator can see channel binding is in use.
    pub method: &'static str,
}

/// Progress after one server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthProgress {
    /// More messages are needed; anything to send was written to the output buffer.
    Continue,
    /// The upstream session is ready for queries.
    Ready(UpstreamReady),
}

/// States, named for what they wait for.
enum State {
    ExpectAuthRequest,
    ExpectSaslContinue(Box<ScramSha256>),
    ExpectSaslFinal(Box<ScramSha256>),
    ExpectAuthOk,
    ExpectReady,
    Done,
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::ExpectAuthRequest => "ExpectAuthRequest",
            Self::ExpectSaslContinue(_) => "ExpectSaslContinue",
            Self::ExpectSaslFinal(_) => "ExpectSaslFinal",
            Self::ExpectAuthOk => "ExpectAuthOk",
            Self::ExpectReady => "ExpectReady",
            Self::Done => "Done",
            Self::Failed => "Failed",
        }
    }
}

/// The upstream authentication state machine.
pub struct UpstreamAuth {
    state: State,
    user: String,
    password: UpstreamPassword,
    tls_server_end_point: Option<Vec<u8>>,
    parameters: Vec<(Bytes, Bytes)>,
    cancel_key: Option<CancelKey>,
    method: &'static str,
}

impl std::fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamAuth")
            .field("state", &self.state.name())
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl UpstreamAuth {
    /// Writes the StartupMessage into `out` and returns the machine waiting for the server.
    ///
    /// `extra_params` are sent after `user` and `database` (e.g. `application_name`,
    /// `client_encoding`). `tls_server_end_point` is the hash of the upstream's certificate when
    /// the connection runs over TLS; with it SCRAM-SHA-256-PLUS binds the exchange to the TLS
    /// session so a man in the middle cannot relay it.
    pub fn start(
        credential: &UpstreamCredential,
        extra_params: &[(&[u8], &[u8])],
        tls_server_end_point: Option<Vec<u8>>,
        out: &mut BytesMut,
    ) -> Self {
        let mut params: Vec<(&[u8], &[u8])> = vec![
            (b"user", credential.user.as_bytes()),
            (b"database", credential.database.as_bytes()),
        ];
        params.extend(
            extra_params
                .iter()
                .filter(|(n, _)| *n != b"user" && *n != b"database"),
        );
        frontend::encode_startup(out, &params);
        Self {
            state: State::ExpectAuthRequest,
            user: credential.user.clone(),
            password: credential.password.clone(),
            tls_server_end_point,
            parameters: Vec::new(),
            cancel_key: None,
            method: "trust",
        }
    }

    /// The state's name, for logs and tests.
    pub fn state_name(&self) -> &'static str {
        self.state.name()
    }

    /// Decodes and handles every complete message in `input`, writing answers into `out`.
    /// Returns `Some` once the server is ready; bytes after ReadyForQuery stay in `input`.
    pub fn feed(
        &mut self,
        input: &mut BytesMut,
        limits: &Limits,
        out: &mut BytesMut,
    ) -> Result<Option<UpstreamReady>, PgError> {
        while let Some(frame) = backend::decode_message(input, limits)? {
            if let AuthProgress::Ready(ready) = self.on_message(&frame.message, out)? {
                return Ok(Some(ready));
            }
        }
        Ok(None)
    }

    /// Handles one server message.
    pub fn on_message(
        &mut self,
        message: &BackendMessage,
        out: &mut BytesMut,
    ) -> Result<AuthProgress, PgError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let result = self.step(state, message, out);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn auth_error(&self, reason: impl Into<String>) -> PgError {
        PgError::UpstreamAuth {
            user: self.user.clone(),
            reason: reason.into(),
        }
    }

    fn server_error(&self, fields: &NoticeFields) -> PgError {
        let reason = format!("{} {}", fields.code(), fields.message());
        // 28xxx are the server's authentication failures; anything else before ReadyForQuery
        // (unknown database, too many connections, shutdown) is a failed connection.
        if fields.code().starts_with("28") {
            self.auth_error(reason)
        } else {
            PgError::UpstreamConnect { reason }
        }
    }

    fn step(
        &mut self,
        state: State,
        message: &BackendMessage,
        out: &mut BytesMut,
    ) -> Result<AuthProgress, PgError> {
        if let BackendMessage::ErrorResponse(fields) = message {
            return Err(self.server_error(fields));
        }
        // Notices may arrive at any point of the startup and carry nothing we need.
        if matches!(message, BackendMessage::NoticeResponse(_)) {
            self.state = state;
            return Ok(AuthProgress::Continue);
        }
        self.state = match (state, message) {
            (State::ExpectAuthRequest, BackendMessage::Authentication(auth)) => {
                let (state, method) = self.answer_request(auth, out)?;
                self.method = method;
                state
            }
            (
                State::ExpectSaslContinue(mut scram),
                BackendMessage::Authentication(Authentication::SaslContinue(data)),
            ) => {
                scram
                    .update(data)
                    .map_err(|_| self.auth_error("invalid SCRAM server-first message"))?;
                frontend::encode_sasl_response(out, scram.message());
                State::ExpectSaslFinal(scram)
            }
            (
                State::ExpectSaslFinal(mut scram),
                BackendMessage::Authentication(Authentication::SaslFinal(data)),
            ) => {
                scram
                    .finish(data)
                    .map_err(|_| self.auth_error("the server's SCRAM signature did not verify"))?;
                State::ExpectAuthOk
            }
            (State::ExpectAuthOk, BackendMessage::Authentication(Authentication::Ok)) => {
                State::ExpectReady
            }
            (State::ExpectReady, BackendMessage::ParameterStatus { name, value }) => {
                if self.parameters.len() >= MAX_UPSTREAM_PARAMETERS {
                    return Err(PgError::upstream(format!(
                        "more than {MAX_UPSTREAM_PARAMETERS} ParameterStatus messages"
                    )));
                }
                self.parameters.push((name.clone(), value.clone()));
                State::ExpectReady
            }
            (State::ExpectReady, BackendMessage::BackendKeyData(key)) => {
                self.cancel_key = Some(*key);
                State::ExpectReady
            }
            (State::ExpectReady, BackendMessage::ReadyForQuery(status)) => {
                self.state = State::Done;
                return Ok(AuthProgress::Ready(UpstreamReady {
                    parameters: std::mem::take(&mut self.parameters),
                    cancel_key: self.cancel_key,
                    status: *status,
                    method: self.method,
                }));
            }
            (state, message) => {
                return Err(PgError::upstream(format!(
                    "unexpected {} while in {}",
                    message_name(message),
                    state.name()
                )));
            }
        };
        Ok(AuthProgress::Continue)
    }

    /// Answers an authentication request; the next state and the method's name.
    fn answer_request(
        &self,
        auth: &Authentication,
        out: &mut BytesMut,
    ) -> Result<(State, &'static str), PgError> {
        match auth {
            // Trust authentication: the server asks for nothing.
            Authentication::Ok => Ok((State::ExpectReady, "trust")),
            Authentication::CleartextPassword => {
                frontend::encode_password(out, self.password.expose());
                Ok((State::ExpectAuthOk, "password"))
            }
            Authentication::Md5Password { salt } => {
                let hash = md5_hash(self.user.as_bytes(), self.password.expose(), *salt);
                frontend::encode_password(out, hash.as_bytes());
                Ok((State::ExpectAuthOk, "md5"))
            }
            Authentication::Sasl { mechanisms } => {
                let offers = |m: &str| mechanisms.iter().any(|o| o.as_ref() == m.as_bytes());
                let (mechanism, binding) = match &self.tls_server_end_point {
                    Some(hash) if offers(SCRAM_SHA_256_PLUS) => (
                        SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(hash.clone()),
                    ),
                    Some(_) if offers(SCRAM_SHA_256) => {
                        (SCRAM_SHA_256, ChannelBinding::unrequested())
                    }
                    None if offers(SCRAM_SHA_256) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                    _ => {
                        let offered: Vec<String> = mechanisms.iter().map(|m| quote(m)).collect();
                        return Err(PgError::UpstreamAuthUnsupported {
                            method: format!("sasl {}", offered.join(", ")),
                        });
                    }
                };
                let scram = ScramSha256::new(self.password.expose(), binding);
                frontend::encode_sasl_initial_response(out, mechanism.as_bytes(), scram.message());
                Ok((State::ExpectSaslContinue(Box::new(scram)), mechanism))
            }
            other @ (Authentication::SaslContinue(_)
            | Authentication::SaslFinal(_)
            | Authentication::Unsupported(_)) => {
                if let Authentication::Unsupported(_) = other {
                    Err(PgError::UpstreamAuthUnsupported {
                        method: other.method_name(),
                    })
                } else {
                    Err(PgError::upstream("SASL message before SASL was started"))
                }
            }
        }
    }
}

fn message_name(message: &BackendMessage) -> &'static str {
    match message {
        BackendMessage::Authentication(_) => "Authentication",
        BackendMessage::ParameterStatus { .. } => "ParameterStatus",
        BackendMessage::BackendKeyData(_) => "BackendKeyData",
        BackendMessage::ReadyForQuery(_) => "ReadyForQuery",
        BackendMessage::RowDescription(_) => "RowDescription",
        BackendMessage::DataRow(_) => "DataRow",
        BackendMessage::CommandComplete { .. } => "CommandComplete",
        BackendMessage::EmptyQueryResponse => "EmptyQueryResponse",
        BackendMessage::ErrorResponse(_) => "ErrorResponse",
        BackendMessage::NoticeResponse(_) => "NoticeResponse",
        BackendMessage::CopyInResponse(_) => "CopyInResponse",
        BackendMessage::CopyOutResponse(_) => "CopyOutResponse",
        BackendMessage::CopyBothResponse(_) => "CopyBothResponse",
        BackendMessage::CopyData(_) => "CopyData",
        BackendMessage::CopyDone => "CopyDone",
        BackendMessage::NotificationResponse { .. } => "NotificationResponse",
        BackendMessage::ParseComplete => "ParseComplete",
        BackendMessage::BindComplete => "BindComplete",
        BackendMessage::CloseComplete => "CloseComplete",
        BackendMessage::NoData => "NoData",
        BackendMessage::ParameterDescription { .. } => "ParameterDescription",
        BackendMessage::PortalSuspended => "PortalSuspended",
        BackendMessage::FunctionCallResponse(_) => "FunctionCallResponse",
        BackendMessage::NegotiateProtocolVersion { .. } => "NegotiateProtocolVersion",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::backend::Authentication;

    fn start() -> (UpstreamAuth, BytesMut) {
        let credential = UpstreamCredential {
            user: "app".into(),
            password: UpstreamPassword::new("hunter2-secret"),
            database: "orders".into(),
        };
        let mut out = BytesMut::new();
        let auth = UpstreamAuth::start(
            &credential,
            &[(b"application_name", b"portcullis"), (b"user", b"ignored")],
            None,
            &mut out,
        );
        (auth, out)
    }

    #[test]
    fn startup_names_the_configured_user_and_database_only() {
        let (_, out) = start();
        let mut buf = out.clone();
        let packet = frontend::decode_startup(&mut buf, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(&packet.param(b"user").unwrap()[..], b"app");
        assert_eq!(&packet.param(b"database").unwrap()[..], b"orders");
        assert_eq!(
            &packet.param(b"application_name").unwrap()[..],
            b"portcullis"
        );
        let frontend::StartupPacket::Startup { params, .. } = packet else {
            panic!()
        };
        assert_eq!(params.len(), 3, "{params:?}");
    }

    #[test]
    fn cleartext_then_ready() {
        let (mut auth, _) = start();
        let mut out = BytesMut::new();
        let step = auth
            .on_message(
                &BackendMessage::Authentication(Authentication::CleartextPassword),
                &mut out,
            )
            .unwrap();
        assert_eq!(step, AuthProgress::Continue);
        assert_eq!(&out[..], b"p\0\0\0\x13hunter2-secret\0");
        for m in [
            BackendMessage::Authentication(Authentication::Ok),
            BackendMessage::BackendKeyData(CancelKey {
                process_id: 5,
                secret_key: 6,
            }),
        ] {
            assert_eq!(
                auth.on_message(&m, &mut out).unwrap(),
                AuthProgress::Continue
            );
        }
        let AuthProgress::Ready(ready) = auth
            .on_message(
                &BackendMessage::ReadyForQuery(TransactionStatus::Idle),
                &mut out,
            )
            .unwrap()
        else {
            panic!("not ready")
        };
        assert_eq!(ready.cancel_key.map(|k| k.process_id), Some(5));
        assert_eq!(auth.state_name(), "Done");
    }

    #[test]
    fn unsupported_methods_and_out_of_order_messages_are_typed() {
        let (mut auth, _) = start();
        let mut out = BytesMut::new();
        let err = auth
            .on_message(
                &BackendMessage::Authentication(Authentication::Unsupported(7)),
                &mut out,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "upstream requested unsupported authentication method `gss`"
        );

        let (mut auth, _) = start();
        let err = auth
            .on_message(
                &BackendMessage::Authentication(Authentication::Sasl {
                    mechanisms: vec![Bytes::from_static(b"SCRAM-SHA-256-PLUS")],
                }),
                &mut out,
            )
            .unwrap_err();
        assert!(
            matches!(err, PgError::UpstreamAuthUnsupported { .. }),
            "{err}"
        );

        let (mut auth, _) = start();
        let err = auth
            .on_message(
                &BackendMessage::ReadyForQuery(TransactionStatus::Idle),
                &mut out,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "upstream protocol violation: unexpected ReadyForQuery while in ExpectAuthRequest"
        );
        assert_eq!(auth.state_name(), "Failed");
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn channel_binding_is_used_when_offered_over_tls() {
        let credential = UpstreamCredential {
            user: "app".into(),
            password: UpstreamPassword::new("pw"),
            database: "db".into(),
        };
        let mut out = BytesMut::new();
        let mut auth = UpstreamAuth::start(&credential, &[], Some(vec![1; 32]), &mut out);
        out.clear();
        auth.on_message(
            &BackendMessage::Authentication(Authentication::Sasl {
                mechanisms: vec![
                    Bytes::from_static(b"SCRAM-SHA-256-PLUS"),
                    Bytes::from_static(b"SCRAM-SHA-256"),
                ],
            }),
            &mut out,
        )
        .unwrap();
        let sent = String::from_utf8_lossy(&out);
        assert!(sent.contains("SCRAM-SHA-256-PLUS\0"), "{sent}");
        assert!(sent.contains("p=tls-server-end-point,,"), "{sent}");
    }
}
