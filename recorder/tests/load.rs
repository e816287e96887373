//! Rotation under concurrent load loses nothing; a full queue fails closed and is counted;
//! retention removes only sealed segments.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use recorder::read::{self, SegmentState};
use recorder::{Decision, OnFull, Recorder, RecorderConfig, Refused, Table};

#[test]
fn rotation_under_concurrent_load_loses_nothing() {
    const WORKERS: usize = 4;
    const PER_WORKER: u64 = 40_000;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RecorderConfig {
        segment_max_bytes: 256 << 10,
        queue_capacity: 1024,
        on_full: OnFull::Block,
        ..common::config(tmp.path())
    };
    let (rec, producers) = Recorder::start(cfg, WORKERS).unwrap();
    let threads: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(w, p)| {
            std::thread::spawn(move || {
                let s = common::session(w as u128 + 1, &format!("user{w}"), "db");
                p.session_started(&s).unwrap();
                for seq in 0..PER_WORKER {
                    p.command(common::command(
                        &s,
                        seq,
                        Decision::Allow,
                        "SELECT * FROM accounts WHERE id = 42",
                    ))
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats_before = rec.stats();
    rec.shutdown().unwrap();

    let dir = tmp.path();
    let segs = read::list_segments(dir).unwrap();
    let cmd_segs: Vec<_> = segs.iter().filter(|s| s.table == Table::Commands).collect();
    assert!(
        cmd_segs.len() > 3,
        "rotation by size should have produced several segments, got {}",
        cmd_segs.len()
    );
    assert!(cmd_segs.iter().all(|s| s.state == SegmentState::Sealed));
    let rows = common::all_commands(dir);
    let total = WORKERS as u64 * PER_WORKER;
    assert_eq!(rows.len() as u64, total);
    let unique: HashSet<_> = rows.iter().map(|r| (r.session_id.clone(), r.seq)).collect();
    assert_eq!(unique.len() as u64, total, "no duplicates");
    // Each worker's records stay in order across segments.
    let mut by_session: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let mut names: Vec<_> = cmd_segs.iter().map(|s| s.path.clone()).collect();
    names.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    for p in names {
        for b in recorder::seal::read_stream(&p).unwrap().0 {
            for r in read::command_rows(&b).unwrap() {
                by_session.entry(r.session_id).or_default().push(r.seq);
            }
        }
    }
    for seqs in by_session.values() {
        assert_eq!(*seqs, (0..PER_WORKER).collect::<Vec<_>>());
    }
    assert_eq!(common::parquet_rows(dir, Table::Commands), total);
    assert_eq!(stats_before.refused, 0);
    // Every session still open at shutdown got its row.
    let sessions: u64 = read::read_table(dir, Table::Sessions)
        .unwrap()
        .iter()
        .map(|b| b.num_rows() as u64)
        .sum();
    assert_eq!(sessions, WORKERS as u64);
}

/// A worker that queues more than the hot ring holds (the writer paused, as during a slow
/// fsync) spills into the rest of its capacity and comes back; announcements and outcomes stay
/// in order through both rings, so every command is one row with no "outcome not recorded".
#[test]
fn spilling_past_the_hot_ring_keeps_order_and_loses_nothing() {
    const WORKERS: usize = 2;
    const HOT: u64 = recorder::handoff::HOT_SLOTS as u64;
    // Commands queued while the writer is paused: two records each, three hot rings' worth.
    const PAUSED: u64 = 3 * HOT / 2;
    const PER_WORKER: u64 = 20 * HOT;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RecorderConfig {
        queue_capacity: 4 * HOT as usize,
        on_full: OnFull::Block,
        ..common::config(tmp.path())
    };
    let (rec, producers) = Recorder::start(cfg, WORKERS).unwrap();
    let paused = std::sync::Barrier::new(WORKERS + 1);
    let resumed = std::sync::Barrier::new(WORKERS + 1);
    rec.debug_pause_writer(true);
    std::thread::scope(|sc| {
        for (w, p) in producers.into_iter().enumerate() {
            let (paused, resumed) = (&paused, &resumed);
            sc.spawn(move || {
                let s = common::session(w as u128 + 1, &format!("user{w}"), "db");
                p.session_started(&s).unwrap();
                for seq in 0..PER_WORKER {
                    if seq == PAUSED {
                        paused.wait();
                        resumed.wait();
                    }
                    let c = common::command(&s, seq, Decision::Allow, "SELECT 1");
                    p.command_started(c.clone()).unwrap();
                    p.command(c).unwrap();
                }
            });
        }
        paused.wait();
        let queued = rec.stats().queued as u64;
        assert_eq!(queued, WORKERS as u64 * (2 * PAUSED + 1));
        assert!(
            queued / WORKERS as u64 > HOT,
            "each worker spilled past its hot ring"
        );
        rec.debug_pause_writer(false);
        resumed.wait();
    });
    let stats = rec.stats();
    rec.shutdown().unwrap();
    // Blocked pushes after the resume (the writer catching up) are fine; refusals are not.
    assert_eq!(stats.refused, 0);
    let rows = common::all_commands(tmp.path());
    assert_eq!(rows.len() as u64, WORKERS as u64 * PER_WORKER);
    let mut by_session: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for r in &rows {
        assert_eq!(
            r.error, None,
            "command {} of {} lost its outcome",
            r.seq, r.session_id
        );
        by_session
            .entry(r.session_id.clone())
            .or_default()
            .push(r.seq);
    }
    assert_eq!(by_session.len(), WORKERS);
    for seqs in by_session.values_mut() {
        seqs.sort_unstable();
        assert_eq!(*seqs, (0..PER_WORKER).collect::<Vec<_>>());
    }
}

#[test]
fn full_queue_fails_closed_and_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RecorderConfig {
        queue_capacity: 4,
        full_wait: Duration::from_millis(30),
        ..common::config(tmp.path())
    };
    let (rec, producers) = Recorder::start(cfg, 1).unwrap();
    let p = &producers[0];
    let s = common::session(7, "mallory", "db");
    rec.debug_pause_writer(true);
    for seq in 0..4 {
        p.command(common::command(&s, seq, Decision::Allow, "SELECT 1"))
            .unwrap();
    }
    let t0 = Instant::now();
    let err = p
        .command(common::command(&s, 4, Decision::Allow, "SELECT 2"))
        .unwrap_err();
    assert_eq!(err, Refused);
    assert!(
        t0.elapsed() >= Duration::from_millis(30),
        "waited full_wait before refusing"
    );
    assert_eq!(
        err.to_string(),
        "audit recorder unavailable: the record could not be queued, so the request is refused"
    );
    let st = rec.stats();
    assert_eq!((st.queue_full_events, st.refused, st.queued), (1, 1, 4));
    rec.debug_pause_writer(false);
    p.command(common::command(&s, 5, Decision::Allow, "SELECT 3"))
        .unwrap();
    rec.shutdown().unwrap();
    let seqs: Vec<u64> = common::all_commands(tmp.path())
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(
        seqs,
        [0, 1, 2, 3, 5],
        "the refused record is not written, the others are"
    );
    // After shutdown, a leftover producer is refused rather than queueing into nothing.
    assert_eq!(
        p.command(common::command(&s, 6, Decision::Allow, "SELECT 4")),
        Err(Refused)
    );
}

#[test]
fn full_queue_blocks_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RecorderConfig {
        queue_capacity: 2,
        on_full: OnFull::Block,
        ..common::config(tmp.path())
    };
    let (rec, mut producers) = Recorder::start(cfg, 1).unwrap();
    let p = producers.pop().unwrap();
    rec.debug_pause_writer(true);
    let worker = std::thread::spawn(move || {
        let s = common::session(8, "erin", "db");
        for seq in 0..3 {
            p.command(common::command(&s, seq, Decision::Allow, "SELECT 1"))
                .unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(!worker.is_finished(), "third record waits for room");
    assert_eq!(rec.stats().queue_full_events, 1);
    rec.debug_pause_writer(false);
    worker.join().unwrap();
    let st = rec.stats();
    assert_eq!(st.refused, 0);
    rec.shutdown().unwrap();
    assert_eq!(common::all_commands(tmp.path()).len(), 3);
}

#[test]
fn retention_removes_only_sealed_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Three separate runs produce three sealed commands segments.
    for run in 0..3u128 {
        let (rec, producers) = Recorder::start(common::config(dir), 1).unwrap();
        let s = common::session(run + 1, "alice", "db");
        for seq in 0..100 {
            producers[0]
                .command(common::command(&s, seq, Decision::Allow, "SELECT 1"))
                .unwrap();
        }
        rec.shutdown().unwrap();
    }
    let sealed: Vec<_> = read::list_segments(dir).unwrap();
    assert_eq!(sealed.len(), 3);
    // Age the first run's files by two days.
    let old = SystemTime::now() - Duration::from_secs(2 * 86_400);
    for ext in ["arrow", "parquet"] {
        let f = std::fs::File::options()
            .write(true)
            .open(sealed[0].path.with_extension(ext))
            .unwrap();
        f.set_modified(old).unwrap();
    }
    // A live segment, as if a writer were running, must survive whatever the limits say.
    let live = dir.join("commands/_live/commands-20200101T000000.000000Z-000001.arrow.part");
    std::fs::create_dir_all(live.parent().unwrap()).unwrap();
    std::fs::write(&live, b"partial").unwrap();

    let r = recorder::seal::apply_retention(dir, Duration::from_secs(86_400), 0, SystemTime::now())
        .unwrap();
    assert_eq!(r.files_removed, 2, "both files of the old segment");
    let left: Vec<_> = read::list_segments(dir)
        .unwrap()
        .into_iter()
        .filter(|s| s.state == SegmentState::Sealed)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(!left.iter().any(|s| s.path == sealed[0].path));

    // Size limit: keep under one segment's worth, so only the newest survives.
    let newest = &left[1];
    let newest_bytes = newest.bytes
        + std::fs::metadata(newest.path.with_extension("parquet"))
            .unwrap()
            .len();
    let r = recorder::seal::apply_retention(dir, Duration::ZERO, newest_bytes, SystemTime::now())
        .unwrap();
    assert_eq!(r.files_removed, 2);
    let left: Vec<_> = read::list_segments(dir).unwrap();
    let sealed_left: Vec<_> = left
        .iter()
        .filter(|s| s.state == SegmentState::Sealed)
        .collect();
    assert_eq!(sealed_left.len(), 1);
    assert_eq!(sealed_left[0].path, newest.path);
    assert!(live.exists(), "live segments are never removed");
}
