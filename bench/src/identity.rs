//! `bench identity`: what a token costs the gateway.
//!
//! - cold: full verification (decode, signature, claims) per algorithm, one token timed per
//!   sample;
//! - cached: a per-core `TokenCache` hit through `Verifier::verify_cached`, timed in batches
//!   (one lookup is too short for the clock), with one hot token and with 1024 tokens in
//!   rotation.
//!
//! Tokens are realistic in size (a handful of groups, an email), signed here with real keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use dataplane::identity::{
    IdentityConfig, JwksSource, KeySet, KeyStore, TokenCache, Verifier, now_unix,
};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::SuiteArgs;

const ISS: &str = "https://idp.bench";
const AUD: &str = "portcullis";
/// Lookups per cached-path sample.
const BATCH: u64 = 1000;

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Key {
    fn new(alg: &str) -> anyhow::Result<Key> {
        let err = |_| anyhow::anyhow!("generating a {alg} key");
        Ok(match alg {
            "RS256" | "PS256" => Key::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).map_err(err)?),
            "ES256" => {
                Key::Ec(EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).map_err(err)?)
            }
            "ES384" => {
                Key::Ec(EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_FIXED_SIGNING).map_err(err)?)
            }
            _ => {
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(err)?;
                Key::Ed(
                    Ed25519KeyPair::from_pkcs8(doc.as_ref())
                        .map_err(|_| anyhow::anyhow!("parsing a generated Ed25519 key"))?,
                )
            }
        })
    }

    fn jwk(&self, alg: &str) -> anyhow::Result<Value> {
        let mut v = match self {
            Key::Rsa(k) => json!({
                "kty": "RSA",
                "n": B64.encode(k.public_key().modulus().big_endian_without_leading_zero()),
                "e": B64.encode(k.public_key().exponent().big_endian_without_leading_zero()),
            }),
            Key::Ec(k) => {
                let p = k.public_key().as_ref();
                let half = p.len().saturating_sub(1) / 2;
                let (x, y) = p
                    .get(1..)
                    .map(|r| r.split_at(half))
                    .ok_or_else(|| anyhow::anyhow!("empty EC point"))?;
                json!({
                    "kty": "EC",
                    "crv": if half == 32 { "P-256" } else { "P-384" },
                    "x": B64.encode(x),
                    "y": B64.encode(y),
                })
            }
            Key::Ed(k) => json!({
                "kty": "OKP", "crv": "Ed25519", "x": B64.encode(k.public_key().as_ref()),
            }),
        };
        if let Value::Object(m) = &mut v {
            m.insert("kid".into(), json!("bench"));
            m.insert("alg".into(), json!(alg));
        }
        Ok(v)
    }

    fn sign(&self, alg: &str, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
        let rng = SystemRandom::new();
        let err = |_| anyhow::anyhow!("signing with {alg}");
        Ok(match self {
            Key::Rsa(k) => {
                let enc: &'static dyn sig::RsaEncoding = if alg == "PS256" {
                    &sig::RSA_PSS_SHA256
                } else {
                    &sig::RSA_PKCS1_SHA256
                };
                let mut out = vec![0; k.public_modulus_len()];
                k.sign(enc, &rng, msg, &mut out).map_err(err)?;
                out
            }
            Key::Ec(k) => k.sign(&rng, msg).map_err(err)?.as_ref().to_vec(),
            Key::Ed(k) => k.sign(msg).as_ref().to_vec(),
        })
    }

    fn token(&self, alg: &str, sub: &str, now: i64) -> anyhow::Result<String> {
        let header = json!({ "alg": alg, "typ": "JWT", "kid": "bench" });
        let claims = json!({
            "iss": ISS, "aud": AUD, "sub": sub, "email": format!("{sub}@example.com"),
            "groups": ["engineering", "dba", "oncall", "eu-west", "readers"],
            "iat": now, "nbf": now, "exp": now + 3600, "jti": format!("{sub}-{now}"),
        });
        let signed = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header)?),
            B64.encode(serde_json::to_vec(&claims)?)
        );
        let s = self.sign(alg, signed.as_bytes())?;
        Ok(format!("{signed}.{}", B64.encode(s)))
    }
}

fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "samples": h.len(),
        "median_ns": h.value_at_quantile(0.5),
        "p99_ns": h.value_at_quantile(0.99),
        "min_ns": h.min(),
        "max_ns": h.max(),
        "mean_ns": (h.mean() * 10.0).round() / 10.0,
    })
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

fn verifier_for(jwk: Value) -> anyhow::Result<Verifier> {
    let doc = serde_json::to_vec(&json!({ "keys": [jwk] }))?;
    let keys = Arc::new(KeyStore::with_keys(KeySet::from_jwks_json(&doc)?));
    Ok(Verifier::new(
        IdentityConfig::new(ISS, AUD, JwksSource::Discovery),
        keys,
    ))
}

fn cold(alg: &str, samples: u64) -> anyhow::Result<Value> {
    let key = Key::new(alg)?;
    let verifier = verifier_for(key.jwk(alg)?)?;
    let now = now_unix();
    let token = key.token(alg, "alice", now)?;
    // Fail loudly rather than time a rejection path.
    verifier.verify(token.as_bytes(), now)?;
    let mut h = histogram()?;
    for _ in 0..samples / 10 {
        std::hint::black_box(verifier.verify(token.as_bytes(), now)?);
    }
    for _ in 0..samples {
        let t = Instant::now();
        let id = verifier.verify(std::hint::black_box(token.as_bytes()), now);
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        std::hint::black_box(id)?;
        h.record(ns.max(1))?;
    }
    let mut v = summary(&h);
    if let Value::Object(m) = &mut v {
        m.insert("alg".into(), json!(alg));
        m.insert("token_bytes".into(), json!(token.len()));
    }
    Ok(v)
}

fn cached(distinct: usize, samples: u64) -> anyhow::Result<Value> {
    let key = Key::new("EdDSA")?;
    let verifier = verifier_for(key.jwk("EdDSA")?)?;
    let now = now_unix();
    let tokens: Vec<String> = (0..distinct)
        .map(|i| key.token("EdDSA", &format!("user{i}"), now))
        .collect::<anyhow::Result<_>>()?;
    let mut cache = TokenCache::new(distinct.max(1024));
    for t in &tokens {
        verifier.verify_cached(&mut cache, t.as_bytes(), now)?;
    }
    let mut h = histogram()?;
    let mut i = 0usize;
    for _ in 0..samples {
        let t = Instant::now();
        for _ in 0..BATCH {
            let tok = tokens
                .get(i % tokens.len())
                .map(String::as_bytes)
                .unwrap_or_default();
            i = i.wrapping_add(1);
            let id = verifier.verify_cached(&mut cache, std::hint::black_box(tok), now);
            std::hint::black_box(id)?;
        }
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX) / BATCH;
        h.record(ns.max(1))?;
    }
    anyhow::ensure!(
        cache.misses() == u64::try_from(distinct)?,
        "the cached run missed the cache {} times",
        cache.misses()
    );
    let mut v = summary(&h);
    if let Value::Object(m) = &mut v {
        m.insert("distinct_tokens".into(), json!(distinct));
        m.insert("lookups_per_sample".into(), json!(BATCH));
        m.insert(
            "token_bytes".into(),
            json!(tokens.first().map_or(0, String::len)),
        );
    }
    Ok(v)
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "unix_time": now_unix(),
    })
}

pub fn run(args: &SuiteArgs) -> anyhow::Result<()> {
    let (cold_samples, cached_samples) = if args.quick { (200, 200) } else { (5000, 5000) };
    let started = Instant::now();
    let mut cold_results = Vec::new();
    for alg in ["RS256", "PS256", "ES256", "ES384", "EdDSA"] {
        cold_results.push(cold(alg, cold_samples)?);
    }
    let cached_results = vec![cached(1, cached_samples)?, cached(1024, cached_samples)?];
    let report = json!({
        "suite": "identity",
        "machine": machine(),
        "quick": args.quick,
        "note": "cold = full verification of one token per sample; cached = per-core TokenCache hit via Verifier::verify_cached, averaged over batches; goal: cached <= 100 ns",
        "cold": cold_results,
        "cached": cached_results,
        "elapsed_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "goal_cached_ns": Duration::from_nanos(100).as_nanos(),
    });
    crate::write_report(args, &report)
}
