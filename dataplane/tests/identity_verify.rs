//! Token verification end to end through the public API: keys from JWKS documents, tokens
//! signed by real keys of every supported type, and every rejection path asserted on the error
//! kind audit records and the message the client sees.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers outside #[test] functions: a panic there is a failing test"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use dataplane::identity::{
    AuthErrorKind, Identity, IdentityConfig, IdentityKind, JwksRefresher, JwksSource, KeyAlg,
    KeySet, KeyStore, MintRequest, TokenCache, Verifier, issuer, now_unix,
};
use serde_json::{Value, json};

const ISS: &str = "https://idp.test";
const AUD: &str = "portcullis";

enum Key {
    Rsa(RsaKeyPair),
    Ec256(EcdsaKeyPair),
    Ec384(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Key {
    fn rsa() -> Key {
        Key::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
    }
    fn ec256() -> Key {
        Key::Ec256(EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }
    fn ec384() -> Key {
        Key::Ec384(EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap())
    }
    fn ed() -> Key {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Key::Ed(Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap())
    }

    /// The public JWK, with `kid` and optionally a pinned `alg`.
    fn jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        let mut v = match self {
            Key::Rsa(k) => json!({
                "kty": "RSA",
                "n": B64.encode(k.public_key().modulus().big_endian_without_leading_zero()),
                "e": B64.encode(k.public_key().exponent().big_endian_without_leading_zero()),
            }),
            Key::Ec256(k) | Key::Ec384(k) => {
                let p = k.public_key().as_ref();
                let half = (p.len() - 1) / 2;
                json!({
                    "kty": "EC",
                    "crv": if half == 32 { "P-256" } else { "P-384" },
                    "x": B64.encode(&p[1..1 + half]),
                    "y": B64.encode(&p[1 + half..]),
                })
            }
            Key::Ed(k) => json!({
                "kty": "OKP", "crv": "Ed25519", "x": B64.encode(k.public_key().as_ref()),
            }),
        };
        v["kid"] = json!(kid);
        if let Some(a) = alg {
            v["alg"] = json!(a);
        }
        v
    }

    fn sign(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Key::Rsa(k) => {
                let enc: &'static dyn sig::RsaEncoding = match alg {
                    "RS256" => &sig::RSA_PKCS1_SHA256,
                    "RS384" => &sig::RSA_PKCS1_SHA384,
                    "RS512" => &sig::RSA_PKCS1_SHA512,
                    "PS256" => &sig::RSA_PSS_SHA256,
                    "PS384" => &sig::RSA_PSS_SHA384,
                    "PS512" => &sig::RSA_PSS_SHA512,
                    other => panic!("not an rsa alg {other}"),
                };
                let mut out = vec![0; k.public_modulus_len()];
                k.sign(enc, &rng, msg, &mut out).unwrap();
                out
            }
            Key::Ec256(k) | Key::Ec384(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Key::Ed(k) => k.sign(msg).as_ref().to_vec(),
        }
    }
}

fn jwks(keys: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

fn store(keys: &[Value]) -> Arc<KeyStore> {
    Arc::new(KeyStore::with_keys(
        KeySet::from_jwks_json(&jwks(keys)).unwrap(),
    ))
}

fn config() -> IdentityConfig {
    IdentityConfig::new(ISS, AUD, JwksSource::Discovery)
}

fn verifier(keys: &[Value]) -> Verifier {
    Verifier::new(config(), store(keys))
}

fn claims(now: i64) -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "alice", "email": "alice@example.com",
        "groups": ["dba", "oncall"], "iat": now, "nbf": now, "exp": now + 600,
    })
}

/// A compact JWS over `header` and `payload` (raw JSON values), signed with `key` as `alg`.
fn token_raw(header: &[u8], payload: &[u8], key: &Key, alg: &str) -> String {
    let signed = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let s = key.sign(alg, signed.as_bytes());
    format!("{signed}.{}", B64.encode(s))
}

fn token(key: &Key, alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut h = json!({ "alg": alg, "typ": "JWT" });
    if let Some(k) = kid {
        h["kid"] = json!(k);
    }
    token_raw(
        &serde_json::to_vec(&h).unwrap(),
        &serde_json::to_vec(claims).unwrap(),
        key,
        alg,
    )
}

fn kind_of(v: &Verifier, tok: &str, now: i64) -> AuthErrorKind {
    match v.verify(tok.as_bytes(), now) {
        Ok(id) => panic!("token unexpectedly accepted as {id:?}"),
        Err(e) => {
            // Whatever the reason, the client never gets its token echoed back.
            assert!(
                tok.is_empty() || !e.client_message().contains(tok),
                "message leaks token"
            );
            e.kind()
        }
    }
}

#[test]
fn every_supported_algorithm_verifies() {
    let now = now_unix();
    let rsa = Key::rsa();
    let cases = [
        (&rsa, "RS256"),
        (&rsa, "RS384"),
        (&rsa, "RS512"),
        (&rsa, "PS256"),
        (&rsa, "PS384"),
        (&rsa, "PS512"),
    ];
    let v = verifier(&[rsa.jwk("r", None)]);
    for (key, alg) in cases {
        let id = v
            .verify(token(key, alg, Some("r"), &claims(now)).as_bytes(), now)
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(id.subject, "alice", "{alg}");
    }
    for (key, alg) in [
        (Key::ec256(), "ES256"),
        (Key::ec384(), "ES384"),
        (Key::ed(), "EdDSA"),
    ] {
        let v = verifier(&[key.jwk("k", Some(alg))]);
        let id = v
            .verify(token(&key, alg, Some("k"), &claims(now)).as_bytes(), now)
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(
            id,
            Identity {
                subject: "alice".into(),
                email: Some("alice@example.com".into()),
                groups: vec!["dba".into(), "oncall".into()],
                kind: IdentityKind::Human,
                expires_at: now + 600,
                issuer: ISS.into(),
            },
            "{alg}"
        );
        // Without a `kid`, the key that fits the algorithm is found.
        assert!(
            v.verify(token(&key, alg, None, &claims(now)).as_bytes(), now)
                .is_ok()
        );
    }
}

#[test]
fn every_rejection_has_its_kind() {
    let now = now_unix();
    let ed = Key::ed();
    let rsa = Key::rsa();
    let ec = Key::ec256();
    let v = verifier(&[
        ed.jwk("ed", None),
        rsa.jwk("rsa", None),
        rsa.jwk("rsa-ps", Some("PS256")),
        ec.jwk("ec", None),
    ]);
    let c = claims(now);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(now);
        f(&mut c);
        token(&ed, "EdDSA", Some("ed"), &c)
    };
    use AuthErrorKind as K;

    // Signature: another key under a known kid, and a payload changed after signing.
    let imposter = Key::ed();
    assert_eq!(
        kind_of(&v, &token(&imposter, "EdDSA", Some("ed"), &c), now),
        K::BadSignature
    );
    let good = token(&ed, "EdDSA", Some("ed"), &c);
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut forged = c.clone();
    forged["sub"] = json!("root");
    let forged_payload = B64.encode(serde_json::to_vec(&forged).unwrap());
    parts[1] = &forged_payload;
    assert_eq!(kind_of(&v, &parts.join("."), now), K::BadSignature);

    // Claims.
    assert_eq!(
        kind_of(&v, &with(&|c| c["iss"] = json!("https://evil.test")), now),
        K::WrongIssuer
    );
    assert_eq!(
        kind_of(&v, &with(&|c| c["aud"] = json!("other")), now),
        K::WrongAudience
    );
    assert_eq!(
        kind_of(&v, &with(&|c| c["aud"] = json!(["a", "b"])), now),
        K::WrongAudience
    );
    assert!(
        v.verify(with(&|c| c["aud"] = json!(["a", AUD])).as_bytes(), now)
            .is_ok()
    );
    assert_eq!(
        kind_of(&v, &with(&|c| c["exp"] = json!(now - 100)), now),
        K::Expired
    );
    // Inside the 30 s leeway a just-expired token still passes.
    assert!(
        v.verify(with(&|c| c["exp"] = json!(now - 10)).as_bytes(), now)
            .is_ok()
    );
    assert_eq!(
        kind_of(&v, &with(&|c| c["nbf"] = json!(now + 100)), now),
        K::NotYetValid
    );
    assert_eq!(
        kind_of(&v, &with(&|c| c["iat"] = json!(now + 100)), now),
        K::NotYetValid
    );
    assert_eq!(
        kind_of(
            &v,
            &with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            now
        ),
        K::Malformed
    );

    // Algorithms: `none`, HS256 keyed with the RSA public key (the classic confusion), an alg the
    // named key cannot do, an alg the JWK pins otherwise, an unknown alg.
    let none = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(serde_json::to_vec(&c).unwrap())
    );
    assert_eq!(kind_of(&v, &none, now), K::AlgNotAllowed);
    let hs_header = B64.encode(br#"{"alg":"HS256","kid":"rsa"}"#);
    let hs_signed = format!(
        "{hs_header}.{}",
        B64.encode(serde_json::to_vec(&c).unwrap())
    );
    let Key::Rsa(rk) = &rsa else { unreachable!() };
    let hmac_key =
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, rk.public_key().as_ref());
    let mac = aws_lc_rs::hmac::sign(&hmac_key, hs_signed.as_bytes());
    let hs = format!("{hs_signed}.{}", B64.encode(mac.as_ref()));
    assert_eq!(kind_of(&v, &hs, now), K::AlgNotAllowed);
    assert_eq!(
        kind_of(&v, &token(&ec, "ES256", Some("ed"), &c), now),
        K::AlgNotAllowed
    );
    assert_eq!(
        kind_of(&v, &token(&rsa, "RS256", Some("ec"), &c), now),
        K::AlgNotAllowed
    );
    assert_eq!(
        kind_of(&v, &token(&rsa, "RS256", Some("rsa-ps"), &c), now),
        K::AlgNotAllowed
    );
    assert!(
        v.verify(token(&rsa, "PS256", Some("rsa-ps"), &c).as_bytes(), now)
            .is_ok()
    );
    assert_eq!(
        kind_of(&v, &token(&ed, "EdDSA", Some("nope"), &c), now),
        K::UnknownKid
    );

    // Size and shape.
    let mut big = claims(now);
    big["pad"] = json!("x".repeat(20 * 1024));
    assert_eq!(
        kind_of(&v, &token(&ed, "EdDSA", Some("ed"), &big), now),
        K::Oversized
    );
    assert_eq!(kind_of(&v, "!!!.e30.AAAA", now), K::Malformed);
    assert_eq!(kind_of(&v, "only.two", now), K::Malformed);
    assert_eq!(kind_of(&v, "a.b.c.d.e", now), K::Malformed);
    assert_eq!(kind_of(&v, "", now), K::Malformed);
    let bad_json_header = format!("{}.e30.AAAA", B64.encode(b"{not json"));
    assert_eq!(kind_of(&v, &bad_json_header, now), K::Malformed);
    // A correctly signed payload that is not JSON is still malformed, not accepted.
    let h = br#"{"alg":"EdDSA","kid":"ed"}"#;
    assert_eq!(
        kind_of(&v, &token_raw(h, b"[1,2", &ed, "EdDSA"), now),
        K::Malformed
    );
    assert_eq!(
        kind_of(&v, &token_raw(h, b"42", &ed, "EdDSA"), now),
        K::Malformed
    );
    let crit = br#"{"alg":"EdDSA","kid":"ed","crit":["exp"]}"#;
    assert_eq!(
        kind_of(
            &v,
            &token_raw(crit, &serde_json::to_vec(&c).unwrap(), &ed, "EdDSA"),
            now
        ),
        K::Malformed
    );

    // No keys loaded yet: our side, not the client's.
    let empty = Verifier::new(config(), Arc::new(KeyStore::new()));
    let err = empty.verify(good.as_bytes(), now).unwrap_err();
    assert_eq!(err.kind(), K::NoKeys);
    assert!(err.is_ours());
}

#[test]
fn client_messages_say_what_is_wrong() {
    let now = now_unix();
    let ed = Key::ed();
    let v = verifier(&[ed.jwk("ed", None)]);
    let mut c = claims(now);
    c["exp"] = json!(now - 3600);
    let e = v
        .verify(token(&ed, "EdDSA", Some("ed"), &c).as_bytes(), now)
        .unwrap_err();
    assert!(
        e.to_string().contains("reconnect with a fresh token"),
        "{e}"
    );
    let e = v
        .verify(
            token(&ed, "EdDSA", Some("k\u{7}\nid"), &claims(now)).as_bytes(),
            now,
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "token key id `kid` is not in the issuer's key set"
    );
    let e = v.verify(b"x.y", now).unwrap_err();
    assert_eq!(e.kind().as_str(), "malformed");
}

#[test]
fn presented_subject_for_failed_authentications() {
    let now = now_unix();
    let v = verifier(&[Key::ed().jwk("ed", None)]);
    // Signed by a key the gateway does not know: refused, but audit can still say who it claimed.
    let tok = token(&Key::ed(), "EdDSA", Some("ed"), &claims(now));
    assert!(v.verify(tok.as_bytes(), now).is_err());
    assert_eq!(
        v.presented_subject(tok.as_bytes()).as_deref(),
        Some("alice")
    );
    assert_eq!(v.presented_subject(b"garbage"), None);
    let mut long = claims(now);
    long["sub"] = json!("a".repeat(500));
    let tok = token(&Key::ed(), "EdDSA", None, &long);
    assert!(v.presented_subject(tok.as_bytes()).unwrap().chars().count() <= 65);
}

#[test]
fn groups_from_arrays_strings_and_nested_paths() {
    let now = now_unix();
    let ed = Key::ed();
    let keys = [ed.jwk("ed", None)];
    let groups_with = |path: &str, value: Value| {
        let mut cfg = config();
        cfg.groups_claim = path.to_owned();
        let v = Verifier::new(cfg, store(&keys));
        let mut c = claims(now);
        c.as_object_mut().unwrap().remove("groups");
        let mut cursor = &mut c;
        if !value.is_null() {
            if path.starts_with("https://") {
                cursor[path] = value;
            } else {
                let segs: Vec<&str> = path.split('.').collect();
                for s in &segs[..segs.len() - 1] {
                    cursor[*s] = json!({});
                    cursor = &mut cursor[*s];
                }
                cursor[*segs.last().unwrap()] = value;
            }
        }
        v.verify(token(&ed, "EdDSA", Some("ed"), &c).as_bytes(), now)
            .map(|id| id.groups)
    };
    assert_eq!(
        groups_with("groups", json!(["a", "b", "a"])).unwrap(),
        ["a", "b"]
    );
    assert_eq!(
        groups_with("scope", json!("read  write\tadmin")).unwrap(),
        ["read", "write", "admin"]
    );
    assert_eq!(
        groups_with("realm_access.roles", json!(["offline", "dba"])).unwrap(),
        ["offline", "dba"]
    );
    assert_eq!(
        groups_with("https://portcullis.test/groups", json!(["x"])).unwrap(),
        ["x"]
    );
    assert_eq!(
        groups_with("groups", json!(["a", 7, {"b": 1}])).unwrap(),
        ["a"]
    );
    assert!(groups_with("groups", Value::Null).unwrap().is_empty());
    let many: Vec<String> = (0..300).map(|i| format!("g{i}")).collect();
    assert_eq!(
        groups_with("groups", json!(many)).unwrap_err().kind(),
        AuthErrorKind::Malformed
    );
    assert_eq!(
        groups_with("groups", json!(12)).unwrap_err().kind(),
        AuthErrorKind::Malformed
    );
}

#[test]
fn service_accounts_are_recognised() {
    let now = now_unix();
    let ed = Key::ed();
    let v = verifier(&[ed.jwk("ed", None)]);
    let mut c = claims(now);
    c["sub"] = json!("ci-deployer");
    c["client_id"] = json!("ci-deployer");
    c.as_object_mut().unwrap().remove("email");
    let id = v
        .verify(token(&ed, "EdDSA", None, &c).as_bytes(), now)
        .unwrap();
    assert_eq!((id.kind, id.email), (IdentityKind::Service, None));
    // `azp` naming a different client: a person who signed in through that client.
    let mut c = claims(now);
    c["azp"] = json!("web-console");
    let id = v
        .verify(token(&ed, "EdDSA", None, &c).as_bytes(), now)
        .unwrap();
    assert_eq!(id.kind, IdentityKind::Human);
    // A configured marker claim decides instead.
    let mut cfg = config();
    cfg.service_claim = Some("ext.service".into());
    let v = Verifier::new(cfg, store(&[ed.jwk("ed", None)]));
    let mut c = claims(now);
    c["ext"] = json!({ "service": true });
    assert_eq!(
        v.verify(token(&ed, "EdDSA", None, &c).as_bytes(), now)
            .unwrap()
            .kind,
        IdentityKind::Service
    );
    // A marker that must have a given value (tokens of every kind carry the claim).
    let mut cfg = config();
    cfg.service_claim = Some("idtyp".into());
    cfg.service_value = Some("app".into());
    let v = Verifier::new(cfg, store(&[ed.jwk("ed", None)]));
    for (idtyp, kind) in [
        ("app", IdentityKind::Service),
        ("user", IdentityKind::Human),
    ] {
        let mut c = claims(now);
        c["idtyp"] = json!(idtyp);
        let id = v
            .verify(token(&ed, "EdDSA", None, &c).as_bytes(), now)
            .unwrap();
        assert_eq!(id.kind, kind, "{idtyp}");
    }
}

#[test]
fn keygen_mint_verify_round_trip() {
    for alg in [KeyAlg::Ed25519, KeyAlg::Es256] {
        let dir = tempfile::tempdir().unwrap();
        let out = issuer::keygen(dir.path(), alg).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&out.key_path)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{alg:?}");
        }
        // A second keygen into the same folder must not overwrite the key.
        assert!(issuer::keygen(dir.path(), alg).is_err());

        let cfg = IdentityConfig::new(
            issuer::LOCAL_ISSUER,
            issuer::LOCAL_AUDIENCE,
            JwksSource::File(out.jwks_path.clone()),
        );
        let keys = Arc::new(KeyStore::new());
        let mut refresher = JwksRefresher::new(cfg.clone(), Arc::clone(&keys));
        assert_eq!(refresher.refresh_now().unwrap(), 1);
        let v = Verifier::new(cfg, keys);

        let mut req = MintRequest::new("alice");
        req.email = Some("alice@example.com".into());
        req.groups = vec!["dba".into(), "oncall".into()];
        req.ttl = Duration::from_secs(900);
        let tok = issuer::mint(&out.key_path, &req).unwrap();
        let header: Value =
            serde_json::from_slice(&B64.decode(tok.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["kid"], json!(out.kid));
        let now = now_unix();
        let id = v.verify(tok.as_bytes(), now).unwrap();
        assert_eq!(id.subject, "alice");
        assert_eq!(id.email.as_deref(), Some("alice@example.com"));
        assert_eq!(id.groups, ["dba", "oncall"]);
        assert_eq!(id.kind, IdentityKind::Human);
        assert!((id.expires_at - (now + 900)).abs() <= 2);

        let mut svc = MintRequest::new("nightly-etl");
        svc.service = true;
        let id = v
            .verify(issuer::mint(&out.key_path, &svc).unwrap().as_bytes(), now)
            .unwrap();
        assert_eq!(id.kind, IdentityKind::Service);

        let mut other_aud = MintRequest::new("alice");
        other_aud.audience = "elsewhere".into();
        let tok = issuer::mint(&out.key_path, &other_aud).unwrap();
        assert_eq!(
            v.verify(tok.as_bytes(), now).unwrap_err().kind(),
            AuthErrorKind::WrongAudience
        );
    }
}

#[test]
fn cache_hits_return_the_same_identity_and_expire() {
    let now = now_unix();
    let ed = Key::ed();
    let keys = store(&[ed.jwk("ed", None)]);
    let v = Verifier::new(config(), Arc::clone(&keys));
    let mut cache = TokenCache::new(2);
    let mut c = claims(now);
    c["exp"] = json!(now + 60);
    let tok = token(&ed, "EdDSA", Some("ed"), &c);

    let first = v.verify_cached(&mut cache, tok.as_bytes(), now).unwrap();
    let second = v
        .verify_cached(&mut cache, tok.as_bytes(), now + 1)
        .unwrap();
    assert!(
        Arc::ptr_eq(&first, &second),
        "second lookup must come from the cache"
    );
    assert_eq!((cache.hits(), cache.misses()), (1, 1));

    // Past exp + leeway the cached entry is gone and the token is refused as expired.
    let later = now + 60 + 30;
    assert_eq!(
        v.verify_cached(&mut cache, tok.as_bytes(), later)
            .unwrap_err()
            .kind(),
        AuthErrorKind::Expired
    );

    // A token differing only before its signature never hits another token's entry.
    let fresh = v.verify_cached(&mut cache, tok.as_bytes(), now).unwrap();
    let mut tampered = tok.clone().into_bytes();
    tampered[5] ^= 1;
    assert!(v.verify_cached(&mut cache, &tampered, now).is_err());

    // A key-set change drops cached identities: the token is verified again.
    keys.replace(KeySet::from_jwks_json(&jwks(&[ed.jwk("ed", None)])).unwrap());
    let again = v.verify_cached(&mut cache, tok.as_bytes(), now).unwrap();
    assert!(!Arc::ptr_eq(&fresh, &again));

    // Bounded.
    for i in 0..5 {
        let mut c = claims(now);
        c["sub"] = json!(format!("user{i}"));
        v.verify_cached(&mut cache, token(&ed, "EdDSA", None, &c).as_bytes(), now)
            .unwrap();
        assert!(cache.len() <= 2);
    }
}

#[test]
fn session_expiry_with_grace() {
    let id = Identity {
        subject: "a".into(),
        email: None,
        groups: vec![],
        kind: IdentityKind::Human,
        expires_at: 1000,
        issuer: ISS.into(),
    };
    assert!(!id.expired(999, Duration::ZERO));
    assert!(id.expired(1000, Duration::ZERO));
    assert!(!id.expired(1059, Duration::from_secs(60)));
    assert!(id.expired(1060, Duration::from_secs(60)));
}

#[test]
fn unknown_kid_triggers_a_refresh_from_the_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let old = Key::ed();
    std::fs::write(&path, jwks(&[old.jwk("old", None)])).unwrap();
    let mut cfg = config();
    cfg.jwks = JwksSource::File(path.clone());
    cfg.min_refresh_secs = 0;
    let keys = Arc::new(KeyStore::new());
    let mut refresher = JwksRefresher::new(cfg.clone(), Arc::clone(&keys));
    refresher.refresh_now().unwrap();
    let v = Verifier::with_refresh(cfg, Arc::clone(&keys), refresher.handle());
    let thread = refresher.spawn().unwrap();

    let now = now_unix();
    assert!(
        v.verify(
            token(&old, "EdDSA", Some("old"), &claims(now)).as_bytes(),
            now
        )
        .is_ok()
    );
    // The issuer rotates: a new key appears, tokens start naming it.
    let new = Key::ec256();
    std::fs::write(&path, jwks(&[old.jwk("old", None), new.jwk("new", None)])).unwrap();
    let tok = token(&new, "ES256", Some("new"), &claims(now));
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = v.verify(tok.as_bytes(), now);
    assert_eq!(first.unwrap_err().kind(), AuthErrorKind::UnknownKid);
    loop {
        match v.verify(tok.as_bytes(), now) {
            Ok(id) => {
                assert_eq!(id.subject, "alice");
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), AuthErrorKind::UnknownKid);
                assert!(Instant::now() < deadline, "rotation not picked up in 30 s");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // A broken document never replaces good keys.
    std::fs::write(&path, b"{\"keys\": []}").unwrap();
    let mut check = JwksRefresher::new(v.config().clone(), Arc::clone(&keys));
    assert!(check.refresh_now().is_err());
    assert!(v.verify(tok.as_bytes(), now).is_ok());
    thread.shutdown();
}

#[test]
fn jwks_documents_keep_only_usable_signing_keys() {
    let ed = Key::ed();
    let doc = jwks(&[
        json!({ "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" }),
        json!({ "kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB" }),
        json!({ "kty": "OKP", "crv": "X25519", "kid": "ecdh", "x": "AAAA" }),
        json!({ "kty": "EC", "crv": "P-256", "kid": "odd", "x": 7, "y": null }),
        json!({ "kty": "OKP", "crv": "Ed25519", "kid": "lying", "alg": "RS256", "x": "AAAA" }),
        ed.jwk("good", None),
    ]);
    let set = KeySet::from_jwks_json(&doc).unwrap();
    assert_eq!(set.keys().len(), 1);
    assert_eq!(set.skipped(), 5);
    assert!(set.find("good").is_some() && set.find("hmac").is_none());

    let only_bad = jwks(&[json!({ "kty": "oct", "k": "c2VjcmV0" })]);
    let err = KeySet::from_jwks_json(&only_bad).unwrap_err();
    assert_eq!(err.to_string(), "jwks has no usable signing key");
    let many: Vec<Value> = (0..65).map(|i| ed.jwk(&format!("k{i}"), None)).collect();
    let err = KeySet::from_jwks_json(&jwks(&many)).unwrap_err();
    assert!(err.to_string().contains("65 keys"), "{err}");
    assert!(KeySet::from_jwks_json(b"not json").is_err());
}
