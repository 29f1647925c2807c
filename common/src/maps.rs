//! Map names, capacities, keys and values: the layout shared by kernel and agent.
//!
//! Layout rationale is in docs/design/map-layout.md.

/// Map names as declared in the kernel object; the agent looks maps up by these.
pub mod names {
    pub const LIST_V4: &str = "TG_LIST_V4";
    pub const LIST_V6: &str = "TG_LIST_V6";
    pub const POLICY_META: &str = "TG_POLICY_META";
    pub const ACTIVE_SLOT: &str = "TG_ACTIVE_SLOT";
    pub const IFACE_SLOTS: &str = "TG_IFACE_SLOTS";
    pub const STATS: &str = "TG_STATS";
    pub const LIST_HITS: &str = "TG_LIST_HITS";
    pub const PROGRAMS: &str = "TG_PROGRAMS";
    pub const BENCH_SOURCES: &str = "TG_BENCH_SOURCES";
    pub const V4_DIRECT: &str = "TG_V4_DIRECT";
    pub const V4_CODES: &str = "TG_V4_CODES";
    pub const LIST_NAMES: &str = "TG_LIST_NAMES";
    /// Ring buffer of security events (`event::Event` records).
    pub const EVENTS: &str = "TG_EVENTS";
    /// `event::EventConfig` at index 0, written by the agent.
    pub const EVENT_CONFIG: &str = "TG_EVENT_CONFIG";
    /// Per-CPU `event::Bucket`s: one per reason, then the global one.
    pub const EVENT_SAMPLER: &str = "TG_EVENT_SAMPLER";
    pub const EVENT_SOURCES: &str = "TG_EVENT_SOURCES";
    pub const V6_TABLE: &str = "TG_V6_TABLE";
    // Segmentation (layout in `crate::segment`).
    pub const SEG_META: &str = "TG_SEG_META";
    pub const ZONES_V4: &str = "TG_ZONES_V4";
    pub const ZONES_V6: &str = "TG_ZONES_V6";
    pub const ZONE_V4_L1: &str = "TG_ZONE_V4_L1";
    pub const ZONE_V4_BLOCKS: &str = "TG_ZONE_V4_BLOCKS";
    pub const PAIR_MATRIX: &str = "TG_PAIR_MATRIX";
    pub const PAIR_RECORDS: &str = "TG_PAIR_RECORDS";
    pub const PORT_SETS: &str = "TG_PORT_SETS";
    pub const PORT_TABLES: &str = "TG_PORT_TABLES";
    pub const PORT_BLOCKS: &str = "TG_PORT_BLOCKS";
    pub const FAILSAFE_PORTS: &str = "TG_FAILSAFE_PORTS";
    pub const FAILSAFE_V4: &str = "TG_FAILSAFE_V4";
    pub const FAILSAFE_V6: &str = "TG_FAILSAFE_V6";
    pub const FLOWS: &str = "TG_FLOWS";
    pub const FLOW_STATS: &str = "TG_FLOW_STATS";
    pub const RULE_HITS: &str = "TG_RULE_HITS";
    /// FNV-1a hash of the name of the rule each `TG_RULE_HITS` entry counts for.
    pub const RULE_NAMES: &str = "TG_RULE_NAMES";
    pub const ZONE_DROPS: &str = "TG_ZONE_DROPS";
    /// The egress dispatcher's program array (TC programs cannot share XDP's).
    pub const EGRESS_PROGRAMS: &str = "TG_EGRESS_PROGRAMS";
    // Limits and blocks (layout in `crate::limiter`).
    /// `limiter::LimitSpec` per generation slot and limit id.
    pub const LIMITS: &str = "TG_LIMITS";
    /// Destination-port bitmaps of the limits, per generation slot.
    pub const LIMIT_PORTS: &str = "TG_LIMIT_PORTS";
    /// Per-key state: `limiter::Slot`s, `SLOTS_PER_LIMIT` per limit id.
    pub const LIMIT_SLOTS: &str = "TG_LIMIT_SLOTS";
    /// `limiter::Shared` buckets (overflow or global) per limit id.
    pub const LIMIT_SHARED: &str = "TG_LIMIT_SHARED";
    /// Per-CPU counters per limit (`limiter::LSTAT_*`).
    pub const LIMIT_STATS: &str = "TG_LIMIT_STATS";
    /// FNV-1a hash of the name of the limit each id holds state for (agent only).
    pub const LIMIT_NAMES: &str = "TG_LIMIT_NAMES";
    /// Blocked sources: LPM tries of `limiter::BlockValue`.
    pub const BLOCKS_V4: &str = "TG_BLOCKS_V4";
    pub const BLOCKS_V6: &str = "TG_BLOCKS_V6";
    /// Index 0: non-zero when the blocked tries may hold entries.
    pub const BLOCKS_PRESENT: &str = "TG_BLOCKS_PRESENT";
}

/// Program names in the kernel object.
pub mod programs {
    /// Attached to interfaces; never changes between agent versions in
    /// normal operation. It tail-calls the enforcement program.
    pub const DISPATCH: &str = "tierguard_dispatch";
    /// The enforcement program, installed in `TG_PROGRAMS[PROG_INGRESS]`.
    pub const INGRESS: &str = "tierguard_ingress";
    /// Does nothing but pass: the empty program the benchmark compares with.
    pub const BASELINE: &str = "tierguard_baseline";
    /// Benchmark only: ingress with rotating source addresses.
    pub const BENCH_INGRESS: &str = "tierguard_bench_ingress";
    /// Benchmark only: `BENCH_INGRESS` with a new source port each time the
    /// rotation goes round (every packet a new flow's).
    pub const BENCH_INGRESS_NEW: &str = "tierguard_bench_ingress_new";
    /// Benchmark only: the rotation alone, subtracted from `BENCH_INGRESS`.
    pub const BENCH_BASELINE: &str = "tierguard_bench_baseline";
    /// TC classifier on clsact egress; tail-calls `EGRESS` like `DISPATCH`.
    pub const EGRESS_DISPATCH: &str = "tierguard_egress_dispatch";
    /// Egress enforcement, installed in `TG_EGRESS_PROGRAMS[PROG_EGRESS]`.
    pub const EGRESS: &str = "tierguard_egress";
    /// A TC program that passes everything: the egress benchmark's baseline.
    pub const EGRESS_BASELINE: &str = "tierguard_egress_baseline";
    /// Benchmark only: egress with rotating destination addresses.
    pub const BENCH_EGRESS: &str = "tierguard_bench_egress";
    /// Benchmark only: the rotation alone on TC.
    pub const BENCH_EGRESS_BASELINE: &str = "tierguard_bench_egress_baseline";
}

/// Prefix-table capacity, both generations together (a reload writes the new
/// generation beside the live one before switching).
///
/// The kernel allocates a hash map's buckets (16 bytes each) for its full
/// capacity even with BPF_F_NO_PREALLOC: 32 MiB up front for 2 M entries
/// (1 M per generation) for IPv4 /25-/32. IPv6 hashes only strides longer
/// than /64 (the others live in `TG_V6_TABLE`): 512 Ki entries, 8 MiB.
pub const LIST_V4_CAPACITY: u32 = 2 * 1024 * 1024;
pub const LIST_V6_CAPACITY: u32 = 512 * 1024;
/// IPv6 bucket table (strides /8 to /64): buckets reserved per generation
/// slot. The map holds `2 * V6_BUCKETS` buckets, slot 0's first. A
/// generation uses the first `2^PolicyMeta::v6_bucket_bits` of its slot's
/// buckets (sized by the agent to its entries; see `prefix::v6_bits`).
pub const V6_BUCKET_BITS: u32 = 19;
pub const V6_BUCKETS: u32 = 1 << V6_BUCKET_BITS;
/// Fewest bucket bits the agent gives a generation (64 buckets, 4 KiB).
pub const V6_MIN_BUCKET_BITS: u32 = 6;
/// Slots in one 64-byte bucket.
pub const V6_SLOTS_PER_BUCKET: usize = 4;
/// Consecutive buckets an entry may be placed in (linear probing from its
/// home bucket, wrapping within the slot's buckets).
pub const V6_MAX_PROBES: u32 = 4;
/// Longest stride kept in `TG_V6_TABLE`; longer ones go to `TG_LIST_V6`.
pub const V6_TABLE_MAX_STRIDE: u8 = 64;
/// IPv4 direct table: one code byte per /24, in 64-byte blocks, per slot.
pub const V4_DIRECT_PER_BLOCK: u32 = 64;
pub const V4_DIRECT_BLOCKS: u32 = (1 << 24) / V4_DIRECT_PER_BLOCK;
/// Codes per slot (code 0 means "nothing here").
pub const V4_CODES_PER_SLOT: u32 = 256;
/// Sources the benchmark rotates through. The agent loads the table with one
/// entry (`Datapath::load`); only the benchmark uses the full size.
pub const BENCH_SOURCES_CAPACITY: u32 = 65536;
/// Slot of the ingress program in the dispatcher's program array.
pub const PROG_INGRESS: u32 = 0;
/// Slot of the egress program in the egress dispatcher's program array.
pub const PROG_EGRESS: u32 = 0;
/// Entries in the program array.
pub const PROGRAM_SLOTS: u32 = 4;
/// Distinct list ids (and so per-list counters).
pub const MAX_LISTS: u32 = 256;
/// Bytes of a list name kept beside its counters (names are at most 64 bytes).
pub const LIST_NAME_LEN: usize = 64;
/// Interfaces the agent can count separately; slot 0 collects unknown ifindexes.
pub const MAX_IFACE_SLOTS: u32 = 64;
/// ifindex values below this are mapped to a slot by a direct array lookup.
pub const IFINDEX_TABLE_SIZE: u32 = 65536;
/// Reasons reserved in the counter table (Reason::ALL must fit).
pub const MAX_REASONS: u32 = 32;
/// Directions reserved in the counter table.
pub const DIRECTIONS: u32 = 2;
/// Verdicts reserved in the counter table (pass, drop, audit).
pub const VERDICTS: u32 = 3;
pub const STATS_SIZE: u32 = MAX_IFACE_SLOTS * DIRECTIONS * VERDICTS * MAX_REASONS;

/// Direction of a packet as the node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl Direction {
    pub const fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Index into `STATS` for an interface slot, direction, verdict and reason.
/// The verdict is not implied by the reason: in audit mode any drop reason
/// is counted under `audit`.
pub const fn stats_index(iface_slot: u32, dir: Direction, verdict: u8, reason: u8) -> u32 {
    ((iface_slot * DIRECTIONS + dir as u32) * VERDICTS + verdict as u32) * MAX_REASONS
        + reason as u32
}

/// Key of an IPv4 prefix-table entry: the generation slot, the stride length
/// and the address masked to that length (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixKeyV4 {
    pub slot: u8,
    pub len: u8,
    pub _pad: [u8; 2],
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<PrefixKeyV4>() == 8);

/// Key of an IPv6 prefix-table entry; see [`PrefixKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixKeyV6 {
    pub slot: u8,
    pub len: u8,
    pub _pad: [u8; 2],
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PrefixKeyV6>() == 20);

/// What a list lookup returns: the winning list and the length of the
/// configured prefix that put the entry there (before expansion).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListEntry {
    pub list_id: u16,
    /// `ListAction` as u8.
    pub action: u8,
    pub orig_len: u8,
}
const _: () = assert!(core::mem::size_of::<ListEntry>() == 4);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ListAction {
    Allow = 0,
    Deny = 1,
}

impl ListAction {
    pub const fn from_u8(v: u8) -> Option<ListAction> {
        match v {
            0 => Some(ListAction::Allow),
            1 => Some(ListAction::Deny),
            _ => None,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            ListAction::Allow => "allow",
            ListAction::Deny => "deny",
        }
    }
}

/// 64 consecutive /24s of the IPv4 direct table: one code each.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectBlock {
    pub codes: [u8; V4_DIRECT_PER_BLOCK as usize],
}
const _: () = assert!(core::mem::size_of::<DirectBlock>() == 64);

impl DirectBlock {
    pub const EMPTY: DirectBlock = DirectBlock {
        codes: [0; V4_DIRECT_PER_BLOCK as usize],
    };
}

/// One entry of the IPv6 bucket table: a prefix of stride `len` (at most
/// /64), identified by the top 64 bits of its masked address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Slot {
    /// The first 8 bytes of the masked address, as a big-endian u64.
    pub key: u64,
    /// Stride length; 0 marks an empty slot.
    pub len: u8,
    /// `ListEntry::action`.
    pub action: u8,
    /// `ListEntry::list_id`.
    pub list_id: u16,
    /// `ListEntry::orig_len`.
    pub orig_len: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<V6Slot>() == 16);
// `V6Slot::tail` reads the fields after `key` as one little-endian word, as
// the kernel (bpfel) and the agent on the same node both do.
const _: () = assert!(cfg!(target_endian = "little"));

impl V6Slot {
    pub const EMPTY: V6Slot = V6Slot {
        key: 0,
        len: 0,
        action: 0,
        list_id: 0,
        orig_len: 0,
        _pad: [0; 3],
    };

    pub const fn new(key: u64, len: u8, e: ListEntry) -> V6Slot {
        V6Slot {
            key,
            len,
            action: e.action,
            list_id: e.list_id,
            orig_len: e.orig_len,
            _pad: [0; 3],
        }
    }

    /// The slot's second word, `len` in its low byte, then `action`,
    /// `list_id` and `orig_len` (see [`V6Slot::entry_of_tail`]): one load
    /// where the fields would be four, for the branch-free bucket scan.
    #[inline(always)]
    pub fn tail(&self) -> u64 {
        // SAFETY: the struct is 16 bytes, 8-aligned (its first field is a
        // u64), and bytes 8..16 are plain integers (`_pad` included).
        unsafe { core::ptr::read((self as *const V6Slot).cast::<u64>().add(1)) }
    }

    /// The entry of a slot whose [`V6Slot::tail`] is `tail`.
    #[inline(always)]
    pub const fn entry_of_tail(tail: u64) -> ListEntry {
        ListEntry {
            action: (tail >> 8) as u8,
            list_id: (tail >> 16) as u16,
            orig_len: (tail >> 32) as u8,
        }
    }

    #[inline(always)]
    pub const fn entry(&self) -> ListEntry {
        ListEntry {
            list_id: self.list_id,
            action: self.action,
            orig_len: self.orig_len,
        }
    }
}

/// One cache line of the IPv6 bucket table. Slots fill in order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Bucket {
    pub slots: [V6Slot; V6_SLOTS_PER_BUCKET],
}
const _: () = assert!(core::mem::size_of::<V6Bucket>() == 64);

impl V6Bucket {
    pub const EMPTY: V6Bucket = V6Bucket {
        slots: [V6Slot::EMPTY; V6_SLOTS_PER_BUCKET],
    };
}

/// What a direct-table code means.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DirectCode {
    /// The winning entry among prefixes of /24 or shorter (if `CODE_ENTRY`).
    pub entry: ListEntry,
    /// `CODE_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<DirectCode>() == 8);

/// `DirectCode::entry` is valid.
pub const CODE_ENTRY: u32 = 1;
/// Prefixes longer than /24 exist inside this /24: consult the /32 table first.
pub const CODE_LONGER: u32 = 2;

/// Per-generation policy facts the kernel needs besides the tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyMeta {
    /// The generation's IPv6 bucket table has `2^v6_bucket_bits` buckets
    /// (the first ones of its slot). 0 (what agents before this field left
    /// in their pins) or a value over `V6_BUCKET_BITS` is read as
    /// `V6_BUCKET_BITS`: see `prefix::v6_bits`.
    pub v6_bucket_bits: u32,
    /// Bit i set: the IPv6 table holds entries of stride length `(i + 1) * 8`.
    pub v6_strides: u32,
    /// Policy generation number (increments on every applied change).
    pub generation: u64,
}
const _: () = assert!(core::mem::size_of::<PolicyMeta>() == 16);

/// Per-CPU packet and byte counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::PrefixKeyV4 {}
    unsafe impl aya::Pod for super::PrefixKeyV6 {}
    unsafe impl aya::Pod for super::ListEntry {}
    unsafe impl aya::Pod for super::PolicyMeta {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::DirectBlock {}
    unsafe impl aya::Pod for super::DirectCode {}
    unsafe impl aya::Pod for super::V6Bucket {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_indexes_are_disjoint_and_in_range() {
        let last = stats_index(
            MAX_IFACE_SLOTS - 1,
            Direction::Egress,
            (VERDICTS - 1) as u8,
            (MAX_REASONS - 1) as u8,
        );
        assert_eq!(last, STATS_SIZE - 1);
        assert_ne!(
            stats_index(1, Direction::Ingress, 0, 0),
            stats_index(0, Direction::Egress, 0, 0)
        );
        assert_ne!(
            stats_index(0, Direction::Egress, 1, 3),
            stats_index(0, Direction::Egress, 2, 3)
        );
    }
}
