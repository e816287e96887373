//! Single-core decision latency and rate over the same rule set and corpus as `bench policy`
//! (example policies plus 100 generated rules; pgbench, TPC-C-like, ORM and large statements),
//! without the bench harness's dependencies:
//! `cargo run --release -p policy-engine --example decide_rate [-- ROUNDS [--per-statement]]`.
//! The full suite is `cargo run --release -p bench -- policy`.
#![expect(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "a measurement tool"
)]

use std::sync::Arc;
use std::time::Instant;

use policy_engine::policy::compile_sources;
use policy_engine::{Action, Dialect, Identity, Scratch, Verdict, workload};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let sources = workload::sources(100);
    let policy = Arc::new(compile_sources(&sources).unwrap());
    let identity = Identity {
        subject: "bench".into(),
        groups: vec!["engineering".into(), "team-3".into()],
        ..Identity::default()
    };
    let session = policy.session_unchecked("orders-db", &identity);
    let corpus = workload::corpus();
    let mut scratch = Scratch::new();
    let mut denied = 0usize;
    for (_, sql) in &corpus {
        let d = session.decide(
            &Action::Sql {
                dialect: Dialect::Postgres,
                text: sql,
            },
            &mut scratch,
        );
        denied += usize::from(d.verdict == Verdict::Deny);
    }
    let mut small = Vec::with_capacity(rounds * corpus.len());
    let mut large = Vec::with_capacity(rounds * 2);
    // Per statement: which ones the under-1 KB p99 is made of.
    let mut each: Vec<Vec<u64>> = vec![Vec::with_capacity(rounds); corpus.len()];
    for _ in 0..rounds {
        for (k, (_, sql)) in corpus.iter().enumerate() {
            let a = Action::Sql {
                dialect: Dialect::Postgres,
                text: sql,
            };
            let t = Instant::now();
            std::hint::black_box(session.decide(&a, &mut scratch));
            let ns = t.elapsed().as_nanos() as u64;
            if sql.len() < 1024 {
                small.push(ns);
            } else {
                large.push(ns);
            }
            if let Some(v) = each.get_mut(k) {
                v.push(ns);
            }
        }
    }
    small.sort_unstable();
    large.sort_unstable();
    let q = |v: &[u64], p: f64| {
        v.get(((v.len().saturating_sub(1)) as f64 * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    if std::env::args().any(|a| a == "--per-statement") {
        for ((kind, sql), v) in corpus.iter().zip(&mut each) {
            v.sort_unstable();
            let head: String = sql.chars().take(60).collect();
            println!(
                "{:>6} ns p50 {:>6} ns p90  {:>5} B  {kind:<9} {head}",
                q(v, 0.5),
                q(v, 0.9),
                sql.len()
            );
        }
    }
    let smalls: Vec<&str> = corpus
        .iter()
        .filter(|(_, s)| s.len() < 1024)
        .map(|(_, s)| s.as_str())
        .collect();
    let t = Instant::now();
    for _ in 0..rounds * 2 {
        for sql in &smalls {
            std::hint::black_box(session.decide(
                &Action::Sql {
                    dialect: Dialect::Postgres,
                    text: sql,
                },
                &mut scratch,
            ));
        }
    }
    let rate = (rounds * 2 * smalls.len()) as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"rules\": {}, \"denied\": {}, \"under_1kb_p50_ns\": {}, \"under_1kb_p99_ns\": {}, \"under_1kb_p999_ns\": {}, \"large_p50_ns\": {}, \"decisions_per_sec_under_1kb\": {:.0}}}",
        policy.rules().len(),
        denied,
        q(&small, 0.5),
        q(&small, 0.99),
        q(&small, 0.999),
        q(&large, 0.5),
        rate
    );
}
