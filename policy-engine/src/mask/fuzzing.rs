//! Fuzz logic for the masking engine, kept in the crate so fuzz targets are thin shims and a
//! bounded smoke run can live in the test suite.
//!
//! Each entry point takes arbitrary bytes and checks the engine's own invariants (no panic,
//! stream output independent of the cut points); it does not judge detector accuracy.

use std::sync::OnceLock;

use super::{
    DetectorSpec, MaskEngine, MaskSpec, MaskStats, SessionMasker, StrategyName, ValueKind,
};

fn session() -> Option<&'static SessionMasker> {
    static S: OnceLock<Option<SessionMasker>> = OnceLock::new();
    S.get_or_init(|| {
        let rule = |strategy, detectors: &[&str], columns: &[&str], fields: &[&str]| MaskSpec {
            connections: vec![],
            groups: vec![],
            columns: columns.iter().map(|s| (*s).to_owned()).collect(),
            fields: fields.iter().map(|s| (*s).to_owned()).collect(),
            detectors: detectors.iter().map(|s| (*s).to_owned()).collect(),
            strategy,
            keep: None,
            replacement: None,
        };
        let specs = [
            rule(StrategyName::Partial, &["email", "credit_card"], &[], &[]),
            rule(StrategyName::Hash, &["ssn", "iban", "order_ref"], &[], &[]),
            rule(StrategyName::Redact, &["all"], &[], &[]),
            rule(StrategyName::Null, &[], &["secret*"], &["*.password"]),
        ];
        let detectors = [DetectorSpec {
            name: "order_ref".to_owned(),
            regex: r"ORD-[0-9]{6,}".to_owned(),
            validator: Some("luhn".to_owned()),
            label: None,
        }];
        let engine = MaskEngine::compile(&specs, &detectors, b"fuzz-key").ok()?;
        Some(engine.session(&[0, 1, 2, 3]))
    })
    .as_ref()
}

/// Runs `data` through the value, stream and JSON maskers. The first byte picks cut points
/// for the stream; the stream result must equal masking the whole input at once.
pub fn detectors(data: &[u8]) {
    let Some(s) = session() else { return };
    let mut stats = MaskStats::default();
    let mut out = Vec::new();
    for name in ["note", "secret_token"] {
        let col = s.column(name);
        for kind in [ValueKind::Text, ValueKind::Numeric] {
            out.clear();
            let _ = s.mask_value(&col, kind, data, &mut out, &mut stats);
        }
    }
    out.clear();
    let _ = s.mask_json(data, &mut out, &mut stats);

    let whole = stream_in(s, data, &[]);
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let cuts: Vec<usize> = (0..data.len()).step_by(step).collect();
    let split = stream_in(s, data, &cuts);
    assert!(whole == split, "stream output depends on cut points");
}

/// Masks `data` as one stream pushed in pieces cut at `cuts`.
pub fn stream_in(s: &SessionMasker, data: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut m = s.stream();
    let mut out = Vec::new();
    let mut stats = MaskStats::default();
    let mut prev = 0usize;
    for &c in cuts {
        if c > prev && c <= data.len() {
            m.push(data.get(prev..c).unwrap_or_default(), &mut out, &mut stats);
            prev = c;
        }
    }
    m.push(data.get(prev..).unwrap_or_default(), &mut out, &mut stats);
    m.finish(&mut out, &mut stats);
    out
}
