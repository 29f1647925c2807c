//! Zones, rules, segmentation, flows, failsafe and mode: parsing and every refusal.

use std::path::Path;
use std::time::Duration;

use tierguard_common::packet::{PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use tierguard_common::segment::RuleAction;

use super::*;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::load_str(text, "p.toml", Path::new("/nonexistent"))
}

/// The only error of `text`, with its line and column.
fn only_error(text: &str) -> (usize, usize, String) {
    let errs = load(text).expect_err("config should be refused").0;
    assert_eq!(errs.len(), 1, "expected one error, got {errs:?}");
    let e = errs.into_iter().next().unwrap();
    assert_eq!(e.file, "p.toml");
    (e.line, e.column, e.message)
}

const ZONES: &str = r#"
[[zones]]
name = "edge"
cidrs = ["10.10.0.0/16", "2001:db8:10::/48"]
[[zones]]
name = "core"
description = "the core tier"
cidrs = ["10.30.0.0/16"]
"#;

#[test]
fn without_segmentation_nothing_changes() {
    let c = load("[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/8\"]\n").unwrap();
    assert!(!c.segmentation.enabled);
    assert_eq!(c.mode, Mode::Enforce);
    assert!(c.zones.is_empty() && c.rules.is_empty());
    assert_eq!(c.flows, FlowsConfig::default());
    assert_eq!(c.failsafe, FailsafeConfig::default());
}

#[test]
fn zones_rules_or_the_section_enable_segmentation() {
    assert!(load(ZONES).unwrap().segmentation.enabled);
    assert!(load("[segmentation]\n").unwrap().segmentation.enabled);
    let c = load("[[rules]]\nname = \"r\"\nfrom = \"world\"\nto = \"host\"\naction = \"deny\"\n")
        .unwrap();
    assert!(c.segmentation.enabled);
    // Defaults: deny between zones, allow within one.
    assert!(!c.segmentation.default_allow);
    assert!(c.segmentation.intra_zone_allow);
    let c = load("[segmentation]\ndefault = \"allow\"\nintra_zone = \"deny\"\n").unwrap();
    assert!(c.segmentation.default_allow && !c.segmentation.intra_zone_allow);
    // Audit mode applies without segmentation too.
    let c = load("mode = \"audit\"\n").unwrap();
    assert_eq!(c.mode, Mode::Audit);
    assert!(!c.segmentation.enabled);
}

#[test]
fn zones_and_rules_parse() {
    let c = load(&format!(
        r#"{ZONES}
[[rules]]
name = "public-https"
from = "world"
to = ["edge"]
protocol = "tcp"
ports = [443, 8443, "9000-9100", 444, "445"]
action = "allow"
description = "the public site"

[[rules]]
name = "pings"
from = ["edge", "core"]
to = "any"
protocol = "icmp"
icmp_types = [8, 0]
action = "audit"

[[rules]]
name = "no-core"
from = "any"
to = "core"
action = "deny"
"#
    ))
    .unwrap();
    assert_eq!(c.zones.len(), 2);
    assert_eq!(c.zones[0].prefixes.len(), 2);
    assert_eq!(c.zones[1].description.as_deref(), Some("the core tier"));
    let r = &c.rules[0];
    assert_eq!((r.origin.line, r.origin.column), (11, 8));
    assert_eq!(r.from, [ZoneRef::World]);
    assert_eq!(r.to, [ZoneRef::Zone(0)]);
    assert_eq!(r.protocol, Protocol::Tcp);
    assert_eq!(
        r.ports.as_deref(),
        Some(&[(443, 445), (8443, 8443), (9000, 9100)][..])
    );
    assert_eq!(r.action, RuleAction::Allow);
    let r = &c.rules[1];
    assert_eq!(r.icmp_types.as_deref(), Some(&[(0, 0), (8, 8)][..]));
    assert_eq!(r.action, RuleAction::Audit);
    assert_eq!(zone_ids(&r.to, c.zones.len()), [0, 1, 2, 3]);
    let r = &c.rules[2];
    assert_eq!(r.protocol, Protocol::Any);
    assert_eq!(r.port_ranges(), [(0, 65535)]);
    assert_eq!(zone_ids(&r.from, 2), [0, 1, 2, 3]);
}

#[test]
fn unknown_zone_in_from_or_to_is_named_at_its_place() {
    let (l, c, m) = only_error(&format!(
        "{ZONES}[[rules]]\nname = \"r\"\nfrom = [\"edge\", \"dmz\"]\nto = \"core\"\naction = \"allow\"\n"
    ));
    assert_eq!((l, c), (11, 17));
    assert!(m.contains("rule 'r': unknown zone 'dmz' in from"), "{m}");
    let (l, c, m) = only_error(&format!(
        "{ZONES}[[rules]]\nname = \"r\"\nfrom = \"edge\"\nto = \"cor\"\naction = \"allow\"\n"
    ));
    assert_eq!((l, c), (12, 6));
    assert!(m.contains("unknown zone 'cor' in to"), "{m}");
    let (_, _, m) = only_error(&format!(
        "{ZONES}[[rules]]\nname = \"r\"\nfrom = []\nto = \"core\"\naction = \"allow\"\n"
    ));
    assert!(m.contains("from names no zone"), "{m}");
}

#[test]
fn duplicate_and_reserved_zone_names_are_refused() {
    let (l, c, m) = only_error(&format!(
        "{ZONES}[[zones]]\nname = \"edge\"\ncidrs = [\"10.11.0.0/16\"]\n"
    ));
    assert_eq!((l, c), (10, 8));
    assert!(
        m.contains("duplicate zone name 'edge' (first defined at line 3)"),
        "{m}"
    );
    for name in ["world", "host", "any"] {
        let (l, c, m) = only_error(&format!(
            "[[zones]]\nname = \"{name}\"\ncidrs = [\"10.0.0.0/8\"]\n"
        ));
        assert_eq!((l, c), (2, 8));
        assert!(
            m.contains(&format!("zone name '{name}' is reserved")),
            "{m}"
        );
    }
    let (_, _, m) = only_error("[[zones]]\nname = \"a b\"\ncidrs = [\"10.0.0.0/8\"]\n");
    assert!(m.contains("zone name 'a b' must be"), "{m}");
    let (_, _, m) = only_error("[[zones]]\nname = \"a\"\n");
    assert!(m.contains("zone 'a' has neither cidrs nor files"), "{m}");
}

#[test]
fn the_same_prefix_in_two_zones_is_refused_but_nesting_is_fine() {
    let (l, c, m) = only_error(&format!(
        "{ZONES}[[zones]]\nname = \"dmz\"\ncidrs = [\"10.20.0.0/16\", \"10.30.0.0/16\"]\n"
    ));
    assert_eq!((l, c), (11, 26));
    assert!(
        m.contains("10.30.0.0/16 is already in zone 'core' (at p.toml:8:10)"),
        "{m}"
    );
    // Nested prefixes of different lengths: the most specific wins.
    let c = load(&format!(
        "{ZONES}[[zones]]\nname = \"core-db\"\ncidrs = [\"10.30.5.0/24\"]\n"
    ))
    .unwrap();
    assert_eq!(c.zones.len(), 3);
    // Written twice in one zone: kept once.
    let c = load("[[zones]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\", \"10.0.0.0/8\"]\n").unwrap();
    assert_eq!(c.zones[0].prefixes.len(), 1);
}

#[test]
fn zone_files_load_and_name_their_bad_lines_and_duplicates() {
    let dir = std::env::temp_dir().join(format!("tg-zone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("edge.txt"),
        "# edge\n10.10.0.0/16\n\n  10.30.0.0/16 # oops\nnope\n",
    )
    .unwrap();
    let text =
        format!("{ZONES}[[zones]]\nname = \"more\"\nfiles = [\"edge.txt\", \"missing.txt\"]\n");
    let errs = Config::load_str(&text, "p.toml", &dir).unwrap_err().0;
    let file = dir.join("edge.txt").display().to_string();
    let got: Vec<(String, usize, usize)> = errs
        .iter()
        .map(|e| (e.file.clone(), e.line, e.column))
        .collect();
    assert_eq!(
        got,
        [
            (file.clone(), 5, 1),
            (file.clone(), 2, 1),
            (file, 4, 3),
            ("p.toml".into(), 11, 22),
        ],
        "{errs:?}"
    );
    assert!(errs[0].message.contains("'nope'"));
    assert!(
        errs[1]
            .message
            .contains("10.10.0.0/16 is already in zone 'edge'")
    );
    assert!(errs[3].message.contains("cannot read zone file"));
    std::fs::write(dir.join("edge.txt"), "10.40.0.0/16\n2001:db8:40::/48\n").unwrap();
    let text = format!(
        "{ZONES}[[zones]]\nname = \"more\"\nfiles = [\"edge.txt\"]\ncidrs = [\"10.41.0.0/16\"]\n"
    );
    let c = Config::load_str(&text, "p.toml", &dir).unwrap();
    let got: Vec<String> = c.zones[2]
        .prefixes
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, ["10.41.0.0/16", "10.40.0.0/16", "2001:db8:40::/48"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_cidr_in_a_zone_is_refused_with_its_place() {
    let (l, c, m) =
        only_error("[[zones]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\", \"10.1.2.3/16\"]\n");
    assert_eq!((l, c), (3, 24));
    assert!(m.contains("did you mean 10.1.0.0/16"), "{m}");
}

fn rule(body: &str) -> String {
    format!("{ZONES}[[rules]]\nname = \"r\"\nfrom = \"edge\"\nto = \"core\"\n{body}")
}

#[test]
fn ports_and_types_only_where_they_mean_something() {
    let (l, c, m) = only_error(&rule(
        "protocol = \"icmp\"\nports = [22]\naction = \"allow\"\n",
    ));
    assert_eq!((l, c), (14, 9));
    assert!(
        m.contains("rule 'r': ports apply to protocol tcp or udp, not icmp"),
        "{m}"
    );
    let (_, _, m) = only_error(&rule("ports = [22]\naction = \"allow\"\n"));
    assert!(m.contains("not any"), "{m}");
    let (l, c, m) = only_error(&rule(
        "protocol = \"udp\"\nicmp_types = [8]\naction = \"allow\"\n",
    ));
    assert_eq!((l, c), (14, 14));
    assert!(
        m.contains("icmp_types apply to protocol icmp or icmpv6, not udp"),
        "{m}"
    );
}

#[test]
fn bad_ports_are_each_refused_with_their_place() {
    let errs = load(&rule(
        "protocol = \"tcp\"\nports = [70000, \"10-5\", \"x\", 22, -1]\naction = \"allow\"\n",
    ))
    .unwrap_err()
    .0;
    let got: Vec<(usize, usize)> = errs.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(got, [(14, 10), (14, 17), (14, 25), (14, 34)], "{errs:?}");
    assert!(
        errs[0]
            .message
            .contains("70000 is out of range: expected 0 to 65535")
    );
    assert!(errs[1].message.contains("range '10-5' is empty (10 > 5)"));
    assert!(errs[2].message.contains("'x' is not a number or a range"));
    assert!(errs[3].message.contains("-1 is out of range"));
    let (l, c, m) = only_error(&rule(
        "protocol = \"tcp\"\nports = []\naction = \"allow\"\n",
    ));
    assert_eq!((l, c), (14, 9));
    assert!(m.contains("ports is an empty array"), "{m}");
    let (_, _, m) = only_error(&rule(
        "protocol = \"icmp\"\nicmp_types = [256]\naction = \"allow\"\n",
    ));
    assert!(m.contains("256 is out of range: expected 0 to 255"), "{m}");
    // The edges are fine.
    load(&rule(
        "protocol = \"tcp\"\nports = [0, 65535, \"0-65535\"]\naction = \"allow\"\n",
    ))
    .unwrap();
}

#[test]
fn bad_action_protocol_mode_and_default_are_refused() {
    let (l, c, m) = only_error(&rule("action = \"reject\"\n"));
    assert_eq!((l, c), (13, 10));
    assert!(
        m.contains("action 'reject' is not one of allow, deny, audit"),
        "{m}"
    );
    let (l, c, m) = only_error(&rule("protocol = \"sctp\"\naction = \"deny\"\n"));
    assert_eq!((l, c), (13, 12));
    assert!(
        m.contains("protocol 'sctp' is not one of tcp, udp, icmp, icmpv6, any"),
        "{m}"
    );
    let (l, c, m) = only_error("mode = \"permissive\"\n");
    assert_eq!((l, c), (1, 8));
    assert!(
        m.contains("mode 'permissive' is not \"enforce\" or \"audit\""),
        "{m}"
    );
    let (l, c, m) = only_error("[segmentation]\ndefault = \"drop\"\n");
    assert_eq!((l, c), (2, 11));
    assert!(
        m.contains("segmentation.default 'drop' is not \"allow\" or \"deny\""),
        "{m}"
    );
    let (_, _, m) = only_error("[segmentation]\nintra_zone = \"maybe\"\n");
    assert!(m.contains("segmentation.intra_zone 'maybe'"), "{m}");
    let (l, _, m) = only_error("[segmentation]\ndefault = \"deny\"\nstrict = true\n");
    assert_eq!(l, 3);
    assert!(m.contains("unknown field `strict`"), "{m}");
    let (_, _, m) = only_error(&rule("action = \"allow\"\npriority = 3\n"));
    assert!(m.contains("unknown field `priority`"), "{m}");
}

#[test]
fn contradictory_rules_are_refused_and_duplicates_named() {
    let two = |a: &str, b: &str, extra_b: &str| {
        format!(
            "{ZONES}[[rules]]\nname = \"a\"\nfrom = [\"edge\"]\nto = \"core\"\nprotocol = \"tcp\"\nports = [443, 444]\naction = \"{a}\"\n\
             [[rules]]\nname = \"b\"\nfrom = \"edge\"\nto = [\"core\"]\nprotocol = \"tcp\"\nports = [\"443-444\"]\naction = \"{b}\"\n{extra_b}"
        )
    };
    let (l, c, m) = only_error(&two("allow", "deny", ""));
    assert_eq!((l, c), (17, 8));
    assert!(
        m.contains(
            "rule 'b' (deny) matches exactly what rule 'a' (allow, line 10) matches: contradictory"
        ),
        "{m}"
    );
    // The same action twice is redundant, not contradictory.
    load(&two("allow", "allow", "")).unwrap();
    // A different port set is a different match (precedence decides the overlap).
    let text = two("allow", "deny", "").replace("[\"443-444\"]", "[443]");
    load(&text).unwrap();
    // "any" is the same as naming every zone.
    let text = format!(
        "{ZONES}[[rules]]\nname = \"a\"\nfrom = \"any\"\nto = \"core\"\naction = \"allow\"\n\
         [[rules]]\nname = \"b\"\nfrom = [\"world\", \"host\", \"edge\", \"core\"]\nto = \"core\"\naction = \"audit\"\n"
    );
    assert!(only_error(&text).2.contains("contradictory"));
    let (l, _, m) = only_error(&two("allow", "allow", "").replace("name = \"b\"", "name = \"a\""));
    assert_eq!(l, 17);
    assert!(
        m.contains("duplicate rule name 'a' (first defined at line 10)"),
        "{m}"
    );
}

#[test]
fn flows_take_durations_in_bounds() {
    let c = load(
        "[flows]\ntcp_timeout = \"2h\"\ntcp_closing_timeout = 5\nudp_timeout = \"90s\"\nother_timeout = \"1m\"\n",
    )
    .unwrap();
    assert_eq!(c.flows.tcp_timeout, Duration::from_secs(7200));
    assert_eq!(c.flows.tcp_closing_timeout, Duration::from_secs(5));
    assert_eq!(c.flows.udp_timeout, Duration::from_secs(90));
    assert_eq!(c.flows.other_timeout, Duration::from_secs(60));
    let d = load("").unwrap().flows;
    assert_eq!(
        (
            d.tcp_timeout,
            d.tcp_closing_timeout,
            d.udp_timeout,
            d.other_timeout
        ),
        (
            Duration::from_secs(3600),
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(30)
        )
    );
    let (l, c, m) = only_error("[flows]\nudp_timeout = \"ten minutes\"\n");
    assert_eq!((l, c), (2, 15));
    assert!(
        m.contains("flows.udp_timeout 'ten minutes' is not a duration"),
        "{m}"
    );
    let (_, _, m) = only_error("[flows]\ntcp_timeout = \"8d\"\n");
    assert!(
        m.contains("flows.tcp_timeout = \"8d\" is out of range: expected 1s to 7d"),
        "{m}"
    );
    let (_, _, m) = only_error("[flows]\nother_timeout = 0\n");
    assert!(m.contains("flows.other_timeout = 0 is out of range"), "{m}");
    let (_, _, m) = only_error("[flows]\nother_timeout = true\n");
    assert!(m.contains("expected an integer or a string"), "{m}");
}

#[test]
fn failsafe_defaults_cover_nd_and_dhcp_and_name_entries_in_order() {
    let c = load("[agent]\nmetrics_address = \"127.0.0.1:9100\"\n").unwrap();
    let e = c.failsafe.entries(c.agent.metrics_address.port());
    let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, BUILTIN_FAILSAFE);
    assert_eq!(
        (e[0].proto, e[0].ports.as_slice()),
        (PROTO_TCP, &[(22, 22)][..])
    );
    assert!(
        e[0].from.is_empty(),
        "SSH matches only once management ranges are given"
    );
    assert_eq!(e[1].ports, [(9100, 9100)]);
    assert_eq!(
        (e[2].proto, e[2].ports.as_slice()),
        (PROTO_ICMPV6, &[(133, 137)][..])
    );
    assert_eq!(e[2].from[0].to_string(), "::/0");
    assert_eq!(
        (e[3].proto, e[3].ports.as_slice()),
        (PROTO_UDP, &[(68, 68)][..])
    );
    assert_eq!(e[3].from[0].to_string(), "0.0.0.0/0");
    assert_eq!(e[4].ports, [(546, 546)]);
}

#[test]
fn failsafe_section_parses() {
    let c = load(
        r#"
[failsafe]
management = ["192.0.2.0/24", "2001:db8:99::/64"]
scrape = ["192.0.2.10/32"]
ssh_port = 2222
neighbor_discovery = false
dhcp = false
[[failsafe.allow]]
name = "bgp"
protocol = "tcp"
ports = [179]
from = ["10.0.0.1/32"]
[[failsafe.allow]]
name = "pings"
protocol = "icmp"
from = ["10.0.0.0/8"]
"#,
    )
    .unwrap();
    let e = c.failsafe.entries(9642);
    let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["ssh", "metrics", "bgp", "pings"]);
    assert_eq!(e[0].ports, [(2222, 2222)]);
    assert_eq!(e[0].from.len(), 2);
    assert_eq!(e[2].ports, [(179, 179)]);
    assert_eq!(e[3].ports, [(0, 255)], "all types when omitted");
    assert_eq!(c.failsafe.allow[0].origin.line, 9);
    let c = load("[failsafe]\nssh = false\nmetrics = false\n").unwrap();
    assert_eq!(c.failsafe.entries(9642).len(), 3);
}

#[test]
fn failsafe_refusals() {
    let (l, c, m) = only_error("[failsafe]\nmanagement = [\"192.0.2.1/24\"]\n");
    assert_eq!((l, c), (2, 15));
    assert!(m.contains("did you mean 192.0.2.0/24"), "{m}");
    let (_, _, m) = only_error("[failsafe]\nssh_port = 0\n");
    assert!(m.contains("failsafe.ssh_port = 0 is out of range"), "{m}");
    let entry = |body: &str| format!("[[failsafe.allow]]\nname = \"x\"\n{body}");
    let (l, _, m) = only_error(&entry("protocol = \"any\"\nfrom = [\"10.0.0.0/8\"]\n"));
    assert_eq!(l, 3);
    assert!(
        m.contains("failsafe protocol 'any' is not one of tcp, udp, icmp, icmpv6"),
        "{m}"
    );
    let (_, _, m) = only_error(&entry(
        "protocol = \"icmp\"\nports = [1]\nfrom = [\"10.0.0.0/8\"]\n",
    ));
    assert!(m.contains("ports apply to tcp or udp"), "{m}");
    let (_, _, m) = only_error(&entry(
        "protocol = \"tcp\"\nicmp_types = [1]\nfrom = [\"10.0.0.0/8\"]\n",
    ));
    assert!(m.contains("icmp_types apply to icmp or icmpv6"), "{m}");
    let (l, c, m) = only_error(&entry("protocol = \"tcp\"\nports = [179]\nfrom = []\n"));
    assert_eq!((l, c), (5, 8));
    assert!(m.contains("has no `from` ranges"), "{m}");
    let (_, _, m) = only_error(&entry("protocol = \"tcp\"\n"));
    assert!(m.contains("missing field `from`"), "{m}");
    let (l, c, m) = only_error(
        "[[failsafe.allow]]\nname = \"ssh\"\nprotocol = \"tcp\"\nfrom = [\"10.0.0.0/8\"]\n",
    );
    assert_eq!((l, c), (2, 8));
    assert!(m.contains("duplicate failsafe entry name 'ssh'"), "{m}");
}

#[test]
fn more_than_32_failsafe_entries_are_refused_at_the_first_extra_one() {
    let many = |n: usize| {
        (0..n)
            .map(|i| {
                format!(
                    "[[failsafe.allow]]\nname = \"e{i}\"\nprotocol = \"tcp\"\nports = [{}]\nfrom = [\"10.0.0.0/8\"]\n",
                    1000 + i
                )
            })
            .collect::<String>()
    };
    // Five built-in entries and 27 extensions fit.
    load(&many(27)).unwrap();
    let (l, c, m) = only_error(&many(28));
    assert_eq!((l, c), (27 * 5 + 2, 8));
    assert!(
        m.contains("too many failsafe entries: 5 built-in and 28 [[failsafe.allow]]; at most 32"),
        "{m}"
    );
    // Turning built-ins off makes room.
    load(&format!("[failsafe]\ndhcp = false\n{}", many(29))).unwrap();
}
