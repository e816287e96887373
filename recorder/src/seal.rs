//! Publishing finished segments, recovering leftovers after a crash, and retention.
//!
//! On-disk layout under the recordings root:
//!
//! ```text
//! <dir>/<table>/_live/<table>-<opened>-<n>.arrow.part     being written (never query these)
//! <dir>/<table>/date=YYYY-MM-DD/<table>-<opened>-<n>.parquet   sealed, zstd
//! <dir>/<table>/date=YYYY-MM-DD/<table>-<opened>-<n>.arrow     sealed, Arrow IPC stream
//! ```
//!
//! A segment is published by writing its Parquet copy aside (`.parquet.tmp`), fsyncing,
//! renaming, then renaming the finished Arrow stream into the same directory and fsyncing both
//! directories, so a glob over `date=*/` only ever sees complete files. Recovery reads each
//! leftover `.part` up to its last complete batch and publishes that. Retention deletes sealed
//! files only; it never touches `_live/`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use std::collections::HashSet;

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray, UInt64Array};
use arrow::compute::filter_record_batch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::config::RecorderConfig;
use crate::error::RecorderError;
use crate::handoff::Shared;
use crate::records::Micros;
use crate::schema::Table;

/// Retention also runs on this period when no segment is being sealed.
const RETENTION_PERIOD: Duration = Duration::from_secs(60);

/// A finished live segment for the sealer.
#[derive(Debug)]
pub(crate) struct SealJob {
    pub(crate) table: Table,
    pub(crate) name: String,
    pub(crate) part_path: PathBuf,
    /// Rewrite the Arrow stream from its complete batches (a crashed, possibly torn file)
    /// instead of renaming it as is.
    pub(crate) rewrite: bool,
}

pub(crate) fn live_dir(root: &Path, table: Table) -> PathBuf {
    root.join(table.name()).join("_live")
}

/// Days since the Unix epoch (UTC) of a timestamp.
pub(crate) fn utc_day(t: Micros) -> i64 {
    t.0.div_euclid(86_400_000_000)
}

/// Civil date (year, month, day) of a day number: the proleptic Gregorian algorithm from
/// Howard Hinnant's `civil_from_days`, so no date crate is needed.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d is in 1..=31 and m in 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// `<table>-YYYYMMDDTHHMMSS.ffffffZ-<n>`: sorts by opening time, names the day for recovery.
pub(crate) fn segment_name(table: Table, t: Micros, counter: u64) -> String {
    let (y, m, d) = civil_from_days(utc_day(t));
    let in_day = t.0.rem_euclid(86_400_000_000);
    let secs = in_day / 1_000_000;
    format!(
        "{}-{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{:06}Z-{counter:06}",
        table.name(),
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        in_day % 1_000_000
    )
}

/// The `date=YYYY-MM-DD` directory a segment name belongs to.
fn partition_of(name: &str, table: Table) -> Option<String> {
    let stamp = name.strip_prefix(table.name())?.strip_prefix('-')?;
    let day = stamp.get(..8)?;
    if !day.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!(
        "date={}-{}-{}",
        day.get(..4)?,
        day.get(4..6)?,
        day.get(6..8)?
    ))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), RecorderError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(RecorderError::io(dir))
}

/// Reads every complete batch of an Arrow IPC stream. A torn tail (crash mid-write) ends the
/// read without error: everything before it is returned. The flag says whether the stream
/// ended cleanly.
pub fn read_stream(path: &Path) -> Result<(Vec<RecordBatch>, bool), RecorderError> {
    let file = File::open(path).map_err(RecorderError::io(path))?;
    let reader = match StreamReader::try_new(BufReader::new(file), None) {
        Ok(r) => r,
        // Not even a complete schema message: nothing was flushed.
        Err(_) => return Ok((Vec::new(), false)),
    };
    let mut batches = Vec::new();
    for batch in reader {
        match batch {
            Ok(b) => batches.push(b),
            Err(_) => return Ok((batches, false)),
        }
    }
    Ok((batches, true))
}

fn write_parquet(path: &Path, table: Table, batches: &[RecordBatch]) -> Result<(), RecorderError> {
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(RecorderError::io(&tmp))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(file, table.schema(), Some(props))
        .map_err(RecorderError::parquet(&tmp))?;
    for b in batches {
        writer.write(b).map_err(RecorderError::parquet(&tmp))?;
    }
    let file = writer.into_inner().map_err(RecorderError::parquet(&tmp))?;
    file.sync_all().map_err(RecorderError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(RecorderError::io(path))
}

pub(crate) fn write_arrow(
    path: &Path,
    table: Table,
    batches: &[RecordBatch],
) -> Result<(), RecorderError> {
    let tmp = path.with_extension("arrow.tmp");
    let file = File::create(&tmp).map_err(RecorderError::io(&tmp))?;
    let mut w = StreamWriter::try_new_buffered(file, &table.schema())
        .map_err(RecorderError::arrow(&tmp))?;
    for b in batches {
        w.write(b).map_err(RecorderError::arrow(&tmp))?;
    }
    w.finish().map_err(RecorderError::arrow(&tmp))?;
    let file = w
        .into_inner()
        .map_err(RecorderError::arrow(&tmp))?
        .into_inner()
        .map_err(|e| RecorderError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
    file.sync_all().map_err(RecorderError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(RecorderError::io(path))
}

/// Publishes one finished or leftover live segment. Returns the rows it holds.
pub(crate) fn seal_segment(root: &Path, job: &SealJob) -> Result<u64, RecorderError> {
    let (batches, clean) = read_stream(&job.part_path)?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let live = live_dir(root, job.table);
    if rows == 0 {
        std::fs::remove_file(&job.part_path).map_err(RecorderError::io(&job.part_path))?;
        return sync_dir(&live).map(|()| 0);
    }
    let partition = partition_of(&job.name, job.table).unwrap_or_else(|| "date=unknown".into());
    let dir = root.join(job.table.name()).join(partition);
    std::fs::create_dir_all(&dir).map_err(RecorderError::io(&dir))?;
    write_parquet(
        &dir.join(format!("{}.parquet", job.name)),
        job.table,
        &batches,
    )?;
    let arrow_path = dir.join(format!("{}.arrow", job.name));
    if job.rewrite || !clean {
        write_arrow(&arrow_path, job.table, &batches)?;
        std::fs::remove_file(&job.part_path).map_err(RecorderError::io(&job.part_path))?;
    } else {
        std::fs::rename(&job.part_path, &arrow_path).map_err(RecorderError::io(&arrow_path))?;
    }
    sync_dir(&dir)?;
    sync_dir(&live)?;
    Ok(rows as u64)
}

/// What [`recover`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Leftover live segments published.
    pub segments: u64,
    /// Rows they held.
    pub rows: u64,
    /// Tables whose crash snapshot still held commands in flight or sessions open (written
    /// with an error saying their outcome is unknown).
    pub in_flight: u64,
}

/// Turns a table's crash snapshot (commands in flight, sessions open; see `writer`) into a
/// leftover segment of its own, without the rows whose outcome a leftover segment already
/// holds. Returns the new part's path, if any row remains. The snapshot is removed either way.
fn recover_in_flight(
    live: &Path,
    table: Table,
    parts: &[PathBuf],
) -> Result<Option<PathBuf>, RecorderError> {
    let snapshot = live.join(crate::writer::IN_FLIGHT_FILE);
    // A snapshot that never finished its rename: the previous one was already replaced or
    // removed, and this one is incomplete.
    let _ = std::fs::remove_file(snapshot.with_extension("arrow.tmp"));
    if !snapshot.exists() {
        return Ok(None);
    }
    let (batches, _) = read_stream(&snapshot)?;
    let mut done: HashSet<(String, u64)> = HashSet::new();
    for part in parts {
        for b in read_stream(part)?.0 {
            done.extend(row_keys(&b, table));
        }
    }
    let mut kept = Vec::new();
    for b in batches {
        let keys = row_keys(&b, table);
        let mask = BooleanArray::from(keys.iter().map(|k| !done.contains(k)).collect::<Vec<_>>());
        let f = filter_record_batch(&b, &mask).map_err(RecorderError::arrow(&snapshot))?;
        if f.num_rows() > 0 {
            kept.push(f);
        }
    }
    let out = if kept.is_empty() {
        None
    } else {
        let name = segment_name(table, Micros::now(), RECOVERED_COUNTER);
        let part = live.join(format!("{name}.arrow.part"));
        write_arrow(&part, table, &kept)?;
        Some(part)
    };
    std::fs::remove_file(&snapshot).map_err(RecorderError::io(&snapshot))?;
    sync_dir(live)?;
    Ok(out)
}

/// The counter in the name of a segment made from a crash snapshot; the writer's own
/// counters start at 0 in every process and never come near it.
const RECOVERED_COUNTER: u64 = 999_999;

/// `(session_id, seq)` of every row; `seq` is 0 for tables without one (sessions).
fn row_keys(batch: &RecordBatch, table: Table) -> Vec<(String, u64)> {
    let ids = batch
        .column_by_name("session_id")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>());
    let seqs = match table {
        Table::Commands | Table::Frames => batch
            .column_by_name("seq")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>()),
        Table::Sessions | Table::Reviews => None,
    };
    (0..batch.num_rows())
        .map(|i| {
            let id = ids
                .filter(|a| a.is_valid(i))
                .map(|a| a.value(i).to_owned())
                .unwrap_or_default();
            let seq = seqs.filter(|a| a.is_valid(i)).map_or(0, |a| a.value(i));
            (id, seq)
        })
        .collect()
}

/// Publishes every live segment left in `root` by a previous run (complete batches only) and
/// removes half-written temporary files. Must not run while a recorder writes to `root`.
pub fn recover(root: &Path) -> Result<RecoveryReport, RecorderError> {
    let mut report = RecoveryReport::default();
    for table in Table::ALL {
        let tdir = root.join(table.name());
        let Ok(entries) = std::fs::read_dir(&tdir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "_live") {
                remove_tmp_files(&path)?;
            }
        }
        let live = live_dir(root, table);
        let Ok(entries) = std::fs::read_dir(&live) else {
            continue;
        };
        let mut parts: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".arrow.part"))
            .collect();
        parts.sort();
        if let Some(part) = recover_in_flight(&live, table, &parts)? {
            report.in_flight += 1;
            parts.push(part);
        }
        for part_path in parts {
            let Some(name) = part_path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".arrow.part"))
                .map(str::to_owned)
            else {
                continue;
            };
            let rows = seal_segment(
                root,
                &SealJob {
                    table,
                    name,
                    part_path,
                    rewrite: true,
                },
            )?;
            if rows > 0 {
                report.segments += 1;
                report.rows += rows;
            }
        }
    }
    Ok(report)
}

fn remove_tmp_files(dir: &Path) -> Result<(), RecorderError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "tmp") {
            std::fs::remove_file(&p).map_err(RecorderError::io(&p))?;
        }
    }
    Ok(())
}

/// What [`apply_retention`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub files_removed: u64,
    pub bytes_removed: u64,
}

/// Deletes sealed files (`.arrow` and `.parquet` under `date=*/`) last modified more than
/// `max_age` before `now`, then the oldest ones while the sealed total exceeds `max_bytes`.
/// A zero limit is no limit. Live segments are never touched.
pub fn apply_retention(
    root: &Path,
    max_age: Duration,
    max_bytes: u64,
    now: SystemTime,
) -> Result<RetentionReport, RecorderError> {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for table in Table::ALL {
        let Ok(parts) = std::fs::read_dir(root.join(table.name())) else {
            continue;
        };
        for part in parts.flatten() {
            let pdir = part.path();
            if !pdir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("date="))
            {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&pdir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let sealed = p
                    .extension()
                    .is_some_and(|x| x == "arrow" || x == "parquet");
                if let (true, Ok(meta)) = (sealed, e.metadata()) {
                    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    files.push((mtime, meta.len(), p));
                }
            }
        }
    }
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    let mut report = RetentionReport::default();
    for (mtime, len, path) in &files {
        let too_old =
            !max_age.is_zero() && now.duration_since(*mtime).unwrap_or_default() > max_age;
        let too_big = max_bytes != 0 && total > max_bytes;
        if !too_old && !too_big {
            continue;
        }
        std::fs::remove_file(path).map_err(RecorderError::io(path))?;
        total = total.saturating_sub(*len);
        report.files_removed += 1;
        report.bytes_removed += len;
        if let Some(parent) = path.parent() {
            // Only succeeds once the partition is empty, which is the point.
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(report)
}

pub(crate) fn sealer_loop(rx: &Receiver<SealJob>, shared: &Shared, config: &RecorderConfig) {
    let retain = || {
        if config.retention_age.is_zero() && config.retention_bytes == 0 {
            return;
        }
        if let Err(e) = apply_retention(
            &config.dir,
            config.retention_age,
            config.retention_bytes,
            SystemTime::now(),
        ) {
            tracing::warn!(error = %e, "recording retention failed");
        }
    };
    loop {
        match rx.recv_timeout(RETENTION_PERIOD) {
            Ok(job) => {
                match seal_segment(&config.dir, &job) {
                    Ok(_) => {
                        shared.segments_sealed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // The part file stays in `_live/`; the next start recovers it.
                        shared.seal_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "sealing a recording segment failed");
                    }
                }
                retain();
            }
            Err(RecvTimeoutError::Timeout) => retain(),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn segment_names_carry_their_partition() {
        let t = Micros(20_783 * 86_400_000_000 + 3_723_000_042);
        let name = segment_name(Table::Commands, t, 7);
        assert_eq!(name, "commands-20261126T010203.000042Z-000007");
        assert_eq!(
            partition_of(&name, Table::Commands).as_deref(),
            Some("date=2026-11-26")
        );
        assert_eq!(partition_of("frames-x", Table::Frames), None);
    }
}
