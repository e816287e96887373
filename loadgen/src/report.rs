//! Turns a run's totals into the final summary (stdout) and the JSON record (`--json`).
//!
//! The JSON keeps the machine, the date and every parameter beside the results, so a figure can
//! be compared with another run without guessing how it was taken. Passwords and bearer tokens
//! never appear in it (see `cli::Cli::parameters`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::cli::Plan;
use crate::engine::{Tick, Totals, us_to_ms};

/// Quantiles written to the JSON for percentile curves, in addition to the named ones.
const CURVE_QUANTILES: [f64; 14] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0,
];

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub tool: &'static str,
    pub version: &'static str,
    pub date: String,
    pub machine: Machine,
    pub parameters: serde_json::Value,
    pub results: Results,
    pub timeline: Vec<Tick>,
    /// No request succeeded in the measured window: the process exits with status 1.
    #[serde(skip)]
    pub failed: bool,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct Results {
    /// Successful requests in the measured window.
    pub requests: u64,
    pub duration_s: f64,
    pub throughput_rps: f64,
    pub errors_total: u64,
    /// Failures by kind: `connect`, `auth`, `query <SQLSTATE>`, `timeout`, `http 4xx`, ...
    pub errors: BTreeMap<String, u64>,
    /// What latency is measured from: the schedule (open loop) or the actual send (closed loop).
    pub latency_from: &'static str,
    pub latency_us: Latency,
    /// `[quantile, µs]` pairs for plotting percentile curves.
    pub percentiles_us: Vec<(f64, u64)>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub min: u64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

pub fn summarize(
    plan: &Plan,
    parameters: &serde_json::Value,
    totals: &Totals,
    timeline: Vec<Tick>,
) -> Outcome {
    let h = &totals.measured.latency_us;
    let requests = h.len();
    let duration_s = totals.elapsed.as_secs_f64();
    #[expect(
        clippy::cast_precision_loss,
        reason = "request counts stay far below 2^53"
    )]
    let throughput_rps = if duration_s > 0.0 {
        requests as f64 / duration_s
    } else {
        0.0
    };
    let results = Results {
        requests,
        duration_s,
        throughput_rps,
        errors_total: totals.measured.error_count(),
        errors: totals
            .measured
            .errors
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect(),
        latency_from: if plan.rate.is_some() {
            "intended send time (open loop, coordinated-omission corrected)"
        } else {
            "actual send time (closed loop)"
        },
        latency_us: Latency {
            min: h.min(),
            mean: h.mean(),
            stdev: h.stdev(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        },
        percentiles_us: CURVE_QUANTILES
            .iter()
            .map(|&q| (q, h.value_at_quantile(q)))
            .collect(),
    };
    Outcome {
        tool: "portcullis-loadgen",
        version: env!("CARGO_PKG_VERSION"),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        machine: machine(),
        parameters: parameters.clone(),
        failed: requests == 0,
        results,
        timeline,
    }
}

#[expect(clippy::print_stdout, reason = "the summary is the program's output")]
pub fn print_summary(o: &Outcome) {
    let r = &o.results;
    let l = &r.latency_us;
    println!("requests     {} in {:.2} s", r.requests, r.duration_s);
    println!("throughput   {:.1} req/s", r.throughput_rps);
    println!("latency      from {}", r.latency_from);
    for (name, us) in [
        ("p50", l.p50),
        ("p90", l.p90),
        ("p99", l.p99),
        ("p99.9", l.p99_9),
        ("max", l.max),
    ] {
        println!("  {name:<6} {:>12.3} ms", us_to_ms(us));
    }
    if r.errors.is_empty() {
        println!("errors       0");
    } else {
        println!("errors       {}", r.errors_total);
        for (kind, n) in &r.errors {
            println!("  {kind:<16} {n}");
        }
    }
    if o.failed {
        println!("no request succeeded");
    }
}

pub fn write_json(path: &Path, outcome: &Outcome) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(outcome).context("encoding the JSON results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing `{}`", path.display()))
}

fn machine() -> Machine {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Machine {
        hostname: read("/proc/sys/kernel/hostname"),
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        cpu_model,
        kernel: read("/proc/sys/kernel/osrelease"),
    }
}
