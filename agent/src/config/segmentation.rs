//! `mode`, `[segmentation]`, `[flows]`, `[[zones]]` and `[[rules]]`: which
//! zone may reach which, on what. Reference: docs/policy.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use tierguard_common::segment::{FIRST_ZONE, MAX_ZONES, RuleAction, ZONE_HOST, ZONE_WORLD};
use toml::Spanned;

use super::values::{IntOrStr, Ranges, ZoneNames, parse_duration, parse_ranges};
use super::{
    ConfigError, Origin, Source, duplicate_name, invalid_name, parse_prefix, read_prefix_file,
    valid_name,
};

// ---- the file as written ----

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [segmentation] table")]
pub(super) struct RawSegmentation {
    default: Option<Spanned<String>>,
    intra_zone: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [flows] table")]
pub(super) struct RawFlows {
    tcp_timeout: Option<Spanned<IntOrStr>>,
    tcp_closing_timeout: Option<Spanned<IntOrStr>>,
    udp_timeout: Option<Spanned<IntOrStr>>,
    other_timeout: Option<Spanned<IntOrStr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[zones]] table")]
pub(super) struct RawZone {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    files: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[rules]] table")]
pub(super) struct RawRule {
    name: Spanned<String>,
    from: Spanned<ZoneNames>,
    to: Spanned<ZoneNames>,
    protocol: Option<Spanned<String>>,
    ports: Option<Spanned<Vec<Spanned<IntOrStr>>>>,
    icmp_types: Option<Spanned<Vec<Spanned<IntOrStr>>>>,
    action: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
}

// ---- the validated policy ----

/// `mode`: enforce verdicts, or only report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    /// Decide and report everything, drop nothing.
    Audit,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// `[segmentation]`, and whether zones and rules are evaluated at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentationConfig {
    /// A `[segmentation]` section, a zone or a rule exists.
    pub enabled: bool,
    /// Zone pairs without a matching rule are allowed (`default = "allow"`).
    pub default_allow: bool,
    /// Traffic within one zone without a matching rule is allowed.
    pub intra_zone_allow: bool,
}

impl Default for SegmentationConfig {
    fn default() -> Self {
        SegmentationConfig {
            enabled: false,
            default_allow: false,
            intra_zone_allow: true,
        }
    }
}

/// `[flows]`: how long a flow admits replies after its last packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowsConfig {
    pub tcp_timeout: Duration,
    /// After a FIN or RST.
    pub tcp_closing_timeout: Duration,
    pub udp_timeout: Duration,
    /// ICMP and other protocols.
    pub other_timeout: Duration,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            tcp_timeout: Duration::from_secs(3600),
            tcp_closing_timeout: Duration::from_secs(10),
            udp_timeout: Duration::from_secs(60),
            other_timeout: Duration::from_secs(30),
        }
    }
}

/// A `[[zones]]` entry.
#[derive(Debug, Clone)]
pub struct Zone {
    pub name: String,
    pub description: Option<String>,
    /// Inline CIDRs first, then each file's, in order; each once.
    pub prefixes: Vec<IpNetwork>,
    pub origin: Origin,
    pub files: Vec<PathBuf>,
}

/// Zone names reserved for the built-in zones and for "every zone".
pub const RESERVED_ZONE_NAMES: [&str; 3] = ["world", "host", "any"];

/// A zone as a rule names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneRef {
    /// Every zone, `world` and `host` included.
    Any,
    World,
    Host,
    /// Index into `Config::zones`.
    Zone(usize),
}

/// Expands zone references to zone ids (0 `world`, 1 `host`, configured
/// zones from 2 in config order), sorted and each once.
pub fn zone_ids(refs: &[ZoneRef], zones: usize) -> Vec<u16> {
    let mut ids: Vec<u16> = Vec::new();
    for r in refs {
        match r {
            ZoneRef::Any => ids.extend(0..zone_id(zones)),
            ZoneRef::World => ids.push(ZONE_WORLD),
            ZoneRef::Host => ids.push(ZONE_HOST),
            ZoneRef::Zone(i) => ids.push(zone_id(*i)),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The id of configured zone `index` (saturating: a policy with too many
/// zones is refused, but validation goes on to report every other error).
pub fn zone_id(index: usize) -> u16 {
    u16::try_from(index)
        .unwrap_or(u16::MAX)
        .saturating_add(FIRST_ZONE)
        .min(MAX_ZONES as u16)
}

/// What a rule matches beyond the zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// Every protocol, all ports and types.
    Any,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            "icmpv6" => Protocol::Icmpv6,
            "any" => Protocol::Any,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
            Protocol::Any => "any",
        }
    }

    pub const fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }

    pub const fn has_types(self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::Icmpv6)
    }
}

/// A `[[rules]]` entry; its id is its index.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub from: Vec<ZoneRef>,
    pub to: Vec<ZoneRef>,
    pub protocol: Protocol,
    /// Destination ports (tcp, udp); None: all.
    pub ports: Option<Ranges>,
    /// ICMP or ICMPv6 types; None: all.
    pub icmp_types: Option<Ranges>,
    pub action: RuleAction,
    pub description: Option<String>,
    pub origin: Origin,
}

impl Rule {
    /// The ports (or types) the rule covers within its protocol.
    pub fn port_ranges(&self) -> Ranges {
        match self.protocol {
            Protocol::Tcp | Protocol::Udp => self.ports.clone().unwrap_or(vec![(0, 65535)]),
            Protocol::Icmp | Protocol::Icmpv6 => self.icmp_types.clone().unwrap_or(vec![(0, 255)]),
            Protocol::Any => vec![(0, 65535)],
        }
    }
}

// ---- validation ----

pub(super) fn validate_mode(
    src: &Source,
    raw: Option<&Spanned<String>>,
    errors: &mut Vec<ConfigError>,
) -> Mode {
    match raw.map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("enforce", _)) => Mode::Enforce,
        Some(("audit", _)) => Mode::Audit,
        Some((other, span)) => {
            errors.push(src.error_span(
                &span,
                format!("mode '{other}' is not \"enforce\" or \"audit\""),
            ));
            Mode::Enforce
        }
    }
}

pub(super) fn validate_segmentation(
    src: &Source,
    raw: Option<RawSegmentation>,
    zones_or_rules: bool,
    errors: &mut Vec<ConfigError>,
) -> SegmentationConfig {
    let d = SegmentationConfig::default();
    let enabled = raw.is_some() || zones_or_rules;
    let raw = raw.unwrap_or_default();
    let mut allow = |v: &Option<Spanned<String>>, key: &str, default: bool| match v {
        None => default,
        Some(v) => match v.get_ref().as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                errors.push(src.error_span(
                    &v.span(),
                    format!("segmentation.{key} '{other}' is not \"allow\" or \"deny\""),
                ));
                default
            }
        },
    };
    SegmentationConfig {
        enabled,
        default_allow: allow(&raw.default, "default", d.default_allow),
        intra_zone_allow: allow(&raw.intra_zone, "intra_zone", d.intra_zone_allow),
    }
}

pub(super) fn validate_flows(
    src: &Source,
    raw: RawFlows,
    errors: &mut Vec<ConfigError>,
) -> FlowsConfig {
    let d = FlowsConfig::default();
    let mut dur = |v: &Option<Spanned<IntOrStr>>, key: &str, default: Duration| match v {
        None => default,
        Some(v) => parse_duration(v.get_ref(), &format!("flows.{key}")).unwrap_or_else(|msg| {
            errors.push(src.error_span(&v.span(), msg));
            default
        }),
    };
    FlowsConfig {
        tcp_timeout: dur(&raw.tcp_timeout, "tcp_timeout", d.tcp_timeout),
        tcp_closing_timeout: dur(
            &raw.tcp_closing_timeout,
            "tcp_closing_timeout",
            d.tcp_closing_timeout,
        ),
        udp_timeout: dur(&raw.udp_timeout, "udp_timeout", d.udp_timeout),
        other_timeout: dur(&raw.other_timeout, "other_timeout", d.other_timeout),
    }
}

fn origin_of(src: &Source, offset: usize) -> Origin {
    let (line, column) = src.line_col(offset);
    Origin {
        file: src.name.to_string(),
        line,
        column,
    }
}

pub(super) fn validate_zones(
    src: &Source,
    base: &Path,
    raw: Vec<RawZone>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Zone> {
    let max = (MAX_ZONES - u32::from(FIRST_ZONE)) as usize;
    let mut zones: Vec<Zone> = Vec::new();
    // Each configured prefix and where it was first written, to refuse the
    // same prefix in two zones (which zone would it be in?).
    let mut seen: HashMap<IpNetwork, (usize, Origin)> = HashMap::new();
    for (n, r) in raw.into_iter().enumerate() {
        let name = r.name.get_ref().clone();
        let origin = origin_of(src, r.name.span().start);
        if n == max {
            errors.push(src.error_span(
                &r.name.span(),
                format!("too many zones: at most {max} can be configured (besides world and host)"),
            ));
        }
        if RESERVED_ZONE_NAMES.contains(&name.as_str()) {
            errors.push(src.error_span(
                &r.name.span(),
                format!(
                    "zone name '{name}' is reserved: 'world' (addresses in no zone) and 'host' (the node's own addresses) are built in, 'any' means every zone"
                ),
            ));
        } else if !valid_name(&name) {
            errors.push(src.error_span(&r.name.span(), invalid_name("zone", &name)));
        }
        if let Some(first) = zones.iter().find(|z| z.name == name) {
            errors.push(src.error_span(
                &r.name.span(),
                duplicate_name("zone", &name, first.origin.line),
            ));
        }
        let id = zones.len();
        let mut prefixes = Vec::new();
        let mut add = |net: IpNetwork, at: Origin, errors: &mut Vec<ConfigError>| match seen
            .get(&net)
        {
            Some((other, _)) if *other == id => {}
            Some((other, first)) => {
                let zone = zones.get(*other).map_or("?", |z| z.name.as_str());
                errors.push(ConfigError {
                        file: at.file,
                        line: at.line,
                        column: at.column,
                        message: format!(
                            "{net} is already in zone '{zone}' (at {first}): a prefix can be in one zone only"
                        ),
                    });
            }
            None => {
                seen.insert(net, (id, at));
                prefixes.push(net);
            }
        };
        for c in &r.cidrs {
            match parse_prefix(c.get_ref()) {
                Ok(net) => add(net, origin_of(src, c.span().start), errors),
                Err(msg) => errors.push(src.error_span(&c.span(), msg)),
            }
        }
        let mut files = Vec::new();
        for f in &r.files {
            let (path, lines) = read_prefix_file(src, f, base, "zone", &name, errors);
            let file = path.display().to_string();
            for l in lines {
                let at = Origin {
                    file: file.clone(),
                    line: l.line,
                    column: l.column,
                };
                add(l.net, at, errors);
            }
            files.push(path);
        }
        if r.cidrs.is_empty() && r.files.is_empty() {
            errors.push(src.error_span(
                &r.name.span(),
                format!("zone '{name}' has neither cidrs nor files"),
            ));
        }
        zones.push(Zone {
            name,
            description: r.description,
            prefixes,
            origin,
            files,
        });
    }
    zones
}

pub(super) fn validate_rules(
    src: &Source,
    zones: &[Zone],
    raw: Vec<RawRule>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    // The exact match of each rule, to refuse two rules that match the same
    // packets with different actions.
    let mut matches: HashMap<(Vec<u16>, Vec<u16>, Protocol, Ranges), usize> = HashMap::new();
    // Each name's first line: a search of the rules so far was quadratic.
    let mut first_lines: HashMap<String, usize> = HashMap::new();
    for r in raw {
        let before = errors.len();
        let name = r.name.get_ref().clone();
        let origin = origin_of(src, r.name.span().start);
        if !valid_name(&name) {
            errors.push(src.error_span(&r.name.span(), invalid_name("rule", &name)));
        }
        match first_lines.get(&name) {
            Some(&line) => {
                errors.push(src.error_span(&r.name.span(), duplicate_name("rule", &name, line)));
            }
            None => {
                first_lines.insert(name.clone(), origin.line);
            }
        }
        let from = zone_refs(src, zones, &name, "from", &r.from, errors);
        let to = zone_refs(src, zones, &name, "to", &r.to, errors);
        let protocol = match &r.protocol {
            None => Protocol::Any,
            Some(p) => Protocol::parse(p.get_ref()).unwrap_or_else(|| {
                errors.push(src.error_span(
                    &p.span(),
                    format!(
                        "protocol '{}' is not one of tcp, udp, icmp, icmpv6, any",
                        p.get_ref()
                    ),
                ));
                Protocol::Any
            }),
        };
        let ports = r.ports.as_ref().and_then(|p| {
            if protocol.has_ports() {
                parse_ranges(src, "ports", u16::MAX, p, errors)
            } else {
                errors.push(src.error_span(
                    &p.span(),
                    format!(
                        "rule '{name}': ports apply to protocol tcp or udp, not {}",
                        protocol.name()
                    ),
                ));
                None
            }
        });
        let icmp_types = r.icmp_types.as_ref().and_then(|t| {
            if protocol.has_types() {
                parse_ranges(src, "icmp_types", 255, t, errors)
            } else {
                errors.push(src.error_span(
                    &t.span(),
                    format!(
                        "rule '{name}': icmp_types apply to protocol icmp or icmpv6, not {}",
                        protocol.name()
                    ),
                ));
                None
            }
        });
        let action = match r.action.get_ref().as_str() {
            "allow" => RuleAction::Allow,
            "deny" => RuleAction::Deny,
            "audit" => RuleAction::Audit,
            other => {
                errors.push(src.error_span(
                    &r.action.span(),
                    format!("action '{other}' is not one of allow, deny, audit"),
                ));
                RuleAction::Deny
            }
        };
        let rule = Rule {
            name,
            from,
            to,
            protocol,
            ports,
            icmp_types,
            action,
            description: r.description,
            origin,
        };
        if errors.len() == before {
            let key = (
                zone_ids(&rule.from, zones.len()),
                zone_ids(&rule.to, zones.len()),
                rule.protocol,
                rule.port_ranges(),
            );
            match matches.get(&key).map(|&i| &rules[i]) {
                Some(other) if other.action != rule.action => {
                    errors.push(src.error_span(
                        &r.name.span(),
                        format!(
                            "rule '{}' ({}) matches exactly what rule '{}' ({}, line {}) matches: contradictory rules",
                            rule.name,
                            rule.action.name(),
                            other.name,
                            other.action.name(),
                            other.origin.line
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    matches.insert(key, rules.len());
                }
            }
        }
        rules.push(rule);
    }
    rules
}

fn zone_refs(
    src: &Source,
    zones: &[Zone],
    rule: &str,
    key: &str,
    raw: &Spanned<ZoneNames>,
    errors: &mut Vec<ConfigError>,
) -> Vec<ZoneRef> {
    let names = raw.get_ref().with_spans(raw.span());
    if names.is_empty() {
        errors.push(src.error_span(&raw.span(), format!("rule '{rule}': {key} names no zone")));
    }
    let mut refs = Vec::new();
    for (name, span) in names {
        let r = match name.as_str() {
            "any" => ZoneRef::Any,
            "world" => ZoneRef::World,
            "host" => ZoneRef::Host,
            _ => match zones.iter().position(|z| z.name == name) {
                Some(i) => ZoneRef::Zone(i),
                None => {
                    errors.push(src.error_span(
                        &span,
                        format!("rule '{rule}': unknown zone '{name}' in {key} (zones are world, host, any and those defined in [[zones]])"),
                    ));
                    continue;
                }
            },
        };
        refs.push(r);
    }
    refs
}
