//! Table-driven classification corpus: `corpus/classify.txt`, one case per line:
//! `dialect | kinds | attributes | sql`.
//!
//! - kinds: per statement (separated by `;`), a comma list whose first entry must be the
//!   statement's primary (most dangerous) kind and all of which must be among its kinds;
//! - attributes (space separated, `-` for none): `nw` some UPDATE/DELETE lacks WHERE, `w` none
//!   does, `op` opaque, `n=N` statement count, `t=a,s.b` exact tables of the first statement,
//!   `!k` kind k must be absent from the first statement;
//! - `\n` in the SQL column stands for a newline.

use policy_engine::Dialect;
use policy_engine::sql::{SqlScratch, StatementKind};

#[expect(
    clippy::panic,
    reason = "test helper: a bad corpus line should fail loudly"
)]
fn dialect(s: &str) -> Dialect {
    match s {
        "pg" => Dialect::Postgres,
        "my" => Dialect::Mysql,
        other => panic!("bad dialect {other}"),
    }
}

#[test]
fn classification_corpus() {
    let corpus = include_str!("corpus/classify.txt");
    let mut scratch = SqlScratch::new();
    let mut failures = Vec::new();
    let mut count = 0;
    for (ln, line) in corpus.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(4, " | ");
        let (Some(d), Some(kinds), Some(attrs), Some(sql)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("line {}: malformed", ln + 1);
        };
        count += 1;
        let sql = sql.replace("\\n", "\n").replace("\\t", "\t");
        let d = dialect(d.trim());
        scratch.classify(&sql, d).unwrap();
        let sts = scratch.statements();
        let mut errs = Vec::new();
        let want: Vec<&str> = kinds.trim().split(';').collect();
        if want.len() != sts.len() && !attrs.contains("n=") {
            errs.push(format!(
                "expected {} statements, got {}",
                want.len(),
                sts.len()
            ));
        }
        for (w, st) in want.iter().zip(sts) {
            let names: Vec<&str> = w.split(',').map(str::trim).collect();
            let primary = StatementKind::from_name(names[0])
                .unwrap_or_else(|| panic!("line {}: bad kind {}", ln + 1, names[0]));
            if st.primary_kind() != primary {
                errs.push(format!("primary {} != {}", st.primary_kind(), primary));
            }
            for n in &names[1..] {
                let k = StatementKind::from_name(n)
                    .unwrap_or_else(|| panic!("line {}: bad kind {n}", ln + 1));
                if !st.kinds.contains(k) {
                    errs.push(format!("missing kind {k}"));
                }
            }
        }
        let first = sts.first();
        for a in attrs.split_whitespace() {
            match a {
                "-" => {}
                "nw" => {
                    if !sts.iter().any(|s| s.without_where) {
                        errs.push("expected without_where".into());
                    }
                }
                "w" => {
                    if sts.iter().any(|s| s.without_where) {
                        errs.push("unexpected without_where".into());
                    }
                }
                "op" => {
                    if !sts.iter().any(|s| s.opaque) {
                        errs.push("expected opaque".into());
                    }
                }
                a if a.starts_with("n=") => {
                    let n: usize = a[2..].parse().unwrap();
                    if sts.len() != n {
                        errs.push(format!("expected {n} statements, got {}", sts.len()));
                    }
                }
                a if a.starts_with("t=") => {
                    // `t=` alone: no tables.
                    let want: Vec<String> = a[2..]
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.to_string())
                        .collect();
                    let got: Vec<String> = first
                        .map(|s| {
                            scratch
                                .tables(s)
                                .iter()
                                .map(|t| match t.schema {
                                    Some(sc) => format!("{}.{}", sc.of(&sql), t.name.of(&sql)),
                                    None => t.name.of(&sql).to_string(),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    if got != want {
                        errs.push(format!("tables {got:?} != {want:?}"));
                    }
                }
                a if a.starts_with('!') => {
                    let k = StatementKind::from_name(&a[1..]).unwrap();
                    if first.is_some_and(|s| s.kinds.contains(k)) {
                        errs.push(format!("unexpected kind {k}"));
                    }
                }
                other => panic!("line {}: bad attribute {other}", ln + 1),
            }
        }
        if !errs.is_empty() {
            let got: Vec<String> = sts
                .iter()
                .map(|s| {
                    s.kinds
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect();
            failures.push(format!(
                "line {}: {sql:?}: {} (got kinds [{}])",
                ln + 1,
                errs.join("; "),
                got.join(" ; ")
            ));
        }
    }
    assert!(count >= 200, "corpus shrank to {count} cases");
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn normalization_corpus() {
    let corpus = include_str!("corpus/normalize.txt");
    let mut s = SqlScratch::new();
    let mut failures = Vec::new();
    for (ln, line) in corpus.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, " | ");
        let (Some(d), Some(sql), Some(want)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("line {}: malformed", ln + 1);
        };
        let d = dialect(d.trim());
        let sql = sql.replace("\\n", "\n");
        s.classify(&sql, d).unwrap();
        let got = s.normalized(&sql, d);
        if got != want {
            failures.push(format!(
                "line {}: {sql:?}\n  want {want:?}\n  got  {got:?}",
                ln + 1
            ));
        }
        s.classify(&got, d).unwrap();
        let again = s.normalized(&got, d);
        if again != got {
            failures.push(format!(
                "line {}: not idempotent: {got:?} -> {again:?}",
                ln + 1
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// PostgreSQL's `standard_conforming_strings`: where a backslash inside `'...'` moves a
/// string's end, each reading splits as the server would, and a session that may be
/// switching between them refuses the text rather than guess.
#[test]
fn string_readings_follow_standard_conforming_strings() {
    use policy_engine::sql::{ClassifyError, StringLiterals};
    let kinds = |s: &mut SqlScratch, mode, sql: &str| {
        s.set_string_literals(mode);
        s.classify(sql, Dialect::Postgres).map(|()| {
            s.statements()
                .iter()
                .map(|st| st.primary_kind().name())
                .collect::<Vec<_>>()
        })
    };
    let mut s = SqlScratch::new();
    let attack = r"SELECT 'x\'' ; DROP TABLE t; --'";
    assert_eq!(
        kinds(&mut s, StringLiterals::Standard, attack),
        Ok(vec!["select"])
    );
    assert_eq!(
        kinds(&mut s, StringLiterals::Backslash, attack),
        Ok(vec!["select", "drop"])
    );
    assert_eq!(
        kinds(&mut s, StringLiterals::Either, attack),
        Err(ClassifyError::AmbiguousStrings)
    );
    // N'...' escapes with the setting off too; E'...' always does, so it is never ambiguous.
    let national = r"SELECT N'x\'' ; DROP TABLE t; --'";
    assert_eq!(
        kinds(&mut s, StringLiterals::Backslash, national),
        Ok(vec!["select", "drop"])
    );
    for same in [
        r"SELECT E'x\'' ; DROP TABLE t; --'",
        r"SELECT 'C:\temp\file' FROM t",
        "SELECT 'no backslash'; DELETE FROM t WHERE id = 1",
        r"SELECT $$x\'$$; SELECT 1",
    ] {
        let standard = kinds(&mut s, StringLiterals::Standard, same);
        assert_eq!(
            kinds(&mut s, StringLiterals::Backslash, same),
            standard,
            "{same}"
        );
        assert_eq!(
            kinds(&mut s, StringLiterals::Either, same),
            standard,
            "{same}"
        );
    }
    // A string ending in a backslash is whole only with the setting on: the other reading
    // leaves it open (unknown, opaque), so while the setting may change it is refused.
    assert_eq!(
        kinds(&mut s, StringLiterals::Standard, r"SELECT 'C:\'"),
        Ok(vec!["select"])
    );
    assert_eq!(
        kinds(&mut s, StringLiterals::Either, r"SELECT 'C:\'"),
        Err(ClassifyError::AmbiguousStrings)
    );
    // MySQL strings always take backslash escapes, whatever the PostgreSQL mode says.
    s.set_string_literals(StringLiterals::Standard);
    s.classify(r"SELECT 'a\'; DROP TABLE t; -- '", Dialect::Mysql)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.statements().len(), 1);
}
