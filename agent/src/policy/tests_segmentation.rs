//! Zones, rules and failsafe as compiled, checked through the same decision
//! the kernel runs (`CompiledPolicy::decide`).

use std::net::IpAddr;
use std::path::Path;

use tierguard_common::{
    decide::{Decision, NO_ZONE},
    maps::Direction,
    packet::{FLAG_L4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Packet, TCP_SYN},
    reason::{Reason, Verdict},
    segment::{
        PORT_BLOCK, PROTO_OTHER, RuleAction, SEG_AUDIT_MODE, SEG_DEFAULT_ALLOW, SEG_ENABLED,
        SEG_FAILSAFE, SEG_INTRA_ALLOW, ZONE_HOST, ZONE_WORLD, decode_rule,
    },
};

use super::*;
use tierguard_common::segment::{PAIR_TABLE, class_index};

fn config(text: &str) -> Config {
    Config::load_str(text, "t.toml", Path::new(".")).unwrap()
}

fn compile_on(text: &str, host: &[&str]) -> CompiledPolicy {
    let host: Vec<IpAddr> = host.iter().map(|a| a.parse().unwrap()).collect();
    CompiledPolicy::compile(&config(text), &host).unwrap()
}

fn compile(text: &str) -> CompiledPolicy {
    compile_on(text, &[])
}

/// A first packet: TCP SYN or UDP to `port`, ICMP of type `port`, or
/// another protocol.
fn pkt(src: &str, dst: &str, proto: u8, port: u16) -> Packet {
    let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut p = Packet::EMPTY;
    let put = |a: IpAddr, out: &mut [u8; 16]| match a {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => *out = a.octets(),
    };
    put(s, &mut p.src);
    put(d, &mut p.dst);
    p.family = if s.is_ipv4() { 4 } else { 6 };
    p.proto = proto;
    p.flags = FLAG_L4;
    match proto {
        PROTO_TCP | PROTO_UDP => {
            p.sport = 40000;
            p.dport = port;
            p.tcp_flags = if proto == PROTO_TCP { TCP_SYN } else { 0 };
        }
        PROTO_ICMP | PROTO_ICMPV6 => p.icmp_type = port as u8,
        _ => {}
    }
    p
}

fn ingress(p: &CompiledPolicy, src: &str, dst: &str, proto: u8, port: u16) -> Decision {
    p.decide(Direction::Ingress, &pkt(src, dst, proto, port))
}

/// (reason, rule name or failsafe/list id) of a decision.
fn why(p: &CompiledPolicy, d: Decision) -> (Reason, String) {
    let name = match d.reason {
        Reason::RuleAllow | Reason::RuleAudit | Reason::RuleDeny => {
            p.segmentation.rules[usize::from(d.id)].name.clone()
        }
        Reason::Failsafe => p.segmentation.failsafe[usize::from(d.id)].name.clone(),
        Reason::AllowList | Reason::DenyList => p.lists[usize::from(d.id)].name.clone(),
        _ => String::new(),
    };
    (d.reason, name)
}

const TIERS: &str = r#"
[[zones]]
name = "a"
cidrs = ["10.0.0.0/8", "fd00::/16"]
[[zones]]
name = "b"
cidrs = ["10.1.0.0/16", "fd00:1::/32"]
[[zones]]
name = "c"
cidrs = ["10.1.2.0/24"]
"#;

#[test]
fn port_edges_between_tables_and_blocks() {
    // The same rules kept as a port set (5 runs), and as a port table when
    // a third rule on the pair adds 60 more runs far above them.
    let filler: Vec<String> = (0..60).map(|i| (40000 + 2 * i).to_string()).collect();
    for extra in [
        String::new(),
        format!(
            "[[rules]]\nname = \"filler\"\nfrom = \"world\"\nto = \"a\"\nprotocol = \"tcp\"\nports = [{}]\naction = \"allow\"\n",
            filler.join(", ")
        ),
    ] {
        let p = compile(&format!(
            r#"{TIERS}
[[rules]]
name = "edges"
from = "world"
to = "a"
protocol = "tcp"
ports = [0, 255, 256, 65535, "512-1023"]
action = "allow"
[[rules]]
name = "mid"
from = "world"
to = "a"
protocol = "tcp"
ports = ["300-511"]
action = "allow"
{extra}"#
        ));
        let at = |port| why(&p, ingress(&p, "192.0.2.1", "10.9.9.9", PROTO_TCP, port));
        let allow = |n: &str| (Reason::RuleAllow, n.to_string());
        let deny = (Reason::DefaultDeny, String::new());
        for (port, want) in [
            (0, allow("edges")),
            (1, deny.clone()),
            (254, deny.clone()),
            (255, allow("edges")),
            (256, allow("edges")),
            (257, deny.clone()),
            (299, deny.clone()),
            (300, allow("mid")),
            (511, allow("mid")),
            (512, allow("edges")),
            (1023, allow("edges")),
            (1024, deny.clone()),
            (65534, deny.clone()),
            (65535, allow("edges")),
        ] {
            assert_eq!(at(port), want, "port {port} {}", extra.is_empty());
        }
        let s = &p.segmentation;
        assert_eq!(s.pairs.len(), 1);
        let entry = s.pair_entry(s.pairs[0].2, class_index(PROTO_TCP));
        if extra.is_empty() {
            assert!(entry != 0 && entry & PAIR_TABLE == 0, "a port set");
            assert_eq!((s.port_sets.len(), s.port_tables.len()), (1, 0));
        } else {
            // High bytes 2 and 3 (512-1023) are whole: entries, not blocks;
            // 0, 1, 255 and the filler's 156 are partly covered: blocks.
            assert_ne!(entry & PAIR_TABLE, 0, "a port table");
            let t = &s.port_tables[(entry & !PAIR_TABLE) as usize];
            assert_eq!(decode_rule(t.entries[2]).map(|r| r.0), Some(0));
            assert_eq!(t.entries[3], t.entries[2]);
            for hi in [0, 1, 156, 255] {
                assert_ne!(t.entries[hi] & PORT_BLOCK, 0, "hi {hi}");
            }
            assert_eq!(t.entries[4], 0);
            assert_eq!(s.port_blocks.len(), 4);
            assert!(s.port_sets.is_empty());
        }
        // The runs read back from the tables are the rules' ranges.
        let runs: Vec<(u16, u16, u16)> = s
            .runs(ZONE_WORLD, 2, PROTO_TCP)
            .into_iter()
            .filter(|r| !(40000..41000).contains(&r.0))
            .map(|r| (r.0, r.1, r.2))
            .collect();
        assert_eq!(
            runs,
            [
                (0, 0, 0),
                (255, 256, 0),
                (300, 511, 1),
                (512, 1023, 0),
                (65535, 65535, 0)
            ]
        );
    }
}

#[test]
fn the_most_specific_zone_wins_and_ipv6_works_alike() {
    let p = compile(&format!(
        r#"{TIERS}
[[rules]]
name = "to-b"
from = "world"
to = "b"
protocol = "tcp"
ports = [443]
action = "allow"
[[rules]]
name = "ping-b"
from = "world"
to = "b"
protocol = "icmpv6"
icmp_types = [128]
action = "allow"
"#
    ));
    let s = &p.segmentation;
    let zone = |a: &str| s.zone_of(a.parse().unwrap());
    assert_eq!(zone("10.9.0.1"), 2);
    assert_eq!(zone("10.1.9.1"), 3);
    assert_eq!(zone("10.1.2.1"), 4);
    assert_eq!(zone("11.0.0.1"), ZONE_WORLD);
    assert_eq!(zone("fd00:1::1"), 3);
    assert_eq!(zone("fd00:2::1"), 2);
    assert_eq!(zone("fd01::1"), ZONE_WORLD);
    let d = ingress(&p, "192.0.2.1", "10.1.9.9", PROTO_TCP, 443);
    assert_eq!(
        (d.reason, d.src_zone, d.dst_zone),
        (Reason::RuleAllow, ZONE_WORLD, 3)
    );
    // 10.1.2.0/24 is zone c, not b: the rule does not apply.
    let d = ingress(&p, "192.0.2.1", "10.1.2.9", PROTO_TCP, 443);
    assert_eq!((d.reason, d.dst_zone), (Reason::DefaultDeny, 4));
    let d = ingress(&p, "2001:db8::1", "fd00:1::5", PROTO_ICMPV6, 128);
    assert_eq!(d.reason, Reason::RuleAllow);
    let d = ingress(&p, "2001:db8::1", "fd00:1::5", PROTO_ICMPV6, 129);
    assert_eq!(d.reason, Reason::DefaultDeny);
    // The IPv4 rule does not open IPv6 443, nor UDP 443.
    assert_eq!(
        ingress(&p, "2001:db8::1", "fd00:1::5", PROTO_TCP, 443).reason,
        Reason::RuleAllow
    );
    assert_eq!(
        ingress(&p, "192.0.2.1", "10.1.9.9", PROTO_UDP, 443).reason,
        Reason::DefaultDeny
    );
}

#[test]
fn host_is_the_node_addresses_no_zone_covers() {
    let p = compile_on(
        &format!(
            "{TIERS}[[rules]]\nname = \"ssh-host\"\nfrom = \"world\"\nto = \"host\"\nprotocol = \"tcp\"\nports = [22]\naction = \"allow\"\n"
        ),
        &["10.1.2.3", "192.0.2.50", "::1", "fd00::7"],
    );
    let s = &p.segmentation;
    let host: Vec<String> = s
        .zone_v4
        .iter()
        .filter(|z| z.1 == ZONE_HOST)
        .map(|z| z.0.to_string())
        .chain(
            s.zone_v6
                .iter()
                .filter(|z| z.1 == ZONE_HOST)
                .map(|z| z.0.to_string()),
        )
        .collect();
    assert_eq!(host, ["192.0.2.50/32", "::1/128"]);
    assert_eq!(
        s.zone_of("10.1.2.3".parse().unwrap()),
        4,
        "its tier governs it"
    );
    let d = ingress(&p, "198.51.100.1", "192.0.2.50", PROTO_TCP, 22);
    assert_eq!((d.reason, d.dst_zone), (Reason::RuleAllow, ZONE_HOST));
    let d = ingress(&p, "198.51.100.1", "10.1.2.3", PROTO_TCP, 22);
    assert_eq!(d.reason, Reason::DefaultDeny);
    let names: Vec<&str> = s.zones.iter().map(|z| z.name.as_str()).collect();
    assert_eq!(names, ["world", "host", "a", "b", "c"]);
}

const OVERLAP: &str = r#"
[[rules]]
name = "wide-allow"
from = "any"
to = "a"
protocol = "tcp"
ports = ["1-1000"]
action = "allow"
[[rules]]
name = "audit-mid"
from = "world"
to = "a"
protocol = "tcp"
ports = ["500-600"]
action = "audit"
[[rules]]
name = "deny-550"
from = "world"
to = ["a", "b"]
protocol = "tcp"
ports = [550]
action = "deny"
[[rules]]
name = "allow-again"
from = "world"
to = "a"
protocol = "tcp"
ports = ["1-10", 550]
action = "allow"
"#;

#[test]
fn deny_beats_audit_beats_allow_whatever_the_order() {
    let forward = compile(&format!("{TIERS}{OVERLAP}"));
    // The same rules in reverse order decide the same (rule ids differ).
    let mut blocks: Vec<&str> = OVERLAP.split("[[rules]]").skip(1).collect();
    blocks.reverse();
    let reversed = compile(&format!("{TIERS}[[rules]]{}", blocks.join("[[rules]]")));
    for p in [&forward, &reversed] {
        let at = |port| why(p, ingress(p, "192.0.2.1", "10.9.9.9", PROTO_TCP, port));
        assert_eq!(at(100), (Reason::RuleAllow, "wide-allow".into()));
        assert_eq!(at(500), (Reason::RuleAudit, "audit-mid".into()));
        assert_eq!(at(550), (Reason::RuleDeny, "deny-550".into()));
        assert_eq!(at(601), (Reason::RuleAllow, "wide-allow".into()));
        assert_eq!(at(1001), (Reason::DefaultDeny, String::new()));
        assert_eq!(
            ingress(p, "192.0.2.1", "10.9.9.9", PROTO_TCP, 550).verdict,
            Verdict::Drop
        );
        assert_eq!(
            ingress(p, "192.0.2.1", "10.9.9.9", PROTO_TCP, 500).verdict,
            Verdict::Audit
        );
    }
    // Equal actions: the lowest rule id is credited.
    let credited = |p: &CompiledPolicy| why(p, ingress(p, "192.0.2.1", "10.9.9.9", PROTO_TCP, 5)).1;
    assert_eq!(credited(&forward), "wide-allow");
    assert_eq!(credited(&reversed), "allow-again");
}

#[test]
fn precedence_matches_a_naive_evaluation_on_random_rules() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..20 {
        let mut text = String::from(TIERS);
        let mut rules: Vec<(Vec<(u16, u16)>, RuleAction)> = Vec::new();
        for r in 0..(1 + next(8)) {
            let mut ranges = Vec::new();
            for _ in 0..(1 + next(4)) {
                // Around the table/block boundaries, sometimes wide.
                let lo: u16 = [0, 1, 255, 256, 511, 512, 65280, 65535][next(8) as usize];
                let lo = lo.saturating_add(next(3) as u16 * u16::from(next(2) == 0));
                let len = [0, 1, 255, 256, 1000][next(5) as usize];
                ranges.push((lo, lo.saturating_add(len)));
            }
            let action = [RuleAction::Allow, RuleAction::Audit, RuleAction::Deny][next(3) as usize];
            let ports: Vec<String> = ranges.iter().map(|(l, h)| format!("\"{l}-{h}\"")).collect();
            text.push_str(&format!(
                "[[rules]]\nname = \"r{r}\"\nfrom = \"world\"\nto = \"a\"\nprotocol = \"tcp\"\nports = [{}]\naction = \"{}\"\n",
                ports.join(", "),
                action.name()
            ));
            rules.push((ranges, action));
        }
        let Ok(c) = Config::load_str(&text, "t.toml", Path::new(".")) else {
            continue; // two identical random rules with different actions
        };
        let p = CompiledPolicy::compile(&c, &[]).unwrap();
        for port in 0..=u16::MAX {
            let want = rules
                .iter()
                .enumerate()
                .filter(|(_, (r, _))| r.iter().any(|&(l, h)| (l..=h).contains(&port)))
                .max_by_key(|(id, (_, a))| (*a, std::cmp::Reverse(*id)))
                .map(|(id, (_, a))| (id as u16, *a));
            let d = ingress(&p, "192.0.2.1", "10.9.9.9", PROTO_TCP, port);
            let got = match d.reason {
                Reason::RuleAllow => Some((d.id, RuleAction::Allow)),
                Reason::RuleAudit => Some((d.id, RuleAction::Audit)),
                Reason::RuleDeny => Some((d.id, RuleAction::Deny)),
                _ => None,
            };
            assert_eq!(got, want, "port {port} in\n{text}");
        }
    }
}

#[test]
fn defaults_between_and_within_zones() {
    let p = compile(TIERS);
    assert_eq!(
        p.segmentation.meta.flags & (SEG_ENABLED | SEG_DEFAULT_ALLOW | SEG_INTRA_ALLOW),
        SEG_ENABLED | SEG_INTRA_ALLOW
    );
    let d = ingress(&p, "10.9.0.1", "10.9.0.2", PROTO_TCP, 22);
    assert_eq!(
        (d.reason, d.src_zone, d.dst_zone),
        (Reason::DefaultAllow, 2, 2)
    );
    assert_eq!(
        ingress(&p, "10.9.0.1", "10.1.0.2", PROTO_TCP, 22).reason,
        Reason::DefaultDeny
    );
    // world to world is "within a zone" too.
    assert_eq!(
        ingress(&p, "192.0.2.1", "198.51.100.1", PROTO_UDP, 53).reason,
        Reason::DefaultAllow
    );
    let p = compile(&format!(
        "[segmentation]\ndefault = \"allow\"\nintra_zone = \"deny\"\n{TIERS}"
    ));
    assert_eq!(
        ingress(&p, "10.9.0.1", "10.9.0.2", PROTO_TCP, 22).reason,
        Reason::DefaultDeny
    );
    assert_eq!(
        ingress(&p, "10.9.0.1", "10.1.0.2", PROTO_TCP, 22).reason,
        Reason::DefaultAllow
    );
}

#[test]
fn any_protocol_covers_other_protocols_at_port_zero() {
    let p = compile(&format!(
        "{TIERS}[[rules]]\nname = \"all\"\nfrom = \"a\"\nto = \"b\"\naction = \"allow\"\n"
    ));
    for (proto, port) in [
        (PROTO_TCP, 65535),
        (PROTO_UDP, 1),
        (PROTO_ICMP, 255),
        (47, 0),
    ] {
        let d = ingress(&p, "10.9.0.1", "10.1.0.1", proto, port);
        assert_eq!(d.reason, Reason::RuleAllow, "proto {proto}");
    }
    // One pair, every class covered: TCP and UDP share one port set (every
    // port), ICMP and ICMPv6 another (every type), other protocols a third.
    let s = &p.segmentation;
    assert_eq!(s.pairs.len(), 1);
    let record = s.pair_records[usize::from(s.pairs[0].2)];
    for class in [PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, PROTO_OTHER] {
        assert_ne!(record.entries[class_index(class)], 0, "class {class}");
    }
    assert_eq!(s.port_sets.len(), 3);
}

#[test]
fn failsafe_masks_carry_the_entries_of_containing_ranges() {
    let p = compile(&format!(
        r#"{TIERS}
[segmentation]
intra_zone = "deny"
[agent]
metrics_address = "0.0.0.0:9100"
[failsafe]
management = ["10.0.0.0/8"]
scrape = ["10.1.2.0/24"]
[[failsafe.allow]]
name = "bgp"
protocol = "tcp"
ports = [179]
from = ["10.1.0.0/16"]
"#
    ));
    let s = &p.segmentation;
    let names: Vec<&str> = s.failsafe.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ssh",
            "metrics",
            "neighbor_discovery",
            "dhcp",
            "dhcpv6",
            "bgp"
        ]
    );
    assert_ne!(s.meta.flags & SEG_FAILSAFE, 0);
    let (ssh, metrics, nd, dhcp, dhcpv6, bgp) = (1, 2, 4, 8, 16, 32);
    let v4: Vec<(String, u32)> = s
        .failsafe_v4
        .iter()
        .map(|(n, m)| (n.to_string(), *m))
        .collect();
    assert_eq!(
        v4,
        [
            ("0.0.0.0/0".to_string(), dhcp),
            ("10.0.0.0/8".to_string(), dhcp | ssh),
            ("10.1.0.0/16".to_string(), dhcp | ssh | bgp),
            ("10.1.2.0/24".to_string(), dhcp | ssh | bgp | metrics),
        ]
    );
    assert_eq!(s.failsafe_v6, [("::/0".parse().unwrap(), nd | dhcpv6)]);
    assert_eq!(s.failsafe_port_mask(0, 22), ssh);
    assert_eq!(s.failsafe_port_mask(0, 9100), metrics);
    assert_eq!(s.failsafe_port_mask(3, 135), nd);
    assert_eq!(s.failsafe_port_mask(3, 138), 0);
    // Checked before the default deny, and before the rules.
    let at = |src: &str, port| why(&p, ingress(&p, src, "10.9.9.9", PROTO_TCP, port));
    assert_eq!(at("10.1.2.3", 22), (Reason::Failsafe, "ssh".into()));
    assert_eq!(at("10.1.2.3", 9100), (Reason::Failsafe, "metrics".into()));
    assert_eq!(at("10.1.9.3", 9100).0, Reason::DefaultDeny);
    assert_eq!(at("10.1.9.3", 179), (Reason::Failsafe, "bgp".into()));
    assert_eq!(at("10.2.0.1", 179).0, Reason::DefaultDeny);
    assert_eq!(at("192.0.2.1", 22).0, Reason::DefaultDeny);
    // Egress: the node-side port is the source port, the remote the destination.
    let mut reply = pkt("10.9.9.9", "10.1.2.3", PROTO_TCP, 40000);
    reply.sport = 22;
    assert_eq!(
        why(&p, p.decide(Direction::Egress, &reply)),
        (Reason::Failsafe, "ssh".into())
    );
    let ns = ingress(&p, "fe80::1", "fd00::1", PROTO_ICMPV6, 135);
    assert_eq!(why(&p, ns), (Reason::Failsafe, "neighbor_discovery".into()));
    let dhcp_reply = ingress(&p, "10.9.0.1", "10.1.0.5", PROTO_UDP, 68);
    assert_eq!(why(&p, dhcp_reply), (Reason::Failsafe, "dhcp".into()));
}

#[test]
fn failsafe_entries_without_ranges_take_no_entries_and_all_off_clears_the_flag() {
    let p = compile("");
    let s = &p.segmentation;
    assert_eq!(s.failsafe.len(), 5);
    assert!(
        s.failsafe_ports.iter().all(|&(c, _, _)| c == 1 || c == 3),
        "no tcp: ssh and metrics have no ranges"
    );
    let p = compile("[failsafe]\nneighbor_discovery = false\ndhcp = false\n");
    assert_eq!(p.segmentation.meta.flags & SEG_FAILSAFE, 0);
    assert!(p.segmentation.failsafe_ports.is_empty());
}

#[test]
fn without_segmentation_lists_decide_and_the_rest_passes() {
    let p = compile_on(
        "[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\"]\n",
        &["10.0.0.1", "::1"],
    );
    assert_eq!(p.segmentation.meta.flags & SEG_ENABLED, 0);
    assert!(p.segmentation.pairs.is_empty() && p.segmentation.zone_v4.is_empty());
    let d = ingress(&p, "203.0.113.5", "10.0.0.1", PROTO_TCP, 22);
    assert_eq!((d.reason, d.verdict), (Reason::DenyList, Verdict::Drop));
    let d = ingress(&p, "198.51.100.5", "10.0.0.1", PROTO_TCP, 22);
    assert_eq!((d.reason, d.src_zone), (Reason::NoMatch, NO_ZONE));
    // Egress skips the lists.
    let d = p.decide(
        Direction::Egress,
        &pkt("10.0.0.1", "203.0.113.5", PROTO_TCP, 22),
    );
    assert_eq!(d.reason, Reason::NoMatch);
}

#[test]
fn audit_mode_reports_drops_and_passes_them() {
    let text = format!(
        "mode = \"audit\"\n{TIERS}[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\"]\n\
         [[rules]]\nname = \"no\"\nfrom = \"world\"\nto = \"a\"\nprotocol = \"tcp\"\nports = [23]\naction = \"deny\"\n"
    );
    let p = compile(&text);
    assert_ne!(p.segmentation.meta.flags & SEG_AUDIT_MODE, 0);
    for (src, port, reason) in [
        ("203.0.113.5", 22, Reason::DenyList),
        ("192.0.2.1", 23, Reason::RuleDeny),
        ("192.0.2.1", 24, Reason::DefaultDeny),
    ] {
        let d = ingress(&p, src, "10.9.9.9", PROTO_TCP, port);
        assert_eq!((d.reason, d.verdict), (reason, Verdict::Audit));
    }
    assert_eq!(
        ingress(&p, "10.9.0.1", "10.9.9.9", PROTO_TCP, 1).verdict,
        Verdict::Pass
    );
    // Audit mode without segmentation: the lists only report.
    let p = compile(
        "mode = \"audit\"\n[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\"]\n",
    );
    let d = ingress(&p, "203.0.113.5", "10.0.0.1", PROTO_TCP, 22);
    assert_eq!((d.reason, d.verdict), (Reason::DenyList, Verdict::Audit));
}

#[test]
fn equal_port_sets_tables_and_records_are_stored_once() {
    // 60 single ports, every other one from 1000: more runs than a port set
    // holds, so a port table (with blocks for the two high bytes they touch).
    let many: Vec<String> = (0..60).map(|i| (1000 + 2 * i).to_string()).collect();
    let p = compile(&format!(
        r#"{TIERS}
[[rules]]
name = "https"
from = ["world", "c"]
to = ["a", "b"]
protocol = "tcp"
ports = [443]
action = "allow"
[[rules]]
name = "https-again"
from = "host"
to = "a"
protocol = "tcp"
ports = [443]
action = "allow"
[[rules]]
name = "https-and-more"
from = "host"
to = "b"
protocol = "tcp"
ports = [443, "8000-8191"]
action = "allow"
[[rules]]
name = "late"
from = "world"
to = "a"
protocol = "tcp"
ports = [443]
action = "allow"
[[rules]]
name = "extra"
from = "world"
to = "b"
protocol = "tcp"
ports = ["9000-9099"]
action = "allow"
[[rules]]
name = "many"
from = ["a", "b"]
to = "c"
protocol = "tcp"
ports = [{}]
action = "allow"
"#,
        many.join(", ")
    ));
    let s = &p.segmentation;
    assert_eq!(s.pairs.len(), 8);
    let entry = |src, dst| s.pair_entry(s.pair_record(src, dst), class_index(PROTO_TCP));
    // world->a ("https"; "late" never wins), c->a and c->b say the same:
    // one record, one port set of one run.
    let https = entry(ZONE_WORLD, 2);
    assert!(https != 0 && https & PAIR_TABLE == 0);
    assert_eq!(s.pair_record(ZONE_WORLD, 2), s.pair_record(4, 2));
    assert_eq!(s.pair_record(ZONE_WORLD, 2), s.pair_record(4, 3));
    assert_eq!(s.runs(4, 3, PROTO_TCP), [(443, 443, 0, RuleAction::Allow)]);
    // Ranges with few runs are port sets too: 443 and 8000-8191 (host->b),
    // 443 and 9000-9099 (world->b).
    assert_eq!(
        s.runs(ZONE_HOST, 3, PROTO_TCP),
        [
            (443, 443, 2, RuleAction::Allow),
            (8000, 8191, 2, RuleAction::Allow)
        ]
    );
    assert_eq!(
        s.runs(ZONE_WORLD, 3, PROTO_TCP),
        [
            (443, 443, 0, RuleAction::Allow),
            (9000, 9099, 4, RuleAction::Allow)
        ]
    );
    // Distinct sets: https, https-again, https-and-more, https + extra; a
    // line each. "many" over two pairs: one table, one record.
    assert_eq!(s.port_sets.len(), 4);
    assert_eq!(s.port_tables.len(), 1);
    assert_eq!(s.port_blocks.len(), 2);
    assert_eq!(entry(2, 4), PAIR_TABLE);
    assert_eq!(s.pair_record(2, 4), s.pair_record(3, 4));
    // Records: https, https-again, https-and-more, https + extra, many (and
    // the empty record 0).
    assert_eq!(s.pair_records.len(), 6);
    let runs = s.runs(3, 4, PROTO_TCP);
    assert_eq!(runs.len(), 60);
    assert_eq!(runs[59], (1118, 1118, 5, RuleAction::Allow));
    for (port, want) in [(1000, true), (1001, false), (1118, true), (1120, false)] {
        // b (10.1.0.0/16) to c (10.1.2.0/24).
        let d = ingress(&p, "10.1.0.1", "10.1.2.1", PROTO_TCP, port);
        assert_eq!(d.reason == Reason::RuleAllow, want, "port {port}");
    }
}

/// A port set longer than a line is read across its lines, by the same
/// code as the kernel.
#[test]
fn port_sets_span_lines() {
    // 50 single ports: 8 lines of up to 7 runs.
    let ports: Vec<String> = (0..50).map(|i| (2000 + 3 * i).to_string()).collect();
    let p = compile(&format!(
        "{TIERS}[[rules]]\nname = \"spread\"\nfrom = \"a\"\nto = \"b\"\nprotocol = \"udp\"\nports = [{}]\naction = \"allow\"\n",
        ports.join(", ")
    ));
    let s = &p.segmentation;
    assert_eq!(s.port_sets.len(), 8);
    assert!(s.port_sets[..7].iter().all(|l| l.more == 1));
    assert_eq!(s.port_sets[7].more, 0);
    for (port, want) in [
        (2000, true),
        (2001, false),
        (2147, true),
        (2150, false),
        (1999, false),
    ] {
        let d = ingress(&p, "10.9.0.1", "10.1.0.1", PROTO_UDP, port);
        assert_eq!(d.reason == Reason::RuleAllow, want, "port {port}");
    }
}

/// The error compiling `rules` rules over `zones` zones, rule `r` from zone
/// `r % zones` to `r / zones`, naming `ports` single ports `step` apart from
/// `r + 1` (so no two rules share a port set).
fn one_rule_per_pair(zones: u32, rules: u32, ports: u32, step: u32) -> String {
    let mut text = String::new();
    for i in 0..zones {
        text.push_str(&format!(
            "[[zones]]\nname = \"z{i}\"\ncidrs = [\"10.0.{i}.0/24\"]\n"
        ));
    }
    for r in 0..rules {
        let list: Vec<String> = (0..ports).map(|k| (r + 1 + step * k).to_string()).collect();
        text.push_str(&format!(
            "[[rules]]\nname = \"r{r}\"\nfrom = \"z{}\"\nto = \"z{}\"\nprotocol = \"tcp\"\nports = [{}]\naction = \"allow\"\n",
            r % zones,
            r / zones,
            list.join(", ")
        ));
    }
    CompiledPolicy::compile(&config(&text), &[])
        .unwrap_err()
        .to_string()
}

#[test]
fn limits_are_errors_that_say_by_how_much() {
    // Zone pairs: any to any over 600 zones is 602 * 602 * 5 keys.
    let mut text = String::new();
    for i in 0..600 {
        text.push_str(&format!(
            "[[zones]]\nname = \"z{i}\"\ncidrs = [\"10.{}.{}.0/24\"]\n",
            i / 256,
            i % 256
        ));
    }
    text.push_str("[[rules]]\nname = \"all\"\nfrom = \"any\"\nto = \"any\"\naction = \"allow\"\n");
    let err = CompiledPolicy::compile(&config(&text), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rules name 1812020 (source zone, destination zone, protocol) combinations; at most 262144 fit: 1549876 too many"),
        "{err}"
    );
    // Port tables: one rule per pair, each with a different set of 57
    // single ports (a port set holds at most 56 runs).
    let err = one_rule_per_pair(50, 2049, 57, 3);
    assert!(
        err.contains("rules need 2049 distinct port tables; at most 2048 fit: 1 too many"),
        "{err}"
    );
    // Port-set lines: 4,097 pairs, each with its own set of 50 ports
    // (8 lines each).
    let err = one_rule_per_pair(65, 4097, 50, 2);
    assert!(
        err.contains("rules need 32776 port-set lines; at most 32768 fit: 8 too many"),
        "{err}"
    );
    // Blocks alone: 17 pairs, each with 256 different partial high bytes.
    let mut text = String::from(TIERS);
    let zones = ["world", "host", "a", "b", "c"];
    for r in 0..17 {
        let ports: Vec<String> = (0..256u32).map(|hi| (hi * 256 + hi).to_string()).collect();
        text.push_str(&format!(
            "[[rules]]\nname = \"r{r}\"\nfrom = \"{}\"\nto = \"{}\"\nprotocol = \"tcp\"\nports = [{}]\naction = \"allow\"\n",
            zones[r % 5],
            zones[r / 5],
            ports.join(", ")
        ));
    }
    let err = CompiledPolicy::compile(&config(&text), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rules need 4352 distinct port blocks; at most 4096 fit: 256 too many"),
        "{err}"
    );
    // Zone prefixes and rules, past what a file would reasonably hold.
    let mut c = config(TIERS);
    c.zones[0].prefixes = (0..65_537u32)
        .map(|i| IpAddr::from((0x0b00_0000 + i).to_be_bytes()).into())
        .collect();
    let err = CompiledPolicy::compile(&c, &["192.0.2.1".parse().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "65540 IPv4 zone prefixes (node addresses included); at most 65536 fit: 4 too many"
        ),
        "{err}"
    );
    let mut c = config(&format!(
        "{TIERS}[[rules]]\nname = \"r\"\nfrom = \"a\"\nto = \"b\"\naction = \"allow\"\n"
    ));
    c.rules = vec![c.rules[0].clone(); 65_536];
    let err = CompiledPolicy::compile(&c, &[]).unwrap_err().to_string();
    assert!(
        err.contains("65536 rules; at most 65535 fit: 1 too many"),
        "{err}"
    );
    // Failsafe ranges: refused before their masks are nested (quadratic).
    let mut c = config("[failsafe]\nmanagement = [\"10.0.0.0/8\"]\n");
    c.failsafe.management = (0..100_000u32)
        .map(|i| IpAddr::from((0x0b00_0000 + i).to_be_bytes()).into())
        .collect();
    let err = CompiledPolicy::compile(&c, &[]).unwrap_err().to_string();
    assert!(
        err.contains("100001 IPv4 failsafe ranges; at most 4096 fit: 95905 too many"),
        "{err}"
    );
}

#[test]
fn meta_carries_the_flow_timeouts() {
    let p = compile(
        "[flows]\ntcp_timeout = \"2h\"\ntcp_closing_timeout = \"5s\"\nudp_timeout = 30\nother_timeout = \"1m\"\n",
    );
    let m = p.segmentation.meta;
    assert_eq!(
        (
            m.tcp_timeout_ns,
            m.tcp_closing_timeout_ns,
            m.udp_timeout_ns,
            m.other_timeout_ns
        ),
        (
            7_200_000_000_000,
            5_000_000_000,
            30_000_000_000,
            60_000_000_000
        )
    );
}

#[test]
fn the_hash_follows_everything_enforced_and_nothing_else() {
    let base = format!(
        "{TIERS}[[rules]]\nname = \"r\"\nfrom = \"world\"\nto = \"a\"\nprotocol = \"tcp\"\nports = [443]\naction = \"allow\"\n"
    );
    let h = |text: &str| compile(text).hash;
    let same = [
        base.replace("[[rules]]", "# a comment\n[[rules]]"),
        base.replace("name = \"r\"\n", "name = \"r\"\ndescription = \"why\"\n"),
        format!("{base}[failsafe]\nssh = true\n"),
    ];
    for t in &same {
        assert_eq!(h(t), h(&base), "{t}");
    }
    let changed = [
        base.replace("[443]", "[444]"),
        base.replace("\"allow\"", "\"audit\""),
        base.replace("to = \"a\"", "to = \"b\""),
        base.replace("10.1.2.0/24", "10.1.3.0/24"),
        base.replace("name = \"r\"", "name = \"s\""),
        format!("mode = \"audit\"\n{base}"),
        format!("{base}[segmentation]\ndefault = \"allow\"\n"),
        format!("{base}[flows]\nudp_timeout = \"61s\"\n"),
        format!("{base}[failsafe]\nmanagement = [\"10.0.0.0/8\"]\n"),
        format!("{base}[failsafe]\ndhcp = false\n"),
        format!("{base}[agent]\nmetrics_address = \"0.0.0.0:9100\"\n"),
    ];
    for t in &changed {
        assert_ne!(h(t), h(&base), "{t}");
    }
    // The node's addresses are not part of it: one policy, one hash.
    assert_eq!(compile_on(&base, &["192.0.2.9"]).hash, h(&base));
}
