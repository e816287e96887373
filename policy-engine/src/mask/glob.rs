//! Case-insensitive name globs for column names and JSON field paths: `*` matches any run of
//! bytes (including `.`), `?` one byte. No character classes or escapes: column and field
//! names do not need them, and a smaller language is easier to audit.

/// A compiled glob (lower-cased pattern bytes).
#[derive(Debug, Clone)]
pub struct Glob {
    pat: Box<[u8]>,
    /// A pattern without `.` also matches the last segment of a dotted path, so `email`
    /// matches the JSON field `user.email`.
    bare: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Option<Glob> {
        if pattern.is_empty() {
            return None;
        }
        let pat: Box<[u8]> = pattern.bytes().map(|b| b.to_ascii_lowercase()).collect();
        let bare = !pat.contains(&b'.');
        Some(Glob { pat, bare })
    }

    pub fn matches(&self, name: &[u8]) -> bool {
        if wildcard(&self.pat, name) {
            return true;
        }
        if self.bare
            && let Some(dot) = memchr::memrchr(b'.', name)
        {
            return wildcard(&self.pat, name.get(dot + 1..).unwrap_or_default());
        }
        false
    }
}

/// Iterative wildcard match with single-star backtracking: O(n·m) worst case, no recursion.
fn wildcard(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let c = name.get(n).map(u8::to_ascii_lowercase);
        match pat.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&pc) if pc == b'?' || Some(pc) == c => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pat.get(p..).unwrap_or_default().iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = |p: &str, n: &str| Glob::new(p).unwrap().matches(n.as_bytes());
        assert!(g("email", "EMAIL"));
        assert!(g("*_email", "billing_email"));
        assert!(!g("*_email", "email"));
        assert!(g("email", "user.email"));
        assert!(!g("user.email", "email"));
        assert!(g("*.ssn", "a.b.ssn"));
        assert!(g("c?rd", "card"));
        assert!(!g("card", "cards"));
    }
}
