//! `bench policy`: per-decision latency (classification included) and single-core decision
//! rate over a realistic rule set and a corpus of real-world statements.
//!
//! The rule set is the documented example policy plus generated rules in the shapes operators
//! write (table denials per connection, schema reviews, regexes, group-specific allows), at
//! least 100 in all. The corpus mixes pgbench's transaction, TPC-C-like statements,
//! ORM-generated queries, multi-statement strings and a few large (up to 10 KB) statements.
//! Allocations per decision are pinned to zero by `policy-engine/tests/zero_alloc.rs`, which
//! owns a counting allocator; this binary forbids `unsafe` and so cannot install one.

use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use policy_engine::policy::compile_sources;
use policy_engine::{Action, Dialect, Identity, Scratch, Verdict, workload};

use crate::SuiteArgs;

/// Largest latency sample kept exactly, in nanoseconds.
const MAX_SAMPLE_NS: u64 = 60_000_000_000;

pub fn run(args: &SuiteArgs) -> anyhow::Result<()> {
    let sources = workload::sources(100);
    let policy = Arc::new(compile_sources(&sources).map_err(|e| anyhow::anyhow!("{e}"))?);
    let identity = Identity {
        subject: "bench".into(),
        groups: vec!["engineering".into(), "team-3".into()],
        ..Identity::default()
    };
    let session = policy.session_unchecked("orders-db", &identity);
    let corpus = workload::corpus();
    let mut scratch = Scratch::new();

    // Warm up (scratch growth, regex caches) and check the rule set is doing real work.
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

    let rounds = if args.quick { 2_000 } else { 40_000 };
    // Up to a minute: on a loaded machine a decision can be descheduled for more than 10 ms,
    // and a sample above the bound used to abort the whole run. Samples beyond it saturate.
    let mut small = Histogram::<u64>::new_with_bounds(1, MAX_SAMPLE_NS, 3)?;
    let mut large = Histogram::<u64>::new_with_bounds(1, MAX_SAMPLE_NS, 3)?;
    for _ in 0..rounds {
        for (_, sql) in &corpus {
            let action = Action::Sql {
                dialect: Dialect::Postgres,
                text: sql,
            };
            let t = Instant::now();
            let d = session.decide(&action, &mut scratch);
            let ns = t.elapsed().as_nanos() as u64;
            std::hint::black_box(d);
            let h = if sql.len() < 1024 {
                &mut small
            } else {
                &mut large
            };
            h.saturating_record(ns.max(1));
        }
    }

    // Throughput on one core over the statements under 1 KB, without per-call timers.
    let smalls: Vec<&str> = corpus
        .iter()
        .filter(|(_, s)| s.len() < 1024)
        .map(|(_, s)| s.as_str())
        .collect();
    let total_rounds = if args.quick { 5_000 } else { 100_000 };
    let t = Instant::now();
    for _ in 0..total_rounds {
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
    let secs = t.elapsed().as_secs_f64();
    let decisions = (total_rounds * smalls.len()) as f64;

    let sizes: Vec<usize> = corpus.iter().map(|(_, s)| s.len()).collect();
    let report = serde_json::json!({
        "suite": "policy",
        "date_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "note": "shared 2-core machine, other builds running: figures are pessimistic",
        },
        "quick": args.quick,
        "rules": policy.rules().len(),
        "rules_in_session": session_rule_count(&policy, &identity),
        "corpus_statements": corpus.len(),
        "corpus_bytes_min": sizes.iter().min(),
        "corpus_bytes_max": sizes.iter().max(),
        "corpus_denied": denied,
        "under_1kb": {
            "decisions": small.len(),
            "p50_ns": small.value_at_quantile(0.50),
            "p99_ns": small.value_at_quantile(0.99),
            "p999_ns": small.value_at_quantile(0.999),
            "max_ns": small.max(),
        },
        "large_up_to_10kb": {
            "decisions": large.len(),
            "p50_ns": large.value_at_quantile(0.50),
            "p99_ns": large.value_at_quantile(0.99),
        },
        "decisions_per_sec_one_core_under_1kb": (decisions / secs).round(),
        "allocations_per_decision": 0,
        "allocations_measured_by": "policy-engine/tests/zero_alloc.rs (counting allocator; asserts 0 after warm-up)",
        "goals": { "p99_ns_max": 1000, "decisions_per_sec_min": 1_000_000, "allocations": 0 },
    });
    crate::write_report(args, &report)
}

fn session_rule_count(policy: &Arc<policy_engine::Policy>, identity: &Identity) -> usize {
    policy
        .rules()
        .iter()
        .filter(|r| r.applies_to("orders-db", identity))
        .count()
}
