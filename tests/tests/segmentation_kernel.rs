//! The kernel against `explain`: random segmentation policies (zones that
//! nest and overlap, rules with ports, ranges, ICMP types and every action,
//! lists, failsafe ranges, defaults, audit mode) and random packets in both
//! directions, each run through the real programs with BPF_PROG_TEST_RUN and
//! through the user-space decision `explain` uses. Verdicts must agree.

use std::net::IpAddr;
use std::path::Path;

use tierguard::{
    config::Config,
    datapath::{Datapath, TC_DROP, TC_PASS, XDP_DROP, XDP_PASS},
    policy::CompiledPolicy,
};
use tierguard_common::{
    Verdict,
    build::*,
    maps::{Direction, names, programs},
    packet::*,
    parse::parse,
    segment::{FlowKey, FlowValue},
};
use tierguard_tests::{Rng, pins::PinDir};

fn v4(rng: &mut Rng) -> [u8; 4] {
    // Clustered in 10.0.0.0/12 so zones, lists and failsafe ranges nest.
    let mut a: [u8; 4] = rng.bytes();
    a[0] = 10;
    a[1] &= 0x0f;
    a
}

fn v6(rng: &mut Rng) -> [u8; 16] {
    let mut a: [u8; 16] = rng.bytes();
    a[0] = 0xfd;
    a[1] = 0;
    a[2] &= 0x03;
    a
}

fn net(a: IpAddr, len: u8) -> String {
    ipnetwork::IpNetwork::new(a, len)
        .map(|n| format!("\"{}/{}\"", n.network(), len))
        .unwrap()
}

const ZONES: usize = 8;
const PROTOS: [&str; 5] = ["tcp", "udp", "icmp", "icmpv6", "any"];

/// A random valid policy and the addresses it was built around.
fn policy(rng: &mut Rng, anchors4: &mut Vec<[u8; 4]>, anchors6: &mut Vec<[u8; 16]>) -> String {
    let mut s = String::new();
    if rng.below(4) == 0 {
        s.push_str("mode = \"audit\"\n");
    }
    let pick =
        |rng: &mut Rng, options: &[&'static str]| options[rng.below(options.len() as u64) as usize];
    s.push_str(&format!(
        "[segmentation]\ndefault = \"{}\"\nintra_zone = \"{}\"\n",
        pick(rng, &["deny", "allow"]),
        pick(rng, &["deny", "allow"])
    ));
    let mut used = std::collections::HashSet::new();
    let mut cidrs =
        |rng: &mut Rng, n: usize, anchors4: &mut Vec<[u8; 4]>, anchors6: &mut Vec<[u8; 16]>| {
            let mut out = Vec::new();
            while out.len() < n {
                let c = if rng.below(3) == 0 {
                    let a = v6(rng);
                    anchors6.push(a);
                    net(IpAddr::from(a), 16 + rng.below(113) as u8)
                } else {
                    let a = v4(rng);
                    anchors4.push(a);
                    net(IpAddr::from(a), 12 + rng.below(21) as u8)
                };
                if used.insert(c.clone()) {
                    out.push(c);
                }
            }
            out.join(", ")
        };
    for z in 0..ZONES {
        let n = 1 + rng.below(4) as usize;
        s.push_str(&format!(
            "\n[[zones]]\nname = \"z{z}\"\ncidrs = [{}]\n",
            cidrs(rng, n, anchors4, anchors6)
        ));
    }
    s.push_str(&format!(
        "\n[[lists]]\nname = \"deny\"\naction = \"deny\"\ncidrs = [{}]\n",
        cidrs(rng, 3, anchors4, anchors6)
    ));
    s.push_str(&format!(
        "\n[[lists]]\nname = \"allow\"\naction = \"allow\"\ncidrs = [{}]\n",
        cidrs(rng, 2, anchors4, anchors6)
    ));
    let zone_set = |rng: &mut Rng| -> String {
        if rng.below(8) == 0 {
            return "\"any\"".into();
        }
        let n = 1 + rng.below(3);
        let names: Vec<String> = (0..n)
            .map(|_| match rng.below(ZONES as u64 + 2) as usize {
                z if z < ZONES => format!("\"z{z}\""),
                z if z == ZONES => "\"world\"".into(),
                _ => "\"host\"".into(),
            })
            .collect();
        format!("[{}]", names.join(", "))
    };
    for r in 0..30 {
        let proto = pick(rng, &PROTOS);
        let matching = match proto {
            "tcp" | "udp" => match rng.below(5) {
                0 => String::new(),
                // Every odd port below 120: more runs than a port set
                // holds, so a port table (probed by the low ports below).
                4 => {
                    let odd: Vec<String> = (0..60).map(|i| (1 + 2 * i).to_string()).collect();
                    format!("ports = [{}]\n", odd.join(", "))
                }
                1 => format!("ports = [{}]\n", 1 + rng.below(2000)),
                2 => {
                    let lo = rng.below(65536) as u16;
                    let hi = lo.saturating_add(rng.below(3000) as u16);
                    format!("ports = [\"{lo}-{hi}\", {}]\n", rng.below(65536))
                }
                _ => "ports = [0, 1, 255, 256, 65535, \"1000-1100\"]\n".to_string(),
            },
            "icmp" | "icmpv6" if rng.below(2) == 0 => {
                format!("icmp_types = [{}, {}]\n", rng.below(256), rng.below(256))
            }
            _ => String::new(),
        };
        s.push_str(&format!(
            "\n[[rules]]\nname = \"r{r}\"\nfrom = {}\nto = {}\nprotocol = \"{proto}\"\n{matching}action = \"{}\"\n",
            zone_set(rng),
            zone_set(rng),
            pick(rng, &["allow", "deny", "audit"])
        ));
    }
    s.push_str(&format!(
        "\n[failsafe]\nmanagement = [{}]\nssh_port = {}\n",
        cidrs(rng, 2, anchors4, anchors6),
        1 + rng.below(100)
    ));
    s
}

fn clear_flows(dp: &mut Datapath) {
    let map = dp.ebpf_mut().map_mut(names::FLOWS).expect("flow map");
    let mut m: aya::maps::HashMap<_, FlowKey, FlowValue> =
        aya::maps::HashMap::try_from(map).expect("hash");
    let keys: Vec<FlowKey> = m.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = m.remove(&k);
    }
}

#[test]
fn kernel_matches_explain_on_random_segmentation_policies() {
    let mut rng = Rng(0x5e9_0bad_cafe_0001);
    let mut outcomes = std::collections::HashMap::new();
    let mut round = 0;
    let mut attempts = 0;
    while round < 4 {
        attempts += 1;
        assert!(attempts < 40, "random policies keep failing to load");
        let (mut a4, mut a6) = (Vec::new(), Vec::new());
        let text = policy(&mut rng, &mut a4, &mut a6);
        // Two random rules with the same match and different actions are
        // refused (contradictory): draw another policy.
        let Ok(config) = Config::load_str(&text, "random.toml", Path::new(".")) else {
            continue;
        };
        let policy = CompiledPolicy::compile(&config, &[]).expect("a valid config compiles");
        let pins = PinDir::new(&format!("segprop{round}"));
        let mut dp = Datapath::load(pins.path()).unwrap_or_else(|e| panic!("load: {e}"));
        dp.apply(&policy).unwrap_or_else(|e| panic!("apply: {e}"));
        for _ in 0..500 {
            let v6 = rng.below(3) == 0;
            let addr = |rng: &mut Rng| -> [u8; 16] {
                let mut out = [0u8; 16];
                if v6 {
                    let mut a = if a6.is_empty() || rng.below(5) == 0 {
                        rng.bytes()
                    } else {
                        a6[rng.below(a6.len() as u64) as usize]
                    };
                    a[15 - rng.below(8) as usize] ^= rng.below(256) as u8;
                    out = a;
                } else {
                    let mut a = if rng.below(5) == 0 {
                        rng.bytes()
                    } else {
                        a4[rng.below(a4.len() as u64) as usize]
                    };
                    a[3 - rng.below(2) as usize] ^= rng.below(256) as u8;
                    out[..4].copy_from_slice(&a);
                }
                out
            };
            let (src, dst) = (addr(&mut rng), addr(&mut rng));
            let sport = rng.below(65536) as u16;
            let dport = match rng.below(4) {
                0 => 1 + rng.below(100) as u16,
                1 => [0, 1, 255, 256, 65535, 1000, 1100][rng.below(7) as usize],
                _ => rng.below(65536) as u16,
            };
            let (proto, l4) = match rng.below(5) {
                0 => (PROTO_TCP, tcp(sport, dport, TCP_SYN, 0)),
                1 => (PROTO_TCP, tcp(sport, dport, TCP_ACK, 0)),
                2 => (PROTO_UDP, udp(sport, dport, 0)),
                3 if v6 => (PROTO_ICMPV6, icmp(rng.below(256) as u8, 0)),
                3 => (PROTO_ICMP, icmp(rng.below(256) as u8, 0)),
                _ => (47, vec![0u8; 8]),
            };
            let frame = if v6 {
                v6_frame(src, dst, proto, &l4)
            } else {
                let s: [u8; 4] = src[..4].try_into().unwrap();
                let d: [u8; 4] = dst[..4].try_into().unwrap();
                v4_frame(s, d, proto, &l4)
            };
            let packet = parse(&frame[..]).expect("a well-formed frame parses");
            let dir = if rng.below(2) == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let want = policy.decide(dir, &packet);
            let (prog, pass, drop) = match dir {
                Direction::Ingress => (programs::INGRESS, XDP_PASS, XDP_DROP),
                Direction::Egress => (programs::EGRESS, TC_PASS, TC_DROP),
            };
            let expected = match want.verdict {
                Verdict::Pass | Verdict::Audit => pass,
                Verdict::Drop => drop,
            };
            let got = dp
                .test_run(prog, &frame, 1)
                .unwrap_or_else(|e| panic!("test_run: {e}"))
                .action;
            assert_eq!(
                got, expected,
                "round {round}: {dir:?} {packet:?} explain says {want:?}\npolicy:\n{text}"
            );
            // Each packet is judged as a first packet, as explain does.
            clear_flows(&mut dp);
            *outcomes.entry(want.reason.name()).or_insert(0) += 1;
        }
        round += 1;
    }
    eprintln!("outcomes over {round} policies ({attempts} drawn): {outcomes:?}");
    for reason in [
        "rule_allow",
        "rule_deny",
        "rule_audit",
        "default_deny",
        "deny_list",
        "failsafe",
    ] {
        assert!(
            outcomes.get(reason).copied().unwrap_or(0) > 0,
            "no packet decided by {reason}: {outcomes:?}"
        );
    }
}
