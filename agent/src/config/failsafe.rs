//! `[failsafe]`: traffic no rule, list or limit may drop, so that a policy
//! mistake never locks operators out of the node. Reference: docs/policy.md,
//! reasons: docs/design/segmentation.md.

use ipnetwork::IpNetwork;
use serde::Deserialize;
use tierguard_common::packet::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use tierguard_common::segment::MAX_FAILSAFE;
use toml::Spanned;

use super::values::{IntOrStr, Ranges, parse_ranges};
use super::{ConfigError, Origin, Source, invalid_name, parse_prefix, valid_name};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [failsafe] table")]
pub(super) struct RawFailsafe {
    #[serde(default)]
    management: Vec<Spanned<String>>,
    #[serde(default)]
    scrape: Vec<Spanned<String>>,
    ssh: Option<bool>,
    ssh_port: Option<Spanned<i64>>,
    metrics: Option<bool>,
    neighbor_discovery: Option<bool>,
    dhcp: Option<bool>,
    #[serde(default)]
    allow: Vec<RawFailsafeAllow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[failsafe.allow]] table")]
pub(super) struct RawFailsafeAllow {
    name: Spanned<String>,
    protocol: Spanned<String>,
    ports: Option<Spanned<Vec<Spanned<IntOrStr>>>>,
    icmp_types: Option<Spanned<Vec<Spanned<IntOrStr>>>>,
    from: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    description: Option<String>,
}

/// The validated `[failsafe]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafeConfig {
    /// Ranges from which SSH always reaches the node.
    pub management: Vec<IpNetwork>,
    /// Ranges from which the metrics port always answers.
    pub scrape: Vec<IpNetwork>,
    pub ssh: bool,
    pub ssh_port: u16,
    pub metrics: bool,
    pub neighbor_discovery: bool,
    pub dhcp: bool,
    pub allow: Vec<FailsafeAllow>,
}

impl Default for FailsafeConfig {
    fn default() -> Self {
        FailsafeConfig {
            management: Vec::new(),
            scrape: Vec::new(),
            ssh: true,
            ssh_port: 22,
            metrics: true,
            neighbor_discovery: true,
            dhcp: true,
            allow: Vec::new(),
        }
    }
}

/// A `[[failsafe.allow]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafeAllow {
    pub name: String,
    /// IP protocol: tcp, udp, icmp or icmpv6.
    pub proto: u8,
    /// Node-side ports (tcp, udp) or types (icmp); all if omitted.
    pub ports: Ranges,
    pub from: Vec<IpNetwork>,
    pub description: Option<String>,
    pub origin: Origin,
}

/// One failsafe entry as enforced: packets of `proto` whose node-side port
/// (or type) is in `ports` and whose remote address is in `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafeEntry {
    pub name: String,
    pub proto: u8,
    pub ports: Ranges,
    pub from: Vec<IpNetwork>,
}

/// Names of the built-in entries, in their fixed order.
pub const BUILTIN_FAILSAFE: [&str; 5] = ["ssh", "metrics", "neighbor_discovery", "dhcp", "dhcpv6"];

impl FailsafeConfig {
    fn builtin_count(&self) -> usize {
        usize::from(self.ssh)
            + usize::from(self.metrics)
            + usize::from(self.neighbor_discovery)
            + 2 * usize::from(self.dhcp)
    }

    /// Every enabled entry in the fixed order (ssh, metrics,
    /// neighbor_discovery, dhcp, dhcpv6, then `[[failsafe.allow]]`): an
    /// entry's index is its bit in the kernel's masks.
    pub fn entries(&self, metrics_port: u16) -> Vec<FailsafeEntry> {
        let any_v4: IpNetwork = "0.0.0.0/0".parse().expect("valid");
        let any_v6: IpNetwork = "::/0".parse().expect("valid");
        let e = |name: &str, proto, ports: Ranges, from: Vec<IpNetwork>| FailsafeEntry {
            name: name.to_string(),
            proto,
            ports,
            from,
        };
        let mut out = Vec::new();
        if self.ssh {
            let p = self.ssh_port;
            out.push(e("ssh", PROTO_TCP, vec![(p, p)], self.management.clone()));
        }
        if self.metrics {
            let p = metrics_port;
            out.push(e("metrics", PROTO_TCP, vec![(p, p)], self.scrape.clone()));
        }
        if self.neighbor_discovery {
            // Router solicitation/advertisement, neighbour solicitation/
            // advertisement, redirect: IPv6 has no ARP.
            out.push(e(
                "neighbor_discovery",
                PROTO_ICMPV6,
                vec![(133, 137)],
                vec![any_v6],
            ));
        }
        if self.dhcp {
            out.push(e("dhcp", PROTO_UDP, vec![(68, 68)], vec![any_v4]));
            out.push(e("dhcpv6", PROTO_UDP, vec![(546, 546)], vec![any_v6]));
        }
        for a in &self.allow {
            out.push(e(&a.name, a.proto, a.ports.clone(), a.from.clone()));
        }
        out
    }
}

fn cidrs(src: &Source, raw: &[Spanned<String>], errors: &mut Vec<ConfigError>) -> Vec<IpNetwork> {
    let mut out = Vec::new();
    for c in raw {
        match parse_prefix(c.get_ref()) {
            Ok(n) if !out.contains(&n) => out.push(n),
            Ok(_) => {}
            Err(msg) => errors.push(src.error_span(&c.span(), msg)),
        }
    }
    out
}

pub(super) fn validate_failsafe(
    src: &Source,
    raw: RawFailsafe,
    errors: &mut Vec<ConfigError>,
) -> FailsafeConfig {
    let d = FailsafeConfig::default();
    let ssh_port = match &raw.ssh_port {
        None => d.ssh_port,
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                errors.push(src.error_span(
                    &p.span(),
                    format!(
                        "failsafe.ssh_port = {} is out of range: expected 1 to 65535",
                        p.get_ref()
                    ),
                ));
                d.ssh_port
            }
        },
    };
    let mut f = FailsafeConfig {
        management: cidrs(src, &raw.management, errors),
        scrape: cidrs(src, &raw.scrape, errors),
        ssh: raw.ssh.unwrap_or(d.ssh),
        ssh_port,
        metrics: raw.metrics.unwrap_or(d.metrics),
        neighbor_discovery: raw.neighbor_discovery.unwrap_or(d.neighbor_discovery),
        dhcp: raw.dhcp.unwrap_or(d.dhcp),
        allow: Vec::new(),
    };
    let builtin = f.builtin_count();
    for (n, r) in raw.allow.into_iter().enumerate() {
        let name = r.name.get_ref().clone();
        let (line, column) = src.line_col(r.name.span().start);
        if builtin + n == MAX_FAILSAFE as usize {
            errors.push(src.error_span(
                &r.name.span(),
                format!(
                    "too many failsafe entries: {builtin} built-in and {} [[failsafe.allow]]; at most {MAX_FAILSAFE} in all",
                    n + 1
                ),
            ));
        }
        if !valid_name(&name) {
            errors.push(src.error_span(&r.name.span(), invalid_name("failsafe entry", &name)));
        }
        if BUILTIN_FAILSAFE.contains(&name.as_str()) || f.allow.iter().any(|a| a.name == name) {
            errors.push(src.error_span(
                &r.name.span(),
                format!(
                    "duplicate failsafe entry name '{name}' (built-in names: {})",
                    BUILTIN_FAILSAFE.join(", ")
                ),
            ));
        }
        let proto = match r.protocol.get_ref().as_str() {
            "tcp" => PROTO_TCP,
            "udp" => PROTO_UDP,
            "icmp" => PROTO_ICMP,
            "icmpv6" => PROTO_ICMPV6,
            other => {
                errors.push(src.error_span(
                    &r.protocol.span(),
                    format!("failsafe protocol '{other}' is not one of tcp, udp, icmp, icmpv6"),
                ));
                PROTO_TCP
            }
        };
        let has_ports = matches!(proto, PROTO_TCP | PROTO_UDP);
        let ports = match (&r.ports, &r.icmp_types) {
            (Some(p), _) if !has_ports => {
                errors.push(src.error_span(
                    &p.span(),
                    format!("failsafe entry '{name}': ports apply to tcp or udp"),
                ));
                None
            }
            (_, Some(t)) if has_ports => {
                errors.push(src.error_span(
                    &t.span(),
                    format!("failsafe entry '{name}': icmp_types apply to icmp or icmpv6"),
                ));
                None
            }
            (Some(p), _) => parse_ranges(src, "ports", u16::MAX, p, errors),
            (_, Some(t)) => parse_ranges(src, "icmp_types", 255, t, errors),
            (None, None) if has_ports => Some(vec![(0, u16::MAX)]),
            (None, None) => Some(vec![(0, 255)]),
        };
        let from = cidrs(src, r.from.get_ref(), errors);
        if r.from.get_ref().is_empty() {
            errors.push(src.error_span(
                &r.from.span(),
                format!("failsafe entry '{name}' has no `from` ranges: it would match nothing"),
            ));
        }
        f.allow.push(FailsafeAllow {
            name,
            proto,
            ports: ports.unwrap_or_default(),
            from,
            description: r.description,
            origin: Origin {
                file: src.name.to_string(),
                line,
                column,
            },
        });
    }
    f
}
