//! Statement mixes: which SQL each request runs and with which random parameters.
//!
//! A mix is a TOML file of weighted `[[query]]` entries, each with optional parameter generators
//! (`uniform` integers in an inclusive range, `choice` among strings). Parameters are produced as
//! text and the server infers their types, as `pgbench` does. For the simple protocol they are
//! inlined as SQL literals; `$n` inside string literals or dollar quotes is not recognised, so
//! simple-mode mixes should not put `$n` in string constants.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest mix file read: a mix is a handful of statements, not a data set.
pub const MAX_MIX_FILE_BYTES: u64 = 1 << 20;
/// Most `[[query]]` entries in one mix.
pub const MAX_MIX_ENTRIES: usize = 1024;
/// Most parameters per statement (the PostgreSQL wire limit is 65535; a mix needs far fewer).
pub const MAX_PARAMS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum MixError {
    #[error("cannot read mix file `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mix file `{}` is larger than {MAX_MIX_FILE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("mix file `{}` is not valid: {source}", path.display())]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("mix file `{}`, query {index}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MixFile {
    query: Vec<EntrySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntrySpec {
    sql: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    params: Vec<ParamSpec>,
}

fn one() -> u32 {
    1
}

/// How one `$n` parameter is generated per request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ParamSpec {
    /// Uniform integer in `[min, max]`, inclusive.
    Uniform([i64; 2]),
    /// Uniformly one of these strings.
    Choice(Vec<String>),
}

/// A parameter value for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Text(String),
}

impl Value {
    /// The value in PostgreSQL text format, as sent in Bind.
    pub fn to_text(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Text(s) => s.clone(),
        }
    }

    /// The value as a SQL literal for the simple protocol. Strings use standard-conforming
    /// quoting (`'` doubled), which is PostgreSQL's default since 9.1.
    fn push_literal(&self, out: &mut String) {
        match self {
            Value::Int(i) => out.push_str(&i.to_string()),
            Value::Text(s) => {
                out.push('\'');
                out.push_str(&s.replace('\'', "''"));
                out.push('\'');
            }
        }
    }
}

/// A piece of a statement split at its `$n` placeholders.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// Zero-based parameter index.
    Param(usize),
}

#[derive(Debug)]
pub struct Entry {
    pub sql: String,
    pub params: Vec<ParamSpec>,
    parts: Vec<Part>,
}

impl Entry {
    fn new(sql: String, params: Vec<ParamSpec>) -> Self {
        let parts = split_placeholders(&sql);
        Entry { sql, params, parts }
    }

    pub fn generate(&self, rng: &mut fastrand::Rng) -> Vec<Value> {
        self.params
            .iter()
            .map(|p| match p {
                ParamSpec::Uniform([lo, hi]) => Value::Int(rng.i64(*lo..=*hi)),
                ParamSpec::Choice(options) => Value::Text(
                    options
                        .get(rng.usize(..options.len()))
                        .cloned()
                        .unwrap_or_default(),
                ),
            })
            .collect()
    }

    /// The statement with `values` inlined, for the simple protocol. A placeholder with no
    /// matching value is left as written so the server reports it.
    pub fn render(&self, values: &[Value]) -> String {
        let mut out = String::with_capacity(self.sql.len() + 16 * values.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Param(i) => match values.get(*i) {
                    Some(v) => v.push_literal(&mut out),
                    None => {
                        out.push('$');
                        out.push_str(&(i + 1).to_string());
                    }
                },
            }
        }
        out
    }
}

fn split_placeholders(sql: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            text.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
            digits.push(d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) if n >= 1 => {
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Param(n - 1));
            }
            _ => {
                text.push('$');
                text.push_str(&digits);
            }
        }
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    parts
}

/// Weighted statements; [`Mix::pick`] chooses one per request.
#[derive(Debug)]
pub struct Mix {
    pub entries: Vec<Entry>,
    /// Running sum of weights, one per entry.
    cumulative: Vec<u64>,
}

impl Mix {
    pub fn single(sql: String) -> Self {
        Mix {
            entries: vec![Entry::new(sql, Vec::new())],
            cumulative: vec![1],
        }
    }

    pub fn load(path: &Path) -> Result<Self, MixError> {
        let meta = std::fs::metadata(path).map_err(|source| MixError::Read {
            path: path.into(),
            source,
        })?;
        if meta.len() > MAX_MIX_FILE_BYTES {
            return Err(MixError::TooLarge { path: path.into() });
        }
        let text = std::fs::read_to_string(path).map_err(|source| MixError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, MixError> {
        let file: MixFile = toml::from_str(text).map_err(|source| MixError::Toml {
            path: path.into(),
            source,
        })?;
        let invalid = |index: usize, reason: String| MixError::Invalid {
            path: path.into(),
            index: index + 1,
            reason,
        };
        if file.query.is_empty() {
            return Err(invalid(0, "a mix needs at least one `[[query]]`".into()));
        }
        if file.query.len() > MAX_MIX_ENTRIES {
            return Err(invalid(0, format!("more than {MAX_MIX_ENTRIES} queries")));
        }
        let mut entries = Vec::with_capacity(file.query.len());
        let mut cumulative = Vec::with_capacity(file.query.len());
        let mut total: u64 = 0;
        for (i, spec) in file.query.into_iter().enumerate() {
            if spec.sql.trim().is_empty() {
                return Err(invalid(i, "`sql` is empty".into()));
            }
            if spec.weight == 0 {
                return Err(invalid(i, "`weight` must be at least 1".into()));
            }
            if spec.params.len() > MAX_PARAMS {
                return Err(invalid(i, format!("more than {MAX_PARAMS} params")));
            }
            for p in &spec.params {
                match p {
                    ParamSpec::Uniform([lo, hi]) if lo > hi => {
                        return Err(invalid(i, format!("`uniform = [{lo}, {hi}]` is empty")));
                    }
                    ParamSpec::Choice(options) if options.is_empty() => {
                        return Err(invalid(i, "`choice` needs at least one value".into()));
                    }
                    _ => {}
                }
            }
            total += u64::from(spec.weight);
            cumulative.push(total);
            entries.push(Entry::new(spec.sql, spec.params));
        }
        Ok(Mix {
            entries,
            cumulative,
        })
    }

    /// Picks an entry with probability proportional to its weight; returns its index too.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> Option<(usize, &Entry)> {
        let total = self.cumulative.last().copied()?;
        let r = rng.u64(..total);
        let idx = self.cumulative.partition_point(|&c| c <= r);
        self.entries.get(idx).map(|e| (idx, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PGBENCH_LIKE: &str = r#"
[[query]]
sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
weight = 9
params = [{ uniform = [1, 100000] }]

[[query]]
sql = "INSERT INTO notes(who, n) VALUES ($1, $2)"
params = [{ choice = ["o'brien", "ada"] }, { uniform = [5, 5] }]
"#;

    #[test]
    fn parses_weights_and_generators() {
        let mix = Mix::parse(PGBENCH_LIKE, Path::new("mix.toml")).unwrap();
        assert_eq!(mix.entries.len(), 2);
        assert_eq!(mix.cumulative, vec![9, 10]);
        assert_eq!(
            mix.entries[0].params,
            vec![ParamSpec::Uniform([1, 100_000])]
        );
    }

    #[test]
    fn picks_follow_weights() {
        let mix = Mix::parse(PGBENCH_LIKE, Path::new("mix.toml")).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0u32; 2];
        for _ in 0..10_000 {
            counts[mix.pick(&mut rng).unwrap().0] += 1;
        }
        assert!((8_700..9_300).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn simple_mode_inlines_quoted_literals() {
        let e = Entry::new("INSERT INTO t VALUES ($1, $2, $10, $x)".into(), Vec::new());
        let sql = e.render(&[Value::Text("o'brien".into()), Value::Int(-3)]);
        assert_eq!(sql, "INSERT INTO t VALUES ('o''brien', -3, $10, $x)");
    }

    #[test]
    fn generated_values_stay_in_range() {
        let mix = Mix::parse(PGBENCH_LIKE, Path::new("mix.toml")).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..1000 {
            match mix.entries[0].generate(&mut rng).as_slice() {
                [Value::Int(v)] => assert!((1..=100_000).contains(v)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn bad_mixes_name_the_file_and_query() {
        let err = Mix::parse(
            "[[query]]\nsql = \"SELECT $1\"\nparams = [{ uniform = [5, 1] }]\n",
            Path::new("m.toml"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "mix file `m.toml`, query 1: `uniform = [5, 1]` is empty"
        );
        let err =
            Mix::parse("[[query]]\nsql = \"x\"\nweight = 0\n", Path::new("m.toml")).unwrap_err();
        assert!(
            err.to_string().contains("`weight` must be at least 1"),
            "{err}"
        );
        assert!(Mix::parse("[[query]]\nsqll = \"x\"\n", Path::new("m.toml")).is_err());
    }
}
