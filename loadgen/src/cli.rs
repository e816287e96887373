//! Command-line surface: the shared load shape (connections, rate, duration, outputs) and one
//! subcommand per workload. It turns flags into a [`Plan`]; it does not connect anywhere.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Upper bound on `--connections`: each is a task with its own histogram, and a typo such as
/// `-c 1000000` should fail fast rather than exhaust file descriptors.
pub const MAX_CONNECTIONS: usize = 65_536;
/// Longest `--duration`, `--warmup` or `--timeout`: keeps every deadline computed from them far
/// from `Instant` overflow.
pub const MAX_SPAN: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Parser)]
#[command(
    name = "portcullis-loadgen",
    version,
    about = "Portcullis load generator: closed- or open-loop PostgreSQL and HTTP load with \
             HdrHistogram latency output"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub workload: Workload,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Concurrent connections (each runs one request at a time).
    #[arg(short = 'c', long, default_value_t = 8, global = true)]
    pub connections: usize,
    /// Runtime worker threads.
    #[arg(short = 't', long, default_value_t = default_threads(), global = true)]
    pub threads: usize,
    /// Open loop: total requests per second across all connections, on a fixed schedule.
    /// Latency is measured from each request's scheduled send time (coordinated-omission
    /// correction). Without it the run is closed loop: every connection goes as fast as it can.
    #[arg(short = 'R', long, global = true)]
    pub rate: Option<f64>,
    /// Measured duration, after warm-up (e.g. `10s`, `2m`).
    #[arg(short = 'd', long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub duration: Duration,
    /// Warm-up before measuring; its results are shown in progress lines but not in totals.
    #[arg(short = 'w', long, default_value = "0s", value_parser = humantime::parse_duration, global = true)]
    pub warmup: Duration,
    /// Per-request (and per-connect) timeout; expiry counts as a `timeout` error.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    /// Write parameters, machine and results as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Write per-second latency histograms (µs) as an HdrHistogram V2 interval log.
    #[arg(long, global = true)]
    pub hdr_log: Option<PathBuf>,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

#[derive(Debug, Subcommand)]
pub enum Workload {
    /// PostgreSQL: a single query or a weighted mix, over simple, extended or prepared protocol.
    Pg(PgArgs),
    /// HTTP/1.1 requests with keep-alive.
    Http(HttpArgs),
}

#[derive(Debug, Args)]
pub struct PgArgs {
    /// Connection string, as a URL (`postgresql://user@host:5432/db`) or `key=value` pairs.
    /// Flags below override its fields.
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(short = 'U', long)]
    pub user: Option<String>,
    #[arg(long)]
    pub dbname: Option<String>,
    /// Password (visible in the process list: prefer `--password-env`).
    #[arg(long)]
    pub password: Option<String>,
    /// Name of an environment variable holding the password, e.g. an OIDC token presented to
    /// the gateway as the password.
    #[arg(long)]
    pub password_env: Option<String>,
    #[arg(long, value_enum, default_value_t = SslMode::Disable)]
    pub sslmode: SslMode,
    /// Protocol used per statement.
    #[arg(short = 'M', long, value_enum, default_value_t = PgMode::Simple)]
    pub mode: PgMode,
    /// The statement to run (no parameters).
    #[arg(
        short = 'q',
        long,
        conflicts_with = "mix",
        required_unless_present = "mix"
    )]
    pub query: Option<String>,
    /// TOML file of weighted statements with random parameters (see docs/loadgen.md).
    #[arg(long)]
    pub mix: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS required; the server certificate is not verified (as libpq's `require`).
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PgMode {
    /// One Query message; parameters are inlined as SQL literals.
    Simple,
    /// Parse/Bind/Execute of an unnamed statement per request (one round trip).
    Extended,
    /// Each statement prepared once per connection, then Bind/Execute per request.
    Prepared,
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Target URL (`http://host[:port]/path`).
    pub url: String,
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// Extra request header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request body.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Request body read from a file.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// Open a new connection for every request instead of reusing it.
    #[arg(long)]
    pub no_keep_alive: bool,
}

/// The load shape every workload runs under.
#[derive(Debug, Clone)]
pub struct Plan {
    pub connections: usize,
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
}

impl Common {
    pub fn plan(&self) -> anyhow::Result<Plan> {
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            bail!(
                "`--connections {}` must be between 1 and {MAX_CONNECTIONS}",
                self.connections
            );
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            bail!("`--rate {rate}` must be a positive number of requests per second");
        }
        for (flag, span) in [
            ("duration", self.duration),
            ("warmup", self.warmup),
            ("timeout", self.timeout),
        ] {
            if span > MAX_SPAN {
                bail!(
                    "`--{flag}` must be at most {}",
                    humantime::format_duration(MAX_SPAN)
                );
            }
        }
        if self.duration.is_zero() {
            bail!("`--duration` must be more than zero");
        }
        if self.timeout.is_zero() {
            bail!("`--timeout` must be more than zero");
        }
        Ok(Plan {
            connections: self.connections,
            rate: self.rate,
            duration: self.duration,
            warmup: self.warmup,
            timeout: self.timeout,
        })
    }
}

impl Cli {
    /// The run's parameters as recorded in the JSON output; secrets are never included.
    pub fn parameters(&self) -> serde_json::Value {
        let c = &self.common;
        let workload = match &self.workload {
            Workload::Pg(p) => serde_json::json!({
                "kind": "pg",
                "url": p.url.as_deref().map(redact_url),
                "host": p.host,
                "port": p.port,
                "user": p.user,
                "dbname": p.dbname,
                "password_env": p.password_env,
                "sslmode": p.sslmode,
                "mode": p.mode,
                "query": p.query,
                "mix": p.mix,
            }),
            Workload::Http(h) => serde_json::json!({
                "kind": "http",
                "url": h.url,
                "method": h.method,
                "headers": h.headers.iter().map(|h| redact_header(h)).collect::<Vec<_>>(),
                "body_bytes": h.body.as_ref().map(String::len),
                "body_file": h.body_file,
                "keep_alive": !h.no_keep_alive,
            }),
        };
        serde_json::json!({
            "workload": workload,
            "connections": c.connections,
            "threads": c.threads,
            "rate": c.rate,
            "loop": if c.rate.is_some() { "open" } else { "closed" },
            "duration_s": c.duration.as_secs_f64(),
            "warmup_s": c.warmup.as_secs_f64(),
            "timeout_s": c.timeout.as_secs_f64(),
        })
    }
}

/// Hides a password in a connection URL or `key=value` string before it is written anywhere.
fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@')
            && let Some((user, _)) = userinfo.split_once(':')
        {
            return format!("{scheme}://{user}:***@{host}");
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Credentials in headers (bearer tokens) are replaced, other headers kept for the record.
fn redact_header(h: &str) -> String {
    match h.split_once(':') {
        Some((name, _))
            if name.trim().eq_ignore_ascii_case("authorization")
                || name.trim().eq_ignore_ascii_case("cookie") =>
        {
            format!("{name}: ***")
        }
        _ => h.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_record() {
        assert_eq!(
            redact_url("postgresql://u:secret@h:5/db"),
            "postgresql://u:***@h:5/db"
        );
        assert_eq!(
            redact_url("host=h password=secret user=u"),
            "host=h password=*** user=u"
        );
        assert_eq!(
            redact_header("Authorization: Bearer abc"),
            "Authorization: ***"
        );
        assert_eq!(redact_header("X-Trace: 1"), "X-Trace: 1");
    }
}
