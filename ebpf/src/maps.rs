//! Every map the kernel programs use, declared together. Names, sizes and
//! value types come from `tierguard_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf,
    },
};
use tierguard_common::event::{
    Bucket, EventConfig, RING_BYTES, SAMPLER_SIZE, SOURCE_SLOTS, Tokens,
};
use tierguard_common::limiter::{
    BLOCK_CAPACITY, BlockValue, Buckets, LIMIT_STATS, LimitSpec, MAX_LIMITS, PORT_WORDS,
    SLOTS_PER_LIMIT, Slot,
};
use tierguard_common::maps::{
    Counter, DirectBlock, DirectCode, IFINDEX_TABLE_SIZE, LIST_NAME_LEN, LIST_V4_CAPACITY,
    LIST_V6_CAPACITY, ListEntry, MAX_LISTS, PROGRAM_SLOTS, PolicyMeta, PrefixKeyV4, PrefixKeyV6,
    STATS_SIZE, V4_CODES_PER_SLOT, V4_DIRECT_BLOCKS, V6_BUCKETS, V6Bucket,
};
use tierguard_common::segment::{
    FAILSAFE_CLASSES, FAILSAFE_PREFIX_CAPACITY, FLOW_CAPACITY, FLOW_STATS, FlowKey, FlowValue,
    MAX_RULES, PAIR_LINES_PER_SLOT, PAIR_RECORDS_PER_SLOT, PORT_BLOCKS_PER_SLOT,
    PORT_SET_LINES_PER_SLOT, PORT_TABLES_PER_SLOT, PairClasses, PairLine, PortSet, PortTable,
    SegMeta, SlotAddrV4, SlotAddrV6, ZONE_DROP_CAPACITY, ZONE_PREFIX_CAPACITY,
    ZONE_V4_BLOCKS_PER_SLOT, ZONE_V4_L1_SIZE, ZoneBlock,
};

/// Allocate hash entries on insert: memory follows the configured lists, not
/// the capacity. Lookups cost the same either way.
const BPF_F_NO_PREALLOC: u32 = 1;
/// Page-aligns an array's values (see docs/design/map-layout.md, "Alignment").
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Programs the dispatcher tail-calls. Replacing an entry is how a new agent
/// installs its enforcement program without touching the interface.
#[map(name = "TG_PROGRAMS")]
pub static PROGRAMS: ProgramArray = ProgramArray::pinned(PROGRAM_SLOTS, 0);

/// IPv4 prefixes of /24 or shorter: one code byte per /24, 64 to a block,
/// both generations (slot 0 blocks, then slot 1). A lookup reads one cache line.
#[map(name = "TG_V4_DIRECT")]
pub static V4_DIRECT: Array<DirectBlock> = Array::pinned(2 * V4_DIRECT_BLOCKS, 0);

/// What each direct-table code means, per slot.
#[map(name = "TG_V4_CODES")]
pub static V4_CODES: Array<DirectCode> = Array::pinned(2 * V4_CODES_PER_SLOT, 0);

/// IPv4 prefixes longer than /24, expanded to /32, both generations, keyed by
/// (slot, 32, address).
#[map(name = "TG_LIST_V4")]
pub static LIST_V4: HashMap<PrefixKeyV4, ListEntry> =
    HashMap::pinned(LIST_V4_CAPACITY, BPF_F_NO_PREALLOC);

/// IPv6 prefixes stored at strides up to /64: a bucketised open-addressing
/// table, 64-byte buckets of four slots, `V6_BUCKETS` per generation (slot 0
/// buckets, then slot 1), of which a generation uses the first
/// `2^PolicyMeta::v6_bucket_bits`. A lookup reads one cache line per probe,
/// usually one: `BPF_F_MMAPABLE` page-aligns the values, so buckets are
/// line-aligned.
#[map(name = "TG_V6_TABLE")]
pub static V6_TABLE: Array<V6Bucket> = Array::pinned(2 * V6_BUCKETS, BPF_F_MMAPABLE);

/// IPv6 prefixes stored at strides longer than /64, keyed by (slot, stride,
/// masked address).
#[map(name = "TG_LIST_V6")]
pub static LIST_V6: HashMap<PrefixKeyV6, ListEntry> =
    HashMap::pinned(LIST_V6_CAPACITY, BPF_F_NO_PREALLOC);

/// Per-generation facts (which strides are in use, IPv6 table size),
/// indexed by slot 0 or 1.
#[map(name = "TG_POLICY_META")]
pub static POLICY_META: Array<PolicyMeta> = Array::pinned(2, 0);

/// Index 0 holds the live generation slot. The agent flips it with one write:
/// that write is the policy transaction's commit.
#[map(name = "TG_ACTIVE_SLOT")]
pub static ACTIVE_SLOT: Array<u32> = Array::pinned(1, 0);

/// ifindex → counter slot (0: not configured).
#[map(name = "TG_IFACE_SLOTS")]
pub static IFACE_SLOTS: Array<u32> = Array::pinned(IFINDEX_TABLE_SIZE, 0);

/// Packets and bytes by interface slot, direction and reason.
#[map(name = "TG_STATS")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_SIZE, 0);

/// Name of the list each `TG_LIST_HITS` entry counts for. Only the agent
/// uses it: when a list id changes meaning, its counter is reset.
#[map(name = "TG_LIST_NAMES")]
pub static LIST_NAMES: Array<[u8; LIST_NAME_LEN]> = Array::pinned(MAX_LISTS, 0);

/// Packets and bytes that each list decided.
#[map(name = "TG_LIST_HITS")]
pub static LIST_HITS: PerCpuArray<Counter> = PerCpuArray::pinned(MAX_LISTS, 0);

/// Security events for the agent (`event::Event` records).
#[map(name = "TG_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(RING_BYTES, 0);

/// Index 0: whether events are on, and the sampling rates. Zeroed (off) until
/// the agent writes it.
#[map(name = "TG_EVENT_CONFIG")]
pub static EVENT_CONFIG: Array<EventConfig> = Array::pinned(1, 0);

/// Sampling state per reason, then the global bucket, per CPU.
#[map(name = "TG_EVENT_SAMPLER")]
pub static EVENT_SAMPLER: PerCpuArray<Bucket> = PerCpuArray::pinned(SAMPLER_SIZE, 0);

/// Sampling state per (source, reason) slot, per CPU (see `event::source_slot`).
#[map(name = "TG_EVENT_SOURCES")]
pub static EVENT_SOURCES: PerCpuArray<Tokens> = PerCpuArray::pinned(SOURCE_SLOTS, 0);

/// The egress dispatcher's programs (a TC program cannot tail-call through
/// the XDP program array).
#[map(name = "TG_EGRESS_PROGRAMS")]
pub static EGRESS_PROGRAMS: ProgramArray = ProgramArray::pinned(PROGRAM_SLOTS, 0);

/// Segmentation settings per generation slot.
#[map(name = "TG_SEG_META")]
pub static SEG_META: Array<SegMeta> = Array::pinned(2, 0);

/// Address → zone id, longest prefix wins; keys start with the slot byte.
#[map(name = "TG_ZONES_V4")]
pub static ZONES_V4: LpmTrie<SlotAddrV4, u16> = LpmTrie::pinned(ZONE_PREFIX_CAPACITY, 0);

/// IPv4 zones by /16 (slot 0's, then slot 1's): a zone, or a block of /24s.
/// Answers without the trie unless a /24 holds longer prefixes.
#[map(name = "TG_ZONE_V4_L1")]
pub static ZONE_V4_L1: Array<u32> = Array::pinned(2 * ZONE_V4_L1_SIZE, 0);

#[map(name = "TG_ZONE_V4_BLOCKS")]
pub static ZONE_V4_BLOCKS: Array<ZoneBlock> = Array::pinned(2 * ZONE_V4_BLOCKS_PER_SLOT, 0);

#[map(name = "TG_ZONES_V6")]
pub static ZONES_V6: LpmTrie<SlotAddrV6, u16> = LpmTrie::pinned(ZONE_PREFIX_CAPACITY, 0);

/// (source zone, destination zone) → pair record, 32 pairs a line; slot
/// 0's matrix then slot 1's.
#[map(name = "TG_PAIR_MATRIX")]
pub static PAIR_MATRIX: Array<PairLine> = Array::pinned(2 * PAIR_LINES_PER_SLOT, 0);

/// Pair records: per protocol class, a port table or port set.
#[map(name = "TG_PAIR_RECORDS")]
pub static PAIR_RECORDS: Array<PairClasses> = Array::pinned(2 * PAIR_RECORDS_PER_SLOT, 0);

/// Port sets: rule sets with few port runs, a line (or a few) each;
/// line-aligned (`BPF_F_MMAPABLE`), as they are scanned whole.
#[map(name = "TG_PORT_SETS")]
pub static PORT_SETS: Array<PortSet> = Array::pinned(2 * PORT_SET_LINES_PER_SLOT, BPF_F_MMAPABLE);

/// Port tables (by the port's high byte), slot 0's then slot 1's.
#[map(name = "TG_PORT_TABLES")]
pub static PORT_TABLES: Array<PortTable> = Array::pinned(2 * PORT_TABLES_PER_SLOT, 0);

/// Port blocks (by the port's low byte), slot 0's then slot 1's.
#[map(name = "TG_PORT_BLOCKS")]
pub static PORT_BLOCKS: Array<PortTable> = Array::pinned(2 * PORT_BLOCKS_PER_SLOT, 0);

/// (slot, protocol class, node-side port) → failsafe entries naming it.
#[map(name = "TG_FAILSAFE_PORTS")]
pub static FAILSAFE_PORTS: Array<u32> = Array::pinned(2 * FAILSAFE_CLASSES * 65536, 0);

/// Remote address → failsafe entries whose ranges hold it.
#[map(name = "TG_FAILSAFE_V4")]
pub static FAILSAFE_V4: LpmTrie<SlotAddrV4, u32> = LpmTrie::pinned(FAILSAFE_PREFIX_CAPACITY, 0);

#[map(name = "TG_FAILSAFE_V6")]
pub static FAILSAFE_V6: LpmTrie<SlotAddrV6, u32> = LpmTrie::pinned(FAILSAFE_PREFIX_CAPACITY, 0);

/// Flows opened by allowed packets; their replies pass. Shared by ingress
/// and egress, LRU so a flood of new flows evicts idle ones instead of
/// locking new connections out.
#[map(name = "TG_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(FLOW_CAPACITY, 0);

/// Flow-table counters (`FLOW_STAT_*`).
#[map(name = "TG_FLOW_STATS")]
pub static FLOW_STATS_MAP: PerCpuArray<u64> = PerCpuArray::pinned(FLOW_STATS, 0);

/// Packets and bytes each rule decided.
#[map(name = "TG_RULE_HITS")]
pub static RULE_HITS: PerCpuArray<Counter> = PerCpuArray::pinned(MAX_RULES, 0);

/// Hash of the name of the rule each `TG_RULE_HITS` entry counts for. Only
/// the agent uses it: when a rule id changes meaning, its counter is reset.
#[map(name = "TG_RULE_NAMES")]
pub static RULE_NAMES: Array<u64> = Array::pinned(MAX_RULES, 0);

/// Segmentation denials by (source zone, destination zone).
#[map(name = "TG_ZONE_DROPS")]
pub static ZONE_DROPS: PerCpuHashMap<u32, Counter> =
    PerCpuHashMap::pinned(ZONE_DROP_CAPACITY, BPF_F_NO_PREALLOC);

/// The limits of each generation: `slot * MAX_LIMITS + id`; entries past
/// the last limit are zero.
#[map(name = "TG_LIMITS")]
pub static LIMITS: Array<LimitSpec> = Array::pinned(2 * MAX_LIMITS, 0);

/// Destination-port bitmaps: word `(slot * MAX_LIMITS + id) * PORT_WORDS + port / 64`.
#[map(name = "TG_LIMIT_PORTS")]
pub static LIMIT_PORTS: Array<u64> = Array::pinned(2 * MAX_LIMITS * PORT_WORDS, 0);

/// Per-key state of each limit: `id * SLOTS_PER_LIMIT + slot`. Shared by
/// every CPU, outside the policy transaction (state carries over reloads).
#[map(name = "TG_LIMIT_SLOTS")]
pub static LIMIT_SLOTS: Array<Slot> = Array::pinned(MAX_LIMITS * SLOTS_PER_LIMIT, 0);

/// The overflow bucket of each per-key limit, or the bucket of a global one.
#[map(name = "TG_LIMIT_SHARED")]
pub static LIMIT_SHARED: Array<Buckets> = Array::pinned(MAX_LIMITS, 0);

/// Per-limit counters (`limiter::LSTAT_*`).
#[map(name = "TG_LIMIT_STATS")]
pub static LIMIT_STATS_MAP: PerCpuArray<u64> = PerCpuArray::pinned(MAX_LIMITS * LIMIT_STATS, 0);

/// Hash of the name of the limit each id holds state for. Only the agent
/// uses it: state and counters of an id that changes meaning are reset.
#[map(name = "TG_LIMIT_NAMES")]
pub static LIMIT_NAMES: Array<u64> = Array::pinned(MAX_LIMITS, 0);

/// Blocked sources (address → block), longest prefix wins; not part of a
/// policy generation, so blocks survive reloads and restarts.
#[map(name = "TG_BLOCKS_V4")]
pub static BLOCKS_V4: LpmTrie<[u8; 4], BlockValue> = LpmTrie::pinned(BLOCK_CAPACITY, 0);

#[map(name = "TG_BLOCKS_V6")]
pub static BLOCKS_V6: LpmTrie<[u8; 16], BlockValue> = LpmTrie::pinned(BLOCK_CAPACITY, 0);

/// Index 0: non-zero when the blocked tries may hold entries. Set before
/// every insert (by the kernel and the agent), cleared by the agent's sweeper
/// when both tries are empty, so that a node with no block pays one array
/// read per packet instead of a trie lookup.
#[map(name = "TG_BLOCKS_PRESENT")]
pub static BLOCKS_PRESENT: Array<u32> = Array::pinned(1, 0);

/// The limit stage's outcome for the packet being decided (see limits.rs).
#[map(name = "TG_LIMIT_OUTCOME")]
pub static LIMIT_OUTCOME: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Where a block's value is built before it is inserted: 120 bytes the
/// stack of the deepest stage cannot spare.
#[map(name = "TG_BLOCK_SCRATCH")]
pub static BLOCK_SCRATCH: PerCpuArray<BlockValue> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn active_slot() -> u8 {
    match ACTIVE_SLOT.get(0) {
        Some(s) => (*s & 1) as u8,
        None => 0,
    }
}

#[inline(always)]
pub fn policy_meta(slot: u8) -> PolicyMeta {
    match POLICY_META.get(slot as u32) {
        Some(m) => *m,
        None => PolicyMeta::default(),
    }
}
