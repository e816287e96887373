use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use policy_engine::ReviewSpec;
use recorder::{Recorder, RecorderConfig, SessionId, Table, read};

use super::*;
use crate::identity::{Identity, IdentityKind};

fn who(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.into(),
        email: None,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        kind: IdentityKind::Human,
        expires_at: i64::MAX,
        issuer: "test".into(),
    }
}

fn request(requester: &str, approvals: u32, timeout: Duration) -> ReviewRequest {
    ReviewRequest {
        requester: Requester::from_identity(&who(requester, &["dev", "dba"])),
        connection: "pg".into(),
        subject: Subject::Command {
            session: SessionId(7),
            command_seq: Some(3),
        },
        text: "DELETE FROM t WHERE id = 1".into(),
        rule: "review-deletes".into(),
        spec: ReviewSpec {
            approvers: vec!["dba".into()],
            approvals,
            timeout,
        },
        webhooks: Vec::new(),
    }
}

struct Rec {
    dir: tempfile::TempDir,
    recorder: Recorder,
}

fn registry() -> (ReviewRegistry, Rec) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RecorderConfig {
        dir: dir.path().to_owned(),
        flush_interval: Duration::from_millis(20),
        retention_age: Duration::ZERO,
        ..RecorderConfig::default()
    };
    let (recorder, mut producers) = Recorder::start(cfg, 1).unwrap();
    let reg = ReviewRegistry::new(producers.pop(), None, Arc::new(GrantStore::in_memory()));
    (reg, Rec { dir, recorder })
}

fn events(rec: Rec) -> Vec<(String, String, Option<String>)> {
    rec.recorder.shutdown().unwrap();
    let mut out = Vec::new();
    for b in read::read_table(rec.dir.path(), Table::Reviews).unwrap() {
        for r in read::review_rows(&b).unwrap() {
            out.push((r.review_id, r.event, r.actor));
        }
    }
    out
}

fn pending(r: Requested) -> (ReviewId, Waiter) {
    match r {
        Requested::Pending { id, waiter } => (id, waiter),
        Requested::Covered { .. } => panic!("expected a pending review"),
    }
}

fn poll_once(w: &mut Waiter) -> Poll<Outcome> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(w).poll(&mut cx)
}

#[test]
fn one_approval_releases_the_waiter_and_is_recorded() {
    let (reg, rec) = registry();
    let (id, mut waiter) = pending(
        reg.request(request("alice", 1, Duration::from_secs(60)))
            .unwrap(),
    );
    assert_eq!(id.len(), 12);
    assert!(poll_once(&mut waiter).is_pending());
    assert_eq!(reg.list().len(), 1);
    let r = reg.approve(&id, &who("bob", &["dba"]), None).unwrap();
    assert_eq!(r.state, "approved");
    assert_eq!(
        poll_once(&mut waiter),
        Poll::Ready(Outcome::Approved {
            approvers: vec!["bob".into()]
        })
    );
    assert!(reg.list().is_empty());
    assert_eq!(
        reg.approve(&id, &who("carol", &["dba"]), None),
        Err(ReviewError::AlreadyDecided {
            id: id.to_string(),
            state: "approved"
        })
    );
    let ev = events(rec);
    assert_eq!(
        ev,
        vec![
            (id.to_string(), "requested".into(), None),
            (id.to_string(), "approved".into(), Some("bob".into())),
        ]
    );
}

#[test]
fn own_request_and_non_approvers_are_refused() {
    let (reg, _rec) = registry();
    let (id, mut waiter) = pending(
        reg.request(request("alice", 1, Duration::from_secs(60)))
            .unwrap(),
    );
    // alice is in `dba` herself, and still cannot approve her own request.
    assert_eq!(
        reg.approve(&id, &who("alice", &["dba"]), None),
        Err(ReviewError::OwnRequest)
    );
    assert_eq!(
        reg.approve(&id, &who("mallory", &["dev"]), None)
            .unwrap_err()
            .http_status(),
        403
    );
    assert_eq!(
        reg.approve("000000000000", &who("bob", &["dba"]), None)
            .unwrap_err()
            .http_status(),
        404
    );
    assert!(poll_once(&mut waiter).is_pending());
}

#[test]
fn two_approvals_need_two_distinct_approvers() {
    let (reg, rec) = registry();
    let (id, mut waiter) = pending(
        reg.request(request("alice", 2, Duration::from_secs(60)))
            .unwrap(),
    );
    let first = reg.approve(&id, &who("bob", &["dba"]), None).unwrap();
    assert_eq!(first.state, "pending");
    assert!(poll_once(&mut waiter).is_pending());
    assert_eq!(
        reg.approve(&id, &who("bob", &["dba"]), None),
        Err(ReviewError::AlreadyApproved(id.to_string()))
    );
    assert!(poll_once(&mut waiter).is_pending());
    let second = reg.approve(&id, &who("carol", &["dba"]), None).unwrap();
    assert_eq!(second.state, "approved");
    assert_eq!(
        poll_once(&mut waiter),
        Poll::Ready(Outcome::Approved {
            approvers: vec!["bob".into(), "carol".into()]
        })
    );
    let actors: Vec<_> = events(rec).into_iter().filter_map(|e| e.2).collect();
    assert_eq!(actors, vec!["bob".to_owned(), "carol".to_owned()]);
}

#[test]
fn deny_timeout_and_cancel_wake_the_waiter() {
    let (reg, rec) = registry();
    let (denied, mut w1) = pending(
        reg.request(request("alice", 1, Duration::from_secs(60)))
            .unwrap(),
    );
    reg.deny(&denied, &who("bob", &["dba"]), "not during business hours")
        .unwrap();
    assert_eq!(
        poll_once(&mut w1),
        Poll::Ready(Outcome::Denied {
            by: "bob".into(),
            reason: "not during business hours".into()
        })
    );

    let (timed, mut w2) = pending(
        reg.request(request("alice", 1, Duration::from_millis(1)))
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(5));
    // Any registry call sweeps expired reviews.
    assert!(reg.list().is_empty());
    assert_eq!(poll_once(&mut w2), Poll::Ready(Outcome::TimedOut));
    assert_eq!(
        reg.approve(&timed, &who("bob", &["dba"]), None)
            .unwrap_err()
            .http_status(),
        409
    );

    let (gone, mut w3) = pending(
        reg.request(request("alice", 1, Duration::from_secs(60)))
            .unwrap(),
    );
    reg.cancel(&gone, "client disconnected");
    assert_eq!(poll_once(&mut w3), Poll::Ready(Outcome::Cancelled));
    // A late expiry of a decided review changes nothing.
    reg.expire(&gone);

    let kinds: Vec<_> = events(rec).into_iter().map(|e| e.1).collect();
    assert_eq!(
        kinds,
        [
            "requested",
            "denied",
            "requested",
            "timed_out",
            "requested",
            "cancelled"
        ]
    );
}

#[test]
fn an_approval_window_covers_later_requests_of_the_same_requester_and_rule() {
    let (reg, _rec) = registry();
    let (id, _w) = pending(
        reg.request(request("alice", 1, Duration::from_secs(60)))
            .unwrap(),
    );
    reg.approve(&id, &who("bob", &["dba"]), Some(Duration::from_secs(1800)))
        .unwrap();
    match reg
        .request(request("alice", 1, Duration::from_secs(60)))
        .unwrap()
    {
        Requested::Covered { approvers, .. } => assert_eq!(approvers, vec![Arc::from("bob")]),
        Requested::Pending { .. } => panic!("the window should cover it"),
    }
    // Someone else's request is not covered.
    assert!(matches!(
        reg.request(request("dave", 1, Duration::from_secs(60)))
            .unwrap(),
        Requested::Pending { .. }
    ));
    assert_eq!(
        reg.approve(
            &id,
            &who("bob", &["dba"]),
            Some(Duration::from_secs(90_000))
        )
        .unwrap_err()
        .http_status(),
        400
    );
}

#[test]
fn an_approved_grant_is_stored() {
    let (reg, _rec) = registry();
    let mut req = request("alice", 1, Duration::from_secs(60));
    req.subject = Subject::Grant {
        duration: Duration::from_secs(3600),
    };
    let id = reg.request_grant(req).unwrap();
    assert!(!reg.grants().has("alice", "pg", now_unix()));
    reg.approve(&id, &who("bob", &["dba"]), None).unwrap();
    assert!(reg.grants().has("alice", "pg", now_unix()));
    assert!(!reg.grants().has("alice", "pg", now_unix() + 3601));
}

#[test]
fn without_a_recorder_requests_fail_closed() {
    let reg = ReviewRegistry::default();
    assert_eq!(
        reg.request(request("alice", 1, Duration::from_secs(60)))
            .unwrap_err(),
        ReviewError::AuditUnavailable
    );
}

#[test]
fn a_waiter_woken_from_another_thread_completes_on_a_monoio_core() {
    let (reg, _rec) = registry();
    let reg = Arc::new(reg);
    let (id, waiter) = pending(
        reg.request(request("alice", 1, Duration::from_secs(60)))
            .unwrap(),
    );
    let approver = Arc::clone(&reg);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        approver.approve(&id, &who("bob", &["dba"]), None).unwrap();
    });
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    let out =
        rt.block_on(async move { monoio::time::timeout(Duration::from_secs(5), waiter).await });
    t.join().unwrap();
    assert_eq!(
        out.unwrap(),
        Outcome::Approved {
            approvers: vec!["bob".into()]
        }
    );
}
