//! Per-CPU counters by interface, direction and reason, and per list.

use tierguard_common::{
    Reason,
    decide::{Decision, NO_ID},
    maps::{Direction, IFINDEX_TABLE_SIZE, stats_index},
};

use crate::maps::{IFACE_SLOTS, LIST_HITS, STATS};

#[inline(always)]
pub fn count(ifindex: u32, dir: Direction, d: &Decision, len: u32) {
    let slot = if ifindex < IFINDEX_TABLE_SIZE {
        IFACE_SLOTS.get(ifindex).copied().unwrap_or(0)
    } else {
        0
    };
    let idx = stats_index(slot, dir, d.verdict as u8, d.reason as u8);
    if let Some(c) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
    if d.id != NO_ID && matches!(d.reason, Reason::AllowList | Reason::DenyList) {
        if let Some(c) = LIST_HITS.get_ptr_mut(d.id as u32) {
            // SAFETY: as above.
            unsafe {
                (*c).packets += 1;
                (*c).bytes += len as u64;
            }
        }
    }
}
