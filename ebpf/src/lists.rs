//! Source-address lookup in the allow/deny prefix tables.

use tierguard_common::{
    maps::{
        ListEntry, PrefixKeyV4, PrefixKeyV6, V4_CODES_PER_SLOT, V4_DIRECT_BLOCKS,
        V4_DIRECT_PER_BLOCK, V6_BUCKETS, V6_TABLE_MAX_STRIDE,
    },
    packet::Packet,
    prefix::{
        V6_STRIDES, mask, resolve_v4, slash24, stride_bit, stride_len, v6_bits, v6_mask64,
        v6_table_find,
    },
};

use crate::maps::{LIST_V4, LIST_V6, V4_CODES, V4_DIRECT, V6_TABLE, policy_meta};

/// The winning list entry for the packet's source, if any. IPv4: one read of
/// the direct table, plus the /32 table only where longer prefixes exist.
/// IPv6: the strides in use, longest first, so the first hit is the longest
/// match; strides longer than /64 in the hash map, the others in the bucket table.
///
/// IPv4 inline (no loop: a call would cost more than the lookup, see
/// docs/design/egress.md, "Calls"); IPv6 as a call.
#[inline(always)]
pub fn lookup_source(slot: u8, p: &Packet) -> Option<ListEntry> {
    if p.family == 4 {
        return lookup_v4(slot, p);
    }
    unpack(lookup_v6_packed(slot, p))
}

/// An optional entry in a register: bit 32 set if found, the entry below.
#[inline(always)]
fn pack(e: Option<ListEntry>) -> u64 {
    match e {
        Some(e) => {
            let id = e.list_id.to_ne_bytes();
            (1 << 32) | u64::from(u32::from_ne_bytes([id[0], id[1], e.action, e.orig_len]))
        }
        None => 0,
    }
}

#[inline(always)]
fn unpack(packed: u64) -> Option<ListEntry> {
    if packed >> 32 == 0 {
        return None;
    }
    let b = (packed as u32).to_ne_bytes();
    Some(ListEntry {
        list_id: u16::from_ne_bytes([b[0], b[1]]),
        action: b[2],
        orig_len: b[3],
    })
}

/// Not inlined: as a BPF-to-BPF call the verifier sees only its result after
/// the return, instead of every path through the stride loop carried into the
/// stages that follow (which exceeds its instruction budget). The result is
/// a plain u64 (bit 32: found; low bits: the entry) so it travels in a
/// register: an `Option` return was compiled into code the verifier refuses.
#[inline(never)]
fn lookup_v6_packed(slot: u8, p: &Packet) -> u64 {
    pack(lookup_v6(slot, p))
}

/// The strides longer than /64 in use, longest first, in the hash map.
#[inline(always)]
fn lookup_v6_long(slot: u8, strides: u32, p: &Packet) -> Option<ListEntry> {
    let mut i = V6_STRIDES;
    while i > TABLE_STRIDES {
        i -= 1;
        if strides & (1 << i) != 0 {
            let len = stride_len(i);
            let key = PrefixKeyV6 {
                slot,
                len,
                _pad: [0; 2],
                addr: mask(&p.src, len),
            };
            // SAFETY: the value is copied out before the map can change it.
            if let Some(e) = unsafe { LIST_V6.get(&key) } {
                return Some(*e);
            }
        }
    }
    None
}

#[inline(always)]
fn lookup_v4(slot: u8, p: &Packet) -> Option<ListEntry> {
    let src = p.src_v4();
    let idx = slash24(&src);
    let block = u32::from(slot) * V4_DIRECT_BLOCKS + idx / V4_DIRECT_PER_BLOCK;
    let code = match V4_DIRECT.get(block) {
        Some(b) => b.codes[(idx % V4_DIRECT_PER_BLOCK) as usize],
        None => 0,
    };
    if code == 0 {
        return None;
    }
    let code = V4_CODES
        .get(u32::from(slot) * V4_CODES_PER_SLOT + u32::from(code))
        .copied();
    resolve_v4(code, || {
        let key = PrefixKeyV4 {
            slot,
            len: 32,
            _pad: [0; 2],
            addr: src,
        };
        // SAFETY: the value is copied out before the map can change it.
        unsafe { LIST_V4.get(&key) }.copied()
    })
}

/// Stride bits (in `PolicyMeta::v6_strides`) kept in the bucket table; the
/// ones above are in the hash map.
const TABLE_STRIDES: u32 = stride_bit(V6_TABLE_MAX_STRIDE) + 1;

#[inline(always)]
fn lookup_v6(slot: u8, p: &Packet) -> Option<ListEntry> {
    let meta = policy_meta(slot);
    // Prefixes longer than /64 are rare in lists: their lookup (which
    // copies the whole address to mask it) runs only when some generation
    // holds them.
    if meta.v6_strides >> TABLE_STRIDES != 0
        && let Some(e) = lookup_v6_long(slot, meta.v6_strides, p)
    {
        return Some(e);
    }
    let mut i = TABLE_STRIDES;
    let top = p.src_top64();
    let base = u32::from(slot) * V6_BUCKETS;
    // The generation uses the first 2^bits buckets of its slot (a small list
    // a small, cache-resident part); 0 or an out-of-range value reads as the
    // full size, and the mask keeps every index within the slot whatever
    // the meta holds. Read once per packet, without a branch (see `v6_bits`).
    let bits = v6_bits(meta.v6_bucket_bits);
    // The table's strides not yet looked at: the loop ends after the
    // shortest in use, not at /8 (a passed packet goes through them all).
    let mut rest = meta.v6_strides & ((1 << TABLE_STRIDES) - 1);
    while i > 0 && rest != 0 {
        i -= 1;
        if rest & (1 << i) != 0 {
            rest ^= 1 << i;
            let len = stride_len(i);
            let found = v6_table_find(v6_mask64(top, len), len, bits, |b| {
                V6_TABLE.get(base + (b & (V6_BUCKETS - 1)))
            });
            if found.is_some() {
                return found;
            }
        }
    }
    None
}
