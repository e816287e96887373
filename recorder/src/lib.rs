//! Portcullis recorder: the audit schema (Arrow), the per-core lock-free hand-off, the writer
//! thread, segment rotation and sealing to Parquet, retention, and the replay reader.
//!
//! No sockets and no async runtime: the data plane enqueues records through a [`Producer`]
//! (one per worker), one writer thread owns the live files, one sealer thread publishes
//! finished segments. See `docs/recording.md` for the on-disk layout and the schema.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod handoff;
pub mod read;
pub mod records;
pub mod schema;
pub mod seal;
mod writer;

/// Re-exported so callers build record payloads with the same `Bytes` type.
pub use bytes::Bytes;
pub use config::{OnFull, RecorderConfig};
pub use error::RecorderError;
pub use handoff::{Producer, Recorder, RecorderStats, Refused};
pub use records::{
    CommandRecord, Decision, Direction, FrameRecord, Micros, Outcome, ReviewEvent, ReviewEventKind,
    SessionEnd, SessionId, SessionIdGen, SessionInfo,
};
pub use schema::{SCHEMA_VERSION, Table};
