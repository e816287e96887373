//! `portcullis policy check|test|explain|mask`. Thin: loading, matching and reporting live in
//! `policy-engine`; this parses arguments, prints, and maps outcomes to exit codes
//! (0 ok, 1 failures, 2 usage or load error).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use policy_engine::policy::{AccessContext, Policy};
use policy_engine::request::{Action, Dialect, Identity, IdentityKind};
use policy_engine::testfile;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Load and validate a policy directory; print every error with file:line and a hint.
    Check {
        /// Policy directory.
        dir: PathBuf,
    },
    /// Run the policy's test files (`*_test.toml` in DIR and DIR/tests).
    Test {
        /// Policy directory.
        dir: PathBuf,
        /// Print passing cases too.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Show how a request would be classified and decided, and which rules matched and why.
    Explain(ExplainArgs),
    /// Show how values would come back masked for a caller: as result-set cells of a column,
    /// or as one byte stream (COPY data, terminal output).
    Mask(MaskArgs),
}

/// Which policy, connection and caller `explain` and `mask` speak for.
#[derive(Debug, clap::Args)]
pub struct Caller {
    /// Policy directory.
    #[arg(long)]
    policies: PathBuf,
    /// Connection name.
    #[arg(long)]
    connection: String,
    /// Caller's groups, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "")]
    groups: Vec<String>,
    /// Caller's subject.
    #[arg(long, default_value = "explain")]
    subject: String,
    /// Treat the caller as a service identity.
    #[arg(long)]
    service: bool,
}

impl Caller {
    fn identity(&self) -> Identity {
        Identity {
            subject: self.subject.clone(),
            email: None,
            groups: self
                .groups
                .iter()
                .filter(|g| !g.is_empty())
                .cloned()
                .collect(),
            kind: if self.service {
                IdentityKind::Service
            } else {
                IdentityKind::Human
            },
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct MaskArgs {
    #[command(flatten)]
    caller: Caller,
    /// The result-set column the values come from (column rules match its name).
    #[arg(long, default_value = "value", conflicts_with = "stream")]
    column: String,
    /// Mask the values as one byte stream, one value per line, instead of as cells.
    #[arg(long)]
    stream: bool,
    /// The key of the `hash` strategy: the gateway's `.mask_key` file (in its recordings
    /// directory). Without it hashes use a preview key and differ from the gateway's.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The values; `-` reads them from stdin, one per line.
    #[arg(required = true)]
    values: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    caller: Caller,
    /// Caller holds an approved just-in-time grant.
    #[arg(long)]
    grant: bool,
    /// SQL dialect for `--sql`.
    #[arg(long, default_value = "postgres")]
    dialect: Dialect,
    /// A SQL query string.
    #[arg(long, group = "request")]
    sql: Option<String>,
    /// An HTTP request: `METHOD HOST PATH`.
    #[arg(long, group = "request", num_args = 3, value_names = ["METHOD", "HOST", "PATH"])]
    http: Option<Vec<String>>,
    /// A Kubernetes request: `VERB RESOURCE[/SUBRESOURCE] [NAMESPACE [NAME]]`.
    #[arg(long, group = "request", num_args = 2..=4)]
    kubernetes: Option<Vec<String>>,
    /// An SSH command line.
    #[arg(long, group = "request")]
    ssh: Option<String>,
}

pub fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Check { dir } => check(&dir),
        PolicyCommand::Test { dir, verbose } => test(&dir, verbose),
        PolicyCommand::Explain(a) => explain(&a),
        PolicyCommand::Mask(a) => mask(&a),
    }
}

fn load(dir: &std::path::Path) -> Result<Arc<Policy>, ExitCode> {
    Policy::load_dir(dir).map(Arc::new).map_err(|errs| {
        for e in &errs.0 {
            eprintln!("{e}");
        }
        eprintln!("{} error(s) in {}", errs.0.len(), dir.display());
        ExitCode::from(2)
    })
}

fn check(dir: &std::path::Path) -> ExitCode {
    match load(dir) {
        Ok(p) => {
            outln!(
                "ok: {} rules, {} mask rules, {} detectors; version {}",
                p.rules().len(),
                p.mask_specs().len(),
                p.detector_specs().len(),
                p.version()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn test(dir: &std::path::Path, verbose: bool) -> ExitCode {
    let policy = match load(dir) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let files = testfile::test_files(dir);
    if files.is_empty() {
        eprintln!(
            "no test files (*_test.toml) in {} or its tests/ folder",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let cases = match testfile::parse_test_file(file, &text) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        for (i, case) in cases.iter().enumerate() {
            let r = testfile::run_case(&policy, file, i, case);
            if r.passed {
                passed += 1;
                if verbose {
                    outln!("PASS: {}: {}", file.display(), r.name);
                }
            } else {
                failed += 1;
                outln!(
                    "FAIL: {}: {}: {}",
                    file.display(),
                    r.name,
                    r.detail.unwrap_or_default()
                );
            }
        }
    }
    outln!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn explain(a: &ExplainArgs) -> ExitCode {
    let policy = match load(&a.caller.policies) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let identity = a.caller.identity();
    let action = if let Some(sql) = &a.sql {
        Action::Sql {
            dialect: a.dialect,
            text: sql,
        }
    } else if let Some([method, host, path]) = a.http.as_deref() {
        Action::Http { method, host, path }
    } else if let Some(k) = &a.kubernetes {
        let (resource, subresource) = match k.get(1).map(|r| r.split_once('/')) {
            Some(Some((r, s))) => (r, Some(s)),
            _ => (k.get(1).map_or("", String::as_str), None),
        };
        Action::Kubernetes {
            verb: k.first().map_or("", String::as_str),
            resource,
            subresource,
            namespace: k.get(2).map(String::as_str),
            name: k.get(3).map(String::as_str),
        }
    } else if let Some(c) = &a.ssh {
        Action::Ssh { command: c }
    } else {
        Action::TcpConnect
    };
    let cx = AccessContext {
        has_grant: a.grant,
        ..AccessContext::default()
    };
    let e = policy.explain_with(&a.caller.connection, &identity, &action, &cx);
    out!("{e}");
    ExitCode::SUCCESS
}

/// Key of the `hash` strategy when no `--key-file` is given: hashes still group equal values,
/// but differ from the gateway's (whose key never leaves its host).
const PREVIEW_HASH_KEY: &[u8] = b"portcullis policy mask preview key";

fn mask(a: &MaskArgs) -> ExitCode {
    use std::io::BufRead as _;

    use policy_engine::mask::{MaskEngine, MaskOutcome, MaskStats, ValueKind};

    let policy = match load(&a.caller.policies) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let key = match &a.key_file {
        Some(f) => match std::fs::read(f) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("{}: cannot read the hash key: {e}", f.display());
                return ExitCode::from(2);
            }
        },
        None => PREVIEW_HASH_KEY.to_vec(),
    };
    let specs: Vec<_> = policy.mask_specs().cloned().collect();
    let engine = match MaskEngine::compile(&specs, policy.detector_specs(), &key) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{}: {e}", a.caller.policies.display());
            return ExitCode::from(2);
        }
    };
    let identity = a.caller.identity();
    let active = policy.mask_rules_for(&a.caller.connection, &identity);
    let session = engine.session(&active);
    let mut values = Vec::new();
    for v in &a.values {
        if v == "-" {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) => values.push(l),
                    Err(e) => {
                        eprintln!("stdin: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
        } else {
            values.push(v.clone());
        }
    }
    let mut stats = MaskStats::default();
    let mut out = Vec::new();
    if a.stream {
        let mut m = session.stream();
        for v in &values {
            m.push(v.as_bytes(), &mut out, &mut stats);
            m.push(b"\n", &mut out, &mut stats);
        }
        m.finish(&mut out, &mut stats);
        out!("{}", String::from_utf8_lossy(&out));
    } else {
        let column = session.column(&a.column);
        for v in &values {
            out.clear();
            let mut one = MaskStats::default();
            let shown = match session.mask_value(
                &column,
                ValueKind::Text,
                v.as_bytes(),
                &mut out,
                &mut one,
            ) {
                MaskOutcome::Unchanged => v.clone(),
                MaskOutcome::Rewritten => String::from_utf8_lossy(&out).into_owned(),
                MaskOutcome::Null => "NULL".to_owned(),
            };
            let by: Vec<String> = one
                .named(&engine)
                .map(|(n, c)| format!("{n} x{c}"))
                .collect();
            if by.is_empty() {
                outln!("{shown}");
            } else {
                outln!("{shown}\t({})", by.join(", "));
            }
            stats.merge(&one);
        }
    }
    let by: Vec<String> = stats
        .named(&engine)
        .map(|(n, c)| format!("{n} x{c}"))
        .collect();
    eprintln!(
        "{} value(s) masked{}{}",
        stats.total(),
        if by.is_empty() { "" } else { ": " },
        by.join(", ")
    );
    ExitCode::SUCCESS
}
