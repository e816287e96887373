//! SQL lexer for the PostgreSQL and MySQL dialects: turns statement text into tokens with byte
//! spans, the way the server's own scanner would split it.
//!
//! It knows where strings, quoted identifiers, comments and dollar quotes begin and end (so a `;`
//! or keyword hidden inside one is never seen as code), and treats MySQL `/*! ... */` and
//! MariaDB `/*M! ... */` comments as code because the server executes them. It deliberately
//! does not parse: it neither checks syntax nor decodes escapes; the classifier above it reads
//! the token stream.
//!
//! PostgreSQL strings are read with `standard_conforming_strings = on` (the default since
//! 9.1) by [`lex`], and with it off by [`lex_backslash_strings`]; the caller knows which the
//! session runs (see `docs/policy.md`). MySQL is assumed to run without `ANSI_QUOTES` or
//! `NO_BACKSLASH_ESCAPES`.

use wide::u8x16;

use crate::request::Dialect;

/// What a token is; the classifier only needs coarse kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Unquoted identifier or keyword.
    Word,
    /// `"ident"` or `` `ident` ``; the span excludes the quotes.
    QuotedIdent,
    /// Any string literal form, including dollar-quoted bodies.
    String,
    Number,
    /// `$1` (PostgreSQL) or `?` (MySQL, and PostgreSQL's jsonb operator, printed the same).
    Param,
    LParen,
    RParen,
    Comma,
    Semicolon,
    Dot,
    /// A run of operator characters.
    Op,
}

/// What lexing found besides the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lexed {
    /// The input ends inside a string, quoted identifier or comment: the server would reject
    /// or wait for more, and the classifier treats such input as the most dangerous kind.
    pub unterminated: bool,
    /// A PostgreSQL `U&"..."` name: its escapes can spell a name its token does not show.
    pub unicode_names: bool,
}

/// One token: its kind and byte span in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub start: u32,
    pub end: u32,
}

/// Lexes `text` into `out` (cleared first).
///
/// Inputs longer than `u32::MAX` bytes are never passed here (the classifier refuses them).
pub fn lex(text: &str, dialect: Dialect, out: &mut Vec<Token>) -> Lexed {
    lex_with::<true, false>(text, dialect, out)
}

/// [`lex`] for a PostgreSQL session running with `standard_conforming_strings = off`: a
/// backslash escapes the next character in every `'...'` and `N'...'` string, as in `E'...'`,
/// so `'x\'' ; DROP TABLE t; --'` is a string, a DROP and a comment there, where the
/// standard reading sees one string.
pub fn lex_backslash_strings(text: &str, out: &mut Vec<Token>) -> Lexed {
    lex_with::<true, true>(text, Dialect::Postgres, out)
}

/// [`lex`]; with `SHORTCUTS` off, every token goes through the byte dispatch (the `match`)
/// and no arm lexes the token after its own, which is how the shortcuts' property test gets
/// its reference. A constant, so the shipped lexer carries no flag.
///
/// `BACKSLASH_STRINGS` is a constant too: the standard reading, which nearly every text gets,
/// carries no extra state through its loop (as a run-time flag it slowed the 10 KB statement
/// of `bench policy` by 7 % at the same instruction count).
fn lex_with<const SHORTCUTS: bool, const BACKSLASH_STRINGS: bool>(
    text: &str,
    dialect: Dialect,
    out: &mut Vec<Token>,
) -> Lexed {
    out.clear();
    let b = text.as_bytes();
    let n = b.len();
    let mysql = dialect == Dialect::Mysql;
    // Plain strings take backslash escapes: MySQL's, and PostgreSQL's with
    // `standard_conforming_strings = off`.
    let escaping = mysql || BACKSLASH_STRINGS;
    let mut i = 0usize;
    // `UNTERMINATED` and `UNICODE_NAMES` bits: one register for both through the loop.
    let mut found = 0u8;
    // Inside a MySQL executable comment `/*! ... */`: its closing `*/` is skipped as well.
    let mut in_exec_comment = false;
    let at = |k: usize| b.get(k).copied().unwrap_or(0);
    let push = |out: &mut Vec<Token>, kind, s: usize, e: usize| {
        out.push(Token {
            kind,
            start: s as u32,
            end: e as u32,
        });
    };
    while i < n {
        let mut c = at(i);
        // Most tokens are followed by one space. Stepping over it here costs a well-predicted
        // branch; going round the loop for it cost a second pass through the `match` below,
        // whose jump table mispredicts often because token kinds vary.
        if c == b' ' {
            i += 1;
            if i >= n {
                break;
            }
            c = at(i);
        }
        // Words are the most common token. Testing for them first is a conditional branch
        // the predictor learns from the token history; through the `match` below they shared
        // its one indirect jump, whose target changes with almost every token.
        if is_ident_start(c) {
            let e = ident_end(b, i + 1);
            let next = at(e);
            // Only a word followed by `'` or `&` can be a string prefix. Testing the next byte
            // alone first keeps the common word off the slice bounds checks and the prefix
            // tests below, which cost about fifteen instructions a word.
            if next != b'\'' && next != b'&' {
                push(out, TokenKind::Word, i, e);
                i = e;
                continue;
            }
            let word = b.get(i..e).unwrap_or_default();
            // String prefixes: E'..' (backslash escapes), U&'..', B'..', X'..', N'..',
            // and MySQL charset introducers such as _utf8mb4'..'.
            if next == b'\'' && string_prefix(word, mysql) {
                let escapes = word.eq_ignore_ascii_case(b"e")
                    || (escaping && (mysql || word.eq_ignore_ascii_case(b"n")));
                let (end, ok) = quoted_end(b, e + 1, b'\'', escapes);
                found |= UNTERMINATED * u8::from(!ok);
                push(out, TokenKind::String, i, end);
                i = end;
            } else if !mysql && word.eq_ignore_ascii_case(b"u") && next == b'&' {
                match at(e + 1) {
                    b'\'' => {
                        let (end, ok) = quoted_end(b, e + 2, b'\'', false);
                        found |= UNTERMINATED * u8::from(!ok);
                        push(out, TokenKind::String, i, end);
                        i = end;
                    }
                    b'"' => {
                        let (end, ok) = quoted_end(b, e + 2, b'"', false);
                        found |= UNTERMINATED * u8::from(!ok);
                        found |= UNICODE_NAMES;
                        push(
                            out,
                            TokenKind::QuotedIdent,
                            e + 2,
                            end.saturating_sub(1).max(e + 2),
                        );
                        i = end;
                    }
                    _ => {
                        push(out, TokenKind::Word, i, e);
                        i = e;
                    }
                }
            } else {
                push(out, TokenKind::Word, i, e);
                i = e;
            }
            continue;
        }
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => i += 1,
            b'-' if at(i + 1) == b'-'
                && (!mysql
                    || matches!(at(i + 2), 0 | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)) =>
            {
                i = line_end(b, i);
            }
            b'#' if mysql => i = line_end(b, i),
            b'/' if at(i + 1) == b'*' => {
                // Executable comments: MySQL's `/*!`, and MariaDB's `/*M!`, which MariaDB runs
                // and MySQL ignores. Skip the marker and optional version digits, then lex the
                // body as code: a body the server skips for its version is at worst classified
                // as more than it does.
                let marker = if !mysql {
                    0
                } else if at(i + 2) == b'!' {
                    3
                } else if at(i + 2) == b'M' && at(i + 3) == b'!' {
                    4
                } else {
                    0
                };
                if marker != 0 {
                    i += marker;
                    while at(i).is_ascii_digit() {
                        i += 1;
                    }
                    in_exec_comment = true;
                    continue;
                }
                match block_comment_end(b, i, !mysql) {
                    Some(e) => i = e,
                    None => {
                        found |= UNTERMINATED;
                        i = n;
                    }
                }
            }
            b'*' if in_exec_comment && at(i + 1) == b'/' => {
                in_exec_comment = false;
                i += 2;
            }
            b'\'' => {
                let (e, ok) = quoted_end(b, i + 1, b'\'', escaping);
                found |= UNTERMINATED * u8::from(!ok);
                push(out, TokenKind::String, i, e);
                i = e;
            }
            b'"' if mysql => {
                // MySQL (without ANSI_QUOTES) reads "..." as a string.
                let (e, ok) = quoted_end(b, i + 1, b'"', true);
                found |= UNTERMINATED * u8::from(!ok);
                push(out, TokenKind::String, i, e);
                i = e;
            }
            b'"' => loop {
                let pair = if SHORTCUTS {
                    quoted_pair_end(b, i)
                } else {
                    None
                };
                if let Some((e1, e2)) = pair {
                    push(out, TokenKind::QuotedIdent, i + 1, e1 - 1);
                    push(out, TokenKind::Dot, e1, e1 + 1);
                    push(out, TokenKind::QuotedIdent, e1 + 2, e2 - 1);
                    i = e2;
                } else {
                    let (e, ok) = quoted_end(b, i + 1, b'"', false);
                    found |= UNTERMINATED * u8::from(!ok);
                    push(
                        out,
                        TokenKind::QuotedIdent,
                        i + 1,
                        e.saturating_sub(1).max(i + 1),
                    );
                    i = e;
                }
                // ORMs qualify every column, `"table"."column"`: the dot and the next name are
                // lexed here rather than by two more trips through the `match`, whose jump
                // mispredicts often. Only this arm pays for the test.
                if !SHORTCUTS {
                    break;
                }
                if at(i) != b'.' || at(i + 1) != b'"' {
                    // Select lists: `"t"."a", "t"."b"`; the comma too is lexed here.
                    if at(i) == b',' {
                        push(out, TokenKind::Comma, i, i + 1);
                        i += 1;
                    }
                    break;
                }
                push(out, TokenKind::Dot, i, i + 1);
                i += 1;
            },
            b'`' if mysql => {
                let (e, ok) = quoted_end(b, i + 1, b'`', false);
                found |= UNTERMINATED * u8::from(!ok);
                push(
                    out,
                    TokenKind::QuotedIdent,
                    i + 1,
                    e.saturating_sub(1).max(i + 1),
                );
                i = e;
            }
            b'$' if !mysql => {
                if at(i + 1).is_ascii_digit() {
                    let mut e = i + 1;
                    while at(e).is_ascii_digit() {
                        e += 1;
                    }
                    push(out, TokenKind::Param, i, e);
                    i = e;
                } else if let Some(tag_end) = dollar_tag_end(b, i) {
                    let tag = b.get(i..tag_end).unwrap_or_default();
                    let body = b.get(tag_end..).unwrap_or_default();
                    match memchr::memmem::find(body, tag) {
                        Some(p) => {
                            let e = tag_end + p + tag.len();
                            push(out, TokenKind::String, i, e);
                            i = e;
                        }
                        None => {
                            found |= UNTERMINATED;
                            push(out, TokenKind::String, i, n);
                            i = n;
                        }
                    }
                } else {
                    push(out, TokenKind::Op, i, i + 1);
                    i += 1;
                }
            }
            b'(' => {
                push(out, TokenKind::LParen, i, i + 1);
                i += 1;
            }
            b')' => {
                push(out, TokenKind::RParen, i, i + 1);
                i += 1;
            }
            b',' => {
                push(out, TokenKind::Comma, i, i + 1);
                i += 1;
            }
            b';' => {
                push(out, TokenKind::Semicolon, i, i + 1);
                i += 1;
            }
            b'?' => {
                push(out, TokenKind::Param, i, i + 1);
                i += 1;
            }
            b'.' if at(i + 1).is_ascii_digit() => {
                let e = number_end(b, i);
                push(out, TokenKind::Number, i, e);
                i = e;
            }
            b'.' => {
                push(out, TokenKind::Dot, i, i + 1);
                i += 1;
            }
            b'0'..=b'9' => {
                let e = number_end(b, i);
                push(out, TokenKind::Number, i, e);
                i = e;
                // IN lists and multi-row VALUES alternate numbers and commas: the comma is
                // lexed here, and the `match` jumps to this arm for every list item, a target
                // it predicts, instead of alternating between two.
                if SHORTCUTS && at(e) == b',' {
                    push(out, TokenKind::Comma, e, e + 1);
                    i = e + 1;
                }
            }
            _ => {
                let e = op_end(b, i, mysql);
                push(out, TokenKind::Op, i, e);
                i = e;
            }
        }
    }
    Lexed {
        unterminated: found & UNTERMINATED != 0,
        unicode_names: found & UNICODE_NAMES != 0,
    }
}

/// Bits of `lex_with`'s `found`.
const UNTERMINATED: u8 = 1;
const UNICODE_NAMES: u8 = 2;

fn line_end(b: &[u8], from: usize) -> usize {
    match memchr::memchr(b'\n', b.get(from..).unwrap_or_default()) {
        Some(p) => from + p + 1,
        None => b.len(),
    }
}

/// End of a `/* */` comment starting at `from`, or `None` when unterminated. PostgreSQL nests
/// block comments; MySQL does not.
fn block_comment_end(b: &[u8], from: usize, nests: bool) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = from;
    while i < b.len() {
        let c = b.get(i).copied().unwrap_or(0);
        let d = b.get(i + 1).copied().unwrap_or(0);
        if c == b'/' && d == b'*' && (nests || depth == 0) {
            depth += 1;
            i += 2;
        } else if c == b'*' && d == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some(i);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// End (one past the closing quote) of a quoted run whose body starts at `from`. A doubled
/// quote is an escaped quote; with `backslash`, `\x` escapes any byte. Returns `(end, closed)`.
///
/// Sixteen bytes per step (`wide`, safe SSE2: `pcmpeqb` and `pmovmskb`): the first quote or
/// backslash of a chunk comes out of one compare and a `trailing_zeros`. ORM statements quote
/// every identifier, and the byte loop's exit branch mispredicted on almost every one since
/// their lengths vary. The last bytes of the input (fewer than 16) take the byte loop.
fn quoted_end(b: &[u8], from: usize, quote: u8, backslash: bool) -> (usize, bool) {
    let mut i = from;
    let q = u8x16::splat(quote);
    // Without backslash escapes the second compare looks for the quote again.
    let bs = u8x16::splat(if backslash { b'\\' } else { quote });
    while let Some(chunk) = b.get(i..i + 16).and_then(|c| <[u8; 16]>::try_from(c).ok()) {
        let v = u8x16::new(chunk);
        let hits = (v.simd_eq(q) | v.simd_eq(bs)).to_bitmask();
        if hits == 0 {
            i += 16;
            continue;
        }
        let p = i + hits.trailing_zeros() as usize;
        let c = b.get(p).copied().unwrap_or(0);
        if c != quote {
            // A backslash: it escapes the next byte, whatever that is.
            i = p + 2;
        } else if b.get(p + 1).copied() == Some(quote) {
            i = p + 2;
        } else {
            return (p + 1, true);
        }
    }
    while i < b.len() {
        let c = b.get(i).copied().unwrap_or(0);
        if backslash && c == b'\\' {
            i += 2;
        } else if c == quote {
            if b.get(i + 1).copied() == Some(quote) {
                i += 2;
            } else {
                return (i + 1, true);
            }
        } else {
            i += 1;
        }
    }
    (b.len(), false)
}

/// For a PostgreSQL quoted identifier opening at `from` and qualified by a second one,
/// `"a"."b"`, with both names and the dot within the 32 bytes from `from` and neither name
/// holding a doubled quote: one past each closing quote. `None` otherwise (the caller then
/// takes `quoted_end`).
///
/// ORM statements qualify every column this way. Lexed one name at a time, each name's end
/// comes out of a chain (load at the name's start, compare, movemask, `trailing_zeros`) that
/// the next name's load waits on; here both ends come out of one pair of loads, the second by
/// bit operations on the masks already in registers.
fn quoted_pair_end(b: &[u8], from: usize) -> Option<(usize, usize)> {
    let w = b.get(from..from + 32)?;
    let lo = u8x16::new(<[u8; 16]>::try_from(w.get(..16)?).ok()?);
    let hi = u8x16::new(<[u8; 16]>::try_from(w.get(16..)?).ok()?);
    let mask = |c: u8| {
        let c = u8x16::splat(c);
        lo.simd_eq(c).to_bitmask() | hi.simd_eq(c).to_bitmask() << 16
    };
    let quotes = mask(b'"');
    // Bit 0 is the opening quote. The first name closes at the next quote, followed by a dot
    // (so that quote is not doubled) and the second name's opening quote. The dot is one byte
    // read back, cheaper than a second pair of compares and masks.
    let c1 = (quotes & !1).trailing_zeros();
    let dot = w.get(c1 as usize + 1) == Some(&b'.');
    if quotes & 1 == 0 || c1 > 28 || !dot || quotes >> (c1 + 2) & 1 == 0 {
        return None;
    }
    // The second name closes at the next quote after its opening one; the byte after it must
    // lie in the window and not be a quote (which would make the pair an escaped quote).
    let c2 = c1 + 3 + (quotes >> (c1 + 3)).trailing_zeros();
    if c2 > 30 || quotes >> (c2 + 1) & 1 != 0 {
        return None;
    }
    Some((from + c1 as usize + 1, from + c2 as usize + 1))
}

/// If a PostgreSQL dollar-quote opening tag (`$$` or `$tag$`) starts at `from`, its end.
fn dollar_tag_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from + 1;
    let first = b.get(i).copied()?;
    if first == b'$' {
        return Some(i + 1);
    }
    if !(first.is_ascii_alphabetic() || first == b'_' || first >= 0x80) {
        return None;
    }
    i += 1;
    loop {
        let c = b.get(i).copied()?;
        if c == b'$' {
            return Some(i + 1);
        }
        if !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80) {
            return None;
        }
        i += 1;
    }
}

fn number_end(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(&c) = b.get(i) {
        // The common byte is tested first by table; the exponent sign check looks back and
        // runs only on `+`/`-`.
        if in_table(&NUMBER_CONTINUE, c)
            || ((c == b'+' || c == b'-')
                && i > from
                && matches!(b.get(i - 1), Some(b'e' | b'E'))
                && !b
                    .get(from..i)
                    .unwrap_or_default()
                    .iter()
                    .any(|x| matches!(x, b'x' | b'X')))
        {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// Bytes that continue a number: ASCII alphanumerics, `_` and `.`.
static NUMBER_CONTINUE: [bool; 256] = byte_table(b"_.", false);
/// Bytes that continue an identifier: ASCII alphanumerics, `_`, `$` and every non-ASCII byte.
static IDENT_CONTINUE: [bool; 256] = byte_table(b"_$", true);

#[expect(
    clippy::indexing_slicing,
    reason = "a u8 always indexes a 256-entry table"
)]
fn in_table(t: &[bool; 256], c: u8) -> bool {
    t[c as usize]
}

#[expect(
    clippy::indexing_slicing,
    reason = "const fn at compile time: indices are below 256 by construction"
)]
const fn byte_table(extra: &[u8], high: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || (high && b >= 0x80);
        c += 1;
    }
    let mut j = 0;
    while j < extra.len() {
        t[extra[j] as usize] = true;
        j += 1;
    }
    t
}

fn op_end(b: &[u8], from: usize, mysql: bool) -> usize {
    let mut i = from + 1;
    while let Some(&c) = b.get(i) {
        let is_op = matches!(
            c,
            b'+' | b'-'
                | b'*'
                | b'/'
                | b'<'
                | b'>'
                | b'='
                | b'~'
                | b'!'
                | b'@'
                | b'%'
                | b'^'
                | b'&'
                | b'|'
        ) || (c == b'#' && !mysql);
        if !is_op {
            break;
        }
        let next = b.get(i + 1).copied().unwrap_or(0);
        // A comment start ends the operator run, as in both servers' scanners.
        if (c == b'-' && next == b'-') || (c == b'/' && next == b'*') {
            break;
        }
        // Never print `--` inside an operator: normalized text would turn it into a comment.
        if c == b'-' && b.get(i - 1) == Some(&b'-') {
            break;
        }
        i += 1;
    }
    i
}

/// Bytes that start an identifier: ASCII letters, `_` and every non-ASCII byte. A table, as
/// the lexer asks this of every token: one load instead of three range tests.
static IDENT_START: [bool; 256] = ident_start_table();

#[expect(
    clippy::indexing_slicing,
    reason = "const fn at compile time: indices are below 256 by construction"
)]
const fn ident_start_table() -> [bool; 256] {
    let mut t = byte_table(b"_", true);
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = false;
        d += 1;
    }
    t
}

fn is_ident_start(c: u8) -> bool {
    in_table(&IDENT_START, c)
}

/// End of the identifier bytes starting at `from`.
///
/// Eight bytes per step with no branch inside the step: word lengths vary, so a byte-at-a-time
/// loop mispredicted its exit on almost every word, the lexer's costliest branch. The chunk
/// loop's exit is taken once per word and the "more than eight" case is rare.
fn ident_end(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
        let stop = ident_stops(u64::from_le_bytes(chunk));
        if stop != 0 {
            return i + (stop.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while b.get(i).is_some_and(|&c| in_table(&IDENT_CONTINUE, c)) {
        i += 1;
    }
    i
}

/// Each byte's top bit set where that byte of `x` (little-endian) does not continue an
/// identifier (see `IDENT_CONTINUE`), clear elsewhere.
///
/// SWAR tests on the low seven bits of every byte at once, about twenty ALU operations for
/// eight bytes; eight lookups in `IDENT_CONTINUE` cost a load, a shift and an or each. Letters
/// and digits are range tests; `_` and `$` are single bytes, tested as "differs from" (one xor
/// and one add each, where a one-byte range test takes two adds, an and and one constant more),
/// which is also the form the result wants: a stop is a byte that is no letter, no digit, no
/// non-ASCII byte, and differs from both. No test carries across bytes: every sum below stays
/// under 0x100 per byte.
fn ident_stops(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    const LOW7: u64 = ONES * 0x7f;
    let a = x & LOW7;
    // Bytes in `lo..=hi` (both at most 0x7f): `a + 0x80 - lo` has its top bit from `lo` on,
    // `a + 0x7f - hi` from `hi + 1` on.
    let within = |v: u64, lo: u8, hi: u8| {
        let from_lo = v + ONES * u64::from(0x80 - lo);
        let past_hi = v + ONES * u64::from(0x7f - hi);
        from_lo & !past_hi
    };
    // Top bit set where the byte is not `c`: `a ^ c` is at most 0x7f, and adding 0x7f sets
    // the top bit unless it is zero.
    let differs = |c: u8| (a ^ (ONES * u64::from(c))) + LOW7;
    let letter = within(a | (ONES * 0x20), b'a', b'z');
    let digit = within(a, b'0', b'9');
    !(x | letter | digit) & differs(b'_') & differs(b'$') & HIGH
}

fn string_prefix(word: &[u8], mysql: bool) -> bool {
    if word.len() == 1 {
        return matches!(
            word.first(),
            Some(b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N')
        );
    }
    mysql && word.first() == Some(&b'_')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// The ORM shape the pair shortcut is for is taken by it (so the property tests above
    /// exercise it), and shapes it must leave alone are not.
    #[test]
    fn quoted_pair_end_takes_qualified_names_only() {
        let orm = br#""line_items"."created_at" ASC, "t"."a""#;
        assert_eq!(super::quoted_pair_end(orm, 0), Some((12, 25)));
        for no in [
            &br#""line_items" . "created_at" ......"#[..],
            br#""a"""."b" ............................"#,
            br#""a"."b""c" ..........................."#,
            br#""a_name_that_is_long"."and_another_one_too""#,
            br#""a"."b""#,
        ] {
            assert_eq!(
                super::quoted_pair_end(no, 0),
                None,
                "{}",
                String::from_utf8_lossy(no)
            );
        }
    }

    proptest! {
        /// The chunked identifier scan stops where a byte-at-a-time scan does, at every start
        /// and length (runs shorter, equal to and longer than a chunk).
        #[test]
        fn ident_end_matches_bytewise_scan(
            data in proptest::collection::vec(
                prop::sample::select(vec![b'a', b'Z', b'_', b'$', b'7', 0xc3, b' ', b'.', b'"']),
                0..40,
            ),
            from in 0usize..40,
        ) {
            let mut slow = from;
            while data.get(slow).is_some_and(|&c| super::in_table(&super::IDENT_CONTINUE, c)) {
                slow += 1;
            }
            prop_assert_eq!(super::ident_end(&data, from), slow.max(from));
        }

        /// The 16-byte quoted-run scan ends where a byte-at-a-time scan does, for every quote
        /// and escape mode, with doubled quotes and backslashes at every position (chunk
        /// boundaries included) and runs left open.
        #[test]
        fn quoted_end_matches_bytewise_scan(
            data in proptest::collection::vec(
                // Mostly plain bytes, so that runs longer than a chunk are common.
                prop_oneof![
                    12 => Just(b'a'),
                    1 => prop::sample::select(vec![b'\'', b'"', b'`', b'\\', b' ', 0xc3]),
                ],
                0..80,
            ),
            from in 0usize..80,
            quote in prop::sample::select(vec![b'\'', b'"', b'`']),
            backslash in any::<bool>(),
        ) {
            let mut i = from;
            let slow = loop {
                let Some(&c) = data.get(i) else { break (data.len(), false) };
                if backslash && c == b'\\' {
                    i += 2;
                } else if c == quote {
                    if data.get(i + 1) == Some(&quote) {
                        i += 2;
                    } else {
                        break (i + 1, true);
                    }
                } else {
                    i += 1;
                }
            };
            prop_assert_eq!(super::quoted_end(&data, from, quote, backslash), slow);
        }

        /// The lexer's shortcuts (an arm lexing the token after its own: quoted names qualified
        /// by quoted names, their dots and commas, commas after numbers) give the tokens that
        /// lexing every token through the byte dispatch gives, in both dialects. Fragments are
        /// drawn so that qualified quoted names of every length around the 32-byte window,
        /// doubled quotes, unterminated names and digits after dots all occur.
        #[test]
        fn shortcuts_lex_like_the_byte_dispatch(
            parts in proptest::collection::vec(
                prop_oneof![
                    6 => "\"[a-z_]{0,20}\"",
                    2 => "\"[a-z]{0,3}\"\"[a-z]{0,3}\"",
                    3 => Just(".".to_owned()),
                    3 => Just(",".to_owned()),
                    2 => Just(" ".to_owned()),
                    2 => "[0-9]{1,4}(\\.[0-9])?",
                    2 => "[a-z_][a-z0-9_]{0,6}",
                    1 => prop::sample::select(vec![
                        "\"", "'x'", "`q`", "(", ")", ";", "=", "-", "e", "$1", "/*", "*/", "\\",
                    ]).prop_map(str::to_owned),
                ],
                0..40,
            ),
        ) {
            let text = parts.concat();
            for dialect in [super::Dialect::Postgres, super::Dialect::Mysql] {
                let (mut fast, mut plain) = (Vec::new(), Vec::new());
                let fast_open = super::lex_with::<true, false>(&text, dialect, &mut fast);
                let plain_open = super::lex_with::<false, false>(&text, dialect, &mut plain);
                prop_assert_eq!(&fast, &plain, "{:?} {:?}", text, dialect);
                prop_assert_eq!(fast_open, plain_open);
            }
        }

        /// A qualified pair that `quoted_pair_end` accepts ends where two `quoted_end` calls
        /// around the dot end, at every offset from the window's start.
        #[test]
        fn quoted_pair_end_matches_two_quoted_ends(
            data in proptest::collection::vec(
                prop_oneof![
                    6 => Just(b'a'),
                    2 => Just(b'"'),
                    1 => Just(b'.'),
                ],
                0..48,
            ),
            from in 0usize..48,
        ) {
            if let Some((e1, e2)) = super::quoted_pair_end(&data, from) {
                prop_assert_eq!(data.get(from), Some(&b'"'));
                prop_assert_eq!(super::quoted_end(&data, from + 1, b'"', false), (e1, true));
                prop_assert_eq!(data.get(e1), Some(&b'.'));
                prop_assert_eq!(data.get(e1 + 1), Some(&b'"'));
                prop_assert_eq!(super::quoted_end(&data, e1 + 2, b'"', false), (e2, true));
            }
        }

        /// The start table says what the three range tests it replaced said.
        #[test]
        fn ident_start_table_matches_its_definition(c in any::<u8>()) {
            prop_assert_eq!(
                super::is_ident_start(c),
                c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
            );
        }

        /// The SWAR test agrees with `IDENT_CONTINUE` on every byte, in every position.
        #[test]
        fn ident_stops_match_the_table(x in any::<u64>()) {
            let stops = super::ident_stops(x);
            for (k, c) in x.to_le_bytes().into_iter().enumerate() {
                let stop = (stops >> (8 * k)) & 0xff;
                prop_assert_eq!(stop == 0x80, !super::in_table(&super::IDENT_CONTINUE, c));
                prop_assert!(stop == 0 || stop == 0x80);
            }
        }
    }
}
