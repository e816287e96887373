//! Globs for connection names, groups, tables, hosts, paths and commands: `*` matches any run
//! of characters (including none), `?` exactly one; everything else is literal.
//!
//! Deliberately small: no character classes, braces or `**` (rejected at load so that a pattern
//! never means something other than what it looks like). Matching is iterative with one
//! backtrack point, so it is linear in practice and never recurses on peer input.

/// A validated glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    literal: bool,
    case_insensitive: bool,
}

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("empty pattern")]
    Empty,
    #[error("pattern `{0}` uses `{1}`, which is not supported: only `*` and `?` are special")]
    Unsupported(String, char),
    #[error("pattern `{0}` contains whitespace or control characters")]
    Whitespace(String),
}

impl Glob {
    /// Parses a pattern; `case_insensitive` folds ASCII case (SQL names, hosts, methods).
    pub fn new(pattern: &str, case_insensitive: bool) -> Result<Glob, GlobError> {
        Self::parse(pattern, case_insensitive, false)
    }

    /// Like `new`, but spaces are allowed (SSH command patterns).
    pub fn with_spaces(pattern: &str) -> Result<Glob, GlobError> {
        Self::parse(pattern, false, true)
    }

    fn parse(pattern: &str, case_insensitive: bool, spaces: bool) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        for c in pattern.chars() {
            if matches!(c, '[' | ']' | '{' | '}') {
                return Err(GlobError::Unsupported(pattern.to_owned(), c));
            }
            if c.is_control() || (c.is_whitespace() && !(spaces && c == ' ')) {
                return Err(GlobError::Whitespace(pattern.to_owned()));
            }
        }
        if pattern.contains("**") {
            return Err(GlobError::Unsupported(pattern.to_owned(), '*'));
        }
        Ok(Glob {
            pattern: pattern.to_owned(),
            literal: !pattern.contains(['*', '?']),
            case_insensitive,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern is exactly `*`.
    pub fn is_any(&self) -> bool {
        self.pattern == "*"
    }

    pub fn matches(&self, text: &str) -> bool {
        let (p, t) = (self.pattern.as_bytes(), text.as_bytes());
        if self.literal {
            return if self.case_insensitive {
                p.eq_ignore_ascii_case(t)
            } else {
                p == t
            };
        }
        let eq = |a: u8, b: u8| {
            if self.case_insensitive {
                a.eq_ignore_ascii_case(&b)
            } else {
                a == b
            }
        };
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                // `?` matches one character, not one byte.
                Some(b'?') => {
                    pi += 1;
                    ti += utf8_len(t.get(ti).copied().unwrap_or(0));
                }
                Some(&c) if t.get(ti).is_some_and(|&x| eq(c, x)) => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p.get(pi..).unwrap_or_default().iter().all(|&c| c == b'*')
    }
}

fn utf8_len(lead: u8) -> usize {
    match lead {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// A list of globs; an empty list or one containing `*` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobSet {
    globs: Vec<Glob>,
    any: bool,
}

impl GlobSet {
    pub fn new(globs: Vec<Glob>) -> GlobSet {
        let any = globs.is_empty() || globs.iter().any(Glob::is_any);
        GlobSet { globs, any }
    }

    pub fn matches_any(&self) -> bool {
        self.any
    }

    pub fn matches(&self, text: &str) -> bool {
        self.any || self.globs.iter().any(|g| g.matches(text))
    }

    pub fn globs(&self) -> &[Glob] {
        &self.globs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_and_questions() {
        let g = Glob::new("orders-*", false).unwrap();
        assert!(g.matches("orders-db"));
        assert!(g.matches("orders-"));
        assert!(!g.matches("order-db"));
        let g = Glob::new("*_email", true).unwrap();
        assert!(g.matches("WORK_EMAIL"));
        assert!(!g.matches("email"));
        let g = Glob::new("a?c*d", false).unwrap();
        assert!(g.matches("abcxxd"));
        assert!(g.matches("aécd"));
        assert!(!g.matches("acd"));
        assert!(Glob::new("a[b]", false).is_err());
        assert!(Glob::new("", false).is_err());
        assert!(Glob::new("a**", false).is_err());
    }
}
