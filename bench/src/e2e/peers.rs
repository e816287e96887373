//! The processes an end-to-end run measures: a throwaway PostgreSQL, PgBouncer and the
//! `portcullis` gateway (full inspection, pure relay), each on a free port on 127.0.0.1, each
//! stopped and its directory removed on drop. PostgreSQL and PgBouncer refuse to run as root,
//! so as root they run as the `postgres` user through `runuser`.
//!
//! Nothing here measures; `measure` does. PostgreSQL is tuned for a benchmark, not for
//! safety (`fsync = off`): the data is thrown away.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Role, password and database the benchmark clients use on PostgreSQL and PgBouncer.
pub const PG_USER: &str = "bench";
pub const PG_PASSWORD: &str = "bench-password";
/// `pgbench -i` scale: 100,000 accounts, the range the select mix draws from.
pub const PGBENCH_SCALE: u32 = 1;
/// Server connection slots: the idle-connection probe opens this many minus a margin.
pub const PG_MAX_CONNECTIONS: u32 = 620;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A fresh directory under the system temp dir, removed by [`Scratch::drop`].
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> anyhow::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until something accepts TCP connections on `port`.
fn wait_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A throwaway PostgreSQL cluster with SCRAM authentication and pgbench data.
#[derive(Debug)]
pub struct Postgres {
    bindir: PathBuf,
    run_as: Option<&'static str>,
    datadir: PathBuf,
    pub port: u16,
    pub pid: u32,
    pub version: String,
    dir: Scratch,
}

fn find_bindir() -> anyhow::Result<PathBuf> {
    let ok = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if ok(&d) {
            return Ok(d);
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter().rev().find(|d| ok(d)).context(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install them: apt-get install postgresql",
    )
}

impl Postgres {
    pub fn start() -> anyhow::Result<Postgres> {
        let bindir = find_bindir()?;
        let run_as = is_root().then_some("postgres");
        let dir = Scratch::new("portcullis-e2e-pg")?;
        let pwfile = dir.0.join("pwfile");
        std::fs::write(&pwfile, format!("{PG_PASSWORD}\n"))?;
        if let Some(user) = run_as {
            run_ok(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{user}:"))
                    .arg(&dir.0),
                "chown",
            )?;
        }
        let datadir = dir.0.join("data");
        let mut pg = Postgres {
            bindir,
            run_as,
            datadir,
            port: 0,
            pid: 0,
            version: String::new(),
            dir,
        };
        let mut initdb = pg.command("initdb");
        initdb
            .arg("-D")
            .arg(&pg.datadir)
            .args([
                "-U",
                PG_USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        run_ok(&mut initdb, "initdb")?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nshared_buffers = 128MB\n\
             max_connections = {PG_MAX_CONNECTIONS}\n",
            pg.dir.0.display()
        );
        let conf_path = pg.datadir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text)?;
        pg.port = free_port()?;
        let log = pg.dir.0.join("server.log");
        let mut ctl = pg.command("pg_ctl");
        ctl.arg("-D")
            .arg(&pg.datadir)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "120", "-o"])
            .arg(format!("-p {}", pg.port))
            .arg("start");
        run_ok(&mut ctl, "pg_ctl start")?;
        let pidfile = std::fs::read_to_string(pg.datadir.join("postmaster.pid"))?;
        pg.pid = pidfile.lines().next().unwrap_or("0").trim().parse()?;
        pg.version = run_ok(
            Command::new(pg.bindir.join("postgres")).arg("--version"),
            "postgres --version",
        )?
        .trim()
        .to_owned();
        let mut init = Command::new(pg.bindir.join("pgbench"));
        init.args(["-i", "-q", "-s"])
            .arg(PGBENCH_SCALE.to_string())
            .args(["-h", "127.0.0.1", "-p"])
            .arg(pg.port.to_string())
            .args(["-U", PG_USER, "postgres"])
            .env("PGPASSWORD", PG_PASSWORD);
        run_ok(&mut init, "pgbench -i")?;
        Ok(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bindir.join(tool);
        match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// The database the clients use (pgbench initialised `postgres`).
    pub fn database(&self) -> &'static str {
        "postgres"
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(&self.datadir)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = ctl.status();
    }
}

/// A child process stopped (SIGTERM, then kill) on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub port: u16,
    pub dir: Scratch,
    /// The measured process when it is not the child itself.
    pid: Option<u32>,
}

impl Proc {
    /// The process whose CPU time and memory are measured.
    pub fn pid(&self) -> u32 {
        self.pid.unwrap_or_else(|| self.child.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PgBouncer in session pooling (one server connection per client, as the gateway), SCRAM
/// towards both sides.
pub fn pgbouncer(pg: &Postgres) -> anyhow::Result<Proc> {
    let Some(bin) = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        bail!("pgbouncer not found: install it (Debian/Ubuntu: apt-get install pgbouncer)");
    };
    let dir = Scratch::new("portcullis-e2e-pgbouncer")?;
    let port = free_port()?;
    std::fs::write(
        dir.0.join("userlist.txt"),
        format!("\"{PG_USER}\" \"{PG_PASSWORD}\"\n"),
    )?;
    std::fs::write(
        dir.0.join("pgbouncer.ini"),
        format!(
            "[databases]\n{db} = host=127.0.0.1 port={pgport} dbname={db}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {dir}/userlist.txt\npool_mode = session\n\
             max_client_conn = 1000\ndefault_pool_size = 250\nlogfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            db = pg.database(),
            pgport = pg.port,
            dir = dir.0.display(),
        ),
    )?;
    let mut cmd = if is_root() {
        run_ok(
            Command::new("chown").arg("-R").arg("postgres:").arg(&dir.0),
            "chown",
        )?;
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    // `runuser` execs, so the child's pid is PgBouncer's own.
    let child = cmd
        .arg(dir.0.join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pgbouncer")?;
    let mut proc = Proc {
        child,
        port,
        dir,
        pid: None,
    };
    wait_port(port, Duration::from_secs(20))?;
    // `runuser` stays as the parent (it closes the PAM session at exit), so the CPU time to
    // bill is PgBouncer's own pid, from its pid file.
    proc.pid = std::fs::read_to_string(proc.dir.0.join("pgbouncer.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    Ok(proc)
}

/// How the gateway sits in front of PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayMode {
    /// `protocol = "postgres"`: token login, ≥ 100 policy rules, masking, recording.
    Full,
    /// `protocol = "tcp"`: bytes relayed, nothing inspected.
    Relay,
}

/// Rules in the full-inspection policy: the example policies plus this many generated ones.
pub const GENERATED_RULES: usize = 100;

/// Starts `portcullis run` with `workers` workers, pinned to cores or left to the scheduler;
/// returns the process and a login token.
pub fn gateway(
    bin_dir: &Path,
    pg: &Postgres,
    mode: GatewayMode,
    workers: usize,
    pin_workers: bool,
) -> anyhow::Result<(Proc, String)> {
    let bin = bin_dir.join("portcullis");
    let dir = Scratch::new("portcullis-e2e-gw")?;
    let d = &dir.0;
    let port = free_port()?;
    let admin = free_port()?;
    let policies = d.join("policies");
    std::fs::create_dir_all(&policies)?;
    for (name, text) in policy_engine::workload::sources(GENERATED_RULES) {
        std::fs::write(policies.join(name), text)?;
    }
    run_ok(
        Command::new(&bin)
            .args(["token", "keygen", "--out"])
            .arg(d.join("issuer")),
        "portcullis token keygen",
    )?;
    let token = run_ok(
        Command::new(&bin)
            .args(["token", "mint", "--key"])
            .arg(d.join("issuer/signing-key.pem"))
            .args(["--sub", "bench", "--email", "bench@corp.example"])
            .args(["--groups", "engineering", "--ttl", "2h"]),
        "portcullis token mint",
    )?
    .trim()
    .to_owned();
    std::fs::write(d.join("db.password"), format!("{PG_PASSWORD}\n"))?;
    let connection = match mode {
        GatewayMode::Full => format!(
            "[identity]\nissuer = \"portcullis-local\"\naudience = \"portcullis\"\n\
             jwks = {{ file = \"{jwks}\" }}\n\n[[connections]]\nname = \"orders-db\"\n\
             protocol = \"postgres\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{pg}\"\n\
             database = \"{db}\"\nupstream_tls = \"disable\"\nallow_plaintext = true\n\
             idle_timeout = \"1h\"\n[connections.credentials]\nuser = \"{PG_USER}\"\n\
             password_file = \"{pw}\"\n",
            jwks = d.join("issuer/jwks.json").display(),
            pg = pg.port,
            db = pg.database(),
            pw = d.join("db.password").display(),
        ),
        GatewayMode::Relay => format!(
            "[[connections]]\nname = \"orders-db\"\nprotocol = \"tcp\"\n\
             listen = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{pg}\"\nidle_timeout = \"1h\"\n",
            pg = pg.port,
        ),
    };
    std::fs::write(
        d.join("portcullis.toml"),
        format!(
            "[gateway]\nworkers = {workers}\npin_workers = {pin_workers}\n\
             admin = \"127.0.0.1:{admin}\"\n\
             recordings = \"{rec}\"\npolicies = \"{pol}\"\n\n{connection}",
            rec = d.join("recordings").display(),
            pol = policies.display(),
        ),
    )?;
    let child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(d.join("portcullis.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(d.join("gateway.log"))
                .map_or_else(|_| Stdio::null(), Stdio::from),
        )
        .spawn()
        .context("starting portcullis")?;
    let proc = Proc {
        child,
        port,
        dir,
        pid: None,
    };
    wait_port(port, Duration::from_secs(30))?;
    wait_port(admin, Duration::from_secs(30))?;
    Ok((proc, token))
}
