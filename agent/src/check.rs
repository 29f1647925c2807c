//! `tierguard check`: validate a policy without touching the datapath, and
//! warn about valid policies that are likely mistakes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::ExitCode;

use tierguard_common::{
    decide::rule_entry,
    packet::PROTO_TCP,
    segment::{
        PORT_BLOCK, RuleAction, SEG_DEFAULT_ALLOW, SEG_ENABLED, SEG_INTRA_ALLOW, ZONE_HOST,
        decode_rule,
    },
};

use crate::cli::{CheckArgs, ConfigArgs};
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::datapath::ifindex;
use crate::policy::{CompiledPolicy, UserTables, host_addresses_or_empty};

/// Loads the config named by the arguments (or the embedded default) and
/// applies the --iface override.
pub fn load(args: &ConfigArgs) -> Result<Config, ConfigErrors> {
    let mut config = match &args.config {
        Some(path) => Config::load_file(path)?,
        None => Config::embedded_default()?,
    };
    if !args.ifaces.is_empty() {
        config.agent.interfaces = args.ifaces.clone();
    }
    Ok(config)
}

/// Errors for a missing or unknown interface.
pub fn interface_errors(config: &Config, from_cli: bool) -> Vec<ConfigError> {
    let file = if from_cli {
        "command line".to_string()
    } else {
        config.origin.clone()
    };
    let err = |message: String| ConfigError {
        file: file.clone(),
        line: 0,
        column: 0,
        message,
    };
    if config.agent.interfaces.is_empty() {
        return vec![err(
            "no interface to enforce on: set agent.interfaces or pass --iface".into(),
        )];
    }
    let mut errors = Vec::new();
    for (n, i) in config.agent.interfaces.iter().enumerate() {
        if config.agent.interfaces[..n].contains(i) {
            errors.push(err(format!("interface '{i}' is given twice")));
        } else if ifindex(i).is_none() {
            errors.push(err(format!("no such interface: '{i}'")));
        }
    }
    errors.extend(crate::config::limit_interface_errors(config));
    errors
}

pub fn check(args: &CheckArgs) -> ExitCode {
    let host = host_addresses_or_empty();
    let result = load(&args.config).and_then(|config| {
        let mut errors = Vec::new();
        if !args.skip_interface_check {
            errors.extend(interface_errors(&config, !args.config.ifaces.is_empty()));
        }
        let policy = CompiledPolicy::compile(&config, &host);
        match policy {
            Ok(p) if errors.is_empty() => Ok((config, p)),
            Ok(_) => Err(ConfigErrors(errors)),
            Err(e) => {
                errors.extend(e.0);
                Err(ConfigErrors(errors))
            }
        }
    });
    match result {
        Ok((config, policy)) => {
            print!("{}", summary(&config, &policy));
            for w in warnings(&config, &policy, &host) {
                eprintln!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s); policy refused", errors.0.len());
            ExitCode::from(2)
        }
    }
}

/// What `check` prints for a valid policy.
pub fn summary(config: &Config, policy: &CompiledPolicy) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "policy OK: {}", config.origin);
    let _ = writeln!(s, "  hash: {}", policy.hash);
    let _ = writeln!(s, "  interfaces: {}", config.agent.interfaces.join(", "));
    let _ = writeln!(s, "  xdp mode: {:?}", config.agent.xdp_mode);
    let _ = writeln!(
        s,
        "  metrics: http://{}/metrics",
        config.agent.metrics_address
    );
    let _ = writeln!(s, "  lists: {}", config.lists.len());
    for l in &policy.lists {
        let _ = writeln!(
            s,
            "    {:<24} {:<5} {} IPv4, {} IPv6 prefixes",
            l.name,
            l.action.name(),
            l.v4_prefixes,
            l.v6_prefixes
        );
    }
    let _ = writeln!(
        s,
        "  table entries: {} IPv4 /24 blocks, {} IPv4 host entries, {} IPv6",
        policy.v4_blocks.len(),
        policy.v4_long.len(),
        policy.v6.len()
    );
    let seg = &policy.segmentation;
    let _ = writeln!(s, "  mode: {}", config.mode.name());
    if seg.meta.flags & SEG_ENABLED == 0 {
        let _ = writeln!(s, "  segmentation: off (lists only)");
    } else {
        let word = |flag| {
            if seg.meta.flags & flag != 0 {
                "allow"
            } else {
                "deny"
            }
        };
        let _ = writeln!(
            s,
            "  segmentation: on, default {}, intra-zone {}; {} zones (and world, host), {} rules",
            word(SEG_DEFAULT_ALLOW),
            word(SEG_INTRA_ALLOW),
            config.zones.len(),
            config.rules.len()
        );
        let _ = writeln!(
            s,
            "    {} zone prefixes ({} node addresses in zone host), {} zone pairs ({} distinct), {} port-set lines, {} port tables, {} port blocks",
            seg.zone_v4.len() + seg.zone_v6.len(),
            seg.host_prefixes().len(),
            seg.pairs.len(),
            seg.pair_records.len() - 1,
            seg.port_sets.len(),
            seg.port_tables.len(),
            seg.port_blocks.len()
        );
    }
    let entries = config.failsafe.entries(config.agent.metrics_address.port());
    let active: Vec<&str> = entries
        .iter()
        .filter(|f| !f.from.is_empty())
        .map(|f| f.name.as_str())
        .collect();
    let _ = writeln!(
        s,
        "  failsafe: {} entries, {} active: {}",
        entries.len(),
        active.len(),
        if active.is_empty() {
            "none".to_string()
        } else {
            active.join(", ")
        }
    );
    let _ = writeln!(s, "  limits: {}", config.limits.len());
    for l in &config.limits {
        let _ = writeln!(
            s,
            "    {:<24} {}",
            l.name,
            crate::policy::limits::describe(l)
        );
    }
    s
}

/// Likely mistakes in a valid policy: management access that a rule or a
/// default drops and the failsafe does not cover, and rules that never
/// decide a packet. `host` is the node's addresses (its zones are judged).
pub fn warnings(config: &Config, policy: &CompiledPolicy, host: &[IpAddr]) -> Vec<String> {
    let mut out = Vec::new();
    if policy.segmentation.meta.flags & SEG_ENABLED == 0 {
        return out;
    }
    let f = &config.failsafe;
    let ssh_gap = if !f.ssh {
        Some("the failsafe's SSH entry is off (ssh = false)")
    } else if f.management.is_empty() {
        Some("[failsafe] management is empty")
    } else {
        None
    };
    if let Some(why) = ssh_gap {
        for (zone, from) in dropped_to_node(policy, host, f.ssh_port) {
            out.push(format!(
                "SSH (tcp {}) to this node (zone {zone}) is dropped from {}, and {why}: a mistake in the rules could lock administrators out; set [failsafe] management to the ranges you administer from",
                f.ssh_port,
                from.join(", ")
            ));
        }
    }
    let metrics_gap = if !f.metrics {
        Some("the failsafe's metrics entry is off (metrics = false)")
    } else if f.scrape.is_empty() {
        Some("[failsafe] scrape is empty")
    } else {
        None
    };
    if let Some(why) = metrics_gap {
        let port = config.agent.metrics_address.port();
        for (zone, from) in dropped_to_node(policy, host, port) {
            out.push(format!(
                "the metrics port (tcp {port}) of this node (zone {zone}) is dropped from {}, and {why}: Prometheus there cannot scrape the agent; set [failsafe] scrape to its ranges",
                from.join(", ")
            ));
        }
    }
    out.extend(shadowed_rules(policy));
    out
}

/// For each zone of the node's addresses (loopback aside: it never crosses
/// an interface), the zones from which a TCP SYN to `port` is dropped.
/// Without addresses (unknown node) the node is judged as zone host.
fn dropped_to_node(
    policy: &CompiledPolicy,
    host: &[IpAddr],
    port: u16,
) -> Vec<(String, Vec<String>)> {
    let seg = &policy.segmentation;
    let mut node_zones: BTreeSet<u16> = host
        .iter()
        .filter(|a| !a.is_loopback())
        .map(|a| seg.zone_of(*a))
        .collect();
    if node_zones.is_empty() {
        node_zones.insert(ZONE_HOST);
    }
    let mut out = Vec::new();
    for dst in node_zones {
        let from: Vec<String> = (0..seg.zones.len() as u16)
            // The node's own addresses talk to it without crossing an interface.
            .filter(|&src| src != ZONE_HOST)
            .filter(|&src| {
                match decode_rule(rule_entry(&UserTables(policy), src, dst, PROTO_TCP, port)) {
                    Some((_, action)) => action == RuleAction::Deny,
                    None if src == dst => seg.meta.flags & SEG_INTRA_ALLOW == 0,
                    None => seg.meta.flags & SEG_DEFAULT_ALLOW == 0,
                }
            })
            .map(|src| seg.zones[usize::from(src)].name.clone())
            .collect();
        if !from.is_empty() {
            out.push((seg.zones[usize::from(dst)].name.clone(), from));
        }
    }
    out
}

/// Rules that win at no port of any pair: every packet they match is
/// decided by a stricter rule (or an equal one defined earlier).
fn shadowed_rules(policy: &CompiledPolicy) -> Vec<String> {
    let seg = &policy.segmentation;
    let mut wins: BTreeSet<u16> = BTreeSet::new();
    let table_entries = seg
        .port_tables
        .iter()
        .chain(&seg.port_blocks)
        .flat_map(|t| t.entries.iter().copied());
    let set_entries = seg.port_sets.iter().flat_map(|s| s.codes.iter().copied());
    for e in table_entries.chain(set_entries) {
        if e & PORT_BLOCK == 0
            && let Some((id, _)) = decode_rule(e)
        {
            wins.insert(id);
        }
    }
    let mut out = Vec::new();
    for (id, (r, m)) in seg.rules.iter().zip(&seg.rule_matches).enumerate() {
        if wins.contains(&(id as u16)) {
            continue;
        }
        // Who decides instead: read the tables over the rule's own match.
        let mut by: BTreeSet<u16> = BTreeSet::new();
        'keys: for &s in &m.from {
            for &d in &m.to {
                for (class, ranges) in &m.ports {
                    for run in seg.runs(s, d, *class) {
                        if ranges.iter().any(|&(lo, hi)| run.0 <= hi && lo <= run.1) {
                            by.insert(run.2);
                        }
                    }
                    if by.len() >= 3 {
                        break 'keys;
                    }
                }
            }
        }
        let names: Vec<String> = by
            .iter()
            .map(|&w| {
                let w = &seg.rules[usize::from(w)];
                format!("'{}' ({})", w.name, w.action.name())
            })
            .collect();
        let stricter = by
            .iter()
            .any(|&w| seg.rules[usize::from(w)].action > r.action);
        out.push(format!(
            "rule '{}' ({}, at {}) never decides a packet: everything it matches is decided by {}{}",
            r.name,
            r.action.name(),
            r.origin,
            names.join(", "),
            if stricter {
                ": the most restrictive action wins, whatever the order"
            } else {
                ", defined earlier with the same action: it is redundant"
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TIERS: &str = r#"
[[zones]]
name = "edge"
cidrs = ["10.10.0.0/16"]
[[zones]]
name = "core"
cidrs = ["10.30.0.0/16"]
"#;

    fn warn(text: &str, host: &[&str]) -> Vec<String> {
        let c = Config::load_str(text, "p.toml", Path::new(".")).unwrap();
        let host: Vec<IpAddr> = host.iter().map(|a| a.parse().unwrap()).collect();
        let p = CompiledPolicy::compile(&c, &host).unwrap();
        warnings(&c, &p, &host)
    }

    #[test]
    fn the_default_policy_warns_about_nothing() {
        let c = Config::embedded_default().unwrap();
        for host in [
            &["127.0.0.1", "10.30.0.5", "fd00:30::5"][..],
            &["192.0.2.9"],
        ] {
            let host: Vec<IpAddr> = host.iter().map(|a| a.parse().unwrap()).collect();
            let p = CompiledPolicy::compile(&c, &host).unwrap();
            assert_eq!(warnings(&c, &p, &host), Vec::<String>::new());
        }
    }

    #[test]
    fn default_deny_without_management_ranges_warns_about_ssh_and_metrics() {
        let w = warn(TIERS, &["127.0.0.1", "10.30.0.5"]);
        assert_eq!(
            w,
            [
                "SSH (tcp 22) to this node (zone core) is dropped from world, edge, and [failsafe] management is empty: a mistake in the rules could lock administrators out; set [failsafe] management to the ranges you administer from",
                "the metrics port (tcp 9642) of this node (zone core) is dropped from world, edge, and [failsafe] scrape is empty: Prometheus there cannot scrape the agent; set [failsafe] scrape to its ranges",
            ]
        );
        // A node outside every zone is judged as zone host.
        let w = warn(TIERS, &["192.0.2.9"]);
        assert!(
            w[0].contains("(zone host) is dropped from world, edge, core"),
            "{w:?}"
        );
        let w = warn(
            &format!("{TIERS}[failsafe]\nssh = false\nscrape = [\"10.0.0.0/8\"]\n"),
            &["10.30.0.5"],
        );
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("and the failsafe's SSH entry is off (ssh = false)"),
            "{w:?}"
        );
        let w = warn(
            &format!("{TIERS}[failsafe]\nmanagement = [\"10.0.0.0/8\"]\nmetrics = false\n"),
            &["10.30.0.5"],
        );
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("metrics port (tcp 9642)") && w[0].contains("(metrics = false)"),
            "{w:?}"
        );
    }

    #[test]
    fn a_deny_rule_warns_even_when_the_default_allows() {
        let open = format!("[segmentation]\ndefault = \"allow\"\n{TIERS}");
        assert_eq!(warn(&open, &["10.30.0.5"]), Vec::<String>::new());
        let w = warn(
            &format!(
                "{open}[[rules]]\nname = \"no-ssh\"\nfrom = \"world\"\nto = \"core\"\nprotocol = \"tcp\"\nports = [22]\naction = \"deny\"\n"
            ),
            &["10.30.0.5"],
        );
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("SSH (tcp 22) to this node (zone core) is dropped from world, and"),
            "{w:?}"
        );
        // Without segmentation nothing is judged.
        assert_eq!(warn("", &["10.30.0.5"]), Vec::<String>::new());
    }

    #[test]
    fn rules_that_never_decide_are_named_with_who_decides_instead() {
        let w = warn(
            &format!(
                r#"{TIERS}
[failsafe]
management = ["10.0.0.0/8"]
scrape = ["10.0.0.0/8"]
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
icmp_types = [8]
action = "allow"
[[rules]]
name = "https"
from = "world"
to = "edge"
protocol = "tcp"
ports = [443]
action = "allow"
[[rules]]
name = "https-again"
from = "world"
to = "edge"
protocol = "tcp"
ports = [443]
action = "allow"
"#
            ),
            &["10.30.0.5"],
        );
        assert_eq!(
            w,
            [
                "rule 'ping' (allow, at p.toml:18:8) never decides a packet: everything it matches is decided by 'watch' (audit): the most restrictive action wins, whatever the order",
                "rule 'https-again' (allow, at p.toml:32:8) never decides a packet: everything it matches is decided by 'https' (allow), defined earlier with the same action: it is redundant",
            ]
        );
    }

    #[test]
    fn the_summary_counts_zones_rules_and_failsafe_entries() {
        let c = Config::embedded_default().unwrap();
        let p = CompiledPolicy::compile(&c, &["192.0.2.9".parse().unwrap()]).unwrap();
        let s = summary(&c, &p);
        assert!(s.contains("  mode: enforce\n"), "{s}");
        assert!(
            s.contains("  segmentation: on, default deny, intra-zone allow; 5 zones (and world, host), 10 rules\n"),
            "{s}"
        );
        assert!(s.contains("1 node addresses in zone host"), "{s}");
        assert!(
            s.contains(
                "  failsafe: 5 entries, 5 active: ssh, metrics, neighbor_discovery, dhcp, dhcpv6\n"
            ),
            "{s}"
        );
        let c = Config::load_str("", "p.toml", Path::new(".")).unwrap();
        let s = summary(&c, &CompiledPolicy::compile(&c, &[]).unwrap());
        assert!(s.contains("  segmentation: off (lists only)\n"), "{s}");
        assert!(
            s.contains("  failsafe: 5 entries, 3 active: neighbor_discovery, dhcp, dhcpv6\n"),
            "{s}"
        );
    }
}
