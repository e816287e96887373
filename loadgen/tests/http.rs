//! `portcullis-loadgen http` against a real HTTP/1.1 server (Python's `http.server`).

#[cfg(test)] // marks the helpers as test code, where panics are failing tests
mod common;

use common::{HttpServer, loadgen};

/// Closed loop over keep-alive: the server saw exactly the requests loadgen counted, on one
/// connection per loadgen connection.
#[test]
fn keep_alive_requests_match_what_the_server_saw() {
    let server = HttpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/", server.port);
    let run = loadgen(
        dir.path(),
        &["-c", "2", "-d", "2s", "http", &url, "-H", "X-Test: 1"],
        &[],
    );
    assert!(run.output.status.success(), "{}", run.stderr());
    assert!(run.requests() > 0);
    assert_eq!(run.errors_total(), 0, "{}", run.json["results"]["errors"]);
    run.assert_percentiles_ordered();
    let (requests, connections) = server.stats();
    assert_eq!(requests, run.requests(), "server-side count vs loadgen's");
    // Two load connections plus the one `stats()` just opened.
    assert_eq!(connections, 3, "keep-alive reuses connections");
}

/// Error statuses are counted by class and are not successes.
#[test]
fn server_errors_are_counted_by_status_class() {
    let server = HttpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/fail", server.port);
    let run = loadgen(
        dir.path(),
        &["-c", "1", "-R", "20", "-d", "2s", "http", &url],
        &[],
    );
    assert_eq!(
        run.output.status.code(),
        Some(1),
        "nothing succeeded: {}",
        run.stderr()
    );
    assert_eq!(run.requests(), 0);
    let n = run.errors("http 5xx");
    assert!(
        (36..=41).contains(&n),
        "20/s for 2 s gave {n} errors: {}",
        run.json["results"]
    );
    assert!(run.stdout().contains("http 5xx"), "{}", run.stdout());
}

/// Nothing listening: connect errors, a summary, no crash.
#[test]
fn refused_connections_are_connect_errors() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/", common::free_port());
    let run = loadgen(dir.path(), &["-c", "1", "-d", "1s", "http", &url], &[]);
    assert_eq!(run.output.status.code(), Some(1));
    assert!(
        run.errors("connect") > 0,
        "{}",
        run.json["results"]["errors"]
    );
}

/// Coordinated-omission correction: one request stalls for a second at 100/s on one
/// connection. Requests that should have been sent during the stall are late by up to a
/// second, and the open-loop percentiles must show it; timing only the requests actually sent
/// would report a single slow sample and a p90 of about a millisecond.
#[test]
fn open_loop_latency_counts_the_time_requests_waited_behind_a_stall() {
    let server = HttpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/stall-once", server.port);
    let run = loadgen(
        dir.path(),
        &["-c", "1", "-R", "100", "-d", "3s", "http", &url],
        &[],
    );
    assert!(run.output.status.success(), "{}", run.stderr());
    assert_eq!(run.errors_total(), 0, "{}", run.json["results"]["errors"]);
    let n = run.requests();
    assert!(
        (290..=301).contains(&n),
        "the backlog is sent after the stall: {n} requests"
    );
    let l = &run.json["results"]["latency_us"];
    assert!(
        l["max"].as_u64().unwrap() >= 950_000,
        "the stalled request itself: {l}"
    );
    assert!(
        l["p90"].as_u64().unwrap() >= 300_000,
        "about a third of the schedule fell inside the stall, so p90 is hundreds of ms: {l}"
    );
}
