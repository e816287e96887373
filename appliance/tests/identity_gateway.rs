//! Identity end to end through the running `portcullis` binary, on both IO drivers, with a
//! throwaway PostgreSQL behind it and stock `psql` in front:
//! - a real OpenID provider (the certified `oidc-provider` npm package, fixture in
//!   `dataplane/tests/oidc`) found by discovery: a client-credentials token connects as the
//!   service account, and after the provider rotates its key a token signed by the new key
//!   connects without restarting the gateway;
//! - every kind of invalid token (built here, signed with the local issuer's key where the
//!   signature must verify) is refused with a clear message and SQLSTATE, the gateway keeps
//!   serving, and each refusal is an `auth_failed` session with the reason, the presented
//!   subject and the client address, while no token text reaches any recording (Arrow or
//!   Parquet, decoded values and raw bytes);
//! - a token that expires mid-session stops the next statement, and that is recorded.
//!
//! Needs psql, node and `npm ci --prefix dataplane/tests/oidc` (scripts/test installs them):
//! skipped locally without them, failing in CI.
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

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{BIN, DRIVERS, Gateway, start};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgcluster::PgCluster;
use serde_json::{Value, json};

const CLIENT_ID: &str = "portcullis-agent";
const CLIENT_SECRET: &str = "agent-secret";
/// Generous: node starting on a loaded two-core machine can take seconds.
const PROVIDER_START: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn now() -> i64 {
    dataplane::identity::now_unix()
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

/// A temp directory with a self-signed gateway certificate, a policy letting `group` use both
/// connections, and (for the local issuer) a key from `portcullis token keygen`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(group: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        portcullis(&[
            "token",
            "keygen",
            "--out",
            &d.join("issuer").display().to_string(),
        ]);
        std::fs::create_dir_all(d.join("policies")).unwrap();
        std::fs::write(
            d.join("policies/00-access.toml"),
            format!(
                "[[access]]\nconnections = [\"orders-db\", \"orders-plain\"]\ngroups = [\"{group}\"]\n"
            ),
        )
        .unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(d.join("gateway.crt"), cert.cert.pem()).unwrap();
        std::fs::write(d.join("gateway.key"), cert.signing_key.serialize_pem()).unwrap();
        Setup { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn recordings(&self) -> PathBuf {
        self.path("recordings")
    }

    /// Starts the gateway with `identity` as its `[identity]` table: a TLS connection
    /// `orders-db` for psql and a plaintext `orders-plain` for the raw client.
    fn gateway(&self, driver: &str, cluster: &PgCluster, identity: &str) -> Gateway {
        std::fs::write(self.path("db.password"), &cluster.password).unwrap();
        let extra = format!(
            "recordings = \"{}\"\npolicies = \"{}\"\n",
            self.recordings().display(),
            self.path("policies").display()
        );
        let conn = |name: &str, tls: bool| {
            let mut c = format!(
                "[[connections]]\nname = \"{name}\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\ndatabase = \"{}\"\nupstream_tls = \"disable\"\n",
                cluster.addr(),
                cluster.database
            );
            if !tls {
                c.push_str("allow_plaintext = true\n");
            }
            c.push_str(&format!(
                "[connections.credentials]\nuser = \"{}\"\npassword_file = \"{}\"\n",
                cluster.user,
                self.path("db.password").display()
            ));
            if tls {
                c.push_str(&format!(
                    "[connections.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                    self.path("gateway.crt").display(),
                    self.path("gateway.key").display()
                ));
            }
            c
        };
        let connections = format!(
            "[identity]\n{identity}\n\n[recorder]\nflush_interval = \"50ms\"\n\n{}\n{}",
            conn("orders-db", true),
            conn("orders-plain", false)
        );
        start(driver, &extra, &connections)
    }
}

fn psql(addr: SocketAddr, token: &str, sql: &str) -> Output {
    Command::new("psql")
        .arg(format!(
            "host={} port={} dbname=orders user=agent sslmode=require connect_timeout=60",
            addr.ip(),
            addr.port()
        ))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", token)
        .output()
        .expect("run psql (install postgresql-client)")
}

/// Runs `SELECT 41 + 1` through psql and asserts it answers: the gateway still serves.
fn assert_serves(addr: SocketAddr, token: &str, what: &str) {
    let out = psql(addr, token, "SELECT 41 + 1");
    assert!(out.status.success(), "{what}: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "42", "{what}");
}

/// The protocol messages of one raw plaintext connection, up to ReadyForQuery or the close.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Sends a startup packet and `token` as the cleartext password answer.
    fn connect(addr: SocketAddr, token: &str) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut startup = 196_608u32.to_be_bytes().to_vec();
        startup.extend_from_slice(b"user\0agent\0database\0orders\0\0");
        let mut msg = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&startup);
        msg.push(b'p');
        msg.extend_from_slice(&((token.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(token.as_bytes());
        msg.push(0);
        let mut raw = Raw { s, buf: Vec::new() };
        raw.s.write_all(&msg).unwrap();
        raw
    }

    fn send_query(&mut self, sql: &str) {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.s.write_all(&msg).unwrap();
    }

    /// Messages up to ReadyForQuery, or up to the close after a FATAL; the flag says whether
    /// the gateway closed the connection.
    fn until_ready(&mut self) -> (Vec<(u8, Vec<u8>)>, bool) {
        let mut out = Vec::new();
        loop {
            while self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() < 1 + len {
                    break;
                }
                let msg: Vec<u8> = self.buf.drain(..1 + len).collect();
                out.push((msg[0], msg[5..].to_vec()));
                if msg[0] == b'Z' {
                    return (out, false);
                }
            }
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return (out, true),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Severity, SQLSTATE and message of the first ErrorResponse among `messages`.
fn error_of(messages: &[(u8, Vec<u8>)]) -> Option<(String, String, String)> {
    let (_, body) = messages.iter().find(|(t, _)| *t == b'E')?;
    let field = |code: u8| {
        body.split(|b| *b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| text(&f[1..]))
            .unwrap_or_default()
    };
    Some((field(b'S'), field(b'C'), field(b'M')))
}

/// Every value of every column of `batch`, formatted as text (lists and binaries included).
fn batch_strings(batch: &RecordBatch, out: &mut Vec<String>) {
    let options = FormatOptions::default();
    for column in batch.columns() {
        if matches!(column.data_type(), DataType::Timestamp(..)) {
            // Times cannot hold token text, and their zone needs a feature not built here.
            continue;
        }
        let formatter = ArrayFormatter::try_new(column.as_ref(), &options).unwrap();
        for i in 0..column.len() {
            out.push(formatter.value(i).to_string());
        }
    }
}

/// Every recorded value (Arrow segments of every table, and every Parquet copy), and the raw
/// bytes of every file under the recordings directory.
fn recorded_everything(root: &Path) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut values = Vec::new();
    for table in recorder::Table::ALL {
        for batch in recorder::read::read_table(root, table).unwrap() {
            batch_strings(&batch, &mut values);
        }
    }
    let mut raw = Vec::new();
    let mut parquet_files = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_some_and(|e| e == "parquet") {
                parquet_files += 1;
                let file = std::fs::File::open(&path).unwrap();
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .unwrap()
                        .build()
                        .unwrap();
                for batch in reader {
                    batch_strings(&batch.unwrap(), &mut values);
                }
            }
            raw.push(std::fs::read(&path).unwrap());
        }
    }
    assert!(
        parquet_files > 0,
        "no sealed Parquet copy under {}",
        root.display()
    );
    (values, raw)
}

/// Asserts that no recorded value and no recording file contains `secret`.
fn assert_not_recorded(values: &[String], raw: &[Vec<u8>], secret: &str, what: &str) {
    assert!(
        !values.iter().any(|v| v.contains(secret)),
        "{what}: token text in a recorded value"
    );
    let needle = secret.as_bytes();
    assert!(
        !raw.iter()
            .any(|f| f.windows(needle.len()).any(|w| w == needle)),
        "{what}: token text in the bytes of a recording file"
    );
}

fn sessions(root: &Path) -> Vec<recorder::read::SessionRow> {
    let mut out = Vec::new();
    for b in recorder::read::read_table(root, recorder::Table::Sessions).unwrap() {
        out.extend(recorder::read::session_rows(&b).unwrap());
    }
    out
}

fn commands(root: &Path) -> Vec<recorder::read::CommandRow> {
    let mut out = Vec::new();
    for b in recorder::read::read_table(root, recorder::Table::Commands).unwrap() {
        out.extend(recorder::read::command_rows(&b).unwrap());
    }
    out
}

/// SIGTERM, clean exit: the recordings are flushed and sealed (Parquet copies written).
fn stop(gw: &mut Gateway, driver: &str) {
    gw.signal("TERM");
    let status = gw
        .wait_exit(Duration::from_secs(60))
        .expect("gateway exits after SIGTERM");
    assert!(status.success(), "{driver}: exit {status:?}\n{}", gw.logs());
}

// ---------------------------------------------------------------------------------------------
// The local issuer and the invalid tokens.

/// Signs `claims` with the local issuer's Ed25519 key under `kid`.
fn sign(setup: &Setup, kid: &str, claims: &Value) -> String {
    let pem = std::fs::read(setup.path("issuer/signing-key.pem")).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_pem(&pem).unwrap()).unwrap()
}

/// Signs `payload` as it is (not necessarily json) with the local issuer's key under `kid`.
fn sign_raw(setup: &Setup, kid: &str, payload: &[u8]) -> String {
    let pem = std::fs::read(setup.path("issuer/signing-key.pem")).unwrap();
    let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#);
    let signed = format!("{}.{}", b64(header.as_bytes()), b64(payload));
    let key = EncodingKey::from_ed_pem(&pem).unwrap();
    let signature = jsonwebtoken::crypto::sign(signed.as_bytes(), &key, Algorithm::EdDSA).unwrap();
    format!("{signed}.{signature}")
}

/// Claims the local gateway accepts, for `sub`.
fn good_claims(sub: &str) -> Value {
    let t = now();
    json!({
        "iss": "portcullis-local", "aud": "portcullis", "sub": sub,
        "email": format!("{sub}@corp.example"), "groups": ["engineering"],
        "iat": t, "nbf": t, "exp": t + 900,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// One invalid token: what it is, its audit kind, the token, what the client's message must
/// say, and the subject the audit record must carry when the payload is readable.
struct Bad {
    name: &'static str,
    /// The stable reason recorded in front of the message.
    kind: &'static str,
    token: String,
    says: &'static str,
    subject: Option<&'static str>,
}

fn bad_tokens(setup: &Setup) -> Vec<Bad> {
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(setup.path("issuer/jwks.json")).unwrap())
            .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let public_x = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let t = now();
    let unsigned = |header: Value, claims: Value, sig: &str| {
        format!(
            "{}.{}.{sig}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    };

    // The payload of one valid token under the signature of another.
    let a = sign(setup, &kid, &good_claims("case-bad-signature"));
    let b = sign(setup, &kid, &good_claims("someone-else"));
    let bad_signature = format!(
        "{}.{}",
        a.rsplit_once('.').unwrap().0,
        b.rsplit_once('.').unwrap().1
    );
    // HS256 keyed with the issuer's public key bytes: the classic RS/HS confusion.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let hs_confusion = jsonwebtoken::encode(
        &hs,
        &good_claims("case-hs-confusion"),
        &EncodingKey::from_secret(&public_x),
    )
    .unwrap();
    let padding = "p".repeat(20 * 1024);

    vec![
        Bad {
            name: "bad signature",
            kind: "bad_signature",
            token: bad_signature,
            says: "signature does not verify",
            subject: Some("case-bad-signature"),
        },
        Bad {
            name: "wrong iss",
            kind: "wrong_issuer",
            token: sign(
                setup,
                &kid,
                &with(
                    good_claims("case-wrong-iss"),
                    "iss",
                    json!("https://evil.example"),
                ),
            ),
            says: "issuer `https://evil.example` is not trusted",
            subject: Some("case-wrong-iss"),
        },
        Bad {
            name: "wrong aud",
            kind: "wrong_audience",
            token: sign(
                setup,
                &kid,
                &with(
                    good_claims("case-wrong-aud"),
                    "aud",
                    json!("another-service"),
                ),
            ),
            says: "audience does not include this gateway",
            subject: Some("case-wrong-aud"),
        },
        Bad {
            name: "expired",
            kind: "expired",
            token: sign(
                setup,
                &kid,
                &with(good_claims("case-expired"), "exp", json!(t - 120)),
            ),
            says: "token expired at",
            subject: Some("case-expired"),
        },
        Bad {
            name: "not yet valid",
            kind: "not_yet_valid",
            token: sign(
                setup,
                &kid,
                &with(good_claims("case-nbf"), "nbf", json!(t + 3600)),
            ),
            says: "not valid before",
            subject: Some("case-nbf"),
        },
        Bad {
            name: "alg none",
            kind: "alg_not_allowed",
            token: unsigned(
                json!({"alg": "none", "typ": "JWT", "kid": kid}),
                good_claims("case-alg-none"),
                "",
            ),
            says: "algorithm `none` is not allowed",
            subject: Some("case-alg-none"),
        },
        Bad {
            name: "HS256 with the public key",
            kind: "alg_not_allowed",
            token: hs_confusion,
            says: "algorithm `HS256` is not allowed",
            subject: Some("case-hs-confusion"),
        },
        Bad {
            name: "kid of another key type",
            kind: "alg_not_allowed",
            token: unsigned(
                json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
                good_claims("case-kid-type"),
                "c2lnbmF0dXJlLWZvci1hbm90aGVyLWtleS10eXBl",
            ),
            says: "token algorithm `ES256` does not match key",
            subject: Some("case-kid-type"),
        },
        Bad {
            name: "unknown kid",
            kind: "unknown_kid",
            token: sign(setup, "no-such-key", &good_claims("case-unknown-kid")),
            says: "key id `no-such-key` is not in the issuer's key set",
            subject: Some("case-unknown-kid"),
        },
        Bad {
            name: "oversized",
            kind: "oversized",
            token: sign(
                setup,
                &kid,
                &with(good_claims("case-oversized"), "pad", json!(padding)),
            ),
            says: "over the 16384-byte limit",
            subject: None,
        },
        Bad {
            name: "malformed base64",
            kind: "malformed",
            token: format!(
                "{}.not*base64*at*all.c2lnbmF0dXJlLW9mLWEtbWFsZm9ybWVkLXRva2Vu",
                b64(br#"{"alg":"EdDSA"}"#)
            ),
            says: "token is malformed: payload is not base64url",
            subject: None,
        },
        Bad {
            name: "malformed json payload",
            kind: "malformed",
            token: sign_raw(setup, &kid, br#"{"sub": "case-json", "exp": oops"#),
            says: "token is malformed: payload is not a json object",
            subject: None,
        },
        Bad {
            name: "malformed json header",
            kind: "malformed",
            token: format!(
                "{}.{}.c2lnbmF0dXJlLW9mLWJyb2tlbi1qc29uLWhlYWRlcg",
                b64(br#"{"alg": EdDSA"#),
                b64(good_claims("case-json-header").to_string().as_bytes())
            ),
            says: "token is malformed: header is not a json object",
            subject: Some("case-json-header"),
        },
    ]
}

#[test]
fn every_invalid_token_is_refused_recorded_and_never_stored() {
    if common::require("psql").is_none() {
        return;
    }
    let cluster = PgCluster::start();
    for driver in DRIVERS {
        let setup = Setup::new("engineering");
        let identity = format!(
            "issuer = \"portcullis-local\"\naudience = \"portcullis\"\njwks = {{ file = \"{}\" }}\nleeway_secs = 0",
            setup.path("issuer/jwks.json").display()
        );
        let mut gw = setup.gateway(driver, &cluster, &identity);
        let (tls, plain) = (gw.addr("orders-db"), gw.addr("orders-plain"));
        let jwks: Value =
            serde_json::from_str(&std::fs::read_to_string(setup.path("issuer/jwks.json")).unwrap())
                .unwrap();
        let good = sign(
            &setup,
            jwks["keys"][0]["kid"].as_str().unwrap(),
            &good_claims("alice"),
        );
        assert_serves(tls, &good, driver);

        let bad = bad_tokens(&setup);
        for case in &bad {
            let what = format!("{driver}: {}", case.name);
            // psql over TLS: refused, and the message names the problem.
            let out = psql(tls, &case.token, "SELECT 1");
            assert!(!out.status.success(), "{what}: accepted");
            let err = text(&out.stderr);
            assert!(
                err.contains("token authentication failed") && err.contains(case.says),
                "{what}: psql says {err}"
            );
            assert!(
                !err.contains(&case.token),
                "{what}: token echoed to the client"
            );
            // The raw client sees the exact ErrorResponse: FATAL, 28P01, the same message.
            let (answer, closed) = Raw::connect(plain, &case.token).until_ready();
            let (severity, code, message) =
                error_of(&answer).unwrap_or_else(|| panic!("{what}: no error in {answer:?}"));
            assert_eq!(
                (severity.as_str(), code.as_str()),
                ("FATAL", "28P01"),
                "{what}"
            );
            assert!(message.contains(case.says), "{what}: {message}");
            assert!(closed, "{what}: the connection stays open after the FATAL");
            // And the gateway keeps serving.
            assert_serves(tls, &good, &what);
        }

        // A token that expires mid-session: the first statement runs, the next one after
        // expiry gets a FATAL telling the caller to reconnect, and the connection closes.
        let brief = sign(
            &setup,
            jwks["keys"][0]["kid"].as_str().unwrap(),
            &with(good_claims("case-mid-session"), "exp", json!(now() + 3)),
        );
        let mut raw = Raw::connect(plain, &brief);
        let (greeting, closed) = raw.until_ready();
        assert!(
            !closed && error_of(&greeting).is_none(),
            "{driver}: {greeting:?}"
        );
        raw.send_query("SELECT 'still valid'");
        let (answer, _) = raw.until_ready();
        assert_eq!(error_of(&answer), None, "{driver}: {answer:?}");
        std::thread::sleep(Duration::from_millis(4500));
        raw.send_query("SELECT 'after expiry'");
        let (answer, closed) = raw.until_ready();
        let (severity, code, message) = error_of(&answer).expect("an error after expiry");
        assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "28P01"));
        assert!(
            message.contains("reconnect with a fresh token"),
            "{driver}: {message}"
        );
        assert!(closed, "{driver}: session still open after expiry");
        assert!(
            !cluster.log().contains("after expiry"),
            "{driver}: a statement ran after the token expired"
        );
        assert_serves(tls, &good, driver);

        stop(&mut gw, driver);
        let root = setup.recordings();
        let rows = sessions(&root);
        for case in &bad {
            let failed: Vec<_> = rows
                .iter()
                .filter(|s| {
                    s.outcome == "auth_failed"
                        && s.outcome_reason
                            .as_deref()
                            .is_some_and(|r| r.contains(case.says))
                })
                .collect();
            // One for psql, one for the raw client.
            assert!(
                failed.len() >= 2,
                "{driver}: {}: {} auth_failed sessions: {rows:?}",
                case.name,
                failed.len()
            );
            for s in &failed {
                let reason = s.outcome_reason.as_deref().unwrap_or_default();
                assert!(
                    reason.starts_with(&format!("{}: ", case.kind)),
                    "{driver}: {}: {reason}",
                    case.name
                );
                assert!(s.client_addr.starts_with("127.0.0.1:"), "{driver}: {s:?}");
                assert!(s.connection.starts_with("orders-"), "{s:?}");
                if let Some(sub) = case.subject {
                    assert_eq!(s.subject, sub, "{driver}: {}", case.name);
                } else {
                    assert_eq!(s.subject, "", "{driver}: {}", case.name);
                }
                assert!(s.email.is_none() && s.groups.is_empty(), "{s:?}");
            }
        }
        // The expiry mid-session: a `token_expired` command refused, and the session's end.
        let cmds = commands(&root);
        let expired = cmds
            .iter()
            .find(|c| c.subject == "case-mid-session" && c.action == "token_expired")
            .unwrap_or_else(|| panic!("{driver}: expiry not recorded: {cmds:?}"));
        assert_eq!(expired.decision, "deny");
        assert!(
            expired
                .error
                .as_deref()
                .is_some_and(|e| e.contains("reconnect with a fresh token")),
            "{expired:?}"
        );
        let session = rows
            .iter()
            .find(|s| s.subject == "case-mid-session")
            .expect("the expired session is recorded");
        assert_eq!(session.outcome, "error", "{driver}: {session:?}");
        assert!(
            session
                .outcome_reason
                .as_deref()
                .is_some_and(|r| r.contains("token has expired")),
            "{driver}: {session:?}"
        );

        // No token, nor its signature, anywhere in what was recorded.
        let (values, raw) = recorded_everything(&root);
        // The search can find things: a presented subject is there, decoded and as raw bytes
        // (Arrow segments are not compressed).
        assert!(values.iter().any(|v| v.contains("case-bad-signature")));
        assert!(
            raw.iter()
                .any(|f| f.windows(18).any(|w| w == b"case-bad-signature"))
        );
        for (secret, what) in bad
            .iter()
            .map(|b| (b.token.as_str(), b.name))
            .chain([(good.as_str(), "valid"), (brief.as_str(), "mid-session")])
        {
            assert_not_recorded(&values, &raw, secret, &format!("{driver}: {what}"));
            let signature = secret.rsplit('.').next().unwrap_or_default();
            if signature.len() >= 16 {
                assert_not_recorded(
                    &values,
                    &raw,
                    signature,
                    &format!("{driver}: {what} signature"),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A real OpenID provider.

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dataplane/tests/oidc")
}

/// Whether the provider can run here; in CI its absence is a failure, not a skip.
fn provider_available() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let package = fixture_dir()
        .join("node_modules/oidc-provider/package.json")
        .exists();
    if node && package {
        return true;
    }
    let what = if node {
        "the oidc-provider package is not installed"
    } else {
        "node is not installed"
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{what}: install node and npm, then run `npm ci --prefix dataplane/tests/oidc` \
         (scripts/test does both)"
    );
    eprintln!("SKIP: {what} (npm ci --prefix dataplane/tests/oidc)");
    false
}

/// The provider process; killed on drop so a failing test leaves nothing running.
struct Provider {
    child: Child,
    issuer: String,
}

impl Provider {
    fn start(port: u16, kid: &str, alg: &str) -> Provider {
        let mut child = Command::new("node")
            .args(["provider.mjs", &port.to_string(), kid, alg])
            .current_dir(fixture_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("ready ") {
                    let _ = tx.send(issuer.to_owned());
                }
            }
        });
        let Ok(issuer) = rx.recv_timeout(PROVIDER_START) else {
            let _ = child.kill();
            panic!("the OpenID provider did not start within {PROVIDER_START:?}");
        };
        Provider { child, issuer }
    }

    /// A real client-credentials grant at the token endpoint named by discovery.
    fn client_credentials_token(&self) -> String {
        let meta: Value = serde_json::from_str(
            &ureq::get(format!("{}/.well-known/openid-configuration", self.issuer))
                .call()
                .unwrap()
                .into_body()
                .read_to_string()
                .unwrap(),
        )
        .unwrap();
        let basic = STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
        let body = ureq::post(meta["token_endpoint"].as_str().unwrap())
            .header("Authorization", format!("Basic {basic}"))
            .send_form([
                ("grant_type", "client_credentials"),
                ("scope", "db"),
                ("resource", "urn:portcullis:gateway"),
            ])
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kid_of(token: &str) -> String {
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[test]
fn real_provider_token_connects_and_key_rotation_needs_no_restart() {
    if common::require("psql").is_none() || !provider_available() {
        return;
    }
    let cluster = PgCluster::start();
    for driver in DRIVERS {
        let port = free_port();
        let mut provider = Provider::start(port, &format!("{driver}-rsa"), "RS256");
        // The provider puts the granted scopes in `scope`: they are the service's groups.
        let setup = Setup::new("db");
        let identity = format!(
            "issuer = \"{}\"\naudience = \"portcullis\"\njwks = \"discovery\"\ngroups_claim = \"scope\"\nmin_refresh_secs = 1",
            provider.issuer
        );
        let mut gw = setup.gateway(driver, &cluster, &identity);
        let tls = gw.addr("orders-db");

        let first = provider.client_credentials_token();
        let out = psql(tls, &first, "SELECT 'agent ran this'");
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "agent ran this");

        // Rotation: the provider restarts on the same port with only a new key of another
        // type. The gateway picks it up through its unknown-`kid` refresh, no restart.
        drop(provider);
        provider = Provider::start(port, &format!("{driver}-ec"), "ES256");
        let rotated = provider.client_credentials_token();
        assert_eq!(kid_of(&rotated), format!("{driver}-ec"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut refused = 0;
        loop {
            let out = psql(tls, &rotated, "SELECT 'after rotation'");
            if out.status.success() {
                assert_eq!(text(&out.stdout).trim(), "after rotation");
                break;
            }
            let err = text(&out.stderr);
            assert!(
                err.contains("is not in the issuer's key set"),
                "{driver}: {err}"
            );
            refused += 1;
            assert!(
                Instant::now() < deadline,
                "{driver}: the rotated key was not picked up within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The old key left the provider's set: its token is refused now, cached or not.
        let out = psql(tls, &first, "SELECT 1");
        assert!(
            !out.status.success(),
            "{driver}: the retired key still works"
        );
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("key id `{driver}-rsa` is not in")),
            "{driver}: {err}"
        );
        drop(provider);

        stop(&mut gw, driver);
        let rows = sessions(&setup.recordings());
        let agent: Vec<_> = rows
            .iter()
            .filter(|s| s.subject == CLIENT_ID && s.outcome == "ok")
            .collect();
        assert_eq!(agent.len(), 2, "{driver}: {rows:?}");
        assert!(agent.iter().all(|s| s.groups == ["db"]), "{agent:?}");
        let failed = rows
            .iter()
            .filter(|s| s.outcome == "auth_failed" && s.subject == CLIENT_ID)
            .count();
        assert_eq!(failed, refused + 1, "{driver}: {rows:?}");
        let cmds = commands(&setup.recordings());
        for sql in ["SELECT 'agent ran this'", "SELECT 'after rotation'"] {
            let c = cmds
                .iter()
                .find(|c| c.text.as_deref() == Some(sql))
                .unwrap_or_else(|| panic!("{driver}: `{sql}` not recorded: {cmds:?}"));
            assert_eq!(c.subject, CLIENT_ID);
            assert_eq!(c.decision, "allow");
        }
    }
}
