//! Two-stage detectors: SIMD prefilters find candidates (aho-corasick over literal anchors,
//! memchr for `@` and `:`, a vectorised digit scan), then precise validators confirm them.
//!
//! Every detector is line-local: no match contains a `\n`, and whether a match exists at a
//! position depends only on the bytes of its own line (one byte of look-behind at most). The
//! stream masker relies on this to cut streams at newlines. Private-key PEM blocks are the
//! one multi-line secret; they are handled by the stream state in `engine`, and this module
//! only reports where a `-----BEGIN ... PRIVATE KEY-----` header starts.
//!
//! Deliberately not here: strategies and output (see `engine`), column rules.

use aho_corasick::{AhoCorasick, MatchKind};
use memchr::memmem;
use regex::bytes::Regex;

use super::MaskError;
use super::validate;

/// Detector index into a `MaskEngine`'s table; built-ins first, custom detectors after.
pub type DetectorId = u8;

/// Upper bound on detectors (built-in + custom) so a detector set is one `u64` bitmask.
pub const MAX_DETECTORS: usize = 64;

/// Longest value the `credential` key-value detector masks in one match; longer values are
/// masked up to here and the rest is left (a line-local bound, see the stream window).
pub const MAX_ASSIGNMENT_VALUE: usize = 1024;

/// Longest JWT accepted (header + payload + signature).
pub const MAX_JWT_LEN: usize = 16 * 1024;

/// Built-in detectors, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Builtin {
    Email = 0,
    CreditCard,
    Ssn,
    Phone,
    Iban,
    Ipv4,
    Ipv6,
    AwsAccessKey,
    AwsSecretKey,
    GcpApiKey,
    GithubToken,
    GitlabToken,
    SlackToken,
    Jwt,
    PrivateKey,
    Credential,
}

/// `(name, redact label)` of each built-in, indexed by `Builtin as usize`.
pub const BUILTINS: [(&str, &str); 16] = [
    ("email", "[EMAIL]"),
    ("credit_card", "[CREDIT_CARD]"),
    ("ssn", "[SSN]"),
    ("phone", "[PHONE]"),
    ("iban", "[IBAN]"),
    ("ipv4", "[IPV4]"),
    ("ipv6", "[IPV6]"),
    ("aws_access_key", "[AWS_ACCESS_KEY]"),
    ("aws_secret_key", "[AWS_SECRET_KEY]"),
    ("gcp_api_key", "[GCP_API_KEY]"),
    ("github_token", "[GITHUB_TOKEN]"),
    ("gitlab_token", "[GITLAB_TOKEN]"),
    ("slack_token", "[SLACK_TOKEN]"),
    ("jwt", "[JWT]"),
    ("private_key", "[PRIVATE_KEY]"),
    ("credential", "[SECRET]"),
];

pub const N_BUILTINS: usize = BUILTINS.len();

/// Detector group names a policy may use instead of listing detectors one by one.
pub fn group(name: &str) -> Option<u64> {
    let bits = |ds: &[Builtin]| ds.iter().fold(0u64, |m, &d| m | 1 << (d as u8));
    use Builtin::*;
    match name {
        "all" => Some((1u64 << N_BUILTINS) - 1),
        "pii" => Some(bits(&[Email, CreditCard, Ssn, Phone, Iban, Ipv4, Ipv6])),
        "secrets" => Some(bits(&[
            AwsAccessKey,
            AwsSecretKey,
            GcpApiKey,
            GithubToken,
            GitlabToken,
            SlackToken,
            Jwt,
            PrivateKey,
            Credential,
        ])),
        "ip" => Some(bits(&[Ipv4, Ipv6])),
        // The name policies commonly use for the US social security number detector.
        "us_ssn" => Some(bits(&[Ssn])),
        _ => None,
    }
}

/// Every built-in detector.
pub(crate) const BUILTIN_SET: u64 = (1 << N_BUILTINS) - 1;

/// Detectors found from a token prefix (`AKIA`, `ghp_`, `eyJ`, `-----BEGIN `, ...).
pub(crate) const TOKEN_SET: u64 = (1 << Builtin::AwsAccessKey as u8)
    | (1 << Builtin::GcpApiKey as u8)
    | (1 << Builtin::GithubToken as u8)
    | (1 << Builtin::GitlabToken as u8)
    | (1 << Builtin::SlackToken as u8)
    | (1 << Builtin::Jwt as u8)
    | (1 << Builtin::PrivateKey as u8);

/// Detectors found from a key name in [`KEYWORDS`] before a `=` or `:`.
pub(crate) const ASSIGNMENT_SET: u64 =
    (1 << Builtin::AwsSecretKey as u8) | (1 << Builtin::Credential as u8);

/// Detectors found by literal anchors alone (no digit scan): the "secrets" set, one of the
/// sets the prefilter tests run.
#[cfg(test)]
pub const LITERAL_SET: u64 = (1 << Builtin::AwsAccessKey as u8)
    | (1 << Builtin::AwsSecretKey as u8)
    | (1 << Builtin::GcpApiKey as u8)
    | (1 << Builtin::GithubToken as u8)
    | (1 << Builtin::GitlabToken as u8)
    | (1 << Builtin::SlackToken as u8)
    | (1 << Builtin::Jwt as u8)
    | (1 << Builtin::PrivateKey as u8)
    | (1 << Builtin::Credential as u8);

pub(crate) const DIGIT_SET: u64 = (1 << Builtin::CreditCard as u8)
    | (1 << Builtin::Ssn as u8)
    | (1 << Builtin::Phone as u8)
    | (1 << Builtin::Iban as u8)
    | (1 << Builtin::Ipv4 as u8);

/// What a token anchor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchor {
    AwsKeyId,
    Gcp,
    Github,
    GithubPat,
    Gitlab,
    Slack,
    Jwt,
    Pem,
    Keyword,
    AwsSecretKeyword,
    /// `Authorization`: an HTTP scheme word (`Bearer`, `Basic`) may come before the secret.
    Authorization,
}

/// Case-sensitive literal prefixes of tokens (matched by [`anchor_at`]).
pub(crate) const TOKEN_ANCHORS: &[(&str, Anchor)] = &[
    ("AKIA", Anchor::AwsKeyId),
    ("ASIA", Anchor::AwsKeyId),
    ("ABIA", Anchor::AwsKeyId),
    ("ACCA", Anchor::AwsKeyId),
    ("AIza", Anchor::Gcp),
    ("ghp_", Anchor::Github),
    ("gho_", Anchor::Github),
    ("ghu_", Anchor::Github),
    ("ghs_", Anchor::Github),
    ("ghr_", Anchor::Github),
    ("github_pat_", Anchor::GithubPat),
    ("glpat-", Anchor::Gitlab),
    ("xoxb-", Anchor::Slack),
    ("xoxp-", Anchor::Slack),
    ("xoxa-", Anchor::Slack),
    ("xoxr-", Anchor::Slack),
    ("xoxs-", Anchor::Slack),
    ("xoxe-", Anchor::Slack),
    ("eyJ", Anchor::Jwt),
    ("-----BEGIN ", Anchor::Pem),
];

/// Key names whose assigned value is a secret, matched ASCII-case-insensitively. They are not
/// searched for: the scan stops at each `=` and `:` and looks back for a keyword, because
/// case-insensitive `password`/`token`/`secret` would make an automaton stop on common letters.
const KEYWORDS: &[(&str, Anchor)] = &[
    ("aws_secret_access_key", Anchor::AwsSecretKeyword),
    ("aws_secret_key", Anchor::AwsSecretKeyword),
    // As AWS's own APIs and SDK caches spell it: `"SecretAccessKey": "..."`.
    ("secret_access_key", Anchor::AwsSecretKeyword),
    ("secretaccesskey", Anchor::AwsSecretKeyword),
    ("password", Anchor::Keyword),
    ("passwd", Anchor::Keyword),
    ("pwd", Anchor::Keyword),
    ("secret", Anchor::Keyword),
    ("client_secret", Anchor::Keyword),
    // Django's `SECRET_KEY` and the many settings named like it.
    ("secret_key", Anchor::Keyword),
    ("token", Anchor::Keyword),
    ("access_token", Anchor::Keyword),
    ("auth_token", Anchor::Keyword),
    ("refresh_token", Anchor::Keyword),
    ("api_key", Anchor::Keyword),
    ("apikey", Anchor::Keyword),
    ("api-key", Anchor::Keyword),
    ("private_key", Anchor::Keyword),
    // An HTTP header copied into a log or a column: `Authorization: Bearer <token>`.
    ("authorization", Anchor::Authorization),
];

/// Optional validator of a custom detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validator {
    Luhn,
    Mod97,
}

#[derive(Debug)]
pub struct Custom {
    pub regex: Regex,
    pub validator: Option<Validator>,
    /// Fewest bytes any match has (0 when unknown): shorter values cannot match, so a
    /// result-set cell shorter than every custom pattern skips the regexes.
    pub min_len: usize,
    /// Bytes every match starts with, when the pattern has such a prefix of two bytes or
    /// more (`EMP-` of `EMP-[0-9]{6}`): a cell without them skips the regex. The regex
    /// searches for the same prefix first, but through its whole search set-up, which for a
    /// ~15-byte cell cost as much again as the search (about 160 instructions a cell).
    pub prefix: Option<memchr::memmem::Finder<'static>>,
}

/// Longest value searched for a custom prefix by its first byte: below this, `memchr` and a
/// comparison cost less than the `memmem` searcher's set-up (74 instructions for a 15-byte
/// cell against ~30).
const SHORT_PREFIX_SEARCH: usize = 64;

/// Whether `value` contains the needle of `finder`.
#[inline]
fn contains(finder: &memchr::memmem::Finder<'_>, value: &[u8]) -> bool {
    let needle = finder.needle();
    match needle.split_first() {
        Some((&first, rest)) if value.len() < SHORT_PREFIX_SEARCH => {
            memchr::memchr_iter(first, value)
                .any(|i| value.get(i + 1..).is_some_and(|t| t.starts_with(rest)))
        }
        _ => finder.find(value).is_some(),
    }
}

/// Shortest required prefix worth a search of its own: one byte is a `memchr`, which the
/// regex's own prefilter does as cheaply.
const MIN_CUSTOM_PREFIX: usize = 2;

impl Custom {
    pub fn new(regex: Regex, validator: Option<Validator>) -> Self {
        // Parsed as `regex::bytes` does (Unicode on, any byte allowed); a pattern this parser
        // reads differently just gets no bound and no prefix.
        let hir = regex_syntax::ParserBuilder::new()
            .utf8(false)
            .build()
            .parse(regex.as_str())
            .ok();
        let min_len = hir
            .as_ref()
            .and_then(|hir| hir.properties().minimum_len())
            .unwrap_or(0);
        // Every match begins with one of a finite set of prefix literals (the extractor's
        // guarantee); the bytes they all share begin every match.
        let prefix = hir.as_ref().and_then(|hir| {
            let seq = regex_syntax::hir::literal::Extractor::new().extract(hir);
            let common = seq.longest_common_prefix()?;
            (common.len() >= MIN_CUSTOM_PREFIX)
                .then(|| memchr::memmem::Finder::new(common).into_owned())
        });
        Custom {
            regex,
            validator,
            min_len,
            prefix,
        }
    }
}

/// A confirmed match: `[start, end)` of the scanned slice, and which detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub start: usize,
    pub end: usize,
    pub det: DetectorId,
}

/// The compiled prefilters; one per engine, shared by every session.
#[derive(Debug)]
pub struct Scanner {
    /// Token prefixes for long regions; short values find them with [`anchor_at`] at the
    /// block prefilter's candidates instead.
    anchors: AhoCorasick,
    /// Custom detectors, id `N_BUILTINS + i`.
    pub customs: Vec<Custom>,
    pem_end: memmem::Finder<'static>,
}

impl Scanner {
    pub fn new(customs: Vec<Custom>) -> Result<Self, MaskError> {
        let anchors = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(TOKEN_ANCHORS.iter().map(|(p, _)| p))
            .map_err(|e| MaskError::Internal(e.to_string()))?;
        Ok(Self {
            anchors,
            customs,
            pem_end: memmem::Finder::new(b"-----END "),
        })
    }

    /// Where the `-----END ` marker after a PEM header is, from `from`.
    pub fn find_pem_end(&self, hay: &[u8], from: usize) -> Option<usize> {
        let tail = hay.get(from..)?;
        self.pem_end.find(tail).map(|i| from + i)
    }

    /// Appends every confirmed hit of the detectors in `set` within `hay[from..to]` to
    /// `hits` (unordered, possibly overlapping). Bytes outside `[from, to)` are look-behind /
    /// look-ahead context only. Allocates only when something is found.
    ///
    /// Short values (result-set cells) go through the block prefilter (`blocks`), which hands
    /// the validators the same candidates, in the same order, as the per-family scans; longer
    /// regions use one SIMD search per family (`memchr`, the token automaton), which beats a
    /// byte-class pass once the fixed cost of entering them is spread over enough bytes.
    pub fn scan(&self, hay: &[u8], from: usize, to: usize, set: u64, hits: &mut Vec<Hit>) {
        let Some(region) = hay.get(..to) else {
            return;
        };
        if to.saturating_sub(from) <= GATE_MAX {
            super::blocks::scan_builtins(region, from, set & BUILTIN_SET, hits);
            self.scan_customs(region, from, set, hits);
        } else {
            self.scan_families(region, from, set, false, hits);
        }
    }

    /// The scan of a long region over `hay[from..]`. The data path (`plain == false`) finds
    /// token prefixes with the automaton and every other built-in family with the block
    /// prefilter; `plain` is the
    /// reference the tests compare the prefilters with: one search per family, and every
    /// candidate goes to its validator.
    #[inline]
    pub(crate) fn scan_families(
        &self,
        hay: &[u8],
        from: usize,
        set: u64,
        plain: bool,
        hits: &mut Vec<Hit>,
    ) {
        let region = hay;
        if set & TOKEN_SET != 0 {
            self.scan_tokens(region, from, set, hits);
        }
        if !plain && set & BUILTIN_SET & !TOKEN_SET != 0 {
            // One block pass for every other built-in family: `@`, `:`/`=` and digits come
            // out of the same 64-byte classification, with the fast reject's filters, instead
            // of `memchr` iterations that stop at every colon of every timestamp (a
            // separator right after a digit is dropped from the masks, see
            // `blocks::assignment_candidates`).
            super::blocks::scan_builtins(region, from, set & BUILTIN_SET & !TOKEN_SET, hits);
            self.scan_customs(region, from, set, hits);
            return;
        }
        if set & ASSIGNMENT_SET != 0 {
            let tail = region.get(from..).unwrap_or_default();
            for rel in memchr::memchr2_iter(b'=', b':', tail) {
                if let Some(h) = assignment_hit(region, from, from + rel, set) {
                    hits.push(h);
                }
            }
        }
        if set & (1 << Builtin::Email as u8) != 0 {
            let tail = region.get(from..).unwrap_or_default();
            let mut skip_until = 0usize;
            for rel in memchr::memchr3_iter(b'@', b'%', b'&', tail) {
                if let Some(h) = email_hit(region, from + rel, &mut skip_until) {
                    hits.push(h);
                }
            }
        }
        if set & DIGIT_SET != 0 {
            super::numeric::scan_digits(region, from, set, hits);
        }
        if set & (1 << Builtin::Ipv6 as u8) != 0 {
            let tail = region.get(from..).unwrap_or_default();
            let mut skip_until = 0usize;
            for rel in memchr::memchr_iter(b':', tail) {
                if let Some(h) = ipv6_hit(region, from + rel, &mut skip_until) {
                    hits.push(h);
                }
            }
        }
        self.scan_customs(region, from, set, hits);
    }

    #[inline]
    /// Whether a custom detector in `set` may find something in `value`: one `is_match` per
    /// detector long enough for it, instead of the scan's match iteration and set-up. A
    /// match that its validator rejects still answers true (the scan decides).
    pub(crate) fn customs_may_match(&self, value: &[u8], set: u64) -> bool {
        self.customs.iter().enumerate().any(|(i, c)| {
            u32::try_from(N_BUILTINS + i)
                .ok()
                .and_then(|id| 1u64.checked_shl(id))
                .is_some_and(|bit| set & bit != 0)
                && value.len() >= c.min_len
                && c.prefix.as_ref().is_none_or(|f| contains(f, value))
                && c.regex.is_match(value)
        })
    }

    fn scan_customs(&self, region: &[u8], from: usize, set: u64, hits: &mut Vec<Hit>) {
        // Most policies have no custom detector: skip the loop's set-up per value.
        if set & !BUILTIN_SET == 0 {
            return;
        }
        for (i, c) in self.customs.iter().enumerate() {
            let id = N_BUILTINS + i;
            if set & (1u64 << id) == 0 {
                continue;
            }
            for m in c.regex.find_iter(region.get(from..).unwrap_or_default()) {
                let (s, e) = (from + m.start(), from + m.end());
                if s == e {
                    continue;
                }
                let ok = match c.validator {
                    None => true,
                    Some(Validator::Luhn) => validate::luhn(m.as_bytes()),
                    Some(Validator::Mod97) => validate::mod97(m.as_bytes()),
                };
                if ok {
                    #[expect(clippy::cast_possible_truncation, reason = "id < MAX_DETECTORS = 64")]
                    hits.push(Hit {
                        start: s,
                        end: e,
                        det: id as u8,
                    });
                }
            }
        }
    }

    /// Token prefixes found by the aho-corasick automaton (leftmost-longest, non-overlapping).
    fn scan_tokens(&self, hay: &[u8], from: usize, set: u64, hits: &mut Vec<Hit>) {
        let Some(tail) = hay.get(from..) else { return };
        for m in self.anchors.find_iter(tail) {
            let s = from + m.start();
            let e = from + m.end();
            let Some(&(_, anchor)) = TOKEN_ANCHORS.get(m.pattern().as_usize()) else {
                continue;
            };
            if let Some(h) = token_hit(hay, s, e, anchor, set) {
                hits.push(h);
            }
        }
    }
}

/// The token whose anchor (a token prefix) is at `[s, e)`, when it is complete and
/// its detector is in `set`.
pub(crate) fn token_hit(hay: &[u8], s: usize, e: usize, anchor: Anchor, set: u64) -> Option<Hit> {
    let (end, det) = match anchor {
        Anchor::AwsKeyId => token_at(hay, s, e, 16, 16, |b| {
            b.is_ascii_uppercase() || b.is_ascii_digit()
        })
        .map(|end| (end, Builtin::AwsAccessKey)),
        Anchor::Gcp => token_at(hay, s, e, 35, 35, is_b64url).map(|end| (end, Builtin::GcpApiKey)),
        Anchor::Github => token_at(hay, s, e, 36, 255, |b| b.is_ascii_alphanumeric())
            .map(|end| (end, Builtin::GithubToken)),
        Anchor::GithubPat => {
            token_at(hay, s, e, 22, 255, is_word).map(|end| (end, Builtin::GithubToken))
        }
        Anchor::Gitlab => {
            token_at(hay, s, e, 20, 255, is_b64url).map(|end| (end, Builtin::GitlabToken))
        }
        Anchor::Slack => {
            token_at(hay, s, e, 10, 255, is_b64url).map(|end| (end, Builtin::SlackToken))
        }
        Anchor::Jwt => jwt_at(hay, s).map(|end| (end, Builtin::Jwt)),
        Anchor::Pem => pem_header_at(hay, s).map(|end| (end, Builtin::PrivateKey)),
        Anchor::Keyword | Anchor::AwsSecretKeyword | Anchor::Authorization => None,
    }?;
    (set & (1u64 << det as u8) != 0).then_some(Hit {
        start: s,
        end,
        det: det as u8,
    })
}

/// The token prefix (`TOKEN_ANCHORS`) at `p`, if any: its end and kind. No prefix is a prefix of
/// another, so at most one matches at a position, and taking them left to right while
/// skipping those that start inside the previous one is exactly the automaton's
/// leftmost-longest, non-overlapping iteration.
#[inline]
pub(crate) fn anchor_at(hay: &[u8], p: usize) -> Option<(usize, Anchor)> {
    use Anchor::*;
    let (len, anchor) = match hay.get(p..)? {
        [b'A', b'K' | b'S' | b'B', b'I', b'A', ..] | [b'A', b'C', b'C', b'A', ..] => (4, AwsKeyId),
        [b'A', b'I', b'z', b'a', ..] => (4, Gcp),
        [b'g', b'h', b'p' | b'o' | b'u' | b's' | b'r', b'_', ..] => (4, Github),
        [
            b'g',
            b'i',
            b't',
            b'h',
            b'u',
            b'b',
            b'_',
            b'p',
            b'a',
            b't',
            b'_',
            ..,
        ] => (11, GithubPat),
        [b'g', b'l', b'p', b'a', b't', b'-', ..] => (6, Gitlab),
        [
            b'x',
            b'o',
            b'x',
            b'b' | b'p' | b'a' | b'r' | b's' | b'e',
            b'-',
            ..,
        ] => (5, Slack),
        [b'e', b'y', b'J', ..] => (3, Jwt),
        [
            b'-',
            b'-',
            b'-',
            b'-',
            b'-',
            b'B',
            b'E',
            b'G',
            b'I',
            b'N',
            b' ',
            ..,
        ] => (11, Pem),
        _ => return None,
    };
    Some((p + len, anchor))
}

/// The secret assignment (`password=...`, `"api_key": "..."`) whose separator (`=` or `:`)
/// is at `sep`: the key name before it (after an optional closing quote and spaces) is
/// checked against [`KEYWORDS`].
///
/// The `:` of a URL's `://` is a separator too: the password of its userinfo
/// (`postgres://app:s3cret@db/x`) is a credential.
#[inline]
pub(crate) fn assignment_hit(hay: &[u8], from: usize, sep: usize, set: u64) -> Option<Hit> {
    if url_scheme_end(hay, sep) {
        let (vs, ve) = url_password_at(hay, sep)?;
        let det = Builtin::Credential;
        return (set & (1u64 << det as u8) != 0).then_some(Hit {
            start: vs,
            end: ve,
            det: det as u8,
        });
    }
    let (s, e, anchor) = keyword_before(hay, from, sep)?;
    let (vs, ve, det) = match anchor {
        Anchor::AwsSecretKeyword => assignment_at(hay, s, e).map(|(vs, ve)| {
            let v = hay.get(vs..ve).unwrap_or_default();
            if v.len() == 40
                && v.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'/' || b == b'+')
            {
                (vs, ve, Builtin::AwsSecretKey)
            } else {
                (vs, ve, Builtin::Credential)
            }
        }),
        Anchor::Authorization => assignment_at(hay, s, e)
            .and_then(|(vs, ve)| authorization_credentials(hay, vs, ve))
            .map(|(vs, ve)| (vs, ve, Builtin::Credential)),
        _ => assignment_at(hay, s, e).map(|(vs, ve)| (vs, ve, Builtin::Credential)),
    }?;
    (set & (1u64 << det as u8) != 0).then_some(Hit {
        start: vs,
        end: ve,
        det: det as u8,
    })
}

/// Whether the `:` at `sep` ends a URL scheme (`://` follows).
#[inline]
fn url_scheme_end(hay: &[u8], sep: usize) -> bool {
    // Byte tests rather than a slice compare: this runs for every separator a keyword cannot
    // end before, and the second test almost always fails.
    hay.get(sep) == Some(&b':')
        && hay.get(sep.wrapping_add(1)) == Some(&b'/')
        && hay.get(sep.wrapping_add(2)) == Some(&b'/')
}

/// The password in the userinfo of the URL whose `://` is at `sep`: the bytes between the
/// userinfo's first `:` and the authority's last `@` (a password with an unescaped `@` is
/// masked whole rather than cut). The user name stays visible. At most
/// [`MAX_ASSIGNMENT_VALUE`] bytes of authority are read.
fn url_password_at(hay: &[u8], sep: usize) -> Option<(usize, usize)> {
    let start = sep.checked_add(3)?;
    let rest = hay.get(start..)?;
    let len = rest
        .iter()
        .take(MAX_ASSIGNMENT_VALUE)
        .take_while(|&&b| {
            !matches!(
                b,
                b'/' | b'?'
                    | b'#'
                    | b' '
                    | b'\t'
                    | b'\n'
                    | b'\r'
                    | b'"'
                    | b'\''
                    | b'`'
                    | b'<'
                    | b'>'
                    | b'\\'
            )
        })
        .count();
    let authority = rest.get(..len)?;
    let at = memchr::memrchr(b'@', authority)?;
    let colon = memchr::memchr(b':', authority.get(..at)?)?;
    (colon + 1 < at).then_some((start + colon + 1, start + at))
}

/// Whether the bytes from `s` are the password of a URL's userinfo: `:` before them, and
/// before that a user name (possibly empty) right after a `://`.
fn url_userinfo_password(hay: &[u8], s: usize) -> bool {
    let Some(colon) = s.checked_sub(1) else {
        return false;
    };
    if hay.get(colon) != Some(&b':') {
        return false;
    }
    let user = hay
        .get(..colon)
        .unwrap_or_default()
        .iter()
        .rev()
        .take(MAX_ASSIGNMENT_VALUE)
        .take_while(|&&b| !matches!(b, b'/' | b'@' | b':' | b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    (colon - user)
        .checked_sub(3)
        .is_some_and(|u| url_scheme_end(hay, u))
}

/// Where a keyword would end for the assignment separator at `sep` (before optional spaces
/// and an optional closing quote), when the byte there can end one.
#[inline]
fn keyword_end(hay: &[u8], from: usize, sep: usize) -> Option<usize> {
    let mut e = sep;
    while e > from && hay.get(e - 1) == Some(&b' ') {
        e -= 1;
    }
    if e > from && matches!(hay.get(e - 1), Some(b'"' | b'\'')) {
        e -= 1;
    }
    // Every keyword ends in one of these letters; most separators (times, URLs, JSON keys)
    // are rejected here with one comparison.
    let last = hay.get(e.checked_sub(1)?)? | 0x20;
    matches!(last, b'd' | b't' | b'n' | b'y').then_some(e)
}

/// Whether a keyword can end before the separator at `sep`: `false` only when
/// [`assignment_hit`] must fail there. The block prefilter's fast reject uses it.
#[inline]
pub(crate) fn keyword_may_end_before(hay: &[u8], from: usize, sep: usize) -> bool {
    keyword_end(hay, from, sep).is_some() || url_scheme_end(hay, sep)
}

/// The keyword whose assignment separator is at `sep`: it ends just before the separator,
/// optional spaces and an optional closing quote, starts at or after `from` and not right
/// after a letter or digit. When several keywords end there (`client_secret`, `secret`), the
/// one starting first decides the kind, as `aws_secret_key` must win over a plain keyword.
#[inline]
fn keyword_before(hay: &[u8], from: usize, sep: usize) -> Option<(usize, usize, Anchor)> {
    let e = keyword_end(hay, from, sep)?;
    let avail = e.checked_sub(from)?;
    let mut best: Option<(usize, Anchor)> = None;
    for &(kw, anchor) in KEYWORDS {
        let n = kw.len();
        if n > avail {
            continue;
        }
        let s = e - n;
        if hay
            .get(s..e)
            .is_some_and(|w| w.eq_ignore_ascii_case(kw.as_bytes()))
            && keyword_starts_word(hay, s)
            && best.is_none_or(|(bs, _)| s < bs)
        {
            best = Some((s, anchor));
        }
    }
    best.map(|(s, a)| (s, e, a))
}

/// Whether a keyword found at `s` begins a word of its key name: nothing alphanumeric before
/// it (`db_password`, `"token"`), or a camelCase hump (`accessToken`, `dbPassword`,
/// `AWSSecretAccessKey`). Inside a word it is not a keyword: `mypassword`, `MYTOKEN`.
#[inline]
fn keyword_starts_word(key: &[u8], s: usize) -> bool {
    let Some(&prev) = s.checked_sub(1).and_then(|i| key.get(i)) else {
        return true;
    };
    if !prev.is_ascii_alphanumeric() {
        return true;
    }
    let upper = key.get(s).is_some_and(u8::is_ascii_uppercase);
    // After a capital only an acronym's end is a hump: `AWSSecret`, not `MYTOKEN`.
    upper && (!prev.is_ascii_uppercase() || key.get(s + 1).is_some_and(u8::is_ascii_lowercase))
}

/// Values up to this length go through the block prefilter: for a short result-set cell the
/// fixed cost of entering four SIMD searches dominates. (A byte gate in front of those
/// searches, dropping the families whose bytes a value lacks, was the previous design; the
/// block prefilter's candidates are strictly tighter.)
const GATE_MAX: usize = 256;

#[inline]
pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[inline]
fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// A token: the anchor at `[s, e)` followed by `min..=max` bytes of `class`, on word
/// boundaries both sides. Returns the token end.
fn token_at(
    hay: &[u8],
    s: usize,
    e: usize,
    min: usize,
    max: usize,
    class: impl Fn(u8) -> bool,
) -> Option<usize> {
    if s > 0 && hay.get(s - 1).copied().is_some_and(is_b64url) {
        return None;
    }
    let body = hay.get(e..)?;
    let n = body.iter().take(max + 1).take_while(|&&b| class(b)).count();
    if n < min || n > max {
        return None;
    }
    let end = e + n;
    if hay.get(end).copied().is_some_and(is_b64url) {
        return None;
    }
    Some(end)
}

/// A JWT: three base64url segments (the first two JSON objects, so both start `eyJ`).
fn jwt_at(hay: &[u8], s: usize) -> Option<usize> {
    if s > 0
        && hay
            .get(s - 1)
            .copied()
            .is_some_and(|b| is_b64url(b) || b == b'.')
    {
        return None;
    }
    let seg = |from: usize| -> usize {
        hay.get(from..)
            .unwrap_or_default()
            .iter()
            .take(MAX_JWT_LEN)
            .take_while(|&&b| is_b64url(b))
            .count()
    };
    let h = seg(s);
    if h < 10 || hay.get(s + h) != Some(&b'.') {
        return None;
    }
    let p_start = s + h + 1;
    if hay.get(p_start..p_start + 3) != Some(b"eyJ") {
        return None;
    }
    let p = seg(p_start);
    if p < 10 || hay.get(p_start + p) != Some(&b'.') {
        return None;
    }
    let sig_start = p_start + p + 1;
    let end = sig_start + seg(sig_start);
    if end - s > MAX_JWT_LEN || hay.get(end).is_some_and(|&b| b == b'.' || is_b64url(b)) {
        return None;
    }
    Some(end)
}

/// A private-key PEM header `-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----` at `s`; returns the
/// header end. Certificates and public keys are not secrets and are left alone.
fn pem_header_at(hay: &[u8], s: usize) -> Option<usize> {
    let label_start = s + b"-----BEGIN ".len();
    let rest = hay.get(label_start..)?;
    let n = rest
        .iter()
        .take(64)
        .take_while(|&&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ')
        .count();
    let label = rest.get(..n)?;
    // OpenPGP armour names its secret keys `PGP PRIVATE KEY BLOCK`.
    let private = label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK");
    if !private || rest.get(n..n + 5) != Some(b"-----") {
        return None;
    }
    Some(label_start + n + 5)
}

/// A secret assignment after the keyword at `[s, e)`: `key=value`, `key: value`,
/// `"key": "value"`, `key='value'`. Returns the value span (the key stays visible).
fn assignment_at(hay: &[u8], s: usize, e: usize) -> Option<(usize, usize)> {
    if !keyword_starts_word(hay, s) {
        return None;
    }
    let mut i = e;
    // The separator must follow the keyword (after an optional closing quote and spaces),
    // so `password_hint = ...` is not taken for a password.
    if matches!(hay.get(i), Some(b'"' | b'\'')) {
        i += 1;
    }
    while hay.get(i) == Some(&b' ') {
        i += 1;
    }
    match hay.get(i) {
        Some(b'=') => i += 1,
        Some(b':') => {
            i += 1;
            if hay.get(i) == Some(&b'=') {
                i += 1;
            }
        }
        _ => return None,
    }
    while matches!(hay.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    let quote = match hay.get(i) {
        Some(&q @ (b'"' | b'\'')) => {
            i += 1;
            Some(q)
        }
        _ => None,
    };
    let vs = i;
    let body = hay.get(vs..)?;
    let n = body
        .iter()
        .take(MAX_ASSIGNMENT_VALUE)
        .take_while(|&&b| match quote {
            Some(q) => b != q && b != b'\n' && b != b'\r' && b != b'\\',
            None => !ends_bare_value(b),
        })
        .count();
    // `password=` with nothing, and JSON `null`/booleans, are not secrets.
    let v = body.get(..n)?;
    if n == 0 || (quote.is_none() && matches!(v, b"null" | b"true" | b"false")) {
        return None;
    }
    Some((vs, vs + n))
}

/// Whether `b` ends an unquoted assignment value.
#[inline]
fn ends_bare_value(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t'
            | b'\n'
            | b'\r'
            | b'"'
            | b'\''
            | b'\\'
            | b'&'
            | b','
            | b';'
            | b'<'
            | b'>'
            | b'}'
            | b')'
            | b']'
    )
}

/// HTTP authentication schemes whose credentials follow them in an `Authorization` value,
/// lower-case.
const AUTH_SCHEMES: &[&[u8]] = &[
    b"basic",
    b"bearer",
    b"token",
    b"apikey",
    b"key",
    b"negotiate",
    b"ntlm",
    b"oauth",
    b"ssws",
];

/// The credentials in the `Authorization` value at `[vs, ve)`: what follows its scheme word
/// (`Bearer`, `Basic`, `Token`), which stays visible as the key does, or the whole value when
/// it has no scheme and is not a plain word (`Authorization: 9f86d081...`). `None` for a
/// scheme with nothing after it and for words (`authorization: required`).
fn authorization_credentials(hay: &[u8], vs: usize, ve: usize) -> Option<(usize, usize)> {
    let v = hay.get(vs..ve)?;
    let letters = v.iter().take_while(|b| b.is_ascii_alphabetic()).count();
    let is_scheme = |w: &[u8]| AUTH_SCHEMES.iter().any(|s| w.eq_ignore_ascii_case(s));
    let spaces = |from: usize| {
        hay.get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| b == b' ')
            .count()
    };
    if letters == v.len() {
        // Unquoted, the value stopped at the space after the scheme: the credentials are the
        // next word.
        if hay.get(ve) != Some(&b' ') || !is_scheme(v) {
            return None;
        }
        let cs = ve + spaces(ve);
        let n = hay
            .get(cs..)
            .unwrap_or_default()
            .iter()
            .take(MAX_ASSIGNMENT_VALUE)
            .take_while(|&&b| !ends_bare_value(b))
            .count();
        return (n > 0).then_some((cs, cs + n));
    }
    if v.get(letters) == Some(&b' ') && is_scheme(v.get(..letters)?) {
        // Quoted: `"Bearer <token>"` is one value.
        let cs = vs + letters + spaces(vs + letters);
        return (cs < ve).then_some((cs, ve));
    }
    Some((vs, ve))
}

/// For a JSON object key that names a secret (`password`, `db_password`, `api_key`, ...):
/// which detector its string value belongs to. Same keywords and left boundary as the
/// in-text assignment detector; the keyword must end the key.
pub fn secret_key_kind(key: &[u8], value: &[u8]) -> Option<DetectorId> {
    let named = |kw: &str| {
        let n = kw.len();
        key.len() >= n
            && key
                .get(key.len() - n..)
                .is_some_and(|k| k.eq_ignore_ascii_case(kw.as_bytes()))
            && keyword_starts_word(key, key.len() - n)
    };
    let mut found = None;
    for &(kw, anchor) in KEYWORDS {
        match anchor {
            Anchor::Keyword | Anchor::Authorization if named(kw) => {
                found = found.or(Some(Builtin::Credential));
            }
            Anchor::AwsSecretKeyword if named(kw) => {
                let aws = value.len() == 40
                    && value
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'/' || b == b'+');
                found = Some(if aws {
                    Builtin::AwsSecretKey
                } else {
                    Builtin::Credential
                });
            }
            _ => {}
        }
    }
    found.map(|d| d as u8)
}

// ---------------------------------------------------------------------------------------
// emails

/// The email around the `@` at `at`, unless `at` lies inside the previous one (`skip_until`,
/// updated on a hit).
#[inline]
pub(crate) fn email_hit(hay: &[u8], at: usize, skip_until: &mut usize) -> Option<Hit> {
    if at < *skip_until {
        return None;
    }
    let (s, e) = email_at(hay, at)?;
    *skip_until = e;
    Some(Hit {
        start: s,
        end: e,
        det: Builtin::Email as u8,
    })
}

#[inline]
pub(crate) fn is_local(b: u8) -> bool {
    // RFC 5322 atext minus the symbols that more often delimit an address than belong to it
    // (`=`, `/`, `|`, ...); bytes that can occur in UTF-8 for internationalised addresses (RFC 6531).
    b.is_ascii_alphanumeric()
        || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'')
        || (0x80..=0xF4).contains(&b)
}

/// The bytes of the `@` at `at`: 1 for `@`, 3 for its URL encoding `%40` (an address in a
/// query string or a logged URL, `?email=jane%40example.com`), 5 or 6 for its HTML character
/// references `&#64;` and `&#x40;` (an address in stored HTML, often written so to hide it
/// from harvesters); `None` for any other `%` or `&`.
#[inline]
pub(crate) fn at_sign_len(hay: &[u8], at: usize) -> Option<usize> {
    match hay.get(at..)? {
        [b'@', ..] => Some(1),
        [b'%', b'4', b'0', ..] => Some(3),
        [b'&', b'#', b'6', b'4', b';', ..] => Some(5),
        [b'&', b'#', b'x' | b'X', b'4', b'0', b';', ..] => Some(6),
        _ => None,
    }
}

/// Where the `@` of a matched email (in any of the forms of [`at_sign_len`]) begins: the last
/// one, since a quoted local part may hold another.
pub(crate) fn last_at_sign(email: &[u8]) -> Option<usize> {
    memchr::memrchr3_iter(b'@', b'%', b'&', email).find(|&i| at_sign_len(email, i).is_some())
}

fn email_at(hay: &[u8], at: usize) -> Option<(usize, usize)> {
    let at_len = at_sign_len(hay, at)?;
    let before = hay.get(..at)?;
    // Quoted local part: `"john doe"@example.com`.
    let (s, local_ok) = if before.last() == Some(&b'"') {
        let inner = before.get(..at - 1)?;
        let q = inner
            .iter()
            .rev()
            .take(64)
            .position(|&b| b == b'"' || b == b'\n')?;
        let open = at - 1 - q - 1;
        (open, q > 0 && hay.get(open) == Some(&b'"'))
    } else {
        let n = before
            .iter()
            .rev()
            .take(65)
            .take_while(|&&b| is_local(b))
            .count();
        if n == 0 || n > 64 {
            return None;
        }
        let mut s = at - n;
        // A quote or dot before the name (`'jane@...'`) is not part of it; one inside is.
        while s < at
            && hay
                .get(s)
                .is_some_and(|&b| matches!(b, b'.' | b'\'' | b'-' | b'+' | b'%'))
        {
            s += 1;
        }
        // `scheme://user:password@host`: the password of a URL, which the credential
        // detector masks, not an address.
        if url_userinfo_password(hay, s) {
            return None;
        }
        (s, validate::email_local_ok(hay.get(s..at)?))
    };
    let after = hay.get(at + at_len..)?;
    // Address literal: `user@[192.0.2.1]`, `user@[IPv6:2001:db8::1]`.
    if after.first() == Some(&b'[') {
        let close = after.iter().take(64).position(|&b| b == b']')?;
        let lit = std::str::from_utf8(after.get(1..close)?).ok()?;
        let ip_ok = lit.parse::<std::net::Ipv4Addr>().is_ok()
            || lit
                .strip_prefix("IPv6:")
                .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok());
        return (local_ok && ip_ok).then_some((s, at + at_len + close + 1));
    }
    let mut dl = after
        .iter()
        .take(254)
        .take_while(|&&b| {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || (0x80..=0xF4).contains(&b)
        })
        .count();
    // A sentence-ending dot is not part of the domain.
    while dl > 0 && after.get(dl - 1) == Some(&b'.') {
        dl -= 1;
    }
    let domain = after.get(..dl)?;
    let e = at + at_len + dl;
    if !local_ok
        || !validate::email_domain_ok(domain)
        || hay.get(e).is_some_and(|&b| b == b'@' || b == b'_')
    {
        return None;
    }
    Some((s, e))
}

// ---------------------------------------------------------------------------------------
// IPv6

/// The IPv6 address around the `:` at `c`. Colons before `skip_until` belong to the token
/// examined last and are skipped; every examined colon moves `skip_until` past its token.
pub(crate) fn ipv6_hit(hay: &[u8], c: usize, skip_until: &mut usize) -> Option<Hit> {
    if c < *skip_until {
        return None;
    }
    let is_v6 = |b: &u8| b.is_ascii_hexdigit() || *b == b':' || *b == b'.';
    let back = hay
        .get(..c)
        .unwrap_or_default()
        .iter()
        .rev()
        .take(45)
        .take_while(|b| is_v6(b))
        .count();
    let s = c - back;
    let fwd = hay
        .get(c..)
        .unwrap_or_default()
        .iter()
        .take(46)
        .take_while(|b| is_v6(b))
        .count();
    let mut e = c + fwd;
    *skip_until = e;
    while e > s && hay.get(e - 1) == Some(&b'.') {
        e -= 1;
    }
    if s > 0 && hay.get(s - 1).copied().is_some_and(is_word)
        || hay.get(e).copied().is_some_and(is_word)
    {
        return None;
    }
    let tok = hay.get(s..e)?;
    let colons = tok.iter().filter(|&&b| b == b':').count();
    // `windows` rather than `memmem`: tokens are at most 91 bytes, shorter than a searcher's
    // set-up.
    if colons < 2 || (colons < 7 && !tok.windows(2).any(|w| w == b"::")) || tok.len() < 3 {
        return None;
    }
    // `::` alone and `a::b`-style short tokens are too ambiguous (code, paths).
    if tok.iter().filter(|b| b.is_ascii_hexdigit()).count() < 2 {
        return None;
    }
    let text = std::str::from_utf8(tok).ok()?;
    text.parse::<std::net::Ipv6Addr>().ok()?;
    Some(Hit {
        start: s,
        end: e,
        det: Builtin::Ipv6 as u8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(pattern: &str) -> Custom {
        Custom::new(Regex::new(pattern).unwrap(), None)
    }

    #[test]
    fn custom_prefixes_are_what_every_match_starts_with() {
        let prefix = |p: &str| custom(p).prefix.map(|f| f.needle().to_vec());
        assert_eq!(prefix(r"EMP-[0-9]{6}"), Some(b"EMP-".to_vec()));
        assert_eq!(prefix(r"\bACCT(-|_)\d{4}\b"), Some(b"ACCT".to_vec()));
        assert_eq!(prefix(r"AB(C|D)\d"), Some(b"AB".to_vec()));
        // No shared prefix, one byte only, case folding, an optional first byte, none at all.
        assert_eq!(prefix(r"(foo|bar)\d"), None);
        assert_eq!(prefix(r"E\d{6}"), None);
        assert_eq!(prefix(r"(?i)emp-\d{6}"), None);
        assert_eq!(prefix(r"x?AB\d"), None);
        assert_eq!(prefix(r"[A-Z]{3}-\d+"), None);
        assert_eq!(prefix(r"(?x) E M P - \d"), Some(b"EMP-".to_vec()));
    }

    #[test]
    fn the_custom_reject_keeps_every_value_its_regex_matches() {
        let patterns = [
            r"EMP-[0-9]{6}",
            r"\bACCT(-|_)\d{4}\b",
            r"AB(C|D)\d",
            r"(foo|bar)\d",
            r"(?i)emp-\d{6}",
            r"x?AB\d",
            r"(?x) E M P - \d",
        ];
        let customs: Vec<Custom> = patterns.iter().map(|p| custom(p)).collect();
        let regexes: Vec<Regex> = customs.iter().map(|c| c.regex.clone()).collect();
        let scanner = Scanner::new(customs).unwrap();
        let pieces = [
            "EMP-123456",
            "EMP-12345",
            "emp-123456",
            "Emp-654321",
            "ACCT-1234",
            "ACCT_9876",
            "xACCT-1234",
            "ABC1",
            "ABD9",
            "ABE1",
            "foo7",
            "bar0",
            "xAB3",
            "AB",
            "EMP-",
            "E",
            " ",
            "-",
            "é",
            "\0",
        ];
        let mut kept = 0;
        for a in pieces {
            for b in pieces {
                // Short values take the `memchr` search, long ones the `memmem` searcher.
                for c in ["", " ", "x", &"x ".repeat(40)] {
                    let v = format!("{c}{a}{c}{b}");
                    for (i, (p, re)) in patterns.iter().zip(&regexes).enumerate() {
                        let bit = 1u64 << (N_BUILTINS + i);
                        let matches = re.is_match(v.as_bytes());
                        let may = scanner.customs_may_match(v.as_bytes(), bit);
                        assert!(!matches || may, "{p} matches {v:?} but was rejected");
                        kept += usize::from(may);
                    }
                }
            }
        }
        assert!(kept > 100, "{kept}");
    }
}
