//! Precise validators that confirm a prefilter candidate: Luhn and card prefixes, SSN
//! ranges, IBAN mod-97 with per-country lengths, IPv4 octets, email local/domain rules.
//!
//! Pure functions over bytes; they never allocate and never look outside the slice they
//! are given. They do not find candidates (see `detect`).

/// Luhn checksum over the ASCII digits of `digits`; other bytes are skipped.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    let mut count = 0usize;
    for &b in digits.iter().rev() {
        if !b.is_ascii_digit() {
            continue;
        }
        let mut d = u32::from(b - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
        count += 1;
    }
    count > 1 && sum.is_multiple_of(10)
}

/// Issuer prefixes of the card networks the detector accepts. A Luhn-valid number with an
/// unknown prefix is more likely an internal id than a card.
pub fn card_prefix_ok(d: &[u8], len: usize) -> bool {
    let num = |n: usize| -> u32 {
        d.iter()
            .take(n)
            .fold(0u32, |acc, &b| acc * 10 + u32::from(b.wrapping_sub(b'0')))
    };
    let p1 = num(1);
    let p2 = num(2);
    let p3 = num(3);
    let p4 = num(4);
    let p6 = num(6);
    match p1 {
        // Visa
        4 => matches!(len, 13 | 16 | 19),
        // Mastercard 51-55 and 2221-2720
        5 if (51..=55).contains(&p2) => len == 16,
        2 if (2221..=2720).contains(&p4) => len == 16,
        // Amex 34/37; Diners 300-305, 36, 38, 39; JCB 3528-3589
        3 if p2 == 34 || p2 == 37 => len == 15,
        3 if (300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39 => {
            (14..=19).contains(&len)
        }
        3 if (3528..=3589).contains(&p4) => (16..=19).contains(&len),
        // Discover 6011, 644-649, 65, 622126-622925; UnionPay 62; Maestro 50, 56-69
        6 if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 => (16..=19).contains(&len),
        6 if (622_126..=622_925).contains(&p6) || p2 == 62 => (16..=19).contains(&len),
        5 if p2 == 50 || (56..=59).contains(&p2) => (12..=19).contains(&len),
        6 => (12..=19).contains(&len),
        _ => false,
    }
}

/// US SSN `AAA-GG-SSSS` digit groups: area not 000, 666 or 9xx; group not 00; serial not 0000.
pub fn ssn_ok(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    area != b"000"
        && area != b"666"
        && area.first() != Some(&b'9')
        && group != b"00"
        && serial != b"0000"
}

/// IBAN length per country (ISO 13616 registry).
pub fn iban_length(cc: [u8; 2]) -> Option<usize> {
    let n = match &cc {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BR" => 29,
        b"BY" => 28,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IQ" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LC" => 32,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NL" => 18,
        b"NO" => 15,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"SA" => 24,
        b"SC" => 31,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"TL" => 23,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VA" => 22,
        b"VG" => 24,
        b"XK" => 20,
        _ => return None,
    };
    Some(n)
}

/// ISO 7064 mod 97-10 over a compact alphanumeric string: move the first four characters to
/// the end, letters count as 10..35, the remainder must be 1. Used for IBANs and the
/// `mod97` custom validator; separators (spaces, dashes) are skipped.
pub fn mod97(s: &[u8]) -> bool {
    let compact = || s.iter().copied().filter(|b| b.is_ascii_alphanumeric());
    let n = compact().count();
    if n < 5 {
        return false;
    }
    let rotated = compact().skip(4).chain(compact().take(4));
    let mut rem: u32 = 0;
    for b in rotated {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            b'a'..=b'z' => u32::from(b - b'a') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// One IPv4 octet: 1-3 digits, at most 255, no leading zero (so `01.02.03.04` style ids and
/// zero-padded version strings are not addresses).
pub fn ipv4_octet_ok(d: &[u8]) -> bool {
    if d.is_empty() || d.len() > 3 || (d.len() > 1 && d.first() == Some(&b'0')) {
        return false;
    }
    let v = d
        .iter()
        .fold(0u32, |acc, &b| acc * 10 + u32::from(b.wrapping_sub(b'0')));
    v <= 255
}

/// The domain of an email: at least two dot-separated labels of letters, digits and inner
/// hyphens (each 1-63 bytes) and an alphabetic top-level label of two or more letters.
pub fn email_domain_ok(d: &[u8]) -> bool {
    if d.is_empty() || d.len() > 253 {
        return false;
    }
    let mut labels = 0usize;
    let mut last: &[u8] = &[];
    for label in d.split(|&b| b == b'.') {
        if label.is_empty()
            || label.len() > 63
            || label.first() == Some(&b'-')
            || label.last() == Some(&b'-')
        {
            return false;
        }
        labels += 1;
        last = label;
    }
    let tld_ok = last.iter().all(|&b| b.is_ascii_alphabetic() || b >= 0x80)
        || (last.len() > 4
            && last
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"xn--")));
    labels >= 2 && last.len() >= 2 && tld_ok
}

/// The local part of an email (dot-atom form): no leading, trailing or doubled dot.
pub fn email_local_ok(l: &[u8]) -> bool {
    !l.is_empty()
        && l.len() <= 64
        && l.first() != Some(&b'.')
        && l.last() != Some(&b'.')
        && !l.windows(2).any(|w| w == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_values() {
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"4111 1111 1111 1111"));
        assert!(!luhn(b"4111111111111112"));
        assert!(luhn(b"378282246310005"));
    }

    #[test]
    fn mod97_known_iban() {
        assert!(mod97(b"DE89370400440532013000"));
        assert!(mod97(b"GB82 WEST 1234 5698 7654 32"));
        assert!(!mod97(b"DE89370400440532013001"));
    }

    #[test]
    fn ssn_ranges() {
        assert!(ssn_ok(b"123", b"45", b"6789"));
        assert!(!ssn_ok(b"000", b"45", b"6789"));
        assert!(!ssn_ok(b"666", b"45", b"6789"));
        assert!(!ssn_ok(b"912", b"45", b"6789"));
        assert!(!ssn_ok(b"123", b"00", b"6789"));
        assert!(!ssn_ok(b"123", b"45", b"0000"));
    }

    #[test]
    fn email_parts() {
        assert!(email_domain_ok(b"example.com"));
        assert!(email_domain_ok(b"mail.example.co.uk"));
        assert!(!email_domain_ok(b"localhost"));
        assert!(!email_domain_ok(b"example.c"));
        assert!(!email_domain_ok(b"1.2.3"));
        assert!(!email_domain_ok(b"-a.com"));
        assert!(email_local_ok(b"first.last+tag"));
        assert!(!email_local_ok(b".a"));
        assert!(!email_local_ok(b"a..b"));
    }
}
