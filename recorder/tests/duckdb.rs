//! Real DuckDB (the Python package) over the sealed Parquet copies and, through pyarrow, over
//! the Arrow segments: the documented auditor queries give the expected answers on both.

mod common;

use std::process::Command;
use std::sync::Arc;

use recorder::{
    CommandRecord, Decision, Micros, Outcome, Recorder, ReviewEvent, ReviewEventKind, SessionEnd,
};

fn python_has_duckdb() -> bool {
    Command::new("python3")
        .args(["-c", "import duckdb, pyarrow"])
        .status()
        .is_ok_and(|s| s.success())
}

const SCRIPT: &str = r#"
import sys, glob, json, duckdb, pyarrow as pa, pyarrow.ipc as ipc
root, session = sys.argv[1], sys.argv[2]

def arrow_table(t):
    tables = [ipc.open_stream(f).read_all() for f in sorted(glob.glob(f"{root}/{t}/date=*/*.arrow"))]
    return pa.concat_tables(tables)

QUERIES = {
  "denied_by_user": """
    SELECT subject, count(*) AS denied FROM commands
    WHERE decision = 'deny' AND ts > now() - INTERVAL 24 HOUR
    GROUP BY subject ORDER BY denied DESC, subject""",
  "by_identity_and_connection": """
    SELECT ts, session_id, seq, decision, text FROM commands
    WHERE subject = 'alice' AND connection = 'prod-db'
    ORDER BY ts, seq""",
  "who_approved": """
    SELECT c.text, r.actor AS approver, r.ts AS approved_at FROM commands c
    JOIN reviews r ON r.review_id = c.review_id AND r.event = 'approved'
    WHERE c.session_id = '__SESSION__' AND c.seq = 2""",
  "p99_by_connection": """
    SELECT connection, quantile_disc(duration_us, 0.99) AS p99_us, count(*) AS n
    FROM commands GROUP BY connection ORDER BY connection""",
}

out = {}
con = duckdb.connect()
con.execute(f"CREATE VIEW commands AS SELECT * FROM read_parquet('{root}/commands/*/*.parquet', hive_partitioning = true)")
con.execute(f"CREATE VIEW reviews AS SELECT * FROM read_parquet('{root}/reviews/*/*.parquet', hive_partitioning = true)")
con.execute(f"CREATE VIEW sessions AS SELECT * FROM read_parquet('{root}/sessions/*/*.parquet', hive_partitioning = true)")
out["parquet"] = {k: [list(map(str, r)) for r in con.execute(q.replace("__SESSION__", session)).fetchall()] for k, q in QUERIES.items()}
out["parquet_sessions"] = con.execute("SELECT count(*) FROM sessions").fetchone()[0]
out["parquet_dates"] = [r[0] for r in con.execute("SELECT DISTINCT CAST(date AS VARCHAR) FROM commands").fetchall()]

con2 = duckdb.connect()
commands = arrow_table("commands"); reviews = arrow_table("reviews"); sessions = arrow_table("sessions")
con2.register("commands", commands); con2.register("reviews", reviews); con2.register("sessions", sessions)
out["arrow"] = {k: [list(map(str, r)) for r in con2.execute(q.replace("__SESSION__", session)).fetchall()] for k, q in QUERIES.items()}
out["arrow_sessions"] = con2.execute("SELECT count(*) FROM sessions").fetchone()[0]
out["at_type"] = str(commands.schema.field("ts").type)
print(json.dumps(out))
"#;

#[test]
fn duckdb_answers_auditor_queries_over_parquet_and_arrow() {
    if !python_has_duckdb() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "python3 with the `duckdb` and `pyarrow` packages is required: pip install duckdb pyarrow"
            );
        }
        eprintln!("skipping: python3 lacks duckdb/pyarrow (pip install duckdb pyarrow)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (rec, producers) = Recorder::start(common::config(dir), 2).unwrap();
    let now = Micros::now().0;
    let alice = common::session(1, "alice", "prod-db");
    let bob = common::session(2, "bob", "prod-db");
    let alice_stage = common::session(3, "alice", "staging-db");
    let cmd = |s: &Arc<recorder::SessionInfo>, seq: u64, d: Decision, text: &str, dur: u64| {
        let mut c: CommandRecord = common::command(s, seq, d, text);
        c.at = Micros(now - 1_000_000 + seq as i64);
        c.duration_us = dur;
        c
    };
    let p = &producers[0];
    p.session_started(&alice).unwrap();
    p.command(cmd(&alice, 0, Decision::Allow, "SELECT 1", 100))
        .unwrap();
    p.command(cmd(&alice, 1, Decision::Deny, "DROP TABLE users", 5))
        .unwrap();
    let mut held = cmd(
        &alice,
        2,
        Decision::Review,
        "DELETE FROM orders WHERE id = 7",
        2_000_000,
    );
    held.review_id = Some("rv-1".into());
    held.approvers = vec![Arc::from("carol")].into();
    p.command(held).unwrap();
    // An old denial (two days ago) is outside the 24 h window.
    let mut old = cmd(&alice, 3, Decision::Deny, "TRUNCATE audit", 5);
    old.at = Micros(now - 2 * 86_400_000_000);
    p.command(old).unwrap();
    p.review_event(ReviewEvent {
        review_id: "rv-1".into(),
        session_id: Some(alice.id),
        command_seq: Some(2),
        at: Micros(now - 500_000),
        event: ReviewEventKind::Approved,
        connection: "prod-db".into(),
        requester: "alice".into(),
        actor: Some("carol".into()),
        text: Some("DELETE FROM orders WHERE id = 7".into()),
        reason: None,
    })
    .unwrap();
    let q = &producers[1];
    for seq in 0..3 {
        q.command(cmd(&bob, seq, Decision::Deny, "DROP DATABASE prod", 10))
            .unwrap();
    }
    for seq in 0..100 {
        q.command(cmd(
            &alice_stage,
            seq,
            Decision::Allow,
            "SELECT now()",
            seq + 1,
        ))
        .unwrap();
    }
    p.session_ended(SessionEnd {
        session: alice.clone(),
        ended_at: Micros(now),
        bytes_in: 1,
        bytes_out: 2,
        outcome: Outcome::Ok,
        reason: None,
    })
    .unwrap();
    rec.shutdown().unwrap();

    let out = Command::new("python3")
        .args(["-c", SCRIPT, dir.to_str().unwrap(), &alice.id.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["at_type"], "timestamp[us, tz=UTC]");
    for engine in ["parquet", "arrow"] {
        let r = &v[engine];
        assert_eq!(
            r["denied_by_user"],
            serde_json::json!([["bob", "3"], ["alice", "1"]]),
            "{engine}"
        );
        let mine = r["by_identity_and_connection"].as_array().unwrap();
        let texts: Vec<_> = mine.iter().map(|row| row[4].as_str().unwrap()).collect();
        assert_eq!(
            texts,
            [
                "TRUNCATE audit",
                "SELECT 1",
                "DROP TABLE users",
                "DELETE FROM orders WHERE id = 7"
            ],
            "{engine}"
        );
        assert_eq!(
            r["who_approved"][0][0], "DELETE FROM orders WHERE id = 7",
            "{engine}"
        );
        assert_eq!(r["who_approved"][0][1], "carol", "{engine}");
        assert_eq!(
            r["p99_by_connection"],
            serde_json::json!([["prod-db", "2000000", "7"], ["staging-db", "99", "100"]]),
            "{engine}"
        );
    }
    assert_eq!(
        v["parquet"], v["arrow"],
        "both formats give identical answers"
    );
    // One ended session, one still open at shutdown (bob's and staging never started: none).
    assert_eq!(v["parquet_sessions"], 1);
    assert_eq!(v["arrow_sessions"], 1);
    let today = recorder::read::format_micros(Micros(now));
    assert_eq!(
        v["parquet_dates"],
        serde_json::json!([&today[..10]]),
        "hive date partition"
    );
}
