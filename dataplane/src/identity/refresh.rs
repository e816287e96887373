//! The control-thread JWKS refresher: loads the key set from a file, a URL or OIDC discovery,
//! swaps it into the [`KeyStore`], and repeats periodically and when a worker meets an unknown
//! `kid` (rate limited), so key rotation at the issuer needs no restart.
//!
//! Blocking I/O on purpose: this runs on its own thread, never on a worker. A failed load keeps
//! the previous key set (fail static, not fail open: an empty store refuses every token).
//! Not here: TLS client certificates or proxies for the issuer connection.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::config::{IdentityConfig, JwksSource};
use super::error::JwksError;
use super::jwks::{KeySet, KeyStore};

/// Largest discovery document or JWKS accepted from the issuer.
pub const MAX_ISSUER_DOCUMENT_BYTES: u64 = 1024 * 1024;
/// Time allowed for one HTTP exchange with the issuer.
pub const ISSUER_TIMEOUT: Duration = Duration::from_secs(10);

enum Msg {
    UnknownKid,
    Shutdown,
}

/// What workers hold to ask for a refresh. Never blocks: when a request is already pending the
/// new one is dropped.
#[derive(Clone)]
pub struct RefreshHandle {
    tx: Sender<Msg>,
}

impl std::fmt::Debug for RefreshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshHandle")
    }
}

impl RefreshHandle {
    /// Asks the refresher to re-fetch keys soon (an unknown `kid` arrived).
    pub fn request_refresh(&self) {
        match self.tx.try_send(Msg::UnknownKid) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Loads keys into a [`KeyStore`]; run [`JwksRefresher::spawn`] to keep them fresh.
pub struct JwksRefresher {
    cfg: IdentityConfig,
    store: Arc<KeyStore>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    agent: ureq::Agent,
    /// The last document loaded: an unchanged document does not replace the key set, so
    /// periodic refreshes do not flush the workers' caches.
    last_document: Vec<u8>,
    /// Set when the [`RefresherThread`] is dropped: the wake-up message may not fit in the
    /// one-slot channel, the flag always does.
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for JwksRefresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksRefresher")
            .field("jwks", &self.cfg.jwks)
            .finish()
    }
}

impl JwksRefresher {
    /// A refresher for `cfg`'s key source, writing into `store`. Nothing is fetched yet.
    pub fn new(cfg: IdentityConfig, store: Arc<KeyStore>) -> Self {
        // The hint channel holds one message: one pending refresh covers any number of unknown
        // `kid`s, and a flood of them cannot queue work.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .build();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(ISSUER_TIMEOUT))
            .http_status_as_error(true)
            .tls_config(tls)
            .build()
            .new_agent();
        JwksRefresher {
            cfg,
            store,
            tx,
            rx,
            agent,
            last_document: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A handle for verifiers (see [`super::Verifier::with_refresh`]).
    pub fn handle(&self) -> RefreshHandle {
        RefreshHandle {
            tx: self.tx.clone(),
        }
    }

    /// The store this refresher writes.
    pub fn store(&self) -> &Arc<KeyStore> {
        &self.store
    }

    /// Loads the key set now and swaps it in when it changed. Returns the number of usable keys.
    /// On error the previous key set stays.
    pub fn refresh_now(&mut self) -> Result<usize, JwksError> {
        let doc = match &self.cfg.jwks {
            JwksSource::File(path) => read_file(path)?,
            JwksSource::Url(url) => self.fetch(url)?,
            JwksSource::Discovery => {
                let url = discovery_url(&self.cfg.issuer);
                let meta = self.fetch(&url)?;
                let jwks_uri = jwks_uri_of(&meta, &url, &self.cfg.issuer)?;
                self.fetch(&jwks_uri)?
            }
        };
        if doc == self.last_document {
            return Ok(self.store.snapshot().keys().len());
        }
        let set = KeySet::from_jwks_json(&doc)?;
        let n = set.keys().len();
        if set.skipped() > 0 {
            tracing::info!(
                skipped = set.skipped(),
                "jwks keys not usable for signatures were skipped"
            );
        }
        self.store.replace(set);
        self.last_document = doc;
        tracing::info!(keys = n, "jwks loaded");
        Ok(n)
    }

    fn fetch(&self, url: &str) -> Result<Vec<u8>, JwksError> {
        check_url(url, self.cfg.allow_insecure_http)?;
        let resp = self.agent.get(url).call().map_err(|e| JwksError::Fetch {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        resp.into_body()
            .with_config()
            .limit(MAX_ISSUER_DOCUMENT_BYTES)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => JwksError::TooLarge {
                    url: url.to_owned(),
                    limit: MAX_ISSUER_DOCUMENT_BYTES,
                },
                other => JwksError::Fetch {
                    url: url.to_owned(),
                    reason: other.to_string(),
                },
            })
    }

    /// Runs the refresher on its own thread: periodic refresh every `refresh_secs`, and on
    /// unknown-`kid` hints no more often than `min_refresh_secs` (a hint inside that window
    /// schedules a refresh at its end rather than being lost).
    pub fn spawn(mut self) -> std::io::Result<RefresherThread> {
        let tx = self.tx.clone();
        let stop = Arc::clone(&self.stop);
        let join = std::thread::Builder::new()
            .name("jwks-refresh".to_owned())
            .spawn(move || self.run())?;
        Ok(RefresherThread {
            tx,
            stop,
            join: Some(join),
        })
    }

    fn run(&mut self) {
        let period = Duration::from_secs(self.cfg.refresh_secs.max(1));
        let min_gap = Duration::from_secs(self.cfg.min_refresh_secs);
        let mut last = Instant::now();
        let mut next = last + period;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            let msg = self.rx.recv_timeout(wait);
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            match msg {
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Msg::UnknownKid) => {
                    let earliest = last + min_gap;
                    if Instant::now() < earliest {
                        next = next.min(earliest);
                        continue;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Err(e) = self.refresh_now() {
                tracing::warn!(error = %e, "jwks refresh failed; keeping the previous keys");
            }
            last = Instant::now();
            next = last + period;
        }
    }
}

/// The running refresher thread. Dropping it stops the thread without waiting.
#[derive(Debug)]
pub struct RefresherThread {
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl RefresherThread {
    /// Stops the thread and waits for it (at most one in-flight fetch, bounded by
    /// [`ISSUER_TIMEOUT`]).
    pub fn shutdown(mut self) {
        // Blocking send: the hint slot may be full, and shutdown must not be dropped.
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for RefresherThread {
    fn drop(&mut self) {
        if self.join.is_some() {
            self.stop.store(true, Ordering::Release);
            let _ = self.tx.try_send(Msg::Shutdown);
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, JwksError> {
    let err = |source| JwksError::ReadFile {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.len() > MAX_ISSUER_DOCUMENT_BYTES {
        return Err(JwksError::TooLarge {
            url: path.display().to_string(),
            limit: MAX_ISSUER_DOCUMENT_BYTES,
        });
    }
    std::fs::read(path).map_err(err)
}

/// `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery 1.0, section 4).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

fn jwks_uri_of(meta: &[u8], url: &str, issuer: &str) -> Result<String, JwksError> {
    let bad = |reason: &str| JwksError::BadDocument {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let v: serde_json::Value =
        serde_json::from_slice(meta).map_err(|_| bad("not a json object"))?;
    // Discovery section 4.3: the document must name the issuer it was fetched for, or keys of
    // one issuer could be served for another.
    let claimed = v.get("issuer").and_then(|i| i.as_str()).unwrap_or_default();
    if claimed.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(bad(&format!(
            "`issuer` is `{}`, expected `{issuer}`",
            super::error::quote(claimed)
        )));
    }
    v.get("jwks_uri")
        .and_then(|u| u.as_str())
        .map(str::to_owned)
        .ok_or_else(|| bad("no `jwks_uri`"))
}

/// Key material must come over TLS, except from loopback (a local issuer next to the gateway)
/// or when the operator explicitly allows it.
fn check_url(url: &str, allow_insecure_http: bool) -> Result<(), JwksError> {
    if url.starts_with("https://") {
        return Ok(());
    }
    if let Some(rest) = url.strip_prefix("http://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback || allow_insecure_http {
            return Ok(());
        }
    }
    Err(JwksError::InsecureUrl(url.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(check_url("https://idp.example/jwks", false).is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks", false).is_ok());
        assert!(check_url("http://[::1]:8080/jwks", false).is_ok());
        assert!(check_url("http://localhost/jwks", false).is_ok());
        assert!(matches!(
            check_url("http://idp.example/jwks", false),
            Err(JwksError::InsecureUrl(_))
        ));
        assert!(check_url("http://idp.example/jwks", true).is_ok());
        assert!(check_url("ftp://idp.example/jwks", true).is_err());
    }

    #[test]
    fn discovery_document_must_name_the_issuer() {
        let doc = br#"{"issuer":"https://evil.example","jwks_uri":"https://evil.example/k"}"#;
        let err = jwks_uri_of(doc, "u", "https://idp.example").unwrap_err();
        assert!(err.to_string().contains("evil.example"), "{err}");
        let doc = br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/k"}"#;
        assert_eq!(
            jwks_uri_of(doc, "u", "https://idp.example/").unwrap(),
            "https://idp.example/k"
        );
    }
}
