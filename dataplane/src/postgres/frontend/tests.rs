use bytes::BufMut;

use super::*;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn bind_body() -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(b"portal\0stmt\0");
    b.put_u16(1);
    b.put_i16(0);
    b.put_u16(3);
    b.put_i32(2);
    b.put_slice(b"42");
    b.put_i32(-1);
    b.put_i32(0);
    b.put_u16(1);
    b.put_i16(1);
    b.to_vec()
}

/// One of every tagged client message, back to back.
fn corpus() -> Vec<u8> {
    let mut parse = b"s1\0select $1, $2\0".to_vec();
    parse.extend_from_slice(&[0, 2, 0, 0, 0, 23, 0, 0, 0, 25]);
    let mut copy_fail = b"aborted\0".to_vec();
    copy_fail.shrink_to_fit();
    let mut all = Vec::new();
    for part in [
        frame(b'Q', b"select 1; select 2\0"),
        frame(b'P', &parse),
        frame(b'B', &bind_body()),
        frame(b'D', b"Sstmt\0"),
        frame(b'D', b"Pportal\0"),
        frame(b'E', b"portal\0\0\0\0\x05"),
        frame(b'H', b""),
        frame(b'S', b""),
        frame(b'C', b"Sstmt\0"),
        frame(b'd', b"1\tann\n"),
        frame(b'c', b""),
        frame(b'f', &copy_fail),
        frame(b'F', b"\0\0\x04\xd2\0\0\0\0\0\0"),
        frame(b'p', b"token\0"),
        frame(b'X', b""),
    ] {
        all.extend_from_slice(&part);
    }
    all
}

fn decode_all(chunks: &[&[u8]]) -> Vec<FrontendFrame> {
    let limits = Limits::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(f) = decode_message(&mut buf, &limits).unwrap() {
            frames.push(f);
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    frames
}

#[test]
fn every_message_decodes_to_the_expected_view() {
    let frames = decode_all(&[&corpus()]);
    let messages: Vec<_> = frames.iter().map(|f| f.message.clone()).collect();
    assert_eq!(messages.len(), 15);
    assert_eq!(
        messages[0],
        FrontendMessage::Query {
            sql: Bytes::from_static(b"select 1; select 2")
        }
    );
    assert_eq!(
        messages[1],
        FrontendMessage::Parse {
            statement: Bytes::from_static(b"s1"),
            sql: Bytes::from_static(b"select $1, $2"),
            param_type_count: 2
        }
    );
    let FrontendMessage::Bind(bind) = &messages[2] else {
        panic!("not a Bind: {:?}", messages[2]);
    };
    assert_eq!(&bind.portal[..], b"portal");
    assert_eq!(&bind.statement[..], b"stmt");
    let params: Vec<_> = bind.params().collect();
    assert_eq!(
        params,
        vec![Some(Bytes::from_static(b"42")), None, Some(Bytes::new())]
    );
    assert_eq!(
        messages[3],
        FrontendMessage::Describe {
            target: Target::Statement,
            name: Bytes::from_static(b"stmt")
        }
    );
    assert_eq!(
        messages[5],
        FrontendMessage::Execute {
            portal: Bytes::from_static(b"portal"),
            max_rows: 5
        }
    );
    assert_eq!(messages[7], FrontendMessage::Sync);
    assert_eq!(
        messages[9],
        FrontendMessage::CopyData(Bytes::from_static(b"1\tann\n"))
    );
    assert_eq!(
        messages[12],
        FrontendMessage::FunctionCall { function_oid: 1234 }
    );
    assert_eq!(messages[14], FrontendMessage::Terminate);
    // Raw bytes are the exact input, so forwarding is byte-identical.
    let raw: Vec<u8> = frames.iter().flat_map(|f| f.raw.to_vec()).collect();
    assert_eq!(raw, corpus());
}

#[test]
fn split_at_every_byte_boundary_gives_the_same_frames() {
    let all = corpus();
    let whole = decode_all(&[&all]);
    for i in 0..=all.len() {
        let (a, b) = all.split_at(i);
        assert_eq!(decode_all(&[a, b]), whole, "split at {i}");
    }
    // And one byte at a time.
    let bytes: Vec<&[u8]> = all.chunks(1).collect();
    assert_eq!(decode_all(&bytes), whole);
}

fn startup_corpus() -> Vec<Vec<u8>> {
    let mut startup = BytesMut::new();
    encode_startup(
        &mut startup,
        &[(b"user", b"alice"), (b"database", b"orders")],
    );
    let mut ssl = BytesMut::new();
    encode_ssl_request(&mut ssl);
    let mut cancel = BytesMut::new();
    encode_cancel_request(
        &mut cancel,
        CancelKey {
            process_id: 7,
            secret_key: 9,
        },
    );
    let mut gss = BytesMut::new();
    gss.put_u32(8);
    gss.put_u32(GSSENC_REQUEST_CODE);
    vec![
        ssl.to_vec(),
        gss.to_vec(),
        cancel.to_vec(),
        startup.to_vec(),
    ]
}

#[test]
fn startup_packets_decode_at_every_split() {
    let limits = Limits::default();
    let expected = [
        StartupPacket::SslRequest,
        StartupPacket::GssEncRequest,
        StartupPacket::CancelRequest(CancelKey {
            process_id: 7,
            secret_key: 9,
        }),
        StartupPacket::Startup {
            version: ProtocolVersion::V3_0,
            params: vec![
                (Bytes::from_static(b"user"), Bytes::from_static(b"alice")),
                (
                    Bytes::from_static(b"database"),
                    Bytes::from_static(b"orders"),
                ),
            ],
        },
    ];
    for (packet, expected) in startup_corpus().iter().zip(expected) {
        for i in 0..=packet.len() {
            let mut buf = BytesMut::from(&packet[..i]);
            let first = decode_startup(&mut buf, &limits).unwrap();
            let got = match first {
                Some(p) => {
                    assert_eq!(i, packet.len());
                    p
                }
                None => {
                    buf.extend_from_slice(&packet[i..]);
                    decode_startup(&mut buf, &limits).unwrap().unwrap()
                }
            };
            assert_eq!(got, expected, "split at {i}");
            assert!(buf.is_empty());
        }
    }
    let mut buf = BytesMut::from(&startup_corpus()[3][..]);
    let p = decode_startup(&mut buf, &limits).unwrap().unwrap();
    assert_eq!(&p.param(b"user").unwrap()[..], b"alice");
}

#[test]
fn oversized_lengths_are_refused_before_buffering() {
    let limits = Limits::with_max_message_len(1024);
    // A Sync claiming 1 GiB: refused from its header alone.
    let mut buf = BytesMut::from(&b"S\x40\0\0\0"[..]);
    let err = decode_message(&mut buf, &limits).unwrap_err();
    assert!(
        matches!(err, PgError::ClientMessageTooLong { tag: 'S', .. }),
        "{err}"
    );
    // A Query over the configured limit.
    let mut buf = BytesMut::from(&b"Q\0\0\x10\0"[..]);
    let err = decode_message(&mut buf, &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "client message `Q` of 4096 bytes exceeds the limit of 1024 bytes"
    );
    // A startup packet over 10 000 bytes.
    let mut buf = BytesMut::from(&b"\0\x01\0\0\0\x03\0\0"[..]);
    assert!(matches!(
        decode_startup(&mut buf, &limits),
        Err(PgError::ClientMessageTooLong { .. })
    ));
}

#[test]
fn malformed_messages_get_typed_client_errors() {
    let limits = Limits::default();
    let cases: &[(&[u8], &str)] = &[
        (b"Z\0\0\0\x04", "invalid frontend message type `Z`"),
        (b"Q\0\0\0\x03", "invalid message length 3"),
        (b"Q\0\0\0\x06ab", "malformed message `Q`"),
        (b"S\0\0\0\x05x", "1 trailing bytes in `S`"),
        (b"D\0\0\0\x06X\0", "invalid target `X`"),
    ];
    for (input, needle) in cases {
        let mut buf = BytesMut::from(*input);
        let err = decode_message(&mut buf, &limits).unwrap_err();
        assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        assert_eq!(err.side(), crate::postgres::Side::Client);
        assert_eq!(err.sqlstate().as_str(), "08P01");
    }
    // Bind with two format codes for three parameters.
    let mut body = b"\0\0".to_vec();
    body.extend_from_slice(&[0, 2, 0, 0, 0, 0, 0, 3]);
    body.extend_from_slice(&[0xff; 12]);
    body.extend_from_slice(&[0, 0]);
    let mut buf = BytesMut::from(&frame(b'B', &body)[..]);
    let err = decode_message(&mut buf, &limits).unwrap_err();
    assert!(
        err.to_string().contains("2 parameter formats for 3"),
        "{err}"
    );
}

#[test]
fn startup_layout_errors() {
    let limits = Limits::default();
    let mut bad = BytesMut::new();
    bad.put_u32(13);
    bad.put_u32(ProtocolVersion::V3_0.code());
    bad.put_slice(b"user");
    bad.put_u8(b'x');
    let err = decode_startup(&mut bad, &limits).unwrap_err();
    assert!(err.to_string().contains("invalid startup packet"), "{err}");
    let mut short = BytesMut::from(&b"\0\0\0\x04"[..]);
    assert!(decode_startup(&mut short, &limits).is_err());
    let mut ssl_long = BytesMut::new();
    ssl_long.put_u32(12);
    ssl_long.put_u32(SSL_REQUEST_CODE);
    ssl_long.put_u32(0);
    assert!(decode_startup(&mut ssl_long, &limits).is_err());
}

#[test]
fn password_body_must_be_one_c_string() {
    assert_eq!(password_from_auth_response(b"tok\0").unwrap(), b"tok");
    assert!(password_from_auth_response(b"tok").is_err());
    assert!(password_from_auth_response(b"a\0b\0").is_err());
    assert!(password_from_auth_response(b"").is_err());
}
