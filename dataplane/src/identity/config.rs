//! The `[identity]` configuration table: which issuer and audience to trust, where its keys come
//! from, which claims carry subject/email/groups, and the limits.
//!
//! Parsing only: the file is read by the appliance; this module does not touch the network or
//! the filesystem.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Default largest token accepted, in bytes. Real access tokens with a few dozen groups stay
/// well under 8 KiB; anything larger is refused before any decoding.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where the issuer's public keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JwksSource {
    /// A local JWKS file (air-gapped appliances, `portcullis token keygen`): `jwks = { file = "..." }`.
    File(PathBuf),
    /// A JWKS URL: `jwks = { url = "https://..." }`.
    Url(String),
    /// OIDC discovery from the issuer (`<issuer>/.well-known/openid-configuration`, then its
    /// `jwks_uri`): `jwks = "discovery"`.
    Discovery,
}

/// The `[identity]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Exact `iss` value tokens must carry; also the base URL for discovery.
    pub issuer: String,
    /// Accepted audiences: a token is accepted when its `aud` contains one of them. A string or
    /// a list in the file.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Where the keys come from.
    pub jwks: JwksSource,
    /// Dotted path of the subject claim.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Dotted path of the email claim.
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// Dotted path of the groups claim (for example `realm_access.roles`); an array of strings or
    /// a space-separated string.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Dotted path of a claim that, when `true` or a non-empty string, marks a service account.
    /// Without it, a token whose `client_id` or `azp` equals its subject is a service account.
    #[serde(default)]
    pub service_claim: Option<String>,
    /// With `service_claim`: the value (or one of the array's values) that marks a service
    /// account, for issuers that tag every token (`idtyp = "app"`).
    #[serde(default)]
    pub service_value: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Largest token accepted, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// How often the control thread re-fetches the JWKS, in seconds.
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// Least time between two refreshes triggered by unknown `kid`s, in seconds, so a flood of
    /// forged `kid`s cannot turn the gateway into a load generator against the issuer.
    #[serde(default = "default_min_refresh_secs")]
    pub min_refresh_secs: u64,
    /// Grace after a session's token expires before its next command is refused, in seconds.
    #[serde(default)]
    pub session_grace_secs: u64,
    /// Allow plain `http://` for JWKS/discovery URLs that are not loopback. Off by default: key
    /// material fetched in clear text can be swapped by anyone on the path.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

impl IdentityConfig {
    /// A configuration with the defaults for everything but the three required keys.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, jwks: JwksSource) -> Self {
        IdentityConfig {
            issuer: issuer.into(),
            audience: vec![audience.into()],
            jwks,
            subject_claim: default_subject_claim(),
            email_claim: default_email_claim(),
            groups_claim: default_groups_claim(),
            service_claim: None,
            service_value: None,
            leeway_secs: default_leeway_secs(),
            max_token_bytes: default_max_token_bytes(),
            refresh_secs: default_refresh_secs(),
            min_refresh_secs: default_min_refresh_secs(),
            session_grace_secs: 0,
            allow_insecure_http: false,
        }
    }

    /// The leeway as a duration.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway_secs)
    }

    /// The session grace as a duration, for [`super::Identity::expired`].
    pub fn session_grace(&self) -> Duration {
        Duration::from_secs(self.session_grace_secs)
    }
}

fn default_subject_claim() -> String {
    "sub".to_owned()
}
fn default_email_claim() -> String {
    "email".to_owned()
}
fn default_groups_claim() -> String {
    "groups".to_owned()
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}
fn default_refresh_secs() -> u64 {
    300
}
fn default_min_refresh_secs() -> u64 {
    10
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_table() {
        let cfg: IdentityConfig = toml::from_str(
            r#"
            issuer = "https://idp.example"
            audience = ["portcullis", "db"]
            jwks = "discovery"
            groups_claim = "realm_access.roles"
            leeway_secs = 5
            "#,
        )
        .unwrap();
        assert_eq!(cfg.audience, vec!["portcullis", "db"]);
        assert_eq!(cfg.jwks, JwksSource::Discovery);
        assert_eq!(cfg.groups_claim, "realm_access.roles");
        assert_eq!(cfg.subject_claim, "sub");
        assert_eq!(cfg.leeway_secs, 5);

        let cfg: IdentityConfig = toml::from_str(
            r#"
            issuer = "portcullis-local"
            audience = "portcullis"
            jwks = { file = "/etc/portcullis/jwks.json" }
            "#,
        )
        .unwrap();
        assert_eq!(cfg.audience, vec!["portcullis"]);
        assert_eq!(
            cfg.jwks,
            JwksSource::File(PathBuf::from("/etc/portcullis/jwks.json"))
        );
    }
}
