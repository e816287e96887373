//! A real OpenID provider (the `oidc-provider` npm package, fixture in
//! `dataplane/tests/oidc`) on loopback, and a real client-credentials grant against it.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

pub const CLIENT_ID: &str = "portcullis-agent";
const CLIENT_SECRET: &str = "agent-secret";
/// Generous: node starting on a loaded two-core machine can take seconds.
const PROVIDER_START: Duration = Duration::from_secs(60);

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dataplane/tests/oidc")
}

/// Whether the provider can run here; in CI its absence is a failure, not a skip.
pub fn provider_available() -> bool {
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
    assert!(
        std::env::var_os("CI").is_none(),
        "{what}: install node and npm, then run `npm ci --prefix dataplane/tests/oidc` \
         (scripts/test does both)"
    );
    eprintln!("SKIP: {what} (npm ci --prefix dataplane/tests/oidc)");
    false
}

/// The provider process; killed on drop so a failing test leaves nothing running.
pub struct Provider {
    child: Child,
    pub issuer: String,
}

impl Provider {
    pub fn start(port: u16, kid: &str, alg: &str) -> Provider {
        let mut child = Command::new("node")
            .args(["provider.mjs", &port.to_string(), kid, alg])
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
        let Ok(issuer) = rx.recv_timeout(PROVIDER_START) else {
            let _ = child.kill();
            panic!("the OpenID provider did not start within {PROVIDER_START:?}");
        };
        Provider { child, issuer }
    }

    /// A real client-credentials grant at the token endpoint named by discovery.
    pub fn client_credentials_token(&self) -> String {
        let meta: Value = serde_json::from_str(
            &ureq::get(format!("{}/.well-known/openid-configuration", self.issuer))
                .call()
                .unwrap()
                .into_body()
                .read_to_string()
                .unwrap(),
        )
        .unwrap();
        let basic = STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
        let body = ureq::post(meta["token_endpoint"].as_str().unwrap())
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
        let v: Value = serde_json::from_str(&body).unwrap();
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn kid_of(token: &str) -> String {
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}
