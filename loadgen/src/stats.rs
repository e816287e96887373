//! Latency histograms and error counts, per connection task and merged.
//!
//! Each connection task owns one [`TaskStats`] behind a mutex that only the once-a-second
//! reporter contends for, so recording stays a cheap uncontended lock. Latencies are recorded in
//! microseconds. This module does not decide what a latency is measured from: the engine does.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency the histograms track (one hour, in µs); larger values are clamped so a
/// stalled target shows up as a huge latency rather than a lost sample.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant figures kept by every histogram: 0.1% value resolution.
const SIGFIGS: u8 = 3;

/// Why a request failed, grouped the way an operator reads a run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// TCP connect (or TLS handshake) to the target failed.
    Connect,
    /// The target rejected our credentials (PostgreSQL SQLSTATE class 28).
    Auth,
    /// The statement failed with this SQLSTATE.
    Query(String),
    /// No answer within `--timeout`.
    Timeout,
    /// The HTTP response status was in this class (4 for 4xx, 5 for 5xx).
    HttpStatus(u16),
    /// The connection broke mid-request, or the target spoke something we could not parse.
    Protocol,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Auth => f.write_str("auth"),
            ErrorKind::Query(state) => write!(f, "query {state}"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::HttpStatus(class) => write!(f, "http {class}xx"),
            ErrorKind::Protocol => f.write_str("protocol"),
        }
    }
}

/// The empty histogram every other one is cloned from, so all share bounds and can be added.
pub fn empty_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIGS)
}

/// What one stretch of time produced: successful latencies and failures.
#[derive(Debug)]
pub struct Interval {
    pub latency_us: Histogram<u64>,
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Interval {
    pub fn new(empty: &Histogram<u64>) -> Self {
        Interval {
            latency_us: empty.clone(),
            errors: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_LATENCY_US);
        self.latency_us
            .saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    pub fn error(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds `other` into `self`. Both histograms share bounds, so adding cannot fail; a failure
    /// would mean a bug here, and dropping one interval's samples is the least harmful outcome.
    pub fn absorb(&mut self, other: &Interval) {
        let _ = self.latency_us.add(&other.latency_us);
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_insert(0) += n;
        }
    }

    pub fn reset(&mut self) {
        self.latency_us.reset();
        self.errors.clear();
    }
}

/// One connection task's counters since the reporter last drained them.
#[derive(Debug)]
pub struct TaskStats {
    /// Requests scheduled during warm-up: shown live, excluded from totals.
    pub warmup: Interval,
    /// Requests scheduled after warm-up.
    pub measured: Interval,
}

impl TaskStats {
    pub fn new(empty: &Histogram<u64>) -> Self {
        TaskStats {
            warmup: Interval::new(empty),
            measured: Interval::new(empty),
        }
    }
}
