//! The harness of the review tests: setup (issuer, policy, config over a throwaway
//! PostgreSQL), psql and CLI runners, a raw protocol client, a webhook receiver, and readers of
//! the recordings (the recorder's reader and DuckDB).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::POLICY;
use crate::common::{self, BIN, Gateway};
use crate::pgcluster::PgCluster;

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
}

pub fn portcullis(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "portcullis failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn mint(setup: &Setup, sub: &str, groups: &str) -> String {
    let key = setup.key.display().to_string();
    let out = portcullis(
        &[
            "token", "mint", "--key", &key, "--sub", sub, "--groups", groups, "--ttl", "30m",
        ],
        &[],
    );
    ok(&out).trim().to_owned()
}

pub fn setup(webhook: SocketAddr) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("issuer");
    ok(&portcullis(
        &["token", "keygen", "--out", &keys.display().to_string()],
        &[],
    ));
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/00-reviews.toml"),
        format!(
            "{POLICY}\n[[webhook]]\nurl = \"http://{webhook}/hook\"\nconnections = [\"orders\"]\n"
        ),
    )
    .unwrap();
    Setup {
        key: keys.join("signing-key.pem"),
        dir,
    }
}

pub fn config(setup: &Setup, cluster: &PgCluster) -> (String, String) {
    let d = setup.dir.path();
    std::fs::write(d.join("db.password"), format!("{}\n", cluster.password)).unwrap();
    let upstream = cluster.addr();
    let conn = |name: &str| {
        let (db, user) = (&cluster.database, &cluster.user);
        common::pg_connection(
            d,
            name,
            &upstream,
            db,
            user,
            false,
            "idle_timeout = \"5m\"\n",
        )
    };
    let connections = format!(
        "{}{}\n{}",
        common::local_identity(d),
        conn("orders"),
        conn("vault"),
    );
    (common::dirs_under(d), connections)
}

pub fn psql(addr: SocketAddr, token: &str, sql: &str) -> Output {
    Command::new("psql")
        .arg(format!(
            "host={} port={} dbname=orders user=x sslmode=disable connect_timeout=60",
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

pub fn psql_bg(addr: SocketAddr, token: &str, sql: &str) -> JoinHandle<Output> {
    let (token, sql) = (token.to_owned(), sql.to_owned());
    std::thread::spawn(move || psql(addr, &token, &sql))
}

/// The admin CLI with `token`, through the environment variables.
pub fn cli(gw: &Gateway, token: &str, args: &[&str]) -> Output {
    let admin = format!("http://{}", gw.admin);
    portcullis(
        args,
        &[("PORTCULLIS_ADMIN", &admin), ("PORTCULLIS_TOKEN", token)],
    )
}

pub fn pending_reviews(gw: &Gateway, token: &str) -> Vec<Value> {
    let out = ok(&cli(gw, token, &["reviews", "list", "--json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    v["reviews"].as_array().unwrap().clone()
}

/// Waits until a pending review's text contains `needle`; returns its id.
pub fn wait_review(gw: &Gateway, token: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = pending_reviews(gw, token)
            .into_iter()
            .find(|r| r["text"].as_str().unwrap().contains(needle))
        {
            return r["id"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no pending review for `{needle}`"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn scalar(cluster: &PgCluster, sql: &str) -> String {
    cluster.admin_sql(&cluster.database, sql).trim().to_owned()
}

/// One raw HTTP request to the admin listener; status and JSON body.
pub fn admin(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut s = TcpStream::connect(gw.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A webhook receiver: keeps every request body, answers 200.
pub fn webhook_receiver() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut s = s;
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let n = s.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        continue;
                    };
                    let head = text(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + 4 + len {
                        let n = s.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = &buf[head_end + 4..head_end + 4 + len];
                    sink.lock()
                        .unwrap()
                        .push(serde_json::from_slice(body).unwrap_or(Value::Null));
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                    return;
                }
            });
        }
    });
    (addr, got)
}

/// A raw protocol client: holds a session open and sends queries without psql.
pub struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn login(addr: SocketAddr, token: &str) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut raw = Raw { s, buf: Vec::new() };
        let mut startup = 196_608u32.to_be_bytes().to_vec();
        startup.extend_from_slice(b"user\0x\0database\0orders\0\0");
        let mut msg = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&startup);
        msg.push(b'p');
        msg.extend_from_slice(&((token.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(token.as_bytes());
        msg.push(0);
        raw.s.write_all(&msg).unwrap();
        let greeting = raw.until(b'Z');
        assert!(greeting.iter().any(|(t, _)| *t == b'Z'), "login failed");
        raw
    }

    pub fn send_query(&mut self, sql: &str) {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.s.write_all(&msg).unwrap();
    }

    /// Parse, Bind, Execute and Sync of `sql` (unnamed statement and portal) in one write.
    pub fn send_extended(&mut self, sql: &str) {
        let mut out = Vec::new();
        let mut msg = |tag: u8, body: &[u8]| {
            out.push(tag);
            out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            out.extend_from_slice(body);
        };
        let mut parse = b"\0".to_vec();
        parse.extend_from_slice(sql.as_bytes());
        parse.extend_from_slice(&[0, 0, 0]);
        msg(b'P', &parse);
        msg(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]);
        msg(b'E', &[0, 0, 0, 0, 0]);
        msg(b'S', &[]);
        self.s.write_all(&out).unwrap();
    }

    /// Messages up to and including the first with tag `stop`, or up to the close.
    pub fn until(&mut self, stop: u8) -> Vec<(u8, Vec<u8>)> {
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
                if tag == stop {
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

pub fn field(messages: &[(u8, Vec<u8>)], tag: u8, code: u8) -> Option<String> {
    let (_, body) = messages.iter().find(|(t, _)| *t == tag)?;
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(&[code][..]))
        .map(text)
}

/// The live session (id, worker) of `subject` that appeared after `known`.
pub fn new_session(gw: &Gateway, token: &str, known: &[String]) -> (String, u64) {
    let out = ok(&cli(gw, token, &["sessions", "list", "--json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let s = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| !known.contains(&s["id"].as_str().unwrap().to_owned()))
        .expect("a new live session")
        .clone();
    (
        s["id"].as_str().unwrap().to_owned(),
        s["worker"].as_u64().unwrap(),
    )
}

/// Runs `sql` with DuckDB over the sealed Parquet files of `root`; rows as JSON arrays of
/// strings. `None` when python3 lacks duckdb (a failure in CI).
pub fn duckdb(root: &std::path::Path, sql: &str) -> Option<Vec<Vec<String>>> {
    let has = Command::new("python3")
        .args(["-c", "import duckdb"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with duckdb is required in CI"
        );
        eprintln!("SKIP duckdb check: python3 lacks duckdb");
        return None;
    }
    let script = r#"
import sys, json, duckdb
root, sql = sys.argv[1], sys.argv[2]
con = duckdb.connect()
for t in ("commands", "reviews"):
    con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{root}/{t}/*/*.parquet', hive_partitioning = true)")
print(json.dumps([[str(v) for v in r] for r in con.execute(sql).fetchall()]))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(root)
        .arg(sql)
        .output()
        .unwrap();
    assert!(out.status.success(), "duckdb: {}", text(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

pub fn review_rows(root: &std::path::Path) -> Vec<recorder::read::ReviewRow> {
    let mut out = Vec::new();
    for b in recorder::read::read_table(root, recorder::Table::Reviews).unwrap() {
        out.extend(recorder::read::review_rows(&b).unwrap());
    }
    out
}

pub fn command_rows(root: &std::path::Path) -> Vec<recorder::read::CommandRow> {
    let mut out = Vec::new();
    for b in recorder::read::read_table(root, recorder::Table::Commands).unwrap() {
        out.extend(recorder::read::command_rows(&b).unwrap());
    }
    out
}
