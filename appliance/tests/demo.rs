//! `portcullis demo` as a newcomer runs it: start it, follow its printed commands with stock
//! `psql`, stop it with Ctrl-C and check it cleaned up after itself.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::BIN;

#[test]
fn the_demo_prints_commands_that_work_and_cleans_up_on_ctrl_c() {
    if common::require("psql").is_none() {
        return;
    }
    let mut child = Command::new(BIN)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !printed.iter().any(|l: &String| l.contains("Press Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => printed.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("the demo did not print its instructions: {printed:?}");
            }
        }
    }
    let token = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("export PGPASSWORD='"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("the token line")
        .to_owned();
    let conn = printed
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("psql \"")
                .and_then(|r| r.split('"').next())
        })
        .expect("a psql line")
        .to_owned();
    let workdir = printed
        .iter()
        .find_map(|l| l.split("FROM '").nth(1))
        .and_then(|r| r.split("/recordings/").next())
        .expect("the recordings path")
        .to_owned();
    let psql = |sql: &str| {
        Command::new("psql")
            .arg(&conn)
            .args(["-X", "-A", "-t", "-c", sql])
            .env("PGPASSWORD", &token)
            .output()
            .unwrap()
    };
    let out = psql("SELECT email, card FROM customers ORDER BY id LIMIT 1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(row.starts_with("****@example.com|"), "{row}");
    assert!(
        row.trim_end().ends_with("1111") && !row.contains("4111"),
        "{row}"
    );
    let out = psql("DROP TABLE customers");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("statement denied by rule `no-ddl`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Ctrl-C: the demo stops, and its directory (database, keys, recordings) is gone.
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        !std::path::Path::new(&workdir).exists(),
        "`{workdir}` was left behind"
    );
}
