//! The hand-off from the data plane to the writer: one bounded lock-free queue per worker,
//! [`Producer`]s that push into them, and the [`Recorder`] handle that owns the threads.
//!
//! Enqueueing is a single `ArrayQueue::push` (wait-free while there is room) plus relaxed loads
//! of the writer's health flag and the queue's spill flag (see [`Lane`]); the writer is woken by an `unpark` every [`WAKE_EVERY`] pushes
//! and otherwise polls on a short timer, so the data path never makes a syscall in the common
//! case. When a queue is full the producer never drops the record silently: per
//! [`OnFull`](crate::OnFull) it waits up to `full_wait` and then returns [`Refused`] (the
//! caller must refuse the command), or waits as long as it takes. Both cases are counted.
//!
//! This module does not write files; see `writer` and `seal`.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::config::{OnFull, RecorderConfig};
use crate::error::RecorderError;
use crate::records::{
    CommandRecord, FrameRecord, Micros, Record, ReviewEvent, SessionEnd, SessionInfo,
};
use crate::schema::Table;

/// A producer unparks the writer after this many pushes, so a busy queue is drained well
/// before it fills even if the writer's idle timer is long.
pub const WAKE_EVERY: u32 = 1024;

/// Slots of a worker's hot ring (see [`Lane`]): 8192 records of ~200 bytes, 1.6 MiB, where the
/// default 65536-slot ring was 13 MiB. Deliberately larger than a core's L2 (1 MiB here): with
/// 2048 slots (400 KiB) the slots came back to the producer still dirty in the writer's L2,
/// and in about a third of the runs (depending, it seems, on where the two vCPUs sat) every
/// push paid a cross-core transfer: `enqueue_ns` p99 150 ns and `finish_ns` p50 110-120 ns,
/// a mode 8192 slots did not show in the same batches of runs.
pub const HOT_SLOTS: usize = 8192;

/// One worker's queue: a small hot ring that takes every record in the common case, and a
/// spill ring of the configured capacity, used only while the hot ring is full.
///
/// Why two rings: each slot holds a whole record (~200 bytes), so a ring of the configured
/// capacity (65536 by default) spans 13 MiB, and the slot a push writes was last touched a lap
/// earlier and has long left every cache. Measured, that put a cold write on the data path of
/// about one push in a hundred (`finish_ns` p99 150-200 ns against 90-100 ns with a 4096-slot
/// ring in a scratch harness; in `bench recorder`, see `docs/recording.md`). A small ring
/// alone would cut the burst a worker can queue while the writer fsyncs; the spill ring keeps
/// that capacity without keeping it hot. Rejected: boxing each record to
/// shrink the slot to two words (the per-record allocation, freed on the writer's core, put
/// p99 at 330 ns with mimalloc), and an arena indexed through the queue (needs `unsafe`).
///
/// Order: records must reach the writer in push order (a command's outcome after its
/// announcement). While `spilled` is set every push goes to the spill ring, and the hot ring
/// receives nothing; the writer takes from the spill ring only when the hot ring is empty, so
/// it takes every earlier hot record first. A producer clears `spilled` only after it sees the
/// spill ring empty, i.e. after the writer has taken every spilled record.
///
/// Capacity: while spilling, the hot ring's free slots cannot be used (that would overtake the
/// spilled records), so the spill ring alone has the configured capacity. A push is therefore
/// refused only when at least `queue_capacity` records are waiting, as before, and at most
/// `queue_capacity + HOT_SLOTS` records are ever held: the memory bound grows by 1.6 MiB a
/// worker. Sizing the spill ring at `capacity - HOT_SLOTS` instead would refuse with up to
/// `HOT_SLOTS` fewer records waiting than configured.
#[derive(Debug)]
pub(crate) struct Lane {
    hot: ArrayQueue<Record>,
    /// `None` when the configured capacity fits in the hot ring.
    spill: Option<ArrayQueue<Record>>,
    /// Written only by the worker's producers; padded so the writer's traffic on the rings
    /// never shares its line.
    spilled: OwnLine<AtomicBool>,
}

/// A value alone on its cache line pair (128 bytes: the adjacent-line prefetcher pulls lines
/// in pairs), so traffic on its neighbours never invalidates it.
#[derive(Debug)]
#[repr(align(128))]
struct OwnLine<T>(T);

#[expect(
    clippy::result_large_err,
    reason = "as `ArrayQueue::push` does, a refused record comes back by value for the full-queue \
              path; boxing it would put an allocation on every push, which is what `Lane` avoids"
)]
impl Lane {
    fn new(capacity: usize) -> Self {
        Self::with_hot(capacity, HOT_SLOTS)
    }

    fn with_hot(capacity: usize, hot_slots: usize) -> Self {
        let hot = capacity.clamp(1, hot_slots.max(1));
        Lane {
            hot: ArrayQueue::new(hot),
            spill: (capacity > hot).then(|| ArrayQueue::new(capacity)),
            spilled: OwnLine(AtomicBool::new(false)),
        }
    }

    /// The worker is spilling: its next record must go to the spill ring (see
    /// [`Lane::push`]).
    #[inline]
    fn spilling(&self) -> bool {
        self.spilled.0.load(Ordering::Relaxed)
    }

    /// Queues `record` behind everything this worker queued before, or hands it back if both
    /// rings are full. `Producer::push` inlines the common case (not spilling, room in the hot
    /// ring) and comes here for the rest.
    fn push(&self, record: Record) -> Result<(), Record> {
        if !self.spilling() {
            match self.hot.push(record) {
                Ok(()) => Ok(()),
                Err(record) => self.push_spill(record),
            }
        } else {
            self.push_spilled(record)
        }
    }

    /// The hot ring is full: start spilling (or hand the record back if there is no room).
    #[cold]
    fn push_spill(&self, record: Record) -> Result<(), Record> {
        let Some(spill) = &self.spill else {
            return Err(record);
        };
        spill.push(record)?;
        self.spilled.0.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Spilling: keep to the spill ring until the writer has emptied it, then go back to the
    /// hot ring.
    #[cold]
    fn push_spilled(&self, record: Record) -> Result<(), Record> {
        match &self.spill {
            Some(spill) if !spill.is_empty() => spill.push(record),
            _ => {
                self.spilled.0.store(false, Ordering::Relaxed);
                self.push(record)
            }
        }
    }

    /// The writer's side: the next record in push order.
    pub(crate) fn pop(&self) -> Option<Record> {
        self.hot
            .pop()
            .or_else(|| self.spill.as_ref().and_then(ArrayQueue::pop))
    }

    pub(crate) fn len(&self) -> usize {
        self.hot.len() + self.spill.as_ref().map_or(0, ArrayQueue::len)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.hot.is_empty() && self.spill.as_ref().is_none_or(ArrayQueue::is_empty)
    }
}

/// The record could not be queued: the queue stayed full past `full_wait` or the writer has
/// failed. The caller must refuse the command it was about to forward (fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audit recorder unavailable: the record could not be queued, so the request is refused")]
pub struct Refused;

/// State shared by the producers, the writer and the sealer.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) queues: Vec<Lane>,
    pub(crate) writer_thread: OnceLock<Thread>,
    /// `/proc/<pid>/task/<tid>` of the writer, for its CPU time.
    pub(crate) writer_task: OnceLock<PathBuf>,
    pub(crate) shutdown: AtomicBool,
    pub(crate) paused: AtomicBool,
    pub(crate) failed: AtomicBool,
    pub(crate) queue_full_events: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) rows_written: [AtomicU64; 4],
    pub(crate) segments_sealed: AtomicU64,
    pub(crate) seal_errors: AtomicU64,
    pub(crate) last_flush: AtomicI64,
}

impl Shared {
    pub(crate) fn wake_writer(&self) {
        if let Some(t) = self.writer_thread.get() {
            t.unpark();
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Times a producer found its queue full.
    pub queue_full_events: u64,
    /// Records refused (the command was refused with them).
    pub refused: u64,
    /// Rows handed to the kernel, per table, in [`Table::ALL`] order.
    pub rows_written: [u64; 4],
    pub segments_sealed: u64,
    pub seal_errors: u64,
    /// Records waiting in the queues now.
    pub queued: usize,
    /// Wall-clock time of the last completed flush (write + fsync).
    pub last_flush: Option<Micros>,
    /// The writer hit an i/o error and stopped: every record is refused until restart.
    pub writer_failed: bool,
    /// CPU time the writer thread has used (Linux; `None` elsewhere).
    pub writer_cpu: Option<Duration>,
}

impl RecorderStats {
    pub fn rows(&self, table: Table) -> u64 {
        self.rows_written.get(table.index()).copied().unwrap_or(0)
    }
}

/// The running recorder: its writer and sealer threads. Dropping it shuts down like
/// [`Recorder::shutdown`] but discards the result.
#[derive(Debug)]
pub struct Recorder {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<Result<(), RecorderError>>>,
    sealer: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Recovers leftovers from a previous run in `config.dir`, then starts the writer and sealer
    /// threads and returns one producer per worker.
    pub fn start(
        config: RecorderConfig,
        workers: usize,
    ) -> Result<(Recorder, Vec<Producer>), RecorderError> {
        config.validate()?;
        std::fs::create_dir_all(&config.dir).map_err(RecorderError::io(&config.dir))?;
        let recovered = crate::seal::recover(&config.dir)?;
        if recovered.segments > 0 {
            tracing::info!(
                segments = recovered.segments,
                rows = recovered.rows,
                "recovered live recording segments left by the previous run"
            );
        }
        let shared = Arc::new(Shared {
            queues: (0..workers.max(1))
                .map(|_| Lane::new(config.queue_capacity))
                .collect(),
            writer_thread: OnceLock::new(),
            writer_task: OnceLock::new(),
            shutdown: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            queue_full_events: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            rows_written: Default::default(),
            segments_sealed: AtomicU64::new(0),
            seal_errors: AtomicU64::new(0),
            last_flush: AtomicI64::new(0),
        });
        let (seal_tx, seal_rx) = crossbeam_channel::unbounded();
        let sealer = {
            let shared = shared.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("recorder-sealer".into())
                .spawn(move || crate::seal::sealer_loop(&seal_rx, &shared, &config))
                .map_err(RecorderError::Spawn)?
        };
        let writer = {
            let shared = shared.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("recorder-writer".into())
                .spawn(move || crate::writer::run(&shared, &config, seal_tx))
                .map_err(RecorderError::Spawn)?
        };
        // Set here rather than by the writer so producers can wake it from the first push.
        let _ = shared.writer_thread.set(writer.thread().clone());
        let producers = (0..shared.queues.len())
            .map(|idx| Producer {
                shared: shared.clone(),
                idx,
                on_full: config.on_full,
                full_wait: config.full_wait,
                pushes: Cell::new(0),
            })
            .collect();
        Ok((
            Recorder {
                shared,
                writer: Some(writer),
                sealer: Some(sealer),
            },
            producers,
        ))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RecorderStats {
        let s = &self.shared;
        let last = s.last_flush.load(Ordering::Relaxed);
        RecorderStats {
            queue_full_events: s.queue_full_events.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            rows_written: std::array::from_fn(|i| {
                s.rows_written
                    .get(i)
                    .map_or(0, |a| a.load(Ordering::Relaxed))
            }),
            segments_sealed: s.segments_sealed.load(Ordering::Relaxed),
            seal_errors: s.seal_errors.load(Ordering::Relaxed),
            queued: s.queues.iter().map(Lane::len).sum(),
            last_flush: (last != 0).then_some(Micros(last)),
            writer_failed: s.failed.load(Ordering::Relaxed),
            writer_cpu: s.writer_task.get().and_then(|p| thread_cpu(p)),
        }
    }

    /// Test hook: stops (or resumes) the writer draining the queues, to exercise the full-queue
    /// path deterministically. Not for production use.
    #[doc(hidden)]
    pub fn debug_pause_writer(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
        self.shared.wake_writer();
    }

    /// Drains every queue, writes and seals every live segment (with its Parquet copy), and
    /// joins the threads. Producers still alive afterwards get [`Refused`].
    pub fn shutdown(mut self) -> Result<(), RecorderError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), RecorderError> {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.wake_writer();
        let mut result = Ok(());
        if let Some(w) = self.writer.take() {
            result = w
                .join()
                .map_err(|_| RecorderError::ThreadPanicked)
                .and_then(|r| r);
        }
        // The writer dropped its end of the seal channel, so the sealer finishes its queue
        // and returns.
        if let Some(s) = self.sealer.take()
            && s.join().is_err()
            && result.is_ok()
        {
            result = Err(RecorderError::ThreadPanicked);
        }
        self.shared.failed.store(true, Ordering::SeqCst);
        result
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.writer.is_some()
            && let Err(e) = self.stop()
        {
            tracing::error!(error = %e, "recorder shutdown failed");
        }
    }
}

/// Reads utime + stime of a thread from `/proc/<pid>/task/<tid>/stat`, in clock ticks of the
/// kernel's fixed user-visible rate (100 per second).
fn thread_cpu(task: &std::path::Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    // Fields after the parenthesised command name, which may itself contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// A worker's handle for queueing records. Cheap to clone for the worker's tasks; not `Sync`,
/// because each worker (thread) has its own.
#[derive(Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    idx: usize,
    on_full: OnFull,
    full_wait: Duration,
    pushes: Cell<u32>,
}

impl Clone for Producer {
    fn clone(&self) -> Self {
        Producer {
            shared: self.shared.clone(),
            idx: self.idx,
            on_full: self.on_full,
            full_wait: self.full_wait,
            pushes: Cell::new(0),
        }
    }
}

impl Producer {
    /// Queues the start of a session. The `sessions` row is written when the session ends (or,
    /// for sessions still open, at shutdown with outcome `open`).
    pub fn session_started(&self, session: &Arc<SessionInfo>) -> Result<(), Refused> {
        self.push(Record::SessionStarted(session.clone()))
    }

    /// Queues the end of a session: its `sessions` row.
    pub fn session_ended(&self, end: SessionEnd) -> Result<(), Refused> {
        self.push(Record::SessionEnded(end))
    }

    /// Queues a command that is about to be forwarded, with everything known at decision time.
    /// Call it before forwarding: on `Err` refuse the command. The writer keeps it in flight
    /// (and in the crash snapshot, see `writer`) until [`Producer::command`] brings the same
    /// session and `seq` back with its outcome; if that never comes, the command is still
    /// written, with an error saying its outcome is unknown.
    pub fn command_started(&self, command: CommandRecord) -> Result<(), Refused> {
        self.push(Record::CommandStarted(command))
    }

    /// Queues a finished command: its `commands` row. A command that was refused (never
    /// forwarded) goes here directly; a forwarded one was first announced by
    /// [`Producer::command_started`].
    pub fn command(&self, command: CommandRecord) -> Result<(), Refused> {
        self.push(Record::Command(command))
    }

    /// Queues a `frames` row.
    pub fn frame(&self, frame: FrameRecord) -> Result<(), Refused> {
        self.push(Record::Frame(frame))
    }

    /// Queues a `reviews` row.
    pub fn review_event(&self, event: ReviewEvent) -> Result<(), Refused> {
        self.push(Record::Review(event))
    }

    /// Which worker's queue this producer feeds.
    pub fn worker(&self) -> usize {
        self.idx
    }

    #[inline]
    fn push(&self, record: Record) -> Result<(), Refused> {
        let shared = &*self.shared;
        if shared.failed.load(Ordering::Relaxed) {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused);
        }
        let Some(queue) = shared.queues.get(self.idx) else {
            return Err(Refused);
        };
        // The common case spelled out here rather than through `Lane::push`: the record is
        // ~200 bytes, and routing it through one more function that can hand it back made the
        // compiler copy it once more on every push (+10 ns at p50, measured).
        if queue.spilling() {
            return self.push_slow(queue, record);
        }
        if let Err(record) = queue.hot.push(record) {
            return self.push_slow(queue, record);
        }
        self.pushed();
        Ok(())
    }

    /// The hot ring is full or the lane is spilling: the whole lane logic, then the
    /// full-queue wait if the spill ring is full too.
    #[cold]
    #[inline(never)]
    fn push_slow(&self, queue: &Lane, record: Record) -> Result<(), Refused> {
        match queue.push(record) {
            Ok(()) => {
                self.pushed();
                Ok(())
            }
            Err(record) => self.push_full(queue, record),
        }
    }

    /// Counts a queued record and wakes the writer every `WAKE_EVERY`.
    #[inline]
    fn pushed(&self) {
        let n = self.pushes.get().wrapping_add(1);
        self.pushes.set(n);
        if n.is_multiple_of(WAKE_EVERY) {
            self.shared.wake_writer();
        }
    }

    /// The queue is full: count it, wake the writer, and wait per `on_full`.
    #[cold]
    fn push_full(&self, queue: &Lane, mut record: Record) -> Result<(), Refused> {
        let shared = &*self.shared;
        shared.queue_full_events.fetch_add(1, Ordering::Relaxed);
        shared.wake_writer();
        let deadline = Instant::now() + self.full_wait;
        let mut attempt: u32 = 0;
        loop {
            if shared.failed.load(Ordering::Relaxed) {
                break;
            }
            match queue.push(record) {
                Ok(()) => return Ok(()),
                Err(r) => record = r,
            }
            if self.on_full == OnFull::FailClosed && Instant::now() >= deadline {
                break;
            }
            attempt = attempt.saturating_add(1);
            if attempt < 64 {
                std::hint::spin_loop();
            } else if attempt < 128 {
                std::thread::yield_now();
            } else {
                shared.wake_writer();
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        shared.refused.fetch_add(1, Ordering::Relaxed);
        Err(Refused)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;
    use crate::records::{Micros, SessionId};

    fn record(n: u64) -> Record {
        Record::SessionStarted(Arc::new(SessionInfo {
            id: SessionId(u128::from(n)),
            worker: 0,
            connection: "c".into(),
            protocol: "tcp",
            subject: "".into(),
            email: None,
            groups: Arc::from(Vec::<Arc<str>>::new()),
            client_addr: "".into(),
            upstream: "".into(),
            started_at: Micros(0),
            policy_version: "".into(),
        }))
    }

    fn id(r: &Record) -> Option<u64> {
        match r {
            Record::SessionStarted(s) => u64::try_from(s.id.0).ok(),
            _ => None,
        }
    }

    proptest! {
        /// Whatever the interleaving of pushes and pops, and however often the hot ring fills
        /// and the spill ring takes over, the writer sees exactly the accepted records in push
        /// order, a push is refused only when at least the configured capacity is in use, and
        /// no more than the capacity plus the hot ring is ever held.
        #[test]
        fn lane_is_one_fifo_of_its_capacity(
            hot in 1usize..6,
            capacity in 1usize..16,
            ops in proptest::collection::vec(any::<bool>(), 0..400),
        ) {
            let lane = Lane::with_hot(capacity, hot);
            let mut model = VecDeque::new();
            let mut next = 0u64;
            for push in ops {
                if push {
                    match lane.push(record(next)) {
                        Ok(()) => model.push_back(next),
                        Err(r) => {
                            prop_assert_eq!(id(&r), Some(next));
                            prop_assert!(model.len() >= capacity);
                        }
                    }
                    next += 1;
                } else {
                    prop_assert_eq!(lane.pop().as_ref().and_then(id), model.pop_front());
                }
                let most = if capacity > hot { capacity + hot } else { capacity };
                prop_assert!(model.len() <= most);
                prop_assert_eq!(lane.len(), model.len());
                prop_assert_eq!(lane.is_empty(), model.is_empty());
            }
        }
    }

    #[test]
    fn capacity_within_the_hot_ring_has_no_spill_ring() {
        let lane = Lane::with_hot(3, 8);
        assert!(lane.spill.is_none());
        for n in 0..3 {
            assert!(lane.push(record(n)).is_ok());
        }
        assert!(lane.push(record(3)).is_err());
    }
}
