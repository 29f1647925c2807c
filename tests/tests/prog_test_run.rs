//! The ingress program on crafted frames through BPF_PROG_TEST_RUN: the real
//! kernel code with real maps, checked for verdict and counters.

use std::net::IpAddr;
use std::path::Path;

use tierguard::{
    config::Config,
    datapath::{Datapath, XDP_DROP, XDP_PASS},
    policy::{CompiledPolicy, v6_bucket_bits_for},
};
use tierguard_common::{
    Reason, Verdict,
    build::*,
    decide,
    maps::{
        DirectBlock, Direction, ListEntry, PolicyMeta, PrefixKeyV4, PrefixKeyV6, V4_DIRECT_BLOCKS,
        V6_BUCKET_BITS, V6_BUCKETS, V6_MIN_BUCKET_BITS, V6Bucket, names, programs,
    },
    packet::*,
    parse::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, MAX_IPV6_EXT_HEADERS},
    prefix::v6_bucket,
};
use tierguard_tests::{Rng, pins::PinDir};

const POLICY: &str = r#"
[[lists]]
name = "deny-wide"
action = "deny"
cidrs = ["198.51.100.0/24", "10.66.0.0/16", "2001:db8::/32"]

[[lists]]
name = "allow-exceptions"
action = "allow"
cidrs = ["10.66.1.0/24", "2001:db8:1::/48", "198.51.100.128/25"]
"#;

const DENIED4: [u8; 4] = [198, 51, 100, 7];
const EXCEPT4: [u8; 4] = [10, 66, 1, 9];
const OTHER4: [u8; 4] = [10, 1, 1, 1];
const NODE4: [u8; 4] = [10, 0, 0, 1];
const DENIED6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const EXCEPT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const OTHER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
const NODE6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

struct Fixture {
    dp: Datapath,
    policy: CompiledPolicy,
    _pins: PinDir,
}

fn fixture(name: &str, toml: &str) -> Fixture {
    let pins = PinDir::new(name);
    let config = Config::load_str(toml, "test.toml", Path::new(".")).expect("test policy is valid");
    let policy = CompiledPolicy::compile(&config, &[]).expect("compiles");
    let mut dp = Datapath::load(pins.path()).unwrap_or_else(|e| panic!("load: {e}"));
    dp.apply(&policy).unwrap_or_else(|e| panic!("apply: {e}"));
    Fixture {
        dp,
        policy,
        _pins: pins,
    }
}

impl Fixture {
    fn run(&mut self, frame: &[u8]) -> u32 {
        self.dp
            .test_run(programs::INGRESS, frame, 1)
            .unwrap_or_else(|e| panic!("test_run: {e}"))
            .action
    }

    /// Runs `frame`, checks the action and that exactly one packet was counted under `reason`.
    fn expect(&mut self, frame: &[u8], reason: Reason) {
        let reader = self.dp.stats_reader().expect("stats reader");
        let before = reader.counter(0, Direction::Ingress, reason).unwrap();
        let action = self.run(frame);
        let want = match reason.verdict() {
            Verdict::Pass | Verdict::Audit => XDP_PASS,
            Verdict::Drop => XDP_DROP,
        };
        assert_eq!(action, want, "action for {reason:?} frame {frame:02x?}");
        let after = reader.counter(0, Direction::Ingress, reason).unwrap();
        assert_eq!(
            after.packets,
            before.packets + 1,
            "packets counted under {reason:?}"
        );
        assert_eq!(
            after.bytes,
            before.bytes + frame.len() as u64,
            "bytes counted under {reason:?}"
        );
    }
}

#[test]
fn the_dispatcher_runs_the_installed_program_and_fails_open_without_one() {
    let mut f = fixture("dispatch", POLICY);
    let denied = v4_frame(DENIED4, NODE4, PROTO_UDP, &udp(1, 2, 0));
    let reader = f.dp.stats_reader().unwrap();
    let action =
        f.dp.test_run(programs::DISPATCH, &denied, 1)
            .unwrap()
            .action;
    assert_eq!(action, XDP_PASS, "nothing installed yet: pass");
    assert_eq!(
        reader
            .counter(0, Direction::Ingress, Reason::NoProgram)
            .unwrap()
            .packets,
        1
    );
    f.dp.install().unwrap();
    assert_eq!(
        f.dp.test_run(programs::DISPATCH, &denied, 1)
            .unwrap()
            .action,
        XDP_DROP
    );
    assert_eq!(
        reader
            .counter(0, Direction::Ingress, Reason::DenyList)
            .unwrap()
            .packets,
        1
    );
    let other = v4_frame(OTHER4, NODE4, PROTO_UDP, &udp(1, 2, 0));
    assert_eq!(
        f.dp.test_run(programs::DISPATCH, &other, 1).unwrap().action,
        XDP_PASS
    );
    assert_eq!(
        reader
            .counter(0, Direction::Ingress, Reason::NoMatch)
            .unwrap()
            .packets,
        1
    );
}

#[test]
fn ipv4_deny_allow_and_miss() {
    let mut f = fixture("v4", POLICY);
    f.expect(
        &v4_frame(DENIED4, NODE4, PROTO_TCP, &tcp(40000, 443, TCP_SYN, 0)),
        Reason::DenyList,
    );
    f.expect(
        &v4_frame(DENIED4, NODE4, PROTO_UDP, &udp(53, 53, 10)),
        Reason::DenyList,
    );
    f.expect(
        &v4_frame(DENIED4, NODE4, PROTO_ICMP, &icmp(8, 0)),
        Reason::DenyList,
    );
    f.expect(
        &v4_frame([10, 66, 200, 1], NODE4, PROTO_TCP, &tcp(1, 22, TCP_SYN, 0)),
        Reason::DenyList,
    );
    f.expect(
        &v4_frame(EXCEPT4, NODE4, PROTO_TCP, &tcp(1, 22, TCP_SYN, 0)),
        Reason::AllowList,
    );
    // A /25 exception inside a denied /24 goes through the /32 table.
    f.expect(
        &v4_frame(
            [198, 51, 100, 200],
            NODE4,
            PROTO_TCP,
            &tcp(1, 22, TCP_SYN, 0),
        ),
        Reason::AllowList,
    );
    f.expect(
        &v4_frame(OTHER4, NODE4, PROTO_TCP, &tcp(1, 22, TCP_SYN, 0)),
        Reason::NoMatch,
    );
    // The destination is not what lists match.
    f.expect(
        &v4_frame(OTHER4, DENIED4, PROTO_UDP, &udp(1, 2, 0)),
        Reason::NoMatch,
    );

    let reader = f.dp.stats_reader().unwrap();
    assert_eq!(reader.list_counter(0).unwrap().packets, 4, "deny-wide hits");
    assert_eq!(
        reader.list_counter(1).unwrap().packets,
        2,
        "allow-exceptions hits"
    );
}

#[test]
fn ipv6_deny_allow_and_miss() {
    let mut f = fixture("v6", POLICY);
    f.expect(
        &v6_frame(DENIED6, NODE6, PROTO_TCP, &tcp(1, 443, TCP_SYN, 0)),
        Reason::DenyList,
    );
    f.expect(
        &v6_frame(DENIED6, NODE6, PROTO_ICMPV6, &icmp(128, 0)),
        Reason::DenyList,
    );
    f.expect(
        &v6_frame(EXCEPT6, NODE6, PROTO_UDP, &udp(1, 53, 0)),
        Reason::AllowList,
    );
    f.expect(
        &v6_frame(OTHER6, NODE6, PROTO_TCP, &tcp(1, 443, TCP_SYN, 0)),
        Reason::NoMatch,
    );
}

/// Prefix lengths on both sides of /64 (bucket table up to /64, hash map
/// beyond), nested so that the longest match must win across the two.
#[test]
fn ipv6_prefixes_of_many_lengths() {
    const MANY: &str = r#"
[[lists]]
name = "deny"
action = "deny"
cidrs = ["2001:db8::/32", "2001:db8:0:1::/64", "2001:db8:0:1:8000::/65", "2001:db8:0:1::5/128", "2001:db8:0:2::/63", "2001:db8:0:4::/62", "2001:db8:70::/44", "fd00::/8"]

[[lists]]
name = "allow"
action = "allow"
cidrs = ["2001:db8:0:1::/72", "2001:db8:0:1::4/127", "2001:db8:0:4:1::/80", "fd00:1::/33", "2001:db8:77:8000::/49"]
"#;
    let mut f = fixture("v6many", MANY);
    let cases: [(&str, Reason); 15] = [
        ("2001:db8:0:1::5", Reason::DenyList), // /128 inside /127 inside /72
        ("2001:db8:0:1::4", Reason::AllowList), // /127
        ("2001:db8:0:1::6", Reason::AllowList), // /72
        ("2001:db8:0:1:100::", Reason::DenyList), // /64
        ("2001:db8:0:1:8000::1", Reason::DenyList), // /65
        ("2001:db8:0:3::1", Reason::DenyList), // /63
        ("2001:db8:0:7:ffff::", Reason::DenyList), // /62
        ("2001:db8:0:4:1::9", Reason::AllowList), // /80 inside the /62
        ("2001:db8:7f::1", Reason::DenyList),  // /44
        ("2001:db8:77:8000::1", Reason::AllowList), // /49
        ("2001:db8:9::1", Reason::DenyList),   // /32
        ("fd00:1::1", Reason::AllowList),      // /33
        ("fd00:1:8000::1", Reason::DenyList),  // /8, outside the /33
        ("2001:db9::1", Reason::NoMatch),
        ("fe80::1", Reason::NoMatch),
    ];
    for (addr, reason) in cases {
        let a: std::net::Ipv6Addr = addr.parse().unwrap();
        let want = decide::ingress(f.policy.lookup_source(IpAddr::V6(a))).reason;
        assert_eq!(want, reason, "user space for {addr}");
        f.expect(
            &v6_frame(a.octets(), NODE6, PROTO_UDP, &udp(1, 2, 0)),
            reason,
        );
    }
}

#[test]
fn no_evasion_by_vlan_options_extension_headers_or_fragments() {
    let mut f = fixture("evasion", POLICY);
    let inner = V4::new(DENIED4, NODE4, PROTO_TCP).packet(&tcp(1, 22, TCP_SYN, 0));
    f.expect(&ether(&[ETH_P_8021Q], ETH_P_IPV4, &inner), Reason::DenyList);
    f.expect(
        &ether(&[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IPV4, &inner),
        Reason::DenyList,
    );
    f.expect(
        &ether(
            &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
            ETH_P_IPV4,
            &inner,
        ),
        Reason::VlanDepth,
    );

    let mut v = V4::new(DENIED4, NODE4, PROTO_UDP);
    v.options = vec![0x94, 0x04, 0, 0];
    f.expect(
        &ether(&[], ETH_P_IPV4, &v.packet(&udp(1, 53, 0))),
        Reason::DenyList,
    );
    v.options.clear();
    v.frag_offset = 100;
    f.expect(
        &ether(&[], ETH_P_IPV4, &v.packet(&[0u8; 32])),
        Reason::DenyList,
    );
    v.frag_offset = 0;
    v.more_fragments = true;
    f.expect(
        &ether(&[], ETH_P_IPV4, &v.packet(&[0u8; 4])),
        Reason::TinyFragment,
    );

    let exts = [
        Ext::HopByHop,
        Ext::Routing,
        Ext::Auth { len: 4 },
        Ext::DestOpts,
    ];
    f.expect(
        &ether(
            &[],
            ETH_P_IPV6,
            &ipv6(DENIED6, NODE6, &exts, PROTO_TCP, &tcp(1, 22, TCP_SYN, 0)),
        ),
        Reason::DenyList,
    );
    let later = [Ext::Fragment {
        offset: 64,
        more: false,
    }];
    f.expect(
        &ether(
            &[],
            ETH_P_IPV6,
            &ipv6(DENIED6, NODE6, &later, PROTO_TCP, &[0u8; 24]),
        ),
        Reason::DenyList,
    );
    let long = vec![Ext::DestOpts; MAX_IPV6_EXT_HEADERS + 1];
    f.expect(
        &ether(
            &[],
            ETH_P_IPV6,
            &ipv6(OTHER6, NODE6, &long, PROTO_UDP, &udp(1, 2, 0)),
        ),
        Reason::Ipv6ExtChain,
    );
    let eight = vec![Ext::DestOpts; MAX_IPV6_EXT_HEADERS];
    f.expect(
        &ether(
            &[],
            ETH_P_IPV6,
            &ipv6(OTHER6, NODE6, &eight, PROTO_UDP, &udp(1, 2, 0)),
        ),
        Reason::NoMatch,
    );
    // A VLAN-tagged IPv6 packet with extension headers.
    f.expect(
        &ether(
            &[ETH_P_8021Q],
            ETH_P_IPV6,
            &ipv6(DENIED6, NODE6, &exts, PROTO_UDP, &udp(1, 2, 0)),
        ),
        Reason::DenyList,
    );
}

#[test]
fn truncation_at_each_header_boundary_is_dropped() {
    let mut f = fixture("trunc", POLICY);
    // The kernel refuses frames shorter than an Ethernet header for test runs,
    // so cuts start at 14 bytes; shorter ones are covered by the host tests.
    let cases: Vec<(Vec<u8>, usize)> = vec![
        (
            v4_frame(OTHER4, NODE4, PROTO_TCP, &tcp(1, 2, TCP_ACK, 0)),
            14 + 20 + 20,
        ),
        (
            v4_frame(OTHER4, NODE4, PROTO_UDP, &udp(1, 2, 0)),
            14 + 20 + 8,
        ),
        (
            v4_frame(OTHER4, NODE4, PROTO_ICMP, &icmp(8, 0)),
            14 + 20 + 4,
        ),
        (
            v6_frame(OTHER6, NODE6, PROTO_TCP, &tcp(1, 2, TCP_ACK, 0)),
            14 + 40 + 20,
        ),
        (
            ether(
                &[],
                ETH_P_IPV6,
                &ipv6(
                    OTHER6,
                    NODE6,
                    &[Ext::HopByHop, Ext::DestOpts],
                    PROTO_UDP,
                    &udp(1, 2, 0),
                ),
            ),
            14 + 40 + 16 + 8,
        ),
        (
            ether(
                &[ETH_P_8021AD, ETH_P_8021Q],
                ETH_P_IPV4,
                &V4::new(OTHER4, NODE4, PROTO_UDP).packet(&udp(1, 2, 0)),
            ),
            14 + 8 + 20 + 8,
        ),
    ];
    for (frame, full) in cases {
        for cut in 14..full {
            f.expect(&frame[..cut], Reason::Truncated);
        }
        f.expect(&frame[..full], Reason::NoMatch);
    }
}

#[test]
fn malformed_headers_are_dropped_and_non_ip_passes() {
    let mut f = fixture("malformed", POLICY);
    let mut bad_ihl = v4_frame(OTHER4, NODE4, PROTO_UDP, &udp(1, 2, 0));
    bad_ihl[14] = 0x43;
    f.expect(&bad_ihl, Reason::Malformed);
    let mut bad_doff = v4_frame(OTHER4, NODE4, PROTO_TCP, &tcp(1, 2, 0, 0));
    bad_doff[14 + 20 + 12] = 0x20;
    f.expect(&bad_doff, Reason::Malformed);
    let mut bad_v6 = v6_frame(OTHER6, NODE6, PROTO_UDP, &udp(1, 2, 0));
    bad_v6[14] = 0x70;
    f.expect(&bad_v6, Reason::Malformed);
    f.expect(&ether(&[], 0x0806, &[0u8; 28]), Reason::NonIp);
    // IP inside MPLS or PPPoE is refused, not passed unread.
    let inner = V4::new(DENIED4, NODE4, PROTO_UDP).packet(&udp(1, 2, 0));
    let mut mpls = vec![0x00, 0x01, 0x01, 0x40];
    mpls.extend_from_slice(&inner);
    f.expect(&ether(&[], 0x8847, &mpls), Reason::UnsupportedEncap);
    f.expect(
        &ether(&[ETH_P_8021Q], 0x8864, &[0u8; 48]),
        Reason::UnsupportedEncap,
    );
    f.expect(&ether(&[ETH_P_8021Q], 0x88cc, &[0u8; 40]), Reason::NonIp);
}

/// For random policies and random packets, the kernel's verdict equals the
/// user-space answer computed with the same `common` code (`explain`'s path).
#[test]
fn kernel_matches_user_space_on_random_policies() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..4 {
        let mut lists = String::new();
        let mut anchors4: Vec<[u8; 4]> = Vec::new();
        let mut anchors6: Vec<[u8; 16]> = Vec::new();
        for l in 0..3 {
            // One of each for sure, the third by chance.
            let action = match (l, rng.below(2)) {
                (0, _) | (2, 0) => "deny",
                _ => "allow",
            };
            let mut cidrs = Vec::new();
            for _ in 0..40 {
                if rng.below(3) == 0 {
                    let mut a: [u8; 16] = rng.bytes();
                    let len = if rng.below(2) == 0 {
                        rng.below(129) as u8
                    } else {
                        // Cluster half of them in 2001:db8::/32 with lengths
                        // around /64 (the bucket table's limit) so they nest.
                        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
                        a[4] &= 0x01;
                        a[5..7].fill(0);
                        32 + rng.below(97) as u8
                    };
                    let n = ipnet(IpAddr::from(a), len);
                    anchors6.push(a);
                    cidrs.push(n);
                } else {
                    // Cluster IPv4 prefixes in 10.0.0.0/12 so they nest and overlap.
                    let mut a: [u8; 4] = rng.bytes();
                    a[0] = 10;
                    a[1] &= 0x0f;
                    let len = 14 + rng.below(19) as u8;
                    anchors4.push(a);
                    cidrs.push(ipnet(IpAddr::from(a), len));
                }
            }
            let quoted: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
            lists.push_str(&format!(
                "[[lists]]\nname = \"l{l}\"\naction = \"{action}\"\ncidrs = [{}]\n",
                quoted.join(", ")
            ));
        }
        let mut f = fixture(&format!("prop{round}"), &lists);
        let mut seen = [0usize; 3];
        for _ in 0..400 {
            let frame = if rng.below(5) == 0 {
                // Anywhere at all: mostly misses.
                if rng.below(2) == 0 {
                    v4_frame(rng.bytes(), NODE4, PROTO_UDP, &udp(1, 2, 0))
                } else {
                    v6_frame(rng.bytes(), NODE6, PROTO_UDP, &udp(1, 2, 0))
                }
            } else if rng.below(2) == 0 {
                let mut src = anchors4[rng.below(anchors4.len() as u64) as usize];
                src[3] ^= rng.below(4) as u8;
                src[2] ^= (rng.below(2) as u8) << rng.below(8);
                v4_frame(src, NODE4, PROTO_UDP, &udp(1, 2, 0))
            } else {
                let mut src = anchors6[rng.below(anchors6.len() as u64) as usize];
                let i = rng.below(16) as usize;
                src[i] ^= 1 << rng.below(8);
                v6_frame(src, NODE6, PROTO_TCP, &tcp(1, 2, TCP_SYN, 0))
            };
            let parsed = tierguard_common::parse::parse(&frame[..]).unwrap();
            let src: IpAddr = if parsed.family == 4 {
                IpAddr::from(parsed.src_v4())
            } else {
                IpAddr::from(parsed.src)
            };
            let want = decide::ingress(f.policy.lookup_source(src));
            let expected = match want.reason.verdict() {
                Verdict::Pass | Verdict::Audit => XDP_PASS,
                Verdict::Drop => XDP_DROP,
            };
            assert_eq!(
                f.run(&frame),
                expected,
                "round {round}: source {src} expected {want:?}"
            );
            seen[match want.reason {
                Reason::DenyList => 0,
                Reason::AllowList => 1,
                _ => 2,
            }] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 10),
            "round {round}: too few of some outcome (deny, allow, miss): {seen:?}"
        );
    }
}

fn ipnet(addr: IpAddr, len: u8) -> String {
    let n = ipnetwork::IpNetwork::new(addr, len).unwrap();
    format!("{}/{}", n.network(), len)
}

#[test]
fn reload_switches_generation_and_removes_the_old_one() {
    // Generation 1 has IPv6 entries in both tables (a /128 in the hash map).
    let first = format!(
        "{POLICY}\n[[lists]]\nname = \"host\"\naction = \"deny\"\ncidrs = [\"2001:db8:1::9/128\"]\n"
    );
    let mut f = fixture("reload", &first);
    assert_eq!(f.dp.generation().unwrap(), 1);
    f.expect(
        &v4_frame(DENIED4, NODE4, PROTO_UDP, &udp(1, 2, 0)),
        Reason::DenyList,
    );
    let host6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    f.expect(
        &v6_frame(host6, NODE6, PROTO_UDP, &udp(1, 2, 0)),
        Reason::DenyList,
    );
    let next = Config::load_str(
        "[[lists]]\nname = \"only\"\naction = \"deny\"\ncidrs = [\"10.1.1.0/24\", \"fd00:5::/48\", \"fd00:6::1/128\"]\n",
        "next.toml",
        Path::new("."),
    )
    .unwrap();
    let next = CompiledPolicy::compile(&next, &[]).unwrap();
    assert_eq!(f.dp.apply(&next).unwrap(), 2);
    f.expect(
        &v4_frame(DENIED4, NODE4, PROTO_UDP, &udp(1, 2, 0)),
        Reason::NoMatch,
    );
    f.expect(
        &v4_frame(OTHER4, NODE4, PROTO_UDP, &udp(1, 2, 0)),
        Reason::DenyList,
    );
    f.expect(
        &v6_frame(DENIED6, NODE6, PROTO_UDP, &udp(1, 2, 0)),
        Reason::NoMatch,
    );
    f.expect(
        &v6_frame(host6, NODE6, PROTO_UDP, &udp(1, 2, 0)),
        Reason::NoMatch,
    );
    let mut in48 = [0u8; 16];
    in48[..6].copy_from_slice(&[0xfd, 0, 0, 5, 0, 0]);
    in48[15] = 1;
    f.expect(
        &v6_frame(in48, NODE6, PROTO_UDP, &udp(1, 2, 0)),
        Reason::DenyList,
    );
    let mut host = [0u8; 16];
    host[..4].copy_from_slice(&[0xfd, 0, 0, 6]);
    host[15] = 1;
    f.expect(
        &v6_frame(host, NODE6, PROTO_UDP, &udp(1, 2, 0)),
        Reason::DenyList,
    );
    // Only the live generation's entries remain in the tables.
    let map = f.dp.ebpf_mut().map_mut(names::V4_DIRECT).unwrap();
    let direct = aya::maps::Array::<_, DirectBlock>::try_from(map).unwrap();
    let used: Vec<u32> = (0..2 * V4_DIRECT_BLOCKS)
        .filter(|i| direct.get(i, 0).unwrap() != DirectBlock::EMPTY)
        .collect();
    // 10.1.1.0/24 is /24 number 0x0a0101, in block 0x0a0101 / 64 of slot 0 (generation 2).
    assert_eq!(
        used,
        [0x0a0101 / 64],
        "only the live generation's block remains"
    );
    let map = f.dp.ebpf_mut().map_mut(names::LIST_V4).unwrap();
    let v4 = aya::maps::HashMap::<_, PrefixKeyV4, ListEntry>::try_from(map).unwrap();
    assert_eq!(v4.keys().count(), 0);
    let map = f.dp.ebpf_mut().map_mut(names::LIST_V6).unwrap();
    let v6 = aya::maps::HashMap::<_, PrefixKeyV6, ListEntry>::try_from(map).unwrap();
    let keys: Vec<PrefixKeyV6> = v6.keys().map(|k| k.unwrap()).collect();
    assert_eq!(
        keys,
        [PrefixKeyV6 {
            slot: 0,
            len: 128,
            _pad: [0; 2],
            addr: host
        }],
        "only the live /128 remains"
    );
    let map = f.dp.ebpf_mut().map_mut(names::V6_TABLE).unwrap();
    let table = aya::maps::Array::<_, V6Bucket>::try_from(map).unwrap();
    let used: Vec<u32> = (0..2 * V6_BUCKETS)
        .filter(|i| table.get(i, 0).unwrap() != V6Bucket::EMPTY)
        .collect();
    // The /48 is the only bucket-table entry of generation 2, in slot 0.
    let live: Vec<u32> = next.v6_buckets.keys().copied().collect();
    assert_eq!(live.len(), 1);
    assert_eq!(used, live, "only the live generation's bucket remains");
}

/// The benchmark's programs are not loaded by the agent, only by
/// `cargo xtask bench`: check here that the verifier takes them too (the
/// benchmark's ingress program, with its rotating source, is the one
/// closest to the verifier's instruction budget).
#[test]
fn the_benchmark_programs_pass_the_verifier() {
    let mut f = fixture("bench-progs", POLICY);
    let frame = v6_frame(OTHER6, NODE6, PROTO_UDP, &udp(1, 2, 0));
    for prog in [
        programs::BENCH_INGRESS,
        programs::BENCH_INGRESS_NEW,
        programs::BENCH_BASELINE,
        programs::BENCH_EGRESS,
        programs::BENCH_EGRESS_BASELINE,
        programs::BASELINE,
        programs::EGRESS_BASELINE,
    ] {
        if let Err(e) = f.dp.test_run(prog, &frame, 1) {
            let log = e.to_string();
            let tail: Vec<&str> = log.lines().rev().take(6).collect();
            panic!("{prog} does not load: {tail:#?}");
        }
    }
    for prog in [programs::INGRESS, programs::BENCH_INGRESS] {
        let info = f.dp.ebpf_mut().program(prog).unwrap().info().unwrap();
        eprintln!(
            "{prog}: {:?} instructions verified (budget 1,000,000)",
            info.verified_instruction_count()
        );
    }
}

// ---- IPv6 bucket table sizes ----

/// The live slot and its `PolicyMeta`, as the kernel reads them.
fn live_meta(f: &mut Fixture) -> (u32, PolicyMeta) {
    let map = f.dp.ebpf_mut().map(names::ACTIVE_SLOT).unwrap();
    let slot = aya::maps::Array::<_, u32>::try_from(map)
        .unwrap()
        .get(&0, 0)
        .unwrap()
        & 1;
    let map = f.dp.ebpf_mut().map(names::POLICY_META).unwrap();
    let meta = aya::maps::Array::<_, PolicyMeta>::try_from(map)
        .unwrap()
        .get(&slot, 0)
        .unwrap();
    (slot, meta)
}

fn set_live_bits(f: &mut Fixture, bits: u32) {
    let (slot, mut meta) = live_meta(f);
    meta.v6_bucket_bits = bits;
    let map = f.dp.ebpf_mut().map_mut(names::POLICY_META).unwrap();
    aya::maps::Array::<_, PolicyMeta>::try_from(map)
        .unwrap()
        .set(slot, meta, 0)
        .unwrap();
}

/// Indexes of every non-empty bucket of `TG_V6_TABLE`, both slots.
fn used_v6_buckets(f: &mut Fixture) -> Vec<u32> {
    let map = f.dp.ebpf_mut().map(names::V6_TABLE).unwrap();
    let table = aya::maps::Array::<_, V6Bucket>::try_from(map).unwrap();
    (0..2 * V6_BUCKETS)
        .filter(|i| table.get(i, 0).unwrap() != V6Bucket::EMPTY)
        .collect()
}

/// An address inside the /48 whose first 64 bits are `key`.
fn in_48(key: u64, host: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&key.to_be_bytes());
    a[15] = host;
    a
}

fn list_of_48s(name: &str, keys: &[u64]) -> String {
    let quoted: Vec<String> = keys
        .iter()
        .map(|&k| format!("\"{}/48\"", std::net::Ipv6Addr::from(in_48(k, 0))))
        .collect();
    format!(
        "[[lists]]\nname = \"{name}\"\naction = \"deny\"\ncidrs = [{}]\n",
        quoted.join(", ")
    )
}

impl Fixture {
    /// Applies `toml` as the next generation and checks the kernel's meta
    /// carries the compiled table size and only its buckets are in the map.
    fn reload(&mut self, toml: &str) {
        let c = Config::load_str(toml, "next.toml", Path::new(".")).unwrap();
        self.policy = CompiledPolicy::compile(&c, &[]).unwrap();
        self.dp.apply(&self.policy).unwrap();
        self.check_v6_table();
    }

    fn check_v6_table(&mut self) {
        let bits = self.policy.v6_bucket_bits;
        let (slot, meta) = live_meta(self);
        assert_eq!(meta.v6_bucket_bits, bits, "the meta carries the size");
        let base = slot * V6_BUCKETS;
        let want: Vec<u32> = self.policy.v6_buckets.keys().map(|b| base + b).collect();
        assert!(want.iter().all(|&i| i < base + (1 << bits)));
        assert_eq!(
            used_v6_buckets(self),
            want,
            "only the live generation's buckets, within its size"
        );
    }

    /// Every listed /48 is denied by the kernel, and the /48 after each
    /// (unlisted) is not.
    fn deny_48s(&mut self, keys: &[u64]) {
        for &k in keys {
            self.expect(
                &v6_frame(in_48(k, 7), NODE6, PROTO_UDP, &udp(1, 2, 0)),
                Reason::DenyList,
            );
            let next = k + 0x1_0000;
            if !keys.contains(&next) {
                self.expect(
                    &v6_frame(in_48(next, 7), NODE6, PROTO_UDP, &udp(1, 2, 0)),
                    Reason::NoMatch,
                );
            }
        }
    }

    /// The small lists of `POLICY`: a deny hit, an allow hit, a miss.
    fn policy_hits_and_misses(&mut self) {
        let v6 = |src| v6_frame(src, NODE6, PROTO_UDP, &udp(1, 2, 0));
        self.expect(&v6(DENIED6), Reason::DenyList);
        self.expect(&v6(EXCEPT6), Reason::AllowList);
        self.expect(&v6(OTHER6), Reason::NoMatch);
    }
}

#[test]
fn the_ipv6_table_is_sized_per_generation_and_grows_again() {
    // Generation 1: the small lists alone, in the smallest table.
    let mut f = fixture("v6size", POLICY);
    assert_eq!(f.policy.v6_bucket_bits, V6_MIN_BUCKET_BITS);
    f.check_v6_table();
    f.policy_hits_and_misses();

    // Generation 2: 1,000 random /48s more (in fd01::/16 to fdff::/16,
    // away from OTHER6) get 2^12 buckets.
    let mut rng = Rng(0x0076_0051_2e00_0001);
    let mut many = std::collections::BTreeSet::new();
    while many.len() < 1000 {
        let top16 = 0xfd01 + rng.below(0xff);
        many.insert(top16 << 48 | rng.below(1 << 32) << 16);
    }
    let many: Vec<u64> = many.into_iter().collect();
    let with_many = format!("{POLICY}\n{}", list_of_48s("many", &many));
    f.reload(&with_many);
    assert_eq!(f.policy.v6_bucket_bits, 12);
    f.policy_hits_and_misses();
    f.deny_48s(&many[..100]);

    // Generation 3: back to the small lists; the larger generation's
    // buckets are gone and its prefixes pass.
    f.reload(POLICY);
    assert_eq!(f.policy.v6_bucket_bits, V6_MIN_BUCKET_BITS);
    f.policy_hits_and_misses();
    for &k in &many[..20] {
        f.expect(
            &v6_frame(in_48(k, 7), NODE6, PROTO_UDP, &udp(1, 2, 0)),
            Reason::NoMatch,
        );
    }

    // Generation 4: a list that does not fit the size its count asks for
    // (17 /48s with one home bucket there: 4 buckets of 4 slots hold 16),
    // so the compiler grows the table.
    let chosen = v6_bucket_bits_for(17 + 2);
    let home = v6_bucket(0x2001_0db9_0000_0000, 48, chosen);
    let crowd: Vec<u64> = (0u64..)
        .map(|k| 0x2001_0db9_0000_0000 | k << 16)
        .filter(|&k| v6_bucket(k, 48, chosen) == home)
        .take(17)
        .collect();
    let with_crowd = format!("{POLICY}\n{}", list_of_48s("crowd", &crowd));
    f.reload(&with_crowd);
    assert!(f.policy.v6_bucket_bits > chosen, "grown");
    f.policy_hits_and_misses();
    f.deny_48s(&crowd);

    // Generation 5: the 1,000 again, into the slot that held the smallest.
    f.reload(&with_many);
    assert_eq!(f.policy.v6_bucket_bits, 12);
    f.policy_hits_and_misses();
    f.deny_48s(&many);
    assert_eq!(f.dp.generation().unwrap(), 5);
}

#[test]
fn bits_an_older_agent_left_or_out_of_range_read_as_the_full_table() {
    let mut f = fixture("v6bits", POLICY);
    // What an agent before the size field writes: entries placed in 2^19
    // buckets, 0 in the meta.
    let mut wide = f.policy.clone();
    wide.v6_buckets = f.policy.v6_table_at(V6_BUCKET_BITS).unwrap();
    wide.v6_bucket_bits = 0;
    f.dp.apply(&wide).unwrap();
    assert_eq!(live_meta(&mut f).1.v6_bucket_bits, V6_BUCKET_BITS);
    for bits in [0, V6_BUCKET_BITS + 1, 64, 200, u32::MAX, V6_BUCKET_BITS] {
        set_live_bits(&mut f, bits);
        f.policy_hits_and_misses();
    }
    // Back to a table at its own size.
    let own = f.policy.clone();
    f.dp.apply(&own).unwrap();
    f.check_v6_table();
    f.policy_hits_and_misses();
}

// ---- Limits and blocked sources ----
//
// BPF_PROG_TEST_RUN runs in microseconds: with a rate of one packet per
// second the refill during a test is nil, so counts are exact.

use tierguard::datapath::{BlockTable, LimitReader, coarse_now_ns};
use tierguard_common::limiter::{
    BLOCK_ADMIN, BlockValue, LimitSpec, MAX_LIMITS, SLOTS_PER_LIMIT, Slot, candidates, v4_key,
};

const A4: [u8; 4] = [203, 0, 113, 10];
const B4: [u8; 4] = [203, 0, 113, 20];
const C4: [u8; 4] = [198, 18, 0, 1];

fn syn(src: [u8; 4]) -> Vec<u8> {
    v4_frame(src, NODE4, PROTO_TCP, &tcp(40000, 443, TCP_SYN, 0))
}

impl Fixture {
    fn limits(&self) -> LimitReader {
        LimitReader::open(self._pins.path()).expect("limit counters")
    }

    fn blocks(&self) -> BlockTable {
        BlockTable::open(self._pins.path()).expect("block tables")
    }

    /// Runs `frame` `n` times in one BPF_PROG_TEST_RUN; the last action.
    fn run_n(&mut self, frame: &[u8], n: u32) -> u32 {
        self.dp
            .test_run(programs::INGRESS, frame, n)
            .unwrap_or_else(|e| panic!("test_run: {e}"))
            .action
    }

    fn count(&self, reason: Reason) -> u64 {
        let r = self.dp.stats_reader().unwrap();
        tierguard::datapath::verdicts_of(reason)
            .iter()
            .map(|&v| {
                r.counter_as(0, Direction::Ingress, v, reason)
                    .unwrap()
                    .packets
            })
            .sum()
    }
}

#[test]
fn a_limit_passes_exactly_its_burst_per_key_then_drops() {
    let mut f = fixture(
        "limit-burst",
        r#"
[[limits]]
name = "syn"
protocol = "tcp"
tcp_flags = "syn"
ports = [443]
pps = 1
burst = 5
"#,
    );
    assert_eq!(f.run_n(&syn(A4), 100), XDP_DROP);
    let c = f.limits().counters(1).unwrap()[0];
    assert_eq!((c.passed, c.dropped, c.overflow), (5, 95, 0));
    assert_eq!(f.count(Reason::Limit), 95);
    assert_eq!(f.count(Reason::NoMatch), 5);
    // Another source has its own bucket.
    assert_eq!(f.run_n(&syn(B4), 7), XDP_DROP);
    assert_eq!(f.limits().counters(1).unwrap()[0].passed, 10);
    // What the limit does not match is not charged: an ACK, another port.
    f.expect(
        &v4_frame(A4, NODE4, PROTO_TCP, &tcp(40000, 443, TCP_ACK, 0)),
        Reason::NoMatch,
    );
    f.expect(
        &v4_frame(A4, NODE4, PROTO_TCP, &tcp(40000, 80, TCP_SYN, 0)),
        Reason::NoMatch,
    );
    f.expect(&syn(A4), Reason::Limit);
}

#[test]
fn a_global_limit_and_a_bit_rate_cap_every_source_together() {
    let mut f = fixture(
        "limit-global",
        r#"
[[limits]]
name = "all-udp"
protocol = "udp"
per = "global"
pps = 1
burst = 3

[[limits]]
name = "icmp-bits"
protocol = "icmp"
bps = 1
bps_burst = 12144
"#,
    );
    for src in [A4, B4, C4, A4, B4] {
        f.run(&v4_frame(src, NODE4, PROTO_UDP, &udp(1, 53, 10)));
    }
    let c = f.limits().counters(2).unwrap();
    assert_eq!((c[0].passed, c[0].dropped), (3, 2));
    // 12,144 bits: 15 frames of 100 bytes (800 bits), not 16.
    let ping = v4_frame(A4, NODE4, PROTO_ICMP, &icmp(8, 0));
    let mut frame = ping.clone();
    frame.resize(100, 0);
    f.run_n(&frame, 40);
    let c = f.limits().counters(2).unwrap();
    assert_eq!((c[1].passed, c[1].dropped), (15, 25));
}

#[test]
fn an_audit_limit_passes_and_reports_the_excess() {
    let mut f = fixture(
        "limit-audit",
        r#"
[[limits]]
name = "watch"
pps = 1
burst = 2
action = "audit"
"#,
    );
    f.expect(&syn(A4), Reason::NoMatch);
    f.expect(&syn(A4), Reason::NoMatch);
    f.expect(&syn(A4), Reason::LimitAudit);
    let c = f.limits().counters(1).unwrap()[0];
    assert_eq!((c.passed, c.audited, c.dropped), (2, 1, 0));
}

#[test]
fn crossing_a_block_limit_blocks_the_source_once_and_then_drops_it_as_blocked() {
    let mut f = fixture(
        "limit-block",
        r#"
[[limits]]
name = "syn-block"
protocol = "tcp"
tcp_flags = "syn"
pps = 1
burst = 2
action = "block"
block_for = "60s"

[[limits]]
name = "udp-prefix"
protocol = "udp"
per = "source_prefix"
prefix_v4 = 24
pps = 1
burst = 1
action = "block"
block_for = "10m"
"#,
    );
    let before = coarse_now_ns();
    f.expect(&syn(A4), Reason::NoMatch);
    f.expect(&syn(A4), Reason::NoMatch);
    // The packet that crosses is the limit's; the block starts with it.
    f.expect(&syn(A4), Reason::Limit);
    f.expect(&syn(A4), Reason::Blocked);
    // Blocked: everything from the source, not just what the limit matches.
    f.expect(
        &v4_frame(A4, NODE4, PROTO_UDP, &udp(1, 53, 0)),
        Reason::Blocked,
    );
    f.run_n(&syn(A4), 50);
    let c = f.limits().counters(2).unwrap()[0];
    assert_eq!(
        (c.passed, c.dropped, c.blocks, c.block_failed),
        (2, 1, 1, 0)
    );
    let blocks = f.blocks().list().unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    let b = blocks[0];
    assert_eq!(b.net.to_string(), "203.0.113.10/32");
    assert_eq!((b.value.origin, b.value.len), (0, 32));
    let after = coarse_now_ns();
    assert!(b.value.created_ns >= before && b.value.created_ns <= after);
    assert_eq!(b.value.until_ns - b.value.created_ns, 60_000_000_000);
    // Other sources go on.
    f.expect(&syn(B4), Reason::NoMatch);
    // A per-prefix limit blocks the whole /24.
    let u = |src| v4_frame(src, NODE4, PROTO_UDP, &udp(1, 53, 0));
    f.expect(&u(C4), Reason::NoMatch);
    f.expect(&u(C4), Reason::Limit);
    f.expect(&u([198, 18, 0, 99]), Reason::Blocked);
    f.expect(&u([198, 18, 1, 1]), Reason::NoMatch);
    let nets: Vec<String> = f
        .blocks()
        .list()
        .unwrap()
        .iter()
        .map(|b| b.net.to_string())
        .collect();
    assert_eq!(nets, ["198.18.0.0/24", "203.0.113.10/32"]);
}

#[test]
fn expired_blocks_are_ignored_and_looked_past() {
    let mut f = fixture("limit-expiry", POLICY);
    let now = coarse_now_ns();
    let mut t = f.blocks();
    let block = |until: u64, origin: u16, len: u8| BlockValue {
        until_ns: until,
        created_ns: 1,
        origin,
        len,
        ..BlockValue::EMPTY
    };
    let net = |s: &str| s.parse::<ipnetwork::IpNetwork>().unwrap();
    // Ended a second ago: as if absent.
    t.insert(
        net("203.0.113.10/32"),
        &block(now - 1_000_000_000, BLOCK_ADMIN, 32),
    )
    .unwrap();
    f.expect(&syn(A4), Reason::NoMatch);
    // A live /24 around it: the kernel looks past the expired /32.
    t.insert(
        net("203.0.113.0/24"),
        &block(now + 60_000_000_000, BLOCK_ADMIN, 24),
    )
    .unwrap();
    f.expect(&syn(A4), Reason::Blocked);
    f.expect(&syn(B4), Reason::Blocked);
    // IPv6 the same way; a block beats an allow list.
    let v6 = |src| v6_frame(src, NODE6, PROTO_UDP, &udp(1, 2, 0));
    f.expect(&v6(EXCEPT6), Reason::AllowList);
    t.insert(
        net("2001:db8:1::7/128"),
        &block(now + 60_000_000_000, 3, 128),
    )
    .unwrap();
    f.expect(&v6(EXCEPT6), Reason::Blocked);
    t.insert(net("2001:db8:1::7/128"), &block(now - 1, 3, 128))
        .unwrap();
    f.expect(&v6(EXCEPT6), Reason::AllowList);
    assert_eq!(
        t.covering("203.0.113.10".parse().unwrap(), coarse_now_ns())
            .unwrap()
            .map(|b| b.net.to_string()),
        Some("203.0.113.0/24".into()),
        "user space sees what the kernel applies"
    );
}

#[test]
fn a_key_whose_slots_are_busy_is_charged_to_the_overflow() {
    let mut f = fixture(
        "limit-overflow",
        r#"
[[limits]]
name = "syn"
protocol = "tcp"
pps = 1
burst = 2
action = "block"
block_for = 60
"#,
    );
    // Occupy both candidates of A's key with another key, drained just now.
    let seed = {
        let map = f.dp.ebpf_mut().map_mut(names::LIMITS).unwrap();
        let specs: aya::maps::Array<_, LimitSpec> = aya::maps::Array::try_from(map).unwrap();
        let slot = 1; // the first policy goes into generation slot 1
        let s = specs.get(&(slot * MAX_LIMITS), 0).unwrap();
        assert!(s.used() && s.seed != 0, "the seed is set");
        s.seed
    };
    let (ia, ib) = candidates(seed, &v4_key(A4));
    let now = coarse_now_ns();
    let busy = Slot {
        key: v4_key(B4),
        buckets: tierguard_common::limiter::Buckets {
            packets: tierguard_common::limit::Bucket {
                tokens: 0,
                last_ns: now,
            },
            ..Default::default()
        },
    };
    {
        let map = f.dp.ebpf_mut().map_mut(names::LIMIT_SLOTS).unwrap();
        let mut slots: aya::maps::Array<_, Slot> = aya::maps::Array::try_from(map).unwrap();
        assert!(ia < SLOTS_PER_LIMIT && ib < SLOTS_PER_LIMIT);
        slots.set(ia, busy, 0).unwrap();
        slots.set(ib, busy, 0).unwrap();
    }
    // The overflow holds four times the burst; its refusals block nobody.
    f.run_n(&syn(A4), 20);
    let c = f.limits().counters(1).unwrap()[0];
    assert_eq!((c.overflow, c.passed, c.dropped, c.blocks), (20, 8, 12, 0));
    assert!(f.blocks().list().unwrap().is_empty());
    assert_eq!(f.count(Reason::Limit), 12);
}

#[test]
fn the_kernel_skips_the_blocked_tries_only_while_they_are_empty() {
    let mut f = fixture(
        "limit-presence",
        "[[limits]]\nname = \"b\"\nprotocol = \"udp\"\npps = 1\nburst = 1\naction = \"block\"\nblock_for = 60\n",
    );
    let present = |f: &mut Fixture| {
        let map = f.dp.ebpf_mut().map_mut(names::BLOCKS_PRESENT).unwrap();
        let a: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map).unwrap();
        a.get(&0, 0).unwrap()
    };
    assert_eq!(present(&mut f), 0, "nothing blocked yet");
    let mut t = f.blocks();
    let net: ipnetwork::IpNetwork = "203.0.113.10/32".parse().unwrap();
    let v = BlockValue {
        until_ns: u64::MAX,
        origin: BLOCK_ADMIN,
        len: 32,
        ..BlockValue::EMPTY
    };
    t.insert(net, &v).unwrap();
    assert_eq!(present(&mut f), 1);
    f.expect(&syn(A4), Reason::Blocked);
    assert!(t.remove(net).unwrap());
    t.settle_presence(true).unwrap();
    assert_eq!(present(&mut f), 0);
    f.expect(&syn(A4), Reason::NoMatch);
    // A block the kernel starts raises the flag itself.
    let u = v4_frame(B4, NODE4, PROTO_UDP, &udp(1, 53, 0));
    f.expect(&u, Reason::NoMatch);
    f.expect(&u, Reason::Limit);
    assert_eq!(present(&mut f), 1);
    f.expect(&u, Reason::Blocked);
    // Settling with entries left keeps it raised.
    t.settle_presence(true).unwrap();
    assert_eq!(present(&mut f), 1, "the tries were read again");
}

#[test]
fn a_connection_over_an_audit_limit_is_reported_and_its_replies_still_pass() {
    let mut f = fixture(
        "limit-audit-flow",
        r#"
[segmentation]
default = "deny"

[[zones]]
name = "web"
cidrs = ["10.0.0.0/24"]

[[rules]]
name = "https"
from = "world"
to = "web"
protocol = "tcp"
ports = [443]
action = "allow"

[[limits]]
name = "watch"
protocol = "tcp"
tcp_flags = "syn"
pps = 1
burst = 1
action = "audit"
"#,
    );
    let syn = |sport| v4_frame(A4, NODE4, PROTO_TCP, &tcp(sport, 443, TCP_SYN, 0));
    f.expect(&syn(40000), Reason::RuleAllow);
    f.expect(&syn(40001), Reason::LimitAudit);
    // The node's SYN-ACK to the audited connection leaves as an established reply.
    let reply = v4_frame(NODE4, A4, PROTO_TCP, &tcp(443, 40001, TCP_SYN | TCP_ACK, 0));
    let r = f.dp.test_run(programs::EGRESS, &reply, 1).unwrap();
    assert_eq!(r.action, tierguard::datapath::TC_PASS);
    let stats = f.dp.stats_reader().unwrap();
    assert_eq!(
        stats
            .counter(0, Direction::Egress, Reason::Established)
            .unwrap()
            .packets,
        1
    );
    // An audit limit never lets past what the rules deny.
    let other = v4_frame(A4, NODE4, PROTO_TCP, &tcp(40002, 22, TCP_SYN, 0));
    f.expect(&other, Reason::DefaultDeny);
}

/// In `mode = "audit"` the kernel passes frames the parser refuses, counted
/// as `audit` (it always did; `explain` used to drop them, which
/// `kernel_matches_host_on_malformed_and_mutated_frames` found and which was
/// fixed on the `explain` side). This pins the kernel's side.
#[test]
fn a_frame_the_parser_refuses_passes_as_audit_in_audit_mode() {
    use tierguard::datapath::TC_PASS;
    let mut f = fixture(
        "audit-parse",
        "mode = \"audit\"\n[segmentation]\ndefault = \"deny\"\n\n[[zones]]\nname = \"node\"\ncidrs = [\"10.0.0.0/24\"]\n",
    );
    let reader = f.dp.stats_reader().unwrap();
    // Audit mode is on: a SYN no rule allows is reported and passed.
    let smtp = v4_frame(OTHER4, NODE4, PROTO_TCP, &tcp(40000, 25, TCP_SYN, 0));
    assert_eq!(f.run(&smtp), XDP_PASS);
    let c = reader
        .counter_as(0, Direction::Ingress, Verdict::Audit, Reason::DefaultDeny)
        .unwrap();
    assert_eq!(c.packets, 1);
    // A SYN cut inside its TCP header, an IPv4 header with IHL 3, IPv4
    // inside MPLS: dropped in enforce mode; here passed and counted as
    // would-be drops, since audit mode drops nothing (a parser gap that
    // refuses a node's real traffic is what a trial run has to show).
    let syn = v4_frame(OTHER4, NODE4, PROTO_TCP, &tcp(40000, 443, TCP_SYN, 0));
    let cut = syn[..14 + 20 + 10].to_vec();
    let mut ihl3 = syn.clone();
    ihl3[14] = 0x43;
    let mut mpls = vec![0x00, 0x01, 0x01, 0x40];
    mpls.extend_from_slice(&syn[14..]);
    let mpls = ether(&[], 0x8847, &mpls);
    for (frame, reason) in [
        (&cut, Reason::Truncated),
        (&ihl3, Reason::Malformed),
        (&mpls, Reason::UnsupportedEncap),
    ] {
        assert_eq!(f.run(frame), XDP_PASS, "{reason:?}");
        let c = reader
            .counter_as(0, Direction::Ingress, Verdict::Audit, reason)
            .unwrap();
        assert_eq!((c.packets, c.bytes), (1, frame.len() as u64), "{reason:?}");
    }
    // The same on egress.
    let r = f.dp.test_run(programs::EGRESS, &cut, 1).unwrap();
    assert_eq!(r.action, TC_PASS);
    let c = reader
        .counter_as(0, Direction::Egress, Verdict::Audit, Reason::Truncated)
        .unwrap();
    assert_eq!((c.packets, c.bytes), (1, cut.len() as u64));
    // Nothing counted as dropped.
    for reason in [
        Reason::Truncated,
        Reason::Malformed,
        Reason::UnsupportedEncap,
    ] {
        for dir in [Direction::Ingress, Direction::Egress] {
            let c = reader.counter_as(0, dir, Verdict::Drop, reason).unwrap();
            assert_eq!(c.packets, 0, "{dir:?} {reason:?} counted as a drop");
        }
    }
}

// ---- Malformed and mutated frames: the kernel against the host ----
//
// Valid seed frames (Ethernet with 0 to 2 VLAN tags; IPv4 with and without
// options, fragments; IPv6 with extension-header chains, fragments; TCP,
// UDP, ICMP, ICMPv6, other transports; MPLS, PPPoE, ARP, LLDP), cut at every
// length (those without tags or with 802.1ad + 802.1Q) and mutated with a
// seeded generator, each run once through the ingress XDP program and the
// egress TC program, under three policies (lists only; lists and
// segmentation; the same in audit mode). For every frame the kernel's
// action, and the one counter it increments (verdict and reason), must be
// what `CompiledPolicy::decide_frame` (explain's path: `parse`, then
// `decide`) computes from the same bytes against the same compiled policy.
// A failure prints the seed, each differing frame in hex and how it was made.

const FUZZ_SEED: u64 = 0x7167_f022_d1ff_0001;
const MUTANTS_PER_SEED: usize = 20;

/// Zones, rules of every action, failsafe management (used after `POLICY`'s
/// lists): mutated ports, protocols, ICMP types and addresses reach every
/// stage.
const FUZZ_SEGMENTATION: &str = r#"
[segmentation]
default = "deny"
intra_zone = "allow"

[[zones]]
name = "node"
cidrs = ["10.0.0.0/24", "fd00::/120"]

[[zones]]
name = "peers"
cidrs = ["10.1.0.0/16", "10.66.0.0/16", "fd00::/16"]

[[rules]]
name = "peers-web"
from = "peers"
to = "node"
protocol = "tcp"
ports = [443, "8000-8100"]
action = "allow"

[[rules]]
name = "world-dns"
from = "world"
to = "node"
protocol = "udp"
ports = [53]
action = "allow"

[[rules]]
name = "world-http-watch"
from = "world"
to = "node"
protocol = "tcp"
ports = [80]
action = "audit"

[[rules]]
name = "ping"
from = "any"
to = "node"
protocol = "icmp"
icmp_types = [8]
action = "allow"

[[rules]]
name = "ping6-watch"
from = "any"
to = "node"
protocol = "icmpv6"
icmp_types = [128]
action = "audit"

[[rules]]
name = "node-out"
from = "node"
to = ["world", "peers"]
protocol = "tcp"
action = "allow"

[[rules]]
name = "no-udp-to-peers"
from = "node"
to = "peers"
protocol = "udp"
action = "deny"

[failsafe]
management = ["10.9.0.0/16", "fd09::/32"]
ssh_port = 22
"#;

const MGMT4: [u8; 4] = [10, 9, 0, 5];
const MGMT6: [u8; 16] = [0xfd, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
const FUZZ_SOURCES4: [[u8; 4]; 5] = [DENIED4, EXCEPT4, OTHER4, MGMT4, [203, 0, 113, 10]];
const FUZZ_SOURCES6: [[u8; 16]; 4] = [DENIED6, EXCEPT6, OTHER6, MGMT6];

/// A frame before mutation, and where its headers start.
#[derive(Clone)]
struct Seed {
    name: String,
    frame: Vec<u8>,
    /// Cut at every length: the seeds without tags or with 802.1ad + 802.1Q.
    sweep: bool,
    /// Offset of the ethertype after the VLAN tags.
    ethertype: usize,
    /// Offset and family (4, 6) of the IP header.
    l3: Option<(usize, u8)>,
    /// Offsets of the IPv6 extension headers, in order.
    exts: Vec<usize>,
    /// Offset of the IPv6 fragment header.
    frag: Option<usize>,
    /// Offset and protocol of the transport header.
    l4: Option<(usize, u8)>,
}

fn seed_v4(name: &str, tags: &[u16], v: &V4, l4: &[u8]) -> Seed {
    let ip = v.packet(l4);
    let l3 = 14 + 4 * tags.len();
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    Seed {
        name: format!("{name} tags {tags:04x?}"),
        frame: ether(tags, ETH_P_IPV4, &ip),
        sweep: tags.is_empty() || tags == QINQ,
        ethertype: l3 - 2,
        l3: Some((l3, 4)),
        exts: Vec::new(),
        frag: None,
        l4: (v.frag_offset == 0).then_some((l3 + ihl, v.proto)),
    }
}

fn seed_v6(name: &str, tags: &[u16], src: [u8; 16], exts: &[Ext], proto: u8, l4: &[u8]) -> Seed {
    seed_v6_to(name, tags, src, NODE6, exts, proto, l4)
}

fn seed_v6_to(
    name: &str,
    tags: &[u16],
    src: [u8; 16],
    dst: [u8; 16],
    exts: &[Ext],
    proto: u8,
    l4: &[u8],
) -> Seed {
    let l3 = 14 + 4 * tags.len();
    let mut off = l3 + 40;
    let mut offsets = Vec::new();
    let mut later = false;
    let mut frag = None;
    for e in exts {
        offsets.push(off);
        off += match e {
            Ext::Auth { len } => (usize::from(*len) + 2) * 4,
            Ext::Fragment { offset, .. } => {
                later |= *offset != 0;
                frag = Some(off);
                8
            }
            _ => 8,
        };
    }
    Seed {
        name: format!("{name} tags {tags:04x?}"),
        frame: ether(tags, ETH_P_IPV6, &ipv6(src, dst, exts, proto, l4)),
        sweep: tags.is_empty() || tags == QINQ,
        ethertype: l3 - 2,
        l3: Some((l3, 6)),
        exts: offsets,
        frag,
        l4: (!later).then_some((off, proto)),
    }
}

fn seed_other(name: &str, tags: &[u16], ethertype: u16, payload: &[u8]) -> Seed {
    Seed {
        name: format!("{name} tags {tags:04x?}"),
        frame: ether(tags, ethertype, payload),
        sweep: tags.is_empty() || tags == QINQ,
        ethertype: 12 + 4 * tags.len(),
        l3: None,
        exts: Vec::new(),
        frag: None,
        l4: None,
    }
}

/// TCP with `words` 32-bit words of options (NOPs).
fn tcp_with_options(sport: u16, dport: u16, flags: u8, words: u8) -> Vec<u8> {
    let mut t = tcp(sport, dport, flags, 4 * usize::from(words));
    t[12] = (5 + words) << 4;
    t[20..].fill(1);
    t
}

/// The valid frames mutations start from.
fn fuzz_seeds() -> Vec<Seed> {
    const QINQ_9100: u16 = 0x9100;
    let mut out = Vec::new();
    let tag_sets: [&[u16]; 4] = [
        &[],
        &[ETH_P_8021Q],
        &[ETH_P_8021AD, ETH_P_8021Q],
        &[QINQ_9100, ETH_P_8021Q],
    ];
    for (t, tags) in tag_sets.iter().enumerate() {
        let s4 = |i: usize| FUZZ_SOURCES4[(i + t) % FUZZ_SOURCES4.len()];
        let s6 = |i: usize| FUZZ_SOURCES6[(i + t) % FUZZ_SOURCES6.len()];
        // IPv4: transports, options, fragments.
        let v = |i: usize, proto: u8| V4::new(s4(i), NODE4, proto);
        out.push(seed_v4(
            "v4 tcp syn :22",
            tags,
            &v(0, PROTO_TCP),
            &tcp(40000, 22, TCP_SYN, 0),
        ));
        out.push(seed_v4(
            "v4 tcp ack :443 options",
            tags,
            &v(1, PROTO_TCP),
            &tcp_with_options(40000, 443, TCP_ACK, 3),
        ));
        out.push(seed_v4(
            "v4 udp :53",
            tags,
            &v(2, PROTO_UDP),
            &udp(5353, 53, 12),
        ));
        out.push(seed_v4(
            "v4 icmp echo",
            tags,
            &v(3, PROTO_ICMP),
            &icmp(8, 0),
        ));
        out.push(seed_v4("v4 gre", tags, &v(4, 47), &[0u8; 12]));
        let mut o = v(5, PROTO_TCP);
        o.options = vec![0x94, 0x04, 0, 0];
        out.push(seed_v4(
            "v4 router-alert tcp :80",
            tags,
            &o,
            &tcp(1, 80, TCP_SYN, 4),
        ));
        let mut o = v(6, PROTO_UDP);
        o.options = vec![1; 40];
        out.push(seed_v4(
            "v4 40 bytes of options udp",
            tags,
            &o,
            &udp(1, 53, 0),
        ));
        let mut fr = v(7, PROTO_UDP);
        fr.more_fragments = true;
        out.push(seed_v4("v4 first fragment udp", tags, &fr, &udp(1, 53, 24)));
        let mut fr = v(8, PROTO_TCP);
        fr.frag_offset = 100;
        out.push(seed_v4("v4 later fragment", tags, &fr, &[0x55; 24]));
        // IPv6: transports, extension chains, fragments.
        let tcp_syn = tcp(40000, 443, TCP_SYN, 0);
        out.push(seed_v6(
            "v6 tcp :443",
            tags,
            s6(0),
            &[],
            PROTO_TCP,
            &tcp_syn,
        ));
        out.push(seed_v6(
            "v6 udp :53",
            tags,
            s6(1),
            &[],
            PROTO_UDP,
            &udp(1, 53, 8),
        ));
        out.push(seed_v6(
            "v6 echo",
            tags,
            s6(2),
            &[],
            PROTO_ICMPV6,
            &icmp(128, 0),
        ));
        out.push(seed_v6(
            "v6 neighbour solicitation",
            tags,
            s6(3),
            &[],
            PROTO_ICMPV6,
            &icmp(135, 0),
        ));
        out.push(seed_v6(
            "v6 hbh tcp options",
            tags,
            s6(0),
            &[Ext::HopByHop],
            PROTO_TCP,
            &tcp_with_options(1, 22, TCP_SYN, 2),
        ));
        out.push(seed_v6(
            "v6 hbh routing dstopts udp",
            tags,
            s6(1),
            &[Ext::HopByHop, Ext::Routing, Ext::DestOpts],
            PROTO_UDP,
            &udp(1, 53, 0),
        ));
        let first = Ext::Fragment {
            offset: 0,
            more: true,
        };
        out.push(seed_v6(
            "v6 first fragment tcp",
            tags,
            s6(2),
            std::slice::from_ref(&first),
            PROTO_TCP,
            &tcp_syn,
        ));
        out.push(seed_v6(
            "v6 hbh first fragment dstopts udp",
            tags,
            s6(3),
            &[Ext::HopByHop, first, Ext::DestOpts],
            PROTO_UDP,
            &udp(1, 53, 4),
        ));
        let later = Ext::Fragment {
            offset: 185,
            more: false,
        };
        out.push(seed_v6(
            "v6 later fragment",
            tags,
            s6(0),
            &[Ext::Routing, later],
            PROTO_TCP,
            &[0x55; 24],
        ));
        out.push(seed_v6(
            "v6 ah tcp :8080",
            tags,
            s6(1),
            &[Ext::Auth { len: 4 }],
            PROTO_TCP,
            &tcp(1, 8080, TCP_SYN, 0),
        ));
        out.push(seed_v6("v6 esp", tags, s6(2), &[], 50, &[0u8; 16]));
        out.push(seed_v6(
            "v6 no next header",
            tags,
            s6(3),
            &[Ext::DestOpts],
            59,
            &[],
        ));
        // Sent by the node: egress rules (node to peers, node out).
        let mut out4 = V4::new(NODE4, s4(9), PROTO_UDP);
        out4.options = vec![1; 8];
        out.push(seed_v4(
            "v4 udp from the node",
            tags,
            &out4,
            &udp(40000, 53, 4),
        ));
        out.push(seed_v6_to(
            "v6 tcp from the node",
            tags,
            NODE6,
            s6(1),
            &[Ext::DestOpts],
            PROTO_TCP,
            &tcp_with_options(40000, 443, TCP_SYN, 1),
        ));
        // Non-IP and unsupported encapsulations.
        out.push(seed_other("arp", tags, 0x0806, &[0u8; 28]));
        let mut mpls = vec![0x00, 0x01, 0x01, 0x40];
        mpls.extend_from_slice(&V4::new(DENIED4, NODE4, PROTO_UDP).packet(&udp(1, 2, 0)));
        out.push(seed_other("mpls", tags, 0x8847, &mpls));
        let mut pppoe = vec![0x11, 0x00, 0x00, 0x01, 0x00, 0x1e, 0x00, 0x21];
        pppoe.extend_from_slice(&V4::new(OTHER4, NODE4, PROTO_UDP).packet(&udp(1, 2, 0)));
        out.push(seed_other("pppoe session", tags, 0x8864, &pppoe));
    }
    // Chains at and over the limits.
    let dst8 = vec![Ext::DestOpts; MAX_IPV6_EXT_HEADERS];
    let dst9 = vec![Ext::DestOpts; MAX_IPV6_EXT_HEADERS + 1];
    out.push(seed_v6(
        "v6 8 extension headers",
        &[],
        OTHER6,
        &dst8,
        PROTO_UDP,
        &udp(1, 53, 0),
    ));
    out.push(seed_v6(
        "v6 9 extension headers",
        &[],
        OTHER6,
        &dst9,
        PROTO_UDP,
        &udp(1, 53, 0),
    ));
    // Transport headers ending just within and just past the read limit.
    for len in [235, 236] {
        out.push(seed_v6(
            &format!("v6 ah of {len} units"),
            &[],
            EXCEPT6,
            &[Ext::Auth { len }],
            PROTO_TCP,
            &tcp(1, 443, TCP_SYN, 0),
        ));
    }
    let v = V4::new(DENIED4, NODE4, PROTO_UDP).packet(&udp(1, 2, 0));
    out.push(seed_other("lldp", &[], 0x88cc, &[0u8; 40]));
    out.push(seed_other(
        "three vlan tags",
        &[ETH_P_8021AD, ETH_P_8021Q],
        ETH_P_8021Q,
        &[&[0, 7, 0x08, 0x00][..], &v].concat(),
    ));
    out
}

fn pick<T: Copy>(rng: &mut Rng, from: &[T]) -> T {
    from[rng.below(from.len() as u64) as usize]
}

fn put(f: &mut [u8], off: usize, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        if let Some(x) = f.get_mut(off + i) {
            *x = *b;
        }
    }
}

/// One mutant of `s`: one to three field mutations, then maybe a VLAN tag
/// more, a random tail, a cut. Returns the frame and what was done.
fn mutate(rng: &mut Rng, s: &Seed) -> (Vec<u8>, String) {
    let mut f = s.frame.clone();
    let mut what: Vec<String> = Vec::new();
    let header_end = match (s.l4, s.l3) {
        (Some((o, _)), _) => o + 20,
        (None, Some((o, 6))) => s.exts.last().map_or(o + 40, |e| e + 8),
        (None, Some((o, _))) => o + 24,
        _ => s.ethertype + 2,
    }
    .min(f.len());
    let ip_len = s.l3.map_or(0, |(o, _)| f.len() - o);
    for _ in 0..1 + rng.below(3) {
        // A random value for the choices below that take one.
        let r = rng.next_u64();
        match rng.below(15) {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(header_end as u64) as usize;
                    let bit = rng.below(8);
                    f[i] ^= 1 << bit;
                    what.push(format!("flip byte {i} bit {bit}"));
                }
            }
            1 => {
                let i = rng.below(header_end as u64) as usize;
                let b = pick(rng, &[0, 1, 0x7f, 0x80, 0xff, r as u8]);
                f[i] = b;
                what.push(format!("byte {i} = {b:#04x}"));
            }
            2 => {
                let et: u16 = pick(
                    rng,
                    &[
                        ETH_P_IPV4,
                        ETH_P_IPV6,
                        ETH_P_8021Q,
                        ETH_P_8021AD,
                        0x9100,
                        0x8847,
                        0x8848,
                        0x8864,
                        0x0806,
                        0x88cc,
                        r as u16,
                    ],
                );
                put(&mut f, s.ethertype, &et.to_be_bytes());
                what.push(format!("ethertype {et:#06x}"));
            }
            3 => {
                let Some((l3, _)) = s.l3 else { continue };
                let ihl = rng.below(16) as u8;
                let b = (f[l3] & 0xf0) | ihl;
                put(&mut f, l3, &[b]);
                what.push(format!("low nibble of the first ip byte {ihl}"));
            }
            4 => {
                let Some((l3, _)) = s.l3 else { continue };
                let v = rng.below(16) as u8;
                let b = (v << 4) | (f[l3] & 0x0f);
                put(&mut f, l3, &[b]);
                what.push(format!("ip version {v}"));
            }
            5 => {
                let Some((l3, fam)) = s.l3 else { continue };
                let n = ip_len as u16;
                let len: u16 = pick(
                    rng,
                    &[
                        0,
                        1 + (r >> 32) as u16 % 20,
                        0xffff,
                        n.wrapping_sub(1),
                        n + 1,
                        n.wrapping_sub(40),
                        r as u16,
                    ],
                );
                let at = if fam == 4 { l3 + 2 } else { l3 + 4 };
                put(&mut f, at, &len.to_be_bytes());
                what.push(format!("ip length field {len}"));
            }
            6 => {
                let Some((l3, fam)) = s.l3 else { continue };
                let v: u16 = pick(
                    rng,
                    &[
                        0, 0x2000, 0x0001, 0x2001, 0x1fff, 0x4000, 0x0008, 0xfff9, r as u16,
                    ],
                );
                match (fam, s.frag) {
                    (4, _) => put(&mut f, l3 + 6, &v.to_be_bytes()),
                    (_, Some(e)) => put(&mut f, e + 2, &v.to_be_bytes()),
                    _ => continue,
                }
                what.push(format!("fragment field {v:#06x}"));
            }
            7 => {
                let Some((l3, fam)) = s.l3 else { continue };
                let at = if fam == 4 {
                    l3 + 9
                } else {
                    let i = rng.below(s.exts.len() as u64 + 1) as usize;
                    if i == 0 { l3 + 6 } else { s.exts[i - 1] }
                };
                let p = pick(
                    rng,
                    &[
                        0, 1, 6, 17, 41, 43, 44, 47, 50, 51, 58, 59, 60, 135, 255, r as u8,
                    ],
                );
                put(&mut f, at, &[p]);
                what.push(format!("next header at {at} = {p}"));
            }
            8 => {
                if s.exts.is_empty() {
                    continue;
                }
                let e = pick(rng, &s.exts);
                let len = pick(rng, &[0, 1, 2, 3, 31, 127, 255, r as u8]);
                put(&mut f, e + 1, &[len]);
                what.push(format!("extension header at {e} length {len}"));
            }
            9 => {
                let Some((l4, PROTO_TCP)) = s.l4 else {
                    continue;
                };
                let doff = rng.below(16) as u8;
                put(&mut f, l4 + 12, &[doff << 4]);
                what.push(format!("tcp data offset {doff}"));
            }
            10 => {
                let Some((l4, PROTO_UDP)) = s.l4 else {
                    continue;
                };
                let len: u16 = pick(rng, &[0, 1, 7, 8, 0xffff, r as u16]);
                put(&mut f, l4 + 4, &len.to_be_bytes());
                what.push(format!("udp length {len}"));
            }
            11 => {
                let Some((l4, proto)) = s.l4 else { continue };
                let port: u16 = pick(rng, &[22, 53, 80, 443, 8000, 8100, 0, 65535, r as u16]);
                let at = l4 + 2 * rng.below(2) as usize;
                put(&mut f, at, &port.to_be_bytes());
                if proto == PROTO_TCP {
                    let flags = pick(
                        rng,
                        &[TCP_SYN, TCP_ACK, TCP_SYN | TCP_ACK, TCP_RST, 0xff, 0],
                    );
                    put(&mut f, l4 + 13, &[flags]);
                }
                what.push(format!("port (icmp type and code) at {at} = {port:#06x}"));
            }
            12 => {
                let Some((l3, fam)) = s.l3 else { continue };
                let (src, dst) = if fam == 4 {
                    (l3 + 12, l3 + 16)
                } else {
                    (l3 + 8, l3 + 24)
                };
                let at = pick(rng, &[src, dst]);
                if fam == 4 {
                    let a = pick(
                        rng,
                        &[
                            DENIED4,
                            EXCEPT4,
                            OTHER4,
                            MGMT4,
                            NODE4,
                            (r as u32).to_be_bytes(),
                        ],
                    );
                    put(&mut f, at, &a);
                } else {
                    let a = pick(
                        rng,
                        &[
                            DENIED6,
                            EXCEPT6,
                            OTHER6,
                            MGMT6,
                            NODE6,
                            u128::from(r)
                                .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                                .to_be_bytes(),
                        ],
                    );
                    put(&mut f, at, &a);
                }
                what.push(format!("address at {at}"));
            }
            13 => {
                let Some((l4, PROTO_ICMP | PROTO_ICMPV6)) = s.l4 else {
                    continue;
                };
                let ty = pick(rng, &[0, 3, 8, 128, 129, 133, 134, 135, 136, 137, r as u8]);
                put(&mut f, l4, &[ty]);
                what.push(format!("icmp type {ty}"));
            }
            _ => {
                // Inside the headers, anything.
                let i = rng.below(header_end as u64) as usize;
                let b: [u8; 4] = rng.bytes();
                put(&mut f, i, &b);
                what.push(format!("4 random bytes at {i}"));
            }
        }
    }
    if rng.below(10) == 0 {
        let tpid: u16 = pick(rng, &[ETH_P_8021Q, ETH_P_8021AD, 0x9100]);
        let at = s.ethertype;
        let [a, b] = tpid.to_be_bytes();
        f.splice(at..at, [a, b, 0, 9]);
        what.push(format!("vlan tag {tpid:#06x} more"));
    }
    match rng.below(8) {
        0 => {
            let n = 1 + rng.below(64) as usize;
            for _ in 0..n {
                f.push(rng.next_u64() as u8);
            }
            what.push(format!("{n} random bytes appended"));
        }
        1 => {
            let from = rng.below(f.len() as u64) as usize;
            for b in &mut f[from..] {
                *b = rng.next_u64() as u8;
            }
            what.push(format!("random from byte {from}"));
        }
        _ => {}
    }
    if rng.below(3) == 0 {
        let cut = rng.below(f.len() as u64 + 1) as usize;
        f.truncate(cut);
        what.push(format!("cut at {cut}"));
    }
    (f, what.join(", "))
}

/// Whether BPF_PROG_TEST_RUN refuses `frame` for a socket buffer: an
/// untagged IPv4 frame shorter than its 20-byte header, IPv6 than its 40.
fn skb_refused(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.len() < 14 + 20,
        Some([0x86, 0xdd]) => frame.len() < 14 + 40,
        _ => false,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Counters of slot 0 (BPF_PROG_TEST_RUN's interface), both directions,
/// every verdict and every reason number the table has room for.
struct AllCounters(aya::maps::PerCpuArray<aya::maps::MapData, tierguard_common::maps::Counter>);

impl AllCounters {
    fn open(pins: &Path) -> AllCounters {
        let data = aya::maps::MapData::from_pin(pins.join(names::STATS)).expect("stats pin");
        let map = aya::maps::Map::from_map_data(data).expect("stats map");
        AllCounters(aya::maps::PerCpuArray::try_from(map).expect("per-CPU array"))
    }

    fn snapshot(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            for verdict in 0..tierguard_common::maps::VERDICTS {
                for reason in 0..tierguard_common::maps::MAX_REASONS {
                    let idx =
                        tierguard_common::maps::stats_index(0, dir, verdict as u8, reason as u8);
                    let c = tierguard_common::counters::sum(
                        self.0.get(&idx, 0).expect("counter").iter(),
                    );
                    out.push((c.packets, c.bytes));
                }
            }
        }
        out
    }

    /// (direction, verdict, reason number) of snapshot index `i`.
    fn label(i: usize) -> String {
        let per_dir =
            (tierguard_common::maps::VERDICTS * tierguard_common::maps::MAX_REASONS) as usize;
        let dir = if i / per_dir == 0 {
            "ingress"
        } else {
            "egress"
        };
        let verdict = (i % per_dir) / tierguard_common::maps::MAX_REASONS as usize;
        let reason = i % tierguard_common::maps::MAX_REASONS as usize;
        let verdict = Verdict::ALL.get(verdict).map_or("?", |v| v.name());
        let reason = Reason::from_u8(reason as u8).map_or("?", |r| r.name());
        format!("{dir} {verdict} {reason}")
    }

    /// The snapshot holds interface slot 0's counters in the map's order.
    fn index(dir: Direction, verdict: Verdict, reason: Reason) -> usize {
        tierguard_common::maps::stats_index(0, dir, verdict as u8, reason as u8) as usize
    }
}

#[test]
fn kernel_matches_host_on_malformed_and_mutated_frames() {
    use tierguard::datapath::{TC_DROP, TC_PASS};
    eprintln!("seed {FUZZ_SEED:#018x}");
    let mut rng = Rng(FUZZ_SEED);
    let seeds = fuzz_seeds();
    // Every seed as it is, cut at every length (the short ones), and mutants.
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    for s in &seeds {
        frames.push((s.name.clone(), s.frame.clone()));
        if s.sweep && s.frame.len() <= 200 {
            for cut in 0..s.frame.len() {
                frames.push((format!("{}, cut at {cut}", s.name), s.frame[..cut].to_vec()));
            }
        }
        for _ in 0..MUTANTS_PER_SEED {
            let (f, what) = mutate(&mut rng, s);
            frames.push((format!("{}, {what}", s.name), f));
        }
    }
    let policies = [
        ("lists", POLICY.to_string()),
        ("segmented", format!("{POLICY}{FUZZ_SEGMENTATION}")),
        (
            "audit",
            format!("mode = \"audit\"\n{POLICY}{FUZZ_SEGMENTATION}"),
        ),
    ];
    let mut failures: Vec<String> = Vec::new();
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    let mut runs = 0usize;
    let mut refused = 0usize;
    // Mismatches by kind, to tell one cause from many.
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for (pname, toml) in &policies {
        let mut f = fixture(&format!("fuzz-{pname}"), toml);
        let counters = AllCounters::open(f._pins.path());
        let segmented =
            f.policy.segmentation.meta.flags & tierguard_common::segment::SEG_ENABLED != 0;
        let mut before = counters.snapshot();
        for (what, frame) in &frames {
            for dir in [Direction::Ingress, Direction::Egress] {
                let (parsed, want) = f.policy.decide_frame(dir, frame);
                if frame.len() < 14 {
                    // BPF_PROG_TEST_RUN refuses frames shorter than an
                    // Ethernet header; the host must call them truncated.
                    if want.reason != Reason::Truncated {
                        failures.push(format!(
                            "{pname} {dir:?} {what}: host says {want:?} for a {}-byte frame",
                            frame.len()
                        ));
                    }
                    continue;
                }
                let (prog, pass, drop) = match dir {
                    Direction::Ingress => (programs::INGRESS, XDP_PASS, XDP_DROP),
                    Direction::Egress => (programs::EGRESS, TC_PASS, TC_DROP),
                };
                let action = match f.dp.test_run(prog, frame, 1) {
                    Ok(r) => r.action,
                    // BPF_PROG_TEST_RUN refuses a socket buffer whose
                    // untagged IPv4 or IPv6 header is cut short (the
                    // program never runs); the host must call it truncated.
                    Err(_) if dir == Direction::Egress && skb_refused(frame) => {
                        refused += 1;
                        if want.reason != Reason::Truncated {
                            failures.push(format!(
                                "policy {pname}, {dir:?}, {what}: host says {want:?}\n  frame ({} bytes) {}",
                                frame.len(),
                                hex(frame)
                            ));
                        }
                        continue;
                    }
                    Err(e) => {
                        failures.push(format!(
                            "policy {pname}, {dir:?}, {what}: test_run refused ({e:?})\n  frame ({} bytes) {}",
                            frame.len(),
                            hex(frame)
                        ));
                        continue;
                    }
                };
                runs += 1;
                let after = counters.snapshot();
                let changed: Vec<usize> = (0..after.len())
                    .filter(|&i| after[i] != before[i])
                    .collect();
                let expected_action = if want.verdict.passes() { pass } else { drop };
                let expected_counter = AllCounters::index(dir, want.verdict, want.reason);
                let counted_once = changed.len() == 1
                    && changed[0] == expected_counter
                    && after[expected_counter].0 == before[expected_counter].0 + 1
                    && after[expected_counter].1 == before[expected_counter].1 + frame.len() as u64;
                if action != expected_action || !counted_once {
                    let kernel: Vec<String> = changed
                        .iter()
                        .map(|&i| {
                            format!(
                                "{} (+{} packets, +{} bytes)",
                                AllCounters::label(i),
                                after[i].0 - before[i].0,
                                after[i].1 - before[i].1
                            )
                        })
                        .collect();
                    *kinds
                        .entry(format!(
                            "policy {pname}: kernel {action} {:?}, host {expected_action} {} {}",
                            changed
                                .iter()
                                .map(|&i| AllCounters::label(i))
                                .collect::<Vec<_>>(),
                            want.verdict.name(),
                            want.reason.name()
                        ))
                        .or_default() += 1;
                    failures.push(format!(
                        "policy {pname}, {dir:?}, {what}\n  frame ({} bytes) {}\n  kernel: action {action}, counted {kernel:?}\n  host:   action {expected_action}, {} {} ({:?}), parsed {parsed:?}",
                        frame.len(),
                        hex(frame),
                        want.verdict.name(),
                        want.reason.name(),
                        want,
                    ));
                }
                before = after;
                if segmented {
                    // Each frame is judged as a first packet, as the host does.
                    let map = f.dp.ebpf_mut().map_mut(names::FLOWS).expect("flow map");
                    let mut m: aya::maps::HashMap<
                        _,
                        tierguard_common::segment::FlowKey,
                        tierguard_common::segment::FlowValue,
                    > = aya::maps::HashMap::try_from(map).expect("hash");
                    let keys: Vec<_> = m.keys().filter_map(Result::ok).collect();
                    for k in keys {
                        let _ = m.remove(&k);
                    }
                }
                *outcomes
                    .entry(format!(
                        "{:?} {} {}",
                        dir,
                        want.verdict.name(),
                        want.reason.name()
                    ))
                    .or_default() += 1;
            }
        }
    }
    eprintln!(
        "{} seeds, {} frames, {runs} kernel runs over {} policies ({refused} egress frames refused by test_run); host outcomes: {outcomes:#?}",
        seeds.len(),
        frames.len(),
        policies.len()
    );
    assert!(
        failures.is_empty(),
        "seed {FUZZ_SEED:#018x}: {} of {runs} runs differ between the kernel and the host\nby kind: {kinds:#?}\nthe first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
