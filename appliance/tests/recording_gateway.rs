//! Recording through the running gateway, against a real PostgreSQL and real `psql`:
//! - with `record_frames`, replay has the traffic as the client saw it: the query as sent and
//!   the masked row, never the unmasked value;
//! - a statement is recorded before it reaches the server: `kill -9` of the gateway while
//!   `pg_sleep` runs upstream, then a restart, leaves exactly one `commands` row for it (with
//!   an error saying its outcome is unknown) and an `interrupted` session.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "integration test: a failed step is a failed test"
)]

mod common;
#[path = "identity_gateway/harness.rs"]
mod harness;
#[path = "../../dataplane/tests/support/pgcluster.rs"]
mod pgcluster;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::DRIVERS;
use harness::{Setup, commands, portcullis, psql, sessions, stop, text};
use pgcluster::PgCluster;

const EMAIL: &str = "grace.hopper@navy.example";

const POLICY: &str = r#"
[[rule]]
id = "no-drop"
match.statement = ["drop"]
action = "deny"

[[mask]]
columns = ["email"]
strategy = "redact"
"#;

fn frames(root: &std::path::Path) -> Vec<recorder::read::FrameRow> {
    let mut out = Vec::new();
    for b in recorder::read::read_table(root, recorder::Table::Frames).unwrap() {
        out.extend(recorder::read::frame_rows(&b).unwrap());
    }
    out
}

fn mint(setup: &Setup) -> String {
    let key = setup.path("issuer/signing-key.pem").display().to_string();
    let out = portcullis(&[
        "token",
        "mint",
        "--key",
        &key,
        "--sub",
        "ada",
        "--groups",
        "engineering",
        "--ttl",
        "15m",
    ]);
    text(&out.stdout).trim().to_owned()
}

fn identity(setup: &Setup) -> String {
    format!(
        "issuer = \"portcullis-local\"\naudience = \"portcullis\"\njwks = {{ file = \"{}\" }}",
        setup.path("issuer/jwks.json").display()
    )
}

#[test]
fn replay_frames_show_what_the_client_saw_and_a_crash_keeps_running_statements() {
    if common::require("initdb").is_none() || common::require("psql").is_none() {
        return;
    }
    let cluster = PgCluster::start();
    cluster.psql(&format!(
        "CREATE TABLE IF NOT EXISTS people (id int, email text);
         TRUNCATE people; INSERT INTO people VALUES (1, '{EMAIL}');"
    ));
    for driver in DRIVERS {
        let setup = Setup::new("engineering");
        std::fs::write(setup.path("policies/10-rules.toml"), POLICY).unwrap();
        let token = mint(&setup);
        let mut gw = setup.gateway_with(
            driver,
            &cluster,
            &identity(&setup),
            "record_frames = true\n",
        );
        let addr = gw.addr("orders-db");

        // 1. Frames: the client's query, and the masked answer.
        let out = psql(addr, &token, "SELECT id, email FROM people");
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        let shown = text(&out.stdout);
        assert!(shown.starts_with("1|"), "{driver}: {shown}");
        assert!(
            !shown.contains(EMAIL),
            "{driver}: masked for the client: {shown}"
        );
        stop(&mut gw, driver);

        let root = setup.recordings();
        let session = sessions(&root)
            .into_iter()
            .find(|s| s.subject == "ada" && s.outcome == "ok")
            .unwrap_or_else(|| panic!("{driver}: ada's session"));
        let fr: Vec<_> = frames(&root)
            .into_iter()
            .filter(|f| f.session_id == session.session_id)
            .collect();
        let from_client: Vec<u8> = fr
            .iter()
            .filter(|f| f.direction == "from_client")
            .flat_map(|f| f.payload.clone())
            .collect();
        let to_client: Vec<u8> = fr
            .iter()
            .filter(|f| f.direction == "to_client")
            .flat_map(|f| f.payload.clone())
            .collect();
        assert!(
            text(&from_client).contains("SELECT id, email FROM people"),
            "{driver}: {fr:?}"
        );
        assert!(!to_client.is_empty(), "{driver}: {fr:?}");
        assert!(
            !text(&to_client).contains(EMAIL),
            "{driver}: frames are recorded after masking"
        );
        assert!(
            fr.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
            "{driver}: frame seqs are gap-free: {fr:?}"
        );
        // The token never appears in a frame (frames start after authentication).
        let all: Vec<u8> = fr.iter().flat_map(|f| f.payload.clone()).collect();
        assert!(!text(&all).contains(&token), "{driver}");
        // `portcullis replay` shows the command and the traffic as the client saw it.
        let replay = portcullis(&[
            "replay",
            &session.session_id,
            "--dir",
            &root.display().to_string(),
        ]);
        let replay = text(&replay.stdout);
        assert!(replay.contains("ALLOW select"), "{driver}: {replay}");
        assert!(
            replay.contains(">> Q") && replay.contains("SELECT id, email FROM people"),
            "{driver}: {replay}"
        );
        assert!(replay.contains("[MASKED]"), "{driver}: {replay}");
        assert!(!replay.contains(EMAIL), "{driver}: {replay}");

        // 2. kill -9 while a statement runs upstream, then restart: it is recorded once.
        let mut gw = setup.gateway_with(
            driver,
            &cluster,
            &identity(&setup),
            "record_frames = true\n",
        );
        let addr = gw.addr("orders-db");
        let mut sleeper = Command::new("psql")
            .arg(format!(
                "host={} port={} dbname=orders user=ada sslmode=require",
                addr.ip(),
                addr.port()
            ))
            .args(["-X", "-c", "SELECT pg_sleep(30) AS long_one"])
            .env("PGPASSWORD", &token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cluster
            .admin_sql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%long_one%' AND pid <> pg_backend_pid()",
            )
            .trim()
            .starts_with('1')
        {
            assert!(Instant::now() < deadline, "{driver}: pg_sleep never reached the server");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Two flush intervals (50 ms each) so the in-flight snapshot is on disk.
        std::thread::sleep(Duration::from_millis(300));
        gw.signal("KILL");
        gw.wait_exit(Duration::from_secs(30)).expect("killed");
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        cluster.admin_sql(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%long_one%' AND pid <> pg_backend_pid()",
        );

        // The restart recovers the leftovers before serving.
        let mut gw = setup.gateway(driver, &cluster, &identity(&setup));
        stop(&mut gw, driver);
        let long: Vec<_> = commands(&root)
            .into_iter()
            .filter(|c| c.text.as_deref().is_some_and(|t| t.contains("long_one")))
            .collect();
        assert_eq!(long.len(), 1, "{driver}: exactly one row: {long:?}");
        assert_eq!(long[0].decision, "allow");
        // The policy version the statement was decided under (the same the session row has).
        let version = long[0].policy_version.clone().unwrap_or_default();
        assert!(!version.is_empty(), "{driver}: {long:?}");
        assert_eq!(
            long[0].error.as_deref(),
            Some("outcome unknown: the gateway stopped before the command completed"),
            "{driver}"
        );
        let interrupted: Vec<_> = sessions(&root)
            .into_iter()
            .filter(|s| s.session_id == long[0].session_id)
            .collect();
        assert_eq!(interrupted.len(), 1, "{driver}: {interrupted:?}");
        assert_eq!(interrupted[0].outcome, "error");
        assert_eq!(
            interrupted[0].policy_version.as_deref(),
            Some(version.as_str())
        );
        assert!(
            interrupted[0]
                .outcome_reason
                .as_deref()
                .unwrap_or("")
                .starts_with("interrupted"),
            "{driver}: {interrupted:?}"
        );
    }
}
