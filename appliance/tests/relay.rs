//! The raw tcp relay, end to end through the real binary, on both IO drivers.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a failed step is a failed test"
)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// A private nginx serving `root` on a free port; killed on drop.
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    _prefix: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(root: &std::path::Path) -> Option<Nginx> {
    let nginx = require("nginx")?;
    let prefix = tempfile::tempdir().unwrap();
    let addr = dead_addr();
    let conf = prefix.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n access_log off;\n client_body_temp_path {p}/body;\n proxy_temp_path {p}/proxy;\n\
             fastcgi_temp_path {p}/fcgi;\n uwsgi_temp_path {p}/uwsgi;\n scgi_temp_path {p}/scgi;\n\
             server {{ listen {addr}; root {r}; }}\n}}\n",
            p = prefix.path().display(),
            r = root.display()
        ),
    )
    .unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(prefix.path())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Nginx {
        child,
        addr,
        _prefix: prefix,
    })
}

fn curl(url: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "60", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn curl_through_gateway_matches_nginx_directly() {
    let root = tempfile::tempdir().unwrap();
    // Pseudo-random, incompressible-looking content so any reordering or loss shows.
    let mut body = Vec::with_capacity(3 << 20);
    let mut x: u32 = 0x1234_5678;
    while body.len() < 3 << 20 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        body.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(root.path().join("blob.bin"), &body).unwrap();
    std::fs::write(
        root.path().join("index.html"),
        "<h1>hello portcullis</h1>\n",
    )
    .unwrap();
    let Some(nginx) = start_nginx(root.path()) else {
        return;
    };
    require("curl").unwrap();

    for driver in DRIVERS {
        let gw = start(driver, "", &tcp_connection("web", nginx.addr, ""));
        let via = gw.addr("web");
        for path in ["/index.html", "/blob.bin", "/missing"] {
            let direct = Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "60",
                    &format!("http://{}{path}", nginx.addr),
                ])
                .output()
                .unwrap();
            let through = Command::new("curl")
                .args(["-sS", "--max-time", "60", &format!("http://{via}{path}")])
                .output()
                .unwrap();
            assert!(
                direct.status.success() && through.status.success(),
                "{driver} {path}"
            );
            assert_eq!(direct.stdout, through.stdout, "{driver}: {path} differs");
        }
        assert_eq!(curl(&format!("http://{via}/blob.bin")), body, "{driver}");
        gw.wait_metric_at_least(
            "portcullis_bytes_upstream_to_client_total",
            "web",
            2 * (3 << 20),
        );
    }
}

#[test]
fn fragmented_writes_arrive_whole_and_in_order() {
    let echo = echo_server();
    for driver in DRIVERS {
        let gw = start(driver, "", &tcp_connection("echo", echo, ""));
        let mut s = connect(gw.addr("echo"));
        let msg: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        // One byte per write, with pauses, then a few odd-sized chunks.
        for b in &msg[..64] {
            s.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        for chunk in msg[64..].chunks(77) {
            s.write_all(chunk).unwrap();
        }
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg, "{driver}");
    }
}

#[test]
fn one_gib_streams_with_bounded_gateway_memory() {
    const TOTAL: u64 = 1 << 30;
    let source = serve_each(|mut s| {
        let chunk: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
        let mut sent = 0u64;
        while sent < TOTAL {
            if s.write_all(&chunk).is_err() {
                return;
            }
            sent += chunk.len() as u64;
        }
    });
    for driver in DRIVERS {
        let gw = start(driver, "", &tcp_connection("bulk", source, ""));
        let before = gw.peak_rss_kib();
        let started = Instant::now();
        let mut s = connect(gw.addr("bulk"));
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            // Spot-check content: the pattern repeats every 253 bytes from the stream start.
            assert_eq!(
                buf[0],
                ((total % (256 * 1024)) % 253) as u8,
                "{driver} at {total}"
            );
            total += n as u64;
        }
        let took = started.elapsed();
        let after = gw.peak_rss_kib();
        eprintln!(
            "{driver}: 1 GiB in {took:?} ({:.0} MiB/s), peak RSS {before} -> {after} KiB",
            TOTAL as f64 / 1048576.0 / took.as_secs_f64()
        );
        assert_eq!(total, TOTAL, "{driver}");
        // Two 64 KiB relay buffers per session; allow generous allocator slack, far below
        // what buffering even a small fraction of the stream would need.
        assert!(
            after < before + 32 * 1024,
            "{driver}: peak RSS grew from {before} KiB to {after} KiB"
        );
        gw.wait_metric("portcullis_bytes_upstream_to_client_total", "bulk", TOTAL);
    }
}

#[test]
fn client_half_close_still_gets_the_answer() {
    // Reads to EOF, then answers with the byte count: needs the client's EOF passed through
    // and the other direction still open.
    let upstream = serve_each(|mut s| {
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        s.write_all(format!("got {} bytes", all.len()).as_bytes())
            .unwrap();
    });
    for driver in DRIVERS {
        let gw = start(driver, "", &tcp_connection("hc", upstream, ""));
        let mut s = connect(gw.addr("hc"));
        s.write_all(&[7u8; 100_000]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "got 100000 bytes", "{driver}");
    }
}

#[test]
fn upstream_half_close_keeps_client_to_upstream_flowing() {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(tx);
    let upstream = serve_each(move |mut s| {
        s.write_all(b"banner").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        tx.lock().unwrap().send(rest).unwrap();
    });
    for driver in DRIVERS {
        let gw = start(driver, "", &tcp_connection("uhc", upstream, ""));
        let mut s = connect(gw.addr("uhc"));
        let mut banner = Vec::new();
        s.read_to_end(&mut banner).unwrap(); // EOF arrives: the upstream shut its side
        assert_eq!(banner, b"banner", "{driver}");
        s.write_all(b"still talking after your EOF").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(got, b"still talking after your EOF", "{driver}");
    }
}

#[test]
fn refused_upstream_closes_client_promptly_and_is_counted() {
    let dead = dead_addr();
    for driver in DRIVERS {
        let gw = start(driver, "", &tcp_connection("dead", dead, ""));
        let started = Instant::now();
        let mut s = connect(gw.addr("dead"));
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "{driver}: expected the client to be closed");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{driver}: took {:?}",
            started.elapsed()
        );
        let refused = gw.metric_sum("portcullis_errors_total", "kind=\"upstream_refused\"");
        assert_eq!(refused, 1, "{driver}");
        // The log line reaches the test through a pipe and a reader thread: wait for it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !gw.logs().contains("upstream connect failed") {
            assert!(Instant::now() < deadline, "{driver}: {}", gw.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn idle_sessions_are_closed_after_idle_timeout() {
    let echo = echo_server();
    for driver in DRIVERS {
        let gw = start(
            driver,
            "",
            &tcp_connection("idle", echo, "idle_timeout = \"2s\""),
        );
        let mut s = connect(gw.addr("idle"));
        // Activity resets the clock: these pings span longer than the idle timeout...
        for _ in 0..8 {
            s.write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
        // ...silence does not.
        let started = Instant::now();
        let mut b = [0u8; 4];
        let n = s.read(&mut b).unwrap_or(0);
        let waited = started.elapsed();
        assert_eq!(n, 0, "{driver}");
        assert!(
            waited >= Duration::from_millis(1200) && waited < Duration::from_secs(20),
            "{driver}: {waited:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.metric_sum("portcullis_errors_total", "kind=\"idle_timeout\"") != 1 {
            assert!(
                Instant::now() < deadline,
                "{driver}: idle timeout not counted"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn concurrent_connections_spread_over_workers_and_all_succeed() {
    let echo = echo_server();
    for driver in DRIVERS {
        let gw = start(driver, "", &tcp_connection("many", echo, ""));
        let addr = gw.addr("many");
        let threads: Vec<_> = (0..16)
            .map(|t| {
                std::thread::spawn(move || {
                    // Hold several sessions open at once per thread.
                    let mut socks: Vec<_> = (0..10).map(|_| connect(addr)).collect();
                    for (i, s) in socks.iter_mut().enumerate() {
                        let msg = format!("thread {t} conn {i}");
                        s.write_all(msg.as_bytes()).unwrap();
                        let mut got = vec![0u8; msg.len()];
                        s.read_exact(&mut got).unwrap();
                        assert_eq!(got, msg.as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let per_worker = gw.metric_by_worker("portcullis_connections_accepted_total", "many");
        assert_eq!(
            per_worker.values().sum::<u64>(),
            160,
            "{driver}: {per_worker:?}"
        );
        assert_eq!(per_worker.len(), 2);
        for (w, n) in &per_worker {
            assert!(
                *n > 0,
                "{driver}: worker {w} accepted nothing: {per_worker:?}"
            );
        }
    }
}

#[test]
fn connection_limit_rejects_and_counts() {
    let echo = echo_server();
    for driver in DRIVERS {
        let gw = start(
            driver,
            "",
            &tcp_connection("lim", echo, "max_connections = 2"),
        );
        let mut held: Vec<_> = (0..2).map(|_| connect(gw.addr("lim"))).collect();
        for s in &mut held {
            s.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
        }
        let mut third = connect(gw.addr("lim"));
        let mut b = [0u8; 1];
        assert_eq!(
            third.read(&mut b).unwrap_or(0),
            0,
            "{driver}: third should be closed"
        );
        assert_eq!(
            gw.metric_sum("portcullis_connections_rejected_total", "lim"),
            1,
            "{driver}"
        );
        assert_eq!(
            gw.metric_sum("portcullis_connections_active", "lim"),
            2,
            "{driver}"
        );
    }
}
