//! Segmentation between zones: the map layout of zones, rules, ports,
//! failsafe and flows, and the pure functions that read them. The kernel and
//! `tierguard explain` both run [`crate::decide::decide`] over these.
//!
//! Layout and its reasons: docs/design/segmentation.md.

use crate::packet::{
    PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

/// Zone id of addresses in no configured zone.
pub const ZONE_WORLD: u16 = 0;
/// Zone id of the node's own addresses that no configured zone covers.
pub const ZONE_HOST: u16 = 1;
/// First id of a configured zone.
pub const FIRST_ZONE: u16 = 2;
/// Zones, the two built-in ones included.
pub const MAX_ZONES: u32 = 1024;
/// Rules; ids are 0..MAX_RULES (u16, `NO_ID` excluded).
pub const MAX_RULES: u32 = 65_535;
/// Zone prefixes per family, both generations together.
pub const ZONE_PREFIX_CAPACITY: u32 = 2 * 65_536;
/// (source zone, destination zone, protocol) combinations a policy's rules
/// may name: a guard on compile time and memory (`any` to `any`).
pub const MAX_PAIR_KEYS: u32 = 262_144;
/// IPv4 zone lookup, first level: one entry per /16, per generation.
pub const ZONE_V4_L1_SIZE: u32 = 65_536;
/// IPv4 zone lookup, second level: blocks of 256 /24s, per generation.
pub const ZONE_V4_BLOCKS_PER_SLOT: u32 = 2048;
/// A first-level entry with this bit names a block (low bits); otherwise
/// its low 16 bits are the zone of the whole /16.
pub const ZONE_L1_BLOCK: u32 = 1 << 31;
/// A block entry with this bit: prefixes longer than /24 exist in this /24,
/// ask the zone trie; the low 16 bits are the /24's own zone.
pub const ZONE_LONGER: u32 = 1 << 16;

/// 256 /24s of a /16: each a zone id, maybe with `ZONE_LONGER`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ZoneBlock {
    pub zones: [u32; 256],
}

impl ZoneBlock {
    pub const EMPTY: ZoneBlock = ZoneBlock { zones: [0; 256] };
}

/// The zone-pair matrix (`TG_PAIR_MATRIX`): for every (source zone,
/// destination zone) a `u16` pair record id (0: no rule names the pair),
/// [`PAIR_LINE`] to a 64-byte line. Read with one array lookup, which the
/// verifier inlines; a hash map lookup is a call into the kernel that costs
/// about 35 ns here (docs/design/segmentation.md, "rule lookup").
pub const PAIR_LINE: u32 = 32;
/// Matrix lines per generation: `MAX_ZONES × MAX_ZONES / PAIR_LINE`.
pub const PAIR_LINES_PER_SLOT: u32 = MAX_ZONES * MAX_ZONES / PAIR_LINE;
/// Pair records per generation (`TG_PAIR_RECORDS`), id 0 unused. Pairs
/// with the same entries share a record.
pub const PAIR_RECORDS_PER_SLOT: u32 = 65_536;
/// Port-set lines per generation (`TG_PORT_SETS`).
pub const PORT_SET_LINES_PER_SLOT: u32 = 32_768;
/// Port runs in one port-set line.
pub const SET_RUNS: usize = 7;
/// Lines one port set may span: a rule set with more runs gets a port table.
pub const SET_MAX_LINES: u32 = 8;
/// Port tables (256 entries, one per high byte of the port) per generation.
pub const PORT_TABLES_PER_SLOT: u32 = 2048;
/// Port blocks (256 entries, one per low byte) per generation.
pub const PORT_BLOCKS_PER_SLOT: u32 = 4096;
/// Failsafe entries (bits of a `u32` mask).
pub const MAX_FAILSAFE: u32 = 32;
/// Failsafe protocol classes: tcp, udp, icmp, icmpv6.
pub const FAILSAFE_CLASSES: u32 = 4;
/// Failsafe remote-address prefixes per family, both generations.
pub const FAILSAFE_PREFIX_CAPACITY: u32 = 2 * 4096;
/// Tracked flows (a shared LRU map; docs/design/segmentation.md).
pub const FLOW_CAPACITY: u32 = 262_144;
/// Per-CPU zone-pair drop counters (source zone, destination zone).
pub const ZONE_DROP_CAPACITY: u32 = 65_536;

/// Protocol class of a rule or pair key: the IP protocol for the four the
/// rules name, [`PROTO_OTHER`] for every other protocol.
pub const PROTO_OTHER: u8 = 0;

#[inline(always)]
pub const fn proto_class(proto: u8) -> u8 {
    match proto {
        PROTO_TCP | PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => proto,
        _ => PROTO_OTHER,
    }
}

/// What a rule's port set is matched against: the destination port for TCP
/// and UDP, the type for ICMP and ICMPv6, 0 for other protocols and for
/// later fragments (which carry no transport header).
#[inline(always)]
pub fn rule_port(p: &Packet) -> u16 {
    if !p.has_l4() {
        return 0;
    }
    match p.proto {
        PROTO_TCP | PROTO_UDP => p.dport,
        PROTO_ICMP | PROTO_ICMPV6 => p.icmp_type as u16,
        _ => 0,
    }
}

/// What a rule does with the packets it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RuleAction {
    Allow = 0,
    /// Count and report as a would-be drop, but pass.
    Audit = 1,
    Deny = 2,
}

impl RuleAction {
    pub const fn from_u8(v: u8) -> Option<RuleAction> {
        match v {
            0 => Some(RuleAction::Allow),
            1 => Some(RuleAction::Audit),
            2 => Some(RuleAction::Deny),
            _ => None,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            RuleAction::Allow => "allow",
            RuleAction::Audit => "audit",
            RuleAction::Deny => "deny",
        }
    }
}

/// Protocol classes, in the order of a pair record's entries.
pub const PAIR_CLASSES: usize = 5;

/// Index of a protocol class (`proto_class`) in a pair record.
#[inline(always)]
pub const fn class_index(class: u8) -> usize {
    match class {
        PROTO_TCP => 0,
        PROTO_UDP => 1,
        PROTO_ICMP => 2,
        PROTO_ICMPV6 => 3,
        _ => 4,
    }
}

/// The matrix line and the position in it of a zone pair in generation
/// `slot`; `None` for a zone id past `MAX_ZONES` (no rule names it).
#[inline(always)]
pub const fn pair_position(slot: u8, src_zone: u16, dst_zone: u16) -> Option<(u32, usize)> {
    if src_zone as u32 >= MAX_ZONES || dst_zone as u32 >= MAX_ZONES {
        return None;
    }
    let i = src_zone as u32 * MAX_ZONES + dst_zone as u32;
    Some((
        slot as u32 * PAIR_LINES_PER_SLOT + i / PAIR_LINE,
        (i % PAIR_LINE) as usize,
    ))
}

/// 32 entries of the zone-pair matrix: pair record ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairLine {
    pub records: [u16; PAIR_LINE as usize],
}
const _: () = assert!(core::mem::size_of::<PairLine>() == 64);

impl PairLine {
    pub const EMPTY: PairLine = PairLine {
        records: [0; PAIR_LINE as usize],
    };
}

/// What a zone pair's rules say per protocol class (`class_index` order):
/// 0 for no rule, `PAIR_TABLE | t` for port table `t`, otherwise the first
/// line of its port set plus one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairClasses {
    pub entries: [u32; PAIR_CLASSES],
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PairClasses>() == 24);

/// A pair-record entry with this bit names a port table (low bits).
pub const PAIR_TABLE: u32 = 1 << 31;

/// Up to `SET_RUNS` port runs (first, last, rule code) of a rule set with
/// few runs, in port order; unused runs are empty (first 1, last 0).
/// `more` is 1 when the set goes on in the next line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortSet {
    pub lo: [u16; SET_RUNS],
    pub hi: [u16; SET_RUNS],
    pub codes: [PortEntry; SET_RUNS],
    pub more: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PortSet>() == 64);

impl PortSet {
    pub const EMPTY: PortSet = PortSet {
        lo: [1; SET_RUNS],
        hi: [0; SET_RUNS],
        codes: [0; SET_RUNS],
        more: 0,
        _pad: 0,
    };

    /// The code of the run holding `port` in this line, 0 if none.
    #[inline(always)]
    pub fn find(&self, port: u16) -> PortEntry {
        let mut i = 0;
        while i < SET_RUNS {
            if port >= self.lo[i] && port <= self.hi[i] {
                return self.codes[i];
            }
            i += 1;
        }
        0
    }

    /// Runs (first, last, code) laid out in lines; the caller checks the
    /// count against `SET_MAX_LINES`.
    pub fn lines(runs: &[(u16, u16, PortEntry)]) -> impl Iterator<Item = PortSet> + '_ {
        let n = runs.len().div_ceil(SET_RUNS).max(1);
        (0..n).map(move |l| {
            let mut s = PortSet::EMPTY;
            let part = runs.iter().skip(l * SET_RUNS).take(SET_RUNS);
            for (i, &(lo, hi, code)) in part.enumerate() {
                s.lo[i] = lo;
                s.hi[i] = hi;
                s.codes[i] = code;
            }
            s.more = u32::from(l + 1 < n);
            s
        })
    }
}

/// A port-table entry: 0 means no rule; [`PORT_BLOCK`] set means "look in
/// port block (entry & !PORT_BLOCK)"; otherwise a rule code
/// (`rule_code(id, action)`).
pub type PortEntry = u32;
pub const PORT_BLOCK: u32 = 1 << 31;
const RULE_PRESENT: u32 = 1 << 30;

pub const fn rule_code(id: u16, action: RuleAction) -> PortEntry {
    RULE_PRESENT | ((action as u32) << 16) | id as u32
}

/// The rule id and action a non-zero, non-block entry names.
#[inline(always)]
pub const fn decode_rule(e: PortEntry) -> Option<(u16, RuleAction)> {
    if e & RULE_PRESENT == 0 || e & PORT_BLOCK != 0 {
        return None;
    }
    match RuleAction::from_u8(((e >> 16) & 0xff) as u8) {
        Some(a) => Some(((e & 0xffff) as u16, a)),
        None => None,
    }
}

/// 256 port entries: a port table (indexed by the port's high byte) or a
/// port block (indexed by the low byte).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortTable {
    pub entries: [PortEntry; 256],
}

impl PortTable {
    pub const EMPTY: PortTable = PortTable { entries: [0; 256] };
}

/// Per-generation segmentation settings (`TG_SEG_META[slot]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegMeta {
    /// `SEG_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// Idle time after which a flow no longer admits replies, by state.
    pub tcp_timeout_ns: u64,
    pub tcp_closing_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    pub other_timeout_ns: u64,
    /// The flow clock: if non-zero, flows are stamped with
    /// `jiffies × ns_per_jiffy − jiffy_offset_ns` (a memory read, no helper
    /// call), which the agent set up to read as CLOCK_MONOTONIC_COARSE; if
    /// zero, with `bpf_ktime_get_coarse_ns`. Written by the agent when it
    /// applies a policy, not part of the policy.
    pub ns_per_jiffy: u64,
    pub jiffy_offset_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SegMeta>() == 56);

impl SegMeta {
    /// The flow clock's reading for `jiffies` (see [`SegMeta::ns_per_jiffy`]);
    /// `None` when the coarse clock is to be read instead.
    #[inline(always)]
    pub fn jiffy_time(&self, jiffies: u64) -> Option<u64> {
        if self.ns_per_jiffy == 0 {
            return None;
        }
        Some(
            jiffies
                .wrapping_mul(self.ns_per_jiffy)
                .wrapping_sub(self.jiffy_offset_ns),
        )
    }
}

/// Zones and rules are evaluated (otherwise the lists' verdict is final).
pub const SEG_ENABLED: u32 = 1;
/// Zone pairs without a matching rule are allowed (otherwise denied).
pub const SEG_DEFAULT_ALLOW: u32 = 2;
/// Traffic within a zone without a matching rule is allowed.
pub const SEG_INTRA_ALLOW: u32 = 4;
/// Global audit mode: decide and report everything, drop nothing (frames
/// the parser refuses included).
pub const SEG_AUDIT_MODE: u32 = 8;
/// The failsafe tables hold entries.
pub const SEG_FAILSAFE: u32 = 16;

/// Key of the failsafe port table: `(slot * FAILSAFE_CLASSES + class) * 65536 + port`.
#[inline(always)]
pub const fn failsafe_class(proto: u8) -> Option<u32> {
    match proto {
        PROTO_TCP => Some(0),
        PROTO_UDP => Some(1),
        PROTO_ICMP => Some(2),
        PROTO_ICMPV6 => Some(3),
        _ => None,
    }
}

/// The node-side port a failsafe entry names: the destination port of
/// ingress traffic, the source port of egress traffic (the replies of a
/// service on the node, or a client on the node such as DHCP); the type for ICMP.
#[inline(always)]
pub fn failsafe_port(p: &Packet, egress: bool) -> Option<u16> {
    if !p.has_l4() {
        return None;
    }
    match p.proto {
        PROTO_TCP | PROTO_UDP => Some(if egress { p.sport } else { p.dport }),
        PROTO_ICMP | PROTO_ICMPV6 => Some(p.icmp_type as u16),
        _ => None,
    }
}

/// Key of an LPM trie of the zone or failsafe tables: the generation slot
/// then the address; the trie's prefix length counts the slot's 8 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotAddrV4 {
    pub slot: u8,
    pub addr: [u8; 4],
    /// Explicit, so no uninitialised byte ever reaches the kernel.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SlotAddrV4>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotAddrV6 {
    pub slot: u8,
    pub addr: [u8; 16],
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SlotAddrV6>() == 20);

/// Trie prefix length of a zone or failsafe prefix: the slot byte, then the address bits.
pub const fn trie_prefix_len(addr_len: u8) -> u32 {
    8 + addr_len as u32
}

/// A flow as its initiator sent it: the first packet's addresses and ports.
/// For ICMP the ports are 0 (echo id is not tracked).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Coarse monotonic time of the last packet seen in either direction.
    pub last_seen_ns: u64,
    /// Rule that admitted the flow (`NO_ID` for a default allow).
    pub rule: u16,
    /// `FLOW_*` bits.
    pub flags: u8,
    /// `Direction` of the first packet.
    pub direction: u8,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 16);

/// A FIN or RST was seen: the short closing timeout applies.
pub const FLOW_CLOSING: u8 = 1;

/// The flow key of the packet as sent.
#[inline(always)]
pub fn flow_key(p: &Packet) -> FlowKey {
    let (sport, dport) = flow_ports(p);
    FlowKey {
        src: p.src,
        dst: p.dst,
        sport,
        dport,
        proto: p.proto,
        family: p.family,
        _pad: [0; 2],
    }
}

/// The key of the flow this packet would be a reply to.
#[inline(always)]
pub fn reply_key(p: &Packet) -> FlowKey {
    let (sport, dport) = flow_ports(p);
    FlowKey {
        src: p.dst,
        dst: p.src,
        sport: dport,
        dport: sport,
        proto: p.proto,
        family: p.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn flow_ports(p: &Packet) -> (u16, u16) {
    match p.proto {
        PROTO_TCP | PROTO_UDP => (p.sport, p.dport),
        _ => (0, 0),
    }
}

/// Whether an allowed packet opens a flow whose replies may pass: a TCP SYN
/// without ACK, any UDP datagram, an ICMP or ICMPv6 echo request. Later
/// fragments and other protocols open none (their replies need a rule).
#[inline(always)]
pub fn opens_flow(p: &Packet) -> bool {
    if !p.has_l4() {
        return false;
    }
    match p.proto {
        PROTO_TCP => p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN,
        PROTO_UDP => true,
        PROTO_ICMP => p.icmp_type == 8,
        PROTO_ICMPV6 => p.icmp_type == 128,
        _ => false,
    }
}

/// Whether a packet may be a reply at all: TCP without SYN-only, UDP, ICMP
/// echo reply. (A SYN is never a reply; a SYN-ACK is.)
#[inline(always)]
pub fn may_be_reply(p: &Packet) -> bool {
    if !p.has_l4() {
        return false;
    }
    match p.proto {
        PROTO_TCP => p.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN,
        PROTO_UDP => true,
        PROTO_ICMP => p.icmp_type == 0,
        PROTO_ICMPV6 => p.icmp_type == 129,
        _ => false,
    }
}

/// Whether the packet closes its TCP flow (FIN or RST).
#[inline(always)]
pub fn closes_flow(p: &Packet) -> bool {
    p.proto == PROTO_TCP && p.tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// Whether a flow last seen at `last_seen_ns` is still alive at `now_ns`.
#[inline(always)]
pub fn flow_alive(meta: &SegMeta, key: &FlowKey, v: &FlowValue, now_ns: u64) -> bool {
    let timeout = if key.proto == PROTO_TCP {
        if v.flags & FLOW_CLOSING != 0 {
            meta.tcp_closing_timeout_ns
        } else {
            meta.tcp_timeout_ns
        }
    } else if key.proto == PROTO_UDP {
        meta.udp_timeout_ns
    } else {
        meta.other_timeout_ns
    };
    // Saturating: another CPU may have stamped the flow a tick ahead of this
    // CPU's reading; that is "just seen", not "idle for ages".
    now_ns.saturating_sub(v.last_seen_ns) <= timeout
}

/// Per-CPU flow-table counters (`TG_FLOW_STATS`), by index.
pub const FLOW_STAT_CREATED: u32 = 0;
/// Inserts the kernel refused (should stay 0 with an LRU table).
pub const FLOW_STAT_INSERT_FAILED: u32 = 1;
/// Replies admitted by a live flow.
pub const FLOW_STAT_REPLIES: u32 = 2;
pub const FLOW_STATS: u32 = 4;

/// Key of a zone-pair drop counter.
#[inline(always)]
pub const fn zone_pair_index(src_zone: u16, dst_zone: u16) -> u32 {
    ((src_zone as u32) << 16) | dst_zone as u32
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::PairLine {}
    unsafe impl aya::Pod for super::PairClasses {}
    unsafe impl aya::Pod for super::PortSet {}
    unsafe impl aya::Pod for super::PortTable {}
    unsafe impl aya::Pod for super::ZoneBlock {}
    unsafe impl aya::Pod for super::SegMeta {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::SlotAddrV4 {}
    unsafe impl aya::Pod for super::SlotAddrV6 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_positions_cover_the_matrix_and_refuse_zones_past_it() {
        assert_eq!(pair_position(0, 0, 0), Some((0, 0)));
        assert_eq!(pair_position(0, 0, 31), Some((0, 31)));
        assert_eq!(pair_position(0, 0, 32), Some((1, 0)));
        assert_eq!(pair_position(0, 1, 0), Some((MAX_ZONES / PAIR_LINE, 0)));
        let last = (MAX_ZONES - 1) as u16;
        assert_eq!(
            pair_position(0, last, last),
            Some((PAIR_LINES_PER_SLOT - 1, 31))
        );
        assert_eq!(
            pair_position(1, 0, 0),
            Some((PAIR_LINES_PER_SLOT, 0)),
            "slot 1's matrix follows slot 0's"
        );
        assert_eq!(pair_position(0, MAX_ZONES as u16, 0), None);
        assert_eq!(pair_position(0, 0, u16::MAX), None);
        assert_eq!(class_index(PROTO_TCP), 0);
        assert_eq!(class_index(PROTO_OTHER), PAIR_CLASSES - 1);
        assert_eq!(class_index(47), PAIR_CLASSES - 1);
    }

    #[test]
    fn port_sets_find_runs_at_their_edges_across_lines() {
        let allow = rule_code(1, RuleAction::Allow);
        let deny = rule_code(2, RuleAction::Deny);
        // Ten runs: two lines; port 0 and 65535 at the edges.
        let mut runs = vec![(0, 0, allow), (65535, 65535, deny)];
        for i in 0..8u16 {
            runs.insert(
                1 + usize::from(i),
                (100 * (i + 1), 100 * (i + 1) + 9, allow),
            );
        }
        let lines: Vec<PortSet> = PortSet::lines(&runs).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].more, lines[1].more), (1, 0));
        let find = |port| crate::decide::set_entry(0, port, |i| lines.get(i as usize));
        assert_eq!(find(0), allow);
        assert_eq!(find(1), 0);
        assert_eq!(find(100), allow);
        assert_eq!(find(109), allow);
        assert_eq!(find(110), 0);
        assert_eq!(find(809), allow, "a run in the second line");
        assert_eq!(find(65534), 0);
        assert_eq!(find(65535), deny);
        // Unused runs of a line never match, port 0 and 1 included.
        let one: Vec<PortSet> = PortSet::lines(&[(443, 443, allow)]).collect();
        assert_eq!(one.len(), 1);
        for port in [0, 1, 442, 444, 65535] {
            assert_eq!(one[0].find(port), 0, "port {port}");
        }
        // A set whose next line is missing ends there.
        let cut = |i: u32| if i == 0 { lines.first() } else { None };
        assert_eq!(crate::decide::set_entry(0, 809, cut), 0);
        // No runs: one empty line.
        let none: Vec<PortSet> = PortSet::lines(&[]).collect();
        assert_eq!(none, [PortSet::EMPTY]);
    }

    #[test]
    fn rule_codes_round_trip_and_never_look_like_blocks() {
        for action in [RuleAction::Allow, RuleAction::Audit, RuleAction::Deny] {
            for id in [0u16, 1, 20_000, u16::MAX - 1] {
                let c = rule_code(id, action);
                assert_ne!(c, 0);
                assert_eq!(c & PORT_BLOCK, 0);
                assert_eq!(decode_rule(c), Some((id, action)));
            }
        }
        assert_eq!(decode_rule(0), None);
        assert_eq!(decode_rule(PORT_BLOCK | 5), None);
    }

    fn tcp(flags: u8) -> Packet {
        let mut p = Packet::EMPTY;
        p.family = 4;
        p.proto = PROTO_TCP;
        p.flags = crate::packet::FLAG_L4;
        p.tcp_flags = flags;
        p.sport = 40000;
        p.dport = 443;
        p.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        p.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        p
    }

    #[test]
    fn only_a_bare_syn_opens_a_tcp_flow_and_a_syn_is_never_a_reply() {
        assert!(opens_flow(&tcp(TCP_SYN)));
        assert!(!opens_flow(&tcp(TCP_SYN | TCP_ACK)));
        assert!(!opens_flow(&tcp(TCP_ACK)));
        assert!(!opens_flow(&tcp(TCP_SYN | TCP_RST)));
        assert!(!may_be_reply(&tcp(TCP_SYN)));
        assert!(may_be_reply(&tcp(TCP_SYN | TCP_ACK)));
        assert!(may_be_reply(&tcp(TCP_ACK)));
    }

    #[test]
    fn reply_key_of_the_reply_is_the_flow_key_of_the_request() {
        let req = tcp(TCP_SYN);
        let mut rep = tcp(TCP_SYN | TCP_ACK);
        rep.src = req.dst;
        rep.dst = req.src;
        rep.sport = req.dport;
        rep.dport = req.sport;
        assert_eq!(reply_key(&rep), flow_key(&req));
        assert_ne!(reply_key(&req), flow_key(&req));
    }

    #[test]
    fn later_fragments_match_port_zero_and_open_nothing() {
        let mut p = tcp(TCP_SYN);
        p.flags = crate::packet::FLAG_FRAGMENT | crate::packet::FLAG_LATER_FRAGMENT;
        assert_eq!(rule_port(&p), 0);
        assert!(!opens_flow(&p));
        assert!(!may_be_reply(&p));
        assert_eq!(failsafe_port(&p, false), None);
    }

    #[test]
    fn flow_timeouts_depend_on_protocol_and_closing() {
        let meta = SegMeta {
            tcp_timeout_ns: 100,
            tcp_closing_timeout_ns: 10,
            udp_timeout_ns: 50,
            other_timeout_ns: 20,
            ..SegMeta::default()
        };
        let key = flow_key(&tcp(TCP_SYN));
        let mut v = FlowValue {
            last_seen_ns: 1000,
            ..FlowValue::default()
        };
        assert!(flow_alive(&meta, &key, &v, 1100));
        assert!(!flow_alive(&meta, &key, &v, 1101));
        v.flags = FLOW_CLOSING;
        assert!(flow_alive(&meta, &key, &v, 1010));
        assert!(!flow_alive(&meta, &key, &v, 1011));
        let mut udp = key;
        udp.proto = PROTO_UDP;
        v.flags = 0;
        assert!(!flow_alive(&meta, &udp, &v, 1051));
        // Stamped a tick ahead by another CPU: alive, not idle for ages.
        assert!(flow_alive(&meta, &key, &v, 999));
    }
}
