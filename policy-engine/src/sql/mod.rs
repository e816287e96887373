//! SQL classification: splits a query string into statements the way the server would, and for
//! each finds its kinds, the tables it names, whether an UPDATE/DELETE has a WHERE, and its
//! normalized text.
//!
//! This is a lexer plus a token-level classifier, not a parser: it does not check syntax and it
//! does not resolve names (views, search paths, synonyms). Where the token stream leaves a doubt
//! it picks the more dangerous reading (see `docs/policy.md`, "How SQL is classified"). All
//! working memory lives in a reusable [`SqlScratch`], so classifying allocates nothing once the
//! scratch has grown to the largest input seen.

mod classify;
mod kind;
pub mod lexer;
pub mod sources;

pub use classify::{MAX_SQL_BYTES, MAX_STATEMENTS, MAX_TABLES};
pub use kind::{KindSet, StatementKind};
pub use sources::ResultSources;

use crate::request::Dialect;
use lexer::{Token, TokenKind};

/// A byte range in the classified text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The text this span covers (empty if `text` is not the classified input).
    pub fn of(self, text: &str) -> &str {
        text.get(self.start as usize..self.end as usize)
            .unwrap_or("")
    }
}

/// A table named by a statement: `schema.name` or just `name` (quotes removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRef {
    pub schema: Option<Span>,
    pub name: Span,
}

/// One classified statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement {
    /// Text from the first to the last token (comments around it excluded).
    pub span: Span,
    pub kinds: KindSet,
    /// An UPDATE or DELETE (top-level or nested) has no WHERE clause.
    pub without_where: bool,
    /// What the statement runs is not visible here (`EXECUTE`, `CALL`, `DO`, unterminated or
    /// unrecognised input): deny and review rules on statement kinds match it whatever its kinds.
    pub opaque: bool,
    tables: (u32, u32),
    tokens: (u32, u32),
}

impl Statement {
    /// The most dangerous of the statement's kinds.
    pub fn primary_kind(&self) -> StatementKind {
        self.kinds.primary()
    }
}

/// Why a query string could not be classified at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("statement text is {0} bytes, over the {MAX_SQL_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("query string has more than {MAX_STATEMENTS} statements")]
    TooManyStatements,
    #[error("query string names more than {MAX_TABLES} tables")]
    TooManyTables,
    /// Only while the session's `standard_conforming_strings` may be changing.
    #[error("the text reads differently with standard_conforming_strings on and off")]
    AmbiguousStrings,
}

/// How a PostgreSQL session reads plain `'...'` strings: its `standard_conforming_strings`.
/// The two readings split a text differently only where a backslash stands inside such a
/// string: `'x\'' ; DROP TABLE t; --'` is one string with the setting on, and a string, a
/// DROP and a comment with it off. (MySQL strings always take backslash escapes.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StringLiterals {
    /// `standard_conforming_strings = on`, the server default: a backslash is a character.
    #[default]
    Standard,
    /// `standard_conforming_strings = off`: a backslash escapes, as in `E'...'`.
    Backslash,
    /// Either may hold (a statement that could change the setting is still running): a text
    /// the two readings split or classify differently is refused
    /// ([`ClassifyError::AmbiguousStrings`]).
    Either,
}

/// Reusable working memory for classification; one per core or per session.
#[derive(Debug, Default)]
pub struct SqlScratch {
    tokens: Vec<Token>,
    statements: Vec<Statement>,
    tables: Vec<TableRef>,
    unterminated: bool,
    strings: StringLiterals,
    /// The second reading of [`StringLiterals::Either`].
    alt_tokens: Vec<Token>,
    alt_statements: Vec<Statement>,
    alt_tables: Vec<TableRef>,
}

impl SqlScratch {
    pub fn new() -> Self {
        Self::default()
    }

    /// How the next PostgreSQL texts read plain strings (kept until changed).
    pub fn set_string_literals(&mut self, strings: StringLiterals) {
        self.strings = strings;
    }

    /// Classifies `text`; results stay in the scratch until the next call.
    pub fn classify(&mut self, text: &str, dialect: Dialect) -> Result<(), ClassifyError> {
        self.statements.clear();
        self.tables.clear();
        if text.len() > MAX_SQL_BYTES {
            self.tokens.clear();
            return Err(ClassifyError::TooLarge(text.len()));
        }
        // Only a backslash can make the two string readings differ.
        let strings = if dialect == Dialect::Postgres
            && self.strings != StringLiterals::Standard
            && memchr::memchr(b'\\', text.as_bytes()).is_some()
        {
            self.strings
        } else {
            StringLiterals::Standard
        };
        let lexed = if strings == StringLiterals::Backslash {
            lexer::lex_backslash_strings(text, &mut self.tokens)
        } else {
            lexer::lex(text, dialect, &mut self.tokens)
        };
        self.unterminated = lexed.unterminated;
        classify::run(
            text,
            dialect,
            &self.tokens,
            self.unterminated,
            &mut self.statements,
            &mut self.tables,
        )?;
        if strings == StringLiterals::Either {
            self.check_backslash_reading(text)?;
        }
        if lexed.unicode_names {
            self.mark_unicode_escaped_names(text);
        }
        Ok(())
    }

    /// Marks opaque every statement with a PostgreSQL `U&"..."` name. Its escapes
    /// (`U&"payment\005ftokens"`, or any character chosen with `UESCAPE`) spell a name the
    /// tokens do not show, so table and schema rules could not see `payment_tokens` in it;
    /// as opaque, the statement matches every deny, review and observe rule that would need
    /// to look inside it.
    fn mark_unicode_escaped_names(&mut self, text: &str) {
        let b = text.as_bytes();
        let escaped = |t: &Token| {
            let s = t.start as usize;
            t.kind == TokenKind::QuotedIdent
                && s >= 3
                && b.get(s - 3..s)
                    .is_some_and(|p| matches!(p, [b'u' | b'U', b'&', b'"']))
        };
        for st in &mut self.statements {
            let toks = self
                .tokens
                .get(st.tokens.0 as usize..st.tokens.1 as usize)
                .unwrap_or(&[]);
            if toks.iter().any(escaped) {
                st.opaque = true;
            }
        }
    }

    /// Classifies `text` again with backslash escapes in plain strings; a text the two
    /// readings split or classify differently cannot be decided until the setting is known.
    fn check_backslash_reading(&mut self, text: &str) -> Result<(), ClassifyError> {
        self.alt_statements.clear();
        self.alt_tables.clear();
        let lexed = lexer::lex_backslash_strings(text, &mut self.alt_tokens);
        classify::run(
            text,
            Dialect::Postgres,
            &self.alt_tokens,
            lexed.unterminated,
            &mut self.alt_statements,
            &mut self.alt_tables,
        )?;
        let same = |a: &Statement, b: &Statement| {
            (a.span, a.kinds, a.without_where, a.opaque)
                == (b.span, b.kinds, b.without_where, b.opaque)
        };
        if self.statements.len() == self.alt_statements.len()
            && self
                .statements
                .iter()
                .zip(&self.alt_statements)
                .all(|(a, b)| same(a, b))
        {
            Ok(())
        } else {
            Err(ClassifyError::AmbiguousStrings)
        }
    }

    /// Statements of the last classified text, in order.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }

    /// The statement's tokens (positions in the classified text).
    pub fn tokens(&self, s: &Statement) -> &[Token] {
        self.tokens
            .get(s.tokens.0 as usize..s.tokens.1 as usize)
            .unwrap_or(&[])
    }

    /// Tables the statement names.
    pub fn tables(&self, s: &Statement) -> &[TableRef] {
        self.tables
            .get(s.tables.0 as usize..s.tables.1 as usize)
            .unwrap_or(&[])
    }

    /// The last input ended inside a string, quoted identifier or comment.
    pub fn unterminated(&self) -> bool {
        self.unterminated
    }

    /// Writes the statement's normalized text into `out` (cleared first): literals become `?`,
    /// comments go, unquoted words are lower-cased and tokens are separated by single spaces.
    /// Normalizing normalized text gives the same text.
    pub fn normalize_into(&self, text: &str, dialect: Dialect, s: &Statement, out: &mut String) {
        out.clear();
        let toks = self
            .tokens
            .get(s.tokens.0 as usize..s.tokens.1 as usize)
            .unwrap_or(&[]);
        let quote = if dialect == Dialect::Mysql { '`' } else { '"' };
        let mut prev: Option<TokenKind> = None;
        for t in toks {
            let glue = matches!(prev, None | Some(TokenKind::LParen | TokenKind::Dot))
                || matches!(
                    t.kind,
                    TokenKind::RParen | TokenKind::Comma | TokenKind::Dot
                );
            if !glue {
                out.push(' ');
            }
            let src = text.get(t.start as usize..t.end as usize).unwrap_or("");
            match t.kind {
                TokenKind::Word => {
                    // One copy, then ASCII case folding in place (non-ASCII bytes stay as
                    // they are, as with per-char `to_ascii_lowercase`).
                    let from = out.len();
                    out.push_str(src);
                    if let Some(w) = out.get_mut(from..) {
                        w.make_ascii_lowercase();
                    }
                }
                TokenKind::QuotedIdent => {
                    out.push(quote);
                    out.push_str(src);
                    out.push(quote);
                }
                TokenKind::String | TokenKind::Number => out.push('?'),
                _ => out.push_str(src),
            }
            prev = Some(t.kind);
        }
    }

    /// The source text of the statement's tokens that normalization copies with their word
    /// bytes intact (words, quoted identifiers, parameters), in order. Every run of
    /// `[A-Za-z0-9_]` in the normalized text lies inside one of these, ignoring ASCII case:
    /// the rest of the normalized text is `?` for literals, operators, punctuation, quotes
    /// and spaces.
    pub fn word_bearing_tokens<'t>(
        &'t self,
        text: &'t str,
        s: &Statement,
    ) -> impl Iterator<Item = &'t str> + 't {
        self.tokens
            .get(s.tokens.0 as usize..s.tokens.1 as usize)
            .unwrap_or(&[])
            .iter()
            .filter(|t| {
                matches!(
                    t.kind,
                    TokenKind::Word | TokenKind::QuotedIdent | TokenKind::Param
                )
            })
            .map(|t| text.get(t.start as usize..t.end as usize).unwrap_or(""))
    }

    /// Convenience for tools and tests: the normalized text of every statement, joined by `; `.
    pub fn normalized(&self, text: &str, dialect: Dialect) -> String {
        let mut all = String::new();
        let mut one = String::new();
        for (i, s) in self.statements.iter().enumerate() {
            self.normalize_into(text, dialect, s, &mut one);
            if i > 0 {
                all.push_str("; ");
            }
            all.push_str(&one);
        }
        all
    }
}
