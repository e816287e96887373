//! The session record every session emits when it ends, and the hook it goes through.
//!
//! The hook is the single point where the recorder plugs in: the gateway is started with an
//! `Arc<dyn AuditHook>`, and each worker calls it with its own worker index so an
//! implementation can keep one lock-free queue per core. [`LogAuditHook`], the default, writes
//! the record to the log. This module does not buffer, batch or persist anything.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Protocol;

/// Unique per process run: start time, worker and a per-worker sequence number, so ids never
/// need cross-core coordination to stay unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u128);

impl SessionId {
    /// `run` identifies the process run (its start time in nanoseconds since the epoch).
    pub fn new(run: u64, worker: u16, seq: u64) -> SessionId {
        SessionId(
            (u128::from(run) << 64)
                | (u128::from(worker) << 48)
                | u128::from(seq & 0xffff_ffff_ffff),
        )
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Both sides closed normally.
    Closed,
    /// The upstream could not be reached; the client was closed without data.
    UpstreamConnectFailed,
    /// No bytes either way for the connection's `idle_timeout`.
    IdleTimeout,
    /// The client's socket failed mid-session.
    ClientError,
    /// The upstream's socket failed mid-session.
    UpstreamError,
    /// Still open when the drain deadline passed at shutdown.
    ShutdownClosed,
}

impl SessionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionOutcome::Closed => "closed",
            SessionOutcome::UpstreamConnectFailed => "upstream_connect_failed",
            SessionOutcome::IdleTimeout => "idle_timeout",
            SessionOutcome::ClientError => "client_error",
            SessionOutcome::UpstreamError => "upstream_error",
            SessionOutcome::ShutdownClosed => "shutdown_closed",
        }
    }
}

/// One row of the `sessions` audit table (identity fields arrive with the identity module).
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub session_id: SessionId,
    pub connection: Arc<str>,
    pub protocol: Protocol,
    pub client_addr: SocketAddr,
    pub upstream: Arc<str>,
    pub started: SystemTime,
    pub ended: SystemTime,
    /// Bytes read from the client and written to the upstream.
    pub bytes_in: u64,
    /// Bytes read from the upstream and written to the client.
    pub bytes_out: u64,
    pub outcome: SessionOutcome,
}

/// Receives every session record. Called on the worker that ran the session; implementations
/// must not block for long (the recorder's is a bounded per-core queue push).
pub trait AuditHook: Send + Sync + fmt::Debug {
    fn session_ended(&self, worker: usize, record: SessionRecord);
}

/// Writes each record to the log at `info`; the hook used until the recorder is wired in.
#[derive(Debug, Default)]
pub struct LogAuditHook;

impl AuditHook for LogAuditHook {
    fn session_ended(&self, worker: usize, r: SessionRecord) {
        let ms = r
            .ended
            .duration_since(r.started)
            .map_or(0, |d| d.as_millis());
        tracing::info!(
            session = %r.session_id,
            worker,
            connection = %r.connection,
            protocol = %r.protocol,
            client = %r.client_addr,
            upstream = %r.upstream,
            bytes_in = r.bytes_in,
            bytes_out = r.bytes_out,
            duration_ms = ms,
            outcome = r.outcome.as_str(),
            "session ended"
        );
    }
}
