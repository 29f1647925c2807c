//! Volumetric limits (`[[limits]]`) and blocked sources: the kernel layout and
//! the pure functions over it (matching, keys, the slot claim, admission),
//! run by the kernel and tested on the host. The token-bucket arithmetic is
//! in [`crate::limit`]; the decisions and their reasons in
//! docs/design/limits.md.

use crate::limit::{Bucket, Rate, SCALE, mul_sat, refill};
use crate::packet::{PROTO_TCP, Packet, TCP_ACK, TCP_SYN};

/// Limits per policy; ids are 0..MAX_LIMITS.
pub const MAX_LIMITS: u32 = 16;
/// Per-key state slots of one limit (a power of two).
pub const SLOT_BITS: u32 = 14;
pub const SLOTS_PER_LIMIT: u32 = 1 << SLOT_BITS;
/// The overflow bucket of a per-key limit has this many times its rate and burst.
pub const OVERFLOW_FACTOR: u64 = 4;
/// Interfaces one limit may be restricted to.
pub const MAX_LIMIT_IFACES: usize = 8;
/// u64 words of one limit's destination-port bitmap (65,536 bits).
pub const PORT_WORDS: u32 = 65_536 / 64;
/// Blocked prefixes per address family.
pub const BLOCK_CAPACITY: u32 = 65_536;
/// Bytes of an admin block's reason kept beside it.
pub const BLOCK_REASON_LEN: usize = 96;
/// Expired entries the kernel looks past to find a shorter, live block
/// covering the same address (the agent removes expired entries within a
/// second, so more than one is rare).
pub const MAX_BLOCK_NESTING: u32 = 4;
/// `BlockValue::origin` of a block made over the admin socket.
pub const BLOCK_ADMIN: u16 = u16::MAX;
/// Counters per limit (`LSTAT_*`).
pub const LIMIT_STATS: u32 = 8;

/// Within the limit (or within the overflow bucket).
pub const LSTAT_PASSED: u32 = 0;
/// Over the limit, dropped (actions `drop` and `block`).
pub const LSTAT_DROPPED: u32 = 1;
/// Over the limit, passed and reported (action `audit`).
pub const LSTAT_AUDITED: u32 = 2;
/// Charged to the overflow bucket: the key found no slot of its own.
pub const LSTAT_OVERFLOW: u32 = 3;
/// Blocks this limit started.
pub const LSTAT_BLOCKS: u32 = 4;
/// Blocks the kernel could not insert (the blocked table was full).
pub const LSTAT_BLOCK_FAILED: u32 = 5;
/// "Block started" records the full ring buffer refused.
pub const LSTAT_BLOCK_EVENT_LOST: u32 = 6;

/// Index of a limit's counter in `TG_LIMIT_STATS`.
pub const fn limit_stat_index(limit: u32, stat: u32) -> u32 {
    limit * LIMIT_STATS + stat
}

/// The entry is in use (entries past the last configured limit are zero).
pub const LIMIT_USED: u32 = 1;
/// `packets` holds a packet rate.
pub const LIMIT_PPS: u32 = 2;
/// `bits` holds a bit rate.
pub const LIMIT_BPS: u32 = 4;
/// Only TCP SYN without ACK.
pub const LIMIT_SYN: u32 = 8;
/// Only destination ports set in the limit's port bitmap.
pub const LIMIT_PORTS: u32 = 16;
/// Only destinations in zone `to_zone`.
pub const LIMIT_ZONE: u32 = 32;
/// Only packets arriving on one of `ifindexes`.
pub const LIMIT_IFACES: u32 = 64;

/// What a limit counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Per {
    Source = 0,
    SourcePrefix = 1,
    Destination = 2,
    Global = 3,
}

impl Per {
    pub const fn from_u8(v: u8) -> Option<Per> {
        match v {
            0 => Some(Per::Source),
            1 => Some(Per::SourcePrefix),
            2 => Some(Per::Destination),
            3 => Some(Per::Global),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Per::Source => "source",
            Per::SourcePrefix => "source_prefix",
            Per::Destination => "destination",
            Per::Global => "global",
        }
    }
}

/// What a limit does with the excess.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LimitAction {
    Drop = 0,
    /// Drop, and block the key's source (or prefix) for `block_ns`.
    Block = 1,
    /// Pass and report.
    Audit = 2,
}

impl LimitAction {
    pub const fn from_u8(v: u8) -> Option<LimitAction> {
        match v {
            0 => Some(LimitAction::Drop),
            1 => Some(LimitAction::Block),
            2 => Some(LimitAction::Audit),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            LimitAction::Drop => "drop",
            LimitAction::Block => "block",
            LimitAction::Audit => "audit",
        }
    }
}

/// One limit of a policy generation: `TG_LIMITS[slot * MAX_LIMITS + id]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSpec {
    /// `LIMIT_*` bits; 0 for an unused entry.
    pub flags: u32,
    /// IP protocol matched; 0 for any.
    pub proto: u8,
    /// `Per` as u8.
    pub per: u8,
    /// `LimitAction` as u8.
    pub action: u8,
    /// Source prefix lengths of `Per::SourcePrefix` keys.
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub _pad: u8,
    /// Destination zone (with `LIMIT_ZONE`).
    pub to_zone: u16,
    /// Interfaces (with `LIMIT_IFACES`); 0 marks an unused entry.
    pub ifindexes: [u32; MAX_LIMIT_IFACES],
    pub _pad2: u32,
    /// Key of the slot hash: random per set of pinned maps, kept across
    /// reloads, so a sender cannot aim its keys at another key's slots.
    pub seed: u64,
    /// How long an `action = "block"` block lasts.
    pub block_ns: u64,
    /// Per key (per-key limits); unused by global limits.
    pub per_key: Rates,
    /// The shared buckets: the overflow of a per-key limit (`OVERFLOW_FACTOR`
    /// times the per-key rate and burst), or the buckets of a global limit.
    pub shared: Rates,
}
const _: () = assert!(core::mem::size_of::<LimitSpec>() == 192);

impl LimitSpec {
    pub const UNUSED: LimitSpec = LimitSpec {
        flags: 0,
        proto: 0,
        per: 0,
        action: 0,
        prefix_v4: 0,
        prefix_v6: 0,
        _pad: 0,
        to_zone: 0,
        ifindexes: [0; MAX_LIMIT_IFACES],
        _pad2: 0,
        seed: 0,
        block_ns: 0,
        per_key: Rates::NONE,
        shared: Rates::NONE,
    };

    #[inline(always)]
    pub const fn used(&self) -> bool {
        self.flags & LIMIT_USED != 0
    }

    #[inline(always)]
    pub const fn is_per_key(&self) -> bool {
        self.per != Per::Global as u8
    }
}

/// A packet rate and a bit rate; which are in force is in `LimitSpec::flags`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    pub packets: Rate,
    pub bits: Rate,
}

impl Rates {
    pub const NONE: Rates = Rates {
        packets: Rate::NONE,
        bits: Rate::NONE,
    };
}

/// The buckets of one key (or of a limit's shared state), one per rate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    pub packets: Bucket,
    pub bits: Bucket,
}
const _: () = assert!(core::mem::size_of::<Buckets>() == 32);

/// Per-key state: the key that owns the slot and its buckets (shared by
/// every CPU; see docs/design/limits.md on races). A limit's shared state
/// (`TG_LIMIT_SHARED`) is a bare [`Buckets`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// The key (see [`key`]); all zero in a slot never used.
    pub key: [u8; 16],
    pub buckets: Buckets,
}
const _: () = assert!(core::mem::size_of::<Slot>() == 48);

/// Whether `spec` applies to `p` arriving on `ifindex`. `port_set` says
/// whether a destination port is in the limit's bitmap and `dst_zone` looks
/// up the destination's zone; each is called only if the limit needs it.
///
/// A later fragment carries no transport header: it matches no `tcp_flags`
/// limit (it is no SYN), but it does match a limit with `ports` of its
/// protocol, so fragmenting cannot slip a flood past a port-scoped limit.
#[inline(always)]
pub fn matches(
    spec: &LimitSpec,
    p: &Packet,
    ifindex: u32,
    port_set: impl FnOnce(u16) -> bool,
    dst_zone: impl FnOnce() -> u16,
) -> bool {
    let f = spec.flags;
    if f & LIMIT_USED == 0 || (spec.proto != 0 && spec.proto != p.proto) {
        return false;
    }
    if f & LIMIT_SYN != 0
        && !(p.proto == PROTO_TCP && p.has_l4() && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
    {
        return false;
    }
    if f & LIMIT_IFACES != 0 {
        let mut hit = false;
        let mut i = 0;
        while i < MAX_LIMIT_IFACES {
            hit |= spec.ifindexes[i] == ifindex && ifindex != 0;
            i += 1;
        }
        if !hit {
            return false;
        }
    }
    if f & LIMIT_PORTS != 0 && p.has_l4() && !port_set(p.dport) {
        return false;
    }
    if f & LIMIT_ZONE != 0 && dst_zone() != spec.to_zone {
        return false;
    }
    true
}

/// An IPv4 address as a key: IPv4-mapped (`::ffff:a.b.c.d`), so it never
/// equals the key of a native IPv6 address.
#[inline(always)]
pub fn v4_key(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// The top `bits` bits of a u64 set (`bits` above 64 counts as 64).
#[inline(always)]
const fn high_bits(bits: u32) -> u64 {
    if bits == 0 {
        0
    } else if bits >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - bits)
    }
}

/// `addr` masked to its first `len` bits. The same as `prefix::mask`, in a
/// few branches rather than one per byte: with a length read from a map the
/// verifier would follow every combination of those.
#[inline(always)]
pub fn mask_v6(addr: &[u8; 16], len: u8) -> [u8; 16] {
    let a = addr;
    let hi = u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let lo = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let len = len as u32;
    let hi = hi & high_bits(len);
    let lo = lo & high_bits(len.saturating_sub(64));
    let (h, l) = (hi.to_be_bytes(), lo.to_be_bytes());
    [
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6],
        l[7],
    ]
}

/// An IPv4 address masked to its first `len` bits (see [`mask_v6`]).
#[inline(always)]
pub fn mask_v4(a: [u8; 4], len: u8) -> [u8; 4] {
    let bits = (high_bits(len as u32) >> 32) as u32;
    (u32::from_be_bytes(a) & bits).to_be_bytes()
}

/// The key `p` is counted under: its source, its source prefix, its
/// destination, or nothing for a global limit.
#[inline(always)]
pub fn key(spec: &LimitSpec, p: &Packet) -> [u8; 16] {
    let (addr, len) = match Per::from_u8(spec.per) {
        Some(Per::Source) => (&p.src, 128),
        Some(Per::SourcePrefix) if p.family == 4 => (&p.src, spec.prefix_v4),
        Some(Per::SourcePrefix) => (&p.src, spec.prefix_v6),
        Some(Per::Destination) => (&p.dst, 128),
        Some(Per::Global) | None => return [0; 16],
    };
    if p.family == 4 {
        v4_key(mask_v4([addr[0], addr[1], addr[2], addr[3]], len))
    } else {
        mask_v6(addr, len)
    }
}

/// Prefix length, in the packet's family, of what `spec` blocks for `p`.
#[inline(always)]
pub fn block_len(spec: &LimitSpec, family: u8) -> u8 {
    match (spec.per == Per::SourcePrefix as u8, family == 4) {
        (true, true) => spec.prefix_v4,
        (true, false) => spec.prefix_v6,
        (false, true) => 32,
        (false, false) => 128,
    }
}

/// A keyed 64-bit mix of a key (not cryptographic: the seed is secret and
/// random, which is what keeps senders from choosing colliding keys).
#[inline(always)]
pub fn slot_hash(seed: u64, k: &[u8; 16]) -> u64 {
    let a = u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]]);
    let b = u64::from_le_bytes([k[8], k[9], k[10], k[11], k[12], k[13], k[14], k[15]]);
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    h = (h ^ a).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 31;
    h = (h ^ b).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

/// The two candidate slots of a key (distinct, within one limit's slots).
#[inline(always)]
pub fn candidates(seed: u64, k: &[u8; 16]) -> (u32, u32) {
    let h = slot_hash(seed, k);
    let a = (h as u32) & (SLOTS_PER_LIMIT - 1);
    let b = ((h >> 32) as u32) & (SLOTS_PER_LIMIT - 1);
    (a, if a == b { a ^ 1 } else { b })
}

/// Whether a bucket would be full at `now`: its owner has been quiet for
/// at least the time it takes to refill what it used.
#[inline(always)]
fn full(b: &Bucket, r: &Rate, now: u64) -> bool {
    let mut c = *b;
    refill(&mut c, r, now);
    c.tokens >= r.capacity()
}

/// Whether a slot may be taken by another key: each configured bucket is
/// full at `now`, so its owner loses nothing it would not get back as a
/// new key.
#[inline(always)]
pub fn idle(s: &Slot, spec: &LimitSpec, now: u64) -> bool {
    let (b, r) = (&s.buckets, &spec.per_key);
    (spec.flags & LIMIT_PPS == 0 || full(&b.packets, &r.packets, now))
        && (spec.flags & LIMIT_BPS == 0 || full(&b.bits, &r.bits, now))
}

/// Where a packet's key is charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The key owns candidate 0 or 1.
    Own(u8),
    /// The key takes over idle candidate 0 or 1.
    Take(u8),
    /// Both candidates belong to other keys still in use: the overflow bucket.
    Overflow,
}

/// The slot claim: a key uses the candidate it owns; otherwise it takes an
/// idle candidate (the first one if both are); otherwise its packet is
/// charged to the overflow bucket. A flood of new keys therefore cannot take
/// the slot of a key in use.
#[inline(always)]
pub fn choose(a: &Slot, b: &Slot, k: &[u8; 16], spec: &LimitSpec, now: u64) -> Choice {
    choose_with(a, b, k, |s| idle(s, spec, now))
}

/// [`choose`] with the idle test supplied (the kernel makes it a call of its own).
#[inline(always)]
pub fn choose_with(a: &Slot, b: &Slot, k: &[u8; 16], idle: impl Fn(&Slot) -> bool) -> Choice {
    if a.key == *k {
        Choice::Own(0)
    } else if b.key == *k {
        Choice::Own(1)
    } else if idle(a) {
        Choice::Take(0)
    } else if idle(b) {
        Choice::Take(1)
    } else {
        Choice::Overflow
    }
}

/// Gives a slot to a new key, with fresh (full) buckets.
#[inline(always)]
pub fn take(s: &mut Slot, k: &[u8; 16]) {
    s.key = *k;
    s.buckets = Buckets::default();
}

/// Admits a packet of `len` bytes against the rates in force (`flags`): each
/// bucket must hold its cost, and only then is it taken from both, so a
/// refused packet costs nothing.
#[inline(always)]
pub fn admit(b: &mut Buckets, flags: u32, r: &Rates, now: u64, len: u32) -> bool {
    let use_p = flags & LIMIT_PPS != 0;
    let use_b = flags & LIMIT_BPS != 0;
    if use_p {
        refill(&mut b.packets, &r.packets, now);
    }
    if use_b {
        refill(&mut b.bits, &r.bits, now);
    }
    let need_b = mul_sat(r.bits.cost(u64::from(len)), SCALE);
    let ok = (!use_p || b.packets.tokens >= SCALE) && (!use_b || b.bits.tokens >= need_b);
    if ok {
        if use_p {
            b.packets.tokens = b.packets.tokens.wrapping_sub(SCALE);
        }
        if use_b {
            b.bits.tokens = b.bits.tokens.wrapping_sub(need_b);
        }
    }
    ok
}

/// What the limit stage decided: within every matching limit, over a limit
/// that drops (or blocks), or over a limit whose action is audit (later
/// stages still decide). A plain integer, so that it travels in a register
/// out of the kernel's non-inlined stage (see `ebpf/src/lists.rs`) and the
/// verifier follows one path for "not dropped", whatever else it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitOutcome(pub u32);

const OUTCOME_DROP: u32 = 1 << 16;
const OUTCOME_AUDIT: u32 = 2 << 16;

impl LimitOutcome {
    pub const PASS: LimitOutcome = LimitOutcome(0);

    pub const fn drop(id: u16) -> LimitOutcome {
        LimitOutcome(OUTCOME_DROP | id as u32)
    }

    pub const fn audit(id: u16) -> LimitOutcome {
        LimitOutcome(OUTCOME_AUDIT | id as u32)
    }

    /// The limit that drops the packet, if one does.
    #[inline(always)]
    pub const fn dropped_by(self) -> Option<u16> {
        if self.0 & !0xffff == OUTCOME_DROP {
            Some(self.0 as u16)
        } else {
            None
        }
    }

    /// The limit over which the packet is reported, if one is.
    #[inline(always)]
    pub const fn audited_by(self) -> Option<u16> {
        if self.0 & !0xffff == OUTCOME_AUDIT {
            Some(self.0 as u16)
        } else {
            None
        }
    }
}

/// A blocked prefix: value of `TG_BLOCKS_V4` and `TG_BLOCKS_V6` (LPM tries
/// keyed by the address bytes). Not part of the policy transaction: blocks
/// survive reloads and restarts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockValue {
    /// CLOCK_MONOTONIC_COARSE time (`bpf_ktime_get_coarse_ns`) the block
    /// ends; from then on the kernel treats the entry as absent.
    pub until_ns: u64,
    /// The same clock when the block started.
    pub created_ns: u64,
    /// The limit id that started it, or [`BLOCK_ADMIN`].
    pub origin: u16,
    /// Prefix length of this entry, so the kernel can look past it.
    pub len: u8,
    pub flags: u8,
    /// For admin blocks: the uid that asked.
    pub uid: u32,
    /// For admin blocks: why (UTF-8, zero-padded).
    pub reason: [u8; BLOCK_REASON_LEN],
}
const _: () = assert!(core::mem::size_of::<BlockValue>() == 120);

impl BlockValue {
    pub const EMPTY: BlockValue = BlockValue {
        until_ns: 0,
        created_ns: 0,
        origin: 0,
        len: 0,
        flags: 0,
        uid: 0,
        reason: [0; BLOCK_REASON_LEN],
    };

    /// Whether the block is in force at `now`.
    #[inline(always)]
    pub const fn active(&self, now: u64) -> bool {
        now < self.until_ns
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::LimitSpec {}
    unsafe impl aya::Pod for super::Slot {}
    unsafe impl aya::Pod for super::Buckets {}
    unsafe impl aya::Pod for super::BlockValue {}
}

#[cfg(test)]
mod tests;
