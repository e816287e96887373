//! One measurement against one target: a `portcullis-loadgen` run (closed or open loop) with
//! the CPU time of the proxy (`/proc/<pid>/stat`), of the load generator (this process's
//! waited-for children) and of the whole machine (`/proc/stat`) read around it, and the
//! idle-connection memory probe. The load generator's clients share no code with the gateway.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// The `pgbench -S` statement, with a random account per request (simple protocol, as pgbench).
pub const SELECT_MIX: &str = "[[query]]\nsql = \"SELECT abalance FROM pgbench_accounts WHERE aid = $1\"\nparams = [{ uniform = [1, 100000] }]\n";

/// Where and how the load generator connects.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub port: u16,
    /// Password or token, passed through the environment.
    pub secret: String,
    /// Process whose CPU time is billed to this target (`None`: direct, nothing in between).
    pub pid: Option<u32>,
}

/// What one load run gave.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub throughput: f64,
    pub errors: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// The proxy's CPU seconds per 1,000 queries (warm-up included on both sides).
    pub cpu_s_per_1k: Option<f64>,
    /// The load generator's own CPU seconds per 1,000 queries.
    pub loadgen_cpu_s_per_1k: Option<f64>,
    /// CPU seconds per 1,000 queries of the whole machine (every process, the kernel's
    /// interrupts included): the budget the load generator, the proxy and PostgreSQL share.
    pub machine_cpu_s_per_1k: Option<f64>,
    /// Cores busy on average during the run (of `available_parallelism`).
    pub machine_busy_cores: Option<f64>,
    /// `[quantile, µs]` pairs for the latency curve.
    pub percentiles: Vec<(f64, f64)>,
}

/// Load shape of one run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub connections: u32,
    pub threads: u32,
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
}

/// utime + stime of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    // Fields 14 and 15 of stat(5).
    stat_sum(&format!("/proc/{pid}/stat"), 14)
}

/// CPU time, in clock ticks, of this process's waited-for children (`cutime + cstime` of
/// `/proc/self/stat`): read around a load generator run, the difference is the load
/// generator's own CPU time.
fn children_ticks() -> Option<u64> {
    // Fields 16 and 17 of stat(5).
    stat_sum("/proc/self/stat", 16)
}

/// The sum of fields `field` and `field + 1` (numbered as in stat(5), from 1) of a
/// `/proc/<pid>/stat` file.
fn stat_sum(path: &str, field: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the fields after the
    // last closing parenthesis are fixed, starting with field 3.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(field.checked_sub(3)?);
    let a: u64 = fields.next()?.parse().ok()?;
    let b: u64 = fields.next()?.parse().ok()?;
    Some(a + b)
}

/// Busy clock ticks of the whole machine, all CPUs together (`/proc/stat`: user, nice,
/// system, irq, softirq, steal; idle and iowait left out).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// Kernel clock ticks per second (`getconf CLK_TCK`, 100 on Linux if unavailable).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident set of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Runs `portcullis-loadgen` against `ep` with `shape`.
#[expect(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexing yields Null for a missing key; it never panics"
)]
pub fn load(
    loadgen: &Path,
    work: &Path,
    ep: &Endpoint,
    db: &str,
    shape: Shape,
    ticks_per_s: f64,
) -> anyhow::Result<Run> {
    let mix = work.join("select-only.toml");
    if !mix.exists() {
        std::fs::write(&mix, SELECT_MIX)?;
    }
    let json: PathBuf = work.join("loadgen-run.json");
    let mut cmd = Command::new(loadgen);
    cmd.arg("-c")
        .arg(shape.connections.to_string())
        .arg("-t")
        .arg(shape.threads.to_string())
        .arg("-w")
        .arg(format!("{}ms", shape.warmup.as_millis()))
        .arg("-d")
        .arg(format!("{}ms", shape.duration.as_millis()))
        .arg("--json")
        .arg(&json);
    if let Some(rate) = shape.rate {
        cmd.arg("-R").arg(format!("{rate:.0}"));
    }
    cmd.args(["pg", "--host", "127.0.0.1", "--port"])
        .arg(ep.port.to_string())
        .args(["-U", super::peers::PG_USER, "--dbname", db])
        .args([
            "--password-env",
            "E2E_SECRET",
            "--sslmode",
            "disable",
            "-M",
            "simple",
        ])
        .arg("--mix")
        .arg(&mix)
        .env("E2E_SECRET", &ep.secret);
    let before = ep.pid.and_then(cpu_ticks);
    let (lg_before, busy_before) = (children_ticks(), machine_busy_ticks());
    let started = std::time::Instant::now();
    let out = cmd.output().context("running portcullis-loadgen")?;
    let wall = started.elapsed().as_secs_f64();
    let after = ep.pid.and_then(cpu_ticks);
    let (lg_after, busy_after) = (children_ticks(), machine_busy_ticks());
    if !out.status.success() {
        bail!(
            "portcullis-loadgen failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let r = &v["results"];
    let lat = &r["latency_us"];
    let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    // Every request sent, warm-up included, is what the CPU ticks paid for.
    let sent: u64 = v["timeline"]
        .as_array()
        .map(|t| t.iter().filter_map(|i| i["requests"].as_u64()).sum())
        .unwrap_or(0);
    let per_1k = |b: Option<u64>, a: Option<u64>| match (b, a) {
        (Some(b), Some(a)) if sent > 0 => {
            Some(a.saturating_sub(b) as f64 / ticks_per_s / sent as f64 * 1000.0)
        }
        _ => None,
    };
    let cpu_s_per_1k = per_1k(before, after);
    let loadgen_cpu_s_per_1k = per_1k(lg_before, lg_after);
    let machine_cpu_s_per_1k = per_1k(busy_before, busy_after);
    let machine_busy_cores = match (busy_before, busy_after) {
        (Some(b), Some(a)) if wall > 0.0 => Some(a.saturating_sub(b) as f64 / ticks_per_s / wall),
        _ => None,
    };
    let percentiles = r["percentiles_us"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Run {
        throughput: f(&r["throughput_rps"]),
        errors: r["errors_total"].as_u64().unwrap_or(0),
        p50_us: f(&lat["p50"]),
        p90_us: f(&lat["p90"]),
        p99_us: f(&lat["p99"]),
        p999_us: f(&lat["p99_9"]),
        max_us: f(&lat["max"]),
        cpu_s_per_1k,
        loadgen_cpu_s_per_1k,
        machine_cpu_s_per_1k,
        machine_busy_cores,
        percentiles,
    })
}

/// Opens `warm` sessions through the full-inspection gateway, then `n` more, logs each in
/// with `token` (cleartext password, as the gateway asks on a plaintext listener) and leaves
/// them idle; returns the gateway's RSS growth over the `n`, per connection, in bytes. The
/// `warm` sessions take the one-time growth (per-worker tables, the allocator's first pages)
/// out of the figure.
pub fn idle_memory(
    port: u16,
    gateway_pid: u32,
    token: &str,
    warm: usize,
    n: usize,
) -> anyhow::Result<f64> {
    let mut open = Vec::with_capacity(warm + n);
    for _ in 0..warm {
        open.push(login(port, token)?);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(gateway_pid).context("reading the gateway's RSS")?;
    for _ in 0..n {
        open.push(login(port, token)?);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(gateway_pid).context("reading the gateway's RSS")?;
    drop(open);
    Ok(after.saturating_sub(before) as f64 * 1024.0 / n.max(1) as f64)
}

/// A minimal PostgreSQL login: StartupMessage, cleartext password, wait for ReadyForQuery.
fn login(port: u16, token: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0bench\0database\0postgres\0\0");
    let mut msg = u32::try_from(body.len() + 4)?.to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    s.write_all(&msg)?;
    let mut sent_password = false;
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head)?;
        let [kind, a, b, c, d] = head;
        let len = usize::try_from(u32::from_be_bytes([a, b, c, d]))?.saturating_sub(4);
        if len > 1 << 20 {
            bail!("login: message of {len} bytes");
        }
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)?;
        match kind {
            b'R' if payload.get(..4) == Some(&3u32.to_be_bytes()) && !sent_password => {
                let mut m = vec![b'p'];
                m.extend_from_slice(&u32::try_from(token.len() + 5)?.to_be_bytes());
                m.extend_from_slice(token.as_bytes());
                m.push(0);
                s.write_all(&m)?;
                sent_password = true;
            }
            b'E' => bail!("login refused: {}", String::from_utf8_lossy(&payload)),
            b'Z' => return Ok(s),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stat_sum;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // Field 3 is the state; field k holds k - 3 below, so utime + stime (14, 15) is 23
        // and cutime + cstime (16, 17) is 27, whatever the command name holds.
        let dir = std::env::temp_dir().join(format!("portcullis-stat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stat");
        let tail: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
        std::fs::write(&path, format!("42 (a) (b c)) S {}\n", tail.join(" "))).unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(stat_sum(p, 14), Some(23));
        assert_eq!(stat_sum(p, 16), Some(27));
        assert_eq!(stat_sum(p, 2), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
