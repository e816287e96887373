//! Identity: turns a caller's OIDC JWT into an [`Identity`] (subject, email, groups, human or
//! service) that policy and audit use.
//!
//! The pieces, each in its own module:
//! - [`config`]: the `[identity]` table (issuer, audience, where the JWKS comes from, which
//!   claims hold subject/email/groups, leeway, limits);
//! - [`jwks`]: parsing a JWKS into pre-parsed public keys, and the [`KeyStore`] snapshot that
//!   workers read and the control thread swaps;
//! - [`verify`]: the [`Verifier`] (signature, `iss`, `aud`, `exp`, `nbf`, `iat`, claims);
//! - [`cache`]: the per-core [`TokenCache`] so steady-state verification is one hash lookup;
//! - [`refresh`]: the control-thread [`JwksRefresher`] (file, URL or OIDC discovery; periodic and
//!   on-demand when an unknown `kid` shows up);
//! - [`issuer`]: the local issuer behind `portcullis token keygen|mint`.
//!
//! Deliberately not here: how a protocol carries the token (PostgreSQL password, `Authorization:
//! Bearer`, ...), how an [`AuthError`] maps to a wire error, and recording: protocol modules own
//! those and call [`Verifier::verify`] / [`Identity::expired`]. Symmetric (HS*) tokens are never
//! accepted: the gateway holds only public keys.

pub mod cache;
pub mod config;
pub mod error;
pub mod issuer;
pub mod jwks;
pub mod refresh;
pub mod verify;

pub use cache::TokenCache;
pub use config::{IdentityConfig, JwksSource};
pub use error::{AuthError, AuthErrorKind, IssuerError, JwksError};
pub use issuer::{KeyAlg, KeygenOutput, MintRequest, keygen, mint, mint_with_pem, parse_ttl};
pub use jwks::{KeySet, KeyStore};
pub use refresh::{JwksRefresher, RefreshHandle, RefresherThread};
pub use verify::{Verifier, presented_subject};

/// Seconds since the Unix epoch: the unit of every JWT time claim.
pub type UnixSeconds = i64;

/// Now, as [`UnixSeconds`]. A clock before 1970 reads as 0, which makes every token look
/// expired: failing closed.
pub fn now_unix() -> UnixSeconds {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Whether the caller is a person or an automation agent. Policy treats both alike; audit
/// records which it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// A person who signed in at the issuer.
    Human,
    /// An automation agent holding a client-credentials token (see docs/identity.md for how it
    /// is recognised).
    Service,
}

impl IdentityKind {
    /// The stable name audit records use.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Human => "human",
            IdentityKind::Service => "service",
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The configured subject claim (`sub` by default).
    pub subject: String,
    /// The configured email claim, when the token has one.
    pub email: Option<String>,
    /// Groups from the configured groups claim, in token order, duplicates removed.
    pub groups: Vec<String>,
    /// Person or automation agent.
    pub kind: IdentityKind,
    /// The token's `exp`: after this (plus the session grace) the caller must reconnect.
    pub expires_at: UnixSeconds,
    /// The token's `iss`.
    pub issuer: String,
}

impl Identity {
    /// Whether a session authenticated with this identity may no longer run new commands:
    /// `now` is at or past `expires_at + grace`. Protocol modules call this before each command
    /// and refuse it with a "reconnect with a fresh token" error when it returns true.
    pub fn expired(&self, now: UnixSeconds, grace: std::time::Duration) -> bool {
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        now >= self.expires_at.saturating_add(grace)
    }

    /// Whether `group` is one of this identity's groups.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}
