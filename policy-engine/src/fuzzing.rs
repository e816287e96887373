//! Fuzz entry points, kept in the crate so that stable `cargo test` can smoke-run them and a
//! libFuzzer shim (in `fuzz/`, nightly only) stays a one-liner. Each must never panic.

use std::path::PathBuf;
use std::sync::Arc;

use crate::policy::{Policy, Scratch, compile_sources};
use crate::request::{Action, Dialect, Identity};
use crate::sql::{ResultSources, SqlScratch};

/// Lexes and classifies arbitrary bytes in both dialects, and checks that normalizing is
/// idempotent (returns `false` if it is not, which a fuzzer should treat as a crash).
pub fn lexer(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let mut s = SqlScratch::new();
    let mut again = SqlScratch::new();
    for dialect in [Dialect::Postgres, Dialect::Mysql] {
        // What result columns read, from the whole text and per classified statement.
        let sources = ResultSources::of(&text, dialect);
        let _ = sources.sources("x").count();
        if s.classify(&text, dialect).is_err() {
            continue;
        }
        for st in s.statements() {
            let per = ResultSources::from_tokens(&text, s.tokens(st));
            let _ = per.sources("?column?").count();
        }
        let once = s.normalized(&text, dialect);
        if s.unterminated() {
            continue;
        }
        if again.classify(&once, dialect).is_err() {
            return false;
        }
        if again.normalized(&once, dialect) != once {
            return false;
        }
    }
    true
}

/// Compiles arbitrary text as a policy file and, if it compiles, decides a few requests.
pub fn policy(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let Ok(p) = compile_sources(&[(PathBuf::from("fuzz.toml"), text)]) else {
        return;
    };
    let p = Arc::new(p);
    let id = Identity {
        subject: "fuzz".into(),
        groups: vec!["dba".into(), "engineering".into()],
        ..Identity::default()
    };
    let session = p.session_unchecked("orders-db", &id);
    let mut scratch = Scratch::new();
    for action in [
        Action::Sql {
            dialect: Dialect::Postgres,
            text: "DELETE FROM orders; SELECT 1",
        },
        Action::Http {
            method: "GET",
            host: "api",
            path: "/v1/x",
        },
        Action::Ssh {
            command: "rm -rf /",
        },
        Action::TcpConnect,
    ] {
        let _ = session.decide(&action, &mut scratch);
    }
    let _ = p.explain("orders-db", &id, &Action::TcpConnect);
}

/// `Policy` must stay shareable across cores.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
};
