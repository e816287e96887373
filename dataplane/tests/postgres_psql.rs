//! Stock `psql` and `pgbench` through a minimal relay built only from the sans-IO pieces: the
//! client session answers the startup and takes the token, `upstream_auth` logs in to a real
//! PostgreSQL with the held password, Query text is checked by a toy rule, and DataRows of the
//! `email` column are rewritten. The relay is blocking std threads on purpose: it shows the
//! driver is a thin loop, and it keeps the real driver's concerns (monoio, TLS) out of this test.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "the relay is test code: a failure is a failing test"
)]

mod support;

use std::borrow::Cow;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use dataplane::postgres::backend::{self, BackendMessage};
use dataplane::postgres::client_session::{ClientConfig, ClientEvent, ClientSession};
use dataplane::postgres::frontend::{CancelKey, FrontendMessage};
use dataplane::postgres::rewrite::{self, CellEdit, ColumnInfo};
use dataplane::postgres::sequencer::ResponseSequencer;
use dataplane::postgres::upstream_auth::{UpstreamAuth, UpstreamCredential, UpstreamPassword};
use dataplane::postgres::{Limits, PgError};
use dataplane::postgres::{frontend, statement};
use support::pgcluster::PgCluster;

const TOKEN: &str = "test-token-for-the-relay";
const TIMEOUT: Duration = Duration::from_secs(120);

/// Everything the relay wrote to any client, to search for leaks.
type Capture = Arc<Mutex<Vec<u8>>>;

struct ClientWriter {
    stream: TcpStream,
    capture: Capture,
}

impl ClientWriter {
    fn send(&mut self, bytes: &[u8]) {
        self.capture.lock().unwrap().extend_from_slice(bytes);
        let _ = self.stream.write_all(bytes);
    }
}

fn start_relay(cluster: &PgCluster) -> (u16, Capture) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let capture: Capture = Arc::default();
    let credential = UpstreamCredential {
        user: cluster.user.clone(),
        password: UpstreamPassword::new(cluster.password.clone()),
        database: cluster.database.clone(),
    };
    let upstream = cluster.addr();
    let cap = capture.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let (credential, upstream, cap) = (credential.clone(), upstream.clone(), cap.clone());
            std::thread::spawn(move || serve(client, &credential, &upstream, cap));
        }
    });
    (port, capture)
}

fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn serve(mut client: TcpStream, credential: &UpstreamCredential, upstream: &str, capture: Capture) {
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let limits = Limits::default();
    let mut session = ClientSession::new(ClientConfig {
        tls_available: false,
        allow_plaintext: true,
        limits,
    });
    let mut writer = ClientWriter {
        stream: client.try_clone().unwrap(),
        capture,
    };
    let mut cin = BytesMut::new();
    let mut cout = BytesMut::new();

    // Startup until the token arrives.
    let token = 'startup: loop {
        if !read_more(&mut client, &mut cin) {
            return;
        }
        loop {
            match session.read(&mut cin, &mut cout) {
                Ok(Some(ClientEvent::Token(token))) => break 'startup token,
                Ok(Some(ClientEvent::Cancel(_) | ClientEvent::Terminate)) => return,
                Ok(Some(_)) => writer.send(&cout.split()),
                Ok(None) => break,
                Err(e) => {
                    session.refuse(&e, &mut cout);
                    writer.send(&cout.split());
                    return;
                }
            }
        }
    };
    if token != TOKEN.as_bytes() {
        let e = PgError::ClientAuth {
            reason: "the token did not verify".into(),
        };
        session.refuse(&e, &mut cout);
        writer.send(&cout.split());
        return;
    }

    // Upstream login with the held credential.
    let mut up = TcpStream::connect(upstream).unwrap();
    up.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut uout = BytesMut::new();
    let mut uin = BytesMut::new();
    let mut auth = UpstreamAuth::start(credential, &[], None, &mut uout);
    let ready = loop {
        up.write_all(&uout.split()).unwrap();
        if !read_more(&mut up, &mut uin) {
            return;
        }
        match auth.feed(&mut uin, &limits, &mut uout) {
            Ok(Some(ready)) => break ready,
            Ok(None) => {}
            Err(e) => {
                session.refuse(&e, &mut cout);
                writer.send(&cout.split());
                return;
            }
        }
    };
    let key = CancelKey {
        process_id: 1,
        secret_key: 2,
    };
    session
        .accept(&mut cout, &ready.parameters, key, ready.status)
        .unwrap();
    writer.send(&cout.split());

    // One lock over the session, the sequencer and the client writer: an injected reply and
    // the upstream's answers are ordered and written under it, so neither overtakes the other.
    let shared = Arc::new(Mutex::new(Shared {
        session,
        seq: ResponseSequencer::new(),
        writer,
    }));

    // Upstream → client: follow the state, mask `email`, release injected replies, forward.
    let (sh2, mut up_read) = (shared.clone(), up.try_clone().unwrap());
    let pump = std::thread::spawn(move || {
        let mut columns: Vec<ColumnInfo> = Vec::new();
        loop {
            {
                let mut sh = sh2.lock().unwrap();
                let mut out = BytesMut::new();
                while let Ok(Some(frame)) = backend::decode_message(&mut uin, &limits) {
                    sh.session.observe_backend(&frame.message);
                    if sh.seq.answer_refusal(&frame, &mut out) {
                        continue;
                    }
                    match &frame.message {
                        BackendMessage::RowDescription(fields) => {
                            columns = rewrite::columns(fields);
                            out.extend_from_slice(&frame.raw);
                        }
                        BackendMessage::DataRow(row) => {
                            rewrite::rewrite_data_row(row, &limits, &mut out, |col, value| {
                                let masked = columns
                                    .get(col)
                                    .is_some_and(|c| c.rewritable && c.name == "email");
                                match value {
                                    Some(_) if masked => CellEdit::Replace(Cow::Borrowed(b"***")),
                                    _ => CellEdit::Keep,
                                }
                            })
                            .unwrap();
                        }
                        _ => out.extend_from_slice(&frame.raw),
                    }
                    sh.seq.on_backend(&frame.message);
                }
                if !out.is_empty() {
                    sh.writer.send(&out);
                }
            }
            if !read_more(&mut up_read, &mut uin) {
                return;
            }
        }
    });

    // Client → upstream: decide each statement, forward the rest.
    'relay: loop {
        if !read_more(&mut client, &mut cin) {
            break;
        }
        loop {
            let mut out = BytesMut::new();
            let mut sh = shared.lock().unwrap();
            let event = sh.session.read(&mut cin, &mut out);
            match event {
                Ok(Some(ClientEvent::Message(frame))) => {
                    let denied = statement::sql_text(&frame.message).is_some_and(|sql| {
                        String::from_utf8_lossy(sql)
                            .to_lowercase()
                            .contains("drop table")
                    });
                    if denied {
                        let e = PgError::StatementDenied {
                            rule: "no-drop".into(),
                            message: "dropping tables needs a review".into(),
                        };
                        // The server sees a probe that fails in its parser, so its
                        // transaction state follows; the probe's error becomes the denial.
                        if !matches!(frame.message, FrontendMessage::Query { .. }) {
                            sh.session.enter_extended_error();
                        }
                        let mut probe = BytesMut::new();
                        sh.seq
                            .refuse(&frame.message, &e.to_error_fields(), &mut probe)
                            .unwrap();
                        if up.write_all(&probe).is_err() {
                            break 'relay;
                        }
                    } else {
                        sh.seq.forwarded(&frame.message).unwrap();
                        if up.write_all(&frame.raw).is_err() {
                            break 'relay;
                        }
                    }
                }
                Ok(Some(ClientEvent::Terminate)) => {
                    let _ = up.write_all(b"X\0\0\0\x04");
                    break 'relay;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    sh.session.refuse(&e, &mut out);
                    sh.writer.send(&out);
                    break 'relay;
                }
            }
        }
    }
    let _ = up.shutdown(std::net::Shutdown::Both);
    let _ = pump.join();
}

/// What both relay threads touch.
struct Shared {
    session: ClientSession,
    seq: ResponseSequencer,
    writer: ClientWriter,
}

/// Logs in through the relay with a raw socket and returns it ready for queries.
fn raw_client(port: u16) -> (TcpStream, BytesMut) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut out = BytesMut::new();
    frontend::encode_startup(&mut out, &[(b"user", b"alice"), (b"database", b"whatever")]);
    frontend::encode_password(&mut out, TOKEN.as_bytes());
    c.write_all(&out).unwrap();
    let mut input = BytesMut::new();
    let messages = read_until_ready(&mut c, &mut input);
    assert!(
        matches!(messages.last(), Some(BackendMessage::ReadyForQuery(_))),
        "{messages:?}"
    );
    (c, input)
}

fn read_until_ready(c: &mut TcpStream, input: &mut BytesMut) -> Vec<BackendMessage> {
    let mut messages = Vec::new();
    loop {
        while let Some(frame) = backend::decode_message(input, &Limits::default()).unwrap() {
            let done = matches!(frame.message, BackendMessage::ReadyForQuery(_));
            messages.push(frame.message);
            if done {
                return messages;
            }
        }
        assert!(read_more(c, input), "relay closed: {messages:?}");
    }
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn extended(sql: &str) -> Vec<u8> {
    let parse = [b"\0", sql.as_bytes(), b"\0\0\0"].concat();
    [
        tagged(b'P', &parse),
        tagged(b'B', b"\0\0\0\0\0\0\0\0"),
        // Describe the portal, as libpq does: column rules need the RowDescription. (Execute
        // without it gives the gateway no column names; see docs/postgres.md.)
        tagged(b'D', b"P\0"),
        tagged(b'E', b"\0\0\0\0\0"),
    ]
    .concat()
}

fn psql(port: u16, token: &str, sql: &str, stdin: &str) -> std::process::Output {
    let mut child = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "alice",
            "-d",
            "whatever",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "60")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql (install postgresql-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn psql_and_pgbench_through_the_state_machines() {
    let cluster = PgCluster::start();
    cluster.admin_sql(
        &cluster.database,
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, email text); \
             INSERT INTO customers VALUES (1, 'ann@example.com'), (2, NULL); \
             ALTER TABLE customers OWNER TO {};",
            cluster.user
        ),
    );
    let (port, capture) = start_relay(&cluster);

    // A masked SELECT: the email is rewritten, NULL stays NULL, the id is untouched.
    let out = psql(
        port,
        TOKEN,
        "SELECT id, email FROM customers ORDER BY id",
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1|***\n2|\n");

    // A denied statement: 42501 with the rule, never in the server log, table intact.
    let out = psql(port, TOKEN, "DROP TABLE customers", "");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .contains("statement denied by rule `no-drop`: dropping tables needs a review"),
        "{}",
        text(&out.stderr)
    );
    // COPY in and out through the session's copy states.
    let out = psql(
        port,
        TOKEN,
        "COPY customers FROM STDIN",
        "3\tcid@example.com\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = psql(
        port,
        TOKEN,
        "COPY (SELECT id FROM customers ORDER BY id) TO STDOUT",
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n3\n");

    // A wrong token: refused with 28P01 before any upstream connection.
    let out = psql(port, "not-the-token", "SELECT 1", "");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("token authentication failed"),
        "{}",
        text(&out.stderr)
    );

    // pgbench in extended and prepared modes exercises Parse/Bind/Describe/Execute/Sync.
    let script = cluster.log_path.with_file_name("bench.sql");
    std::fs::write(&script, "SELECT email FROM customers WHERE id = 1;\n").unwrap();
    for mode in ["simple", "extended", "prepared"] {
        let out = Command::new("pgbench")
            .args(["-n", "-c", "2", "-t", "20", "-M", mode, "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-U", "alice", "-f"])
            .arg(&script)
            .arg("whatever")
            .env("PGPASSWORD", TOKEN)
            .env("PGSSLMODE", "disable")
            .output()
            .expect("run pgbench");
        assert!(
            out.status.success(),
            "pgbench -M {mode}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("number of transactions actually processed: 40/40"),
            "{}",
            text(&out.stdout)
        );
    }

    // A DROP in extended mode: refused at Parse, the batch skipped up to Sync.
    let drop_script = cluster.log_path.with_file_name("drop.sql");
    std::fs::write(&drop_script, "DROP TABLE customers;\n").unwrap();
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            "1",
            "-t",
            "1",
            "-M",
            "extended",
            "-h",
            "127.0.0.1",
        ])
        .args(["-p", &port.to_string(), "-U", "alice", "-f"])
        .arg(&drop_script)
        .arg("whatever")
        .env("PGPASSWORD", TOKEN)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("run pgbench");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("statement denied by rule `no-drop`"),
        "{}",
        text(&out.stderr)
    );

    // Pipelined: an allowed statement, a denied one and Sync in one write. The denial must
    // come after the first statement's answers, the rest of its batch is skipped, and the
    // server's ReadyForQuery ends the batch.
    let (mut c, mut input) = raw_client(port);
    let batch = [
        extended("SELECT email FROM customers WHERE id = 1"),
        extended("DROP TABLE customers"),
        tagged(b'S', b""),
    ]
    .concat();
    c.write_all(&batch).unwrap();
    let messages = read_until_ready(&mut c, &mut input);
    let kinds: Vec<String> = messages
        .iter()
        .map(|m| match m {
            BackendMessage::ErrorResponse(f) => format!("Error {}", f.code()),
            BackendMessage::DataRow(row) => format!(
                "DataRow {:?}",
                row.values()
                    .map(|v| v.map(|b| text(&b)))
                    .collect::<Vec<_>>()
            ),
            other => format!("{other:?}")
                .split([' ', '(', '{'])
                .next()
                .unwrap()
                .to_string(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ParseComplete",
            "BindComplete",
            "RowDescription",
            "DataRow [Some(\"***\")]",
            "CommandComplete",
            "Error 42501",
            "ReadyForQuery"
        ]
    );
    // The session is usable afterwards.
    c.write_all(&[extended("SELECT 7"), tagged(b'S', b"")].concat())
        .unwrap();
    let messages = read_until_ready(&mut c, &mut input);
    assert!(
        messages.iter().any(
            |m| matches!(m, BackendMessage::CommandComplete { tag } if &tag[..] == b"SELECT 1")
        ),
        "{messages:?}"
    );
    drop(c);

    // Garbage before startup: an ErrorResponse, then the connection closes.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).unwrap();
    let mut answer = BytesMut::from(&answer[..]);
    let frame = backend::decode_message(&mut answer, &Limits::default())
        .unwrap()
        .expect("an ErrorResponse");
    let BackendMessage::ErrorResponse(fields) = frame.message else {
        panic!("{:?}", frame.message)
    };
    assert_eq!(fields.code(), "54000");
    assert!(answer.is_empty());

    // What reached the server and what the clients saw.
    assert!(cluster.wait_for_log("SELECT id, email FROM customers", Duration::from_secs(30)));
    assert!(!cluster.log().contains("DROP TABLE customers"));
    assert_eq!(
        cluster
            .admin_sql(&cluster.database, "SELECT count(*) FROM customers")
            .trim(),
        "3"
    );
    let seen = capture.lock().unwrap().clone();
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        !seen.contains(&cluster.password),
        "upstream password reached a client"
    );
    assert!(
        !seen.contains("ann@example.com"),
        "unmasked email reached a client"
    );
}
