//! A throwaway PostgreSQL cluster for tests that need the real server.
//!
//! Finds the binaries (`pg_config --bindir`, `/usr/lib/postgresql/*/bin`, then `PATH`), runs
//! `initdb` in a temporary directory as an unprivileged user (`runuser -u postgres --` when the
//! tests run as root, since the server refuses to run as root), listens on a free port on
//! 127.0.0.1 only, logs every statement, creates an application role and database, and stops and
//! deletes everything on drop. A missing installation fails the test with instructions rather
//! than skipping it: a skipped real-peer test proves nothing.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this shared helper"
)]
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "test helper: a cluster that cannot be set up is a failing test, with its message"
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How the cluster authenticates TCP and socket connections (`pg_hba.conf` method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `scram-sha-256`.
    ScramSha256,
    /// `md5`, with the application role's password stored as md5 so the server really asks
    /// for md5 rather than upgrading to SCRAM.
    Md5,
    /// `password`: cleartext.
    Password,
}

impl AuthMethod {
    fn hba(self) -> &'static str {
        match self {
            Self::ScramSha256 => "scram-sha-256",
            Self::Md5 => "md5",
            Self::Password => "password",
        }
    }
}

/// A running throwaway cluster.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    datadir: PathBuf,
    run_as: Option<String>,
    /// Always `127.0.0.1`.
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// Application role.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Application database, owned by `user`.
    pub database: String,
    /// Superuser name.
    pub admin_user: String,
    /// Superuser password.
    pub admin_password: String,
    /// Server log (every statement appears here: `log_statement = 'all'`).
    pub log_path: PathBuf,
}

fn find_bindir() -> PathBuf {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some(dir) = versions.into_iter().rev().find(|d| has_tools(d)) {
        return dir;
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_tools(d))
    {
        return dir;
    }
    panic!(
        "PostgreSQL server binaries (initdb, pg_ctl) not found via `pg_config --bindir`, \
         /usr/lib/postgresql/*/bin or PATH; install them, e.g. `apt-get install postgresql`"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port on 127.0.0.1")
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos)
}

fn check(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl PgCluster {
    /// A cluster with SCRAM-SHA-256 authentication.
    pub fn start() -> Self {
        Self::start_with(AuthMethod::ScramSha256)
    }

    /// A cluster with the given authentication method.
    pub fn start_with(method: AuthMethod) -> Self {
        let bindir = find_bindir();
        let run_as = is_root().then(|| "postgres".to_string());
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pg-")
            .tempdir()
            .expect("create the cluster's temporary directory");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("make the cluster directory traversable");
        let suffix = unique_suffix();
        let admin_password = format!("admin-{suffix}");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{admin_password}\n")).expect("write the password file");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).expect("create the socket directory");
        if let Some(user) = &run_as {
            check(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{user}:"))
                    .arg(dir.path())
                    .output()
                    .expect("run chown"),
                "chown of the cluster directory",
            );
        }
        let datadir = dir.path().join("data");
        let log_path = dir.path().join("server.log");
        let admin_user = "portcullis_admin".to_string();
        let mut cluster = Self {
            bindir,
            datadir,
            run_as,
            host: "127.0.0.1".into(),
            port: 0,
            user: "app".into(),
            password: format!("upstream-pw-{suffix}"),
            database: "appdb".into(),
            admin_user,
            admin_password,
            log_path,
            dir,
        };
        let initdb = cluster.command("initdb");
        let mut initdb = initdb;
        initdb
            .arg("-D")
            .arg(&cluster.datadir)
            .arg("-U")
            .arg(&cluster.admin_user)
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg(format!("--auth={}", method.hba()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        check(initdb.output().expect("run initdb"), "initdb");

        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             log_statement = 'all'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nshared_buffers = 16MB\nmax_connections = 30\n",
            socket_dir.display()
        );
        let conf_path = cluster.datadir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&conf_path, text).expect("write postgresql.conf");

        // A port picked now may be taken before the server binds it; retry with a new one.
        let mut last = None;
        for _ in 0..3 {
            cluster.port = free_port();
            let mut ctl = cluster.command("pg_ctl");
            ctl.arg("-D")
                .arg(&cluster.datadir)
                .arg("-l")
                .arg(&cluster.log_path)
                .args(["-w", "-t", "120", "-o"])
                .arg(format!("-p {}", cluster.port))
                .arg("start");
            let out = ctl.output().expect("run pg_ctl start");
            if out.status.success() {
                last = None;
                break;
            }
            last = Some(out);
        }
        if let Some(out) = last {
            let log = std::fs::read_to_string(&cluster.log_path).unwrap_or_default();
            panic!(
                "pg_ctl start failed: {}\n{}\nserver log:\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let encryption = if method == AuthMethod::Md5 {
            "md5"
        } else {
            "scram-sha-256"
        };
        cluster.admin_sql(
            "postgres",
            &format!(
                "SET password_encryption = '{encryption}'; \
                 CREATE ROLE {} LOGIN PASSWORD '{}';",
                cluster.user, cluster.password
            ),
        );
        // CREATE DATABASE refuses to run inside the implicit transaction of a multi-statement
        // string, so it gets its own call.
        cluster.admin_sql(
            "postgres",
            &format!(
                "CREATE DATABASE {} OWNER {}",
                cluster.database, cluster.user
            ),
        );
        cluster
    }

    /// Turns TLS on with this certificate and key (a reload, no restart): the server then
    /// also offers SCRAM-SHA-256-PLUS, so logins over TLS can be bound to the channel.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        let (cert, key) = (
            self.datadir.join("server.crt"),
            self.datadir.join("server.key"),
        );
        std::fs::write(&cert, cert_pem).expect("write server.crt");
        std::fs::write(&key, key_pem).expect("write server.key");
        // The server refuses a key file others can read.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("restrict server.key");
        if let Some(user) = &self.run_as {
            check(
                Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(&cert)
                    .arg(&key)
                    .output()
                    .expect("run chown"),
                "chown of the server certificate",
            );
        }
        self.admin_sql("postgres", "ALTER SYSTEM SET ssl = on");
        self.admin_sql("postgres", "SELECT pg_reload_conf()");
        // The reload is asynchronous: wait until new sessions see it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.admin_sql("postgres", "SHOW ssl").trim() != "on" {
            assert!(
                Instant::now() < deadline,
                "ssl did not turn on:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bindir.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// `psql` connected over TCP as the application role, with `-X -A -t -v ON_ERROR_STOP=1`.
    pub fn psql(&self, sql: &str) -> Output {
        Command::new(self.bindir.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", &self.host])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                &self.user,
                "-d",
                &self.database,
            ])
            .args(["-c", sql])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "30")
            .output()
            .expect("run psql")
    }

    /// Runs SQL as the superuser and panics with the server's message if it fails.
    pub fn admin_sql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", &self.host])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                &self.admin_user,
                "-d",
                database,
            ])
            .args(["-c", sql])
            .env("PGPASSWORD", &self.admin_password)
            .env("PGCONNECT_TIMEOUT", "30")
            .output()
            .expect("run psql");
        String::from_utf8_lossy(&check(out, "admin psql").stdout).into_owned()
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the server log contains `needle` (log writes are asynchronous).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port` for `TcpStream::connect`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(&self.datadir)
            .args(["-m", "immediate", "-w", "-t", "60", "stop"]);
        let _ = ctl.output();
        // The TempDir removes the directory (root may delete the postgres-owned files).
        let _ = self.dir.path();
    }
}
