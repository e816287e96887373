//! Token-level classifier: statement boundaries, kinds, tables and WHERE presence.
//!
//! Works on the lexer's token slice with random access; it does not build a syntax tree. Rules
//! of thumb it follows, all documented for users:
//! - a DML keyword in a position where a statement may start (after `(`, `AS`, `DO`, `INSTEAD`,
//!   `ALSO`, `BEGIN`, `ATOMIC`, `THEN`, `ELSE`, `LOOP`, `;` inside a routine body, or MySQL's
//!   `ON DUPLICATE KEY`) adds its kind: this catches data-modifying CTEs, rule bodies,
//!   `PREPARE ... AS`, upserts and routine bodies;
//! - `EXPLAIN` (with or without `ANALYZE`) carries the kinds of the statement it explains;
//! - anything it cannot see into is marked opaque.

use super::kind::{KindSet, StatementKind as K};
use super::lexer::{Token, TokenKind as T};
use super::{ClassifyError, Span, Statement, TableRef};
use crate::request::Dialect;

/// Largest query string classified; longer ones are refused before lexing.
pub const MAX_SQL_BYTES: usize = 4 << 20;
/// Most statements in one query string.
pub const MAX_STATEMENTS: usize = 1024;
/// Most table references in one query string.
pub const MAX_TABLES: usize = 8192;
/// Nesting depth of UPDATE/DELETE tracked for WHERE presence; deeper ones count as unbounded.
const MAX_DML_FRAMES: usize = 16;

pub(super) fn run(
    text: &str,
    dialect: Dialect,
    toks: &[Token],
    unterminated: bool,
    statements: &mut Vec<Statement>,
    tables: &mut Vec<TableRef>,
) -> Result<(), ClassifyError> {
    let cx = Cx {
        text,
        toks,
        dialect,
    };
    // Without a `;` there is one statement, whatever the routine-body tracking below would
    // find: one quick pass instead of two keyword tests per token. A `;` token needs a `;`
    // byte, and `memchr` rules that out in a tenth of the instructions of a token pass.
    if memchr::memchr(b';', text.as_bytes()).is_none()
        || !toks.iter().any(|t| t.kind == T::Semicolon)
    {
        return finish(&cx, 0, unterminated, statements, tables);
    }
    let mut start = 0usize;
    let mut block = 0u32;
    let mut i = 0usize;
    while i < toks.len() {
        let is_semi = toks.get(i).map(|t| t.kind) == Some(T::Semicolon);
        if is_semi && block == 0 {
            emit(&cx, start, i, false, statements, tables)?;
            start = i + 1;
        } else if (cx.kw(i, "begin")
            && cx.kw(start, "create")
            && (dialect == Dialect::Mysql || cx.kw(i + 1, "atomic")))
            || (block > 0 && cx.kw(i, "case"))
        {
            // Routine bodies (`BEGIN ... END`, `BEGIN ATOMIC ... END`) hold `;`s that do not
            // end the statement; `CASE ... END` inside them closes with the same keyword.
            block += 1;
        } else if block > 0
            && cx.kw(i, "end")
            && !cx.kw_any(i + 1, &["if", "loop", "while", "repeat", "for"])
        {
            block -= 1;
        }
        i += 1;
    }
    finish(&cx, start, unterminated, statements, tables)
}

/// Emits the last statement (tokens from `start` to the end) and, for input that ended inside
/// a string, quoted identifier or comment, makes sure an opaque unknown statement is reported.
fn finish(
    cx: &Cx<'_>,
    start: usize,
    unterminated: bool,
    statements: &mut Vec<Statement>,
    tables: &mut Vec<TableRef>,
) -> Result<(), ClassifyError> {
    emit(cx, start, cx.toks.len(), unterminated, statements, tables)?;
    if unterminated
        && !statements
            .last()
            .is_some_and(|s| s.opaque && s.kinds.contains(K::Unknown))
    {
        statements.push(Statement {
            span: Span::default(),
            kinds: [K::Unknown].into_iter().collect(),
            without_where: false,
            opaque: true,
            tables: (0, 0),
            tokens: (0, 0),
        });
    }
    Ok(())
}

struct Cx<'a> {
    text: &'a str,
    toks: &'a [Token],
    dialect: Dialect,
}

impl Cx<'_> {
    fn kind(&self, i: usize) -> Option<T> {
        self.toks.get(i).map(|t| t.kind)
    }

    fn bytes(&self, i: usize) -> &[u8] {
        match self.toks.get(i) {
            Some(t) => self
                .text
                .as_bytes()
                .get(t.start as usize..t.end as usize)
                .unwrap_or_default(),
            None => &[],
        }
    }

    /// Token `i` is the unquoted word `w` (given in lower case).
    fn kw(&self, i: usize, w: &str) -> bool {
        self.kind(i) == Some(T::Word) && self.bytes(i).eq_ignore_ascii_case(w.as_bytes())
    }

    fn kw_any(&self, i: usize, ws: &[&str]) -> bool {
        ws.iter().any(|w| self.kw(i, w))
    }

    /// Like `kw_any`, but a PostgreSQL quoted identifier spelled exactly the same also counts
    /// (`SET "role" = ...` sets the role).
    fn ident_any(&self, i: usize, ws: &[&str]) -> bool {
        self.kw_any(i, ws)
            || (self.kind(i) == Some(T::QuotedIdent)
                && ws.iter().any(|w| self.bytes(i) == w.as_bytes()))
    }

    /// The word at `i`, lower-cased into `buf` (empty if not a word or too long to be a keyword).
    /// Bytes, not `str`: callers match it against keywords, and a UTF-8 check per word was a
    /// tenth of classification's cost.
    fn lower<'b>(&self, i: usize, buf: &'b mut [u8; 24]) -> &'b [u8] {
        if self.kind(i) != Some(T::Word) {
            return &[];
        }
        lower_into(self.bytes(i), buf)
    }

    fn span(&self, i: usize) -> Span {
        self.toks
            .get(i)
            .map(|t| Span {
                start: t.start,
                end: t.end,
            })
            .unwrap_or_default()
    }
}

fn lower_into<'b>(src: &[u8], buf: &'b mut [u8; 24]) -> &'b [u8] {
    if src.len() > buf.len() {
        return &[];
    }
    for (d, s) in buf.iter_mut().zip(src) {
        *d = s.to_ascii_lowercase();
    }
    buf.get(..src.len()).unwrap_or_default()
}

/// Words after which a DML keyword starts a (sub)statement.
const START_CONTEXT: &[&str] = &[
    "as", "do", "instead", "also", "begin", "atomic", "then", "else", "loop", "key",
];

/// Words that end a table reference list or cannot be a table or alias name.
fn reserved(w: &[u8]) -> bool {
    matches!(
        w,
        b"where"
            | b"join"
            | b"inner"
            | b"left"
            | b"right"
            | b"full"
            | b"cross"
            | b"natural"
            | b"outer"
            | b"on"
            | b"using"
            | b"set"
            | b"group"
            | b"order"
            | b"limit"
            | b"offset"
            | b"having"
            | b"window"
            | b"union"
            | b"intersect"
            | b"except"
            | b"returning"
            | b"values"
            | b"select"
            | b"for"
            | b"fetch"
            | b"lock"
            | b"with"
            | b"default"
            | b"from"
            | b"into"
            | b"as"
            | b"when"
            | b"then"
            | b"and"
            | b"or"
            | b"not"
            | b"lateral"
            | b"only"
            | b"straight_join"
            | b"force"
            | b"ignore"
            | b"use"
            | b"partition"
            | b"tablesample"
            | b"stdin"
            | b"stdout"
            | b"program"
            | b"to"
            | b"cascade"
            | b"restrict"
            | b"continue"
            | b"restart"
            | b"identity"
            | b"read"
            | b"write"
            | b"low_priority"
            | b"quick"
            | b"do"
            | b"exists"
            | b"if"
            | b"table"
            | b"nowait"
            | b"skip"
            | b"overriding"
            | b"outfile"
            | b"dumpfile"
            | b"high_priority"
            | b"delayed"
            | b"temporary"
            | b"temp"
            | b"unlogged"
            | b"local"
            | b"global"
            | b"schema"
            | b"database"
            | b"function"
            | b"sequence"
            | b"all"
            | b"procedure"
            | b"routine"
            | b"tables"
            | b"in"
            | b"is"
            | b"null"
            | b"case"
            | b"end"
            | b"by"
            | b"matched"
            | b"dual"
    )
}

/// Functions that act on the server rather than on data.
const ADMIN_FUNCTIONS: &[&[u8]] = &[
    b"pg_terminate_backend",
    b"pg_cancel_backend",
    b"pg_reload_conf",
    b"pg_rotate_logfile",
    b"pg_promote",
    b"pg_switch_wal",
    b"pg_read_file",
    b"pg_read_binary_file",
    b"pg_ls_dir",
    b"pg_stat_file",
    b"pg_file_write",
    b"pg_file_unlink",
    b"pg_file_rename",
    b"lo_import",
    b"lo_export",
    b"lo_from_bytea",
    b"lo_put",
    b"set_config",
    b"dblink",
    b"dblink_exec",
    b"dblink_connect",
    b"pg_create_restore_point",
    b"pg_backup_start",
    b"pg_start_backup",
    b"pg_drop_replication_slot",
    b"load_file",
    b"sys_exec",
    b"sys_eval",
    // These run SQL given as text (or read a table named in a string), which no token shows.
    b"query_to_xml",
    b"query_to_xmlschema",
    b"query_to_xml_and_xmlschema",
    b"table_to_xml",
    b"table_to_xmlschema",
    b"table_to_xml_and_xmlschema",
    b"cursor_to_xml",
    b"cursor_to_xmlschema",
    b"schema_to_xml",
    b"schema_to_xmlschema",
    b"schema_to_xml_and_xmlschema",
    b"database_to_xml",
    b"database_to_xmlschema",
    b"database_to_xml_and_xmlschema",
    b"ts_stat",
    b"ts_rewrite",
    // The tablefunc extension's.
    b"crosstab",
    b"crosstab2",
    b"crosstab3",
    b"crosstab4",
    b"connectby",
];

/// Where the admin functions that run SQL given as text (or read a table named in a string)
/// start in `ADMIN_FUNCTIONS`: a call to one makes its statement opaque, like `EXECUTE`, so
/// table and kind rules cannot be dodged by putting the query in a string.
const FIRST_SQL_TEXT_FUNCTION: usize = 28;

/// `ADMIN_FUNCTIONS` by first byte and length, so that almost every other name is rejected
/// without being lower-cased and compared.
static ADMIN_FUNCTION_SHAPES: WordShapes = WordShapes::of(ADMIN_FUNCTIONS);

/// Whether `name` is an admin function, and if so whether it runs SQL given as text.
fn admin_function(name: &[u8]) -> Option<bool> {
    if !ADMIN_FUNCTION_SHAPES.admits(name) {
        return None;
    }
    // Some names are longer than `lower_into`'s buffer; this runs only for admitted shapes.
    ADMIN_FUNCTIONS
        .iter()
        .position(|f| name.eq_ignore_ascii_case(f))
        .map(|k| k >= FIRST_SQL_TEXT_FUNCTION)
}

/// Which (first byte, length) pairs occur in a set of lower-case ASCII words of fewer than 32
/// bytes: a word whose pair is absent is not in the set, whatever its case, and the check is
/// one load. Lower-casing a word into a buffer to compare it was the classifier's largest
/// per-word cost, and most words (column names, aliases) are in no keyword set.
pub(super) struct WordShapes([u32; 256]);

impl WordShapes {
    #[expect(
        clippy::indexing_slicing,
        reason = "const fn at compile time: indices are below 256 by construction"
    )]
    pub(super) const fn of(words: &[&[u8]]) -> WordShapes {
        let mut t = [0u32; 256];
        let mut k = 0;
        while k < words.len() {
            let w = words[k];
            // A longer or empty word would make `admits` wrong: refuse to compile.
            assert!(!w.is_empty() && w.len() < 32);
            let first = w[0];
            assert!(first.is_ascii() && !first.is_ascii_uppercase());
            t[first as usize] |= 1 << w.len();
            t[first.to_ascii_uppercase() as usize] |= 1 << w.len();
            k += 1;
        }
        WordShapes(t)
    }

    /// False only if `w` (in any ASCII case) is none of the words.
    pub(super) fn admits(&self, w: &[u8]) -> bool {
        match w.first() {
            Some(&c) => {
                w.len() < 32 && self.0.get(usize::from(c)).copied().unwrap_or(0) >> w.len() & 1 != 0
            }
            None => false,
        }
    }
}

/// Classifies tokens `[s, e)` and appends the statement (skipped when it has no tokens).
fn emit(
    cx: &Cx<'_>,
    s: usize,
    e: usize,
    unterminated: bool,
    statements: &mut Vec<Statement>,
    tables: &mut Vec<TableRef>,
) -> Result<(), ClassifyError> {
    if s >= e {
        return Ok(());
    }
    if statements.len() >= MAX_STATEMENTS {
        return Err(ClassifyError::TooManyStatements);
    }
    let first_table = tables.len();
    let mut st = Statement {
        span: Span {
            start: cx.span(s).start,
            end: cx.span(e - 1).end,
        },
        kinds: KindSet::EMPTY,
        without_where: false,
        opaque: unterminated,
        tables: (0, 0),
        tokens: (s as u32, e as u32),
    };
    if unterminated {
        st.kinds.insert(K::Unknown);
    }
    let mut f = s;
    while cx.kind(f) == Some(T::LParen) {
        f += 1;
    }
    let mut frames = Frames::default();
    let select_at = dispatch(cx, f, e, &mut st, &mut frames);
    scan(cx, s, e, select_at, &mut st, &mut frames, tables)?;
    st.without_where |= frames.close_all();
    if st.kinds.is_empty() {
        st.kinds.insert(K::Unknown);
        st.opaque = true;
    }
    st.tables = (first_table as u32, tables.len() as u32);
    statements.push(st);
    Ok(())
}

/// UPDATE/DELETE statements still open, with the paren depth they started at.
#[derive(Default)]
struct Frames {
    open: [(u32, bool); MAX_DML_FRAMES],
    len: usize,
    overflow: bool,
}

impl Frames {
    fn push(&mut self, depth: u32) {
        match self.open.get_mut(self.len) {
            Some(slot) => {
                *slot = (depth, false);
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }

    fn mark_where(&mut self, depth: u32) {
        if let Some(top) = self.len.checked_sub(1).and_then(|i| self.open.get_mut(i))
            && top.0 == depth
        {
            top.1 = true;
        }
    }

    /// Closes frames deeper than `depth`; true if one of them had no WHERE.
    fn close_above(&mut self, depth: u32) -> bool {
        let mut unbounded = false;
        while let Some(top) = self.len.checked_sub(1).and_then(|i| self.open.get(i)) {
            if top.0 <= depth {
                break;
            }
            unbounded |= !top.1;
            self.len -= 1;
        }
        unbounded
    }

    fn close_all(&mut self) -> bool {
        let mut unbounded = self.overflow;
        while let Some(top) = self.len.checked_sub(1).and_then(|i| self.open.get(i)) {
            unbounded |= !top.1;
            self.len -= 1;
        }
        unbounded
    }
}

/// Sets the kinds implied by the statement's leading keyword at `f`. Returns where the
/// statement's main SELECT starts, if it is one: `scan` reads its `INTO` clause.
fn dispatch(
    cx: &Cx<'_>,
    f: usize,
    e: usize,
    st: &mut Statement,
    frames: &mut Frames,
) -> Option<usize> {
    let mut select_at = None;
    let mut buf = [0u8; 24];
    // One keyword per statement: read as `str` so the dispatch below stays plain.
    let first = std::str::from_utf8(cx.lower(f, &mut buf)).unwrap_or("");
    let mysql = cx.dialect == Dialect::Mysql;
    let k = &mut st.kinds;
    match first {
        "select" => {
            k.insert(K::Select);
            // `SELECT ... INTO` is found by `scan`, which visits every token anyway: a pass
            // of its own here over every token of a SELECT cost a tenth of classification.
            select_at = Some(f);
        }
        "values" | "table" | "handler" => k.insert(K::Select),
        "with" => {
            let mut depth = 0u32;
            let mut main = None;
            for i in f + 1..e {
                match cx.kind(i) {
                    Some(T::LParen) => depth += 1,
                    Some(T::RParen) => depth = depth.saturating_sub(1),
                    _ if depth == 0
                        && cx.kw_any(
                            i,
                            &[
                                "select", "insert", "update", "delete", "merge", "values", "table",
                            ],
                        ) =>
                    {
                        main = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            match main {
                Some(m) => select_at = dispatch(cx, m, e, st, frames),
                None => {
                    st.kinds.insert(K::Unknown);
                    st.opaque = true;
                }
            }
        }
        "insert" => k.insert(K::Insert),
        "replace" => {
            k.insert(K::Insert);
            k.insert(K::Delete);
        }
        "update" => {
            k.insert(K::Update);
            frames.push(0);
        }
        "delete" => {
            k.insert(K::Delete);
            frames.push(0);
        }
        "merge" => {
            for x in [K::Merge, K::Insert, K::Update, K::Delete] {
                k.insert(x);
            }
        }
        "copy" => {
            k.insert(K::Copy);
            let mut depth = 0u32;
            for i in f + 1..e {
                match cx.kind(i) {
                    Some(T::LParen) => depth += 1,
                    Some(T::RParen) => depth = depth.saturating_sub(1),
                    _ if depth == 0 && cx.kw_any(i, &["from", "to"]) => {
                        k.insert(if cx.kw(i, "from") {
                            K::Insert
                        } else {
                            K::Select
                        });
                        if cx.kw(i + 1, "program") {
                            k.insert(K::CopyProgram);
                        } else if cx.kind(i + 1) == Some(T::String) {
                            k.insert(K::CopyFile);
                        }
                        break;
                    }
                    _ => {}
                }
            }
        }
        "create" | "alter" | "drop" => {
            k.insert(match first {
                "create" => K::Create,
                "alter" => K::Alter,
                _ => K::Drop,
            });
            if first == "alter" && cx.kw(f + 1, "system") {
                k.insert(K::AlterSystem);
            }
            // `CREATE OR REPLACE USER`, `DROP ROLE IF EXISTS`, `ALTER USER`, ...
            if (f + 1..(f + 4).min(e)).any(|i| cx.kw_any(i, &["role", "user", "group"])) {
                k.insert(K::Role);
            }
        }
        "truncate" => k.insert(K::Truncate),
        "grant" => k.insert(K::Grant),
        "revoke" => k.insert(K::Revoke),
        "set" | "reset" => {
            let set_role = cx.ident_any(f + 1, &["role", "default", "session_authorization"])
                || (cx.kw_any(f + 1, &["session", "local"])
                    && cx.kw_any(f + 2, &["authorization", "role", "session"]))
                || (first == "reset" && cx.kw_any(f + 1, &["all", "session"]));
            if set_role {
                k.insert(K::SetRole);
            } else if cx.kw(f + 1, "password") {
                k.insert(K::Role);
            } else if mysql
                && (cx.kw_any(f + 1, &["global", "persist", "persist_only"])
                    || (cx.bytes(f + 1) == b"@@"
                        && cx.kw_any(f + 2, &["global", "persist", "persist_only"])))
            {
                k.insert(K::AlterSystem);
            } else if (f + 1..e.min(f + 6))
                .take_while(|&i| {
                    (cx.kind(i) != Some(T::Op) || cx.bytes(i) == b"@@") && !cx.kw(i, "to")
                })
                .any(|i| cx.ident_any(i, ENFORCEMENT_SETTINGS))
            {
                // Superuser-only settings that switch off what the server enforces or logs.
                k.insert(K::AlterSystem);
            } else {
                k.insert(K::Set);
            }
        }
        "show" | "describe" | "desc" | "help" => k.insert(K::Show),
        "explain" => {
            k.insert(K::Explain);
            let mut depth = 0u32;
            let mut inner = None;
            for i in f + 1..e {
                match cx.kind(i) {
                    Some(T::LParen) => depth += 1,
                    Some(T::RParen) => depth = depth.saturating_sub(1),
                    _ if depth == 0
                        && cx.kw_any(
                            i,
                            &[
                                "select", "insert", "update", "delete", "merge", "values", "table",
                                "with", "execute", "create", "declare", "replace",
                            ],
                        ) =>
                    {
                        inner = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            match inner {
                Some(m) => select_at = dispatch(cx, m, e, st, frames),
                // MySQL `EXPLAIN t` describes a table.
                None => st.kinds.insert(K::Show),
            }
        }
        "begin" | "start" | "commit" | "rollback" | "savepoint" | "release" | "end" | "abort"
        | "xa" => {
            k.insert(K::Transaction);
        }
        "call" => {
            k.insert(K::Call);
            st.opaque = true;
        }
        "do" => {
            k.insert(K::Do);
            // PostgreSQL `DO` runs procedural code; MySQL `DO expr` only evaluates expressions.
            st.opaque |= !mysql;
        }
        "prepare" => {
            if cx.kw(f + 1, "transaction") {
                k.insert(K::Transaction);
            } else {
                k.insert(K::Prepare);
                // MySQL prepares from a string or variable whose text is not visible here.
                st.opaque |= mysql || !(f..e).any(|i| cx.kw(i, "as"));
            }
        }
        "execute" | "exec" => {
            k.insert(K::Execute);
            st.opaque = true;
        }
        "deallocate" | "discard" | "fetch" | "move" | "close" => k.insert(K::Session),
        "declare" => {
            k.insert(K::Session);
            if let Some(m) =
                (f + 1..e).find(|&i| cx.kw_any(i, &["select", "values", "with", "table"]))
            {
                select_at = dispatch(cx, m, e, st, frames);
            }
        }
        "lock" | "unlock" => k.insert(K::Lock),
        "vacuum" | "analyze" | "analyse" | "reindex" | "cluster" | "checkpoint" | "refresh"
        | "optimize" | "repair" | "check" | "checksum" | "flush" | "purge" => {
            k.insert(K::Maintenance)
        }
        "comment" | "security" | "rename" => k.insert(K::Alter),
        "reassign" => k.insert(K::Role),
        "import" => k.insert(K::Create),
        "listen" | "notify" | "unlisten" => k.insert(K::Notify),
        "use" => k.insert(K::Use),
        "load" => {
            k.insert(K::Load);
            if cx.kw_any(f + 1, &["data", "xml"]) {
                k.insert(K::Insert);
                if !cx.kw(f + 2, "local") && !cx.kw(f + 3, "local") {
                    k.insert(K::CopyFile);
                }
            }
        }
        "kill" | "shutdown" | "restart" | "install" | "uninstall" | "binlog" => {
            k.insert(K::AdminFunction)
        }
        "change" | "reset_master" => k.insert(K::AlterSystem),
        _ => {
            k.insert(K::Unknown);
            st.opaque = true;
        }
    }
    select_at
}

/// Session settings that turn off what the server enforces or records, classified
/// `alter_system` like the server-wide settings: PostgreSQL's `session_replication_role`
/// (`replica` skips triggers, foreign keys included) and statement logging, MySQL's binary log
/// and general log switches. The server allows them to superusers only.
const ENFORCEMENT_SETTINGS: &[&str] = &[
    "session_replication_role",
    "log_statement",
    "log_min_duration_statement",
    "log_min_messages",
    "sql_log_bin",
    "sql_log_off",
];

/// The kinds an `INTO` at `i`, at the main SELECT's own paren depth, adds.
fn select_into(cx: &Cx<'_>, i: usize, kinds: &mut KindSet) {
    if cx.kw_any(i + 1, &["outfile", "dumpfile"]) {
        kinds.insert(K::CopyFile);
    } else if cx.dialect != Dialect::Mysql {
        // PostgreSQL `SELECT ... INTO t` creates table t.
        kinds.insert(K::Create);
    }
}

/// Every word the `match w` in `scan` tests; keep the two in step (a word missing here is never
/// matched there).
const SCAN_KEYWORDS: &[&[u8]] = &[
    b"select",
    b"insert",
    b"update",
    b"delete",
    b"merge",
    b"where",
    b"for",
    b"lock",
    b"from",
    b"join",
    b"straight_join",
    b"into",
    b"using",
    b"table",
    b"tables",
    b"truncate",
    b"describe",
    b"desc",
    b"handler",
    b"copy",
    b"on",
];

static SCAN_KEYWORD_SHAPES: WordShapes = WordShapes::of(SCAN_KEYWORDS);

/// One pass over all tokens: nested DML, admin functions, FOR UPDATE, tables, WHERE presence,
/// and `INTO` in the main SELECT starting at `select_at`.
///
/// `table_list` never consumes a parenthesis or the word `into` (it is reserved), so the
/// tokens it skips cannot change the SELECT's depth or hold its `INTO`.
fn scan(
    cx: &Cx<'_>,
    s: usize,
    e: usize,
    select_at: Option<usize>,
    st: &mut Statement,
    frames: &mut Frames,
    tables: &mut Vec<TableRef>,
) -> Result<(), ClassifyError> {
    let mut depth = 0u32;
    // Bit d set: the paren group at depth d is a function's argument list (`extract(x FROM y)`).
    let mut fn_groups = 0u64;
    let main = st.kinds;
    // Paren depth counted from the main SELECT's first token, as the server's parser nests
    // it: an `INTO` at depth 0 belongs to that SELECT. Saturating, so not `depth` shifted.
    let select_from = select_at.unwrap_or(usize::MAX);
    let mut select_depth = 0u32;
    let mut buf = [0u8; 24];
    let mut i = statement_tables(cx, s, e, main, tables)?;
    while i < e {
        let kind = cx.kind(i);
        match kind {
            Some(T::LParen) => {
                depth += 1;
                if i >= select_from {
                    select_depth += 1;
                }
                let after_name = i > s && matches!(cx.kind(i - 1), Some(T::Word | T::QuotedIdent));
                let subquery = cx.kw_any(i + 1, &["select", "with", "values", "table"]);
                if depth < 64 {
                    let bit = 1u64 << depth;
                    // `COPY (` and `DO INSTEAD (` open statements, not argument lists: `COPY
                    // (DELETE FROM t RETURNING *) TO STDOUT` names t like the DELETE alone.
                    if after_name
                        && !subquery
                        && !cx.kw_any(
                            i - 1,
                            &[
                                "in", "exists", "as", "any", "all", "some", "copy", "instead",
                            ],
                        )
                    {
                        fn_groups |= bit;
                    } else {
                        fn_groups &= !bit;
                    }
                }
                if after_name && let Some(sql_text) = admin_function(cx.bytes(i - 1)) {
                    st.kinds.insert(K::AdminFunction);
                    st.opaque |= sql_text;
                }
            }
            Some(T::RParen) => {
                depth = depth.saturating_sub(1);
                if i >= select_from {
                    select_depth = select_depth.saturating_sub(1);
                }
                st.without_where |= frames.close_above(depth);
            }
            Some(T::Word) => {
                // A word of no keyword's shape goes to the `_` arm below without being
                // lower-cased: `SCAN_KEYWORDS` lists every word the match tests.
                let w = if SCAN_KEYWORD_SHAPES.admits(cx.bytes(i)) {
                    cx.lower(i, &mut buf)
                } else {
                    &[]
                };
                // Only asked for DML words (most words are not), hence a closure. `move`: it
                // is not inlined, and borrowing `i` kept the loop's index in memory (a store
                // and a reload on every token) instead of a register.
                let prev_starts = move || {
                    i == s
                        || matches!(cx.kind(i - 1), Some(T::LParen | T::Semicolon))
                        || (START_CONTEXT.iter().any(|c| cx.kw(i - 1, c))
                            && (!cx.kw(i - 1, "key") || cx.kw(i.wrapping_sub(2), "duplicate")))
                };
                let in_fn = depth > 0 && depth < 64 && fn_groups & (1u64 << depth) != 0;
                match w {
                    b"select" | b"insert" | b"update" | b"delete" | b"merge"
                        if i > s && prev_starts() =>
                    {
                        // A nested or body statement: `(DELETE ...`, `AS DELETE`, `DO INSTEAD`.
                        let nk = match w {
                            b"select" => K::Select,
                            b"insert" => K::Insert,
                            b"update" => K::Update,
                            b"delete" => K::Delete,
                            _ => K::Merge,
                        };
                        st.kinds.insert(nk);
                        // Upserts (`ON CONFLICT DO UPDATE SET`, `ON DUPLICATE KEY UPDATE`) touch
                        // only the conflicting row.
                        let upsert =
                            cx.kw(i - 1, "key") || (nk == K::Update && cx.kw(i + 1, "set"));
                        if matches!(nk, K::Update | K::Delete) && !upsert {
                            frames.push(depth);
                        }
                        if nk == K::Update && !upsert {
                            i = table_list(cx, i + 1, e, true, tables)?;
                            continue;
                        }
                    }
                    b"update"
                        if !cx.kw(i + 1, "set")
                            && (i == s
                                || !(cx.kind(i - 1) == Some(T::Comma)
                                    || cx.kw_any(
                                        i - 1,
                                        &[
                                            "for", "key", "grant", "on", "before", "after", "of",
                                            "or", "revoke",
                                        ],
                                    ))) =>
                    {
                        i = table_list(cx, i + 1, e, true, tables)?;
                        continue;
                    }
                    b"where" => frames.mark_where(depth),
                    b"for" if cx.kw_any(i + 1, &["update", "share", "no", "key"]) => {
                        st.kinds.insert(K::Lock)
                    }
                    b"lock" if cx.kw(i + 1, "in") => st.kinds.insert(K::Lock),
                    b"from" if !in_fn && !main.contains(K::Revoke) && !main.contains(K::Grant) => {
                        let list = !main.contains(K::Copy);
                        i = table_list(cx, i + 1, e, list, tables)?;
                        continue;
                    }
                    b"join" | b"straight_join" | b"into" => {
                        if w == b"into" && i >= select_from && select_depth == 0 {
                            select_into(cx, i, &mut st.kinds);
                        }
                        i = table_list(cx, i + 1, e, false, tables)?;
                        continue;
                    }
                    b"using" if main.contains(K::Delete) || main.contains(K::Merge) => {
                        i = table_list(cx, i + 1, e, true, tables)?;
                        continue;
                    }
                    b"table" | b"tables" if !cx.kw(i.wrapping_sub(1), "returns") => {
                        i = table_list(cx, i + 1, e, true, tables)?;
                        continue;
                    }
                    b"truncate" | b"lock" | b"describe" | b"desc" | b"handler" if i == s => {
                        i = table_list(cx, i + 1, e, true, tables)?;
                        continue;
                    }
                    b"copy" if i == s => {
                        i = table_list(cx, i + 1, e, false, tables)?;
                        continue;
                    }
                    b"on"
                        if (main.contains(K::Grant) || main.contains(K::Revoke))
                            && !cx.kw_any(
                                i + 1,
                                &[
                                    "schema",
                                    "database",
                                    "function",
                                    "sequence",
                                    "all",
                                    "procedure",
                                    "routine",
                                    "language",
                                    "type",
                                    "domain",
                                    "foreign",
                                    "large",
                                    "tablespace",
                                    "parameter",
                                ],
                            ) =>
                    {
                        i = table_list(cx, i + 1, e, true, tables)?;
                        continue;
                    }
                    _ => {}
                }
            }
            Some(T::QuotedIdent) if cx.kind(i + 1) == Some(T::LParen) => {
                if let Some(sql_text) = admin_function(cx.bytes(i)) {
                    st.kinds.insert(K::AdminFunction);
                    st.opaque |= sql_text;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Tables only a statement's first words place, read once per statement rather than tested
/// for in the token loop (whose keyword filter stays narrow): `VACUUM [FULL] [(VERBOSE, ...)]
/// t, u`, `ANALYZE t` and `CLUSTER t` after their options, and the view of `CREATE
/// [MATERIALIZED] VIEW v`, `DROP VIEW v`, `REFRESH MATERIALIZED VIEW [CONCURRENTLY] v`, and
/// the table of an index, trigger, row policy or rule; both names of a rename; the tables of
/// `IMPORT FOREIGN SCHEMA ... LIMIT TO`. Returns where the token loop starts: after the
/// tables of a maintenance or rename statement, the end for statements with nothing more to
/// read (`FETCH`, `IMPORT`), else `s`.
fn statement_tables(
    cx: &Cx<'_>,
    s: usize,
    e: usize,
    main: KindSet,
    tables: &mut Vec<TableRef>,
) -> Result<usize, ClassifyError> {
    if !(main.contains(K::Maintenance)
        || main.contains(K::Create)
        || main.contains(K::Drop)
        || main.contains(K::Alter)
        || main.contains(K::Session))
    {
        return Ok(s);
    }
    ddl_tables(cx, s, e, tables)
}

/// [`statement_tables`] for DDL, maintenance and cursor statements: out of line, so that the token
/// loop every query runs is laid out as if it did not exist.
#[cold]
#[inline(never)]
fn ddl_tables(
    cx: &Cx<'_>,
    s: usize,
    e: usize,
    tables: &mut Vec<TableRef>,
) -> Result<usize, ClassifyError> {
    if cx.kw_any(s, &["fetch", "move"]) {
        // `FETCH ALL FROM c` names a cursor, not a table, and holds nothing else.
        return Ok(e);
    }
    if cx.kw_any(s, &["vacuum", "analyze", "analyse", "cluster"]) {
        // PostgreSQL names columns after a table (`VACUUM t (a), u (b)`): the list goes on
        // after them.
        let mut i = table_list(cx, maintenance_options(cx, s + 1, e), e, true, tables)?;
        while cx.kind(i) == Some(T::LParen) && cx.kind(skip_group(cx, i, e)) == Some(T::Comma) {
            i = table_list(cx, skip_group(cx, i, e) + 1, e, true, tables)?;
        }
        return Ok(i);
    }
    if cx.kw(s, "rename") && cx.kw_any(s + 1, &["table", "tables"]) {
        // MySQL `RENAME TABLE a TO b, c TO d`: every old and new name, pair by pair.
        let mut i = s + 2;
        loop {
            i = table_list(cx, i, e, false, tables)?;
            if !cx.kw(i, "to") {
                return Ok(i);
            }
            i = table_list(cx, i + 1, e, false, tables)?;
            if cx.kind(i) != Some(T::Comma) {
                return Ok(i);
            }
            i += 1;
        }
    }
    if cx.kw(s, "import") {
        // `IMPORT FOREIGN SCHEMA remote [{LIMIT TO | EXCEPT} (t, ...)] FROM SERVER srv INTO
        // local`: the tables of `LIMIT TO` are the ones it creates (those of `EXCEPT` it
        // leaves alone); the schemas and the server are not tables. Nothing else in it is
        // code (its OPTIONS are strings), so the token loop is skipped.
        if let Some(open) =
            (s + 3..e).find(|&j| cx.kind(j) == Some(T::LParen) && cx.kw(j.wrapping_sub(1), "to"))
        {
            table_list(cx, open + 1, e, true, tables)?;
        }
        return Ok(e);
    }
    if cx.kw(s, "alter") && cx.kw_any(s + 1, &["table", "view"]) {
        // `ALTER TABLE t RENAME TO u` (MySQL also `RENAME [AS] u`): the new name is a table
        // too. The old one is read by the token loop.
        if let Some(r) = (s + 3..e).find(|&j| cx.kw(j, "rename") && cx.kw_any(j + 1, &["to", "as"]))
        {
            table_list(cx, r + 2, e, false, tables)?;
        }
        return Ok(s);
    }
    // `CREATE OR REPLACE TEMPORARY RECURSIVE VIEW` puts the word furthest in.
    let view = (s + 1..e.min(s + 6)).find(|&j| {
        cx.kw(j, "view")
            && cx.kw_any(
                j - 1,
                &[
                    "create",
                    "replace",
                    "temp",
                    "temporary",
                    "recursive",
                    "materialized",
                    "drop",
                    "alter",
                ],
            )
    });
    if let Some(v) = view {
        table_list(cx, v + 1, e, true, tables)?;
        return Ok(s);
    }
    // `CREATE [UNIQUE] INDEX [CONCURRENTLY] i ON [ONLY] t`, `CREATE TRIGGER tr ... ON t`,
    // `DROP TRIGGER tr ON t`, `CREATE POLICY p ON t`, `CREATE RULE r AS ON SELECT TO t`: the
    // table follows the object's first `ON` (for a rule, its event and `TO`).
    let object = (s + 1..e.min(s + 5)).find(|&j| {
        cx.kw_any(j, &["index", "trigger", "policy", "rule"])
            && cx.kw_any(
                j - 1,
                &["create", "drop", "alter", "unique", "replace", "constraint"],
            )
    });
    if let Some(o) = object
        && let Some(on) = (o + 1..e).find(|&j| cx.kw(j, "on"))
    {
        let at = if cx.kw(o, "rule") && cx.kw(on + 2, "to") {
            on + 3
        } else {
            on + 1
        };
        table_list(cx, at, e, false, tables)?;
    }
    Ok(s)
}

/// The index after the parenthesized group opening at `i` (`e` if it never closes).
fn skip_group(cx: &Cx<'_>, mut i: usize, e: usize) -> usize {
    let mut depth = 0u32;
    while i < e {
        match cx.kind(i) {
            Some(T::LParen) => depth += 1,
            Some(T::RParen) => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    e
}

/// Skips a maintenance statement's options at `i`: a parenthesized list, or the bare words
/// PostgreSQL and MySQL accept before the table names. Returns the first token after them.
fn maintenance_options(cx: &Cx<'_>, mut i: usize, e: usize) -> usize {
    if cx.kind(i) == Some(T::LParen) {
        return skip_group(cx, i, e);
    }
    while cx.kw_any(
        i,
        &[
            "full",
            "freeze",
            "verbose",
            "analyze",
            "analyse",
            "no_write_to_binlog",
            "local",
        ],
    ) {
        i += 1;
    }
    i
}

/// Reads table references starting at `i` (`[ONLY] [IF [NOT] EXISTS] name [[AS] alias] [, ...]`)
/// and returns the index of the first token it did not consume.
fn table_list(
    cx: &Cx<'_>,
    mut i: usize,
    e: usize,
    list: bool,
    tables: &mut Vec<TableRef>,
) -> Result<usize, ClassifyError> {
    let mut buf = [0u8; 24];
    // In a FROM or JOIN list a name followed by `(` is a function (`FROM generate_series(1,
    // 3)`, `JOIN LATERAL f(t.x)`); elsewhere it is a table with a column list (`INTO t (a)`,
    // `CREATE TABLE t (`).
    // Read only when a `(` asks, as most lists have none.
    let list_start = i;
    let calls = || cx.kw_any(list_start.wrapping_sub(1), &["from", "join"]);
    loop {
        // Modifiers before the name.
        loop {
            let w = cx.lower(i, &mut buf);
            match w {
                b"only" | b"lateral" | b"table" | b"low_priority" | b"quick" | b"ignore"
                | b"delayed" | b"high_priority" | b"temporary" | b"temp" | b"unlogged"
                | b"concurrently" => i += 1,
                // `FROM ROWS FROM (f(), g())`: functions only.
                b"rows" if cx.kw(i + 1, "from") && calls() => i += 2,
                b"if" => {
                    i += 1;
                    if cx.kw(i, "not") {
                        i += 1;
                    }
                    if cx.kw(i, "exists") {
                        i += 1;
                    }
                }
                _ => break,
            }
        }
        if i >= e {
            return Ok(i);
        }
        let Some(name_start) = name_part(cx, i) else {
            if cx.kind(i) == Some(T::LParen) {
                parenthesized_table(cx, i, e, tables)?;
            }
            return Ok(i);
        };
        let mut parts = [name_start, name_start, name_start];
        let mut n = 1usize;
        let mut j = i + 1;
        while cx.kind(j) == Some(T::Dot) && name_part(cx, j + 1).is_some() {
            parts = [parts[1], parts[2], cx.span(j + 1)];
            n += 1;
            j += 2;
        }
        if !(cx.kind(j) == Some(T::LParen) && calls()) {
            if tables.len() >= MAX_TABLES {
                return Err(ClassifyError::TooManyTables);
            }
            tables.push(TableRef {
                schema: if n > 1 { Some(parts[1]) } else { None },
                name: parts[2],
            });
        }
        // Alias and the PostgreSQL inheritance star.
        if cx.bytes(j) == b"*" {
            j += 1;
        }
        if cx.kw(j, "as") {
            j += 1;
        }
        if matches!(cx.kind(j), Some(T::Word | T::QuotedIdent)) && name_part(cx, j).is_some() {
            j += 1;
        }
        if list && cx.kind(j) == Some(T::Comma) {
            i = j + 1;
            continue;
        }
        return Ok(j);
    }
}

/// A table reference in parentheses at `i`: the first table of a join tree, `FROM (a JOIN b
/// ON ...)` (the scan reads the joined ones after it), or PostgreSQL's `ONLY (a)`. Records
/// that first table and consumes nothing: the scan still walks through the parentheses, so
/// the depth it counts stays right. A subquery or a nested statement is not a table.
#[cold]
fn parenthesized_table(
    cx: &Cx<'_>,
    i: usize,
    e: usize,
    tables: &mut Vec<TableRef>,
) -> Result<(), ClassifyError> {
    let mut k = i;
    while k < e && cx.kind(k) == Some(T::LParen) {
        k += 1;
    }
    if k < e
        && !cx.kw_any(
            k,
            &[
                "select", "insert", "update", "delete", "merge", "with", "values", "table",
            ],
        )
    {
        // A name followed by `(` is a function (`ROWS FROM (f(), g())`).
        let mut last = k;
        while cx.kind(last + 1) == Some(T::Dot) {
            last += 2;
        }
        if cx.kind(last + 1) == Some(T::LParen) {
            return Ok(());
        }
        // A list too: MySQL's `FROM (a, b)`.
        table_list(cx, k, e, true, tables)?;
    }
    Ok(())
}

/// The span of a name part at `i`: a non-reserved word or a quoted identifier.
fn name_part(cx: &Cx<'_>, i: usize) -> Option<Span> {
    match cx.kind(i) {
        Some(T::QuotedIdent) => Some(cx.span(i)),
        Some(T::Word) => {
            let mut buf = [0u8; 24];
            let w = cx.lower(i, &mut buf);
            if reserved(w) { None } else { Some(cx.span(i)) }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{
        ADMIN_FUNCTIONS, FIRST_SQL_TEXT_FUNCTION, SCAN_KEYWORD_SHAPES, SCAN_KEYWORDS, WordShapes,
        admin_function,
    };

    /// A word of the set passes in any case; words of another first byte or length do not.
    #[test]
    fn word_shapes_admit_every_word_in_any_case() {
        for set in [SCAN_KEYWORDS, ADMIN_FUNCTIONS] {
            let shapes = WordShapes::of(set);
            for w in set {
                let upper = w.to_ascii_uppercase();
                let mut mixed = w.to_vec();
                if let Some(c) = mixed.first_mut() {
                    c.make_ascii_uppercase();
                }
                for v in [w.to_vec(), upper, mixed] {
                    assert!(shapes.admits(&v), "{}", String::from_utf8_lossy(&v));
                }
            }
        }
        for no in [&b""[..], b"x", b"selects", b"ol_w_id", b"\xc3\xa9t\xc3\xa9"] {
            assert!(
                !SCAN_KEYWORD_SHAPES.admits(no),
                "{}",
                String::from_utf8_lossy(no)
            );
        }
    }

    /// `INTO` counts only at the main SELECT's own depth, counted from its first token with
    /// saturation (as when it had a pass of its own), whatever comes before that SELECT.
    #[test]
    fn select_into_only_at_the_main_selects_depth() {
        use crate::request::Dialect;
        use crate::sql::{SqlScratch, StatementKind as K};
        let cases: &[(&str, bool)] = &[
            ("SELECT a INTO x FROM t", true),
            ("(SELECT a FROM t) INTO x", true),
            ("SELECT a FROM t) INTO x", true),
            ("SELECT (SELECT 1 INTO x)", false),
            ("SELECT a FROM t WHERE b IN (SELECT c FROM u) INTO x", true),
            ("WITH w AS (SELECT 1 INTO y) SELECT * FROM w", false),
            ("WITH w AS (SELECT 1) SELECT * INTO y FROM w", true),
            ("EXPLAIN SELECT a INTO x FROM t", true),
            ("INSERT INTO t SELECT 1", false),
        ];
        let mut scratch = SqlScratch::new();
        for &(sql, create) in cases {
            assert!(scratch.classify(sql, Dialect::Postgres).is_ok(), "{sql}");
            let kinds = scratch.statements().first().map(|s| s.kinds);
            assert_eq!(kinds.map(|k| k.contains(K::Create)), Some(create), "{sql}");
        }
    }

    #[test]
    fn admin_functions_match_ignoring_case_only() {
        assert_eq!(admin_function(b"PG_Terminate_Backend"), Some(false));
        assert_eq!(admin_function(b"sys_eval"), Some(false));
        assert_eq!(admin_function(b"pg_terminate_backends"), None);
        assert_eq!(admin_function(b"pg_terminate_backen"), None);
        assert_eq!(admin_function(b"count"), None);
        assert_eq!(admin_function(b"Query_To_Xml"), Some(true));
        assert_eq!(admin_function(b"database_to_xml_and_xmlschema"), Some(true));
        assert_eq!(admin_function(b"ts_stat"), Some(true));
        assert_eq!(
            ADMIN_FUNCTIONS.get(FIRST_SQL_TEXT_FUNCTION - 1..=FIRST_SQL_TEXT_FUNCTION),
            Some(&[&b"sys_eval"[..], &b"query_to_xml"[..]][..])
        );
    }
}
