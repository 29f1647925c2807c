//! Prefix sets as a few exact-match tables, one per stride length.
//!
//! A configured prefix of length L is stored at the next stride length S >= L
//! (strides are multiples of 8), expanded into the 2^(S-L) prefixes of length S
//! it covers. A lookup then tries each stride present, longest first, with one
//! hash lookup each: the cost depends on how many strides are in use (at most
//! 4 for IPv4, 16 for IPv6), never on how many prefixes there are. See
//! docs/design/map-layout.md.
//!
//! IPv6 strides up to /64 are not hashed by the kernel's hash map but kept in
//! a bucketised open-addressing table (`TG_V6_TABLE`): [`v6_bucket`] is the
//! home bucket, [`v6_table_find`] the probe sequence both sides use, both
//! within the `2^bits` buckets the generation uses ([`v6_bits`]).

use crate::maps::{
    CODE_ENTRY, CODE_LONGER, DirectCode, ListAction, ListEntry, V6_BUCKET_BITS, V6_MAX_PROBES,
    V6_SLOTS_PER_BUCKET, V6Bucket, V6Slot,
};

pub const STRIDE_BITS: u8 = 8;
pub const V4_STRIDES: u32 = 4;
pub const V6_STRIDES: u32 = 16;

/// Stride length a prefix of `len` bits is stored at (0 → 8, 9 → 16, 32 → 32).
pub const fn stride_for(len: u8) -> u8 {
    if len == 0 {
        STRIDE_BITS
    } else {
        len.div_ceil(STRIDE_BITS) * STRIDE_BITS
    }
}

/// Bit index of a stride length in `PolicyMeta::v*_strides`.
pub const fn stride_bit(stride: u8) -> u32 {
    (stride / STRIDE_BITS) as u32 - 1
}

/// Stride length for bit index `i`.
pub const fn stride_len(i: u32) -> u8 {
    ((i + 1) * STRIDE_BITS as u32) as u8
}

/// Zeroes the bits of `addr` past the first `len`.
#[inline(always)]
pub fn mask<const N: usize>(addr: &[u8; N], len: u8) -> [u8; N] {
    let mut out = [0u8; N];
    let full = (len / 8) as usize;
    let mut i = 0;
    while i < N {
        if i < full {
            out[i] = addr[i];
        } else if i == full {
            let rem = len % 8;
            if rem != 0 {
                out[i] = addr[i] & (0xffu8 << (8 - rem));
            }
        }
        i += 1;
    }
    out
}

/// Whether `new` should replace `old` at the same stride key: the longer
/// configured prefix wins (longest-prefix match); at equal length deny beats
/// allow; then the lower list id wins, so the outcome never depends on order.
pub fn wins(new: &ListEntry, old: &ListEntry) -> bool {
    if new.orig_len != old.orig_len {
        return new.orig_len > old.orig_len;
    }
    let (na, oa) = (
        new.action == ListAction::Deny as u8,
        old.action == ListAction::Deny as u8,
    );
    if na != oa {
        return na;
    }
    new.list_id < old.list_id
}

/// Calls `f` with every stride-length address that `addr/len` expands to.
/// `addr` must already be masked to `len`.
pub fn expand<const N: usize>(addr: &[u8; N], len: u8, mut f: impl FnMut([u8; N])) {
    let stride = stride_for(len);
    let extra = stride - len;
    let byte = (stride / 8 - 1) as usize;
    if extra == 0 {
        f(*addr);
        return;
    }
    // The free bits are the low `extra` bits of the stride's last byte.
    for v in 0..(1u16 << extra) {
        let mut a = *addr;
        a[byte] |= v as u8;
        f(a);
    }
}

/// IPv4 lookup semantics over the direct table, shared by kernel and agent:
/// `code` is the decoded code of the source's /24 (`None` for code 0), and
/// `longer` looks the full address up among prefixes longer than /24.
#[inline(always)]
pub fn resolve_v4(
    code: Option<DirectCode>,
    longer: impl FnOnce() -> Option<ListEntry>,
) -> Option<ListEntry> {
    let code = code?;
    if code.flags & CODE_LONGER != 0
        && let Some(e) = longer()
    {
        return Some(e);
    }
    (code.flags & CODE_ENTRY != 0).then_some(code.entry)
}

/// Index of the /24 that holds an IPv4 address.
#[inline(always)]
pub fn slash24(addr: &[u8; 4]) -> u32 {
    (addr[0] as u32) << 16 | (addr[1] as u32) << 8 | addr[2] as u32
}

/// The first 64 bits of an IPv6 address as a big-endian u64.
#[inline(always)]
pub fn v6_top(addr: &[u8; 16]) -> u64 {
    u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ])
}

/// `top` (see [`v6_top`]) with the bits past the first `len` cleared.
#[inline(always)]
pub fn v6_mask64(top: u64, len: u8) -> u64 {
    if len == 0 {
        0
    } else if len >= 64 {
        top
    } else {
        top & (u64::MAX << (64 - len))
    }
}

/// Key of `addr/len` in the IPv6 bucket table: `addr` masked to `len`, first
/// 8 bytes, big-endian. Only meaningful for `len <= 64`.
#[inline(always)]
pub fn v6_top64(addr: &[u8; 16], len: u8) -> u64 {
    v6_mask64(v6_top(addr), len)
}

/// The number of bucket bits a generation's table has, from
/// `PolicyMeta::v6_bucket_bits`: 0 (left by agents that did not size the
/// table) and values over `V6_BUCKET_BITS` read as `V6_BUCKET_BITS`, so the
/// result is always in `1..=V6_BUCKET_BITS` and a bucket index below
/// `V6_BUCKETS`.
///
/// Computed as `min(meta - 1, V6_BUCKET_BITS - 1) + 1` (`meta - 1`
/// wrapping, so 0 gives the maximum) without a branch, for the verifier: the
/// benchmark's ingress program verifies in about 955,000 of its 1,000,000
/// instructions (949,000 before the table was sized), and the branches of
/// `if meta == 0 || meta > V6_BUCKET_BITS`, met in the stride loop, took it
/// past the budget. The sign mask is read back through a volatile so that
/// no LLVM version can fold the arithmetic back into a compare and a branch.
#[inline(always)]
pub fn v6_bits(meta: u32) -> u32 {
    let top = u64::from(V6_BUCKET_BITS - 1);
    // Below zero (wrapped) exactly when meta - 1 < top.
    let d = u64::from(meta.wrapping_sub(1)).wrapping_sub(top);
    let sign = ((d as i64) >> 63) as u64;
    // SAFETY: a read of a local.
    let below = unsafe { core::ptr::read_volatile(&sign) };
    // top + min(d, 0): meta - 1 when below top, else top.
    top.wrapping_add(d & below) as u32 + 1
}

/// Home bucket (within one generation slot) of a key at a stride, in a table
/// of `2^bits` buckets (`bits` as read by [`v6_bits`], in
/// `1..=V6_BUCKET_BITS`): multiply-shift hashing of the key with the stride
/// in its top byte, the top `bits` bits of the product. The home at `bits`
/// is the home at `bits + 1` shifted right by one.
#[inline(always)]
pub fn v6_bucket(key: u64, stride: u8, bits: u32) -> u32 {
    // Wrapping: no panic whatever `bits` is (a caller that skipped `v6_bits`
    // gets a wrong bucket, never a crash; the kernel masks the index).
    (key ^ ((stride as u64) << 56))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_shr(64u32.wrapping_sub(bits)) as u32
}

/// The `probe`-th bucket of a key's probe sequence (linear, wrapping within
/// the generation's `2^bits` buckets; `bits` as for [`v6_bucket`]).
#[inline(always)]
pub fn v6_probe(home: u32, probe: u32, bits: u32) -> u32 {
    home.wrapping_add(probe) & 1u32.wrapping_shl(bits).wrapping_sub(1)
}

/// Looks `key` at `stride` up in the IPv6 bucket table, as kernel and agent
/// both do, in a generation of `2^bits` buckets: `bits` is the generation's
/// `PolicyMeta::v6_bucket_bits` read through [`v6_bits`] (once per packet:
/// not here, where the kernel would branch on it in every probe).
/// `bucket(i)` returns bucket `i` of the generation (`None` is read as an
/// empty bucket), `i` below `2^bits`. Probes at most `V6_MAX_PROBES` buckets
/// from the home bucket and stops at the first one with an empty slot:
/// entries are placed in the first bucket of their sequence that has room,
/// and never removed from a compiled table.
#[inline(always)]
pub fn v6_table_find<'a>(
    key: u64,
    stride: u8,
    bits: u32,
    mut bucket: impl FnMut(u32) -> Option<&'a V6Bucket>,
) -> Option<ListEntry> {
    let home = v6_bucket(key, stride, bits);
    let mut p = 0;
    while p < V6_MAX_PROBES {
        let b = bucket(v6_probe(home, p, bits))?;
        // Without a branch per slot: which slot holds the key, and whether
        // one is empty, are random from packet to packet, so branches on
        // them were mispredicted once the bucket arrived from memory, and
        // the miss's latency could not overlap anything (docs/design/
        // map-layout.md, "Bucket scan"). `hit` collects the matching slot's
        // tail (its low byte, the stride, is not 0), `room` whether a slot
        // is empty.
        let mut hit = 0u64;
        let mut room = 0u64;
        let mut s = 0;
        while s < V6_SLOTS_PER_BUCKET {
            let slot = &b.slots[s];
            let tail = slot.tail();
            let differs = (slot.key ^ key) | ((tail ^ stride as u64) & 0xff);
            // The mask through `opaque` too: knowing it is 0 or all ones,
            // LLVM would make the AND a select, i.e. a branch again.
            hit |= tail & opaque(is_zero(differs).wrapping_neg());
            room |= is_zero(tail & 0xff);
            s += 1;
        }
        if hit != 0 {
            return Some(V6Slot::entry_of_tail(hit));
        }
        if room != 0 {
            return None;
        }
        p += 1;
    }
    None
}

/// 1 if `x` is 0, else 0, computed without a branch: the top bit of
/// `x | -x` is set exactly when `x` is not 0. The negation goes through
/// [`opaque`], or LLVM would see the idiom, turn it back into a compare,
/// and the BPF backend (which has no set-on-condition instruction) into a
/// branch.
#[inline(always)]
pub fn is_zero(x: u64) -> u64 {
    1 ^ ((x | opaque(x.wrapping_neg())) >> 63)
}

/// `x`, through an inline-assembly register move in the kernel build: one
/// instruction, whose result the compiler cannot see through. (An empty
/// statement would be no instruction at all, but it leaves two line-info
/// records at one offset, which the kernel refuses.)
#[inline(always)]
pub fn opaque(x: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let mut x = x;
        // SAFETY: moves a register to itself; touches nothing else.
        unsafe { core::arch::asm!("{0} = {0}", inout(reg) x, options(pure, nomem, nostack)) };
        x
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        x
    }
}

/// Puts `slot` in the first free slot of its probe sequence in `table` (one
/// generation's `2^bits` buckets), as [`v6_table_find`] will look for it;
/// false if the `V6_MAX_PROBES` buckets are full. The agent's placement.
#[cfg(not(target_arch = "bpf"))]
pub fn v6_place(
    table: &mut std::collections::HashMap<u32, V6Bucket>,
    slot: V6Slot,
    bits: u32,
) -> bool {
    let home = v6_bucket(slot.key, slot.len, bits);
    for p in 0..V6_MAX_PROBES {
        // A bucket added here has room, so it is filled: none stays empty.
        let b = table
            .entry(v6_probe(home, p, bits))
            .or_insert(V6Bucket::EMPTY);
        if let Some(free) = b.slots.iter_mut().find(|s| s.len == 0) {
            *free = slot;
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::V6_BUCKETS;

    fn entry(id: u16, action: ListAction, len: u8) -> ListEntry {
        ListEntry {
            list_id: id,
            action: action as u8,
            orig_len: len,
        }
    }

    #[test]
    fn strides_round_up_to_multiples_of_eight() {
        assert_eq!(stride_for(0), 8);
        assert_eq!(stride_for(1), 8);
        assert_eq!(stride_for(8), 8);
        assert_eq!(stride_for(9), 16);
        assert_eq!(stride_for(24), 24);
        assert_eq!(stride_for(25), 32);
        assert_eq!(stride_for(128), 128);
        assert_eq!(stride_bit(8), 0);
        assert_eq!(stride_bit(128), 15);
        assert_eq!(stride_len(15), 128);
    }

    #[test]
    fn mask_keeps_only_prefix_bits() {
        assert_eq!(mask(&[10, 1, 2, 3], 0), [0, 0, 0, 0]);
        assert_eq!(mask(&[10, 1, 2, 3], 8), [10, 0, 0, 0]);
        assert_eq!(mask(&[10, 255, 2, 3], 12), [10, 240, 0, 0]);
        assert_eq!(mask(&[10, 1, 2, 3], 32), [10, 1, 2, 3]);
        let v6 = [0xff; 16];
        let m = mask(&v6, 65);
        assert_eq!(m[7], 0xff);
        assert_eq!(m[8], 0x80);
        assert_eq!(m[9], 0);
    }

    #[test]
    fn expansion_covers_exactly_the_prefix() {
        let mut got = Vec::new();
        expand(&[10, 1, 0, 0], 22, |a| got.push(a));
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], [10, 1, 0, 0]);
        assert_eq!(got[3], [10, 1, 3, 0]);

        let mut n = 0;
        expand(&[0, 0, 0, 0], 0, |_| n += 1);
        assert_eq!(n, 256);
        let mut n = 0;
        expand(&[192, 0, 2, 7], 32, |a| {
            assert_eq!(a, [192, 0, 2, 7]);
            n += 1;
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn direct_resolution_prefers_longer_prefixes() {
        let short = entry(1, ListAction::Deny, 16);
        let long = entry(2, ListAction::Allow, 32);
        let both = DirectCode {
            entry: short,
            flags: CODE_ENTRY | CODE_LONGER,
        };
        assert_eq!(resolve_v4(Some(both), || Some(long)), Some(long));
        assert_eq!(resolve_v4(Some(both), || None), Some(short));
        let only_longer = DirectCode {
            entry: ListEntry::default(),
            flags: CODE_LONGER,
        };
        assert_eq!(resolve_v4(Some(only_longer), || None), None);
        assert_eq!(resolve_v4(None, || Some(long)), None);
        assert_eq!(slash24(&[10, 1, 2, 3]), 0x0a0102);
    }

    #[test]
    fn v6_keys_are_the_masked_top_64_bits() {
        let a: [u8; 16] = [
            0x20, 0x01, 0x0d, 0xb8, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 0, 0, 0, 0, 0, 1,
        ];
        assert_eq!(v6_top(&a), 0x2001_0db8_1234_5678);
        assert_eq!(v6_top64(&a, 64), 0x2001_0db8_1234_5678);
        assert_eq!(v6_top64(&a, 128), 0x2001_0db8_1234_5678);
        assert_eq!(v6_top64(&a, 48), 0x2001_0db8_1234_0000);
        assert_eq!(v6_top64(&a, 8), 0x2000_0000_0000_0000);
        assert_eq!(v6_top64(&a, 0), 0);
        // The same as masking the address and reading its first 8 bytes.
        for len in 0..=64u8 {
            let m = mask(&a, len);
            let want = u64::from_be_bytes(m[..8].try_into().unwrap());
            assert_eq!(v6_top64(&a, len), want, "/{len}");
        }
    }

    #[test]
    fn v6_bucket_is_the_multiply_shift_hash_in_range() {
        let key = 0x2001_0db8_0000_0000u64;
        let want = ((key ^ (48u64 << 56)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 45) as u32;
        assert_eq!(v6_bucket(key, 48, V6_BUCKET_BITS), want);
        // The stride is part of the hash: the same bits at two strides differ.
        assert_ne!(
            v6_bucket(key, 32, V6_BUCKET_BITS),
            v6_bucket(key, 48, V6_BUCKET_BITS)
        );
        let mut x = 1u64;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let full = v6_bucket(x, 64, V6_BUCKET_BITS);
            assert!(full < V6_BUCKETS);
            for bits in 1..=V6_BUCKET_BITS {
                let home = v6_bucket(x, 64, bits);
                assert!(home < 1 << bits);
                // A smaller table's home is the top bits of the full one's.
                assert_eq!(home, full >> (V6_BUCKET_BITS - bits));
            }
        }
        assert_eq!(
            v6_probe(V6_BUCKETS - 1, 1, V6_BUCKET_BITS),
            0,
            "probing wraps within the slot"
        );
        assert_eq!(v6_probe(7, 3, V6_BUCKET_BITS), 10);
    }

    #[test]
    fn v6_bits_zero_and_out_of_range_read_as_the_full_size() {
        assert_eq!(
            v6_bits(0),
            V6_BUCKET_BITS,
            "pins of agents before the field"
        );
        assert_eq!(v6_bits(V6_BUCKET_BITS + 1), V6_BUCKET_BITS);
        assert_eq!(v6_bits(64), V6_BUCKET_BITS);
        assert_eq!(v6_bits(u32::MAX), V6_BUCKET_BITS);
        assert_eq!(v6_bits(V6_BUCKET_BITS), V6_BUCKET_BITS);
        assert_eq!(v6_bits(6), 6);
        assert_eq!(v6_bits(1), 1);
        for meta in 1..=V6_BUCKET_BITS {
            assert_eq!(v6_bits(meta), meta);
        }
        for meta in (V6_BUCKET_BITS + 1..=4096).chain(u32::MAX - 4096..=u32::MAX) {
            assert_eq!(v6_bits(meta), V6_BUCKET_BITS, "{meta}");
        }
        // A lookup with 0 in the meta probes the full-size table: it finds
        // an entry placed in a table of 2^V6_BUCKET_BITS buckets.
        use crate::maps::V6Slot;
        let key = 0x2001_0db8_0042_0000u64;
        let home = v6_bucket(key, 48, V6_BUCKET_BITS);
        let mut b = V6Bucket::EMPTY;
        b.slots[0] = V6Slot::new(key, 48, entry(9, ListAction::Deny, 48));
        for meta in [0, V6_BUCKET_BITS, 200, u32::MAX] {
            let got = v6_table_find(key, 48, v6_bits(meta), |i| {
                assert!(i < V6_BUCKETS, "index {i} out of the slot");
                (i == home).then_some(&b)
            });
            assert_eq!(got.map(|e| e.list_id), Some(9), "meta {meta}");
        }
    }

    #[test]
    fn v6_find_after_insert_at_several_sizes() {
        use crate::maps::V6Slot;
        let mut x = 7u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x & !0xffff // a /48
        };
        for bits in [1, 2, 6, 9, 12, 16, V6_BUCKET_BITS] {
            // Up to two entries per bucket, as the agent sizes the table.
            let n = (2usize << bits).min(3000);
            let mut table = std::collections::HashMap::new();
            let mut placed = Vec::new();
            for i in 0..n {
                let key = next();
                let e = entry(i as u16, ListAction::Deny, 48);
                if v6_place(&mut table, V6Slot::new(key, 48, e), bits) {
                    placed.push((key, e));
                }
            }
            assert!(placed.len() * 10 >= n * 9, "bits {bits}: most fit");
            assert!(table.keys().all(|&i| i < 1 << bits), "bits {bits}");
            let find = |key: u64, stride: u8| {
                v6_table_find(key, stride, bits, |i| {
                    assert!(i < 1 << bits, "bits {bits}: probed {i}");
                    table.get(&i)
                })
            };
            for &(key, e) in &placed {
                assert_eq!(find(key, 48), Some(e), "bits {bits}: {key:x}");
                // Same bits, another stride: not a match.
                assert_eq!(find(key, 56), None, "bits {bits}: {key:x}/56");
            }
            // Keys never inserted are not found.
            for _ in 0..200 {
                let key = next();
                assert_eq!(find(key, 48), None, "bits {bits}: absent {key:x}");
            }
        }
    }

    #[test]
    fn v6_probing_wraps_at_a_small_size() {
        use crate::maps::V6Slot;
        const BITS: u32 = 6;
        let last = (1 << BITS) - 1;
        assert_eq!(v6_probe(last, 0, BITS), last);
        assert_eq!(v6_probe(last, 1, BITS), 0);
        assert_eq!(v6_probe(last - 1, 3, BITS), 1);
        // Five keys at home `last` at 6 bits: the fifth goes to bucket 0.
        let keys: Vec<u64> = (0u64..)
            .map(|k| k << 16)
            .filter(|&k| v6_bucket(k, 48, BITS) == last)
            .take(5)
            .collect();
        let mut table = std::collections::HashMap::new();
        for (i, &k) in keys.iter().enumerate() {
            let slot = V6Slot::new(k, 48, entry(i as u16, ListAction::Allow, 48));
            assert!(v6_place(&mut table, slot, BITS));
        }
        assert_eq!(table.len(), 2);
        assert_eq!(table[&0].slots[0].key, keys[4], "wrapped to bucket 0");
        for (i, &k) in keys.iter().enumerate() {
            let got = v6_table_find(k, 48, BITS, |b| table.get(&b));
            assert_eq!(got.map(|e| e.list_id), Some(i as u16));
        }
        // At the full size the same keys have other homes: not found there.
        let wide = v6_table_find(keys[4], 48, v6_bits(0), |b| table.get(&b));
        assert_eq!(wide, None);
    }

    #[test]
    fn v6_find_probes_until_a_bucket_with_room() {
        use crate::maps::V6Slot;
        const B: u32 = V6_BUCKET_BITS;
        let key = 0x2001_0db8_0001_0000u64;
        let home = v6_bucket(key, 48, B);
        let e = entry(3, ListAction::Deny, 48);
        let other = V6Slot::new(1, 64, entry(0, ListAction::Allow, 64));
        let full = V6Bucket {
            slots: [other; V6_SLOTS_PER_BUCKET],
        };
        let mut with_key = full;
        with_key.slots[2] = V6Slot::new(key, 48, e);
        let mut roomy = V6Bucket::EMPTY;
        roomy.slots[0] = other;
        fn find(buckets: &'static [(u32, V6Bucket)], key: u64, stride: u8) -> Option<u16> {
            v6_table_find(key, stride, B, |i| {
                buckets.iter().find(|(j, _)| *j == i).map(|(_, b)| b)
            })
            .map(|e| e.list_id)
        }
        let leak = |v: Vec<(u32, V6Bucket)>| -> &'static [(u32, V6Bucket)] { Vec::leak(v) };
        // In the home bucket.
        assert_eq!(find(leak(vec![(home, with_key)]), key, 48), Some(3));
        // Wrong stride: no match.
        assert_eq!(find(leak(vec![(home, with_key)]), key, 56), None);
        // Three full buckets, then the entry in the fourth (the last probed).
        let mut v: Vec<_> = (0..3).map(|p| (v6_probe(home, p, B), full)).collect();
        v.push((v6_probe(home, 3, B), with_key));
        assert_eq!(find(leak(v.clone()), key, 48), Some(3));
        // A fifth bucket is never probed.
        v[3].1 = full;
        v.push((v6_probe(home, 4, B), with_key));
        assert_eq!(find(leak(v), key, 48), None);
        // A bucket with room ends the search, even if a later one matches.
        let v = vec![(home, roomy), (v6_probe(home, 1, B), with_key)];
        assert_eq!(find(leak(v), key, 48), None);
        // A missing bucket reads as empty.
        assert_eq!(
            find(leak(vec![(v6_probe(home, 1, B), with_key)]), key, 48),
            None
        );
    }

    #[test]
    fn the_packets_one_load_top_equals_the_byte_by_byte_one() {
        let mut p = crate::packet::Packet::EMPTY;
        p.src = [
            0x20, 0x01, 0x0d, 0xb8, 0x80, 0x7f, 0xff, 0x01, 9, 9, 9, 9, 9, 9, 9, 9,
        ];
        assert_eq!(p.src_top64(), v6_top(&p.src));
        assert_eq!(p.src_top64(), 0x2001_0db8_807f_ff01);
    }

    #[test]
    fn is_zero_without_a_branch_is_exact() {
        for x in [
            0u64,
            1,
            2,
            0xff,
            1 << 63,
            (1 << 63) + 1,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(is_zero(x), u64::from(x == 0), "{x:#x}");
        }
    }

    #[test]
    fn v6_find_returns_the_whole_entry_from_any_slot() {
        use crate::maps::V6Slot;
        let key = 0x2001_0db8_00ff_0000u64;
        let e = ListEntry {
            list_id: 0xbeef,
            action: ListAction::Deny as u8,
            orig_len: 47,
        };
        let slot = V6Slot::new(key, 48, e);
        assert_eq!(V6Slot::entry_of_tail(slot.tail()), e);
        assert_eq!(slot.tail() & 0xff, 48, "the stride is the low byte");
        let home = v6_bucket(key, 48, V6_BUCKET_BITS);
        // Neighbours share the key at another stride, or the stride with
        // another key: only the exact pair matches, wherever it sits.
        let decoys = [
            V6Slot::new(key, 56, entry(1, ListAction::Allow, 56)),
            V6Slot::new(key ^ 1 << 16, 48, entry(2, ListAction::Allow, 48)),
            V6Slot::new(key ^ 1 << 63, 48, entry(3, ListAction::Allow, 48)),
        ];
        for at in 0..V6_SLOTS_PER_BUCKET {
            let mut b = V6Bucket::EMPTY;
            let mut d = decoys.iter();
            for (i, s) in b.slots.iter_mut().enumerate() {
                *s = if i == at { slot } else { *d.next().unwrap() };
            }
            let got = v6_table_find(key, 48, V6_BUCKET_BITS, |i| (i == home).then_some(&b));
            assert_eq!(got, Some(e), "entry in slot {at}");
            let absent = v6_table_find(key, 40, V6_BUCKET_BITS, |i| (i == home).then_some(&b));
            assert_eq!(absent, None, "slot {at}, other stride");
        }
    }

    #[test]
    fn longer_prefix_then_deny_then_lower_id_wins() {
        let allow24 = entry(1, ListAction::Allow, 24);
        let deny16 = entry(0, ListAction::Deny, 16);
        assert!(wins(&allow24, &deny16));
        assert!(!wins(&deny16, &allow24));
        let deny24 = entry(5, ListAction::Deny, 24);
        assert!(wins(&deny24, &allow24));
        assert!(!wins(&allow24, &deny24));
        let deny24b = entry(2, ListAction::Deny, 24);
        assert!(wins(&deny24b, &deny24));
        assert!(!wins(&deny24, &deny24b));
    }
}
