//! Masking engine: detectors, column/field rules, strategies, value and stream maskers.
//!
//! A [`MaskEngine`] is compiled once per policy from all `[[mask]]` and `[[detector]]`
//! tables; a [`SessionMasker`] is the cheap per-session view (which rules apply); it masks
//! result-set cells ([`SessionMasker::mask_value`]), byte streams cut anywhere
//! ([`StreamMasker`]) and JSON bodies ([`SessionMasker::mask_json`]).
//!
//! Deliberately not here: deciding which rules apply to a session (the policy does that and
//! passes rule indices), protocol framing, and NLP-style free-text entity recognition.

mod blocks;
pub mod corpus;
mod detect;
mod engine;
pub mod fuzzing;
mod glob;
mod json;
mod numeric;
mod spec;
mod stream;
mod validate;

pub use detect::{DetectorId, MAX_ASSIGNMENT_VALUE, MAX_DETECTORS, MAX_JWT_LEN};
pub use engine::{
    ColumnMask, DEFAULT_KEEP, Finding, HASH_HEX_LEN, MaskCounter, MaskEngine, MaskOutcome,
    MaskStats, PEM_WINDOW, SessionMasker, ValueKind,
};
pub use json::MAX_JSON_DEPTH;
pub use spec::{DetectorSpec, MaskSpec, StrategyName};
pub use stream::{STREAM_WINDOW, StreamMasker};

/// Why a policy's masking tables could not be compiled. Always the policy author's input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaskError {
    #[error("mask rule {rule}: unknown detector `{name}`")]
    UnknownDetector { rule: usize, name: String },
    #[error("mask rule {rule}: masks nothing (set `columns`, `fields` or `detectors`)")]
    EmptyRule { rule: usize },
    #[error("detector `{name}`: invalid regex: {reason}")]
    BadRegex { name: String, reason: String },
    #[error("detector `{name}`: unknown validator `{validator}` (expected `luhn` or `mod97`)")]
    UnknownValidator { name: String, validator: String },
    #[error("detector `{name}`: the name is already taken")]
    DuplicateDetector { name: String },
    #[error("too many custom detectors: {count} (at most {max})")]
    TooManyDetectors { count: usize, max: usize },
    #[error("mask rule {rule}: invalid glob `{glob}`")]
    BadGlob { rule: usize, glob: String },
    #[error("the masking hash key is empty")]
    EmptyHashKey,
    #[error("internal error building the masking automata: {0}")]
    Internal(String),
}
