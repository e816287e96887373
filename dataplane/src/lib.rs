//! Portcullis data plane: the thread-per-core runtime, listeners, TLS, identity and one module
//! per protocol. Protocol codecs are sans-IO; each protocol has one driver that owns the sockets.

pub mod audit;
pub mod config;
pub mod grants;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod postgres;
pub mod reviews;
pub mod runtime;
pub mod services;
pub mod sessions;
pub mod tcp;
pub mod transport;
