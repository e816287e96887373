//! Test harness: runs the real `portcullis` binary on a temp config with free ports, reads its
//! JSON logs to learn the addresses it bound, and scrapes its admin endpoint.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the harness"
)]
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test harness: a failed step is a failed test"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Generous: the suite runs on a loaded two-core machine in debug builds.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

pub const DRIVERS: [&str; 2] = ["iouring", "epoll"];

/// A PostgreSQL `[[connections]]` entry over the files a test directory `d` holds:
/// `db.password` (the upstream credential) and, for a TLS listener, `gateway.crt` and
/// `gateway.key`; a listener without TLS allows plaintext. `extra` (TOML keys) goes in as is.
pub fn pg_connection(
    d: &Path,
    name: &str,
    upstream: &str,
    database: &str,
    user: &str,
    tls: bool,
    extra: &str,
) -> String {
    let mut c = format!(
        "[[connections]]\nname = \"{name}\"\nprotocol = \"postgres\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\ndatabase = \"{database}\"\nupstream_tls = \"disable\"\n"
    );
    if !tls {
        c.push_str("allow_plaintext = true\n");
    }
    c.push_str(extra);
    c.push_str(&format!(
        "[connections.credentials]\nuser = \"{user}\"\npassword_file = \"{}\"\n",
        d.join("db.password").display()
    ));
    if tls {
        c.push_str(&format!(
            "[connections.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            d.join("gateway.crt").display(),
            d.join("gateway.key").display()
        ));
    }
    c
}

/// `[gateway]` keys putting the recordings and the policies under `d`.
pub fn dirs_under(d: &Path) -> String {
    format!(
        "recordings = \"{}\"\npolicies = \"{}\"\n",
        d.join("recordings").display(),
        d.join("policies").display()
    )
}

/// `[identity]` trusting the local issuer key `portcullis token keygen` wrote under
/// `d/issuer`, and a `[recorder]` flushing every 50 ms so tests read records soon.
pub fn local_identity(d: &Path) -> String {
    format!(
        "[identity]\nissuer = \"portcullis-local\"\naudience = \"portcullis\"\njwks = {{ file = \"{}\" }}\nleeway_secs = 0\n\n[recorder]\nflush_interval = \"50ms\"\n\n",
        d.join("issuer/jwks.json").display()
    )
}

/// A peer program the test needs; missing means skip locally, fail in CI.
pub fn require(program: &str) -> Option<PathBuf> {
    let found = [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(program))
    .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "`{program}` is required in CI (scripts/test installs it)"
        );
        eprintln!("SKIP: `{program}` not installed; run scripts/test to install it");
    }
    found
}

pub struct Gateway {
    pub child: Child,
    pub admin: SocketAddr,
    pub listen: HashMap<String, SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

/// Writes `connections` (TOML `[[connections]]` entries) under a `[gateway]` with `workers`
/// workers and free ports, starts the binary with `driver`, waits until it is ready.
pub fn start(driver: &str, gateway_extra: &str, connections: &str) -> Gateway {
    start_logging(driver, gateway_extra, connections, true)
}

/// `start`, then closes the read end of the gateway's stderr once it is ready, as
/// `portcullis run 2>&1 | head` does: every later log write fails with EPIPE.
pub fn start_then_close_logs(driver: &str, gateway_extra: &str, connections: &str) -> Gateway {
    start_logging(driver, gateway_extra, connections, false)
}

fn start_logging(
    driver: &str,
    gateway_extra: &str,
    connections: &str,
    keep_reading: bool,
) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    // Recordings and policies stay inside the test's directory unless the test names its own.
    let mut defaults = String::new();
    if !gateway_extra.contains("recordings") {
        let rec = dir.path().join("recordings");
        defaults.push_str(&format!("recordings = \"{}\"\n", rec.display()));
    }
    if !gateway_extra.contains("policies") {
        let pol = dir.path().join("policies");
        std::fs::create_dir_all(&pol).unwrap();
        defaults.push_str(&format!("policies = \"{}\"\n", pol.display()));
    }
    std::fs::write(
        &config,
        format!("[gateway]\nworkers = 2\nadmin = \"127.0.0.1:0\"\n{defaults}{gateway_extra}\n{connections}"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "--driver",
            driver,
            "run",
            "--config",
        ])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let sink = logs.clone();
    // Dropped with the reader thread, that is once stderr's read end is closed.
    let (reading_tx, reading) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _reading = reading_tx;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let ready = line.contains("portcullis ready");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = tx.send(v);
            }
            sink.lock().unwrap().push(line);
            if ready && !keep_reading {
                break;
            }
        }
    });
    let mut listen = HashMap::new();
    let deadline = Instant::now() + START_TIMEOUT;
    let admin = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(v) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!(
                "gateway did not become ready; logs:\n{}",
                logs.lock().unwrap().join("\n")
            );
        };
        let f = &v["fields"];
        match f["message"].as_str() {
            Some("listening") => {
                listen.insert(
                    f["connection"].as_str().unwrap().to_owned(),
                    f["listen"].as_str().unwrap().parse().unwrap(),
                );
            }
            Some("portcullis ready") => break f["admin"].as_str().unwrap().parse().unwrap(),
            _ => {}
        }
    };
    // Keep draining logs into `logs` (the reader thread does that); the channel is done.
    drop(rx);
    if !keep_reading {
        // Err once the reader thread has ended and dropped the pipe.
        let _ = reading.recv();
    }
    Gateway {
        child,
        admin,
        listen,
        logs,
        dir,
    }
}

impl Gateway {
    pub fn addr(&self, connection: &str) -> SocketAddr {
        self.listen[connection]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// Sum of one metric over workers, for series whose labels contain `filter`.
    pub fn metric_sum(&self, name: &str, filter: &str) -> u64 {
        self.metric_by_worker(name, filter).values().sum()
    }

    /// Waits until `metric_sum(name, filter) == want`: counters move when the gateway's own
    /// IO completes, which can be just after the peer already saw the bytes.
    pub fn wait_metric(&self, name: &str, filter: &str, want: u64) {
        self.wait_metric_until(name, filter, |got| got == want, &format!("== {want}"));
    }

    /// Like [`Gateway::wait_metric`], for a lower bound.
    pub fn wait_metric_at_least(&self, name: &str, filter: &str, min: u64) {
        self.wait_metric_until(name, filter, |got| got >= min, &format!(">= {min}"));
    }

    fn wait_metric_until(&self, name: &str, filter: &str, ok: impl Fn(u64) -> bool, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.metric_sum(name, filter);
            if ok(got) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{{{filter}}} is {got}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One metric per worker label, for series whose labels contain `filter`.
    pub fn metric_by_worker(&self, name: &str, filter: &str) -> HashMap<String, u64> {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200);
        let mut out = HashMap::new();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let Some(labels) = rest.strip_prefix('{') else {
                continue;
            };
            let (labels, value) = labels.split_once("} ").unwrap();
            if !labels.contains(filter) {
                continue;
            }
            let worker = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("worker=\""))
                .unwrap()
                .trim_end_matches('"')
                .to_owned();
            *out.entry(worker).or_insert(0) += value.parse::<u64>().unwrap();
        }
        out
    }

    /// Peak resident set (VmHWM) of the gateway process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the gateway has logged a line containing `needle`: log lines arrive through
    /// a pipe and a reader thread, a little after the event they describe.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line contains `{needle}`; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tcp_connection(name: &str, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[[connections]]\nname = \"{name}\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{extra}\n"
    )
}

/// One-shot HTTP/1.1 GET with `connection: close`; returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// An address nothing listens on (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A TCP echo server on a thread per connection.
pub fn echo_server() -> SocketAddr {
    serve_each(|mut s| {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Runs `handler` on a new thread for every accepted connection.
pub fn serve_each(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let h = handler.clone();
            std::thread::spawn(move || h(s));
        }
    });
    addr
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}
