//! Values written in more than one shape: ports and ICMP types (a number or a
//! `"lo-hi"` range), durations (seconds or `"90s"`), zone names (one or an array).

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

use super::{ConfigError, Source};

/// An integer or a string, for keys that accept both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IntOrStr {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrStr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrStr, E> {
                Ok(IntOrStr::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrStr, E> {
                Ok(IntOrStr::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrStr, E> {
                Ok(IntOrStr::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Zone names: one string or an array of strings (each with its place).
#[derive(Debug)]
pub(super) enum ZoneNames {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for ZoneNames {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ZoneNames;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a zone name or an array of zone names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ZoneNames, E> {
                Ok(ZoneNames::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ZoneNames, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<Spanned<String>>()? {
                    names.push(n);
                }
                Ok(ZoneNames::Many(names))
            }
        }
        d.deserialize_any(V)
    }
}

impl ZoneNames {
    /// Each name with its place (a lone string has the place of the value).
    pub(super) fn with_spans(&self, whole: Range<usize>) -> Vec<(String, Range<usize>)> {
        match self {
            ZoneNames::One(n) => vec![(n.clone(), whole)],
            ZoneNames::Many(v) => v.iter().map(|n| (n.get_ref().clone(), n.span())).collect(),
        }
    }
}

/// Inclusive ranges, sorted, overlapping and adjacent ones merged.
pub type Ranges = Vec<(u16, u16)>;

/// Sorts and merges ranges (`[(443, 443), (444, 445)]` → `[(443, 445)]`).
pub fn merge_ranges(mut r: Vec<(u16, u16)>) -> Ranges {
    r.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Renders ranges as operators write them: `22, 443-445`.
pub fn format_ranges(r: &[(u16, u16)]) -> String {
    r.iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validates `ports` or `icmp_types` (numbers up to `max`, or `"lo-hi"`);
/// None (with errors pushed) if any element is bad or the array is empty.
pub(super) fn parse_ranges(
    src: &Source,
    what: &str,
    max: u16,
    raw: &Spanned<Vec<Spanned<IntOrStr>>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Ranges> {
    if raw.get_ref().is_empty() {
        errors.push(src.error_span(
            &raw.span(),
            format!("{what} is an empty array: omit it to match every one"),
        ));
        return None;
    }
    let before = errors.len();
    let mut out = Vec::new();
    for v in raw.get_ref() {
        match parse_range(v.get_ref(), what, max) {
            Ok(r) => out.push(r),
            Err(msg) => errors.push(src.error_span(&v.span(), msg)),
        }
    }
    (errors.len() == before).then(|| merge_ranges(out))
}

fn parse_range(v: &IntOrStr, what: &str, max: u16) -> Result<(u16, u16), String> {
    let one = |n: i64| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("{what}: {n} is out of range: expected 0 to {max}"))
    };
    match v {
        IntOrStr::Int(n) => one(*n).map(|n| (n, n)),
        IntOrStr::Str(s) => {
            let bad = || format!("{what}: '{s}' is not a number or a range like \"9000-9100\"");
            let (lo, hi) = match s.trim().split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (s.trim(), s.trim()),
            };
            let lo: i64 = lo.parse().map_err(|_| bad())?;
            let hi: i64 = hi.parse().map_err(|_| bad())?;
            let (lo, hi) = (one(lo)?, one(hi)?);
            if lo > hi {
                return Err(format!("{what}: range '{s}' is empty ({lo} > {hi})"));
            }
            Ok((lo, hi))
        }
    }
}

/// Bounds of the `[flows]` timeouts.
pub const MIN_DURATION: Duration = Duration::from_secs(1);
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);

/// Seconds in a number with one unit (`"90s"`, `"10m"`, `"1h"`, `"1d"`), unbounded.
pub fn duration_text_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let unit = match s.chars().last() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        _ => return None,
    };
    let n = s[..s.len() - 1].parse::<u64>().ok()?;
    Some(n.saturating_mul(unit))
}

/// Parses seconds (`90`) or a number with one unit (`"90s"`, `"10m"`, `"1h"`, `"1d"`),
/// from 1 second to 7 days.
pub(super) fn parse_duration(v: &IntOrStr, what: &str) -> Result<Duration, String> {
    let secs = match v {
        IntOrStr::Int(n) => u64::try_from(*n).ok(),
        IntOrStr::Str(s) => match duration_text_secs(s) {
            Some(n) => Some(n),
            None => {
                return Err(format!(
                    "{what} '{}' is not a duration: expected seconds or a number with a unit, like \"90s\", \"10m\", \"1h\", \"1d\"",
                    s.trim()
                ));
            }
        },
    };
    let shown = match v {
        IntOrStr::Int(n) => n.to_string(),
        IntOrStr::Str(s) => format!("\"{}\"", s.trim()),
    };
    secs.map(Duration::from_secs)
        .filter(|d| (MIN_DURATION..=MAX_DURATION).contains(d))
        .ok_or_else(|| format!("{what} = {shown} is out of range: expected 1s to 7d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        assert_eq!(
            merge_ranges(vec![(445, 445), (443, 443), (444, 444), (10, 20), (15, 30)]),
            [(10, 30), (443, 445)]
        );
        assert_eq!(merge_ranges(vec![(0, 65535), (7, 9)]), [(0, 65535)]);
        assert_eq!(format_ranges(&[(22, 22), (443, 445)]), "22, 443-445");
    }

    #[test]
    fn single_values_and_ranges_parse_at_their_edges() {
        let p = |v: IntOrStr| parse_range(&v, "ports", 65535);
        assert_eq!(p(IntOrStr::Int(0)), Ok((0, 0)));
        assert_eq!(p(IntOrStr::Int(65535)), Ok((65535, 65535)));
        assert_eq!(p(IntOrStr::Str("9000-9100".into())), Ok((9000, 9100)));
        assert_eq!(p(IntOrStr::Str("22".into())), Ok((22, 22)));
        assert!(p(IntOrStr::Int(65536)).unwrap_err().contains("0 to 65535"));
        assert!(p(IntOrStr::Int(-1)).unwrap_err().contains("out of range"));
        assert!(
            p(IntOrStr::Str("10-5".into()))
                .unwrap_err()
                .contains("is empty (10 > 5)")
        );
        assert!(
            p(IntOrStr::Str("x-5".into()))
                .unwrap_err()
                .contains("not a number")
        );
        let t = parse_range(&IntOrStr::Int(256), "icmp_types", 255);
        assert!(t.unwrap_err().contains("0 to 255"));
    }

    #[test]
    fn durations_take_one_unit_and_stay_in_bounds() {
        let d = |s: &str| parse_duration(&IntOrStr::Str(s.into()), "flows.x");
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("7d"), Ok(MAX_DURATION));
        assert_eq!(
            parse_duration(&IntOrStr::Int(1), "flows.x"),
            Ok(MIN_DURATION)
        );
        assert!(
            d("8d")
                .unwrap_err()
                .contains("out of range: expected 1s to 7d")
        );
        assert!(d("0s").unwrap_err().contains("out of range"));
        assert!(parse_duration(&IntOrStr::Int(0), "flows.x").is_err());
        assert!(d("1h30m").unwrap_err().contains("is not a duration"));
        assert!(d("soon").unwrap_err().contains("is not a duration"));
        assert!(d("").unwrap_err().contains("is not a duration"));
    }
}
