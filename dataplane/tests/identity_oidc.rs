//! Interop with a real OpenID provider (the certified `oidc-provider` npm package) on loopback:
//! a real client-credentials POST to its token endpoint, verification with keys found by OIDC
//! discovery, then a key rotation at the provider (restart with a new key set on the same port)
//! picked up by the same verifier through the unknown-`kid` refresh.
//!
//! Needs node and `npm ci --prefix dataplane/tests/oidc`. Without them the test is skipped
//! locally and fails in CI (env `CI` set), saying what to install.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers outside #[test] functions: a panic there is a failing test"
)]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use dataplane::identity::{
    AuthErrorKind, IdentityConfig, IdentityKind, JwksRefresher, JwksSource, KeyStore, TokenCache,
    Verifier, now_unix,
};

const CLIENT_ID: &str = "portcullis-agent";
const CLIENT_SECRET: &str = "agent-secret";
/// Generous: node starting on a loaded 2-core machine can take seconds.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Whether the provider can run here; in CI its absence is a failure, not a skip.
fn provider_available() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let package = fixture_dir()
        .join("node_modules/oidc-provider/package.json")
        .exists();
    if node && package {
        return true;
    }
    let what = if node {
        "the oidc-provider package is not installed"
    } else {
        "node is not installed"
    };
    if std::env::var_os("CI").is_some() {
        panic!(
            "{what}: install node and npm (apt-get install -y nodejs npm), then run \
             `npm ci --prefix dataplane/tests/oidc`"
        );
    }
    eprintln!(
        "skipping the OpenID provider interop test: {what} (npm ci --prefix dataplane/tests/oidc)"
    );
    false
}

/// The provider process; killed on drop so a failing test leaves nothing running.
struct Provider {
    child: Child,
    issuer: String,
}

impl Provider {
    fn start(port: u16, kid: &str, alg: &str) -> Provider {
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .arg(port.to_string())
            .arg(kid)
            .arg(alg)
            .current_dir(fixture_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("ready ") {
                    let _ = tx.send(issuer.to_owned());
                }
            }
        });
        let issuer = match rx.recv_timeout(START_TIMEOUT) {
            Ok(i) => i,
            Err(_) => {
                let _ = child.kill();
                panic!("the OpenID provider did not start within {START_TIMEOUT:?}");
            }
        };
        Provider { child, issuer }
    }

    /// A real client-credentials grant against the token endpoint named by discovery.
    fn client_credentials_token(&self) -> String {
        let meta: serde_json::Value = serde_json::from_str(
            &ureq::get(format!("{}/.well-known/openid-configuration", self.issuer))
                .call()
                .unwrap()
                .into_body()
                .read_to_string()
                .unwrap(),
        )
        .unwrap();
        let token_endpoint = meta["token_endpoint"].as_str().unwrap();
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
        let body = ureq::post(token_endpoint)
            .header("Authorization", format!("Basic {basic}"))
            .send_form([
                ("grant_type", "client_credentials"),
                ("scope", "db"),
                ("resource", "urn:portcullis:gateway"),
            ])
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let v: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[test]
fn real_provider_client_credentials_discovery_and_rotation() {
    if !provider_available() {
        return;
    }
    let port = free_port();
    let provider = Provider::start(port, "first-rsa", "RS256");

    let mut cfg = IdentityConfig::new(provider.issuer.clone(), "portcullis", JwksSource::Discovery);
    // The provider puts granted scopes in `scope`: use them as groups.
    cfg.groups_claim = "scope".into();
    cfg.min_refresh_secs = 1;
    cfg.refresh_secs = 3600;
    let keys = Arc::new(KeyStore::new());
    let mut refresher = JwksRefresher::new(cfg.clone(), Arc::clone(&keys));
    assert_eq!(refresher.refresh_now().expect("discovery + jwks fetch"), 1);
    let verifier = Verifier::with_refresh(cfg, Arc::clone(&keys), refresher.handle());
    let refresher = refresher.spawn().unwrap();

    let token = provider.client_credentials_token();
    assert_eq!(kid_of(&token), "first-rsa");
    let now = now_unix();
    let id = verifier.verify(token.as_bytes(), now).unwrap();
    assert_eq!(id.subject, CLIENT_ID);
    assert_eq!(id.kind, IdentityKind::Service);
    assert_eq!(id.groups, ["db"]);
    assert_eq!(id.issuer, provider.issuer);
    assert!(id.expires_at > now && id.expires_at <= now + 301);
    let mut cache = TokenCache::default();
    let a = verifier
        .verify_cached(&mut cache, token.as_bytes(), now)
        .unwrap();
    let b = verifier
        .verify_cached(&mut cache, token.as_bytes(), now)
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b));

    // Another audience configured: the provider's token is refused with the right reason.
    let mut other = verifier.config().clone();
    other.audience = vec!["someone-else".into()];
    let picky = Verifier::new(other, Arc::clone(&keys));
    assert_eq!(
        picky.verify(token.as_bytes(), now).unwrap_err().kind(),
        AuthErrorKind::WrongAudience
    );

    // Rotate twice: the provider restarts on the same port with only a new key, of another
    // type each time. The same verifier picks each up through the unknown-`kid` refresh.
    let mut provider = provider;
    for (kid, alg) in [("second-ec", "ES256"), ("third-ed", "EdDSA")] {
        drop(provider);
        provider = Provider::start(port, kid, alg);
        let rotated = provider.client_credentials_token();
        assert_eq!(kid_of(&rotated), kid);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match verifier.verify(rotated.as_bytes(), now_unix()) {
                Ok(id) => {
                    assert_eq!(id.subject, CLIENT_ID, "{alg}");
                    break;
                }
                Err(e) => {
                    assert_eq!(e.kind(), AuthErrorKind::UnknownKid, "{alg}: {e}");
                    assert!(
                        Instant::now() < deadline,
                        "the rotated {alg} key was not picked up within 60 s"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
    // The first key is gone from the provider's set, so its tokens now fail, cached or not.
    assert_eq!(
        verifier
            .verify(token.as_bytes(), now_unix())
            .unwrap_err()
            .kind(),
        AuthErrorKind::UnknownKid
    );
    assert_eq!(
        verifier
            .verify_cached(&mut cache, token.as_bytes(), now_unix())
            .unwrap_err()
            .kind(),
        AuthErrorKind::UnknownKid
    );
    drop(provider);
    refresher.shutdown();
}
