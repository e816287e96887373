//! The inspector on its own: decisions, records and masking from message values, no sockets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use policy_engine::mask::MaskEngine;
use policy_engine::policy::compile_sources;
use policy_engine::{AccessContext, Scratch};
use recorder::{CommandRecord, Decision, Micros, SessionId, SessionInfo};

use super::{ClientVerdict, CommandEvent, Inspector, policy_identity};
use crate::identity::{Identity, IdentityKind};
use crate::postgres::backend;
use crate::postgres::frontend::FrontendMessage;
use crate::postgres::{Limits, PgError};
use crate::services::PolicySnapshot;

const POLICY: &str = r#"
[[access]]
connections = ["db"]
groups = ["eng"]

[[rule]]
id = "no-drop"
match.statement = ["drop"]
action = "deny"
message = "no drops"

[[rule]]
id = "watch-deletes"
match.statement = ["delete"]
action = "observe"

[[mask]]
columns = ["email"]
strategy = "redact"
"#;

fn inspector(expires_at: i64) -> Inspector {
    inspector_with(POLICY, expires_at)
}

fn inspector_with(text: &str, expires_at: i64) -> Inspector {
    let policy =
        Arc::new(compile_sources(&[(PathBuf::from("t.toml"), text.to_owned())]).expect("policy"));
    let specs: Vec<_> = policy.mask_specs().cloned().collect();
    let masks = MaskEngine::compile(&specs, policy.detector_specs(), b"key").expect("masks");
    let snapshot = Arc::new(PolicySnapshot {
        policy: Arc::clone(&policy),
        masks,
        version: "v1".into(),
    });
    let identity = Arc::new(Identity {
        subject: "alice".into(),
        email: None,
        groups: vec!["eng".into()],
        kind: IdentityKind::Human,
        expires_at,
        issuer: "test".into(),
    });
    let session = Arc::new(
        policy
            .session_with("db", &policy_identity(&identity), &AccessContext::default())
            .expect("access"),
    );
    let info = Arc::new(SessionInfo {
        id: SessionId(1),
        worker: 0,
        connection: "db".into(),
        protocol: "postgres",
        subject: "alice".into(),
        email: None,
        groups: Arc::from(Vec::new()),
        client_addr: "127.0.0.1:1".into(),
        upstream: "127.0.0.1:2".into(),
        started_at: Micros(0),
        policy_version: "policy-v1".into(),
    });
    Inspector::new(
        info,
        session,
        snapshot,
        identity,
        Duration::ZERO,
        Limits::default(),
    )
}

fn query(sql: &str) -> FrontendMessage {
    FrontendMessage::Query {
        sql: Bytes::copy_from_slice(sql.as_bytes()),
    }
}

fn backend_frame(tag: u8, body: &[u8]) -> backend::BackendFrame {
    let mut raw = BytesMut::new();
    raw.put_u8(tag);
    raw.put_u32(u32::try_from(body.len() + 4).expect("small"));
    raw.put_slice(body);
    backend::decode_message(&mut raw, &Limits::default())
        .expect("valid")
        .expect("complete")
}

fn row_description(names: &[&str]) -> backend::BackendFrame {
    let mut b = BytesMut::new();
    b.put_u16(u16::try_from(names.len()).expect("few"));
    for n in names {
        b.put_slice(n.as_bytes());
        b.put_u8(0);
        b.put_u32(0);
        b.put_i16(0);
        b.put_u32(25); // text
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(0);
    }
    backend_frame(b'T', &b)
}

fn data_row(values: &[&str]) -> backend::BackendFrame {
    let mut b = BytesMut::new();
    b.put_u16(u16::try_from(values.len()).expect("few"));
    for v in values {
        b.put_u32(u32::try_from(v.len()).expect("small"));
        b.put_slice(v.as_bytes());
    }
    backend_frame(b'D', &b)
}

#[test]
fn a_query_string_with_one_denied_statement_is_refused_whole_and_recorded_per_statement() {
    let mut i = inspector(i64::MAX);
    let mut records: Vec<CommandRecord> = Vec::new();
    let verdict = i.on_client(
        &query("SELECT 1; DROP TABLE t"),
        &mut Scratch::new(),
        true,
        &mut |r| {
            if let CommandEvent::Finished(r) = r {
                records.push(r);
            }
            true
        },
    );
    match verdict {
        ClientVerdict::Refuse(PgError::StatementDenied { rule, message }) => {
            assert_eq!(rule, "no-drop");
            assert_eq!(message, "no drops");
        }
        other => panic!("{other:?}"),
    }
    let summary: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.action.to_string(),
                r.decision,
                r.rule_id.as_deref().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "select".to_owned(),
                Decision::Allow,
                Some("default".to_owned())
            ),
            (
                "drop".to_owned(),
                Decision::Deny,
                Some("no-drop".to_owned())
            ),
        ]
    );
    assert!(
        records.iter().all(|r| r.error.is_some()),
        "none of them ran"
    );
    assert_eq!(records[1].text.as_deref(), Some(&b"DROP TABLE t"[..]));
}

#[test]
fn an_allowed_select_is_masked_and_recorded_with_rows_when_the_server_answers() {
    let mut i = inspector(i64::MAX);
    let mut records: Vec<CommandRecord> = Vec::new();
    let mut rec = |r| {
        if let CommandEvent::Finished(r) = r {
            records.push(r);
        }
        true
    };
    let verdict = i.on_client(
        &query("SELECT id, email FROM customers"),
        &mut Scratch::new(),
        true,
        &mut rec,
    );
    assert!(matches!(verdict, ClientVerdict::Forward), "{verdict:?}");
    let mut out = BytesMut::new();
    for frame in [
        row_description(&["id", "email"]),
        data_row(&["1", "ann@example.com"]),
        backend_frame(b'C', b"SELECT 1\0"),
        backend_frame(b'Z', b"I"),
    ] {
        i.on_backend(&frame, &mut out, &mut rec).expect("masked");
    }
    let seen = String::from_utf8_lossy(&out);
    assert!(!seen.contains("ann@example.com"), "{seen}");
    // The masked row decodes as a valid DataRow with the id untouched.
    let mut decoded = out.clone();
    let mut rows = Vec::new();
    while let Some(f) = backend::decode_message(&mut decoded, &Limits::default()).expect("valid") {
        if let backend::BackendMessage::DataRow(r) = f.message {
            rows.push(
                r.values()
                    .map(|v| v.map(|b| b.to_vec()))
                    .collect::<Vec<_>>(),
            );
        }
    }
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0].as_deref(), Some(&b"1"[..]));
    assert_ne!(rows[0][1].as_deref(), Some(&b"ann@example.com"[..]));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].rows, Some(1));
    assert_eq!(records[0].masked_values, 1);
    assert_eq!(records[0].decision, Decision::Allow);
    assert_eq!(i.masked_total(), 1);
}

#[test]
fn observe_is_forwarded_and_flagged() {
    let mut i = inspector(i64::MAX);
    let mut records = Vec::new();
    let mut rec = |r| {
        if let CommandEvent::Finished(r) = r {
            records.push(r);
        }
        true
    };
    let v = i.on_client(
        &query("DELETE FROM t WHERE id = 1"),
        &mut Scratch::new(),
        true,
        &mut rec,
    );
    assert!(matches!(v, ClientVerdict::Forward), "{v:?}");
    let mut out = BytesMut::new();
    i.on_backend(&backend_frame(b'C', b"DELETE 1\0"), &mut out, &mut rec)
        .expect("ok");
    assert_eq!(records[0].decision, Decision::Observe);
    assert_eq!(records[0].rule_id.as_deref(), Some("watch-deletes"));
    assert_eq!(records[0].rows, Some(1));
}

#[test]
fn nothing_is_forwarded_while_the_recorder_refuses() {
    let mut i = inspector(i64::MAX);
    let v = i.on_client(&query("SELECT 1"), &mut Scratch::new(), false, &mut |_| {
        false
    });
    assert!(
        matches!(v, ClientVerdict::Refuse(PgError::AuditUnavailable)),
        "{v:?}"
    );
}

#[test]
fn an_expired_token_ends_the_session_at_the_next_statement() {
    let mut i = inspector(1);
    let mut records = Vec::new();
    let v = i.on_client(&query("SELECT 1"), &mut Scratch::new(), true, &mut |r| {
        if let CommandEvent::Finished(r) = r {
            records.push(r);
        }
        true
    });
    assert!(
        matches!(v, ClientVerdict::Fatal(PgError::TokenExpired)),
        "{v:?}"
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].decision, Decision::Deny);
    assert!(
        records[0].text.is_none(),
        "the refused text is not needed to explain an expiry"
    );
}

#[test]
fn a_forwarded_statement_is_announced_before_it_leaves_and_finished_when_answered() {
    let mut i = inspector(i64::MAX);
    let mut events = Vec::new();
    let mut rec = |e: CommandEvent| {
        events.push(match e {
            CommandEvent::Started(r) => ("started", r.seq, r.rows),
            CommandEvent::Finished(r) => ("finished", r.seq, r.rows),
        });
        true
    };
    let v = i.on_client(
        &query("SELECT 1; SELECT 2"),
        &mut Scratch::new(),
        true,
        &mut rec,
    );
    assert!(matches!(v, ClientVerdict::Forward), "{v:?}");
    // Both statements were queued before the verdict let the bytes go.
    let mut out = BytesMut::new();
    for frame in [
        backend_frame(b'C', b"SELECT 1\0"),
        backend_frame(b'C', b"SELECT 1\0"),
        backend_frame(b'Z', b"I"),
    ] {
        i.on_backend(&frame, &mut out, &mut rec).expect("ok");
    }
    assert_eq!(
        events,
        [
            ("started", 1, None),
            ("started", 2, None),
            ("finished", 1, Some(1)),
            ("finished", 2, Some(1)),
        ]
    );
}

#[test]
fn a_refused_announcement_refuses_the_whole_query_and_closes_what_was_announced() {
    let mut i = inspector(i64::MAX);
    let mut taken = 0;
    let mut finished = Vec::new();
    let v = i.on_client(
        &query("SELECT 1; SELECT 2"),
        &mut Scratch::new(),
        true,
        &mut |e| match e {
            CommandEvent::Started(_) => {
                taken += 1;
                taken == 1
            }
            CommandEvent::Finished(r) => {
                finished.push(r);
                true
            }
        },
    );
    assert!(
        matches!(v, ClientVerdict::Refuse(PgError::AuditUnavailable)),
        "{v:?}"
    );
    assert_eq!(
        finished.len(),
        1,
        "the first, announced, is closed as not executed"
    );
    assert!(
        finished[0]
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("not executed")
    );
}

fn parse(name: &'static [u8], sql: &'static str) -> FrontendMessage {
    FrontendMessage::Parse {
        statement: Bytes::from_static(name),
        sql: Bytes::from_static(sql.as_bytes()),
        param_type_count: 0,
    }
}

fn bind(statement: &'static [u8]) -> FrontendMessage {
    let mut raw = BytesMut::new();
    raw.put_u8(b'B');
    raw.put_u32(0);
    raw.put_u8(0); // portal ""
    raw.put_slice(statement);
    raw.put_u8(0);
    raw.put_u16(0);
    raw.put_u16(0);
    raw.put_u16(0);
    let len = u32::try_from(raw.len() - 1).expect("small");
    raw[1..5].copy_from_slice(&len.to_be_bytes());
    crate::postgres::frontend::decode_message(&mut raw, &Limits::default())
        .expect("valid")
        .expect("complete")
        .message
}

fn execute() -> FrontendMessage {
    FrontendMessage::Execute {
        portal: Bytes::new(),
        max_rows: 0,
    }
}

/// Prepares `sql` as `name` and describes it (the server answering with `columns`), then
/// executes it in a later batch without describing it again, as pgjdbc does; the server
/// answers with `row`. Returns what the client got for the execute.
fn prepare_then_execute(
    i: &mut Inspector,
    rec: &mut super::RecordFn<'_>,
    name: &'static [u8],
    sql: &'static str,
    columns: &[&str],
    row: &[&str],
) -> BytesMut {
    let mut scratch = Scratch::new();
    let mut out = BytesMut::new();
    for m in [
        parse(name, sql),
        FrontendMessage::Describe {
            target: crate::postgres::frontend::Target::Statement,
            name: Bytes::from_static(name),
        },
        FrontendMessage::Sync,
    ] {
        assert!(matches!(
            i.on_client(&m, &mut scratch, true, rec),
            ClientVerdict::Forward
        ));
    }
    for f in [
        backend_frame(b'1', b""),
        backend_frame(b't', b"\0\0"),
        row_description(columns),
        backend_frame(b'Z', b"I"),
    ] {
        i.on_backend(&f, &mut out, rec).expect("ok");
    }
    for m in [bind(name), execute(), FrontendMessage::Sync] {
        assert!(matches!(
            i.on_client(&m, &mut scratch, true, rec),
            ClientVerdict::Forward
        ));
    }
    out.clear();
    for f in [
        backend_frame(b'2', b""),
        data_row(row),
        backend_frame(b'C', b"SELECT 1\0"),
        backend_frame(b'Z', b"I"),
    ] {
        i.on_backend(&f, &mut out, rec).expect("ok");
    }
    out
}

/// Regression: pgjdbc executes a server-prepared statement without describing it again; the
/// rows then had no columns and the `email` column rule did not mask them.
#[test]
fn rows_of_an_undescribed_execute_are_masked_with_the_statements_columns() {
    let mut i = inspector(i64::MAX);
    let mut records: Vec<CommandRecord> = Vec::new();
    let mut rec = |r| {
        if let CommandEvent::Finished(r) = r {
            records.push(r);
        }
        true
    };
    let out = prepare_then_execute(
        &mut i,
        &mut rec,
        b"S_1",
        "SELECT id, email FROM customers",
        &["id", "email"],
        &["1", "ann@example.com"],
    );
    let seen = String::from_utf8_lossy(&out);
    assert!(!seen.contains("ann@example.com"), "{seen}");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].masked_values, 1);
}

/// Regression: libpq's extended-protocol COPY FROM STDIN sends a Sync the server ignores
/// during the copy; counted, it shifted every later record one batch (later statements were
/// recorded as "not executed").
#[test]
fn extended_copy_in_keeps_later_records_in_step() {
    let mut i = inspector(i64::MAX);
    let mut records: Vec<CommandRecord> = Vec::new();
    let mut rec = |r| {
        if let CommandEvent::Finished(r) = r {
            records.push(r);
        }
        true
    };
    let mut scratch = Scratch::new();
    let mut out = BytesMut::new();
    for m in [
        parse(b"", "COPY t (id) FROM STDIN"),
        bind(b""),
        execute(),
        FrontendMessage::Sync,
    ] {
        i.on_client(&m, &mut scratch, true, &mut rec);
    }
    for f in [
        backend_frame(b'1', b""),
        backend_frame(b'2', b""),
        backend_frame(b'G', b"\0\0\x01\0\0"),
    ] {
        i.on_backend(&f, &mut out, &mut rec).expect("ok");
    }
    for m in [
        FrontendMessage::CopyData(Bytes::from_static(b"1\n")),
        FrontendMessage::CopyDone,
        FrontendMessage::Sync,
    ] {
        i.on_client(&m, &mut scratch, true, &mut rec);
    }
    for f in [backend_frame(b'C', b"COPY 1\0"), backend_frame(b'Z', b"I")] {
        i.on_backend(&f, &mut out, &mut rec).expect("ok");
    }
    i.on_client(&query("SELECT 1"), &mut scratch, true, &mut rec);
    for f in [
        row_description(&["x"]),
        data_row(&["1"]),
        backend_frame(b'C', b"SELECT 1\0"),
        backend_frame(b'Z', b"I"),
    ] {
        i.on_backend(&f, &mut out, &mut rec).expect("ok");
    }
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].rows, Some(1));
    assert_eq!(records[1].rows, Some(1), "{:?}", records[1]);
    assert_eq!(records[1].error, None, "{:?}", records[1]);
}

const REVIEW_POLICY: &str = r#"
[[access]]
connections = ["db"]
groups = ["eng"]

[[rule]]
id = "two-person-updates"
match.statement = ["update"]
action = "review"
review = { approvers = ["dba"], approvals = 2, timeout = "5m" }
"#;

#[test]
fn a_query_with_a_review_statement_is_held_whole_then_released_with_its_approvers() {
    let mut i = inspector_with(REVIEW_POLICY, i64::MAX);
    let mut events: Vec<(&str, CommandRecord)> = Vec::new();
    let mut rec = |e: CommandEvent| {
        events.push(match e {
            CommandEvent::Started(r) => ("started", r),
            CommandEvent::Finished(r) => ("finished", r),
        });
        true
    };
    let sql = "SELECT 1; UPDATE t SET a = 1 WHERE id = 2";
    let verdict = i.on_client(&query(sql), &mut Scratch::new(), true, &mut rec);
    let ClientVerdict::Hold(hold) = verdict else {
        panic!("expected a hold, got {verdict:?}");
    };
    assert_eq!(hold.rule.as_ref(), "two-person-updates");
    assert_eq!(hold.text.as_ref(), sql);
    assert_eq!(hold.spec.approvals, 2);
    assert_eq!(hold.command_seq, 1);

    let approvers: Vec<Arc<str>> = vec!["bob".into(), "carol".into()];
    let v = i.release(hold, &query(sql), "r1".into(), &approvers, true, &mut rec);
    assert!(matches!(v, ClientVerdict::Forward), "{v:?}");
    let mut out = BytesMut::new();
    for f in [
        backend_frame(b'C', b"SELECT 1\0"),
        backend_frame(b'C', b"UPDATE 1\0"),
        backend_frame(b'Z', b"I"),
    ] {
        i.on_backend(&f, &mut out, &mut rec).expect("backend");
    }
    let kinds: Vec<(&str, u64)> = events.iter().map(|(k, r)| (*k, r.seq)).collect();
    // Nothing while held; announced before forwarding on release; finished on the answer.
    assert_eq!(
        kinds,
        [
            ("started", 1),
            ("started", 2),
            ("finished", 1),
            ("finished", 2)
        ]
    );
    let update = &events[3].1;
    assert_eq!(update.decision, Decision::Review);
    assert_eq!(update.review_id.as_deref(), Some("r1"));
    assert_eq!(update.approvers.as_ref(), approvers.as_slice());
    assert_eq!(update.rows, Some(1));
    assert_eq!(events[1].1.review_id.as_deref(), Some("r1"));
}

#[test]
fn a_refused_hold_is_recorded_with_the_reason_and_never_forwarded() {
    let mut i = inspector_with(REVIEW_POLICY, i64::MAX);
    let mut records: Vec<CommandRecord> = Vec::new();
    let mut rec = |e: CommandEvent| {
        match e {
            CommandEvent::Finished(r) => records.push(r),
            CommandEvent::Started(r) => panic!("a refused hold is never started: {r:?}"),
        }
        true
    };
    let verdict = i.on_client(
        &query("UPDATE t SET a = 1 WHERE id = 2"),
        &mut Scratch::new(),
        true,
        &mut rec,
    );
    let ClientVerdict::Hold(hold) = verdict else {
        panic!("expected a hold, got {verdict:?}");
    };
    let e = i.refuse_hold(
        hold,
        Some("r2".into()),
        "denied by bob: not now".into(),
        &mut rec,
    );
    assert_eq!(
        e,
        PgError::ReviewRefused {
            message: "denied by bob: not now".into()
        }
    );
    assert_eq!(e.to_error_fields().code.as_str(), "42501");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].error.as_deref(), Some("denied by bob: not now"));
    assert_eq!(records[0].review_id.as_deref(), Some("r2"));
    assert_eq!(records[0].decision, Decision::Review);
}

#[test]
fn rows_of_unknown_columns_are_withheld_when_column_rules_apply() {
    // No RowDescription and no earlier Describe: the `email` column rule cannot be matched,
    // so nothing of the row leaves (NULLs), rather than the email leaving unmasked.
    let mut i = inspector(i64::MAX);
    let mut rec = |_| true;
    let v = i.on_client(
        &query("SELECT id, email FROM customers"),
        &mut Scratch::new(),
        true,
        &mut rec,
    );
    assert!(matches!(v, ClientVerdict::Forward), "{v:?}");
    let mut out = BytesMut::new();
    i.on_backend(&data_row(&["7", "quiet@example.com"]), &mut out, &mut rec)
        .expect("rewritten");
    let mut decoded = out.clone();
    let f = backend::decode_message(&mut decoded, &Limits::default())
        .expect("valid")
        .expect("one message");
    let backend::BackendMessage::DataRow(row) = f.message else {
        panic!("{:?}", f.message);
    };
    let values: Vec<_> = row.values().collect();
    assert_eq!(values, [None, None]);
    assert_eq!(i.masked_total(), 2);
}

#[test]
fn every_statement_kind_is_recorded_under_its_own_name() {
    for kind in policy_engine::StatementKind::ALL {
        assert_eq!(&*super::kind_name(kind), kind.name(), "{kind:?}");
    }
}

#[test]
fn a_recorder_refusing_midway_closes_the_announced_statements_and_forwards_none() {
    let mut i = inspector(i64::MAX);
    let mut events: Vec<(&str, u64, Option<String>)> = Vec::new();
    let mut announced = 0;
    let v = i.on_client(
        &query("SELECT 1; SELECT 2; SELECT 3"),
        &mut Scratch::new(),
        true,
        &mut |e| match e {
            CommandEvent::Started(r) => {
                if announced == 1 {
                    return false;
                }
                announced += 1;
                events.push(("started", r.seq, None));
                true
            }
            CommandEvent::Finished(r) => {
                events.push(("finished", r.seq, r.error.as_deref().map(str::to_owned)));
                true
            }
        },
    );
    assert!(
        matches!(v, ClientVerdict::Refuse(PgError::AuditUnavailable)),
        "{v:?}"
    );
    assert_eq!(
        events,
        [
            ("started", 1, None),
            ("finished", 1, Some(super::AUDIT_REFUSED.to_owned()))
        ]
    );
    // Nothing waits for an answer that will never come: the next query is its own batch.
    let mut finished = Vec::new();
    let v = i.on_client(&query("SELECT 4"), &mut Scratch::new(), true, &mut |e| {
        if let CommandEvent::Finished(r) = e {
            finished.push(r);
        }
        true
    });
    assert!(matches!(v, ClientVerdict::Forward), "{v:?}");
    let mut out = BytesMut::new();
    let mut rec = |e| {
        if let CommandEvent::Finished(r) = e {
            finished.push(r);
        }
        true
    };
    i.on_backend(&backend_frame(b'C', b"SELECT 1\0"), &mut out, &mut rec)
        .expect("ok");
    i.on_backend(&backend_frame(b'Z', b"I"), &mut out, &mut rec)
        .expect("ok");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].text.as_deref(), Some(&b"SELECT 4"[..]));
    assert!(finished[0].error.is_none(), "{:?}", finished[0].error);
}

#[test]
fn clean_rows_leave_as_they_came_and_rows_that_change_are_masked_from_their_first_change() {
    let policy = r#"
[[access]]
connections = ["db"]
groups = ["eng"]

[[mask]]
detectors = ["all"]
strategy = "redact"
"#;
    let mut i = inspector_with(policy, i64::MAX);
    let mut records: Vec<CommandRecord> = Vec::new();
    let mut rec = |r| {
        if let CommandEvent::Finished(r) = r {
            records.push(r);
        }
        true
    };
    let verdict = i.on_client(
        &query("SELECT id, a, b FROM t"),
        &mut Scratch::new(),
        true,
        &mut rec,
    );
    assert!(matches!(verdict, ClientVerdict::Forward), "{verdict:?}");
    let rows = [
        data_row(&["1", "shipped 2026-11-26", "ORD-123456"]),
        data_row(&["2", "ann@example.com", "ssn 123-45-6789"]),
        data_row(&["3", "ok", "ssn 123-45-6789"]),
        data_row(&["4", "card 4111 1111 1111 1111", "fine"]),
    ];
    let mut frames = vec![row_description(&["id", "a", "b"])];
    frames.extend(rows.iter().cloned());
    frames.push(backend_frame(b'C', b"SELECT 4\0"));
    frames.push(backend_frame(b'Z', b"I"));
    let mut out = BytesMut::new();
    let mut sent = Vec::new();
    for frame in &frames {
        let before = out.len();
        i.on_backend(frame, &mut out, &mut rec).expect("masked");
        sent.push(out[before..].to_vec());
    }
    // The clean row is the frame the server sent, byte for byte.
    assert_eq!(sent[1], rows[0].raw.to_vec());
    let decode = |bytes: &[u8]| -> Vec<Option<String>> {
        let mut b = BytesMut::from(bytes);
        let f = backend::decode_message(&mut b, &Limits::default())
            .expect("valid")
            .expect("complete");
        let backend::BackendMessage::DataRow(r) = f.message else {
            panic!("not a DataRow: {bytes:?}");
        };
        r.values()
            .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .collect()
    };
    let cells = |v: &[&str]| v.iter().map(|s| Some((*s).to_owned())).collect::<Vec<_>>();
    assert_eq!(decode(&sent[2]), cells(&["2", "[EMAIL]", "ssn [SSN]"]));
    assert_eq!(decode(&sent[3]), cells(&["3", "ok", "ssn [SSN]"]));
    assert_eq!(
        decode(&sent[4]),
        cells(&["4", "card [CREDIT_CARD]", "fine"])
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].rows, Some(4));
    // Each masked value counted once, whichever pass masked it.
    assert_eq!(records[0].masked_values, 4);
    assert_eq!(i.masked_total(), 4);
}

/// The DataRow values in `out`, in order.
fn rows_in(out: &BytesMut) -> Vec<Vec<Option<String>>> {
    let mut decoded = out.clone();
    let mut rows = Vec::new();
    while let Some(f) = backend::decode_message(&mut decoded, &Limits::default()).expect("valid") {
        if let backend::BackendMessage::DataRow(r) = f.message {
            rows.push(
                r.values()
                    .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect(),
            );
        }
    }
    rows
}

/// A column rule follows its column under an alias, inside an expression and through a
/// subquery; a description identical to an earlier one whose columns read nothing masked
/// must not reuse that one's (unmasked) columns.
#[test]
fn column_rules_follow_a_column_under_aliases_and_expressions() {
    let mut i = inspector(i64::MAX);
    let mut rec = |_| true;
    let mut scratch = Scratch::new();
    let sql = "SELECT e FROM customers; \
               SELECT upper(email) AS e FROM customers; \
               SELECT id AS k, lower(email), name FROM customers; \
               SELECT y FROM (SELECT email AS y FROM customers) s";
    assert!(matches!(
        i.on_client(&query(sql), &mut scratch, true, &mut rec),
        ClientVerdict::Forward
    ));
    let mut out = BytesMut::new();
    for frame in [
        row_description(&["e"]),
        data_row(&["Oslo"]),
        backend_frame(b'C', b"SELECT 1\0"),
        row_description(&["e"]),
        data_row(&["ANN@EXAMPLE.COM"]),
        backend_frame(b'C', b"SELECT 1\0"),
        row_description(&["k", "lower", "name"]),
        data_row(&["1", "ann@example.com", "ann"]),
        backend_frame(b'C', b"SELECT 1\0"),
        row_description(&["y"]),
        data_row(&["ann@example.com"]),
        backend_frame(b'C', b"SELECT 1\0"),
        backend_frame(b'Z', b"I"),
    ] {
        i.on_backend(&frame, &mut out, &mut rec).expect("masked");
    }
    let rows = rows_in(&out);
    let masked = Some("[MASKED]".to_owned());
    assert_eq!(rows[0], [Some("Oslo".to_owned())]);
    assert_eq!(rows[1], std::slice::from_ref(&masked));
    assert_eq!(
        rows[2],
        [Some("1".to_owned()), masked.clone(), Some("ann".to_owned())]
    );
    assert_eq!(rows[3], [masked]);
    assert_eq!(i.masked_total(), 3);
}

/// The same through a prepared statement: its Describe carries the masks to the rows of a
/// later Execute.
#[test]
fn column_rules_follow_aliases_of_a_prepared_statement() {
    let mut i = inspector(i64::MAX);
    let out = prepare_then_execute(
        &mut i,
        &mut |_| true,
        b"S_2",
        "SELECT id, email AS contact FROM customers",
        &["id", "contact"],
        &["1", "ann@example.com"],
    );
    assert_eq!(
        rows_in(&out),
        [[Some("1".to_owned()), Some("[MASKED]".to_owned())]]
    );
}

/// A cursor's or SQL prepared statement's renames apply to the FETCH or EXECUTE that returns
/// its rows later, whose own text shows none.
#[test]
fn column_rules_follow_aliases_into_cursors_and_sql_prepared_statements() {
    // No rules on statement kinds: an EXECUTE is opaque, and would be refused by one.
    let policy = r#"
[[access]]
connections = ["db"]
groups = ["eng"]

[[mask]]
columns = ["email"]
strategy = "redact"
"#;
    let mut i = inspector_with(policy, i64::MAX);
    let mut rec = |_| true;
    let mut scratch = Scratch::new();
    let sql = "DECLARE c CURSOR FOR SELECT id, email AS e FROM customers; \
               FETCH ALL FROM c; \
               PREPARE p AS SELECT upper(email) AS m FROM customers; \
               EXECUTE p";
    let verdict = i.on_client(&query(sql), &mut scratch, true, &mut rec);
    assert!(matches!(verdict, ClientVerdict::Forward), "{verdict:?}");
    let mut out = BytesMut::new();
    for frame in [
        backend_frame(b'C', b"DECLARE CURSOR\0"),
        row_description(&["id", "e"]),
        data_row(&["1", "ann@example.com"]),
        backend_frame(b'C', b"FETCH 1\0"),
        backend_frame(b'C', b"PREPARE\0"),
        row_description(&["m"]),
        data_row(&["ANN@EXAMPLE.COM"]),
        backend_frame(b'C', b"SELECT 1\0"),
        backend_frame(b'Z', b"I"),
    ] {
        i.on_backend(&frame, &mut out, &mut rec).expect("masked");
    }
    let masked = Some("[MASKED]".to_owned());
    assert_eq!(
        rows_in(&out),
        [vec![Some("1".to_owned()), masked.clone()], vec![masked]]
    );
}
