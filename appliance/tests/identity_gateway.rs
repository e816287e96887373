//! Identity end to end through the running `portcullis` binary, on both IO drivers, with a
//! throwaway PostgreSQL behind it and stock `psql` in front:
//! - a real OpenID provider (the certified `oidc-provider` npm package, fixture in
//!   `dataplane/tests/oidc`) found by discovery: a client-credentials token connects as the
//!   service account, and after the provider rotates its key a token signed by the new key
//!   connects without restarting the gateway;
//! - every kind of invalid token (built here, signed with the local issuer's key where the
//!   signature must verify) is refused with a clear message and SQLSTATE, the gateway keeps
//!   serving, and each refusal is an `auth_failed` session with the reason, the presented
//!   subject and the client address, while no token text reaches any recording (Arrow or
//!   Parquet, decoded values and raw bytes);
//! - a token that expires mid-session stops the next statement, and that is recorded.
//!
//! Needs psql, node and `npm ci --prefix dataplane/tests/oidc` (scripts/test installs them):
//! skipped locally without them, failing in CI.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration test: a failed step is a failed test"
)]

mod common;
#[path = "identity_gateway/harness.rs"]
mod harness;
#[path = "../../dataplane/tests/support/pgcluster.rs"]
mod pgcluster;
#[path = "identity_gateway/provider.rs"]
mod provider;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::DRIVERS;
use harness::{
    Raw, Setup, assert_not_recorded, assert_serves, b64, commands, error_of, now, psql,
    recorded_everything, sessions, stop, text,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgcluster::PgCluster;
use provider::{CLIENT_ID, Provider, free_port, kid_of, provider_available};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The local issuer and the invalid tokens.

/// Signs `claims` with the local issuer's Ed25519 key under `kid`.
fn sign(setup: &Setup, kid: &str, claims: &Value) -> String {
    let pem = std::fs::read(setup.path("issuer/signing-key.pem")).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_pem(&pem).unwrap()).unwrap()
}

/// Signs `payload` as it is (not necessarily json) with the local issuer's key under `kid`.
fn sign_raw(setup: &Setup, kid: &str, payload: &[u8]) -> String {
    let pem = std::fs::read(setup.path("issuer/signing-key.pem")).unwrap();
    let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#);
    let signed = format!("{}.{}", b64(header.as_bytes()), b64(payload));
    let key = EncodingKey::from_ed_pem(&pem).unwrap();
    let signature = jsonwebtoken::crypto::sign(signed.as_bytes(), &key, Algorithm::EdDSA).unwrap();
    format!("{signed}.{signature}")
}

/// Claims the local gateway accepts, for `sub`.
fn good_claims(sub: &str) -> Value {
    let t = now();
    json!({
        "iss": "portcullis-local", "aud": "portcullis", "sub": sub,
        "email": format!("{sub}@corp.example"), "groups": ["engineering"],
        "iat": t, "nbf": t, "exp": t + 900,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// One invalid token: what it is, its audit kind, the token, what the client's message must
/// say, and the subject the audit record must carry when the payload is readable.
struct Bad {
    name: &'static str,
    /// The stable reason recorded in front of the message.
    kind: &'static str,
    token: String,
    says: &'static str,
    subject: Option<&'static str>,
}

fn bad_tokens(setup: &Setup) -> Vec<Bad> {
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(setup.path("issuer/jwks.json")).unwrap())
            .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let public_x = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let t = now();
    let unsigned = |header: Value, claims: Value, sig: &str| {
        format!(
            "{}.{}.{sig}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    };

    // The payload of one valid token under the signature of another.
    let a = sign(setup, &kid, &good_claims("case-bad-signature"));
    let b = sign(setup, &kid, &good_claims("someone-else"));
    let bad_signature = format!(
        "{}.{}",
        a.rsplit_once('.').unwrap().0,
        b.rsplit_once('.').unwrap().1
    );
    // HS256 keyed with the issuer's public key bytes: the classic RS/HS confusion.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let hs_confusion = jsonwebtoken::encode(
        &hs,
        &good_claims("case-hs-confusion"),
        &EncodingKey::from_secret(&public_x),
    )
    .unwrap();
    let padding = "p".repeat(20 * 1024);

    vec![
        Bad {
            name: "bad signature",
            kind: "bad_signature",
            token: bad_signature,
            says: "signature does not verify",
            subject: Some("case-bad-signature"),
        },
        Bad {
            name: "wrong iss",
            kind: "wrong_issuer",
            token: sign(
                setup,
                &kid,
                &with(
                    good_claims("case-wrong-iss"),
                    "iss",
                    json!("https://evil.example"),
                ),
            ),
            says: "issuer `https://evil.example` is not trusted",
            subject: Some("case-wrong-iss"),
        },
        Bad {
            name: "wrong aud",
            kind: "wrong_audience",
            token: sign(
                setup,
                &kid,
                &with(
                    good_claims("case-wrong-aud"),
                    "aud",
                    json!("another-service"),
                ),
            ),
            says: "audience does not include this gateway",
            subject: Some("case-wrong-aud"),
        },
        Bad {
            name: "expired",
            kind: "expired",
            token: sign(
                setup,
                &kid,
                &with(good_claims("case-expired"), "exp", json!(t - 120)),
            ),
            says: "token expired at",
            subject: Some("case-expired"),
        },
        Bad {
            name: "not yet valid",
            kind: "not_yet_valid",
            token: sign(
                setup,
                &kid,
                &with(good_claims("case-nbf"), "nbf", json!(t + 3600)),
            ),
            says: "not valid before",
            subject: Some("case-nbf"),
        },
        Bad {
            name: "alg none",
            kind: "alg_not_allowed",
            token: unsigned(
                json!({"alg": "none", "typ": "JWT", "kid": kid}),
                good_claims("case-alg-none"),
                "",
            ),
            says: "algorithm `none` is not allowed",
            subject: Some("case-alg-none"),
        },
        Bad {
            name: "HS256 with the public key",
            kind: "alg_not_allowed",
            token: hs_confusion,
            says: "algorithm `HS256` is not allowed",
            subject: Some("case-hs-confusion"),
        },
        Bad {
            name: "kid of another key type",
            kind: "alg_not_allowed",
            token: unsigned(
                json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
                good_claims("case-kid-type"),
                "c2lnbmF0dXJlLWZvci1hbm90aGVyLWtleS10eXBl",
            ),
            says: "token algorithm `ES256` does not match key",
            subject: Some("case-kid-type"),
        },
        Bad {
            name: "unknown kid",
            kind: "unknown_kid",
            token: sign(setup, "no-such-key", &good_claims("case-unknown-kid")),
            says: "key id `no-such-key` is not in the issuer's key set",
            subject: Some("case-unknown-kid"),
        },
        Bad {
            name: "oversized",
            kind: "oversized",
            token: sign(
                setup,
                &kid,
                &with(good_claims("case-oversized"), "pad", json!(padding)),
            ),
            says: "over the 16384-byte limit",
            subject: None,
        },
        Bad {
            name: "malformed base64",
            kind: "malformed",
            token: format!(
                "{}.not*base64*at*all.c2lnbmF0dXJlLW9mLWEtbWFsZm9ybWVkLXRva2Vu",
                b64(br#"{"alg":"EdDSA"}"#)
            ),
            says: "token is malformed: payload is not base64url",
            subject: None,
        },
        Bad {
            name: "malformed json payload",
            kind: "malformed",
            token: sign_raw(setup, &kid, br#"{"sub": "case-json", "exp": oops"#),
            says: "token is malformed: payload is not a json object",
            subject: None,
        },
        Bad {
            name: "malformed json header",
            kind: "malformed",
            token: format!(
                "{}.{}.c2lnbmF0dXJlLW9mLWJyb2tlbi1qc29uLWhlYWRlcg",
                b64(br#"{"alg": EdDSA"#),
                b64(good_claims("case-json-header").to_string().as_bytes())
            ),
            says: "token is malformed: header is not a json object",
            subject: Some("case-json-header"),
        },
    ]
}

#[test]
fn every_invalid_token_is_refused_recorded_and_never_stored() {
    if common::require("psql").is_none() {
        return;
    }
    let cluster = PgCluster::start();
    for driver in DRIVERS {
        let setup = Setup::new("engineering");
        let identity = format!(
            "issuer = \"portcullis-local\"\naudience = \"portcullis\"\njwks = {{ file = \"{}\" }}\nleeway_secs = 0",
            setup.path("issuer/jwks.json").display()
        );
        let mut gw = setup.gateway(driver, &cluster, &identity);
        let (tls, plain) = (gw.addr("orders-db"), gw.addr("orders-plain"));
        let jwks: Value =
            serde_json::from_str(&std::fs::read_to_string(setup.path("issuer/jwks.json")).unwrap())
                .unwrap();
        let good = sign(
            &setup,
            jwks["keys"][0]["kid"].as_str().unwrap(),
            &good_claims("alice"),
        );
        assert_serves(tls, &good, driver);

        let bad = bad_tokens(&setup);
        let mut raw_addrs = Vec::new();
        for case in &bad {
            let what = format!("{driver}: {}", case.name);
            // psql over TLS: refused, and the message names the problem.
            let out = psql(tls, &case.token, "SELECT 1");
            assert!(!out.status.success(), "{what}: accepted");
            let err = text(&out.stderr);
            assert!(
                err.contains("token authentication failed") && err.contains(case.says),
                "{what}: psql says {err}"
            );
            assert!(
                !err.contains(&case.token),
                "{what}: token echoed to the client"
            );
            // The raw client sees the exact ErrorResponse: FATAL, 28P01, the same message.
            let mut raw = Raw::connect(plain, &case.token);
            raw_addrs.push(raw.local_addr().to_string());
            let (answer, closed) = raw.until_ready();
            let (severity, code, message) =
                error_of(&answer).unwrap_or_else(|| panic!("{what}: no error in {answer:?}"));
            assert_eq!(
                (severity.as_str(), code.as_str()),
                ("FATAL", "28P01"),
                "{what}"
            );
            assert!(message.contains(case.says), "{what}: {message}");
            assert!(closed, "{what}: the connection stays open after the FATAL");
            // And the gateway keeps serving.
            assert_serves(tls, &good, &what);
        }

        // A token that expires mid-session: the first statement runs, the next one after
        // expiry gets a FATAL telling the caller to reconnect, and the connection closes.
        // Long enough for a login on a loaded machine; the wait below is from `exp`, not fixed.
        let exp = now() + 8;
        let brief = sign(
            &setup,
            jwks["keys"][0]["kid"].as_str().unwrap(),
            &with(good_claims("case-mid-session"), "exp", json!(exp)),
        );
        let mut raw = Raw::connect(plain, &brief);
        let (greeting, closed) = raw.until_ready();
        assert!(
            !closed && error_of(&greeting).is_none(),
            "{driver}: {greeting:?}"
        );
        raw.send_query("SELECT 'still valid'");
        let (answer, _) = raw.until_ready();
        assert_eq!(error_of(&answer), None, "{driver}: {answer:?}");
        assert!(
            now() < exp,
            "{driver}: the login took past the token's expiry"
        );
        while now() <= exp {
            std::thread::sleep(Duration::from_millis(100));
        }
        raw.send_query("SELECT 'after expiry'");
        let (answer, closed) = raw.until_ready();
        let (severity, code, message) = error_of(&answer).expect("an error after expiry");
        assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "28P01"));
        assert!(
            message.contains("reconnect with a fresh token"),
            "{driver}: {message}"
        );
        assert!(closed, "{driver}: session still open after expiry");
        assert!(
            !cluster.log().contains("after expiry"),
            "{driver}: a statement ran after the token expired"
        );
        assert_serves(tls, &good, driver);

        stop(&mut gw, driver);
        let root = setup.recordings();
        let rows = sessions(&root);
        for (case, raw_addr) in bad.iter().zip(&raw_addrs) {
            let failed: Vec<_> = rows
                .iter()
                .filter(|s| {
                    s.outcome == "auth_failed"
                        && s.outcome_reason
                            .as_deref()
                            .is_some_and(|r| r.contains(case.says))
                })
                .collect();
            // One for psql, one for the raw client.
            assert!(
                failed.len() >= 2,
                "{driver}: {}: {} auth_failed sessions: {rows:?}",
                case.name,
                failed.len()
            );
            // The raw client's row names its exact address.
            assert!(
                failed
                    .iter()
                    .any(|s| &s.client_addr == raw_addr && s.connection == "orders-plain"),
                "{driver}: {}: no row from {raw_addr}: {failed:?}",
                case.name
            );
            for s in &failed {
                let reason = s.outcome_reason.as_deref().unwrap_or_default();
                assert!(
                    reason.starts_with(&format!("{}: ", case.kind)),
                    "{driver}: {}: {reason}",
                    case.name
                );
                assert!(s.client_addr.starts_with("127.0.0.1:"), "{driver}: {s:?}");
                assert!(s.connection.starts_with("orders-"), "{s:?}");
                if let Some(sub) = case.subject {
                    assert_eq!(s.subject, sub, "{driver}: {}", case.name);
                } else {
                    assert_eq!(s.subject, "", "{driver}: {}", case.name);
                }
                assert!(s.email.is_none() && s.groups.is_empty(), "{s:?}");
            }
        }
        // The expiry mid-session: a `token_expired` command refused, and the session's end.
        let cmds = commands(&root);
        let expired = cmds
            .iter()
            .find(|c| c.subject == "case-mid-session" && c.action == "token_expired")
            .unwrap_or_else(|| panic!("{driver}: expiry not recorded: {cmds:?}"));
        assert_eq!(expired.decision, "deny");
        assert!(
            expired
                .error
                .as_deref()
                .is_some_and(|e| e.contains("reconnect with a fresh token")),
            "{expired:?}"
        );
        let session = rows
            .iter()
            .find(|s| s.subject == "case-mid-session")
            .expect("the expired session is recorded");
        assert_eq!(session.outcome, "error", "{driver}: {session:?}");
        assert!(
            session
                .outcome_reason
                .as_deref()
                .is_some_and(|r| r.contains("token has expired")),
            "{driver}: {session:?}"
        );

        // No token, nor its signature, anywhere in what was recorded.
        let (values, raw) = recorded_everything(&root);
        // The search can find things: a presented subject is there, decoded and as raw bytes
        // (Arrow segments are not compressed).
        assert!(values.iter().any(|v| v.contains("case-bad-signature")));
        assert!(
            raw.iter()
                .any(|f| f.windows(18).any(|w| w == b"case-bad-signature"))
        );
        for (secret, what) in bad
            .iter()
            .map(|b| (b.token.as_str(), b.name))
            .chain([(good.as_str(), "valid"), (brief.as_str(), "mid-session")])
        {
            assert_not_recorded(&values, &raw, secret, &format!("{driver}: {what}"));
            let signature = secret.rsplit('.').next().unwrap_or_default();
            if signature.len() >= 16 {
                assert_not_recorded(
                    &values,
                    &raw,
                    signature,
                    &format!("{driver}: {what} signature"),
                );
            }
        }
    }
}

#[test]
fn real_provider_token_connects_and_key_rotation_needs_no_restart() {
    if common::require("psql").is_none() || !provider_available() {
        return;
    }
    let cluster = PgCluster::start();
    for driver in DRIVERS {
        let port = free_port();
        let mut provider = Provider::start(port, &format!("{driver}-rsa"), "RS256");
        // The provider puts the granted scopes in `scope`: they are the service's groups.
        let setup = Setup::new("db");
        let identity = format!(
            "issuer = \"{}\"\naudience = \"portcullis\"\njwks = \"discovery\"\ngroups_claim = \"scope\"\nmin_refresh_secs = 1",
            provider.issuer
        );
        let mut gw = setup.gateway(driver, &cluster, &identity);
        let tls = gw.addr("orders-db");

        let first = provider.client_credentials_token();
        let out = psql(tls, &first, "SELECT 'agent ran this'");
        assert!(out.status.success(), "{driver}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "agent ran this");

        // Rotation: the provider restarts on the same port with only a new key of another
        // type. The gateway picks it up through its unknown-`kid` refresh, no restart.
        drop(provider);
        provider = Provider::start(port, &format!("{driver}-ec"), "ES256");
        let rotated = provider.client_credentials_token();
        assert_eq!(kid_of(&rotated), format!("{driver}-ec"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut refused = 0;
        loop {
            let out = psql(tls, &rotated, "SELECT 'after rotation'");
            if out.status.success() {
                assert_eq!(text(&out.stdout).trim(), "after rotation");
                break;
            }
            let err = text(&out.stderr);
            assert!(
                err.contains("is not in the issuer's key set"),
                "{driver}: {err}"
            );
            refused += 1;
            assert!(
                Instant::now() < deadline,
                "{driver}: the rotated key was not picked up within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The old key left the provider's set: its token is refused now, cached or not.
        let out = psql(tls, &first, "SELECT 1");
        assert!(
            !out.status.success(),
            "{driver}: the retired key still works"
        );
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("key id `{driver}-rsa` is not in")),
            "{driver}: {err}"
        );
        drop(provider);

        stop(&mut gw, driver);
        let rows = sessions(&setup.recordings());
        let agent: Vec<_> = rows
            .iter()
            .filter(|s| s.subject == CLIENT_ID && s.outcome == "ok")
            .collect();
        assert_eq!(agent.len(), 2, "{driver}: {rows:?}");
        assert!(agent.iter().all(|s| s.groups == ["db"]), "{agent:?}");
        let failed = rows
            .iter()
            .filter(|s| s.outcome == "auth_failed" && s.subject == CLIENT_ID)
            .count();
        assert_eq!(failed, refused + 1, "{driver}: {rows:?}");
        let cmds = commands(&setup.recordings());
        for sql in ["SELECT 'agent ran this'", "SELECT 'after rotation'"] {
            let c = cmds
                .iter()
                .find(|c| c.text.as_deref() == Some(sql))
                .unwrap_or_else(|| panic!("{driver}: `{sql}` not recorded: {cmds:?}"));
            assert_eq!(c.subject, CLIENT_ID);
            assert_eq!(c.decision, "allow");
        }
    }
}
