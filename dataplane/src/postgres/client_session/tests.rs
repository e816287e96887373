use bytes::BufMut;

use super::*;
use crate::postgres::backend::{self, CopyResponse};

fn config(tls: bool, plaintext: bool) -> ClientConfig {
    ClientConfig {
        tls_available: tls,
        allow_plaintext: plaintext,
        limits: Limits::default(),
    }
}

fn startup(params: &[(&[u8], &[u8])], minor: u16) -> BytesMut {
    let mut buf = BytesMut::new();
    frontend::encode_startup(&mut buf, params);
    if minor != 0 {
        let code = (3u32 << 16) | u32::from(minor);
        buf[4..8].copy_from_slice(&code.to_be_bytes());
    }
    buf
}

fn password(token: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    frontend::encode_password(&mut buf, token);
    buf
}

/// Decodes what the session wrote, as a client would.
fn replies(out: &mut BytesMut) -> Vec<BackendMessage> {
    let mut v = Vec::new();
    while let Some(f) = backend::decode_message(out, &Limits::default()).unwrap() {
        v.push(f.message);
    }
    assert!(out.is_empty());
    v
}

const KEY: CancelKey = CancelKey {
    process_id: 42,
    secret_key: 4242,
};

fn ready_session() -> ClientSession {
    let mut s = ClientSession::new(config(false, true));
    let mut out = BytesMut::new();
    let mut input = startup(&[(b"user", b"alice")], 0);
    input.extend_from_slice(&password(b"tok"));
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Replied)
    );
    assert!(matches!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Token(_))
    ));
    s.accept(&mut out, &[], KEY, TransactionStatus::Idle)
        .unwrap();
    assert_eq!(s.state(), ClientState::Ready);
    s
}

#[test]
fn tls_startup_token_and_greeting() {
    let mut s = ClientSession::new(config(true, false));
    let mut out = BytesMut::new();
    let mut input = BytesMut::new();
    frontend::encode_ssl_request(&mut input);
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::StartTls)
    );
    assert_eq!(&out[..], b"S");
    out.clear();
    s.tls_established();

    let mut input = startup(&[(b"user", b"alice"), (b"database", b"orders")], 0);
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Replied)
    );
    assert_eq!(
        replies(&mut out),
        vec![BackendMessage::Authentication(
            backend::Authentication::CleartextPassword
        )]
    );
    assert_eq!(s.state(), ClientState::ExpectPassword);
    let info = s.startup().unwrap();
    assert_eq!(&info.user[..], b"alice");
    assert_eq!(info.database.as_deref(), Some(&b"orders"[..]));

    let mut input = password(b"eyJhbGciOi.token");
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Token(Bytes::from_static(b"eyJhbGciOi.token")))
    );
    // While the driver verifies, further input waits in the buffer.
    let mut pending = BytesMut::from(&b"Q\0\0\0\x05\0"[..]);
    assert_eq!(s.read(&mut pending, &mut out).unwrap(), None);
    assert_eq!(pending.len(), 6);

    let params = vec![(
        Bytes::from_static(b"server_version"),
        Bytes::from_static(b"15.4"),
    )];
    s.accept(&mut out, &params, KEY, TransactionStatus::Idle)
        .unwrap();
    assert_eq!(
        replies(&mut out),
        vec![
            BackendMessage::Authentication(backend::Authentication::Ok),
            BackendMessage::ParameterStatus {
                name: Bytes::from_static(b"server_version"),
                value: Bytes::from_static(b"15.4")
            },
            BackendMessage::BackendKeyData(KEY),
            BackendMessage::ReadyForQuery(TransactionStatus::Idle),
        ]
    );
    assert!(matches!(
        s.read(&mut pending, &mut out).unwrap(),
        Some(ClientEvent::Message(_))
    ));
}

#[test]
fn no_tls_configured_answers_n_and_plaintext_is_refused() {
    let mut s = ClientSession::new(config(false, false));
    let mut out = BytesMut::new();
    let mut input = BytesMut::new();
    frontend::encode_ssl_request(&mut input);
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Replied)
    );
    assert_eq!(&out[..], b"N");
    out.clear();
    let mut input = startup(&[(b"user", b"alice")], 0);
    let err = s.read(&mut input, &mut out).unwrap_err();
    assert_eq!(err, PgError::ClientTlsRequired);
    s.refuse(&err, &mut out);
    let msgs = replies(&mut out);
    let BackendMessage::ErrorResponse(fields) = &msgs[0] else {
        panic!("{msgs:?}")
    };
    assert_eq!(fields.code(), "28000");
    assert_eq!(s.state(), ClientState::Closed);
}

#[test]
fn gssenc_is_refused_then_startup_proceeds() {
    let mut s = ClientSession::new(config(true, true));
    let mut out = BytesMut::new();
    let mut input = BytesMut::new();
    input.put_u32(8);
    input.put_u32(frontend::GSSENC_REQUEST_CODE);
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Replied)
    );
    assert_eq!(&out[..], b"N");
}

#[test]
fn plaintext_after_ssl_request_is_an_injection_attempt() {
    let mut s = ClientSession::new(config(true, false));
    let mut out = BytesMut::new();
    let mut input = BytesMut::new();
    frontend::encode_ssl_request(&mut input);
    input.extend_from_slice(&startup(&[(b"user", b"mallory")], 0));
    let err = s.read(&mut input, &mut out).unwrap_err();
    assert!(
        err.to_string()
            .contains("unencrypted data after SSLRequest")
    );
    assert!(out.is_empty());
}

#[test]
fn cancel_request_hands_the_key_over() {
    let mut s = ClientSession::new(config(false, false));
    let mut out = BytesMut::new();
    let mut input = BytesMut::new();
    frontend::encode_cancel_request(&mut input, KEY);
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Cancel(KEY))
    );
    assert_eq!(s.state(), ClientState::Closed);
    assert!(out.is_empty());
}

#[test]
fn protocol_versions() {
    // 3.2 with a _pq_ option: NegotiateProtocolVersion, then the password request.
    let mut s = ClientSession::new(config(false, true));
    let mut out = BytesMut::new();
    let mut input = startup(&[(b"user", b"a"), (b"_pq_.compression", b"on")], 2);
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Replied)
    );
    assert_eq!(
        replies(&mut out),
        vec![
            BackendMessage::NegotiateProtocolVersion {
                newest_minor: 0,
                unrecognized: vec![Bytes::from_static(b"_pq_.compression")]
            },
            BackendMessage::Authentication(backend::Authentication::CleartextPassword),
        ]
    );
    // 2.0: refused with 0A000.
    let mut s = ClientSession::new(config(false, true));
    let mut input = BytesMut::new();
    input.put_u32(8);
    input.put_u32(2 << 16);
    let err = s.read(&mut input, &mut out).unwrap_err();
    assert_eq!(err.sqlstate().as_str(), "0A000");
    assert_eq!(
        err.to_string(),
        "unsupported frontend protocol 2.0: the gateway supports 3.0"
    );
}

#[test]
fn missing_user_and_wrong_message_in_password_phase() {
    let mut s = ClientSession::new(config(false, true));
    let mut out = BytesMut::new();
    let mut input = startup(&[(b"database", b"x")], 0);
    assert!(s.read(&mut input, &mut out).is_err());

    let mut s = ClientSession::new(config(false, true));
    let mut input = startup(&[(b"user", b"a")], 0);
    input.extend_from_slice(b"Q\0\0\0\x05\0");
    s.read(&mut input, &mut out).unwrap();
    let err = s.read(&mut input, &mut out).unwrap_err();
    assert!(
        err.to_string().contains("expected a password message"),
        "{err}"
    );
}

#[test]
fn extended_error_skips_until_sync() {
    let mut s = ready_session();
    let mut out = BytesMut::new();
    s.enter_extended_error();
    let mut input = BytesMut::new();
    input.extend_from_slice(b"B\0\0\0\x0c\0\0\0\0\0\0\0\0");
    input.extend_from_slice(b"E\0\0\0\x09\0\0\0\0\0");
    input.extend_from_slice(b"S\0\0\0\x04");
    input.extend_from_slice(b"Q\0\0\0\x05\0");
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Skipped)
    );
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Skipped)
    );
    let Some(ClientEvent::Message(sync)) = s.read(&mut input, &mut out).unwrap() else {
        panic!("Sync not forwarded")
    };
    assert_eq!(sync.message, FrontendMessage::Sync);
    assert_eq!(s.state(), ClientState::Ready);
    assert!(matches!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Message(_))
    ));
}

#[test]
fn copy_in_and_out_follow_the_server() {
    let mut s = ready_session();
    let mut out = BytesMut::new();
    let copy = CopyResponse {
        format: 0,
        column_count: 1,
    };
    s.observe_backend(&BackendMessage::CopyInResponse(copy));
    assert_eq!(s.state(), ClientState::InCopyIn);
    let mut input = BytesMut::from(&b"d\0\0\0\x06a\n"[..]);
    input.extend_from_slice(b"P\0\0\0\x08\0\0\0\0");
    assert!(matches!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Message(_))
    ));
    let err = s.read(&mut input, &mut out).unwrap_err();
    assert!(err.to_string().contains("during COPY from stdin"), "{err}");

    let mut s = ready_session();
    s.observe_backend(&BackendMessage::CopyInResponse(copy));
    let mut input = BytesMut::from(&b"c\0\0\0\x04"[..]);
    s.read(&mut input, &mut out).unwrap();
    assert_eq!(s.state(), ClientState::Ready);

    s.observe_backend(&BackendMessage::CopyOutResponse(copy));
    assert_eq!(s.state(), ClientState::InCopyOut);
    s.observe_backend(&BackendMessage::CopyDone);
    assert_eq!(s.state(), ClientState::Ready);
    s.observe_backend(&BackendMessage::ReadyForQuery(
        TransactionStatus::InTransaction,
    ));
    assert_eq!(s.transaction_status(), TransactionStatus::InTransaction);
}

#[test]
fn terminate_closes() {
    let mut s = ready_session();
    let mut out = BytesMut::new();
    let mut input = BytesMut::from(&b"X\0\0\0\x04"[..]);
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Terminate)
    );
    assert_eq!(s.state(), ClientState::Closed);
}

#[test]
fn startup_split_at_every_byte_gives_the_same_events() {
    let mut all = BytesMut::new();
    all.extend_from_slice(&startup(&[(b"user", b"alice")], 0));
    all.extend_from_slice(&password(b"tok"));
    for i in 0..=all.len() {
        let mut s = ClientSession::new(config(false, true));
        let mut out = BytesMut::new();
        let mut input = BytesMut::from(&all[..i]);
        let mut events = Vec::new();
        while let Some(e) = s.read(&mut input, &mut out).unwrap() {
            events.push(e);
        }
        input.extend_from_slice(&all[i..]);
        while let Some(e) = s.read(&mut input, &mut out).unwrap() {
            events.push(e);
        }
        assert_eq!(
            events,
            vec![
                ClientEvent::Replied,
                ClientEvent::Token(Bytes::from_static(b"tok"))
            ],
            "split at {i}"
        );
    }
}

#[test]
fn password_message_after_authentication_is_refused() {
    let mut s = ready_session();
    let mut out = BytesMut::new();
    let mut input = password(b"again");
    let err = s.read(&mut input, &mut out).unwrap_err();
    assert_eq!(err.sqlstate().as_str(), "08P01");
    assert!(err.to_string().contains("after authentication"), "{err}");
}

#[test]
fn a_tls_client_hello_first_starts_direct_tls_and_keeps_the_bytes() {
    let hello = b"\x16\x03\x01\x00\x05hello";
    let mut s = ClientSession::new(config(true, false));
    let (mut out, mut input) = (BytesMut::new(), BytesMut::from(&hello[..]));
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::StartDirectTls)
    );
    assert_eq!(
        &input[..],
        &hello[..],
        "the hello is left for the handshake"
    );
    assert!(out.is_empty(), "nothing is answered in clear");
    s.tls_established();
    // Inside the TLS session an SSLRequest is a protocol violation, as after an `S`.
    let mut input = BytesMut::new();
    frontend::encode_ssl_request(&mut input);
    assert!(s.read(&mut input, &mut out).is_err());

    // Without TLS configured, a hello is refused instead of misread as a startup packet.
    let mut s = ClientSession::new(config(false, true));
    let mut input = BytesMut::from(&hello[..]);
    let e = s.read(&mut input, &mut out).unwrap_err();
    assert!(e.to_string().contains("direct TLS"), "{e}");
}

#[test]
fn a_client_hello_after_an_ssl_request_answer_is_not_direct_tls() {
    // After 'N' the next packet must be a startup packet; a 0x16 there is an oversized length.
    let mut s = ClientSession::new(config(false, true));
    let mut out = BytesMut::new();
    let mut input = BytesMut::new();
    frontend::encode_ssl_request(&mut input);
    assert_eq!(
        s.read(&mut input, &mut out).unwrap(),
        Some(ClientEvent::Replied)
    );
    let mut input = BytesMut::from(&b"\x16\x03\x01\x00\x05hello"[..]);
    assert!(s.read(&mut input, &mut out).is_err());
}
