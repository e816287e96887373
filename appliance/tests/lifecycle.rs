//! Process lifecycle through the real binary: admin endpoints, graceful shutdown, exit codes,
//! config errors.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a failed step is a failed test"
)]

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn admin_endpoints() {
    let echo = echo_server();
    let gw = start("epoll", "", &tcp_connection("web", echo, ""));
    assert!(gw.logs().contains("\"driver\":\"epoll\""), "{}", gw.logs());
    assert_eq!(gw.admin_get("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(gw.admin_get("/readyz").0, 200);
    let (status, body) = gw.admin_get("/nope");
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "no such endpoint `/nope`");
    let (status, metrics) = gw.admin_get("/metrics");
    assert_eq!(status, 200);
    for w in ["0", "1"] {
        assert!(metrics.contains(&format!(
            "portcullis_connections_accepted_total{{worker=\"{w}\",connection=\"web\"}} 0"
        )));
        assert!(metrics.contains(&format!("portcullis_worker_listening{{worker=\"{w}\"}} 1")));
    }
    // Counters move.
    let mut s = connect(gw.addr("web"));
    s.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(
        gw.metric_sum("portcullis_connections_accepted_total", "web"),
        1
    );
    assert_eq!(gw.metric_sum("portcullis_connections_active", "web"), 1);
    gw.wait_metric("portcullis_bytes_client_to_upstream_total", "web", 5);
    gw.wait_metric("portcullis_bytes_upstream_to_client_total", "web", 5);
}

#[test]
fn sigterm_drains_live_sessions_then_exits_zero() {
    let echo = echo_server();
    for driver in DRIVERS {
        let mut gw = start(
            driver,
            "drain_timeout = \"20s\"",
            &tcp_connection("web", echo, ""),
        );
        let addr = gw.addr("web");
        let mut s = connect(addr);
        s.write_all(b"before").unwrap();
        let mut b = [0u8; 6];
        s.read_exact(&mut b).unwrap();

        gw.signal("TERM");
        // New connections are refused once the listeners close...
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{driver}: still accepting after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            gw.wait_exit(Duration::from_millis(300)).is_none(),
            "{driver}: exited before the session ended"
        );
        // ...while the live session keeps working.
        s.write_all(b"during").unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"during", "{driver}");
        drop(s);
        let status = gw
            .wait_exit(Duration::from_secs(20))
            .expect("did not exit after the last session");
        assert_eq!(status.code(), Some(0), "{driver}: {}", gw.logs());
        gw.wait_log("\"outcome\":\"closed\"");
    }
}

#[test]
fn sigterm_closes_sessions_still_open_at_the_drain_deadline() {
    let echo = echo_server();
    for driver in DRIVERS {
        let mut gw = start(
            driver,
            "drain_timeout = \"1s\"",
            &tcp_connection("web", echo, ""),
        );
        let mut s = connect(gw.addr("web"));
        s.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        let started = Instant::now();
        gw.signal("TERM");
        let status = gw.wait_exit(Duration::from_secs(20)).expect("did not exit");
        assert_eq!(status.code(), Some(0), "{driver}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "{driver}: exited after {took:?}, before the deadline"
        );
        // The client sees its session closed.
        assert_eq!(s.read(&mut b).unwrap_or(0), 0, "{driver}");
        gw.wait_log("\"outcome\":\"shutdown_closed\"");
    }
}

#[test]
fn a_closed_log_pipe_neither_stops_sessions_nor_loses_sigterm() {
    let echo = echo_server();
    for driver in DRIVERS {
        let mut gw = start_then_close_logs(
            driver,
            "drain_timeout = \"20s\"",
            &tcp_connection("web", echo, ""),
        );
        // Each session logs when it opens and closes; those writes now fail with EPIPE.
        for i in 0..4u8 {
            let mut s = connect(gw.addr("web"));
            s.write_all(&[b'a' + i; 4]).unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            assert_eq!(b, [b'a' + i; 4], "{driver}: session {i}");
        }
        assert_eq!(gw.admin_get("/healthz").0, 200, "{driver}");
        assert_eq!(
            gw.metric_sum("portcullis_connections_accepted_total", "web"),
            4,
            "{driver}"
        );
        // The signal thread logs the shutdown before it starts the drain.
        gw.signal("TERM");
        let status = gw
            .wait_exit(Duration::from_secs(20))
            .expect("SIGTERM lost once the log pipe closed");
        assert_eq!(status.code(), Some(0), "{driver}");
    }
}

#[test]
fn sighup_reloads_the_policy_and_keeps_the_old_one_when_the_new_one_is_bad() {
    let echo = echo_server();
    let gw = start("auto", "", &tcp_connection("web", echo, ""));
    let version = || {
        let (_, body) = gw.admin_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("portcullis_policy_info{version=\""))
            .and_then(|l| l.split('"').next())
            .unwrap()
            .to_owned()
    };
    let wait_log = |needle: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.logs().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "`{needle}` not logged:\n{}",
                gw.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let before = version();
    let policies = gw.dir.path().join("policies");
    std::fs::write(
        policies.join("00-access.toml"),
        "[[access]]\nconnections = [\"web\"]\ngroups = [\"ops\"]\n",
    )
    .unwrap();
    gw.signal("HUP");
    wait_log("SIGHUP: policy reloaded", 1);
    let reloaded = version();
    assert_ne!(reloaded, before);
    // A broken file: rejected with its error, the running policy stays.
    std::fs::write(
        policies.join("10-bad.toml"),
        "[[rule]]\nid = \"x\"\nactoin = \"deny\"\n",
    )
    .unwrap();
    gw.signal("HUP");
    wait_log("policy reload rejected", 1);
    assert!(gw.logs().contains("actoin"), "{}", gw.logs());
    assert_eq!(version(), reloaded);
    assert_eq!(gw.admin_get("/healthz").0, 200);
}

fn run_portcullis(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[gateway]\nworkers = 2\n\n[[connections]]\nname = \"web\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:8080\"\nupstream = \"127.0.0.1:80\"\nidle_timout = \"5s\"\n",
    )
    .unwrap();
    let path = bad.display().to_string();
    for args in [
        vec!["config", "check", &path],
        vec!["run", "--config", &path],
    ] {
        let (code, _, stderr) = run_portcullis(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(&format!("{path}:9:")), "{stderr}");
        assert!(stderr.contains("idle_timout"), "{stderr}");
    }

    std::fs::write(&bad, "[gateway]\nworkers = \"many\"\n").unwrap();
    let (code, _, stderr) = run_portcullis(&["config", "check", &path]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(&format!("{path}:2:")) && stderr.contains("key `workers`"),
        "{stderr}"
    );

    let (code, _, stderr) = run_portcullis(&["config", "check", "/nonexistent/portcullis.toml"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("/nonexistent/portcullis.toml"), "{stderr}");
}

#[test]
fn example_config_checks_and_a_postgres_connection_without_its_secret_is_refused_at_start() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/portcullis.toml");
    let (code, stdout, stderr) = run_portcullis(&["config", "check", example]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("orders-db (postgres)"), "{stdout}");
    // A postgres connection whose credential cannot be read: start must name the connection
    // and the missing variable and exit as a config error, binding nothing.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nadmin = \"127.0.0.1:0\"\nrecordings = \"{}\"\npolicies = \"{}\"\n[[connections]]\nname = \"orders-db\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:5432\"\nallow_plaintext = true\n[connections.credentials]\nuser = \"gw\"\npassword_env = \"PORTCULLIS_TEST_UNSET_PASSWORD\"\n",
            dir.path().join("rec").display(),
            dir.path().join("no-policies").display()
        ),
    )
    .unwrap();
    let (code, _, stderr) = run_portcullis(&["run", "--config", &cfg.display().to_string()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "connection `orders-db`: environment variable `PORTCULLIS_TEST_UNSET_PASSWORD`"
        ),
        "{stderr}"
    );
}

#[test]
fn help_lists_examples_and_exit_codes() {
    let (code, stdout, _) = run_portcullis(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("Exit codes:") && stdout.contains("portcullis demo"),
        "{stdout}"
    );
    let (code, stdout, _) = run_portcullis(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("portcullis "), "{stdout}");
    let (code, _, _) = run_portcullis(&["run"]);
    assert_eq!(code, Some(2), "missing --config is a usage error");
}

#[test]
fn policy_mask_shows_values_as_a_caller_would_see_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("masks.toml"),
        r#"
[[access]]
connections = ["db"]
groups = ["*"]

[[mask]]
columns = ["*_ssn"]
strategy = "redact"

[[mask]]
groups = ["support"]
detectors = ["email"]
strategy = "partial"

[[mask]]
detectors = ["pii", "secrets"]
strategy = "redact"
"#,
    )
    .unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let mask = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "mask",
            "--policies",
            dir_arg,
            "--connection",
            "db",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = run_portcullis(&args);
        assert_eq!(code, Some(0), "{err}");
        (out, err)
    };
    let (out, err) = mask(&[
        "--groups",
        "eng",
        "mail jane@example.com",
        "4111 1111-1111 1111",
        "order 4111111111111112",
        "password=hunter2",
    ]);
    assert_eq!(
        out,
        "mail [EMAIL]\t(email x1)\n[CREDIT_CARD]\t(credit_card x1)\norder 4111111111111112\npassword=[SECRET]\t(credential x1)\n"
    );
    assert!(
        err.contains("3 value(s) masked: email x1, credit_card x1, credential x1"),
        "{err}"
    );
    // The first rule for a detector decides: support sees the domain.
    let (out, _) = mask(&["--groups", "support", "jane@example.com"]);
    assert_eq!(out, "****@example.com\t(email x1)\n");
    // A column rule masks the whole value, whatever it holds.
    let (out, _) = mask(&["--column", "tax_ssn", "nothing to see"]);
    assert_eq!(out, "[MASKED]\t(column x1)\n");
    // As one byte stream (COPY data, terminal output), one value per line.
    let (out, _) = mask(&[
        "--stream",
        "a 123-45-6789",
        "b 123 45 6789",
        "c 000-12-3456",
    ]);
    assert_eq!(out, "a [SSN]\nb [SSN]\nc 000-12-3456\n");
}
