//! The review registry: requests held for human approval (statements a `review` rule matched,
//! and just-in-time access grants), shared by every worker and the admin API.
//!
//! A worker that holds a statement calls [`ReviewRegistry::request`] and awaits the returned
//! [`Waiter`] on its own core; approvers act through [`ReviewRegistry::approve`] and
//! [`ReviewRegistry::deny`] from the admin thread. The rules:
//! - an approver must be in one of the rule's approver groups;
//! - the requester can never approve their own request (whatever their groups);
//! - approvals come from distinct subjects, and `approvals` of them decide the review;
//! - a review not decided by its deadline times out (the waiter wakes with
//!   [`Outcome::TimedOut`]); the holding worker also enforces the deadline with its own timer;
//! - a caller that disconnects (or whose session is killed) cancels its review.
//!
//! An approver may add a window to an approval ("this identity's requests under this rule on
//! this connection, for 30 minutes"): later matching requests are approved at once, recorded
//! as approved by the same approvers with the window's review id as the reason.
//!
//! Every step is recorded in the `reviews` table through the control plane's own recorder
//! producer (the workers' producers are single-producer queues owned by their cores). A review
//! whose `requested` event cannot be queued is refused (fail closed).
//!
//! The registry is in-memory: pending reviews of a gateway that restarts are gone with the
//! connections that held them. Grants survive (see [`crate::grants`]).

mod notify;
mod waiter;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use policy_engine::ReviewSpec;
use recorder::{Micros, Producer, ReviewEvent, ReviewEventKind, SessionId};
use serde::Serialize;

pub use notify::{Job, MAX_NOTIFY_QUEUE, Notifier, NotifierQueue, NotifyConfig, payload};
use waiter::Slot;
pub use waiter::Waiter;

use crate::grants::{Grant, GrantStore};
use crate::identity::{Identity, now_unix};

/// Most reviews pending at once; a request past it is refused rather than held.
pub const MAX_PENDING_REVIEWS: usize = 10_000;

/// Decided reviews remembered so that acting on them again answers "already decided" (409)
/// rather than "not found".
pub const DECIDED_REMEMBERED: usize = 1024;

/// Longest approval window an approver may grant.
pub const MAX_APPROVAL_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Longest text kept in a review (what approvers read); longer statements are cut.
pub const MAX_REVIEW_TEXT: usize = 16 * 1024;

/// A review's id: 12 lowercase hex digits, random, shown to the caller and typed by approvers.
pub type ReviewId = Arc<str>;

/// How a review ended, as the held request learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Approved by these subjects (in approval order).
    Approved {
        approvers: Vec<Arc<str>>,
    },
    Denied {
        by: Arc<str>,
        reason: Arc<str>,
    },
    TimedOut,
    Cancelled,
}

/// What is being reviewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A held statement of a live session.
    Command {
        session: SessionId,
        command_seq: Option<u64>,
    },
    /// A just-in-time grant of the connection for `duration`.
    Grant { duration: Duration },
}

/// Who asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub subject: Arc<str>,
    pub email: Option<Arc<str>>,
    pub groups: Vec<String>,
}

impl Requester {
    pub fn from_identity(identity: &Identity) -> Requester {
        Requester {
            subject: identity.subject.as_str().into(),
            email: identity.email.as_deref().map(Into::into),
            groups: identity.groups.clone(),
        }
    }
}

/// A request to hold.
#[derive(Debug, Clone)]
pub struct ReviewRequest {
    pub requester: Requester,
    pub connection: Arc<str>,
    pub subject: Subject,
    /// The held statement, or the grant request's reason.
    pub text: Arc<str>,
    /// The rule that asked for review (`access` for grants).
    pub rule: Arc<str>,
    pub spec: ReviewSpec,
    /// Webhook urls to notify (from the policy's `[[webhook]]` tables).
    pub webhooks: Vec<String>,
}

/// What [`ReviewRegistry::request`] returns.
#[derive(Debug)]
pub enum Requested {
    /// Held: await the waiter.
    Pending { id: ReviewId, waiter: Waiter },
    /// Already covered by an approval window: proceed now.
    Covered {
        id: ReviewId,
        approvers: Vec<Arc<str>>,
    },
}

/// Why an admin action on a review failed, each with one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("no review `{0}`")]
    NotFound(String),
    #[error("review `{id}` is already {state}")]
    AlreadyDecided { id: String, state: &'static str },
    #[error("you already approved review `{0}`")]
    AlreadyApproved(String),
    #[error("the requester cannot approve their own request")]
    OwnRequest,
    #[error("approving review `{id}` needs membership of one of: {groups}")]
    NotApprover { id: String, groups: String },
    #[error("approval window {0:?} is longer than the {MAX_APPROVAL_WINDOW:?} limit")]
    WindowTooLong(Duration),
    #[error("too many pending reviews (limit {MAX_PENDING_REVIEWS}); try again later")]
    TooMany,
    #[error("the audit recorder cannot take the review record; try again later")]
    AuditUnavailable,
    #[error("the grant could not be stored: {0}")]
    GrantStore(String),
}

impl ReviewError {
    /// The admin API's status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            ReviewError::NotFound(_) => 404,
            ReviewError::AlreadyDecided { .. } | ReviewError::AlreadyApproved(_) => 409,
            ReviewError::OwnRequest | ReviewError::NotApprover { .. } => 403,
            ReviewError::WindowTooLong(_) => 400,
            ReviewError::TooMany | ReviewError::AuditUnavailable => 503,
            ReviewError::GrantStore(_) => 500,
        }
    }
}

/// A pending review as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewView {
    pub id: String,
    /// `command` or `grant`.
    pub kind: &'static str,
    pub requester: String,
    pub requester_email: Option<String>,
    pub connection: String,
    pub session_id: Option<String>,
    pub text: String,
    pub rule: String,
    pub approver_groups: Vec<String>,
    pub approvals_required: u32,
    pub approved_by: Vec<String>,
    /// Unix seconds.
    pub requested_at: i64,
    pub expires_at: i64,
    /// For grants: the requested duration in seconds.
    pub grant_seconds: Option<u64>,
}

/// What an approval did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalResult {
    pub id: String,
    /// `approved` once enough approvals are in, else `pending`.
    pub state: &'static str,
    pub approved_by: Vec<String>,
    pub approvals_required: u32,
}

#[derive(Debug)]
struct Entry {
    req: ReviewRequest,
    requested_at: SystemTime,
    deadline: Instant,
    approvals: Vec<Arc<str>>,
    /// `None` for grants: nobody waits on a socket.
    slot: Option<Arc<Slot>>,
}

#[derive(Debug)]
struct Window {
    requester: Arc<str>,
    connection: Arc<str>,
    rule: Arc<str>,
    until: Instant,
    review: ReviewId,
    approvers: Vec<Arc<str>>,
}

#[derive(Debug, Default)]
struct Inner {
    pending: HashMap<ReviewId, Entry>,
    decided: VecDeque<(ReviewId, &'static str)>,
    windows: Vec<Window>,
}

/// The registry shared by every worker and the admin API.
#[derive(Debug)]
pub struct ReviewRegistry {
    inner: Mutex<Inner>,
    recorder: Mutex<Option<Producer>>,
    notifier: Option<Notifier>,
    grants: Arc<GrantStore>,
}

impl Default for ReviewRegistry {
    fn default() -> Self {
        ReviewRegistry::new(None, None, Arc::new(GrantStore::in_memory()))
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn new_id() -> ReviewId {
    let mut b = [0u8; 6];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // The system random source failing is near impossible; a time-based id still works,
        // since ids are looked up, not trusted.
        let t = Micros::now().0.to_be_bytes();
        b.copy_from_slice(t.get(2..8).unwrap_or(&[0; 6]));
    }
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<String>()
        .into()
}

fn cut(text: &str) -> Arc<str> {
    if text.len() <= MAX_REVIEW_TEXT {
        return text.into();
    }
    let mut end = MAX_REVIEW_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().into()
}

impl ReviewRegistry {
    /// A registry recording through `recorder` (the control plane's producer), notifying
    /// through `notifier`, and storing approved grants in `grants`.
    pub fn new(
        recorder: Option<Producer>,
        notifier: Option<Notifier>,
        grants: Arc<GrantStore>,
    ) -> ReviewRegistry {
        ReviewRegistry {
            inner: Mutex::new(Inner::default()),
            recorder: Mutex::new(recorder),
            notifier,
            grants,
        }
    }

    pub fn grants(&self) -> &Arc<GrantStore> {
        &self.grants
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a `reviews` row; `false` when the recorder refused it or there is none.
    pub(crate) fn record(
        &self,
        id: &ReviewId,
        req: &ReviewRequest,
        event: ReviewEventKind,
        actor: Option<Arc<str>>,
        reason: Option<Arc<str>>,
    ) -> bool {
        let (session_id, command_seq) = match req.subject {
            Subject::Command {
                session,
                command_seq,
            } => (Some(session), command_seq),
            Subject::Grant { .. } => (None, None),
        };
        let ev = ReviewEvent {
            review_id: Arc::clone(id),
            session_id,
            command_seq,
            at: Micros::now(),
            event,
            connection: Arc::clone(&req.connection),
            requester: Arc::clone(&req.requester.subject),
            actor,
            text: Some(Arc::clone(&req.text)),
            reason,
        };
        let guard = self.recorder.lock().unwrap_or_else(PoisonError::into_inner);
        let ok = guard.as_ref().is_some_and(|p| p.review_event(ev).is_ok());
        if !ok {
            tracing::warn!(review = %id, event = event.as_str(), "the recorder refused a review event");
        }
        ok
    }

    /// Holds a request: registers it and returns what to await, or approves it at once when
    /// an approval window covers it.
    pub fn request(&self, mut req: ReviewRequest) -> Result<Requested, ReviewError> {
        req.text = cut(&req.text);
        let now = Instant::now();
        let mut inner = self.lock();
        self.sweep(&mut inner, now);
        if matches!(req.subject, Subject::Command { .. })
            && let Some(w) = inner.windows.iter().find(|w| {
                w.requester == req.requester.subject
                    && w.connection == req.connection
                    && w.rule == req.rule
                    && w.until > now
            })
        {
            let id = new_id();
            let approvers = w.approvers.clone();
            let reason: Arc<str> =
                format!("covered by the approval window of review {}", w.review).into();
            drop(inner);
            if !self.record(&id, &req, ReviewEventKind::Requested, None, None) {
                return Err(ReviewError::AuditUnavailable);
            }
            let by: Arc<str> = approvers
                .iter()
                .map(|a| a.as_ref())
                .collect::<Vec<_>>()
                .join(",")
                .into();
            self.record(&id, &req, ReviewEventKind::Approved, Some(by), Some(reason));
            return Ok(Requested::Covered { id, approvers });
        }
        if inner.pending.len() >= MAX_PENDING_REVIEWS {
            return Err(ReviewError::TooMany);
        }
        let mut id = new_id();
        while inner.pending.contains_key(&id) {
            id = new_id();
        }
        if !self.record(&id, &req, ReviewEventKind::Requested, None, None) {
            return Err(ReviewError::AuditUnavailable);
        }
        let slot = match req.subject {
            Subject::Command { .. } => Some(Arc::new(Slot::default())),
            Subject::Grant { .. } => None,
        };
        let entry = Entry {
            deadline: now + req.spec.timeout,
            req,
            requested_at: SystemTime::now(),
            approvals: Vec::new(),
            slot: slot.clone(),
        };
        if let Some(n) = &self.notifier {
            n.notify(&id, &entry.req, view(&id, &entry));
        }
        inner.pending.insert(Arc::clone(&id), entry);
        drop(inner);
        // Grants have no slot: nobody waits on a socket for them, and the waiter returned here
        // is never resolved (callers of `request_grant` drop it).
        let slot = slot.unwrap_or_default();
        Ok(Requested::Pending {
            id,
            waiter: Waiter { slot },
        })
    }

    /// Registers a just-in-time grant request; approving it stores the grant.
    pub fn request_grant(&self, req: ReviewRequest) -> Result<ReviewId, ReviewError> {
        match self.request(req)? {
            Requested::Pending { id, .. } | Requested::Covered { id, .. } => Ok(id),
        }
    }

    /// Pending reviews, oldest first.
    pub fn list(&self) -> Vec<ReviewView> {
        let mut inner = self.lock();
        self.sweep(&mut inner, Instant::now());
        let mut out: Vec<ReviewView> = inner.pending.iter().map(|(id, e)| view(id, e)).collect();
        out.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then(a.id.cmp(&b.id)));
        out
    }

    /// The pending review `id`, if any.
    pub fn get(&self, id: &str) -> Option<ReviewView> {
        let inner = self.lock();
        inner.pending.get_key_value(id).map(|(k, e)| view(k, e))
    }

    fn find_pending<'a>(inner: &'a mut Inner, id: &str) -> Result<&'a mut Entry, ReviewError> {
        if !inner.pending.contains_key(id) {
            return Err(match inner.decided.iter().find(|(d, _)| d.as_ref() == id) {
                Some((_, state)) => ReviewError::AlreadyDecided {
                    id: id.to_owned(),
                    state,
                },
                None => ReviewError::NotFound(id.to_owned()),
            });
        }
        inner
            .pending
            .get_mut(id)
            .ok_or_else(|| ReviewError::NotFound(id.to_owned()))
    }

    fn check_approver(e: &Entry, id: &str, who: &Identity) -> Result<(), ReviewError> {
        if e.req.requester.subject.as_ref() == who.subject {
            return Err(ReviewError::OwnRequest);
        }
        if !e.req.spec.approvers.iter().any(|g| who.in_group(g)) {
            return Err(ReviewError::NotApprover {
                id: id.to_owned(),
                groups: e.req.spec.approvers.join(", "),
            });
        }
        Ok(())
    }

    /// Adds `approver`'s approval. With enough distinct approvals the review is approved:
    /// the held request proceeds, or the grant is stored. `window` also approves the same
    /// requester's later requests under the same rule and connection for that long.
    pub fn approve(
        &self,
        id: &str,
        approver: &Identity,
        window: Option<Duration>,
    ) -> Result<ApprovalResult, ReviewError> {
        if let Some(w) = window
            && w > MAX_APPROVAL_WINDOW
        {
            return Err(ReviewError::WindowTooLong(w));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        self.sweep(&mut inner, now);
        let e = Self::find_pending(&mut inner, id)?;
        Self::check_approver(e, id, approver)?;
        if e.approvals.iter().any(|a| a.as_ref() == approver.subject) {
            return Err(ReviewError::AlreadyApproved(id.to_owned()));
        }
        let who: Arc<str> = approver.subject.as_str().into();
        e.approvals.push(Arc::clone(&who));
        let approvals = e.approvals.clone();
        let required = e.req.spec.approvals;
        let key: ReviewId = Arc::clone(
            inner
                .pending
                .get_key_value(id)
                .map(|(k, _)| k)
                .ok_or_else(|| ReviewError::NotFound(id.to_owned()))?,
        );
        let done = u32::try_from(approvals.len()).unwrap_or(u32::MAX) >= required;
        if !done {
            if let Some(e) = inner.pending.get(id) {
                self.record(
                    &key,
                    &e.req,
                    ReviewEventKind::Approved,
                    Some(who),
                    Some(format!("approval {} of {required}", approvals.len()).into()),
                );
            }
            return Ok(ApprovalResult {
                id: id.to_owned(),
                state: "pending",
                approved_by: approvals.iter().map(ToString::to_string).collect(),
                approvals_required: required,
            });
        }
        let Some(e) = inner.pending.remove(id) else {
            return Err(ReviewError::NotFound(id.to_owned()));
        };
        if let Subject::Grant { duration } = e.req.subject {
            let grant = Grant {
                subject: e.req.requester.subject.to_string(),
                connection: e.req.connection.to_string(),
                expires_at: now_unix()
                    .saturating_add(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)),
                review_id: key.to_string(),
                approvers: approvals.iter().map(ToString::to_string).collect(),
                reason: e.req.text.to_string(),
            };
            if let Err(err) = self.grants.add(grant, now_unix()) {
                // Put it back: the approval did not take effect.
                let mut e = e;
                e.approvals.pop();
                inner.pending.insert(key, e);
                return Err(ReviewError::GrantStore(err.to_string()));
            }
        }
        if let (Some(w), Subject::Command { .. }) = (window, &e.req.subject) {
            inner.windows.push(Window {
                requester: Arc::clone(&e.req.requester.subject),
                connection: Arc::clone(&e.req.connection),
                rule: Arc::clone(&e.req.rule),
                until: now + w,
                review: Arc::clone(&key),
                approvers: approvals.clone(),
            });
        }
        remember(&mut inner, Arc::clone(&key), "approved");
        drop(inner);
        let reason = match (window, required) {
            (Some(w), _) => Some(format!("approved with a window of {}s", w.as_secs()).into()),
            (None, n) if n > 1 => Some(format!("approval {n} of {n}").into()),
            _ => None,
        };
        self.record(&key, &e.req, ReviewEventKind::Approved, Some(who), reason);
        if let Some(slot) = &e.slot {
            slot.resolve(Outcome::Approved {
                approvers: approvals.clone(),
            });
        }
        Ok(ApprovalResult {
            id: id.to_owned(),
            state: "approved",
            approved_by: approvals.iter().map(ToString::to_string).collect(),
            approvals_required: required,
        })
    }

    /// Denies the review: the held request is refused with `reason`.
    pub fn deny(&self, id: &str, approver: &Identity, reason: &str) -> Result<(), ReviewError> {
        let mut inner = self.lock();
        self.sweep(&mut inner, Instant::now());
        let e = Self::find_pending(&mut inner, id)?;
        // The requester may withdraw their own request; anyone else must be an approver.
        if e.req.requester.subject.as_ref() != approver.subject {
            Self::check_approver(e, id, approver)?;
        }
        let Some((key, e)) = inner.pending.remove_entry(id) else {
            return Err(ReviewError::NotFound(id.to_owned()));
        };
        remember(&mut inner, Arc::clone(&key), "denied");
        drop(inner);
        let by: Arc<str> = approver.subject.as_str().into();
        let reason: Arc<str> = cut(reason);
        self.record(
            &key,
            &e.req,
            ReviewEventKind::Denied,
            Some(Arc::clone(&by)),
            Some(Arc::clone(&reason)),
        );
        if let Some(slot) = &e.slot {
            slot.resolve(Outcome::Denied { by, reason });
        }
        Ok(())
    }

    /// The holding worker's timer fired: times the review out unless it was decided.
    pub fn expire(&self, id: &str) {
        self.end(id, Outcome::TimedOut);
    }

    /// The caller went away (disconnect, kill, shutdown): cancels the review unless decided.
    pub fn cancel(&self, id: &str, why: &str) {
        let mut inner = self.lock();
        let Some((key, e)) = inner.pending.remove_entry(id) else {
            return;
        };
        remember(&mut inner, Arc::clone(&key), "cancelled");
        drop(inner);
        self.record(
            &key,
            &e.req,
            ReviewEventKind::Cancelled,
            None,
            Some(why.into()),
        );
        if let Some(slot) = &e.slot {
            slot.resolve(Outcome::Cancelled);
        }
    }

    /// Records a webhook delivery outcome (from the notifier thread).
    pub fn notified(&self, job: &Job, outcome: &str) {
        self.record(
            &job.id,
            &job.request,
            ReviewEventKind::Notified,
            None,
            Some(outcome.into()),
        );
    }

    fn end(&self, id: &str, outcome: Outcome) {
        let mut inner = self.lock();
        let Some((key, e)) = inner.pending.remove_entry(id) else {
            return;
        };
        remember(&mut inner, Arc::clone(&key), "timed out");
        drop(inner);
        self.record(&key, &e.req, ReviewEventKind::TimedOut, None, None);
        if let Some(slot) = &e.slot {
            slot.resolve(outcome);
        }
    }

    /// Times out every review past its deadline, and drops expired windows.
    fn sweep(&self, inner: &mut Inner, now: Instant) {
        inner.windows.retain(|w| w.until > now);
        let expired: Vec<ReviewId> = inner
            .pending
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(k, _)| Arc::clone(k))
            .collect();
        for key in expired {
            if let Some(e) = inner.pending.remove(&key) {
                remember(inner, Arc::clone(&key), "timed out");
                self.record(&key, &e.req, ReviewEventKind::TimedOut, None, None);
                if let Some(slot) = &e.slot {
                    slot.resolve(Outcome::TimedOut);
                }
            }
        }
    }
}

fn remember(inner: &mut Inner, id: ReviewId, state: &'static str) {
    if inner.decided.len() >= DECIDED_REMEMBERED {
        inner.decided.pop_front();
    }
    inner.decided.push_back((id, state));
}

fn view(id: &ReviewId, e: &Entry) -> ReviewView {
    let timeout = e.req.spec.timeout;
    ReviewView {
        id: id.to_string(),
        kind: match e.req.subject {
            Subject::Command { .. } => "command",
            Subject::Grant { .. } => "grant",
        },
        requester: e.req.requester.subject.to_string(),
        requester_email: e.req.requester.email.as_deref().map(str::to_owned),
        connection: e.req.connection.to_string(),
        session_id: match e.req.subject {
            Subject::Command { session, .. } => Some(session.to_string()),
            Subject::Grant { .. } => None,
        },
        text: e.req.text.to_string(),
        rule: e.req.rule.to_string(),
        approver_groups: e.req.spec.approvers.clone(),
        approvals_required: e.req.spec.approvals,
        approved_by: e.approvals.iter().map(ToString::to_string).collect(),
        requested_at: unix(e.requested_at),
        expires_at: unix(e.requested_at + timeout),
        grant_seconds: match e.req.subject {
            Subject::Grant { duration } => Some(duration.as_secs()),
            Subject::Command { .. } => None,
        },
    }
}

#[cfg(test)]
mod tests;
