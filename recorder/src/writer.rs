//! The writer thread: drains the worker queues, builds Arrow record batches, appends them to
//! one live Arrow IPC stream segment per table, fsyncs every `flush_interval`, and rotates
//! segments by size, age and UTC day, handing finished ones to the sealer.
//!
//! It does not convert to Parquet, rename into the published layout or apply retention: that
//! is the sealer's job (`seal`), so a slow Parquet encode never stalls the queues.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::ipc::writer::StreamWriter;
use crossbeam_channel::Sender;

use crate::config::RecorderConfig;
use crate::error::RecorderError;
use crate::handoff::Shared;
use crate::records::{Micros, Record, SessionId, SessionInfo};
use crate::schema::{CommandsBuilder, FramesBuilder, ReviewsBuilder, SessionsBuilder, Table};
use crate::seal::{SealJob, live_dir, segment_name, utc_day};

/// A table's pending rows are written as a batch once this many accumulate, even before the
/// flush timer: bounds the writer's memory and keeps batches a good size for readers.
pub(crate) const BATCH_ROWS: usize = 32_768;

/// Records taken from one queue before moving to the next, so one busy worker cannot starve
/// the others.
const BURST: usize = 4096;

/// Longest idle sleep; producers also unpark the writer every `WAKE_EVERY` pushes.
const IDLE_PARK: Duration = Duration::from_millis(2);

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
                std::thread::park_timeout(IDLE_PARK.min(next_flush.saturating_duration_since(now)));
            }
        }
    }

    fn accept(&mut self, record: Record) {
        match record {
            Record::SessionStarted(s) => {
                self.open_sessions.insert(s.id, s);
            }
            Record::SessionEnded(end) => {
                self.open_sessions.remove(&end.session.id);
                self.sessions.append(&end.session, Some(&end));
            }
            Record::Command(c) => self.commands.append(&c),
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
        self.shared
            .last_flush
            .store(Micros::now().0, Ordering::Relaxed);
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
        self.flush_all()?;
        for table in Table::ALL {
            self.seal(table)?;
        }
        Ok(())
    }
}
