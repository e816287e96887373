//! Commands announced before they are forwarded (`command_started`) and finished later
//! (`command`): one `commands` row each, whatever happens in between: a normal finish, an
//! outcome the queue refused, a shutdown, or a `kill -9` while they run.

mod common;

use std::time::{Duration, Instant};

use recorder::read;
use recorder::{Decision, Recorder, Table};

const CHILD_ENV: &str = "RECORDER_IN_FLIGHT_CHILD_DIR";

/// Commands the crash child finishes before it announces the long-running ones.
const FINISHED: u64 = 40;
/// Commands still running when the child is killed.
const RUNNING: u64 = 3;

#[expect(clippy::unwrap_used, reason = "test helper: a panic is a failing test")]
fn all_sessions(dir: &std::path::Path) -> Vec<read::SessionRow> {
    read::read_table(dir, Table::Sessions)
        .unwrap()
        .iter()
        .flat_map(|b| read::session_rows(b).unwrap())
        .collect()
}

#[test]
fn started_then_finished_is_one_row_with_the_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, producers) = Recorder::start(common::config(tmp.path()), 1).unwrap();
    let s = common::session(7, "alice", "db");
    producers[0].session_started(&s).unwrap();
    let mut c = common::command(&s, 0, Decision::Allow, "SELECT 1");
    c.rows = None;
    producers[0].command_started(c.clone()).unwrap();
    c.rows = Some(1);
    c.duration_us = 1234;
    producers[0].command(c).unwrap();
    rec.shutdown().unwrap();

    let rows = common::all_commands(tmp.path());
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].rows, Some(1));
    assert_eq!(rows[0].duration_us, 1234);
    assert_eq!(rows[0].error, None);
}

#[test]
fn an_outcome_that_never_comes_is_written_at_session_end_and_at_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let (rec, producers) = Recorder::start(common::config(tmp.path()), 1).unwrap();
    let ended = common::session(1, "alice", "db");
    let open = common::session(2, "bob", "db");
    for s in [&ended, &open] {
        producers[0].session_started(s).unwrap();
        producers[0]
            .command_started(common::command(
                s,
                0,
                Decision::Allow,
                "DELETE FROM t WHERE id = 1",
            ))
            .unwrap();
    }
    producers[0]
        .session_ended(recorder::SessionEnd {
            session: ended.clone(),
            ended_at: recorder::Micros::now(),
            bytes_in: 1,
            bytes_out: 2,
            outcome: recorder::Outcome::Ok,
            reason: None,
        })
        .unwrap();
    rec.shutdown().unwrap();

    let mut rows = common::all_commands(tmp.path());
    rows.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("outcome not recorded"),
        "{:?}",
        rows[0].error
    );
    assert!(
        rows[1]
            .error
            .as_deref()
            .unwrap()
            .contains("shut down before the command completed"),
        "{:?}",
        rows[1].error
    );
    // Nothing is left for the next start to recover.
    assert!(!tmp.path().join("commands/_live/in-flight.arrow").exists());
}

#[test]
fn in_flight_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (rec, producers) = Recorder::start(common::config(std::path::Path::new(&dir)), 1).unwrap();
    let p = &producers[0];
    let s = common::session(0xabc, "carol", "orders");
    p.session_started(&s).unwrap();
    for seq in 0..FINISHED {
        let c = common::command(&s, seq, Decision::Allow, "UPDATE t SET x = 1 WHERE id = 2");
        p.command_started(c.clone()).unwrap();
        p.command(c).unwrap();
    }
    for seq in FINISHED..FINISHED + RUNNING {
        p.command_started(common::command(
            &s,
            seq,
            Decision::Observe,
            "DELETE FROM big WHERE old",
        ))
        .unwrap();
    }
    // Two flushes after the last announcement: the snapshot on disk holds the running ones.
    let queued = Instant::now();
    let mut flushes = 0;
    let mut last = rec.stats().last_flush;
    while flushes < 2 {
        std::thread::sleep(Duration::from_millis(5));
        let now = rec.stats().last_flush;
        if now != last && rec.stats().queued == 0 {
            flushes += 1;
            last = now;
        }
        assert!(queued.elapsed() < Duration::from_secs(30));
    }
    // libtest prints `test in_flight_child ... ` without a newline first.
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn kill_dash_nine_while_commands_run_keeps_one_row_per_command() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut child, mut lines) = common::spawn_child("in_flight_child", CHILD_ENV, dir);
    loop {
        let line = lines.next().expect("child exited early").unwrap();
        if line.ends_with("ready") {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(dir.join("commands/_live/in-flight.arrow").exists());

    let (rec, _p) = Recorder::start(common::config(dir), 1).unwrap();
    rec.shutdown().unwrap();

    let mut rows = common::all_commands(dir);
    rows.sort_by_key(|r| r.seq);
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (0..FINISHED + RUNNING).collect::<Vec<_>>(),
        "every command exactly once"
    );
    for r in &rows[..FINISHED as usize] {
        assert_eq!(r.error, None, "{r:?}");
    }
    for r in &rows[FINISHED as usize..] {
        assert_eq!(r.decision, "observe");
        assert_eq!(
            r.error.as_deref(),
            Some("outcome unknown: the gateway stopped before the command completed"),
        );
    }
    let sessions = all_sessions(dir);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].subject, "carol");
    assert_eq!(sessions[0].outcome, "error");
    assert!(
        sessions[0]
            .outcome_reason
            .as_deref()
            .unwrap()
            .starts_with("interrupted"),
        "{:?}",
        sessions[0].outcome_reason
    );
    assert_eq!(
        common::parquet_rows(dir, Table::Commands),
        FINISHED + RUNNING
    );
    // Recovery consumed the snapshot: a second restart adds nothing.
    let (rec, _p) = Recorder::start(common::config(dir), 1).unwrap();
    rec.shutdown().unwrap();
    assert_eq!(common::all_commands(dir).len() as u64, FINISHED + RUNNING);
}
