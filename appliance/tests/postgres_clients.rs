//! Independent client libraries through the PostgreSQL gateway: psycopg 3 (libpq underneath) and
//! Node `pg` (a pure JavaScript implementation of the protocol) drive the real `portcullis`
//! binary, TLS on with a certificate from a test CA, in front of a throwaway PostgreSQL, with a
//! policy that masks a column and a card detector and denies DROP/TRUNCATE.
//!
//! The client programs live in `tests/clients/`; each case asserts what the library's user
//! sees and exits non-zero on failure. This file starts the peers, runs the cases, checks their
//! exit status and key output, and measures the gateway's peak memory around a large result.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration test: a failed step is a failed test"
)]

mod common;
#[path = "../../dataplane/tests/support/pgcluster.rs"]
mod pgcluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{BIN, DRIVERS, Gateway, start};
use pgcluster::PgCluster;

/// The masked column (`email`, for engineering), the card detector (everyone), a deny rule;
/// everything else, `pg_sleep` included, is allowed by the default. `loaders` have no column
/// rule, so COPY out is theirs to use (with column rules it is refused).
const POLICY: &str = r#"
[[access]]
connections = ["orders-db", "orders-plain"]
groups = ["engineering", "loaders"]

[[rule]]
id = "no-drop"
match.statement = ["drop", "truncate"]
match.tables = ["customers"]
action = "deny"
message = "schema changes go through migrations"

[[mask]]
columns = ["email"]
groups = ["engineering"]
strategy = "redact"

[[mask]]
detectors = ["credit_card"]
strategy = "partial"
keep = 4
"#;

const CARD: &str = "4111 1111 1111 1111";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn portcullis(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "portcullis {args:?}: {}",
        text(&out.stderr)
    );
    out
}

/// Whether `python3` with psycopg 3 is here; missing fails in CI, skips locally.
fn have_psycopg() -> bool {
    if common::require("python3").is_none() {
        return false;
    }
    let ok = Command::new("python3")
        .args(["-c", "import psycopg"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 -m pip install 'psycopg[binary]' is required in CI (scripts/test installs it)"
        );
        eprintln!("SKIP: psycopg not installed; run scripts/test to install it");
    }
    ok
}

/// A CA, a gateway certificate it signed (for `localhost` and `127.0.0.1`), and an unrelated
/// second CA, written as PEM files into `dir`.
fn write_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Portcullis test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(dir.join("gateway.crt"), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join("gateway.key"), leaf_key.serialize_pem()).unwrap();
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_key = KeyPair::generate().unwrap();
    std::fs::write(
        dir.join("other-ca.crt"),
        other.self_signed(&other_key).unwrap().pem(),
    )
    .unwrap();
}

/// A cluster with the customers table, a gateway in front of it and a token for alice.
struct Fixture {
    cluster: PgCluster,
    dir: tempfile::TempDir,
    gw: Gateway,
    token: String,
    /// A `loaders` identity: detectors only, no column rule.
    loader_token: String,
}

fn cluster() -> PgCluster {
    let cluster = PgCluster::start();
    cluster.admin_sql(
        &cluster.database,
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card text); \
             INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '{CARD}'), (2, 'Bob', NULL, 'none'); \
             ALTER TABLE customers OWNER TO {};",
            cluster.user
        ),
    );
    cluster
}

fn fixture(cluster: PgCluster, driver: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = d.join("issuer");
    portcullis(&["token", "keygen", "--out", &keys.display().to_string()]);
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::write(d.join("policies/00-orders.toml"), POLICY).unwrap();
    write_certificates(d);
    std::fs::write(d.join("db.password"), format!("{}\n", cluster.password)).unwrap();
    let upstream = cluster.addr();
    let conn = |name: &str, tls: bool| {
        let (db, user) = (&cluster.database, &cluster.user);
        common::pg_connection(d, name, &upstream, db, user, tls, "idle_timeout = \"5m\"\n")
    };
    let extra = common::dirs_under(d);
    let connections = format!(
        "{}{}\n{}",
        common::local_identity(d),
        conn("orders-db", true),
        conn("orders-plain", false),
    );
    let gw = start(driver, &extra, &connections);
    let key = keys.join("signing-key.pem").display().to_string();
    let mint = |sub: &str, group: &str| {
        let out = portcullis(&[
            "token",
            "mint",
            "--key",
            &key,
            "--sub",
            sub,
            "--email",
            &format!("{sub}@corp.example"),
            "--groups",
            group,
            "--ttl",
            "30m",
        ]);
        text(&out.stdout).trim().to_owned()
    };
    let token = mint("alice", "engineering");
    let loader_token = mint("lou", "loaders");
    Fixture {
        cluster,
        dir,
        gw,
        token,
        loader_token,
    }
}

impl Fixture {
    fn envs(&self) -> Vec<(&'static str, String)> {
        let d = self.dir.path();
        vec![
            ("PGC_TLS_PORT", self.gw.addr("orders-db").port().to_string()),
            (
                "PGC_PLAIN_PORT",
                self.gw.addr("orders-plain").port().to_string(),
            ),
            ("PGC_TOKEN", self.token.clone()),
            ("PGC_LOADER_TOKEN", self.loader_token.clone()),
            ("PGC_CA", d.join("ca.crt").display().to_string()),
            ("PGC_OTHER_CA", d.join("other-ca.crt").display().to_string()),
        ]
    }

    /// Runs one psycopg case; returns its stdout, or why it failed.
    fn psycopg(&self, case: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new("python3")
            .arg(clients_dir().join("psycopg_cases.py"))
            .arg(case)
            .args(args)
            .envs(self.envs())
            .env("PYTHONUNBUFFERED", "1")
            .output()
            .expect("run python3");
        let stdout = text(&out.stdout);
        eprint!("{}", text(&out.stderr));
        if out.status.success() && stdout.lines().any(|l| l == "done") {
            Ok(stdout)
        } else {
            Err(format!(
                "psycopg case `{case}` failed ({}):\n{stdout}{}",
                out.status,
                text(&out.stderr)
            ))
        }
    }
}

/// Runs every case, then fails listing all that failed (one broken case should not hide
/// the others).
fn check_all(fx: &Fixture, driver: &str, cases: &[(&str, &[&str])]) {
    let mut failures = Vec::new();
    for (case, expected) in cases {
        match fx.psycopg(case, &[]) {
            Ok(out) => {
                eprintln!("{driver} {case}:\n{out}");
                for want in *expected {
                    if !out.contains(want) {
                        failures.push(format!("{driver} {case}: missing `{want}` in:\n{out}"));
                    }
                }
            }
            Err(e) => failures.push(format!("{driver}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn psycopg_through_the_gateway() {
    if !have_psycopg() {
        return;
    }
    let mut cluster = Some(cluster());
    for driver in DRIVERS {
        let fx = fixture(cluster.take().unwrap(), driver);
        check_all(
            &fx,
            driver,
            &[
                (
                    "extended",
                    &[
                        "ok: parameterised select masked",
                        "ok: prepared statement reused 10 times",
                        "ok: server-side cursor: 100 rows",
                    ],
                ),
                ("pipeline", &["ok: pipeline: denied with 42501"]),
                (
                    "copy",
                    &[
                        "ok: extended-protocol copy from stdin keeps the session in step",
                        "ok: copy to stdout refused under column rules",
                        "ok: copy to stdout text: 1000 lines",
                        "ok: copy to stdout binary: 500 rows",
                    ],
                ),
                ("notify", &["ok: listen/notify: 4 notifications"]),
                ("jdbc_style", &["ok: undescribed execute masked"]),
                ("cancel", &["ok: cancel: 57014"]),
                (
                    "tls",
                    &[
                        "ok: verify-full",
                        "ok: plaintext refused",
                        "ok: direct tls (sslnegotiation=direct)",
                        "ok: direct tls refused where tls is not configured",
                    ],
                ),
                (
                    "transactions",
                    &[
                        "ok: denied statement aborts the transaction",
                        "ok: savepoints: [1, 10, 13]",
                    ],
                ),
            ],
        );
        // Nothing denied reached the server.
        let log = fx.cluster.log();
        assert!(
            !log.contains("DROP TABLE customers"),
            "{driver}: DROP reached the server"
        );
        assert!(
            !log.contains("TRUNCATE customers"),
            "{driver}: TRUNCATE reached the server"
        );
        cluster = Some(fx.cluster);
    }
}

/// Whether node and the committed `pg` fixture (`npm ci` in `tests/clients/node`) are here.
fn have_node_pg() -> bool {
    let node = common::require("node").is_some();
    let package = clients_dir()
        .join("node/node_modules/pg/package.json")
        .exists();
    if node && package {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "node and `npm ci --prefix appliance/tests/clients/node` are required in CI (scripts/test runs it)"
    );
    eprintln!("SKIP: run `npm ci --prefix appliance/tests/clients/node` (scripts/test does)");
    false
}

#[test]
fn node_pg_through_the_gateway() {
    if !have_node_pg() {
        return;
    }
    let fx = fixture(cluster(), DRIVERS[0]);
    let out = Command::new("node")
        .arg(clients_dir().join("node/pg_check.mjs"))
        .envs(fx.envs())
        .output()
        .expect("run node");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "done"),
        "node pg failed ({}):\n{stdout}{}",
        out.status,
        text(&out.stderr)
    );
    for want in [
        "ok: connected over tls",
        "ok: parameterised query masked",
        "ok: denied DROP with 42501",
        "ok: denied TRUNCATE with 42501",
        "ok: session usable after denials, table intact",
    ] {
        assert!(stdout.contains(want), "missing `{want}` in:\n{stdout}");
    }
    assert!(!fx.cluster.log().contains("DROP TABLE customers"));
}

/// Streams `rows` rows (masked on the way) twice through one gateway, after a small-result
/// baseline, and returns (baseline, after) peak RSS in KiB.
fn large_result_peak_rss(rows: u64) -> (u64, u64) {
    let fx = fixture(cluster(), DRIVERS[0]);
    fx.psycopg("small", &[]).unwrap();
    let baseline = fx.gw.peak_rss_kib();
    let started = std::time::Instant::now();
    let out = fx.psycopg("large", &[&rows.to_string()]).unwrap();
    let after = fx.gw.peak_rss_kib();
    assert!(
        out.contains(&format!("ok: large server-side cursor: {rows} rows"))
            && out.contains(&format!("ok: large single result: {rows} rows")),
        "{out}"
    );
    eprintln!(
        "{rows} rows twice in {:.1}s: gateway peak RSS {baseline} KiB after a small result, {after} KiB after the large ones",
        started.elapsed().as_secs_f64()
    );
    (baseline, after)
}

/// Most the gateway's peak RSS may grow while streaming a large masked result: a few read and
/// write batches, the masking scratch and allocator growth, not anything proportional to the
/// result (each pass streams well over 100 MB). Observed growth on the shared 2-core machine
/// was 2 to 33 MiB and did not follow the row count (2 M and 10 M rows both reached ~33 MiB on
/// a loaded run and 6 / 16 MiB on quieter ones), so the bound leaves room for that spread.
const LARGE_RESULT_RSS_GROWTH_KIB: u64 = 64 * 1024;

#[test]
fn two_million_masked_rows_stream_with_bounded_gateway_memory() {
    if !have_psycopg() {
        return;
    }
    let (baseline, after) = large_result_peak_rss(2_000_000);
    assert!(
        after <= baseline + LARGE_RESULT_RSS_GROWTH_KIB,
        "peak RSS grew from {baseline} KiB to {after} KiB while streaming"
    );
}

/// The issue's 10-million-row figure; slow in debug builds, so run it on demand in release:
/// `cargo test --release -p appliance --test postgres_clients -- --ignored --nocapture`.
#[test]
#[ignore = "minutes long; run on demand (docs/postgres.md)"]
fn ten_million_masked_rows_stream_with_bounded_gateway_memory() {
    if !have_psycopg() {
        return;
    }
    let (baseline, after) = large_result_peak_rss(10_000_000);
    assert!(
        after <= baseline + LARGE_RESULT_RSS_GROWTH_KIB,
        "peak RSS grew from {baseline} KiB to {after} KiB while streaming"
    );
}
