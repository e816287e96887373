//! What a worker needs to serve one `postgres` connection entry, built once at start from the
//! config: resolved upstream, client-facing TLS, upstream TLS, and the held credential.
//!
//! Building a route reads the certificate, key, CA and password files, so every one of those
//! mistakes is reported before the gateway listens. This module does not open sockets.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::{ConnectionConfig, PasswordSource, UpstreamTls};
use crate::postgres::Limits;
use crate::postgres::client_session::ALPN_POSTGRESQL;
use crate::postgres::upstream_auth::{UpstreamCredential, UpstreamPassword};

/// Largest password file read: a password is a line, anything larger is a wrong path.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// Time a client gets from connect to a complete startup with its token.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A `postgres` connection, ready to serve.
#[derive(Debug)]
pub struct PgRoute {
    pub name: Arc<str>,
    /// As configured (`host:port`), for logs and records.
    pub upstream_label: Arc<str>,
    pub upstream: SocketAddr,
    /// Host part of the upstream, for SNI and certificate checks.
    pub upstream_name: ServerName<'static>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub allow_plaintext: bool,
    pub record_frames: bool,
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    pub upstream_tls: UpstreamTls,
    pub upstream_client_tls: Option<Arc<rustls::ClientConfig>>,
    /// The held credential; `database` empty means "the database the client asked for".
    pub credential: UpstreamCredential,
    pub limits: Limits,
}

/// Why a postgres connection cannot be served; names the connection and the file.
#[derive(Debug, thiserror::Error)]
#[error("connection `{connection}`: {reason}")]
pub struct RouteError {
    pub connection: String,
    pub reason: String,
}

impl PgRoute {
    pub fn from_config(c: &ConnectionConfig) -> Result<PgRoute, RouteError> {
        let err = |reason: String| RouteError {
            connection: c.name.clone(),
            reason,
        };
        let upstream = c
            .upstream
            .to_socket_addrs()
            .map_err(|e| err(format!("cannot resolve upstream `{}`: {e}", c.upstream)))?
            .next()
            .ok_or_else(|| err(format!("upstream `{}` has no addresses", c.upstream)))?;
        let host = c
            .upstream
            .rsplit_once(':')
            .map_or(c.upstream.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let upstream_name = ServerName::try_from(host.clone())
            .map_err(|_| err(format!("upstream host `{host}` is not a valid server name")))?;
        let Some(creds) = &c.credentials else {
            return Err(err("needs [connections.credentials]".into()));
        };
        let password = match &creds.password {
            PasswordSource::File(path) => read_password_file(path).map_err(err)?,
            PasswordSource::Env(var) => std::env::var(var).map_err(|_| {
                err(format!(
                    "environment variable `{var}` (credentials.password_env) is not set"
                ))
            })?,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server_tls = match &c.tls {
            None => None,
            Some(t) => Some(server_config(&provider, &t.cert, &t.key).map_err(err)?),
        };
        if server_tls.is_none() && !c.allow_plaintext {
            return Err(err(
                "needs [connections.tls] (cert and key), or `allow_plaintext = true` for loopback tests"
                    .into(),
            ));
        }
        let upstream_client_tls = match c.upstream_tls {
            UpstreamTls::Disable => None,
            UpstreamTls::Require => Some(client_config_unverified(&provider).map_err(err)?),
            UpstreamTls::VerifyFull => {
                let Some(ca) = &c.upstream_ca else {
                    return Err(err(
                        "`upstream_tls = \"verify-full\"` needs `upstream_ca` (or set `upstream_tls` to `require` or `disable`)".into(),
                    ));
                };
                Some(client_config_verified(&provider, ca).map_err(err)?)
            }
        };
        Ok(PgRoute {
            name: c.name.as_str().into(),
            upstream_label: c.upstream.as_str().into(),
            upstream,
            upstream_name,
            connect_timeout: c.connect_timeout,
            idle_timeout: c.idle_timeout,
            allow_plaintext: c.allow_plaintext,
            record_frames: c.record_frames,
            server_tls,
            upstream_tls: c.upstream_tls,
            upstream_client_tls,
            credential: UpstreamCredential {
                user: creds.user.clone(),
                password: UpstreamPassword::new(password),
                database: c.database.clone().unwrap_or_default(),
            },
            limits: Limits::default(),
        })
    }
}

fn read_password_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read password file `{}`: {e}", path.display()))?;
    if meta.len() > MAX_PASSWORD_FILE_BYTES {
        return Err(format!(
            "password file `{}` is larger than the {MAX_PASSWORD_FILE_BYTES} byte limit",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read password file `{}`: {e}", path.display()))?;
    // One trailing newline is what editors and `echo` add; it is never part of the password.
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    Ok(text.to_owned())
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate `{}`: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate `{}`: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "certificate `{}` holds no PEM certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("private key `{}`: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not work together: {e}"))?;
    // libpq 17+ offers `postgresql`; a client offering only other protocols is refused during
    // the handshake, as PostgreSQL does. Clients offering none are served.
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

fn client_config_verified(
    provider: &Arc<CryptoProvider>,
    ca: &Path,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("cannot read upstream_ca `{}`: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("upstream_ca `{}`: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("upstream_ca `{}`: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "upstream_ca `{}` holds no PEM certificate",
            ca.display()
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn client_config_unverified(
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(Arc::clone(provider))))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `upstream_tls = "require"`: encrypt, but accept any certificate (PostgreSQL's own
/// `sslmode=require`). Signatures are still checked so the handshake is well-formed; identity
/// is not, which is why `verify-full` is the default.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
