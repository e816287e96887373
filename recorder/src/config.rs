//! `RecorderConfig`: the `[recorder]` table of the gateway configuration.
//!
//! Durations are written as `"100ms"`, `"30s"`, `"10m"`, `"1h"`, `"7d"`; sizes as bytes or with a
//! `KiB`/`MiB`/`GiB` suffix. This module only parses and validates; it opens no files.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::RecorderError;

/// What a producer does when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Wait up to `full_wait`, then refuse: the caller refuses the command. The default,
    /// because nothing may reach a target unrecorded.
    #[default]
    FailClosed,
    /// Wait as long as it takes (the worker's other sessions stall meanwhile).
    Block,
}

/// Recorder settings, with defaults an operator can run with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecorderConfig {
    /// Root of the recordings (`<dir>/<table>/...`).
    pub dir: PathBuf,
    /// Longest time a record may sit in memory before it is written and fsynced: the bound on
    /// what a crash can lose.
    #[serde(deserialize_with = "de_duration")]
    pub flush_interval: Duration,
    /// A live segment is sealed once it reaches this size.
    #[serde(deserialize_with = "de_size")]
    pub segment_max_bytes: u64,
    /// A live segment is sealed once it is this old (and always at UTC midnight).
    #[serde(deserialize_with = "de_duration")]
    pub segment_max_age: Duration,
    /// Sealed segments older than this are deleted. `0s` keeps them forever.
    #[serde(deserialize_with = "de_duration")]
    pub retention_age: Duration,
    /// Oldest sealed segments are deleted while all sealed files exceed this. `0` means no limit.
    #[serde(deserialize_with = "de_size")]
    pub retention_bytes: u64,
    /// Records each worker's queue holds before a push waits (and, per `on_full`, is refused).
    /// Memory: up to this many plus the hot ring's `HOT_SLOTS`, see `handoff`.
    pub queue_capacity: usize,
    pub on_full: OnFull,
    /// How long a `fail_closed` producer waits for room before refusing.
    #[serde(deserialize_with = "de_duration")]
    pub full_wait: Duration,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/portcullis/recordings"),
            flush_interval: Duration::from_millis(100),
            segment_max_bytes: 64 << 20,
            segment_max_age: Duration::from_secs(600),
            retention_age: Duration::from_secs(90 * 86_400),
            retention_bytes: 0,
            queue_capacity: 65_536,
            on_full: OnFull::FailClosed,
            full_wait: Duration::from_millis(5),
        }
    }
}

/// Largest queue a config may ask for, per worker: bounds memory at a few hundred MiB.
pub const MAX_QUEUE_CAPACITY: usize = 1 << 22;

impl RecorderConfig {
    /// Rejects settings the writer cannot honour.
    pub fn validate(&self) -> Result<(), RecorderError> {
        let bad = |key: &'static str, why: &'static str| Err(RecorderError::Config { key, why });
        if self.flush_interval.is_zero() {
            return bad("flush_interval", "must be greater than zero");
        }
        if self.queue_capacity == 0 || self.queue_capacity > MAX_QUEUE_CAPACITY {
            return bad("queue_capacity", "must be between 1 and 4194304");
        }
        if self.segment_max_bytes < 4096 {
            return bad("segment_max_bytes", "must be at least 4096");
        }
        if self.segment_max_age.is_zero() {
            return bad("segment_max_age", "must be greater than zero");
        }
        Ok(())
    }
}

/// Parses `"250ms"`, `"30s"`, `"10m"`, `"2h"`, `"7d"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = |mul: u64| n.checked_mul(mul).map(Duration::from_secs);
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

/// Parses `"1048576"`, `"512KiB"`, `"64MiB"`, `"10GiB"`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mul)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(ms) => Ok(Duration::from_millis(ms)),
        NumOrText::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration `{t}`: expected e.g. `100ms`, `30s`, `10m`, `1h`, `7d`"
            ))
        }),
    }
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => Ok(n),
        NumOrText::Text(t) => parse_size(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid size `{t}`: expected bytes or e.g. `64MiB`"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_table_maps_onto_config() {
        let cfg: RecorderConfig = toml::from_str(
            r#"
            dir = "/tmp/rec"
            flush_interval = "50ms"
            segment_max_bytes = "16MiB"
            segment_max_age = "5m"
            retention_age = "30d"
            retention_bytes = "10GiB"
            queue_capacity = 1024
            on_full = "block"
            full_wait = 2
            "#,
        )
        .unwrap();
        assert_eq!(cfg.dir, PathBuf::from("/tmp/rec"));
        assert_eq!(cfg.flush_interval, Duration::from_millis(50));
        assert_eq!(cfg.segment_max_bytes, 16 << 20);
        assert_eq!(cfg.segment_max_age, Duration::from_secs(300));
        assert_eq!(cfg.retention_age, Duration::from_secs(30 * 86_400));
        assert_eq!(cfg.retention_bytes, 10 << 30);
        assert_eq!(cfg.on_full, OnFull::Block);
        assert_eq!(cfg.full_wait, Duration::from_millis(2));
        cfg.validate().unwrap();
    }

    #[test]
    fn defaults_and_bad_values() {
        let cfg: RecorderConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, RecorderConfig::default());
        assert_eq!(cfg.flush_interval, Duration::from_millis(100));
        let err = toml::from_str::<RecorderConfig>("flush_interval = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("invalid duration `soon`"), "{err}");
        let cfg: RecorderConfig = toml::from_str("queue_capacity = 0").unwrap();
        assert_eq!(
            cfg.validate().unwrap_err().to_string(),
            "invalid recorder setting `queue_capacity`: must be between 1 and 4194304"
        );
    }
}
