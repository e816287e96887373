//! The local issuer behind `portcullis token keygen|mint`: an Ed25519 or P-256 signing key, its
//! JWKS, and tokens signed with it, so demos, tests and air-gapped appliances need no external
//! identity provider.
//!
//! Not a production identity provider: no login, no revocation, no refresh tokens. Whoever can
//! read the private key can mint any identity, which is why it is written mode 0600.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::UnixSeconds;
use super::error::IssuerError;

/// File name of the private key `keygen` writes.
pub const KEY_FILE: &str = "signing-key.pem";
/// File name of the JWKS `keygen` writes.
pub const JWKS_FILE: &str = "jwks.json";
/// Default `iss` of locally minted tokens.
pub const LOCAL_ISSUER: &str = "portcullis-local";
/// Default `aud` of locally minted tokens.
pub const LOCAL_AUDIENCE: &str = "portcullis";
/// Largest PEM file `mint` reads: a PKCS#8 Ed25519 or P-256 key is a few hundred bytes.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

/// The local issuer's signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// EdDSA over Ed25519 (the default: small, fast, deterministic signatures).
    Ed25519,
    /// ECDSA over P-256 with SHA-256, for verifiers that lack EdDSA.
    Es256,
}

impl std::str::FromStr for KeyAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" | "eddsa" => Ok(KeyAlg::Ed25519),
            "es256" | "p-256" | "p256" => Ok(KeyAlg::Es256),
            _ => Err(format!(
                "`{s}` is not a key algorithm: use ed25519 or es256"
            )),
        }
    }
}

enum Signer {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
}

impl Signer {
    fn from_pkcs8(der: &[u8], path: &str) -> Result<Signer, IssuerError> {
        if let Ok(k) = Ed25519KeyPair::from_pkcs8(der) {
            return Ok(Signer::Ed(k));
        }
        EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map(Signer::Ec)
            .map_err(|_| IssuerError::BadKey(path.to_owned()))
    }

    /// The public JWK, without `kid`.
    fn public_jwk(&self) -> Result<serde_json::Map<String, Value>, IssuerError> {
        let v = match self {
            Signer::Ed(k) => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(k.public_key().as_ref()),
            }),
            Signer::Ec(k) => {
                // Uncompressed point: 0x04 || x || y, 32 bytes each for P-256.
                let point = k.public_key().as_ref();
                let (x, y) = match point {
                    [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
                    _ => return Err(IssuerError::Crypto),
                };
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(x),
                    "y": URL_SAFE_NO_PAD.encode(y),
                })
            }
        };
        match v {
            Value::Object(m) => Ok(m),
            _ => Err(IssuerError::Crypto),
        }
    }

    /// RFC 7638 thumbprint: the `kid`, stable for a given key, so `mint` needs only the private
    /// key to name it.
    fn kid(&self) -> Result<String, IssuerError> {
        let jwk = self.public_jwk()?;
        // serde_json's map is ordered by key, which is exactly the member order RFC 7638 needs.
        let canonical = serde_json::to_vec(&jwk)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical);
        Ok(URL_SAFE_NO_PAD.encode(digest.as_ref()))
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Ed(_) => "EdDSA",
            Signer::Ec(_) => "ES256",
        }
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IssuerError> {
        match self {
            Signer::Ed(k) => Ok(k.sign(msg).as_ref().to_vec()),
            Signer::Ec(k) => k
                .sign(&SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| IssuerError::Sign),
        }
    }

    fn jwks(&self) -> Result<Value, IssuerError> {
        let mut jwk = self.public_jwk()?;
        jwk.insert("kid".to_owned(), Value::String(self.kid()?));
        jwk.insert("alg".to_owned(), Value::String(self.alg().to_owned()));
        jwk.insert("use".to_owned(), Value::String("sig".to_owned()));
        Ok(json!({ "keys": [Value::Object(jwk)] }))
    }
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

fn pem_decode(text: &str) -> Option<Vec<u8>> {
    let start = text.find("-----BEGIN PRIVATE KEY-----")?;
    let body = text.get(start..)?.lines().skip(1);
    let mut b64 = String::new();
    for line in body {
        if line.starts_with("-----END PRIVATE KEY-----") {
            return STANDARD.decode(b64.as_bytes()).ok();
        }
        b64.push_str(line.trim());
    }
    None
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> IssuerError {
    move |source| IssuerError::Io { context, source }
}

/// What `keygen` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeygenOutput {
    /// The private key, PKCS#8 PEM, mode 0600.
    pub key_path: PathBuf,
    /// The JWKS to configure as `jwks = { file = "..." }`.
    pub jwks_path: PathBuf,
    /// The key id tokens will carry.
    pub kid: String,
}

/// Generates a signing key in `dir` (created if missing) and writes its JWKS beside it. Refuses
/// to overwrite an existing key.
pub fn keygen(dir: &Path, alg: KeyAlg) -> Result<KeygenOutput, IssuerError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating `{}`", dir.display())))?;
    let rng = SystemRandom::new();
    let der = match alg {
        // PKCS#8 v1: the form `openssl genpkey` writes and every tool reads.
        KeyAlg::Ed25519 => Ed25519KeyPair::generate_pkcs8v1(&rng),
        KeyAlg::Es256 => EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng),
    }
    .map_err(|_| IssuerError::Crypto)?;
    let key_path = dir.join(KEY_FILE);
    let signer = Signer::from_pkcs8(der.as_ref(), &key_path.display().to_string())?;

    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&key_path).map_err(io_err(format!(
        "creating `{}` (an existing key is never overwritten)",
        key_path.display()
    )))?;
    f.write_all(pem_encode(der.as_ref()).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("writing `{}`", key_path.display())))?;

    let jwks_path = dir.join(JWKS_FILE);
    let jwks = serde_json::to_vec_pretty(&signer.jwks()?)?;
    std::fs::write(&jwks_path, jwks)
        .map_err(io_err(format!("writing `{}`", jwks_path.display())))?;
    Ok(KeygenOutput {
        key_path,
        jwks_path,
        kid: signer.kid()?,
    })
}

/// The claims of a token to mint.
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub ttl: Duration,
    pub audience: String,
    pub issuer: String,
    /// A service account: adds `client_id` equal to the subject, which the verifier reads as a
    /// client-credentials token.
    pub service: bool,
}

impl MintRequest {
    /// A request with the local issuer's defaults: 15 minutes, `aud` [`LOCAL_AUDIENCE`],
    /// `iss` [`LOCAL_ISSUER`].
    pub fn new(subject: impl Into<String>) -> Self {
        MintRequest {
            subject: subject.into(),
            email: None,
            groups: Vec::new(),
            ttl: Duration::from_secs(15 * 60),
            audience: LOCAL_AUDIENCE.to_owned(),
            issuer: LOCAL_ISSUER.to_owned(),
            service: false,
        }
    }
}

/// Mints a token signed with the PKCS#8 PEM key in `key_pem`, issued at `now`.
pub fn mint_with_pem(
    key_pem: &str,
    key_name: &str,
    req: &MintRequest,
    now: UnixSeconds,
) -> Result<String, IssuerError> {
    let der = pem_decode(key_pem).ok_or_else(|| IssuerError::BadKey(key_name.to_owned()))?;
    let signer = Signer::from_pkcs8(&der, key_name)?;
    let ttl = i64::try_from(req.ttl.as_secs()).unwrap_or(i64::MAX);
    let mut jti = [0u8; 16];
    SystemRandom::new()
        .fill(&mut jti)
        .map_err(|_| IssuerError::Crypto)?;
    let mut claims = json!({
        "iss": req.issuer,
        "aud": req.audience,
        "sub": req.subject,
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(ttl),
        "jti": URL_SAFE_NO_PAD.encode(jti),
    });
    if let Value::Object(m) = &mut claims {
        if let Some(e) = &req.email {
            m.insert("email".to_owned(), Value::String(e.clone()));
        }
        if !req.groups.is_empty() {
            m.insert("groups".to_owned(), json!(req.groups));
        }
        if req.service {
            m.insert("client_id".to_owned(), Value::String(req.subject.clone()));
        }
    }
    let header = json!({ "alg": signer.alg(), "typ": "JWT", "kid": signer.kid()? });
    let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?));
    let signature = signer.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(token)
}

/// Mints a token signed with the key file at `key_path`, issued now.
pub fn mint(key_path: &Path, req: &MintRequest) -> Result<String, IssuerError> {
    let name = key_path.display().to_string();
    let meta = std::fs::metadata(key_path).map_err(io_err(format!("reading `{name}`")))?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(IssuerError::BadKey(name));
    }
    let pem = std::fs::read_to_string(key_path).map_err(io_err(format!("reading `{name}`")))?;
    mint_with_pem(&pem, &name, req, super::now_unix())
}

/// Parses a token lifetime: `90s`, `15m`, `12h`, `7d`, or bare seconds.
pub fn parse_ttl(s: &str) -> Result<Duration, IssuerError> {
    let bad = || IssuerError::BadTtl(s.to_owned());
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (s.get(..i).ok_or_else(bad)?, s.get(i..).ok_or_else(bad)?),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_ttl("30").unwrap(), Duration::from_secs(30));
        for bad in ["", "m", "15x", "-1m", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pem_round_trip() {
        let der = vec![1u8, 2, 3, 250, 251, 252];
        assert_eq!(pem_decode(&pem_encode(&der)).unwrap(), der);
        assert!(pem_decode("not a pem").is_none());
    }
}
