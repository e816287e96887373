//! Masking throughput on one core, without the `bench` crate's heavy dependencies: the same
//! corpus rows and the same three cases as `bench masking` (a: ~5% PII, every built-in;
//! b: no PII; c: literal-anchored secrets only), per cell through `mask_value` and as one
//! stream through `StreamMasker` in 16 KiB frames.
//!
//! `cargo run --release -p policy-engine --example mask_throughput [-- REPS [BUDGET_MS]]`
//! prints medians of interleaved repetitions. `-- passes N` instead runs exactly N passes
//! of every case, or `passes N a cell` of one case and mode (for instruction counts under `valgrind --tool=callgrind`, which the load
//! on a shared machine does not disturb).

use std::hint::black_box;
use std::time::{Duration, Instant};

use policy_engine::mask::corpus::{self, Cell};
use policy_engine::mask::{MaskStats, SessionMasker, ValueKind};

struct Case {
    name: &'static str,
    session: SessionMasker,
    cells: Vec<Vec<u8>>,
    stream: Vec<u8>,
    bytes: usize,
    per_cell: Vec<f64>,
    per_stream: Vec<f64>,
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
    }
}

#[inline(never)] // a named frame for `callgrind --toggle-collect`
fn cell_pass(c: &Case, out: &mut Vec<u8>, stats: &mut MaskStats) {
    let col = c.session.column("note");
    for v in &c.cells {
        out.clear();
        let outcome = c.session.mask_value(&col, ValueKind::Text, v, out, stats);
        let _ = black_box(outcome);
    }
}

#[inline(never)] // a named frame for `callgrind --toggle-collect`
fn stream_pass(c: &Case, out: &mut Vec<u8>, stats: &mut MaskStats) {
    let mut m = c.session.stream();
    out.clear();
    for chunk in c.stream.chunks(16 * 1024) {
        m.push(chunk, out, stats);
    }
    m.finish(out, stats);
    black_box(&out);
}

fn rate(bytes: usize, budget: Duration, mut pass: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget || n == 0 {
        pass();
        n += 1;
    }
    (bytes as f64 * n as f64) / start.elapsed().as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

#[expect(clippy::print_stdout, reason = "the table is the example's output")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let passes = (args.first().map(String::as_str) == Some("passes"))
        .then(|| args.get(1).and_then(|s| s.parse::<u32>().ok()).unwrap_or(1));
    let reps: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(7);
    let budget = Duration::from_millis(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(500));
    let rows_n = if passes.is_some() { 2_000 } else { 20_000 };

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
    if let Some(n) = passes {
        // `passes N [a|b|c] [cell|stream]`: only the named case / mode.
        let only_case = args.get(2).map(String::as_str);
        let only_mode = args.get(3).map(String::as_str);
        for c in &cases {
            if only_case.is_some_and(|k| !c.name.starts_with(k)) {
                continue;
            }
            for _ in 0..n {
                if only_mode != Some("stream") {
                    cell_pass(c, &mut out, &mut stats);
                }
                if only_mode != Some("cell") {
                    stream_pass(c, &mut out, &mut stats);
                }
            }
        }
        println!("masked {}", stats.total());
        return Ok(());
    }
    for c in &cases {
        cell_pass(c, &mut out, &mut stats);
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
    println!(
        "{:<28} {:>10} {:>8} {:>12} {:>12}",
        "case", "bytes", "cells", "cell GB/s", "stream GB/s"
    );
    for c in &cases {
        println!(
            "{:<28} {:>10} {:>8} {:>12.3} {:>12.3}",
            c.name,
            c.bytes,
            c.cells.len(),
            median(&c.per_cell) / 1e9,
            median(&c.per_stream) / 1e9
        );
    }
    Ok(())
}
