//! PostgreSQL workload over tokio-postgres, an independent client, in three protocol modes:
//! simple (Query), extended (Parse/Bind/Execute of an unnamed statement, one round trip) and
//! prepared (named statements prepared once per connection).
//!
//! Parameters are sent in text format with types left to the server, as `pgbench` does, so a mix
//! needs no type annotations. TLS (`--sslmode require`) encrypts but does not verify the server
//! certificate, matching libpq's `require`; verified TLS is not offered here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{Format, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Config, NoTls, Socket, Statement};

use crate::cli::{PgArgs, PgMode, SslMode};
use crate::engine::RequestError;
use crate::mix::{Mix, Value};
use crate::stats::ErrorKind;

#[derive(Debug)]
pub struct Target {
    config: Config,
    tls: Option<NoVerifyTls>,
    mode: PgMode,
    mix: Mix,
}

impl Target {
    pub fn from_args(args: &PgArgs) -> anyhow::Result<Self> {
        let mut config = match &args.url {
            Some(url) => url.parse::<Config>().context("parsing `--url`")?,
            None => Config::new(),
        };
        if let Some(host) = &args.host {
            config.host(host);
        }
        if let Some(port) = args.port {
            config.port(port);
        }
        if let Some(user) = &args.user {
            config.user(user);
        }
        if let Some(dbname) = &args.dbname {
            config.dbname(dbname);
        }
        if let Some(password) = &args.password {
            config.password(password);
        }
        if let Some(var) = &args.password_env {
            let password = std::env::var(var)
                .with_context(|| format!("reading the password from `${var}`"))?;
            config.password(password);
        }
        if config.get_hosts().is_empty() {
            config.host("127.0.0.1");
        }
        if config.get_user().is_none() {
            bail!("no user: give `--user` or put one in `--url`");
        }
        config.application_name("portcullis-loadgen");
        let tls = match args.sslmode {
            SslMode::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            SslMode::Require => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(NoVerifyTls::new()?)
            }
        };
        let mix = match (&args.query, &args.mix) {
            (_, Some(path)) => Mix::load(path)?,
            (Some(q), None) => Mix::single(q.clone()),
            (None, None) => bail!("give `--query` or `--mix`"),
        };
        Ok(Target {
            config,
            tls,
            mode: args.mode,
            mix,
        })
    }
}

/// A connection: the client half plus, in prepared mode, one statement per mix entry.
#[derive(Debug)]
pub struct PgConn {
    client: Client,
    prepared: Vec<Statement>,
}

impl crate::engine::Target for Target {
    type Conn = PgConn;

    async fn connect(&self) -> Result<PgConn, ErrorKind> {
        let client = match &self.tls {
            None => {
                let (client, connection) = self
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(|e| connect_error(&e))?;
                tokio::spawn(connection);
                client
            }
            Some(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| connect_error(&e))?;
                tokio::spawn(connection);
                client
            }
        };
        let mut prepared = Vec::new();
        if self.mode == PgMode::Prepared {
            for entry in &self.mix.entries {
                let stmt = client
                    .prepare(&entry.sql)
                    .await
                    .map_err(|e| query_error(&e).kind)?;
                prepared.push(stmt);
            }
        }
        Ok(PgConn { client, prepared })
    }

    async fn request(
        &self,
        conn: &mut PgConn,
        rng: &mut fastrand::Rng,
    ) -> Result<(), RequestError> {
        let Some((idx, entry)) = self.mix.pick(rng) else {
            return Ok(());
        };
        let values = entry.generate(rng);
        let result = match self.mode {
            PgMode::Simple => conn
                .client
                .simple_query(&entry.render(&values))
                .await
                .map(drop),
            PgMode::Extended => {
                let params: Vec<TextParam> = values.iter().map(TextParam::from).collect();
                let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                    .iter()
                    .map(|p| (p as &(dyn ToSql + Sync), Type::UNKNOWN))
                    .collect();
                conn.client.query_typed(&entry.sql, &typed).await.map(drop)
            }
            PgMode::Prepared => {
                let Some(stmt) = conn.prepared.get(idx) else {
                    return Err(RequestError {
                        kind: ErrorKind::Protocol,
                        connection_lost: true,
                    });
                };
                let params: Vec<TextParam> = values.iter().map(TextParam::from).collect();
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                conn.client.query(stmt, &refs).await.map(drop)
            }
        };
        result.map_err(|e| {
            let mut err = query_error(&e);
            err.connection_lost |= conn.client.is_closed();
            err
        })
    }
}

/// Classifies a failed connect: SQLSTATE class 28 is the server refusing our credentials; any
/// other server error keeps its SQLSTATE; everything else is the network or TLS.
fn connect_error(e: &tokio_postgres::Error) -> ErrorKind {
    match e.as_db_error() {
        Some(db) if db.code().code().starts_with("28") => ErrorKind::Auth,
        Some(db) => ErrorKind::Query(db.code().code().to_owned()),
        None => ErrorKind::Connect,
    }
}

fn query_error(e: &tokio_postgres::Error) -> RequestError {
    match e.as_db_error() {
        Some(db) => RequestError {
            kind: ErrorKind::Query(db.code().code().to_owned()),
            connection_lost: false,
        },
        None => RequestError {
            kind: ErrorKind::Protocol,
            connection_lost: true,
        },
    }
}

/// A parameter sent in text format for whatever type the server inferred, so that mixes need no
/// type annotations and integers match `int4`, `int8` or `numeric` columns alike.
#[derive(Debug)]
struct TextParam(String);

impl From<&Value> for TextParam {
    fn from(v: &Value) -> Self {
        TextParam(v.to_text())
    }
}

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// TLS that encrypts without authenticating the server (`sslmode=require`). The handshake
/// signature is still checked, so the peer must hold the key of the certificate it shows.
#[derive(Debug, Clone)]
struct NoVerifyTls {
    config: Arc<rustls::ClientConfig>,
}

impl NoVerifyTls {
    fn new() -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(AcceptAnyCert {
            provider: Arc::clone(&provider),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("configuring TLS")?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(NoVerifyTls {
            config: Arc::new(config),
        })
    }
}

#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl MakeTlsConnect<Socket> for NoVerifyTls {
    type Stream = TlsStream;
    type TlsConnect = TlsConnector;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<TlsConnector, Self::Error> {
        let server_name = ServerName::try_from(domain.to_owned())?;
        Ok(TlsConnector {
            config: Arc::clone(&self.config),
            server_name,
        })
    }
}

#[derive(Debug)]
pub struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsConnect<Socket> for TlsConnector {
    type Stream = TlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let tls = connector.connect(self.server_name, stream).await?;
            Ok(TlsStream(tls))
        })
    }
}

#[derive(Debug)]
pub struct TlsStream(tokio_rustls::client::TlsStream<Socket>);

impl tokio_postgres::tls::TlsStream for TlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // Channel binding needs the certificate's hash; without verification it adds nothing.
        ChannelBinding::none()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
