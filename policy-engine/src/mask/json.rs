//! JSON body masking: a single-pass structural walk that masks whole values under field
//! rules (`fields` globs over dotted paths; array levels are transparent, so `items.email`
//! covers every element) and runs the session-wide detectors over string values.
//!
//! Replacements are JSON-escaped so the body stays valid JSON; a string masked by a `null`
//! rule becomes the literal `null`, a number or boolean under a field rule becomes a masked
//! string. Not here: JSON parsing for any other purpose (no tree is built), numbers are not
//! validated beyond their shape. A body that is not JSON (or nests deeper than
//! [`MAX_JSON_DEPTH`]) is masked with the detectors as plain bytes instead.

use super::MaskStats;
use super::detect::{self, Hit};
use super::engine::{MaskOutcome, PemState, Rule, SessionMasker};

/// Deepest object/array nesting walked structurally.
pub const MAX_JSON_DEPTH: usize = 128;

struct Walker<'a> {
    s: &'a SessionMasker,
    body: &'a [u8],
    i: usize,
    cursor: usize,
    out: &'a mut Vec<u8>,
    stats: MaskStats,
    path: Vec<u8>,
    track_path: bool,
    hits: Vec<Hit>,
    scratch: Vec<u8>,
    changed: bool,
}

struct Invalid;

pub(crate) fn mask_json(
    s: &SessionMasker,
    body: &[u8],
    out: &mut Vec<u8>,
    stats: &mut MaskStats,
) -> MaskOutcome {
    let start = out.len();
    let mut w = Walker {
        s,
        body,
        i: 0,
        cursor: 0,
        out,
        stats: MaskStats::default(),
        path: Vec::new(),
        track_path: s.has_field_rules(),
        hits: Vec::new(),
        scratch: Vec::new(),
        changed: false,
    };
    let ok = w.value(0, None, None).is_ok() && {
        w.ws();
        w.i == body.len()
    };
    if ok {
        if !w.changed {
            return MaskOutcome::Unchanged;
        }
        w.out
            .extend_from_slice(body.get(w.cursor..).unwrap_or_default());
        stats.merge(&w.stats);
        return MaskOutcome::Rewritten;
    }
    w.out.truncate(start);
    // Not JSON: still never let a detected value through.
    let mut hits = Vec::new();
    s.inner
        .resolve(&s.global, &mut PemState::default(), body, &mut hits);
    if hits.is_empty() {
        return MaskOutcome::Unchanged;
    }
    s.inner.write(&s.global, body, &hits, out, stats);
    MaskOutcome::Rewritten
}

impl Walker<'_> {
    fn peek(&self) -> Option<u8> {
        self.body.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// Copies the untouched bytes up to `at` before an edit there.
    fn edit_at(&mut self, at: usize) {
        self.out
            .extend_from_slice(self.body.get(self.cursor..at).unwrap_or_default());
        self.changed = true;
    }

    fn string(&mut self) -> Result<(usize, usize), Invalid> {
        // At the opening quote; returns the content span.
        self.i += 1;
        let s = self.i;
        loop {
            let rest = self.body.get(self.i..).ok_or(Invalid)?;
            let j = memchr::memchr2(b'"', b'\\', rest).ok_or(Invalid)?;
            self.i += j;
            if self.peek() == Some(b'\\') {
                self.i += 2;
                continue;
            }
            let e = self.i;
            self.i += 1;
            return Ok((s, e));
        }
    }

    fn value(
        &mut self,
        depth: usize,
        rule: Option<&Rule>,
        key: Option<(usize, usize)>,
    ) -> Result<(), Invalid> {
        if depth > MAX_JSON_DEPTH {
            return Err(Invalid);
        }
        self.ws();
        match self.peek().ok_or(Invalid)? {
            b'{' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(Invalid);
                    }
                    let (ks, ke) = self.string()?;
                    let mark = self.path.len();
                    if self.track_path {
                        if !self.path.is_empty() {
                            self.path.push(b'.');
                        }
                        self.path
                            .extend_from_slice(self.body.get(ks..ke).unwrap_or_default());
                    }
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(Invalid);
                    }
                    self.i += 1;
                    let s = self.s;
                    let child = match rule {
                        Some(r) => Some(r),
                        None if self.track_path => s.field_rule(&self.path),
                        None => None,
                    };
                    self.value(depth + 1, child, Some((ks, ke)))?;
                    self.path.truncate(mark);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(Invalid),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.value(depth + 1, rule, None)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(Invalid),
                    }
                }
            }
            b'"' => {
                let (cs, ce) = self.string()?;
                let content = self.body.get(cs..ce).unwrap_or_default();
                if let Some(r) = rule {
                    SessionMasker::count_field(&mut self.stats);
                    if r.is_null() {
                        self.edit_at(cs - 1);
                        self.out.extend_from_slice(b"null");
                        self.cursor = ce + 1;
                    } else {
                        self.edit_at(cs);
                        self.scratch.clear();
                        self.s.inner.apply(r, None, content, &mut self.scratch);
                        escape_into(&self.scratch, self.out);
                        self.cursor = ce;
                    }
                } else if self.s.global.set != 0 {
                    // `"password": "..."`: the key and the value are separate strings, so
                    // the key-value detectors look at the key here.
                    let by_key = key
                        .and_then(|(ks, ke)| {
                            detect::secret_key_kind(self.body.get(ks..ke)?, content)
                        })
                        .filter(|&d| self.s.global.set & (1u64 << d) != 0);
                    match by_key {
                        Some(det) if !content.is_empty() => {
                            self.hits.clear();
                            self.hits.push(Hit {
                                start: 0,
                                end: content.len(),
                                det,
                            });
                        }
                        _ => self.s.inner.resolve(
                            &self.s.global,
                            &mut PemState::default(),
                            content,
                            &mut self.hits,
                        ),
                    }
                    if !self.hits.is_empty() {
                        self.edit_at(cs);
                        self.scratch.clear();
                        self.s.inner.write(
                            &self.s.global,
                            content,
                            &self.hits,
                            &mut self.scratch,
                            &mut self.stats,
                        );
                        // Unchanged stretches are copied as they were (already escaped); only
                        // replacement text could need escaping, and escaping is idempotent
                        // on text without quotes, backslashes or controls.
                        escape_replacements(&self.scratch, self.out);
                        self.cursor = ce;
                    }
                }
                Ok(())
            }
            _ => {
                let s = self.i;
                let rest = self.body.get(s..).unwrap_or_default();
                let n = rest
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                    .count();
                let tok = rest.get(..n).unwrap_or_default();
                let number = tok
                    .first()
                    .is_some_and(|&b| b == b'-' || b.is_ascii_digit());
                if n == 0 || !(number || matches!(tok, b"true" | b"false" | b"null")) {
                    return Err(Invalid);
                }
                self.i += n;
                if let Some(r) = rule
                    && tok != b"null"
                {
                    SessionMasker::count_field(&mut self.stats);
                    self.edit_at(s);
                    if r.is_null() {
                        self.out.extend_from_slice(b"null");
                    } else {
                        self.scratch.clear();
                        self.s.inner.apply(r, None, tok, &mut self.scratch);
                        self.out.push(b'"');
                        escape_into(&self.scratch, self.out);
                        self.out.push(b'"');
                    }
                    self.cursor = s + n;
                }
                Ok(())
            }
        }
    }
}

/// JSON-escapes text we produced (replacement strings from policy may contain quotes).
fn escape_into(text: &[u8], out: &mut Vec<u8>) {
    for &b in text {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'));
                out.push(HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0'));
            }
            _ => out.push(b),
        }
    }
}

/// The masked string content mixes original (already escaped) bytes and replacements. A
/// bare quote or control byte can only come from a replacement and is escaped; a backslash
/// is kept only when it still starts a valid escape (a replacement may have cut one), else
/// it is escaped itself, so the result is always a valid JSON string body.
fn escape_replacements(text: &[u8], out: &mut Vec<u8>) {
    let mut i = 0usize;
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            0..0x20 => out.push(b' '),
            b'\\' => {
                let valid = match text.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
                    Some(b'u')
                        if text
                            .get(i + 2..i + 6)
                            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
                    {
                        6
                    }
                    _ => 0,
                };
                if valid == 0 {
                    out.extend_from_slice(b"\\\\");
                } else {
                    out.extend_from_slice(text.get(i..i + valid).unwrap_or_default());
                    i += valid;
                    continue;
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
}
