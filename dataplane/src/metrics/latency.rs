//! Per-core latency histograms (HdrHistogram, nanoseconds) for capacity planning: session
//! setup, the gateway's own time per command ("added latency"), the upstream's time per
//! command, policy decision time and masking time.
//!
//! Each (worker, connection) pair owns one [`LatencySet`] behind a `Mutex` that only its own
//! worker and the admin scraper ever touch. Rejected alternative: worker-local histograms
//! shipped to the control plane as periodic snapshots. That avoids the lock but makes every
//! scrape as stale as the snapshot period and needs a timer task per worker; the mutex here is
//! uncontended except during a scrape (one compare-and-swap per command, and the scraper holds
//! it only to copy the counts), so it costs less than the `Instant::now()` calls around it.
//!
//! What "added latency" measures: for one client round trip (the client's messages up to the
//! server's ReadyForQuery) the driver sums the time it spends running its batch loop (decoding,
//! deciding, masking, recording, writing to both sockets), never the time it waits on a socket.
//! Upstream latency is the rest of the round trip: from the first forwarded byte to the
//! ReadyForQuery being handled, minus the gateway's own time. A pipelined batch (several
//! statements sent before the first answer) is one sample, closed by its first ReadyForQuery:
//! the histograms count client round trips, not statements. Wake-up latency of the runtime
//! (an io_uring completion being noticed) is in neither; the end-to-end harness measures it
//! from outside (gateway latency minus direct latency).
//!
//! This module does not serve HTTP: [`super::Metrics::render`] appends the Prometheus form and
//! the admin API calls [`super::Metrics::latency`] for tables and interval logs.

use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::ConnCounters;

/// Longest duration recorded as itself; longer ones count as this. Bounds the memory of an
/// auto-resizing histogram (about 220 KiB at 3 significant digits) whatever a peer does.
pub const MAX_RECORDED: Duration = Duration::from_secs(60);

/// Significant decimal digits kept by every histogram (0.1 % value resolution).
const SIGNIFICANT_DIGITS: u8 = 3;

/// Which latency a histogram holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Accept to the client's ReadyForQuery: startup, token check, upstream connect and login.
    SessionSetup,
    /// The gateway's own time in one client round trip.
    Added,
    /// The upstream's share of one client round trip.
    Upstream,
    /// Policy decisions of one round trip (round trips without a decision are not counted).
    Policy,
    /// Masking of one round trip's rows (round trips with nothing to mask are not counted).
    Masking,
}

impl Latency {
    pub const ALL: [Latency; 5] = [
        Latency::SessionSetup,
        Latency::Added,
        Latency::Upstream,
        Latency::Policy,
        Latency::Masking,
    ];

    /// The name used in JSON, interval log tags and Prometheus series.
    pub fn name(self) -> &'static str {
        match self {
            Latency::SessionSetup => "session_setup",
            Latency::Added => "added",
            Latency::Upstream => "upstream",
            Latency::Policy => "policy",
            Latency::Masking => "masking",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Latency::SessionSetup => {
                "Session setup: accept to ready (startup, token check, upstream login)."
            }
            Latency::Added => "Time the gateway itself spends per command (outside the upstream).",
            Latency::Upstream => "Time the upstream spends per command.",
            Latency::Policy => "Policy decision time per command.",
            Latency::Masking => "Masking time per command that returned rows to mask.",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One histogram per [`Latency`], values in nanoseconds.
#[derive(Debug, Clone)]
pub struct LatencySet {
    hists: Vec<Histogram<u64>>,
}

impl LatencySet {
    /// Empty histograms that grow as values arrive (up to [`MAX_RECORDED`]).
    pub fn new() -> Option<LatencySet> {
        let hists = Latency::ALL
            .iter()
            .map(|_| Histogram::new(SIGNIFICANT_DIGITS).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(LatencySet { hists })
    }

    pub fn get(&self, which: Latency) -> Option<&Histogram<u64>> {
        self.hists.get(which.index())
    }

    fn record(&mut self, which: Latency, d: Duration) {
        if let Some(h) = self.hists.get_mut(which.index()) {
            let ns = u64::try_from(d.min(MAX_RECORDED).as_nanos()).unwrap_or(u64::MAX);
            // Auto-resize fails only past the u64 index space, far above `MAX_RECORDED`.
            if h.record(ns.max(1)).is_err() {
                h.saturating_record(ns);
            }
        }
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &LatencySet) {
        for (mine, theirs) in self.hists.iter_mut().zip(&other.hists) {
            // Both auto-resize, so addition cannot run out of range.
            let _ = mine.add(theirs);
        }
    }

    /// `self - earlier`: what was recorded since `earlier` was copied from the same counts.
    pub fn since(&self, earlier: &LatencySet) -> LatencySet {
        let mut out = self.clone();
        for (h, e) in out.hists.iter_mut().zip(&earlier.hists) {
            // Counts only grow, so `earlier` is always contained in `self`; on a mismatch
            // (never expected) the interval keeps the cumulative counts rather than failing.
            let _ = h.subtract(e);
        }
        out
    }
}

/// Policy and masking time accumulated by the inspector for the current round trip; the
/// driver takes it when the round trip ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes {
    policy: Duration,
    decisions: u32,
    masking: Duration,
    masked_rows: u32,
}

impl StageTimes {
    #[inline]
    pub fn add_policy(&mut self, since: Instant) {
        self.policy += since.elapsed();
        self.decisions = self.decisions.saturating_add(1);
    }

    #[inline]
    pub fn add_masking(&mut self, since: Instant) {
        self.masking += since.elapsed();
        self.masked_rows = self.masked_rows.saturating_add(1);
    }
}

/// Splits one session's round trips into gateway time and upstream time. Lives in the
/// session's driver; records into the connection's histograms when a round trip ends.
#[derive(Debug, Default)]
pub struct CommandClock {
    /// When the current round trip's first batch began; `None` between round trips.
    since: Option<Instant>,
    /// Gateway time so far in the current round trip.
    busy: Duration,
}

impl CommandClock {
    /// Called once per pass of the driver's batch loop, after both directions were written.
    /// `began`: when the pass started; `forwarded`: it sent client bytes upstream;
    /// `answered`: it handled at least one ReadyForQuery.
    pub fn pass(
        &mut self,
        began: Instant,
        forwarded: bool,
        answered: bool,
        stages: &mut StageTimes,
        counters: &ConnCounters,
    ) {
        if self.since.is_none() && forwarded {
            self.since = Some(began);
            self.busy = Duration::ZERO;
        }
        let Some(since) = self.since else {
            // Decided but not forwarded: refused statements, answered by the gateway alone.
            // Their decision time is counted now rather than folded into the next round trip.
            if stages.decisions > 0 {
                let st = std::mem::take(stages);
                counters.with_latency(|set| set.record(Latency::Policy, st.policy));
            }
            return;
        };
        let now = Instant::now();
        self.busy += now.saturating_duration_since(began);
        if !answered {
            return;
        }
        self.since = None;
        let upstream = now
            .saturating_duration_since(since)
            .saturating_sub(self.busy);
        let st = std::mem::take(stages);
        counters.with_latency(|set| {
            set.record(Latency::Added, self.busy);
            set.record(Latency::Upstream, upstream);
            if st.decisions > 0 {
                set.record(Latency::Policy, st.policy);
            }
            if st.masked_rows > 0 {
                set.record(Latency::Masking, st.masking);
            }
        });
    }
}

impl ConnCounters {
    /// Records one completed session setup.
    pub fn record_setup(&self, since: Instant) {
        self.with_latency(|set| set.record(Latency::SessionSetup, since.elapsed()));
    }

    fn with_latency(&self, f: impl FnOnce(&mut LatencySet)) {
        let mut guard = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            *guard = LatencySet::new();
        }
        if let Some(set) = guard.as_mut() {
            f(set);
        }
    }

    /// A copy of this connection's histograms (`None` before the first sample).
    pub fn latency_snapshot(&self) -> Option<LatencySet> {
        self.latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The per-connection histogram slot inside [`ConnCounters`].
pub type LatencySlot = Mutex<Option<LatencySet>>;

/// Bucket bounds (seconds) of the Prometheus histograms: 5 µs to 10 s.
const PROM_BUCKETS: [f64; 19] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Appends `portcullis_<latency>_seconds` Prometheus histograms, one series per worker.
pub(super) fn render_prometheus(per_worker: &[Option<LatencySet>], out: &mut String) {
    for which in Latency::ALL {
        let name = format!("portcullis_{}_seconds", which.name());
        let _ = writeln!(
            out,
            "# HELP {name} {}\n# TYPE {name} histogram",
            which.help()
        );
        for (worker, set) in per_worker.iter().enumerate() {
            let h = set.as_ref().and_then(|s| s.get(which));
            for le in PROM_BUCKETS {
                // Nanosecond bound; `as` saturates and the bounds are small positive constants.
                let le_ns = (le * 1e9) as u64;
                let n = h.map_or(0, |h| h.count_between(0, le_ns));
                let _ = writeln!(out, "{name}_bucket{{worker=\"{worker}\",le=\"{le}\"}} {n}");
            }
            let count = h.map_or(0, Histogram::len);
            let sum = h.map_or(0.0, |h| h.mean() * h.len() as f64 / 1e9);
            let _ = writeln!(
                out,
                "{name}_bucket{{worker=\"{worker}\",le=\"+Inf\"}} {count}\n{name}_sum{{worker=\"{worker}\"}} {sum}\n{name}_count{{worker=\"{worker}\"}} {count}"
            );
        }
    }
}

/// Quantiles reported in percentile tables.
pub const TABLE_QUANTILES: [(&str, f64); 7] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
    ("p99.999", 0.99999),
    ("p100", 1.0),
];

/// One histogram as JSON: count, mean, min, max and the [`TABLE_QUANTILES`], in microseconds.
pub fn percentile_table(h: &Histogram<u64>) -> serde_json::Value {
    let us = |ns: u64| ns as f64 / 1000.0;
    let mut pct = serde_json::Map::new();
    for (label, q) in TABLE_QUANTILES {
        pct.insert(label.into(), serde_json::json!(us(h.value_at_quantile(q))));
    }
    serde_json::json!({
        "count": h.len(),
        "mean_us": h.mean() / 1000.0,
        "min_us": us(h.min()),
        "max_us": us(h.max()),
        "percentiles_us": pct,
    })
}

/// One interval of an HdrHistogram interval log: what was recorded from `start` for `length`.
#[derive(Debug, Clone)]
pub struct Interval {
    pub start: std::time::SystemTime,
    pub length: Duration,
    pub set: LatencySet,
}

/// Renders `intervals` as an HdrHistogram V2 interval log (values in nanoseconds, the max
/// column in milliseconds), one tagged line per latency kind and interval, readable by
/// HistogramLogAnalyzer and `hdrhistogram`'s `IntervalLogIterator`.
pub fn interval_log(base: std::time::SystemTime, intervals: &[Interval]) -> Result<String, String> {
    use hdrhistogram::serialization::V2DeflateSerializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("[Logged with portcullis]")
        .add_comment("[Histogram log format version 1.3]")
        .add_comment("[latency values in nanoseconds; max column in milliseconds]")
        .with_start_time(base)
        .with_base_time(base)
        .with_max_value_divisor(1e6)
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| format!("cannot write the log header: {e}"))?;
    for interval in intervals {
        let from = interval.start.duration_since(base).unwrap_or_default();
        for which in Latency::ALL {
            let Some(h) = interval.set.get(which).filter(|h| !h.is_empty()) else {
                continue;
            };
            log.write_histogram(h, from, interval.length, Tag::new(which.name()))
                .map_err(|e| format!("cannot write an interval: {e}"))?;
        }
    }
    drop(log);
    String::from_utf8(out).map_err(|e| format!("interval log is not utf-8: {e}"))
}

/// The lines of one interval as [`interval_log`] writes them (no header), relative to
/// `base`: what a long-lived history keeps instead of the histograms.
pub fn interval_lines(base: std::time::SystemTime, interval: &Interval) -> Result<String, String> {
    let log = interval_log(base, std::slice::from_ref(interval))?;
    Ok(log
        .split_inclusive('\n')
        .filter(|l| is_interval_line(l))
        .collect())
}

/// Whether a line of an interval log is a histogram line (not a comment or the legend).
/// Every line this module writes is tagged.
pub fn is_interval_line(line: &str) -> bool {
    line.starts_with("Tag=")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn count(m: &Metrics, which: Latency) -> u64 {
        m.latency()
            .iter()
            .flatten()
            .map(|s| s.get(which).map_or(0, Histogram::len))
            .sum()
    }

    #[test]
    fn a_round_trip_splits_into_gateway_and_upstream_time() {
        let m = Metrics::new(2, vec!["db".into()]);
        let counters = &m.workers[1].connections[0];
        let mut clock = CommandClock::default();
        let mut stages = StageTimes::default();
        // Pass 1 forwards a statement (with one decision); the upstream then takes 30 ms;
        // pass 2 handles its answer.
        let began = Instant::now();
        stages.add_policy(began);
        clock.pass(began, true, false, &mut stages, counters);
        std::thread::sleep(Duration::from_millis(30));
        let began = Instant::now();
        stages.add_masking(began);
        clock.pass(began, false, true, &mut stages, counters);
        assert_eq!(count(&m, Latency::Added), 1);
        assert_eq!(count(&m, Latency::Upstream), 1);
        assert_eq!(count(&m, Latency::Policy), 1);
        assert_eq!(count(&m, Latency::Masking), 1);
        let set = m.latency()[1].clone().unwrap();
        let upstream = set.get(Latency::Upstream).unwrap().max();
        let added = set.get(Latency::Added).unwrap().max();
        assert!(
            upstream >= 30_000_000,
            "upstream {upstream} ns < the 30 ms wait"
        );
        assert!(added < 30_000_000, "added {added} ns includes the wait");
        assert!(m.latency()[0].is_none(), "worker 0 recorded nothing");

        // A refused statement: decided, never forwarded; only its decision is counted.
        let began = Instant::now();
        stages.add_policy(began);
        clock.pass(began, false, false, &mut stages, counters);
        assert_eq!(count(&m, Latency::Policy), 2);
        assert_eq!(count(&m, Latency::Added), 1);

        counters.record_setup(Instant::now());
        let text = m.render();
        assert!(
            text.contains("portcullis_added_seconds_count{worker=\"1\"} 1"),
            "{text}"
        );
        assert!(text.contains("portcullis_session_setup_seconds_count{worker=\"1\"} 1"));
        assert!(text.contains("portcullis_upstream_seconds_bucket{worker=\"1\",le=\"0.025\"} 0"));
        assert!(text.contains("portcullis_upstream_seconds_bucket{worker=\"1\",le=\"+Inf\"} 1"));
    }

    #[test]
    fn interval_log_reads_back_with_its_tags() {
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        let mut set = LatencySet::new().unwrap();
        for us in [10, 20, 30] {
            set.record(Latency::Added, Duration::from_micros(us));
        }
        let earlier = set.clone();
        set.record(Latency::Added, Duration::from_micros(40));
        set.record(Latency::Policy, Duration::from_micros(2));
        let since = set.since(&earlier);
        assert_eq!(since.get(Latency::Added).unwrap().len(), 1);
        let base = std::time::SystemTime::now();
        let log = interval_log(
            base,
            &[Interval {
                start: base,
                length: Duration::from_secs(10),
                set: since,
            }],
        )
        .unwrap();
        let tags: Vec<String> = IntervalLogIterator::new(log.as_bytes())
            .filter_map(|e| match e {
                Ok(LogEntry::Interval(h)) => h.tag().map(|t| t.as_str().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(tags, ["added", "policy"]);
    }

    #[test]
    fn stored_interval_lines_are_the_log_without_its_header() {
        let mut set = LatencySet::new().unwrap();
        set.record(Latency::Added, Duration::from_micros(15));
        set.record(Latency::Upstream, Duration::from_millis(3));
        let base = std::time::SystemTime::now();
        let interval = Interval {
            start: base,
            length: Duration::from_secs(10),
            set,
        };
        let log = interval_log(base, std::slice::from_ref(&interval)).unwrap();
        let lines = interval_lines(base, &interval).unwrap();
        assert_eq!(lines.lines().count(), 2, "{lines}");
        assert!(lines.lines().all(is_interval_line), "{lines}");
        assert!(log.ends_with(&lines), "{log}");
        assert!(!log.lines().take(3).any(is_interval_line), "{log}");
    }
}
