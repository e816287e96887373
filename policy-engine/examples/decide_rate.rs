//! Quick single-core decision latency and rate over the example policies, without the bench
//! harness's dependencies: `cargo run --release -p policy-engine --example decide_rate`.
//! The full suite is `cargo run --release -p bench -- policy`.
#![expect(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "a measurement tool"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use policy_engine::{Action, Dialect, Identity, Policy, Scratch};

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../appliance/examples/policies");
    let policy = Arc::new(Policy::load_dir(&dir).unwrap());
    let id = Identity {
        subject: "bench".into(),
        groups: vec!["engineering".into()],
        ..Identity::default()
    };
    let session = policy.session_unchecked("orders-db", &id);
    let corpus = [
        "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 73021;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 73021;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 73021, -4321, CURRENT_TIMESTAMP);",
        "SELECT c_discount, c_last, c_credit, w_tax FROM customer, warehouse WHERE w_id = 1 AND c_w_id = w_id AND c_d_id = 3 AND c_id = 1234",
        "SELECT d_next_o_id, d_tax FROM district WHERE d_id = 3 AND d_w_id = 1 FOR UPDATE",
        "SELECT \"auth_user\".\"id\", \"auth_user\".\"username\", \"auth_user\".\"email\" FROM \"auth_user\" WHERE \"auth_user\".\"id\" = 42 LIMIT 21",
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
        "SELECT 1",
    ];
    let mut scratch = Scratch::new();
    let rounds = 50_000;
    let mut samples = Vec::with_capacity(rounds * corpus.len());
    for _ in 0..rounds {
        for sql in corpus {
            let a = Action::Sql {
                dialect: Dialect::Postgres,
                text: sql,
            };
            let t = Instant::now();
            std::hint::black_box(session.decide(&a, &mut scratch));
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    samples.sort_unstable();
    let q = |p: f64| {
        samples
            .get(((samples.len() - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let t = Instant::now();
    for _ in 0..rounds {
        for sql in corpus {
            std::hint::black_box(session.decide(
                &Action::Sql {
                    dialect: Dialect::Postgres,
                    text: sql,
                },
                &mut scratch,
            ));
        }
    }
    let rate = (rounds * corpus.len()) as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"rules\": {}, \"p50_ns\": {}, \"p99_ns\": {}, \"p999_ns\": {}, \"decisions_per_sec\": {:.0}}}",
        policy.rules().len(),
        q(0.5),
        q(0.99),
        q(0.999),
        rate
    );
}
