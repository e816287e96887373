//! The load engine: one task per connection, a closed- or open-loop schedule, and a reporter
//! that drains every task's counters once a second into progress lines, the HdrHistogram interval
//! log and the run totals.
//!
//! Open loop follows wrk2: connection `i` of `N` sends its `k`-th request at the fixed time
//! `start + i/R + k·N/R`, and latency is measured from that *intended* time, not from when the
//! request actually left. A stalled target therefore shows up as latency for every request that
//! should have been sent during the stall (coordinated-omission correction). Recording a single
//! sample and back-filling it (HdrHistogram's `record_correct`) is deliberately not used: it
//! guesses at the schedule instead of following one.
//!
//! The engine knows nothing about protocols: a [`Target`] connects and runs one request.

use std::future::Future;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::Plan;
use crate::stats::{ErrorKind, Interval, TaskStats, empty_histogram};

/// Pause after a failed connect in closed loop, so a down or misconfigured target is retried
/// a few times a second per connection instead of in a hot loop.
const CONNECT_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How often progress is printed and an interval histogram is logged.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A failed request and whether the connection it used can carry another one.
#[derive(Debug)]
pub struct RequestError {
    pub kind: ErrorKind,
    pub connection_lost: bool,
}

/// A protocol workload: how to open a connection and run one request on it.
pub trait Target: Send + Sync + 'static {
    type Conn: Send + 'static;

    fn connect(&self) -> impl Future<Output = Result<Self::Conn, ErrorKind>> + Send;

    fn request(
        &self,
        conn: &mut Self::Conn,
        rng: &mut fastrand::Rng,
    ) -> impl Future<Output = Result<(), RequestError>> + Send;
}

/// Per-second figures kept for the JSON timeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tick {
    /// Seconds since the start of the run (warm-up included).
    pub t_s: f64,
    pub warmup: bool,
    pub requests: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
}

/// What the measured part of the run produced.
#[derive(Debug)]
pub struct Totals {
    pub measured: Interval,
    /// From the end of warm-up to the last request's completion.
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Schedule {
    Closed,
    /// Connection's own first send offset and period, in nanoseconds.
    Open {
        offset_ns: u128,
        period_ns: u128,
    },
}

pub async fn run<T: Target>(
    plan: Plan,
    target: Arc<T>,
    hdr_log: Option<&Path>,
) -> anyhow::Result<(Totals, Vec<Tick>)> {
    let empty = empty_histogram().context("creating latency histograms")?;
    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let mut tasks = JoinSet::new();
    let mut all_stats = Vec::with_capacity(plan.connections);
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel::<()>(plan.connections);
    let mut slots = Vec::with_capacity(plan.connections);
    for idx in 0..plan.connections {
        let slot = Arc::new(Semaphore::new(0));
        slots.push(Arc::clone(&slot));
        let stats = Arc::new(Mutex::new(TaskStats::new(&empty)));
        all_stats.push(Arc::clone(&stats));
        let schedule = schedule_for(&plan, idx)?;
        tasks.spawn(connection_task(
            Arc::clone(&target),
            stats,
            schedule,
            plan.clone(),
            start_rx.clone(),
            connected_tx.clone(),
            slot,
        ));
    }
    drop(connected_tx);
    // Connections are opened before the clock starts so that set-up cost is not billed to the
    // first requests; a connection that failed to open reports in too and retries in the run.
    for _ in 0..plan.connections {
        if connected_rx.recv().await.is_none() {
            break;
        }
    }
    let start = Instant::now();
    let wall_start = SystemTime::now();
    let measure_start = start + plan.warmup;
    let end = measure_start + plan.duration;
    start_tx.send_replace(Some(start));
    let pacer = match plan.rate {
        Some(rate) => {
            let step = Duration::try_from_secs_f64(1.0 / rate)
                .with_context(|| format!("`--rate {rate}` is out of range"))?;
            let (from, to) = (start.into_std(), end.into_std());
            Some(std::thread::spawn(move || pace(from, to, step, &slots)))
        }
        None => None,
    };

    let mut log_file = match hdr_log {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("creating `{}`", path.display()))?,
        )),
        None => None,
    };
    let mut serializer = V2DeflateSerializer::new();
    let mut log = match log_file.as_mut() {
        Some(file) => Some(
            IntervalLogWriterBuilder::new()
                .add_comment("[Logged with portcullis-loadgen]")
                .add_comment("[Histogram log format version 1.3]")
                .add_comment("[latency values in microseconds]")
                .with_start_time(wall_start + plan.warmup)
                .with_base_time(wall_start + plan.warmup)
                .with_max_value_divisor(1000.0)
                .begin_log_with(file, &mut serializer)
                .context("writing the HdrHistogram log header")?,
        ),
        None => None,
    };

    let mut totals = Interval::new(&empty);
    let mut warm = Interval::new(&empty);
    let mut meas = Interval::new(&empty);
    let mut ticks = Vec::new();
    let mut interval_start = start;
    let mut next_tick = start + REPORT_EVERY;
    let mut finished = false;
    while !finished {
        if next_tick < end {
            tokio::time::sleep_until(next_tick).await;
        } else {
            // Stop issuing at `end`, then let in-flight requests finish or time out.
            tokio::time::sleep_until(end).await;
            let deadline = Instant::now() + plan.timeout + Duration::from_secs(1);
            while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
            tasks.abort_all();
            finished = true;
        }
        let now = Instant::now();
        for stats in &all_stats {
            let mut s = stats.lock().unwrap_or_else(PoisonError::into_inner);
            warm.absorb(&s.warmup);
            meas.absorb(&s.measured);
            s.warmup.reset();
            s.measured.reset();
        }
        // An interval that began before the end of warm-up is labelled warm-up as a whole.
        let in_warmup = interval_start < measure_start;
        let length = now.saturating_duration_since(interval_start);
        let tick = progress(now.duration_since(start), length, in_warmup, &warm, &meas);
        if let Some(log) = log.as_mut()
            && !meas.latency_us.is_empty()
        {
            let from = interval_start.saturating_duration_since(measure_start);
            let length = now.saturating_duration_since(interval_start.max(measure_start));
            log.write_histogram(&meas.latency_us, from, length, None)
                .map_err(|e| anyhow::anyhow!("writing the HdrHistogram log: {e}"))?;
        }
        totals.absorb(&meas);
        ticks.push(tick);
        warm.reset();
        meas.reset();
        interval_start = now;
        next_tick += REPORT_EVERY;
    }
    drop(log);
    if let Some(pacer) = pacer {
        let _ = pacer.join();
    }
    if let Some(mut file) = log_file {
        file.flush().context("flushing the HdrHistogram log")?;
    }
    // Throughput is over the planned window: requests still in flight at its end were sent
    // inside it and are counted, but waiting for them does not stretch the denominator.
    let elapsed = plan.duration;
    Ok((
        Totals {
            measured: totals,
            elapsed,
        },
        ticks,
    ))
}

/// Open loop's clock: releases send slot `j` (due at `start + j·step`) to connection `j mod N`,
/// which makes connection `i`'s `k`-th send due at `start + i/R + k·N/R`. It runs on its own
/// thread because the runtime's timers tick in whole milliseconds, which would make every send
/// up to a millisecond late and bill that lateness to the target; a thread sleep is accurate to
/// the kernel's timer slack (tens of µs). A connection still busy when its slot comes keeps the
/// permit and sends as soon as it is free: that is the late send the latency must include.
fn pace(
    start: std::time::Instant,
    end: std::time::Instant,
    step: Duration,
    slots: &[Arc<Semaphore>],
) {
    let mut due = start;
    'schedule: while due < end {
        for slot in slots {
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            slot.add_permits(1);
            due = match due.checked_add(step) {
                Some(next) if next < end => next,
                _ => break 'schedule,
            };
        }
    }
    // Slots not yet taken at the end are never sent: the run is over.
    for slot in slots {
        slot.close();
    }
}

fn schedule_for(plan: &Plan, idx: usize) -> anyhow::Result<Schedule> {
    let Some(rate) = plan.rate else {
        return Ok(Schedule::Closed);
    };
    let per_request = Duration::try_from_secs_f64(1.0 / rate)
        .with_context(|| format!("`--rate {rate}` is out of range"))?;
    let step = per_request.as_nanos();
    let conns = u128::try_from(plan.connections).unwrap_or(u128::MAX);
    let idx = u128::try_from(idx).unwrap_or(0);
    Ok(Schedule::Open {
        offset_ns: step.saturating_mul(idx),
        period_ns: step.saturating_mul(conns).max(1),
    })
}

/// Prints one progress line to stderr and returns the same figures for the timeline.
fn progress(
    since_start: Duration,
    length: Duration,
    in_warmup: bool,
    warm: &Interval,
    meas: &Interval,
) -> Tick {
    let mut shown = Interval::new(&meas.latency_us);
    shown.reset();
    shown.absorb(warm);
    shown.absorb(meas);
    let h = &shown.latency_us;
    let tick = Tick {
        t_s: since_start.as_secs_f64(),
        warmup: in_warmup,
        requests: h.len(),
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        errors: shown.error_count(),
    };
    let errors = if shown.errors.is_empty() {
        "0".to_owned()
    } else {
        shown
            .errors
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let per_second = tick.requests as f64 / length.as_secs_f64().max(1e-3);
    eprintln!(
        "{:>6.1}s{} {:>10.1} req/s  p50 {:>9.3} ms  p99 {:>9.3} ms  errors {errors}",
        tick.t_s,
        if in_warmup { " warmup" } else { "       " },
        per_second,
        us_to_ms(tick.p50_us),
        us_to_ms(tick.p99_us),
    );
    tick
}

#[expect(
    clippy::cast_precision_loss,
    reason = "display only; µs values fit f64 exactly below 2^53"
)]
pub fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn connection_task<T: Target>(
    target: Arc<T>,
    stats: Arc<Mutex<TaskStats>>,
    schedule: Schedule,
    plan: Plan,
    mut start_rx: watch::Receiver<Option<Instant>>,
    connected: tokio::sync::mpsc::Sender<()>,
    slot: Arc<Semaphore>,
) {
    let record_error = |measured: bool, kind: ErrorKind| {
        let mut s = stats.lock().unwrap_or_else(PoisonError::into_inner);
        if measured {
            s.measured.error(kind)
        } else {
            s.warmup.error(kind)
        }
    };
    let mut conn = match tokio::time::timeout(plan.timeout, target.connect()).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(kind)) => {
            record_error(true, kind);
            None
        }
        Err(_) => {
            record_error(true, ErrorKind::Timeout);
            None
        }
    };
    let _ = connected.send(()).await;
    drop(connected);
    let start = match start_rx.wait_for(Option::is_some).await {
        Ok(v) => match *v {
            Some(s) => s,
            None => return,
        },
        Err(_) => return,
    };
    let measure_start = start + plan.warmup;
    let end = measure_start + plan.duration;
    let mut rng = fastrand::Rng::new();
    let mut k: u128 = 0;
    loop {
        let intended = match schedule {
            Schedule::Closed => Instant::now(),
            Schedule::Open {
                offset_ns,
                period_ns,
            } => {
                let at = offset_ns.saturating_add(period_ns.saturating_mul(k));
                let Some(at) = u64::try_from(at)
                    .ok()
                    .and_then(|ns| start.checked_add(Duration::from_nanos(ns)))
                else {
                    break;
                };
                at
            }
        };
        if intended >= end {
            break;
        }
        k = k.saturating_add(1);
        if let Schedule::Open { .. } = schedule {
            match slot.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
        }
        let measured = intended >= measure_start;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout(plan.timeout, target.connect()).await {
                Ok(Ok(c)) => conn.insert(c),
                Ok(Err(kind)) => {
                    record_error(measured, kind);
                    if matches!(schedule, Schedule::Closed) {
                        tokio::time::sleep_until((Instant::now() + CONNECT_RETRY_BACKOFF).min(end))
                            .await;
                    }
                    continue;
                }
                Err(_) => {
                    record_error(measured, ErrorKind::Timeout);
                    continue;
                }
            },
        };
        // In closed loop the clock starts once the connection is ready, so a reconnect is not
        // billed to the request; in open loop it is, because the schedule did not wait for it.
        let intended = match schedule {
            Schedule::Closed => Instant::now(),
            Schedule::Open { .. } => intended,
        };
        let result = tokio::time::timeout(plan.timeout, target.request(c, &mut rng)).await;
        let done = Instant::now();
        match result {
            Ok(Ok(())) => {
                let mut s = stats.lock().unwrap_or_else(PoisonError::into_inner);
                let i = if measured {
                    &mut s.measured
                } else {
                    &mut s.warmup
                };
                i.record(done.saturating_duration_since(intended));
            }
            Ok(Err(e)) => {
                record_error(measured, e.kind);
                if e.connection_lost {
                    conn = None;
                }
            }
            Err(_) => {
                record_error(measured, ErrorKind::Timeout);
                // The request may still be in flight; the connection's state is unknown.
                conn = None;
            }
        }
    }
}
