//! Real peers for the integration tests: a throwaway PostgreSQL cluster and a small Python
//! HTTP/1.1 server, each on a free 127.0.0.1 port and torn down on drop; plus a runner for the
//! built `portcullis-loadgen` binary.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const PASSWORD: &str = "s3cret-loadgen";

pub struct PgCluster {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    dir: tempfile::TempDir,
}

fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL server binaries are missing: install the `postgresql` Debian package \
             (expected /usr/lib/postgresql/<version>/bin/initdb)",
        )
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: install the `postgresql` package")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Runs a PostgreSQL server binary, as the `postgres` user when we are root (the server refuses
/// to run as root).
fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgCluster {
    /// A cluster with SCRAM password auth for user `postgres`. With `tls_only`, it also has a
    /// self-signed certificate and accepts TCP connections only over TLS.
    pub fn start(tls_only: bool) -> PgCluster {
        let bin = pg_bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if is_root() {
            run_ok(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path()),
                "chown",
            );
        }
        run_ok(
            as_pg_user(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["--auth=scram-sha-256", "--username=postgres", "--no-sync"])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        let port = free_port();
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 50\n",
            dir.path().display()
        );
        if tls_only {
            let crt = data.join("server.crt");
            let key = data.join("server.key");
            run_ok(
                as_pg_user(Path::new("/usr/bin/openssl"))
                    .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                    .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
                    .args(["-subj", "/CN=localhost", "-keyout"])
                    .arg(&key)
                    .arg("-out")
                    .arg(&crt),
                "openssl req",
            );
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            )
            .unwrap();
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        f.write_all(conf.as_bytes()).unwrap();
        drop(f);
        run_ok(
            as_pg_user(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .args(["-w", "-t", "120", "start"]),
            "pg_ctl start",
        );
        PgCluster {
            port,
            bin,
            data,
            dir,
        }
    }

    /// Runs SQL through `psql` and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-At",
                "-v",
            ])
            .arg("ON_ERROR_STOP=1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn url(&self, password: &str) -> String {
        format!(
            "postgresql://postgres:{password}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_pg_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What a loadgen run left behind: exit status, output and the parsed `--json` file.
pub struct Run {
    pub output: Output,
    pub json: serde_json::Value,
}

impl Run {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn requests(&self) -> u64 {
        self.json["results"]["requests"].as_u64().unwrap()
    }
    pub fn errors(&self, kind: &str) -> u64 {
        self.json["results"]["errors"][kind].as_u64().unwrap_or(0)
    }
    pub fn errors_total(&self) -> u64 {
        self.json["results"]["errors_total"].as_u64().unwrap()
    }

    /// Percentiles must be non-decreasing and bounded by min and max.
    pub fn assert_percentiles_ordered(&self) {
        let l = &self.json["results"]["latency_us"];
        let v: Vec<u64> = ["min", "p50", "p90", "p99", "p99_9", "max"]
            .iter()
            .map(|k| {
                l[*k]
                    .as_u64()
                    .unwrap_or_else(|| panic!("latency_us.{k} missing: {l}"))
            })
            .collect();
        assert!(
            v.windows(2).all(|w| w[0] <= w[1]),
            "percentiles out of order: {l}"
        );
        assert!(v[0] >= 1, "latencies are at least 1 µs: {l}");
    }
}

/// Runs `portcullis-loadgen` with `args`, writing its JSON into `dir`.
pub fn loadgen(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let json = dir.join(format!("run-{}.json", free_port()));
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis-loadgen"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "loadgen panicked:\n{stderr}");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON written ({e}); status {:?}\nstdout:\n{}\nstderr:\n{stderr}",
            output.status,
            String::from_utf8_lossy(&output.stdout)
        )
    });
    Run {
        output,
        json: serde_json::from_str(&text).unwrap(),
    }
}

/// A Python HTTP/1.1 keep-alive server: `/` answers 200, `/fail` 500, `/stall-once` 200 but
/// the first time only after a one-second stall, `/stats` returns `<requests> <connections>`
/// seen so far (not counting `/stats` itself).
pub struct HttpServer {
    pub port: u16,
    child: Child,
}

const HTTP_SERVER: &str = r#"
import http.server, sys, threading
lock = threading.Lock()
import time
seen = {"requests": 0, "connections": 0, "stalled": False}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def setup(self):
        super().setup()
        with lock: seen["connections"] += 1
    def do_GET(self):
        if self.path == "/stats":
            body = ("%d %d" % (seen["requests"], seen["connections"])).encode()
            code = 200
        else:
            with lock: seen["requests"] += 1
            code = 500 if self.path.startswith("/fail") else 200
            if self.path == "/stall-once" and not seen["stalled"]:
                seen["stalled"] = True
                time.sleep(1.0)
            body = b"hello from a real server\n" * 40
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

impl HttpServer {
    pub fn start() -> HttpServer {
        let mut child = Command::new("python3")
            .args(["-c", HTTP_SERVER])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the HTTP tests");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad port line `{line}`"));
        HttpServer { port, child }
    }

    /// `(requests, connections)` the server has seen.
    pub fn stats(&self) -> (u64, u64) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        let mut it = body.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
