//! `explain`: the classification of a request, every rule's verdict on it and why, and the
//! decision. A slow path for people; it reuses the hot path's matchers so that what it says is
//! what `decide` does.

use std::fmt::Write as _;
use std::sync::Arc;

use super::decide::{NormState, non_sql_miss, sql_miss};
use super::{AccessContext, Policy, Scratch, Verdict};
use crate::request::{Action, Identity};

/// A human-readable account of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: Verdict,
    pub rule: Option<String>,
    /// Multi-line report for terminals.
    pub text: String,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Policy {
    /// Explains how a request would be decided right now (access check included).
    pub fn explain(
        self: &Arc<Self>,
        connection: &str,
        identity: &Identity,
        action: &Action<'_>,
    ) -> Explanation {
        self.explain_with(connection, identity, action, &AccessContext::default())
    }

    pub fn explain_with(
        self: &Arc<Self>,
        connection: &str,
        identity: &Identity,
        action: &Action<'_>,
        cx: &AccessContext,
    ) -> Explanation {
        let mut out = String::new();
        let _ = writeln!(out, "policy version {}", self.version());
        let _ = writeln!(
            out,
            "connection `{connection}`, identity `{}` groups [{}]",
            identity.subject,
            identity.groups.join(", ")
        );
        let session = match self.session_with(connection, identity, cx) {
            Ok(s) => {
                let _ = writeln!(out, "access: allowed");
                s
            }
            Err(e) => {
                let _ = writeln!(out, "access: denied: {e}");
                let _ = writeln!(out, "decision: deny (no access)");
                return Explanation {
                    verdict: Verdict::Deny,
                    rule: None,
                    text: out,
                };
            }
        };
        let mut scratch = Scratch::new();
        let d = session.decide(action, &mut scratch);
        let in_session: Vec<usize> = session.rule_indices().iter().map(|&i| i as usize).collect();
        let mut norm = String::new();
        let mut cmd = String::new();
        let rule_line = |out: &mut String, i: usize, miss: Option<super::decide::Miss>| {
            let Some(r) = self.rules.get(i) else { return };
            // Rules for other connections, groups or protocols are counted, not listed.
            if !in_session.contains(&i) || miss == Some(super::decide::Miss::Protocol) {
                return;
            }
            let status = match miss {
                None => "MATCHED".to_owned(),
                Some(m) => format!("no match: {}", m.describe()),
            };
            let _ = writeln!(
                out,
                "    rule `{}` ({}:{}) {}: {}",
                r.id,
                r.file.display(),
                r.line,
                r.verdict,
                status
            );
        };
        let skipped = self.rules.len() - in_session.len();
        if skipped > 0 {
            let _ = writeln!(
                out,
                "{skipped} rule(s) skipped: their connections or groups do not apply"
            );
        }
        match *action {
            Action::Sql { dialect, text } => {
                let sql = scratch.sql();
                if let super::Reason::Unclassifiable(e) = d.reason {
                    let _ = writeln!(out, "classification failed: {e}");
                }
                if sql.unterminated() {
                    let _ = writeln!(out, "input ends inside a string, quoted name or comment");
                }
                let n = sql.statements().len();
                for (si, st) in sql.statements().iter().enumerate() {
                    sql.normalize_into(text, dialect, st, &mut norm);
                    let kinds: Vec<&str> = st.kinds.iter().map(|k| k.name()).collect();
                    let tables: Vec<String> = sql
                        .tables(st)
                        .iter()
                        .map(|t| match t.schema {
                            Some(s) => format!("{}.{}", s.of(text), t.name.of(text)),
                            None => t.name.of(text).to_owned(),
                        })
                        .collect();
                    let _ = writeln!(out, "statement {}: {norm}", si + 1);
                    let _ = writeln!(
                        out,
                        "  kind: {} (all: {}); tables: [{}]; without_where: {}; opaque: {}",
                        st.primary_kind(),
                        kinds.join(", "),
                        tables.join(", "),
                        st.without_where,
                        st.opaque
                    );
                    let mut state = NormState::Pending;
                    for i in 0..self.rules.len() {
                        let miss = self.rules.get(i).and_then(|r| {
                            sql_miss(r, sql, st, text, dialect, n, &mut norm, &mut state, None)
                        });
                        rule_line(&mut out, i, miss);
                    }
                    if let Some(r) = scratch.statement_results().get(si) {
                        let _ = writeln!(
                            out,
                            "  statement verdict: {}{}",
                            r.verdict,
                            r.rule
                                .and_then(|i| self.rules.get(i as usize))
                                .map(|x| format!(" by rule `{}`", x.id))
                                .unwrap_or_else(|| " by default".into())
                        );
                    }
                }
            }
            _ => {
                let _ = writeln!(out, "request: {action:?}");
                for i in 0..self.rules.len() {
                    let miss = self
                        .rules
                        .get(i)
                        .and_then(|r| non_sql_miss(r, action, &mut cmd));
                    rule_line(&mut out, i, miss);
                }
            }
        }
        let _ = writeln!(
            out,
            "decision: {}{}{}",
            d.verdict,
            d.rule
                .map(|r| format!(" by rule `{r}`"))
                .unwrap_or_else(|| " by default".into()),
            d.message.map(|m| format!(": {m}")).unwrap_or_default()
        );
        if let Some(rv) = d.review {
            let _ = writeln!(
                out,
                "review: {} approval(s) from [{}] within {}s",
                rv.approvals,
                rv.approvers.join(", "),
                rv.timeout.as_secs()
            );
        }
        Explanation {
            verdict: d.verdict,
            rule: d.rule.map(|r| r.0.to_string()),
            text: out,
        }
    }
}
