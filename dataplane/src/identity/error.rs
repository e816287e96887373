//! Identity errors: why a token was refused ([`AuthError`], always the client's fault except
//! `no_keys`), why keys could not be loaded ([`JwksError`]), and local issuer failures
//! ([`IssuerError`]).
//!
//! Messages are safe to send to the client: they never contain the token, and quoted header or
//! claim values are truncated by [`quote`].

use thiserror::Error;

/// Longest header/claim value quoted back in an error message.
const MAX_QUOTED_CHARS: usize = 64;

/// Truncates a peer-supplied value for quoting in a message, and drops control characters so a
/// crafted claim cannot forge log lines.
pub(crate) fn quote(s: &str) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_QUOTED_CHARS)
        .collect();
    if s.chars().count() > MAX_QUOTED_CHARS {
        out.push('…');
    }
    out
}

/// The audit-facing reason a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthErrorKind {
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    UnknownKid,
    AlgNotAllowed,
    Oversized,
    Malformed,
    NoKeys,
}

impl AuthErrorKind {
    /// The stable name recorded in audit (`sessions.outcome` and the like).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthErrorKind::BadSignature => "bad_signature",
            AuthErrorKind::Expired => "expired",
            AuthErrorKind::NotYetValid => "not_yet_valid",
            AuthErrorKind::WrongIssuer => "wrong_issuer",
            AuthErrorKind::WrongAudience => "wrong_audience",
            AuthErrorKind::UnknownKid => "unknown_kid",
            AuthErrorKind::AlgNotAllowed => "alg_not_allowed",
            AuthErrorKind::Oversized => "oversized",
            AuthErrorKind::Malformed => "malformed",
            AuthErrorKind::NoKeys => "no_keys",
        }
    }
}

impl std::fmt::Display for AuthErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a presented token was refused. The `Display` text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired at {exp} (unix seconds); reconnect with a fresh token")]
    Expired { exp: i64 },
    #[error("token is not valid before {nbf} (unix seconds)")]
    NotYetValid { nbf: i64 },
    #[error("token was issued in the future (`iat` {iat})")]
    IssuedInFuture { iat: i64 },
    #[error("token issuer `{0}` is not trusted")]
    WrongIssuer(String),
    #[error("token audience does not include this gateway")]
    WrongAudience,
    #[error("token key id `{0}` is not in the issuer's key set")]
    UnknownKid(String),
    #[error("token algorithm `{0}` is not allowed")]
    AlgNotAllowed(String),
    #[error("token algorithm `{alg}` does not match key `{kid}`")]
    KeyAlgMismatch { alg: String, kid: String },
    #[error("token is {len} bytes, over the {limit}-byte limit")]
    Oversized { len: usize, limit: usize },
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token claim `{0}` is missing or not a string")]
    MissingClaim(String),
    #[error("token claim `{0}` is over its size limit")]
    ClaimTooLarge(String),
    /// Our side: no usable key has been loaded yet (issuer unreachable, bad JWKS file).
    #[error("the gateway has no keys for the token issuer yet; try again shortly")]
    NoKeys,
}

impl AuthError {
    /// The audit reason.
    pub fn kind(&self) -> AuthErrorKind {
        match self {
            AuthError::BadSignature => AuthErrorKind::BadSignature,
            AuthError::Expired { .. } => AuthErrorKind::Expired,
            AuthError::NotYetValid { .. } | AuthError::IssuedInFuture { .. } => {
                AuthErrorKind::NotYetValid
            }
            AuthError::WrongIssuer(_) => AuthErrorKind::WrongIssuer,
            AuthError::WrongAudience => AuthErrorKind::WrongAudience,
            AuthError::UnknownKid(_) => AuthErrorKind::UnknownKid,
            AuthError::AlgNotAllowed(_) | AuthError::KeyAlgMismatch { .. } => {
                AuthErrorKind::AlgNotAllowed
            }
            AuthError::Oversized { .. } => AuthErrorKind::Oversized,
            AuthError::Malformed(_) | AuthError::MissingClaim(_) | AuthError::ClaimTooLarge(_) => {
                AuthErrorKind::Malformed
            }
            AuthError::NoKeys => AuthErrorKind::NoKeys,
        }
    }

    /// Whether the gateway, not the client, is at fault (the client may retry unchanged).
    pub fn is_ours(&self) -> bool {
        matches!(self, AuthError::NoKeys)
    }

    /// The text to send to the client. Same as `Display`; named so call sites say what they mean.
    pub fn client_message(&self) -> String {
        self.to_string()
    }
}

/// Why a key set could not be loaded. The control thread logs these; the previous key set stays
/// in force.
#[derive(Debug, Error)]
pub enum JwksError {
    #[error("reading jwks file `{path}`: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("fetching `{url}` from the issuer: {reason}")]
    Fetch { url: String, reason: String },
    #[error("issuer document `{url}` is over the {limit}-byte limit")]
    TooLarge { url: String, limit: u64 },
    #[error("refusing plain-http key url `{0}`: use https, or set allow_insecure_http")]
    InsecureUrl(String),
    #[error("issuer document `{url}` is not valid: {reason}")]
    BadDocument { url: String, reason: String },
    #[error("jwks has {count} keys, over the {limit}-key limit")]
    TooManyKeys { count: usize, limit: usize },
    #[error("jwks is not valid json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("jwks has no usable signing key")]
    NoUsableKeys,
}

/// Local issuer failures (`portcullis token keygen|mint`).
#[derive(Debug, Error)]
pub enum IssuerError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("signing key `{0}` is not a PKCS#8 PEM Ed25519 or P-256 private key")]
    BadKey(String),
    #[error("key generation failed in the crypto library")]
    Crypto,
    #[error("signing failed in the crypto library")]
    Sign,
    #[error("`{0}` is not a duration like `90s`, `15m`, `12h` or `7d`")]
    BadTtl(String),
    #[error("json encoding failed: {0}")]
    Json(#[from] serde_json::Error),
}
