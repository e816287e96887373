//! Access time windows: `hours = "Mon-Fri 07:00-19:00 Europe/Paris"`.
//!
//! The zone is UTC, a fixed offset, or an IANA name. A named zone's window follows the wall
//! clock there, daylight-saving changes included: the offset is looked up for the instant being
//! checked. Names resolve at load against the host's time zone database
//! (`/usr/share/zoneinfo`), or the copy built into the binary when the host has none, so an
//! unknown name is a load error, never a silent UTC.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A weekly window: days of the week and a time range in a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hours {
    /// Bit 0 = Monday ... bit 6 = Sunday.
    days: u8,
    start_min: u16,
    end_min: u16,
    zone: Zone,
}

/// The zone a window's times are read in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Zone {
    /// Seconds east of UTC.
    Fixed(i32),
    /// An IANA zone: the offset depends on the date.
    Named(TimeZone),
}

impl Zone {
    /// Seconds east of UTC at `unix_secs`.
    fn offset_at(&self, unix_secs: i64) -> i32 {
        match self {
            Zone::Fixed(secs) => *secs,
            Zone::Named(tz) => Timestamp::from_second(unix_secs)
                .map(|t| tz.to_offset(t).seconds())
                .unwrap_or(0),
        }
    }
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

type ParseError = (String, Option<String>);

impl Hours {
    /// Parses `DAYS HH:MM-HH:MM [ZONE]`: DAYS is `Mon-Fri`, `Mon,Wed,Fri`, `Sat-Sun` or `*`;
    /// ZONE is `UTC` (default), `Z`, an offset `+01:00` / `-0530`, or an IANA name. An end before the start
    /// spans midnight; the day is the day the window starts.
    pub fn parse(s: &str) -> Result<Hours, ParseError> {
        let bad = |m: String| -> ParseError {
            (
                m,
                Some("write it like `Mon-Fri 07:00-19:00 UTC` or `* 00:00-24:00 +02:00`".into()),
            )
        };
        let mut parts = s.split_whitespace();
        let (Some(days), Some(range)) = (parts.next(), parts.next()) else {
            return Err(bad(format!("bad hours `{s}`")));
        };
        let zone = parts.next().unwrap_or("UTC");
        if parts.next().is_some() {
            return Err(bad(format!("bad hours `{s}`: too many parts")));
        }
        let days = parse_days(days).ok_or_else(|| bad(format!("bad days `{days}`")))?;
        let (a, b) = range
            .split_once('-')
            .ok_or_else(|| bad(format!("bad time range `{range}`")))?;
        let start_min = parse_hhmm(a).ok_or_else(|| bad(format!("bad time `{a}`")))?;
        let end_min = parse_hhmm(b).ok_or_else(|| bad(format!("bad time `{b}`")))?;
        let zone = match parse_offset(zone) {
            Some(secs) => Zone::Fixed(secs),
            None => TimeZone::get(zone).map(Zone::Named).map_err(|e| {
                (
                    format!("unknown time zone `{zone}`: {e}"),
                    Some(
                        "use an IANA name such as `Europe/Paris`, `UTC`, or a fixed offset such as `+01:00`"
                            .into(),
                    ),
                )
            })?,
        };
        Ok(Hours {
            days,
            start_min,
            end_min,
            zone,
        })
    }

    /// Whether `at` falls in the window.
    pub fn contains(&self, at: SystemTime) -> bool {
        let secs = match at.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(_) => return false,
        };
        let local = secs + i64::from(self.zone.offset_at(secs));
        let day = local.div_euclid(86_400);
        let minute = (local.rem_euclid(86_400) / 60) as u16;
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = |d: i64| (d + 3).rem_euclid(7) as u8;
        let on = |d: i64| self.days & (1 << weekday(d)) != 0;
        if self.start_min <= self.end_min {
            on(day) && minute >= self.start_min && minute < self.end_min
        } else {
            (on(day) && minute >= self.start_min) || (on(day - 1) && minute < self.end_min)
        }
    }
}

fn parse_days(s: &str) -> Option<u8> {
    if s == "*" {
        return Some(0x7f);
    }
    let idx = |d: &str| DAYS.iter().position(|x| x.eq_ignore_ascii_case(d));
    let mut mask = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (idx(a)?, idx(b)?);
                let mut i = a;
                loop {
                    mask |= 1 << i;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => mask |= 1 << idx(part)?,
        }
    }
    Some(mask)
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

/// `UTC`, `Z`, `GMT` or a fixed offset: seconds east of UTC.
fn parse_offset(z: &str) -> Option<i32> {
    if z.eq_ignore_ascii_case("utc") || z == "Z" || z.eq_ignore_ascii_case("gmt") {
        return Some(0);
    }
    let z = z.strip_prefix("UTC").unwrap_or(z);
    let (sign, rest) = match z.as_bytes().first()? {
        b'+' => (1, z.get(1..)?),
        b'-' => (-1, z.get(1..)?),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|c| c.is_ascii_digit()) || !matches!(digits.len(), 1 | 2 | 4) {
        return None;
    }
    let (h, m): (i32, i32) = if digits.len() == 4 {
        (
            digits.get(..2)?.parse().ok()?,
            digits.get(2..)?.parse().ok()?,
        )
    } else {
        (digits.parse().ok()?, 0)
    };
    if h > 14 || m >= 60 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn weekday_window_with_offset() {
        let h = Hours::parse("Mon-Fri 07:00-19:00 +01:00").unwrap();
        // 2026-11-26 is a Thursday; 10:00 UTC is 11:00 at +01:00.
        let thu_10utc = 1_795_687_200;
        assert!(h.contains(at(thu_10utc)));
        // 18:30 UTC is 19:30 local: outside.
        assert!(!h.contains(at(thu_10utc + 8 * 3600 + 1800)));
        // Saturday 10:00 UTC.
        assert!(!h.contains(at(thu_10utc + 2 * 86_400)));
    }

    #[test]
    fn named_zones_follow_daylight_saving_time() {
        let h = Hours::parse("Mon-Fri 07:00-19:00 Europe/Paris").unwrap();
        // Thursday 2026-11-26, winter (+01:00): 06:30 UTC is 07:30 in Paris, 18:30 UTC is
        // 19:30.
        let thu_0630utc = 1_795_674_600;
        assert!(h.contains(at(thu_0630utc)));
        assert!(!h.contains(at(thu_0630utc - 3600)));
        assert!(!h.contains(at(thu_0630utc + 12 * 3600)));
        // Thursday 2026-07-02, summer (+02:00): 05:30 UTC is 07:30 in Paris; a fixed +01:00
        // window would still be closed.
        let summer_0530utc = 1_782_970_200;
        assert!(h.contains(at(summer_0530utc)));
        let fixed = Hours::parse("Mon-Fri 07:00-19:00 +01:00").unwrap();
        assert!(!fixed.contains(at(summer_0530utc)));
        // 17:30 UTC is 19:30 in Paris in summer: closed.
        assert!(!h.contains(at(summer_0530utc + 12 * 3600)));
    }

    #[test]
    fn unknown_zones_are_rejected_with_a_hint() {
        let (msg, hint) = Hours::parse("Mon-Fri 07:00-19:00 Europe/Atlantis").unwrap_err();
        assert!(msg.contains("`Europe/Atlantis`"), "{msg}");
        assert!(hint.unwrap().contains("Europe/Paris"));
    }

    #[test]
    fn overnight_window() {
        let h = Hours::parse("* 22:00-06:00").unwrap();
        assert!(h.contains(at(23 * 3600)));
        assert!(h.contains(at(86_400 + 3600)));
        assert!(!h.contains(at(12 * 3600)));
    }
}
