//! Source-address lookup in the allow/deny prefix tables.

use tierguard_common::{
    maps::{ListEntry, PrefixKeyV4, PrefixKeyV6},
    packet::Packet,
    prefix::{mask, stride_len, V4_STRIDES, V6_STRIDES},
};

use crate::maps::{policy_meta, LIST_V4, LIST_V6};

/// The winning list entry for the packet's source, if any: strides in use are
/// tried longest first, so the first hit is the longest match.
#[inline(always)]
pub fn lookup_source(slot: u8, p: &Packet) -> Option<ListEntry> {
    let meta = policy_meta(slot);
    if p.family == 4 {
        let src = p.src_v4();
        let mut i = V4_STRIDES;
        while i > 0 {
            i -= 1;
            if meta.v4_strides & (1 << i) != 0 {
                let len = stride_len(i);
                let key = PrefixKeyV4 { slot, len, _pad: [0; 2], addr: mask(&src, len) };
                // SAFETY: the value is copied out before the map can change it.
                if let Some(e) = unsafe { LIST_V4.get(&key) } {
                    return Some(*e);
                }
            }
        }
    } else {
        let mut i = V6_STRIDES;
        while i > 0 {
            i -= 1;
            if meta.v6_strides & (1 << i) != 0 {
                let len = stride_len(i);
                let key = PrefixKeyV6 { slot, len, _pad: [0; 2], addr: mask(&p.src, len) };
                // SAFETY: as above.
                if let Some(e) = unsafe { LIST_V6.get(&key) } {
                    return Some(*e);
                }
            }
        }
    }
    None
}
