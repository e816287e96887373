//! Load errors name the file, the line, the key, and give a hint where one helps.

use std::path::PathBuf;

use policy_engine::policy::{LoadError, compile_sources};

#[expect(
    clippy::unwrap_used,
    reason = "test helper: the source must fail to load"
)]
fn errors(src: &str) -> Vec<LoadError> {
    compile_sources(&[(PathBuf::from("p.toml"), src.to_string())])
        .unwrap_err()
        .0
}

#[test]
fn unknown_match_key_has_line_and_hint() {
    let e = errors("[[rule]]\nid = \"x\"\naction = \"deny\"\nmatch.statment = [\"drop\"]\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 4);
    assert_eq!(e[0].key, "statment");
    assert_eq!(e[0].hint.as_deref(), Some("did you mean `statement`?"));
    let shown = e[0].to_string();
    assert!(
        shown.starts_with("p.toml:4: statment: unknown field `statment`"),
        "{shown}"
    );
}

#[test]
fn unknown_table_and_top_level_key() {
    let e = errors("[[rulez]]\nid = \"x\"\n");
    assert_eq!(e[0].line, 1);
    assert_eq!(e[0].hint.as_deref(), Some("did you mean `rule`?"));
}

#[test]
fn validation_errors_are_all_reported() {
    let src = r#"
[[rule]]
id = "a"
match.statement = ["delet"]
action = "deny"

[[rule]]
id = "a"
connections = ["prod-[12]"]
action = "alow"

[[rule]]
id = "r"
match.regex = ["("]
action = "review"

[[access]]
connections = ["x"]
hours = "Mon-Fri 07:00-19:00 Mars/Olympus_Mons"

[[rule]]
id = "mixed"
match.statement = ["select"]
match.http = { methods = ["GET"] }
action = "deny"
"#;
    let e = errors(src);
    let find = |key: &str| {
        e.iter()
            .find(|x| x.key == key)
            .unwrap_or_else(|| panic!("no error for {key}: {e:#?}"))
    };
    let k = find("rule[a].match.statement");
    assert_eq!(k.line, 2);
    assert!(k.message.contains("`delet`"));
    assert_eq!(k.hint.as_deref(), Some("did you mean `delete`?"));
    assert_eq!(find("rule[a].id").line, 7);
    assert!(find("rule[a].connections").message.contains("`prod-[12]`"));
    assert_eq!(
        find("rule[a].action").hint.as_deref(),
        Some("did you mean `allow`?")
    );
    assert!(
        find("rule[r].match.regex")
            .message
            .starts_with("invalid regex")
    );
    assert_eq!(find("rule[r].review").line, 12);
    let h = find("access[0].hours");
    assert!(h.message.contains("unknown time zone `Mars/Olympus_Mons`"));
    assert_eq!(find("rule[mixed].match").line, 21);
}

#[test]
fn mask_globs_are_checked_but_not_compiled() {
    let e = errors(
        "[[mask]]\nconnections = [\"a{b}\"]\ncolumns = [\"email\"]\nstrategy = \"redact\"\n",
    );
    assert_eq!(e[0].key, "mask[0].connections");
    let e = errors("[[mask]]\ncolumns = [\"email\"]\nstrategy = \"scramble\"\n");
    assert_eq!(e[0].line, 3);
}

#[test]
fn load_dir_skips_test_files_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "[[rule]]\nid = \"ok\"\naction = \"deny\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("a_test.toml"), "[[case]]\n").unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "[[rule]]\nid = \"bad\"\naction = \"deny\"\nmatch.tables = [\"\"]\n",
    )
    .unwrap();
    let e = policy_engine::Policy::load_dir(dir.path()).unwrap_err().0;
    assert_eq!(e.len(), 1);
    assert!(e[0].file.ends_with("b.toml"));
    assert_eq!(e[0].key, "rule[bad].match.tables");
    std::fs::remove_file(dir.path().join("b.toml")).unwrap();
    let p = policy_engine::Policy::load_dir(dir.path()).unwrap();
    assert_eq!(p.rules().len(), 1);
}

#[test]
fn masking_rules_are_compiled_at_load_and_errors_point_at_their_table() {
    let load = |files: &[(&str, &str)]| {
        let sources: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(f, t)| (PathBuf::from(f), (*t).to_string()))
            .collect();
        compile_sources(&sources)
    };
    // A detector named by a mask rule must exist: built in, or a [[detector]] in any file.
    let e = load(&[
        ("00-a.toml", "[[rule]]\nid = \"r\"\naction = \"allow\"\n"),
        (
            "10-masks.toml",
            "[[mask]]\ncolumns = [\"email\"]\nstrategy = \"redact\"\n\n[[mask]]\ndetectors = [\"emial\"]\nstrategy = \"redact\"\n",
        ),
    ])
    .unwrap_err()
    .0;
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].file, PathBuf::from("10-masks.toml"));
    assert_eq!((e[0].line, e[0].key.as_str()), (5, "mask[1]"));
    assert!(
        e[0].message.contains("unknown detector `emial`"),
        "{}",
        e[0]
    );

    // A custom detector's regex is compiled: an error names the detector and its line.
    let e = load(&[
        (
            "00-masks.toml",
            "[[mask]]\ndetectors = [\"ticket\"]\nstrategy = \"redact\"\n",
        ),
        (
            "20-detectors.toml",
            "[[detector]]\nname = \"ok\"\nregex = \"OK-[0-9]+\"\n\n[[detector]]\nname = \"ticket\"\nregex = \"TCK-[0-9\"\n",
        ),
    ])
    .unwrap_err()
    .0;
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].file, PathBuf::from("20-detectors.toml"));
    assert_eq!((e[0].line, e[0].key.as_str()), (5, "detector[ticket]"));
    assert!(e[0].message.contains("invalid regex"), "{}", e[0]);

    // Defined in a later file than the rule that uses it: fine.
    let fixed = "[[detector]]\nname = \"ticket\"\nregex = \"TCK-[0-9]+\"\n";
    assert!(
        load(&[
            (
                "00-masks.toml",
                "[[mask]]\ndetectors = [\"ticket\", \"email\"]\nstrategy = \"redact\"\n"
            ),
            ("20-detectors.toml", fixed),
        ])
        .is_ok()
    );
}

#[test]
fn every_tables_shape_mistake_is_reported_in_one_run() {
    // Deserializing stops at the first mistake; each table is read again on its own, so the
    // mistakes of later tables, and the checks of the tables that do read, are all reported.
    let src = r#"# mistakes in three tables
[[rule]]
id = "ok"
match.statement = ["altr"]
action = "deny"

[[rule]]
match.statement = ["update"]
action = "deny"

[[rule]]
id = "review-deletes"
match.statement = ["delete"]
action = "review"
[rule.review]
approvers = ["dba"]
approvals = 1
timeout = "10m"

[[rule]]
id = "typo"
match.statment = ["delete"]
action = "deny"

[[mask]]
columns = ["email"]
strategy = "partal"
"#;
    let e = errors(src);
    let shown: Vec<(usize, String)> = e.iter().map(|e| (e.line, e.message.clone())).collect();
    assert_eq!(e.len(), 4, "{shown:?}");
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (2, "rule[ok].match.statement")
    );
    assert_eq!(e[0].hint.as_deref(), Some("did you mean `alter`?"));
    assert_eq!(e[1].line, 7);
    assert!(e[1].message.contains("missing field `id`"), "{shown:?}");
    assert_eq!((e[2].line, e[2].key.as_str()), (22, "statment"));
    assert_eq!(e[3].line, 27);
    assert!(
        e[3].message.contains("unknown variant `partal`"),
        "{shown:?}"
    );
}

#[test]
fn a_duplicate_key_is_reported_once_at_its_line() {
    // The table holding it fails on its own as well: one error, not two.
    let e = errors(
        "[[rule]]\nid = \"a\"\naction = \"deny\"\n\n[[rule]]\nid = \"b\"\nid = \"c\"\naction = \"deny\"\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].line, 7);
}
