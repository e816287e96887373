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
    literal: HashMap<Box<[u8]>, Vec<TableEntry>>,
    /// Other name patterns starting with a literal byte, by that byte lower-cased.
    by_first: Vec<Vec<TableEntry>>,
    /// Name patterns starting with `*` or `?`.
    any_first: Vec<TableEntry>,
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
            literal: HashMap::new(),
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
    aho_corasick::dfa::DFA::builder()
        .ascii_case_insensitive(true)
        // The packed (SIMD) searchers do not fold case, and with short literals sharing first
        // bytes the start-byte prefilter fires at almost every word.
        .prefilter(false)
        .build(&literals)
        .ok()
        .map(WordLiterals)
}

/// See [`word_literal_prefilter`]. The concrete DFA type, not `AhoCorasick`: searching through
/// `AhoCorasick`'s `dyn` automaton made one indirect call per byte, 3x the cost.
#[derive(Debug, Clone)]
pub(crate) struct WordLiterals(aho_corasick::dfa::DFA);

impl WordLiterals {
    /// Whether one of the literals occurs in `text`, ignoring ASCII case.
    pub(crate) fn found_in(&self, text: &str) -> bool {
        use aho_corasick::automaton::Automaton;
        // A search error (none is possible for an unanchored standard search) keeps the regex
        // rules: the prefilter may only ever skip work, never decide.
        self.0
            .try_find(&aho_corasick::Input::new(text))
            .map_or(true, |m| m.is_some())
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
