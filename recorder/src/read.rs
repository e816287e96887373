//! Reading recordings back: the segment listing and a session's timeline, for the CLI and for
//! tests. Reads Arrow segments (sealed and live, tolerating a torn tail), never Parquet.
//!
//! This is an operator tool, not a query engine: it scans every segment of a table. Auditors
//! query with DuckDB (see `docs/recording.md`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use arrow::array::{
    Array, AsArray, BinaryArray, ListArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt16Array, UInt64Array,
};
use arrow::datatypes::{TimestampMicrosecondType, UInt16Type, UInt64Type};

use crate::error::{RecorderError, SchemaMismatch};
use crate::records::Micros;
use crate::schema::Table;
use crate::seal::{civil_from_days, live_dir, read_stream};

/// Whether a segment is still being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentState {
    Live,
    Sealed,
}

/// One Arrow segment on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub table: Table,
    pub path: PathBuf,
    pub state: SegmentState,
    /// Rows in complete batches.
    pub rows: u64,
    pub bytes: u64,
    /// Earliest and latest value of the table's time column.
    pub first: Option<Micros>,
    pub last: Option<Micros>,
    /// A sealed segment's Parquet copy exists.
    pub has_parquet: bool,
}

fn arrow_files(root: &Path, table: Table) -> Vec<(PathBuf, SegmentState)> {
    let mut out = Vec::new();
    if let Ok(parts) = std::fs::read_dir(root.join(table.name())) {
        for part in parts.flatten() {
            let dir = part.path();
            let is_partition = dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("date="));
            if !is_partition {
                continue;
            }
            if let Ok(files) = std::fs::read_dir(&dir) {
                out.extend(
                    files
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "arrow"))
                        .map(|p| (p, SegmentState::Sealed)),
                );
            }
        }
    }
    if let Ok(files) = std::fs::read_dir(live_dir(root, table)) {
        out.extend(
            files
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".arrow.part"))
                .map(|p| (p, SegmentState::Live)),
        );
    }
    out.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    out
}

/// Every Arrow segment under `root`, by table and then by opening time.
pub fn list_segments(root: &Path) -> Result<Vec<SegmentInfo>, RecorderError> {
    let mut out = Vec::new();
    for table in Table::ALL {
        for (path, state) in arrow_files(root, table) {
            let (batches, _) = read_stream(&path)?;
            let mut info = SegmentInfo {
                table,
                bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                has_parquet: state == SegmentState::Sealed
                    && path.with_extension("parquet").exists(),
                path,
                state,
                rows: 0,
                first: None,
                last: None,
            };
            for b in &batches {
                info.rows += b.num_rows() as u64;
                let col = ts_col(b, table.time_column(), &info.path)?;
                for t in col.iter().flatten() {
                    info.first = Some(info.first.map_or(Micros(t), |f| f.min(Micros(t))));
                    info.last = Some(info.last.map_or(Micros(t), |l| l.max(Micros(t))));
                }
            }
            out.push(info);
        }
    }
    Ok(out)
}

/// Every complete batch of a table, sealed and live segments alike.
pub fn read_table(root: &Path, table: Table) -> Result<Vec<RecordBatch>, RecorderError> {
    let mut out = Vec::new();
    for (path, _) in arrow_files(root, table) {
        out.extend(read_stream(&path)?.0);
    }
    Ok(out)
}

fn mismatch(path: &Path, why: String) -> RecorderError {
    SchemaMismatch {
        path: path.to_owned(),
        why,
    }
    .into()
}

fn column<'a>(b: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a dyn Array, RecorderError> {
    b.column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| mismatch(path, format!("no column `{name}`")))
}

fn str_col<'a>(
    b: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a StringArray, RecorderError> {
    column(b, name, path)?
        .as_string_opt::<i32>()
        .ok_or_else(|| mismatch(path, format!("column `{name}` is not utf8")))
}

/// A utf8 column added in a later schema version: absent in older files.
fn optional_str_col<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    b.column_by_name(name)?.as_string_opt::<i32>()
}

fn u64_col<'a>(
    b: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a UInt64Array, RecorderError> {
    column(b, name, path)?
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| mismatch(path, format!("column `{name}` is not uint64")))
}

fn u16_col<'a>(
    b: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a UInt16Array, RecorderError> {
    column(b, name, path)?
        .as_primitive_opt::<UInt16Type>()
        .ok_or_else(|| mismatch(path, format!("column `{name}` is not uint16")))
}

fn ts_col<'a>(
    b: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a TimestampMicrosecondArray, RecorderError> {
    column(b, name, path)?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| mismatch(path, format!("column `{name}` is not timestamp[us]")))
}

fn list_col<'a>(
    b: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a ListArray, RecorderError> {
    column(b, name, path)?
        .as_list_opt::<i32>()
        .ok_or_else(|| mismatch(path, format!("column `{name}` is not a list")))
}

fn bin_col<'a>(
    b: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a BinaryArray, RecorderError> {
    column(b, name, path)?
        .as_binary_opt::<i32>()
        .ok_or_else(|| mismatch(path, format!("column `{name}` is not binary")))
}

fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_owned())
}

fn opt_u64(a: &UInt64Array, i: usize) -> Option<u64> {
    a.is_valid(i).then(|| a.value(i))
}

fn strings(a: &ListArray, i: usize) -> Vec<String> {
    if a.is_null(i) {
        return Vec::new();
    }
    let v = a.value(i);
    v.as_string_opt::<i32>()
        .map(|s| s.iter().flatten().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A `sessions` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub schema_version: u16,
    pub session_id: String,
    pub worker: u16,
    pub connection: String,
    pub protocol: String,
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub client_addr: String,
    pub upstream: String,
    pub started_at: Micros,
    pub ended_at: Option<Micros>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub outcome: String,
    pub outcome_reason: Option<String>,
    /// `None` in files written before schema version 2.
    pub policy_version: Option<String>,
}

/// A `commands` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRow {
    pub schema_version: u16,
    pub session_id: String,
    pub connection: String,
    pub protocol: String,
    pub subject: String,
    pub seq: u64,
    pub at: Micros,
    pub action: String,
    pub text: Option<String>,
    pub decision: String,
    pub rule_id: Option<String>,
    pub review_id: Option<String>,
    pub approvers: Vec<String>,
    pub duration_us: u64,
    pub rows: Option<u64>,
    pub bytes: u64,
    pub masked_values: u64,
    pub error: Option<String>,
    /// `None` in files written before schema version 2.
    pub policy_version: Option<String>,
}

/// A `frames` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRow {
    pub schema_version: u16,
    pub session_id: String,
    pub seq: u64,
    pub at: Micros,
    pub direction: String,
    pub payload: Vec<u8>,
}

/// A `reviews` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRow {
    pub schema_version: u16,
    pub review_id: String,
    pub session_id: Option<String>,
    pub command_seq: Option<u64>,
    pub at: Micros,
    pub event: String,
    pub connection: String,
    pub requester: String,
    pub actor: Option<String>,
    pub text: Option<String>,
    pub reason: Option<String>,
}

/// Decodes a `sessions` batch.
pub fn session_rows(b: &RecordBatch) -> Result<Vec<SessionRow>, RecorderError> {
    let p = Path::new("sessions");
    let (sv, id, worker) = (
        u16_col(b, "schema_version", p)?,
        str_col(b, "session_id", p)?,
        u16_col(b, "worker", p)?,
    );
    let (conn, proto, subj) = (
        str_col(b, "connection", p)?,
        str_col(b, "protocol", p)?,
        str_col(b, "subject", p)?,
    );
    let (email, groups, client) = (
        str_col(b, "email", p)?,
        list_col(b, "groups", p)?,
        str_col(b, "client_addr", p)?,
    );
    let (up, start, end) = (
        str_col(b, "upstream", p)?,
        ts_col(b, "started_at", p)?,
        ts_col(b, "ended_at", p)?,
    );
    let (bin, bout) = (u64_col(b, "bytes_in", p)?, u64_col(b, "bytes_out", p)?);
    let (outcome, reason) = (str_col(b, "outcome", p)?, str_col(b, "outcome_reason", p)?);
    let policy = optional_str_col(b, "policy_version");
    Ok((0..b.num_rows())
        .map(|i| SessionRow {
            schema_version: sv.value(i),
            session_id: id.value(i).to_owned(),
            worker: worker.value(i),
            connection: conn.value(i).to_owned(),
            protocol: proto.value(i).to_owned(),
            subject: subj.value(i).to_owned(),
            email: opt_str(email, i),
            groups: strings(groups, i),
            client_addr: client.value(i).to_owned(),
            upstream: up.value(i).to_owned(),
            started_at: Micros(start.value(i)),
            ended_at: end.is_valid(i).then(|| Micros(end.value(i))),
            bytes_in: bin.value(i),
            bytes_out: bout.value(i),
            outcome: outcome.value(i).to_owned(),
            outcome_reason: opt_str(reason, i),
            policy_version: policy.and_then(|c| opt_str(c, i)),
        })
        .collect())
}

/// Decodes a `commands` batch.
pub fn command_rows(b: &RecordBatch) -> Result<Vec<CommandRow>, RecorderError> {
    let p = Path::new("commands");
    let (sv, id, conn) = (
        u16_col(b, "schema_version", p)?,
        str_col(b, "session_id", p)?,
        str_col(b, "connection", p)?,
    );
    let (proto, subj, seq) = (
        str_col(b, "protocol", p)?,
        str_col(b, "subject", p)?,
        u64_col(b, "seq", p)?,
    );
    let (at, action, text) = (
        ts_col(b, "ts", p)?,
        str_col(b, "action", p)?,
        str_col(b, "text", p)?,
    );
    let (decision, rule, review) = (
        str_col(b, "decision", p)?,
        str_col(b, "rule_id", p)?,
        str_col(b, "review_id", p)?,
    );
    let (approvers, dur, rows) = (
        list_col(b, "approvers", p)?,
        u64_col(b, "duration_us", p)?,
        u64_col(b, "rows", p)?,
    );
    let (bytes, masked, error) = (
        u64_col(b, "bytes", p)?,
        u64_col(b, "masked_values", p)?,
        str_col(b, "error", p)?,
    );
    let policy = optional_str_col(b, "policy_version");
    Ok((0..b.num_rows())
        .map(|i| CommandRow {
            schema_version: sv.value(i),
            session_id: id.value(i).to_owned(),
            connection: conn.value(i).to_owned(),
            protocol: proto.value(i).to_owned(),
            subject: subj.value(i).to_owned(),
            seq: seq.value(i),
            at: Micros(at.value(i)),
            action: action.value(i).to_owned(),
            text: opt_str(text, i),
            decision: decision.value(i).to_owned(),
            rule_id: opt_str(rule, i),
            review_id: opt_str(review, i),
            approvers: strings(approvers, i),
            duration_us: dur.value(i),
            rows: opt_u64(rows, i),
            bytes: bytes.value(i),
            masked_values: masked.value(i),
            error: opt_str(error, i),
            policy_version: policy.and_then(|c| opt_str(c, i)),
        })
        .collect())
}

/// Decodes a `frames` batch.
pub fn frame_rows(b: &RecordBatch) -> Result<Vec<FrameRow>, RecorderError> {
    let p = Path::new("frames");
    let (sv, id, seq) = (
        u16_col(b, "schema_version", p)?,
        str_col(b, "session_id", p)?,
        u64_col(b, "seq", p)?,
    );
    let (at, dir, payload) = (
        ts_col(b, "ts", p)?,
        str_col(b, "direction", p)?,
        bin_col(b, "payload", p)?,
    );
    Ok((0..b.num_rows())
        .map(|i| FrameRow {
            schema_version: sv.value(i),
            session_id: id.value(i).to_owned(),
            seq: seq.value(i),
            at: Micros(at.value(i)),
            direction: dir.value(i).to_owned(),
            payload: payload.value(i).to_vec(),
        })
        .collect())
}

/// Decodes a `reviews` batch.
pub fn review_rows(b: &RecordBatch) -> Result<Vec<ReviewRow>, RecorderError> {
    let p = Path::new("reviews");
    let (sv, rid, sid) = (
        u16_col(b, "schema_version", p)?,
        str_col(b, "review_id", p)?,
        str_col(b, "session_id", p)?,
    );
    let (cseq, at, event) = (
        u64_col(b, "command_seq", p)?,
        ts_col(b, "ts", p)?,
        str_col(b, "event", p)?,
    );
    let (conn, req, actor) = (
        str_col(b, "connection", p)?,
        str_col(b, "requester", p)?,
        str_col(b, "actor", p)?,
    );
    let (text, reason) = (str_col(b, "text", p)?, str_col(b, "reason", p)?);
    Ok((0..b.num_rows())
        .map(|i| ReviewRow {
            schema_version: sv.value(i),
            review_id: rid.value(i).to_owned(),
            session_id: opt_str(sid, i),
            command_seq: opt_u64(cseq, i),
            at: Micros(at.value(i)),
            event: event.value(i).to_owned(),
            connection: conn.value(i).to_owned(),
            requester: req.value(i).to_owned(),
            actor: opt_str(actor, i),
            text: opt_str(text, i),
            reason: opt_str(reason, i),
        })
        .collect())
}

/// Everything recorded about one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    pub session: Option<SessionRow>,
    pub commands: Vec<CommandRow>,
    pub frames: Vec<FrameRow>,
    pub reviews: Vec<ReviewRow>,
}

/// Collects a session's rows from every table, each sorted by sequence.
pub fn session_timeline(root: &Path, session_id: &str) -> Result<Timeline, RecorderError> {
    let mut t = Timeline::default();
    for b in read_table(root, Table::Sessions)? {
        if let Some(s) = session_rows(&b)?
            .into_iter()
            .rfind(|s| s.session_id == session_id)
        {
            t.session = Some(s);
        }
    }
    for b in read_table(root, Table::Commands)? {
        t.commands.extend(
            command_rows(&b)?
                .into_iter()
                .filter(|c| c.session_id == session_id),
        );
    }
    for b in read_table(root, Table::Frames)? {
        t.frames.extend(
            frame_rows(&b)?
                .into_iter()
                .filter(|f| f.session_id == session_id),
        );
    }
    for b in read_table(root, Table::Reviews)? {
        t.reviews.extend(
            review_rows(&b)?
                .into_iter()
                .filter(|r| r.session_id.as_deref() == Some(session_id)),
        );
    }
    t.commands.sort_by_key(|c| c.seq);
    t.frames.sort_by_key(|f| f.seq);
    t.reviews.sort_by_key(|r| r.at);
    Ok(t)
}

/// `2026-11-26 14:17:30.123456Z`.
pub fn format_micros(t: Micros) -> String {
    let (y, m, d) = civil_from_days(t.0.div_euclid(86_400_000_000));
    let in_day = t.0.rem_euclid(86_400_000_000);
    let secs = in_day / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        in_day % 1_000_000
    )
}

/// Bytes as text a terminal shows safely: printable ASCII as is, everything else escaped
/// (`\n`, `\x1b`), so recorded traffic cannot drive the auditor's terminal.
pub fn escape_bytes(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

impl Timeline {
    /// The human-readable replay: the session, then commands, reviews and frames merged in
    /// time order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(s) = &self.session {
            let _ = writeln!(
                out,
                "session {} {} {} subject={} email={} groups=[{}] client={} upstream={}",
                s.session_id,
                s.protocol,
                s.connection,
                s.subject,
                s.email.as_deref().unwrap_or("-"),
                s.groups.join(","),
                s.client_addr,
                s.upstream
            );
            let _ = writeln!(
                out,
                "  started {}  ended {}  in {} B  out {} B  outcome {}{}",
                format_micros(s.started_at),
                s.ended_at.map_or_else(|| "-".into(), format_micros),
                s.bytes_in,
                s.bytes_out,
                s.outcome,
                s.outcome_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
        enum Ev<'a> {
            C(&'a CommandRow),
            F(&'a FrameRow),
            R(&'a ReviewRow),
        }
        let mut evs: Vec<(Micros, u8, u64, Ev<'_>)> = Vec::new();
        evs.extend(self.commands.iter().map(|c| (c.at, 0, c.seq, Ev::C(c))));
        evs.extend(self.reviews.iter().map(|r| (r.at, 1, 0, Ev::R(r))));
        evs.extend(self.frames.iter().map(|f| (f.at, 2, f.seq, Ev::F(f))));
        evs.sort_by_key(|e| (e.0, e.1, e.2));
        for (at, _, _, ev) in evs {
            let when = format_micros(at);
            match ev {
                Ev::C(c) => {
                    let _ = write!(
                        out,
                        "{when} #{} {} {} rule={}",
                        c.seq,
                        c.decision.to_uppercase(),
                        c.action,
                        c.rule_id.as_deref().unwrap_or("-")
                    );
                    if let Some(r) = &c.review_id {
                        let _ = write!(out, " review={r} approvers=[{}]", c.approvers.join(","));
                    }
                    let _ = write!(
                        out,
                        " {}us rows={} bytes={} masked={}",
                        c.duration_us,
                        c.rows.map_or_else(|| "-".into(), |r| r.to_string()),
                        c.bytes,
                        c.masked_values
                    );
                    if let Some(e) = &c.error {
                        let _ = write!(out, " error={}", escape_bytes(e.as_bytes()));
                    }
                    let _ = writeln!(out);
                    if let Some(t) = &c.text {
                        let _ = writeln!(out, "    {}", escape_bytes(t.as_bytes()));
                    }
                }
                Ev::R(r) => {
                    let _ = writeln!(
                        out,
                        "{when} review {} {} by {}{}",
                        r.review_id,
                        r.event,
                        r.actor.as_deref().unwrap_or(&r.requester),
                        r.reason
                            .as_deref()
                            .map(|x| format!(": {}", escape_bytes(x.as_bytes())))
                            .unwrap_or_default()
                    );
                }
                Ev::F(f) => {
                    let arrow = if f.direction == "to_client" {
                        "<<"
                    } else {
                        ">>"
                    };
                    let _ = writeln!(out, "{when} {arrow} {}", escape_bytes(&f.payload));
                }
            }
        }
        out
    }
}
