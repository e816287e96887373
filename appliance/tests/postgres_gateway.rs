//! The PostgreSQL gateway end to end, through the real `portcullis` binary on both IO drivers:
//! a throwaway PostgreSQL (scram-sha-256, every statement logged), tokens from `portcullis
//! token`, a policy directory with access, a deny rule and masking, and stock `psql` and
//! `pgbench` as clients. Afterwards the recordings are read back with the recorder's reader.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration test: a failed step is a failed test"
)]

mod common;
#[path = "../../dataplane/tests/support/pgcluster.rs"]
mod pgcluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BIN, DRIVERS, Gateway, start};
use pgcluster::PgCluster;

const POLICY: &str = r#"
[[access]]
connections = ["orders-db", "orders-plain"]
groups = ["engineering"]

[[rule]]
id = "no-drop"
match.statement = ["drop", "truncate"]
action = "deny"
message = "schema changes go through migrations"

[[rule]]
id = "no-server-files"
match.statement = ["admin_function"]
action = "deny"
message = "server-side file access is not allowed"

[[mask]]
columns = ["email"]
strategy = "redact"

[[mask]]
detectors = ["credit_card"]
strategy = "partial"
keep = 4
"#;

const CARD: &str = "4111 1111 1111 1111";

struct Setup {
    dir: tempfile::TempDir,
    key: PathBuf,
}

fn portcullis(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "portcullis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mint(setup: &Setup, sub: &str, groups: &str, ttl: &str) -> String {
    let key = setup.key.display().to_string();
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
        groups,
        "--ttl",
        ttl,
    ]);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("issuer");
    portcullis(&["token", "keygen", "--out", &keys.display().to_string()]);
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/00-orders.toml"), POLICY).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("gateway.crt"), cert.cert.pem()).unwrap();
    std::fs::write(
        dir.path().join("gateway.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    Setup {
        key: keys.join("signing-key.pem"),
        dir,
    }
}

fn gateway_config(setup: &Setup, cluster: &PgCluster) -> (String, String) {
    let d = setup.dir.path();
    std::fs::write(d.join("db.password"), format!("{}\n", cluster.password)).unwrap();
    let upstream = cluster.addr();
    let conn = |name: &str, tls: bool| {
        let (db, user) = (&cluster.database, &cluster.user);
        common::pg_connection(d, name, &upstream, db, user, tls, "idle_timeout = \"5m\"\n")
    };
    let connections = format!(
        "{}{}\n{}",
        common::local_identity(d),
        conn("orders-db", true),
        conn("orders-plain", false),
    );
    (common::dirs_under(d), connections)
}

fn psql(addr: SocketAddr, sslmode: &str, token: &str, sql: &str) -> Output {
    Command::new("psql")
        .arg(format!(
            "host={} port={} dbname=orders user=alice sslmode={sslmode} connect_timeout=60",
            addr.ip(),
            addr.port()
        ))
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
        .args(["-c", sql])
        .env("PGPASSWORD", token)
        .output()
        .expect("run psql (install postgresql-client)")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A plain TCP proxy that keeps every byte sent towards the client, to search for leaks.
fn capture_proxy(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut upstream) = TcpStream::connect(target) else {
                return;
            };
            let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut u2);
                let _ = u2.shutdown(std::net::Shutdown::Write);
            });
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match upstream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            sink.lock().unwrap().extend_from_slice(&buf[..n]);
                            if client.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, seen)
}

/// Logs in with `token` over plaintext and returns the SQLSTATE of the ErrorResponse.
fn login_error(addr: SocketAddr, token: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196_608u32.to_be_bytes());
    startup.extend_from_slice(b"user\0alice\0database\0orders\0\0");
    let mut msg = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&startup);
    msg.push(b'p');
    msg.extend_from_slice(&((token.len() + 5) as u32).to_be_bytes());
    msg.extend_from_slice(token.as_bytes());
    msg.push(0);
    c.write_all(&msg).unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    // AuthenticationCleartextPassword first, then the ErrorResponse with its `C` field.
    let mut rest = &answer[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let (msg, tail) = rest.split_at(1 + len);
        if msg[0] == b'E' {
            for field in msg[5..].split(|b| *b == 0) {
                if let Some(code) = field.strip_prefix(b"C") {
                    return text(code);
                }
            }
        }
        rest = tail;
    }
    panic!("no ErrorResponse in {:?}", text(&answer))
}

/// A raw protocol client on the plaintext listener: enough to hold a session open, read the
/// gateway's cancel key and see exact SQLSTATEs.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Logs in; returns the session and the BackendKeyData (process id, secret).
    fn login(addr: SocketAddr, token: &str) -> (Raw, [u8; 8]) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let mut startup = 196_608u32.to_be_bytes().to_vec();
        startup.extend_from_slice(b"user\0alice\0database\0orders\0\0");
        let mut msg = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&startup);
        msg.push(b'p');
        msg.extend_from_slice(&((token.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(token.as_bytes());
        msg.push(0);
        raw.s.write_all(&msg).unwrap();
        let greeting = raw.until_ready();
        let key = greeting
            .iter()
            .find(|(t, _)| *t == b'K')
            .map(|(_, b)| <[u8; 8]>::try_from(&b[..8]).unwrap())
            .expect("BackendKeyData in the greeting");
        (raw, key)
    }

    /// Runs `sql` to ReadyForQuery and asserts that nothing failed.
    fn ok(&mut self, sql: &str) -> Vec<(u8, Vec<u8>)> {
        self.send_query(sql);
        let answer = self.until_ready();
        assert_eq!(error_code(&answer), None, "{sql}: {answer:?}");
        answer
    }

    /// Runs `sql` to ReadyForQuery, asserts it was refused (42501) and returns the error.
    fn refused(&mut self, sql: &str) -> String {
        self.send_query(sql);
        let answer = self.until_ready();
        assert_eq!(
            error_code(&answer).as_deref(),
            Some("42501"),
            "{sql}: {answer:?}"
        );
        text(&answer[0].1)
    }

    fn send_query(&mut self, sql: &str) {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.s.write_all(&msg).unwrap();
    }

    /// Messages up to ReadyForQuery, or up to the close after a FATAL.
    fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            while self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() < 1 + len {
                    break;
                }
                let msg: Vec<u8> = self.buf.drain(..1 + len).collect();
                let tag = msg[0];
                out.push((tag, msg[5..].to_vec()));
                if tag == b'Z' {
                    return out;
                }
            }
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return out,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// The SQLSTATE of the first ErrorResponse among `messages`.
fn error_code(messages: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = messages.iter().find(|(t, _)| *t == b'E')?;
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(text)
}

fn pgbench(addr: SocketAddr, token: &str, mode: &str) -> Output {
    Command::new("pgbench")
        .args(["-n", "-S", "-c", "2", "-t", "25", "-M", mode])
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", "alice", "orders"])
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", "require")
        .env("PGCONNECT_TIMEOUT", "60")
        .output()
        .expect("run pgbench")
}

fn read_recordings(
    root: &Path,
) -> (
    Vec<recorder::read::SessionRow>,
    Vec<recorder::read::CommandRow>,
) {
    let mut sessions = Vec::new();
    for b in recorder::read::read_table(root, recorder::Table::Sessions).unwrap() {
        sessions.extend(recorder::read::session_rows(&b).unwrap());
    }
    let mut commands = Vec::new();
    for b in recorder::read::read_table(root, recorder::Table::Commands).unwrap() {
        commands.extend(recorder::read::command_rows(&b).unwrap());
    }
    (sessions, commands)
}

#[test]
fn psql_and_pgbench_through_the_gateway_with_policy_masking_and_recording() {
    if common::require("psql").is_none() || common::require("pgbench").is_none() {
        return;
    }
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
    let init = Command::new("pgbench")
        .args(["-i", "-s", "1", "-q", "-h", &cluster.host, "-p"])
        .arg(cluster.port.to_string())
        .args(["-U", &cluster.user, &cluster.database])
        .env("PGPASSWORD", &cluster.password)
        .output()
        .unwrap();
    assert!(init.status.success(), "pgbench -i: {}", text(&init.stderr));

    for driver in DRIVERS {
        let setup = setup();
        let (extra, connections) = gateway_config(&setup, &cluster);
        let mut gw: Gateway = start(driver, &extra, &connections);
        let tls = gw.addr("orders-db");
        let plain = gw.addr("orders-plain");
        let token = mint(&setup, "alice", "engineering", "15m");

        // An allowed SELECT over TLS: rows come back, the email column and the card are masked.
        let out = psql(
            tls,
            "require",
            &token,
            "SELECT id, name, email, card FROM customers ORDER BY id",
        );
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        let rows = text(&out.stdout);
        let lines: Vec<&str> = rows.lines().collect();
        assert_eq!(lines.len(), 2, "{driver}: {rows}");
        assert!(lines[0].starts_with("1|Ann|"), "{driver}: {rows}");
        assert!(
            !rows.contains("ann@example.com"),
            "{driver}: email not masked: {rows}"
        );
        assert!(!rows.contains(CARD), "{driver}: card not masked: {rows}");
        assert!(
            lines[0].ends_with("1111"),
            "{driver}: partial card keeps the last 4: {rows}"
        );
        assert_eq!(
            lines[1], "2|Bob||none",
            "{driver}: NULL and non-matching values untouched"
        );

        // The email column rule follows the column under an alias, inside expressions and
        // through a CTE: PostgreSQL names these result columns `contact`, `upper`, `domain`
        // and `mail`, which no rule names.
        let out = psql(
            tls,
            "require",
            &token,
            "SELECT id, email AS contact, upper(email), split_part(email, '@', 2) AS domain \
             FROM customers WHERE id = 1; \
             WITH s AS (SELECT email AS e FROM customers WHERE id = 1) SELECT e AS mail FROM s",
        );
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        let rows = text(&out.stdout);
        assert_eq!(
            rows.lines().collect::<Vec<_>>(),
            ["1|[MASKED]|[MASKED]|[MASKED]", "[MASKED]"],
            "{driver}: aliased email not masked: {rows}"
        );
        // A cursor's rename applies to the FETCH that returns its rows.
        let out = psql(
            tls,
            "require",
            &token,
            "BEGIN; DECLARE c CURSOR FOR SELECT email AS e FROM customers WHERE id = 1; \
             FETCH ALL FROM c; COMMIT",
        );
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        let rows = text(&out.stdout);
        assert_eq!(
            rows.lines().collect::<Vec<_>>(),
            ["BEGIN", "DECLARE CURSOR", "[MASKED]", "COMMIT"],
            "{driver}: email through a cursor not masked: {rows}"
        );

        // A denied DROP: 42501 naming the rule, never reaches the server, table intact.
        let out = psql(tls, "require", &token, "DROP TABLE customers");
        assert!(!out.status.success(), "{driver}: DROP succeeded");
        let err = text(&out.stderr);
        assert!(err.contains("42501"), "{driver}: {err}");
        assert!(
            err.contains(
                "statement denied by rule `no-drop`: schema changes go through migrations"
            ),
            "{driver}: {err}"
        );
        // A multi-statement string with one denied statement is refused whole.
        let out = psql(tls, "require", &token, "SELECT 1; TRUNCATE customers");
        assert!(!out.status.success(), "{driver}: TRUNCATE in a batch ran");

        // Tokens: garbage, expired, and a valid identity without access. psql shows the
        // message; the SQLSTATE is read from the raw ErrorResponse on the plaintext listener.
        let out = psql(tls, "require", "not-a-token", "SELECT 1");
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("token authentication failed"),
            "{driver}: {}",
            text(&out.stderr)
        );
        assert_eq!(login_error(plain, "not-a-token"), "28P01", "{driver}");
        let short = mint(&setup, "alice", "engineering", "1s");
        std::thread::sleep(Duration::from_millis(2500));
        let out = psql(tls, "require", &short, "SELECT 1");
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("expired"), "{driver}: {err}");
        assert_eq!(login_error(plain, &short), "28P01", "{driver}");
        let outsider = mint(&setup, "mallory", "sales", "15m");
        let out = psql(tls, "require", &outsider, "SELECT 1");
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("access denied"),
            "{driver}: {}",
            text(&out.stderr)
        );
        assert_eq!(login_error(plain, &outsider), "28000", "{driver}");

        // Without TLS on the TLS connection: refused before the token is asked for.
        let out = psql(tls, "disable", &token, "SELECT 1");
        assert!(!out.status.success(), "{driver}: plaintext accepted");

        // A token that expires mid-session: the next statement is refused with a FATAL that
        // says to reconnect, and nothing more runs.
        let brief = mint(&setup, "alice", "engineering", "5s");
        let (mut raw, _) = Raw::login(plain, &brief);
        raw.send_query("SELECT 'still valid'");
        assert_eq!(error_code(&raw.until_ready()), None, "{driver}");
        std::thread::sleep(Duration::from_millis(5500));
        raw.send_query("SELECT 'after expiry'");
        let answer = raw.until_ready();
        assert_eq!(
            error_code(&answer).as_deref(),
            Some("28P01"),
            "{driver}: {answer:?}"
        );
        assert!(
            answer
                .iter()
                .any(|(_, b)| text(b).contains("reconnect with a fresh token")),
            "{driver}: {answer:?}"
        );

        // Cancel: a long statement is cancelled through the gateway's own key, sent on a new
        // connection (which may land on the other worker).
        let (mut raw, key) = Raw::login(plain, &token);
        raw.send_query("SELECT pg_sleep(60)");
        std::thread::sleep(Duration::from_millis(500));
        let mut cancel = TcpStream::connect(plain).unwrap();
        let mut req = 16u32.to_be_bytes().to_vec();
        req.extend_from_slice(&80_877_102u32.to_be_bytes());
        req.extend_from_slice(&key);
        cancel.write_all(&req).unwrap();
        let started = std::time::Instant::now();
        let answer = raw.until_ready();
        assert_eq!(
            error_code(&answer).as_deref(),
            Some("57014"),
            "{driver}: {answer:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{driver}: cancel took too long"
        );

        // The client-side stream of a plaintext connection, captured: no upstream password
        // in any message (including errors), no unmasked value.
        let (proxy, seen) = capture_proxy(plain);
        for sql in [
            "SELECT email, card FROM customers",
            "SELECT no_such_column FROM customers",
            "SELECT current_user, current_setting('application_name')",
            // One value far larger than a socket read: the row crosses many TCP reads.
            "SELECT repeat('x', 200000) || ' 4111 1111 1111 1111 ' || repeat('y', 70000) AS blob",
        ] {
            let _ = psql(proxy, "disable", &token, sql);
        }
        let _ = psql(proxy, "disable", "bad", "SELECT 1");
        let seen = text(&seen.lock().unwrap());
        assert!(
            seen.contains("Ann") || seen.contains("[EMAIL]") || seen.len() > 100,
            "{driver}: capture is empty"
        );
        assert!(
            !seen.contains(&cluster.password),
            "{driver}: upstream password reached a client"
        );
        assert!(
            !seen.contains("ann@example.com"),
            "{driver}: unmasked email reached a client"
        );
        assert!(
            !seen.contains(CARD),
            "{driver}: unmasked card reached a client"
        );

        // pgbench in the three query modes over TLS.
        for mode in ["simple", "extended", "prepared"] {
            let out = pgbench(tls, &token, mode);
            assert!(
                out.status.success(),
                "{driver}: pgbench -M {mode}: {}",
                text(&out.stderr)
            );
            assert!(
                text(&out.stdout).contains("number of transactions actually processed: 50/50"),
                "{driver}: {}",
                text(&out.stdout)
            );
        }

        // What the server saw: the allowed SELECT, never the DROP or TRUNCATE.
        assert!(cluster.wait_for_log(
            "SELECT id, name, email, card FROM customers",
            Duration::from_secs(30)
        ));
        let log = cluster.log();
        assert!(
            !log.contains("DROP TABLE customers"),
            "{driver}: DROP reached the server"
        );
        assert!(
            !log.contains("TRUNCATE customers"),
            "{driver}: TRUNCATE reached the server"
        );
        assert_eq!(
            cluster
                .admin_sql(&cluster.database, "SELECT count(*) FROM customers")
                .trim(),
            "2"
        );
        let (_, metrics) = gw.admin_get("/metrics");
        assert!(
            metrics.contains("portcullis_policy_info{version="),
            "{metrics}"
        );

        // Shut down: recordings flushed and sealed, then read back.
        gw.signal("TERM");
        let status = gw
            .wait_exit(Duration::from_secs(60))
            .expect("gateway exits after SIGTERM");
        assert!(status.success(), "{driver}: exit {status:?}\n{}", gw.logs());
        let (sessions, commands) = read_recordings(&setup.dir.path().join("recordings"));
        // Alice's authenticated sessions (her expired token is an `auth_failed` row with only
        // the presented subject).
        let alice: Vec<_> = sessions
            .iter()
            .filter(|s| s.subject == "alice" && s.outcome != "auth_failed")
            .collect();
        assert!(
            !alice.is_empty(),
            "{driver}: no session of alice: {sessions:?}"
        );
        assert!(
            alice
                .iter()
                .all(|s| s.email.as_deref() == Some("alice@corp.example"))
        );
        assert!(alice.iter().all(|s| s.groups == ["engineering"]));
        assert!(
            sessions
                .iter()
                .any(|s| s.outcome == "auth_failed" && s.subject == "alice"),
            "{driver}: failed logins recorded: {sessions:?}"
        );
        assert!(
            sessions
                .iter()
                .any(|s| s.subject == "mallory" && s.outcome == "denied"),
            "{driver}: {sessions:?}"
        );
        let select = commands
            .iter()
            .find(|c| {
                c.text.as_deref() == Some("SELECT id, name, email, card FROM customers ORDER BY id")
            })
            .expect("the masked SELECT is recorded");
        assert_eq!(select.decision, "allow");
        assert_eq!(select.rows, Some(2));
        assert_eq!(select.masked_values, 2, "{select:?}");
        assert_eq!(select.subject, "alice");
        let drop = commands
            .iter()
            .find(|c| c.text.as_deref() == Some("DROP TABLE customers"))
            .expect("the DROP is recorded");
        assert_eq!(drop.decision, "deny");
        assert_eq!(drop.rule_id.as_deref(), Some("no-drop"));
        // One record per statement of the refused batch, each with its own decision.
        let truncate = commands
            .iter()
            .find(|c| c.text.as_deref().is_some_and(|t| t.contains("TRUNCATE")))
            .expect("the TRUNCATE is recorded");
        assert_eq!(truncate.decision, "deny");
        assert_eq!(truncate.action, "truncate");
        let benched = commands
            .iter()
            .filter(|c| {
                c.text
                    .as_deref()
                    .is_some_and(|t| t.contains("pgbench_accounts"))
            })
            .count();
        assert!(
            benched >= 150,
            "{driver}: {benched} pgbench statements recorded"
        );
    }
}

#[test]
fn bad_input_gets_an_error_or_a_close_and_the_gateway_keeps_serving() {
    if common::require("psql").is_none() {
        return;
    }
    let cluster = PgCluster::start();
    for driver in DRIVERS {
        let setup = setup();
        let (extra, connections) = gateway_config(&setup, &cluster);
        let gw: Gateway = start(driver, &extra, &connections);
        let plain = gw.addr("orders-plain");
        let token = mint(&setup, "alice", "engineering", "15m");

        // Garbage before startup: an ErrorResponse, then the connection closes.
        let mut raw = TcpStream::connect(plain).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer);
        assert_eq!(answer.first(), Some(&b'E'), "{driver}: {answer:?}");

        // After login: an oversized message and an unknown message type are refused with an
        // ErrorResponse (or a close), never forwarded.
        for bad in [
            [b'Q']
                .iter()
                .chain(&0x7fff_fff0u32.to_be_bytes())
                .copied()
                .collect::<Vec<u8>>(),
            vec![b'!', 0, 0, 0, 4],
        ] {
            let (mut raw, _) = Raw::login(plain, &token);
            raw.s.write_all(&bad).unwrap();
            let answer = raw.until_ready();
            assert!(
                answer.is_empty() || answer.iter().any(|(t, _)| *t == b'E'),
                "{driver}: {answer:?}"
            );
        }

        // A truncated message followed by a close: nothing is left running.
        let (mut raw, _) = Raw::login(plain, &token);
        raw.s.write_all(&[b'Q', 0, 0, 0, 100, b'S']).unwrap();
        drop(raw);

        // A direct TLS hello (no SSLRequest first) must negotiate the `postgresql` ALPN
        // protocol: without ALPN the session ends with a FATAL inside TLS, and a client
        // offering only another protocol fails the handshake.
        if common::require("openssl").is_some() {
            let tls = gw.addr("orders-db");
            let s_client = |alpn: Option<&str>| {
                let mut c = Command::new("openssl");
                c.args(["s_client", "-quiet", "-connect", &tls.to_string()]);
                if let Some(p) = alpn {
                    c.args(["-alpn", p]);
                }
                c.stdin(std::process::Stdio::null()).output().unwrap()
            };
            let out = s_client(None);
            let shown = text(&out.stdout);
            assert!(
                shown.contains("without the `postgresql` ALPN protocol"),
                "{driver}: {shown} {}",
                text(&out.stderr)
            );
            let out = s_client(Some("http/1.1"));
            assert!(
                text(&out.stderr).contains("no application protocol"),
                "{driver}: {}",
                text(&out.stderr)
            );
        }

        // The gateway still serves.
        let out = psql(gw.addr("orders-db"), "require", &token, "SELECT 41 + 1");
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "42");
    }
}

/// Sends a fast-path FunctionCall of `oid` with int4 arguments, text result, and reads to
/// ReadyForQuery.
fn function_call(raw: &mut Raw, oid: u32, args: &[&[u8]]) -> Vec<(u8, Vec<u8>)> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&(args.len() as u16).to_be_bytes());
    for a in args {
        body.extend_from_slice(&(a.len() as i32).to_be_bytes());
        body.extend_from_slice(a);
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    let mut msg = vec![b'F'];
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    raw.s.write_all(&msg).unwrap();
    raw.until_ready()
}

#[test]
fn large_objects_over_the_fast_path_are_decided_masked_and_recorded() {
    if common::require("psql").is_none() {
        return;
    }
    let cluster = PgCluster::start();
    for driver in DRIVERS {
        let setup = setup();
        let (extra, connections) = gateway_config(&setup, &cluster);
        let mut gw: Gateway = start(driver, &extra, &connections);
        let (tls, plain) = (gw.addr("orders-db"), gw.addr("orders-plain"));
        let token = mint(&setup, "alice", "engineering", "15m");
        let d = setup.dir.path();

        // psql's \lo_import and \lo_export run on libpq's fast-path calls (lo_creat, lo_open,
        // lowrite, loread, lo_close): allowed, and the exported bytes are masked on the way out.
        let original = format!("contact card {CARD} on file\n");
        std::fs::write(d.join("in.txt"), &original).unwrap();
        let import = format!("\\lo_import {}", d.join("in.txt").display());
        let out = psql(tls, "require", &token, &import);
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        let oid = text(&out.stdout)
            .split_whitespace()
            .last()
            .and_then(|w| w.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("{driver}: no OID in {}", text(&out.stdout)));
        // What was written upstream is the caller's data, unmasked (masking is on the way out).
        let stored = cluster.admin_sql(
            &cluster.database,
            &format!("SELECT convert_from(lo_get({oid}), 'UTF8')"),
        );
        assert!(stored.contains(CARD), "{driver}: stored {stored:?}");

        let export = format!("\\lo_export {oid} {}", d.join("out.txt").display());
        let out = psql(tls, "require", &token, &export);
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        let exported = std::fs::read_to_string(d.join("out.txt")).unwrap();
        assert!(
            !exported.contains(CARD),
            "{driver}: card left unmasked: {exported}"
        );
        assert!(
            exported.starts_with("contact card ") && exported.contains("1111 on file"),
            "{driver}: partial mask keeps the last 4 and the rest: {exported:?}"
        );

        // Server-side lo_import over the fast path (OID 764) is the admin function the policy
        // denies: 42501, and the server never sees it.
        let (mut raw, _) = Raw::login(plain, &token);
        let answer = function_call(&mut raw, 764, &[b"/etc/hostname"]);
        assert_eq!(error_code(&answer).as_deref(), Some("42501"), "{driver}");
        assert!(
            text(&answer.iter().find(|(t, _)| *t == b'E').unwrap().1).contains("no-server-files"),
            "{driver}: {answer:?}"
        );
        // A function the gateway cannot name (a user function's OID) is refused.
        let answer = function_call(&mut raw, 16_384, &[]);
        assert_eq!(error_code(&answer).as_deref(), Some("42501"), "{driver}");
        assert!(
            text(&answer.iter().find(|(t, _)| *t == b'E').unwrap().1).contains("OID 16384"),
            "{driver}: {answer:?}"
        );
        // The session is still usable after both refusals.
        raw.send_query("SELECT 1");
        let answer = raw.until_ready();
        assert!(
            answer.iter().any(|(t, _)| *t == b'D'),
            "{driver}: {answer:?}"
        );
        drop(raw);
        let denied_imports = cluster.admin_sql(
            &cluster.database,
            "SELECT count(*) FROM pg_largeobject_metadata",
        );
        assert_eq!(
            denied_imports.trim(),
            "1",
            "{driver}: only psql's import ran"
        );
        cluster.admin_sql(&cluster.database, &format!("SELECT lo_unlink({oid})"));

        // Every call is on record as its SQL form, with its decision.
        gw.signal("TERM");
        gw.wait_exit(Duration::from_secs(60))
            .expect("gateway exits after SIGTERM");
        let (_, commands) = read_recordings(&d.join("recordings"));
        let texts: Vec<(String, String)> = commands
            .iter()
            .filter_map(|c| Some((c.text.clone()?, c.decision.clone())))
            .collect();
        for call in ["lo_open", "lowrite", "loread", "lo_close"] {
            let sql = format!("SELECT pg_catalog.{call}(...)");
            assert!(
                texts.iter().any(|(t, d)| *t == sql && d == "allow"),
                "{driver}: no allowed {sql} in {texts:?}"
            );
        }
        assert!(
            texts
                .iter()
                .any(|(t, d)| t == "SELECT pg_catalog.lo_import(...)" && d == "deny"),
            "{driver}: {texts:?}"
        );
        let masked: u64 = commands
            .iter()
            .filter(|c| c.text.as_deref() == Some("SELECT pg_catalog.loread(...)"))
            .map(|c| c.masked_values)
            .sum();
        assert!(masked >= 1, "{driver}: the masked read is counted");
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it with `alg` (the algorithm the
/// channel-binding hash follows): (CA PEM, server certificate PEM, server key PEM).
fn upstream_pki(alg: &'static rcgen::SignatureAlgorithm) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    (ca.pem(), server.pem(), server_key.serialize_pem())
}

#[test]
fn upstream_tls_is_verified_and_the_scram_login_is_bound_to_the_channel() {
    if common::require("psql").is_none() {
        return;
    }
    let cluster = PgCluster::start();
    // Signed with SHA-384: the binding hash must follow the certificate, not default to SHA-256
    // (a wrong hash makes the server refuse the login).
    let (ca, cert, key) = upstream_pki(&rcgen::PKCS_ECDSA_P384_SHA384);
    cluster.enable_tls(&cert, &key);
    let (other_ca, _, _) = upstream_pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    for driver in DRIVERS {
        let setup = setup();
        let d = setup.dir.path();
        std::fs::write(d.join("db-ca.pem"), &ca).unwrap();
        std::fs::write(d.join("other-ca.pem"), &other_ca).unwrap();
        std::fs::write(d.join("db.password"), format!("{}\n", cluster.password)).unwrap();
        let conn = |name: &str, ca_file: &str| {
            common::pg_connection(
                d,
                name,
                &cluster.addr(),
                &cluster.database,
                &cluster.user,
                true,
                "",
            )
            .replace(
                "upstream_tls = \"disable\"",
                &format!(
                    "upstream_tls = \"verify-full\"\nupstream_ca = \"{}\"",
                    d.join(ca_file).display()
                ),
            )
        };
        let connections = format!(
            "{}{}\n{}",
            common::local_identity(d),
            conn("orders-db", "db-ca.pem"),
            conn("orders-plain", "other-ca.pem"),
        );
        let gw: Gateway = start(driver, &common::dirs_under(d), &connections);
        let token = mint(&setup, "alice", "engineering", "15m");

        // The gateway's own session to the server is encrypted, and logged in with
        // SCRAM-SHA-256-PLUS over it.
        let out = psql(
            gw.addr("orders-db"),
            "require",
            &token,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        );
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "t", "{driver}");
        gw.wait_log("\"method\":\"SCRAM-SHA-256-PLUS\"");

        // A server whose certificate does not chain to the configured CA is refused before
        // any credential is sent; the caller learns it is an upstream TLS failure.
        let out = psql(gw.addr("orders-plain"), "require", &token, "SELECT 1");
        assert!(!out.status.success(), "{driver}: connected past a wrong CA");
        let err = text(&out.stderr);
        assert!(err.contains("tls handshake failed"), "{driver}: {err}");
        assert!(!err.contains(&cluster.password), "{driver}: {err}");
        assert!(
            !cluster.log().contains("password authentication failed"),
            "{driver}: a login was attempted past the failed verification"
        );
    }
}

/// A throwaway cluster and one gateway in front of it (first IO driver), with a token for
/// alice of `engineering`. Fields drop in order: the gateway before the cluster.
struct OneGateway {
    gw: Gateway,
    token: String,
    setup: Setup,
    _cluster: PgCluster,
}

impl OneGateway {
    fn start() -> OneGateway {
        let cluster = PgCluster::start();
        let setup = setup();
        let (extra, connections) = gateway_config(&setup, &cluster);
        let gw = start(DRIVERS[0], &extra, &connections);
        let token = mint(&setup, "alice", "engineering", "15m");
        OneGateway {
            gw,
            token,
            setup,
            _cluster: cluster,
        }
    }
}

/// With `standard_conforming_strings = off` a backslash escapes in every `'...'`, which moves
/// where a string ends: `'x\'' ; DROP TABLE victim; --'` is one string with the setting on
/// and a DROP with it off. The gateway reads statements as the server will, following the
/// server's ParameterStatus, and refuses a text that reads differently either way while a
/// statement that could change the setting is still running. Likewise for a client_encoding
/// whose characters can end in a backslash byte.
#[test]
fn strings_are_read_as_the_servers_standard_conforming_strings_says() {
    if common::require("psql").is_none() {
        return;
    }
    let one = OneGateway::start();
    let (plain, token) = (one.gw.addr("orders-plain"), one.token.clone());
    let out = psql(plain, "disable", &token, "CREATE TABLE victim (a int)");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let attack = r"SELECT 'x\'' ; DROP TABLE victim; --'";
    let victim_exists = || {
        let out = psql(plain, "disable", &token, "SELECT count(*) FROM victim");
        assert!(
            out.status.success(),
            "victim dropped: {}",
            text(&out.stderr)
        );
    };

    let (mut raw, _) = Raw::login(plain, &token);
    raw.ok("SET standard_conforming_strings = off");
    let shown = raw.refused(attack);
    assert!(shown.contains("no-drop"), "{shown}");
    victim_exists();

    // Back on: the same text is one string, and runs.
    raw.ok("RESET standard_conforming_strings");
    let answer = raw.ok(attack);
    let row = answer.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert!(
        text(&row.1).contains(r"x\' ; DROP TABLE victim; --"),
        "{row:?}"
    );
    victim_exists();

    // Pipelined behind the statement that turns it off: refused whichever way it is read.
    let mut both = Vec::new();
    for sql in ["SET standard_conforming_strings = off", attack] {
        both.push(b'Q');
        both.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        both.extend_from_slice(sql.as_bytes());
        both.push(0);
    }
    raw.s.write_all(&both).unwrap();
    assert_eq!(error_code(&raw.until_ready()), None);
    let answer = raw.until_ready();
    assert_eq!(error_code(&answer).as_deref(), Some("42501"), "{answer:?}");
    let shown = text(&answer[0].1);
    assert!(
        shown.contains("standard_conforming_strings") || shown.contains("no-drop"),
        "{shown}"
    );
    victim_exists();
    raw.ok("RESET standard_conforming_strings");

    // In SJIS (and BIG5, GBK, ...) the last byte of U+3041 and the backslash after it are one
    // character to the server, so the quote after them ends the E-string there. Checked to
    // drop the table before the gateway refused such text.
    let multibyte = "SELECT E'\u{3041}\\' ; DROP TABLE victim; --'";
    raw.ok("SET client_encoding = 'SJIS'");
    let shown = raw.refused(multibyte);
    assert!(shown.contains("client_encoding"), "{shown}");
    victim_exists();
    // In UTF-8 the backslash is its own character: one string, and it runs.
    raw.ok("SET client_encoding = 'UTF8'");
    raw.ok(multibyte);
    victim_exists();
}

/// A value a rule masks in rows must not come back in an error instead: PostgreSQL quotes
/// the offending value in data exceptions and key violations, so `SELECT card::int` would
/// show the card its detector masks, and `SELECT email::int` the email its column rule masks.
#[test]
fn errors_do_not_show_the_values_masking_hides() {
    if common::require("psql").is_none() {
        return;
    }
    let one = OneGateway::start();
    let (plain, token) = (one.gw.addr("orders-plain"), one.token.clone());
    let run = |sql: &str| psql(plain, "disable", &token, sql);
    let out = run(&format!(
        "CREATE TABLE wallet (card text UNIQUE, email text); \
         INSERT INTO wallet VALUES ('{CARD}', 'jane@corp.example')"
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run("SELECT card, email FROM wallet");
    assert_eq!(text(&out.stdout).trim(), "**** **** **** 1111|[MASKED]");
    for sql in [
        "SELECT card::int FROM wallet",
        "SELECT email::int FROM wallet",
        "INSERT INTO wallet SELECT card, 'x' FROM wallet",
        "SELECT email::date FROM wallet",
    ] {
        let out = run(sql);
        assert!(!out.status.success(), "{sql}");
        let shown = text(&out.stderr);
        assert!(
            !shown.contains("4111") && !shown.contains("jane@"),
            "{sql}: {shown}"
        );
        assert!(shown.contains("withheld"), "{sql}: {shown}");
    }
    // Errors that quote no data are left as they are.
    let shown = text(&run("SELECT 1/0").stderr);
    assert!(
        shown.contains("22012") && shown.contains("division by zero"),
        "{shown}"
    );

    // Nor may a notification payload (a trigger's `pg_notify('ch', NEW.card)`).
    let (mut raw, _) = Raw::login(plain, &token);
    raw.ok("LISTEN wallet_changes");
    let answer = raw.ok(&format!("NOTIFY wallet_changes, 'card {CARD}'"));
    let (_, body) = answer
        .iter()
        .find(|(t, _)| *t == b'A')
        .expect("the notification");
    let shown = text(body);
    assert!(shown.contains("card **** **** **** 1111"), "{shown}");
    assert!(!shown.contains("4111"), "{shown}");
}

/// Policy reload under load: while pgbench keeps sessions busy, SIGHUP loads a policy with a
/// new deny rule. The running sessions keep working, every new session gets the new rule, a
/// broken policy loaded after it is rejected and changes nothing, and the version in
/// /metrics follows.
#[test]
fn a_policy_reload_under_load_applies_to_new_sessions_and_drops_nothing() {
    if common::require("pgbench").is_none() {
        return;
    }
    let one = OneGateway::start();
    let (plain, token) = (one.gw.addr("orders-plain"), one.token.clone());
    let probe = "SELECT * FROM reload_probe";
    let sqlstate = |sql: &str| {
        let out = psql(plain, "disable", &token, sql);
        assert!(!out.status.success(), "{sql} succeeded");
        text(&out.stderr)
    };
    // Before: the gateway lets it through and the server has no such table.
    assert!(sqlstate(probe).contains("42P01"));
    let version = || {
        let (_, body) = one.gw.admin_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("portcullis_policy_info{version=\""))
            .and_then(|l| l.split('"').next())
            .expect("the policy version in /metrics")
            .to_owned()
    };
    let before = version();

    // Four clients running `SELECT 1` for eight seconds, across both workers' sessions.
    let script = one.setup.dir.path().join("select1.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let load = {
        let (host, port, token) = (
            plain.ip().to_string(),
            plain.port().to_string(),
            token.clone(),
        );
        std::thread::spawn(move || {
            Command::new("pgbench")
                .args(["-n", "-c", "4", "-j", "2", "-T", "8", "-f"])
                .arg(&script)
                .args(["-h", &host, "-p", &port, "-U", "alice", "orders"])
                .env("PGPASSWORD", token)
                .env("PGSSLMODE", "disable")
                .output()
                .expect("run pgbench")
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let policies = one.setup.dir.path().join("policies");
    std::fs::write(
        policies.join("10-reload.toml"),
        "[[rule]]\nid = \"reload-probe\"\nmatch.tables = [\"reload_probe\"]\naction = \"deny\"\n",
    )
    .unwrap();
    one.gw.signal("HUP");
    one.gw.wait_log("SIGHUP: policy reloaded");
    let reloaded = version();
    assert_ne!(reloaded, before);
    // New sessions, spread over the workers, all see the new rule.
    for _ in 0..4 {
        let shown = sqlstate(probe);
        assert!(
            shown.contains("42501") && shown.contains("reload-probe"),
            "{shown}"
        );
    }
    // A broken policy is rejected; the one just loaded stays.
    std::fs::write(
        policies.join("20-bad.toml"),
        "[[rule]]\nid = \"x\"\nactoin = \"deny\"\n",
    )
    .unwrap();
    one.gw.signal("HUP");
    one.gw.wait_log("policy reload rejected");
    assert_eq!(version(), reloaded);
    assert!(sqlstate(probe).contains("reload-probe"));

    let out = load.join().unwrap();
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}{}", text(&out.stderr));
    assert!(!report.contains("aborted"), "{report}");
    let done: u64 = report
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("number of transactions actually processed: ")
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("pgbench's transaction count");
    assert!(done > 100, "{report}");
}
