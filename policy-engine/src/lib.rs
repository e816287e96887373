//! Portcullis policy engine: the policy language (TOML files compiled to automata), the
//! protocol-neutral request model, SQL classification, decisions, and the masking engine.
//!
//! Pure library: no sockets, no runtime, no threads. The data plane hands it typed facts
//! (never raw frames) and gets back decisions and masked bytes.
#![forbid(unsafe_code)]

pub mod mask;
