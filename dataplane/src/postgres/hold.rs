//! A statement held on its core while a review decides it (the session's
//! `AwaitingApproval` state).
//!
//! While a statement is held the driver decides no further client message: bytes the client
//! sends stay in its buffer (read only up to [`HELD_CLIENT_BYTES`], so a disconnect is still
//! seen and memory stays bounded), while server traffic for earlier messages keeps flowing.
//! The driver waits on the review's [`Waiter`], the sockets and a timer at once, so the core
//! keeps serving its other sessions. The held deadline is the review's timeout, enforced here
//! too so that a review nobody touches still ends on time.
//!
//! This module builds the NoticeResponse and the refusal texts; it does not touch sockets.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::frontend::FrontendFrame;
use super::inspect::Hold;
use super::reply::{self, ErrorFields, Severity, SqlState};
use crate::reviews::{Outcome, ReviewId, ReviewRegistry, Waiter};

/// Client bytes buffered at most while a statement is held; past it the client is not read
/// until the review ends.
pub const HELD_CLIENT_BYTES: usize = 64 * 1024;

/// SQLSTATE of the "waiting for approval" notice: `01000` warning, so clients that show
/// notices show it.
const NOTICE_STATE: SqlState = SqlState("01000");

/// The held statement with what it waits on.
#[derive(Debug)]
pub(super) struct Held {
    pub id: ReviewId,
    pub waiter: Waiter,
    pub hold: Hold,
    /// The client message as received: forwarded unchanged on approval.
    pub frame: FrontendFrame,
    deadline: Instant,
}

/// How a held statement's review ended.
#[derive(Debug)]
pub(super) struct HeldEnd(pub Outcome);

impl Held {
    pub fn new(id: ReviewId, waiter: Waiter, hold: Hold, frame: FrontendFrame) -> Held {
        let deadline = Instant::now() + hold.spec.timeout;
        Held {
            id,
            waiter,
            hold,
            frame,
            deadline,
        }
    }

    /// Time until the review's deadline.
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The review's end if it has ended; at the deadline it is timed out here.
    pub fn ended(&self, reviews: &ReviewRegistry) -> Option<HeldEnd> {
        if let Some(o) = self.waiter.try_outcome() {
            return Some(HeldEnd(o));
        }
        if Instant::now() < self.deadline {
            return None;
        }
        reviews.expire(&self.id);
        Some(HeldEnd(
            self.waiter.try_outcome().unwrap_or(Outcome::TimedOut),
        ))
    }
}

/// Appends the NoticeResponse telling the client its statement waits, and how to approve it.
pub(super) fn notice(out: &mut BytesMut, id: &str, hold: &Hold) {
    let spec = &hold.spec;
    let fields = ErrorFields::new(
        Severity::Warning,
        NOTICE_STATE,
        format!(
            "waiting for approval: review {id} (rule `{}`, {} approval(s) from [{}], times out in {}s)",
            hold.rule,
            spec.approvals,
            spec.approvers.join(", "),
            spec.timeout.as_secs()
        ),
    )
    .with_hint(format!(
        "an approver runs: portcullis reviews approve {id}   (or: portcullis reviews deny {id} --reason ...)"
    ));
    reply::notice_response(out, &fields);
}

/// The error text a refused held statement gets.
pub(super) fn refusal(id: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Denied { by, reason } => format!("denied by {by}: {reason}"),
        Outcome::TimedOut => format!("review {id} timed out"),
        Outcome::Cancelled => format!("review {id} was cancelled"),
        Outcome::Approved { .. } => format!("review {id} was approved"),
    }
}
