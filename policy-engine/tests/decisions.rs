//! Request → decision corpus: the documented example policies with their own test files, and
//! a table of obfuscation attempts against a small guardrail policy.

use std::path::PathBuf;
use std::sync::Arc;

use policy_engine::policy::compile_sources;
use policy_engine::testfile;
use policy_engine::{Action, Dialect, Identity, Policy, Scratch, Verdict};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../appliance/examples/policies")
}

#[test]
fn example_policies_pass_their_own_tests() {
    let dir = examples_dir();
    let policy = Arc::new(Policy::load_dir(&dir).unwrap());
    let mut n = 0;
    let mut failures = Vec::new();
    for file in testfile::test_files(&dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, case) in testfile::parse_test_file(&file, &text)
            .unwrap()
            .iter()
            .enumerate()
        {
            n += 1;
            let r = testfile::run_case(&policy, &file, i, case);
            if !r.passed {
                failures.push(format!("{}: {}", r.name, r.detail.unwrap_or_default()));
            }
        }
    }
    assert!(n >= 30, "only {n} example cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_failing_case_reports_expected_and_actual() {
    let dir = examples_dir();
    let policy = Arc::new(Policy::load_dir(&dir).unwrap());
    let cases = testfile::parse_test_file(
        &dir.join("x_test.toml"),
        r#"
[[case]]
identity = { subject = "a", groups = ["engineering"] }
connection = "orders-db"
sql = "DROP TABLE t"
decision = "allow"
"#,
    )
    .unwrap();
    let r = testfile::run_case(&policy, &dir, 0, &cases[0]);
    assert!(!r.passed);
    assert_eq!(
        r.detail.as_deref(),
        Some("expected allow, got deny by rule `no-ddl`")
    );
}

const GUARDRAILS: &str = r#"
[[rule]]
id = "no-ddl"
match.statement = ["drop", "truncate", "alter"]
action = "deny"

[[rule]]
id = "unbounded"
match.statement = ["update", "delete"]
match.without_where = true
action = "deny"

[[rule]]
id = "review-deletes"
match.statement = ["delete"]
action = "review"
review = { approvers = ["dba"] }

[[rule]]
id = "escape"
match.statement = ["copy_program", "copy_file", "admin_function", "set_role", "alter_system", "do"]
action = "deny"

[[rule]]
id = "secrets"
match.tables = ["secrets", "*.secrets"]
action = "deny"

[[rule]]
id = "dba-anything"
groups = ["dba"]
match.statement = ["select"]
action = "allow"
"#;

/// (dialect, sql, verdict, rule or "" for default)
const CASES: &[(&str, &str, &str, &str)] = &[
    ("pg", "SELECT 1", "allow", ""),
    ("pg", "DROP TABLE t", "deny", "no-ddl"),
    ("pg", "drop table t", "deny", "no-ddl"),
    ("pg", "/**/DROP/**/TABLE/**/t", "deny", "no-ddl"),
    ("pg", "SELECT 1;DROP TABLE t", "deny", "no-ddl"),
    ("pg", "SELECT 1 -- x\n;DROP TABLE t", "deny", "no-ddl"),
    (
        "pg",
        "SELECT 1 /* /* nested */ */; DROP TABLE t",
        "deny",
        "no-ddl",
    ),
    (
        "pg",
        "SELECT 1 /* /* nested */ ; DROP TABLE t */",
        "allow",
        "",
    ),
    ("pg", "SELECT $$; DROP TABLE t; $$", "allow", ""),
    ("pg", "SELECT $x$ $$ ; $x$; DROP TABLE t", "deny", "no-ddl"),
    ("pg", "SELECT E'\\'; DROP TABLE t; --'", "allow", ""),
    ("pg", "SELECT E'\\\\'; DROP TABLE t; --'", "deny", "no-ddl"),
    ("pg", "SELECT 'a''; DROP TABLE t; --'", "allow", ""),
    ("pg", "SELECT \"x;DROP TABLE t\" FROM u", "allow", ""),
    ("pg", "TRUNCATE t", "deny", "no-ddl"),
    ("pg", "ALTER TABLE t ADD c int", "deny", "no-ddl"),
    ("pg", "DELETE FROM t", "deny", "unbounded"),
    (
        "pg",
        "DELETE FROM t WHERE id = 1",
        "review",
        "review-deletes",
    ),
    ("pg", "delete from t -- where id = 1", "deny", "unbounded"),
    (
        "pg",
        "DELETE FROM t /* WHERE id = 1 */",
        "deny",
        "unbounded",
    ),
    ("pg", "UPDATE t SET a = 1", "deny", "unbounded"),
    (
        "pg",
        "UPDATE t SET a = (SELECT 1 FROM u WHERE u.id = 2)",
        "deny",
        "unbounded",
    ),
    ("pg", "UPDATE t SET a = 1 WHERE id = 2", "allow", ""),
    (
        "pg",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "deny",
        "unbounded",
    ),
    (
        "pg",
        "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
        "review",
        "review-deletes",
    ),
    ("pg", "EXPLAIN ANALYZE DELETE FROM t", "deny", "unbounded"),
    (
        "pg",
        "EXPLAIN (ANALYZE true) DELETE FROM t WHERE x",
        "review",
        "review-deletes",
    ),
    ("pg", "PREPARE p AS DELETE FROM t", "deny", "unbounded"),
    ("pg", "EXECUTE p", "deny", "no-ddl"),
    ("pg", "CALL proc()", "deny", "no-ddl"),
    ("pg", "DO $$ BEGIN DROP TABLE t; END $$", "deny", "no-ddl"),
    (
        "pg",
        "CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM u",
        "deny",
        "unbounded",
    ),
    ("pg", "COPY t TO PROGRAM 'id'", "deny", "escape"),
    ("pg", "COPY t FROM '/etc/passwd'", "deny", "escape"),
    ("pg", "COPY t TO STDOUT", "allow", ""),
    ("pg", "SELECT pg_terminate_backend(1)", "deny", "escape"),
    (
        "pg",
        "SELECT PG_CATALOG.PG_TERMINATE_BACKEND(1)",
        "deny",
        "escape",
    ),
    ("pg", "SELECT \"pg_terminate_backend\"(1)", "deny", "escape"),
    ("pg", "SELECT lo_import('/etc/shadow')", "deny", "escape"),
    (
        "pg",
        "SELECT set_config('role','postgres',false)",
        "deny",
        "escape",
    ),
    ("pg", "SET ROLE postgres", "deny", "escape"),
    ("pg", "SET SESSION AUTHORIZATION postgres", "deny", "escape"),
    ("pg", "SET \"role\" TO postgres", "deny", "escape"),
    (
        "pg",
        "ALTER SYSTEM SET log_statement = 'none'",
        "deny",
        "no-ddl",
    ),
    ("pg", "SELECT * FROM secrets", "deny", "secrets"),
    ("pg", "SELECT * FROM public.secrets", "deny", "secrets"),
    ("pg", "SELECT * FROM \"SECRETS\"", "deny", "secrets"),
    (
        "pg",
        "SELECT * FROM t JOIN secrets s ON s.id = t.id",
        "deny",
        "secrets",
    ),
    (
        "pg",
        "SELECT * FROM t WHERE id IN (SELECT id FROM secrets)",
        "deny",
        "secrets",
    ),
    ("pg", "SELECT 'secrets'", "allow", ""),
    ("pg", "SELECT 1 /* unterminated", "deny", "no-ddl"),
    ("pg", "SELECT 'unterminated; DROP TABLE t", "deny", "no-ddl"),
    ("pg", "", "allow", ""),
    ("pg", "-- only a comment", "allow", ""),
    (
        "my",
        "SELECT 1 /*!50000 ; DROP TABLE t */",
        "deny",
        "no-ddl",
    ),
    ("my", "/*!DELETE FROM t*/", "deny", "unbounded"),
    ("my", "SELECT 1 # ; DROP TABLE t", "allow", ""),
    ("my", "SELECT 1 #\n; DROP TABLE t", "deny", "no-ddl"),
    ("my", "SELECT 'a\\'; DROP TABLE t; -- '", "allow", ""),
    ("my", "SELECT \"a\\\"; DROP TABLE t; -- \"", "allow", ""),
    ("my", "SELECT `a;DROP TABLE t` FROM u", "allow", ""),
    ("my", "SELECT 1 --; DROP TABLE t", "deny", "no-ddl"),
    ("my", "SELECT 1 -- ; DROP TABLE t", "allow", ""),
    ("my", "DELETE FROM t LIMIT 5", "deny", "unbounded"),
    (
        "my",
        "SELECT * FROM t INTO OUTFILE '/tmp/x'",
        "deny",
        "escape",
    ),
    ("my", "SELECT LOAD_FILE('/etc/passwd')", "deny", "escape"),
    ("my", "SET GLOBAL general_log = 0", "deny", "escape"),
    ("my", "PREPARE s FROM 'DROP TABLE t'", "deny", "no-ddl"),
    (
        "my",
        "CREATE PROCEDURE p() BEGIN DELETE FROM t; END",
        "deny",
        "unbounded",
    ),
    ("my", "SELECT * FROM `db`.`secrets`", "deny", "secrets"),
];

#[test]
fn obfuscation_table() {
    let policy =
        Arc::new(compile_sources(&[(PathBuf::from("g.toml"), GUARDRAILS.to_string())]).unwrap());
    let id = Identity {
        subject: "x".into(),
        groups: vec!["engineering".into()],
        ..Identity::default()
    };
    let session = policy.session_unchecked("db", &id);
    let mut scratch = Scratch::new();
    let mut failures = Vec::new();
    for (d, sql, want, rule) in CASES {
        let dialect = if *d == "my" {
            Dialect::Mysql
        } else {
            Dialect::Postgres
        };
        let dec = session.decide(&Action::Sql { dialect, text: sql }, &mut scratch);
        let got_rule = dec.rule.map(|r| r.as_str()).unwrap_or("");
        if dec.verdict.name() != *want || got_rule != *rule {
            failures.push(format!(
                "{sql:?}: want {want} {rule:?}, got {} {got_rule:?}",
                dec.verdict
            ));
        }
    }
    assert!(CASES.len() >= 60);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_denied_statement_refuses_the_whole_string_and_names_the_statement() {
    let policy =
        Arc::new(compile_sources(&[(PathBuf::from("g.toml"), GUARDRAILS.to_string())]).unwrap());
    let session = policy.session_unchecked("db", &Identity::default());
    let mut scratch = Scratch::new();
    let d = session.decide(
        &Action::Sql {
            dialect: Dialect::Postgres,
            text: "SELECT 1; DELETE FROM t WHERE id = 1; DROP TABLE t",
        },
        &mut scratch,
    );
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.statement, Some(2));
    let per: Vec<Verdict> = scratch
        .statement_results()
        .iter()
        .map(|r| r.verdict)
        .collect();
    assert_eq!(per, vec![Verdict::Allow, Verdict::Review, Verdict::Deny]);
}

#[test]
fn precedence_and_observe() {
    let src = r#"
[[rule]]
id = "allow-selects"
match.statement = ["select"]
action = "allow"
[[rule]]
id = "watch-orders"
match.tables = ["orders"]
action = "observe"
[[rule]]
id = "review-orders-writes"
match.tables = ["orders"]
match.statement = ["update"]
action = "review"
review = { approvers = ["dba"], approvals = 2, timeout = "5m" }
[[defaults]]
connections = ["strict"]
statements = "deny"
"#;
    let policy = Arc::new(compile_sources(&[(PathBuf::from("p.toml"), src.to_string())]).unwrap());
    let id = Identity::default();
    let mut scratch = Scratch::new();
    let lax = policy.session_unchecked("lax", &id);
    let strict = policy.session_unchecked("strict", &id);
    let sql = |t| Action::Sql {
        dialect: Dialect::Postgres,
        text: t,
    };
    let d = lax.decide(&sql("SELECT * FROM orders"), &mut scratch);
    assert_eq!(
        (d.verdict, d.rule.map(|r| r.as_str())),
        (Verdict::Observe, Some("watch-orders"))
    );
    let d = lax.decide(&sql("UPDATE orders SET a = 1 WHERE id = 1"), &mut scratch);
    assert_eq!(d.verdict, Verdict::Review);
    let rv = d.review.unwrap();
    assert_eq!((rv.approvals, rv.timeout.as_secs()), (2, 300));
    // Observe never admits what the default refuses.
    let d = strict.decide(&sql("INSERT INTO orders VALUES (1)"), &mut scratch);
    assert_eq!((d.verdict, d.rule), (Verdict::Deny, None));
    assert_eq!(
        d.message,
        Some("no rule allows this request on this connection")
    );
    let d = strict.decide(&sql("SELECT 1"), &mut scratch);
    assert_eq!(d.verdict, Verdict::Allow);
}

#[test]
fn access_windows_grants_and_masks() {
    use policy_engine::policy::AccessContext;
    use std::time::{Duration, UNIX_EPOCH};
    let policy = Arc::new(Policy::load_dir(&examples_dir()).unwrap());
    let eng = Identity {
        subject: "e".into(),
        groups: vec!["engineering".into()],
        ..Identity::default()
    };
    // Thursday 2026-11-26 10:00 UTC (11:00 at +01:00) and 22:00 UTC.
    let day = AccessContext {
        now: UNIX_EPOCH + Duration::from_secs(1_795_687_200),
        has_grant: false,
    };
    let night = AccessContext {
        now: UNIX_EPOCH + Duration::from_secs(1_795_687_200 + 12 * 3600),
        has_grant: false,
    };
    assert!(policy.session_with("prod-orders", &eng, &day).is_ok());
    assert_eq!(
        policy
            .session_with("prod-orders", &eng, &night)
            .unwrap_err(),
        policy_engine::AccessDenied::OutsideHours
    );
    assert!(policy.session("hr-db", &eng).is_none());
    let masks = policy.mask_rules_for("orders-db", &eng);
    assert_eq!(masks, vec![0, 1, 2]);
    assert_eq!(policy.mask_rules_for("billing-api", &eng), vec![1, 2]);
    assert_eq!(policy.detector_specs()[0].name, "employee_id");
    let dba = Identity {
        groups: vec!["dba".into()],
        ..Identity::default()
    };
    assert!(policy.admin_allows(&dba, "reviews.approve"));
    assert!(!policy.admin_allows(&dba, "policy.reload"));
    assert!(!policy.admin_allows(&eng, "reviews.approve"));
    assert_eq!(policy.version().len(), 16);
}
