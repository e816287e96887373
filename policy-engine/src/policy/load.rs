//! Loading a policy directory: read every policy file, deserialize, validate, compile.
//!
//! Every problem becomes a [`LoadError`] naming the file, line, key and, where one helps, a
//! hint; loading collects all of them instead of stopping at the first. It does not compile
//! masking rules (the masking engine does) but it does check their connection and group globs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::RegexSet;
use toml::Spanned;

use super::raw::{OneOrMany, RawFile, RawMatch, RawRule};
use super::{
    AccessRule, AdminRule, GrantSpec, Hours, HttpMatch, K8sMatch, MaskRule, Policy, ReviewSpec,
    Rule, RuleId, SqlMatch, SshMatch, TableGlob, Verdict, WebhookRule,
};
use crate::glob::{Glob, GlobSet};
use crate::mask::{MaskEngine, MaskError, MaskSpec};
use crate::sql::{KindSet, StatementKind};

/// Largest policy file read; larger ones are refused before reading.
pub const MAX_POLICY_FILE_BYTES: u64 = 4 << 20;
/// Most policy files in a directory.
pub const MAX_POLICY_FILES: usize = 1000;
/// Most regexes compiled per rule; larger sets are a sign of a generated policy gone wrong.
pub const MAX_REGEXES_PER_RULE: usize = 256;
/// Compiled size limit for one rule's regex set.
const REGEX_SIZE_LIMIT: usize = 8 << 20;

/// Longest just-in-time grant when an `[[access]]` entry does not set `max_grant`.
pub const DEFAULT_MAX_GRANT: Duration = Duration::from_secs(8 * 3600);

/// Operations that `[[admin]]` tables may grant.
pub const ADMIN_OPERATIONS: &[&str] = &[
    "sessions.list",
    "sessions.kill",
    "reviews.list",
    "reviews.approve",
    "reviews.deny",
    "grants.request",
    "grants.approve",
    "policy.reload",
    "policy.status",
    "metrics.read",
    "recordings.read",
];

/// Suffix of policy test files, which `load_dir` skips and `policy test` runs.
pub const TEST_FILE_SUFFIX: &str = "_test.toml";

/// One problem in a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is the file as a whole.
    pub line: usize,
    /// Where in the file: `rule[no-ddl].match.statement`, `access[2].hours`, ...
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for LoadError {
    /// `file:line: key: message (hint: ...)`, leaving out a zero line and an empty key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// Everything wrong with a policy directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct LoadErrors(pub Vec<LoadError>);

/// Policy files (not test files) in `dir`, sorted by name so rule order is stable.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, LoadErrors> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| one(dir, 0, "", format!("cannot read directory: {e}"), None))?;
    let mut files = Vec::new();
    for entry in rd {
        let entry =
            entry.map_err(|e| one(dir, 0, "", format!("cannot read directory: {e}"), None))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_file()
            && name.ends_with(".toml")
            && !name.ends_with(TEST_FILE_SUFFIX)
            && !name.starts_with('.')
        {
            files.push(path);
        }
    }
    files.sort();
    if files.len() > MAX_POLICY_FILES {
        return Err(one(
            dir,
            0,
            "",
            format!("more than {MAX_POLICY_FILES} policy files"),
            None,
        ));
    }
    Ok(files)
}

fn one(file: &Path, line: usize, key: &str, message: String, hint: Option<String>) -> LoadErrors {
    LoadErrors(vec![LoadError {
        file: file.to_owned(),
        line,
        key: key.to_owned(),
        message,
        hint,
    }])
}

/// Loads and compiles the policy in `dir`.
pub fn load_dir(dir: &Path) -> Result<Policy, LoadErrors> {
    let files = policy_files(dir)?;
    let mut sources = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for f in files {
        match std::fs::metadata(&f) {
            Ok(m) if m.len() > MAX_POLICY_FILE_BYTES => {
                errors.push(err(
                    &f,
                    0,
                    "",
                    format!("file is larger than {MAX_POLICY_FILE_BYTES} bytes"),
                    None,
                ));
                continue;
            }
            Err(e) => {
                errors.push(err(&f, 0, "", format!("cannot read: {e}"), None));
                continue;
            }
            Ok(_) => {}
        }
        match std::fs::read_to_string(&f) {
            Ok(text) => sources.push((f, text)),
            Err(e) => errors.push(err(&f, 0, "", format!("cannot read: {e}"), None)),
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    compile_sources(&sources)
}

/// Compiles policy sources given as `(file name, text)`, in order. Used by `load_dir` and by
/// tests and fuzzing, which have no directory.
pub fn compile_sources(sources: &[(PathBuf, String)]) -> Result<Policy, LoadErrors> {
    let mut b = Builder::default();
    for (file, text) in sources {
        b.file(file, text);
    }
    b.finish(sources)
}

fn err(file: &Path, line: usize, key: &str, message: String, hint: Option<String>) -> LoadError {
    LoadError {
        file: file.to_owned(),
        line,
        key: key.to_owned(),
        message,
        hint,
    }
}

#[derive(Default)]
struct Builder {
    p: Policy,
    errors: Vec<LoadError>,
    /// Every rule regex, for the policy-wide prefilter.
    all_regexes: Vec<String>,
    /// Where each `[[mask]]` (in policy order) and each `[[detector]]` (by name) was written,
    /// to point masking errors at their file and line.
    mask_sites: Vec<(PathBuf, usize, String)>,
    detector_sites: Vec<(PathBuf, usize, String)>,
}

struct Site<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Site<'_> {
    fn line(&self, offset: usize) -> usize {
        let upto = self
            .text
            .get(..offset.min(self.text.len()))
            .unwrap_or(self.text);
        memchr::memchr_iter(b'\n', upto.as_bytes()).count() + 1
    }
}

impl Builder {
    fn push(
        &mut self,
        site: &Site<'_>,
        line: usize,
        key: String,
        message: String,
        hint: Option<String>,
    ) {
        self.errors.push(LoadError {
            file: site.file.to_owned(),
            line,
            key,
            message,
            hint,
        });
    }

    fn file(&mut self, file: &Path, text: &str) {
        let site = Site { file, text };
        let first = match toml::from_str::<RawFile>(text) {
            Ok(raw) => return self.raw_file(&site, raw),
            Err(e) => e,
        };
        // Deserializing stops at a file's first mistake. So that `policy check` reports every
        // table's mistakes in one run, a file of several tables is read again one table at a
        // time, each padded with the newlines before it so that its line numbers are the
        // file's; the tables that read are checked as usual. The result is an error either
        // way; if no single table fails (a mistake across tables), the first error stands.
        let before = self.errors.len();
        let chunks = table_chunks(text);
        if chunks.len() > 1 {
            for (line, chunk) in chunks {
                let padded = format!("{}{chunk}", "\n".repeat(line));
                let site = Site {
                    file,
                    text: &padded,
                };
                match toml::from_str::<RawFile>(&padded) {
                    Ok(raw) => self.raw_file(&site, raw),
                    Err(e) => self.toml_error(&site, &e),
                }
            }
        }
        if self.errors.len() == before {
            self.toml_error(&site, &first);
        }
    }

    fn toml_error(&mut self, site: &Site<'_>, e: &toml::de::Error) {
        let line = e.span().map(|s| site.line(s.start)).unwrap_or(0);
        let message = e.message().trim().to_owned();
        let key = message
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .unwrap_or("")
            .to_owned();
        let hint = unknown_field_hint(&message);
        self.push(site, line, key, message, hint);
    }

    fn raw_file(&mut self, site: &Site<'_>, raw: RawFile) {
        let site = Site {
            file: site.file,
            text: site.text,
        };
        for a in raw.access {
            self.access(&site, a);
        }
        for r in raw.rule {
            self.rule(&site, r);
        }
        for (i, d) in raw.defaults.into_iter().enumerate() {
            let line = site.line(d.span().start);
            let d = d.into_inner();
            let key = format!("defaults[{i}]");
            let conns = self.globs(&site, line, &key, "connections", d.connections, false);
            let verdict = match d.statements.as_str() {
                "allow" => Verdict::Allow,
                "deny" => Verdict::Deny,
                other => {
                    self.push(
                        &site,
                        line,
                        format!("{key}.statements"),
                        format!("unknown default `{other}`"),
                        Some("use `allow` or `deny`".into()),
                    );
                    continue;
                }
            };
            self.p.defaults.push((conns, verdict));
        }
        for (i, m) in raw.mask.into_iter().enumerate() {
            let line = site.line(m.span().start);
            let m = m.into_inner();
            let key = format!("mask[{i}]");
            let connections = self.globs(
                &site,
                line,
                &key,
                "connections",
                OneOrMany::Many(m.connections.clone()),
                false,
            );
            let groups = self.globs(
                &site,
                line,
                &key,
                "groups",
                OneOrMany::Many(m.groups.clone()),
                false,
            );
            self.mask_sites.push((site.file.to_owned(), line, key));
            self.p.masks.push(MaskRule {
                spec: m,
                connections,
                groups,
            });
        }
        for d in raw.detector {
            let line = site.line(d.span().start);
            let d = d.into_inner();
            if self.p.detectors.iter().any(|x| x.name == d.name) {
                self.push(
                    &site,
                    line,
                    format!("detector[{}]", d.name),
                    "duplicate detector name".into(),
                    None,
                );
            }
            self.detector_sites
                .push((site.file.to_owned(), line, format!("detector[{}]", d.name)));
            self.p.detectors.push(d);
        }
        for (i, a) in raw.admin.into_iter().enumerate() {
            let line = site.line(a.span().start);
            let a = a.into_inner();
            let key = format!("admin[{i}]");
            let groups = self.globs(&site, line, &key, "groups", a.groups, false);
            let mut ops = Vec::new();
            for op in a.operations.into_vec() {
                if op != "*" && !ADMIN_OPERATIONS.contains(&op.as_str()) {
                    let hint = closest(&op, ADMIN_OPERATIONS.iter().copied())
                        .map(|c| format!("did you mean `{c}`?"));
                    self.push(
                        &site,
                        line,
                        format!("{key}.operations"),
                        format!("unknown operation `{op}`"),
                        hint,
                    );
                }
                ops.push(op);
            }
            self.p.admin.push(AdminRule {
                groups,
                operations: ops,
            });
        }
        for (i, w) in raw.webhook.into_iter().enumerate() {
            let line = site.line(w.span().start);
            let w = w.into_inner();
            let key = format!("webhook[{i}]");
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                self.push(
                    &site,
                    line,
                    format!("{key}.url"),
                    format!("`{}` is not an http(s) url", w.url),
                    None,
                );
            }
            let connections = self.globs(&site, line, &key, "connections", w.connections, false);
            self.p.webhooks.push(WebhookRule {
                url: w.url,
                connections,
            });
        }
    }

    fn globs(
        &mut self,
        site: &Site<'_>,
        line: usize,
        key: &str,
        field: &str,
        v: OneOrMany,
        ci: bool,
    ) -> GlobSet {
        let mut out = Vec::new();
        for pat in v.into_vec() {
            match Glob::new(&pat, ci) {
                Ok(g) => out.push(g),
                Err(e) => self.push(site, line, format!("{key}.{field}"), e.to_string(), None),
            }
        }
        GlobSet::new(out)
    }

    fn access(&mut self, site: &Site<'_>, a: Spanned<crate::policy::raw::RawAccess>) {
        let line = site.line(a.span().start);
        let a = a.into_inner();
        let key = format!("access[{}]", self.p.access.len());
        let connections = self.globs(site, line, &key, "connections", a.connections, false);
        let groups = self.globs(site, line, &key, "groups", a.groups, false);
        let hours = match a.hours.as_deref().map(Hours::parse) {
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err((msg, hint))) => {
                self.push(site, line, format!("{key}.hours"), msg, hint);
                None
            }
        };
        let approvers = a.approvers.into_vec();
        let approvals = a.approvals.unwrap_or(1);
        if approvals == 0 {
            self.push(
                site,
                line,
                format!("{key}.approvals"),
                "must be at least 1".into(),
                None,
            );
        }
        if !approvers.is_empty() && !a.require_grant {
            self.push(
                site,
                line,
                format!("{key}.approvers"),
                "grant approvers on an entry without `require_grant = true`".into(),
                Some("add `require_grant = true` or remove `approvers`".into()),
            );
        }
        let max_grant = match a.max_grant.as_deref().map(parse_duration) {
            None => DEFAULT_MAX_GRANT,
            Some(Ok(d)) => d,
            Some(Err(m)) => {
                self.push(
                    site,
                    line,
                    format!("{key}.max_grant"),
                    m,
                    Some("write durations like `30m`, `8h`".into()),
                );
                Duration::ZERO
            }
        };
        self.p.access.push(AccessRule {
            connections,
            groups,
            hours,
            require_grant: a.require_grant,
            grant: (!approvers.is_empty()).then_some(GrantSpec {
                approvers,
                approvals,
                max_duration: max_grant,
            }),
        });
    }

    fn rule(&mut self, site: &Site<'_>, r: Spanned<RawRule>) {
        let line = site.line(r.span().start);
        let r = r.into_inner();
        let key = format!("rule[{}]", if r.id.is_empty() { "?" } else { &r.id });
        if r.id.is_empty()
            || !r
                .id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            self.push(
                site,
                line,
                format!("{key}.id"),
                format!("rule id `{}` is empty or has characters other than letters, digits, `-`, `_`, `.`", r.id),
                None,
            );
        }
        if self.p.rules.iter().any(|x| *x.id.0 == *r.id) {
            self.push(
                site,
                line,
                format!("{key}.id"),
                format!("duplicate rule id `{}`", r.id),
                None,
            );
        }
        let connections = self.globs(site, line, &key, "connections", r.connections, false);
        let groups = self.globs(site, line, &key, "groups", r.groups, false);
        let verdict = match r.action.as_str() {
            "allow" => Verdict::Allow,
            "deny" => Verdict::Deny,
            "review" => Verdict::Review,
            "observe" => Verdict::Observe,
            other => {
                let hint = closest(other, ["allow", "deny", "review", "observe"].into_iter())
                    .map(|c| format!("did you mean `{c}`?"))
                    .or_else(|| Some("use `allow`, `deny`, `review` or `observe`".into()));
                self.push(
                    site,
                    line,
                    format!("{key}.action"),
                    format!("unknown action `{other}`"),
                    hint,
                );
                Verdict::Deny
            }
        };
        let review = match (r.review, verdict) {
            (Some(rv), _) => {
                let approvers = rv.approvers.into_vec();
                if approvers.is_empty() {
                    self.push(
                        site,
                        line,
                        format!("{key}.review.approvers"),
                        "no approver groups".into(),
                        None,
                    );
                }
                let approvals = rv.approvals.unwrap_or(1);
                if approvals == 0 {
                    self.push(
                        site,
                        line,
                        format!("{key}.review.approvals"),
                        "must be at least 1".into(),
                        None,
                    );
                }
                let timeout = match rv.timeout.as_deref().map(parse_duration) {
                    None => Duration::from_secs(15 * 60),
                    Some(Ok(d)) => d,
                    Some(Err(m)) => {
                        self.push(
                            site,
                            line,
                            format!("{key}.review.timeout"),
                            m,
                            Some("write durations like `90s`, `10m`, `1h30m`".into()),
                        );
                        Duration::ZERO
                    }
                };
                if verdict != Verdict::Review {
                    self.push(
                        site,
                        line,
                        format!("{key}.review"),
                        "`review` settings on a rule whose action is not `review`".into(),
                        None,
                    );
                }
                Some(ReviewSpec {
                    approvers,
                    approvals,
                    timeout,
                })
            }
            (None, Verdict::Review) => {
                self.push(
                    site,
                    line,
                    format!("{key}.review"),
                    "review rules need approvers".into(),
                    Some("add `review = { approvers = [\"dba\"], approvals = 1, timeout = \"10m\" }`".into()),
                );
                None
            }
            (None, _) => None,
        };
        let m = self.matcher(site, line, &key, r.matcher);
        self.p.rules.push(Rule {
            id: RuleId(r.id.into()),
            description: r.description,
            file: site.file.to_owned(),
            line,
            connections,
            groups,
            sql: m.0,
            http: m.1,
            k8s: m.2,
            ssh: m.3,
            verdict,
            message: r.message,
            review,
        });
    }

    fn matcher(
        &mut self,
        site: &Site<'_>,
        line: usize,
        key: &str,
        m: RawMatch,
    ) -> (
        Option<SqlMatch>,
        Option<HttpMatch>,
        Option<K8sMatch>,
        Option<SshMatch>,
    ) {
        let mkey = format!("{key}.match");
        let mut kinds = KindSet::EMPTY;
        let statement = m.statement.into_vec();
        let tables = m.tables.into_vec();
        let schemas = m.schemas.into_vec();
        let regexes = m.regex.into_vec();
        let has_sql = !statement.is_empty()
            || m.without_where.is_some()
            || !tables.is_empty()
            || !schemas.is_empty()
            || !regexes.is_empty()
            || m.multi_statement.is_some();
        for s in &statement {
            match StatementKind::from_name(&s.to_ascii_lowercase()) {
                Some(k) => kinds.insert(k),
                None => {
                    let hint = closest(s, StatementKind::ALL.iter().map(|k| k.name()))
                        .map(|c| format!("did you mean `{c}`?"))
                        .or_else(|| Some("see docs/policy.md for the statement kinds".into()));
                    self.push(
                        site,
                        line,
                        format!("{mkey}.statement"),
                        format!("unknown statement kind `{s}`"),
                        hint,
                    );
                }
            }
        }
        let mut table_globs = Vec::new();
        for t in &tables {
            let (schema, name) = match t.split_once('.') {
                Some((s, n)) => (Some(s), n),
                None => (None, t.as_str()),
            };
            let schema = schema.map(|s| Glob::new(s, true));
            match (schema.transpose(), Glob::new(name, true)) {
                (Ok(schema), Ok(name)) => table_globs.push(TableGlob { schema, name }),
                (Err(e), _) | (_, Err(e)) => {
                    self.push(site, line, format!("{mkey}.tables"), e.to_string(), None)
                }
            }
        }
        let schemas = if schemas.is_empty() {
            None
        } else {
            Some(self.globs(site, line, &mkey, "schemas", OneOrMany::Many(schemas), true))
        };
        let regex = if regexes.is_empty() {
            None
        } else if regexes.len() > MAX_REGEXES_PER_RULE {
            self.push(
                site,
                line,
                format!("{mkey}.regex"),
                format!("more than {MAX_REGEXES_PER_RULE} regexes"),
                None,
            );
            None
        } else {
            match regex::RegexSetBuilder::new(&regexes)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(set) => {
                    self.all_regexes.extend(regexes.iter().cloned());
                    Some(set)
                }
                Err(e) => {
                    self.push(
                        site,
                        line,
                        format!("{mkey}.regex"),
                        format!("invalid regex: {e}"),
                        Some(
                            "regexes run on normalized text: lower-case words, literals as `?`"
                                .into(),
                        ),
                    );
                    None::<RegexSet>
                }
            }
        };
        let sql = has_sql.then(|| SqlMatch {
            kinds,
            without_where: m.without_where,
            tables: table_globs,
            schemas,
            regex,
            multi_statement: m.multi_statement,
        });
        let http = m.http.map(|h| {
            let k = format!("{mkey}.http");
            HttpMatch {
                methods: h
                    .methods
                    .into_vec()
                    .into_iter()
                    .map(|s| s.to_ascii_uppercase())
                    .collect(),
                hosts: self.globs(site, line, &k, "hosts", h.hosts, true),
                paths: self.globs(site, line, &k, "paths", h.paths, false),
            }
        });
        let k8s = m.kubernetes.map(|h| {
            let k = format!("{mkey}.kubernetes");
            let opt = |b: &mut Self, f: &str, v: OneOrMany| {
                let v = v.into_vec();
                if v.is_empty() {
                    None
                } else {
                    Some(b.globs(site, line, &k, f, OneOrMany::Many(v), false))
                }
            };
            K8sMatch {
                verbs: opt(self, "verbs", h.verbs),
                resources: opt(self, "resources", h.resources),
                subresources: opt(self, "subresources", h.subresources),
                namespaces: opt(self, "namespaces", h.namespaces),
                names: opt(self, "names", h.names),
            }
        });
        let ssh = m.ssh.map(|s| {
            let mut commands = Vec::new();
            for c in s.commands.into_vec() {
                match Glob::with_spaces(c.trim()) {
                    Ok(g) => commands.push(g),
                    Err(e) => self.push(
                        site,
                        line,
                        format!("{mkey}.ssh.commands"),
                        e.to_string(),
                        None,
                    ),
                }
            }
            SshMatch { commands }
        });
        let protocols = [sql.is_some(), http.is_some(), k8s.is_some(), ssh.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if protocols > 1 {
            self.push(
                site,
                line,
                mkey,
                "one rule mixes matchers for different protocols, so it could never match".into(),
                Some("split it into one rule per protocol".into()),
            );
        }
        (sql, http, k8s, ssh)
    }

    fn finish(mut self, sources: &[(PathBuf, String)]) -> Result<Policy, LoadErrors> {
        if self.errors.is_empty() {
            self.check_masks();
        }
        if !self.errors.is_empty() {
            return Err(LoadErrors(self.errors));
        }
        self.p.version = content_hash(sources);
        // One scan answers "does any regex match?" for the common case where none does; if
        // the combined set is too big it is simply not built and each rule checks its own.
        if !self.all_regexes.is_empty() {
            self.p.regex_prefilter = regex::RegexSetBuilder::new(&self.all_regexes)
                .size_limit(REGEX_SIZE_LIMIT * 8)
                .build()
                .ok();
            self.p.regex_literals = super::filter::word_literal_prefilter(&self.all_regexes);
        }
        Ok(self.p)
    }

    /// Compiles the masking rules as the gateway will, so `policy check` and a reload reject
    /// what the gateway would (an unknown detector, a bad custom regex) with file and line,
    /// rather than the gateway failing at start. The key only has to be non-empty here.
    fn check_masks(&mut self) {
        let specs: Vec<MaskSpec> = self.p.masks.iter().map(|m| m.spec.clone()).collect();
        let Err(e) = MaskEngine::compile(&specs, &self.p.detectors, b"policy-check") else {
            return;
        };
        let rule_site = |rule: usize| self.mask_sites.get(rule).cloned();
        let detector_site = |name: &str| {
            self.detector_sites
                .iter()
                .find(|(_, _, key)| {
                    key.strip_prefix("detector[")
                        .and_then(|k| k.strip_suffix(']'))
                        == Some(name)
                })
                .cloned()
        };
        let (site, message) = match &e {
            MaskError::UnknownDetector { rule, name } => (
                rule_site(*rule),
                format!("unknown detector `{name}` (not built in, no [[detector]] of that name)"),
            ),
            MaskError::EmptyRule { rule } | MaskError::BadGlob { rule, .. } => {
                (rule_site(*rule), e.to_string())
            }
            MaskError::BadRegex { name, .. }
            | MaskError::UnknownValidator { name, .. }
            | MaskError::DuplicateDetector { name } => (detector_site(name), e.to_string()),
            _ => (self.detector_sites.first().cloned(), e.to_string()),
        };
        let (file, line, key) = site.unwrap_or_else(|| {
            let file = self
                .mask_sites
                .first()
                .map(|s| s.0.clone())
                .unwrap_or_default();
            (file, 0, String::new())
        });
        self.errors.push(LoadError {
            file,
            line,
            key,
            message,
            hint: None,
        });
    }
}

/// FNV-1a over file names and contents: a stable id for "which policy is this", not a MAC.
fn content_hash(sources: &[(PathBuf, String)]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for (f, text) in sources {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        feed(name.as_bytes());
        feed(text.as_bytes());
    }
    format!("{h:016x}")
}

/// Parses `90s`, `10m`, `1h30m`, `2d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    for c in s.trim().chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(
                num.unwrap_or(0)
                    .saturating_mul(10)
                    .saturating_add(u64::from(d)),
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("bad duration `{s}`")),
        };
        let n = num.take().ok_or_else(|| format!("bad duration `{s}`"))?;
        total = total.saturating_add(n.saturating_mul(unit));
    }
    if num.is_some() || total == 0 {
        return Err(format!(
            "bad duration `{s}`: give a unit (`s`, `m`, `h`, `d`) and a non-zero value"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// The top-level tables of a policy file: `(lines before it, its text)` for the text before
/// the first `[[name]]` header and for each such header with the lines up to the next one.
/// Headers of nested arrays (`[[rule.x]]`) and sub-tables (`[rule.review]`) stay with their
/// table.
fn table_chunks(text: &str) -> Vec<(usize, &str)> {
    let mut starts = vec![(0usize, 0usize)];
    let mut offset = 0usize;
    for (line, l) in text.split_inclusive('\n').enumerate() {
        let header = l
            .trim_start()
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .is_some_and(|(name, _)| !name.contains('.') && !name.trim().is_empty());
        if header && offset > 0 {
            starts.push((line, offset));
        }
        offset += l.len();
    }
    let ends = starts.iter().skip(1).map(|&(_, o)| o).chain([text.len()]);
    starts
        .iter()
        .zip(ends)
        .map(|(&(line, s), e)| (line, text.get(s..e).unwrap_or("")))
        .collect()
}

fn unknown_field_hint(message: &str) -> Option<String> {
    let field = message.strip_prefix("unknown field `")?.split('`').next()?;
    let expected = message.split_once("expected")?.1;
    let candidates = expected.split('`').skip(1).step_by(2);
    closest(field, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The candidate nearest to `word` by edit distance, if it is near enough to be a typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(&word.to_ascii_lowercase(), c);
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}
