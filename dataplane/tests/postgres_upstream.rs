//! The upstream side against a real PostgreSQL: the `upstream_auth` state machine logs in with
//! SCRAM-SHA-256, md5 and cleartext, queries are decoded with the backend decoder, DataRows are
//! rewritten and decoded back, and a wrong password yields the typed error without the secret.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "the socket-loop helpers are test code: a failure is a failing test"
)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dataplane::postgres::backend::{self, BackendMessage};
use dataplane::postgres::reply::TransactionStatus;
use dataplane::postgres::rewrite::{self, CellEdit};
use dataplane::postgres::statement::CommandTag;
use dataplane::postgres::upstream_auth::{
    UpstreamAuth, UpstreamCredential, UpstreamPassword, UpstreamReady,
};
use dataplane::postgres::{Limits, PgError, frontend};
use support::pgcluster::{AuthMethod, PgCluster};

/// A connection authenticated by the state machine, driven by a blocking socket loop.
struct Conn {
    stream: TcpStream,
    input: BytesMut,
    ready: UpstreamReady,
}

/// Logs in; on failure also returns every byte the gateway sent, to search for secrets.
fn login(cluster: &PgCluster, password: &str) -> Result<Conn, (PgError, Vec<u8>)> {
    let mut stream = TcpStream::connect(cluster.addr()).expect("connect to the cluster");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let credential = UpstreamCredential {
        user: cluster.user.clone(),
        password: UpstreamPassword::new(password),
        database: cluster.database.clone(),
    };
    let limits = Limits::default();
    let mut out = BytesMut::new();
    let mut sent = Vec::new();
    let mut auth = UpstreamAuth::start(
        &credential,
        &[(b"application_name", b"portcullis-test")],
        None,
        &mut out,
    );
    let mut input = BytesMut::new();
    loop {
        if !out.is_empty() {
            stream.write_all(&out).unwrap();
            sent.extend_from_slice(&out);
            out.clear();
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("read from the cluster");
        if n == 0 {
            return Err((
                PgError::UpstreamConnect {
                    reason: "closed".into(),
                },
                sent,
            ));
        }
        input.extend_from_slice(&chunk[..n]);
        match auth.feed(&mut input, &limits, &mut out) {
            Ok(Some(ready)) => {
                return Ok(Conn {
                    stream,
                    input,
                    ready,
                });
            }
            Ok(None) => {}
            Err(e) => return Err((e, sent)),
        }
    }
}

impl Conn {
    /// Runs a simple query and returns every message up to ReadyForQuery.
    fn query(&mut self, sql: &str) -> Vec<BackendMessage> {
        let mut out = BytesMut::new();
        frontend::encode_query(&mut out, sql.as_bytes());
        self.stream.write_all(&out).unwrap();
        let mut messages = Vec::new();
        loop {
            while let Some(frame) =
                backend::decode_message(&mut self.input, &Limits::default()).unwrap()
            {
                let done = matches!(frame.message, BackendMessage::ReadyForQuery(_));
                messages.push(frame.message);
                if done {
                    return messages;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "server closed mid-query");
            self.input.extend_from_slice(&chunk[..n]);
        }
    }
}

fn rows(messages: &[BackendMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            BackendMessage::DataRow(row) => Some(
                row.values()
                    .map(|v| v.map(|b| String::from_utf8(b.to_vec()).unwrap()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn seed(cluster: &PgCluster) {
    cluster.admin_sql(
        &cluster.database,
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card varchar(19)); \
             INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '4111111111111111'), \
             (2, 'Bob', NULL, '5500000000000004'); \
             ALTER TABLE customers OWNER TO {};",
            cluster.user
        ),
    );
}

#[test]
fn scram_login_query_and_rewrite_round_trip() {
    let cluster = PgCluster::start();
    seed(&cluster);
    let mut conn = login(&cluster, &cluster.password).expect("scram login");
    assert_eq!(conn.ready.status, TransactionStatus::Idle);
    assert!(conn.ready.cancel_key.is_some());
    assert!(
        conn.ready
            .parameters
            .iter()
            .any(|(n, v)| &n[..] == b"application_name" && &v[..] == b"portcullis-test"),
        "{:?}",
        conn.ready.parameters
    );

    let messages = conn.query("SELECT id, name, email, card FROM customers ORDER BY id");
    assert_eq!(
        rows(&messages),
        vec![
            vec![
                Some("1".into()),
                Some("Ann".into()),
                Some("ann@example.com".into()),
                Some("4111111111111111".into())
            ],
            vec![
                Some("2".into()),
                Some("Bob".into()),
                None,
                Some("5500000000000004".into())
            ],
        ]
    );
    let Some(BackendMessage::RowDescription(fields)) = messages.first() else {
        panic!("no RowDescription: {messages:?}");
    };
    let columns = rewrite::columns(fields);
    let names: Vec<_> = columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "email", "card"]);
    let rewritable: Vec<_> = columns.iter().map(|c| c.rewritable).collect();
    assert_eq!(rewritable, [false, true, true, true]);
    let tag = messages.iter().find_map(|m| match m {
        BackendMessage::CommandComplete { tag } => Some(CommandTag::parse(tag)),
        _ => None,
    });
    assert_eq!(tag.unwrap().rows, Some(2));

    // Mask email and card as a masking rule would, then decode what the client would get.
    let mut client_bytes = BytesMut::new();
    for m in &messages {
        if let BackendMessage::DataRow(row) = m {
            rewrite::rewrite_data_row(row, &Limits::default(), &mut client_bytes, |col, v| match (
                col, v,
            ) {
                (2, Some(_)) => CellEdit::Replace(b"***@example.com".as_slice().into()),
                (3, Some(card)) => {
                    let last4 = &card[card.len() - 4..];
                    CellEdit::Replace([b"************".as_slice(), last4].concat().into())
                }
                _ => CellEdit::Keep,
            })
            .unwrap();
        }
    }
    let mut decoded = Vec::new();
    while let Some(f) = backend::decode_message(&mut client_bytes, &Limits::default()).unwrap() {
        decoded.push(f.message);
    }
    assert_eq!(
        rows(&decoded),
        vec![
            vec![
                Some("1".into()),
                Some("Ann".into()),
                Some("***@example.com".into()),
                Some("************1111".into())
            ],
            vec![
                Some("2".into()),
                Some("Bob".into()),
                None,
                Some("************0004".into())
            ],
        ]
    );

    // The harness really logs statements: later tests rely on it to prove what never arrived.
    assert!(cluster.wait_for_log(
        "SELECT id, name, email, card FROM customers",
        Duration::from_secs(30)
    ));

    // An error mid-session is decoded, and the session continues.
    let messages = conn.query("SELECT * FROM missing_table");
    let err = messages.iter().find_map(|m| match m {
        BackendMessage::ErrorResponse(f) => Some(f.code()),
        _ => None,
    });
    assert_eq!(err.as_deref(), Some("42P01"));
    let messages = conn.query("SELECT 41 + 1");
    assert_eq!(rows(&messages), vec![vec![Some("42".into())]]);
}

fn assert_refused_without_secret(cluster: &PgCluster) {
    let wrong = format!("{}-wrong", cluster.password);
    let (err, sent) = login(cluster, &wrong)
        .err()
        .expect("wrong password must fail");
    assert!(
        matches!(&err, PgError::UpstreamAuth { user, .. } if user == &cluster.user),
        "{err:?}"
    );
    let shown = format!("{err} {err:?} {:?}", err.to_error_fields());
    assert!(shown.contains("28P01"), "{shown}");
    assert!(!shown.contains(&wrong), "password leaked: {shown}");
    assert!(
        !shown.contains(&cluster.password),
        "password leaked: {shown}"
    );
    // Whatever proof or hash was sent must not be echoed either.
    let sent = String::from_utf8_lossy(&sent).into_owned();
    if let Some(at) = sent.find(",p=") {
        let proof: String = sent[at + 3..].chars().take_while(|c| *c != '\0').collect();
        assert!(proof.len() > 20, "{proof}");
        assert!(!shown.contains(&proof), "proof leaked: {shown}");
    }
    if let Some(at) = sent.find("md5") {
        let hash: String = sent[at..].chars().take(35).collect();
        assert!(!shown.contains(&hash), "hash leaked: {shown}");
    }
    assert_eq!(err.sqlstate().as_str(), "08006");
}

#[test]
fn scram_wrong_password_is_a_typed_error_without_the_secret() {
    let cluster = PgCluster::start();
    assert_refused_without_secret(&cluster);
}

#[test]
fn md5_and_cleartext_logins() {
    for method in [AuthMethod::Md5, AuthMethod::Password] {
        let cluster = PgCluster::start_with(method);
        let mut conn = login(&cluster, &cluster.password).expect("login");
        let messages = conn.query("SELECT current_user, 'ok'");
        assert_eq!(
            rows(&messages),
            vec![vec![Some(cluster.user.clone()), Some("ok".into())]],
            "{method:?}"
        );
        assert_refused_without_secret(&cluster);
    }
}

#[test]
fn psql_works_against_the_harness() {
    let cluster = PgCluster::start();
    let out = cluster.psql("SELECT 'harness ' || version() LIKE 'harness PostgreSQL%'");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    let out = cluster.psql("SELECT nope");
    assert!(!out.status.success());
}

#[test]
fn unknown_database_is_a_connection_failure() {
    let cluster = PgCluster::start();
    let mut stream = TcpStream::connect(cluster.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let credential = UpstreamCredential {
        user: cluster.user.clone(),
        password: UpstreamPassword::new(cluster.password.clone()),
        database: "no_such_db".into(),
    };
    let mut out = BytesMut::new();
    let mut auth = UpstreamAuth::start(&credential, &[], None, &mut out);
    let mut input = BytesMut::new();
    let err = loop {
        stream.write_all(&out).unwrap();
        out.clear();
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0);
        input.extend_from_slice(&chunk[..n]);
        match auth.feed(&mut input, &Limits::default(), &mut out) {
            Ok(None) => {}
            Ok(Some(_)) => panic!("logged into a missing database"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, PgError::UpstreamConnect { .. }), "{err:?}");
    assert!(err.to_string().contains("3D000"), "{err}");
    let _ = Bytes::new();
}
