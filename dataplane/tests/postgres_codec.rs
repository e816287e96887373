//! Property and fuzz-smoke tests of the PostgreSQL codecs: arbitrary bytes never panic any
//! decoder or state machine, and announced lengths over the limits give typed errors before
//! anything is buffered.

use bytes::BytesMut;
use dataplane::postgres::{Limits, PgError, Side, backend, frontend, fuzzing};
use proptest::prelude::*;

const FRONTEND_TAGS: &[u8] = b"QPBDESHCdcfFXp";
const BACKEND_TAGS: &[u8] = b"RSKZTDCIENGHWdcA123ntsVv";

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::frontend(&data);
        fuzzing::backend(&data);
        fuzzing::client_session(&data);
        fuzzing::upstream_auth(&data);
    }

    #[test]
    fn frontend_lengths_over_the_limit_are_typed_errors(
        tag_index in 0..FRONTEND_TAGS.len(),
        len in 1025u32..=u32::MAX,
    ) {
        let tag = FRONTEND_TAGS[tag_index];
        let limits = Limits::with_max_message_len(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[tag]);
        buf.extend_from_slice(&len.to_be_bytes());
        let err = frontend::decode_message(&mut buf, &limits).unwrap_err();
        let is_too_long = matches!(err, PgError::ClientMessageTooLong { .. });
        prop_assert!(is_too_long, "{}", err);
        prop_assert_eq!(err.side(), Side::Client);
        // Nothing was reserved for the announced size.
        prop_assert!(buf.capacity() < 4096);
    }

    #[test]
    fn backend_lengths_over_the_limit_are_typed_errors(
        tag_index in 0..BACKEND_TAGS.len(),
        len in 1025u32..=u32::MAX,
    ) {
        let tag = BACKEND_TAGS[tag_index];
        let limits = Limits::with_max_message_len(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[tag]);
        buf.extend_from_slice(&len.to_be_bytes());
        let err = backend::decode_message(&mut buf, &limits).unwrap_err();
        let is_too_long = matches!(err, PgError::UpstreamMessageTooLong { .. });
        prop_assert!(is_too_long, "{}", err);
        prop_assert_eq!(err.side(), Side::Upstream);
        prop_assert!(buf.capacity() < 4096);
    }

    #[test]
    fn startup_lengths_over_the_limit_are_typed_errors(len in 10_001u32..=u32::MAX) {
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let err = frontend::decode_startup(&mut buf, &Limits::default()).unwrap_err();
        let is_too_long = matches!(err, PgError::ClientMessageTooLong { .. });
        prop_assert!(is_too_long, "{}", err);
    }
}

/// A deterministic xorshift generator: the smoke run is reproducible without a seed file.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

/// Valid traffic of both directions, the seeds the mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    let mut startup = BytesMut::new();
    frontend::encode_startup(&mut startup, &[(b"user", b"alice"), (b"database", b"db")]);
    let mut client = startup.clone();
    frontend::encode_password(&mut client, b"token");
    frontend::encode_query(&mut client, b"select 1");
    client.extend_from_slice(b"P\0\0\0\x10\0select 1\0\0\0");
    client.extend_from_slice(b"B\0\0\0\x0c\0\0\0\0\0\0\0\0");
    client.extend_from_slice(b"E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04");
    let server: &[u8] = b"R\0\0\0\x08\0\0\0\x03R\0\0\0\x0c\0\0\0\x05saltR\0\0\0\x08\0\0\0\0\
        S\0\0\0\x0ba\0b\0K\0\0\0\x0c\0\0\0\x01\0\0\0\x02Z\0\0\0\x05I\
        T\0\0\0\x1b\0\x01id\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0\
        D\0\0\0\x0b\0\x01\0\0\0\x01xC\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";
    vec![client.to_vec(), server.to_vec(), startup.to_vec()]
}

#[test]
fn fuzz_smoke_mutated_traffic_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = seeds();
    for _ in 0..20_000 {
        let mut data = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(data.len());
            match rng.below(4) {
                0 => {
                    if let Some(b) = data.get_mut(at) {
                        *b = u8::try_from(rng.next() & 0xff).unwrap();
                    }
                }
                1 => data.truncate(at),
                2 => data.insert(at.min(data.len()), u8::try_from(rng.next() & 0xff).unwrap()),
                _ => {
                    if let Some(b) = data.get_mut(at) {
                        *b = 0xff;
                    }
                }
            }
        }
        fuzzing::frontend(&data);
        fuzzing::backend(&data);
        fuzzing::client_session(&data);
        fuzzing::upstream_auth(&data);
    }
}
