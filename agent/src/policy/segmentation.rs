//! Zones, rules and failsafe compiled into the contents of the kernel's
//! segmentation maps (layout: `tierguard_common::segment`,
//! docs/design/segmentation.md).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tierguard_common::{
    packet::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    segment::{
        FAILSAFE_PREFIX_CAPACITY, FIRST_ZONE, MAX_PAIR_KEYS, MAX_RULES, PAIR_RECORDS_PER_SLOT,
        PAIR_TABLE, PORT_BLOCK, PORT_BLOCKS_PER_SLOT, PORT_SET_LINES_PER_SLOT,
        PORT_TABLES_PER_SLOT, PROTO_OTHER, PairClasses, PortEntry, PortSet, PortTable, RuleAction,
        SEG_AUDIT_MODE, SEG_DEFAULT_ALLOW, SEG_ENABLED, SEG_FAILSAFE, SEG_INTRA_ALLOW,
        SET_MAX_LINES, SET_RUNS, SegMeta, ZONE_HOST, ZONE_PREFIX_CAPACITY, ZONE_WORLD, class_index,
        decode_rule, failsafe_class, rule_code,
    },
};

use super::zone_table::ZoneTableV4;
use crate::config::{Config, Mode, Protocol, Ranges, Rule, zone_id, zone_ids};

/// A zone as compiled; its id is its index (0 `world`, 1 `host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneInfo {
    pub name: String,
}

/// A rule as compiled; its id is its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub name: String,
    pub action: RuleAction,
    pub description: Option<String>,
    /// Where it is defined (file:line:column).
    pub origin: String,
}

/// What a rule matches, `any` expanded: source and destination zone ids,
/// and per protocol class (`proto_class`) the ports or types it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    pub from: Vec<u16>,
    pub to: Vec<u16>,
    pub ports: Vec<(u8, Ranges)>,
}

/// A failsafe entry as compiled; its id is its bit in the failsafe masks.
/// What it matches: `Config::failsafe.entries`, in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafeInfo {
    pub name: String,
}

/// Map contents for the segmentation part of one policy generation. Keys
/// carry slot 0; the writer sets the generation's slot.
#[derive(Debug, Clone, Default)]
pub struct CompiledSegmentation {
    /// Flags (`SEG_*`) and flow timeouts.
    pub meta: SegMeta,
    pub zones: Vec<ZoneInfo>,
    /// Zone prefixes, the node's own addresses (zone `host`) included.
    pub zone_v4: Vec<(Ipv4Network, u16)>,
    pub zone_v6: Vec<(Ipv6Network, u16)>,
    /// `zone_v4` as direct tables (the kernel's fast path for IPv4).
    pub zone_v4_table: ZoneTableV4,
    pub rules: Vec<RuleInfo>,
    /// `rule_matches[id]` is what `rules[id]` matches.
    pub rule_matches: Vec<RuleMatch>,
    /// (source zone, destination zone) → pair record id (an index into
    /// `pair_records`), for the pairs some rule names; sorted.
    pub pairs: Vec<(u16, u16, u16)>,
    /// What each pair record says per protocol class; record 0 is the
    /// empty one (no rule), so ids index this directly.
    pub pair_records: Vec<PairClasses>,
    /// Port-set lines (rule sets with few port runs).
    pub port_sets: Vec<PortSet>,
    pub port_tables: Vec<PortTable>,
    pub port_blocks: Vec<PortTable>,
    pub failsafe: Vec<FailsafeInfo>,
    /// (protocol class, node-side port) → mask of failsafe entries; only
    /// non-zero masks, sorted.
    pub failsafe_ports: Vec<(u32, u16, u32)>,
    /// Remote prefixes → mask of failsafe entries, already OR-ed with the
    /// masks of every shorter prefix that contains them.
    pub failsafe_v4: Vec<(Ipv4Network, u32)>,
    pub failsafe_v6: Vec<(Ipv6Network, u32)>,
}

/// The protocol classes of pair keys and the highest "port" each has: the
/// destination port, the ICMP type, nothing (0) for other protocols.
const CLASSES: [(u8, u16); 5] = [
    (PROTO_TCP, u16::MAX),
    (PROTO_UDP, u16::MAX),
    (PROTO_ICMP, 255),
    (PROTO_ICMPV6, 255),
    (PROTO_OTHER, 0),
];

/// The classes a rule covers, with its ports (or types) in each.
fn rule_classes(rule: &Rule) -> Vec<(u8, Ranges)> {
    let class = match rule.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Icmp => PROTO_ICMP,
        Protocol::Icmpv6 => PROTO_ICMPV6,
        Protocol::Any => {
            return CLASSES
                .iter()
                .map(|&(c, max)| (c, vec![(0, max)]))
                .collect();
        }
    };
    vec![(class, rule.port_ranges())]
}

impl CompiledSegmentation {
    /// Compiles zones, rules, failsafe and settings. `host` is the node's
    /// addresses. Errors say which table limit is exceeded and by how much.
    pub fn compile(config: &Config, host: &[IpAddr]) -> Result<CompiledSegmentation, Vec<String>> {
        let mut s = CompiledSegmentation {
            meta: meta(config),
            ..CompiledSegmentation::default()
        };
        let mut errors = Vec::new();
        s.compile_zones(config, host, &mut errors);
        s.compile_rules(config, &mut errors);
        s.compile_failsafe(config, &mut errors);
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }

    fn compile_zones(&mut self, config: &Config, host: &[IpAddr], errors: &mut Vec<String>) {
        self.zones = ["world", "host"]
            .into_iter()
            .map(String::from)
            .chain(config.zones.iter().map(|z| z.name.clone()))
            .map(|name| ZoneInfo { name })
            .collect();
        for (i, z) in config.zones.iter().enumerate() {
            let id = zone_id(i);
            for net in &z.prefixes {
                match net {
                    IpNetwork::V4(n) => self.zone_v4.push((*n, id)),
                    IpNetwork::V6(n) => self.zone_v6.push((*n, id)),
                }
            }
        }
        // Configured zones win over `host`: a node's address inside its
        // tier's CIDR is governed by the tier's rules. Without segmentation
        // no zone is looked up: a lists-only policy writes no zone entries.
        let host = if config.segmentation.enabled {
            host
        } else {
            &[]
        };
        for &a in host {
            match a {
                IpAddr::V4(a) if !self.zone_v4.iter().any(|(n, _)| n.contains(a)) => {
                    self.zone_v4.push((Ipv4Network::from(a), ZONE_HOST));
                }
                IpAddr::V6(a) if !self.zone_v6.iter().any(|(n, _)| n.contains(a)) => {
                    self.zone_v6.push((Ipv6Network::from(a), ZONE_HOST));
                }
                _ => {}
            }
        }
        match ZoneTableV4::build(&self.zone_v4) {
            Ok(t) => self.zone_v4_table = t,
            Err(e) => errors.push(e),
        }
        let cap = (ZONE_PREFIX_CAPACITY / 2) as usize;
        for (family, used) in [("IPv4", self.zone_v4.len()), ("IPv6", self.zone_v6.len())] {
            if used > cap {
                errors.push(format!(
                    "{used} {family} zone prefixes (node addresses included); at most {cap} fit: {} too many",
                    used - cap
                ));
            }
        }
    }

    fn compile_rules(&mut self, config: &Config, errors: &mut Vec<String>) {
        let zones = config.zones.len();
        for r in &config.rules {
            self.rules.push(RuleInfo {
                name: r.name.clone(),
                action: r.action,
                description: r.description.clone(),
                origin: r.origin.to_string(),
            });
            self.rule_matches.push(RuleMatch {
                from: zone_ids(&r.from, zones),
                to: zone_ids(&r.to, zones),
                ports: rule_classes(r),
            });
        }
        if self.rules.len() > MAX_RULES as usize {
            errors.push(format!(
                "{} rules; at most {MAX_RULES} fit: {} too many",
                self.rules.len(),
                self.rules.len() - MAX_RULES as usize
            ));
            return;
        }
        let keys = self.count_keys(zones + usize::from(FIRST_ZONE));
        let cap = MAX_PAIR_KEYS as usize;
        if keys > cap {
            errors.push(format!(
                "rules name {keys} (source zone, destination zone, protocol) combinations; at most {cap} fit: {} too many (name zones rather than \"any\")",
                keys - cap
            ));
            return;
        }
        // The rules that cover each key, in id order.
        let mut by_key: BTreeMap<(u16, u16, u8), Vec<u16>> = BTreeMap::new();
        for (id, r) in self.rule_matches.iter().enumerate() {
            for &s in &r.from {
                for &d in &r.to {
                    for (c, _) in &r.ports {
                        by_key.entry((s, d, *c)).or_default().push(id as u16);
                    }
                }
            }
        }
        // Keys covered by the same rules share their port set or table
        // without building it again; equal sets and tables from different
        // rule sets are stored once as well. A rule set with few port runs
        // (a handful of ports or ranges, the usual case) is a port set, the
        // others a port table.
        let mut by_rules: HashMap<(u8, Vec<u16>), u32> = HashMap::new();
        let mut sets: HashMap<Vec<(u16, u16, PortEntry)>, u32> = HashMap::new();
        let mut tables = Interner::default();
        let mut blocks = Interner::default();
        let mut records: BTreeMap<(u16, u16), PairClasses> = BTreeMap::new();
        for ((src, dst, class), ids) in &by_key {
            let entry = *by_rules.entry((*class, ids.clone())).or_insert_with(|| {
                let segs = segments(&self.rules, &self.rule_matches, *class, ids);
                if segs.len() <= SET_RUNS * SET_MAX_LINES as usize {
                    let runs: Vec<(u16, u16, PortEntry)> = segs
                        .iter()
                        .map(|&(lo, hi, code)| (lo as u16, hi as u16, code))
                        .collect();
                    *sets.entry(runs).or_insert_with_key(|runs| {
                        let first = self.port_sets.len() as u32;
                        self.port_sets.extend(PortSet::lines(runs));
                        first + 1
                    })
                } else {
                    PAIR_TABLE | tables.intern(port_table(&segs, &mut blocks))
                }
            });
            records.entry((*src, *dst)).or_default().entries[class_index(*class)] = entry;
        }
        // Pairs whose rules say the same share a record.
        self.pair_records = vec![PairClasses::default()];
        let mut record_ids: HashMap<PairClasses, u16> = HashMap::new();
        for ((src, dst), r) in records {
            let next = u16::try_from(self.pair_records.len()).unwrap_or(u16::MAX);
            let id = *record_ids.entry(r).or_insert_with(|| {
                self.pair_records.push(r);
                next
            });
            self.pairs.push((src, dst, id));
        }
        self.port_tables = tables.list;
        self.port_blocks = blocks.list;
        for (what, used, cap) in [
            (
                "distinct zone-pair records",
                self.pair_records.len() - 1,
                PAIR_RECORDS_PER_SLOT - 1,
            ),
            (
                "port-set lines",
                self.port_sets.len(),
                PORT_SET_LINES_PER_SLOT,
            ),
            (
                "distinct port tables",
                self.port_tables.len(),
                PORT_TABLES_PER_SLOT,
            ),
            (
                "distinct port blocks",
                self.port_blocks.len(),
                PORT_BLOCKS_PER_SLOT,
            ),
        ] {
            if used > cap as usize {
                errors.push(format!(
                    "rules need {used} {what}; at most {cap} fit: {} too many (fewer distinct port sets per zone pair need fewer)",
                    used - cap as usize
                ));
            }
        }
    }

    /// Distinct (source, destination, class) keys the rules name, counted
    /// in a bit set before any is built: `any` to `any` over many zones must
    /// fail fast, not fill memory.
    fn count_keys(&self, zones: usize) -> usize {
        let class_index = |c: u8| CLASSES.iter().position(|x| x.0 == c).unwrap_or(0);
        let mut seen = vec![0u64; (zones * zones * CLASSES.len()).div_ceil(64)];
        let mut keys = 0;
        for r in &self.rule_matches {
            for &s in &r.from {
                for &d in &r.to {
                    for (c, _) in &r.ports {
                        let bit = (usize::from(s) * zones + usize::from(d)) * CLASSES.len()
                            + class_index(*c);
                        if seen[bit / 64] & (1 << (bit % 64)) == 0 {
                            seen[bit / 64] |= 1 << (bit % 64);
                            keys += 1;
                        }
                    }
                }
            }
        }
        keys
    }

    fn compile_failsafe(&mut self, config: &Config, errors: &mut Vec<String>) {
        let entries = config.failsafe.entries(config.agent.metrics_address.port());
        let mut ports: BTreeMap<(u32, u16), u32> = BTreeMap::new();
        let mut v4: BTreeMap<Ipv4Network, u32> = BTreeMap::new();
        let mut v6: BTreeMap<Ipv6Network, u32> = BTreeMap::new();
        for (bit, e) in entries.iter().enumerate() {
            self.failsafe.push(FailsafeInfo {
                name: e.name.clone(),
            });
            // An entry without ranges (SSH before management ranges are
            // given) matches nothing: it takes no table entries.
            let Some(class) = failsafe_class(e.proto) else {
                continue;
            };
            if e.from.is_empty() {
                continue;
            }
            let mask = 1u32 << bit;
            for &(lo, hi) in &e.ports {
                for p in lo..=hi {
                    *ports.entry((class, p)).or_default() |= mask;
                }
            }
            for net in &e.from {
                match net {
                    IpNetwork::V4(n) => *v4.entry(*n).or_default() |= mask,
                    IpNetwork::V6(n) => *v6.entry(*n).or_default() |= mask,
                }
            }
        }
        self.failsafe_ports = ports.into_iter().map(|((c, p), m)| (c, p, m)).collect();
        if !self.failsafe_ports.is_empty() {
            self.meta.flags |= SEG_FAILSAFE;
        }
        // Checked before nesting the masks, which is quadratic.
        let cap = (FAILSAFE_PREFIX_CAPACITY / 2) as usize;
        let mut fits = true;
        for (family, used) in [("IPv4", v4.len()), ("IPv6", v6.len())] {
            if used > cap {
                fits = false;
                errors.push(format!(
                    "{used} {family} failsafe ranges; at most {cap} fit: {} too many",
                    used - cap
                ));
            }
        }
        if !fits {
            return;
        }
        // One longest-prefix lookup must give every entry whose ranges hold
        // the address: each prefix carries the masks of those containing it.
        self.failsafe_v4 = with_containing(&v4, |o, n| {
            o.prefix() <= n.prefix() && o.contains(n.network())
        });
        self.failsafe_v6 = with_containing(&v6, |o, n| {
            o.prefix() <= n.prefix() && o.contains(n.network())
        });
    }

    // ---- lookups over the compiled tables, as the kernel does them ----

    /// Zone id of an address: longest prefix match, `world` if none.
    pub fn zone_of(&self, addr: IpAddr) -> u16 {
        match addr {
            IpAddr::V4(a) => lpm(&self.zone_v4, |n| n.contains(a), |n| n.prefix()),
            IpAddr::V6(a) => lpm(&self.zone_v6, |n| n.contains(a), |n| n.prefix()),
        }
        .unwrap_or(ZONE_WORLD)
    }

    /// Failsafe entries (mask) whose remote ranges hold `addr`.
    pub fn failsafe_addr_mask(&self, addr: IpAddr) -> u32 {
        match addr {
            IpAddr::V4(a) => lpm(&self.failsafe_v4, |n| n.contains(a), |n| n.prefix()),
            IpAddr::V6(a) => lpm(&self.failsafe_v6, |n| n.contains(a), |n| n.prefix()),
        }
        .unwrap_or(0)
    }

    /// Failsafe entries (mask) naming this class and node-side port.
    pub fn failsafe_port_mask(&self, class: u32, port: u16) -> u32 {
        self.failsafe_ports
            .binary_search_by_key(&(class, port), |&(c, p, _)| (c, p))
            .map_or(0, |i| self.failsafe_ports[i].2)
    }

    /// The pair record of a zone pair (0: no rule names it).
    pub fn pair_record(&self, src: u16, dst: u16) -> u16 {
        self.pairs
            .binary_search_by_key(&(src, dst), |p| (p.0, p.1))
            .map_or(0, |i| self.pairs[i].2)
    }

    /// Entry `class` (`class_index`) of a pair record (0 past the end).
    pub fn pair_entry(&self, record: u16, class: usize) -> u32 {
        self.pair_records
            .get(usize::from(record))
            .and_then(|r| r.entries.get(class))
            .copied()
            .unwrap_or(0)
    }

    /// The node's own addresses that landed in zone `host`.
    pub fn host_prefixes(&self) -> Vec<IpNetwork> {
        let v4 = self
            .zone_v4
            .iter()
            .filter(|z| z.1 == ZONE_HOST)
            .map(|z| z.0.into());
        let v6 = self
            .zone_v6
            .iter()
            .filter(|z| z.1 == ZONE_HOST)
            .map(|z| z.0.into());
        v4.chain(v6).collect()
    }

    /// Entry `hi` of a port table (0 past the end, as an empty map slot).
    pub fn port_table_entry(&self, table: u32, hi: u8) -> PortEntry {
        self.port_tables
            .get(table as usize)
            .map_or(0, |t| t.entries[usize::from(hi)])
    }

    /// Entry `lo` of a port block (0 past the end).
    pub fn port_block_entry(&self, block: u32, lo: u8) -> PortEntry {
        self.port_blocks
            .get(block as usize)
            .map_or(0, |t| t.entries[usize::from(lo)])
    }

    /// The rule runs of a zone pair and class read back from the tables:
    /// (first port, last port, rule id, action), adjacent equal entries merged.
    pub fn runs(&self, src: u16, dst: u16, class: u8) -> Vec<(u16, u16, u16, RuleAction)> {
        let entry = self.pair_entry(self.pair_record(src, dst), class_index(class));
        if entry == 0 {
            return Vec::new();
        }
        let mut out: Vec<(u16, u16, u16, RuleAction)> = Vec::new();
        let mut push = |port: u16, last: u16, e: PortEntry| {
            let Some((id, action)) = decode_rule(e) else {
                return;
            };
            match out.last_mut() {
                Some(r) if u32::from(r.1) + 1 == u32::from(port) && (r.2, r.3) == (id, action) => {
                    r.1 = last;
                }
                _ => out.push((port, last, id, action)),
            }
        };
        if entry & PAIR_TABLE == 0 {
            // A port set: its runs, line after line.
            for s in self.port_sets.iter().skip((entry - 1) as usize) {
                for i in 0..SET_RUNS {
                    if s.lo[i] <= s.hi[i] {
                        push(s.lo[i], s.hi[i], s.codes[i]);
                    }
                }
                if s.more == 0 {
                    break;
                }
            }
            return out;
        }
        let table = entry & !PAIR_TABLE;
        for hi in 0..=255u8 {
            let base = u16::from(hi) << 8;
            let e = self.port_table_entry(table, hi);
            if e & PORT_BLOCK == 0 {
                push(base, base | 0xff, e);
                continue;
            }
            for lo in 0..=255u8 {
                let p = base | u16::from(lo);
                push(p, p, self.port_block_entry(e & !PORT_BLOCK, lo));
            }
        }
        out
    }
}

/// Each prefix with its mask OR-ed with the masks of every prefix that
/// `contains` it (itself included).
fn with_containing<N: Copy + Ord>(
    masks: &BTreeMap<N, u32>,
    contains: impl Fn(&N, &N) -> bool,
) -> Vec<(N, u32)> {
    masks
        .keys()
        .map(|n| {
            let m = masks.iter().filter(|(o, _)| contains(o, n));
            (*n, m.fold(0, |acc, (_, m)| acc | m))
        })
        .collect()
}

/// The value of the longest prefix in `list` that `holds` the address.
fn lpm<N, T: Copy>(
    list: &[(N, T)],
    holds: impl Fn(&N) -> bool,
    len: impl Fn(&N) -> u8,
) -> Option<T> {
    list.iter()
        .filter(|(n, _)| holds(n))
        .max_by_key(|(n, _)| len(n))
        .map(|(_, v)| *v)
}

fn meta(config: &Config) -> SegMeta {
    let mut flags = 0;
    let seg = &config.segmentation;
    if seg.enabled {
        flags |= SEG_ENABLED;
    }
    if seg.default_allow {
        flags |= SEG_DEFAULT_ALLOW;
    }
    if seg.intra_zone_allow {
        flags |= SEG_INTRA_ALLOW;
    }
    if config.mode == Mode::Audit {
        flags |= SEG_AUDIT_MODE;
    }
    let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    SegMeta {
        flags,
        _pad: 0,
        tcp_timeout_ns: ns(config.flows.tcp_timeout),
        tcp_closing_timeout_ns: ns(config.flows.tcp_closing_timeout),
        udp_timeout_ns: ns(config.flows.udp_timeout),
        other_timeout_ns: ns(config.flows.other_timeout),
        // Set by the datapath when it writes the policy.
        ns_per_jiffy: 0,
        jiffy_offset_ns: 0,
    }
}

/// Tables (or blocks) stored once each, by content.
#[derive(Default)]
struct Interner {
    index: HashMap<PortTable, u32>,
    list: Vec<PortTable>,
}

impl Interner {
    fn intern(&mut self, t: PortTable) -> u32 {
        *self.index.entry(t).or_insert_with(|| {
            self.list.push(t);
            (self.list.len() - 1) as u32
        })
    }
}

/// The winning rule over the ports of `class`, as runs (first, last,
/// rule code) without gaps filled: at each port the most restrictive
/// action wins (deny > audit > allow), then the lowest rule id.
fn segments(
    rules: &[RuleInfo],
    matches: &[RuleMatch],
    class: u8,
    ids: &[u16],
) -> Vec<(u32, u32, PortEntry)> {
    type Rank = (RuleAction, Reverse<u16>);
    let mut points: Vec<(u32, bool, Rank)> = Vec::new();
    for &id in ids {
        let (r, m) = (&rules[usize::from(id)], &matches[usize::from(id)]);
        let Some((_, ranges)) = m.ports.iter().find(|(c, _)| *c == class) else {
            continue;
        };
        for &(lo, hi) in ranges {
            points.push((u32::from(lo), true, (r.action, Reverse(id))));
            points.push((u32::from(hi) + 1, false, (r.action, Reverse(id))));
        }
    }
    points.sort_unstable_by_key(|p| p.0);
    let mut active: BTreeMap<Rank, u32> = BTreeMap::new();
    let mut out: Vec<(u32, u32, PortEntry)> = Vec::new();
    let mut i = 0;
    while i < points.len() {
        let pos = points[i].0;
        while let Some(&(at, start, rank)) = points.get(i).filter(|p| p.0 == pos) {
            debug_assert_eq!(at, pos);
            if start {
                *active.entry(rank).or_default() += 1;
            } else if let Some(n) = active.get_mut(&rank) {
                *n -= 1;
                if *n == 0 {
                    active.remove(&rank);
                }
            }
            i += 1;
        }
        let Some(&(end, ..)) = points.get(i) else {
            break;
        };
        if let Some((&(action, Reverse(id)), _)) = active.last_key_value() {
            let code = rule_code(id, action);
            match out.last_mut() {
                Some(last) if last.1 + 1 == pos && last.2 == code => last.1 = end - 1,
                _ => out.push((pos, end - 1, code)),
            }
        }
    }
    out
}

/// A port table (by high byte) for sorted, disjoint runs: an entry is the
/// rule code when one run covers its 256 ports, 0 when none touches them,
/// otherwise a block (by low byte).
fn port_table(segs: &[(u32, u32, PortEntry)], blocks: &mut Interner) -> PortTable {
    let mut t = PortTable::EMPTY;
    let mut first = 0;
    for (hi, entry) in t.entries.iter_mut().enumerate() {
        let (start, end) = ((hi as u32) << 8, ((hi as u32) << 8) | 0xff);
        while segs.get(first).is_some_and(|s| s.1 < start) {
            first += 1;
        }
        let n = segs[first..].iter().take_while(|s| s.0 <= end).count();
        *entry = match &segs[first..first + n] {
            [] => 0,
            [(lo, last, code)] if *lo <= start && *last >= end => *code,
            over => {
                let mut b = PortTable::EMPTY;
                for &(lo, last, code) in over {
                    for p in lo.max(start)..=last.min(end) {
                        b.entries[(p - start) as usize] = code;
                    }
                }
                PORT_BLOCK | blocks.intern(b)
            }
        };
    }
    t
}
