//! The flow table seen from user space: the kernel enforces expiry on every
//! lookup; the agent frees expired entries (so idle flows do not crowd out
//! new ones) and measures the table for metrics. Evictions are derived:
//! every entry the kernel created is either still there, expired and freed
//! by this sweeper, or evicted by the LRU.
//!
//! When a load recreates the table at another capacity, [`FlowCarry`] copies
//! the live flows over, so established connections outlive the change.

use std::path::Path;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
};
use tierguard_common::{
    maps::names,
    segment::{FLOW_STAT_CREATED, FlowKey, FlowValue, SegMeta, flow_alive},
};

use super::compat::{Layout, pinned_layout};
use super::map_access::{self, map_err, pinned};
use super::{Result, clock::coarse_now_ns};

/// The flow table an earlier load pinned, held open while this load
/// recreates it at another capacity: its flows are copied into the new
/// table once at load and again at install (flows the earlier programs
/// opened meanwhile). See docs/design/flows.md, "Capacity changes".
pub struct FlowCarry {
    old: HashMap<MapData, FlowKey, FlowValue>,
    /// The new table's capacity.
    capacity: u32,
}

/// What one copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Flows copied into the new table.
    pub copied: u64,
    /// Flows left behind: the new table is smaller than what the old held
    /// (the least recently seen are left), or the kernel refused them.
    pub left: u64,
}

impl FlowCarry {
    /// The pinned flow table, if it is about to be recreated (`wanted`
    /// differs) with only its capacity changed. Any other difference is a
    /// new layout whose flows cannot be read as this version's: those start
    /// empty, as every recreated map's state does. A change to what
    /// `FlowKey` or `FlowValue` mean must therefore also change their size or
    /// the map's flags.
    pub fn open(pin_dir: &Path, wanted: &[(String, Layout)]) -> Option<FlowCarry> {
        let now = wanted.iter().find(|(n, _)| n == names::FLOWS)?.1;
        let was = pinned_layout(&pin_dir.join(names::FLOWS))?;
        let capacity_only = was.max_entries != now.max_entries
            && Layout {
                max_entries: now.max_entries,
                ..was
            } == now;
        if !capacity_only {
            return None;
        }
        let old = pinned(pin_dir, names::FLOWS).ok()?;
        Some(FlowCarry {
            old,
            capacity: now.max_entries,
        })
    }

    /// Copies the old table's most recently seen flows into this load's
    /// table, at most as many as it holds; a flow already there is left as
    /// it is. They go in oldest first: should the LRU evict while they go in
    /// (it may before the table is full, as free entries sit in per-CPU
    /// lists), it evicts what went in first, the oldest.
    pub fn copy_into(&self, ebpf: &mut Ebpf) -> Result<Carried> {
        let mut new = map_access::hash::<FlowKey, FlowValue>(ebpf, names::FLOWS)?;
        // An entry evicted while we iterate ends the walk early at worst.
        let mut flows: Vec<(FlowKey, FlowValue)> = self.old.iter().map_while(|e| e.ok()).collect();
        flows.sort_by_key(|(_, v)| v.last_seen_ns);
        let mut out = Carried::default();
        let kept = flows.len().saturating_sub(self.capacity as usize);
        out.left += kept as u64;
        for (k, v) in &flows[kept..] {
            match new.insert(k, v, BPF_NOEXIST) {
                Ok(()) => out.copied += 1,
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(_) => out.left += 1,
            }
        }
        Ok(out)
    }
}

const BPF_NOEXIST: u64 = 1;

/// What one sweep found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowSweep {
    /// Live entries left in the table.
    pub entries: u64,
    /// Expired entries this sweep freed.
    pub expired: u64,
    /// Flows the kernel had created since the maps were pinned, read
    /// before the walk.
    pub created: u64,
    /// The same counter read after the walk. Flows created during the walk
    /// may or may not be among `entries`; the accounting uses whichever read
    /// cannot report an eviction that did not happen.
    pub created_after: u64,
}

pub struct FlowSweeper {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    meta: Array<MapData, SegMeta>,
    active: Array<MapData, u32>,
    stats: PerCpuArray<MapData, u64>,
    capacity: u32,
}

impl FlowSweeper {
    pub fn open(pin_dir: &Path) -> Result<FlowSweeper> {
        Ok(FlowSweeper {
            flows: pinned(pin_dir, names::FLOWS)?,
            meta: pinned(pin_dir, names::SEG_META)?,
            active: pinned(pin_dir, names::ACTIVE_SLOT)?,
            stats: pinned(pin_dir, names::FLOW_STATS)?,
            capacity: aya::maps::MapInfo::from_pin(pin_dir.join(names::FLOWS))
                .map_err(map_err(names::FLOWS))?
                .max_entries(),
        })
    }

    /// Flows the table holds: its capacity as created (`[agent] flow_capacity`).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Frees the flows the live generation's timeouts have expired.
    pub fn sweep(&mut self) -> Result<FlowSweep> {
        let slot = self
            .active
            .get(&0, 0)
            .map_err(map_err(names::ACTIVE_SLOT))?
            & 1;
        let meta = self.meta.get(&slot, 0).map_err(map_err(names::SEG_META))?;
        let now = coarse_now_ns();
        let mut out = FlowSweep {
            created: self.created()?,
            ..FlowSweep::default()
        };
        let mut stale = Vec::new();
        for entry in self.flows.iter() {
            // An entry evicted while we iterate ends the walk early at worst.
            let Ok((k, v)) = entry else { break };
            if flow_alive(&meta, &k, &v, now) {
                out.entries += 1;
            } else {
                stale.push(k);
            }
        }
        for k in &stale {
            // Re-check: a retransmitted SYN may have revived it meanwhile.
            if let Ok(v) = self.flows.get(k, 0)
                && flow_alive(&meta, k, &v, coarse_now_ns())
            {
                out.entries += 1;
                continue;
            }
            if self.flows.remove(k).is_ok() {
                out.expired += 1;
            }
        }
        out.created_after = self.created()?;
        Ok(out)
    }

    /// Flows the kernel has created, summed over CPUs.
    fn created(&self) -> Result<u64> {
        Ok(self
            .stats
            .get(&FLOW_STAT_CREATED, 0)
            .map_err(map_err(names::FLOW_STATS))?
            .iter()
            .fold(0u64, |a, b| a.saturating_add(*b)))
    }
}

/// Running totals across sweeps, turned into metric increments.
#[derive(Debug, Default)]
pub struct FlowAccounting {
    start: Option<FlowSweep>,
    expired: u64,
    evicted: u64,
}

impl FlowAccounting {
    /// Takes one sweep's result; returns (newly expired, newly evicted).
    /// Evictions since the agent started = flows created since then, minus
    /// those it freed, minus the growth of the table. Flows the kernel
    /// creates while a walk runs may be counted live or not, so the first
    /// sweep takes the counter read after its walk and later sweeps the one
    /// read before theirs: a racing flow can hide an eviction for one sweep,
    /// never invent one (the counter cannot go back).
    pub fn record(&mut self, s: FlowSweep) -> (u64, u64) {
        let start = *self.start.get_or_insert(FlowSweep {
            entries: s.entries + s.expired,
            expired: 0,
            created: s.created_after.max(s.created),
            created_after: 0,
        });
        self.expired += s.expired;
        let evicted = (s.created - start.created.min(s.created) + start.entries)
            .saturating_sub(self.expired + s.entries);
        let new_evicted = evicted.saturating_sub(self.evicted);
        self.evicted = self.evicted.max(evicted);
        (s.expired, new_evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_what_is_neither_live_nor_expired() {
        let mut a = FlowAccounting::default();
        // At start: 10 flows live, 100 created by earlier agents.
        let s = |entries, expired, created| FlowSweep {
            entries,
            expired,
            created,
            created_after: created,
        };
        assert_eq!(a.record(s(10, 0, 100)), (0, 0));
        // 20 more created, 5 expired and freed, 20 live: 5 were evicted.
        assert_eq!(a.record(s(20, 5, 120)), (5, 5));
        // Nothing new: no new evictions, counters never go back.
        assert_eq!(a.record(s(20, 0, 120)), (0, 0));
        // A racing sweep that sees more live entries than created: no negative.
        assert_eq!(a.record(s(30, 0, 121)), (0, 0));
    }

    #[test]
    fn a_flow_created_during_the_first_walk_is_not_an_eviction() {
        let mut a = FlowAccounting::default();
        // The first walk saw the new flow live, the counter read before it
        // did not count it yet.
        let first = FlowSweep {
            entries: 1,
            expired: 0,
            created: 0,
            created_after: 1,
        };
        assert_eq!(a.record(first), (0, 0));
        // It expires and is freed: nothing was evicted.
        let later = FlowSweep {
            entries: 0,
            expired: 1,
            created: 1,
            created_after: 1,
        };
        assert_eq!(a.record(later), (1, 0));
    }
}
