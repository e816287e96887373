//! The gateway side of the identity tests: a temp setup (certificate, access policy, local
//! issuer key) and a gateway over a throwaway PostgreSQL, psql and a raw protocol client, and
//! readers that search every recorded value and file.
#![allow(
    dead_code,
    reason = "shared by several test binaries, each using a subset"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::common::{BIN, Gateway, start};
use crate::pgcluster::PgCluster;

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

pub fn now() -> i64 {
    dataplane::identity::now_unix()
}

pub fn portcullis(args: &[&str]) -> Output {
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
pub struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    pub fn new(group: &str) -> Setup {
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

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn recordings(&self) -> PathBuf {
        self.path("recordings")
    }

    /// Starts the gateway with `identity` as its `[identity]` table: a TLS connection
    /// `orders-db` for psql and a plaintext `orders-plain` for the raw client.
    pub fn gateway(&self, driver: &str, cluster: &PgCluster, identity: &str) -> Gateway {
        self.gateway_with(driver, cluster, identity, "")
    }

    /// [`Setup::gateway`] with `conn_extra` (TOML keys) added to both connections.
    pub fn gateway_with(
        &self,
        driver: &str,
        cluster: &PgCluster,
        identity: &str,
        conn_extra: &str,
    ) -> Gateway {
        std::fs::write(self.path("db.password"), &cluster.password).unwrap();
        let d = self.dir.path();
        let upstream = cluster.addr();
        let conn = |name: &str, tls: bool| {
            let (db, user) = (&cluster.database, &cluster.user);
            crate::common::pg_connection(d, name, &upstream, db, user, tls, conn_extra)
        };
        let extra = crate::common::dirs_under(d);
        let connections = format!(
            "[identity]\n{identity}\n\n[recorder]\nflush_interval = \"50ms\"\n\n{}\n{}",
            conn("orders-db", true),
            conn("orders-plain", false)
        );
        start(driver, &extra, &connections)
    }
}

pub fn psql(addr: SocketAddr, token: &str, sql: &str) -> Output {
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
pub fn assert_serves(addr: SocketAddr, token: &str, what: &str) {
    let out = psql(addr, token, "SELECT 41 + 1");
    assert!(out.status.success(), "{what}: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "42", "{what}");
}

/// The protocol messages of one raw plaintext connection, up to ReadyForQuery or the close.
pub struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Sends a startup packet and `token` as the cleartext password answer.
    pub fn connect(addr: SocketAddr, token: &str) -> Raw {
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

    /// The client's own address, as the gateway sees it on loopback.
    pub fn local_addr(&self) -> SocketAddr {
        self.s.local_addr().unwrap()
    }

    pub fn send_query(&mut self, sql: &str) {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.s.write_all(&msg).unwrap();
    }

    /// Messages up to ReadyForQuery, or up to the close after a FATAL; the flag says whether
    /// the gateway closed the connection.
    pub fn until_ready(&mut self) -> (Vec<(u8, Vec<u8>)>, bool) {
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
pub fn error_of(messages: &[(u8, Vec<u8>)]) -> Option<(String, String, String)> {
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
pub fn batch_strings(batch: &RecordBatch, out: &mut Vec<String>) {
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
pub fn recorded_everything(root: &Path) -> (Vec<String>, Vec<Vec<u8>>) {
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
pub fn assert_not_recorded(values: &[String], raw: &[Vec<u8>], secret: &str, what: &str) {
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

pub fn sessions(root: &Path) -> Vec<recorder::read::SessionRow> {
    let mut out = Vec::new();
    for b in recorder::read::read_table(root, recorder::Table::Sessions).unwrap() {
        out.extend(recorder::read::session_rows(&b).unwrap());
    }
    out
}

pub fn commands(root: &Path) -> Vec<recorder::read::CommandRow> {
    let mut out = Vec::new();
    for b in recorder::read::read_table(root, recorder::Table::Commands).unwrap() {
        out.extend(recorder::read::command_rows(&b).unwrap());
    }
    out
}

/// SIGTERM, clean exit: the recordings are flushed and sealed (Parquet copies written).
pub fn stop(gw: &mut Gateway, driver: &str) {
    gw.signal("TERM");
    let status = gw
        .wait_exit(Duration::from_secs(60))
        .expect("gateway exits after SIGTERM");
    assert!(status.success(), "{driver}: exit {status:?}\n{}", gw.logs());
}
