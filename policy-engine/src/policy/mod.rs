//! The compiled policy and decisions.
//!
//! [`Policy`] is immutable after load and `Send + Sync`: the data plane shares it in an `Arc`
//! and swaps the `Arc` on reload. At session start, [`Policy::session`] does the access check
//! and keeps only the rules that can apply to this connection and these groups, so a decision is
//! one classification pass plus checks over that short list, with no allocation once the
//! [`Scratch`] has warmed up. Evaluation errors deny (fail closed).
//!
//! It does not hold sessions, talk to approvers or apply masks: it says what should happen.

mod decide;
mod explain;
mod filter;
mod load;
mod raw;
mod time;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use regex::RegexSet;

pub use decide::{Decision, Reason, Scratch, StatementResult};
pub use explain::Explanation;
pub use load::{
    ADMIN_OPERATIONS, DEFAULT_MAX_GRANT, LoadError, LoadErrors, MAX_POLICY_FILE_BYTES,
    MAX_POLICY_FILES, MAX_REGEXES_PER_RULE, TEST_FILE_SUFFIX, compile_sources, load_dir,
    parse_duration, policy_files,
};
pub use time::Hours;

use crate::glob::{Glob, GlobSet};
use crate::mask::{DetectorSpec, MaskSpec};
use crate::request::Identity;
use crate::sql::KindSet;

/// A rule's id as written in the policy. Shared, because every audit record of a decision
/// carries it: the gateway clones the id instead of copying its text per statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleId(pub Arc<str>);

impl RuleId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id, shared.
    pub fn shared(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What to do with a request. Ordered by precedence: `Deny > Review > Observe > Allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Allow,
    /// Allow, but flag the request (dry run of a new rule).
    Observe,
    /// Hold for human approval.
    Review,
    Deny,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Observe => "observe",
            Self::Review => "review",
            Self::Deny => "deny",
        }
    }

    pub fn from_name(s: &str) -> Option<Verdict> {
        match s {
            "allow" => Some(Self::Allow),
            "observe" => Some(Self::Observe),
            "review" => Some(Self::Review),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who must approve a `review` rule's requests, how many of them, and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewSpec {
    pub approvers: Vec<String>,
    pub approvals: u32,
    pub timeout: Duration,
}

#[derive(Debug)]
pub(crate) struct TableGlob {
    pub schema: Option<Glob>,
    pub name: Glob,
}

#[derive(Debug)]
pub(crate) struct SqlMatch {
    /// Empty: any kind.
    pub kinds: KindSet,
    pub without_where: Option<bool>,
    pub tables: Vec<TableGlob>,
    pub schemas: Option<GlobSet>,
    pub regex: Option<RegexSet>,
    pub multi_statement: Option<bool>,
}

#[derive(Debug)]
pub(crate) struct HttpMatch {
    /// Upper-cased; empty: any method.
    pub methods: Vec<String>,
    pub hosts: GlobSet,
    pub paths: GlobSet,
}

#[derive(Debug)]
pub(crate) struct K8sMatch {
    pub verbs: Option<GlobSet>,
    pub resources: Option<GlobSet>,
    pub subresources: Option<GlobSet>,
    pub namespaces: Option<GlobSet>,
    pub names: Option<GlobSet>,
}

#[derive(Debug)]
pub(crate) struct SshMatch {
    pub commands: Vec<Glob>,
}

/// One compiled `[[rule]]`.
#[derive(Debug)]
pub struct Rule {
    pub id: RuleId,
    pub description: Option<String>,
    pub file: PathBuf,
    pub line: usize,
    pub(crate) connections: GlobSet,
    pub(crate) groups: GlobSet,
    pub(crate) sql: Option<SqlMatch>,
    pub(crate) http: Option<HttpMatch>,
    pub(crate) k8s: Option<K8sMatch>,
    pub(crate) ssh: Option<SshMatch>,
    pub verdict: Verdict,
    pub message: Option<String>,
    pub review: Option<ReviewSpec>,
}

impl Rule {
    /// Whether the rule's connection and group filters admit this session.
    pub fn applies_to(&self, connection: &str, identity: &Identity) -> bool {
        self.connections.matches(connection) && groups_match(&self.groups, identity)
    }

    /// Rules with no protocol matcher apply to every request, including TCP connects.
    fn matches_everything(&self) -> bool {
        self.sql.is_none() && self.http.is_none() && self.k8s.is_none() && self.ssh.is_none()
    }
}

fn groups_match(set: &GlobSet, identity: &Identity) -> bool {
    set.matches_any() || identity.groups.iter().any(|g| set.matches(g))
}

#[derive(Debug)]
pub(crate) struct AccessRule {
    pub connections: GlobSet,
    pub groups: GlobSet,
    pub hours: Option<Hours>,
    pub require_grant: bool,
    pub grant: Option<GrantSpec>,
}

/// Who approves just-in-time grants for an `[[access]]` entry with `require_grant = true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSpec {
    pub approvers: Vec<String>,
    pub approvals: u32,
    /// Longest grant that may be requested.
    pub max_duration: Duration,
}

#[derive(Debug)]
pub(crate) struct WebhookRule {
    pub url: String,
    pub connections: GlobSet,
}

#[derive(Debug)]
pub(crate) struct MaskRule {
    pub spec: MaskSpec,
    pub connections: GlobSet,
    pub groups: GlobSet,
}

#[derive(Debug)]
pub(crate) struct AdminRule {
    pub groups: GlobSet,
    pub operations: Vec<String>,
}

/// A compiled policy. Immutable; share it in an `Arc`.
#[derive(Debug, Default)]
pub struct Policy {
    pub(crate) rules: Vec<Rule>,
    pub(crate) access: Vec<AccessRule>,
    pub(crate) defaults: Vec<(GlobSet, Verdict)>,
    pub(crate) masks: Vec<MaskRule>,
    pub(crate) detectors: Vec<DetectorSpec>,
    pub(crate) admin: Vec<AdminRule>,
    pub(crate) webhooks: Vec<WebhookRule>,
    pub(crate) version: String,
    /// All rule regexes in one set: when it does not match, no regex rule can.
    pub(crate) regex_prefilter: Option<RegexSet>,
    /// Word literals one of which every regex match needs, searched in the raw statement text
    /// (see `filter::word_literal_prefilter`); `None`: always build the normalized text.
    pub(crate) regex_literals: Option<filter::WordLiterals>,
}

/// Facts about the session that are not in the identity.
#[derive(Debug, Clone, Copy)]
pub struct AccessContext {
    pub now: SystemTime,
    /// The caller holds an approved just-in-time grant for this connection.
    pub has_grant: bool,
}

impl Default for AccessContext {
    fn default() -> Self {
        AccessContext {
            now: SystemTime::now(),
            has_grant: false,
        }
    }
}

/// Why a session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenied {
    #[error("no access rule lets this identity use this connection")]
    NoRule,
    #[error("access to this connection is allowed only within its configured hours")]
    OutsideHours,
    #[error("access to this connection needs an approved just-in-time grant")]
    NeedsGrant,
}

impl Policy {
    /// Loads and compiles every policy file in `dir` (see [`load_dir`]).
    pub fn load_dir(dir: &std::path::Path) -> Result<Policy, LoadErrors> {
        load::load_dir(dir)
    }

    /// Content hash of the policy files: shown in metrics and recorded with each command.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn mask_specs(&self) -> impl ExactSizeIterator<Item = &MaskSpec> {
        self.masks.iter().map(|m| &m.spec)
    }

    pub fn detector_specs(&self) -> &[DetectorSpec] {
        &self.detectors
    }

    /// Indices (into [`Policy::mask_specs`]) of mask rules that apply to this session.
    pub fn mask_rules_for(&self, connection: &str, identity: &Identity) -> Vec<usize> {
        self.masks
            .iter()
            .enumerate()
            .filter(|(_, m)| m.connections.matches(connection) && groups_match(&m.groups, identity))
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether `[[admin]]` grants `operation` (`reviews.approve`, ...) to this identity.
    pub fn admin_allows(&self, identity: &Identity, operation: &str) -> bool {
        self.admin.iter().any(|a| {
            groups_match_strict(&a.groups, identity)
                && a.operations.iter().any(|o| o == "*" || o == operation)
        })
    }

    /// Who approves a just-in-time grant of `connection` to this identity: the first
    /// `[[access]]` entry naming the connection and one of its groups, with
    /// `require_grant = true` and `approvers`. `None`: no grant can be requested.
    pub fn grant_spec(&self, connection: &str, identity: &Identity) -> Option<&GrantSpec> {
        self.access
            .iter()
            .filter(|a| a.require_grant && a.connections.matches(connection))
            .filter(|a| groups_match(&a.groups, identity))
            .find_map(|a| a.grant.as_ref())
    }

    /// Webhook urls notified of reviews on `connection` (`[[webhook]]` tables).
    pub fn webhooks_for(&self, connection: &str) -> Vec<&str> {
        self.webhooks
            .iter()
            .filter(|w| w.connections.matches(connection))
            .map(|w| w.url.as_str())
            .collect()
    }

    /// The access check for a new session, as of now and without a grant.
    pub fn session(
        self: &Arc<Self>,
        connection: &str,
        identity: &Identity,
    ) -> Option<SessionPolicy> {
        self.session_with(connection, identity, &AccessContext::default())
            .ok()
    }

    /// The access check for a new session. Access defaults to deny: some `[[access]]` table
    /// must name the connection and one of the identity's groups, and its hours and grant
    /// requirement must hold.
    pub fn session_with(
        self: &Arc<Self>,
        connection: &str,
        identity: &Identity,
        cx: &AccessContext,
    ) -> Result<SessionPolicy, AccessDenied> {
        self.check_access(connection, identity, cx)?;
        Ok(self.session_unchecked(connection, identity))
    }

    /// The access check of [`Policy::session_with`] alone, for callers that keep session rule
    /// lists of their own: the list depends only on the connection and the groups
    /// ([`Policy::session_unchecked`]), while access also depends on the time and grants, so
    /// it is checked for every session.
    pub fn check_access(
        &self,
        connection: &str,
        identity: &Identity,
        cx: &AccessContext,
    ) -> Result<(), AccessDenied> {
        let mut why = AccessDenied::NoRule;
        let mut ok = false;
        for a in &self.access {
            if !a.connections.matches(connection) || !groups_match(&a.groups, identity) {
                continue;
            }
            if let Some(h) = &a.hours
                && !h.contains(cx.now)
            {
                why = AccessDenied::OutsideHours;
                continue;
            }
            if a.require_grant && !cx.has_grant {
                why = AccessDenied::NeedsGrant;
                continue;
            }
            ok = true;
            break;
        }
        if ok { Ok(()) } else { Err(why) }
    }

    /// The session's rule list without the access check (for `explain`, tests, and callers
    /// that checked access with [`Policy::check_access`]). It depends only on `connection` and
    /// `identity.groups`, so sessions that share both may share one.
    pub fn session_unchecked(
        self: &Arc<Self>,
        connection: &str,
        identity: &Identity,
    ) -> SessionPolicy {
        let rules: Vec<u32> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.applies_to(connection, identity))
            .map(|(i, _)| i as u32)
            .collect();
        let default = if self
            .defaults
            .iter()
            .any(|(c, v)| *v == Verdict::Deny && c.matches(connection))
        {
            Verdict::Deny
        } else {
            Verdict::Allow
        };
        let kind_index = KindIndex::new(&self.rules, &rules);
        let sql_filter = filter::SqlFilter::new(&self.rules, &rules);
        SessionPolicy {
            policy: Arc::clone(self),
            rules,
            default,
            kind_index,
            sql_filter,
        }
    }
}

/// `[[admin]]` groups must be named: an empty list grants nobody, unlike rule filters.
fn groups_match_strict(set: &GlobSet, identity: &Identity) -> bool {
    !set.globs().is_empty() && groups_match(set, identity)
}

/// The policy as it applies to one session: the rules for its connection and groups.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    policy: Arc<Policy>,
    rules: Vec<u32>,
    default: Verdict,
    kind_index: KindIndex,
    sql_filter: filter::SqlFilter,
}

/// Which of the session's rules can match a non-opaque SQL statement of each kind: one bitset
/// over positions in the session's rule list per kind bit, plus one for statements without a
/// kind. A rule outside a kind's set would miss on its statement kinds (or protocol) anyway, so
/// walking only the set, in position order, decides exactly as walking the whole list does.
#[derive(Debug, Clone, Default)]
pub(crate) struct KindIndex {
    /// Bitset length in `u64` words.
    words: usize,
    /// `64 * words` words: kind bit `k`'s set is `per_kind[k * words..(k + 1) * words]`.
    per_kind: Vec<u64>,
    /// Rules with SQL matchers naming no kind, or no protocol matcher at all.
    any_kind: Vec<u64>,
}

impl KindIndex {
    fn new(all: &[Rule], session: &[u32]) -> KindIndex {
        let words = session.len().div_ceil(64);
        let mut per_kind = vec![0u64; 64 * words];
        let mut any_kind = vec![0u64; words];
        for (pos, &ri) in session.iter().enumerate() {
            let Some(rule) = all.get(ri as usize) else {
                continue;
            };
            let (w, bit) = (pos / 64, 1u64 << (pos % 64));
            let kinds = match &rule.sql {
                Some(m) if !m.kinds.is_empty() => m.kinds.bits(),
                Some(_) => u64::MAX,
                None if rule.matches_everything() => u64::MAX,
                None => 0,
            };
            if kinds == u64::MAX
                && let Some(x) = any_kind.get_mut(w)
            {
                *x |= bit;
            }
            for k in 0..64 {
                if kinds & (1u64 << k) != 0
                    && let Some(x) = per_kind.get_mut(k * words + w)
                {
                    *x |= bit;
                }
            }
        }
        KindIndex {
            words,
            per_kind,
            any_kind,
        }
    }

    /// Writes the candidate set for a non-opaque statement with these kind bits into `buf`:
    /// the union of the kinds' sets, or the kind-less rules for a statement without a kind.
    pub(crate) fn candidates_into(&self, kinds: u64, buf: &mut Vec<u64>) {
        buf.clear();
        if kinds == 0 {
            buf.extend_from_slice(&self.any_kind);
            return;
        }
        buf.resize(self.words, 0);
        let mut rest = kinds;
        while rest != 0 {
            let k = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let set = self
                .per_kind
                .get(k * self.words..(k + 1) * self.words)
                .unwrap_or(&[]);
            for (b, s) in buf.iter_mut().zip(set) {
                *b |= *s;
            }
        }
    }
}

impl SessionPolicy {
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The verdict when no rule matches: `allow` unless a `[[defaults]]` table says `deny`.
    pub fn default_verdict(&self) -> Verdict {
        self.default
    }

    pub(crate) fn rule_indices(&self) -> &[u32] {
        &self.rules
    }
}

#[cfg(test)]
mod tests;
