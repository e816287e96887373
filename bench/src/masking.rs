//! `bench masking`: single-thread (= per core) masking throughput in GB/s over realistic
//! result rows, and the detector accuracy table on the labeled corpus.
//!
//! Cases: (a) rows with ~5% of cells holding PII or secrets, every built-in detector on;
//! (b) the same shape of rows with no PII; (c) literal-anchored secret detectors only
//! (`secrets` group) over the rows of (a). Each case is measured two ways: per cell through
//! `mask_value` (how the PostgreSQL/MySQL modules call it) and as one byte stream through
//! `StreamMasker` (COPY data, terminal output). Repetitions are interleaved across cases and
//! the median is reported, because the machine is shared and noisy.

use std::hint::black_box;
use std::time::{Duration, Instant};

use policy_engine::mask::corpus::{self, Cell};
use policy_engine::mask::{MaskStats, SessionMasker, ValueKind};
use serde_json::json;

use crate::SuiteArgs;

struct Case {
    name: &'static str,
    session: SessionMasker,
    cells: Vec<Vec<u8>>,
    stream: Vec<u8>,
    bytes: usize,
    per_cell: Vec<f64>,
    per_stream: Vec<f64>,
    masked_per_pass: u64,
}

fn make_case(name: &'static str, session: SessionMasker, rows: &[Vec<Cell>]) -> Case {
    let cells = corpus::cell_values(rows);
    let stream = corpus::tsv_stream(rows);
    let bytes = cells.iter().map(Vec::len).sum();
    Case {
        name,
        session,
        cells,
        stream,
        bytes,
        per_cell: vec![],
        per_stream: vec![],
        masked_per_pass: 0,
    }
}

/// Runs `pass` until `budget` elapses; returns bytes per second.
fn rate(bytes: usize, budget: Duration, mut pass: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget || n == 0 {
        pass();
        n += 1;
    }
    (bytes as f64 * n as f64) / start.elapsed().as_secs_f64()
}

fn cell_pass(c: &Case, out: &mut Vec<u8>, stats: &mut MaskStats) {
    let col = c.session.column("note");
    for v in &c.cells {
        out.clear();
        let outcome = c.session.mask_value(&col, ValueKind::Text, v, out, stats);
        let _ = black_box(outcome);
    }
}

fn stream_pass(c: &Case, out: &mut Vec<u8>, stats: &mut MaskStats) {
    let mut m = c.session.stream();
    out.clear();
    // Frames of 16 KiB, cut wherever they fall (as a socket read would).
    for chunk in c.stream.chunks(16 * 1024) {
        m.push(chunk, out, stats);
    }
    m.finish(out, stats);
    black_box(&out);
}

/// The median of `v` (the upper one of an even count); 0 when empty.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(args: &SuiteArgs) -> anyhow::Result<()> {
    let (rows_n, reps, budget) = if args.quick {
        (2000, 3, Duration::from_millis(150))
    } else {
        (20_000, 7, Duration::from_millis(700))
    };
    let all = corpus::throughput_engine()?;
    let with_pii = corpus::rows(1, rows_n, 8, 5);
    let clean = corpus::rows(2, rows_n, 8, 0);
    let mut cases = [
        make_case("a_pii_5pct_all_detectors", all.session(&[0]), &with_pii),
        make_case("b_no_pii_all_detectors", all.session(&[0]), &clean),
        make_case("c_literal_secrets_only", all.session(&[1]), &with_pii),
    ];
    let mut out = Vec::with_capacity(64 * 1024 * 1024);
    let mut stats = MaskStats::default();
    for c in &mut cases {
        // Warm up, and count what one pass masks (so the figures can be sanity-checked).
        stats.clear();
        cell_pass(c, &mut out, &mut stats);
        c.masked_per_pass = stats.total();
    }
    for _ in 0..reps {
        for c in &mut cases {
            let r = rate(c.bytes, budget, || cell_pass(c, &mut out, &mut stats));
            c.per_cell.push(r);
            let r = rate(c.stream.len(), budget, || {
                stream_pass(c, &mut out, &mut stats)
            });
            c.per_stream.push(r);
        }
    }

    let acc_session = all.session(&[0]);
    let acc = corpus::accuracy(&acc_session, &corpus::rows(42, 4000, 8, 30));
    #[expect(
        clippy::print_stderr,
        reason = "the table is for the human running the bench"
    )]
    {
        eprintln!("{}", corpus::table(&acc));
    }

    let gb = 1e9;
    let report = json!({
        "suite": "masking",
        "machine": machine(),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "threads": 1,
        "repetitions": reps,
        "budget_ms_per_repetition": budget.as_millis(),
        "goals_gb_per_s": {"a": 1.0, "b": 3.0, "c": 3.0},
        "cases": cases.iter().map(|c| json!({
            "name": c.name,
            "input_bytes": c.bytes,
            "cells": c.cells.len(),
            "mean_cell_bytes": c.bytes as f64 / c.cells.len().max(1) as f64,
            "values_masked_per_pass": c.masked_per_pass,
            "per_cell_gb_per_s_median": median(&c.per_cell) / gb,
            "per_cell_gb_per_s_runs": c.per_cell.iter().map(|r| r / gb).collect::<Vec<_>>(),
            "stream_gb_per_s_median": median(&c.per_stream) / gb,
            "stream_gb_per_s_runs": c.per_stream.iter().map(|r| r / gb).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "allocations_when_nothing_matches": {
            "value": null,
            "note": "not counted in this binary (it forbids unsafe code and uses mimalloc as its global allocator); policy-engine/tests/mask_alloc.rs counts with a wrapping allocator and asserts 0 for mask_value and StreamMasker::push on clean rows",
        },
        "accuracy": acc.iter().map(|a| json!({
            "detector": a.detector,
            "true_pos": a.true_pos,
            "false_pos": a.false_pos,
            "false_neg": a.false_neg,
            "precision": a.precision(),
            "recall": a.recall(),
        })).collect::<Vec<_>>(),
    });
    crate::write_report(args, &report)
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown")
        .to_owned();
    json!({
        "cpu": model,
        "available_parallelism": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}
