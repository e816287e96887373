//! The candidate filter and the regex literal prefilter only skip work: decisions with them
//! equal decisions walking every session rule (`Scratch::full_walk`), on the measured rule set,
//! on extra rules in the shapes the filter indexes, and on generated statements.

use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;

use super::word_literal_prefilter;
use crate::policy::{Policy, Scratch, SessionPolicy, compile_sources};
use crate::request::{Action, Dialect, Identity};
use crate::workload;

/// Table patterns of every indexed shape (literal, prefix, leading `*` or `?`, schema globs,
/// odd case), schema rules, multi-statement rules both ways and regexes with and without
/// usable literals.
const EXTRA_RULES: &str = r#"
[[rule]]
id = "lit-upper"
match.tables = ["Secret_Upper"]
action = "deny"

[[rule]]
id = "schema-lit"
match.tables = ["billing.invoices", "b?ll*.ledger"]
action = "review"
review = { approvers = ["dba"] }

[[rule]]
id = "star-first"
match.statement = ["select", "insert"]
match.tables = ["*_audit", "?tmp"]
action = "observe"

[[rule]]
id = "schemas"
match.schemas = ["tenant_*", "public"]
match.statement = ["select", "delete"]
action = "review"
review = { approvers = ["dba"] }

[[rule]]
id = "single-only"
match.multi_statement = false
match.statement = ["insert"]
action = "allow"

[[rule]]
id = "multi-only"
match.multi_statement = true
action = "review"
review = { approvers = ["dba"] }

[[rule]]
id = "regex-lit"
match.regex = ['\bwaitfor\b', 'into\s+outfile']
action = "deny"

[[rule]]
id = "allow-select"
match.statement = ["select"]
action = "allow"
"#;

fn policy(extra: bool) -> Arc<Policy> {
    let mut sources = workload::sources(100);
    if extra {
        sources.push((PathBuf::from("95-extra.toml"), EXTRA_RULES.to_owned()));
    }
    Arc::new(compile_sources(&sources).expect("rules compile"))
}

fn sessions(p: &Arc<Policy>) -> Vec<SessionPolicy> {
    let id = |groups: &[&str]| Identity {
        subject: "t".into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..Identity::default()
    };
    vec![
        p.session_unchecked("orders-db", &id(&["engineering", "team-3"])),
        p.session_unchecked("orders-db", &id(&["agents"])),
        p.session_unchecked("prod-eu", &id(&["dba"])),
        p.session_unchecked("warehouse-4", &id(&[])),
    ]
}

fn assert_same(session: &SessionPolicy, dialect: Dialect, text: &str) {
    let (mut indexed, mut full) = (Scratch::new(), Scratch::new());
    full.full_walk = true;
    let a = Action::Sql { dialect, text };
    let x = session.decide(&a, &mut indexed);
    let y = session.decide(&a, &mut full);
    assert_eq!(x, y, "{text}");
    assert_eq!(
        indexed.statement_results(),
        full.statement_results(),
        "{text}"
    );
}

fn corpus() -> Vec<(Dialect, String)> {
    let mut v = super::super::tests::classify_corpus();
    v.extend(
        workload::corpus()
            .into_iter()
            .map(|(_, s)| (Dialect::Postgres, s)),
    );
    // Long statements, scanned token by token by the literal prefilter: with a regex literal
    // in a word, in a quoted identifier, only inside a string, and nowhere (`fn_2` and `fn_7`
    // are generated regex rules).
    let ids: Vec<String> = (0..400).map(|i| i.to_string()).collect();
    let list = ids.join(", ");
    for tail in [
        "FN_2(1)",
        "\"fn_7\"",
        "'fn_2 pg_sleep(1)'",
        "x",
        "pg_sleep(1)",
    ] {
        v.push((
            Dialect::Postgres,
            format!("SELECT id FROM t WHERE id IN ({list}) AND {tail}"),
        ));
        v.push((Dialect::Mysql, format!("SELECT {list}, {tail} FROM t")));
    }
    v
}

#[test]
fn filtered_walk_decides_like_full_walk_on_the_corpora() {
    let statements = corpus();
    assert!(statements.len() > 300);
    let mut decided_by_rule = 0usize;
    for extra in [false, true] {
        let p = policy(extra);
        for s in sessions(&p) {
            for (d, text) in &statements {
                assert_same(&s, *d, text);
                let mut scratch = Scratch::new();
                let dec = s.decide(&Action::Sql { dialect: *d, text }, &mut scratch);
                decided_by_rule += usize::from(dec.rule.is_some());
            }
        }
    }
    // The comparison means something only if rules, not just defaults, decide.
    assert!(decided_by_rule > 1000, "{decided_by_rule}");
}

#[test]
fn literal_prefilter_needs_word_literals() {
    let pats = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let l =
        word_literal_prefilter(&pats(&[r"\bpg_sleep\b", r"\bsleep\s*\("])).expect("word literals");
    assert!(l.found_in("SELECT PG_SLEEP(1)"));
    assert!(l.found_in("select \"Sleep\" (1)"));
    assert!(!l.found_in("SELECT pg_slee(1)"));
    // No finite set of word literals: no prefilter, the normalized text is always built.
    assert!(word_literal_prefilter(&pats(&[r"\d+"])).is_none());
    assert!(word_literal_prefilter(&pats(&[r"a?"])).is_none());
    assert!(word_literal_prefilter(&pats(&[r"drop table"])).is_none());
    assert!(word_literal_prefilter(&pats(&["fn_1", r"x\.y"])).is_none());
    // A prefix literal followed by a class is still a usable literal.
    assert!(word_literal_prefilter(&pats(&[r"x\s"])).is_some());
}

/// Plants one of `lits` (upper-cased or not) into `filler` at `planted`, and answers whether
/// a plain case-folding substring search finds any literal: the literals folded, the text, and
/// that answer.
fn plant(
    lits: &[String],
    filler: String,
    planted: Option<(usize, usize, bool)>,
) -> (Vec<Vec<u8>>, String, bool) {
    let lower: Vec<Vec<u8>> = lits
        .iter()
        .map(|l| l.as_bytes().to_ascii_lowercase())
        .collect();
    let mut text = filler;
    if let Some((at, which, upper)) = planted {
        let lit = lits
            .get(which % lits.len().max(1))
            .cloned()
            .unwrap_or_default();
        let lit = if upper { lit.to_ascii_uppercase() } else { lit };
        text.insert_str(at.min(text.len()), &lit);
    }
    let folded = text.to_ascii_lowercase();
    let naive = lower.iter().any(|l| {
        folded
            .as_bytes()
            .windows(l.len())
            .any(|x| x == l.as_slice())
    });
    (lower, text, naive)
}

fn fragment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "SELECT",
        "select",
        "INSERT INTO",
        "UPDATE",
        "DELETE FROM",
        "DROP TABLE",
        "WITH x AS (",
        ")",
        "(",
        "FROM",
        "JOIN",
        "WHERE",
        "SET",
        "VALUES",
        ";",
        ",",
        ".",
        "*",
        "=",
        "1",
        "'fn_3'",
        "/* fn_3 */",
        "-- x\n",
        "secret_0",
        "SECRET_0",
        "\"secret_0\"",
        "public",
        "payment_tokens",
        "vault_keys",
        "report_3_q",
        "Report_8_x",
        "tenant_1",
        "tenant_1.t",
        "billing",
        "invoices",
        "ledger",
        "bill_x",
        "x_audit",
        "atmp",
        "Secret_Upper",
        "fn_2",
        "fn_20",
        "FN_2",
        "pg_sleep",
        "sleep",
        "waitfor",
        "into outfile",
        "t",
        "orders",
        "AS",
        "a",
        "id",
        "$1",
        "?",
        "EXECUTE p",
        "COPY t TO '/tmp/x'",
        "TRUNCATE",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn filtered_walk_decides_like_full_walk_on_generated_statements(
        parts in proptest::collection::vec(fragment(), 1..24),
        mysql in any::<bool>(),
    ) {
        let text = parts.join(" ");
        let dialect = if mysql { Dialect::Mysql } else { Dialect::Postgres };
        thread_local! {
            static SESSIONS: Vec<SessionPolicy> = {
                let mut v = sessions(&policy(false));
                v.extend(sessions(&policy(true)));
                v
            };
        }
        SESSIONS.with(|all| {
            for s in all {
                assert_same(s, dialect, &text);
            }
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The hand-rolled automaton finds a literal exactly when a plain case-folding substring
    /// search does (small alphabet, so overlaps and failure links are exercised).
    #[test]
    fn word_literals_find_like_substring_search(
        lits in proptest::collection::vec("[abAB_1]{1,5}", 1..6),
        text in "[abAB_1 .]{0,40}",
    ) {
        let lower: Vec<Vec<u8>> = lits.iter().map(|l| l.as_bytes().to_ascii_lowercase()).collect();
        let w = super::WordLiterals::new(&lower).expect("small set");
        let t = text.to_ascii_lowercase();
        let naive = lower.iter().any(|l| t.as_bytes().windows(l.len()).any(|x| x == l.as_slice()));
        prop_assert_eq!(w.found_in(&text), naive);
    }

    /// The same on texts long enough for the parallel windowed walk: a literal planted at any
    /// position (so across every window boundary), in either case, is found, and a text
    /// without one is not.
    #[test]
    fn word_literals_windowed_walk_finds_like_substring_search(
        lits in proptest::collection::vec("[ab_1]{1,9}", 1..4),
        filler in "[abcdCD_ .]{60,400}",
        planted in proptest::option::of((0usize..400, 0usize..4, any::<bool>())),
    ) {
        let (lower, text, naive) = plant(&lits, filler, planted);
        let w = super::WordLiterals::new(&lower).expect("small set");
        prop_assert_eq!(w.found_in(&text), naive);
    }

    /// The vector pass over literal starts finds a literal exactly when a plain case-folding
    /// substring search does, at every planted position (both chunk boundaries and the last,
    /// overlapping chunk), with literals sharing starts, overlapping one another and with
    /// digits and `_` (whose fold also lets DEL through, which the filler holds), with one
    /// to eight distinct starts (every array length of `StartPairs`); and so does the
    /// whole-text walk.
    #[test]
    fn word_literals_by_starts_find_like_substring_search(
        lits in proptest::collection::vec("[abAB_1]{2,9}", 1..9),
        filler in "[abAB_1@`\x7f ]{17,120}",
        planted in proptest::option::of((0usize..120, 0usize..9, any::<bool>())),
    ) {
        let (lower, text, naive) = plant(&lits, filler, planted);
        let w = super::WordLiterals::new(&lower).expect("small set");
        prop_assert!(w.starts.is_some());
        prop_assert_eq!(w.found_in(&text), naive);
        prop_assert_eq!(w.found_by_walk(&text), naive);
    }
}

/// Literal sets the vector pass cannot take (a one-byte literal, more than `MAX_STARTS`
/// distinct starts) fall back to the walk; the measured policy's set takes the vector pass.
#[test]
fn word_literal_starts_only_for_few_two_byte_starts() {
    let lit = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
    let one = super::WordLiterals::new(&lit(&["a", "bc"])).expect("small set");
    assert!(one.starts.is_none());
    assert!(one.found_in("xxxxxxxxxxxxxxxxxxxxxxxxA"));
    let many = super::WordLiterals::new(&lit(&[
        "aa", "ab", "ac", "ad", "ae", "af", "ag", "ah", "ai",
    ]))
    .expect("small set");
    assert!(many.starts.is_none());
    assert!(many.found_in("xxxxxxxxxxxxxxxxxxxxxxxxAI"));
    let shared =
        super::WordLiterals::new(&lit(&["fn_1", "fn_2", "pg_sleep", "sleep"])).expect("small set");
    // Three distinct starts (`fn`, `pg`, `sl`), unpadded.
    assert!(
        shared
            .starts
            .as_ref()
            .is_some_and(|s| matches!(s.pairs, super::StartPairs::Three(_)))
    );
    assert!(shared.found_in("SELECT \"x\" FROM t WHERE PG_SLEEP(1)"));
    assert!(!shared.found_in("SELECT \"x\" FROM t WHERE pg_slee(1)"));
}
