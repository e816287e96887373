//! The writer thread: drains the worker queues, builds Arrow record batches, appends them to
//! one live Arrow IPC stream segment per table, fsyncs every `flush_interval`, and rotates
//! segments by size, age and UTC day, handing finished ones to the sealer.
//!
//! It does not convert to Parquet, rename into the published layout or apply retention: that
//! is the sealer's job (`seal`), so a slow Parquet encode never stalls the queues.
//!
//! **Commands in flight.** The data path announces a command before forwarding it
//! ([`Record::CommandStarted`]) and sends it again with its outcome when the server has
//! answered ([`Record::Command`]); only the second becomes a `commands` row, so each command
//! is one row. Until then the writer keeps it in memory and, at every flush, publishes the set
//! of commands in flight and sessions open as a small snapshot per table
//! (`<table>/_live/in-flight.arrow`, replaced atomically after the segments are fsynced).
//! After a crash, recovery writes each snapshot row whose outcome never reached a segment, with
//! an error saying the outcome is unknown: a statement that was forwarded is never missing from
//! the audit just because the gateway died while it ran. The rejected alternatives were two
//! rows per command (every auditor query would have to deduplicate) and recording only at
//! completion (a long statement cut short by a crash would leave no trace).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::ipc::writer::StreamWriter;
use crossbeam_channel::Sender;

use crate::config::RecorderConfig;
use crate::error::RecorderError;
use crate::handoff::Shared;
use crate::records::{CommandRecord, Micros, Record, SessionId, SessionInfo};
use crate::schema::{CommandsBuilder, FramesBuilder, ReviewsBuilder, SessionsBuilder, Table};
use crate::seal::{SealJob, live_dir, segment_name, sync_dir, utc_day, write_arrow};

/// A table's pending rows are written as a batch once this many accumulate, even before the
/// flush timer: bounds the writer's memory and keeps batches a good size for readers.
pub(crate) const BATCH_ROWS: usize = 32_768;

/// Records taken from one queue before moving to the next, so one busy worker cannot starve
/// the others.
const BURST: usize = 4096;

/// Error of a command whose outcome never came back before its session ended (the outcome
/// record was refused by a full queue).
pub(crate) const NO_OUTCOME: &str = "outcome not recorded: the audit queue refused it";

/// Error of a command still in flight at shutdown.
pub(crate) const SHUTDOWN_IN_FLIGHT: &str =
    "outcome unknown: the gateway shut down before the command completed";

/// Error of a command found in the crash snapshot without an outcome.
pub(crate) const CRASH_IN_FLIGHT: &str =
    "outcome unknown: the gateway stopped before the command completed";

/// Reason of a session found open in the crash snapshot.
pub(crate) const CRASH_OPEN_SESSION: &str =
    "interrupted: the gateway stopped while the session was open";

/// File name of a table's in-flight snapshot inside its `_live/` directory.
pub(crate) const IN_FLIGHT_FILE: &str = "in-flight.arrow";

/// Hashes in-flight keys (session id, sequence) with one multiply-fold instead of SipHash: the
/// keys are minted by the gateway itself (time, random word, worker, counter), never chosen by
/// a peer, so hash flooding is not a concern, and SipHash was a tenth of the writer's time.
#[derive(Debug, Default, Clone, Copy)]
struct BuildKeyHasher;

impl std::hash::BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

#[derive(Debug)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        // The folded multiply of FxHash-style hashers: cheap, and mixes high bits down.
        let m = u128::from(self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
}

/// Per-process counter that makes segment names unique within a microsecond.
static SEGMENT_COUNTER: AtomicU64 = AtomicU64::new(0);

struct LiveSegment {
    name: String,
    day: i64,
    part_path: PathBuf,
    opened: Instant,
    writer: StreamWriter<BufWriter<File>>,
    bytes: u64,
}

struct Writer<'a> {
    shared: &'a Shared,
    config: &'a RecorderConfig,
    seal_tx: Sender<SealJob>,
    sessions: SessionsBuilder,
    commands: CommandsBuilder,
    frames: FramesBuilder,
    reviews: ReviewsBuilder,
    live: [Option<LiveSegment>; 4],
    open_sessions: HashMap<SessionId, Arc<SessionInfo>>,
    /// Commands announced and not yet finished, by session and sequence. A hash map rather
    /// than an ordered one: inserts and removes are two per command on the hot path and reuse
    /// the table's capacity, while the per-session scan at session end is over the few
    /// commands in flight at that moment.
    in_flight: HashMap<(SessionId, u64), CommandRecord, BuildKeyHasher>,
    /// The in-flight snapshot on disk is out of date.
    snapshot_dirty: bool,
}

pub(crate) fn run(
    shared: &Shared,
    config: &RecorderConfig,
    seal_tx: Sender<SealJob>,
) -> Result<(), RecorderError> {
    if let Ok(task) = std::fs::read_link("/proc/thread-self") {
        let _ = shared.writer_task.set(PathBuf::from("/proc").join(task));
    }
    let mut w = Writer {
        shared,
        config,
        seal_tx,
        sessions: SessionsBuilder::new(),
        commands: CommandsBuilder::new(),
        frames: FramesBuilder::new(),
        reviews: ReviewsBuilder::new(),
        live: [None, None, None, None],
        open_sessions: HashMap::new(),
        in_flight: HashMap::default(),
        snapshot_dirty: false,
    };
    let result = w.run_loop();
    if let Err(e) = &result {
        // Fail closed: from now on every producer is refused instead of queueing into a
        // writer that will never drain.
        shared.failed.store(true, Ordering::SeqCst);
        tracing::error!(error = %e, "recorder writer failed; commands are refused until restart");
    }
    result
}

impl Writer<'_> {
    fn run_loop(&mut self) -> Result<(), RecorderError> {
        let mut next_flush = Instant::now() + self.config.flush_interval;
        loop {
            let mut taken = 0usize;
            if !self.shared.paused.load(Ordering::Relaxed) {
                for qi in 0..self.shared.queues.len() {
                    for _ in 0..BURST {
                        let Some(record) = self.shared.queues.get(qi).and_then(|q| q.pop()) else {
                            break;
                        };
                        self.accept(record);
                        taken += 1;
                    }
                }
                for table in Table::ALL {
                    if self.pending(table) >= BATCH_ROWS {
                        self.write_pending(table)?;
                    }
                }
            }
            let now = Instant::now();
            if now >= next_flush {
                self.flush_all()?;
                self.rotate_due(now)?;
                next_flush = now + self.config.flush_interval;
            }
            if self.shared.shutdown.load(Ordering::SeqCst)
                && taken == 0
                && self.shared.queues.iter().all(|q| q.is_empty())
            {
                return self.finish();
            }
            if taken == 0 {
                // Nothing queued: sleep until the flush is due. Records pushed meanwhile wait
                // in the rings at most until then, which is the durability bound anyway;
                // producers unpark the writer every `WAKE_EVERY` pushes (and at once when a
                // ring is full), so a busy gateway is drained long before its rings fill. An
                // idle gateway's writer wakes once per `flush_interval`, not every few
                // milliseconds.
                std::thread::park_timeout(next_flush.saturating_duration_since(now));
            }
        }
    }

    fn accept(&mut self, record: Record) {
        match record {
            Record::SessionStarted(s) => {
                self.open_sessions.insert(s.id, s);
                self.snapshot_dirty = true;
            }
            Record::SessionEnded(end) => {
                let id = end.session.id;
                self.open_sessions.remove(&id);
                self.sessions.append(&end.session, Some(&end));
                // Announced commands whose outcome never came (refused by a full queue).
                if !self.in_flight.is_empty() {
                    let mut orphaned: Vec<_> = self
                        .in_flight
                        .extract_if(|(sid, _), _| *sid == id)
                        .map(|(_, c)| c)
                        .collect();
                    orphaned.sort_by_key(|c| c.seq);
                    for mut c in orphaned {
                        c.error = Some(NO_OUTCOME.into());
                        self.commands.append(&c);
                    }
                }
                self.snapshot_dirty = true;
            }
            Record::CommandStarted(c) => {
                self.in_flight.insert((c.session.id, c.seq), c);
                self.snapshot_dirty = true;
            }
            Record::Command(c) => {
                if self.in_flight.remove(&(c.session.id, c.seq)).is_some() {
                    self.snapshot_dirty = true;
                }
                self.commands.append(&c);
            }
            Record::Frame(f) => self.frames.append(&f),
            Record::Review(r) => self.reviews.append(&r),
        }
    }

    fn pending(&self, table: Table) -> usize {
        match table {
            Table::Sessions => self.sessions.rows(),
            Table::Commands => self.commands.rows(),
            Table::Frames => self.frames.rows(),
            Table::Reviews => self.reviews.rows(),
        }
    }

    /// Writes the table's pending rows as one batch and hands them to the kernel. Not fsynced:
    /// that happens once per flush interval for all tables.
    fn write_pending(&mut self, table: Table) -> Result<(), RecorderError> {
        let rows = self.pending(table);
        if rows == 0 {
            return Ok(());
        }
        let batch = match table {
            Table::Sessions => self.sessions.finish(),
            Table::Commands => self.commands.finish(),
            Table::Frames => self.frames.finish(),
            Table::Reviews => self.reviews.finish(),
        }
        .map_err(RecorderError::arrow(self.config.dir.join(table.name())))?;
        self.append_batch(table, &batch)?;
        if let Some(counter) = self.shared.rows_written.get(table.index()) {
            counter.fetch_add(rows as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn append_batch(&mut self, table: Table, batch: &RecordBatch) -> Result<(), RecorderError> {
        let today = utc_day(Micros::now());
        let needs_new = match self.live.get(table.index()) {
            Some(Some(seg)) => seg.day != today,
            _ => true,
        };
        if needs_new {
            self.seal(table)?;
            let seg = self.open_segment(table, today)?;
            if let Some(slot) = self.live.get_mut(table.index()) {
                *slot = Some(seg);
            }
        }
        let Some(Some(seg)) = self.live.get_mut(table.index()) else {
            return Ok(());
        };
        seg.writer
            .write(batch)
            .map_err(RecorderError::arrow(&seg.part_path))?;
        let out = seg.writer.get_mut();
        out.flush().map_err(RecorderError::io(&seg.part_path))?;
        seg.bytes = out
            .get_ref()
            .metadata()
            .map_err(RecorderError::io(&seg.part_path))?
            .len();
        Ok(())
    }

    fn open_segment(&self, table: Table, day: i64) -> Result<LiveSegment, RecorderError> {
        let dir = live_dir(&self.config.dir, table);
        std::fs::create_dir_all(&dir).map_err(RecorderError::io(&dir))?;
        let counter = SEGMENT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = segment_name(table, Micros::now(), counter);
        let part_path = dir.join(format!("{name}.arrow.part"));
        let file = File::create_new(&part_path).map_err(RecorderError::io(&part_path))?;
        // Make the new name itself durable, so a crash cannot leave fsynced data in a file
        // the directory does not list.
        crate::seal::sync_dir(&dir)?;
        let writer = StreamWriter::try_new_buffered(file, &table.schema())
            .map_err(RecorderError::arrow(&part_path))?;
        Ok(LiveSegment {
            name,
            day,
            part_path,
            opened: Instant::now(),
            writer,
            bytes: 0,
        })
    }

    /// Writes every pending batch and fsyncs every live segment.
    fn flush_all(&mut self) -> Result<(), RecorderError> {
        for table in Table::ALL {
            self.write_pending(table)?;
        }
        for seg in self.live.iter_mut().flatten() {
            seg.writer
                .get_ref()
                .get_ref()
                .sync_data()
                .map_err(RecorderError::io(&seg.part_path))?;
        }
        self.write_snapshot()?;
        self.shared
            .last_flush
            .store(Micros::now().0, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes the commands in flight and the open sessions (see the module docs). Runs
    /// after the segments are fsynced, so an outcome that is on disk is never also in the
    /// snapshot as unknown; the reverse window (snapshot older than a segment) is closed by
    /// recovery, which skips snapshot rows whose key a leftover segment holds.
    fn write_snapshot(&mut self) -> Result<(), RecorderError> {
        if !self.snapshot_dirty {
            return Ok(());
        }
        let mut commands = CommandsBuilder::new();
        let mut open: Vec<_> = self.in_flight.values().collect();
        open.sort_by_key(|c| (c.session.id, c.seq));
        for c in open {
            let mut c = c.clone();
            c.error = Some(CRASH_IN_FLIGHT.into());
            commands.append(&c);
        }
        let mut sessions = SessionsBuilder::new();
        for s in self.open_sessions.values() {
            sessions.append_interrupted(s, CRASH_OPEN_SESSION);
        }
        for (table, batch) in [
            (Table::Commands, commands.finish()),
            (Table::Sessions, sessions.finish()),
        ] {
            let dir = live_dir(&self.config.dir, table);
            let path = dir.join(IN_FLIGHT_FILE);
            let batch = batch.map_err(RecorderError::arrow(&path))?;
            if batch.num_rows() == 0 {
                match std::fs::remove_file(&path) {
                    Ok(()) => sync_dir(&dir)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(RecorderError::io(&path)(e)),
                }
                continue;
            }
            std::fs::create_dir_all(&dir).map_err(RecorderError::io(&dir))?;
            write_arrow(&path, table, &[batch])?;
            sync_dir(&dir)?;
        }
        self.snapshot_dirty = false;
        Ok(())
    }

    fn rotate_due(&mut self, now: Instant) -> Result<(), RecorderError> {
        let today = utc_day(Micros::now());
        for table in Table::ALL {
            let due = match self.live.get(table.index()) {
                Some(Some(seg)) => {
                    seg.bytes >= self.config.segment_max_bytes
                        || now.duration_since(seg.opened) >= self.config.segment_max_age
                        || seg.day != today
                }
                _ => false,
            };
            if due {
                self.seal(table)?;
            }
        }
        Ok(())
    }

    /// Ends the table's live stream (end-of-stream marker, fsync) and queues it for sealing.
    fn seal(&mut self, table: Table) -> Result<(), RecorderError> {
        let Some(seg) = self.live.get_mut(table.index()).and_then(Option::take) else {
            return Ok(());
        };
        let mut writer = seg.writer;
        writer
            .finish()
            .map_err(RecorderError::arrow(&seg.part_path))?;
        let file = writer
            .into_inner()
            .map_err(RecorderError::arrow(&seg.part_path))?
            .into_inner()
            .map_err(|e| RecorderError::Io {
                path: seg.part_path.clone(),
                source: e.into_error(),
            })?;
        file.sync_all().map_err(RecorderError::io(&seg.part_path))?;
        let job = SealJob {
            table,
            name: seg.name,
            part_path: seg.part_path,
            rewrite: false,
        };
        if self.seal_tx.send(job).is_err() {
            // The sealer is gone (it only exits after we drop the sender, so this means it
            // panicked); the part file stays in `_live/` and the next start seals it.
            self.shared.seal_errors.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Shutdown: record sessions still open, write everything, seal every segment.
    fn finish(&mut self) -> Result<(), RecorderError> {
        let open: Vec<_> = self.open_sessions.drain().map(|(_, s)| s).collect();
        for s in open {
            self.sessions.append(&s, None);
        }
        let mut left: Vec<_> = self.in_flight.drain().map(|(_, c)| c).collect();
        left.sort_by_key(|c| (c.session.id, c.seq));
        for mut c in left {
            c.error = Some(SHUTDOWN_IN_FLIGHT.into());
            self.commands.append(&c);
        }
        self.snapshot_dirty = true;
        self.flush_all()?;
        for table in Table::ALL {
            self.seal(table)?;
        }
        Ok(())
    }
}
