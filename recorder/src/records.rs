//! The records the data plane hands to the recorder, one type per table event.
//!
//! Records are built on the data path, so they are designed to be cheap to construct: strings
//! that stay constant for a session live once in an [`Arc<SessionInfo>`] that every record of the
//! session shares (an atomic increment, no allocation), per-command text and payloads are
//! [`Bytes`] taken straight from the frame buffers, and enumerations are plain `Copy` values
//! turned into strings only by the writer. Nothing here formats or validates; the writer
//! does the conversion to Arrow off the data path.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Microseconds since the Unix epoch, UTC: the unit of every timestamp column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Micros(pub i64);

impl Micros {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }
}

/// A session id: 128 bits, globally unique without coordination, shown as 32 lowercase hex
/// digits (the form stored in every `session_id` column).
///
/// Layout, most significant first: 48 bits of Unix milliseconds, 32 bits chosen at random per
/// process, 16 bits of worker index, 32 bits of per-worker counter. Ids therefore sort by
/// creation time, two gateways never collide unless they draw the same random word in the same
/// millisecond with the same worker and counter, and minting one is a clock read and an add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u128);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Mints [`SessionId`]s for one worker. Not shared between threads: one per worker.
#[derive(Debug)]
pub struct SessionIdGen {
    process: u32,
    worker: u16,
    counter: u32,
}

impl SessionIdGen {
    /// A generator for worker `worker`. The per-process random word comes from the standard
    /// library's randomly keyed hasher, so no extra dependency is needed for it.
    pub fn new(worker: u16) -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        // Truncation keeps 32 well-mixed bits of the keyed hash.
        let process = (h.finish() >> 32) as u32;
        Self {
            process,
            worker,
            counter: 0,
        }
    }

    /// The next id.
    pub fn next_id(&mut self) -> SessionId {
        let ms = u128::try_from(Micros::now().0 / 1000).unwrap_or(0) & ((1 << 48) - 1);
        self.counter = self.counter.wrapping_add(1);
        SessionId(
            (ms << 80)
                | (u128::from(self.process) << 48)
                | (u128::from(self.worker) << 32)
                | u128::from(self.counter),
        )
    }
}

/// What stays constant for a session. Built once when the session is authenticated and shared by
/// every record of the session through an `Arc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: SessionId,
    /// The worker (core) that owns the session.
    pub worker: u16,
    /// Connection name from the configuration (the target the caller asked for).
    pub connection: Arc<str>,
    /// `postgres`, `mysql`, `http`, `kubernetes`, `ssh`, `tcp`.
    pub protocol: &'static str,
    /// Identity subject (`sub` claim or the configured claim); empty before authentication.
    pub subject: Arc<str>,
    pub email: Option<Arc<str>>,
    pub groups: Arc<[Arc<str>]>,
    /// Client address as `ip:port`.
    pub client_addr: Arc<str>,
    /// Upstream address as `host:port`.
    pub upstream: Arc<str>,
    pub started_at: Micros,
    /// Version of the policy snapshot the session was decided under (it keeps that snapshot
    /// for its whole life); empty when no policy was consulted (a raw tcp relay, a refused
    /// token).
    pub policy_version: Arc<str>,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    AuthFailed,
    Denied,
    Error,
    /// Still open when the recorder shut down.
    Open,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::AuthFailed => "auth_failed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
            Outcome::Open => "open",
        }
    }
}

/// The end of a session: becomes its `sessions` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    pub session: Arc<SessionInfo>,
    pub ended_at: Micros,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    pub outcome: Outcome,
    /// Why, for `auth_failed`, `denied` and `error`.
    pub reason: Option<Arc<str>>,
}

/// A policy decision as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    Review,
    Observe,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Review => "review",
            Decision::Observe => "observe",
        }
    }
}

/// One command (SQL statement, HTTP/Kubernetes request, shell command): a `commands` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    pub session: Arc<SessionInfo>,
    /// Position of the command in its session, from 0.
    pub seq: u64,
    /// When the command was received from the client.
    pub at: Micros,
    /// Statement kind (`SELECT`), HTTP method or Kubernetes verb, or shell command word.
    pub action: Arc<str>,
    /// The text as policy allows it to be stored (`None` when policy says not to store it).
    /// Invalid UTF-8 is stored with replacement characters.
    pub text: Option<Bytes>,
    pub decision: Decision,
    pub rule_id: Option<Arc<str>>,
    pub review_id: Option<Arc<str>>,
    pub approvers: Arc<[Arc<str>]>,
    /// Time from receipt to the last response byte, in microseconds.
    pub duration_us: u64,
    /// Rows returned or affected, where the protocol says.
    pub rows: Option<u64>,
    /// Response bytes sent to the client.
    pub bytes: u64,
    /// Values the masking engine replaced in the response.
    pub masked_values: u64,
    pub error: Option<Arc<str>>,
}

/// Which way a frame travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client, as forwarded upstream.
    FromClient,
    /// To the client, after masking: what the client saw.
    ToClient,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::FromClient => "from_client",
            Direction::ToClient => "to_client",
        }
    }
}

/// A chunk of traffic for replay: a `frames` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRecord {
    pub session: Arc<SessionInfo>,
    /// Position of the frame in its session, from 0 (independent of command `seq`).
    pub seq: u64,
    pub at: Micros,
    pub direction: Direction,
    /// The bytes after masking.
    pub payload: Bytes,
}

/// A step in a review's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewEventKind {
    Requested,
    /// An approver notification was sent (or failed: see the reason).
    Notified,
    Approved,
    Denied,
    TimedOut,
    Cancelled,
}

impl ReviewEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewEventKind::Requested => "requested",
            ReviewEventKind::Notified => "notified",
            ReviewEventKind::Approved => "approved",
            ReviewEventKind::Denied => "denied",
            ReviewEventKind::TimedOut => "timed_out",
            ReviewEventKind::Cancelled => "cancelled",
        }
    }
}

/// One step of a review (human approval or just-in-time grant): a `reviews` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewEvent {
    pub review_id: Arc<str>,
    /// The held session, if the review is for a command (none for a grant request).
    pub session_id: Option<SessionId>,
    /// The held command's `seq`, if any.
    pub command_seq: Option<u64>,
    pub at: Micros,
    pub event: ReviewEventKind,
    pub connection: Arc<str>,
    /// Subject of the identity that asked.
    pub requester: Arc<str>,
    /// Subject of the identity that acted (the approver or denier); none for requested/timeouts.
    pub actor: Option<Arc<str>>,
    /// The held command text, as stored in `commands.text`.
    pub text: Option<Arc<str>>,
    /// The approver's or the system's comment.
    pub reason: Option<Arc<str>>,
}

/// What travels through a worker's queue.
#[derive(Debug)]
pub(crate) enum Record {
    SessionStarted(Arc<SessionInfo>),
    SessionEnded(SessionEnd),
    /// A command decided and about to be forwarded: kept open by the writer (and in the
    /// in-flight snapshot) until its [`Record::Command`] arrives.
    CommandStarted(CommandRecord),
    Command(CommandRecord),
    Frame(FrameRecord),
    Review(ReviewEvent),
}
