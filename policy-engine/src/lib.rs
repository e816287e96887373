//! Portcullis policy engine: the policy language (TOML files compiled to automata), the
//! protocol-neutral request model, SQL classification, decisions, and the masking engine.
//!
//! Pure library: no sockets, no runtime, no threads. The data plane hands it typed facts
//! (never raw frames) and gets back decisions and masked bytes.
//!
//! Typical use: `Policy::load_dir` at start and on reload (keep the old one if it fails),
//! share it in an `Arc`, call [`Policy::session`] when a session starts and
//! [`SessionPolicy::decide`] for every request with a per-core [`Scratch`].
#![forbid(unsafe_code)]

pub mod fuzzing;
pub mod glob;
pub mod mask;
pub mod policy;
pub mod request;
pub mod sql;
pub mod testfile;
pub mod workload;

pub use policy::{
    AccessContext, AccessDenied, Decision, Explanation, GrantSpec, LoadError, LoadErrors, Policy,
    Reason, ReviewSpec, Rule, RuleId, Scratch, SessionPolicy, StatementResult, Verdict,
};
pub use request::{Action, Dialect, Identity, IdentityKind, Request};
pub use sql::{KindSet, SqlScratch, Statement, StatementKind, StringLiterals};
