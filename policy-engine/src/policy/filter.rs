//! Per-session candidate filter for SQL rules: rules out, per statement and before any rule is
//! walked, the rules whose table, schema, multi-statement or regex matcher cannot match.
//!
//! Without it every statement walked every rule that names no statement kind (table denials,
//! regex rules) and glob-matched each of its tables against each rule's patterns, one rule at a
//! time: most of a decision's cost with a hundred rules. Here the table patterns of all the
//! session's rules are indexed once at session start (literal names in a hash table, other
//! globs by their first byte), so a statement costs one lookup per table it names.
//!
//! The filter only removes rules; it never decides. A rule it keeps is still checked in full by
//! `sql_miss`, so a filter that kept too much would cost time, never change a verdict, and one
//! that removed a rule `sql_miss` would have matched is a bug that the tests comparing against
//! the unfiltered walk catch. Opaque statements bypass it (they match refusing rules whatever
//! their tables).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use wide::u8x16;

use super::{Rule, TableGlob};
use crate::sql::TableRef;

/// Longest table name looked up in the literal index; a longer name (only possible quoted:
/// the servers cap identifiers at 63 and 64 bytes) keeps every table rule as a candidate.
const MAX_INDEXED_NAME: usize = 128;

/// One table pattern of one rule: the rule's position in the session list and the pattern's
/// index in its `match.tables`.
#[derive(Debug, Clone, Copy)]
struct TableEntry {
    pos: u32,
    rule: u32,
    glob: u32,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SqlFilter {
    /// Bitset length in `u64` words (same as the kind index).
    words: usize,
    /// Rules with a non-empty `match.tables`.
    has_tables: Vec<u64>,
    /// Rules with `match.schemas`.
    has_schemas: Vec<u64>,
    /// Rules with `match.regex`.
    pub(crate) has_regex: Vec<u64>,
    /// `match.multi_statement = true` / `false`.
    multi_only: Vec<u64>,
    single_only: Vec<u64>,
    /// Literal name patterns (all table patterns fold ASCII case), keyed by the lower-cased name.
    literal: HashMap<Box<[u8]>, Vec<TableEntry>, BuildHasherDefault<Fnv>>,
    /// Other name patterns starting with a literal byte, by that byte lower-cased.
    by_first: Vec<Vec<TableEntry>>,
    /// Name patterns starting with `*` or `?`.
    any_first: Vec<TableEntry>,
}

/// FNV-1a for the literal table-name index. The keys are the policy's own names and a lookup
/// never inserts, so a peer cannot grow collision chains: SipHash's flooding protection buys
/// nothing here, and it was a third of the filter's cost for names of a few bytes.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn set(bits: &mut [u64], pos: usize) {
    if let Some(w) = bits.get_mut(pos / 64) {
        *w |= 1u64 << (pos % 64);
    }
}

impl SqlFilter {
    pub(crate) fn new(all: &[Rule], session: &[u32]) -> SqlFilter {
        let words = session.len().div_ceil(64);
        let mut f = SqlFilter {
            words,
            has_tables: vec![0; words],
            has_schemas: vec![0; words],
            has_regex: vec![0; words],
            multi_only: vec![0; words],
            single_only: vec![0; words],
            literal: HashMap::default(),
            by_first: vec![Vec::new(); 256],
            any_first: Vec::new(),
        };
        for (pos, &ri) in session.iter().enumerate() {
            let Some(m) = all.get(ri as usize).and_then(|r| r.sql.as_ref()) else {
                continue;
            };
            if !m.tables.is_empty() {
                set(&mut f.has_tables, pos);
            }
            if m.schemas.is_some() {
                set(&mut f.has_schemas, pos);
            }
            if m.regex.is_some() {
                set(&mut f.has_regex, pos);
            }
            match m.multi_statement {
                Some(true) => set(&mut f.multi_only, pos),
                Some(false) => set(&mut f.single_only, pos),
                None => {}
            }
            for (gi, g) in m.tables.iter().enumerate() {
                let entry = TableEntry {
                    pos: pos as u32,
                    rule: ri,
                    glob: gi as u32,
                };
                let p = g.name.as_str().as_bytes();
                let wild = p.iter().any(|&c| c == b'*' || c == b'?');
                match p.first() {
                    Some(_) if !wild => f
                        .literal
                        .entry(p.to_ascii_lowercase().into_boxed_slice())
                        .or_default()
                        .push(entry),
                    Some(&c) if c != b'*' && c != b'?' => {
                        if let Some(v) = f.by_first.get_mut(usize::from(c.to_ascii_lowercase())) {
                            v.push(entry);
                        }
                    }
                    _ => f.any_first.push(entry),
                }
            }
        }
        f
    }

    /// Removes from `candidates` (a kind-index set for a non-opaque statement) the rules whose
    /// table, schema or multi-statement matcher cannot match this statement. `hits` is working
    /// memory.
    pub(crate) fn retain(
        &self,
        all: &[Rule],
        text: &str,
        tables: &[TableRef],
        n_statements: usize,
        candidates: &mut [u64],
        hits: &mut Vec<u64>,
    ) {
        hits.clear();
        hits.resize(self.words, 0);
        let indexed = self.table_hits(all, text, tables, hits);
        let schema_qualified = tables.iter().any(|t| t.schema.is_some());
        let multi = n_statements > 1;
        for (w, c) in candidates.iter_mut().enumerate() {
            let at = |v: &[u64]| v.get(w).copied().unwrap_or(0);
            let mut out = 0u64;
            if indexed {
                out |= at(&self.has_tables) & !at(hits);
            }
            if !schema_qualified {
                out |= at(&self.has_schemas);
            }
            out |= if multi {
                at(&self.single_only)
            } else {
                at(&self.multi_only)
            };
            *c &= !out;
        }
    }

    /// Sets in `hits` the positions of rules with a table pattern matching one of `tables`.
    /// Returns false when a name was too long to index: the caller then keeps every table rule.
    fn table_hits(&self, all: &[Rule], text: &str, tables: &[TableRef], hits: &mut [u64]) -> bool {
        let mut buf = [0u8; MAX_INDEXED_NAME];
        for t in tables {
            let name = t.name.of(text);
            let Some(lower) = buf.get_mut(..name.len()) else {
                return false;
            };
            for (d, s) in lower.iter_mut().zip(name.as_bytes()) {
                *d = s.to_ascii_lowercase();
            }
            let schema = t.schema.map(|s| s.of(text));
            let lower: &[u8] = lower;
            // Literal names: only the schema pattern is left to check.
            for e in self.literal.get(lower).map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(g) = table_glob(all, e)
                    && schema_matches(g, schema)
                {
                    set(hits, e.pos as usize);
                }
            }
            let first = lower.first().map_or(&[][..], |&c| {
                self.by_first
                    .get(usize::from(c))
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
            });
            for e in first.iter().chain(&self.any_first) {
                if let Some(g) = table_glob(all, e)
                    && g.name.matches(name)
                    && schema_matches(g, schema)
                {
                    set(hits, e.pos as usize);
                }
            }
        }
        true
    }
}

fn table_glob<'a>(all: &'a [Rule], e: &TableEntry) -> Option<&'a TableGlob> {
    all.get(e.rule as usize)?
        .sql
        .as_ref()?
        .tables
        .get(e.glob as usize)
}

/// The schema half of a table pattern, exactly as `sql_miss` applies it.
fn schema_matches(g: &TableGlob, schema: Option<&str>) -> bool {
    match (&g.schema, schema) {
        (None, _) => true,
        (Some(gs), Some(s)) => gs.matches(s),
        (Some(_), None) => false,
    }
}

/// A literal prefilter for the policy's regexes that runs on a statement's raw text, so that
/// the normalized text (which the regexes run on) is only built when one of them might match.
///
/// Every match of a regex starts with one of its prefix literals (when the set of prefixes is
/// finite). A literal made only of ASCII word bytes (`[A-Za-z0-9_]`) that occurs in the
/// normalized text occurs, ignoring ASCII case, in the raw statement text too: normalization
/// only lower-cases words, replaces literals by `?`, drops comments and inserts or collapses
/// spaces and quotes, none of which is a word byte, so a run of word bytes in normalized text
/// always lies inside one token's own text. Hence "no literal in the raw text" proves "no regex
/// matches the normalized text".
///
/// Returns `None` (no prefilter: always normalize) when some regex has no such literal set:
/// an infinite prefix set, an empty literal, or a literal with other bytes.
pub(crate) fn word_literal_prefilter(patterns: &[String]) -> Option<WordLiterals> {
    let mut literals: Vec<Vec<u8>> = Vec::new();
    for p in patterns {
        let hir = regex_syntax::parse(p).ok()?;
        let seq = regex_syntax::hir::literal::Extractor::new().extract(&hir);
        // A finite empty set means the regex never matches: it needs no literal.
        for lit in seq.literals()? {
            let b = lit.as_bytes();
            if b.is_empty() || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                return None;
            }
            literals.push(b.to_ascii_lowercase());
        }
    }
    literals.sort_unstable();
    literals.dedup();
    WordLiterals::new(&literals)
}

/// Most literal bytes indexed; more (hundreds of regexes) and the prefilter is not built.
const MAX_LITERAL_BYTES: usize = 16 * 1024;

/// A case-folding Aho-Corasick automaton over a few short literals, as a dense transition
/// table over byte classes: one class per byte that occurs in a literal (both cases), one for
/// all others. Searching is two table loads per byte and stops at the first match.
///
/// Hand-rolled rather than `aho_corasick`: its searchers cost 16 instructions a byte here
/// (the SIMD ones do not fold case; the DFA one checks for special states and match
/// semantics at every step), which made this "skip the work" check as dear as the lexer.
#[derive(Debug, Clone)]
pub(crate) struct WordLiterals {
    /// Byte to class; class 0 is "in no literal" and always leads back to the root.
    class: [u8; 256],
    /// `table[state_base + class]`: the next state's base (`state * classes`), failure links
    /// folded in. The last state, at base `found`, is where every literal ends, and it never
    /// leaves: a walk checks for it once at its end, not at every byte.
    table: Vec<u32>,
    found: u32,
    /// Longest literal, in bytes: parallel scans of a text overlap by one less than this.
    max_len: usize,
    /// The literals' distinct first two bytes, when there are few enough to test them all in
    /// a vector pass; `None` when a literal has one byte or there are too many.
    starts: Option<Starts>,
}

/// Most distinct two-byte literal starts tested in `found_in`'s vector pass: each costs four
/// vector operations per 16 bytes, so beyond this the automaton walk is cheaper.
const MAX_STARTS: usize = 8;

/// Shortest text searched by its literal starts: one chunk of 16 start positions, which reads
/// 17 bytes.
const STARTS_SCAN_FROM: usize = 17;

/// Two-byte literal starts as vector compares that fold ASCII case: byte `x` may start a
/// literal whose lower-case byte is `c` when `x | 0x20 == c | 0x20`. For a letter that is `c`
/// or its upper case and nothing else; for a digit or `_` it also lets through one control byte
/// or DEL, which the automaton walk from that position then rejects (a candidate costs a walk,
/// never a wrong answer). One fold per chunk serves every start; a fold per start (`0x20` for
/// letters, 0 for the rest) cost two more vector operations per start and chunk.
#[derive(Debug, Clone)]
struct Starts {
    pairs: StartPairs,
}

/// The folded starts' first and second bytes, splatted, in an array of fixed length so that
/// `start_hits` unrolls: looping over a `Vec` of them cost more in loop and load overhead than the
/// compares themselves (about 56 instructions per 16 bytes with three starts). One to four
/// starts get an array of their own length; five to eight repeat their first start up to
/// eight, which adds compares (six instructions per 16 bytes each) but no hits.
#[derive(Debug, Clone)]
enum StartPairs {
    One([(u8x16, u8x16); 1]),
    Two([(u8x16, u8x16); 2]),
    Three([(u8x16, u8x16); 3]),
    Four([(u8x16, u8x16); 4]),
    Eight([(u8x16, u8x16); MAX_STARTS]),
}

impl Starts {
    fn new(literals: &[Vec<u8>]) -> Option<Starts> {
        let mut pairs: Vec<[u8; 2]> = Vec::new();
        for lit in literals {
            let (&a, &b) = (lit.first()?, lit.get(1)?);
            if !pairs.contains(&[a, b]) {
                pairs.push([a, b]);
            }
        }
        let first = *pairs.first()?;
        let folded = |k: usize| {
            let [a, b] = pairs.get(k).copied().unwrap_or(first);
            (u8x16::splat(a | 0x20), u8x16::splat(b | 0x20))
        };
        let pairs_of = match pairs.len() {
            0 | 1 => StartPairs::One(std::array::from_fn(folded)),
            2 => StartPairs::Two(std::array::from_fn(folded)),
            3 => StartPairs::Three(std::array::from_fn(folded)),
            4 => StartPairs::Four(std::array::from_fn(folded)),
            5..=MAX_STARTS => StartPairs::Eight(std::array::from_fn(folded)),
            _ => return None,
        };
        Some(Starts { pairs: pairs_of })
    }
}

/// Bit `k` set when a literal start's two bytes may be at `v0` lane `k` and `v1` lane `k`
/// (see `Starts` for the fold).
#[inline]
fn start_hits<const N: usize>(pairs: &[(u8x16, u8x16); N], v0: u8x16, v1: u8x16) -> u32 {
    let case = u8x16::splat(0x20);
    let (v0, v1) = (v0 | case, v1 | case);
    let mut m = u8x16::splat(0);
    for &(c0, c1) in pairs {
        m |= v0.simd_eq(c0) & v1.simd_eq(c1);
    }
    m.to_bitmask()
}

fn load16(b: &[u8], at: usize) -> Option<u8x16> {
    b.get(at..at + 16)
        .and_then(|c| <[u8; 16]>::try_from(c).ok())
        .map(u8x16::new)
}

impl WordLiterals {
    /// `None` when a literal is empty (it would match everywhere) or the set is too large.
    fn new(literals: &[Vec<u8>]) -> Option<WordLiterals> {
        let total: usize = literals.iter().map(Vec::len).sum();
        if total > MAX_LITERAL_BYTES || literals.iter().any(Vec::is_empty) {
            return None;
        }
        let mut class = [0u8; 256];
        let mut classes = 1usize;
        for &b in literals.iter().flatten() {
            let l = b.to_ascii_lowercase();
            if class.get(usize::from(l)).copied()? == 0 {
                let c = u8::try_from(classes).ok()?;
                *class.get_mut(usize::from(l))? = c;
                *class.get_mut(usize::from(l.to_ascii_uppercase()))? = c;
                classes += 1;
            }
        }
        // The trie; 0 is the root and "no child" (the root is never a child). `accepting`:
        // the state ends with (a suffix equal to) some literal.
        let mut delta = vec![0u16; classes];
        let mut accepting = vec![false];
        for lit in literals {
            let mut s = 0usize;
            for &b in lit {
                let c = usize::from(*class.get(usize::from(b))?);
                let next = *delta.get(s * classes + c)?;
                s = if next != 0 {
                    usize::from(next)
                } else {
                    let n = accepting.len();
                    *delta.get_mut(s * classes + c)? = u16::try_from(n).ok()?;
                    delta.resize(delta.len() + classes, 0);
                    accepting.push(false);
                    n
                };
            }
            *accepting.get_mut(s)? = true;
        }
        // Breadth-first: fold failure links into the table (children of the root fail to the
        // root; other missing transitions copy their failure state's, already complete).
        let mut fail = vec![0usize; accepting.len()];
        let mut queue = std::collections::VecDeque::new();
        for c in 0..classes {
            let child = usize::from(*delta.get(c)?);
            if child != 0 {
                queue.push_back(child);
            }
        }
        while let Some(s) = queue.pop_front() {
            let f = *fail.get(s)?;
            if *accepting.get(f)? {
                *accepting.get_mut(s)? = true;
            }
            for c in 0..classes {
                let child = usize::from(*delta.get(s * classes + c)?);
                let via_fail = *delta.get(f * classes + c)?;
                if child != 0 {
                    *fail.get_mut(child)? = usize::from(via_fail);
                    queue.push_back(child);
                } else {
                    *delta.get_mut(s * classes + c)? = via_fail;
                }
            }
        }
        // Search form: targets premultiplied by `classes` (no multiply per byte), and a
        // transition into an accepting state replaced by one into the absorbing `found` state
        // (no second lookup and no exit test per byte).
        let found = u32::try_from(delta.len()).ok()?;
        let mut table = Vec::with_capacity(delta.len() + classes);
        for &next in &delta {
            let n = usize::from(next);
            table.push(if *accepting.get(n)? {
                found
            } else {
                u32::try_from(n * classes).ok()?
            });
        }
        table.resize(delta.len() + classes, found);
        let max_len = literals.iter().map(Vec::len).max().unwrap_or(0);
        Some(WordLiterals {
            class,
            table,
            found,
            max_len,
            starts: Starts::new(literals),
        })
    }

    #[expect(
        clippy::indexing_slicing,
        reason = "a u8 always indexes a 256-entry table"
    )]
    #[inline]
    fn class_of(&self, b: u8) -> u8 {
        self.class[usize::from(b)]
    }

    /// Whether one of the literals occurs in `text`, ignoring ASCII case.
    ///
    /// Each step's table load depends on the previous one, so a single walk runs at the load
    /// latency (about five cycles a byte), not at the instruction rate: on the ORM statements
    /// of the `bench policy` corpus that walk was the largest single cost of a decision. Texts
    /// of `PARALLEL_SCAN_FROM` bytes or more are therefore cut into `STREAMS` windows that
    /// overlap by `max_len - 1` bytes and walked together, so the loads of the independent
    /// walks overlap. Every occurrence (at most `max_len` bytes) lies wholly inside one
    /// window, and each window is walked from the root like a whole text, so the answer is the
    /// single walk's. Rejected: SIMD literal search (Teddy) needs `unsafe` or folds no case,
    /// and skipping bytes outside every literal helps little since the common letters are in
    /// the literals.
    ///
    /// With few distinct two-byte literal starts (see `Starts`), texts of `STARTS_SCAN_FROM`
    /// bytes or more are searched by [`Self::found_by_starts`] instead.
    pub(crate) fn found_in(&self, text: &str) -> bool {
        let b = text.as_bytes();
        match self.starts.as_ref().map(|s| &s.pairs) {
            Some(pairs) if b.len() >= STARTS_SCAN_FROM => match pairs {
                StartPairs::One(p) => self.found_by_starts(p, b),
                StartPairs::Two(p) => self.found_by_starts(p, b),
                StartPairs::Three(p) => self.found_by_starts(p, b),
                StartPairs::Four(p) => self.found_by_starts(p, b),
                StartPairs::Eight(p) => self.found_by_starts(p, b),
            },
            _ => self.found_by_walk(text),
        }
    }

    /// [`Self::found_in`] by walking the automaton over every byte.
    pub(crate) fn found_by_walk(&self, text: &str) -> bool {
        let b = text.as_bytes();
        let overlap = self.max_len.saturating_sub(1);
        if b.len() < PARALLEL_SCAN_FROM.max(overlap.saturating_mul(2 * STREAMS)) {
            return self.walk(0, b).is_none_or(|s| s == self.found);
        }
        // Windows of `w` bytes starting `step` apart: four windows cover
        // `3 * step + w >= len` bytes, and the last one may be cut short by the text's end.
        let w = (b.len() + (STREAMS - 1) * overlap).div_ceil(STREAMS);
        let step = w - overlap;
        let window = |k: usize| b.get(k * step..(k * step + w).min(b.len())).unwrap_or(&[]);
        let (w0, w1, w2, w3) = (window(0), window(1), window(2), window(3));
        // The windows before the last have `w` bytes; walk all four over the last one's
        // length together, then finish the others one by one.
        let common = w3.len();
        let mut s = [0u32; STREAMS];
        for (((&a, &b1), &b2), &b3) in w0.iter().zip(w1).zip(w2).zip(w3) {
            for (st, byte) in s.iter_mut().zip([a, b1, b2, b3]) {
                *st = match self.step(*st, byte) {
                    Some(n) => n,
                    None => return true,
                };
            }
        }
        let [s0, s1, s2, s3] = s;
        s3 == self.found
            || [(s0, w0), (s1, w1), (s2, w2)].into_iter().any(|(st, win)| {
                self.walk(st, win.get(common..).unwrap_or(&[]))
                    .is_none_or(|s| s == self.found)
            })
    }

    /// Whether a literal occurs in `b` (at least `STARTS_SCAN_FROM` bytes), looking only where
    /// one of the literals' first two bytes do.
    ///
    /// Vector compares find the positions where a literal's two first bytes occur, 16 at a
    /// time and with no chain of dependent loads; the automaton then walks only from those
    /// positions, at most `max_len` bytes each. Every occurrence starts at such a position,
    /// and a walk from the root finds every occurrence that starts where it starts, so the
    /// answer is the whole walk's. Where candidates are close together the walk carries on
    /// from where the previous one stopped instead of starting over, so no byte is walked
    /// twice. On the ORM statements of the `bench policy` corpus the pairs almost never occur:
    /// about two and a half instructions per byte (three starts), none of them waiting on
    /// the previous byte's load, where the walk spent four to five on that chain.
    fn found_by_starts<const N: usize>(&self, pairs: &[(u8x16, u8x16); N], b: &[u8]) -> bool {
        let n = b.len();
        // The last chunk moves back to end at the text's end: it covers starts up to `n - 2`.
        let last = n.saturating_sub(STARTS_SCAN_FROM);
        let mut walked = 0usize;
        let mut s = 0u32;
        let mut i = 0usize;
        loop {
            let at = i.min(last);
            let (Some(v0), Some(v1)) = (load16(b, at), load16(b, at + 1)) else {
                // Only if `b` were shorter than `STARTS_SCAN_FROM`: walk it all.
                return self.walk(0, b).is_none_or(|s| s == self.found);
            };
            let mut hits = start_hits(pairs, v0, v1);
            while hits != 0 {
                let p = at + hits.trailing_zeros() as usize;
                hits &= hits - 1;
                if p >= walked {
                    s = 0;
                    walked = p;
                }
                let end = (p + self.max_len).min(n);
                if end > walked {
                    match self.walk(s, b.get(walked..end).unwrap_or(&[])) {
                        Some(next) if next != self.found => s = next,
                        _ => return true,
                    }
                    walked = end;
                }
            }
            if at >= last {
                return false;
            }
            i += 16;
        }
    }

    /// One byte from state `s`. In range by construction; `None` (out of range) is taken as
    /// "found", which only costs the work the prefilter tries to skip. A branch, not
    /// `unwrap_or(found)`: the conditional move that compiles to sits on the walk's chain of
    /// dependent loads and made it slower despite fewer instructions.
    #[inline]
    fn step(&self, s: u32, b: u8) -> Option<u32> {
        let c = u32::from(self.class_of(b));
        self.table.get((s + c) as usize).copied()
    }

    /// Walks `text` from state `s` to its final state (`found` once a literal has ended;
    /// `None` only if the table were out of range).
    fn walk(&self, mut s: u32, text: &[u8]) -> Option<u32> {
        for &b in text {
            s = self.step(s, b)?;
        }
        Some(s)
    }
}

/// Parallel walks in `WordLiterals::found_in`: four hide most of the load latency on the
/// machines measured, and the scalar registers hold four states without spilling.
const STREAMS: usize = 4;
/// Shortest text walked in parallel windows; below it the setup costs more than it saves.
const PARALLEL_SCAN_FROM: usize = 64;

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
