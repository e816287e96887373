//! Typed errors of the PostgreSQL module, each naming the side that failed and mapping to
//! exactly one reply on the client's wire.
//!
//! Messages are lowercase and quote peer input in backticks. No variant can carry the upstream
//! password or a SCRAM proof: upstream authentication failures keep only the server's SQLSTATE
//! and its message, which the server writes without the secret. This module does not log and
//! does not decide whether the connection closes; [`PgError::severity`] tells the driver.

use super::reply::{ErrorFields, Severity, SqlState};
use crate::identity::AuthError;

/// `57P03` cannot_connect_now: the gateway cannot verify tokens yet (no issuer keys loaded);
/// the same token may work shortly, unlike `28P01`, which says the token itself is wrong.
const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");

/// Which side of the gateway caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client (caller) sent something wrong or is not allowed.
    Client,
    /// The upstream server failed, misbehaved or refused the gateway's credential.
    Upstream,
    /// The gateway itself (policy, configuration, shutdown, capacity).
    Gateway,
}

/// Everything that can go wrong in the PostgreSQL module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgError {
    /// The client broke the protocol (bad length, unknown tag, malformed fields).
    #[error("client protocol violation: {reason}")]
    ClientProtocol {
        /// What was wrong, quoting the offending input in backticks.
        reason: String,
    },
    /// The client announced a message larger than the configured limit.
    #[error("client message `{tag}` of {len} bytes exceeds the limit of {limit} bytes")]
    ClientMessageTooLong {
        /// Message tag as a character (`startup` packets use `\0`).
        tag: char,
        /// Announced length.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The client asked for a protocol major version the gateway does not speak.
    #[error("unsupported frontend protocol {major}.{minor}: the gateway supports 3.0")]
    UnsupportedProtocolVersion {
        /// Major version requested.
        major: u16,
        /// Minor version requested.
        minor: u16,
    },
    /// The client tried to authenticate without TLS on a connection that requires it.
    #[error("connection requires tls: reconnect with sslmode=require")]
    ClientTlsRequired,
    /// The client's token was missing or invalid.
    #[error("token authentication failed: {reason}")]
    ClientAuth {
        /// Why, without echoing the token.
        reason: String,
    },
    /// The verifier refused the client's token; carries why, for the client and for audit.
    #[error("token authentication failed: {0}")]
    TokenRefused(AuthError),
    /// The identity may not use this connection (policy, time window, missing grant).
    #[error("access denied: {reason}")]
    AccessDenied {
        /// Why, as policy phrases it.
        reason: String,
    },
    /// A statement was denied by policy; it never reached the upstream.
    #[error("statement denied by rule `{rule}`: {message}")]
    StatementDenied {
        /// The rule that decided.
        rule: String,
        /// The rule's message.
        message: String,
    },
    /// A statement held for review was not approved (denied, timed out, or the review could
    /// not be opened); it never reached the upstream.
    #[error("{message}")]
    ReviewRefused {
        /// `denied by <approver>: <reason>`, `review <id> timed out`, ...
        message: String,
    },
    /// An administrator ended the session through the admin API.
    #[error("terminating connection: ended by an administrator")]
    AdminTerminated,
    /// The session's token expired: no new statement runs until the caller reconnects.
    #[error("the session's token has expired: reconnect with a fresh token")]
    TokenExpired,
    /// The audit record could not be queued, so the statement was not forwarded (fail closed).
    #[error("statement refused: the audit recorder cannot take records right now")]
    AuditUnavailable,
    /// The upstream broke the protocol.
    #[error("upstream protocol violation: {reason}")]
    UpstreamProtocol {
        /// What was wrong.
        reason: String,
    },
    /// The upstream announced a message larger than the configured limit.
    #[error("upstream message `{tag}` of {len} bytes exceeds the limit of {limit} bytes")]
    UpstreamMessageTooLong {
        /// Message tag as a character.
        tag: char,
        /// Announced length.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The upstream refused the gateway's credential. Never carries the secret.
    #[error("upstream refused the gateway credential for user `{user}`: {reason}")]
    UpstreamAuth {
        /// The upstream role name (not secret).
        user: String,
        /// The server's SQLSTATE and message, or what failed in the exchange.
        reason: String,
    },
    /// The upstream asked for an authentication method the gateway does not implement.
    #[error("upstream requested unsupported authentication method `{method}`")]
    UpstreamAuthUnsupported {
        /// The method's name.
        method: String,
    },
    /// The upstream could not be reached or the connection broke.
    #[error("upstream connection failed: {reason}")]
    UpstreamConnect {
        /// What failed.
        reason: String,
    },
    /// The gateway is shutting down.
    #[error("terminating connection: the gateway is shutting down")]
    AdminShutdown,
    /// The gateway is at its connection limit.
    #[error("too many connections: the gateway limit of {limit} is reached")]
    TooManyConnections {
        /// The configured limit.
        limit: usize,
    },
    /// A bug or impossible state inside the gateway.
    #[error("gateway internal error: {reason}")]
    Internal {
        /// What went wrong.
        reason: String,
    },
}

impl PgError {
    /// A client protocol violation.
    pub fn client(reason: impl Into<String>) -> Self {
        Self::ClientProtocol {
            reason: reason.into(),
        }
    }

    /// An upstream protocol violation.
    pub fn upstream(reason: impl Into<String>) -> Self {
        Self::UpstreamProtocol {
            reason: reason.into(),
        }
    }

    /// An internal error.
    pub fn internal(reason: impl Into<String>) -> Self {
        Self::Internal {
            reason: reason.into(),
        }
    }

    /// Who failed.
    pub fn side(&self) -> Side {
        match self {
            Self::ClientProtocol { .. }
            | Self::ClientMessageTooLong { .. }
            | Self::UnsupportedProtocolVersion { .. }
            | Self::ClientTlsRequired
            | Self::ClientAuth { .. }
            | Self::TokenExpired
            | Self::AccessDenied { .. } => Side::Client,
            Self::TokenRefused(e) if e.is_ours() => Side::Gateway,
            Self::TokenRefused(_) => Side::Client,
            Self::UpstreamProtocol { .. }
            | Self::UpstreamMessageTooLong { .. }
            | Self::UpstreamAuth { .. }
            | Self::UpstreamAuthUnsupported { .. }
            | Self::UpstreamConnect { .. } => Side::Upstream,
            Self::StatementDenied { .. }
            | Self::ReviewRefused { .. }
            | Self::AuditUnavailable
            | Self::AdminShutdown
            | Self::AdminTerminated
            | Self::TooManyConnections { .. }
            | Self::Internal { .. } => Side::Gateway,
        }
    }

    /// The SQLSTATE the client sees.
    ///
    /// Upstream failures are all `08006`: from the client's point of view the connection behind
    /// the gateway failed, and `28xxx` would wrongly tell it that its own token was refused.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            Self::ClientProtocol { .. } => SqlState::PROTOCOL_VIOLATION,
            Self::ClientMessageTooLong { .. } => SqlState::PROGRAM_LIMIT_EXCEEDED,
            Self::UnsupportedProtocolVersion { .. } => SqlState::FEATURE_NOT_SUPPORTED,
            Self::ClientTlsRequired | Self::AccessDenied { .. } => SqlState::INVALID_AUTHORIZATION,
            Self::ClientAuth { .. } | Self::TokenExpired => SqlState::INVALID_PASSWORD,
            Self::TokenRefused(e) if e.is_ours() => CANNOT_CONNECT_NOW,
            Self::TokenRefused(_) => SqlState::INVALID_PASSWORD,
            Self::StatementDenied { .. } | Self::ReviewRefused { .. } => {
                SqlState::INSUFFICIENT_PRIVILEGE
            }
            Self::AuditUnavailable => SqlState::INSUFFICIENT_RESOURCES,
            Self::UpstreamProtocol { .. }
            | Self::UpstreamMessageTooLong { .. }
            | Self::UpstreamAuth { .. }
            | Self::UpstreamAuthUnsupported { .. }
            | Self::UpstreamConnect { .. } => SqlState::CONNECTION_FAILURE,
            Self::AdminShutdown | Self::AdminTerminated => SqlState::ADMIN_SHUTDOWN,
            Self::TooManyConnections { .. } => SqlState::TOO_MANY_CONNECTIONS,
            Self::Internal { .. } => SqlState::INTERNAL_ERROR,
        }
    }

    /// `Error` when the session survives (a denied statement), `Fatal` when it must close.
    pub fn severity(&self) -> Severity {
        match self {
            Self::StatementDenied { .. } | Self::ReviewRefused { .. } | Self::AuditUnavailable => {
                Severity::Error
            }
            _ => Severity::Fatal,
        }
    }

    /// The `outcome_reason` recorded for a session this error ends. A refused token leads with
    /// its stable kind (`bad_signature: token signature does not verify`) so auditors can group
    /// failures; never the token itself (no variant carries it).
    pub fn audit_reason(&self) -> String {
        match self {
            Self::TokenRefused(e) => format!("{}: {}", e.kind(), e.client_message()),
            _ => self.to_string(),
        }
    }

    /// The one ErrorResponse this error becomes on the client's wire.
    pub fn to_error_fields(&self) -> ErrorFields {
        let fields = ErrorFields::new(self.severity(), self.sqlstate(), self.to_string());
        match self {
            Self::UpstreamAuth { .. } => fields.with_hint(
                "the gateway's credential for this connection was refused; tell the operator",
            ),
            Self::ClientTlsRequired => {
                fields.with_hint("this gateway accepts tokens only over tls")
            }
            _ => fields,
        }
    }
}

/// Quotes at most a short prefix of peer bytes for an error message, escaping what is not
/// printable so a message never carries control characters or a whole payload.
pub(crate) fn quote(bytes: &[u8]) -> String {
    const MAX_QUOTED: usize = 64;
    let shown = bytes.get(..MAX_QUOTED).unwrap_or(bytes);
    let mut s = String::with_capacity(shown.len().saturating_add(3));
    for &b in shown {
        s.extend(std::ascii::escape_default(b).map(char::from));
    }
    if shown.len() < bytes.len() {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_one_sqlstate() {
        let denied = PgError::StatementDenied {
            rule: "no-drop".into(),
            message: "drops need review".into(),
        };
        let fields = denied.to_error_fields();
        assert_eq!(fields.code, SqlState::INSUFFICIENT_PRIVILEGE);
        assert_eq!(fields.severity, Severity::Error);
        assert_eq!(
            fields.message,
            "statement denied by rule `no-drop`: drops need review"
        );
        assert_eq!(denied.side(), Side::Gateway);

        let up = PgError::UpstreamAuth {
            user: "app".into(),
            reason: "28P01".into(),
        };
        assert_eq!(up.sqlstate().as_str(), "08006");
        assert_eq!(up.side(), Side::Upstream);
        assert_eq!(up.severity(), Severity::Fatal);
        assert_eq!(PgError::AdminShutdown.sqlstate().as_str(), "57P01");
        assert_eq!(
            PgError::TooManyConnections { limit: 3 }.sqlstate().as_str(),
            "53300"
        );
        assert_eq!(PgError::client("x").sqlstate().as_str(), "08P01");
    }

    #[test]
    fn refused_tokens_map_by_whose_fault_and_record_their_kind() {
        let bad = PgError::TokenRefused(AuthError::BadSignature);
        assert_eq!(bad.sqlstate(), SqlState::INVALID_PASSWORD);
        assert_eq!(bad.side(), Side::Client);
        assert_eq!(bad.severity(), Severity::Fatal);
        assert_eq!(
            bad.to_error_fields().message,
            "token authentication failed: token signature does not verify"
        );
        assert_eq!(
            bad.audit_reason(),
            "bad_signature: token signature does not verify"
        );
        let expired = PgError::TokenRefused(AuthError::Expired { exp: 7 });
        assert!(
            expired
                .audit_reason()
                .starts_with("expired: token expired at 7")
        );
        let no_keys = PgError::TokenRefused(AuthError::NoKeys);
        assert_eq!(no_keys.sqlstate().as_str(), "57P03");
        assert_eq!(no_keys.side(), Side::Gateway);
        assert_eq!(
            PgError::AccessDenied { reason: "x".into() }.audit_reason(),
            "access denied: x"
        );
    }

    #[test]
    fn quote_escapes_and_truncates() {
        assert_eq!(quote(b"a\x01"), "a\\x01");
        assert!(quote(&[b'x'; 100]).ends_with("..."));
    }
}
