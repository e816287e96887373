//! Portcullis recorder: the audit schema (Arrow), the per-core lock-free hand-off, the writer
//! thread, segment rotation and sealing to Parquet, retention, and the replay reader.
//!
//! No sockets: the data plane enqueues records, the writer thread owns the files.
#![forbid(unsafe_code)]
