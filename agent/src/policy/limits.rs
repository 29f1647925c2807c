//! `[[limits]]` compiled into the kernel's limit entries (layout:
//! `tierguard_common::limiter`, docs/design/limits.md).

use std::fmt::Write as _;
use std::time::Duration;

use tierguard_common::{
    limit::{MAX_BITS_PER_SECOND, MAX_BURST, MAX_PACKETS_PER_SECOND, Rate, Unit},
    limiter::{
        LIMIT_BPS, LIMIT_IFACES, LIMIT_PORTS, LIMIT_PPS, LIMIT_SYN, LIMIT_USED, LIMIT_ZONE,
        LimitAction, LimitSpec, OVERFLOW_FACTOR, PORT_WORDS, Per, Rates, matches,
    },
    packet::Packet,
};

use crate::config::{Config, Limit, Threshold};

/// A limit as compiled; its id is its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitInfo {
    pub name: String,
    pub per: Per,
    pub action: LimitAction,
    pub block_for: Option<Duration>,
    /// Where it is defined (file:line:column).
    pub origin: String,
}

/// Map contents for the limits of one policy generation.
#[derive(Debug, Clone, Default)]
pub struct CompiledLimits {
    pub infos: Vec<LimitInfo>,
    /// One entry per limit; `seed` and `ifindexes` are filled in when written
    /// (the seed is kept from the live maps, interfaces are resolved then).
    pub specs: Vec<LimitSpec>,
    /// Destination-port bitmap (`PORT_WORDS` words) of each limit with ports.
    pub ports: Vec<Option<Vec<u64>>>,
    /// Interface names of each limit (empty: every interface).
    pub interfaces: Vec<Vec<String>>,
}

/// A threshold as a `Rate`, or as `factor` times it (the overflow bucket),
/// capped at what a `Rate` holds. Thresholds were validated by the config.
fn rate(t: Threshold, unit: Unit, factor: u64) -> Rate {
    let max = match unit {
        Unit::Packets => MAX_PACKETS_PER_SECOND,
        Unit::Bits => MAX_BITS_PER_SECOND,
    };
    let per_second = t.per_second.saturating_mul(factor).min(max);
    let burst = t.burst.saturating_mul(factor).min(MAX_BURST);
    Rate::new(per_second, burst, unit).unwrap_or(Rate::NONE)
}

fn rates(l: &Limit, factor: u64) -> Rates {
    Rates {
        packets: l.pps.map_or(Rate::NONE, |t| rate(t, Unit::Packets, factor)),
        bits: l.bps.map_or(Rate::NONE, |t| rate(t, Unit::Bits, factor)),
    }
}

fn spec(l: &Limit) -> LimitSpec {
    let mut flags = LIMIT_USED;
    for (on, bit) in [
        (l.pps.is_some(), LIMIT_PPS),
        (l.bps.is_some(), LIMIT_BPS),
        (l.syn_only, LIMIT_SYN),
        (l.ports.is_some(), LIMIT_PORTS),
        (l.to_zone.is_some(), LIMIT_ZONE),
        (!l.interfaces.is_empty(), LIMIT_IFACES),
    ] {
        if on {
            flags |= bit;
        }
    }
    let global = l.per == Per::Global;
    LimitSpec {
        flags,
        proto: l.protocol.number(),
        per: l.per as u8,
        action: l.action as u8,
        prefix_v4: l.prefix_v4,
        prefix_v6: l.prefix_v6,
        to_zone: l.to_zone.as_ref().map_or(0, |z| z.id),
        block_ns: l.block_for.map_or(0, |d| d.as_nanos() as u64),
        per_key: if global { Rates::NONE } else { rates(l, 1) },
        shared: rates(l, if global { 1 } else { OVERFLOW_FACTOR }),
        ..LimitSpec::UNUSED
    }
}

fn bitmap(ranges: &[(u16, u16)]) -> Vec<u64> {
    let mut words = vec![0u64; PORT_WORDS as usize];
    for &(lo, hi) in ranges {
        for port in lo..=hi {
            words[usize::from(port >> 6)] |= 1 << (port & 63);
        }
    }
    words
}

impl CompiledLimits {
    pub fn compile(config: &Config) -> CompiledLimits {
        let mut c = CompiledLimits::default();
        for l in &config.limits {
            c.infos.push(LimitInfo {
                name: l.name.clone(),
                per: l.per,
                action: l.action,
                block_for: l.block_for,
                origin: l.origin.to_string(),
            });
            c.specs.push(spec(l));
            c.ports.push(l.ports.as_deref().map(bitmap));
            c.interfaces.push(l.interfaces.clone());
        }
        c
    }

    /// Ids of the limits that apply to `p`, with the destination in zone
    /// `dst_zone`, arriving on an interface named `iface` (`None`: any).
    /// Only the match: whether a limit drops depends on traffic.
    pub fn matching(&self, p: &Packet, iface: Option<&str>, dst_zone: u16) -> Vec<usize> {
        (0..self.specs.len())
            .filter(|&i| {
                let mut s = self.specs[i];
                // Interfaces by name: an unresolved query matches them all.
                let on_iface = self.interfaces[i].is_empty()
                    || iface.is_none_or(|n| self.interfaces[i].iter().any(|x| x == n));
                s.flags &= !LIMIT_IFACES;
                on_iface
                    && matches(
                        &s,
                        p,
                        0,
                        |port| {
                            self.ports[i].as_ref().is_some_and(|w| {
                                w[usize::from(port >> 6)] & (1 << (port & 63)) != 0
                            })
                        },
                        || dst_zone,
                    )
            })
            .collect()
    }
}

/// What a limit matches, how it counts, its rates and action: one line
/// for `check` and `explain`.
pub fn describe(l: &Limit) -> String {
    let mut what = l.protocol.name().to_string();
    if l.syn_only {
        what.push_str(" syn");
    }
    if let Some(ports) = &l.ports {
        let p: Vec<String> = ports
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        let _ = write!(what, " ports {}", p.join(","));
    }
    if let Some(z) = &l.to_zone {
        let _ = write!(what, " to {}", z.name);
    }
    if !l.interfaces.is_empty() {
        let _ = write!(what, " on {}", l.interfaces.join(","));
    }
    let per = match l.per {
        Per::SourcePrefix => format!("source /{} /{}", l.prefix_v4, l.prefix_v6),
        p => p.name().to_string(),
    };
    let mut rate = Vec::new();
    if let Some(t) = l.pps {
        rate.push(format!("{} pps (burst {})", t.per_second, t.burst));
    }
    if let Some(t) = l.bps {
        rate.push(format!("{} bps (burst {} bits)", t.per_second, t.burst));
    }
    let action = match l.block_for {
        Some(d) => format!("block {}", crate::config::format_duration(d)),
        None => l.action.name().to_string(),
    };
    format!("{what}, per {per}, {}, then {action}", rate.join(" and "))
}

/// What the policy hash covers of the limits.
pub fn hash_text(config: &Config, canon: &mut String) {
    for l in &config.limits {
        let _ = writeln!(
            canon,
            "limit {} {} syn={} ports={:?} zone={:?} ifaces={:?} per={} v4={} v6={} pps={:?} bps={:?} {} {:?}",
            l.name,
            l.protocol.name(),
            l.syn_only,
            l.ports,
            l.to_zone.as_ref().map(|z| &z.name),
            l.interfaces,
            l.per.name(),
            l.prefix_v4,
            l.prefix_v6,
            l.pps.map(|t| (t.per_second, t.burst)),
            l.bps.map(|t| (t.per_second, t.burst)),
            l.action.name(),
            l.block_for,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tierguard_common::packet::{FLAG_L4, PROTO_TCP, PROTO_UDP, TCP_SYN};

    use super::*;

    fn compile(text: &str) -> CompiledLimits {
        let c = Config::load_str(text, "p.toml", Path::new(".")).unwrap();
        CompiledLimits::compile(&c)
    }

    fn tcp(dport: u16, flags: u8) -> Packet {
        let mut p = Packet::EMPTY;
        p.family = 4;
        p.proto = PROTO_TCP;
        p.flags = FLAG_L4;
        p.dport = dport;
        p.tcp_flags = flags;
        p
    }

    #[test]
    fn specs_carry_flags_rates_and_the_overflow_at_four_times() {
        let c = compile(
            r#"
[[limits]]
name = "syn"
protocol = "tcp"
tcp_flags = "syn"
ports = [443, "8000-8001"]
pps = 100
burst = 200
action = "block"
block_for = "1m"

[[limits]]
name = "all"
per = "global"
bps = "1G"
"#,
        );
        let s = c.specs[0];
        assert_eq!(
            s.flags,
            LIMIT_USED | LIMIT_PPS | LIMIT_SYN | LIMIT_PORTS,
            "{:#x}",
            s.flags
        );
        assert_eq!((s.proto, s.action), (PROTO_TCP, LimitAction::Block as u8));
        assert_eq!(s.block_ns, 60_000_000_000);
        assert_eq!(
            (s.per_key.packets.per_second(), s.per_key.packets.burst()),
            (100, 200)
        );
        assert_eq!(
            (s.shared.packets.per_second(), s.shared.packets.burst()),
            (400, 800)
        );
        let words = c.ports[0].as_ref().unwrap();
        let set: Vec<u16> = (0..=u16::MAX)
            .filter(|&p| words[usize::from(p >> 6)] & (1 << (p & 63)) != 0)
            .collect();
        assert_eq!(set, [443, 8000, 8001]);
        // A global limit keeps one bucket at its own rate.
        let g = c.specs[1];
        assert_eq!(g.flags, LIMIT_USED | LIMIT_BPS);
        assert_eq!(g.per_key, Rates::NONE);
        assert_eq!(
            (g.shared.bits.per_second(), g.shared.bits.burst()),
            (1_000_000_000, 1_000_000_000)
        );
        assert!(c.ports[1].is_none());
    }

    #[test]
    fn matching_names_the_limits_a_packet_meets() {
        let c = compile(
            r#"
[[limits]]
name = "syn"
protocol = "tcp"
tcp_flags = "syn"
ports = [443]
interfaces = ["eth0"]
pps = 10

[[limits]]
name = "udp"
protocol = "udp"
pps = 10

[[limits]]
name = "to-host"
to_zone = "host"
pps = 10
"#,
        );
        assert_eq!(c.matching(&tcp(443, TCP_SYN), Some("eth0"), 0), [0]);
        assert_eq!(c.matching(&tcp(443, TCP_SYN), None, 0), [0]);
        assert!(c.matching(&tcp(443, TCP_SYN), Some("eth1"), 0).is_empty());
        assert!(c.matching(&tcp(80, TCP_SYN), Some("eth0"), 0).is_empty());
        assert_eq!(c.matching(&tcp(443, TCP_SYN), Some("eth0"), 1), [0, 2]);
        let mut u = tcp(53, 0);
        u.proto = PROTO_UDP;
        assert_eq!(c.matching(&u, None, 1), [1, 2]);
    }
}
