//! `portcullis demo`: a throwaway PostgreSQL seeded with fake customers, a gateway in front of it
//! with a demo policy, a self-signed certificate and a local token issuer, and copy-pasteable
//! commands to try. It runs the same code path as `run` and removes everything on Ctrl-C.
//!
//! It needs the PostgreSQL server binaries (`initdb`, `pg_ctl`, `psql`); without them it says how
//! to install them. It does not touch any existing cluster: everything lives in a fresh
//! temporary directory on loopback ports.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dataplane::config::Config;
use dataplane::identity::{KeyAlg, MintRequest, issuer};
use dataplane::runtime::DriverChoice;

use super::{EXIT_CONFIG, EXIT_RUNTIME};

/// How long the demo token is valid.
const TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

const DEMO_POLICY: &str = r#"# The demo policy: engineers may use the demo database; schema changes and unbounded
# writes are refused; other deletes wait for a dba's approval; emails and card numbers are
# masked in every result.
[[access]]
connections = ["demo-db"]
groups = ["engineering"]

[[rule]]
id = "no-ddl"
match.statement = ["drop", "truncate", "alter"]
action = "deny"
message = "schema changes go through migrations"

[[rule]]
id = "unbounded-writes"
match.statement = ["update", "delete"]
match.without_where = true
action = "deny"
message = "add a WHERE clause"

[[rule]]
id = "review-deletes"
match.statement = ["delete"]
action = "review"
review = { approvers = ["dba"], approvals = 1, timeout = "10m" }

[[admin]]
groups = ["dba"]
operations = ["*"]

[[mask]]
connections = ["demo-db"]
detectors = ["email", "credit_card"]
strategy = "partial"
keep = 4
"#;

const FIRST: [&str; 10] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Leslie",
];
const LAST: [&str; 5] = ["Lovelace", "Hopper", "Turing", "Liskov", "Knuth"];
/// Well-known test card numbers (they pass the Luhn check; no bank issued them).
const CARDS: [&str; 5] = [
    "4111 1111 1111 1111",
    "5555 5555 5555 4444",
    "3782 822463 10005",
    "4012 8888 8888 1881",
    "6011 1111 1111 1117",
];

pub fn run(driver: DriverChoice) -> ExitCode {
    let Some(bindir) = find_bindir() else {
        eprintln!(
            "portcullis demo needs the PostgreSQL server binaries (initdb, pg_ctl, psql).\n\
             Install them, then run the demo again:\n\
             \x20 Debian/Ubuntu: sudo apt-get install postgresql\n\
             \x20 Fedora/RHEL:   sudo dnf install postgresql-server\n\
             \x20 macOS:         brew install postgresql\n\
             (the demo looks in `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH)"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let work = match Workdir::create() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("portcullis demo: cannot create its directory: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let cluster = match Cluster::start(&bindir, &work.0) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis demo: cannot start PostgreSQL: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let prepared = match prepare(&work.0, &cluster) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("portcullis demo: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let config = match Config::parse(Path::new("<demo>"), &prepared.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let recordings = work.0.join("recordings");
    let code = crate::serve::serve(&config, driver, |gateway, admin| {
        let listen = gateway
            .listen_addrs()
            .first()
            .map_or_else(|| "?".to_owned(), |(_, a)| a.port().to_string());
        print_instructions(&listen, &prepared, admin, &recordings);
    });
    drop(cluster);
    drop(work);
    code
}

struct Prepared {
    config: String,
    token: String,
    /// An approver's token (group `dba`) for the review steps.
    dba_token: String,
}

fn prepare(dir: &Path, cluster: &Cluster) -> Result<Prepared, String> {
    let keys = issuer::keygen(&dir.join("issuer"), KeyAlg::Ed25519)
        .map_err(|e| format!("cannot create the demo issuer: {e}"))?;
    let token = issuer::mint(
        &keys.key_path,
        &MintRequest {
            subject: "demo-user".into(),
            email: Some("demo-user@example.com".into()),
            groups: vec!["engineering".into()],
            ttl: TOKEN_TTL,
            audience: issuer::LOCAL_AUDIENCE.into(),
            issuer: issuer::LOCAL_ISSUER.into(),
            service: false,
        },
    )
    .map_err(|e| format!("cannot mint the demo token: {e}"))?;
    let dba_token = issuer::mint(
        &keys.key_path,
        &MintRequest {
            subject: "demo-dba".into(),
            email: Some("demo-dba@example.com".into()),
            groups: vec!["dba".into()],
            ttl: TOKEN_TTL,
            audience: issuer::LOCAL_AUDIENCE.into(),
            issuer: issuer::LOCAL_ISSUER.into(),
            service: false,
        },
    )
    .map_err(|e| format!("cannot mint the demo approver token: {e}"))?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| format!("cannot generate the demo certificate: {e}"))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write `{name}`: {e}"))
    };
    write("gateway.crt", &cert.cert.pem())?;
    write("gateway.key", &cert.signing_key.serialize_pem())?;
    write("db.password", &cluster.app_password)?;
    std::fs::create_dir_all(dir.join("policies"))
        .map_err(|e| format!("cannot create the policy directory: {e}"))?;
    write("policies/00-demo.toml", DEMO_POLICY)?;
    let d = dir.display();
    let config = format!(
        r#"[gateway]
workers = 2
admin = "127.0.0.1:0"
recordings = "{d}/recordings"
policies = "{d}/policies"
drain_timeout = "5s"

[identity]
issuer = "{iss}"
audience = "{aud}"
jwks = {{ file = "{jwks}" }}

[recorder]
segment_max_age = "30s"

[[connections]]
name = "demo-db"
protocol = "postgres"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:{port}"
database = "shop"
upstream_tls = "disable"
idle_timeout = "30m"
[connections.credentials]
user = "shop_app"
password_file = "{d}/db.password"
[connections.tls]
cert = "{d}/gateway.crt"
key = "{d}/gateway.key"
"#,
        iss = issuer::LOCAL_ISSUER,
        aud = issuer::LOCAL_AUDIENCE,
        jwks = keys.jwks_path.display(),
        port = cluster.port,
    );
    Ok(Prepared {
        config,
        token,
        dba_token,
    })
}

fn print_instructions(
    port: &str,
    prepared: &Prepared,
    admin: std::net::SocketAddr,
    recordings: &Path,
) {
    let (token, dba_token) = (&prepared.token, &prepared.dba_token);
    let conn = format!("host=127.0.0.1 port={port} dbname=shop user=demo-user sslmode=require");
    let rec = recordings.display();
    outln!(
        r#"
Portcullis demo is running: PostgreSQL with a table of fake customers, behind the gateway.
Your token (an OIDC JWT from the demo's local issuer) is the password:

  export PGPASSWORD='{token}'

A SELECT: emails and card numbers come back masked.
  psql "{conn}" -c "SELECT name, email, card FROM customers LIMIT 5"

A DROP: refused by rule `no-ddl` (SQLSTATE 42501); the server never sees it.
  psql "{conn}" -c "DROP TABLE customers"

A DELETE without WHERE: refused by rule `unbounded-writes`.
  psql "{conn}" -c "DELETE FROM customers"

A DELETE with WHERE: held for approval by rule `review-deletes`. psql waits and prints
"waiting for approval: review <id>"; nothing reaches the database yet.
  psql "{conn}" -c "DELETE FROM customers WHERE id = 3"

In a second terminal, a dba approves it with their own token (the requester never can):
  export PORTCULLIS_ADMIN=http://{admin}
  export PORTCULLIS_TOKEN='{dba_token}'
  portcullis reviews list
  portcullis reviews approve <id>          # or: portcullis reviews deny <id> --reason "..."
  portcullis sessions list
The held DELETE then runs (or fails with 42501 "denied by demo-dba: ..."). Review events
are in '{rec}/reviews/**/*.parquet'.

Without a valid token: refused before anything reaches the database.
  PGPASSWORD=nope psql "{conn}" -c "SELECT 1"

The audit trail (sealed to Parquet every 30 s; DuckDB reads it with no extension):
  duckdb -c "SELECT at, subject, action, decision, rule_id, rows, masked_values, text FROM '{rec}/commands/**/*.parquet' ORDER BY at"

Metrics: curl -s http://{admin}/metrics | grep -E 'portcullis_(policy|recorder)'

Press Ctrl-C to stop: the gateway drains, the recordings are sealed, the database and every
demo file are removed.
"#
    );
}

/// The demo's temporary directory, removed on drop.
struct Workdir(PathBuf);

impl Workdir {
    fn create() -> std::io::Result<Workdir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("portcullis-demo-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // The server may run as another user (`postgres` when the demo runs as root).
        set_mode(&dir, 0o755)?;
        Ok(Workdir(dir))
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// A throwaway PostgreSQL cluster, stopped on drop.
struct Cluster {
    bindir: PathBuf,
    data: PathBuf,
    run_as: Option<String>,
    port: u16,
    admin_password: String,
    app_password: String,
}

impl Cluster {
    fn start(bindir: &Path, dir: &Path) -> Result<Cluster, String> {
        let run_as = is_root().then(|| "postgres".to_owned());
        let pgdir = dir.join("pg");
        let sock = pgdir.join("sock");
        std::fs::create_dir_all(&sock).map_err(|e| e.to_string())?;
        let secret = random_hex();
        let admin_password = format!("demo-admin-{secret}");
        let app_password = format!("demo-app-{secret}");
        std::fs::write(pgdir.join("pwfile"), format!("{admin_password}\n"))
            .map_err(|e| e.to_string())?;
        if let Some(user) = &run_as {
            let out = Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(&pgdir)
                .output()
                .map_err(|e| format!("chown: {e}"))?;
            check(
                &out,
                "chown (the demo runs the server as the `postgres` user when run as root)",
            )?;
        }
        let mut cluster = Cluster {
            bindir: bindir.to_owned(),
            data: pgdir.join("data"),
            run_as,
            port: 0,
            admin_password,
            app_password,
        };
        let out = cluster
            .tool("initdb")
            .arg("-D")
            .arg(&cluster.data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pgdir.join("pwfile").display()))
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        check(&out, "initdb")?;
        let conf = cluster.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
        let _ = write!(
            text,
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nlog_statement = 'all'\nfsync = off\nmax_connections = 40\n",
            sock.display()
        );
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        let mut started = Err("not started".to_owned());
        for _ in 0..3 {
            cluster.port = free_port().map_err(|e| e.to_string())?;
            let out = cluster
                .tool("pg_ctl")
                .arg("-D")
                .arg(&cluster.data)
                .arg("-l")
                .arg(pgdir.join("server.log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!("-p {}", cluster.port))
                .arg("start")
                .output()
                .map_err(|e| format!("pg_ctl: {e}"))?;
            started = check(&out, "pg_ctl start");
            if started.is_ok() {
                break;
            }
        }
        started?;
        cluster.sql(
            "postgres",
            &format!(
                "CREATE ROLE shop_app LOGIN PASSWORD '{}'",
                cluster.app_password
            ),
        )?;
        cluster.sql("postgres", "CREATE DATABASE shop OWNER shop_app")?;
        cluster.sql("shop", &seed_sql())?;
        Ok(cluster)
    }

    fn tool(&self, name: &str) -> Command {
        let program = self.bindir.join(name);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn sql(&self, database: &str, sql: &str) -> Result<(), String> {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", database, "-c", sql])
            .env("PGPASSWORD", &self.admin_password)
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        check(&out, "seeding the demo database")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "30", "stop"])
            .output();
    }
}

fn seed_sql() -> String {
    let mut sql = String::from(
        "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text, card text, city text);\n",
    );
    let cities = ["Paris", "Lyon", "Berlin", "Lisbon", "Oslo"];
    let mut id = 0;
    for (i, first) in FIRST.iter().enumerate() {
        for (j, last) in LAST.iter().enumerate().take(2) {
            id += 1;
            let email = format!(
                "{}.{}@example.com",
                first.to_lowercase(),
                last.to_lowercase()
            );
            let card = CARDS
                .get((i + j) % CARDS.len())
                .copied()
                .unwrap_or_default();
            let city = cities
                .get((i * 2 + j) % cities.len())
                .copied()
                .unwrap_or_default();
            let _ = writeln!(
                sql,
                "INSERT INTO customers VALUES ({id}, '{first} {last}', '{email}', '{card}', '{city}');"
            );
        }
    }
    sql.push_str("ALTER TABLE customers OWNER TO shop_app;\n");
    sql
}

fn check(out: &Output, what: &str) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn random_hex() -> String {
    // The std hasher is randomly keyed per process: enough for a throwaway demo password.
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// `pg_config --bindir`, then the Debian layout (newest version first), then `PATH`.
fn find_bindir() -> Option<PathBuf> {
    let has_tools = |d: &Path| {
        ["initdb", "pg_ctl", "psql"]
            .iter()
            .all(|t| d.join(t).exists())
    };
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&d) {
            return Some(d);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| has_tools(d))
        .collect();
    versions.sort();
    if let Some(d) = versions.pop() {
        return Some(d);
    }
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).find(|d| has_tools(d)))
}
