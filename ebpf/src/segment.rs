//! The kernel's side of the decision: `Tables` over the BPF maps, and the
//! bookkeeping after a decision (flows, rule and zone-pair counters).

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    maps::lpm_trie::Key,
};
use tierguard_common::{
    Reason,
    decide::{Decision, NO_ID, Tables, classify},
    limiter::LimitOutcome,
    maps::{Counter, Direction, ListEntry},
    packet::Packet,
    segment::{
        FLOW_CLOSING, FLOW_STAT_CREATED, FLOW_STAT_INSERT_FAILED, FLOW_STAT_REPLIES, FlowKey,
        FlowValue, PAIR_CLASSES, PAIR_RECORDS_PER_SLOT, PORT_BLOCKS_PER_SLOT,
        PORT_SET_LINES_PER_SLOT, PORT_TABLES_PER_SLOT, PortEntry, PortSet, SEG_ENABLED, SegMeta,
        SlotAddrV4, SlotAddrV6, ZONE_L1_BLOCK, ZONE_LONGER, ZONE_V4_BLOCKS_PER_SLOT,
        ZONE_V4_L1_SIZE, ZONE_WORLD, closes_flow, flow_alive, flow_key, opens_flow, pair_position,
        trie_prefix_len, zone_pair_index,
    },
};

use crate::maps::{
    FAILSAFE_PORTS, FAILSAFE_V4, FAILSAFE_V6, FLOW_STATS_MAP, FLOWS, PAIR_MATRIX, PAIR_RECORDS,
    PORT_BLOCKS, PORT_SETS, PORT_TABLES, RULE_HITS, SEG_META, ZONE_DROPS, ZONE_V4_BLOCKS,
    ZONE_V4_L1, ZONES_V4, ZONES_V6,
};
use crate::{limits, lists};

/// Used when the settings map cannot be read (never, for an array in range):
/// segmentation off, which is the pre-segmentation behaviour.
static NO_META: SegMeta = SegMeta {
    flags: 0,
    _pad: 0,
    tcp_timeout_ns: 0,
    tcp_closing_timeout_ns: 0,
    udp_timeout_ns: 0,
    other_timeout_ns: 0,
    ns_per_jiffy: 0,
    jiffy_offset_ns: 0,
};

#[inline(always)]
pub fn meta(slot: u8) -> &'static SegMeta {
    match SEG_META.get(slot as u32) {
        Some(m) => m,
        None => &NO_META,
    }
}

/// The flow clock: jiffies scaled to monotonic time when the agent could
/// tell their length (the verifier inlines `bpf_jiffies64` into a memory
/// read), else the coarse-clock helper. See `SegMeta::ns_per_jiffy`.
#[inline(always)]
fn flow_now(meta: &SegMeta) -> u64 {
    match meta.jiffy_time(unsafe { bpf_jiffies64() }) {
        Some(t) => t,
        None => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

pub struct KernelTables {
    pub slot: u8,
    pub meta: &'static SegMeta,
    /// The interface the packet arrived on (limits may be restricted to some).
    pub ifindex: u32,
}

#[inline(always)]
fn v4_key(slot: u8, addr: &[u8; 16]) -> Key<SlotAddrV4> {
    Key::new(
        trie_prefix_len(32),
        SlotAddrV4 {
            slot,
            addr: [addr[0], addr[1], addr[2], addr[3]],
            _pad: [0; 3],
        },
    )
}

#[inline(always)]
fn v6_key(slot: u8, addr: &[u8; 16]) -> Key<SlotAddrV6> {
    Key::new(
        trie_prefix_len(128),
        SlotAddrV6 {
            slot,
            addr: *addr,
            _pad: [0; 3],
        },
    )
}

/// Zone id of an address in generation `slot`.
#[inline(always)]
pub fn zone_of(slot: u8, family: u8, addr: &[u8; 16]) -> u16 {
    if family == 4 {
        // One read of the /16 table, a second of its /24 block where
        // zones split the /16; the trie only where a /24 holds longer
        // prefixes (docs/design/segmentation.md).
        let s = u32::from(slot);
        let l1 = (u32::from(addr[0]) << 8) | u32::from(addr[1]);
        let e = ZONE_V4_L1
            .get(s * ZONE_V4_L1_SIZE + l1)
            .copied()
            .unwrap_or(0);
        if e & ZONE_L1_BLOCK == 0 {
            return e as u16;
        }
        let block = e & !ZONE_L1_BLOCK;
        if block >= ZONE_V4_BLOCKS_PER_SLOT {
            return ZONE_WORLD;
        }
        let e = match ZONE_V4_BLOCKS.get(s * ZONE_V4_BLOCKS_PER_SLOT + block) {
            Some(b) => b.zones[addr[2] as usize],
            None => 0,
        };
        if e & ZONE_LONGER == 0 {
            return e as u16;
        }
        return ZONES_V4
            .get(v4_key(slot, addr))
            .copied()
            .unwrap_or(e as u16);
    }
    ZONES_V6
        .get(v6_key(slot, addr))
        .copied()
        .unwrap_or(ZONE_WORLD)
}

impl Tables for KernelTables {
    #[inline(always)]
    fn list(&self, p: &Packet) -> Option<ListEntry> {
        lists::lookup_source(self.slot, p)
    }

    #[inline(always)]
    fn failsafe_ports(&self, class: u32, port: u16) -> u32 {
        let idx = ((u32::from(self.slot) * 4 + class) << 16) | u32::from(port);
        FAILSAFE_PORTS.get(idx).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn failsafe_addr(&self, family: u8, addr: &[u8; 16]) -> u32 {
        let hit = if family == 4 {
            FAILSAFE_V4.get(v4_key(self.slot, addr))
        } else {
            FAILSAFE_V6.get(v6_key(self.slot, addr))
        };
        hit.copied().unwrap_or(0)
    }

    #[inline(always)]
    fn zone(&self, family: u8, addr: &[u8; 16]) -> u16 {
        zone_of(self.slot, family, addr)
    }

    #[inline(always)]
    fn pair(&self, src_zone: u16, dst_zone: u16) -> u16 {
        let Some((line, at)) = pair_position(self.slot, src_zone, dst_zone) else {
            return 0;
        };
        match PAIR_MATRIX.get(line) {
            Some(l) => l.records[at],
            None => 0,
        }
    }

    #[inline(always)]
    fn pair_entry(&self, record: u16, class: usize) -> u32 {
        if class >= PAIR_CLASSES {
            return 0;
        }
        let i = u32::from(self.slot) * PAIR_RECORDS_PER_SLOT + u32::from(record);
        match PAIR_RECORDS.get(i) {
            Some(r) => r.entries[class],
            None => 0,
        }
    }

    #[inline(always)]
    fn port_set(&self, line: u32) -> Option<&PortSet> {
        if line >= PORT_SET_LINES_PER_SLOT {
            return None;
        }
        PORT_SETS.get(u32::from(self.slot) * PORT_SET_LINES_PER_SLOT + line)
    }

    #[inline(always)]
    fn classify(&self, p: &Packet) -> (u16, u16, PortEntry) {
        let v = classify_packed(self.slot, p);
        ((v >> 48) as u16, (v >> 32) as u16, v as u32)
    }

    #[inline(always)]
    fn port_table(&self, table: u32, hi: u8) -> PortEntry {
        if table >= PORT_TABLES_PER_SLOT {
            return 0;
        }
        match PORT_TABLES.get(u32::from(self.slot) * PORT_TABLES_PER_SLOT + table) {
            Some(t) => t.entries[hi as usize],
            None => 0,
        }
    }

    #[inline(always)]
    fn port_block(&self, block: u32, lo: u8) -> PortEntry {
        if block >= PORT_BLOCKS_PER_SLOT {
            return 0;
        }
        match PORT_BLOCKS.get(u32::from(self.slot) * PORT_BLOCKS_PER_SLOT + block) {
            Some(t) => t.entries[lo as usize],
            None => 0,
        }
    }

    #[inline(always)]
    fn flow_alive(&self, key: &FlowKey, p: &Packet) -> bool {
        let Some(v) = FLOWS.get_ptr_mut(key) else {
            return false;
        };
        let now = flow_now(self.meta);
        // SAFETY: a map value; racing writers only store timestamps and flags.
        let v = unsafe { &mut *v };
        if !flow_alive(self.meta, key, v, now) {
            return false;
        }
        v.last_seen_ns = now;
        if closes_flow(p) {
            v.flags |= FLOW_CLOSING;
        }
        bump(FLOW_STAT_REPLIES);
        true
    }

    #[inline(always)]
    fn blocked(&self, p: &Packet) -> Option<u16> {
        limits::blocked(p)
    }

    #[inline(always)]
    fn limits(&self, p: &Packet) -> LimitOutcome {
        limits::limits(self.slot, p, self.ifindex)
    }
}

/// Zones and rule lookup as a call of its own: the verifier then carries
/// only its result into the stages after it, not every combination of the
/// paths through the two zone lookups, the pair record and the port set
/// (inlined, the benchmark's entry point exceeded the verifier's budget of
/// a million instructions). Packed: source zone, destination zone, entry.
#[inline(never)]
fn classify_packed(slot: u8, p: &Packet) -> u64 {
    let t = KernelTables {
        slot,
        // Not read by the zone and rule lookups.
        meta: &NO_META,
        ifindex: 0,
    };
    let (src, dst, entry) = classify(&t, p);
    (u64::from(src) << 48) | (u64::from(dst) << 32) | u64::from(entry)
}

#[inline(always)]
fn bump(stat: u32) {
    if let Some(c) = FLOW_STATS_MAP.get_ptr_mut(stat) {
        // SAFETY: per-CPU value.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn add(c: *mut Counter, len: u32) {
    // SAFETY: per-CPU value, no concurrent writer on this CPU.
    unsafe {
        (*c).packets += 1;
        (*c).bytes += len as u64;
    }
}

/// Reasons [`after`] has work for (rule counters, zone-pair drops, opening a
/// flow): the caller checks this mask first, as a call that does nothing
/// (an established packet's, a list drop's) costs more than the test.
const AFTER_REASONS: u32 = (1 << Reason::RuleAllow as u32)
    | (1 << Reason::RuleAudit as u32)
    | (1 << Reason::RuleDeny as u32)
    | (1 << Reason::DefaultAllow as u32)
    | (1 << Reason::DefaultDeny as u32)
    | (1 << Reason::AllowList as u32)
    | (1 << Reason::LimitAudit as u32);

/// Whether [`after`] has anything to do for this decision.
#[inline(always)]
pub fn after_has_work(meta: &SegMeta, d: &Decision) -> bool {
    meta.flags & SEG_ENABLED != 0 && (AFTER_REASONS >> (d.reason as u32 & 31)) & 1 != 0
}

/// After the decision: open a flow for an allowed first packet, count the
/// rule, and count segmentation denials by zone pair.
#[inline(never)]
pub fn after(dir: Direction, meta: &SegMeta, p: &Packet, d: &Decision, len: u32) {
    if meta.flags & SEG_ENABLED == 0 {
        return;
    }
    match d.reason {
        Reason::RuleAllow | Reason::RuleAudit | Reason::RuleDeny => {
            if let Some(c) = RULE_HITS.get_ptr_mut(d.id as u32) {
                add(c, len);
            }
        }
        _ => {}
    }
    if matches!(d.reason, Reason::RuleDeny | Reason::DefaultDeny) {
        let key = zone_pair_index(d.src_zone, d.dst_zone);
        match ZONE_DROPS.get_ptr_mut(&key) {
            Some(c) => add(c, len),
            None => {
                let first = Counter {
                    packets: 1,
                    bytes: len as u64,
                };
                let _ = ZONE_DROPS.insert(&key, &first, 0);
            }
        }
    }
    let opens = match d.reason {
        // Trusted and allowed first packets open flows; so do audited ones
        // (in audit mode too), or their replies would be reported as drops.
        Reason::AllowList | Reason::RuleAllow | Reason::RuleAudit | Reason::DefaultAllow => true,
        Reason::RuleDeny | Reason::DefaultDeny => d.verdict.passes(),
        // Over an audit limit: the later stages passed it (its id is the
        // limit's, not a rule's).
        Reason::LimitAudit => true,
        _ => false,
    };
    if opens && opens_flow(p) {
        let rule = if d.reason == Reason::LimitAudit {
            NO_ID
        } else {
            d.id
        };
        open_flow(dir, meta, p, rule);
    }
}

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

#[inline(always)]
fn open_flow(dir: Direction, meta: &SegMeta, p: &Packet, rule: u16) {
    let key = flow_key(p);
    let now = flow_now(meta);
    let v = FlowValue {
        last_seen_ns: now,
        rule,
        flags: 0,
        direction: dir as u8,
        _pad: 0,
    };
    // Look first: an LRU update takes a free element and returns one even
    // when the key exists, which costs several times a lookup. A
    // retransmitted SYN, or the flow's successor on the same ports, starts
    // the existing entry afresh.
    if let Some(old) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: a map value; racing writers only store the same fields.
        unsafe { *old = v };
        return;
    }
    match FLOWS.insert(&key, &v, BPF_NOEXIST) {
        Ok(()) => bump(FLOW_STAT_CREATED),
        // Another CPU inserted it meanwhile: the flow exists, as wanted.
        Err(e) if e == -EEXIST => {}
        Err(_) => bump(FLOW_STAT_INSERT_FAILED),
    }
}
