//! Prefix sets as a few exact-match tables, one per stride length.
//!
//! A configured prefix of length L is stored at the next stride length S >= L
//! (strides are multiples of 8), expanded into the 2^(S-L) prefixes of length S
//! it covers. A lookup then tries each stride present, longest first, with one
//! hash lookup each: the cost depends on how many strides are in use (at most
//! 4 for IPv4, 16 for IPv6), never on how many prefixes there are. See
//! docs/design/map-layout.md.

use crate::maps::{CODE_ENTRY, CODE_LONGER, DirectCode, ListAction, ListEntry};

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
