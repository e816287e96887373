//! Record builders shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a panic is a failing test"
)]

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use recorder::{
    CommandRecord, Decision, Micros, RecorderConfig, SessionId, SessionInfo, Table, read,
};

pub fn config(dir: &Path) -> RecorderConfig {
    RecorderConfig {
        dir: dir.to_owned(),
        flush_interval: Duration::from_millis(20),
        retention_age: Duration::ZERO,
        ..RecorderConfig::default()
    }
}

pub fn session(id: u128, subject: &str, connection: &str) -> Arc<SessionInfo> {
    Arc::new(SessionInfo {
        id: SessionId(id),
        worker: 1,
        connection: connection.into(),
        protocol: "postgres",
        subject: subject.into(),
        email: Some(format!("{subject}@example.com").into()),
        groups: vec![Arc::from("dba"), Arc::from("oncall")].into(),
        client_addr: "10.0.0.7:51234".into(),
        upstream: "db1.internal:5432".into(),
        started_at: Micros(1_764_000_000_000_000),
        policy_version: "policy-v1".into(),
    })
}

pub fn command(s: &Arc<SessionInfo>, seq: u64, decision: Decision, text: &str) -> CommandRecord {
    CommandRecord {
        session: s.clone(),
        seq,
        at: Micros(s.started_at.0 + 1000 * (seq as i64 + 1)),
        action: text.split(' ').next().unwrap_or("").into(),
        text: Some(Bytes::copy_from_slice(text.as_bytes())),
        decision,
        rule_id: Some("rule-1".into()),
        review_id: None,
        approvers: Arc::from(Vec::<Arc<str>>::new()),
        duration_us: 100 + seq,
        rows: Some(seq),
        bytes: 10 * seq,
        masked_values: 0,
        error: None,
    }
}

/// Rows per table found in the sealed Parquet copies, counted by reading them back.
pub fn parquet_rows(dir: &Path, table: Table) -> u64 {
    let mut n = 0;
    for seg in read::list_segments(dir).unwrap() {
        if seg.table == table {
            assert!(
                seg.has_parquet,
                "sealed segment {:?} lacks parquet",
                seg.path
            );
            let f = std::fs::File::open(seg.path.with_extension("parquet")).unwrap();
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap()
                .build()
                .unwrap();
            n += r.map(|b| b.unwrap().num_rows() as u64).sum::<u64>();
        }
    }
    n
}

pub fn all_commands(dir: &Path) -> Vec<read::CommandRow> {
    read::read_table(dir, Table::Commands)
        .unwrap()
        .iter()
        .flat_map(|b| read::command_rows(b).unwrap())
        .collect()
}

/// Re-runs this test binary as a child that executes only `test` with `env` set to `dir`
/// (the child test returns at once unless it sees it), and hands back its stdout by line.
/// Crash tests kill the child with SIGKILL while it writes.
pub fn spawn_child(test: &str, env: &str, dir: &Path) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}
