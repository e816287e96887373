//! `portcullis demo`: a self-contained gateway on free local ports, in front of a tiny HTTP
//! upstream started on a thread, with copy-pasteable commands to try. It runs the same code
//! path as `run`. The PostgreSQL demo (identity, policy, masking, recording) arrives with the
//! postgres module; this one shows the raw `tcp` relay, the admin listener and metrics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use dataplane::config::Config;
use dataplane::runtime::DriverChoice;

use super::{EXIT_CONFIG, EXIT_RUNTIME};

/// Largest request head the demo upstream reads before answering.
const DEMO_MAX_REQUEST_BYTES: usize = 8 * 1024;

const DEMO_BODY: &str = "Hello from the demo upstream. You reached it through Portcullis.\n";

pub fn run(driver: DriverChoice) -> ExitCode {
    let upstream = match start_upstream() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the demo upstream");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let text = format!(
        r#"[gateway]
workers = 2
admin = "127.0.0.1:0"
drain_timeout = "5s"

[[connections]]
name = "demo-web"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "{upstream}"
idle_timeout = "1m"
"#
    );
    let config = match Config::parse(Path::new("<demo>"), &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::serve::serve(&config, driver, |gateway, admin| {
        let listen = gateway
            .listen_addrs()
            .first()
            .map_or_else(|| "?".to_owned(), |(_, a)| a.to_string());
        print_instructions(&listen, &upstream, admin);
    })
}

#[expect(
    clippy::print_stdout,
    reason = "the instructions are the demo's output"
)]
fn print_instructions(listen: &str, upstream: &SocketAddr, admin: SocketAddr) {
    println!(
        "
Portcullis demo is running.

  a local HTTP server (the upstream) .... http://{upstream}/
  Portcullis tcp relay in front of it ... http://{listen}/
  admin: health, readiness, metrics ..... http://{admin}/

Try:
  curl http://{listen}/                         # through the gateway
  curl http://{upstream}/                         # directly: same bytes
  curl http://{admin}/healthz
  curl -s http://{admin}/metrics | grep portcullis_connections_accepted_total

This demo shows the raw tcp relay with per-worker metrics. The full PostgreSQL demo
(OIDC identity, policy, masking, audit recording) arrives with the postgres module.

Press Ctrl-C to stop (the gateway drains open sessions, then exits 0).
"
    );
}

/// A minimal HTTP/1.1 server on its own thread: one fixed answer to any request.
fn start_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("demo-upstream".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream);
            }
        })?;
    Ok(addr)
}

fn answer(mut s: TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 || head.len() + n > DEMO_MAX_REQUEST_BYTES {
            return Ok(());
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    write!(
        s,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{DEMO_BODY}",
        DEMO_BODY.len()
    )?;
    s.flush()
}
