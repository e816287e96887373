//! Token verification: a compact JWS in, an [`Identity`] or an [`AuthError`] out.
//!
//! Order of checks: size limit, shape, header, base64url of every part, algorithm against the
//! key (never the token's word alone), signature, then the payload's json, the claims (`iss`,
//! `aud`, `exp`, `nbf`, `iat` with leeway) and the identity claims. Nothing about the payload is
//! trusted before the signature verifies, except [`presented_subject`], which is for audit of
//! failures only.
//!
//! Not here: the per-core cache (see `cache`, used through [`Verifier::verify_cached`]) and key
//! fetching (see `refresh`). The verifier never blocks: an unknown `kid` asks the control thread
//! for a refresh and fails this attempt.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;

use super::cache::TokenCache;
use super::config::IdentityConfig;
use super::error::{AuthError, quote};
use super::jwks::{Alg, KeyStore};
use super::refresh::RefreshHandle;
use super::{Identity, IdentityKind, UnixSeconds};

/// Most groups taken from one token; more is refused rather than truncated, so policy never
/// sees a silently partial group list.
pub const MAX_GROUPS: usize = 256;
/// Longest subject, email or group name accepted, in bytes.
pub const MAX_CLAIM_BYTES: usize = 1024;

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

/// The three parts of a compact JWS, borrowed from the token.
struct Parts<'a> {
    header: &'a [u8],
    payload: &'a [u8],
    signature: &'a [u8],
    /// `header.payload`: what the signature covers.
    signed: &'a [u8],
}

fn split(token: &[u8]) -> Result<Parts<'_>, AuthError> {
    let shape = AuthError::Malformed("expected three base64url parts separated by `.`");
    let first = memchr::memchr(b'.', token).ok_or(shape.clone())?;
    let rest = token.get(first.saturating_add(1)..).ok_or(shape.clone())?;
    let second_rel = memchr::memchr(b'.', rest).ok_or(shape.clone())?;
    let second = first.saturating_add(1).saturating_add(second_rel);
    let signature = token.get(second.saturating_add(1)..).ok_or(shape.clone())?;
    if memchr::memchr(b'.', signature).is_some() {
        // Five parts is JWE: an encrypted token the gateway cannot read.
        return Err(shape);
    }
    Ok(Parts {
        header: token.get(..first).ok_or(shape.clone())?,
        payload: rest.get(..second_rel).ok_or(shape.clone())?,
        signature,
        signed: token.get(..second).ok_or(shape)?,
    })
}

fn decode(part: &[u8], what: &'static str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed(what))
}

fn decode_payload(part: &[u8]) -> Result<serde_json::Map<String, Value>, AuthError> {
    parse_claims(&decode(part, "payload is not base64url")?)
}

fn parse_claims(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, AuthError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(AuthError::Malformed("payload is not a json object")),
    }
}

/// Looks up a claim by name, then by dotted path (`realm_access.roles`). The whole name is tried
/// first because namespaced claims (`https://example.com/groups`) contain dots.
fn claim<'a>(claims: &'a serde_json::Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn bounded_str(v: &str, name: &str) -> Result<String, AuthError> {
    if v.len() > MAX_CLAIM_BYTES {
        return Err(AuthError::ClaimTooLarge(quote(name)));
    }
    Ok(v.to_owned())
}

/// JWT numeric dates may be fractional; the fraction is dropped (toward the past for `exp`,
/// which can only make a token expire sooner).
fn numeric_date(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f.floor() as i64)
    })
}

fn groups_of(v: Option<&Value>, name: &str) -> Result<Vec<String>, AuthError> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |g: &str| -> Result<(), AuthError> {
        if g.is_empty() || out.iter().any(|o| o == g) {
            return Ok(());
        }
        if out.len() >= MAX_GROUPS {
            return Err(AuthError::ClaimTooLarge(quote(name)));
        }
        out.push(bounded_str(g, name)?);
        Ok(())
    };
    match v {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            for g in s.split_ascii_whitespace() {
                push(g)?;
            }
        }
        Some(Value::Array(items)) => {
            for item in items {
                // Non-string entries (some issuers put objects here) are not group names.
                if let Some(g) = item.as_str() {
                    push(g)?;
                }
            }
        }
        Some(_) => return Err(AuthError::MissingClaim(quote(name))),
    }
    Ok(out)
}

/// Whether a service-marker claim marks a service account: equal to (or, for an array,
/// containing) `expected` when given, otherwise `true` or a non-empty string other than `false`.
fn marks_service(v: Option<&Value>, expected: Option<&str>) -> bool {
    if let Some(want) = expected {
        return match v {
            Some(Value::String(s)) => s == want,
            Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(want)),
            _ => false,
        };
    }
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !s.is_empty() && s != "false",
        _ => false,
    }
}

/// The subject claimed by an unverified token, for the audit record of a failed authentication.
/// Best effort: `None` when the token cannot be decoded. Never returns the token itself; the
/// value is truncated and stripped of control characters.
pub fn presented_subject(
    token: &[u8],
    subject_claim: &str,
    max_token_bytes: usize,
) -> Option<String> {
    if token.len() > max_token_bytes {
        return None;
    }
    let parts = split(token).ok()?;
    let claims = decode_payload(parts.payload).ok()?;
    claim(&claims, subject_claim)
        .and_then(Value::as_str)
        .map(quote)
}

struct Inner {
    cfg: IdentityConfig,
    leeway: i64,
    keys: Arc<KeyStore>,
    refresh: Option<RefreshHandle>,
}

/// Verifies tokens from one issuer. Cheap to clone; `Send + Sync`: every worker holds a clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.inner.cfg.issuer)
            .field("audience", &self.inner.cfg.audience)
            .finish()
    }
}

impl Verifier {
    /// A verifier reading keys from `keys`. Without [`Verifier::with_refresh`], an unknown `kid`
    /// simply fails.
    pub fn new(cfg: IdentityConfig, keys: Arc<KeyStore>) -> Self {
        let leeway = i64::try_from(cfg.leeway_secs).unwrap_or(i64::MAX);
        Verifier {
            inner: Arc::new(Inner {
                cfg,
                leeway,
                keys,
                refresh: None,
            }),
        }
    }

    /// A verifier that asks the control thread to refresh keys when a token names an unknown
    /// `kid` (rate limited there).
    pub fn with_refresh(cfg: IdentityConfig, keys: Arc<KeyStore>, refresh: RefreshHandle) -> Self {
        let leeway = i64::try_from(cfg.leeway_secs).unwrap_or(i64::MAX);
        Verifier {
            inner: Arc::new(Inner {
                cfg,
                leeway,
                keys,
                refresh: Some(refresh),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &IdentityConfig {
        &self.inner.cfg
    }

    /// The key store this verifier reads.
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.inner.keys
    }

    /// The subject an unverified token claims, for audit of a failed authentication.
    pub fn presented_subject(&self, token: &[u8]) -> Option<String> {
        presented_subject(
            token,
            &self.inner.cfg.subject_claim,
            self.inner.cfg.max_token_bytes,
        )
    }

    /// Verifies `token` at time `now`, through the worker's cache: a token verified before and
    /// not yet expired costs one hash lookup and a comparison.
    pub fn verify_cached(
        &self,
        cache: &mut TokenCache,
        token: &[u8],
        now: UnixSeconds,
    ) -> Result<Arc<Identity>, AuthError> {
        let generation = self.inner.keys.generation();
        if let Some(id) = cache.get(token, now, generation) {
            return Ok(id);
        }
        if token.len() > self.inner.cfg.max_token_bytes {
            return Err(AuthError::Oversized {
                len: token.len(),
                limit: self.inner.cfg.max_token_bytes,
            });
        }
        let id = Arc::new(self.verify(token, now)?);
        let valid_until = id.expires_at.saturating_add(self.inner.leeway);
        cache.insert(token, Arc::clone(&id), now, valid_until, generation);
        Ok(id)
    }

    /// Verifies `token` at time `now` (see [`super::now_unix`]), without any cache.
    pub fn verify(&self, token: &[u8], now: UnixSeconds) -> Result<Identity, AuthError> {
        let cfg = &self.inner.cfg;
        if token.len() > cfg.max_token_bytes {
            return Err(AuthError::Oversized {
                len: token.len(),
                limit: cfg.max_token_bytes,
            });
        }
        let parts = split(token)?;
        let header_bytes = decode(parts.header, "header is not base64url")?;
        let header: Header = serde_json::from_slice(&header_bytes)
            .map_err(|_| AuthError::Malformed("header is not a json object with `alg`"))?;
        if header.crit.is_some() {
            // No extension is understood, so any critical one must be refused (RFC 7515 4.1.11).
            return Err(AuthError::Malformed("header names critical extensions"));
        }
        let alg = Alg::from_name(&header.alg)
            .ok_or_else(|| AuthError::AlgNotAllowed(quote(&header.alg)))?;
        let signature = decode(parts.signature, "signature is not base64url")?;
        // Decoded (not parsed) before the signature check, so a token whose payload is not even
        // base64url is reported as malformed rather than as a bad signature.
        let payload = decode(parts.payload, "payload is not base64url")?;

        let keys = self.inner.keys.snapshot();
        if keys.is_empty() {
            return Err(AuthError::NoKeys);
        }
        match header.kid.as_deref() {
            Some(kid) => {
                let Some(key) = keys.find(kid) else {
                    if let Some(r) = &self.inner.refresh {
                        r.request_refresh();
                    }
                    return Err(AuthError::UnknownKid(quote(kid)));
                };
                let parsed = key.for_alg(alg).ok_or_else(|| AuthError::KeyAlgMismatch {
                    alg: alg.name().to_owned(),
                    kid: quote(kid),
                })?;
                parsed
                    .verify_sig(parts.signed, &signature)
                    .map_err(|_| AuthError::BadSignature)?;
            }
            None => {
                // Without a `kid`, any key that may verify this algorithm is tried; the key set
                // is bounded by MAX_JWKS_KEYS, so this is bounded work.
                let mut candidates = keys.keys().iter().filter_map(|k| k.for_alg(alg)).peekable();
                if candidates.peek().is_none() {
                    return Err(AuthError::AlgNotAllowed(alg.name().to_owned()));
                }
                if !candidates.any(|k| k.verify_sig(parts.signed, &signature).is_ok()) {
                    return Err(AuthError::BadSignature);
                }
            }
        }

        let claims = parse_claims(&payload)?;
        self.check_claims(&claims, now)
    }

    fn check_claims(
        &self,
        claims: &serde_json::Map<String, Value>,
        now: UnixSeconds,
    ) -> Result<Identity, AuthError> {
        let cfg = &self.inner.cfg;
        let leeway = self.inner.leeway;

        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::MissingClaim("iss".to_owned()))?;
        if iss != cfg.issuer {
            return Err(AuthError::WrongIssuer(quote(iss)));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => cfg.audience.iter().any(|c| c == a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| cfg.audience.iter().any(|c| c == a)),
            _ => false,
        };
        if !aud_ok {
            return Err(AuthError::WrongAudience);
        }
        let exp = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or_else(|| AuthError::MissingClaim("exp".to_owned()))?;
        if now >= exp.saturating_add(leeway) {
            return Err(AuthError::Expired { exp });
        }
        if let Some(nbf) = claims.get("nbf").and_then(numeric_date)
            && now.saturating_add(leeway) < nbf
        {
            return Err(AuthError::NotYetValid { nbf });
        }
        if let Some(iat) = claims.get("iat").and_then(numeric_date)
            && iat > now.saturating_add(leeway)
        {
            return Err(AuthError::IssuedInFuture { iat });
        }

        let subject = claim(claims, &cfg.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::MissingClaim(quote(&cfg.subject_claim)))?;
        let subject = bounded_str(subject, &cfg.subject_claim)?;
        let email = match claim(claims, &cfg.email_claim).and_then(Value::as_str) {
            Some(e) => Some(bounded_str(e, &cfg.email_claim)?),
            None => None,
        };
        let groups = groups_of(claim(claims, &cfg.groups_claim), &cfg.groups_claim)?;
        let kind = match &cfg.service_claim {
            Some(path) => {
                if marks_service(claim(claims, path), cfg.service_value.as_deref()) {
                    IdentityKind::Service
                } else {
                    IdentityKind::Human
                }
            }
            None => {
                // Client-credentials tokens have no resource owner: the subject is the client
                // itself (RFC 9068 section 2.2), named again in `client_id` or `azp`.
                let is_client = ["client_id", "azp"]
                    .iter()
                    .any(|c| claims.get(*c).and_then(Value::as_str) == Some(subject.as_str()));
                if is_client {
                    IdentityKind::Service
                } else {
                    IdentityKind::Human
                }
            }
        };
        Ok(Identity {
            subject,
            email,
            groups,
            kind,
            expires_at: exp,
            issuer: iss.to_owned(),
        })
    }
}
