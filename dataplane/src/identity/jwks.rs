//! JWKS parsing into pre-parsed public keys, and the [`KeyStore`] snapshot workers read.
//!
//! Each key is parsed once, for each algorithm it may verify, when the key set is loaded, so a
//! cold verification spends its time in the signature check rather than in key decoding. The
//! algorithms a key may verify come from the key: its `alg` when present, otherwise every
//! algorithm of its type and curve. Symmetric (`oct`) keys, encryption keys and unknown key
//! types are skipped: the gateway verifies only with public keys.
//!
//! Not here: fetching (see `refresh`) and the token itself (see `verify`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::error::JwksError;

/// Most keys accepted in one JWKS. Issuers publish a handful (current, next, previous); a set
/// this large is a misconfiguration or an attack on load time.
pub const MAX_JWKS_KEYS: usize = 64;

/// A JWS signature algorithm the gateway verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    /// Every RSA algorithm: what an RSA key without `alg` may verify.
    const RSA: [Alg; 6] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
    ];

    /// The algorithm a JOSE `alg` names, if the gateway supports it. `none` and `HS*` are never
    /// supported.
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn rsa_params(self) -> Option<&'static sig::RsaParameters> {
        // 2048 bits is the floor: smaller RSA keys are refused at verification time.
        Some(match self {
            Alg::Rs256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Alg::Rs384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Alg::Rs512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Alg::Ps256 => &sig::RSA_PSS_2048_8192_SHA256,
            Alg::Ps384 => &sig::RSA_PSS_2048_8192_SHA384,
            Alg::Ps512 => &sig::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

/// One public key, parsed for each algorithm it may verify.
pub struct VerifyKey {
    kid: Option<String>,
    kty: &'static str,
    parsed: Vec<(Alg, ParsedPublicKey)>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kty", &self.kty)
            .field(
                "algs",
                &self
                    .parsed
                    .iter()
                    .map(|(a, _)| a.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl VerifyKey {
    /// The key's `kid`, if it has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The parsed key for `alg`, or `None` when this key may not verify `alg` (another key type,
    /// another curve, or another `alg` pinned by the JWK).
    pub fn for_alg(&self, alg: Alg) -> Option<&ParsedPublicKey> {
        self.parsed.iter().find(|(a, _)| *a == alg).map(|(_, k)| k)
    }
}

/// A loaded key set.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
    skipped: usize,
}

#[derive(Deserialize)]
struct RawJwks {
    /// Kept as raw values so one odd key (a number where a string belongs) is skipped rather
    /// than failing the whole set.
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

fn b64(field: &Option<String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(field.as_deref()?).ok()
}

/// Strips the leading zero bytes some issuers leave on `n`/`e` (the JWK spec forbids them, the
/// crypto library rejects them).
fn unsigned(mut v: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = v {
        v = rest;
    }
    v
}

impl RawJwk {
    /// The parsed key, or `None` for keys the gateway does not use (encryption keys, symmetric
    /// keys, unknown types or curves, undecodable material).
    fn parse(&self) -> Option<VerifyKey> {
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let pinned = match &self.alg {
            Some(name) => Some(Alg::from_name(name)?),
            None => None,
        };
        let (kty, family): (&'static str, Vec<Alg>) = match (self.kty.as_str(), self.crv.as_deref())
        {
            ("RSA", _) => ("RSA", Alg::RSA.to_vec()),
            ("EC", Some("P-256")) => ("EC", vec![Alg::Es256]),
            ("EC", Some("P-384")) => ("EC", vec![Alg::Es384]),
            ("OKP", Some("Ed25519")) => ("OKP", vec![Alg::EdDsa]),
            _ => return None,
        };
        let algs: Vec<Alg> = match pinned {
            Some(a) if family.contains(&a) => vec![a],
            // A JWK whose `alg` contradicts its own type is unusable, not silently re-typed.
            Some(_) => return None,
            None => family,
        };
        let mut parsed = Vec::with_capacity(algs.len());
        for alg in algs {
            let key = match kty {
                "RSA" => {
                    let n = b64(&self.n)?;
                    let e = b64(&self.e)?;
                    let comps = RsaPublicKeyComponents {
                        n: unsigned(&n),
                        e: unsigned(&e),
                    };
                    comps.to_parsed_public_key(alg.rsa_params()?).ok()?
                }
                "EC" => {
                    let x = b64(&self.x)?;
                    let y = b64(&self.y)?;
                    let (verify_alg, len): (&'static dyn sig::VerificationAlgorithm, usize) =
                        if alg == Alg::Es256 {
                            (&sig::ECDSA_P256_SHA256_FIXED, 32)
                        } else {
                            (&sig::ECDSA_P384_SHA384_FIXED, 48)
                        };
                    if x.len() != len || y.len() != len {
                        return None;
                    }
                    let mut point = Vec::with_capacity(1 + 2 * len);
                    point.push(0x04);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    ParsedPublicKey::new(verify_alg, point).ok()?
                }
                _ => {
                    let x = b64(&self.x)?;
                    ParsedPublicKey::new(&sig::ED25519, x).ok()?
                }
            };
            parsed.push((alg, key));
        }
        Some(VerifyKey {
            kid: self.kid.clone(),
            kty,
            parsed,
        })
    }
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`), keeping the usable signing keys. Fails when
    /// none is usable, so a bad document never replaces a good key set.
    pub fn from_jwks_json(bytes: &[u8]) -> Result<KeySet, JwksError> {
        let raw: RawJwks = serde_json::from_slice(bytes)?;
        if raw.keys.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys {
                count: raw.keys.len(),
                limit: MAX_JWKS_KEYS,
            });
        }
        let total = raw.keys.len();
        let keys: Vec<VerifyKey> = raw
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<RawJwk>(v).ok())
            .filter_map(|k| k.parse())
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(KeySet {
            skipped: total.saturating_sub(keys.len()),
            keys,
        })
    }

    /// The usable keys.
    pub fn keys(&self) -> &[VerifyKey] {
        &self.keys
    }

    /// How many keys of the document were skipped as unusable (logged by the refresher).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The key named `kid`.
    pub fn find(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// Whether the set has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The current key set, shared read-only by every worker and replaced whole by the control
/// thread. Readers take the lock only on a cache miss (cold verification), for as long as an
/// `Arc` clone; the cached path reads only [`KeyStore::generation`], an atomic load.
#[derive(Debug, Default)]
pub struct KeyStore {
    current: RwLock<Arc<KeySet>>,
    generation: AtomicU64,
}

impl KeyStore {
    /// An empty store: every verification fails with `no_keys` until the first load.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `set`.
    pub fn with_keys(set: KeySet) -> Self {
        let store = Self::new();
        store.replace(set);
        store
    }

    /// The current key set.
    pub fn snapshot(&self) -> Arc<KeySet> {
        // A poisoned lock still holds a whole `Arc` (writers only swap it), so reading it is safe.
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Replaces the key set; bumps the generation so per-core caches drop identities verified
    /// under the old set (a key removed at the issuer stops working before its tokens expire).
    pub fn replace(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut g) => *g = set,
            Err(p) => *p.into_inner() = set,
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes every time the key set is replaced.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
