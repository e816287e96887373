//! The gateway configuration: one TOML file, its types, loading and validation.
//!
//! Loading is strict: unknown keys are errors, and every error names the file, the line and
//! the key, so an operator can fix it without guessing. Cross-field rules (unique names and
//! listen addresses, credentials where a protocol needs them) are checked here, once, so the
//! modules that consume the config just read fields. This module does not open sockets,
//! resolve host names or read credential files: those happen at start, where failures are
//! runtime errors rather than config errors.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::limits::{
    DEFAULT_MAX_CONNECTIONS, MAX_CONFIG_FILE_BYTES, MAX_CONNECTIONS_CONFIGURED, MAX_WORKERS,
};

/// A config that could not be loaded. Always the operator's file (or its absence) is at fault;
/// `Display` gives `file:line:column: key `k`: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file `{path}` is larger than the {limit} byte limit")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{}:{line}:{column}: {}{message}", path.display(), key_prefix(key))]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// The dotted key at fault, when one is known.
        key: Option<String>,
        message: String,
    },
}

fn key_prefix(key: &Option<String>) -> String {
    match key {
        Some(k) => format!("key `{k}`: "),
        None => String::new(),
    }
}

/// Which wire protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    Mysql,
    Http,
    Kubernetes,
    Ssh,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Http => "http",
            Protocol::Kubernetes => "kubernetes",
            Protocol::Ssh => "ssh",
            Protocol::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the gateway protects its connection to a PostgreSQL upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum UpstreamTls {
    #[serde(rename = "disable")]
    Disable,
    #[serde(rename = "require")]
    Require,
    #[default]
    #[serde(rename = "verify-full")]
    VerifyFull,
}

/// What the recorder does when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Refuse the request: nothing is forwarded unrecorded.
    #[default]
    FailClosed,
    /// Stall the session until the queue drains.
    Block,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub path: PathBuf,
    pub gateway: GatewayConfig,
    pub identity: Option<IdentityConfig>,
    pub recorder: RecorderConfig,
    pub connections: Vec<ConnectionConfig>,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Worker threads, one per core by default.
    pub workers: usize,
    /// Pin worker `i` to core `i mod cores` (the default). Unpinned workers let the scheduler
    /// move them, which can suit a host the gateway shares with busy processes.
    pub pin_workers: bool,
    /// Management listener (health, readiness, metrics, later the admin API).
    pub admin: SocketAddr,
    pub recordings: PathBuf,
    pub policies: PathBuf,
    /// Key for the `hash` masking strategy; `None` means a key generated once per install and
    /// kept beside the recordings (`<recordings>/.mask_key`).
    pub mask_key_file: Option<PathBuf>,
    /// How long live sessions may continue after SIGTERM/SIGINT before they are closed.
    pub drain_timeout: Duration,
    /// Concurrent sessions over all workers and connections.
    pub max_connections: u64,
}

/// The `[identity]` table is the identity module's own type, parsed as the module documents it
/// (docs/identity.md), so the two can never drift apart.
pub use crate::identity::IdentityConfig;

#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub flush_interval: Duration,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    pub retention_age: Option<Duration>,
    pub retention_bytes: Option<u64>,
    pub on_full: OnFull,
}

#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    pub name: String,
    pub protocol: Protocol,
    pub listen: SocketAddr,
    /// `host:port`; resolved at start.
    pub upstream: String,
    pub connect_timeout: Duration,
    /// A session with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent sessions on this connection (all workers); `None` leaves only the global limit.
    pub max_connections: Option<u64>,
    pub record_frames: bool,
    pub database: Option<String>,
    pub upstream_tls: UpstreamTls,
    pub upstream_ca: Option<PathBuf>,
    pub allow_plaintext: bool,
    pub credentials: Option<Credentials>,
    pub tls: Option<ListenerTls>,
}

/// The gateway's own credential for the upstream. The secret itself is never in the config.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: PasswordSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    File(PathBuf),
    Env(String),
}

/// Certificate and key the gateway presents to clients on this connection.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

// ---- raw, as written in the file ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    gateway: RawGateway,
    identity: Option<IdentityConfig>,
    #[serde(default)]
    recorder: RawRecorder,
    #[serde(default)]
    connections: Vec<RawConnection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    workers: Option<Spanned<usize>>,
    pin_workers: Option<bool>,
    admin: Option<Spanned<String>>,
    recordings: Option<PathBuf>,
    policies: Option<PathBuf>,
    mask_key_file: Option<PathBuf>,
    drain_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecorder {
    flush_interval: Option<Spanned<String>>,
    segment_max_bytes: Option<Spanned<u64>>,
    segment_max_age: Option<Spanned<String>>,
    retention_age: Option<Spanned<String>>,
    retention_bytes: Option<Spanned<u64>>,
    on_full: Option<OnFull>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    name: Spanned<String>,
    protocol: Spanned<Protocol>,
    listen: Spanned<String>,
    upstream: Spanned<String>,
    connect_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<u64>>,
    #[serde(default)]
    record_frames: bool,
    database: Option<String>,
    upstream_tls: Option<Spanned<UpstreamTls>>,
    upstream_ca: Option<PathBuf>,
    #[serde(default)]
    allow_plaintext: bool,
    credentials: Option<Spanned<RawCredentials>>,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    user: String,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
const DEFAULT_RECORDINGS: &str = "/var/lib/portcullis/recordings";
const DEFAULT_POLICIES: &str = "/etc/portcullis/policies";
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_SEGMENT_MAX_AGE: Duration = Duration::from_secs(5 * 60);

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = std::fs::File::open(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut text = String::new();
        // Read one byte past the limit so an oversize file is detected without reading it all.
        file.take(MAX_CONFIG_FILE_BYTES.saturating_add(1))
            .read_to_string(&mut text)
            .map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
        if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                limit: MAX_CONFIG_FILE_BYTES,
            });
        }
        Config::parse(path, &text)
    }

    /// Validates `text` as if it had been read from `path` (used for messages only).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let v = Validator { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| v.toml_error(&e))?;
        v.build(raw)
    }

    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name == name)
    }
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    fn err(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let (line, column) = line_col(self.text, span.start);
        // serde reports type errors against the value; the key is what precedes `=` on that line.
        let key = self.key_on_line(line);
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            key,
            message: e.message().trim().to_owned(),
        }
    }

    fn key_on_line(&self, line: usize) -> Option<String> {
        let text = self.text.lines().nth(line.checked_sub(1)?)?;
        let (key, _) = text.split_once('=')?;
        let key = key.trim().trim_matches('"');
        if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
            return None;
        }
        Some(key.to_owned())
    }

    fn duration(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        match v {
            None => Ok(None),
            Some(s) => parse_duration(s.get_ref())
                .map(Some)
                .map_err(|m| self.err(s.span(), key, m)),
        }
    }

    fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let g = raw.gateway;
        let workers = match &g.workers {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(w) => {
                let n = *w.get_ref();
                if n == 0 || n > MAX_WORKERS {
                    return Err(self.err(
                        w.span(),
                        "gateway.workers",
                        format!("`{n}` is out of range: use 1 to {MAX_WORKERS}"),
                    ));
                }
                n
            }
        };
        let admin = match &g.admin {
            None => DEFAULT_ADMIN
                .parse()
                .map_err(|_| self.err(0..0, "gateway.admin", "bad default"))?,
            Some(a) => {
                parse_addr(a.get_ref()).map_err(|m| self.err(a.span(), "gateway.admin", m))?
            }
        };
        let max_connections = match &g.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(m) if *m.get_ref() == 0 => {
                return Err(self.err(m.span(), "gateway.max_connections", "must be at least 1"));
            }
            Some(m) => *m.get_ref(),
        };
        let gateway = GatewayConfig {
            workers,
            pin_workers: g.pin_workers.unwrap_or(true),
            admin,
            recordings: g.recordings.unwrap_or_else(|| DEFAULT_RECORDINGS.into()),
            policies: g.policies.unwrap_or_else(|| DEFAULT_POLICIES.into()),
            mask_key_file: g.mask_key_file,
            drain_timeout: self
                .duration(&g.drain_timeout, "gateway.drain_timeout")?
                .unwrap_or(DEFAULT_DRAIN),
            max_connections,
        };

        let identity = raw.identity;

        let r = raw.recorder;
        let recorder = RecorderConfig {
            flush_interval: self
                .duration(&r.flush_interval, "recorder.flush_interval")?
                .unwrap_or(DEFAULT_FLUSH_INTERVAL),
            segment_max_bytes: match &r.segment_max_bytes {
                Some(b) if *b.get_ref() == 0 => {
                    return Err(self.err(
                        b.span(),
                        "recorder.segment_max_bytes",
                        "must be at least 1",
                    ));
                }
                Some(b) => *b.get_ref(),
                None => DEFAULT_SEGMENT_MAX_BYTES,
            },
            segment_max_age: self
                .duration(&r.segment_max_age, "recorder.segment_max_age")?
                .unwrap_or(DEFAULT_SEGMENT_MAX_AGE),
            retention_age: self.duration(&r.retention_age, "recorder.retention_age")?,
            retention_bytes: r.retention_bytes.map(Spanned::into_inner),
            on_full: r.on_full.unwrap_or_default(),
        };

        if raw.connections.len() > MAX_CONNECTIONS_CONFIGURED {
            return Err(ConfigError::Invalid {
                path: self.path.to_owned(),
                line: 1,
                column: 1,
                key: Some("connections".into()),
                message: format!("at most {MAX_CONNECTIONS_CONFIGURED} connections are allowed"),
            });
        }
        let mut names: HashMap<String, ()> = HashMap::new();
        let mut listens: HashMap<SocketAddr, String> = HashMap::new();
        let mut connections = Vec::with_capacity(raw.connections.len());
        for (i, c) in raw.connections.into_iter().enumerate() {
            let at = |field: &str| format!("connections[{i}].{field}");
            let name = c.name.get_ref().clone();
            if !valid_name(&name) {
                return Err(self.err(
                    c.name.span(),
                    &at("name"),
                    format!("`{name}` is not a valid name: use 1 to 64 of a-z, 0-9, `-`, `_`"),
                ));
            }
            if names.insert(name.clone(), ()).is_some() {
                return Err(self.err(
                    c.name.span(),
                    &at("name"),
                    format!("`{name}` is used twice"),
                ));
            }
            let listen = parse_addr(c.listen.get_ref())
                .map_err(|m| self.err(c.listen.span(), &at("listen"), m))?;
            // Port 0 means "any free port": two of those never collide.
            if listen.port() != 0
                && let Some(other) = listens.insert(listen, name.clone())
            {
                return Err(self.err(
                    c.listen.span(),
                    &at("listen"),
                    format!("`{listen}` is already the listen address of `{other}`"),
                ));
            }
            let upstream = c.upstream.get_ref().clone();
            check_host_port(&upstream)
                .map_err(|m| self.err(c.upstream.span(), &at("upstream"), m))?;
            let protocol = *c.protocol.get_ref();
            let credentials = match c.credentials {
                None => None,
                Some(cr) => {
                    let span = cr.span();
                    let cr = cr.into_inner();
                    let password = match (cr.password_file, cr.password_env) {
                        (Some(f), None) => PasswordSource::File(f),
                        (None, Some(e)) => PasswordSource::Env(e),
                        _ => {
                            return Err(self.err(
                                span,
                                &at("credentials"),
                                "set exactly one of `password_file` and `password_env`",
                            ));
                        }
                    };
                    Some(Credentials {
                        user: cr.user,
                        password,
                    })
                }
            };
            if protocol == Protocol::Postgres && credentials.is_none() {
                return Err(self.err(
                    c.protocol.span(),
                    &at("credentials"),
                    format!("postgres connection `{name}` needs [connections.credentials]: the gateway, not the caller, holds the upstream credential"),
                ));
            }
            let upstream_tls = c
                .upstream_tls
                .as_ref()
                .map(|t| *t.get_ref())
                .unwrap_or_default();
            if let Some(t) = &c.upstream_tls
                && protocol != Protocol::Postgres
            {
                return Err(self.err(
                    t.span(),
                    &at("upstream_tls"),
                    format!(
                        "only postgres connections take `upstream_tls`, `{name}` is {protocol}"
                    ),
                ));
            }
            let max_connections = match &c.max_connections {
                Some(m) if *m.get_ref() == 0 => {
                    return Err(self.err(m.span(), &at("max_connections"), "must be at least 1"));
                }
                m => m.as_ref().map(|m| *m.get_ref()),
            };
            let connect_timeout = self
                .duration(&c.connect_timeout, &at("connect_timeout"))?
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            let idle_timeout = self
                .duration(&c.idle_timeout, &at("idle_timeout"))?
                .unwrap_or(DEFAULT_IDLE_TIMEOUT);
            for (d, key, span) in [
                (
                    connect_timeout,
                    "connect_timeout",
                    c.connect_timeout.as_ref().map(Spanned::span),
                ),
                (
                    idle_timeout,
                    "idle_timeout",
                    c.idle_timeout.as_ref().map(Spanned::span),
                ),
            ] {
                if d.is_zero() {
                    return Err(self.err(
                        span.unwrap_or(0..0),
                        &at(key),
                        "must be longer than zero",
                    ));
                }
            }
            connections.push(ConnectionConfig {
                name,
                protocol,
                listen,
                upstream,
                connect_timeout,
                idle_timeout,
                max_connections,
                record_frames: c.record_frames,
                database: c.database,
                upstream_tls,
                upstream_ca: c.upstream_ca,
                allow_plaintext: c.allow_plaintext,
                credentials,
                tls: c.tls.map(|t| ListenerTls {
                    cert: t.cert,
                    key: t.key,
                }),
            });
        }
        Ok(Config {
            path: self.path.to_owned(),
            gateway,
            identity,
            recorder,
            connections,
        })
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not an address: write `ip:port`, e.g. `127.0.0.1:9090`"))
}

fn check_host_port(s: &str) -> Result<(), String> {
    let bad = || format!("`{s}` is not `host:port`");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Parses a human duration: an integer followed by `ms`, `s`, `m`, `h` or `d` (`"100ms"`, `"30s"`),
/// at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_unbounded(s)?;
    if d > MAX_DURATION {
        return Err(format!("`{s}` is longer than the 3650d maximum"));
    }
    Ok(d)
}

/// Longest duration any key accepts; keeps deadline arithmetic and timers far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

fn parse_duration_unbounded(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("`{s}` is not a duration: write e.g. `100ms`, `30s`, `5m`, `1h`, `7d`");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs).ok_or_else(bad);
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("gw.toml"), text)
    }

    const TCP: &str = r#"
[gateway]
workers = 2

[[connections]]
name = "web"
protocol = "tcp"
listen = "127.0.0.1:8080"
upstream = "127.0.0.1:80"
idle_timeout = "5m"
"#;

    #[test]
    fn minimal_tcp_config_gets_defaults() {
        let c = parse(TCP).unwrap();
        assert_eq!(c.gateway.workers, 2);
        assert!(c.gateway.pin_workers);
        assert_eq!(c.gateway.admin, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.gateway.drain_timeout, Duration::from_secs(30));
        let web = c.connection("web").unwrap();
        assert_eq!(web.idle_timeout, Duration::from_secs(300));
        assert_eq!(web.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.recorder.on_full, OnFull::FailClosed);
    }

    #[test]
    fn workers_can_be_left_unpinned() {
        let c = parse(&TCP.replace("workers = 2", "workers = 2\npin_workers = false")).unwrap();
        assert!(!c.gateway.pin_workers);
        let e = parse(&TCP.replace("workers = 2", "workers = 2\npin_workers = \"no\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pin_workers"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = TCP.replace("workers = 2", "workers = 2\nwrokers = 3");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("gw.toml:4:"), "{e}");
        assert!(e.contains("wrokers"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = TCP.replace("workers = 2", "workers = \"two\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("gw.toml:3:"), "{e}");
        assert!(e.contains("key `workers`"), "{e}");
    }

    #[test]
    fn bad_duration_points_at_value() {
        let text = TCP.replace("\"5m\"", "\"5 minutes\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("gw.toml:10:"), "{e}");
        assert!(e.contains("key `connections[0].idle_timeout`"), "{e}");
        assert!(e.contains("`5 minutes`"), "{e}");
    }

    #[test]
    fn duplicate_names_and_listen_addresses_are_refused() {
        let dup = format!(
            "{TCP}\n[[connections]]\nname = \"web\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:8081\"\nupstream = \"h:1\"\n"
        );
        let e = parse(&dup).unwrap_err().to_string();
        assert!(
            e.contains("`web` is used twice") && e.contains(":13:"),
            "{e}"
        );
        let dup = format!(
            "{TCP}\n[[connections]]\nname = \"web2\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:8080\"\nupstream = \"h:1\"\n"
        );
        let e = parse(&dup).unwrap_err().to_string();
        assert!(
            e.contains("already the listen address of `web`") && e.contains(":15:"),
            "{e}"
        );
    }

    #[test]
    fn postgres_needs_credentials() {
        let text = TCP.replace("\"tcp\"", "\"postgres\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("connections[0].credentials") && e.contains(":7:"),
            "{e}"
        );
        let ok = format!(
            "{text}database = \"app\"\n[connections.credentials]\nuser = \"gw\"\npassword_env = \"PGPASS\"\n"
        );
        let c = parse(&ok).unwrap();
        let pg = c.connection("web").unwrap();
        assert_eq!(pg.upstream_tls, UpstreamTls::VerifyFull);
        assert_eq!(
            pg.credentials.as_ref().unwrap().password,
            PasswordSource::Env("PGPASS".into())
        );
    }

    #[test]
    fn bad_listen_and_upstream() {
        let e = parse(&TCP.replace("127.0.0.1:8080", "localhost"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("connections[0].listen") && e.contains("`localhost`"),
            "{e}"
        );
        let e = parse(&TCP.replace("127.0.0.1:80\"", "db.internal\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("connections[0].upstream"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("3651d").unwrap_err().contains("maximum"));
        assert!(parse_duration("3650d").is_ok());
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../appliance/examples/portcullis.toml");
        let c = parse(text).unwrap();
        assert!(
            c.connections
                .iter()
                .any(|c| c.protocol == Protocol::Postgres)
        );
        assert!(c.connections.iter().any(|c| c.protocol == Protocol::Tcp));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn mutated_example_never_panics_and_errors_point_inside_the_file(
            at in 0usize..2000,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let mut bytes = include_str!("../../appliance/examples/portcullis.toml").as_bytes().to_vec();
            let i = at % bytes.len();
            bytes[i] = byte;
            if let Ok(text) = String::from_utf8(bytes)
                && let Err(ConfigError::Invalid { line, column, .. }) = parse(&text)
            {
                proptest::prop_assert!(line >= 1 && line <= text.lines().count() + 1);
                proptest::prop_assert!(column >= 1);
            }
        }
    }
}
