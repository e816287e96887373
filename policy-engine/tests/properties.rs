//! Property tests: the lexer never panics, normalizing is idempotent, splitting agrees with
//! a simple reference splitter on inputs built from safe fragments, and the fuzz entry points
//! survive a bounded smoke run.

use policy_engine::sql::SqlScratch;
use policy_engine::{Dialect, fuzzing};
use proptest::prelude::*;

fn sql_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("SELECT".to_string()),
        Just("DELETE FROM t".to_string()),
        Just("WHERE".to_string()),
        Just(";".to_string()),
        Just("'a;b'".to_string()),
        Just("'it''s'".to_string()),
        Just("E'\\''".to_string()),
        Just("$$;$$".to_string()),
        Just("$q$ ; $q$".to_string()),
        Just("/* ; */".to_string()),
        Just("/* /* ; */ */".to_string()),
        Just("-- ;\n".to_string()),
        Just("\"x;y\"".to_string()),
        Just("`a`".to_string()),
        Just("#c\n".to_string()),
        Just("/*! DROP */".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("1.5e3".to_string()),
        Just("$1".to_string()),
        Just("?".to_string()),
        Just("a.b".to_string()),
        Just("--".to_string()),
        Just("-".to_string()),
        "[a-zA-Z_]{1,8}",
        "[ \t\n]{1,3}",
        any::<char>().prop_map(|c| c.to_string()),
    ]
}

fn select_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("SELECT".to_string()),
        Just("RETURNING".to_string()),
        Just("WITH s AS".to_string()),
        Just("FROM t".to_string()),
        Just("WHERE".to_string()),
        Just("AS".to_string()),
        Just("CAST(".to_string()),
        Just("::text".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just(",".to_string()),
        Just(";".to_string()),
        Just("count(".to_string()),
        Just("CASE WHEN".to_string()),
        Just("END".to_string()),
        Just("u.".to_string()),
        Just("*".to_string()),
        Just("||".to_string()),
        Just("'s'".to_string()),
        Just("\"Q x\"".to_string()),
        Just("DISTINCT ON (a)".to_string()),
        "[a-z]{1,3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever a statement looks like, reading its result sources does not panic, and every
    /// name it reports is a name written in the statement.
    #[test]
    fn result_sources_name_only_what_the_text_holds(
        parts in proptest::collection::vec(select_fragment(), 0..48),
        column in "[a-z]{1,3}",
    ) {
        use policy_engine::sql::ResultSources;
        let text = parts.join(" ");
        let lower = text.to_ascii_lowercase();
        let s = ResultSources::of(&text, Dialect::Postgres);
        for probe in [column.as_str(), "?column?", "case", "count"] {
            for name in s.sources(probe) {
                prop_assert!(
                    lower.contains(&name.to_ascii_lowercase()),
                    "{name:?} not in {text:?}"
                );
            }
        }
    }

    #[test]
    fn lexer_never_panics_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = fuzzing::lexer(&data);
    }

    #[test]
    fn normalizing_is_idempotent(parts in proptest::collection::vec(sql_fragment(), 0..40)) {
        let text = parts.join(" ");
        prop_assert!(fuzzing::lexer(text.as_bytes()), "not idempotent: {text:?}");
    }

    #[test]
    fn splitting_matches_reference(stmts in proptest::collection::vec(
        proptest::collection::vec(prop_oneof![
            Just("SELECT 1".to_string()),
            Just("'a;b'".to_string()),
            Just("$$;;$$".to_string()),
            Just("/* ; */".to_string()),
            Just("\"q;\"".to_string()),
            Just("x".to_string()),
        ], 1..5).prop_map(|v| format!("SELECT {}", v.join(" "))), 1..6)) {
        // Statements that each start with a keyword and hide their `;` inside strings,
        // comments or quoted names, joined by `;`: the server sees exactly these statements.
        let text = stmts.join(";");
        let mut s = SqlScratch::new();
        s.classify(&text, Dialect::Postgres).unwrap();
        prop_assert_eq!(s.statements().len(), stmts.len());
        for (st, want) in s.statements().iter().zip(&stmts) {
            // The span runs from the first to the last token, so trailing comments fall outside.
            prop_assert!(want.trim().starts_with(st.span.of(&text)), "{:?} vs {:?}", st.span.of(&text), want);
            prop_assert!(st.span.of(&text).starts_with("SELECT"));
        }
    }

    #[test]
    fn policy_compiler_never_panics(src in "[\\[\\]a-z_=\" .,*\n0-9{}-]{0,200}") {
        fuzzing::policy(src.as_bytes());
    }
}

#[test]
fn fuzz_smoke_on_seed_corpus() {
    let corpus = include_str!("corpus/classify.txt");
    for line in corpus.lines() {
        assert!(fuzzing::lexer(line.as_bytes()), "{line:?}");
        // Every prefix too: cut strings and comments anywhere.
        for cut in (0..line.len()).step_by(3) {
            if let Some(p) = line.get(..cut) {
                assert!(fuzzing::lexer(p.as_bytes()), "{p:?}");
            }
        }
    }
    for f in [
        "00-access.toml",
        "10-sql-guardrails.toml",
        "20-http-k8s-ssh.toml",
        "30-masking.toml",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../appliance/examples/policies")
            .join(f);
        let text = std::fs::read(&path).unwrap();
        for cut in (0..text.len()).step_by(7) {
            fuzzing::policy(&text[..cut]);
        }
    }
}
