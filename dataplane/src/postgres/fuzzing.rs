//! Fuzz entry points: each takes arbitrary bytes and drives one decoder or state machine to
//! completion. Fuzz targets and the bounded smoke test are thin shims over these, so a crash
//! found by either reproduces as a plain unit test. Limits are lowered so interesting length
//! checks are reachable with small inputs. These functions assert nothing beyond "no panic";
//! the decoders' own tests check results.

use bytes::{BufMut, BytesMut};

use super::backend;
use super::client_session::{ClientConfig, ClientEvent, ClientSession};
use super::frontend;
use super::limits::Limits;
use super::upstream_auth::{UpstreamAuth, UpstreamCredential, UpstreamPassword};

/// Small limits so the fuzzer reaches the limit checks.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_startup_packet: 512,
        max_message_len: 4096,
        max_startup_params: 8,
        max_bind_params: 16,
        max_columns: 16,
        max_prepared_statements: 8,
        max_portals: 8,
    }
}

/// Feeds `data` to the frontend decoder, first as one startup packet then as tagged messages.
pub fn frontend(data: &[u8]) {
    let limits = fuzz_limits();
    let mut buf = BytesMut::from(data);
    let _ = frontend::decode_startup(&mut buf, &limits);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = frontend::decode_message(&mut buf, &limits) {
        if let frontend::FrontendMessage::Bind(bind) = &frame.message {
            let _ = bind.params().count();
        }
    }
}

/// Feeds `data` to the backend decoder and walks every DataRow and notice it yields.
pub fn backend(data: &[u8]) {
    let limits = fuzz_limits();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = backend::decode_message(&mut buf, &limits) {
        match &frame.message {
            backend::BackendMessage::DataRow(row) => {
                let _ = row.values().count();
                let mut out = BytesMut::new();
                let _ = super::rewrite::rewrite_data_row(row, &limits, &mut out, |_, _| {
                    super::rewrite::CellEdit::Null
                });
            }
            backend::BackendMessage::ErrorResponse(f)
            | backend::BackendMessage::NoticeResponse(f) => {
                let _ = f.message();
            }
            _ => {}
        }
    }
    let mut buf = BytesMut::from(data);
    let _ = backend::decode_ssl_response(&mut buf);
}

/// Drives a client session with `data` as everything the client sends, accepting any token.
pub fn client_session(data: &[u8]) {
    let mut session = ClientSession::new(ClientConfig {
        tls_available: data.first().is_some_and(|b| b & 1 == 1),
        allow_plaintext: true,
        limits: fuzz_limits(),
    });
    let mut input = BytesMut::from(data);
    let mut out = BytesMut::new();
    // Each event consumes input, so this ends; the bound is belt and braces.
    for _ in 0..data.len().saturating_add(2) {
        match session.read(&mut input, &mut out) {
            Ok(Some(ClientEvent::Token(_))) => {
                let _ = session.accept(
                    &mut out,
                    &[],
                    frontend::CancelKey {
                        process_id: 1,
                        secret_key: 2,
                    },
                    super::reply::TransactionStatus::Idle,
                );
            }
            Ok(Some(ClientEvent::StartTls)) => session.tls_established(),
            Ok(Some(ClientEvent::StartDirectTls)) => {
                // The hello would go to the handshake; drop it and go on in clear.
                input.clear();
                session.tls_established();
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

/// Drives upstream authentication with `data` as everything the server sends.
pub fn upstream_auth(data: &[u8]) {
    let credential = UpstreamCredential {
        user: "app".into(),
        password: UpstreamPassword::new("secret"),
        database: "db".into(),
    };
    let mut out = BytesMut::new();
    let mut auth = UpstreamAuth::start(&credential, &[], None, &mut out);
    let mut input = BytesMut::from(data);
    let _ = auth.feed(&mut input, &fuzz_limits(), &mut out);
    out.put_u8(0);
}
