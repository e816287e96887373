//! The compiled engine, per-session view, strategies and the batch core shared by the value,
//! stream and JSON maskers.
//!
//! The core masks a *batch*: complete lines (or the last piece of a value/stream). Because
//! every detector is line-local (see `detect`), masking a batch gives the same bytes as
//! masking its lines one by one, which is what lets the stream masker cut anywhere. The one
//! multi-line secret, a private-key PEM block, is carried across batches in [`PemState`].
//!
//! Not here: where batches are cut (`stream`), JSON structure (`json`).

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::MaskError;
use super::blocks;
use super::detect::{
    self, BUILTIN_SET, BUILTINS, Builtin, Custom, DetectorId, Hit, MAX_DETECTORS, N_BUILTINS,
    Scanner, Validator,
};
use super::glob::Glob;
use super::spec::{DetectorSpec, MaskSpec, StrategyName};
use super::stream::StreamMasker;

/// Longest private-key PEM block masked as one secret, from its `-----BEGIN` line. An
/// unterminated block is masked up to here (fail closed: the key material is hidden), then
/// scanning resumes.
pub const PEM_WINDOW: usize = 64 * 1024;

/// `partial` keeps this many trailing characters when the rule sets no `keep`.
pub const DEFAULT_KEEP: usize = 4;

/// Hex characters of the truncated HMAC-SHA256 the `hash` strategy emits (96 bits).
pub const HASH_HEX_LEN: usize = 24;

/// Label of a whole-column rule without `replacement`.
const COLUMN_LABEL: &[u8] = b"[MASKED]";

/// Pseudo detector for the continuation of a PEM block begun in an earlier batch: removed,
/// not counted again.
const PEM_CONTINUATION: DetectorId = u8::MAX;

type HmacSha256 = Hmac<Sha256>;

/// How the data plane classifies a column's type (PostgreSQL OID / MySQL column type).
///
/// Only `Text` and `Binary` values are ever rewritten; a rule or detector hit on a
/// `Numeric` or `Other` value (dates, UUIDs, `inet`, booleans, ...) yields
/// [`MaskOutcome::Null`], because no replacement text would be a valid value of that type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// text, varchar, char, name, citext, json, jsonb, xml; MySQL CHAR/VARCHAR/TEXT/JSON/ENUM.
    Text,
    /// bytea, BLOB/BINARY: any bytes are valid, so rewriting keeps the value valid.
    Binary,
    /// integers, numeric/decimal, floats, money.
    Numeric,
    /// Everything else.
    Other,
}

/// What [`SessionMasker::mask_value`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum MaskOutcome {
    /// Nothing matched; `out` was not touched.
    Unchanged,
    /// `out` has the masked value appended.
    Rewritten,
    /// Send SQL NULL instead of the value.
    Null,
}

/// Per-call accounting for the audit record: how many values each detector masked, and how
/// many whole values column rules masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskStats {
    counts: [u64; MAX_DETECTORS],
    columns: u64,
    /// The sum of all the counters, kept as they change: the gateway asks for it around
    /// every row it masks, and summing 64 counters each time cost more than masking a
    /// short clean row.
    total: u64,
}

impl Default for MaskStats {
    fn default() -> Self {
        Self {
            counts: [0; MAX_DETECTORS],
            columns: 0,
            total: 0,
        }
    }
}

/// What a [`MaskStats`] entry counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskCounter {
    /// Whole values masked by a column or field rule.
    Column,
    Detector(DetectorId),
}

impl MaskStats {
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Non-zero counters.
    pub fn iter(&self) -> impl Iterator<Item = (MaskCounter, u64)> + '_ {
        let col = (self.columns > 0).then_some((MaskCounter::Column, self.columns));
        col.into_iter()
            .chain(
                self.counts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(i, &c)| {
                        #[expect(
                            clippy::cast_possible_truncation,
                            reason = "i < MAX_DETECTORS = 64"
                        )]
                        (MaskCounter::Detector(i as DetectorId), c)
                    }),
            )
    }

    /// Non-zero counters by name (`column` for column/field rules, else detector names).
    pub fn named<'a>(
        &'a self,
        engine: &'a MaskEngine,
    ) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        self.iter().map(|(k, c)| match k {
            MaskCounter::Column => ("column", c),
            MaskCounter::Detector(d) => (engine.detector_name(d).unwrap_or("unknown"), c),
        })
    }

    pub fn count(&self, counter: MaskCounter) -> u64 {
        match counter {
            MaskCounter::Column => self.columns,
            MaskCounter::Detector(d) => self.counts.get(usize::from(d)).copied().unwrap_or(0),
        }
    }

    pub fn merge(&mut self, other: &MaskStats) {
        self.columns += other.columns;
        self.total += other.total;
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Counts a value withheld whole because the rules that would apply to it could not be
    /// matched (its column is unknown); counted with column-rule masks.
    pub fn add_withheld(&mut self) {
        self.add_column();
    }

    fn add_column(&mut self) {
        self.columns += 1;
        self.total += 1;
    }

    fn add(&mut self, det: DetectorId) {
        if let Some(c) = self.counts.get_mut(usize::from(det)) {
            *c += 1;
            self.total += 1;
        }
    }
}

#[derive(Debug)]
pub(crate) struct Rule {
    columns: Vec<Glob>,
    fields: Vec<Glob>,
    detectors: u64,
    strategy: StrategyName,
    keep: usize,
    replacement: Option<Box<[u8]>>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) scanner: Scanner,
    rules: Vec<Rule>,
    names: Vec<String>,
    labels: Vec<Box<[u8]>>,
    mac: HmacSha256,
}

/// All masking rules and detectors of a policy, compiled. Immutable; clones share it.
#[derive(Debug, Clone)]
pub struct MaskEngine {
    inner: Arc<Inner>,
}

/// Which detectors run, and which rule's strategy each one uses.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) set: u64,
    rule_of: [u16; MAX_DETECTORS],
}

impl Plan {
    fn empty() -> Self {
        Self {
            set: 0,
            rule_of: [0; MAX_DETECTORS],
        }
    }

    fn add(&mut self, detectors: u64, rule: u16) {
        let mut new = detectors & !self.set;
        self.set |= new;
        while new != 0 {
            let d = new.trailing_zeros() as usize;
            new &= new - 1;
            if let Some(r) = self.rule_of.get_mut(d) {
                *r = rule;
            }
        }
    }

    fn rule(&self, det: DetectorId) -> usize {
        usize::from(self.rule_of.get(usize::from(det)).copied().unwrap_or(0))
    }
}

/// Carries an unterminated private-key block from one batch to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PemState {
    /// Bytes of the open block already masked (from its `-----BEGIN`).
    open: Option<usize>,
}

impl MaskEngine {
    /// Compiles every `[[mask]]` and `[[detector]]` table of a policy. `hash_key` keys the
    /// `hash` strategy; the same key gives the same pseudonyms on every core and session.
    pub fn compile(
        specs: &[MaskSpec],
        detectors: &[DetectorSpec],
        hash_key: &[u8],
    ) -> Result<MaskEngine, MaskError> {
        if hash_key.is_empty() {
            return Err(MaskError::EmptyHashKey);
        }
        let max_custom = MAX_DETECTORS - N_BUILTINS;
        if detectors.len() > max_custom {
            return Err(MaskError::TooManyDetectors {
                count: detectors.len(),
                max: max_custom,
            });
        }
        let mut names: Vec<String> = BUILTINS.iter().map(|(n, _)| (*n).to_owned()).collect();
        let mut labels: Vec<Box<[u8]>> =
            BUILTINS.iter().map(|(_, l)| l.as_bytes().into()).collect();
        let mut customs = Vec::with_capacity(detectors.len());
        for d in detectors {
            if names.contains(&d.name) || detect::group(&d.name).is_some() {
                return Err(MaskError::DuplicateDetector {
                    name: d.name.clone(),
                });
            }
            let regex = regex::bytes::RegexBuilder::new(&d.regex)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| MaskError::BadRegex {
                    name: d.name.clone(),
                    reason: e.to_string(),
                })?;
            let validator = match d.validator.as_deref() {
                None => None,
                Some("luhn") => Some(Validator::Luhn),
                Some("mod97") => Some(Validator::Mod97),
                Some(v) => {
                    return Err(MaskError::UnknownValidator {
                        name: d.name.clone(),
                        validator: v.to_owned(),
                    });
                }
            };
            customs.push(Custom::new(regex, validator));
            names.push(d.name.clone());
            let label = d
                .label
                .clone()
                .unwrap_or_else(|| format!("[{}]", d.name.to_ascii_uppercase()));
            labels.push(label.into_bytes().into_boxed_slice());
        }
        let mut rules = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let mut set = 0u64;
            for name in &s.detectors {
                let bits = detect::group(name)
                    .or_else(|| names.iter().position(|n| n == name).map(|p| 1u64 << p));
                set |= bits.ok_or_else(|| MaskError::UnknownDetector {
                    rule: i,
                    name: name.clone(),
                })?;
            }
            let globs = |list: &[String]| -> Result<Vec<Glob>, MaskError> {
                list.iter()
                    .map(|g| {
                        Glob::new(g).ok_or_else(|| MaskError::BadGlob {
                            rule: i,
                            glob: g.clone(),
                        })
                    })
                    .collect()
            };
            let rule = Rule {
                columns: globs(&s.columns)?,
                fields: globs(&s.fields)?,
                detectors: set,
                strategy: s.strategy,
                keep: s.keep.unwrap_or(DEFAULT_KEEP),
                replacement: s.replacement.as_ref().map(|r| r.as_bytes().into()),
            };
            if rule.columns.is_empty() && rule.fields.is_empty() && set == 0 {
                return Err(MaskError::EmptyRule { rule: i });
            }
            rules.push(rule);
        }
        let mac = <HmacSha256 as KeyInit>::new_from_slice(hash_key)
            .map_err(|e| MaskError::Internal(e.to_string()))?;
        Ok(MaskEngine {
            inner: Arc::new(Inner {
                scanner: Scanner::new(customs)?,
                rules,
                names,
                labels,
                mac,
            }),
        })
    }

    /// The per-session view: `active` are indices into the `specs` given to `compile` (the
    /// policy picks them by connection and groups). Out-of-range indices are ignored. Cheap:
    /// no automaton is built here.
    pub fn session(&self, active: &[usize]) -> SessionMasker {
        let mut global = Plan::empty();
        let mut column_rules = Vec::new();
        let mut field_rules = Vec::new();
        for &r in active {
            let (Some(rule), Ok(id)) = (self.inner.rules.get(r), u16::try_from(r)) else {
                continue;
            };
            if rule.columns.is_empty() && rule.fields.is_empty() {
                global.add(rule.detectors, id);
            }
            if !rule.columns.is_empty() {
                column_rules.push(id);
            }
            if !rule.fields.is_empty() {
                field_rules.push(id);
            }
        }
        SessionMasker {
            inner: Arc::clone(&self.inner),
            global,
            column_rules,
            field_rules,
        }
    }

    /// Name of a detector (built-in or custom) by id, as used in policy and audit records.
    pub fn detector_name(&self, id: DetectorId) -> Option<&str> {
        self.inner.names.get(usize::from(id)).map(String::as_str)
    }

    /// Id of a detector by name.
    pub fn detector_id(&self, name: &str) -> Option<DetectorId> {
        self.inner
            .names
            .iter()
            .position(|n| n == name)
            .and_then(|p| DetectorId::try_from(p).ok())
    }
}

/// One detector match: `value[start..end]` is what would be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub detector: DetectorId,
}

/// For one result-set column: the whole-value rule (if any) and the detectors that run.
#[derive(Debug, Clone)]
pub struct ColumnMask {
    whole: Option<u16>,
    plan: Plan,
}

impl ColumnMask {
    /// Nothing applies to this column: the data plane may copy its cells through.
    pub fn is_empty(&self) -> bool {
        self.whole.is_none() && self.plan.set == 0
    }
}

/// The masking rules that apply to one session. Cheap to create, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct SessionMasker {
    pub(crate) inner: Arc<Inner>,
    pub(crate) global: Plan,
    column_rules: Vec<u16>,
    field_rules: Vec<u16>,
}

impl SessionMasker {
    /// Nothing to do: the data plane skips masking entirely.
    pub fn is_empty(&self) -> bool {
        self.global.set == 0 && self.column_rules.is_empty() && self.field_rules.is_empty()
    }

    /// Whether any rule of this session masks by column name. Data that carries no column
    /// names (COPY out) cannot honour such rules, so the data plane refuses it.
    pub fn has_column_rules(&self) -> bool {
        !self.column_rules.is_empty()
    }

    /// What applies to a result-set column named `column_name` (from RowDescription /
    /// column definitions). Column-scoped detector rules take precedence over session-wide
    /// ones for the same detector; the first matching whole-value rule wins.
    pub fn column(&self, column_name: &str) -> ColumnMask {
        self.column_from(column_name, std::iter::empty())
    }

    /// [`Self::column`] for a result column computed from other columns: a rule applies when
    /// it names the result column or any of `sources` (what the statement's select list says
    /// the column reads, see [`crate::sql::ResultSources`]), so `SELECT ssn AS x` and
    /// `upper(email)` are masked as `ssn` and `email` are.
    pub fn column_from<'a>(
        &self,
        column_name: &str,
        sources: impl Iterator<Item = &'a str> + Clone,
    ) -> ColumnMask {
        let mut plan = Plan::empty();
        let mut whole = None;
        // A statement too costly to read is taken as reading every column.
        let every = sources
            .clone()
            .any(|s| s == crate::sql::sources::ALL_COLUMNS);
        for &r in &self.column_rules {
            let Some(rule) = self.inner.rules.get(usize::from(r)) else {
                continue;
            };
            let named = |name: &str| rule.columns.iter().any(|g| g.matches(name.as_bytes()));
            if !every && !named(column_name) && !sources.clone().any(named) {
                continue;
            }
            if rule.detectors == 0 {
                whole = whole.or(Some(r));
            } else {
                plan.add(rule.detectors, r);
            }
        }
        let mut g = self.global.set;
        while g != 0 {
            let d = g.trailing_zeros();
            g &= g - 1;
            #[expect(clippy::cast_possible_truncation, reason = "d < 64")]
            let rule = self.global.rule(d as DetectorId);
            #[expect(
                clippy::cast_possible_truncation,
                reason = "rule indices fit u16 (checked in session)"
            )]
            plan.add(1u64 << d, rule as u16);
        }
        ColumnMask { whole, plan }
    }

    /// Masks one result-set cell. `out` is only written when the outcome is `Rewritten`; it
    /// is appended to, not cleared. No allocation when nothing matches.
    pub fn mask_value(
        &self,
        column: &ColumnMask,
        kind: ValueKind,
        value: &[u8],
        out: &mut Vec<u8>,
        stats: &mut MaskStats,
    ) -> MaskOutcome {
        let rewritable = matches!(kind, ValueKind::Text | ValueKind::Binary);
        if let Some(r) = column.whole {
            stats.add_column();
            let Some(rule) = self.inner.rules.get(usize::from(r)) else {
                return MaskOutcome::Null;
            };
            if !rewritable || rule.strategy == StrategyName::Null {
                return MaskOutcome::Null;
            }
            self.inner.apply(rule, None, value, out);
            return MaskOutcome::Rewritten;
        }
        if column.plan.set == 0 {
            return MaskOutcome::Unchanged;
        }
        // Fast reject before any scan set-up: a short cell with no candidate of any built-in
        // detector (most cells) costs one block classification. Custom detectors are regexes
        // the block prefilter knows nothing about: each one long enough for the cell gets an
        // `is_match` (a literal prefilter for most patterns) instead.
        let set = column.plan.set;
        let short = value.len() <= blocks::REJECT_MAX && set & !BUILTIN_SET == 0;
        if short && !blocks::may_match(value, set) {
            return MaskOutcome::Unchanged;
        }
        if !short && value.len() <= blocks::REJECT_MAX && !self.may_match_with_customs(value, set) {
            return MaskOutcome::Unchanged;
        }
        let mut hits = Vec::new();
        if short {
            // The block scan alone first (what `Scanner::scan` runs for a short value): most
            // cells that pass the fast reject hold a look-alike only (a failing card number,
            // an SSN out of range), and for them the set-up of `resolve` and `scan` was a
            // third of the cost.
            blocks::scan_builtins(value, 0, column.plan.set, &mut hits);
            if hits.is_empty() {
                return MaskOutcome::Unchanged;
            }
            self.inner.resolve_scanned(&column.plan, value, &mut hits);
        } else {
            let mut pem = PemState::default();
            self.inner.resolve(&column.plan, &mut pem, value, &mut hits);
            if hits.is_empty() {
                return MaskOutcome::Unchanged;
            }
        }
        let wants_null = hits.iter().any(|h| {
            self.inner
                .rules
                .get(column.plan.rule(h.det))
                .is_some_and(|r| r.strategy == StrategyName::Null)
        });
        if !rewritable || wants_null {
            for h in &hits {
                stats.add(h.det);
            }
            return MaskOutcome::Null;
        }
        self.inner.write(&column.plan, value, &hits, out, stats);
        MaskOutcome::Rewritten
    }

    /// The fast reject of a short cell in a session with custom detectors: the built-in
    /// families' block prefilter, then an `is_match` per custom detector long enough. Out of
    /// line, so the built-in-only path of `mask_value` stays as small as it was.
    #[inline(never)]
    fn may_match_with_customs(&self, value: &[u8], set: u64) -> bool {
        (set & BUILTIN_SET != 0 && blocks::may_match(value, set & BUILTIN_SET))
            || self.inner.scanner.customs_may_match(value, set)
    }

    /// A masker for a byte stream cut at arbitrary points (COPY data, terminal output, HTTP
    /// bodies that are not JSON), using the session-wide detector rules.
    pub fn stream(&self) -> StreamMasker {
        StreamMasker::new(self.clone())
    }

    /// Masks a JSON body: field rules (`fields` globs) mask whole values, session-wide
    /// detectors run over string values. Appends the full body (masked or not) to `out` and
    /// says whether anything changed. A body that is not valid JSON is masked as a stream.
    pub fn mask_json(&self, body: &[u8], out: &mut Vec<u8>, stats: &mut MaskStats) -> MaskOutcome {
        super::json::mask_json(self, body, out, stats)
    }

    /// Where the session-wide detectors find something in `value` (non-overlapping, in
    /// order), without masking: for dry runs (`observe`), policy tests and accuracy reports.
    pub fn find(&self, value: &[u8], findings: &mut Vec<Finding>) {
        let mut hits = Vec::new();
        self.inner
            .resolve(&self.global, &mut PemState::default(), value, &mut hits);
        findings.extend(hits.iter().map(|h| Finding {
            start: h.start,
            end: h.end,
            detector: h.det,
        }));
    }

    pub(crate) fn field_rule(&self, path: &[u8]) -> Option<&Rule> {
        self.field_rules
            .iter()
            .filter_map(|&r| self.inner.rules.get(usize::from(r)))
            .find(|rule| rule.fields.iter().any(|g| g.matches(path)))
    }

    pub(crate) fn has_field_rules(&self) -> bool {
        !self.field_rules.is_empty()
    }

    pub(crate) fn count_field(stats: &mut MaskStats) {
        stats.add_column();
    }
}

impl Rule {
    pub(crate) fn is_null(&self) -> bool {
        self.strategy == StrategyName::Null
    }
}

impl Inner {
    /// Finds the non-overlapping hits of `plan` in `hay` (a batch of complete lines, or a
    /// final piece), leftmost first and longest among equals; private-key blocks are
    /// extended to their end marker and may stay open in `pem` for the next batch.
    pub(crate) fn resolve(&self, plan: &Plan, pem: &mut PemState, hay: &[u8], hits: &mut Vec<Hit>) {
        hits.clear();
        let mut from = 0usize;
        if let Some(done) = pem.open {
            let remaining = PEM_WINDOW.saturating_sub(done);
            let end = self.pem_block_end(hay, 0, remaining);
            match end {
                Some(e) => {
                    pem.open = None;
                    hits.push(Hit {
                        start: 0,
                        end: e,
                        det: PEM_CONTINUATION,
                    });
                    from = e;
                }
                None => {
                    pem.open = Some(done + hay.len());
                    hits.push(Hit {
                        start: 0,
                        end: hay.len(),
                        det: PEM_CONTINUATION,
                    });
                    return;
                }
            }
        }
        // After a private-key block ends, the hits past it are found again from its end, but
        // only its last line is rescanned: detectors are line-local, so the hits the last
        // scan found on later lines are the ones a rescan would find (custom regexes are not
        // bound to lines, so their sessions rescan everything). Rescanning the whole rest of
        // the batch made a batch with k keys cost about k/2 scans.
        self.settle(plan, pem, hay, from, hits, false);
    }

    /// [`Inner::resolve`] for a value whose scan from its start is already in `hits` (the
    /// short-cell path of `mask_value`, which scans before it knows whether anything is
    /// there).
    fn resolve_scanned(&self, plan: &Plan, hay: &[u8], hits: &mut Vec<Hit>) {
        self.settle(plan, &mut PemState::default(), hay, 0, hits, true);
    }

    /// Scans `hay[from..]` (unless `scanned`: then `hits` holds that scan) and leaves the
    /// non-overlapping hits, extending private-key blocks (see [`Inner::resolve`]).
    fn settle(
        &self,
        plan: &Plan,
        pem: &mut PemState,
        hay: &[u8],
        mut from: usize,
        hits: &mut Vec<Hit>,
        scanned: bool,
    ) {
        let mut reuse: Option<(usize, Vec<Hit>)> = None;
        let mut scanned = scanned;
        loop {
            let base = if scanned { 0 } else { hits.len() };
            let reused = reuse.take();
            let to = reused.as_ref().map_or(hay.len(), |(line_end, _)| *line_end);
            if !std::mem::take(&mut scanned) {
                self.scanner.scan(hay, from, to, plan.set, hits);
            }
            let Some(found) = hits.get_mut(base..) else {
                return;
            };
            // Equal spans (`token=ghp_...`, where the value is also a GitHub token) go to the
            // lower detector id, so the more specific built-in wins over `credential` and the
            // result does not depend on the order the scanners reported them in.
            found.sort_unstable_by(|a, b| {
                a.start
                    .cmp(&b.start)
                    .then(b.end.cmp(&a.end))
                    .then(a.det.cmp(&b.det))
            });
            // Sorted too, and all after the rescanned line.
            if let Some((_, rest)) = reused {
                hits.extend_from_slice(&rest);
            }
            let mut w = base;
            let mut last_end = from;
            let mut pem_at = None;
            let mut unexamined = hits.len();
            for r in base..hits.len() {
                let Some(&h) = hits.get(r) else { break };
                if h.start < last_end {
                    continue;
                }
                if let Some(slot) = hits.get_mut(w) {
                    *slot = h;
                }
                w += 1;
                last_end = h.end;
                if h.det == Builtin::PrivateKey as u8 {
                    pem_at = Some(w - 1);
                    unexamined = r + 1;
                    break;
                }
            }
            let Some(k) = pem_at else {
                hits.truncate(w);
                return;
            };
            let Some(&h) = hits.get(k) else { return };
            match self.pem_block_end(hay, h.end, PEM_WINDOW.saturating_sub(h.end - h.start)) {
                Some(e) => {
                    if plan.set & !BUILTIN_SET == 0 {
                        let line_end = memchr::memchr(b'\n', hay.get(e..).unwrap_or_default())
                            .map_or(hay.len(), |i| e + i + 1);
                        let rest = hits
                            .get(unexamined..)
                            .unwrap_or_default()
                            .iter()
                            .filter(|x| x.start >= line_end)
                            .copied()
                            .collect();
                        reuse = Some((line_end, rest));
                    }
                    hits.truncate(w);
                    if let Some(h) = hits.get_mut(k) {
                        h.end = e;
                    }
                    from = e;
                }
                None => {
                    hits.truncate(w);
                    pem.open = Some(hay.len() - h.start);
                    if let Some(h) = hits.get_mut(k) {
                        h.end = hay.len();
                    }
                    return;
                }
            }
        }
    }

    /// End of a private-key block whose body starts at `from`: after its `-----END ...-----`
    /// marker, or `from + budget` when the window runs out first. `None` when neither is in
    /// `hay` (the block continues in the next batch).
    fn pem_block_end(&self, hay: &[u8], from: usize, budget: usize) -> Option<usize> {
        let cap = from.saturating_add(budget);
        if let Some(p) = self.scanner.find_pem_end(hay, from) {
            let label = p + b"-----END ".len();
            let n = hay
                .get(label..)
                .unwrap_or_default()
                .iter()
                .take(64)
                .take_while(|&&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ')
                .count();
            let mut e = label + n;
            if hay.get(e..e + 5) == Some(b"-----") {
                e += 5;
            }
            return Some(e.min(cap));
        }
        (cap <= hay.len()).then_some(cap)
    }

    /// Appends `hay` to `out` with every hit replaced, counting hits in `stats`.
    pub(crate) fn write(
        &self,
        plan: &Plan,
        hay: &[u8],
        hits: &[Hit],
        out: &mut Vec<u8>,
        stats: &mut MaskStats,
    ) {
        let mut cursor = 0usize;
        for h in hits {
            out.extend_from_slice(hay.get(cursor..h.start).unwrap_or_default());
            cursor = h.end;
            if h.det == PEM_CONTINUATION {
                continue;
            }
            stats.add(h.det);
            let Some(rule) = self.rules.get(plan.rule(h.det)) else {
                out.extend_from_slice(COLUMN_LABEL);
                continue;
            };
            self.apply(
                rule,
                Some(h.det),
                hay.get(h.start..h.end).unwrap_or_default(),
                out,
            );
        }
        out.extend_from_slice(hay.get(cursor..).unwrap_or_default());
    }

    /// Writes the replacement of `matched` under `rule`. `det` is `None` for whole-value
    /// rules. `null` cannot be expressed inside a byte stream and writes the label instead.
    pub(crate) fn apply(
        &self,
        rule: &Rule,
        det: Option<DetectorId>,
        matched: &[u8],
        out: &mut Vec<u8>,
    ) {
        let label = || -> &[u8] {
            det.and_then(|d| self.labels.get(usize::from(d)))
                .map_or(COLUMN_LABEL, |l| &**l)
        };
        // A digest or a tail of a private key is still key material: keys are always redacted.
        let is_key = det == Some(Builtin::PrivateKey as u8);
        match rule.strategy {
            StrategyName::Redact => {
                out.extend_from_slice(rule.replacement.as_deref().unwrap_or_else(label))
            }
            StrategyName::Null => out.extend_from_slice(label()),
            _ if is_key => out.extend_from_slice(label()),
            StrategyName::Partial => {
                // The domain from the `@`, kept in the form it came (`%40`, `&#64;`).
                if det == Some(Builtin::Email as u8)
                    && let Some(at) = super::detect::last_at_sign(matched)
                {
                    out.extend_from_slice(b"****");
                    out.extend_from_slice(matched.get(at..).unwrap_or_default());
                } else {
                    keep_last(matched, rule.keep, out);
                }
            }
            StrategyName::Hash => {
                let mut mac = self.mac.clone();
                mac.update(matched);
                let digest = mac.finalize().into_bytes();
                const HEX: &[u8; 16] = b"0123456789abcdef";
                for b in digest.iter().take(HASH_HEX_LEN / 2) {
                    out.push(HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'));
                    out.push(HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0'));
                }
            }
        }
    }
}

/// `partial`: keeps the last `keep` alphanumeric characters (and the punctuation among them),
/// stars the other letters and digits, keeps separators so formats stay readable
/// (`**** **** **** 1111`). A value with no more than `keep` such characters is starred
/// entirely, so `partial` never reveals a whole short value. Non-ASCII characters are
/// starred one star per character.
fn keep_last(v: &[u8], keep: usize, out: &mut Vec<u8>) {
    let total = v
        .iter()
        .filter(|b| b.is_ascii_alphanumeric() || **b >= 0xC0)
        .count();
    let visible_from = if total > keep {
        total - keep
    } else {
        usize::MAX
    };
    let mut seen = 0usize;
    for &b in v {
        let counts = b.is_ascii_alphanumeric() || b >= 0xC0;
        let continuation = (0x80..0xC0).contains(&b);
        if counts {
            seen += 1;
        }
        if seen > visible_from {
            out.push(b);
        } else if counts {
            out.push(b'*');
        } else if !continuation {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_last_formats() {
        let mut o = Vec::new();
        keep_last(b"4111 1111 1111 1111", 4, &mut o);
        assert_eq!(o, b"**** **** **** 1111");
        o.clear();
        keep_last(b"abc", 4, &mut o);
        assert_eq!(o, b"***");
        o.clear();
        keep_last("héllo-world".as_bytes(), 3, &mut o);
        assert_eq!(o, b"*****-**rld");
    }
}
