use std::path::Path;

use super::*;
use crate::config::{Config, ConfigErrors};

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::load_str(text, "p.toml", Path::new("/nonexistent"))
}

/// The errors of a refused config, as `line:column: message`.
fn errors(text: &str) -> Vec<String> {
    load(text)
        .expect_err("config should be refused")
        .0
        .iter()
        .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
        .collect()
}

/// The one error of a limit table written after `[[limits]]\nname = "x"\n`.
fn one(body: &str) -> String {
    let errs = errors(&format!("[[limits]]\nname = \"x\"\n{body}"));
    assert_eq!(errs.len(), 1, "expected one error: {errs:#?}");
    errs.into_iter().next().unwrap()
}

#[test]
fn a_complete_limit_loads_with_its_values() {
    let c = load(
        r#"
[[limits]]
name = "syn-flood"
description = "SYNs to the web tier"
protocol = "tcp"
tcp_flags = "syn"
ports = [443, "8000-8100", 8100, "80 - 81"]
to_zone = "host"
interfaces = ["eth0", "eth1"]
per = "source_prefix"
prefix_v4 = 24
prefix_v6 = 48
pps = 100
burst = 200
bps = "10M"
bps_burst = "1M"
action = "block"
block_for = "60s"

[[limits]]
name = "icmp"
protocol = "icmp"
per = "global"
pps = "5k"
action = "audit"
"#,
    )
    .unwrap();
    let l = &c.limits[0];
    assert_eq!(l.name, "syn-flood");
    assert_eq!(l.protocol, LimitProtocol::Tcp);
    assert!(l.syn_only);
    assert_eq!(
        l.ports.as_deref(),
        Some(&[(80, 81), (443, 443), (8000, 8100)][..])
    );
    assert_eq!(
        l.to_zone,
        Some(ZoneTarget {
            name: "host".into(),
            id: 1
        })
    );
    assert_eq!(l.interfaces, ["eth0", "eth1"]);
    assert_eq!(
        (l.per, l.prefix_v4, l.prefix_v6),
        (Per::SourcePrefix, 24, 48)
    );
    assert_eq!(
        l.pps,
        Some(Threshold {
            per_second: 100,
            burst: 200
        })
    );
    assert_eq!(
        l.bps,
        Some(Threshold {
            per_second: 10_000_000,
            burst: 1_000_000
        })
    );
    assert_eq!(l.action, LimitAction::Block);
    assert_eq!(l.block_for, Some(Duration::from_secs(60)));
    assert_eq!((l.origin.line, l.origin.column), (3, 8));
    let g = &c.limits[1];
    assert_eq!(
        (g.per, g.action, g.protocol),
        (Per::Global, LimitAction::Audit, LimitProtocol::Icmp)
    );
    // Bursts default to one second's worth.
    assert_eq!(
        g.pps,
        Some(Threshold {
            per_second: 5000,
            burst: 5000
        })
    );
}

#[test]
fn to_zone_names_a_configured_or_built_in_zone() {
    let c = load(
        "[[zones]]\nname = \"edge\"\ncidrs = [\"10.10.0.0/16\"]\n[[zones]]\nname = \"dmz\"\ncidrs = [\"10.20.0.0/16\"]\n\
         [[limits]]\nname = \"x\"\nto_zone = \"dmz\"\npps = 1\n[[limits]]\nname = \"y\"\nto_zone = \"world\"\npps = 1\n",
    )
    .unwrap();
    assert_eq!(c.limits[0].to_zone.as_ref().map(|z| z.id), Some(3));
    assert_eq!(c.limits[1].to_zone.as_ref().map(|z| z.id), Some(0));
    assert_eq!(
        errors(
            "[[zones]]\nname = \"edge\"\ncidrs = [\"10.10.0.0/16\"]\n[[limits]]\nname = \"x\"\nto_zone = \"core\"\npps = 1\n"
        ),
        ["6:11: limit 'x': unknown zone 'core' in to_zone: the zones are world, host, edge"]
    );
    assert_eq!(
        one("to_zone = \"any\"\npps = 1"),
        "3:11: limit 'x': to_zone = \"any\" is every destination: omit to_zone"
    );
}

#[test]
fn defaults_are_any_protocol_per_source_and_drop() {
    let c = load("[[limits]]\nname = \"x\"\nbps = 1000\n").unwrap();
    let l = &c.limits[0];
    assert_eq!(
        (l.protocol, l.per, l.action),
        (LimitProtocol::Any, Per::Source, LimitAction::Drop)
    );
    assert_eq!(
        l.bps,
        Some(Threshold {
            per_second: 1000,
            burst: MIN_BPS_BURST
        }),
        "a bit burst holds at least one full frame"
    );
    assert_eq!(
        (l.ports.clone(), l.to_zone.clone(), l.block_for),
        (None, None, None)
    );
}

#[test]
fn each_bad_value_is_refused_at_its_place() {
    let cases: &[(&str, &str)] = &[
        ("pps = 0", "3:7: limit 'x': pps: 0 is not greater than zero"),
        (
            "pps = -5",
            "3:7: limit 'x': pps: -5 is not greater than zero",
        ),
        (
            "pps = \"0k\"",
            "3:7: limit 'x': pps: \"0k\" is not greater than zero",
        ),
        (
            "pps = \"lots\"",
            "3:7: limit 'x': pps: \"lots\" is not a number: expected digits with at most one of K, M, G or T, like \"10M\"",
        ),
        (
            "pps = \"2G\"",
            "3:7: limit 'x': pps = \"2G\" is above the maximum of 1000000000 packets per second",
        ),
        ("bps = 0", "3:7: limit 'x': bps: 0 is not greater than zero"),
        (
            "bps = \"2T\"",
            "3:7: limit 'x': bps = \"2T\" is above the maximum of 1000000000000 bits per second",
        ),
        (
            "pps = 10\nburst = 0",
            "4:9: limit 'x': burst: 0 is not greater than zero",
        ),
        (
            "bps = \"10M\"\nbps_burst = 12000",
            "4:13: limit 'x': bps_burst = 12000 is below the minimum of 12144 bits (one 1518-byte frame: a smaller burst would never let a full frame through)",
        ),
        (
            "bps = 1000\nburst = 5",
            "4:9: limit 'x': burst is the packet burst and needs pps (for bps, set bps_burst)",
        ),
        (
            "pps = 1000\nbps_burst = 20000",
            "4:13: limit 'x': bps_burst needs bps",
        ),
        (
            "protocol = \"sctp\"\npps = 1",
            "3:12: limit 'x': unknown protocol 'sctp': expected \"tcp\", \"udp\", \"icmp\", \"icmpv6\" or \"any\"",
        ),
        (
            "protocol = \"udp\"\ntcp_flags = \"syn\"\npps = 1",
            "4:13: limit 'x': tcp_flags needs protocol = \"tcp\" (this limit is for udp): it would match nothing",
        ),
        (
            "protocol = \"tcp\"\ntcp_flags = \"ack\"\npps = 1",
            "4:13: limit 'x': unknown tcp_flags 'ack': the only value is \"syn\" (SYN without ACK)",
        ),
        (
            "protocol = \"icmp\"\nports = [53]\npps = 1",
            "4:9: limit 'x': ports need protocol = \"tcp\" or \"udp\" (this limit is for icmp): it would match nothing",
        ),
        (
            "ports = [53]\npps = 1",
            "3:9: limit 'x': ports need protocol = \"tcp\" or \"udp\" (this limit is for any): it would match nothing",
        ),
        (
            "protocol = \"udp\"\nports = []\npps = 1",
            "4:9: ports is an empty array: omit it to match every one",
        ),
        (
            "protocol = \"udp\"\nports = [70000]\npps = 1",
            "4:10: ports: 70000 is out of range: expected 0 to 65535",
        ),
        (
            "protocol = \"udp\"\nports = [\"9-5\"]\npps = 1",
            "4:10: ports: range '9-5' is empty (9 > 5)",
        ),
        (
            "protocol = \"udp\"\nports = [\"http\"]\npps = 1",
            "4:10: ports: 'http' is not a number or a range like \"9000-9100\"",
        ),
        (
            "to_zone = \"dmz\"\npps = 1",
            "3:11: limit 'x': unknown zone 'dmz' in to_zone: the zones are world, host",
        ),
        (
            "interfaces = []\npps = 1",
            "3:14: limit 'x': interfaces is an empty array: it would match nothing (omit it for every interface)",
        ),
        (
            "interfaces = [\"a/b\"]\npps = 1",
            "3:15: limit 'x': 'a/b' is not a valid interface name",
        ),
        (
            "interfaces = [\"eth0\", \"eth0\"]\npps = 1",
            "3:23: limit 'x': interface 'eth0' is listed twice",
        ),
        (
            "per = \"flow\"\npps = 1",
            "3:7: limit 'x': unknown per 'flow': expected \"source\", \"source_prefix\", \"destination\" or \"global\"",
        ),
        (
            "prefix_v4 = 16\npps = 1",
            "3:13: limit 'x': prefix_v4 applies to per = \"source_prefix\" only",
        ),
        (
            "per = \"source_prefix\"\nprefix_v4 = 0\npps = 1",
            "4:13: limit 'x': prefix_v4 = 0 is out of range: expected 1 to 32 (for one bucket for everyone, use per = \"global\")",
        ),
        (
            "per = \"source_prefix\"\nprefix_v6 = 129\npps = 1",
            "4:13: limit 'x': prefix_v6 = 129 is out of range: expected 1 to 128 (for one bucket for everyone, use per = \"global\")",
        ),
        (
            "pps = 1\naction = \"reject\"",
            "4:10: limit 'x': unknown action 'reject': expected \"drop\", \"block\" or \"audit\"",
        ),
        (
            "pps = 1\naction = \"block\"",
            "4:10: limit 'x': action = \"block\" needs block_for (how long, from 1s to 7d)",
        ),
        (
            "pps = 1\nblock_for = \"1m\"",
            "4:13: limit 'x': block_for applies to action = \"block\" only",
        ),
        (
            "pps = 1\naction = \"block\"\nblock_for = \"8d\"",
            "5:13: limit 'x': block_for = \"8d\" is out of range: expected 1s to 7d",
        ),
        (
            "pps = 1\naction = \"block\"\nblock_for = 0",
            "5:13: limit 'x': block_for = 0 is out of range: expected 1s to 7d",
        ),
        (
            "pps = 1\naction = \"block\"\nblock_for = \"soon\"",
            "5:13: limit 'x': block_for 'soon' is not a duration: expected seconds or a number with a unit, like \"90s\", \"10m\", \"1h\", \"1d\"",
        ),
        (
            "pps = 1\nper = \"destination\"\naction = \"block\"\nblock_for = 60",
            "5:10: limit 'x': action = \"block\" blocks sources and needs per = \"source\" or \"source_prefix\" (a destination limit has no source to block)",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(one(body), *want, "for:\n{body}");
    }
}

#[test]
fn a_limit_without_a_rate_unknown_keys_and_names_are_refused() {
    assert_eq!(
        errors("[[limits]]\nname = \"x\"\nprotocol = \"tcp\"\n"),
        ["2:8: limit 'x': has neither pps nor bps: set a packet rate, a bit rate or both"]
    );
    let e = errors("[[limits]]\nname = \"x\"\npps = 1\nrate = 5\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("4:1: unknown field `rate`"), "{e:?}");
    assert_eq!(
        errors("[[limits]]\nname = \"no spaces\"\npps = 1\n"),
        [
            "2:8: limit 'no spaces': the name must be 1 to 64 characters of letters, digits, '-', '_' or '.'"
        ]
    );
    assert_eq!(
        errors("[[limits]]\nname = \"x\"\npps = 1\n[[limits]]\nname = \"x\"\npps = 2\n"),
        ["5:8: limit 'x': duplicate name (first defined at line 2)"]
    );
}

#[test]
fn at_most_sixteen_limits() {
    let mut text = String::new();
    for i in 0..17 {
        text.push_str(&format!("[[limits]]\nname = \"l{i}\"\npps = 10\n"));
    }
    assert_eq!(
        errors(&text),
        ["50:8: too many limits: at most 16 are supported"]
    );
    let fine: String = text.lines().take(48).map(|l| format!("{l}\n")).collect();
    assert_eq!(load(&fine).unwrap().limits.len(), 16);
}

#[test]
fn every_error_of_a_limit_is_reported_and_nothing_is_half_applied() {
    let e = errors(
        "[[limits]]\nname = \"x\"\nprotocol = \"udp\"\ntcp_flags = \"syn\"\npps = 0\naction = \"block\"\n",
    );
    assert_eq!(e.len(), 3, "{e:#?}");
}

#[test]
fn quantities_parse_and_durations_print() {
    let q = |s: &str| parse_quantity(&IntOrStr::Str(s.into()));
    assert_eq!(q("10M"), Ok(10_000_000));
    assert_eq!(q("10k"), Ok(10_000));
    assert_eq!(q(" 3G "), Ok(3_000_000_000));
    assert_eq!(q("1T"), Ok(1_000_000_000_000));
    assert_eq!(q("42"), Ok(42));
    assert!(q("10m").is_err(), "m is not mega");
    assert!(q("1.5M").is_err());
    assert!(q("M").is_err());
    assert!(q("99999999999999999999").is_err());
    assert!(q("18446744073709552T").unwrap_err().contains("too large"));
    assert_eq!(parse_quantity(&IntOrStr::Int(7)), Ok(7));
    assert_eq!(format_duration(Duration::from_secs(600)), "10m");
    assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    assert_eq!(format_duration(Duration::from_secs(172_800)), "2d");
}

#[test]
fn the_admin_socket_is_an_absolute_path_of_bounded_length() {
    let c = load("").unwrap();
    assert_eq!(
        c.agent.admin_socket,
        Path::new(crate::config::DEFAULT_ADMIN_SOCKET)
    );
    let c = load("[agent]\nadmin_socket = \"/tmp/x/admin.sock\"\n").unwrap();
    assert_eq!(c.agent.admin_socket, Path::new("/tmp/x/admin.sock"));
    let long = format!("/{}", "a".repeat(107));
    for bad in ["admin.sock", "/run/tierguard/", long.as_str()] {
        assert_eq!(
            errors(&format!("[agent]\nadmin_socket = \"{bad}\"\n")),
            [
                "2:16: admin_socket must be an absolute path to a socket file, at most 107 bytes long"
            ],
            "{bad}"
        );
    }
}
