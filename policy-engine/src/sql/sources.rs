//! Where a statement's result columns come from, by name, so that a column masking rule
//! follows a masked column under an alias or inside an expression.
//!
//! PostgreSQL names a result column after its alias, else after the column it reads or the
//! function it calls (`email::text` is `email`, `upper(email)` is `upper`), else `?column?`.
//! A column rule matched on that name alone is bypassed by `SELECT ssn AS x`. [`ResultSources`]
//! reads every select list and `RETURNING` list of a statement, at every nesting level, and
//! for each item notes the name its result column gets and the names of the columns it reads.
//! A result column named `x` is then also ruled by the rules of every column that an item named
//! `x` reads, following names through subqueries and CTEs
//! (`WITH s AS (SELECT ssn AS x FROM t) SELECT x AS y FROM s`: `y` reads `x`, which reads `ssn`).
//!
//! Like the classifier this reads tokens, not a syntax tree, and where it cannot tell it
//! masks more, never less: names are matched without regard to table, scope or case, and
//! items that give their result columns the same name share their sources (`SELECT upper(ssn), upper(city)`: both are `upper`, both
//! are masked). What the text does not show, it cannot follow: view and function bodies, and
//! whole-row values (`row_to_json(u)`, `SELECT u FROM users u`); see `docs/masking.md`.

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;

use super::lexer::{self, Token, TokenKind as T};
use crate::request::Dialect;

/// Longest statement text read for sources; a longer text reads as computed from every column
/// ([`ALL_COLUMNS`]), like one that takes too long to read.
pub const MAX_SOURCES_TEXT: usize = 1 << 20;

/// Deepest parenthesis nesting followed into a subquery; deeper subqueries add no sources.
/// Bounds the recursion a crafted statement can cause.
pub const MAX_SOURCES_DEPTH: usize = 32;

/// Rounds of following names through aliases (`a AS b`, then `b AS c`, ...). Each round
/// follows one more level; real statements need two or three.
const MAX_ALIAS_ROUNDS: usize = 8;

/// Most names one result column reads once aliases are followed; a statement built to make
/// every item read every other stops growing here.
const MAX_ITEM_READS: usize = 256;

/// Most work spent reading one statement's sources, in steps of about one token visited, one
/// name recorded or one name carried from one result column to another, and four per name
/// interned (about a millisecond in all, the cost of deciding a statement of a few hundred
/// KiB).
/// A statement that needs more reads as computed from every column (see [`ALL_COLUMNS`]):
/// a crafted statement gets all its result columns masked, not the gateway's core for long.
/// Real statements take a few thousand steps.
pub const MAX_SOURCES_WORK: usize = 200_000;

/// The source reported for every result column of a statement too costly to read
/// ([`MAX_SOURCES_WORK`]): every column rule applies to every column.
pub const ALL_COLUMNS: &str = "*";

/// The result columns of one statement and the column names each reads.
#[derive(Debug, Default)]
pub struct ResultSources {
    /// `None` when names alone decide (most statements): nothing built, nothing to drop.
    follow: Option<Box<Followed>>,
    /// Reading ran out of [`MAX_SOURCES_WORK`]: every column reads [`ALL_COLUMNS`].
    saturated: bool,
}

#[derive(Debug, Default)]
struct Followed {
    /// One spelling of each distinct name (names are told apart without case).
    spellings: Vec<Box<str>>,
    /// Name ids by case-folded name.
    ids: HashMap<Box<str>, u32>,
    /// For each result-column name: every name its items read (aliases of other items already
    /// followed). Names whose items read only themselves are left out.
    reads: HashMap<u32, Vec<u32>>,
}

/// A name as written: an unquoted word or a quoted identifier's contents. Names are compared
/// without case even when quoted: two columns that differ only in case share their rules,
/// which masks more, never less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Name<'t> {
    text: &'t str,
}

impl Name<'_> {
    fn same(&self, other: &Name<'_>) -> bool {
        self.text.eq_ignore_ascii_case(other.text)
    }
}

/// One select-list item before aliases are followed.
struct Item<'t> {
    output: Name<'t>,
    reads: Vec<Name<'t>>,
}

impl ResultSources {
    /// Reads `text` (one or more statements).
    pub fn of(text: &str, dialect: Dialect) -> Self {
        if text.len() > MAX_SOURCES_TEXT {
            return Self::saturated();
        }
        let mut toks = Vec::new();
        lexer::lex(text, dialect, &mut toks);
        Self::from_tokens(text, &toks)
    }

    /// [`Self::of`] from the tokens the classifier already made of `text` (one statement's,
    /// or all of them). Allocates nothing when every result column is a plain column.
    pub fn from_tokens(text: &str, toks: &[Token]) -> Self {
        if text.len() > MAX_SOURCES_TEXT {
            return Self::saturated();
        }
        let r = Reader::new(text, toks);
        let mut items = Vec::new();
        for (i, t) in toks.iter().enumerate() {
            let len = t.end.saturating_sub(t.start);
            if t.kind == T::Word
                && ((len == 6 && r.kw(i, "select")) || (len == 9 && r.kw(i, "returning")))
            {
                r.list(i + 1, 0, &mut items);
                if r.exhausted() {
                    return Self::saturated();
                }
            }
        }
        Self::follow(items, r.work.get())
    }

    fn saturated() -> Self {
        Self {
            follow: None,
            saturated: true,
        }
    }

    /// Whether no result column reads a name other than its own: column names alone decide.
    pub fn is_empty(&self) -> bool {
        self.follow.is_none() && !self.saturated
    }

    /// The names the result column `column` reads besides its own.
    pub fn sources<'s>(&'s self, column: &str) -> impl Iterator<Item = &'s str> + Clone + 's {
        let f = self.follow.as_deref();
        let all = self.saturated.then_some(ALL_COLUMNS);
        f.and_then(|f| f.ids.get(column.to_ascii_lowercase().as_str()))
            .and_then(|id| f?.reads.get(id))
            .into_iter()
            .flatten()
            .filter_map(move |&r| f?.spellings.get(r as usize).map(|s| &**s))
            .chain(all)
    }

    /// Follows aliases: a result column that reads a name another item outputs reads what
    /// that item reads too. Then drops the names that read nothing but themselves.
    fn follow(items: Vec<Item<'_>>, spent: usize) -> Self {
        // Most statements name their result columns after the columns they read: nothing to
        // follow, and nothing to build.
        if items.is_empty() {
            return Self::default();
        }
        let Some(f) = Followed::of(items, spent) else {
            return Self::saturated();
        };
        Self {
            follow: (!f.reads.is_empty()).then(|| Box::new(f)),
            saturated: false,
        }
    }
}

impl Followed {
    fn intern(&mut self, name: Name<'_>) -> u32 {
        let key = name.text.to_ascii_lowercase();
        if let Some(&id) = self.ids.get(key.as_str()) {
            return id;
        }
        let id = u32::try_from(self.spellings.len()).unwrap_or(u32::MAX);
        self.spellings.push(name.text.into());
        self.ids.insert(key.into(), id);
        id
    }

    /// `None` when following would take more than what is left of [`MAX_SOURCES_WORK`]
    /// after `spent`.
    fn of(items: Vec<Item<'_>>, spent: usize) -> Option<Self> {
        let mut s = Self::default();
        let mut reads: HashMap<u32, Vec<u32>> = HashMap::new();
        // Four steps per name interned (a hash and, the first time, two small allocations);
        // one per name checked against a list it may join, and one per 16 names in that list.
        let mut steps = spent;
        for item in items {
            let out = s.intern(item.output);
            let ids: Vec<u32> = item.reads.into_iter().map(|n| s.intern(n)).collect();
            steps += 4 * (1 + ids.len());
            let mine = reads.entry(out).or_default();
            for id in ids {
                steps += mine.len() / 16;
                if mine.len() < MAX_ITEM_READS && !mine.contains(&id) {
                    mine.push(id);
                }
            }
            if steps > MAX_SOURCES_WORK {
                return None;
            }
        }
        let outputs: Vec<u32> = reads.keys().copied().collect();
        for _ in 0..MAX_ALIAS_ROUNDS {
            let mut grew = false;
            for &out in &outputs {
                let mut add = Vec::new();
                for r in reads.get(&out).into_iter().flatten() {
                    if *r == out {
                        continue;
                    }
                    let theirs = reads.get(r).map_or(&[][..], Vec::as_slice);
                    steps += theirs.len();
                    add.extend_from_slice(theirs);
                }
                steps += add.len() * (1 + reads.get(&out).map_or(0, Vec::len) / 16);
                if steps > MAX_SOURCES_WORK {
                    return None;
                }
                let Some(mine) = reads.get_mut(&out) else {
                    continue;
                };
                for n in add {
                    if mine.len() < MAX_ITEM_READS && !mine.contains(&n) {
                        mine.push(n);
                        grew = true;
                    }
                }
            }
            if !grew {
                break;
            }
        }
        reads.retain(|out, r| r.iter().any(|n| n != out));
        s.reads = reads;
        Some(s)
    }
}

struct Reader<'a, 't> {
    text: &'t str,
    toks: &'a [Token],
    /// For each `(`, the index of its `)` (`usize::MAX` when unclosed); built on first use,
    /// since most select lists have no parentheses.
    close: OnceCell<Vec<usize>>,
    /// Steps spent so far, against [`MAX_SOURCES_WORK`].
    work: Cell<usize>,
}

impl<'a, 't> Reader<'a, 't> {
    fn new(text: &'t str, toks: &'a [Token]) -> Self {
        Self {
            text,
            toks,
            close: OnceCell::new(),
            work: Cell::new(0),
        }
    }

    /// Counts `steps` of work; `false` once the budget is spent.
    fn spend(&self, steps: usize) -> bool {
        let w = self.work.get().saturating_add(steps);
        self.work.set(w);
        w <= MAX_SOURCES_WORK
    }

    fn exhausted(&self) -> bool {
        self.work.get() > MAX_SOURCES_WORK
    }

    fn close(&self) -> &[usize] {
        self.close.get_or_init(|| {
            let mut close = vec![usize::MAX; self.toks.len()];
            let mut open = Vec::new();
            for (i, t) in self.toks.iter().enumerate() {
                match t.kind {
                    T::LParen => open.push(i),
                    T::RParen => {
                        if let Some(o) = open.pop()
                            && let Some(c) = close.get_mut(o)
                        {
                            *c = i;
                        }
                    }
                    _ => {}
                }
            }
            close
        })
    }

    fn kind(&self, i: usize) -> Option<T> {
        self.toks.get(i).map(|t| t.kind)
    }

    fn str(&self, i: usize) -> &'t str {
        self.toks
            .get(i)
            .and_then(|t| self.text.get(t.start as usize..t.end as usize))
            .unwrap_or("")
    }

    /// The bytes of token `i` (no UTF-8 boundary checks: comparisons only).
    fn bytes(&self, i: usize) -> &'t [u8] {
        self.toks
            .get(i)
            .and_then(|t| self.text.as_bytes().get(t.start as usize..t.end as usize))
            .unwrap_or_default()
    }

    fn kw(&self, i: usize, w: &str) -> bool {
        self.kind(i) == Some(T::Word) && self.bytes(i).eq_ignore_ascii_case(w.as_bytes())
    }

    fn kw_any(&self, i: usize, ws: &[&str]) -> bool {
        ws.iter().any(|w| self.kw(i, w))
    }

    /// Token `i` is a word among `words`, all of `len` bytes.
    fn word_of(&self, i: usize, words: &[&str]) -> bool {
        let w = self.bytes(i);
        self.kind(i) == Some(T::Word) && words.iter().any(|k| w.eq_ignore_ascii_case(k.as_bytes()))
    }

    /// A word that ends a select list at its own nesting level. Dispatched on length: this
    /// runs for every token of every select list.
    fn ends_list(&self, i: usize) -> bool {
        match self.bytes(i).len() {
            3 => self.word_of(i, &["for"]),
            4 => self.word_of(i, &["from", "into"]),
            5 => self.word_of(i, &["where", "group", "order", "limit", "fetch", "union"]),
            6 => self.word_of(i, &["having", "window", "offset", "except"]),
            9 => self.word_of(i, &["intersect"]),
            _ => false,
        }
    }

    /// A word that cannot be an alias written without `AS` (`CASE ... END`, `x IS NULL`),
    /// nor a column an item reads.
    fn operator_word(&self, i: usize) -> bool {
        match self.bytes(i).len() {
            2 => self.word_of(i, &["or", "is", "in", "at", "as"]),
            3 => self.word_of(i, &["end", "and", "not", "all", "any", "asc"]),
            4 => self.word_of(
                i,
                &[
                    "null", "true", "then", "else", "when", "case", "like", "some", "desc", "zone",
                ],
            ),
            5 => self.word_of(i, &["false", "ilike"]),
            6 => self.word_of(i, &["escape", "isnull"]),
            7 => self.word_of(i, &["between", "unknown", "similar", "notnull", "collate"]),
            8 => self.word_of(i, &["distinct"]),
            _ => false,
        }
    }

    /// The item `[a, b)` is a plain column (`ssn`, `u.ssn`, `*`, `u.*`): its result column is
    /// named after what it reads, or expands to columns named so.
    fn plain(&self, a: usize, b: usize) -> bool {
        let mut k = a;
        loop {
            match self.kind(k) {
                Some(T::Word | T::QuotedIdent) => {}
                Some(T::Op) if self.bytes(k) == b"*" => return k + 1 == b,
                _ => return false,
            }
            if k + 1 == b {
                return true;
            }
            if self.kind(k + 1) != Some(T::Dot) {
                return false;
            }
            k += 2;
        }
    }

    fn name(&self, i: usize) -> Option<Name<'t>> {
        match self.kind(i)? {
            T::Word | T::QuotedIdent => Some(Name { text: self.str(i) }),
            _ => None,
        }
    }

    fn is_op(&self, i: usize, op: &str) -> bool {
        self.kind(i) == Some(T::Op) && self.bytes(i) == op.as_bytes()
    }

    /// A `::` cast starts at `i` (the lexer gives each `:` a token of its own).
    fn is_cast(&self, i: usize) -> bool {
        self.is_op(i, "::") || (self.is_op(i, ":") && self.is_op(i + 1, ":"))
    }

    /// A `::` cast ends right before `i`.
    fn after_cast(&self, i: usize) -> bool {
        i.checked_sub(2).is_some_and(|c| self.is_cast(c))
            || i.checked_sub(1).is_some_and(|c| self.is_op(c, "::"))
    }

    /// The index of the `)` closing the `(` at `i`, or the end of the tokens.
    fn after_group(&self, i: usize) -> usize {
        match self.close().get(i) {
            Some(&c) if c != usize::MAX => c + 1,
            _ => self.toks.len(),
        }
    }

    /// Reads the select list starting at `i` (after `SELECT`) into `out`; returns where it ends.
    fn list(&self, mut i: usize, depth: usize, out: &mut Vec<Item<'t>>) -> usize {
        if self.word_of(i, &["distinct", "all"]) {
            i += 1;
            if self.kw(i, "on") && self.kind(i + 1) == Some(T::LParen) {
                i = self.after_group(i + 1);
            }
        }
        let n = self.toks.len();
        let mut start = i;
        while i < n && self.spend(1) {
            match self.kind(i) {
                Some(T::LParen) => i = self.after_group(i),
                Some(T::Comma) => {
                    self.item(start, i, depth, out);
                    i += 1;
                    start = i;
                }
                Some(T::Semicolon | T::RParen) => break,
                Some(T::Word) if self.ends_list(i) => break,
                _ => i += 1,
            }
        }
        self.item(start, i, depth, out);
        i
    }

    /// One item `[a, b)` of a select list. A statement's own select lists (`depth` 0) keep
    /// only the items that rename; a subquery inside an item keeps them all, since the item
    /// reads whatever they read (`(SELECT ssn FROM t LIMIT 1) AS s`).
    fn item(&self, a: usize, b: usize, depth: usize, out: &mut Vec<Item<'t>>) {
        let nested = depth > 0;
        if a >= b || (!nested && self.plain(a, b)) {
            return;
        }
        let (expr_end, alias) = self.alias(a, b);
        let mut reads = Vec::new();
        self.reads(a, expr_end, depth, &mut reads);
        let output = alias
            .or_else(|| self.natural_name(a, expr_end))
            .unwrap_or(Name { text: "?column?" });
        // An item that reads nothing, or only its own name (`ssn::text`), renames nothing.
        if nested || reads.iter().any(|r| !r.same(&output)) {
            out.push(Item { output, reads });
        }
    }

    /// The alias of the item `[a, b)`: `expr AS name` or `expr name`; returns the end of the
    /// expression and the alias.
    fn alias(&self, a: usize, b: usize) -> (usize, Option<Name<'t>>) {
        let last = b - 1;
        let Some(name) = self.name(last) else {
            return (b, None);
        };
        if last > a && self.kw(last - 1, "as") {
            return (last - 1, Some(name));
        }
        let bare_word_ok = !self.operator_word(last);
        let ends_expr = last > a
            && matches!(
                self.kind(last - 1),
                Some(T::Word | T::QuotedIdent | T::RParen | T::Number | T::String)
            )
            && !self.operator_word(last - 1);
        if bare_word_ok && ends_expr {
            return (last, Some(name));
        }
        (b, None)
    }

    /// Every name the tokens `[a, b)` read: column names (a qualified name's last part), not
    /// function names, qualifiers or type names after `::`. A subquery's select list counts as
    /// read.
    fn reads(&self, a: usize, b: usize, depth: usize, out: &mut Vec<Name<'t>>) {
        let mut i = a;
        while i < b && self.spend(1) {
            if self.kind(i) == Some(T::LParen) && self.kw_any(i + 1, &["select", "with"]) {
                let end = self.after_group(i).min(b);
                if depth < MAX_SOURCES_DEPTH {
                    let mut inner = Vec::new();
                    if let Some(s) = self.main_select(i + 1, end) {
                        self.list(s + 1, depth + 1, &mut inner);
                    }
                    // What the subquery's items read (their own names are among it when
                    // they name a column; `?column?` and aliases are not read).
                    for item in inner {
                        if !self.spend(item.reads.len()) {
                            return;
                        }
                        out.extend(item.reads);
                    }
                }
                i = end;
                continue;
            }
            if self.kind(i + 1) == Some(T::LParen) && self.value_free_call(i) {
                // `count(email)`, `length(ssn)`: a count or a size, not the value.
                i = self.after_group(i + 1);
                continue;
            }
            if let Some(name) = self.name(i) {
                let call = self.kind(i + 1) == Some(T::LParen);
                let qualifier = self.kind(i + 1) == Some(T::Dot);
                let type_name = i > a && (self.after_cast(i) || self.kw(i - 1, "as"));
                // Operators spelled as words are not names (`a IS NULL`, `CAST(x AS t)`).
                let keyword = self.operator_word(i);
                if !call && !qualifier && !type_name && !keyword {
                    out.push(name);
                }
            }
            i += 1;
        }
    }

    /// A function at `i` whose result says how many or how long, never what: its arguments
    /// do not flow into the result column.
    fn value_free_call(&self, i: usize) -> bool {
        match self.bytes(i).len() {
            5 => self.word_of(i, &["count"]),
            6 => self.word_of(i, &["length"]),
            10 => self.word_of(i, &["bit_length"]),
            11 => self.word_of(i, &["char_length"]),
            12 => self.word_of(i, &["octet_length"]),
            14 => self.word_of(i, &["pg_column_size"]),
            16 => self.word_of(i, &["character_length"]),
            _ => false,
        }
    }

    /// The `SELECT` of the query in `[i, end)` (after a `WITH`'s CTEs, at the query's own level).
    fn main_select(&self, mut i: usize, end: usize) -> Option<usize> {
        while i < end {
            match self.kind(i) {
                Some(T::LParen) => i = self.after_group(i),
                Some(T::Word) if self.kw(i, "select") => return Some(i),
                _ => i += 1,
            }
        }
        None
    }

    /// The name PostgreSQL gives the result column of the expression `[a, b)` when it has no
    /// alias: a column's own name (`t.email`, `email::text`, `(email)`, `CAST(email AS text)`),
    /// a function's name (`upper(email)`, `upper(email)::text`), `case` for a CASE; `None` for
    /// anything else (`?column?`).
    fn natural_name(&self, mut a: usize, mut b: usize) -> Option<Name<'t>> {
        for _ in 0..MAX_SOURCES_DEPTH {
            let cast_from = |k: usize| k == b || self.is_cast(k);
            // Through parentheses and casts: `(x)`, `(x)::t`.
            if self.kind(a) == Some(T::LParen) {
                let c = self.after_group(a);
                if !cast_from(c) {
                    return None;
                }
                (a, b) = (a + 1, c.saturating_sub(1));
                continue;
            }
            if self.kw(a, "case") {
                return self.name(a);
            }
            let mut k = a;
            self.name(k)?;
            while self.kind(k + 1) == Some(T::Dot) && self.name(k + 2).is_some() {
                k += 2;
            }
            let name = self.name(k)?;
            if self.kind(k + 1) != Some(T::LParen) {
                return cast_from(k + 1).then_some(name);
            }
            let c = self.after_group(k + 1);
            if !cast_from(c) {
                return None;
            }
            if !name.text.eq_ignore_ascii_case("cast") {
                return Some(name);
            }
            // `CAST(x AS t)` is named after `x`.
            let inner_end = c.saturating_sub(1);
            b = (k + 2..inner_end)
                .find(|&j| self.kw(j, "as"))
                .unwrap_or(inner_end);
            a = k + 2;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(sql: &str, column: &str) -> Vec<String> {
        let s = ResultSources::of(sql, Dialect::Postgres);
        let mut v: Vec<String> = s.sources(column).map(str::to_ascii_lowercase).collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn aliases_and_expressions_lead_back_to_their_columns() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("SELECT ssn AS x FROM users", "x", &["ssn"]),
            ("SELECT u.ssn x, name FROM users u", "x", &["ssn"]),
            ("SELECT upper(email) FROM users", "upper", &["email"]),
            (
                "SELECT pg_catalog.upper(email)::text FROM users",
                "upper",
                &["email"],
            ),
            ("SELECT email || '' FROM users", "?column?", &["email"]),
            ("SELECT CAST(ssn AS text) AS s FROM users", "s", &["ssn"]),
            (
                "SELECT CASE WHEN true THEN ssn END FROM users",
                "case",
                &["ssn"],
            ),
            (
                "SELECT coalesce(ssn, 'none') AS \"Tax Id\" FROM users",
                "Tax Id",
                &["ssn"],
            ),
            (
                "WITH s AS (SELECT ssn AS x FROM users) SELECT x AS y FROM s",
                "y",
                &["ssn", "x"],
            ),
            (
                "SELECT y FROM (SELECT ssn AS y FROM users) AS t",
                "y",
                &["ssn"],
            ),
            ("SELECT (SELECT max(ssn) FROM users) AS m", "m", &["ssn"]),
            ("UPDATE users SET n = 1 RETURNING ssn AS x", "x", &["ssn"]),
            (
                "SELECT DISTINCT ON (id) ssn s FROM users ORDER BY id",
                "s",
                &["ssn"],
            ),
            (
                "SELECT string_agg(ssn, ',') FROM users",
                "string_agg",
                &["ssn"],
            ),
            ("SELECT (SELECT ssn FROM users LIMIT 1) AS s", "s", &["ssn"]),
            (
                "SELECT count(ssn) + length(email) || ssn AS mixed FROM users",
                "mixed",
                &["ssn"],
            ),
        ];
        for (sql, column, want) in cases {
            assert_eq!(sources(sql, column), *want, "{sql} / {column}");
        }
    }

    #[test]
    fn plain_columns_read_only_themselves() {
        for sql in [
            "SELECT ssn, email FROM users WHERE id = 1",
            "SELECT u.ssn FROM users u",
            "SELECT ssn::text FROM users",
            "SELECT count(*) FROM users WHERE ssn = '1'",
            "INSERT INTO t VALUES (1)",
        ] {
            let s = ResultSources::of(sql, Dialect::Postgres);
            assert!(
                s.is_empty() || s.sources("ssn").all(|n| n.eq_ignore_ascii_case("ssn")),
                "{sql}"
            );
            assert_eq!(s.sources("count").count(), 0, "{sql}");
        }
    }

    #[test]
    fn counts_and_sizes_do_not_read_the_values() {
        let sql = "SELECT count(ssn) AS n, length(email), count(DISTINCT ssn) AS d FROM users";
        let s = ResultSources::of(sql, Dialect::Postgres);
        assert!(s.is_empty(), "{s:?}");
    }

    #[test]
    fn where_clauses_and_other_columns_are_not_sources() {
        let sql = "SELECT id AS k, upper(name) AS n FROM users WHERE ssn = '1' ORDER BY ssn";
        assert_eq!(sources(sql, "k"), ["id"]);
        assert_eq!(sources(sql, "n"), ["name"]);
    }

    #[test]
    fn bounded_on_hostile_text() {
        let deep = format!("SELECT {}ssn{} AS x", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(sources(&deep, "x"), ["ssn"]);
        let nested = format!(
            "SELECT {} ssn {} AS x",
            "(SELECT ".repeat(200),
            ")".repeat(200)
        );
        let _ = ResultSources::of(&nested, Dialect::Postgres);
        let unclosed = "SELECT (SELECT ssn AS y, ((( AS x";
        let _ = ResultSources::of(unclosed, Dialect::Postgres);
        let long = format!("SELECT ssn AS x, {} 1", "a, ".repeat(MAX_SOURCES_TEXT / 3));
        let s = ResultSources::of(&long, Dialect::Postgres);
        assert_eq!(s.sources("a").collect::<Vec<_>>(), [ALL_COLUMNS]);
    }

    /// A statement that would take too long to read reads as computed from every column.
    #[test]
    fn too_costly_statements_read_every_column() {
        // Each level re-reads the levels below it: quadratic in the nesting.
        let nested = format!(
            "SELECT {} ssn AS y {} AS x",
            "(SELECT ".repeat(20_000),
            ") AS z".repeat(20_000)
        );
        let s = ResultSources::of(&nested, Dialect::Postgres);
        assert_eq!(s.sources("anything").collect::<Vec<_>>(), [ALL_COLUMNS]);
        let mut chain = String::from("SELECT ");
        for i in 0..40_000 {
            chain.push_str(&format!("x{i} AS x{}, ", i + 1));
        }
        chain.push('1');
        let s = ResultSources::of(&chain, Dialect::Postgres);
        assert!(s.sources("x9").any(|n| n == ALL_COLUMNS));
        // An ordinary statement stays well inside the budget.
        let s = ResultSources::of("SELECT a AS b, upper(c) FROM t", Dialect::Postgres);
        assert!(s.sources("b").all(|n| n != ALL_COLUMNS));
    }
}
