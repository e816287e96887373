use bytes::BufMut;

use super::*;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn row_description() -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u16(2);
    for (name, oid) in [(&b"id"[..], 23u32), (&b"email"[..], 25)] {
        b.put_slice(name);
        b.put_u8(0);
        b.put_u32(16384);
        b.put_i16(1);
        b.put_u32(oid);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(0);
    }
    b.to_vec()
}

fn data_row() -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u16(2);
    b.put_i32(1);
    b.put_slice(b"7");
    b.put_i32(-1);
    b.to_vec()
}

fn corpus() -> Vec<u8> {
    let parts = [
        frame(
            b'R',
            &[
                0, 0, 0, 10, b'S', b'C', b'R', b'A', b'M', b'-', b'S', b'H', b'A', b'-', b'2',
                b'5', b'6', 0, 0,
            ],
        ),
        frame(b'R', b"\0\0\0\x0br=abc,s=c2FsdA==,i=4096"),
        frame(b'R', b"\0\0\0\x0cv=sig"),
        frame(b'R', b"\0\0\0\x05salt"),
        frame(b'R', b"\0\0\0\x03"),
        frame(b'R', b"\0\0\0\0"),
        frame(b'S', b"server_version\x0015.4\0"),
        frame(b'K', b"\0\0\0\x01\0\0\0\x02"),
        frame(b'Z', b"I"),
        frame(b'T', &row_description()),
        frame(b'D', &data_row()),
        frame(b'C', b"SELECT 1\0"),
        frame(b'I', b""),
        frame(b'E', b"SERROR\0C42P01\0Mrelation \"x\" does not exist\0\0"),
        frame(b'N', b"SNOTICE\0C00000\0Mhello\0\0"),
        frame(b'G', b"\0\0\x01\0\0"),
        frame(b'H', b"\0\0\x02\0\0\0\0"),
        frame(b'W', b"\0\0\0"),
        frame(b'd', b"7\t\\N\n"),
        frame(b'c', b""),
        frame(b'A', b"\0\0\0\x09chan\0payload\0"),
        frame(b'1', b""),
        frame(b'2', b""),
        frame(b'3', b""),
        frame(b'n', b""),
        frame(b't', b"\0\x01\0\0\0\x17"),
        frame(b's', b""),
        frame(b'V', b"\0\0\0\x02ok"),
        frame(b'v', b"\0\0\0\0\0\0\0\x01_pq_.x\0"),
    ];
    parts.concat()
}

fn decode_all(chunks: &[&[u8]]) -> Vec<BackendFrame> {
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
    assert_eq!(frames.len(), 29);
    let m: Vec<_> = frames.iter().map(|f| f.message.clone()).collect();
    assert_eq!(
        m[0],
        BackendMessage::Authentication(Authentication::Sasl {
            mechanisms: vec![Bytes::from_static(b"SCRAM-SHA-256")]
        })
    );
    assert_eq!(
        m[3],
        BackendMessage::Authentication(Authentication::Md5Password { salt: *b"salt" })
    );
    assert_eq!(
        m[7],
        BackendMessage::BackendKeyData(CancelKey {
            process_id: 1,
            secret_key: 2
        })
    );
    assert_eq!(m[8], BackendMessage::ReadyForQuery(TransactionStatus::Idle));
    let BackendMessage::RowDescription(fields) = &m[9] else {
        panic!("{:?}", m[9])
    };
    assert_eq!(&fields[1].name[..], b"email");
    assert_eq!(fields[1].type_oid, 25);
    let BackendMessage::DataRow(row) = &m[10] else {
        panic!("{:?}", m[10])
    };
    assert_eq!(
        row.values().collect::<Vec<_>>(),
        vec![Some(Bytes::from_static(b"7")), None]
    );
    assert_eq!(
        row.values_ref().collect::<Vec<_>>(),
        vec![Some(&b"7"[..]), None]
    );
    let BackendMessage::ErrorResponse(err) = &m[13] else {
        panic!("{:?}", m[13])
    };
    assert_eq!(err.code(), "42P01");
    assert_eq!(err.message(), "relation \"x\" does not exist");
    assert_eq!(
        m[20],
        BackendMessage::NotificationResponse {
            process_id: 9,
            channel: Bytes::from_static(b"chan"),
            payload: Bytes::from_static(b"payload")
        }
    );
    assert_eq!(
        m[27],
        BackendMessage::FunctionCallResponse(Some(Bytes::from_static(b"ok")))
    );
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
    let bytes: Vec<&[u8]> = all.chunks(1).collect();
    assert_eq!(decode_all(&bytes), whole);
}

#[test]
fn upstream_errors_name_the_upstream() {
    let limits = Limits::with_max_message_len(100);
    let cases: &[&[u8]] = &[
        b"?\0\0\0\x04",
        b"Z\0\0\0\x05Q",
        b"D\0\0\0\x0a\0\x01\0\0\0\x09",
        b"D\0\0\x10\0",
        b"R\0\0\0\x08\0\0\0\x63",
        b"T\0\0\0\x06\xff\xff",
    ];
    for input in cases {
        let mut buf = BytesMut::from(*input);
        let err = decode_message(&mut buf, &limits).unwrap_err();
        assert_eq!(err.side(), crate::postgres::Side::Upstream, "{err}");
        assert_eq!(err.sqlstate().as_str(), "08006");
    }
}

#[test]
fn ssl_answer() {
    let mut buf = BytesMut::from(&b"S"[..]);
    assert_eq!(decode_ssl_response(&mut buf).unwrap(), Some(true));
    assert!(buf.is_empty());
    let mut buf = BytesMut::new();
    assert_eq!(decode_ssl_response(&mut buf).unwrap(), None);
    let mut buf = BytesMut::from(&b"E"[..]);
    assert!(decode_ssl_response(&mut buf).is_err());
}
