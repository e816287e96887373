//! Every column of every table survives the trip through the writer, the sealed Arrow file and
//! the Parquet copy, and replay shows the session as the client saw it.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use recorder::read::{self, SegmentState};
use recorder::{
    CommandRecord, Decision, Direction, FrameRecord, Micros, Outcome, Recorder, ReviewEvent,
    ReviewEventKind, SessionEnd, SessionId, Table,
};

#[test]
fn every_column_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, producers) = Recorder::start(common::config(tmp.path()), 2).unwrap();
    let p = &producers[1];
    let s = common::session(
        0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        "alice",
        "prod-db",
    );
    let bare = Arc::new(recorder::SessionInfo {
        id: SessionId(42),
        worker: 0,
        connection: "k8s".into(),
        protocol: "kubernetes",
        subject: "".into(),
        email: None,
        groups: Arc::from(Vec::<Arc<str>>::new()),
        client_addr: "[::1]:4000".into(),
        upstream: "api:6443".into(),
        started_at: Micros(5),
        policy_version: "policy-v1".into(),
    });
    p.session_started(&s).unwrap();
    p.session_started(&bare).unwrap();
    let full = CommandRecord {
        session: s.clone(),
        seq: 7,
        at: Micros(1_764_000_000_123_456),
        action: "DELETE".into(),
        // Invalid UTF-8 is stored with a replacement character, never dropped.
        text: Some(Bytes::from_static(b"DELETE FROM t WHERE id = 1 -- \xff")),
        decision: Decision::Review,
        rule_id: Some("deletes-need-review".into()),
        review_id: Some("rv-9".into()),
        approvers: vec![Arc::from("bob"), Arc::from("carol")].into(),
        duration_us: 1_500_000,
        rows: Some(1),
        bytes: 321,
        masked_values: 4,
        error: Some("upstream said `no`".into()),
    };
    p.command(full.clone()).unwrap();
    let sparse = CommandRecord {
        text: None,
        decision: Decision::Deny,
        rule_id: None,
        review_id: None,
        approvers: Arc::from(Vec::<Arc<str>>::new()),
        rows: None,
        error: None,
        seq: 8,
        ..full.clone()
    };
    p.command(sparse).unwrap();
    p.frame(FrameRecord {
        session: s.clone(),
        seq: 0,
        at: Micros(1_764_000_000_123_000),
        direction: Direction::FromClient,
        payload: Bytes::from_static(b"Q\0\0\0\x0bselect 1\0"),
    })
    .unwrap();
    p.frame(FrameRecord {
        session: s.clone(),
        seq: 1,
        at: Micros(1_764_000_000_124_000),
        direction: Direction::ToClient,
        payload: Bytes::from_static(b"email: ***@example.com\n\x1b[31m"),
    })
    .unwrap();
    p.review_event(ReviewEvent {
        review_id: "rv-9".into(),
        session_id: Some(s.id),
        command_seq: Some(7),
        at: Micros(1_764_000_000_200_000),
        event: ReviewEventKind::Approved,
        connection: "prod-db".into(),
        requester: "alice".into(),
        actor: Some("bob".into()),
        text: Some("DELETE FROM t WHERE id = 1".into()),
        reason: Some("ticket 12".into()),
    })
    .unwrap();
    producers[0]
        .review_event(ReviewEvent {
            review_id: "grant-1".into(),
            session_id: None,
            command_seq: None,
            at: Micros(9),
            event: ReviewEventKind::TimedOut,
            connection: "prod-db".into(),
            requester: "dave".into(),
            actor: None,
            text: None,
            reason: None,
        })
        .unwrap();
    p.session_ended(SessionEnd {
        session: s.clone(),
        ended_at: Micros(1_764_000_001_000_000),
        bytes_in: 100,
        bytes_out: 2000,
        outcome: Outcome::Error,
        reason: Some("upstream reset".into()),
    })
    .unwrap();
    rec.shutdown().unwrap();

    let dir = tmp.path();
    let segs = read::list_segments(dir).unwrap();
    assert!(
        segs.iter()
            .all(|s| s.state == SegmentState::Sealed && s.has_parquet),
        "{segs:?}"
    );
    let tables: Vec<_> = segs.iter().map(|s| s.table).collect();
    assert_eq!(tables, Table::ALL.to_vec());

    let sessions: Vec<_> = read::read_table(dir, Table::Sessions)
        .unwrap()
        .iter()
        .flat_map(|b| read::session_rows(b).unwrap())
        .collect();
    assert_eq!(sessions.len(), 2);
    let alice = sessions.iter().find(|r| r.subject == "alice").unwrap();
    assert_eq!(alice.schema_version, recorder::SCHEMA_VERSION);
    assert_eq!(alice.session_id, "0123456789abcdef0011223344556677");
    assert_eq!(alice.worker, 1);
    assert_eq!(alice.connection, "prod-db");
    assert_eq!(alice.protocol, "postgres");
    assert_eq!(alice.email.as_deref(), Some("alice@example.com"));
    assert_eq!(alice.groups, ["dba", "oncall"]);
    assert_eq!(alice.client_addr, "10.0.0.7:51234");
    assert_eq!(alice.upstream, "db1.internal:5432");
    assert_eq!(alice.started_at, Micros(1_764_000_000_000_000));
    assert_eq!(alice.ended_at, Some(Micros(1_764_000_001_000_000)));
    assert_eq!((alice.bytes_in, alice.bytes_out), (100, 2000));
    assert_eq!(alice.outcome, "error");
    assert_eq!(alice.outcome_reason.as_deref(), Some("upstream reset"));
    assert_eq!(alice.policy_version.as_deref(), Some("policy-v1"));
    // Still open at shutdown: recorded with outcome `open` and no end.
    let open = sessions
        .iter()
        .find(|r| r.protocol == "kubernetes")
        .unwrap();
    assert_eq!(open.session_id, "0000000000000000000000000000002a");
    assert_eq!(
        (open.outcome.as_str(), open.ended_at, open.email.as_deref()),
        ("open", None, None)
    );
    assert!(open.groups.is_empty());

    let cmds = common::all_commands(dir);
    assert_eq!(cmds.len(), 2);
    let c = &cmds[0];
    assert_eq!(c.session_id, alice.session_id);
    assert_eq!(
        (
            c.connection.as_str(),
            c.protocol.as_str(),
            c.subject.as_str()
        ),
        ("prod-db", "postgres", "alice")
    );
    assert_eq!((c.seq, c.at), (7, Micros(1_764_000_000_123_456)));
    assert_eq!(c.action, "DELETE");
    assert_eq!(
        c.text.as_deref(),
        Some("DELETE FROM t WHERE id = 1 -- \u{fffd}")
    );
    assert_eq!(c.decision, "review");
    assert_eq!(c.rule_id.as_deref(), Some("deletes-need-review"));
    assert_eq!(c.review_id.as_deref(), Some("rv-9"));
    assert_eq!(c.approvers, ["bob", "carol"]);
    assert_eq!(
        (c.duration_us, c.rows, c.bytes, c.masked_values),
        (1_500_000, Some(1), 321, 4)
    );
    assert_eq!(c.error.as_deref(), Some("upstream said `no`"));
    assert_eq!(c.policy_version.as_deref(), Some("policy-v1"));
    let d = &cmds[1];
    assert_eq!((d.seq, d.decision.as_str()), (8, "deny"));
    assert_eq!(
        (
            d.text.clone(),
            d.rule_id.clone(),
            d.review_id.clone(),
            d.rows,
            d.error.clone()
        ),
        (None, None, None, None, None)
    );
    assert!(d.approvers.is_empty());

    let reviews: Vec<_> = read::read_table(dir, Table::Reviews)
        .unwrap()
        .iter()
        .flat_map(|b| read::review_rows(b).unwrap())
        .collect();
    assert_eq!(reviews.len(), 2);
    let r = reviews.iter().find(|r| r.review_id == "rv-9").unwrap();
    assert_eq!(r.session_id.as_deref(), Some(alice.session_id.as_str()));
    assert_eq!(
        (r.command_seq, r.at, r.event.as_str()),
        (Some(7), Micros(1_764_000_000_200_000), "approved")
    );
    assert_eq!(
        (
            r.connection.as_str(),
            r.requester.as_str(),
            r.actor.as_deref()
        ),
        ("prod-db", "alice", Some("bob"))
    );
    assert_eq!(r.text.as_deref(), Some("DELETE FROM t WHERE id = 1"));
    assert_eq!(r.reason.as_deref(), Some("ticket 12"));
    let g = reviews.iter().find(|r| r.review_id == "grant-1").unwrap();
    assert_eq!(
        (
            g.session_id.clone(),
            g.command_seq,
            g.event.as_str(),
            g.actor.clone()
        ),
        (None, None, "timed_out", None)
    );

    // Parquet copies hold the same rows.
    for t in Table::ALL {
        let arrow_rows: u64 = read::read_table(dir, t)
            .unwrap()
            .iter()
            .map(|b| b.num_rows() as u64)
            .sum();
        assert_eq!(common::parquet_rows(dir, t), arrow_rows, "{t:?}");
    }

    // Replay: the commands with decisions and the traffic as the client saw it, escaped.
    let tl = read::session_timeline(dir, &alice.session_id).unwrap();
    assert_eq!(tl.frames.len(), 2);
    assert_eq!(tl.frames[1].payload, b"email: ***@example.com\n\x1b[31m");
    let text = tl.render();
    assert!(
        text.contains("session 0123456789abcdef0011223344556677 postgres prod-db subject=alice"),
        "{text}"
    );
    assert!(
        text.contains(
            "#7 REVIEW DELETE rule=deletes-need-review review=rv-9 approvers=[bob,carol]"
        ),
        "{text}"
    );
    assert!(text.contains("#8 DENY DELETE"), "{text}");
    assert!(
        text.contains("review rv-9 approved by bob: ticket 12"),
        "{text}"
    );
    assert!(
        text.contains(">> Q\\x00\\x00\\x00\\x0bselect 1\\x00"),
        "{text}"
    );
    assert!(
        text.contains("<< email: ***@example.com\\n\\x1b[31m"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "control bytes must be escaped");
    let frame_pos = text.find(">> Q").unwrap();
    let cmd_pos = text.find("#7 REVIEW").unwrap();
    assert!(frame_pos < cmd_pos, "events are in time order:\n{text}");
}
