//! Per-request decisions: the hot path.
//!
//! A decision classifies the request once, then walks the session's pre-filtered rule list.
//! Among matching rules `deny > review > observe > allow`; ties go to the earliest rule (files
//! in name order, rules in file order). No rule matching means the session default. A query
//! string is decided by its worst statement, so one denied statement refuses the whole string.
//! Observe never lets through what would otherwise be refused: it turns an allow into an
//! observe. Nothing here allocates once the [`Scratch`] has grown.

use super::{Rule, RuleId, SessionPolicy, Verdict};
use crate::request::{Action, Dialect};
use crate::sql::{ClassifyError, SqlScratch, Statement, TableRef};

use super::ReviewSpec;

/// Reusable working memory for decisions; keep one per core (or per session) and pass it to
/// every [`SessionPolicy::decide`] call.
#[derive(Debug, Default)]
pub struct Scratch {
    pub(crate) sql: SqlScratch,
    norm: String,
    cmd: String,
    results: Vec<StatementResult>,
    /// Union of candidate-rule bitsets for statements with several kinds.
    candidates: Vec<u64>,
    /// Rules whose table patterns matched the statement (see `SqlFilter`).
    hits: Vec<u64>,
    /// Tests compare the kind-indexed walk against walking every rule.
    #[cfg(test)]
    pub(crate) full_walk: bool,
}

impl Scratch {
    pub fn new() -> Self {
        Self::default()
    }

    /// How the next PostgreSQL requests read plain strings: the session's
    /// `standard_conforming_strings`, or `Either` while a statement that could change it runs.
    pub fn set_string_literals(&mut self, strings: crate::sql::StringLiterals) {
        self.sql.set_string_literals(strings);
    }

    /// SQL classification of the last decided SQL request.
    pub fn sql(&self) -> &SqlScratch {
        &self.sql
    }

    /// One result per statement of the last decided SQL request.
    pub fn statement_results(&self) -> &[StatementResult] {
        &self.results
    }
}

/// How one statement of a query string was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementResult {
    pub verdict: Verdict,
    /// Index of the deciding rule in [`super::Policy::rules`]; `None` for the default.
    pub rule: Option<u32>,
}

/// Why the verdict is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A rule decided (see `Decision::rule`).
    Rule,
    /// No rule matched; the session default applied.
    Default,
    /// The request could not be classified, so it is refused (fail closed).
    Unclassifiable(ClassifyError),
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'p> {
    pub verdict: Verdict,
    pub rule: Option<&'p RuleId>,
    /// The rule's message, or a fixed explanation for default and error denials.
    pub message: Option<&'p str>,
    pub review: Option<&'p ReviewSpec>,
    /// For SQL: index of the statement that decided (the first one with the worst verdict).
    pub statement: Option<usize>,
    pub reason: Reason,
}

const DEFAULT_DENY_MESSAGE: &str = "no rule allows this request on this connection";
const UNCLASSIFIABLE_MESSAGE: &str = "the request could not be classified, so it is refused";
/// [`ClassifyError::AmbiguousStrings`] says what the client can do about it.
const AMBIGUOUS_STRINGS_MESSAGE: &str = "a backslash in a '...' string reads differently with \
    standard_conforming_strings on and off, and a statement still running could change it: \
    send this after that statement completes, or write the string as E'...' or with dollar quotes";

/// Which matcher of a rule did not match (for `explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    Protocol,
    Statement,
    WithoutWhere,
    MultiStatement,
    Tables,
    Schemas,
    Regex,
    Method,
    Host,
    Path,
    Verb,
    Resource,
    Subresource,
    Namespace,
    Name,
    Command,
}

impl Miss {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Protocol => "the rule is for another protocol",
            Self::Statement => "statement kind not listed in `match.statement`",
            Self::WithoutWhere => "`match.without_where` differs",
            Self::MultiStatement => "`match.multi_statement` differs",
            Self::Tables => "no table matches `match.tables`",
            Self::Schemas => "no schema-qualified table matches `match.schemas`",
            Self::Regex => "normalized text matches no `match.regex`",
            Self::Method => "method not listed",
            Self::Host => "host does not match",
            Self::Path => "path does not match",
            Self::Verb => "verb does not match",
            Self::Resource => "resource does not match",
            Self::Subresource => "subresource does not match",
            Self::Namespace => "namespace does not match",
            Self::Name => "name does not match",
            Self::Command => "no command matches `match.ssh.commands`",
        }
    }
}

impl SessionPolicy {
    /// Decides one request. Allocation-free once `scratch` has warmed up.
    pub fn decide<'p>(&'p self, action: &Action<'_>, scratch: &mut Scratch) -> Decision<'p> {
        scratch.results.clear();
        match *action {
            Action::Sql { dialect, text } => self.decide_sql(dialect, text, scratch),
            _ => {
                let Scratch { cmd, .. } = scratch;
                let r = self.evaluate(|rule| non_sql_miss(rule, action, cmd).is_none());
                self.decision(r, None)
            }
        }
    }

    fn decide_sql<'p>(
        &'p self,
        dialect: Dialect,
        text: &str,
        scratch: &mut Scratch,
    ) -> Decision<'p> {
        if let Err(e) = scratch.sql.classify(text, dialect) {
            return Decision {
                verdict: Verdict::Deny,
                rule: None,
                message: Some(if e == ClassifyError::AmbiguousStrings {
                    AMBIGUOUS_STRINGS_MESSAGE
                } else {
                    UNCLASSIFIABLE_MESSAGE
                }),
                review: None,
                statement: None,
                reason: Reason::Unclassifiable(e),
            };
        }
        #[cfg(test)]
        let full_walk = scratch.full_walk;
        #[cfg(not(test))]
        let full_walk = false;
        let Scratch {
            sql,
            norm,
            results,
            candidates,
            hits,
            ..
        } = scratch;
        let n = sql.statements().len();
        if n == 0 {
            // Only comments or whitespace: nothing runs, so only the default applies.
            let r = self.evaluate(|_| false);
            return self.decision(r, None);
        }
        let mut worst: Option<(usize, StatementResult)> = None;
        let prefilter = self.policy.regex_prefilter.as_ref();
        for (i, st) in sql.statements().iter().enumerate() {
            let mut norm_state = NormState::Pending;
            // Opaque statements match refusing rules whatever their kinds: walk every rule.
            let walk_all = st.opaque || full_walk;
            if !walk_all {
                self.kind_index.candidates_into(st.kinds.bits(), candidates);
                self.sql_filter.retain(
                    &self.policy.rules,
                    text,
                    sql.tables(st),
                    n,
                    candidates,
                    hits,
                );
                // Regex rules need the normalized text. Build it once, here, unless the raw
                // text lacks every literal a regex match needs, and when no regex of the whole
                // policy matches, drop every regex rule from the walk.
                if intersects(candidates, &self.sql_filter.has_regex) {
                    let literals = self.policy.regex_literals.as_ref();
                    let span = st.span.of(text);
                    // Short statements: one pass over the text. Long ones are mostly literals
                    // (IN lists, multi-row VALUES) that normalize to `?`: scan only the tokens
                    // whose bytes survive normalization.
                    let found = |l: &super::filter::WordLiterals| {
                        if span.len() <= LITERAL_SCAN_BY_TOKEN_ABOVE {
                            l.found_in(span)
                        } else {
                            sql.word_bearing_tokens(text, st).any(|t| l.found_in(t))
                        }
                    };
                    norm_state = if literals.is_some_and(|l| !found(l)) {
                        NormState::NoRegexMatches
                    } else {
                        sql.normalize_into(text, dialect, st, norm);
                        match prefilter {
                            Some(p) if !p.is_match(norm) => NormState::NoRegexMatches,
                            _ => NormState::Ready,
                        }
                    };
                    if norm_state == NormState::NoRegexMatches {
                        for (c, r) in candidates.iter_mut().zip(&self.sql_filter.has_regex) {
                            *c &= !r;
                        }
                    }
                }
            }
            let matches = |rule: &Rule| {
                sql_miss(
                    rule,
                    sql,
                    st,
                    text,
                    dialect,
                    n,
                    norm,
                    &mut norm_state,
                    prefilter,
                )
                .is_none()
            };
            let r = if walk_all {
                self.evaluate(matches)
            } else {
                self.evaluate_in(candidates, matches)
            };
            results.push(r);
            if worst.is_none_or(|(_, w)| r.verdict > w.verdict) {
                worst = Some((i, r));
            }
        }
        match worst {
            Some((i, r)) => self.decision(r, Some(i)),
            None => self.decision(self.evaluate(|_| false), None),
        }
    }

    /// Walks the session's rules with `matches` and applies precedence.
    pub(crate) fn evaluate(&self, matches: impl FnMut(&Rule) -> bool) -> StatementResult {
        self.evaluate_from(self.rule_indices().iter().copied(), matches)
    }

    /// Walks only the session rules whose positions are set in `set` (see `KindIndex`).
    fn evaluate_in(&self, set: &[u64], matches: impl FnMut(&Rule) -> bool) -> StatementResult {
        let session = self.rule_indices();
        let positions = set.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(w * 64 + b)
            })
        });
        self.evaluate_from(positions.filter_map(|p| session.get(p).copied()), matches)
    }

    fn evaluate_from(
        &self,
        indices: impl Iterator<Item = u32>,
        mut matches: impl FnMut(&Rule) -> bool,
    ) -> StatementResult {
        let rules = &self.policy.rules;
        let mut best: Option<(Verdict, u32)> = None;
        let mut observe: Option<u32> = None;
        for ri in indices {
            let Some(rule) = rules.get(ri as usize) else {
                continue;
            };
            if rule.verdict == Verdict::Observe {
                if observe.is_none() && matches(rule) {
                    observe = Some(ri);
                }
                continue;
            }
            if best.is_some_and(|(v, _)| rule.verdict <= v) || !matches(rule) {
                continue;
            }
            best = Some((rule.verdict, ri));
            if rule.verdict == Verdict::Deny {
                break;
            }
        }
        let allow = |rule: Option<u32>| match observe {
            Some(o) => StatementResult {
                verdict: Verdict::Observe,
                rule: Some(o),
            },
            None => StatementResult {
                verdict: Verdict::Allow,
                rule,
            },
        };
        match best {
            Some((Verdict::Allow, ri)) => allow(Some(ri)),
            Some((v, ri)) => StatementResult {
                verdict: v,
                rule: Some(ri),
            },
            None if self.default_verdict() == Verdict::Allow => allow(None),
            None => StatementResult {
                verdict: Verdict::Deny,
                rule: None,
            },
        }
    }

    fn decision(&self, r: StatementResult, statement: Option<usize>) -> Decision<'_> {
        let rule = r.rule.and_then(|i| self.policy.rules.get(i as usize));
        Decision {
            verdict: r.verdict,
            rule: rule.map(|x| &x.id),
            message: match rule {
                Some(x) => x.message.as_deref(),
                None if r.verdict == Verdict::Deny => Some(DEFAULT_DENY_MESSAGE),
                None => None,
            },
            review: rule.and_then(|x| x.review.as_ref()),
            statement,
            reason: if rule.is_some() {
                Reason::Rule
            } else {
                Reason::Default
            },
        }
    }
}

/// Statement length (bytes) above which the regex literal prefilter scans tokens rather than
/// the whole text: per-token calls cost more than they skip on short statements (measured with
/// callgrind on the `bench policy` corpus), and less on long literal-heavy ones.
const LITERAL_SCAN_BY_TOKEN_ABOVE: usize = 1024;

fn intersects(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).any(|(x, y)| x & y != 0)
}

/// Whether the statement's normalized text has been computed yet, and what the policy-wide
/// regex prefilter said about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NormState {
    Pending,
    Ready,
    NoRegexMatches,
}

/// Why `rule` does not match statement `st`, or `None` if it does.
#[expect(
    clippy::too_many_arguments,
    reason = "hot path: plain borrows instead of a context struct"
)]
pub(crate) fn sql_miss(
    rule: &Rule,
    sql: &SqlScratch,
    st: &Statement,
    text: &str,
    dialect: Dialect,
    n_statements: usize,
    norm: &mut String,
    norm_state: &mut NormState,
    prefilter: Option<&regex::RegexSet>,
) -> Option<Miss> {
    let Some(m) = &rule.sql else {
        return if rule.matches_everything() {
            None
        } else {
            Some(Miss::Protocol)
        };
    };
    // What an opaque statement runs is unknown: rules that refuse or hold match it anyway.
    let opaque = st.opaque && rule.verdict != Verdict::Allow;
    if !m.kinds.is_empty() && !st.kinds.intersects(m.kinds) && !opaque {
        return Some(Miss::Statement);
    }
    if let Some(w) = m.without_where
        && st.without_where != w
        && !opaque
    {
        return Some(Miss::WithoutWhere);
    }
    if let Some(ms) = m.multi_statement
        && (n_statements > 1) != ms
    {
        return Some(Miss::MultiStatement);
    }
    let tables = sql.tables(st);
    if !m.tables.is_empty()
        && !opaque
        && !tables.iter().any(|t| {
            m.tables.iter().any(|g| {
                g.name.matches(t.name.of(text))
                    && match (&g.schema, t.schema) {
                        (None, _) => true,
                        (Some(gs), Some(s)) => gs.matches(s.of(text)),
                        (Some(_), None) => false,
                    }
            })
        })
    {
        return Some(Miss::Tables);
    }
    if let Some(schemas) = &m.schemas
        && !opaque
        && !tables
            .iter()
            .any(|t: &TableRef| t.schema.is_some_and(|s| schemas.matches(s.of(text))))
    {
        return Some(Miss::Schemas);
    }
    if let Some(re) = &m.regex {
        if *norm_state == NormState::Pending {
            sql.normalize_into(text, dialect, st, norm);
            *norm_state = match prefilter {
                Some(p) if !p.is_match(norm) => NormState::NoRegexMatches,
                _ => NormState::Ready,
            };
        }
        if *norm_state == NormState::NoRegexMatches || !re.is_match(norm) {
            return Some(Miss::Regex);
        }
    }
    None
}

/// Why `rule` does not match a non-SQL action, or `None` if it does.
pub(crate) fn non_sql_miss(rule: &Rule, action: &Action<'_>, cmd: &mut String) -> Option<Miss> {
    if rule.matches_everything() {
        return None;
    }
    let severe = rule.verdict != Verdict::Allow;
    match *action {
        Action::Http { method, host, path } => {
            let Some(m) = &rule.http else {
                return Some(Miss::Protocol);
            };
            if !m.methods.is_empty()
                && !m
                    .methods
                    .iter()
                    .any(|x| x == "*" || x.eq_ignore_ascii_case(method))
            {
                return Some(Miss::Method);
            }
            if !m.hosts.matches(strip_port(host)) {
                return Some(Miss::Host);
            }
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            // A path the upstream may resolve differently (dot segments, encoded slashes) is
            // matched by refusing rules whatever it looks like.
            if !(m.paths.matches(path) || (severe && ambiguous_path(path))) {
                return Some(Miss::Path);
            }
            None
        }
        Action::Kubernetes {
            verb,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let Some(m) = &rule.k8s else {
                return Some(Miss::Protocol);
            };
            let check = |set: &Option<crate::glob::GlobSet>, v: &str| {
                set.as_ref().is_none_or(|s| s.matches(v))
            };
            if !check(&m.verbs, verb) {
                return Some(Miss::Verb);
            }
            if !check(&m.resources, resource) {
                return Some(Miss::Resource);
            }
            if !check(&m.subresources, subresource.unwrap_or("")) {
                return Some(Miss::Subresource);
            }
            if !check(&m.namespaces, namespace.unwrap_or("")) {
                return Some(Miss::Namespace);
            }
            if !check(&m.names, name.unwrap_or("")) {
                return Some(Miss::Name);
            }
            None
        }
        Action::Ssh { command } => {
            let Some(m) = &rule.ssh else {
                return Some(Miss::Protocol);
            };
            if ssh_matches(&m.commands, command, cmd) {
                None
            } else {
                Some(Miss::Command)
            }
        }
        Action::TcpConnect | Action::Sql { .. } => Some(Miss::Protocol),
    }
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty()
                && port.bytes().all(|c| c.is_ascii_digit())
                && !h.ends_with(':') =>
        {
            h
        }
        _ => host,
    }
}

fn ambiguous_path(path: &str) -> bool {
    let b = path.as_bytes();
    path.contains("/../")
        || path.contains("/./")
        || path.ends_with("/..")
        || path.ends_with("/.")
        || path.contains("//")
        || path.contains('\\')
        || b.windows(3).any(|w| {
            w.first() == Some(&b'%')
                && (w.get(1..3).is_some_and(|x| {
                    x.eq_ignore_ascii_case(b"2e")
                        || x.eq_ignore_ascii_case(b"2f")
                        || x.eq_ignore_ascii_case(b"5c")
                }))
        })
}

/// Splits a shell command line into simple commands (at `;`, `&`, `|`, newlines, `$(`, `` ` ``,
/// parentheses and braces) and matches each against the patterns: a pattern without a space
/// matches the program name (path and quotes removed); one with spaces matches the whole
/// simple command with whitespace collapsed. An empty line (interactive shell) is matched
/// only by `*`.
fn ssh_matches(patterns: &[crate::glob::Glob], line: &str, buf: &mut String) -> bool {
    if line.trim().is_empty() {
        return patterns.iter().any(|p| p.is_any());
    }
    let is_sep = |c: char| {
        matches!(
            c,
            ';' | '&' | '|' | '\n' | '`' | '(' | ')' | '{' | '}' | '$'
        )
    };
    for simple in line.split(is_sep) {
        buf.clear();
        let mut words = simple.split_whitespace();
        let Some(prog) = words.next() else { continue };
        let prog = prog.rsplit('/').next().unwrap_or(prog);
        for c in prog.chars().filter(|c| !matches!(c, '\'' | '"' | '\\')) {
            buf.push(c);
        }
        let prog_len = buf.len();
        for w in words {
            buf.push(' ');
            buf.push_str(w);
        }
        let prog_name = buf.get(..prog_len).unwrap_or("");
        if patterns.iter().any(|p| {
            if p.as_str().contains(' ') {
                p.matches(buf)
            } else {
                p.matches(prog_name)
            }
        }) {
            return true;
        }
    }
    false
}
