//! `tierguard explain`: what would happen to a packet, and which part of the
//! policy decides. It builds the packet, then runs the same parser and the
//! same decision functions as the kernel (`tierguard_common`), against the
//! same compiled tables (`CompiledPolicy::decide`).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use ipnetwork::IpNetwork;
use serde::Serialize;
use tierguard_common::{
    build::{icmp, tcp, udp, v4_frame, v6_frame},
    decide::{NO_ID, NO_ZONE},
    maps::Direction,
    packet::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_SYN},
    reason::Reason,
    segment::SEG_ENABLED,
};

use crate::admin::protocol::BlockInfo;
use crate::check::load;
use crate::cli::{self, ExplainArgs, Proto};
use crate::config::{Config, ConfigErrors};
use crate::policy::{CompiledPolicy, host_addresses_or_empty};

/// The answer, as printed (text or JSON).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: &'static str,
    /// Which stage decided: parse, failsafe, list, segmentation or default.
    pub stage: &'static str,
    pub reason: &'static str,
    /// The list that decided, if any.
    pub list: Option<String>,
    pub list_action: Option<&'static str>,
    /// The configured prefix of that list that matched (the longest).
    pub matched_prefix: Option<String>,
    /// Where that list or rule is defined (file:line:column).
    pub defined_at: Option<String>,
    /// The rule that decided, if any.
    pub rule: Option<String>,
    pub rule_action: Option<&'static str>,
    pub rule_description: Option<String>,
    /// The failsafe entry that let the packet through, if any.
    pub failsafe: Option<String>,
    /// Zones of the source and destination (when segmentation is enabled).
    pub src_zone: Option<String>,
    pub dst_zone: Option<String>,
    /// `enforce` or `audit` (then drops are reported, not done).
    pub mode: &'static str,
    pub direction: &'static str,
    pub packet: String,
    /// Limits the packet meets (ingress, when no earlier stage decided):
    /// whether one of them drops it depends on traffic.
    pub limits: Vec<MatchedLimit>,
    /// The block in force on the source, read from the running agent's
    /// pinned table (see `with_blocks`).
    pub block: Option<BlockInfo>,
    /// Why the blocked table could not be read, if it could not.
    pub blocks_unknown: Option<String>,
}

/// A limit a packet meets.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct MatchedLimit {
    pub name: String,
    /// What it matches, how it counts, its rates and action.
    pub summary: String,
    pub defined_at: String,
}

/// Validated packet description.
pub struct Query {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// ICMP type; None: echo request.
    pub icmp_type: Option<u8>,
    pub direction: Direction,
}

impl Query {
    pub fn from_args(a: &ExplainArgs) -> Result<Query, String> {
        if a.src.is_ipv4() != a.dst.is_ipv4() {
            return Err(format!(
                "--src {} and --dst {} are of different address families",
                a.src, a.dst
            ));
        }
        let v4 = a.src.is_ipv4();
        let proto = match a.proto {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
            Proto::Icmp if v4 => PROTO_ICMP,
            Proto::Icmpv6 if !v4 => PROTO_ICMPV6,
            Proto::Icmp => {
                return Err("--proto icmp needs IPv4 addresses (use icmpv6 for IPv6)".into());
            }
            Proto::Icmpv6 => {
                return Err("--proto icmpv6 needs IPv6 addresses (use icmp for IPv4)".into());
            }
        };
        let ports = matches!(a.proto, Proto::Tcp | Proto::Udp);
        if !ports && (a.dport.is_some() || a.sport.is_some()) {
            return Err("--dport and --sport apply to tcp and udp only".into());
        }
        if ports && a.icmp_type.is_some() {
            return Err("--icmp-type applies to icmp and icmpv6 only".into());
        }
        Ok(Query {
            src: a.src,
            dst: a.dst,
            proto,
            sport: a.sport.unwrap_or(40000),
            dport: a.dport.unwrap_or(0),
            icmp_type: a.icmp_type,
            direction: match a.direction {
                cli::Direction::Ingress => Direction::Ingress,
                cli::Direction::Egress => Direction::Egress,
            },
        })
    }

    /// The frame the kernel would see: the first packet of a connection (a
    /// TCP SYN, a UDP datagram, an echo request or the given ICMP type).
    fn frame(&self) -> Vec<u8> {
        let echo = if self.proto == PROTO_ICMP { 8 } else { 128 };
        let l4 = match self.proto {
            PROTO_TCP => tcp(self.sport, self.dport, TCP_SYN, 0),
            PROTO_UDP => udp(self.sport, self.dport, 0),
            _ => icmp(self.icmp_type.unwrap_or(echo), 0),
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => v4_frame(s.octets(), d.octets(), self.proto, &l4),
            (IpAddr::V6(s), IpAddr::V6(d)) => v6_frame(s.octets(), d.octets(), self.proto, &l4),
            _ => unreachable!("families checked in from_args"),
        }
    }

    fn describe(&self) -> String {
        let name = if self.proto == PROTO_ICMP {
            "icmp"
        } else {
            "icmpv6"
        };
        match (self.proto, self.icmp_type) {
            (PROTO_TCP | PROTO_UDP, _) => {
                let name = if self.proto == PROTO_TCP {
                    "tcp"
                } else {
                    "udp"
                };
                format!(
                    "{name} {} port {} -> {} port {}",
                    self.src, self.sport, self.dst, self.dport
                )
            }
            (_, None) => format!("{name} echo-request {} -> {}", self.src, self.dst),
            (_, Some(t)) => format!("{name} type {t} {} -> {}", self.src, self.dst),
        }
    }
}

/// Explains `q` against a loaded config and its compiled policy.
pub fn explain(config: &Config, policy: &CompiledPolicy, q: &Query) -> Explanation {
    explain_frame(config, policy, q.direction, &q.frame(), q.describe())
}

/// Explains a frame as the kernel would decide it.
fn explain_frame(
    config: &Config,
    policy: &CompiledPolicy,
    dir: Direction,
    frame: &[u8],
    packet: String,
) -> Explanation {
    let (parsed, decision) = policy.decide_frame(dir, frame);
    let stage = match decision.reason {
        Reason::Failsafe => "failsafe",
        Reason::AllowList | Reason::DenyList => "list",
        Reason::RuleAllow | Reason::RuleAudit | Reason::RuleDeny | Reason::Established => {
            "segmentation"
        }
        Reason::NoMatch | Reason::DefaultAllow | Reason::DefaultDeny => "default",
        _ => "parse",
    };
    let seg = &policy.segmentation;
    let mut e = Explanation {
        verdict: decision.verdict.name(),
        stage,
        reason: decision.reason.name(),
        list: None,
        list_action: None,
        matched_prefix: None,
        defined_at: None,
        rule: None,
        rule_action: None,
        rule_description: None,
        failsafe: None,
        src_zone: None,
        dst_zone: None,
        mode: config.mode.name(),
        direction: dir.name(),
        packet,
        limits: Vec::new(),
        block: None,
        blocks_unknown: None,
    };
    let id = usize::from(decision.id);
    match stage {
        "list" if decision.id != NO_ID => {
            if let (Some(l), Ok(p)) = (config.lists.get(id), &parsed) {
                let src = crate::policy::packet_addr(p.family, &p.src);
                e.list = Some(l.name.clone());
                e.list_action = Some(l.action.name());
                e.defined_at = Some(l.origin.to_string());
                e.matched_prefix = l
                    .prefixes
                    .iter()
                    .filter(|n: &&IpNetwork| src.is_some_and(|a| n.contains(a)))
                    .max_by_key(|n| n.prefix())
                    .map(ToString::to_string);
            }
        }
        "segmentation" => {
            if let Some(r) = seg.rules.get(id) {
                e.rule = Some(r.name.clone());
                e.rule_action = Some(r.action.name());
                e.rule_description = r.description.clone();
                e.defined_at = Some(r.origin.clone());
            }
        }
        "failsafe" => e.failsafe = seg.failsafe.get(id).map(|f| f.name.clone()),
        _ => {}
    }
    // The limits come after the lists (ingress only).
    if let Ok(p) = &parsed
        && p.family != 0
        && dir == Direction::Ingress
        && !matches!(
            decision.reason,
            Reason::Failsafe | Reason::AllowList | Reason::DenyList
        )
    {
        let dst_zone = crate::policy::packet_addr(p.family, &p.dst).map_or(0, |a| seg.zone_of(a));
        e.limits = policy
            .limits
            .matching(p, None, dst_zone)
            .into_iter()
            .filter_map(|i| config.limits.get(i))
            .map(|l| MatchedLimit {
                name: l.name.clone(),
                summary: crate::policy::limits::describe(l),
                defined_at: l.origin.to_string(),
            })
            .collect();
    }
    // Zones are shown whenever segmentation is on, even if an earlier stage
    // decided, so the reader sees which pair the rules would have judged.
    if let Ok(p) = &parsed
        && p.family != 0
        && seg.meta.flags & SEG_ENABLED != 0
    {
        let zone = |looked_up: u16, addr: &[u8; 16]| {
            let id = if looked_up == NO_ZONE {
                crate::policy::packet_addr(p.family, addr).map_or(0, |a| seg.zone_of(a))
            } else {
                looked_up
            };
            seg.zones.get(usize::from(id)).map(|z| z.name.clone())
        };
        e.src_zone = zone(decision.src_zone, &p.src);
        e.dst_zone = zone(decision.dst_zone, &p.dst);
    }
    e
}

/// Applies a block of the running agent to an ingress explanation: the
/// blocked stage comes right after the failsafe, so a block in force on the
/// source decides anything but failsafe traffic and unparseable frames.
/// `lookup` is the block covering the source, or why none could be read.
pub fn with_blocks(
    mut e: Explanation,
    lookup: Result<Option<BlockInfo>, String>,
    audit_mode: bool,
) -> Explanation {
    match lookup {
        Err(why) => e.blocks_unknown = Some(why),
        Ok(None) => {}
        Ok(Some(b)) => {
            if !matches!(e.stage, "failsafe" | "parse") {
                e.verdict = if audit_mode { "audit" } else { "drop" };
                e.stage = "blocked";
                e.reason = Reason::Blocked.name();
                e.list = None;
                e.list_action = None;
                e.matched_prefix = None;
                e.defined_at = None;
                e.rule = None;
                e.rule_action = None;
                e.rule_description = None;
                e.limits.clear();
            }
            e.block = Some(b);
        }
    }
    e
}

/// The block covering `src` in the running agent's table under `pin_path`.
fn read_block(
    pin_path: &std::path::Path,
    src: IpAddr,
    config: &Config,
) -> Result<Option<BlockInfo>, String> {
    let pinned = pin_path.join(tierguard_common::maps::names::BLOCKS_V4);
    if !pinned.exists() {
        return Err(format!(
            "blocks unknown: no agent has pinned its maps under {} on this machine (or they are not visible to this user)",
            pin_path.display()
        ));
    }
    let table = crate::datapath::BlockTable::open(pin_path).map_err(|e| {
        format!(
            "blocks unknown: cannot read the running agent's blocked table under {} ({e}); run as root",
            pin_path.display()
        )
    })?;
    let now = crate::datapath::coarse_now_ns();
    let names: Vec<String> = config.limits.iter().map(|l| l.name.clone()).collect();
    table
        .covering(src, now)
        .map(|b| b.map(|b| crate::admin::info(&b, now, &names)))
        .map_err(|e| format!("blocks unknown: {e}"))
}

pub fn render_text(e: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "packet:  {} ({}, first packet of a connection)",
        e.packet, e.direction
    );
    let _ = writeln!(s, "verdict: {}", e.verdict);
    let _ = writeln!(s, "stage:   {}", e.stage);
    let _ = writeln!(s, "reason:  {}", e.reason);
    if e.mode == "audit" {
        let _ = writeln!(
            s,
            "mode:    audit (a drop is only reported: the packet passes)"
        );
    }
    if let (Some(from), Some(to)) = (&e.src_zone, &e.dst_zone) {
        let _ = writeln!(s, "zones:   {from} -> {to}");
    }
    if let (Some(list), Some(action)) = (&e.list, e.list_action) {
        let prefix = e.matched_prefix.as_deref().unwrap_or("?");
        let at = e.defined_at.as_deref().unwrap_or("?");
        let _ = writeln!(
            s,
            "list:    {list} ({action}), matched {prefix}, defined at {at}"
        );
    }
    if let (Some(rule), Some(action)) = (&e.rule, e.rule_action) {
        let at = e.defined_at.as_deref().unwrap_or("?");
        let _ = writeln!(s, "rule:    {rule} ({action}), defined at {at}");
        if let Some(d) = &e.rule_description {
            let _ = writeln!(s, "         {d}");
        }
    }
    if let Some(f) = &e.failsafe {
        let _ = writeln!(
            s,
            "failsafe: {f} (checked first; never dropped by a list or rule)"
        );
    }
    if let Some(b) = &e.block {
        let by = match (&b.limit, b.uid) {
            (Some(l), _) => format!("limit {l}"),
            (None, uid) => format!("admin (uid {})", uid.unwrap_or(0)),
        };
        let why = b
            .reason
            .as_deref()
            .map_or(String::new(), |r| format!(": {r}"));
        let _ = writeln!(
            s,
            "blocked: {} by {by}{why}, until {} ({} s left)",
            b.target, b.until, b.remaining_seconds
        );
    }
    if let Some(why) = &e.blocks_unknown {
        let _ = writeln!(s, "blocks:  {why}");
    }
    for l in &e.limits {
        let _ = writeln!(
            s,
            "limit:   {} ({}), defined at {}",
            l.name, l.summary, l.defined_at
        );
    }
    if !e.limits.is_empty() {
        let _ = writeln!(
            s,
            "         whether a limit drops this packet depends on the traffic counted with it"
        );
    }
    match (e.reason, &e.src_zone, &e.dst_zone) {
        ("no_match", _, _) if e.direction == "ingress" => {
            let _ = writeln!(
                s,
                "list:    none matched the source; nothing else decides, so the packet passes"
            );
        }
        ("no_match", _, _) => {
            let _ = writeln!(
                s,
                "lists apply to ingress and segmentation is off: nothing decides, so the packet passes"
            );
        }
        ("default_allow" | "default_deny", Some(from), Some(to)) => {
            let action = if e.reason == "default_allow" {
                "allow"
            } else {
                "deny"
            };
            let scope = if from == to {
                format!("within zone {from}")
            } else {
                format!("from {from} to {to}")
            };
            let _ = writeln!(
                s,
                "rule:    none matches {scope}; the default there is {action}"
            );
        }
        _ => {}
    }
    s
}

pub fn run(args: &ExplainArgs) -> ExitCode {
    let query = match Query::from_args(args) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let loaded = load(&args.config)
        .and_then(|c| CompiledPolicy::compile(&c, &host_addresses_or_empty()).map(|p| (c, p)));
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
    let mut e = explain(&config, &policy, &query);
    if query.direction == Direction::Ingress {
        let block = read_block(&config.agent.pin_path, query.src, &config);
        e = with_blocks(e, block, config.mode == crate::config::Mode::Audit);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&e).expect("explanation serialises")
        );
    } else {
        print!("{}", render_text(&e));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tierguard_common::build::v4_frame;

    use super::*;

    fn setup_with(extra: &str) -> (Config, CompiledPolicy) {
        let c = Config::load_str(
            &format!(
                "{extra}[[lists]]\nname = \"bogons\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\", \"2001:db8::/32\"]\n\
                 [[lists]]\nname = \"partner\"\naction = \"allow\"\ncidrs = [\"203.0.113.128/25\"]\n"
            ),
            "p.toml",
            Path::new("."),
        )
        .unwrap();
        let host = ["10.30.0.5".parse().unwrap(), "192.0.2.77".parse().unwrap()];
        let p = CompiledPolicy::compile(&c, &host).unwrap();
        (c, p)
    }

    fn setup() -> (Config, CompiledPolicy) {
        setup_with("")
    }

    fn q(src: &str, dst: &str, proto: u8) -> Query {
        Query {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            sport: 40000,
            dport: 443,
            icmp_type: None,
            direction: Direction::Ingress,
        }
    }

    const TIERS: &str = r#"
[agent]
metrics_address = "0.0.0.0:9642"
[failsafe]
management = ["10.99.0.0/24"]
[[zones]]
name = "edge"
cidrs = ["10.10.0.0/16"]
[[zones]]
name = "core"
cidrs = ["10.30.0.0/16"]
[[rules]]
name = "public-https"
description = "The public reaches the edge on HTTPS"
from = "world"
to = "edge"
protocol = "tcp"
ports = [443]
action = "allow"
[[rules]]
name = "no-telnet"
from = "any"
to = "any"
protocol = "tcp"
ports = [23]
action = "deny"
[[rules]]
name = "watch-db"
from = "edge"
to = "core"
protocol = "tcp"
ports = [5432]
action = "audit"
"#;

    #[test]
    fn names_the_list_the_prefix_and_where_it_is_defined() {
        let (c, p) = setup();
        let e = explain(&c, &p, &q("203.0.113.7", "10.0.0.1", PROTO_TCP));
        assert_eq!(
            (e.verdict, e.stage, e.reason),
            ("drop", "list", "deny_list")
        );
        assert_eq!(e.list.as_deref(), Some("bogons"));
        assert_eq!(e.matched_prefix.as_deref(), Some("203.0.113.0/24"));
        assert_eq!(e.defined_at.as_deref(), Some("p.toml:2:8"));
        let e = explain(&c, &p, &q("203.0.113.200", "10.0.0.1", PROTO_UDP));
        assert_eq!((e.verdict, e.reason), ("pass", "allow_list"));
        assert_eq!(e.matched_prefix.as_deref(), Some("203.0.113.128/25"));
        let e = explain(&c, &p, &q("2001:db8::1", "fd00::1", PROTO_ICMPV6));
        assert_eq!((e.verdict, e.list.as_deref()), ("drop", Some("bogons")));
        let e = explain(&c, &p, &q("10.9.9.9", "10.0.0.1", PROTO_ICMP));
        assert_eq!(
            (e.verdict, e.stage, e.reason, e.list.clone()),
            ("pass", "default", "no_match", None)
        );
        assert_eq!((e.src_zone.as_deref(), e.rule.as_deref()), (None, None));
        assert!(render_text(&e).contains("none matched the source"));
        assert!(render_text(&e).contains("verdict: pass\n"));
    }

    #[test]
    fn a_rule_decides_with_its_name_action_description_and_zones() {
        let (c, p) = setup_with(TIERS);
        let e = explain(&c, &p, &q("198.51.100.1", "10.10.0.9", PROTO_TCP));
        assert_eq!(
            (e.verdict, e.stage, e.reason),
            ("pass", "segmentation", "rule_allow")
        );
        assert_eq!(e.rule.as_deref(), Some("public-https"));
        assert_eq!(e.rule_action, Some("allow"));
        assert_eq!(
            e.rule_description.as_deref(),
            Some("The public reaches the edge on HTTPS")
        );
        assert_eq!(e.defined_at.as_deref(), Some("p.toml:13:8"));
        assert_eq!(
            (e.src_zone.as_deref(), e.dst_zone.as_deref()),
            (Some("world"), Some("edge"))
        );
        let text = render_text(&e);
        assert!(text.contains("zones:   world -> edge\n"), "{text}");
        assert!(
            text.contains("rule:    public-https (allow), defined at p.toml:13:8\n         The public reaches the edge on HTTPS\n"),
            "{text}"
        );
        let mut telnet = q("10.10.0.9", "10.10.0.8", PROTO_TCP);
        telnet.dport = 23;
        let e = explain(&c, &p, &telnet);
        assert_eq!(
            (e.verdict, e.reason, e.rule.as_deref()),
            ("drop", "rule_deny", Some("no-telnet"))
        );
        let mut db = q("10.10.0.9", "10.30.0.8", PROTO_TCP);
        db.dport = 5432;
        let e = explain(&c, &p, &db);
        assert_eq!(
            (e.verdict, e.reason, e.rule_action),
            ("audit", "rule_audit", Some("audit"))
        );
    }

    #[test]
    fn the_default_stage_says_which_default_applies() {
        let (c, p) = setup_with(TIERS);
        let mut ssh = q("198.51.100.1", "10.30.0.5", PROTO_TCP);
        ssh.dport = 22;
        let e = explain(&c, &p, &ssh);
        assert_eq!(
            (e.verdict, e.stage, e.reason),
            ("drop", "default", "default_deny")
        );
        assert_eq!(
            (e.src_zone.as_deref(), e.dst_zone.as_deref()),
            (Some("world"), Some("core"))
        );
        let text = render_text(&e);
        assert!(
            text.contains("rule:    none matches from world to core; the default there is deny"),
            "{text}"
        );
        let e = explain(&c, &p, &q("10.30.0.1", "10.30.0.5", PROTO_UDP));
        assert_eq!((e.verdict, e.reason), ("pass", "default_allow"));
        assert!(
            render_text(&e).contains("none matches within zone core; the default there is allow")
        );
        // A node address outside every zone is zone host.
        let e = explain(&c, &p, &q("10.10.0.1", "192.0.2.77", PROTO_ICMP));
        assert_eq!(e.dst_zone.as_deref(), Some("host"));
    }

    #[test]
    fn the_failsafe_stage_names_its_entry_in_both_directions() {
        let (c, p) = setup_with(TIERS);
        let mut ssh = q("10.99.0.4", "10.30.0.5", PROTO_TCP);
        ssh.dport = 22;
        let e = explain(&c, &p, &ssh);
        assert_eq!(
            (e.verdict, e.stage, e.reason, e.failsafe.as_deref()),
            ("pass", "failsafe", "failsafe", Some("ssh"))
        );
        // Zones are still shown: the pair the rules would have judged.
        assert_eq!(e.src_zone.as_deref(), Some("world"));
        assert!(render_text(&e).contains("failsafe: ssh (checked first"));
        // The node's reply leaves from port 22 to the management range.
        let mut reply = q("10.30.0.5", "10.99.0.4", PROTO_TCP);
        reply.direction = Direction::Egress;
        reply.sport = 22;
        reply.dport = 40000;
        let e = explain(&c, &p, &reply);
        assert_eq!((e.stage, e.failsafe.as_deref()), ("failsafe", Some("ssh")));
        assert_eq!(e.direction, "egress");
        assert!(render_text(&e).contains("port 40000 (egress, first packet"));
    }

    #[test]
    fn egress_skips_the_lists() {
        let (c, p) = setup();
        let mut out = q("10.0.0.1", "203.0.113.7", PROTO_TCP);
        out.direction = Direction::Egress;
        let e = explain(&c, &p, &out);
        assert_eq!(
            (e.verdict, e.stage, e.reason),
            ("pass", "default", "no_match")
        );
        assert!(render_text(&e).contains("lists apply to ingress"));
    }

    #[test]
    fn icmp_types_other_than_echo() {
        let (c, p) = setup_with(&format!(
            "{TIERS}[[rules]]\nname = \"pmtu\"\nfrom = \"any\"\nto = \"any\"\nprotocol = \"icmp\"\nicmp_types = [3]\naction = \"allow\"\n"
        ));
        let mut unreachable = q("198.51.100.1", "10.30.0.5", PROTO_ICMP);
        unreachable.icmp_type = Some(3);
        let e = explain(&c, &p, &unreachable);
        assert_eq!((e.reason, e.rule.as_deref()), ("rule_allow", Some("pmtu")));
        assert_eq!(e.packet, "icmp type 3 198.51.100.1 -> 10.30.0.5");
        let e = explain(&c, &p, &q("198.51.100.1", "10.30.0.5", PROTO_ICMP));
        assert_eq!(e.reason, "default_deny");
        assert_eq!(e.packet, "icmp echo-request 198.51.100.1 -> 10.30.0.5");
    }

    #[test]
    fn audit_mode_turns_drops_into_audits() {
        let (c, p) = setup_with(&format!("mode = \"audit\"\n{TIERS}"));
        let mut ssh = q("198.51.100.1", "10.30.0.5", PROTO_TCP);
        ssh.dport = 22;
        let e = explain(&c, &p, &ssh);
        assert_eq!(
            (e.verdict, e.reason, e.mode),
            ("audit", "default_deny", "audit")
        );
        assert!(render_text(&e).contains("mode:    audit"));
        let e = explain(&c, &p, &q("203.0.113.7", "10.0.0.1", PROTO_TCP));
        assert_eq!((e.verdict, e.reason), ("audit", "deny_list"));
    }

    #[test]
    fn the_parse_stage_decides_a_frame_it_cannot_read() {
        let (c, p) = setup_with(TIERS);
        let mut frame = v4_frame(
            [198, 51, 100, 1],
            [10, 10, 0, 9],
            PROTO_TCP,
            &tcp(1, 443, TCP_SYN, 0),
        );
        frame.truncate(frame.len() - 4);
        let e = explain_frame(&c, &p, Direction::Ingress, &frame, "cut".into());
        assert_eq!(
            (e.verdict, e.stage, e.reason),
            ("drop", "parse", "truncated")
        );
        assert_eq!((e.rule, e.src_zone), (None, None));
    }

    #[test]
    fn json_keeps_the_old_fields_and_adds_the_new() {
        let (c, p) = setup_with(TIERS);
        let v = serde_json::to_value(explain(&c, &p, &q("198.51.100.1", "10.10.0.9", PROTO_TCP)))
            .unwrap();
        for key in [
            "verdict",
            "stage",
            "reason",
            "list",
            "list_action",
            "matched_prefix",
            "defined_at",
            "rule",
            "rule_action",
            "rule_description",
            "failsafe",
            "src_zone",
            "dst_zone",
            "mode",
            "direction",
            "packet",
        ] {
            assert!(v.get(key).is_some(), "{key} in {v}");
        }
        assert_eq!(v["rule"], "public-https");
        assert_eq!(v["list"], serde_json::Value::Null);
    }

    const LIMITS: &str = r#"
[[limits]]
name = "syn-flood"
protocol = "tcp"
tcp_flags = "syn"
ports = [443]
pps = 100
action = "block"
block_for = "1m"

[[limits]]
name = "udp-any"
protocol = "udp"
per = "global"
bps = "1M"
"#;

    fn admin_block(target: &str) -> BlockInfo {
        BlockInfo {
            target: target.into(),
            origin: "admin".into(),
            limit: None,
            reason: Some("incident 7".into()),
            uid: Some(0),
            started: "2026-11-24T10:00:00.000000000Z".into(),
            until: "2026-11-24T10:10:00.000000000Z".into(),
            remaining_seconds: 300,
        }
    }

    #[test]
    fn the_limits_a_packet_meets_are_named_and_the_verdict_left_to_traffic() {
        let (c, p) = setup_with(LIMITS);
        let e = explain(&c, &p, &q("10.9.9.9", "10.0.0.1", PROTO_TCP));
        assert_eq!((e.verdict, e.reason), ("pass", "no_match"));
        assert_eq!(e.limits.len(), 1);
        assert_eq!(e.limits[0].name, "syn-flood");
        assert_eq!(
            e.limits[0].summary,
            "tcp syn ports 443, per source, 100 pps (burst 100), then block 1m"
        );
        assert!(e.limits[0].defined_at.starts_with("p.toml:"));
        let text = render_text(&e);
        assert!(text.contains("limit:   syn-flood"), "{text}");
        assert!(text.contains("depends on the traffic"), "{text}");
        // Lists come first: a listed source never meets the limits.
        let e = explain(&c, &p, &q("203.0.113.7", "10.0.0.1", PROTO_TCP));
        assert_eq!((e.reason, e.limits.len()), ("deny_list", 0));
        // Nor does egress.
        let mut out = q("10.9.9.9", "10.0.0.1", PROTO_UDP);
        out.direction = Direction::Egress;
        assert!(explain(&c, &p, &out).limits.is_empty());
        let e = explain(&c, &p, &q("10.9.9.9", "10.0.0.1", PROTO_UDP));
        assert_eq!(
            e.limits[0].summary,
            "udp, per global, 1000000 bps (burst 1000000 bits), then drop"
        );
    }

    #[test]
    fn a_block_decides_before_lists_and_limits_but_not_before_the_failsafe() {
        let (c, p) = setup_with(LIMITS);
        let e = explain(&c, &p, &q("203.0.113.200", "10.0.0.1", PROTO_TCP));
        assert_eq!(e.reason, "allow_list");
        let e = with_blocks(e, Ok(Some(admin_block("203.0.113.0/24"))), false);
        assert_eq!(
            (e.verdict, e.stage, e.reason),
            ("drop", "blocked", "blocked")
        );
        assert_eq!((e.list.clone(), e.limits.len()), (None, 0));
        let text = render_text(&e);
        assert!(
            text.contains("blocked: 203.0.113.0/24 by admin (uid 0): incident 7, until 2026-11-24T10:10:00.000000000Z (300 s left)"),
            "{text}"
        );
        // Audit mode reports it.
        let e = explain(&c, &p, &q("10.9.9.9", "10.0.0.1", PROTO_TCP));
        let e = with_blocks(e, Ok(Some(admin_block("10.9.9.9/32"))), true);
        assert_eq!(e.verdict, "audit");
        // The failsafe is never blocked.
        let (c, p) = setup_with(TIERS);
        let mut ssh = q("10.99.0.5", "10.30.0.5", PROTO_TCP);
        ssh.dport = 22;
        let e = with_blocks(
            explain(&c, &p, &ssh),
            Ok(Some(admin_block("10.99.0.0/24"))),
            false,
        );
        assert_eq!((e.verdict, e.stage), ("pass", "failsafe"));
        assert!(e.block.is_some(), "the block is still shown");
        // Unreadable: said so, nothing assumed.
        let e = explain(&c, &p, &q("10.9.9.9", "10.0.0.1", PROTO_TCP));
        let e = with_blocks(e, Err("blocks unknown: no agent".into()), false);
        assert_eq!(
            e.blocks_unknown.as_deref(),
            Some("blocks unknown: no agent")
        );
        assert!(render_text(&e).contains("blocks:  blocks unknown: no agent"));
    }
}
