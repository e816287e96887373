//! `portcullis-loadgen pg` against a real PostgreSQL cluster started by the test.

#[cfg(test)] // marks the helpers as test code, where panics are failing tests
mod common;

use common::{PASSWORD, PgCluster, loadgen};

/// Every mode inserts one row per successful request: the server's row count must equal the
/// request count loadgen reports, so neither drops nor invents requests.
#[test]
fn each_protocol_mode_reaches_the_server_once_per_request() {
    let pg = PgCluster::start(false);
    pg.psql("CREATE TABLE hits (mode text NOT NULL, who text NOT NULL, n int4 NOT NULL)");
    for mode in ["simple", "extended", "prepared"] {
        let mix = pg.dir().join(format!("{mode}.toml"));
        std::fs::write(
            &mix,
            format!(
                "[[query]]\nsql = \"INSERT INTO hits (mode, who, n) VALUES ('{mode}', $1, $2)\"\n\
                 params = [{{ choice = [\"o'brien\", \"ada\"] }}, {{ uniform = [1, 1000] }}]\n"
            ),
        )
        .unwrap();
        let url = pg.url(PASSWORD);
        let mix = mix.to_str().unwrap();
        let run = loadgen(
            pg.dir(),
            &[
                "-c", "2", "-d", "2s", "pg", "--url", &url, "-M", mode, "--mix", mix,
            ],
            &[],
        );
        assert!(run.output.status.success(), "{mode}: {}", run.stderr());
        assert!(run.requests() > 0, "{mode}: no requests\n{}", run.stderr());
        assert_eq!(
            run.errors_total(),
            0,
            "{mode}: {}",
            run.json["results"]["errors"]
        );
        run.assert_percentiles_ordered();
        let rows: u64 = pg
            .psql(&format!("SELECT count(*) FROM hits WHERE mode = '{mode}'"))
            .parse()
            .unwrap();
        assert_eq!(
            rows,
            run.requests(),
            "{mode}: rows inserted vs requests reported"
        );
        let bad: u64 = pg
            .psql(&format!(
                "SELECT count(*) FROM hits WHERE mode = '{mode}' \
                 AND (who NOT IN ('o''brien', 'ada') OR n NOT BETWEEN 1 AND 1000)"
            ))
            .parse()
            .unwrap();
        assert_eq!(bad, 0, "{mode}: parameters outside the mix's generators");
        assert!(
            run.stdout().contains("throughput"),
            "summary printed: {}",
            run.stdout()
        );
        assert!(
            run.stderr().contains("p99"),
            "progress lines on stderr: {}",
            run.stderr()
        );
        assert_eq!(run.json["parameters"]["workload"]["mode"], mode);
        assert!(
            !run.json.to_string().contains(PASSWORD),
            "the password must not be written to the JSON"
        );
    }
}

/// A wrong password is the server refusing us: counted as `auth` errors, the run still ends
/// with a summary and JSON, and the exit status says nothing succeeded.
#[test]
fn wrong_password_shows_as_auth_errors() {
    let pg = PgCluster::start(false);
    let url = pg.url("not-the-password");
    let run = loadgen(
        pg.dir(),
        &["-c", "2", "-d", "1s", "pg", "--url", &url, "-q", "SELECT 1"],
        &[],
    );
    assert_eq!(run.output.status.code(), Some(1), "{}", run.stderr());
    assert_eq!(run.requests(), 0);
    assert!(
        run.errors("auth") >= 2,
        "errors: {}",
        run.json["results"]["errors"]
    );
    assert_eq!(
        run.errors_total(),
        run.errors("auth"),
        "{}",
        run.json["results"]["errors"]
    );
    assert!(
        run.stdout().contains("auth"),
        "summary lists auth errors: {}",
        run.stdout()
    );
}

/// A failing statement is reported by SQLSTATE, and the connection keeps working.
#[test]
fn query_errors_are_grouped_by_sqlstate() {
    let pg = PgCluster::start(false);
    let mix = pg.dir().join("mix.toml");
    std::fs::write(
        &mix,
        "[[query]]\nsql = \"SELECT 1\"\nweight = 3\n\
         [[query]]\nsql = \"SELECT * FROM no_such_table\"\n",
    )
    .unwrap();
    let url = pg.url(PASSWORD);
    let run = loadgen(
        pg.dir(),
        &[
            "-c",
            "1",
            "-d",
            "1s",
            "pg",
            "--url",
            &url,
            "-M",
            "extended",
            "--mix",
            mix.to_str().unwrap(),
        ],
        &[],
    );
    assert!(run.output.status.success(), "{}", run.stderr());
    assert!(run.requests() > 0);
    assert!(
        run.errors("query 42P01") > 0,
        "{}",
        run.json["results"]["errors"]
    );
    assert_eq!(run.errors_total(), run.errors("query 42P01"));
}

/// Open loop at a low rate sends on schedule: about rate × duration requests, with latency
/// measured from the intended send time. The password comes from the environment, as an OIDC
/// token presented to the gateway would.
#[test]
fn open_loop_follows_the_rate_with_a_pgbench_like_mix() {
    let pg = PgCluster::start(false);
    pg.psql(
        "CREATE TABLE pgbench_accounts (aid int4 PRIMARY KEY, abalance int4 NOT NULL); \
         INSERT INTO pgbench_accounts SELECT g, g * 10 FROM generate_series(1, 1000) g",
    );
    let mix = pg.dir().join("mix.toml");
    std::fs::write(
        &mix,
        "[[query]]\nsql = \"SELECT abalance FROM pgbench_accounts WHERE aid = $1\"\n\
         params = [{ uniform = [1, 1000] }]\n",
    )
    .unwrap();
    let port = pg.port.to_string();
    let hlog = pg.dir().join("latency.hlog");
    let run = loadgen(
        pg.dir(),
        &[
            "-c",
            "2",
            "-R",
            "50",
            "-w",
            "1s",
            "-d",
            "3s",
            "--hdr-log",
            hlog.to_str().unwrap(),
            "pg",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "-U",
            "postgres",
            "--dbname",
            "postgres",
            "--password-env",
            "LOADGEN_TEST_TOKEN",
            "-M",
            "prepared",
            "--mix",
            mix.to_str().unwrap(),
        ],
        &[("LOADGEN_TEST_TOKEN", PASSWORD)],
    );
    assert!(run.output.status.success(), "{}", run.stderr());
    assert_eq!(run.errors_total(), 0, "{}", run.json["results"]["errors"]);
    let n = run.requests();
    assert!(
        (140..=152).contains(&n),
        "50/s for 3 s after warm-up sent {n} requests"
    );
    run.assert_percentiles_ordered();
    assert!(
        run.json["results"]["latency_from"]
            .as_str()
            .unwrap()
            .starts_with("intended send time"),
        "{}",
        run.json["results"]
    );
    assert!(
        run.stderr().contains("warmup"),
        "warm-up ticks are labelled: {}",
        run.stderr()
    );
    let log = std::fs::read_to_string(&hlog).unwrap();
    assert!(log.contains("#[StartTime: "), "interval log header: {log}");
    let intervals = log
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(",HIST"))
        .count();
    assert!(
        (3..=5).contains(&intervals),
        "one histogram per second of measurement:\n{log}"
    );
}

/// `--sslmode require` speaks TLS to a server that accepts TCP only over TLS; without it the
/// same server refuses us (no `pg_hba.conf` entry for a plain connection: SQLSTATE class 28).
#[test]
fn sslmode_require_uses_tls() {
    let pg = PgCluster::start(true);
    let url = pg.url(PASSWORD);
    let tls = loadgen(
        pg.dir(),
        &[
            "-c",
            "1",
            "-d",
            "1s",
            "pg",
            "--url",
            &url,
            "--sslmode",
            "require",
            "-q",
            "SELECT 1",
        ],
        &[],
    );
    assert!(tls.output.status.success(), "{}", tls.stderr());
    assert!(tls.requests() > 0);
    assert_eq!(tls.errors_total(), 0, "{}", tls.json["results"]["errors"]);
    let plain = loadgen(
        pg.dir(),
        &["-c", "1", "-d", "1s", "pg", "--url", &url, "-q", "SELECT 1"],
        &[],
    );
    assert_eq!(plain.requests(), 0);
    assert!(
        plain.errors("auth") > 0,
        "{}",
        plain.json["results"]["errors"]
    );
}
