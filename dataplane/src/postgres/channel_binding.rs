//! `tls-server-end-point` channel binding data (RFC 5929 §4.1) for SCRAM-SHA-256-PLUS towards
//! the upstream: the hash of the server's certificate, with the hash function of the
//! certificate's own signature algorithm (SHA-256 when that is MD5 or SHA-1).
//!
//! Binding the SCRAM exchange to the TLS session means a machine in the middle that terminates
//! the gateway's TLS with another certificate cannot relay the login to the real server, even
//! when `upstream_tls = "require"` skips certificate verification.
//!
//! Only the outer structure of the certificate is read (`Certificate ::= SEQUENCE {
//! tbsCertificate, signatureAlgorithm, signatureValue }`), enough to find the algorithm's OID.
//! Algorithms whose hash is not named by the OID alone (RSASSA-PSS, Ed25519) give `None`, and
//! the login then proceeds without binding, as libpq does when it cannot compute it.

use aws_lc_rs::digest;

/// sha1WithRSAEncryption, md5WithRSAEncryption, ecdsa-with-SHA1: bound with SHA-256.
const SHA256_FALLBACK: [&[u8]; 3] = [
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05],
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01],
];
/// sha256WithRSAEncryption, ecdsa-with-SHA256.
const SHA256: [&[u8]; 2] = [
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
];
/// sha384WithRSAEncryption, ecdsa-with-SHA384.
const SHA384: [&[u8]; 2] = [
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
];
/// sha512WithRSAEncryption, ecdsa-with-SHA512.
const SHA512: [&[u8]; 2] = [
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
];

const SEQUENCE: u8 = 0x30;
const OBJECT_IDENTIFIER: u8 = 0x06;

/// The binding data for the server certificate `cert_der`, or `None` when its signature
/// algorithm does not name a usable hash or the DER is not a certificate.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let algorithm = match signature_algorithm(cert_der)? {
        oid if SHA256.contains(&oid) || SHA256_FALLBACK.contains(&oid) => &digest::SHA256,
        oid if SHA384.contains(&oid) => &digest::SHA384,
        oid if SHA512.contains(&oid) => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// The OID bytes of the certificate's outer `signatureAlgorithm`.
fn signature_algorithm(cert_der: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = tlv(cert_der, SEQUENCE)?;
    let (_tbs, rest) = tlv(certificate, SEQUENCE)?;
    let (algorithm, _) = tlv(rest, SEQUENCE)?;
    let (oid, _) = tlv(algorithm, OBJECT_IDENTIFIER)?;
    Some(oid)
}

/// Splits one DER element of type `tag` off `input`: (its content, what follows).
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits count the length bytes; four cover any certificate.
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["db.internal".into()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        for (alg, hash) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, &digest::SHA256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, &digest::SHA384),
        ] {
            let der = cert(alg);
            let got = tls_server_end_point(&der).unwrap();
            assert_eq!(got, digest::digest(hash, &der).as_ref());
        }
    }

    #[test]
    fn algorithms_without_a_named_hash_and_garbage_give_none() {
        assert_eq!(tls_server_end_point(&cert(&rcgen::PKCS_ED25519)), None);
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x31\x00",
            b"\x30\x02\x30\x00",
        ] {
            assert_eq!(tls_server_end_point(bad), None);
        }
    }
}
