//! Turning a kernel record into an enriched JSON line.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use tierguard_common::{
    Reason, Verdict,
    decide::{NO_ID, NO_ZONE},
    event::Event,
    maps::Direction,
    packet::{FLAG_FRAGMENT, FLAG_L4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
};

/// What the agent knows that the kernel record does not carry.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub node: String,
    /// Policy generation live when the record is enriched.
    pub generation: u64,
    /// Policy hash live when the record is enriched.
    pub policy_hash: String,
    /// List names by list id.
    pub lists: Vec<String>,
    /// Limit names by limit id.
    pub limits: Vec<String>,
    /// Rule names by rule id.
    pub rules: Vec<String>,
    /// Zone names by zone id (`world`, `host`, then the configured ones).
    pub zones: Vec<String>,
    /// Wall-clock time minus the monotonic clock, in ns (to date kernel times).
    pub boot_offset_ns: i128,
}

/// One event line. Field meanings: docs/events.md.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventLine {
    pub version: u8,
    /// `packet` (block events are `events::blocks::BlockLine`s).
    pub event: &'static str,
    pub time: String,
    pub time_unix_ns: u64,
    pub node: String,
    pub interface: String,
    pub ifindex: u32,
    pub direction: &'static str,
    pub verdict: &'static str,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_id: Option<u16>,
    /// The segmentation rule that decided (rule reasons).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<u16>,
    /// Zones of the source and destination, when segmentation looked them up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_zone: Option<String>,
    /// The limit over which the packet was, or whose block dropped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_id: Option<u16>,
    pub policy_generation: u64,
    pub policy_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_number: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    pub fragment: bool,
    pub length: u32,
    pub suppressed: u64,
}

/// Interface names by ifindex, looked up once each.
#[derive(Default)]
pub struct Interfaces(HashMap<u32, String>);

impl Interfaces {
    pub fn name(&mut self, ifindex: u32) -> String {
        self.0
            .entry(ifindex)
            .or_insert_with(|| if_name(ifindex).unwrap_or_else(|| format!("if{ifindex}")))
            .clone()
    }
}

fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

fn addr(family: u8, a: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
        _ => None,
    }
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_ICMP => "icmp".into(),
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMPV6 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// TCP flags as letters in a fixed order (F S R P A U E C), e.g. "S" or "SA".
pub fn tcp_flag_letters(f: u8) -> String {
    const NAMES: [(u8, char); 8] = [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, 'A'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'C'),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// RFC 3339 UTC time with nanoseconds, from ns since the Unix epoch.
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let nanos = unix_ns % 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Wall clock minus monotonic clock, now.
pub fn boot_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into ts.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

/// The enriched line for a kernel record.
pub fn enrich(e: &Event, ctx: &Context, ifaces: &mut Interfaces) -> EventLine {
    let reason = Reason::from_u8(e.reason);
    let verdict = match e.verdict {
        0 => Verdict::Pass.name(),
        1 => Verdict::Drop.name(),
        2 => Verdict::Audit.name(),
        _ => "unknown",
    };
    let direction = match e.direction {
        0 => Direction::Ingress.name(),
        1 => Direction::Egress.name(),
        _ => "unknown",
    };
    let unix_ns =
        (i128::from(e.time_ns) + ctx.boot_offset_ns).clamp(0, i128::from(u64::MAX)) as u64;
    let ip = e.family == 4 || e.family == 6;
    let l4 = ip && e.packet_flags & FLAG_L4 != 0;
    let ports = l4 && (e.proto == PROTO_TCP || e.proto == PROTO_UDP);
    let icmp = l4 && (e.proto == PROTO_ICMP || e.proto == PROTO_ICMPV6);
    // The id is a limit's for limit reasons and for blocks a limit started
    // (an admin block has none); a list's otherwise.
    let by_limit = matches!(
        reason,
        Some(Reason::Limit | Reason::LimitAudit | Reason::Blocked)
    );
    let by_rule = matches!(
        reason,
        Some(Reason::RuleAllow | Reason::RuleAudit | Reason::RuleDeny)
    );
    let by_list = matches!(reason, Some(Reason::AllowList | Reason::DenyList));
    let id = (e.list_id != NO_ID).then_some(e.list_id);
    let (list_id, limit_id, rule_id) = match (by_limit, by_rule, by_list) {
        (true, _, _) => (None, id, None),
        (_, true, _) => (None, None, id),
        (_, _, true) => (id, None, None),
        _ => (None, None, None),
    };
    let zone = |z: u16| {
        (z != NO_ZONE).then(|| {
            ctx.zones
                .get(usize::from(z))
                .cloned()
                .unwrap_or_else(|| format!("zone{z}"))
        })
    };
    EventLine {
        version: e.version,
        event: "packet",
        time: rfc3339(unix_ns),
        time_unix_ns: unix_ns,
        node: ctx.node.clone(),
        interface: ifaces.name(e.ifindex),
        ifindex: e.ifindex,
        direction,
        verdict,
        reason: reason.map_or("unknown", Reason::name),
        list: list_id.map(|id| {
            ctx.lists
                .get(usize::from(id))
                .cloned()
                .unwrap_or_else(|| format!("list{id}"))
        }),
        list_id,
        rule: rule_id.map(|id| {
            ctx.rules
                .get(usize::from(id))
                .cloned()
                .unwrap_or_else(|| format!("rule{id}"))
        }),
        rule_id,
        src_zone: zone(e.src_zone),
        dst_zone: zone(e.dst_zone),
        limit: limit_id.map(|id| {
            ctx.limits
                .get(usize::from(id))
                .cloned()
                .unwrap_or_else(|| format!("limit{id}"))
        }),
        limit_id,
        policy_generation: ctx.generation,
        policy_hash: ctx.policy_hash.clone(),
        family: match e.family {
            4 => Some("ipv4"),
            6 => Some("ipv6"),
            _ => None,
        },
        src: addr(e.family, &e.src).map(|a| a.to_string()),
        dst: addr(e.family, &e.dst).map(|a| a.to_string()),
        protocol: ip.then(|| proto_name(e.proto)),
        protocol_number: ip.then_some(e.proto),
        src_port: ports.then_some(e.sport),
        dst_port: ports.then_some(e.dport),
        tcp_flags: (l4 && e.proto == PROTO_TCP).then(|| tcp_flag_letters(e.tcp_flags)),
        icmp_type: icmp.then_some(e.icmp_type),
        icmp_code: icmp.then_some(e.icmp_code),
        fragment: e.packet_flags & FLAG_FRAGMENT != 0,
        length: e.len,
        suppressed: e.suppressed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339(1_795_000_000_123_000_000),
            "2026-11-18T11:06:40.123000000Z"
        );
    }

    #[test]
    fn a_rule_decision_names_the_rule_and_the_zones_not_a_list() {
        let mut e = Event::EMPTY;
        e.reason = Reason::RuleDeny as u8;
        e.verdict = 1;
        e.list_id = 1;
        e.src_zone = 2;
        e.dst_zone = 1;
        let ctx = Context {
            lists: vec!["l0".into(), "l1".into()],
            rules: vec!["r0".into(), "ssh-only-from-bastion".into()],
            zones: vec!["world".into(), "host".into(), "edge".into()],
            ..Context::default()
        };
        let l = enrich(&e, &ctx, &mut Interfaces::default());
        assert_eq!(l.rule.as_deref(), Some("ssh-only-from-bastion"));
        assert_eq!(l.rule_id, Some(1));
        assert_eq!((l.list, l.list_id), (None, None));
        assert_eq!(l.src_zone.as_deref(), Some("edge"));
        assert_eq!(l.dst_zone.as_deref(), Some("host"));
        // A list decision: no rule, and no zones (not looked up).
        let mut e = Event::EMPTY;
        e.reason = Reason::DenyList as u8;
        e.list_id = 0;
        let l = enrich(&e, &ctx, &mut Interfaces::default());
        assert_eq!((l.list.as_deref(), l.rule), (Some("l0"), None));
        assert_eq!((l.src_zone, l.dst_zone), (None, None));
    }

    #[test]
    fn enriches_a_denied_icmp_record() {
        let mut e = Event::EMPTY;
        e.reason = Reason::DenyList as u8;
        e.verdict = 1;
        e.list_id = 1;
        e.ifindex = 1;
        e.family = 4;
        e.proto = PROTO_ICMP;
        e.packet_flags = FLAG_L4;
        e.icmp_type = 8;
        e.src[..4].copy_from_slice(&[203, 0, 113, 7]);
        e.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        e.len = 98;
        e.time_ns = 5;
        e.suppressed = 2;
        let ctx = Context {
            node: "n1".into(),
            generation: 3,
            policy_hash: "abc".into(),
            lists: vec!["a".into(), "blocked".into()],
            limits: Vec::new(),
            rules: Vec::new(),
            zones: Vec::new(),
            boot_offset_ns: 1_000,
        };
        let l = enrich(&e, &ctx, &mut Interfaces::default());
        assert_eq!(l.interface, "lo");
        assert_eq!(l.reason, "deny_list");
        assert_eq!(l.verdict, "drop");
        assert_eq!(l.list.as_deref(), Some("blocked"));
        assert_eq!(l.src.as_deref(), Some("203.0.113.7"));
        assert_eq!(l.dst.as_deref(), Some("10.0.0.1"));
        assert_eq!(l.protocol.as_deref(), Some("icmp"));
        assert_eq!(
            (l.icmp_type, l.icmp_code, l.src_port),
            (Some(8), Some(0), None)
        );
        assert_eq!(l.time_unix_ns, 1_005);
        assert_eq!(l.suppressed, 2);
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["policy_generation"], 3);
        assert!(json.get("tcp_flags").is_none());
    }

    #[test]
    fn limit_reasons_name_the_limit_not_a_list() {
        let ctx = Context {
            lists: vec!["l0".into(), "l1".into()],
            rules: Vec::new(),
            zones: Vec::new(),
            limits: vec!["syn-flood".into(), "udp".into()],
            ..Context::default()
        };
        let mut e = Event::EMPTY;
        e.reason = Reason::LimitAudit as u8;
        e.verdict = 2;
        e.list_id = 1;
        let l = enrich(&e, &ctx, &mut Interfaces::default());
        assert_eq!((l.verdict, l.event), ("audit", "packet"));
        assert_eq!((l.limit.as_deref(), l.limit_id), (Some("udp"), Some(1)));
        assert_eq!((l.list, l.list_id), (None, None));
        // A block made over the admin socket has no limit.
        e.reason = Reason::Blocked as u8;
        e.verdict = 1;
        e.list_id = NO_ID;
        let l = enrich(&e, &ctx, &mut Interfaces::default());
        assert_eq!((l.reason, l.limit, l.list), ("blocked", None, None));
    }

    #[test]
    fn tcp_records_carry_ports_and_flags_and_v6_addresses_print() {
        let mut e = Event::EMPTY;
        e.family = 6;
        e.proto = PROTO_TCP;
        e.packet_flags = FLAG_L4;
        e.tcp_flags = 0x12;
        e.sport = 40000;
        e.dport = 22;
        e.src = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets();
        let l = enrich(&e, &Context::default(), &mut Interfaces::default());
        assert_eq!(l.src.as_deref(), Some("2001:db8::7"));
        assert_eq!((l.src_port, l.dst_port), (Some(40000), Some(22)));
        assert_eq!(l.tcp_flags.as_deref(), Some("SA"));
        assert_eq!(l.list, None);
        assert_eq!(l.reason, "no_match");
    }
}
