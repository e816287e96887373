//! What a user sees after masking: exact masked values per detector and strategy.

use policy_engine::mask::{
    DetectorSpec, MaskEngine, MaskError, MaskOutcome, MaskSpec, MaskStats, SessionMasker,
    StrategyName, ValueKind,
};

fn rule(strategy: StrategyName, detectors: &[&str], columns: &[&str]) -> MaskSpec {
    MaskSpec {
        connections: vec![],
        groups: vec![],
        columns: columns.iter().map(|s| s.to_string()).collect(),
        fields: vec![],
        detectors: detectors.iter().map(|s| s.to_string()).collect(),
        strategy,
        keep: None,
        replacement: None,
    }
}

#[expect(clippy::unwrap_used, reason = "test helper: a panic is a failing test")]
fn redact_all() -> SessionMasker {
    let e = MaskEngine::compile(&[rule(StrategyName::Redact, &["all"], &[])], &[], b"k").unwrap();
    e.session(&[0])
}

#[expect(clippy::unwrap_used, reason = "test helper: a panic is a failing test")]
fn text(s: &SessionMasker, v: &str) -> String {
    let col = s.column("note");
    let mut out = Vec::new();
    let mut st = MaskStats::default();
    match s.mask_value(&col, ValueKind::Text, v.as_bytes(), &mut out, &mut st) {
        MaskOutcome::Unchanged => {
            assert!(out.is_empty());
            v.to_string()
        }
        MaskOutcome::Rewritten => String::from_utf8(out).unwrap(),
        MaskOutcome::Null => "NULL".to_string(),
    }
}

#[test]
fn redacts_each_builtin() {
    let s = redact_all();
    let cases = [
        ("mail jane.doe+x@example.co.uk now", "mail [EMAIL] now"),
        ("card 4111 1111 1111 1111.", "card [CREDIT_CARD]."),
        ("card 4111-1111-1111-1111", "card [CREDIT_CARD]"),
        ("amex 378282246310005", "amex [CREDIT_CARD]"),
        ("ssn 123-45-6789", "ssn [SSN]"),
        ("ssn 123 45 6789, 219 09 9999", "ssn [SSN], [SSN]"),
        ("card 4111 1111-1111 1111", "card [CREDIT_CARD]"),
        ("card 5555-5555 5555-4444;", "card [CREDIT_CARD];"),
        (
            "1 2 3 4 5 6 7 8 9 10 11 4111 1111 1111 1111 12",
            "1 2 3 4 5 6 7 8 9 10 11 [CREDIT_CARD] 12",
        ),
        (
            "o'brien@example.ie, 'quoted@example.com'",
            "[EMAIL], '[EMAIL]'",
        ),
        ("José.Núñez@correo.example.es;", "[EMAIL];"),
        (
            "x@bücher.de and y@xn--bcher-kva.example",
            "[EMAIL] and [EMAIL]",
        ),
        ("<mailto:ADMIN@EXAMPLE.COM>", "<mailto:[EMAIL]>"),
        // URL-encoded, as in a logged query string or a redirect target.
        (
            "GET /reset?email=jane.doe%40example.com&next=%2Fhome",
            "GET /reset?email=[EMAIL]&next=%2Fhome",
        ),
        ("mailto:ops%40[192.0.2.1]", "mailto:[EMAIL]"),
        ("u%40h@example.com 100%", "[EMAIL] 100%"),
        // HTML character references, as stored HTML hides an address from harvesters.
        (
            r#"<a href="mailto:jane&#64;example.com">R&amp;D</a>, ops&#x40;example.org"#,
            r#"<a href="mailto:[EMAIL]">R&amp;D</a>, [EMAIL]"#,
        ),
        (
            r#"to "john doe"@example.com and ops@[192.0.2.1]"#,
            "to [EMAIL] and [EMAIL]",
        ),
        (
            "x@[IPv6:2001:db8::1] first.m.last@sub.example.museum.",
            "[EMAIL] [EMAIL].",
        ),
        (
            "4242424242424242 5555555555554444 2223003122003222 6011111111111117",
            "[CREDIT_CARD] [CREDIT_CARD] [CREDIT_CARD] [CREDIT_CARD]",
        ),
        (
            "jcb 3530111333300000 diners 30569309025904 up 6200000000000005",
            "jcb [CREDIT_CARD] diners [CREDIT_CARD] up [CREDIT_CARD]",
        ),
        (
            "call +1 415 555 0100 or (415) 555-0199",
            "call [PHONE] or [PHONE]",
        ),
        (
            "us 415-555-0123, uk 020 7946 0958",
            "us [PHONE], uk [PHONE]",
        ),
        ("iban DE89 3704 0044 0532 0130 00 ok", "iban [IBAN] ok"),
        ("iban GB82WEST12345698765432", "iban [IBAN]"),
        ("from 192.168.10.254:5432", "from [IPV4]:5432"),
        (
            "v6 2001:db8::8a2e:370:7334 and fe80::1",
            "v6 [IPV6] and [IPV6]",
        ),
        ("AKIAIOSFODNN7EXAMPLE", "[AWS_ACCESS_KEY]"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_access_key = [AWS_SECRET_KEY]",
        ),
        (
            "key=AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
            "key=[GCP_API_KEY]",
        ),
        ("ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "[GITHUB_TOKEN]"),
        ("glpat-xxxxxxxxxxxxxxxxxxxx", "[GITLAB_TOKEN]"),
        ("xoxb-123456789012-abcdefABCDEF", "[SLACK_TOKEN]"),
        (
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "Bearer [JWT]",
        ),
        (
            "postgres://u?password=hunter2&x=1",
            "postgres://u?password=[SECRET]&x=1",
        ),
        (r#"{"api_key": "abc123def"}"#, r#"{"api_key": "[SECRET]"}"#),
        ("SECRET_KEY=django-insecure-x1", "SECRET_KEY=[SECRET]"),
        (
            "aws_secret_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_key: [AWS_SECRET_KEY]",
        ),
        (
            "a\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAAAA\n-----END RSA PRIVATE KEY-----\nb",
            "a\n[PRIVATE_KEY]\nb",
        ),
        (
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n=nJwd\n-----END PGP PRIVATE KEY BLOCK-----",
            "[PRIVATE_KEY]",
        ),
        // AWS's APIs and credential caches spell the secret key in camelCase.
        (
            r#"{"AccessKeyId":"ASIAY34FZKBOKMUTVV7A","SecretAccessKey":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY","SessionToken":"FwoGZXIvYXdzEJr"}"#,
            r#"{"AccessKeyId":"[AWS_ACCESS_KEY]","SecretAccessKey":"[AWS_SECRET_KEY]","SessionToken":"[SECRET]"}"#,
        ),
        (
            "secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "secret_access_key = [AWS_SECRET_KEY]",
        ),
        (
            "AWSSecretAccessKey=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "AWSSecretAccessKey=[AWS_SECRET_KEY]",
        ),
        // camelCase key names start a keyword as `_` does.
        (
            "accessToken=abc123 clientSecret: s3cr3t dbPassword='pw 1'",
            "accessToken=[SECRET] clientSecret: [SECRET] dbPassword='[SECRET]'",
        ),
        // HTTP authorization headers: the scheme stays, the credentials go.
        (
            "curl -H 'Authorization: Basic dXNlcjpwYXNzd29yZA==' https://x",
            "curl -H 'Authorization: Basic [SECRET]' https://x",
        ),
        (
            "authorization: bearer 9f86d081884c.7d659a2f",
            "authorization: bearer [SECRET]",
        ),
        (
            r#"headers {"Authorization": "Token abc123"}"#,
            r#"headers {"Authorization": "Token [SECRET]"}"#,
        ),
        (
            "Authorization: 9f86d081884c7d659a2feaa0c55ad015",
            "Authorization: [SECRET]",
        ),
        (
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "Authorization: Bearer [JWT]",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(text(&s, input), want, "input {input:?}");
    }
}

#[test]
fn leaves_lookalikes_alone() {
    let s = redact_all();
    for v in [
        "order 4111111111111112",
        "id 1234567890123456",
        "2026-11-26 14:17:30.123+00",
        "550e8400-e29b-41d4-a716-446655440000",
        "version 1.2.3 build 4.5.6.7.8",
        "v1.2.3.4",
        "ref 000-12-3456 and 666-12-3456 and 912-12-3456 and 123-00-4567",
        "ref 000 12 3456 and 123 00 4567 and 123 45 0000",
        "mixed 123-45 6789 and 123 45-6789",
        "card 4111 1111-1111 1112 and 4111.1111.1111.1111",
        "user@localhost",
        "pkg@1.2.3",
        "50%40 off, 100% done, %40example.com, a%41b.example.com, x%40localhost",
        "R&D, AT&T, a&amp;b.example.com, x&#64;localhost, &#64;example.com, a&#65;b.example.com",
        "std::vector<int> Foo::Bar",
        "12:30:45",
        "total 19.99 USD qty 3",
        "DE00 1234 5678 9012 3456 78",
        "ticket 4155550100",
        "-----BEGIN CERTIFICATE-----",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        "password_hint is set",
        "mypassword=x MYTOKEN=y sometoken: z",
        "authorization: required, Authorization: Bearer",
        "authorization: denied for user x",
    ] {
        assert_eq!(text(&s, v), v);
    }
}

#[test]
fn strategies() {
    let specs = [
        rule(StrategyName::Partial, &["email", "credit_card"], &[]),
        rule(StrategyName::Hash, &["ssn"], &[]),
        rule(StrategyName::Null, &["iban"], &[]),
        MaskSpec {
            replacement: Some("<card>".into()),
            ..rule(StrategyName::Redact, &[], &["card_*"])
        },
        rule(StrategyName::Partial, &[], &["last4"]),
    ];
    let e = MaskEngine::compile(&specs, &[], b"secret key").unwrap();
    let s = e.session(&[0, 1, 2, 3, 4]);
    assert_eq!(text(&s, "to jane@example.com"), "to ****@example.com");
    assert_eq!(
        text(&s, "?to=jane%40example.com&a=b"),
        "?to=****%40example.com&a=b"
    );
    assert_eq!(
        text(&s, "mailto:jane&#x40;example.com"),
        "mailto:****&#x40;example.com"
    );
    assert_eq!(text(&s, "4111 1111 1111 1111"), "**** **** **** 1111");
    let h1 = text(&s, "123-45-6789");
    assert_eq!(h1.len(), 24);
    assert!(h1.bytes().all(|b| b.is_ascii_hexdigit()));
    // Stable across sessions (and engines built with the same key) so values still join.
    let e2 = MaskEngine::compile(&specs, &[], b"secret key").unwrap();
    assert_eq!(
        text(&e2.session(&[1]), "ssn 123-45-6789"),
        format!("ssn {h1}")
    );
    let e3 = MaskEngine::compile(&specs, &[], b"other key").unwrap();
    assert_ne!(text(&e3.session(&[1]), "123-45-6789"), h1);
    assert_eq!(text(&s, "DE89370400440532013000"), "NULL");

    let mut out = Vec::new();
    let mut st = MaskStats::default();
    let col = s.column("CARD_NUMBER");
    assert_eq!(
        s.mask_value(&col, ValueKind::Text, b"anything", &mut out, &mut st),
        MaskOutcome::Rewritten
    );
    assert_eq!(out, b"<card>");
    out.clear();
    assert_eq!(
        s.mask_value(
            &s.column("last4"),
            ValueKind::Text,
            b"ABCD-1234",
            &mut out,
            &mut st
        ),
        MaskOutcome::Rewritten
    );
    assert_eq!(out, b"****-1234");
    // A rewritten number would not be a number: NULL instead.
    out.clear();
    assert_eq!(
        s.mask_value(&col, ValueKind::Numeric, b"42", &mut out, &mut st),
        MaskOutcome::Null
    );
    let note = s.column("note");
    assert_eq!(
        s.mask_value(
            &note,
            ValueKind::Numeric,
            b"4111111111111111",
            &mut out,
            &mut st
        ),
        MaskOutcome::Null
    );
    assert_eq!(
        s.mask_value(&note, ValueKind::Other, b"10.0.0.1", &mut out, &mut st),
        MaskOutcome::Unchanged
    );
    assert!(out.is_empty());
    // Binary values are rewritten in place: any bytes are a valid bytea.
    assert_eq!(
        s.mask_value(
            &note,
            ValueKind::Binary,
            b"\x00\xffjane@example.com",
            &mut out,
            &mut st
        ),
        MaskOutcome::Rewritten
    );
    assert_eq!(out, b"\x00\xff****@example.com");
    assert_eq!(st.count(policy_engine::mask::MaskCounter::Column), 3);
    assert_eq!(st.total(), 5);
}

#[test]
fn column_scoped_detectors_and_stats() {
    let specs = [
        rule(StrategyName::Redact, &["email"], &["notes"]),
        rule(StrategyName::Redact, &["ssn"], &[]),
    ];
    let e = MaskEngine::compile(&specs, &[], b"k").unwrap();
    let s = e.session(&[0, 1]);
    assert!(!s.is_empty());
    let mut st = MaskStats::default();
    let mut out = Vec::new();
    let v = b"a@example.com 123-45-6789";
    assert_eq!(
        s.mask_value(&s.column("notes"), ValueKind::Text, v, &mut out, &mut st),
        MaskOutcome::Rewritten
    );
    assert_eq!(out, b"[EMAIL] [SSN]");
    out.clear();
    assert_eq!(
        s.mask_value(&s.column("other"), ValueKind::Text, v, &mut out, &mut st),
        MaskOutcome::Rewritten
    );
    assert_eq!(out, b"a@example.com [SSN]");
    let named: Vec<(&str, u64)> = st.named(&e).collect();
    assert_eq!(named, vec![("email", 1), ("ssn", 2)]);
    assert!(e.session(&[]).is_empty());
    assert!(e.session(&[7]).is_empty());
}

#[test]
fn custom_detectors() {
    let det = [
        DetectorSpec {
            name: "employee_id".into(),
            regex: r"EMP-[0-9]{6}".into(),
            validator: None,
            label: None,
        },
        DetectorSpec {
            name: "acct".into(),
            regex: r"\b[0-9]{16}\b".into(),
            validator: Some("luhn".into()),
            label: Some("<acct>".into()),
        },
    ];
    let e = MaskEngine::compile(
        &[rule(StrategyName::Redact, &["employee_id", "acct"], &[])],
        &det,
        b"k",
    )
    .unwrap();
    let s = e.session(&[0]);
    assert_eq!(
        text(&s, "EMP-123456 4111111111111111 4111111111111112"),
        "[EMPLOYEE_ID] <acct> 4111111111111112"
    );

    let bad = |d: DetectorSpec| MaskEngine::compile(&[], &[d], b"k").unwrap_err();
    assert!(matches!(
        bad(DetectorSpec {
            name: "x".into(),
            regex: "(".into(),
            validator: None,
            label: None
        }),
        MaskError::BadRegex { .. }
    ));
    assert_eq!(
        bad(DetectorSpec {
            name: "x".into(),
            regex: "a".into(),
            validator: Some("crc".into()),
            label: None
        }),
        MaskError::UnknownValidator {
            name: "x".into(),
            validator: "crc".into()
        }
    );
    assert_eq!(
        bad(DetectorSpec {
            name: "email".into(),
            regex: "a".into(),
            validator: None,
            label: None
        }),
        MaskError::DuplicateDetector {
            name: "email".into()
        }
    );
    let err =
        MaskEngine::compile(&[rule(StrategyName::Redact, &["emali"], &[])], &[], b"k").unwrap_err();
    assert_eq!(err.to_string(), "mask rule 0: unknown detector `emali`");
}

#[test]
fn json_fields_and_detectors() {
    let specs = [
        MaskSpec {
            fields: vec!["*.ssn".into(), "card".into()],
            ..rule(StrategyName::Redact, &[], &[])
        },
        MaskSpec {
            fields: vec!["user.secret".into()],
            ..rule(StrategyName::Null, &[], &[])
        },
        rule(StrategyName::Redact, &["email"], &[]),
    ];
    let e = MaskEngine::compile(&specs, &[], b"k").unwrap();
    let s = e.session(&[0, 1, 2]);
    let body = br#"{"user":{"ssn":"123-45-6789","secret":"x","n":5,"mail":"a@example.com"},"items":[{"card":4111111111111111},{"card":null}],"ok":true}"#;
    let mut out = Vec::new();
    let mut st = MaskStats::default();
    assert_eq!(s.mask_json(body, &mut out, &mut st), MaskOutcome::Rewritten);
    let got = String::from_utf8(out).unwrap();
    assert_eq!(
        got,
        r#"{"user":{"ssn":"[MASKED]","secret":null,"n":5,"mail":"[EMAIL]"},"items":[{"card":"[MASKED]"},{"card":null}],"ok":true}"#
    );
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["user"]["mail"], "[EMAIL]");
    assert_eq!(st.total(), 4);

    // Secrets named by their key, at any depth.
    let e =
        MaskEngine::compile(&[rule(StrategyName::Redact, &["secrets"], &[])], &[], b"k").unwrap();
    let s2 = e.session(&[0]);
    let mut out = Vec::new();
    let body =
        br#"{"db":{"db_password":"p@ss w0rd","password_hint":"pet name","auth":{"api_key":"k1","accessToken":"t1","Authorization":"Bearer t2"}}}"#;
    assert_eq!(
        s2.mask_json(body, &mut out, &mut st),
        MaskOutcome::Rewritten
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"db":{"db_password":"[SECRET]","password_hint":"pet name","auth":{"api_key":"[SECRET]","accessToken":"[SECRET]","Authorization":"[SECRET]"}}}"#
    );

    // Not JSON: detectors still apply.
    let mut out = Vec::new();
    assert_eq!(
        s.mask_json(b"{oops a@example.com", &mut out, &mut st),
        MaskOutcome::Rewritten
    );
    assert_eq!(out, b"{oops [EMAIL]");
    out.clear();
    assert_eq!(
        s.mask_json(br#"{"a":"nothing here"}"#, &mut out, &mut st),
        MaskOutcome::Unchanged
    );
    assert!(out.is_empty());
}

/// Key-value secrets are found from the separator back to the key name, and token prefixes
/// are matched case-sensitively; the same answers must come for a short cell (which goes
/// through the byte-class gate) and inside a long value (which does not).
#[test]
fn assignments_tokens_and_ties_short_and_long() {
    let s = redact_all();
    let gh = format!("ghp_{}", "a1B2c3D4e5".repeat(4));
    let cases: Vec<(String, String)> = vec![
        ("password=hunter2".into(), "password=[SECRET]".into()),
        (
            "Password = 'hunter2'".into(),
            "Password = '[SECRET]'".into(),
        ),
        (
            r#""API_KEY": "k-123""#.into(),
            r#""API_KEY": "[SECRET]""#.into(),
        ),
        ("db_password: s3cr3t".into(), "db_password: [SECRET]".into()),
        ("pwd:=x1".into(), "pwd:=[SECRET]".into()),
        // The key ends in `_secret`, so its value is a secret, as for JSON keys: an earlier
        // scan missed this one because `client_secret` failed the word boundary first.
        (
            "xclient_secret=hunter2".into(),
            "xclient_secret=[SECRET]".into(),
        ),
        ("password_hint = x".into(), "password_hint = x".into()),
        ("mypassword=x".into(), "mypassword=x".into()),
        ("password=null".into(), "password=null".into()),
        ("at 12:30:45 id=77".into(), "at 12:30:45 id=77".into()),
        // A URL's userinfo password; the user, host and anything after stay.
        (
            "postgres://app:s3cret@db.internal:5432/orders".into(),
            "postgres://app:[SECRET]@db.internal:5432/orders".into(),
        ),
        (
            "dsn=mysql://root:p@ss:w0rd@10.0.0.5/x?tls=1".into(),
            "dsn=mysql://root:[SECRET]@[IPV4]/x?tls=1".into(),
        ),
        (
            "redis://:hunter2@cache:6379".into(),
            "redis://:[SECRET]@cache:6379".into(),
        ),
        // A user name alone is no credential (it reads as an address, as it did before).
        (
            "https://alice@example.com/x".into(),
            "https://[EMAIL]/x".into(),
        ),
        // No userinfo, an `@` past the authority, an empty password: nothing to mask.
        (
            "https://example.com:8443/a?b=c".into(),
            "https://example.com:8443/a?b=c".into(),
        ),
        (
            "http://host:80/p/user:name@x".into(),
            "http://host:80/p/user:name@x".into(),
        ),
        ("ftp://u:@h".into(), "ftp://u:@h".into()),
        // Equal spans: the specific detector wins over `credential`.
        (format!("token={gh}"), "token=[GITHUB_TOKEN]".into()),
        (
            "2026-11-26 AKIAIOSFODNN7EXAMPLE".into(),
            "2026-11-26 [AWS_ACCESS_KEY]".into(),
        ),
        ("akiaiosfodnn7example".into(), "akiaiosfodnn7example".into()),
        (
            "ORD-123456 2026-11-26".into(),
            "ORD-123456 2026-11-26".into(),
        ),
    ];
    let pad = "n/a ".repeat(80);
    for (input, want) in &cases {
        assert_eq!(&text(&s, input), want, "short: {input}");
        let long = format!("{pad}{input}\t{pad}");
        assert_eq!(
            text(&s, &long),
            format!("{pad}{want}\t{pad}"),
            "long: {input}"
        );
    }
}

/// `mask_value` takes a shortcut for short cells (the fast reject, then the block scan alone,
/// then the overlap and private-key resolution on its hits); a stream of the one cell goes
/// through the general batch path. Both must give the same bytes and the same counts, for
/// every corpus cell and for every detector set the shortcut can see.
#[test]
fn short_cell_path_matches_the_batch_path() {
    let cells = policy_engine::mask::corpus::cell_values(&policy_engine::mask::corpus::rows(
        5, 1500, 8, 30,
    ));
    for detectors in [&["all"][..], &["secrets"], &["pii"], &["ip", "email"]] {
        let e =
            MaskEngine::compile(&[rule(StrategyName::Redact, detectors, &[])], &[], b"k").unwrap();
        let s = e.session(&[0]);
        let col = s.column("note");
        let mut rewritten = 0;
        for cell in &cells {
            let (mut by_value, mut by_stream) = (Vec::new(), Vec::new());
            let (mut st_value, mut st_stream) = (MaskStats::default(), MaskStats::default());
            let outcome = s.mask_value(&col, ValueKind::Text, cell, &mut by_value, &mut st_value);
            let mut m = s.stream();
            m.push(cell, &mut by_stream, &mut st_stream);
            m.finish(&mut by_stream, &mut st_stream);
            match outcome {
                MaskOutcome::Unchanged => assert_eq!(&by_stream, cell),
                MaskOutcome::Rewritten => {
                    rewritten += 1;
                    assert_eq!(by_value, by_stream, "{}", String::from_utf8_lossy(cell));
                }
                MaskOutcome::Null => panic!("redact never gives NULL for text"),
            }
            assert_eq!(st_value, st_stream, "{}", String::from_utf8_lossy(cell));
        }
        assert!(rewritten > 100, "{detectors:?}: {rewritten}");
    }
}

/// A result column computed from ruled columns (what `sql::ResultSources` reads off the
/// statement) is ruled as they are; the statement's own text decides which those are.
#[test]
fn column_rules_apply_to_the_columns_a_result_column_reads() {
    use policy_engine::Dialect;
    use policy_engine::sql::ResultSources;
    let specs = [
        rule(StrategyName::Redact, &[], &["ssn"]),
        rule(StrategyName::Redact, &["email"], &["notes"]),
    ];
    let e = MaskEngine::compile(&specs, &[], b"k").unwrap();
    let s = e.session(&[0, 1]);
    let sql = "SELECT id AS k, ssn AS tax, upper(notes) AS n FROM people";
    let sources = ResultSources::of(sql, Dialect::Postgres);
    let cell = |column: &str, v: &str| {
        let col = s.column_from(column, sources.sources(column));
        let mut out = Vec::new();
        let mut st = MaskStats::default();
        match s.mask_value(&col, ValueKind::Text, v.as_bytes(), &mut out, &mut st) {
            MaskOutcome::Unchanged => v.to_string(),
            MaskOutcome::Rewritten => String::from_utf8(out).unwrap(),
            MaskOutcome::Null => "NULL".to_string(),
        }
    };
    assert_eq!(cell("k", "7"), "7");
    assert_eq!(cell("tax", "123-45-6789"), "[MASKED]");
    // `notes` runs the email detector inside the column, under any name it is read as.
    assert_eq!(cell("n", "MAIL ANN@EXAMPLE.COM"), "MAIL [EMAIL]");
    assert_eq!(cell("k", "ann@example.com"), "ann@example.com");

    // A statement too costly to read computes every column from every column.
    let deep = format!(
        "SELECT {} id {} AS k",
        "(SELECT ".repeat(20_000),
        ")".repeat(20_000)
    );
    let sources = ResultSources::of(&deep, Dialect::Postgres);
    let col = s.column_from("k", sources.sources("k"));
    let mut out = Vec::new();
    let mut st = MaskStats::default();
    assert_eq!(
        s.mask_value(&col, ValueKind::Text, b"7", &mut out, &mut st),
        MaskOutcome::Rewritten
    );
    assert_eq!(out, b"[MASKED]");
}
