//! The limits of a policy generation in the kernel's maps, their per-key
//! state and counters. Specs are written in the policy transaction
//! (`tables.rs`); state and counters live outside it.

use std::path::Path;

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
};
use tierguard_common::{
    limiter::{
        Buckets, LIMIT_STATS, LSTAT_AUDITED, LSTAT_BLOCK_EVENT_LOST, LSTAT_BLOCK_FAILED,
        LSTAT_BLOCKS, LSTAT_DROPPED, LSTAT_OVERFLOW, LSTAT_PASSED, LimitSpec, MAX_LIMIT_IFACES,
        MAX_LIMITS, PORT_WORDS, SLOTS_PER_LIMIT, Slot, limit_stat_index,
    },
    maps::names,
};

use super::map_access::{array, map_err, pinned};
use super::{DatapathError, Result, ifindex};
use crate::policy::CompiledLimits;

/// The slot-hash seed the live limits use, so that keys keep their slots
/// across reloads; a new random one when no limit is live.
fn seed(ebpf: &mut Ebpf, live: u8) -> Result<u64> {
    let specs: Array<_, LimitSpec> = array(ebpf, names::LIMITS)?;
    for i in 0..MAX_LIMITS {
        let s = specs
            .get(&(u32::from(live) * MAX_LIMITS + i), 0)
            .map_err(map_err(names::LIMITS))?;
        if s.used() && s.seed != 0 {
            return Ok(s.seed);
        }
    }
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        tracing::warn!("getrandom failed; the limit slot hash falls back to a time-derived seed");
        let t = super::coarse_now_ns() ^ u64::from(std::process::id()).rotate_left(32);
        return Ok(t | 1);
    }
    Ok(u64::from_ne_bytes(b) | 1)
}

/// Writes the limits into generation `slot` (every entry of the slot: the
/// ones past the last limit are cleared). `live` is the live slot.
pub(super) fn write(ebpf: &mut Ebpf, limits: &CompiledLimits, slot: u8, live: u8) -> Result<()> {
    let seed = seed(ebpf, live)?;
    let mut ports: Array<_, u64> = array(ebpf, names::LIMIT_PORTS)?;
    for (i, bitmap) in limits.ports.iter().enumerate() {
        let Some(words) = bitmap else { continue };
        let base = (u32::from(slot) * MAX_LIMITS + i as u32) * PORT_WORDS;
        for (w, v) in words.iter().enumerate() {
            ports
                .set(base + w as u32, *v, 0)
                .map_err(map_err(names::LIMIT_PORTS))?;
        }
    }
    let mut specs: Array<_, LimitSpec> = array(ebpf, names::LIMITS)?;
    for i in 0..MAX_LIMITS as usize {
        let spec = match limits.specs.get(i) {
            Some(s) => {
                let mut s = *s;
                s.seed = seed;
                for (n, name) in limits.interfaces[i]
                    .iter()
                    .take(MAX_LIMIT_IFACES)
                    .enumerate()
                {
                    // A missing interface keeps 0, which matches nothing.
                    s.ifindexes[n] = ifindex(name).unwrap_or(0);
                }
                s
            }
            None => LimitSpec::UNUSED,
        };
        specs
            .set(u32::from(slot) * MAX_LIMITS + i as u32, spec, 0)
            .map_err(map_err(names::LIMITS))?;
    }
    Ok(())
}

/// Keeps each limit id's state and counters about one limit: where the
/// name at an id changed (limits added, removed or reordered, now or since
/// an earlier agent), its counters restart from zero and, if the maps may
/// hold state (`stateful`), its buckets and slots are cleared.
pub(super) fn reset_renamed(
    ebpf: &mut Ebpf,
    limits: &CompiledLimits,
    stateful: bool,
) -> Result<()> {
    let changed = super::tables::renamed_ids(ebpf, names::LIMIT_NAMES, MAX_LIMITS, |id| {
        limits.infos.get(id as usize).map(|l| l.name.as_str())
    })?;
    if changed.is_empty() {
        return Ok(());
    }
    let n = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
    let zero = || PerCpuValues::try_from(vec![0u64; n]).map_err(DatapathError::Cpus);
    {
        let name = names::LIMIT_STATS;
        let map = ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { map: name })?;
        let mut stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err(name))?;
        for &id in &changed {
            for stat in 0..LIMIT_STATS {
                stats
                    .set(limit_stat_index(id, stat), zero()?, 0)
                    .map_err(map_err(name))?;
            }
        }
    }
    if !stateful {
        return Ok(());
    }
    let mut shared: Array<_, Buckets> = array(ebpf, names::LIMIT_SHARED)?;
    for &id in &changed {
        shared
            .set(id, Buckets::default(), 0)
            .map_err(map_err(names::LIMIT_SHARED))?;
    }
    let mut slots: Array<_, Slot> = array(ebpf, names::LIMIT_SLOTS)?;
    for &id in &changed {
        for s in id * SLOTS_PER_LIMIT..(id + 1) * SLOTS_PER_LIMIT {
            slots
                .set(s, Slot::default(), 0)
                .map_err(map_err(names::LIMIT_SLOTS))?;
        }
    }
    Ok(())
}

/// Kernel memory of the limiter's state at its fixed capacity: the slots of
/// every limit id, the shared buckets and the counters (per CPU).
pub fn state_bytes(cpus: u64) -> u64 {
    let slots = u64::from(MAX_LIMITS * SLOTS_PER_LIMIT) * size_of::<Slot>() as u64;
    let shared = u64::from(MAX_LIMITS) * size_of::<Buckets>() as u64;
    let stats = u64::from(MAX_LIMITS * LIMIT_STATS) * 8 * cpus;
    slots + shared + stats
}

/// One limit's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitCounters {
    pub passed: u64,
    pub dropped: u64,
    pub audited: u64,
    pub overflow: u64,
    pub blocks: u64,
    pub block_failed: u64,
    pub block_events_lost: u64,
}

/// Reads the limit counters and measures the slot tables, from the pins.
pub struct LimitReader {
    stats: PerCpuArray<MapData, u64>,
    slots: Array<MapData, Slot>,
}

impl LimitReader {
    pub fn open(pin_dir: &Path) -> Result<LimitReader> {
        Ok(LimitReader {
            stats: pinned(pin_dir, names::LIMIT_STATS)?,
            slots: pinned(pin_dir, names::LIMIT_SLOTS)?,
        })
    }

    /// Counters of limit ids `0..count`.
    pub fn counters(&self, count: usize) -> Result<Vec<LimitCounters>> {
        let read = |id: u32, stat: u32| -> Result<u64> {
            let v = self
                .stats
                .get(&limit_stat_index(id, stat), 0)
                .map_err(map_err(names::LIMIT_STATS))?;
            Ok(v.iter().fold(0u64, |a, b| a.saturating_add(*b)))
        };
        (0..count.min(MAX_LIMITS as usize) as u32)
            .map(|id| {
                Ok(LimitCounters {
                    passed: read(id, LSTAT_PASSED)?,
                    dropped: read(id, LSTAT_DROPPED)?,
                    audited: read(id, LSTAT_AUDITED)?,
                    overflow: read(id, LSTAT_OVERFLOW)?,
                    blocks: read(id, LSTAT_BLOCKS)?,
                    block_failed: read(id, LSTAT_BLOCK_FAILED)?,
                    block_events_lost: read(id, LSTAT_BLOCK_EVENT_LOST)?,
                })
            })
            .collect()
    }

    /// Slots of limit `id` holding a key seen in the last `window_ns` of
    /// the coarse clock: the keys the limit tracks. One map read per slot.
    pub fn tracked_keys(&self, id: u32, now_ns: u64, window_ns: u64) -> Result<u64> {
        let mut n = 0;
        for s in id * SLOTS_PER_LIMIT..(id + 1) * SLOTS_PER_LIMIT {
            let slot = self.slots.get(&s, 0).map_err(map_err(names::LIMIT_SLOTS))?;
            let last = slot.buckets.packets.last_ns.max(slot.buckets.bits.last_ns);
            if last != 0 && now_ns.saturating_sub(last) <= window_ns {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_memory_is_the_slots_and_buckets_of_sixteen_limits() {
        // 16 limits x 16,384 slots x 48 bytes = 12 MiB, plus 512 bytes of
        // shared buckets and 1 KiB of counters per CPU.
        assert_eq!(state_bytes(2), 12 * 1024 * 1024 + 512 + 2 * 1024);
    }
}
