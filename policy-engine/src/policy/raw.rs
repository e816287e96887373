//! The serde shapes of policy files, exactly as users write them. Validation and compilation
//! happen in `load`; nothing here is used on the request path.

use serde::Deserialize;
use toml::Spanned;

use crate::mask::{DetectorSpec, MaskSpec};

/// One string or a list of strings (`statement = "delete"` or `statement = ["delete"]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
    #[default]
    #[serde(skip)]
    None,
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
            Self::None => Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    #[serde(default)]
    pub access: Vec<Spanned<RawAccess>>,
    #[serde(default)]
    pub rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub defaults: Vec<Spanned<RawDefaults>>,
    #[serde(default)]
    pub mask: Vec<Spanned<MaskSpec>>,
    #[serde(default)]
    pub detector: Vec<Spanned<DetectorSpec>>,
    #[serde(default)]
    pub admin: Vec<Spanned<RawAdmin>>,
    #[serde(default)]
    pub webhook: Vec<Spanned<RawWebhook>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    pub connections: OneOrMany,
    #[serde(default)]
    pub groups: OneOrMany,
    #[serde(default)]
    pub hours: Option<String>,
    #[serde(default)]
    pub require_grant: bool,
    /// Groups that approve just-in-time grants for these connections.
    #[serde(default)]
    pub approvers: OneOrMany,
    #[serde(default)]
    pub approvals: Option<u32>,
    /// Longest grant that may be requested (`8h` when unset).
    #[serde(default)]
    pub max_grant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub connections: OneOrMany,
    #[serde(default)]
    pub groups: OneOrMany,
    #[serde(default, rename = "match")]
    pub matcher: RawMatch,
    pub action: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub review: Option<RawReview>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub statement: OneOrMany,
    #[serde(default)]
    pub without_where: Option<bool>,
    #[serde(default)]
    pub tables: OneOrMany,
    #[serde(default)]
    pub schemas: OneOrMany,
    #[serde(default)]
    pub regex: OneOrMany,
    #[serde(default)]
    pub multi_statement: Option<bool>,
    #[serde(default)]
    pub http: Option<RawHttp>,
    #[serde(default)]
    pub kubernetes: Option<RawKubernetes>,
    #[serde(default)]
    pub ssh: Option<RawSsh>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    #[serde(default)]
    pub methods: OneOrMany,
    #[serde(default)]
    pub hosts: OneOrMany,
    #[serde(default)]
    pub paths: OneOrMany,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    #[serde(default)]
    pub verbs: OneOrMany,
    #[serde(default)]
    pub resources: OneOrMany,
    #[serde(default)]
    pub subresources: OneOrMany,
    #[serde(default)]
    pub namespaces: OneOrMany,
    #[serde(default)]
    pub names: OneOrMany,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    #[serde(default)]
    pub commands: OneOrMany,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReview {
    pub approvers: OneOrMany,
    #[serde(default)]
    pub approvals: Option<u32>,
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    #[serde(default)]
    pub connections: OneOrMany,
    pub statements: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub groups: OneOrMany,
    pub operations: OneOrMany,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    #[serde(default)]
    pub connections: OneOrMany,
}
