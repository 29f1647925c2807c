//! `[[limits]]`: volumetric thresholds. Validation gives every problem its
//! file, line and column; docs/policy.md describes each key.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use tierguard_common::limit::{MAX_BITS_PER_SECOND, MAX_BURST, MAX_PACKETS_PER_SECOND};
use tierguard_common::limiter::{LimitAction, MAX_LIMIT_IFACES, MAX_LIMITS, Per};
use tierguard_common::packet::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use tierguard_common::segment::{ZONE_HOST, ZONE_WORLD};

use super::values::{IntOrStr, parse_duration, parse_ranges};
use super::{ConfigError, Origin, Source, valid_interface_name, valid_name};

/// Smallest bit burst: one full Ethernet frame (1518 bytes), so that every
/// frame can pass.
pub const MIN_BPS_BURST: u64 = 1518 * 8;

/// How a quantity was written, for messages.
fn shown(v: &IntOrStr) -> String {
    match v {
        IntOrStr::Int(n) => n.to_string(),
        IntOrStr::Str(s) => format!("\"{s}\""),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[limits]] table")]
pub(super) struct RawLimit {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    protocol: Option<Spanned<String>>,
    tcp_flags: Option<Spanned<String>>,
    ports: Option<Spanned<Vec<Spanned<IntOrStr>>>>,
    to_zone: Option<Spanned<String>>,
    interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    per: Option<Spanned<String>>,
    prefix_v4: Option<Spanned<i64>>,
    prefix_v6: Option<Spanned<i64>>,
    pps: Option<Spanned<IntOrStr>>,
    bps: Option<Spanned<IntOrStr>>,
    burst: Option<Spanned<IntOrStr>>,
    bps_burst: Option<Spanned<IntOrStr>>,
    action: Option<Spanned<String>>,
    block_for: Option<Spanned<IntOrStr>>,
}

/// The protocol a limit matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitProtocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Any,
}

impl LimitProtocol {
    pub const fn name(self) -> &'static str {
        match self {
            LimitProtocol::Tcp => "tcp",
            LimitProtocol::Udp => "udp",
            LimitProtocol::Icmp => "icmp",
            LimitProtocol::Icmpv6 => "icmpv6",
            LimitProtocol::Any => "any",
        }
    }

    /// The IP protocol number matched; 0 for any.
    pub const fn number(self) -> u8 {
        match self {
            LimitProtocol::Tcp => PROTO_TCP,
            LimitProtocol::Udp => PROTO_UDP,
            LimitProtocol::Icmp => PROTO_ICMP,
            LimitProtocol::Icmpv6 => PROTO_ICMPV6,
            LimitProtocol::Any => 0,
        }
    }
}

/// A threshold: so many per second, with a bucket of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    pub per_second: u64,
    pub burst: u64,
}

/// A destination zone, by name and id (0 `world`, 1 `host`, configured
/// zones from 2 in config order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneTarget {
    pub name: String,
    pub id: u16,
}

/// One validated `[[limits]]` entry; its id is its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub name: String,
    pub description: Option<String>,
    pub protocol: LimitProtocol,
    /// `tcp_flags = "syn"`: SYN without ACK only.
    pub syn_only: bool,
    /// Destination port ranges (inclusive, merged); `None` for every port.
    pub ports: Option<Vec<(u16, u16)>>,
    pub to_zone: Option<ZoneTarget>,
    /// Interfaces it applies to; empty for every enforced interface.
    pub interfaces: Vec<String>,
    pub per: Per,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub pps: Option<Threshold>,
    /// Bits per second, burst in bits.
    pub bps: Option<Threshold>,
    pub action: LimitAction,
    pub block_for: Option<Duration>,
    pub origin: Origin,
}

/// Parses `N`, `"N"`, or `"N"` with one SI suffix (`K` or `k` = 10^3, `M` =
/// 10^6, `G` = 10^9, `T` = 10^12): `"10M"` is ten million.
fn parse_quantity(v: &IntOrStr) -> Result<u64, String> {
    let s = match v {
        IntOrStr::Int(n) if *n > 0 => return Ok(*n as u64),
        IntOrStr::Int(n) => return Err(format!("{n} is not greater than zero")),
        IntOrStr::Str(s) => s.trim(),
    };
    let (digits, scale) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1_000),
        Some((i, 'M')) => (&s[..i], 1_000_000),
        Some((i, 'G')) => (&s[..i], 1_000_000_000),
        Some((i, 'T')) => (&s[..i], 1_000_000_000_000),
        _ => (s, 1),
    };
    let bad = || {
        format!(
            "\"{s}\" is not a number: expected digits with at most one of K, M, G or T, like \"10M\""
        )
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("\"{s}\" is not greater than zero"));
    }
    n.checked_mul(scale)
        .ok_or_else(|| format!("\"{s}\" is too large"))
}

/// Renders a duration the way it is written in a config (`"90s"`, `"10m"`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The id of a zone named by `to_zone`, among the built-in zones and the
/// configured ones (`zones`, in config order).
fn zone_target(name: &str, zones: &[String]) -> Option<ZoneTarget> {
    let id = match name {
        "world" => ZONE_WORLD,
        "host" => ZONE_HOST,
        _ => super::zone_id(zones.iter().position(|z| z == name)?),
    };
    Some(ZoneTarget {
        name: name.to_string(),
        id,
    })
}

/// Validates every `[[limits]]` table; `zones` are the configured zone names.
pub(super) fn validate_limits(
    src: &Source,
    raw: Vec<RawLimit>,
    zones: &[String],
    errors: &mut Vec<ConfigError>,
) -> Vec<Limit> {
    let mut limits: Vec<Limit> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        if i == MAX_LIMITS as usize {
            errors.push(src.error_span(
                &r.name.span(),
                format!("too many limits: at most {MAX_LIMITS} are supported"),
            ));
        }
        if let Some(l) = validate_limit(src, r, zones, &limits, errors) {
            limits.push(l);
        }
    }
    limits
}

/// Errors of one limit, each prefixed with its name.
struct Errors<'a, 'b> {
    src: &'a Source<'b>,
    name: String,
    out: &'a mut Vec<ConfigError>,
}

impl Errors<'_, '_> {
    fn at(&mut self, span: &std::ops::Range<usize>, msg: impl fmt::Display) {
        let e = self
            .src
            .error_span(span, format!("limit '{}': {msg}", self.name));
        self.out.push(e);
    }

    /// A positive quantity within `min..=max` (see [`parse_quantity`]).
    fn quantity(
        &mut self,
        v: &Spanned<IntOrStr>,
        key: &str,
        min: u64,
        max: u64,
        unit: &str,
    ) -> Option<u64> {
        match parse_quantity(v.get_ref()) {
            Ok(n) if n < min => {
                self.at(
                    &v.span(),
                    format!(
                        "{key} = {} is below the minimum of {min} {unit}",
                        shown(v.get_ref())
                    ),
                );
                None
            }
            Ok(n) if n > max => {
                self.at(
                    &v.span(),
                    format!(
                        "{key} = {} is above the maximum of {max} {unit}",
                        shown(v.get_ref())
                    ),
                );
                None
            }
            Ok(n) => Some(n),
            Err(msg) => {
                self.at(&v.span(), format!("{key}: {msg}"));
                None
            }
        }
    }

    /// A source prefix length, only with `per = "source_prefix"`.
    fn prefix(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        per: Per,
        max: i64,
        default: u8,
    ) -> u8 {
        let Some(v) = v else { return default };
        if per != Per::SourcePrefix {
            self.at(
                &v.span(),
                format!("{key} applies to per = \"source_prefix\" only"),
            );
            return default;
        }
        match u8::try_from(*v.get_ref()) {
            Ok(n) if n >= 1 && i64::from(n) <= max => n,
            _ => {
                self.at(
                    &v.span(),
                    format!(
                        "{key} = {} is out of range: expected 1 to {max} (for one bucket for everyone, use per = \"global\")",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }
}

fn validate_limit(
    src: &Source,
    r: RawLimit,
    zones: &[String],
    earlier: &[Limit],
    errors: &mut Vec<ConfigError>,
) -> Option<Limit> {
    let before = errors.len();
    let name = r.name.get_ref().clone();
    let at_name = r.name.span();
    let (line, column) = src.line_col(at_name.start);
    let origin = Origin {
        file: src.name.to_string(),
        line,
        column,
    };
    let mut e = Errors {
        src,
        name: name.clone(),
        out: errors,
    };
    if !valid_name(&name) {
        e.at(
            &at_name,
            format!(
                "the name must be 1 to {} characters of letters, digits, '-', '_' or '.'",
                super::MAX_NAME_LEN
            ),
        );
    }
    if let Some(first) = earlier.iter().find(|l| l.name == name) {
        e.at(
            &at_name,
            format!(
                "duplicate name (first defined at line {})",
                first.origin.line
            ),
        );
    }

    let protocol = match &r.protocol {
        None => LimitProtocol::Any,
        Some(p) => match p.get_ref().as_str() {
            "tcp" => LimitProtocol::Tcp,
            "udp" => LimitProtocol::Udp,
            "icmp" => LimitProtocol::Icmp,
            "icmpv6" => LimitProtocol::Icmpv6,
            "any" => LimitProtocol::Any,
            other => {
                e.at(
                    &p.span(),
                    format!(
                        "unknown protocol '{other}': expected \"tcp\", \"udp\", \"icmp\", \"icmpv6\" or \"any\""
                    ),
                );
                LimitProtocol::Any
            }
        },
    };
    let syn_only = match &r.tcp_flags {
        None => false,
        Some(f) if f.get_ref() != "syn" => {
            e.at(
                &f.span(),
                format!(
                    "unknown tcp_flags '{}': the only value is \"syn\" (SYN without ACK)",
                    f.get_ref()
                ),
            );
            false
        }
        Some(f) => {
            if protocol != LimitProtocol::Tcp {
                e.at(
                    &f.span(),
                    format!(
                        "tcp_flags needs protocol = \"tcp\" (this limit is for {}): it would match nothing",
                        protocol.name()
                    ),
                );
            }
            true
        }
    };
    let mut ports = None;
    if let Some(list) = &r.ports {
        if matches!(protocol, LimitProtocol::Tcp | LimitProtocol::Udp) {
            ports = parse_ranges(src, "ports", u16::MAX, list, e.out);
        } else {
            e.at(
                &list.span(),
                format!(
                    "ports need protocol = \"tcp\" or \"udp\" (this limit is for {}): it would match nothing",
                    protocol.name()
                ),
            );
        }
    }
    let to_zone = r.to_zone.as_ref().and_then(|z| {
        let found = zone_target(z.get_ref(), zones);
        if z.get_ref() == "any" {
            e.at(
                &z.span(),
                "to_zone = \"any\" is every destination: omit to_zone",
            );
        } else if found.is_none() {
            let known: Vec<&str> = ["world", "host"]
                .into_iter()
                .chain(zones.iter().map(String::as_str))
                .collect();
            e.at(
                &z.span(),
                format!(
                    "unknown zone '{}' in to_zone: the zones are {}",
                    z.get_ref(),
                    known.join(", ")
                ),
            );
        }
        found
    });
    let mut interfaces: Vec<String> = Vec::new();
    if let Some(list) = &r.interfaces {
        if list.get_ref().is_empty() {
            e.at(
                &list.span(),
                "interfaces is an empty array: it would match nothing (omit it for every interface)",
            );
        }
        if list.get_ref().len() > MAX_LIMIT_IFACES {
            e.at(
                &list.span(),
                format!("at most {MAX_LIMIT_IFACES} interfaces per limit"),
            );
        }
        for i in list.get_ref() {
            let n = i.get_ref();
            if !valid_interface_name(n) {
                e.at(&i.span(), format!("'{n}' is not a valid interface name"));
            } else if interfaces.contains(n) {
                e.at(&i.span(), format!("interface '{n}' is listed twice"));
            } else {
                interfaces.push(n.clone());
            }
        }
    }

    let per = match &r.per {
        None => Per::Source,
        Some(p) => match p.get_ref().as_str() {
            "source" => Per::Source,
            "source_prefix" => Per::SourcePrefix,
            "destination" => Per::Destination,
            "global" => Per::Global,
            other => {
                e.at(
                    &p.span(),
                    format!(
                        "unknown per '{other}': expected \"source\", \"source_prefix\", \"destination\" or \"global\""
                    ),
                );
                Per::Source
            }
        },
    };
    let prefix_v4 = e.prefix(&r.prefix_v4, "prefix_v4", per, 32, 24);
    let prefix_v6 = e.prefix(&r.prefix_v6, "prefix_v6", per, 128, 64);

    let pps_rate = r
        .pps
        .as_ref()
        .and_then(|v| e.quantity(v, "pps", 1, MAX_PACKETS_PER_SECOND, "packets per second"));
    let bps_rate = r
        .bps
        .as_ref()
        .and_then(|v| e.quantity(v, "bps", 1, MAX_BITS_PER_SECOND, "bits per second"));
    let burst = match &r.burst {
        Some(v) if r.pps.is_none() => {
            e.at(
                &v.span(),
                "burst is the packet burst and needs pps (for bps, set bps_burst)",
            );
            None
        }
        Some(v) => e.quantity(v, "burst", 1, MAX_BURST, "packets"),
        None => None,
    };
    let bps_burst = match &r.bps_burst {
        Some(v) if r.bps.is_none() => {
            e.at(&v.span(), "bps_burst needs bps");
            None
        }
        Some(v) => e.quantity(
            v,
            "bps_burst",
            MIN_BPS_BURST,
            MAX_BURST,
            "bits (one 1518-byte frame: a smaller burst would never let a full frame through)",
        ),
        None => None,
    };
    let pps = pps_rate.map(|per_second| Threshold {
        per_second,
        // One second's worth.
        burst: burst.unwrap_or(per_second.min(MAX_BURST)),
    });
    let bps = bps_rate.map(|per_second| Threshold {
        per_second,
        // One second's worth, at least one full frame.
        burst: bps_burst.unwrap_or(per_second.clamp(MIN_BPS_BURST, MAX_BURST)),
    });
    if r.pps.is_none() && r.bps.is_none() {
        e.at(
            &at_name,
            "has neither pps nor bps: set a packet rate, a bit rate or both",
        );
    }

    let at_action = r.action.as_ref().map_or(at_name.clone(), |a| a.span());
    let action = match &r.action {
        None => LimitAction::Drop,
        Some(a) => match a.get_ref().as_str() {
            "drop" => LimitAction::Drop,
            "block" => LimitAction::Block,
            "audit" => LimitAction::Audit,
            other => {
                e.at(
                    &a.span(),
                    format!("unknown action '{other}': expected \"drop\", \"block\" or \"audit\""),
                );
                LimitAction::Drop
            }
        },
    };
    if action == LimitAction::Block && matches!(per, Per::Destination | Per::Global) {
        e.at(
            &at_action,
            format!(
                "action = \"block\" blocks sources and needs per = \"source\" or \"source_prefix\" (a {} limit has no source to block)",
                per.name()
            ),
        );
    }
    let block_for = match (&r.block_for, action) {
        (None, LimitAction::Block) => {
            e.at(
                &at_action,
                "action = \"block\" needs block_for (how long, from 1s to 7d)",
            );
            None
        }
        (None, _) => None,
        (Some(v), LimitAction::Block) => match parse_duration(v.get_ref(), "block_for") {
            Ok(d) => Some(d),
            Err(msg) => {
                e.at(&v.span(), msg);
                None
            }
        },
        (Some(v), _) => {
            e.at(&v.span(), "block_for applies to action = \"block\" only");
            None
        }
    };
    (errors.len() == before).then_some(Limit {
        name,
        description: r.description,
        protocol,
        syn_only,
        ports,
        to_zone,
        interfaces,
        per,
        prefix_v4,
        prefix_v6,
        pps,
        bps,
        action,
        block_for,
        origin,
    })
}

/// Limits restricted to an interface the agent does not enforce on (after
/// `--iface`): they could never match.
pub fn interface_errors(config: &super::Config) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for l in &config.limits {
        for i in &l.interfaces {
            if !config.agent.interfaces.contains(i) {
                out.push(ConfigError {
                    file: l.origin.file.clone(),
                    line: l.origin.line,
                    column: l.origin.column,
                    message: format!(
                        "limit '{}': interface '{i}' is not one the agent enforces on (agent.interfaces or --iface): the limit would never match there",
                        l.name
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
