//! The kind-indexed rule walk decides exactly as walking every session rule does.

use std::path::PathBuf;
use std::sync::Arc;

use super::compile_sources;
use crate::policy::Scratch;
use crate::request::{Action, Dialect, Identity};

const RULES: &str = r#"
[[rule]]
id = "any"
match.tables = ["secret", "*.secret"]
action = "deny"

[[rule]]
id = "obs-select"
match.statement = ["select"]
match.tables = ["audit_*"]
action = "observe"

[[rule]]
id = "review-write"
match.statement = ["update", "delete"]
match.without_where = true
action = "review"
review = { approvers = ["dba"] }

[[rule]]
id = "allow-select"
match.statement = ["select"]
action = "allow"

[[rule]]
id = "deny-ddl"
match.statement = ["drop", "truncate", "alter", "create"]
action = "deny"

[[rule]]
id = "regex"
match.regex = ['\bpg_sleep\b']
action = "deny"

[[rule]]
id = "multi"
match.multi_statement = true
match.statement = ["insert"]
action = "review"
review = { approvers = ["dba"] }

[[rule]]
id = "http-only"
match.http.paths = ["/x"]
action = "deny"

[[rule]]
id = "everything-observe"
action = "observe"
"#;

#[test]
fn kind_index_decides_like_full_walk() {
    let mut rules = String::from(RULES);
    // Enough rules that the bitsets span several words.
    for i in 0..150 {
        rules.push_str(&format!(
            "\n[[rule]]\nid = \"gen-{i}\"\nmatch.statement = [\"{}\"]\nmatch.tables = [\"t{i}\"]\naction = \"{}\"\n",
            ["select", "insert", "update", "delete", "copy"][i % 5],
            ["allow", "deny", "observe"][i % 3],
        ));
    }
    let policy =
        Arc::new(compile_sources(&[(PathBuf::from("a.toml"), rules)]).expect("rules compile"));
    let session = policy.session_unchecked("db", &Identity::default());
    let mut extra: Vec<String> = (0..150)
        .map(|i| format!("SELECT * FROM t{i}; DELETE FROM t{i}; COPY t{i} TO STDOUT"))
        .collect();
    extra.push("WITH g AS (DELETE FROM secret RETURNING *) SELECT * FROM g".into());
    extra.push("EXECUTE p; SELECT 1".into());
    let mut statements = classify_corpus();
    statements.extend(extra.into_iter().map(|s| (Dialect::Postgres, s)));
    assert!(statements.len() > 300);
    let (mut indexed, mut full) = (Scratch::new(), Scratch::new());
    full.full_walk = true;
    for (dialect, text) in &statements {
        let a = Action::Sql {
            dialect: *dialect,
            text,
        };
        let x = session.decide(&a, &mut indexed);
        let y = session.decide(&a, &mut full);
        assert_eq!(x, y, "{text}");
        assert_eq!(
            indexed.statement_results(),
            full.statement_results(),
            "{text}"
        );
    }
}

fn identity(groups: &[&str]) -> Identity {
    Identity {
        subject: "alice".into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..Identity::default()
    }
}

#[test]
fn grant_approvers_and_webhooks_come_from_policy() {
    let text = r#"
[[access]]
connections = ["prod-*"]
groups = ["engineering"]
require_grant = true
approvers = ["dba", "sre"]
approvals = 2
max_grant = "2h"

[[access]]
connections = ["dev-db"]
groups = ["engineering"]

[[webhook]]
url = "https://hooks.example/prod"
connections = ["prod-*"]

[[webhook]]
url = "http://127.0.0.1:9/all"
"#;
    let policy = Arc::new(
        compile_sources(&[(PathBuf::from("a.toml"), text.into())]).expect("policy compiles"),
    );
    let eng = identity(&["engineering"]);
    let spec = policy.grant_spec("prod-db", &eng).expect("a grant spec");
    assert_eq!(spec.approvers, ["dba", "sre"]);
    assert_eq!(spec.approvals, 2);
    assert_eq!(spec.max_duration, std::time::Duration::from_secs(7200));
    assert!(
        policy.grant_spec("dev-db", &eng).is_none(),
        "no grant needed"
    );
    assert!(
        policy
            .grant_spec("prod-db", &identity(&["support"]))
            .is_none(),
        "groups still have to match"
    );
    assert_eq!(
        policy.webhooks_for("prod-db"),
        ["https://hooks.example/prod", "http://127.0.0.1:9/all"]
    );
    assert_eq!(policy.webhooks_for("dev-db"), ["http://127.0.0.1:9/all"]);
    // With a grant the session is admitted; without it, refused.
    let cx = |has_grant| super::AccessContext {
        has_grant,
        ..super::AccessContext::default()
    };
    assert!(policy.session_with("prod-db", &eng, &cx(true)).is_ok());
    assert_eq!(
        policy.session_with("prod-db", &eng, &cx(false)).err(),
        Some(super::AccessDenied::NeedsGrant)
    );
}

#[test]
fn bad_grant_and_webhook_settings_are_load_errors() {
    let text = r#"
[[access]]
connections = ["db"]
approvers = ["dba"]
approvals = 0
max_grant = "forever"

[[webhook]]
url = "ftp://nope"
"#;
    let errors = compile_sources(&[(PathBuf::from("a.toml"), text.into())])
        .expect_err("errors")
        .0;
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"access[0].approvals"), "{keys:?}");
    assert!(keys.contains(&"access[0].approvers"), "{keys:?}");
    assert!(keys.contains(&"access[0].max_grant"), "{keys:?}");
    assert!(keys.contains(&"webhook[0].url"), "{keys:?}");
}

/// The statements of `tests/corpus/classify.txt` (`dialect | kinds | attributes | sql` lines),
/// with their dialects.
pub(super) fn classify_corpus() -> Vec<(Dialect, String)> {
    include_str!("../../tests/corpus/classify.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut p = l.splitn(4, " | ");
            let d = match p.next()?.trim() {
                "my" => Dialect::Mysql,
                _ => Dialect::Postgres,
            };
            Some((d, p.nth(2)?.replace("\\n", "\n").replace("\\t", "\t")))
        })
        .collect()
}
