//! The documented example policies must run, not just parse: their masking rules compile
//! into the engine the gateway builds at start, and a hit under `us_ssn` is masked.
#![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use std::path::PathBuf;

use policy_engine::mask::{MaskEngine, MaskOutcome, MaskStats, ValueKind};
use policy_engine::{Identity, IdentityKind, Policy};

#[test]
fn example_policies_compile_their_masking_rules() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../appliance/examples/policies");
    let policy = Policy::load_dir(&dir).unwrap();
    let specs: Vec<_> = policy.mask_specs().cloned().collect();
    let engine = MaskEngine::compile(&specs, policy.detector_specs(), b"k").unwrap();

    let alice = Identity {
        subject: "alice".into(),
        email: None,
        groups: vec!["engineering".into()],
        kind: IdentityKind::Human,
    };
    let active = policy.mask_rules_for("orders-db", &alice);
    let session = engine.session(&active);
    let mut out = Vec::new();
    let mut stats = MaskStats::default();
    let column = session.column("notes");
    let outcome = session.mask_value(
        &column,
        ValueKind::Text,
        b"ssn 123-45-6789 on file",
        &mut out,
        &mut stats,
    );
    assert_eq!(outcome, MaskOutcome::Rewritten);
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("123-45-6789"), "{text}");
    assert!(
        text.ends_with("6789 on file"),
        "partial keeps the last 4: {text}"
    );
}
