//! `kill -9` mid-write, then restart: every row the writer had flushed is readable, in order,
//! and sealed segments from before the crash are intact.
//!
//! The child is this test binary re-invoked with `RECORDER_CRASH_CHILD_DIR` set: it writes
//! forever and prints the writer's flushed-row count; the parent kills it with SIGKILL.

mod common;

use std::time::{Duration, Instant};

use recorder::read::{self, SegmentState};
use recorder::{Decision, OnFull, Recorder, RecorderConfig, Table};

const CHILD_ENV: &str = "RECORDER_CRASH_CHILD_DIR";

#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cfg = RecorderConfig {
        segment_max_bytes: 64 << 10,
        on_full: OnFull::Block,
        ..common::config(std::path::Path::new(&dir))
    };
    let (rec, producers) = Recorder::start(cfg, 1).unwrap();
    let s = common::session(99, "crash", "db");
    let mut seq = 0;
    loop {
        for _ in 0..500 {
            producers[0]
                .command(common::command(
                    &s,
                    seq,
                    Decision::Allow,
                    "UPDATE t SET x = x + 1",
                ))
                .unwrap();
            seq += 1;
        }
        println!("flushed {}", rec.stats().rows(Table::Commands));
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn kill_dash_nine_then_restart_recovers_flushed_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut child, mut lines) = common::spawn_child("crash_child_writer", CHILD_ENV, dir);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut flushed = 0u64;
    // Wait until several segments were sealed and plenty more is flushed in a live one.
    while flushed < 60_000 {
        assert!(
            Instant::now() < deadline,
            "child made no progress (flushed {flushed})"
        );
        let line = lines.next().expect("child exited early").unwrap();
        if let Some(n) = line.strip_prefix("flushed ") {
            flushed = n.parse().unwrap();
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let before = read::list_segments(dir).unwrap();
    assert!(
        before.iter().any(|s| s.state == SegmentState::Live),
        "a live segment was left behind"
    );
    let sealed_before: Vec<_> = before
        .iter()
        .filter(|s| s.state == SegmentState::Sealed)
        .collect();
    assert!(
        !sealed_before.is_empty(),
        "segments were sealed before the crash"
    );

    // Restart: leftovers are recovered and published before recording resumes.
    let (rec, _producers) = Recorder::start(common::config(dir), 1).unwrap();
    rec.shutdown().unwrap();

    let after = read::list_segments(dir).unwrap();
    assert!(
        after
            .iter()
            .all(|s| s.state == SegmentState::Sealed && s.has_parquet),
        "{after:?}"
    );
    for s in &sealed_before {
        let now = after
            .iter()
            .find(|a| a.path == s.path)
            .expect("sealed segment survived");
        assert_eq!(now.rows, s.rows, "sealed segment {:?} is intact", s.path);
    }
    let seqs: Vec<u64> = common::all_commands(dir).iter().map(|c| c.seq).collect();
    assert!(
        seqs.len() as u64 >= flushed,
        "recovered {} rows, {flushed} were flushed",
        seqs.len()
    );
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "a gap-free prefix, in order"
    );
    assert_eq!(
        common::parquet_rows(dir, Table::Commands),
        seqs.len() as u64
    );
}
