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
//! home bucket, [`v6_table_find`] the probe sequence both sides use.

use crate::maps::{
    CODE_ENTRY, CODE_LONGER, DirectCode, ListAction, ListEntry, V6_BUCKET_BITS, V6_BUCKETS,
    V6_MAX_PROBES, V6_SLOTS_PER_BUCKET, V6Bucket,
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

/// Home bucket (within one generation slot) of a key at a stride:
/// multiply-shift hashing of the key with the stride in its top byte.
#[inline(always)]
pub fn v6_bucket(key: u64, stride: u8) -> u32 {
    ((key ^ ((stride as u64) << 56)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - V6_BUCKET_BITS))
        as u32
}

/// The `probe`-th bucket of a key's probe sequence (linear, wrapping within
/// the slot's buckets).
#[inline(always)]
pub fn v6_probe(home: u32, probe: u32) -> u32 {
    (home.wrapping_add(probe)) & (V6_BUCKETS - 1)
}

/// Looks `key` at `stride` up in the IPv6 bucket table, as kernel and agent
/// both do. `bucket(i)` returns bucket `i` of the generation (`None` is read
/// as an empty bucket). Probes at most `V6_MAX_PROBES` buckets from the home
/// bucket and stops at the first one with an empty slot: entries are placed
/// in the first bucket of their sequence that has room, and never removed
/// from a compiled table.
#[inline(always)]
pub fn v6_table_find<'a>(
    key: u64,
    stride: u8,
    mut bucket: impl FnMut(u32) -> Option<&'a V6Bucket>,
) -> Option<ListEntry> {
    let home = v6_bucket(key, stride);
    let mut p = 0;
    while p < V6_MAX_PROBES {
        let b = bucket(v6_probe(home, p))?;
        let mut room = false;
        let mut s = 0;
        while s < V6_SLOTS_PER_BUCKET {
            let slot = &b.slots[s];
            if slot.len == stride && slot.key == key {
                return Some(slot.entry());
            }
            if slot.len == 0 {
                room = true;
            }
            s += 1;
        }
        if room {
            return None;
        }
        p += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(v6_bucket(key, 48), want);
        // The stride is part of the hash: the same bits at two strides differ.
        assert_ne!(v6_bucket(key, 32), v6_bucket(key, 48));
        let mut x = 1u64;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            assert!(v6_bucket(x, 64) < V6_BUCKETS);
        }
        assert_eq!(
            v6_probe(V6_BUCKETS - 1, 1),
            0,
            "probing wraps within the slot"
        );
        assert_eq!(v6_probe(7, 3), 10);
    }

    #[test]
    fn v6_find_probes_until_a_bucket_with_room() {
        use crate::maps::V6Slot;
        let key = 0x2001_0db8_0001_0000u64;
        let home = v6_bucket(key, 48);
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
            v6_table_find(key, stride, |i| {
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
        let mut v: Vec<_> = (0..3).map(|p| (v6_probe(home, p), full)).collect();
        v.push((v6_probe(home, 3), with_key));
        assert_eq!(find(leak(v.clone()), key, 48), Some(3));
        // A fifth bucket is never probed.
        v[3].1 = full;
        v.push((v6_probe(home, 4), with_key));
        assert_eq!(find(leak(v), key, 48), None);
        // A bucket with room ends the search, even if a later one matches.
        let v = vec![(home, roomy), (v6_probe(home, 1), with_key)];
        assert_eq!(find(leak(v), key, 48), None);
        // A missing bucket reads as empty.
        assert_eq!(
            find(leak(vec![(v6_probe(home, 1), with_key)]), key, 48),
            None
        );
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
