//! `bench codecs`: the PostgreSQL wire codecs the gateway runs on every frame, one core.
//!
//! Streams are built once from the shapes the gateway relays most: simple-protocol queries
//! (`pgbench -S`), extended-protocol batches (Parse, Bind, Describe, Execute, Sync), the
//! answer to a one-row select, and result sets of ten text columns. Each pass decodes a fresh
//! copy of a stream frame by frame, as the driver does with what a socket read returned; the
//! `rewrite` case re-encodes every DataRow with one cell replaced, which is what masking a
//! value costs on top of finding it. Repetitions are interleaved across cases, medians
//! reported.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use dataplane::postgres::backend::{self, BackendMessage};
use dataplane::postgres::rewrite::{self, CellEdit};
use dataplane::postgres::{Limits, frontend};
use serde_json::json;

use crate::SuiteArgs;
use crate::masking::median;

/// The `pgbench -S` statement.
const SELECT: &[u8] = b"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
/// Its extended-protocol form.
const SELECT_PARAM: &[u8] = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// One codec workload: a byte stream and what to do with each pass over it.
pub struct Case {
    pub name: &'static str,
    pub stream: Vec<u8>,
    pub frames: u64,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Frontend,
    Backend,
    /// Backend, and every DataRow re-encoded with its first cell replaced.
    Rewrite,
}

fn message(buf: &mut Vec<u8>, tag: u8, body: &[u8]) {
    buf.push(tag);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
}

fn row_description(columns: usize) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(columns).unwrap_or(0).to_be_bytes());
    for i in 0..columns {
        body.extend_from_slice(format!("column_{i}\0").as_bytes());
        body.extend_from_slice(&16_384u32.to_be_bytes()); // table oid
        body.extend_from_slice(&u16::try_from(i + 1).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(&25u32.to_be_bytes()); // text
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
    }
    body
}

fn data_row(values: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(values.len()).unwrap_or(0).to_be_bytes());
    for v in values {
        body.extend_from_slice(&i32::try_from(v.len()).unwrap_or(-1).to_be_bytes());
        body.extend_from_slice(v);
    }
    body
}

/// The workloads, `scale` repetitions of each shape.
pub fn cases(scale: usize) -> Vec<Case> {
    let mut simple = Vec::new();
    let mut q = SELECT.to_vec();
    q.push(0);
    for _ in 0..scale {
        message(&mut simple, b'Q', &q);
    }

    let mut extended = Vec::new();
    let mut parse = vec![0u8]; // unnamed statement
    parse.extend_from_slice(SELECT_PARAM);
    parse.extend_from_slice(&[0, 0, 0]); // NUL, no parameter types
    let mut bind = vec![0u8, 0u8]; // unnamed portal, unnamed statement
    bind.extend_from_slice(&0u16.to_be_bytes()); // parameter formats
    bind.extend_from_slice(&1u16.to_be_bytes());
    bind.extend_from_slice(&5i32.to_be_bytes());
    bind.extend_from_slice(b"48213");
    bind.extend_from_slice(&0u16.to_be_bytes()); // result formats
    for _ in 0..scale {
        message(&mut extended, b'P', &parse);
        message(&mut extended, b'B', &bind);
        message(&mut extended, b'D', b"P\0");
        message(&mut extended, b'E', &[0, 0, 0, 0, 0]);
        message(&mut extended, b'S', &[]);
    }

    let mut answer = Vec::new();
    let one_col = row_description(1);
    let one_row = data_row(&[b"-4211"]);
    for _ in 0..scale {
        message(&mut answer, b'T', &one_col);
        message(&mut answer, b'D', &one_row);
        message(&mut answer, b'C', b"SELECT 1\0");
        message(&mut answer, b'Z', b"I");
    }

    let mut wide = Vec::new();
    let cells: [&[u8]; 10] = [
        b"10452",
        b"2026-11-27 09:14:03.120934+00",
        b"ORD-2026-0001834",
        b"shipped",
        b"129.90",
        b"EUR",
        b"Lyon",
        b"0f8e1c2a-5b7d-4e21-9c3a-7d2b1e0f9a44",
        b"t",
        b"gift wrap, leave at the door",
    ];
    let wide_row = data_row(&cells);
    message(&mut wide, b'T', &row_description(10));
    for _ in 0..scale {
        message(&mut wide, b'D', &wide_row);
    }
    message(&mut wide, b'C', format!("SELECT {scale}\0").as_bytes());
    message(&mut wide, b'Z', b"I");

    let n = scale as u64;
    vec![
        Case {
            name: "frontend_simple_query",
            stream: simple,
            frames: n,
            kind: Kind::Frontend,
        },
        Case {
            name: "frontend_extended_batch",
            stream: extended,
            frames: 5 * n,
            kind: Kind::Frontend,
        },
        Case {
            name: "backend_one_row_answer",
            stream: answer,
            frames: 4 * n,
            kind: Kind::Backend,
        },
        Case {
            name: "backend_ten_column_rows",
            stream: wide.clone(),
            frames: n + 3,
            kind: Kind::Backend,
        },
        Case {
            name: "backend_rows_rewritten",
            stream: wide,
            frames: n + 3,
            kind: Kind::Rewrite,
        },
    ]
}

/// Decodes one fresh copy of the case's stream; returns the frames decoded.
pub fn pass(case: &Case, limits: &Limits, out: &mut BytesMut) -> u64 {
    let mut buf = BytesMut::from(case.stream.as_slice());
    let mut frames = 0u64;
    out.clear();
    match case.kind {
        Kind::Frontend => {
            while let Ok(Some(frame)) = frontend::decode_message(&mut buf, limits) {
                black_box(&frame);
                frames += 1;
            }
        }
        Kind::Backend | Kind::Rewrite => {
            while let Ok(Some(frame)) = backend::decode_message(&mut buf, limits) {
                if case.kind == Kind::Rewrite
                    && let BackendMessage::DataRow(row) = &frame.message
                {
                    let _ = rewrite::rewrite_data_row(row, limits, out, |i, _| {
                        if i == 0 {
                            CellEdit::Replace(b"[MASKED]".as_slice().into())
                        } else {
                            CellEdit::Keep
                        }
                    });
                } else {
                    out.put_slice(&frame.raw);
                }
                black_box(&frame);
                frames += 1;
            }
        }
    }
    black_box(&out);
    frames
}

pub fn run(args: &SuiteArgs) -> anyhow::Result<()> {
    let (scale, reps, budget) = if args.quick {
        (1_000, 3, Duration::from_millis(100))
    } else {
        (10_000, 7, Duration::from_millis(500))
    };
    let limits = Limits::default();
    let cases = cases(scale);
    let mut out = BytesMut::with_capacity(4 << 20);
    for c in &cases {
        let got = pass(c, &limits, &mut out);
        if got != c.frames {
            anyhow::bail!("{}: decoded {got} frames of {}", c.name, c.frames);
        }
    }
    let mut ns_per_frame: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut bytes_per_s: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..reps {
        for (i, c) in cases.iter().enumerate() {
            let start = Instant::now();
            let mut passes = 0u64;
            while start.elapsed() < budget || passes == 0 {
                pass(c, &limits, &mut out);
                passes += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            if let (Some(ns), Some(bps)) = (ns_per_frame.get_mut(i), bytes_per_s.get_mut(i)) {
                ns.push(secs * 1e9 / (passes * c.frames) as f64);
                bps.push(c.stream.len() as f64 * passes as f64 / secs);
            }
        }
    }
    let results: Vec<_> = cases
        .iter()
        .zip(ns_per_frame.iter().zip(&bytes_per_s))
        .map(|(c, (ns, bps))| {
            json!({
                "case": c.name,
                "frames_per_pass": c.frames,
                "bytes_per_pass": c.stream.len(),
                "ns_per_frame_median": (median(ns) * 10.0).round() / 10.0,
                "gb_per_s_median": (median(bps) / 1e9 * 1000.0).round() / 1000.0,
            })
        })
        .collect();
    let report = json!({
        "suite": "codecs",
        "date": crate::e2e::today(),
        "machine": crate::recorder::machine(),
        "repetitions": reps,
        "note": "one thread; each pass decodes a fresh copy of the stream (the copy is included); medians of interleaved repetitions",
        "command": "cargo run --release -p bench -- codecs --json FILE",
        "results": results,
    });
    crate::write_report(args, &report)
}
