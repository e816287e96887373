//! Digit-anchored detectors: credit cards, SSNs, phone numbers, IBANs and IPv4 addresses.
//!
//! A vectorised scan finds the start of every digit run; each run is parsed once into a
//! token of digit groups joined by single separators, and the validators look at group
//! shapes (no regexes on this path). Line-local like every detector; not here: anchors,
//! emails, IPv6 (see `detect`).

use super::detect::{Builtin, Hit, is_word};
use super::validate;

/// Most digit groups one numeric token is split into before the scan gives up on it.
const MAX_GROUPS: usize = 12;

/// Fewest digits of a match found by token shape: an SSN (9); NANP and national phone
/// numbers have 10-11, cards 13-19. (E.164 and `(ddd)` phones are matched before a token is
/// parsed; IPv4 addresses are the one shape with fewer digits and are checked separately.)
const MIN_TOKEN_DIGITS: usize = 9;

/// Fewest digits of a card number.
const MIN_CARD_DIGITS: usize = 13;

/// Bitmask of ASCII digits in a 32-byte block; written so the compiler vectorises it
/// (compare + movemask), which keeps the digit prefilter at SIMD speed without `unsafe`.
#[inline]
fn digit_mask(block: &[u8; 32]) -> u32 {
    let mut m = 0u32;
    for (i, &b) in block.iter().enumerate() {
        m |= u32::from(b.wrapping_sub(b'0') < 10) << i;
    }
    m
}

/// Every digit run of `hay[from..]`, in order (the block prefilter hands [`digit_run`] only
/// the runs that can hold a match).
pub(crate) fn scan_digits(hay: &[u8], from: usize, set: u64, hits: &mut Vec<Hit>) {
    let mut skip_until = from;
    let mut pos = from;
    let mut prev_digit = from > 0 && hay.get(from - 1).is_some_and(u8::is_ascii_digit);
    let mut starts_in = |m: u32, pos: usize, prev_digit: bool, skip_until: &mut usize| {
        let mut starts = m & !((m << 1) | u32::from(prev_digit));
        while starts != 0 {
            let s = pos + starts.trailing_zeros() as usize;
            starts &= starts - 1;
            if s >= *skip_until {
                *skip_until = digit_token(hay, s, set, hits);
            }
        }
    };
    while let Some(block) = hay.get(pos..pos + 32) {
        let Ok(block) = <&[u8; 32]>::try_from(block) else {
            break;
        };
        let m = digit_mask(block);
        if m != 0 {
            starts_in(m, pos, prev_digit, &mut skip_until);
        }
        prev_digit = m & (1 << 31) != 0;
        pos += 32;
    }
    // The last partial block (all of a short cell) goes through the same vector mask, padded
    // with zero bytes, which are not digits: a byte-at-a-time loop here cost more than the
    // rest of the scan for result-set cells.
    let rest = hay.get(pos..).unwrap_or_default();
    if !rest.is_empty() {
        let mut block = [0u8; 32];
        if let Some(dst) = block.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        let m = digit_mask(&block);
        if m != 0 {
            starts_in(m, pos, prev_digit, &mut skip_until);
        }
    }
}

/// Examines every digit run of the token run starting at `r` (digits joined by single ` `,
/// `-`, `.`), in order, as [`scan_digits`] would: runs starting before `skip_until` are
/// skipped, and `skip_until` moves past each examined one. Returns the end of the token run.
pub(crate) fn digit_run(
    hay: &[u8],
    r: usize,
    set: u64,
    hits: &mut Vec<Hit>,
    skip_until: &mut usize,
) -> usize {
    let mut p = r;
    loop {
        let starts = p == 0 || !hay.get(p - 1).is_some_and(u8::is_ascii_digit);
        if starts && p >= *skip_until {
            *skip_until = digit_token(hay, p, set, hits);
        }
        while hay.get(p).is_some_and(u8::is_ascii_digit) {
            p += 1;
        }
        if matches!(hay.get(p), Some(b' ' | b'-' | b'.'))
            && hay.get(p + 1).is_some_and(u8::is_ascii_digit)
        {
            p += 1;
            continue;
        }
        return p;
    }
}

#[inline]
fn on(set: u64, d: Builtin) -> bool {
    set & (1u64 << d as u8) != 0
}

/// Examines the digit run starting at `s` and the token it belongs to; returns where the
/// scan may resume.
fn digit_token(hay: &[u8], s: usize, set: u64, hits: &mut Vec<Hit>) -> usize {
    let prev = if s > 0 { hay.get(s - 1).copied() } else { None };
    if on(set, Builtin::Iban)
        && s >= 2
        && hay.get(s - 2).is_some_and(u8::is_ascii_uppercase)
        && prev.is_some_and(|b| b.is_ascii_uppercase())
        && (s == 2 || !hay.get(s - 3).copied().is_some_and(is_word))
        && let Some(e) = iban_at(hay, s - 2)
    {
        hits.push(Hit {
            start: s - 2,
            end: e,
            det: Builtin::Iban as u8,
        });
        return e;
    }
    if prev.is_some_and(is_word) {
        return s + 1;
    }
    if on(set, Builtin::Phone) {
        if prev == Some(b'+')
            && !(s >= 2
                && hay
                    .get(s - 2)
                    .copied()
                    .is_some_and(|b| b.is_ascii_alphanumeric()))
            && let Some(e) = e164_at(hay, s)
        {
            hits.push(Hit {
                start: s - 1,
                end: e,
                det: Builtin::Phone as u8,
            });
            return e;
        }
        if prev == Some(b'(')
            && let Some(e) = paren_phone_at(hay, s)
        {
            hits.push(Hit {
                start: s - 1,
                end: e,
                det: Builtin::Phone as u8,
            });
            return e;
        }
    }
    // Most digit runs (ids, amounts, dates, times) cannot be any of the shapes below: find
    // that out without building the token.
    let shape = token_shape(hay, s);
    if !shape.may_match() {
        return shape.end;
    }
    let tok = Token::parse(hay, s);
    tok.detect(hay, set, hits);
    if tok.truncated {
        // The run goes on past the group limit: restart a few groups back so a value that
        // straddles the limit is still seen whole (duplicates are resolved later).
        return tok.groups.get(MAX_GROUPS - 5).map_or(tok.end, |g| g.0);
    }
    tok.end
}

/// What [`Token::parse`] would find at `s`, summarised without storing groups.
struct Shape {
    end: usize,
    digits: usize,
    groups: usize,
    has_dot: bool,
    /// Some group has exactly three digits (an SSN area, a NANP area code or exchange).
    has_three: bool,
    /// Digits from the first group that could open a national phone number (`0` then 1-4
    /// more digits) to the end of the token.
    national_digits: usize,
}

impl Shape {
    /// Whether some detector in [`Token::match_from`] could match: a card needs 13 digits
    /// and an IPv4 address four dot-joined groups; every other shape needs at least two
    /// groups and either a three-digit group (SSN, NANP) or a trunk prefix followed by ten
    /// or more digits (national numbers).
    fn may_match(&self) -> bool {
        self.digits >= MIN_CARD_DIGITS
            || (self.groups >= 4 && self.has_dot)
            || (self.groups >= 2
                && self.digits >= MIN_TOKEN_DIGITS
                && (self.has_three || self.national_digits >= 10))
    }
}

#[inline]
fn token_shape(hay: &[u8], s: usize) -> Shape {
    let mut sh = Shape {
        end: s,
        digits: 0,
        groups: 0,
        has_dot: false,
        has_three: false,
        national_digits: 0,
    };
    let mut national_from = None;
    let mut i = s;
    loop {
        let gs = i;
        while hay.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let len = i - gs;
        if national_from.is_none() && hay.get(gs) == Some(&b'0') && (2..=5).contains(&len) {
            national_from = Some(sh.digits);
        }
        sh.digits += len;
        sh.groups += 1;
        sh.has_three |= len == 3;
        if sh.groups < MAX_GROUPS
            && let Some(sep @ (b' ' | b'-' | b'.')) = hay.get(i).copied()
            && hay.get(i + 1).is_some_and(u8::is_ascii_digit)
        {
            sh.has_dot |= sep == b'.';
            i += 1;
            continue;
        }
        sh.end = i;
        sh.national_digits = national_from.map_or(0, |d| sh.digits - d);
        return sh;
    }
}

/// A run of digit groups joined by single separators (` `, `-`, `.`).
struct Token {
    groups: [(usize, usize); MAX_GROUPS],
    seps: [u8; MAX_GROUPS],
    n: usize,
    end: usize,
    /// Digits in the token, and whether any separator is a dot: enough to rule out every
    /// detector for most tokens (ids, amounts, dates) before looking at group shapes.
    digits: usize,
    has_dot: bool,
    /// The byte after the token does not glue a word to it.
    end_ok: bool,
    /// Stopped at `MAX_GROUPS` with more groups following.
    truncated: bool,
}

impl Token {
    fn parse(hay: &[u8], s: usize) -> Token {
        let mut t = Token {
            groups: [(0, 0); MAX_GROUPS],
            seps: [0; MAX_GROUPS],
            n: 0,
            end: s,
            digits: 0,
            has_dot: false,
            end_ok: true,
            truncated: false,
        };
        let mut i = s;
        loop {
            let gs = i;
            while hay.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if let Some(g) = t.groups.get_mut(t.n) {
                *g = (gs, i);
            }
            t.digits += i - gs;
            t.n += 1;
            t.end = i;
            let sep = hay.get(i).copied();
            if t.n < MAX_GROUPS
                && let Some(sep @ (b' ' | b'-' | b'.')) = sep
                && hay.get(i + 1).is_some_and(u8::is_ascii_digit)
            {
                if let Some(x) = t.seps.get_mut(t.n - 1) {
                    *x = sep;
                }
                t.has_dot |= sep == b'.';
                i += 1;
                continue;
            }
            break;
        }
        t.truncated = t.n == MAX_GROUPS
            && matches!(hay.get(t.end), Some(b' ' | b'-' | b'.'))
            && hay.get(t.end + 1).is_some_and(u8::is_ascii_digit);
        // A run glued to letters (`abc123`, `123abc`) or running on past the group limit
        // is not a value that ends here.
        let glued = hay.get(t.end).copied().is_some_and(is_word);
        let runs_on = hay.get(t.end).is_some_and(|&b| matches!(b, b'.' | b'-'))
            && hay.get(t.end + 1).is_some_and(u8::is_ascii_digit);
        t.end_ok = !glued && !runs_on;
        t
    }

    fn g<'h>(&self, hay: &'h [u8], i: usize) -> &'h [u8] {
        self.groups
            .get(i)
            .and_then(|&(a, b)| hay.get(a..b))
            .unwrap_or_default()
    }

    fn sep(&self, i: usize) -> u8 {
        self.seps.get(i).copied().unwrap_or(0)
    }

    /// May a match start at group `i` / end at group `j`? Separator ` ` between values is a
    /// boundary; `-` and `.` glue groups into one value.
    fn starts_ok(&self, i: usize) -> bool {
        i == 0 || self.sep(i - 1) == b' '
    }

    fn ends_ok(&self, j: usize) -> bool {
        if j + 1 == self.n {
            self.end_ok
        } else {
            self.sep(j) == b' '
        }
    }

    fn span(&self, i: usize, j: usize) -> (usize, usize) {
        let s = self.groups.get(i).map_or(0, |g| g.0);
        let e = self.groups.get(j).map_or(0, |g| g.1);
        (s, e)
    }

    fn detect(&self, hay: &[u8], set: u64, hits: &mut Vec<Hit>) {
        let n = self.n.min(MAX_GROUPS);
        // Every match found here has at least `MIN_TOKEN_DIGITS` digits, except an IPv4
        // address, which needs four dot-joined groups. Most digit runs in real rows (ids,
        // amounts, dates, times) fail both, and skip the per-group checks below.
        if self.n > MAX_GROUPS || (self.digits < MIN_TOKEN_DIGITS && !(n >= 4 && self.has_dot)) {
            return;
        }
        let mut i = 0;
        while i < n {
            if let Some(j) = self.match_from(hay, i, n, set, hits) {
                i = j + 1;
            } else {
                i += 1;
            }
        }
    }

    /// Tries every detector on a match starting at group `i`; returns its last group.
    fn match_from(
        &self,
        hay: &[u8],
        i: usize,
        n: usize,
        set: u64,
        hits: &mut Vec<Hit>,
    ) -> Option<usize> {
        let mut push = |i: usize, j: usize, d: Builtin| {
            let (s, e) = self.span(i, j);
            hits.push(Hit {
                start: s,
                end: e,
                det: d as u8,
            });
            Some(j)
        };
        if !self.starts_ok(i) {
            return None;
        }
        // IPv4: four dot-joined octets, not part of a longer dotted run.
        if on(set, Builtin::Ipv4) && i + 3 < n {
            let dots = (i..i + 3).all(|k| self.sep(k) == b'.');
            let octets = (i..=i + 3).all(|k| validate::ipv4_octet_ok(self.g(hay, k)));
            let after_ok = if i + 4 == n {
                self.end_ok
            } else {
                self.sep(i + 3) != b'.'
            };
            if dots && octets && after_ok && (i == 0 || self.sep(i - 1) != b'.') {
                return push(i, i + 3, Builtin::Ipv4);
            }
        }
        // SSN: AAA-GG-SSSS, or AAA GG SSSS (one kind of join: `123-45 6789` is not one).
        if on(set, Builtin::Ssn)
            && i + 2 < n
            && matches!(self.sep(i), b'-' | b' ')
            && self.sep(i + 1) == self.sep(i)
        {
            let (a, g, s) = (self.g(hay, i), self.g(hay, i + 1), self.g(hay, i + 2));
            if a.len() == 3
                && g.len() == 2
                && s.len() == 4
                && self.ends_ok(i + 2)
                && validate::ssn_ok(a, g, s)
            {
                return push(i, i + 2, Builtin::Ssn);
            }
        }
        // Cards: 13-19 digits in groups joined by spaces or dashes, mixed or not (`4111
        // 1111-1111 1111` is still the card, and Luhn and the issuer prefix keep
        // look-alikes out).
        if on(set, Builtin::CreditCard) && self.digits >= MIN_CARD_DIGITS {
            let mut digits = [0u8; 19];
            let mut nd = 0usize;
            let mut best = None;
            for j in i..n {
                if j > i && !matches!(self.sep(j - 1), b' ' | b'-') {
                    break;
                }
                for &b in self.g(hay, j) {
                    if let Some(d) = digits.get_mut(nd) {
                        *d = b;
                    }
                    nd += 1;
                }
                if nd > 19 {
                    break;
                }
                let buf = digits.get(..nd).unwrap_or_default();
                if nd >= 13
                    && self.ends_ok(j)
                    && validate::luhn(buf)
                    && validate::card_prefix_ok(buf, nd)
                {
                    best = Some(j);
                }
            }
            if let Some(j) = best {
                return push(i, j, Builtin::CreditCard);
            }
        }
        if on(set, Builtin::Phone) {
            let len = |k: usize| self.g(hay, k).len();
            // Area codes never start with 0 or 1. Exchanges do not either, but test and
            // fictional numbers (`555-123-4567`) often break that rule and are still
            // someone's data, so it is not checked.
            let nanp = |k: usize| self.g(hay, k).first().is_some_and(|&d| d >= b'2');
            // NANP ddd-ddd-dddd / ddd.ddd.dddd / ddd ddd dddd, optional leading `1`.
            let lead = usize::from(self.g(hay, i) == b"1" && i + 3 < n);
            let k = i + lead;
            if k + 2 < n
                && len(k) == 3
                && len(k + 1) == 3
                && len(k + 2) == 4
                && self.sep(k) == self.sep(k + 1)
                && (lead == 0 || self.sep(i) == self.sep(k))
                && nanp(k)
                && self.ends_ok(k + 2)
            {
                return push(i, k + 2, Builtin::Phone);
            }
            // National trunk-prefix formats: `020 7946 0958`, `07700 900123`, `030-1234567`.
            let g0 = self.g(hay, i);
            if g0.first() == Some(&b'0') && (2..=5).contains(&g0.len()) && i + 1 < n {
                let mut total = g0.len();
                for j in i + 1..n.min(i + 3) {
                    if self.sep(j - 1) == b'.' {
                        break;
                    }
                    total += len(j);
                    if (10..=11).contains(&total) && self.ends_ok(j) {
                        return push(i, j, Builtin::Phone);
                    }
                }
            }
        }
        None
    }
}

/// E.164-style `+CC ...`: 8-15 digits after the `+` at `s - 1`, separated by single spaces,
/// dashes, dots or parentheses.
fn e164_at(hay: &[u8], s: usize) -> Option<usize> {
    if hay.get(s) == Some(&b'0') {
        return None;
    }
    let mut i = s;
    let mut digits = 0usize;
    let mut end = s;
    loop {
        match hay.get(i) {
            Some(b) if b.is_ascii_digit() => {
                digits += 1;
                i += 1;
                end = i;
            }
            Some(b' ' | b'-' | b'.' | b'(' | b')') if i - end < 2 => i += 1,
            _ => break,
        }
        if digits > 15 {
            return None;
        }
    }
    if !(8..=15).contains(&digits) || hay.get(end).copied().is_some_and(is_word) {
        return None;
    }
    Some(end)
}

/// `(ddd) ddd-dddd` with the `(` at `s - 1`.
fn paren_phone_at(hay: &[u8], s: usize) -> Option<usize> {
    let d = |i: usize, n: usize| {
        hay.get(i..i + n)
            .is_some_and(|x| x.iter().all(u8::is_ascii_digit))
    };
    if !d(s, 3) || hay.get(s + 3) != Some(&b')') || hay.get(s).is_some_and(|&b| b < b'2') {
        return None;
    }
    let mut i = s + 4;
    if hay.get(i) == Some(&b' ') {
        i += 1;
    }
    if !d(i, 3) || !matches!(hay.get(i + 3), Some(b'-' | b'.' | b' ')) || !d(i + 4, 4) {
        return None;
    }
    let end = i + 8;
    if hay.get(end).copied().is_some_and(is_word) {
        return None;
    }
    Some(end)
}

/// An IBAN at `s` (country code): compact length per country, groups of up to four
/// separated by single spaces, mod-97 checked.
fn iban_at(hay: &[u8], s: usize) -> Option<usize> {
    let cc = [*hay.get(s)?, *hay.get(s + 1)?];
    let want = validate::iban_length(cc)?;
    let mut compact = [0u8; 34];
    let mut n = 0usize;
    let mut i = s;
    while n < want {
        match hay.get(i) {
            Some(&b) if b.is_ascii_uppercase() || b.is_ascii_digit() => {
                if let Some(c) = compact.get_mut(n) {
                    *c = b;
                }
                n += 1;
                i += 1;
            }
            Some(b' ')
                if n >= 4
                    && n.is_multiple_of(4)
                    && hay.get(i + 1).is_some_and(|b| b.is_ascii_alphanumeric()) =>
            {
                i += 1
            }
            _ => return None,
        }
    }
    if hay
        .get(i)
        .copied()
        .is_some_and(|b| b.is_ascii_alphanumeric())
    {
        return None;
    }
    let c = compact.get(..n)?;
    if !c
        .get(2..4)
        .is_some_and(|x| x.iter().all(u8::is_ascii_digit))
        || !validate::mod97(c)
    {
        return None;
    }
    Some(i)
}
