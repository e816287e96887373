//! A labeled, deterministic corpus of realistic result rows for accuracy reports and
//! benchmarks: positives for every built-in detector at known byte positions, mixed with
//! realistic look-alikes that must stay untouched (order numbers, timestamps, UUIDs, version
//! strings, phone-like ids, 16-digit numbers failing Luhn, invalid SSN ranges, ...).
//!
//! Used by the test suite and `bench masking`; not used on the data path. Generated from a
//! seed so every run sees the same values.

use super::engine::{Finding, SessionMasker};

/// SplitMix64: tiny, deterministic, good enough to vary test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn pick<T: Copy + Default>(&mut self, xs: &[T]) -> T {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "slice lengths here are tiny"
        )]
        let i = self.below(xs.len() as u64) as usize;
        xs.get(i).copied().unwrap_or_default()
    }

    fn chars(&mut self, n: usize, alphabet: &[u8]) -> String {
        (0..n)
            .map(|_| {
                #[expect(clippy::cast_possible_truncation, reason = "alphabets are < 100 bytes")]
                let i = self.below(alphabet.len() as u64) as usize;
                char::from(alphabet.get(i).copied().unwrap_or(b'x'))
            })
            .collect()
    }

    fn digits(&mut self, n: usize) -> String {
        self.chars(n, b"0123456789")
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A known sensitive value inside a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub start: usize,
    pub end: usize,
    pub detector: &'static str,
}

/// One result-set cell and the sensitive values in it.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub text: String,
    pub labels: Vec<Label>,
}

impl Cell {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    fn pii(&mut self, detector: &'static str, s: &str) {
        let start = self.text.len();
        self.text.push_str(s);
        self.labels.push(Label {
            start,
            end: self.text.len(),
            detector,
        });
    }
}

fn luhn_complete(payload: &str) -> String {
    // The check digit makes the doubled-from-the-right sum a multiple of ten; with the
    // check digit appended the payload's last digit is doubled.
    let mut sum = 0u32;
    for (i, b) in payload.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    let check = (10 - sum % 10) % 10;
    format!("{payload}{check}")
}

fn group(s: &str, sizes: &[usize], sep: &str) -> String {
    let mut out = String::new();
    let mut i = 0;
    for (k, &n) in sizes.iter().enumerate() {
        if k > 0 {
            out.push_str(sep);
        }
        out.push_str(s.get(i..i + n).unwrap_or_default());
        i += n;
    }
    out
}

fn card_number(r: &mut Rng) -> (String, Vec<usize>) {
    let (prefix, len, groups): (String, usize, Vec<usize>) = match r.below(5) {
        0 => ("4".into(), 16, vec![4, 4, 4, 4]),
        1 => (format!("5{}", r.range(1, 5)), 16, vec![4, 4, 4, 4]),
        2 => (format!("{}", r.range(2221, 2720)), 16, vec![4, 4, 4, 4]),
        3 => (r.pick(&["34", "37"]).into(), 15, vec![4, 6, 5]),
        _ => ("6011".into(), 16, vec![4, 4, 4, 4]),
    };
    let body = r.digits(len - 1 - prefix.len());
    (luhn_complete(&format!("{prefix}{body}")), groups)
}

fn card(r: &mut Rng) -> String {
    let (n, groups) = card_number(r);
    match r.below(3) {
        0 => n,
        1 => group(&n, &groups, " "),
        _ => group(&n, &groups, "-"),
    }
}

fn failing_card(r: &mut Rng) -> String {
    let (n, _) = card_number(r);
    let (head, last) = n.split_at(n.len() - 1);
    let d = last.bytes().next().map_or(0, |b| b - b'0');
    format!("{head}{}", (d + 1 + r.below(8) as u8) % 10)
}

fn ssn(r: &mut Rng) -> String {
    let mut area = r.range(1, 899);
    if area == 666 {
        area = 665;
    }
    // A quarter joined by spaces, chosen from the area so the draws (and the rows after)
    // stay those of earlier corpora.
    let j = if area.is_multiple_of(4) { ' ' } else { '-' };
    format!(
        "{area:03}{j}{:02}{j}{:04}",
        r.range(1, 99),
        r.range(1, 9999)
    )
}

fn bad_ssn(r: &mut Rng) -> String {
    match r.below(5) {
        0 => format!("000-{:02}-{:04}", r.range(1, 99), r.range(1, 9999)),
        1 => format!("666-{:02}-{:04}", r.range(1, 99), r.range(1, 9999)),
        2 => format!(
            "9{:02}-{:02}-{:04}",
            r.below(100),
            r.range(1, 99),
            r.range(1, 9999)
        ),
        3 => {
            let area = r.range(1, 665);
            let j = if area.is_multiple_of(2) { ' ' } else { '-' };
            format!("{area:03}{j}00{j}{:04}", r.range(1, 9999))
        }
        _ => format!("{:03}-{:02}-0000", r.range(1, 665), r.range(1, 99)),
    }
}

fn phone(r: &mut Rng) -> String {
    let area = format!("{}{}", r.range(2, 9), r.digits(2));
    let exch = format!("{}{}", r.range(2, 9), r.digits(2));
    let line = r.digits(4);
    match r.below(8) {
        0 => format!("+1 {area} {exch} {line}"),
        1 => format!("+44 20 7946 {line}"),
        2 => format!("+49151{}", r.digits(8)),
        3 => format!("({area}) {exch}-{line}"),
        4 => format!("{area}-{exch}-{line}"),
        5 => format!("{area}.{exch}.{line}"),
        6 => format!("020 7946 {line}"),
        _ => format!("07700 900{}", r.digits(3)),
    }
}

fn iban(r: &mut Rng) -> String {
    let (cc, bban) = match r.below(4) {
        0 => ("DE", r.digits(18)),
        1 => (
            "GB",
            format!(
                "{}{}",
                r.chars(4, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                r.digits(14)
            ),
        ),
        2 => ("FR", r.digits(23)),
        _ => (
            "NL",
            format!(
                "{}{}",
                r.chars(4, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                r.digits(10)
            ),
        ),
    };
    let mut rem = 0u32;
    for b in format!("{bban}{cc}00").bytes() {
        rem = if b.is_ascii_digit() {
            (rem * 10 + u32::from(b - b'0')) % 97
        } else {
            (rem * 100 + u32::from(b - b'A') + 10) % 97
        };
    }
    let compact = format!("{cc}{:02}{bban}", 98 - rem);
    if r.chance(50) {
        compact
    } else {
        let mut out = String::new();
        for (i, c) in compact.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    }
}

fn ipv6(r: &mut Rng) -> String {
    let full = r.chance(50);
    let mut g = || format!("{:x}", r.below(0x10000));
    if full {
        (0..8).map(|_| g()).collect::<Vec<_>>().join(":")
    } else {
        format!("2001:db8::{}:{}", g(), g())
    }
}

fn b64url(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..=chunk.len() {
            let idx = (n >> (18 - 6 * k)) & 63;
            out.push(char::from(
                B64URL.get(idx as usize).copied().unwrap_or(b'A'),
            ));
        }
    }
    out
}

/// Appends one random sensitive value (and its label) to `cell`.
fn positive(r: &mut Rng, cell: &mut Cell) {
    match r.below(16) {
        0 => {
            let local = format!(
                "{}{}{}",
                r.pick(&["jane", "j.doe", "bob_smith", "Ana.Lima", "ops+alerts", "x1"]),
                r.pick(&["", ".", "_"]),
                r.digits(2)
            );
            let local = local.trim_end_matches(['.', '_']).to_string();
            let domain = r.pick(&[
                "example.com",
                "mail.example.co.uk",
                "corp-mail.io",
                "EXAMPLE.ORG",
                "sub.domain.dev",
            ]);
            cell.pii("email", &format!("{local}@{domain}"));
        }
        1 => cell.pii("credit_card", &card(r)),
        2 => cell.pii("ssn", &ssn(r)),
        3 => cell.pii("phone", &phone(r)),
        4 => cell.pii("iban", &iban(r)),
        5 => cell.pii(
            "ipv4",
            &format!(
                "{}.{}.{}.{}",
                r.range(1, 223),
                r.below(256),
                r.below(256),
                r.range(1, 254)
            ),
        ),
        6 => cell.pii("ipv6", &ipv6(r)),
        7 => cell.pii(
            "aws_access_key",
            &format!("AKIA{}", r.chars(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")),
        ),
        8 => {
            // As a config line, and as AWS's APIs and credential caches return it.
            let (key, close) = r.pick(&[
                ("aws_secret_access_key=", ""),
                (r#"{"SecretAccessKey": ""#, r#""}"#),
            ]);
            cell.push(key);
            cell.pii(
                "aws_secret_key",
                &r.chars(
                    40,
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+",
                ),
            );
            cell.push(close);
        }
        9 => cell.pii("gcp_api_key", &format!("AIza{}", r.chars(35, B64URL))),
        10 => cell.pii("github_token", &format!("ghp_{}", r.chars(36, ALNUM))),
        11 => cell.pii("gitlab_token", &format!("glpat-{}", r.chars(20, B64URL))),
        12 => cell.pii(
            "slack_token",
            &format!(
                "xoxb-{}-{}-{}",
                r.digits(12),
                r.digits(12),
                r.chars(24, ALNUM)
            ),
        ),
        13 => {
            let payload = format!(
                r#"{{"sub":"{}","iat":{}}}"#,
                r.digits(8),
                r.range(1_600_000_000, 1_800_000_000)
            );
            let jwt = format!(
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.{}",
                b64url(payload.as_bytes()),
                r.chars(43, B64URL)
            );
            cell.pii("jwt", &jwt);
        }
        14 => {
            let body: Vec<String> = (0..3)
                .map(|_| {
                    r.chars(
                        64,
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                    )
                })
                .collect();
            let (kind, block) = r.pick(&[
                ("RSA ", ""),
                ("EC ", ""),
                ("", ""),
                ("OPENSSH ", ""),
                ("PGP ", " BLOCK"),
            ]);
            cell.pii(
                "private_key",
                &format!(
                    "-----BEGIN {kind}PRIVATE KEY{block}-----\n{}\n-----END {kind}PRIVATE KEY{block}-----",
                    body.join("\n")
                ),
            );
        }
        _ => {
            let key = r.pick(&[
                "password=",
                "db_password: ",
                "token=",
                "secret=",
                "api_key=",
                "accessToken=",
                "clientSecret: ",
                "Authorization: Bearer ",
            ]);
            cell.push(key);
            cell.pii(
                "credential",
                &r.chars(
                    12,
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%*",
                ),
            );
        }
    }
}

/// Appends one realistic look-alike that no detector should report.
fn negative(r: &mut Rng, cell: &mut Cell) {
    let s = match r.below(16) {
        0 => format!("ORD-{}", r.digits(6)),
        1 => format!(
            "2026-{:02}-{:02} {:02}:{:02}:{:02}",
            r.range(1, 12),
            r.range(1, 28),
            r.below(24),
            r.below(60),
            r.below(60)
        ),
        2 => format!(
            "2026-11-26T{:02}:{:02}:{:02}.{}Z",
            r.below(24),
            r.below(60),
            r.below(60),
            r.digits(3)
        ),
        3 => format!(
            "{}-{}-4{}-a{}-{}",
            r.chars(8, b"0123456789abcdef"),
            r.chars(4, b"0123456789abcdef"),
            r.chars(3, b"0123456789abcdef"),
            r.chars(3, b"0123456789abcdef"),
            r.chars(12, b"0123456789abcdef")
        ),
        4 => format!("v{}.{}.{}", r.below(20), r.below(40), r.below(100)),
        5 => format!("{}.{}.{}-beta", r.below(20), r.below(40), r.below(100)),
        6 => format!("ID {}{}", r.range(2, 9), r.digits(9)),
        7 => failing_card(r),
        8 => bad_ssn(r),
        9 => format!("${},{}.{}", r.range(1, 999), r.digits(3), r.digits(2)),
        10 => format!("{}/{}/2026", r.range(1, 12), r.range(1, 28)),
        11 => r.chars(40, b"0123456789abcdef"),
        12 => r
            .pick(&[
                "user@localhost",
                "@handle",
                "pkg@1.2.3",
                "name at example dot com",
                "password_hint=set",
                "authorization: required",
            ])
            .to_string(),
        13 => format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            r.below(256),
            r.below(256),
            r.below(256),
            r.below(256),
            r.below(256),
            r.below(256)
        ),
        14 => format!("37.{},-122.{}", r.digits(4), r.digits(4)),
        _ => format!("TKT-{}-{}", r.digits(3), r.digits(4)),
    };
    cell.push(&s);
}

const WORDS: &[&str] = &[
    "shipped",
    "pending",
    "refund requested",
    "gift wrap",
    "priority",
    "call back",
    "note:",
    "re",
    "customer",
    "n/a",
];

/// One realistic row: `cells` cells; each cell holds a sensitive value with probability
/// `pii_percent`, and look-alikes or plain words otherwise.
pub fn row(r: &mut Rng, cells: usize, pii_percent: u64) -> Vec<Cell> {
    (0..cells)
        .map(|i| {
            let mut c = Cell::default();
            if r.chance(pii_percent) {
                if r.chance(50) {
                    c.push(r.pick(WORDS));
                    c.push(" ");
                }
                positive(r, &mut c);
                if r.chance(30) {
                    c.push(", ");
                    negative(r, &mut c);
                }
            } else {
                match (i, r.below(3)) {
                    (0, _) => c.push(&r.digits(7)),
                    (_, 0) => negative(r, &mut c),
                    (_, 1) => c.push(r.pick(WORDS)),
                    _ => {
                        c.push(r.pick(WORDS));
                        c.push(" ");
                        negative(r, &mut c);
                    }
                }
            }
            c
        })
        .collect()
}

/// A corpus of `rows` rows of `cells` cells.
pub fn rows(seed: u64, rows: usize, cells: usize, pii_percent: u64) -> Vec<Vec<Cell>> {
    let mut r = Rng::new(seed);
    (0..rows).map(|_| row(&mut r, cells, pii_percent)).collect()
}

/// A session-wide rule running `detectors` with the `redact` strategy: the rule the
/// throughput measurements use.
pub fn detector_rule(detectors: &[&str]) -> super::MaskSpec {
    super::MaskSpec {
        connections: vec![],
        groups: vec![],
        columns: vec![],
        fields: vec![],
        detectors: detectors.iter().map(|s| (*s).to_owned()).collect(),
        strategy: super::StrategyName::Redact,
        keep: None,
        replacement: None,
    }
}

/// The engine the throughput measurements use: rule 0 runs every built-in detector (`all`),
/// rule 1 only the literal-anchored secrets (`secrets`), both `redact`.
pub fn throughput_engine() -> Result<super::MaskEngine, super::MaskError> {
    super::MaskEngine::compile(
        &[detector_rule(&["all"]), detector_rule(&["secrets"])],
        &[],
        b"bench-key",
    )
}

/// The rows' cells as separate values, as a result set hands them to `mask_value`.
pub fn cell_values(rows: &[Vec<Cell>]) -> Vec<Vec<u8>> {
    rows.iter()
        .flatten()
        .map(|c| c.text.clone().into_bytes())
        .collect()
}

/// The rows as one tab-separated, newline-terminated byte stream, as COPY text sends them.
pub fn tsv_stream(rows: &[Vec<Cell>]) -> Vec<u8> {
    let mut stream = Vec::new();
    for row in rows {
        let line: Vec<&str> = row.iter().map(|c| c.text.as_str()).collect();
        stream.extend_from_slice(line.join("\t").as_bytes());
        stream.push(b'\n');
    }
    stream
}

/// Precision and recall of one detector over a corpus (exact span match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accuracy {
    pub detector: String,
    pub true_pos: u64,
    pub false_pos: u64,
    pub false_neg: u64,
}

impl Accuracy {
    pub fn precision(&self) -> f64 {
        let found = self.true_pos + self.false_pos;
        if found == 0 {
            1.0
        } else {
            self.true_pos as f64 / found as f64
        }
    }

    pub fn recall(&self) -> f64 {
        let want = self.true_pos + self.false_neg;
        if want == 0 {
            1.0
        } else {
            self.true_pos as f64 / want as f64
        }
    }
}

/// Runs the session's detectors over every cell and scores them against the labels. The
/// session should enable every built-in (`detectors = ["all"]`).
pub fn accuracy(session: &SessionMasker, corpus: &[Vec<Cell>]) -> Vec<Accuracy> {
    let names = super::detect::BUILTINS;
    let mut acc: Vec<Accuracy> = names
        .iter()
        .map(|(n, _)| Accuracy {
            detector: (*n).to_owned(),
            true_pos: 0,
            false_pos: 0,
            false_neg: 0,
        })
        .collect();
    let mut found: Vec<Finding> = Vec::new();
    for cell in corpus.iter().flatten() {
        found.clear();
        session.find(cell.text.as_bytes(), &mut found);
        for f in &found {
            let name = names.get(usize::from(f.detector)).map_or("custom", |n| n.0);
            let hit = cell
                .labels
                .iter()
                .any(|l| l.start == f.start && l.end == f.end && l.detector == name);
            if let Some(a) = acc.iter_mut().find(|a| a.detector == name) {
                if hit {
                    a.true_pos += 1;
                } else {
                    a.false_pos += 1;
                }
            }
        }
        for l in &cell.labels {
            let hit = found.iter().any(|f| {
                f.start == l.start
                    && f.end == l.end
                    && names
                        .get(usize::from(f.detector))
                        .is_some_and(|n| n.0 == l.detector)
            });
            if !hit && let Some(a) = acc.iter_mut().find(|a| a.detector == l.detector) {
                a.false_neg += 1;
            }
        }
    }
    acc
}

/// The accuracy table as text, one detector per line.
pub fn table(acc: &[Accuracy]) -> String {
    let mut s = format!(
        "{:<16} {:>6} {:>6} {:>6} {:>9} {:>7}\n",
        "detector", "tp", "fp", "fn", "precision", "recall"
    );
    for a in acc {
        s.push_str(&format!(
            "{:<16} {:>6} {:>6} {:>6} {:>9.4} {:>7.4}\n",
            a.detector,
            a.true_pos,
            a.false_pos,
            a.false_neg,
            a.precision(),
            a.recall()
        ));
    }
    s
}
