//! The gateway's latency histograms through the admin API: a few statements through a real
//! PostgreSQL behind the `portcullis` binary, then `/api/histograms`, `/metrics` and the
//! interval log must count exactly those sessions and statements.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "integration test: a failed step is a failed test"
)]

mod common;
#[path = "../../dataplane/tests/support/pgcluster.rs"]
mod pgcluster;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BIN, DRIVERS, Gateway, start};
use pgcluster::PgCluster;

const POLICY: &str = r#"
[[access]]
connections = ["orders"]
groups = ["engineering"]

[[rule]]
id = "no-drop"
match.statement = ["drop"]
action = "deny"
message = "schema changes go through migrations"

[[mask]]
columns = ["email"]
strategy = "redact"
"#;

fn portcullis(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "portcullis {args:?}: {out:?}");
    out
}

fn histograms(gw: &Gateway) -> serde_json::Value {
    let (status, body) = gw.admin_get("/api/histograms");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn count(doc: &serde_json::Value, which: &str) -> u64 {
    doc["histograms"][which]["merged"]["count"]
        .as_u64()
        .unwrap()
}

/// Histograms are written just after the reply goes out, so a client can be a moment ahead.
fn wait_count(gw: &Gateway, which: &str, want: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let doc = histograms(gw);
        if count(&doc, which) == want {
            return doc;
        }
        assert!(
            Instant::now() < deadline,
            "{which}: count {} want {want}: {doc:#}",
            count(&doc, which)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn histograms_count_the_sessions_and_statements_that_went_through() {
    if common::require("psql").is_none() {
        return;
    }
    let cluster = PgCluster::start();
    cluster.admin_sql(
        &cluster.database,
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, email text); \
             INSERT INTO customers VALUES (1, 'ann@example.com'), (2, 'bob@example.com'); \
             ALTER TABLE customers OWNER TO {};",
            cluster.user
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    portcullis(&[
        "token",
        "keygen",
        "--out",
        &d.join("issuer").display().to_string(),
    ]);
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::write(d.join("policies/00.toml"), POLICY).unwrap();
    std::fs::write(d.join("db.password"), format!("{}\n", cluster.password)).unwrap();
    let token = String::from_utf8(
        portcullis(&[
            "token",
            "mint",
            "--key",
            &d.join("issuer/signing-key.pem").display().to_string(),
            "--sub",
            "alice",
            "--groups",
            "engineering",
            "--ttl",
            "15m",
        ])
        .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let extra = format!("policies = \"{}\"\n", d.join("policies").display());
    let connections = format!(
        "[identity]\nissuer = \"portcullis-local\"\naudience = \"portcullis\"\njwks = {{ file = \"{}\" }}\n\n\
         [[connections]]\nname = \"orders\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:0\"\n\
         upstream = \"{}\"\ndatabase = \"{}\"\nupstream_tls = \"disable\"\nallow_plaintext = true\n\
         [connections.credentials]\nuser = \"{}\"\npassword_file = \"{}\"\n",
        d.join("issuer/jwks.json").display(),
        cluster.addr(),
        cluster.database,
        cluster.user,
        d.join("db.password").display()
    );

    let driver = DRIVERS[0];
    let gw = start(driver, &extra, &connections);
    let addr = gw.addr("orders");
    let before = histograms(&gw);
    for which in ["session_setup", "added", "upstream", "policy", "masking"] {
        assert_eq!(count(&before, which), 0, "{which} before any session");
    }

    // Two sessions. Each `-c` is one simple Query: one decision, and one round trip to the
    // upstream unless refused. Four of the five forwarded ones return rows (masked: the policy
    // has a mask rule); the denied DROP never reaches the upstream.
    let run = |sqls: &[&str]| {
        let mut cmd = Command::new("psql");
        cmd.arg(format!(
            "host={} port={} dbname=orders user=alice sslmode=disable connect_timeout=60",
            addr.ip(),
            addr.port()
        ))
        .args(["-X", "-A", "-t"]);
        for s in sqls {
            cmd.args(["-c", s]);
        }
        cmd.env("PGPASSWORD", &token).output().unwrap()
    };
    let out = run(&[
        "SELECT email FROM customers ORDER BY id",
        "SELECT 1",
        "SET application_name = 'histograms'",
    ]);
    assert!(out.status.success(), "psql: {out:?}");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        !shown.contains("ann@example.com"),
        "email not masked: {shown}"
    );
    let out = run(&[
        "SELECT count(*) FROM customers",
        "SELECT pg_sleep(0.02)",
        "DROP TABLE customers",
    ]);
    assert!(!out.status.success(), "DROP should be refused");

    let doc = wait_count(&gw, "policy", 6);
    assert_eq!(count(&doc, "session_setup"), 2, "{doc:#}");
    assert_eq!(count(&doc, "added"), 5, "{doc:#}");
    assert_eq!(count(&doc, "upstream"), 5, "{doc:#}");
    // Row-returning round trips: email, 1, count, pg_sleep.
    assert_eq!(count(&doc, "masking"), 4, "{doc:#}");
    // Per core counts add up to the merged count.
    let per_core: u64 = doc["histograms"]["added"]["per_core"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["count"].as_u64().unwrap())
        .sum();
    assert_eq!(per_core, 5);
    // The pg_sleep is the upstream's time, not the gateway's.
    let up_max = doc["histograms"]["upstream"]["merged"]["max_us"]
        .as_f64()
        .unwrap();
    assert!(
        up_max >= 20_000.0,
        "upstream max {up_max} µs < the 20 ms sleep"
    );
    let added_max = doc["histograms"]["added"]["merged"]["max_us"]
        .as_f64()
        .unwrap();
    assert!(
        added_max < 20_000.0,
        "added max {added_max} µs includes the sleep"
    );

    // The Prometheus form counts the same.
    assert_eq!(gw.metric_sum("portcullis_added_seconds_count", ""), 5);
    assert_eq!(
        gw.metric_sum("portcullis_session_setup_seconds_count", ""),
        2
    );
    assert_eq!(
        gw.metric_sum("portcullis_upstream_seconds_bucket", "le=\"+Inf\""),
        5
    );

    // The interval log holds the interval in progress, tagged per histogram.
    let (status, log) = gw.admin_get("/api/histograms/log");
    assert_eq!(status, 200, "{log}");
    assert!(log.contains("#[StartTime: "), "{log}");
    for tag in ["session_setup", "added", "upstream", "policy", "masking"] {
        assert!(
            log.contains(&format!("Tag={tag},")),
            "no `{tag}` interval: {log}"
        );
    }
}
