//! A bounded fuzz smoke run of `mask::fuzzing::detectors` (the logic a fuzz target calls):
//! random and mutated corpus inputs must neither panic nor depend on stream cut points.

use policy_engine::mask::corpus::{self, Rng};
use policy_engine::mask::fuzzing;

#[test]
fn fuzz_smoke() {
    let mut r = Rng::new(0x5eed);
    let mut seeds: Vec<Vec<u8>> = corpus::rows(3, 64, 6, 50)
        .into_iter()
        .map(|row| {
            row.iter()
                .map(|c| c.text.as_str())
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes()
        })
        .collect();
    seeds.push(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA".to_vec());
    seeds.push(b"{\"a\":[{\"password\":\"x\\\"y\"}]}".to_vec());
    for round in 0..3000 {
        let base = &seeds[round % seeds.len()];
        let mut data = base.clone();
        for _ in 0..r.below(8) {
            let op = r.below(4);
            let at = r.below(data.len() as u64 + 1) as usize;
            match op {
                0 if at < data.len() => data[at] = r.below(256) as u8,
                1 => data.insert(at, r.below(256) as u8),
                2 if at < data.len() => {
                    data.remove(at);
                }
                _ => {
                    let other = &seeds[r.below(seeds.len() as u64) as usize];
                    let from = r.below(other.len() as u64) as usize;
                    let to = (from + r.below(64) as usize).min(other.len());
                    data.splice(at..at, other[from..to].iter().copied());
                }
            }
        }
        fuzzing::detectors(&data);
    }
}
