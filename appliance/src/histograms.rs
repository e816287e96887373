//! Capacity-planning endpoints on the admin listener, built on the data plane's per-core
//! latency histograms (`dataplane::metrics::latency`):
//!
//! - `GET /api/histograms`: a percentile table per histogram, merged over the cores and per
//!   core, in microseconds;
//! - `GET /api/histograms/log`: an HdrHistogram interval log of the last hour, one interval
//!   every [`SAMPLE_EVERY`] plus the interval in progress, for HistogramLogAnalyzer or any
//!   HdrHistogram log reader.
//!
//! A sampler thread (control plane, never a worker) copies the histograms every
//! [`SAMPLE_EVERY`] and keeps the differences; the workers never see it. The Prometheus form
//! is part of `/metrics` (the data plane renders it).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use dataplane::metrics::latency::{self, Interval};
use dataplane::metrics::{Latency, LatencySet, Metrics};

use crate::admin::{Response, Router};

/// Length of one interval of the downloadable log.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Intervals kept: one hour at [`SAMPLE_EVERY`]. Bounds the sampler's memory.
pub const MAX_INTERVALS: usize = 360;

/// What the sampler keeps: the last cumulative copy and the intervals since, each already
/// encoded as its log lines (compressed, a few hundred bytes per histogram). Keeping the
/// histograms themselves would cost up to a few hundred KiB each once they have seen slow
/// values: hundreds of MiB over an hour of intervals.
#[derive(Debug)]
struct History {
    started: SystemTime,
    last_at: SystemTime,
    last: Option<LatencySet>,
    intervals: VecDeque<String>,
}

impl History {
    /// Closes the interval ending now; returns it without storing when `keep` is false (the
    /// download's interval in progress).
    fn cut(&mut self, now_set: Option<LatencySet>, keep: bool) -> Option<Interval> {
        let now = SystemTime::now();
        let set = match (&now_set, &self.last) {
            (Some(n), Some(l)) => n.since(l),
            (Some(n), None) => n.clone(),
            (None, _) => return None,
        };
        let interval = Interval {
            start: self.last_at,
            length: now.duration_since(self.last_at).unwrap_or_default(),
            set,
        };
        if keep {
            self.last = now_set;
            self.last_at = now;
            if self.intervals.len() == MAX_INTERVALS {
                self.intervals.pop_front();
            }
            match latency::interval_lines(self.started, &interval) {
                Ok(lines) => self.intervals.push_back(lines),
                Err(e) => tracing::warn!(error = %e, "cannot encode a histogram interval"),
            }
        }
        Some(interval)
    }
}

/// All cores merged.
fn merged(metrics: &Metrics) -> Option<LatencySet> {
    metrics.latency().into_iter().flatten().reduce(|mut a, b| {
        a.merge(&b);
        a
    })
}

/// Adds the histogram routes to `router` and starts their sampler thread.
pub fn routes(router: Router, metrics: Arc<Metrics>) -> Router {
    let now = SystemTime::now();
    let history = Arc::new(Mutex::new(History {
        started: now,
        last_at: now,
        last: None,
        intervals: VecDeque::new(),
    }));
    let (sampled, sampler_history) = (Arc::clone(&metrics), Arc::clone(&history));
    let spawned = std::thread::Builder::new()
        .name("portcullis-histograms".into())
        .spawn(move || {
            loop {
                std::thread::sleep(SAMPLE_EVERY);
                let set = merged(&sampled);
                let mut h = sampler_history
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                h.cut(set, true);
            }
        });
    if let Err(e) = spawned {
        // The tables still work; only the log has no closed intervals.
        tracing::warn!(error = %e, "cannot start the histogram sampler");
    }
    let table_metrics = Arc::clone(&metrics);
    router
        .route("GET", "/api/histograms", move |_| {
            Response::json(200, &tables(&table_metrics))
        })
        .route("GET", "/api/histograms/log", move |_| {
            let set = merged(&metrics);
            let mut h = history.lock().unwrap_or_else(PoisonError::into_inner);
            let closed: String = h.intervals.iter().map(String::as_str).collect();
            let current: Vec<Interval> = h.cut(set, false).into_iter().collect();
            let started = h.started;
            drop(h);
            match latency::interval_log(started, &current) {
                Ok(text) => Response::text(200, splice_log(&text, &closed)),
                Err(e) => Response::json(500, &serde_json::json!({ "error": e })),
            }
        })
}

/// Puts the stored interval lines `closed` between the log's header and its lines for the
/// interval in progress.
fn splice_log(log: &str, closed: &str) -> String {
    let mut out = String::with_capacity(log.len() + closed.len());
    let mut spliced = false;
    for line in log.split_inclusive('\n') {
        if !spliced && latency::is_interval_line(line) {
            out.push_str(closed);
            spliced = true;
        }
        out.push_str(line);
    }
    if !spliced {
        out.push_str(closed);
    }
    out
}

/// The `/api/histograms` document.
fn tables(metrics: &Metrics) -> serde_json::Value {
    let per_core = metrics.latency();
    let all = merged(metrics);
    let mut hists = serde_json::Map::new();
    for which in Latency::ALL {
        let table = |set: Option<&LatencySet>| {
            set.and_then(|s| s.get(which))
                .map_or(serde_json::json!({ "count": 0 }), latency::percentile_table)
        };
        hists.insert(
            which.name().into(),
            serde_json::json!({
                "merged": table(all.as_ref()),
                "per_core": per_core.iter().map(|s| table(s.as_ref())).collect::<Vec<_>>(),
            }),
        );
    }
    serde_json::json!({
        "unit": "microseconds",
        "workers": per_core.len(),
        "histograms": hists,
    })
}
