//! TLS transport over real loopback sockets: a handshake, a large echo in both directions
//! (many records, reads cut anywhere) and a clean close, on both monoio drivers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::sync::Arc;

use bytes::BytesMut;
use dataplane::transport::{TlsStream, Transport, client_connection, server_connection};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

async fn echo_round_trip() {
    let (server_cfg, client_cfg) = configs();
    let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let expected = payload.clone();

    let server = monoio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let conn = server_connection(&server_cfg).unwrap();
        let mut t = Transport::TlsServer(Box::new(TlsStream::handshake(tcp, conn).await.unwrap()));
        let mut buf = BytesMut::new();
        loop {
            buf.clear();
            let n = t.read_into(&mut buf, 7_001).await.unwrap();
            if n == 0 {
                break;
            }
            t.write_all(buf.to_vec()).await.unwrap();
        }
        t.shutdown().await.unwrap();
    });

    let tcp = monoio::net::TcpStream::connect(addr).await.unwrap();
    let conn = client_connection(&client_cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut t = Transport::TlsClient(Box::new(TlsStream::handshake(tcp, conn).await.unwrap()));
    assert!(t.is_tls());
    // Write and read in turns so neither side's socket buffer fills while the other waits.
    let mut got = BytesMut::new();
    for chunk in payload.chunks(50_000) {
        t.write_all(chunk.to_vec()).await.unwrap();
        let target = got.len() + chunk.len();
        while got.len() < target {
            let n = t.read_into(&mut got, 65_536).await.unwrap();
            assert!(n > 0, "server closed early");
        }
    }
    t.shutdown().await.unwrap();
    let mut tail = BytesMut::new();
    assert_eq!(
        t.read_into(&mut tail, 1024).await.unwrap(),
        0,
        "clean close expected"
    );
    server.await;
    assert_eq!(&got[..], &expected[..]);
}

#[test]
fn tls_echo_epoll() {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(echo_round_trip());
}

#[test]
fn tls_echo_io_uring() {
    assert!(
        monoio::utils::detect_uring(),
        "io_uring must be available on the test machines"
    );
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(echo_round_trip());
}
