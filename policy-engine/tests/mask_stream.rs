//! The stream masker gives exactly the whole-input output whatever the cut points, holds
//! back only the unfinished line, and never panics on arbitrary bytes.

use policy_engine::mask::corpus::{self, Rng};
use policy_engine::mask::fuzzing::stream_in;
use policy_engine::mask::{
    MaskEngine, MaskSpec, MaskStats, STREAM_WINDOW, SessionMasker, StrategyName,
};
use proptest::prelude::*;

#[expect(clippy::unwrap_used, reason = "test helper: a panic is a failing test")]
fn session() -> SessionMasker {
    let rule = |strategy, d: &[&str]| MaskSpec {
        connections: vec![],
        groups: vec![],
        columns: vec![],
        fields: vec![],
        detectors: d.iter().map(|s| s.to_string()).collect(),
        strategy,
        keep: None,
        replacement: None,
    };
    let specs = [
        rule(StrategyName::Partial, &["email", "credit_card"]),
        rule(StrategyName::Hash, &["ssn"]),
        rule(StrategyName::Redact, &["all"]),
    ];
    MaskEngine::compile(&specs, &[], b"k")
        .unwrap()
        .session(&[0, 1, 2])
}

/// Text shaped like COPY output / logs: corpus cells joined by field and line separators.
fn text(seed: u64, rows: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut out = Vec::new();
    for _ in 0..rows {
        for (i, c) in corpus::row(&mut r, 5, 40).iter().enumerate() {
            if i > 0 {
                let sep: &[u8] = match r.below(5) {
                    0 => b"\t",
                    1 => b",",
                    2 => b" ",
                    3 => b"|",
                    _ => b"\"",
                };
                out.extend_from_slice(sep);
            }
            out.extend_from_slice(c.text.as_bytes());
        }
        out.extend_from_slice(if r.below(4) == 0 { b"\r\n" } else { b"\n" });
    }
    out
}

#[test]
fn every_single_cut_point_matches_whole() {
    let s = session();
    let input = text(7, 12);
    let whole = stream_in(&s, &input, &[]);
    assert_ne!(whole, input, "the sample must contain something to mask");
    for cut in 0..=input.len() {
        assert_eq!(stream_in(&s, &input, &[cut]), whole, "cut at {cut}");
    }
}

#[test]
fn byte_at_a_time_masks_a_split_private_key() {
    let s = session();
    let input = b"log line\n-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg\nAwEHoUQDQgAE\n-----END EC PRIVATE KEY-----\ncard 4111 1111 1111 1111 done\n";
    let cuts: Vec<usize> = (1..input.len()).collect();
    let out = stream_in(&s, input, &cuts);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "log line\n[PRIVATE_KEY]\ncard **** **** **** 1111 done\n"
    );
}

#[test]
fn holds_back_only_the_unfinished_line() {
    let s = session();
    let mut m = s.stream();
    let mut out = Vec::new();
    let mut st = MaskStats::default();
    m.push(
        b"first line jane@example.com\nsecond jane@exa",
        &mut out,
        &mut st,
    );
    assert_eq!(out, b"first line ****@example.com\n");
    assert_eq!(m.held(), "second jane@exa".len());
    m.push(b"mple.com", &mut out, &mut st);
    m.finish(&mut out, &mut st);
    assert_eq!(out, b"first line ****@example.com\nsecond ****@example.com");
    assert_eq!(st.total(), 2);

    // A line longer than the window is cut inside it: memory stays bounded.
    let mut m = s.stream();
    out.clear();
    let long = vec![b'a'; STREAM_WINDOW * 3];
    for chunk in long.chunks(1000) {
        m.push(chunk, &mut out, &mut st);
        assert!(m.held() < STREAM_WINDOW + 1000);
    }
    m.finish(&mut out, &mut st);
    assert_eq!(out, long);
}

#[test]
fn unterminated_private_key_is_masked_to_the_window() {
    let s = session();
    let mut input = b"-----BEGIN PRIVATE KEY-----\n".to_vec();
    while input.len() < 70 * 1024 {
        input.extend_from_slice(b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n");
    }
    input.extend_from_slice(b"after jane@example.com\n");
    let whole = stream_in(&s, &input, &[]);
    let text = String::from_utf8(whole.clone()).unwrap();
    assert!(text.starts_with("[PRIVATE_KEY]"));
    assert!(text.ends_with("after ****@example.com\n"));
    assert!(text.len() < 8 * 1024, "the key body is not emitted");
    let cuts: Vec<usize> = (0..input.len()).step_by(997).collect();
    assert_eq!(stream_in(&s, &input, &cuts), whole);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_multi_splits_match_whole(seed in any::<u64>(), rows in 1usize..12, cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..24)) {
        let s = session();
        let input = text(seed, rows);
        let whole = stream_in(&s, &input, &[]);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        points.sort_unstable();
        prop_assert_eq!(stream_in(&s, &input, &points), whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_invariant(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        policy_engine::mask::fuzzing::detectors(&data);
    }

    #[test]
    fn secret_like_bytes_split_invariant(parts in proptest::collection::vec(prop::sample::select(vec![
        "4111", " ", "1111", "-", "\n", "@", "example.com", "jane", "AKIA", "IOSFODNN7EXAMPLE", "eyJ", "hbGciOiJIUzI1NiJ9",
        ".", "password", "=", "\"", ":", "-----BEGIN ", "RSA PRIVATE KEY-----", "-----END ", "123-45-6789", "+1 415",
        "2001:db8::1", "DE89 3704 0044 0532 0130 00", "\t", "(415) 555-0100", "\u{e9}", "\u{ff}",
        "postgres://", "app", "s3cret", "/", "?",
    ]), 0..80), step in 1usize..40) {
        let s = session();
        let input: Vec<u8> = parts.concat().into_bytes();
        let whole = stream_in(&s, &input, &[]);
        let cuts: Vec<usize> = (0..input.len()).step_by(step).collect();
        prop_assert_eq!(stream_in(&s, &input, &cuts), whole);
    }
}

/// Many private keys in one batch: the hits after each key, reused from the batch's scan
/// instead of rescanned, are exactly those of masking the lines one at a time.
#[test]
fn batch_with_many_keys_matches_line_by_line() {
    let s = session();
    let input = text(21, 600);
    let keys = input.windows(11).filter(|w| w == b"-----BEGIN ").count();
    assert!(keys > 20, "the sample holds many private keys: {keys}");
    let whole = stream_in(&s, &input, &[]);
    let line_ends: Vec<usize> = input
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(stream_in(&s, &input, &line_ends), whole);
}
