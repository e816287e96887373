//! Policy test files (`*_test.toml`): cases of identity + connection + request with the
//! expected decision and, optionally, the deciding rule. `portcullis policy test` runs them.
//!
//! This module parses and runs cases against a loaded [`Policy`]; printing is the CLI's job.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::policy::{AccessContext, LoadError, Policy, Scratch, TEST_FILE_SUFFIX, Verdict};
use crate::request::{Action, Dialect, Identity, IdentityKind};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTestFile {
    #[serde(default)]
    case: Vec<TestCase>,
}

/// One `[[case]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    #[serde(default)]
    pub name: Option<String>,
    pub identity: TestIdentity,
    pub connection: String,
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub dialect: Dialect,
    #[serde(default)]
    pub http: Option<TestHttp>,
    #[serde(default)]
    pub kubernetes: Option<TestKubernetes>,
    #[serde(default)]
    pub ssh: Option<String>,
    #[serde(default)]
    pub tcp: bool,
    /// Whether the caller holds a just-in-time grant.
    #[serde(default)]
    pub grant: bool,
    /// Expected verdict: `allow`, `deny`, `review` or `observe`.
    pub decision: String,
    /// Expected deciding rule id (omit to not check; `""` expects the default).
    #[serde(default)]
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestIdentity {
    pub subject: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub kind: IdentityKind,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestHttp {
    pub method: String,
    pub host: String,
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestKubernetes {
    pub verb: String,
    pub resource: String,
    #[serde(default)]
    pub subresource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// Outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub passed: bool,
    /// What went wrong, for failures.
    pub detail: Option<String>,
}

/// Test files in `dir` and its `tests/` subfolder, sorted.
pub fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in [dir.to_owned(), dir.join("tests")] {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_file() && name.ends_with(TEST_FILE_SUFFIX) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Parses one test file.
pub fn parse_test_file(file: &Path, text: &str) -> Result<Vec<TestCase>, LoadError> {
    toml::from_str::<RawTestFile>(text)
        .map(|f| f.case)
        .map_err(|e| {
            let line = e
                .span()
                .map(|s| {
                    memchr::memchr_iter(b'\n', text.as_bytes().get(..s.start).unwrap_or_default())
                        .count()
                        + 1
                })
                .unwrap_or(0);
            LoadError {
                file: file.to_owned(),
                line,
                key: "case".into(),
                message: e.message().trim().to_owned(),
                hint: None,
            }
        })
}

/// Runs one case against `policy`.
pub fn run_case(policy: &Arc<Policy>, file: &Path, index: usize, case: &TestCase) -> CaseResult {
    let name = case
        .name
        .clone()
        .unwrap_or_else(|| format!("case {}", index + 1));
    let fail = |detail: String| CaseResult {
        file: file.to_owned(),
        name: name.clone(),
        passed: false,
        detail: Some(detail),
    };
    let Some(expected) = Verdict::from_name(&case.decision) else {
        return fail(format!("unknown expected decision `{}`", case.decision));
    };
    let identity = Identity {
        subject: case.identity.subject.clone(),
        email: case.identity.email.clone(),
        groups: case.identity.groups.clone(),
        kind: case.identity.kind,
    };
    let given = usize::from(case.sql.is_some())
        + usize::from(case.http.is_some())
        + usize::from(case.kubernetes.is_some())
        + usize::from(case.ssh.is_some())
        + usize::from(case.tcp);
    if given != 1 {
        return fail("give exactly one of `sql`, `http`, `kubernetes`, `ssh`, `tcp = true`".into());
    }
    let action = if let Some(text) = &case.sql {
        Action::Sql {
            dialect: case.dialect,
            text,
        }
    } else if let Some(h) = &case.http {
        Action::Http {
            method: &h.method,
            host: &h.host,
            path: &h.path,
        }
    } else if let Some(k) = &case.kubernetes {
        Action::Kubernetes {
            verb: &k.verb,
            resource: &k.resource,
            subresource: k.subresource.as_deref(),
            namespace: k.namespace.as_deref(),
            name: k.name.as_deref(),
        }
    } else if let Some(c) = &case.ssh {
        Action::Ssh { command: c }
    } else {
        Action::TcpConnect
    };
    let cx = AccessContext {
        has_grant: case.grant,
        ..AccessContext::default()
    };
    let (verdict, rule) = match policy.session_with(&case.connection, &identity, &cx) {
        Err(_) => (Verdict::Deny, None),
        Ok(session) => {
            let mut scratch = Scratch::new();
            let d = session.decide(&action, &mut scratch);
            (d.verdict, d.rule.map(|r| r.0.clone()))
        }
    };
    let rule_ok = match &case.rule {
        None => true,
        Some(want) if want.is_empty() => rule.is_none(),
        Some(want) => rule.as_deref() == Some(want.as_str()),
    };
    if verdict == expected && rule_ok {
        CaseResult {
            file: file.to_owned(),
            name,
            passed: true,
            detail: None,
        }
    } else {
        fail(format!(
            "expected {}{}, got {}{}",
            expected,
            case.rule
                .as_ref()
                .map(|r| format!(" by rule `{r}`"))
                .unwrap_or_default(),
            verdict,
            rule.map(|r| format!(" by rule `{r}`"))
                .unwrap_or_else(|| " by default".into())
        ))
    }
}
