//! The `[[mask]]` and `[[detector]]` tables of a policy file, as written by users.
//!
//! The policy loader deserializes these and decides which rules apply to a session
//! (by `connections` and `groups`); the masking engine compiles and applies them.

use serde::Deserialize;

/// One `[[mask]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    /// Connection names or globs this rule applies to; empty means all.
    #[serde(default)]
    pub connections: Vec<String>,
    /// Identity groups this rule applies to; empty or `"*"` means everyone.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Result-set column names or globs (`email`, `*_email`).
    #[serde(default)]
    pub columns: Vec<String>,
    /// JSON field paths or globs for HTTP bodies (`user.email`, `*.ssn`).
    #[serde(default)]
    pub fields: Vec<String>,
    /// Built-in or custom detector names run over values (`email`, `credit_card`, ...).
    #[serde(default)]
    pub detectors: Vec<String>,
    /// How a matched value is rewritten.
    pub strategy: StrategyName,
    /// For `partial`: how many trailing characters stay visible.
    #[serde(default)]
    pub keep: Option<usize>,
    /// For `redact`: the replacement text; default is the detector's label such as `[EMAIL]`.
    #[serde(default)]
    pub replacement: Option<String>,
}

/// Masking strategies a policy may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    Redact,
    Partial,
    Hash,
    Null,
}

/// One `[[detector]]` table: a custom detector declared in policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSpec {
    /// Name used in `[[mask]] detectors = [...]`.
    pub name: String,
    /// Regular expression for candidates.
    pub regex: String,
    /// Optional validator applied to each candidate: `luhn`, `mod97`.
    #[serde(default)]
    pub validator: Option<String>,
    /// Label used by `redact` (default: the upper-cased name in brackets).
    #[serde(default)]
    pub label: Option<String>,
}
