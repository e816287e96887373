//! Session records for connections without an identity (the raw `tcp` relay), and how a
//! relay's end maps onto the recorder's outcomes.
//!
//! Protocol drivers that authenticate callers (PostgreSQL) build their own records with the
//! identity; this module only covers what every connection type shares. It does not buffer,
//! batch or persist anything: records go straight to the worker's recorder producer.

use std::net::SocketAddr;
use std::sync::Arc;

use recorder::{Micros, Outcome, SessionEnd, SessionInfo};

use crate::services::WorkerServices;
use crate::tcp::SessionTotals;

/// How a session ended, as the raw relay sees it.
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

    /// The recorder's outcome and reason for this end.
    pub fn to_record(self) -> (Outcome, Option<Arc<str>>) {
        match self {
            SessionOutcome::Closed => (Outcome::Ok, None),
            other => (Outcome::Error, Some(other.as_str().into())),
        }
    }
}

/// The `sessions` identity fields of a connection that has no caller identity.
pub fn tcp_session_info(
    ws: &WorkerServices,
    connection: &Arc<str>,
    upstream: &Arc<str>,
    client_addr: SocketAddr,
) -> SessionInfo {
    SessionInfo {
        id: ws.ids.borrow_mut().next_id(),
        worker: u16::try_from(ws.index).unwrap_or(u16::MAX),
        connection: Arc::clone(connection),
        protocol: "tcp",
        subject: "".into(),
        email: None,
        groups: Arc::from(Vec::new()),
        client_addr: client_addr.to_string().into(),
        upstream: Arc::clone(upstream),
        started_at: Micros::now(),
        policy_version: "".into(),
    }
}

/// Queues the end of a relayed session (logged when the recorder refuses it).
pub fn tcp_session_ended(ws: &WorkerServices, info: Arc<SessionInfo>, totals: &SessionTotals) {
    let (outcome, reason) = totals.outcome.to_record();
    let id = info.id;
    tracing::info!(
        session = %id,
        worker = ws.index,
        connection = %info.connection,
        client = %info.client_addr,
        upstream = %info.upstream,
        bytes_in = totals.bytes_in,
        bytes_out = totals.bytes_out,
        outcome = totals.outcome.as_str(),
        "session ended"
    );
    let ok = ws.record(|p| {
        p.session_ended(SessionEnd {
            session: info,
            ended_at: Micros::now(),
            bytes_in: totals.bytes_in,
            bytes_out: totals.bytes_out,
            outcome,
            reason,
        })
    });
    if !ok {
        tracing::warn!(session = %id, "the recorder refused a session end record");
    }
}
