//! `tierguard matrix`: what each zone may reach in each other zone, read back
//! from the compiled port tables (so it shows what the kernel enforces, not
//! what the rules were meant to say).

use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;
use tierguard_common::{
    packet::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    segment::{
        PROTO_OTHER, RuleAction, SEG_DEFAULT_ALLOW, SEG_ENABLED, SEG_INTRA_ALLOW, ZONE_HOST,
        ZONE_WORLD,
    },
};

use crate::check::load;
use crate::cli::{ConfigArgs, MatrixArgs};
use crate::config::{Config, ConfigErrors, format_ranges, merge_ranges};
use crate::policy::CompiledPolicy;

/// The whole table, as printed by `--json`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Matrix {
    pub mode: &'static str,
    /// Whether zones and rules are evaluated at all.
    pub segmentation: bool,
    /// What applies when no rule matches: between two zones, within one.
    pub default: &'static str,
    pub intra_zone: &'static str,
    pub zones: Vec<ZoneRow>,
    /// Checked before everything else; never dropped.
    pub failsafe: Vec<FailsafeRow>,
    /// Every (from, to) pair, in zone id order; empty without segmentation.
    pub pairs: Vec<Pair>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ZoneRow {
    pub name: String,
    /// Configured prefixes (none for the built-in zones).
    pub cidrs: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FailsafeRow {
    pub name: String,
    pub protocol: &'static str,
    /// Node-side ports (tcp, udp) or types (icmp, icmpv6).
    pub ports: Vec<[u16; 2]>,
    /// Remote ranges; empty: the entry matches nothing.
    pub from: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Pair {
    pub from: String,
    pub to: String,
    /// What applies to everything no rule below matches.
    pub default: &'static str,
    pub allow: Vec<Access>,
    pub audit: Vec<Access>,
    pub deny: Vec<Access>,
}

/// Packets of one protocol class that rules treat alike.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Access {
    /// tcp, udp, icmp, icmpv6 or other (every other IP protocol).
    pub protocol: &'static str,
    /// Destination ports (tcp, udp) or types (icmp, icmpv6), merged; empty for other.
    pub ports: Vec<[u16; 2]>,
    /// The rules that decide these packets, in rule order.
    pub rules: Vec<String>,
}

/// Protocol classes in the order shown, with their names and full range.
const CLASSES: [(u8, &str, u16); 5] = [
    (PROTO_TCP, "tcp", u16::MAX),
    (PROTO_UDP, "udp", u16::MAX),
    (PROTO_ICMP, "icmp", 255),
    (PROTO_ICMPV6, "icmpv6", 255),
    (PROTO_OTHER, "other", 0),
];

fn word(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

fn proto_name(proto: u8) -> &'static str {
    CLASSES
        .iter()
        .find(|c| c.0 == proto)
        .map_or("other", |c| c.1)
}

/// Builds the table for a compiled policy.
pub fn matrix(config: &Config, policy: &CompiledPolicy) -> Matrix {
    let seg = &policy.segmentation;
    let flags = seg.meta.flags;
    let zones = seg
        .zones
        .iter()
        .enumerate()
        .map(|(id, z)| ZoneRow {
            name: z.name.clone(),
            cidrs: id
                .checked_sub(2)
                .and_then(|i| config.zones.get(i))
                .map(|z| z.prefixes.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
        })
        .collect();
    let failsafe = config
        .failsafe
        .entries(config.agent.metrics_address.port())
        .iter()
        .map(|f| FailsafeRow {
            name: f.name.clone(),
            protocol: proto_name(f.proto),
            ports: f.ports.iter().map(|&(lo, hi)| [lo, hi]).collect(),
            from: f.from.iter().map(ToString::to_string).collect(),
        })
        .collect();
    let mut pairs = Vec::new();
    if flags & SEG_ENABLED != 0 {
        let n = seg.zones.len() as u16;
        for from in 0..n {
            for to in 0..n {
                pairs.push(pair(policy, from, to));
            }
        }
    }
    Matrix {
        mode: config.mode.name(),
        segmentation: flags & SEG_ENABLED != 0,
        default: word(flags & SEG_DEFAULT_ALLOW != 0),
        intra_zone: word(flags & SEG_INTRA_ALLOW != 0),
        zones,
        failsafe,
        pairs,
    }
}

fn pair(policy: &CompiledPolicy, from: u16, to: u16) -> Pair {
    let seg = &policy.segmentation;
    let flags = seg.meta.flags;
    let default = if from == to {
        word(flags & SEG_INTRA_ALLOW != 0)
    } else {
        word(flags & SEG_DEFAULT_ALLOW != 0)
    };
    let mut p = Pair {
        from: seg.zones[usize::from(from)].name.clone(),
        to: seg.zones[usize::from(to)].name.clone(),
        default,
        allow: Vec::new(),
        audit: Vec::new(),
        deny: Vec::new(),
    };
    for &(class, name, _) in &CLASSES {
        let runs = seg.runs(from, to, class);
        for (action, out) in [
            (RuleAction::Allow, &mut p.allow),
            (RuleAction::Audit, &mut p.audit),
            (RuleAction::Deny, &mut p.deny),
        ] {
            let mine: Vec<_> = runs.iter().filter(|r| r.3 == action).collect();
            if mine.is_empty() {
                continue;
            }
            let mut ids: Vec<u16> = mine.iter().map(|r| r.2).collect();
            ids.sort_unstable();
            ids.dedup();
            let ports = if class == PROTO_OTHER {
                Vec::new()
            } else {
                merge_ranges(mine.iter().map(|r| (r.0, r.1)).collect())
                    .into_iter()
                    .map(|(lo, hi)| [lo, hi])
                    .collect()
            };
            out.push(Access {
                protocol: name,
                ports,
                rules: ids
                    .iter()
                    .map(|&id| seg.rules[usize::from(id)].name.clone())
                    .collect(),
            });
        }
    }
    p
}

/// Whether `list` covers every protocol whole (what a protocol "any" rule does).
fn covers_everything(list: &[Access]) -> bool {
    CLASSES.iter().all(|&(_, name, max)| {
        list.iter()
            .any(|a| a.protocol == name && (max == 0 || a.ports == [[0, max]]))
    })
}

fn describe(a: &Access) -> String {
    let ranges: Vec<(u16, u16)> = a.ports.iter().map(|r| (r[0], r[1])).collect();
    match a.protocol {
        "other" => "other protocols".to_string(),
        "icmp" | "icmpv6" if ranges == [(0, 255)] => format!("{} (all types)", a.protocol),
        "icmp" | "icmpv6" => format!("{} type {}", a.protocol, format_ranges(&ranges)),
        _ if ranges == [(0, u16::MAX)] => format!("{} (all ports)", a.protocol),
        _ => format!("{} {}", a.protocol, format_ranges(&ranges)),
    }
}

pub fn render_text(m: &Matrix) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "mode: {}", m.mode);
    if !m.segmentation {
        let _ = writeln!(
            s,
            "segmentation: off (no [segmentation], [[zones]] or [[rules]]): what the lists pass, passes"
        );
    } else {
        let _ = writeln!(
            s,
            "segmentation: on; where no rule matches: {} between zones, {} within a zone",
            m.default, m.intra_zone
        );
    }
    let width = m.zones.iter().map(|z| z.name.len()).max().unwrap_or(0);
    let _ = writeln!(s, "\nzones:");
    for (id, z) in m.zones.iter().enumerate() {
        let what = match id as u16 {
            ZONE_WORLD => "every address in no zone".to_string(),
            ZONE_HOST => "the node's own addresses outside every zone".to_string(),
            _ => z.cidrs.join(", "),
        };
        let _ = writeln!(s, "  {:<width$}  {what}", z.name);
    }
    let _ = writeln!(
        s,
        "\nfailsafe (checked first, never dropped by a list or rule):"
    );
    let fw = m.failsafe.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for f in &m.failsafe {
        let ranges: Vec<(u16, u16)> = f.ports.iter().map(|r| (r[0], r[1])).collect();
        let port = if f.protocol.starts_with("icmp") {
            "type"
        } else {
            "port"
        };
        let from = if f.from.is_empty() {
            "nowhere (no ranges given: inactive)".to_string()
        } else {
            f.from.join(", ")
        };
        let _ = writeln!(
            s,
            "  {:<fw$}  {} {port} {} from {from}",
            f.name,
            f.protocol,
            format_ranges(&ranges)
        );
    }
    if !m.segmentation {
        return s;
    }
    let _ = writeln!(
        s,
        "\nreplies of an admitted connection pass without a rule of their own.\n"
    );
    let pw = 2 * width + 4;
    for p in &m.pairs {
        let head = format!("{} -> {}", p.from, p.to);
        let same = if p.from == p.to { ", same zone" } else { "" };
        if p.allow.is_empty() && p.audit.is_empty() && p.deny.is_empty() {
            let _ = writeln!(s, "{head:<pw$}  {} (default{same}: no rule)", p.default);
            continue;
        }
        let _ = writeln!(s, "{head:<pw$}  otherwise {} (default{same})", p.default);
        for (action, list) in [("allow", &p.allow), ("audit", &p.audit), ("deny", &p.deny)] {
            if covers_everything(list) {
                let mut rules: Vec<&str> = Vec::new();
                for a in list {
                    for r in &a.rules {
                        if !rules.contains(&r.as_str()) {
                            rules.push(r);
                        }
                    }
                }
                let _ = writeln!(
                    s,
                    "  {action:<5}  {:<28}  {}",
                    "everything",
                    rules.join(", ")
                );
                continue;
            }
            for a in list {
                let _ = writeln!(
                    s,
                    "  {action:<5}  {:<28}  {}",
                    describe(a),
                    a.rules.join(", ")
                );
            }
        }
    }
    s
}

pub fn run(args: &MatrixArgs) -> ExitCode {
    let config_args = ConfigArgs {
        config: args.config.clone(),
        ifaces: Vec::new(),
    };
    // The node's addresses do not change what crosses between zones.
    let loaded = load(&config_args).and_then(|c| CompiledPolicy::compile(&c, &[]).map(|p| (c, p)));
    let (config, policy) = match loaded {
        Ok(x) => x,
        Err(ConfigErrors(errors)) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s); policy refused", errors.len());
            return ExitCode::from(2);
        }
    };
    let m = matrix(&config, &policy);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&m).expect("matrix serialises")
        );
    } else {
        print!("{}", render_text(&m));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn build(text: &str) -> Matrix {
        let c = Config::load_str(text, "p.toml", Path::new(".")).unwrap();
        let p = CompiledPolicy::compile(&c, &[]).unwrap();
        matrix(&c, &p)
    }

    const POLICY: &str = r#"
[[zones]]
name = "edge"
cidrs = ["10.10.0.0/16", "fd00:10::/48"]
[[zones]]
name = "core"
cidrs = ["10.30.0.0/16"]
[[rules]]
name = "https"
from = "world"
to = "edge"
protocol = "tcp"
ports = [443]
action = "allow"
[[rules]]
name = "https-alt"
from = "world"
to = "edge"
protocol = "tcp"
ports = [444, 445, "8000-8080"]
action = "allow"
[[rules]]
name = "no-8080"
from = "any"
to = "edge"
protocol = "tcp"
ports = [8080]
action = "deny"
[[rules]]
name = "watch"
from = "edge"
to = "core"
action = "audit"
[[rules]]
name = "ping"
from = "edge"
to = "core"
protocol = "icmp"
icmp_types = [8, 0]
action = "allow"
"#;

    fn pair<'a>(m: &'a Matrix, from: &str, to: &str) -> &'a Pair {
        m.pairs
            .iter()
            .find(|p| p.from == from && p.to == to)
            .unwrap()
    }

    #[test]
    fn every_pair_with_merged_ranges_and_the_rules_behind_them() {
        let m = build(POLICY);
        assert!(m.segmentation);
        assert_eq!((m.default, m.intra_zone), ("deny", "allow"));
        let names: Vec<&str> = m.zones.iter().map(|z| z.name.as_str()).collect();
        assert_eq!(names, ["world", "host", "edge", "core"]);
        assert_eq!(m.zones[2].cidrs, ["10.10.0.0/16", "fd00:10::/48"]);
        assert_eq!(m.pairs.len(), 16);
        let p = pair(&m, "world", "edge");
        assert_eq!(p.default, "deny");
        assert_eq!(
            p.allow,
            [Access {
                protocol: "tcp",
                ports: vec![[443, 445], [8000, 8079]],
                rules: vec!["https".into(), "https-alt".into()],
            }]
        );
        assert_eq!(
            p.deny,
            [Access {
                protocol: "tcp",
                ports: vec![[8080, 8080]],
                rules: vec!["no-8080".into()],
            }]
        );
        assert_eq!(pair(&m, "host", "edge").deny.len(), 1);
        assert!(pair(&m, "host", "edge").allow.is_empty());
        let p = pair(&m, "edge", "core");
        // "ping" allows what "watch" audits: audit is stricter, so the
        // table holds no allow at all.
        assert!(p.allow.is_empty(), "{p:?}");
        let classes: Vec<&str> = p.audit.iter().map(|a| a.protocol).collect();
        assert_eq!(classes, ["tcp", "udp", "icmp", "icmpv6", "other"]);
        assert_eq!(p.audit[2].ports, [[0, 255]]);
        assert_eq!(p.audit[2].rules, ["watch"]);
        let p = pair(&m, "core", "core");
        assert_eq!((p.default, p.allow.len()), ("allow", 0));
    }

    #[test]
    fn text_lists_each_pair_and_collapses_whole_protocol_coverage() {
        let t = render_text(&build(POLICY));
        assert!(
            t.contains(
                "segmentation: on; where no rule matches: deny between zones, allow within a zone"
            ),
            "{t}"
        );
        assert!(t.contains("  edge   10.10.0.0/16, fd00:10::/48\n"), "{t}");
        assert!(
            t.contains("world -> edge   otherwise deny (default)\n"),
            "{t}"
        );
        assert!(
            t.contains("  allow  tcp 443-445, 8000-8079        https, https-alt\n"),
            "{t}"
        );
        assert!(
            t.contains("  deny   tcp 8080                      no-8080\n"),
            "{t}"
        );
        assert!(t.contains("edge -> core    otherwise deny (default)\n  audit  everything                    watch\n"), "{t}");
        assert!(
            t.contains("core -> core    allow (default, same zone: no rule)\n"),
            "{t}"
        );
        assert!(
            t.contains("world -> core   deny (default: no rule)\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "  ssh                 tcp port 22 from nowhere (no ranges given: inactive)\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("  neighbor_discovery  icmpv6 type 133-137 from ::/0\n"),
            "{t}"
        );
    }

    #[test]
    fn icmp_types_and_other_protocols_are_named_as_such() {
        let m = build(
            "[[zones]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\n\
             [[rules]]\nname = \"pmtu\"\nfrom = \"any\"\nto = \"a\"\nprotocol = \"icmp\"\nicmp_types = [3]\naction = \"allow\"\n\
             [[rules]]\nname = \"v6\"\nfrom = \"world\"\nto = \"a\"\nprotocol = \"icmpv6\"\naction = \"allow\"\n",
        );
        let p = pair(&m, "world", "a");
        assert_eq!(p.allow.len(), 2);
        assert_eq!(describe(&p.allow[0]), "icmp type 3");
        assert_eq!(describe(&p.allow[1]), "icmpv6 (all types)");
        let other = Access {
            protocol: "other",
            ports: Vec::new(),
            rules: Vec::new(),
        };
        assert_eq!(describe(&other), "other protocols");
    }

    #[test]
    fn without_segmentation_there_are_no_pairs() {
        let m = build("[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/8\"]\n");
        assert!(!m.segmentation && m.pairs.is_empty());
        assert!(render_text(&m).contains("segmentation: off"));
    }

    #[test]
    fn json_is_a_stable_structure() {
        let v = serde_json::to_value(build(POLICY)).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "default",
                "failsafe",
                "intra_zone",
                "mode",
                "pairs",
                "segmentation",
                "zones"
            ]
        );
        let p = &v["pairs"][2];
        assert_eq!((&p["from"], &p["to"]), (&"world".into(), &"edge".into()));
        assert_eq!(
            p["allow"][0]["ports"],
            serde_json::json!([[443, 445], [8000, 8079]])
        );
        assert_eq!(v["failsafe"][2]["ports"], serde_json::json!([[133, 137]]));
    }

    #[test]
    fn the_default_policy_shows_the_estate() {
        let c = Config::embedded_default().unwrap();
        let p = CompiledPolicy::compile(&c, &[]).unwrap();
        let m = matrix(&c, &p);
        let a = pair(&m, "world", "edge");
        assert_eq!(a.allow[0].ports, [[443, 443]]);
        let a = pair(&m, "dmz", "core");
        assert_eq!(
            (a.allow[0].protocol, a.allow[0].ports.as_slice()),
            ("tcp", &[[15443, 15443]][..])
        );
        let a = pair(&m, "core", "mirror");
        assert_eq!(a.allow[0].rules, ["core-to-mirror"]);
        let a = pair(&m, "core", "world");
        let allowed: Vec<&str> = a.allow.iter().map(|x| x.protocol).collect();
        assert_eq!(
            allowed,
            ["icmp", "icmpv6"],
            "only PMTU signals leave core for the world"
        );
        let a = pair(&m, "bastion", "core");
        assert!(
            a.allow
                .iter()
                .any(|x| x.protocol == "tcp" && x.ports == [[22, 22]])
        );
        let a = pair(&m, "core", "core");
        assert_eq!(a.deny[0].ports, [[22, 22]]);
    }
}
