//! Block prefilter for the built-in detectors: one pass over the region in blocks of up to
//! 64 bytes turns each block into byte-class bitmasks (digits, separators, `@`, `:`/`=`,
//! token first bytes), and bit arithmetic on those masks yields the few positions where a
//! validator has to look. Every detector family sees its candidates in increasing order, with
//! the same skip rules as its dedicated scan over the whole region
//! (`Scanner::scan_families` with `plain`), so the hits are exactly the same; a property test
//! pins the two together.
//!
//! Used for short values (result-set cells), and in longer regions for every family but the
//! token prefixes whenever digit, email or IPv6 detectors are on: there `@`, `:` and `=` come
//! out of the same classification as the digits, and a colon whose IPv6 token (read off the
//! masks) has neither `::` nor seven colons, a time of day or a MAC address, costs no
//! `ipv6_hit` call; a `:`/`=` right after a digit (a time of day) cannot follow a key name
//! and costs nothing either. Token prefixes in long regions are found by the token
//! automaton instead: its prefilter is vectorised at run time (AVX2), while this pass is
//! SSE2 only (no run-time dispatch without `unsafe`). Each class
//! is a compare and a `pmovmskb` per 16 bytes through `wide`, safe portable SIMD; the digit
//! pass over a long region classifies only the three classes it reads (digits, separators,
//! anchors).
//!
//! [`may_match`] is the fast reject in front of all of this for a value of one block: the
//! same candidates, stopped at the first one, so a cell without any costs one classification
//! and no scan state.
//!
//! Why one pass for short values: cells are ~15 bytes, where the fixed cost of entering five
//! searches was most of the time. Why masks for digits everywhere: digits are dense in real
//! rows (ids, dates, hashes), and a call per digit run cost more than the runs' validation.
//! The digit family uses a shape argument instead of visiting every run: a digit match either
//! follows an anchor byte (`+` for E.164, `(` for `(ddd)`, a capital letter for an IBAN
//! country code) or lies in a token run (digits joined by single ` `, `-`, `.`) with at least
//! nine digits or three joins (an IPv4 address's dots), hence at least seven bytes long. Runs
//! that are neither are skipped whole, and so is a run known whole (it ends inside the block)
//! whose digit and group counts, three-digit groups, `0`-led groups and dots fail the rule
//! `numeric::Shape::may_match` applies (timestamps, ids, amounts); `numeric::digit_run`
//! examines the others run by run.
//!
//! Not here: the validators (`detect`, `numeric`), custom regex detectors.

use super::detect::{
    ASSIGNMENT_SET, Builtin, DIGIT_SET, Hit, TOKEN_SET, anchor_at, assignment_hit, at_sign_len,
    email_hit, ipv6_hit, is_local, keyword_may_end_before, token_hit,
};
use super::numeric::digit_run;
use super::validate;
use wide::u8x16;

/// Widest block; shorter values use a 16- or 32-byte block so a short cell is not padded to 64.
const BLOCK: usize = 64;

/// Shortest token any prefix-anchored detector matches (`xoxb-` and ten characters); shorter
/// regions skip the token masks.
const MIN_TOKEN_LEN: usize = 15;

/// Shortest token run that can hold a match found by token shape: `1.2.3.4` (a match by digit
/// count needs nine digits, hence nine bytes).
const MIN_DIGIT_RUN: u32 = 7;

/// Fewest digits of a match found by token shape (an SSN), other than an IPv4 address.
const MIN_TOKEN_DIGITS: u32 = 9;

/// Fewest digits of a card number (`numeric`'s bound).
const MIN_CARD_DIGITS: u32 = 13;

/// Most digit groups `numeric::token_shape` reads in one piece (`numeric`'s `MAX_GROUPS`).
const MAX_TOKEN_GROUPS: u32 = 12;

const EMAIL: u64 = 1 << Builtin::Email as u8;
const IPV6: u64 = 1 << Builtin::Ipv6 as u8;

const C_DIGIT: u8 = 1;
/// ` `, `-`, `.`: what joins digit groups into one token.
const C_SEP: u8 = 2;
/// `+`, `(` and capital letters: what can sit right before the first digit of an E.164 or
/// `(ddd)` phone number or after an IBAN country code's first letter.
const C_ANCHOR: u8 = 4;
/// `@`, the `%` of its URL encoding `%40` and the `&` of its HTML references `&#64;`, `&#x40;`.
const C_AT: u8 = 8;
/// `:` and `=`: key-value separators (and, for `:`, IPv6).
const C_ASSIGN: u8 = 16;
/// `A`, `g`, `x`: first bytes of the AWS/GCP, GitHub/GitLab and Slack prefixes.
const C_TOKEN: u8 = 32;
/// `J`, the rarest byte of `eyJ`.
const C_J: u8 = 64;
const C_DASH: u8 = 128;

#[expect(
    clippy::indexing_slicing,
    reason = "evaluated at compile time: a bad index fails the build, never the gateway"
)]
const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = C_DIGIT;
        d += 1;
    }
    let mut u = b'A';
    while u <= b'Z' {
        t[u as usize] = C_ANCHOR;
        u += 1;
    }
    t[b'+' as usize] = C_ANCHOR;
    t[b'(' as usize] = C_ANCHOR;
    t[b' ' as usize] = C_SEP;
    t[b'.' as usize] = C_SEP;
    t[b'-' as usize] = C_SEP | C_DASH;
    t[b'@' as usize] = C_AT;
    t[b'%' as usize] = C_AT;
    t[b'&' as usize] = C_AT;
    t[b':' as usize] = C_ASSIGN;
    t[b'=' as usize] = C_ASSIGN;
    t[b'A' as usize] |= C_TOKEN;
    t[b'g' as usize] = C_TOKEN;
    t[b'x' as usize] = C_TOKEN;
    t[b'J' as usize] |= C_J;
    t
};

/// The class byte of `c` by comparisons: the scalar reference the tests pin both the table
/// and [`class_words`] to.
#[cfg(test)]
fn class_of(c: u8) -> u8 {
    let digit = c.wrapping_sub(b'0') < 10;
    let upper = c.wrapping_sub(b'A') < 26;
    let sep = c == b' ' || c == b'.' || c == b'-';
    let anchor = upper || c == b'+' || c == b'(';
    let at = c == b'@' || c == b'%' || c == b'&';
    let assign = c == b':' || c == b'=';
    let token = c == b'A' || c == b'g' || c == b'x';
    let j = c == b'J';
    let dash = c == b'-';
    (u8::from(digit) * C_DIGIT)
        | (u8::from(sep) * C_SEP)
        | (u8::from(anchor) * C_ANCHOR)
        | (u8::from(at) * C_AT)
        | (u8::from(assign) * C_ASSIGN)
        | (u8::from(token) * C_TOKEN)
        | (u8::from(j) * C_J)
        | (u8::from(dash) * C_DASH)
}

/// Every class: what a scan of all built-in families needs.
const ALL_CLASSES: u8 = !0;

/// The classes the key-value and token-prefix families read.
const LITERAL_CLASSES: u8 = C_ASSIGN | C_TOKEN | C_J | C_DASH;

/// The classes of the digit family alone (the `numeric` pass of a long region).
const DIGIT_CLASSES: u8 = C_DIGIT | C_SEP | C_ANCHOR;

/// The bitmask of every class in `NEED` over the block `b` (bit `i` set when byte `i` is in
/// the class), indexed by the class's bit number, and which classes occur at all.
///
/// Sixteen bytes at a time with `wide` (safe SSE2: `pcmpeqb`, `pminub`, `pmovmskb`): one
/// compare and one movemask per class and chunk. Rejected: a class table (two dependent loads
/// per byte, then a multiply per eight bytes and class to pack bits), and comparisons the
/// compiler vectorises by itself (it does, but never emits `pmovmskb` for the packing, which
/// stayed a multiply per word and class); both cost about three times as many instructions per
/// short cell. `core::arch` would need `unsafe`, which this crate forbids. A constant `NEED`
/// lets the compiler drop the other classes: the digit pass over a long region computes three.
#[inline(always)]
fn class_words<const K: usize, const NEED: u8>(b: &Chunks<K>) -> ([u64; 8], u8) {
    let mut m = [0u64; 8];
    for (&v, &at) in b.0.iter().zip(&b.1) {
        classify_chunk::<NEED>(v, at, &mut m);
    }
    (m, present_classes(&m))
}

/// A block of up to 64 bytes as `K` 16-byte vectors and the bit of each one's first byte.
/// A block shorter than its chunks is loaded as overlapping chunks, the last one ending at
/// the block's end (bytes seen twice set the same bits twice, and nothing past the block is
/// read), or, under 16 bytes, as one zero-padded chunk (zero is in no class). Copying a short
/// block into a zeroed array instead was a `memset` and a `memcpy` call, and the compiler
/// spilled a 32-byte copy to the stack byte by byte: a 20-byte cell cost twice a 16-byte one.
#[derive(Clone, Copy)]
struct Chunks<const K: usize>([u8x16; K], [usize; K]);

/// 16 bytes of `s` from `i` (zero when out of range, which the callers rule out).
#[inline(always)]
fn load16(s: &[u8], i: usize) -> u8x16 {
    u8x16::new(
        s.get(i..i + 16)
            .and_then(|c| <[u8; 16]>::try_from(c).ok())
            .unwrap_or([0; 16]),
    )
}

impl Chunks<4> {
    /// A whole 64-byte block.
    #[inline(always)]
    fn full(b: &[u8; BLOCK]) -> Self {
        Chunks(
            [load16(b, 0), load16(b, 16), load16(b, 32), load16(b, 48)],
            [0, 16, 32, 48],
        )
    }
}

impl<const K: usize> Chunks<K> {
    /// Bit `i` set when byte `i` is `needle`; `needle` is not zero (padding is).
    #[inline(always)]
    fn eq(&self, needle: u8) -> u64 {
        let mut m = 0u64;
        for (&v, &at) in self.0.iter().zip(&self.1) {
            m |= u64::from(v.simd_eq(u8x16::splat(needle)).to_bitmask()) << at;
        }
        m
    }
}

/// Calls the const-generic `$f::<N, K, ...>` with the chunks of `$bytes` (at most 64 bytes):
/// `N` is the block width the masks are read with, `K` the number of chunks.
macro_rules! with_chunks {
    ($bytes:expr, |$c:ident, $n:ident, $k:ident| $body:expr) => {{
        let bytes: &[u8] = $bytes;
        let len = bytes.len();
        if len <= 16 {
            const $n: usize = 16;
            const $k: usize = 1;
            let $c = Chunks([u8x16::new(pad16(bytes))], [0]);
            $body
        } else if len <= 32 {
            const $n: usize = 32;
            const $k: usize = 2;
            let $c = Chunks([load16(bytes, 0), load16(bytes, len - 16)], [0, len - 16]);
            $body
        } else if len <= 48 {
            const $n: usize = 48;
            const $k: usize = 3;
            let $c = Chunks(
                [load16(bytes, 0), load16(bytes, 16), load16(bytes, len - 16)],
                [0, 16, len - 16],
            );
            $body
        } else {
            const $n: usize = BLOCK;
            const $k: usize = 4;
            let $c = Chunks(
                [
                    load16(bytes, 0),
                    load16(bytes, 16),
                    load16(bytes, 32),
                    load16(bytes, len - 16),
                ],
                [0, 16, 32, len - 16],
            );
            $body
        }
    }};
}

/// Which classes occur at all, so absent ones cost nothing more.
#[inline(always)]
fn present_classes(m: &[u64; 8]) -> u8 {
    let mut present = 0u8;
    for (i, &x) in m.iter().enumerate() {
        present |= u8::from(x != 0) << i;
    }
    present
}

/// ORs the class bits of the 16 bytes `v` into `m`, shifted to bit `shift`.
#[inline(always)]
fn classify_chunk<const NEED: u8>(v: u8x16, shift: usize, m: &mut [u64; 8]) {
    let splat = u8x16::splat;
    let mut put = |class: u8, hit: u8x16| {
        if NEED & class != 0
            && let Some(slot) = m.get_mut(class.trailing_zeros() as usize)
        {
            *slot |= u64::from(hit.to_bitmask()) << shift;
        }
    };
    let d = v - splat(b'0');
    put(C_DIGIT, d.min(splat(9)).simd_eq(d));
    let dash = v.simd_eq(splat(b'-'));
    put(
        C_SEP,
        v.simd_eq(splat(b' ')) | v.simd_eq(splat(b'.')) | dash,
    );
    let u = v - splat(b'A');
    put(
        C_ANCHOR,
        u.min(splat(25)).simd_eq(u) | v.simd_eq(splat(b'+')) | v.simd_eq(splat(b'(')),
    );
    put(
        C_AT,
        v.simd_eq(splat(b'@')) | v.simd_eq(splat(b'%')) | v.simd_eq(splat(b'&')),
    );
    put(C_ASSIGN, v.simd_eq(splat(b':')) | v.simd_eq(splat(b'=')));
    put(
        C_TOKEN,
        v.simd_eq(splat(b'A')) | v.simd_eq(splat(b'g')) | v.simd_eq(splat(b'x')),
    );
    put(C_J, v.simd_eq(splat(b'J')));
    put(C_DASH, dash);
}

/// `v` (at most 16 bytes) zero-padded to 16, from overlapping word loads: a variable-length
/// `copy_from_slice` into a zeroed array is a `memcpy` call, which cost a short cell as much
/// as classifying it.
#[inline(always)]
fn pad16(v: &[u8]) -> [u8; 16] {
    let n = v.len();
    let word = |r: std::ops::Range<usize>| -> u64 {
        let mut w = [0u8; 8];
        if let Some(src) = v.get(r.clone()) {
            w.get_mut(..r.len())
                .unwrap_or_default()
                .copy_from_slice(src);
        }
        u64::from_le_bytes(w)
    };
    let (lo, hi) = if n >= 8 {
        // Bytes 8..n are the top n - 8 bytes of the last eight.
        let shift = u32::try_from(8 * (16 - n.min(16))).unwrap_or(64);
        (word(0..8), word(n - 8..n).checked_shr(shift).unwrap_or(0))
    } else if n >= 4 {
        // Two overlapping four-byte loads; the overlap holds the same bytes.
        let shift = 8 * (n - 4);
        (word(0..4) | (word(n - 4..n) << shift), 0)
    } else {
        let mut w = 0u64;
        for (i, &b) in v.iter().enumerate() {
            w |= u64::from(b) << (8 * i);
        }
        (w, 0)
    };
    let mut out = [0u8; 16];
    out.get_mut(..8)
        .unwrap_or_default()
        .copy_from_slice(&lo.to_le_bytes());
    out.get_mut(8..)
        .unwrap_or_default()
        .copy_from_slice(&hi.to_le_bytes());
    out
}

/// Where a prefix-anchored token can start: a token first byte, the `J` of `eyJ` (found from
/// its `J`, two bytes on), or the second of two dashes (`-----BEGIN`).
#[inline(always)]
fn token_candidates(words: &[u64; 8], present: u8, dash: u64) -> u64 {
    let of = |class: u8| {
        if present & class != 0 {
            class_mask(words, class)
        } else {
            0
        }
    };
    of(C_TOKEN) | (of(C_J) >> 2) | (dash & (dash >> 1))
}

/// The `:`/`=` of a block that can end a key name: not those right after a digit (times of
/// day, ports, ratios), because every keyword ends in a letter and `keyword_may_end_before`
/// looks at the byte before the separator first (spaces and a quote in between are not
/// digits). The first byte's predecessor lies in the previous block and is not filtered.
#[inline(always)]
fn assignment_candidates(words: &[u64; 8], present: u8) -> u64 {
    let digits = if present & C_DIGIT != 0 {
        class_mask(words, C_DIGIT)
    } else {
        0
    };
    class_mask(words, C_ASSIGN) & !(digits << 1)
}

/// The bitmask of `class` from [`class_words`].
#[inline(always)]
fn class_mask(masks: &[u64; 8], class: u8) -> u64 {
    masks
        .get(class.trailing_zeros() as usize)
        .copied()
        .unwrap_or(0)
}

/// What a family carries from one block to the next.
#[derive(Debug, Default)]
struct State {
    /// Where the scan starts: assignment keys must start at or after it.
    from: usize,
    email_skip: usize,
    ipv6_skip: usize,
    /// Token prefixes starting before here overlap the previous prefix.
    token_resume: usize,
    digit_skip: usize,
    /// Token runs before here were examined already (a run can cross blocks).
    digit_done: usize,
    /// Bit 63 of the previous block's digit / token-run / anchor masks.
    prev_digit: bool,
    prev_run: bool,
    prev_anchor: bool,
}

/// Appends the hits of the built-in detectors in `set` within `hay[from..]` to `hits`.
pub(crate) fn scan_builtins(hay: &[u8], from: usize, set: u64, hits: &mut Vec<Hit>) {
    let Some(region) = hay.get(from..) else {
        return;
    };
    let prev = from.checked_sub(1).and_then(|i| hay.get(i)).copied();
    let mut st = State {
        from,
        token_resume: from,
        digit_skip: from,
        digit_done: from,
        prev_digit: prev.is_some_and(|b| b.is_ascii_digit()),
        // A token run reaching `from` from before is examined from its first digit at or
        // after `from` (`digit_run` skips a digit that is not a run start).
        prev_run: false,
        prev_anchor: prev.is_some_and(is_anchor),
        ..State::default()
    };
    let tokens = region.len() >= MIN_TOKEN_LEN;
    // Only the classes the families in `set` read: a long region's token prefixes are found
    // by the automaton, so its pass skips the token classes, and a pass without digit
    // detectors skips the digit ones.
    if set & !DIGIT_SET == 0 {
        scan_blocks::<DIGIT_CLASSES>(hay, from, region, set, tokens, &mut st, hits);
    } else if set & TOKEN_SET != 0 {
        scan_blocks::<ALL_CLASSES>(hay, from, region, set, tokens, &mut st, hits);
    } else if set & DIGIT_SET != 0 {
        scan_blocks::<{ DIGIT_CLASSES | C_AT | C_ASSIGN }>(
            hay, from, region, set, tokens, &mut st, hits,
        );
    } else {
        scan_blocks::<{ C_AT | C_ASSIGN | C_DIGIT }>(hay, from, region, set, tokens, &mut st, hits);
    }
}

/// The block loop of [`scan_builtins`], classifying the classes in `NEED` (every class the
/// families in `set` read).
#[inline(always)]
fn scan_blocks<const NEED: u8>(
    hay: &[u8],
    from: usize,
    region: &[u8],
    set: u64,
    tokens: bool,
    st: &mut State,
    hits: &mut Vec<Hit>,
) {
    let mut pos = from;
    let mut rest = region;
    while !rest.is_empty() {
        let n = rest.len().min(BLOCK);
        let last = n == rest.len();
        // Full blocks are loaded in place; the last partial one as overlapping chunks, sized
        // to what is left so a short cell classifies 16 bytes.
        if let Some(Ok(block)) = rest.get(..BLOCK).map(<&[u8; BLOCK]>::try_from) {
            let c = Chunks::full(block);
            block_scan::<BLOCK, 4, NEED>(hay, pos, &c, last, set, tokens, st, hits);
        } else {
            with_chunks!(rest, |c, W, K| block_scan::<W, K, NEED>(
                hay, pos, &c, true, set, tokens, st, hits
            ));
        }
        pos += n;
        rest = rest.get(n..).unwrap_or_default();
    }
}

#[inline]
fn is_anchor(b: u8) -> bool {
    CLASSES
        .get(usize::from(b))
        .is_some_and(|c| c & C_ANCHOR != 0)
}

/// Calls `f` with the position of every set bit of `m`, lowest first.
#[inline(always)]
fn each_bit(mut m: u64, pos: usize, mut f: impl FnMut(usize)) {
    while m != 0 {
        let i = m.trailing_zeros() as usize;
        m &= m - 1;
        f(pos + i);
    }
}

/// Classifies one block (`hay[pos..]`, zero-padded when `last`) and hands its candidates to
/// the validators. Masks that look at the next byte treat the byte after a non-last block as
/// "could be anything" (a candidate more, never one less); after the last block there is
/// nothing, as the validators see it.
#[expect(
    clippy::too_many_arguments,
    reason = "the per-block state of one scan; a struct for it would only rename the fields"
)]
#[inline(always)]
fn block_scan<const N: usize, const K: usize, const NEED: u8>(
    hay: &[u8],
    pos: usize,
    b: &Chunks<K>,
    last: bool,
    set: u64,
    tokens: bool,
    st: &mut State,
    hits: &mut Vec<Hit>,
) {
    let (words, present) = class_words::<K, NEED>(b);
    let has = |class: u8| present & class != 0;
    if set & EMAIL != 0 && has(C_AT) {
        each_bit(class_mask(&words, C_AT), pos, |p| {
            if let Some(h) = email_hit(hay, p, &mut st.email_skip) {
                hits.push(h);
            }
        });
    }
    if set & (IPV6 | ASSIGNMENT_SET) != 0 && has(C_ASSIGN) {
        // Colons and the IPv6 token bytes, for the blocks that have a separator at all.
        let (colons, v6) = if set & IPV6 != 0 { v6_masks(b) } else { (0, 0) };
        each_bit(colons, pos, |p| {
            if p >= st.ipv6_skip
                && let Some(h) = match v6_token_rejects(colons, v6, p - pos, N) {
                    Some(end) => {
                        st.ipv6_skip = pos + end;
                        None
                    }
                    None => ipv6_hit(hay, p, &mut st.ipv6_skip),
                }
            {
                hits.push(h);
            }
        });
        if set & ASSIGNMENT_SET != 0 {
            // No skip state here: any order gives the same hits. The keyword test is the
            // first thing `assignment_hit` does; inlined here it saves a call per time of day.
            each_bit(assignment_candidates(&words, present), pos, |p| {
                if keyword_may_end_before(hay, st.from, p)
                    && let Some(h) = assignment_hit(hay, st.from, p, set)
                {
                    hits.push(h);
                }
            });
        }
    }
    let dash = if has(C_DASH) {
        class_mask(&words, C_DASH)
    } else {
        0
    };
    if tokens && set & TOKEN_SET != 0 {
        let mut cand = token_candidates(&words, present, dash);
        if !last {
            // `eyJ` or `--` may continue into the next block.
            cand |= 3 << (N - 2);
        }
        each_bit(cand, pos, |p| {
            if p < st.token_resume {
                return;
            }
            if let Some((e, anchor)) = anchor_at(hay, p) {
                st.token_resume = e;
                if let Some(h) = token_hit(hay, p, e, anchor, set) {
                    hits.push(h);
                }
            }
        });
    }
    let (prev_digit, prev_run, prev_anchor) = (st.prev_digit, st.prev_run, st.prev_anchor);
    st.prev_digit = false;
    st.prev_run = false;
    st.prev_anchor = false;
    if set & DIGIT_SET == 0 || !has(C_DIGIT) {
        // The carries are only read when this block's last byte is a digit or an anchor.
        st.prev_anchor = has(C_ANCHOR) && class_mask(&words, C_ANCHOR) >> (N - 1) != 0;
        return;
    }
    let masks = digit_masks(&words, present);
    let d = digit_candidates::<N>(
        hay.get(pos..).unwrap_or_default(),
        |needle| b.eq(needle),
        masks,
        last,
        prev_digit,
        prev_run,
        prev_anchor,
    );
    st.prev_digit = d.top_digit;
    st.prev_run = d.top_run;
    st.prev_anchor = d.top_anchor;
    let cand = d.cand;
    each_bit(cand, pos, |p| {
        if p >= st.digit_done {
            st.digit_done = digit_run(hay, p, set, hits, &mut st.digit_skip);
        }
    });
}

/// Bits of `:` and of the bytes an IPv6 token is made of (hex digits, `:`, `.`, as
/// `ipv6_hit` walks them) in the block `b`.
#[inline]
fn v6_masks<const K: usize>(b: &Chunks<K>) -> (u64, u64) {
    let splat = u8x16::splat;
    let (mut colons, mut v6) = (0u64, 0u64);
    for (&v, &at) in b.0.iter().zip(&b.1) {
        let colon = v.simd_eq(splat(b':'));
        let d = v - splat(b'0');
        let l = (v | splat(0x20)) - splat(b'a');
        let tok = d.min(splat(9)).simd_eq(d) | l.min(splat(5)).simd_eq(l) | colon;
        colons |= u64::from(colon.to_bitmask()) << at;
        v6 |= u64::from((tok | v.simd_eq(splat(b'.'))).to_bitmask()) << at;
    }
    (colons, v6)
}

/// For the colon at bit `i` of a block of `n` bytes (`ipv6_hit` walks at most 45 bytes back
/// and 46 on): `Some(end)` when `ipv6_hit` must fail
/// there, `end` being the bit where its token ends (where `ipv6_hit` would resume); `None`
/// when the masks cannot tell (the token crosses the block, or is longer than `ipv6_hit`
/// looks) and `ipv6_hit` has to decide. A match needs two colons in a row or seven colons in
/// its token, which times of day (`13:45:12`) and MAC addresses never have.
#[inline]
fn v6_token_rejects(colons: u64, v6: u64, i: usize, n: usize) -> Option<usize> {
    // The token is the run of set `v6` bits around `i`; both of its ends must be in the
    // block (a zero-padded last block's padding ends it).
    let below = !v6 & ((1u64 << i) - 1);
    if below == 0 {
        return None;
    }
    let start = 64 - below.leading_zeros() as usize;
    let above = !v6 & !((1u64 << i) - 1);
    let end = above.trailing_zeros() as usize;
    if end >= n || i - start > 45 || end - i > 46 {
        return None;
    }
    let span = ((1u64 << (end - start)) - 1) << start;
    let c = colons & span;
    (c.count_ones() < 2 || (c.count_ones() < 7 && c & (c >> 1) == 0)).then_some(end)
}

/// The digit, anchor and separator masks of one block.
#[inline(always)]
fn digit_masks(words: &[u64; 8], present: u8) -> [u64; 3] {
    let has = |class: u8| present & class != 0;
    let anchor = if has(C_ANCHOR) {
        class_mask(words, C_ANCHOR)
    } else {
        0
    };
    let sep = if has(C_SEP) {
        class_mask(words, C_SEP)
    } else {
        0
    };
    [class_mask(words, C_DIGIT), anchor, sep]
}

/// The digit family's candidates in one block, and the carries into the next one.
struct DigitCandidates {
    /// Token-run starts that `digit_run` has to examine.
    cand: u64,
    top_digit: bool,
    top_run: bool,
    top_anchor: bool,
}

/// Token-run starts of one block that can hold a digit match (see the module docs for the
/// shape argument). Shared by [`block_scan`] and [`may_match`], so the fast reject can never
/// drop a run the scan would examine. `block` holds the block's bytes from bit 0 (the few
/// runs whose shape leaves only a card or an SSN are validated on them), and `eq` gives the
/// bitmask of one byte value, for the masks only some blocks need.
#[inline(always)]
fn digit_candidates<const N: usize>(
    block: &[u8],
    eq: impl Fn(u8) -> u64,
    [digit, anchor, sep]: [u64; 3],
    last: bool,
    prev_digit: bool,
    prev_run: bool,
    prev_anchor: bool,
) -> DigitCandidates {
    let top = 1u64 << (N - 1);
    // A separator joins when digits sit on both sides; past a non-last block the next byte is
    // unknown and taken as a digit.
    let before = (digit << 1) | u64::from(prev_digit);
    let after = (digit >> 1) | if last { 0 } else { top };
    let joins = sep & before & after;
    let run = digit | joins;
    let starts = run & !((run << 1) | u64::from(prev_run));
    // Runs of at least MIN_DIGIT_RUN bytes: bit p survives when bits p..p+7 are all set. A
    // non-last block continues with ones (unknown bytes).
    let fill = if last { 0u128 } else { !0u128 << N };
    let r = u128::from(run) | fill;
    let r2 = r & (r >> 1);
    let r4 = r2 & (r2 >> 2);
    let r7 = r4 & (r4 >> (MIN_DIGIT_RUN - 4));
    #[expect(clippy::cast_possible_truncation, reason = "the block's 64 bits")]
    let long = r7 as u64;
    let anchor_before = (anchor << 1) | u64::from(prev_anchor);
    // A capital letter anchors only an IBAN's digits, after a country code of two capitals:
    // after a capital that follows no anchor byte (the `T` of an ISO timestamp),
    // `digit_token` finds nothing and returns at once, so such a run is a candidate only by
    // its shape, like a run after a lower-case letter. `+` and `(` anchor after anything;
    // their mask is computed only for the blocks that have a lone capital before a digit.
    let mut anchored = anchor_before;
    let lone = anchor & !anchor_before & (digit >> 1);
    if lone != 0 {
        anchored &= !((lone & !(eq(b'+') | eq(b'('))) << 1);
    }
    let mut cand = starts & (long | anchored);
    // A run that ends inside the block is known whole: without an anchor, only the token
    // shapes `numeric::Shape::may_match` admits can match in it, and those are decided here
    // from the masks (ids, dates, times, amounts never reach `digit_run`).
    let mut quiet = cand & !anchored;
    // `0` and `.` masks, computed for the few blocks that need them.
    let mut zero_dot: Option<(u64, u64)> = None;
    while quiet != 0 {
        let p = quiet.trailing_zeros();
        quiet &= quiet - 1;
        let len = (!(r >> p)).trailing_zeros();
        let keep = if !last && p + len >= N as u32 {
            // The run may go on past the block: the 64 bytes from its start are classified
            // once more (the digit and separator classes only) and the run judged there.
            // Such runs were nearly all of a clean stream's `digit_token` calls (~240
            // instructions each, 12% of the stream); the second classification costs less.
            p == 0 || crossing_run_may_match(block, p)
        } else {
            // In the last block nothing follows (the masks are zero past the region's
            // end), so a run ending there is known whole too.
            whole_run_may_match(block, p, len, digit, joins, || {
                *zero_dot.get_or_insert_with(|| (eq(b'0'), eq(b'.')))
            })
        };
        if !keep {
            cand &= !(1u64 << p);
        }
    }
    DigitCandidates {
        cand,
        top_digit: digit & top != 0,
        top_run: run & top != 0,
        top_anchor: anchor & top != 0,
    }
}

/// Whether a digit detector can match in the token run of `len` bytes at bit `p` of `block`,
/// known whole and not after an anchor; `digit` and `joins` are the block's masks,
/// `zero_dot` its `0` and `.` masks. A run of 64 bytes is kept (no span mask fits).
/// Inlined like the rest of the mask arithmetic it belongs to, so the fast reject of a short
/// cell makes no call for it.
#[inline(always)]
fn whole_run_may_match(
    block: &[u8],
    p: u32,
    len: u32,
    digit: u64,
    joins: u64,
    mut zero_dot: impl FnMut() -> (u64, u64),
) -> bool {
    if p + len >= u64::BITS {
        return true;
    }
    let span = ((1u64 << len) - 1) << p;
    let run_joins = joins & span;
    // One group (an id, a year): only a card's digit count can match, and the run is all
    // digits. Decided without the `0`/`.` masks or a popcount (the x86-64 baseline has no
    // `popcnt`: `count_ones` is a dozen instructions).
    if run_joins == 0 {
        len >= MIN_CARD_DIGITS && card_may_match(block, p, len)
    } else if len == SSN_LEN && run_joins == SSN_JOINS << p {
        ssn_may_match(block, p)
    } else {
        let (zero, dot) = zero_dot();
        run_may_match(len, digit & span, run_joins, zero, dot)
    }
}

/// [`whole_run_may_match`] for the run starting at bit `p` (> 0) of `block` that reaches
/// the end of its (non-last) block: the up to 64 bytes from `p` are classified as a block of
/// their own, where the run starts at bit 0. Kept when it reaches that block's end too.
/// Out of line: it runs for at most one run per block (the one reaching the block's end),
/// and a short cell (one last block) never needs it, so the fast reject need not carry a
/// second classification inlined.
#[inline(never)]
fn crossing_run_may_match(block: &[u8], p: u32) -> bool {
    let Some(w) = block.get(p as usize..) else {
        return true;
    };
    if let Some(Ok(full)) = w.get(..BLOCK).map(<&[u8; BLOCK]>::try_from) {
        run_at_start_may_match::<BLOCK, 4>(w, &Chunks::full(full), w.len() == BLOCK)
    } else {
        with_chunks!(w, |c, W, K| run_at_start_may_match::<W, K>(w, &c, true))
    }
}

/// The token run starting at bit 0 of the block `b` (`w` from its first byte, a digit that
/// follows no run): whether a digit detector can match in it. Inlined into its one caller,
/// once per block width.
#[inline(always)]
fn run_at_start_may_match<const N: usize, const K: usize>(
    w: &[u8],
    b: &Chunks<K>,
    last: bool,
) -> bool {
    let (words, _) = class_words::<K, { C_DIGIT | C_SEP }>(b);
    let digit = class_mask(&words, C_DIGIT);
    let sep = class_mask(&words, C_SEP);
    let top = 1u64 << (N - 1);
    let after = (digit >> 1) | if last { 0 } else { top };
    let joins = sep & (digit << 1) & after;
    let fill = if last { 0u128 } else { !0u128 << N };
    let r = u128::from(digit | joins) | fill;
    let len = (!r).trailing_zeros();
    if !last && len >= N as u32 {
        return true;
    }
    whole_run_may_match(w, 0, len, digit, joins, || (b.eq(b'0'), b.eq(b'.')))
}

/// Bytes of an SSN (`AAA-GG-SSSS`) and the bits of its two joins.
const SSN_LEN: u32 = 11;
const SSN_JOINS: u64 = (1 << 3) | (1 << 6);

/// Most digits of a card number (`numeric`'s bound).
const MAX_CARD_DIGITS: u32 = 19;

/// Whether a card can match in the one-group run of `len` digits at bit `p` of `block`
/// (known whole, not after an anchor). Only a card matches in a run of 13 or more digits
/// without joins, and only the whole run, so it needs the run's Luhn sum and issuer prefix:
/// numbers failing either (order ids, failing look-alikes) cost no `digit_token` call.
/// Runs longer than a card are left to `digit_token`, as before.
#[inline]
fn card_may_match(block: &[u8], p: u32, len: u32) -> bool {
    let Some(run) = block.get(p as usize..(p + len) as usize) else {
        return true;
    };
    len > MAX_CARD_DIGITS || (validate::luhn(run) && validate::card_prefix_ok(run, run.len()))
}

/// Whether a digit detector can match in the run `AAA?GG?SSSS` at bit `p` of `block` (three
/// groups of 3, 2 and 4 digits, known whole, not after an anchor). No other detector has
/// this shape (a NANP number needs 3-3-4, a national one a 0-led group and ten digits, an
/// IPv4 address four groups; the groups after the first are too short for anything), so
/// with two `-` or two ` ` joins only a valid SSN range can match, and with other joins
/// nothing but what `numeric` decides: those are kept.
#[inline]
fn ssn_may_match(block: &[u8], p: u32) -> bool {
    let p = p as usize;
    match block.get(p..p + SSN_LEN as usize) {
        Some(&[a0, a1, a2, j0 @ (b'-' | b' '), g0, g1, j1, s0, s1, s2, s3]) if j1 == j0 => {
            validate::ssn_ok(&[a0, a1, a2], &[g0, g1], &[s0, s1, s2, s3])
        }
        _ => true,
    }
}

/// Whether a digit detector can match in a token run of `len` bytes (digits `d` joined by
/// the separators `joins`, known whole, not after an anchor), by the rule of `numeric::Shape::may_match`:
/// a card needs 13 digits, an IPv4 address four dot-joined groups, every other shape two
/// groups, nine digits and a three-digit group or a `0`-led group of two to five digits
/// followed by ten digits in all (a national number). `Shape` describes the token from its
/// first examined group; every figure here is of the whole run, which is at least as large,
/// so a run is dropped only when no examined suffix can pass. Runs of more than
/// `MAX_TOKEN_GROUPS` groups are kept: `digit_token` cuts them into pieces.
#[inline]
fn run_may_match(len: u32, d: u64, joins: u64, zero: u64, dot: u64) -> bool {
    // Every byte of the run (`len` bytes) is a digit or a join, and each join sits between
    // two groups: one popcount gives both counts.
    let n_joins = joins.count_ones();
    let digits = len - n_joins;
    let groups = n_joins + 1;
    let starts = d & !(d << 1);
    if groups > MAX_TOKEN_GROUPS || digits >= MIN_CARD_DIGITS {
        return true;
    }
    if groups >= 4 && joins & dot != 0 {
        return true;
    }
    if groups < 2 || digits < MIN_TOKEN_DIGITS {
        return false;
    }
    let three = starts & (d >> 1) & (d >> 2) & !(d >> 3);
    if three != 0 {
        return true;
    }
    let mut led = starts & zero;
    while led != 0 {
        let z = led.trailing_zeros();
        led &= led - 1;
        let len = (d >> z).trailing_ones();
        if (2..=5).contains(&len) && (d >> z).count_ones() >= 10 {
            return true;
        }
    }
    false
}

/// Longest value [`may_match`] decides: one block.
pub(crate) const REJECT_MAX: usize = BLOCK;

/// Whether a built-in detector of `set` can match in `value` (at most [`REJECT_MAX`]
/// bytes, scanned from its start): `false` only when [`scan_builtins`] would find nothing.
///
/// The fast reject for result-set cells: most cells hold no candidate at all, and for them
/// this one classification is the whole cost of masking, with no scan state, hit vector or
/// validator call. It takes the candidates of [`block_scan`] (the digit family by the same
/// function) and drops three kinds the scan would hand to a validator that must fail: a `:`
/// when the value has neither `::` nor seven colons (no IPv6 address), a `:`/`=` with no
/// possible keyword ending before it (times, URLs, `note:`), and an `@` with no local part
/// before it or no alphabetic top-level label after it ([`email_may_match`]).
pub(crate) fn may_match(value: &[u8], set: u64) -> bool {
    if value.len() > REJECT_MAX {
        return true;
    }
    // Only the classes the session's families read: a literal-secrets session (the common
    // `secrets` rule) classifies four of the eight.
    if set & (DIGIT_SET | EMAIL | IPV6) == 0 {
        with_chunks!(value, |c, W, K| may_match_block::<W, K, LITERAL_CLASSES>(
            value, c, set
        ))
    } else {
        with_chunks!(value, |c, W, K| may_match_block::<W, K, ALL_CLASSES>(
            value, c, set
        ))
    }
}

/// Whether `email_at` can succeed at some `@` of the block `b` (all of `hay`): it needs a
/// local-part byte or a closing quote right before the `@`, and after it either an address
/// literal (`[`) or a domain whose last label is alphabetic, hence a `.` followed by a byte
/// that is not a digit. Handles, `user@localhost` and `pkg@1.2.3` fail here without a call,
/// and so does a `%` that does not begin `%40` (percentages, other URL escapes) and an `&`
/// that does not begin `&#64;` or `&#x40;` (query strings, other character references).
#[inline(always)]
fn email_may_match<const K: usize>(
    hay: &[u8],
    b: &Chunks<K>,
    words: &[u64; 8],
    present: u8,
) -> bool {
    let digit = if present & C_DIGIT != 0 {
        class_mask(words, C_DIGIT)
    } else {
        0
    };
    let tld_dots = b.eq(b'.') & !(digit >> 1);
    let mut at = class_mask(words, C_AT);
    while at != 0 {
        let p = at.trailing_zeros() as usize;
        at &= at - 1;
        let Some(at_len) = at_sign_len(hay, p) else {
            continue;
        };
        let local = p
            .checked_sub(1)
            .and_then(|i| hay.get(i))
            .is_some_and(|&c| c == b'"' || is_local(c));
        if local && (hay.get(p + at_len) == Some(&b'[') || (tld_dots >> p) >> 1 != 0) {
            return true;
        }
    }
    false
}

#[inline(always)]
fn may_match_block<const N: usize, const K: usize, const NEED: u8>(
    hay: &[u8],
    b: Chunks<K>,
    set: u64,
) -> bool {
    let (words, present) = class_words::<K, NEED>(&b);
    let has = |class: u8| present & class != 0;
    if set & EMAIL != 0 && has(C_AT) && email_may_match(hay, &b, &words, present) {
        return true;
    }
    if set & (IPV6 | ASSIGNMENT_SET) != 0 && has(C_ASSIGN) {
        let seps = class_mask(&words, C_ASSIGN);
        if set & ASSIGNMENT_SET != 0 {
            let mut m = assignment_candidates(&words, present);
            while m != 0 {
                let p = m.trailing_zeros() as usize;
                m &= m - 1;
                if keyword_may_end_before(hay, 0, p) {
                    return true;
                }
            }
        }
        if set & IPV6 != 0 {
            // Every IPv6 match has two colons in a row or seven colons (`ipv6_hit`), all
            // inside the value.
            let colons = seps & b.eq(b':');
            if colons & (colons >> 1) != 0 || colons.count_ones() >= 7 {
                return true;
            }
        }
    }
    if hay.len() >= MIN_TOKEN_LEN && set & TOKEN_SET != 0 {
        let dash = if has(C_DASH) {
            class_mask(&words, C_DASH)
        } else {
            0
        };
        let mut cand = token_candidates(&words, present, dash);
        while cand != 0 {
            let p = cand.trailing_zeros() as usize;
            cand &= cand - 1;
            if anchor_at(hay, p).is_some() {
                return true;
            }
        }
    }
    set & DIGIT_SET != 0
        && has(C_DIGIT)
        && digit_candidates::<N>(
            hay,
            |needle| b.eq(needle),
            digit_masks(&words, present),
            true,
            false,
            false,
            false,
        )
        .cand
            != 0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::corpus;
    use super::super::detect::{BUILTIN_SET, DIGIT_SET, Hit, LITERAL_SET, Scanner};
    use super::*;

    /// Hits of the block prefilter and of the per-family scans without any gate, sorted.
    fn both(hay: &[u8], from: usize, set: u64) -> (Vec<Hit>, Vec<Hit>) {
        let scanner = Scanner::new(vec![]).unwrap();
        let mut fast = Vec::new();
        scan_builtins(hay, from, set, &mut fast);
        let mut plain = Vec::new();
        scanner.scan_families(hay, from, set, true, &mut plain);
        let key = |h: &Hit| (h.start, h.end, h.det);
        fast.sort_by_key(key);
        plain.sort_by_key(key);
        (fast, plain)
    }

    const SETS: [u64; 6] = [
        BUILTIN_SET,
        DIGIT_SET,
        LITERAL_SET,
        DIGIT_SET | (1 << Builtin::Email as u8) | IPV6,
        // Email alone: an address literal (`a@[192.0.2.1]`) is then found by nothing else.
        EMAIL,
        // What the data path hands the block pass in a long region (tokens go to the
        // automaton).
        BUILTIN_SET & !TOKEN_SET,
    ];

    /// Hits of the data path (`Scanner::scan`, which picks the block pass or the per-family
    /// searches by region length) and of the plain per-family scans, sorted.
    fn data_path(hay: &[u8], from: usize, set: u64) -> (Vec<Hit>, Vec<Hit>) {
        let scanner = Scanner::new(vec![]).unwrap();
        let mut fast = Vec::new();
        scanner.scan(hay, from, hay.len(), set, &mut fast);
        let mut plain = Vec::new();
        scanner.scan_families(hay, from, set, true, &mut plain);
        let key = |h: &Hit| (h.start, h.end, h.det);
        fast.sort_by_key(key);
        plain.sort_by_key(key);
        (fast, plain)
    }

    #[test]
    fn runs_ending_at_the_value_end_match_the_plain_scans() {
        // A run that ends where the value (the last block) ends is known whole: padded to
        // every block width, up to a block of 64 digits, where no span mask fits.
        let runs = [
            "4111111111111111",
            "4111111111111112",
            "123-45-6789",
            "900-12-3456",
            "192.168.1.20",
            "2123456789",
        ];
        let mut found = 0usize;
        for run in runs {
            for pad in 0..=(BLOCK - run.len()) {
                let hay = format!("{}{run}", "x ".repeat(pad).get(..pad).unwrap_or_default());
                for set in SETS {
                    let (fast, plain) = both(hay.as_bytes(), 0, set);
                    assert_eq!(fast, plain, "{hay:?}");
                    assert!(
                        plain.is_empty() || may_match(hay.as_bytes(), set),
                        "{hay:?}"
                    );
                    found += fast.len();
                }
            }
        }
        let digits = "1".repeat(BLOCK);
        for set in SETS {
            let (fast, plain) = both(digits.as_bytes(), 0, set);
            assert_eq!(fast, plain);
            let _ = may_match(digits.as_bytes(), set);
        }
        assert!(found > 100, "valid values were found: {found}");
    }

    #[test]
    fn runs_crossing_a_block_end_match_the_plain_scans() {
        // Runs reaching the end of a non-last block are judged on a block of their own
        // from their first byte: every crossing offset, runs shorter and longer than 64.
        let long = format!("{}4111111111111111", "1234 ".repeat(14));
        let runs = [
            "4111 1111 1111 1111",
            "4111111111111112",
            "123-45-6789",
            "900-12-3456",
            "2123456789 4111111111111111",
            "192.168.1.20",
            long.as_str(),
        ];
        let mut found = 0usize;
        for run in runs {
            for pad in 40..=2 * BLOCK {
                let hay = format!("{} {run} z{}", "x".repeat(pad), " ".repeat(BLOCK));
                for set in SETS {
                    let (fast, plain) = data_path(hay.as_bytes(), 0, set);
                    assert_eq!(fast, plain, "{hay:?}");
                    found += fast.len();
                }
            }
        }
        assert!(found > 100, "valid values were found: {found}");
    }

    #[test]
    fn long_regions_match_the_plain_scans() {
        // Whole batches of lines, as the stream masker hands them over, from every offset
        // class: the block pass finds `@`, `:`/`=` and digits there, and its IPv6 token test
        // sees tokens at every block position.
        let stream = corpus::tsv_stream(&corpus::rows(9, 400, 8, 30));
        let mut found = 0usize;
        for start in [0usize, 1, 7, 63, 64, 1000] {
            for len in [300usize, 4096, 20_000] {
                let Some(hay) = stream.get(start..start + len) else {
                    continue;
                };
                for set in SETS {
                    let (fast, plain) = data_path(hay, 0, set);
                    assert_eq!(fast, plain, "start {start} len {len} set {set:#x}");
                    found += fast.len();
                }
            }
        }
        assert!(found > 1000, "the corpus holds PII: {found}");
    }

    #[test]
    fn corpus_cells_and_lines_match_the_plain_scans() {
        let rows = corpus::rows(7, 600, 8, 30);
        let mut found = 0usize;
        for cell in corpus::cell_values(&rows) {
            for set in SETS {
                let (fast, plain) = both(&cell, 0, set);
                assert_eq!(fast, plain, "cell {:?}", String::from_utf8_lossy(&cell));
                found += fast.len();
                if cell.len() <= REJECT_MAX && !plain.is_empty() {
                    assert!(
                        may_match(&cell, set),
                        "{:?}",
                        String::from_utf8_lossy(&cell)
                    );
                }
            }
        }
        // Lines cross block boundaries and carry runs, skips and token prefixes over them.
        let stream = corpus::tsv_stream(&rows);
        for line in stream.split_inclusive(|&b| b == b'\n') {
            let (fast, plain) = both(line, 0, BUILTIN_SET);
            assert_eq!(fast, plain, "line {:?}", String::from_utf8_lossy(line));
        }
        assert!(found > 1000, "the corpus holds PII: {found}");
    }

    #[test]
    fn class_masks_match_the_scalar_classes() {
        for c in 0..=255u8 {
            for p in 0..BLOCK {
                let mut b = [0u8; BLOCK];
                b[p] = c;
                let (m, present) = class_words::<4, ALL_CLASSES>(&Chunks::full(&b));
                for bit in 0..8 {
                    let class = 1u8 << bit;
                    let want = class_of(c) & class != 0;
                    assert_eq!(class_mask(&m, class) == 1u64 << p, want, "byte {c} at {p}");
                    assert_eq!(class_mask(&m, class) == 0, !want, "byte {c} at {p}");
                    assert_eq!(present & class != 0, want);
                }
                assert_eq!(Chunks::full(&b).eq(c), if c == 0 { !0 } else { 1u64 << p });
            }
        }
        // Only the needed classes are computed.
        let (m, _) = class_words::<4, DIGIT_CLASSES>(&Chunks::full(&[b'a'; BLOCK]));
        assert_eq!(class_mask(&m, C_DIGIT), 0);
        let c = Chunks([u8x16::new(*b"a@b:c=d1 -+(AgxJ")], [0]);
        let (m, _) = class_words::<1, DIGIT_CLASSES>(&c);
        assert_eq!(class_mask(&m, C_AT) | class_mask(&m, C_ASSIGN), 0);
        assert_ne!(class_mask(&m, C_DIGIT), 0);
    }

    #[test]
    fn overlapping_chunks_give_the_masks_of_the_padded_block() {
        // Every length a block or cell can have, bytes from every class at every position.
        let alphabet = b"0123456789 .-+(A@:=gxJz\xc3";
        for n in 1..=BLOCK {
            for shift in 0..alphabet.len() {
                let bytes: Vec<u8> = (0..n)
                    .map(|i| alphabet[(i * 7 + shift) % alphabet.len()])
                    .collect();
                let (m, present) = with_chunks!(&bytes, |c, W, K| {
                    assert!(n <= W);
                    class_words::<K, ALL_CLASSES>(&c)
                });
                let colons = with_chunks!(&bytes, |c, _W, _K| c.eq(b':'));
                let mut want = [0u64; 8];
                for (i, &x) in bytes.iter().enumerate() {
                    for (bit, w) in want.iter_mut().enumerate() {
                        if class_of(x) & (1 << bit) != 0 {
                            *w |= 1u64 << i;
                        }
                    }
                }
                assert_eq!(m, want, "{n} {shift}");
                assert_eq!(present, present_classes(&want));
                let want_colons = bytes
                    .iter()
                    .enumerate()
                    .fold(0u64, |m, (i, &x)| m | (u64::from(x == b':') << i));
                assert_eq!(colons, want_colons);
            }
        }
    }

    #[test]
    fn pad16_pads_with_zeros() {
        let src: Vec<u8> = (1..=16).collect();
        for n in 0..=16 {
            let mut want = [0u8; 16];
            want[..n].copy_from_slice(&src[..n]);
            assert_eq!(pad16(&src[..n]), want, "{n}");
        }
    }

    #[test]
    fn computed_classes_match_the_table() {
        for c in 0..=255u8 {
            assert_eq!(class_of(c), CLASSES[usize::from(c)], "byte {c}");
        }
    }

    #[test]
    fn anchors_match_the_prefix_table() {
        for &(prefix, kind) in TOKEN_ANCHORS_FOR_TEST {
            let mut hay = b"..".to_vec();
            hay.extend_from_slice(prefix.as_bytes());
            assert_eq!(
                anchor_at(&hay, 2),
                Some((2 + prefix.len(), kind)),
                "{prefix}"
            );
            // One byte short is no prefix.
            let short = hay.get(..hay.len() - 1).unwrap();
            assert_eq!(anchor_at(short, 2), None, "{prefix}");
        }
        assert_eq!(anchor_at(b"AKIB", 0), None);
        assert_eq!(anchor_at(b"eyj", 0), None);
    }

    use super::super::detect::TOKEN_ANCHORS as TOKEN_ANCHORS_FOR_TEST;

    /// Pieces dense in the bytes the prefilter keys on, so generated values sit on every
    /// boundary case: runs of digits and separators across block edges, anchors right before
    /// digits, overlapping token prefixes, assignments and address fragments.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(vec![
                "4111 1111 1111 1111",
                "4111-1111-1111-1111",
                "378282246310005",
                "123-45-6789",
                "4111111111111111",
                "4111111111111112",
                "5500000000000004",
                "6011000990139424",
                "371449635398431",
                "12345678901234567890",
                "900-12-3456",
                "000-12-3456",
                "666-12-3456",
                "123-00-4567",
                "123-45-0000",
                "123 45 6789",
                "123.45.6789",
                "+1 415 555 2671",
                "(415) 555-2671",
                "415.555.2671",
                "020 7946 0958",
                "07700 900123",
                "DE89370400440532013000",
                "GB82 WEST 1234 5698 7654 32",
                "192.168.1.20",
                "1.2.3.4",
                "10.0.0.1.5",
                "2001:db8::1",
                "fe80::1:2",
                "1:2:3:4:5:6:7:8",
                "a:b:c:d:e:f:1",
                "::ffff:192.0.2.1",
                "fe80::",
                "aa:bb:cc:dd:ee:ff",
                "13:45:12",
                "0123456789abcdef0123456789abcdef",
                "jane.doe@example.com",
                "@x.io",
                "a@b",
                "a@[192.0.2.1]",
                "jane%40example.com",
                "%40",
                "%4",
                "50%",
                "a%40[192.0.2.1]",
                "u%40h@ex.io",
                "jane&#64;example.com",
                "j&#x40;ex.io",
                "j&#X40;[192.0.2.1]",
                "&#64;",
                "&#6",
                "a&amp;b@ex.io",
                "R&D",
                "\"jo do\"@ex.io",
                "user@localhost",
                "pkg@1.2.3",
                "x@a.b9",
                "@",
                ".io",
                "[",
                "\"",
                "AKIAIOSFODNN7EXAMPLE",
                "ACCAKIA",
                "AIzaSyA1234567890abcdefghijklmnopqrstu",
                "ghp_",
                "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "github_pat_",
                "glpat-",
                "glpat-abcdefghij0123456789",
                "xoxb-1234567890-abc",
                "xox",
                "eyJ",
                "eyJhbGciOiJI",
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl",
                "-----BEGIN ",
                "-----BEGIN RSA PRIVATE KEY-----",
                "---",
                "password=",
                "token: ",
                "api_key=\"",
                "aws_secret_access_key=",
                "2026-11-26 13:45:12",
                "2026-11-26T13:45:12.123Z",
                "T12",
                "9T",
                "5(415) 555-2671",
                "AT611904300234573201",
                "GB",
                "v1.2.3",
                "ORD-123456",
                "TKT-123-4567",
                "ID 2123456789",
                "0",
                "00",
                " ",
                "-",
                ".",
                ":",
                "=",
                "+",
                "(",
                "A",
                "AB",
                "12",
                "\n",
                "\t",
                "é",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            prop::collection::vec(
                prop::sample::select(b"0123456789 -.+(:=@%&#;AZgxJey_".to_vec()),
                1..12
            ),
            prop::collection::vec(any::<u8>(), 1..8),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn prefilter_finds_exactly_what_the_plain_scans_find(
            parts in prop::collection::vec(piece(), 0..40),
            from in 0usize..80,
            set in prop::sample::select(SETS.to_vec()),
        ) {
            let hay = parts.concat();
            let from = from.min(hay.len());
            let (fast, plain) = both(&hay, from, set);
            prop_assert_eq!(fast, plain, "{:?} from {}", String::from_utf8_lossy(&hay), from);
        }

        #[test]
        fn data_path_finds_exactly_what_the_plain_scans_find(
            parts in prop::collection::vec(piece(), 20..120),
            from in 0usize..80,
            set in prop::sample::select(SETS.to_vec()),
        ) {
            // Mostly longer than a cell, so the data path takes the long-region branch.
            let hay = parts.concat();
            let from = from.min(hay.len());
            let (fast, plain) = data_path(&hay, from, set);
            prop_assert_eq!(fast, plain, "{:?} from {}", String::from_utf8_lossy(&hay), from);
        }

        #[test]
        fn fast_reject_drops_only_values_without_hits(
            parts in prop::collection::vec(piece(), 0..8),
            set in prop::sample::select(SETS.to_vec()),
        ) {
            let hay = parts.concat();
            let hay = hay.get(..REJECT_MAX).unwrap_or(&hay);
            let (_, plain) = both(hay, 0, set);
            if !plain.is_empty() {
                prop_assert!(may_match(hay, set), "{:?}", String::from_utf8_lossy(hay));
            }
        }
    }
}
