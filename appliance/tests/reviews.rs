//! Reviews end to end through the real `portcullis` binary: a throwaway PostgreSQL, stock
//! `psql`, tokens from `portcullis token`, approvals with `portcullis reviews ...` and the
//! admin API, a local webhook receiver, just-in-time grants across a restart, and the
//! `reviews` and `commands` tables read back with the recorder's reader.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration test: a failed step is a failed test"
)]

mod common;
#[path = "reviews/harness.rs"]
mod harness;
#[path = "../../dataplane/tests/support/pgcluster.rs"]
mod pgcluster;

use std::time::{Duration, Instant};

use common::{DRIVERS, start};
use harness::{
    Raw, admin, cli, command_rows, config, duckdb, field, mint, new_session, ok, pending_reviews,
    psql, psql_bg, review_rows, scalar, setup, text, wait_review, webhook_receiver,
};
use pgcluster::PgCluster;
use serde_json::Value;

pub const POLICY: &str = r#"
[[access]]
connections = ["orders"]
groups = ["engineering", "dba"]

[[access]]
connections = ["vault"]
groups = ["engineering"]
require_grant = true
approvers = ["dba"]
max_grant = "8h"

[[rule]]
id = "review-deletes"
connections = ["orders"]
match.statement = ["delete"]
action = "review"
review = { approvers = ["dba"], approvals = 1, timeout = "2m" }

[[rule]]
id = "two-person-updates"
connections = ["orders"]
match.statement = ["update"]
action = "review"
review = { approvers = ["dba"], approvals = 2, timeout = "2m" }

[[rule]]
id = "probe-inserts"
connections = ["orders"]
match.statement = ["insert"]
match.tables = ["audit_probe"]
action = "review"
review = { approvers = ["dba"], timeout = "3s" }

[[admin]]
groups = ["dba"]
operations = ["*"]

[[admin]]
groups = ["engineering"]
operations = ["reviews.list", "reviews.approve", "grants.request"]
"#;

#[test]
fn held_statements_wait_for_approvers_and_grants_open_connections() {
    if common::require("psql").is_none() {
        return;
    }
    let cluster = PgCluster::start();
    for driver in DRIVERS {
        scenario(driver, &cluster);
    }
}

fn scenario(driver: &str, cluster: &PgCluster) {
    cluster.admin_sql(
        &cluster.database,
        &format!(
            "DROP TABLE IF EXISTS items, audit_probe; \
             CREATE TABLE items (id int PRIMARY KEY, name text); \
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 6) g; \
             CREATE TABLE audit_probe (id int); \
             ALTER TABLE items OWNER TO {u}; ALTER TABLE audit_probe OWNER TO {u};",
            u = cluster.user
        ),
    );
    let (hook, hooks) = webhook_receiver();
    let setup = setup(hook);
    let (extra, connections) = config(&setup, cluster);
    let mut gw = start(driver, &extra, &connections);
    let orders = gw.addr("orders");
    let alice = mint(&setup, "alice", "engineering,dba");
    let bob = mint(&setup, "bob", "dba");
    let carol = mint(&setup, "carol", "dba");
    let eve = mint(&setup, "eve", "support");

    // 1. A DELETE matching the review rule waits; the client is told the review id.
    let held = psql_bg(orders, &alice, "DELETE FROM items WHERE id = 1");
    let id = wait_review(&gw, &bob, "DELETE FROM items WHERE id = 1");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!held.is_finished(), "the DELETE should be held");
    assert_eq!(
        scalar(cluster, "SELECT count(*) FROM items WHERE id = 1"),
        "1"
    );

    // The admin API: no token, a bad token, a caller whose groups are not granted the
    // operation, and the requester approving their own request (she is in `dba`).
    assert_eq!(admin(&gw, "GET", "/api/reviews", None, "").0, 401);
    assert_eq!(
        admin(&gw, "GET", "/api/reviews", Some("garbage"), "").0,
        401
    );
    assert_eq!(admin(&gw, "GET", "/api/reviews", Some(&eve), "").0, 403);
    let own = cli(&gw, &alice, &["reviews", "approve", &id]);
    assert!(!own.status.success());
    assert!(
        text(&own.stderr).contains("403") && text(&own.stderr).contains("own request"),
        "{}",
        text(&own.stderr)
    );
    assert_eq!(
        admin(
            &gw,
            "POST",
            &format!("/api/reviews/{id}/approve"),
            Some(&alice),
            ""
        )
        .0,
        403
    );

    // 2. Another session on the same core keeps running while this one is held.
    let held_worker = {
        let out = ok(&cli(&gw, &bob, &["sessions", "list", "--json"]));
        let v: Value = serde_json::from_str(&out).unwrap();
        let s = v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["held_review"].as_str() == Some(id.as_str()))
            .expect("the held session is listed with its review")
            .clone();
        s["worker"].as_u64().unwrap()
    };
    let mut probes = Vec::new();
    let mut known: Vec<String> = Vec::new();
    let neighbour = loop {
        let before: Vec<String> = {
            let out = ok(&cli(&gw, &bob, &["sessions", "list", "--json"]));
            let v: Value = serde_json::from_str(&out).unwrap();
            v["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_owned())
                .collect()
        };
        known.extend(before);
        let raw = Raw::login(orders, &bob);
        let (sid, worker) = new_session(&gw, &bob, &known);
        if worker == held_worker {
            break (raw, sid);
        }
        probes.push(raw);
        assert!(
            probes.len() < 20,
            "no session landed on worker {held_worker}"
        );
    };
    let (mut neighbour, neighbour_id) = neighbour;
    neighbour.send_query("SELECT count(*) FROM items");
    let answer = neighbour.until(b'Z');
    let row = answer.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert!(text(&row.1).ends_with('6'), "{:?}", text(&row.1));
    assert!(!held.is_finished(), "still held");

    // 3. A dba approves: the DELETE runs (the row is gone) and psql saw the notice.
    let out = ok(&cli(&gw, &bob, &["reviews", "approve", &id]));
    assert!(out.contains("approved"), "{out}");
    let done = held.join().unwrap();
    assert!(done.status.success(), "{}", text(&done.stderr));
    assert!(
        text(&done.stderr).contains(&format!("waiting for approval: review {id}")),
        "{}",
        text(&done.stderr)
    );
    assert!(text(&done.stderr).contains(&format!("portcullis reviews approve {id}")));
    assert_eq!(
        scalar(cluster, "SELECT count(*) FROM items WHERE id = 1"),
        "0"
    );
    let again = cli(&gw, &carol, &["reviews", "approve", &id]);
    assert!(
        text(&again.stderr).contains("409"),
        "{}",
        text(&again.stderr)
    );
    let approved_id = id;

    // 4. A deny leaves the row and psql shows 42501 with who denied and why.
    let held = psql_bg(orders, &alice, "DELETE FROM items WHERE id = 2");
    let denied_id = wait_review(&gw, &bob, "WHERE id = 2");
    ok(&cli(
        &gw,
        &bob,
        &[
            "reviews",
            "deny",
            &denied_id,
            "--reason",
            "not during the sale",
        ],
    ));
    let done = held.join().unwrap();
    assert!(!done.status.success());
    let err = text(&done.stderr);
    assert!(err.contains("42501"), "{err}");
    assert!(err.contains("denied by bob: not during the sale"), "{err}");
    assert_eq!(
        scalar(cluster, "SELECT count(*) FROM items WHERE id = 2"),
        "1"
    );

    // 5. Two approvals required: one is not enough.
    let held = psql_bg(orders, &alice, "UPDATE items SET name = 'two' WHERE id = 3");
    let two_id = wait_review(&gw, &bob, "UPDATE items");
    let first = ok(&cli(&gw, &bob, &["reviews", "approve", &two_id]));
    assert!(first.contains("pending"), "{first}");
    let twice = cli(&gw, &bob, &["reviews", "approve", &two_id]);
    assert!(
        text(&twice.stderr).contains("409"),
        "{}",
        text(&twice.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!held.is_finished(), "one approval of two let it run");
    assert_eq!(
        scalar(cluster, "SELECT name FROM items WHERE id = 3"),
        "item 3"
    );
    ok(&cli(&gw, &carol, &["reviews", "approve", &two_id]));
    let done = held.join().unwrap();
    assert!(done.status.success(), "{}", text(&done.stderr));
    assert_eq!(
        scalar(cluster, "SELECT name FROM items WHERE id = 3"),
        "two"
    );

    // 6. Timeout: nobody acts within the rule's 3s.
    let t0 = Instant::now();
    let done = psql(orders, &alice, "INSERT INTO audit_probe VALUES (1)");
    assert!(!done.status.success());
    let err = text(&done.stderr);
    assert!(err.contains("42501") && err.contains("timed out"), "{err}");
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(scalar(cluster, "SELECT count(*) FROM audit_probe"), "0");

    // 7. A caller that disconnects while held cancels its review; the row stays.
    let mut raw = Raw::login(orders, &alice);
    raw.send_query("DELETE FROM items WHERE id = 4");
    let notice = raw.until(b'N');
    let msg = field(&notice, b'N', b'M').expect("a notice");
    assert!(msg.starts_with("waiting for approval: review "), "{msg}");
    let gone_id = wait_review(&gw, &bob, "WHERE id = 4");
    assert!(msg.contains(&gone_id));
    drop(raw);
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending_reviews(&gw, &bob)
        .iter()
        .any(|r| r["id"] == gone_id.as_str())
    {
        assert!(Instant::now() < deadline, "the review outlived its caller");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        scalar(cluster, "SELECT count(*) FROM items WHERE id = 4"),
        "1"
    );

    // 7b. The extended protocol: the Parse is held, Bind/Execute/Sync wait behind it, and on
    // approval the whole batch runs.
    let mut ext = Raw::login(orders, &alice);
    ext.send_extended("DELETE FROM items WHERE id = 5");
    let notice = ext.until(b'N');
    assert!(field(&notice, b'N', b'M').is_some());
    let ext_id = wait_review(&gw, &bob, "WHERE id = 5");
    assert_eq!(
        scalar(cluster, "SELECT count(*) FROM items WHERE id = 5"),
        "1"
    );
    ok(&cli(&gw, &bob, &["reviews", "approve", &ext_id]));
    let answer = ext.until(b'Z');
    let tags: Vec<u8> = answer.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"12CZ", "{answer:?}");
    assert_eq!(text(&answer[2].1), "DELETE 1\0");
    assert_eq!(
        scalar(cluster, "SELECT count(*) FROM items WHERE id = 5"),
        "0"
    );
    drop(ext);

    // 7c. An approval window: approving with `--window` lets the same person's next matching
    // statement run at once, without a notice.
    let held = psql_bg(orders, &alice, "DELETE FROM items WHERE id = 6");
    let window_id = wait_review(&gw, &bob, "WHERE id = 6");
    ok(&cli(
        &gw,
        &bob,
        &["reviews", "approve", &window_id, "--window", "30m"],
    ));
    assert!(held.join().unwrap().status.success());
    let covered = psql(orders, &alice, "DELETE FROM items WHERE id = 3");
    assert!(covered.status.success(), "{}", text(&covered.stderr));
    assert!(!text(&covered.stderr).contains("waiting for approval"));
    assert_eq!(
        scalar(cluster, "SELECT count(*) FROM items WHERE id IN (3, 6)"),
        "0"
    );
    // Someone else is not covered by alice's window.
    let carol_held = psql_bg(orders, &carol, "DELETE FROM items WHERE id = 2");
    let carol_id = wait_review(&gw, &bob, "WHERE id = 2");
    ok(&cli(
        &gw,
        &bob,
        &["reviews", "deny", &carol_id, "--reason", "no"],
    ));
    assert!(!carol_held.join().unwrap().status.success());

    // 8. Sessions: list and kill one.
    drop(probes);
    let sid = neighbour_id;
    let out = ok(&cli(&gw, &bob, &["sessions", "list"]));
    assert!(out.contains(&sid), "{out}");
    ok(&cli(&gw, &bob, &["sessions", "kill", &sid]));
    let end = neighbour.until(b'E');
    assert_eq!(field(&end, b'E', b'C').as_deref(), Some("57P01"), "{end:?}");
    let missing = cli(&gw, &bob, &["sessions", "kill", &sid]);
    assert!(text(&missing.stderr).contains("404"));

    // 9. Policy reload through the API: ok, then a broken file is refused and the old stays.
    let (st, v) = admin(&gw, "POST", "/api/policy/reload", Some(&bob), "");
    assert_eq!(st, 200, "{v}");
    let version = v["version"].as_str().unwrap().to_owned();
    let broken = setup.dir.path().join("policies/99-broken.toml");
    std::fs::write(&broken, "[[rule]]\nid = \"x\"\naction = \"maybe\"\n").unwrap();
    let (st, v) = admin(&gw, "POST", "/api/policy/reload", Some(&bob), "");
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["version"].as_str(), Some(version.as_str()));
    std::fs::remove_file(&broken).unwrap();
    assert_eq!(
        admin(&gw, "POST", "/api/policy/reload", Some(&eve), "").0,
        403
    );

    // 10. The webhook got one Slack-compatible message per review with the commands.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !hooks
        .lock()
        .unwrap()
        .iter()
        .any(|h| h["review"]["id"] == approved_id.as_str())
    {
        assert!(Instant::now() < deadline, "no webhook for {approved_id}");
        std::thread::sleep(Duration::from_millis(100));
    }
    {
        let hooks = hooks.lock().unwrap();
        let h = hooks
            .iter()
            .find(|h| h["review"]["id"] == approved_id.as_str())
            .unwrap();
        let t = h["text"].as_str().unwrap();
        assert!(t.contains("alice"), "{t}");
        assert!(t.contains("DELETE FROM items WHERE id = 1"), "{t}");
        assert!(
            t.contains(&format!("portcullis reviews approve {approved_id}")),
            "{t}"
        );
        assert!(
            t.contains(&format!("portcullis reviews deny {approved_id}")),
            "{t}"
        );
        assert_eq!(h["review"]["rule"], "review-deletes");
        assert_eq!(h["review"]["connection"], "orders");
    }

    // 11. Just-in-time access: refused without a grant, allowed once approved.
    let vault = gw.addr("vault");
    let dave = mint(&setup, "dave", "engineering");
    let out = psql(vault, &alice, "SELECT 1");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("just-in-time grant"),
        "{}",
        text(&out.stderr)
    );
    let req = ok(&cli(
        &gw,
        &alice,
        &[
            "access",
            "request",
            "vault",
            "--for",
            "1h",
            "--reason",
            "incident 42",
        ],
    ));
    let grant_id = req.split_whitespace().nth(2).unwrap().to_owned();
    let own = cli(&gw, &alice, &["reviews", "approve", &grant_id]);
    assert!(!own.status.success());
    ok(&cli(&gw, &bob, &["reviews", "approve", &grant_id]));
    let grants = ok(&cli(&gw, &bob, &["access", "list"]));
    assert!(
        grants
            .lines()
            .any(|l| l.starts_with("alice") && l.contains(&grant_id)),
        "{grants}"
    );
    let out = psql(vault, &alice, "SELECT 41 + 1");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "42");
    // A short grant expires.
    let req = ok(&cli(
        &gw,
        &dave,
        &[
            "access",
            "request",
            "vault",
            "--for",
            "3s",
            "--reason",
            "quick look",
        ],
    ));
    let short_id = req.split_whitespace().nth(2).unwrap().to_owned();
    ok(&cli(&gw, &bob, &["reviews", "approve", &short_id]));
    assert!(psql(vault, &dave, "SELECT 1").status.success());
    // A session the grant admitted ends with it: its first statement after the grant's end
    // gets a FATAL and never reaches the server.
    let mut during = Raw::login(vault, &dave);
    during.send_query("SELECT 'inside the grant'");
    let answer = during.until(b'Z');
    assert!(answer.iter().any(|(t, _)| *t == b'D'), "{answer:?}");
    std::thread::sleep(Duration::from_secs(4));
    let out = psql(vault, &dave, "SELECT 1");
    assert!(!out.status.success(), "an expired grant still admits");
    during.send_query("SELECT 'after the grant ended'");
    let answer = during.until(b'Z');
    let fatal = answer
        .iter()
        .find(|(t, _)| *t == b'E')
        .map(|(_, body)| text(body))
        .unwrap_or_else(|| panic!("no error after the grant ended: {answer:?}"));
    assert!(
        fatal.contains("FATAL") && fatal.contains("grant for this connection has expired"),
        "{fatal}"
    );
    assert!(
        !cluster.log().contains("after the grant ended"),
        "a statement ran after the grant ended"
    );

    // 12. The grant survives a restart.
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(60)).is_some());
    let recordings = setup.dir.path().join("recordings");
    let gw2 = start(driver, &extra, &connections);
    let out = psql(gw2.addr("vault"), &alice, "SELECT 'after restart'");
    assert!(out.status.success(), "{}", text(&out.stderr));
    gw2.signal("TERM");
    let mut gw2 = gw2;
    assert!(gw2.wait_exit(Duration::from_secs(60)).is_some());

    // 13. The audit trail: every review event, and commands linked to their reviews.
    let reviews = review_rows(&recordings);
    let events = |rid: &str| -> Vec<(String, Option<String>)> {
        reviews
            .iter()
            .filter(|r| r.review_id == rid)
            .map(|r| (r.event.clone(), r.actor.clone()))
            .collect()
    };
    let approved = events(&approved_id);
    assert_eq!(approved.first().unwrap().0, "requested");
    assert!(
        approved.contains(&("approved".into(), Some("bob".into()))),
        "{approved:?}"
    );
    assert!(approved.iter().any(|e| e.0 == "notified"), "{approved:?}");
    let notified = reviews
        .iter()
        .find(|r| r.review_id == approved_id && r.event == "notified")
        .unwrap();
    assert!(
        notified
            .reason
            .as_deref()
            .unwrap()
            .starts_with("delivered to http://"),
        "{notified:?}"
    );
    assert!(events(&denied_id).contains(&("denied".into(), Some("bob".into()))));
    let two = events(&two_id);
    assert_eq!(
        two.iter().filter(|e| e.0 == "approved").count(),
        2,
        "{two:?}"
    );
    assert!(events(&gone_id).iter().any(|e| e.0 == "cancelled"));
    assert!(reviews.iter().any(|r| r.event == "timed_out"
        && r.text.as_deref() == Some("INSERT INTO audit_probe VALUES (1)")));
    let grant = events(&grant_id);
    assert!(
        grant.contains(&("approved".into(), Some("bob".into()))),
        "{grant:?}"
    );

    let commands = command_rows(&recordings);
    let deleted = commands
        .iter()
        .find(|c| c.text.as_deref() == Some("DELETE FROM items WHERE id = 1"))
        .expect("the approved DELETE is recorded");
    assert_eq!(deleted.decision, "review");
    assert_eq!(deleted.review_id.as_deref(), Some(approved_id.as_str()));
    assert_eq!(deleted.approvers, vec!["bob".to_owned()]);
    assert_eq!(deleted.rows, Some(1));
    assert!(deleted.error.is_none(), "{deleted:?}");
    let denied = commands
        .iter()
        .find(|c| c.review_id.as_deref() == Some(denied_id.as_str()))
        .unwrap();
    assert_eq!(
        denied.text.as_deref(),
        Some("DELETE FROM items WHERE id = 2")
    );
    let covered = commands
        .iter()
        .find(|c| c.text.as_deref() == Some("DELETE FROM items WHERE id = 3"))
        .unwrap();
    assert_eq!(covered.approvers, vec!["bob".to_owned()]);
    assert_eq!(covered.rows, Some(1));
    let covered_id = covered.review_id.clone().unwrap();
    assert_ne!(covered_id, window_id);
    let why = reviews
        .iter()
        .find(|r| r.review_id == covered_id && r.event == "approved")
        .unwrap();
    assert!(
        why.reason.as_deref().unwrap().contains(&window_id),
        "{why:?}"
    );
    assert_eq!(denied.review_id.as_deref(), Some(denied_id.as_str()));
    assert_eq!(
        denied.error.as_deref(),
        Some("denied by bob: not during the sale")
    );
    let extended = commands
        .iter()
        .find(|c| c.text.as_deref() == Some("DELETE FROM items WHERE id = 5"))
        .unwrap();
    assert_eq!(extended.review_id.as_deref(), Some(ext_id.as_str()));
    assert_eq!(extended.rows, Some(1));
    // The auditor's view: DuckDB over the sealed Parquet files.
    if let Some(rows) = duckdb(
        &recordings,
        "SELECT c.text, c.decision, r.event, r.actor FROM commands c \
         JOIN reviews r ON r.review_id = c.review_id AND r.event IN ('approved', 'denied') \
         WHERE c.text LIKE 'DELETE FROM items WHERE id = _' ORDER BY c.text, r.actor",
    ) {
        let row = |id: u8, event: &str| {
            vec![
                format!("DELETE FROM items WHERE id = {id}"),
                "review".to_owned(),
                event.to_owned(),
                "bob".to_owned(),
            ]
        };
        let want = vec![
            row(1, "approved"),
            row(2, "denied"),
            row(2, "denied"),
            row(3, "approved"),
            row(5, "approved"),
            row(6, "approved"),
        ];
        assert_eq!(rows, want);
        let notified = duckdb(
            &recordings,
            &format!("SELECT count(*) FROM reviews WHERE event = 'notified' AND review_id = '{approved_id}'"),
        )
        .unwrap();
        assert_eq!(notified, [["1".to_owned()]]);
    }
    let updated = commands
        .iter()
        .find(|c| c.text.as_deref() == Some("UPDATE items SET name = 'two' WHERE id = 3"))
        .unwrap();
    assert_eq!(
        updated.approvers,
        vec!["bob".to_owned(), "carol".to_owned()]
    );
}
