//! Reading the kernel's per-CPU counters, summed over CPUs.
//!
//! A `StatsReader` opens the pinned counter maps on its own, so a scrape never
//! waits for a policy reload that holds the datapath.

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use tierguard_common::{
    counters::sum,
    maps::{Counter, Direction, names, stats_index},
    reason::Reason,
};

use super::{Datapath, DatapathError, Result};

/// Which counter a value belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatsKey {
    pub iface: String,
    pub direction: Direction,
    pub reason: Reason,
}

/// A snapshot of the datapath's counters.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub packets: Vec<(StatsKey, Counter)>,
    /// Indexed by list id.
    pub lists: Vec<Counter>,
}

impl Stats {
    /// Packets counted for a reason on an interface (all directions).
    pub fn packets(&self, iface: &str, reason: Reason) -> u64 {
        self.packets
            .iter()
            .filter(|(k, _)| k.iface == iface && k.reason == reason)
            .map(|(_, c)| c.packets)
            .sum()
    }
}

pub struct StatsReader {
    stats: PerCpuArray<MapData, Counter>,
    lists: PerCpuArray<MapData, Counter>,
    /// (interface, counter slot)
    ifaces: Vec<(String, u32)>,
}

fn open(pin_dir: &Path, name: &'static str) -> Result<PerCpuArray<MapData, Counter>> {
    let err = |source| DatapathError::Map { map: name, source };
    let data = MapData::from_pin(pin_dir.join(name)).map_err(err)?;
    let map = Map::from_map_data(data).map_err(err)?;
    PerCpuArray::try_from(map).map_err(err)
}

impl Datapath {
    /// A counter reader for the interfaces attached so far.
    pub fn stats_reader(&self) -> Result<StatsReader> {
        Ok(StatsReader {
            stats: open(self.pin_dir(), names::STATS)?,
            lists: open(self.pin_dir(), names::LIST_HITS)?,
            ifaces: self
                .attachments()
                .iter()
                .map(|a| (a.iface.clone(), a.slot))
                .collect(),
        })
    }
}

impl StatsReader {
    /// One counter, summed over CPUs. Slot 0 collects interfaces the agent
    /// did not attach to (and BPF_PROG_TEST_RUN runs).
    pub fn counter(&self, slot: u32, dir: Direction, reason: Reason) -> Result<Counter> {
        let v = self
            .stats
            .get(&stats_index(slot, dir, reason.verdict() as u8, reason as u8), 0)
            .map_err(|source| DatapathError::Map {
                map: names::STATS,
                source,
            })?;
        Ok(sum(v.iter()))
    }

    /// Hits of one list, summed over CPUs.
    pub fn list_counter(&self, list_id: u16) -> Result<Counter> {
        let v = self
            .lists
            .get(&u32::from(list_id), 0)
            .map_err(|source| DatapathError::Map {
                map: names::LIST_HITS,
                source,
            })?;
        Ok(sum(v.iter()))
    }

    /// Reads every counter of the attached interfaces and of `list_count` lists.
    pub fn read(&self, list_count: usize) -> Result<Stats> {
        let mut out = Stats::default();
        let err = |map| move |source| DatapathError::Map { map, source };
        for (iface, slot) in &self.ifaces {
            for dir in [Direction::Ingress] {
                for reason in Reason::ALL {
                    let idx = stats_index(*slot, dir, reason.verdict() as u8, reason as u8);
                    let v = self.stats.get(&idx, 0).map_err(err(names::STATS))?;
                    out.packets.push((
                        StatsKey {
                            iface: iface.clone(),
                            direction: dir,
                            reason,
                        },
                        sum(v.iter()),
                    ));
                }
            }
        }
        for id in 0..list_count as u32 {
            let v = self.lists.get(&id, 0).map_err(err(names::LIST_HITS))?;
            out.lists.push(sum(v.iter()));
        }
        Ok(out)
    }
}
