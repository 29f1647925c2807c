//! Reading the kernel's per-CPU counters, summed over CPUs.
//!
//! A `StatsReader` opens the pinned counter maps on its own, so a scrape never
//! waits for a policy reload that holds the datapath.

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap};
use tierguard_common::{
    counters::sum,
    maps::{Counter, Direction, names, stats_index},
    reason::{Reason, Verdict},
    segment::{FLOW_STAT_CREATED, FLOW_STAT_INSERT_FAILED, FLOW_STAT_REPLIES},
};

use super::{Datapath, DatapathError, Result};

/// Which counter a value belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatsKey {
    pub iface: String,
    pub direction: Direction,
    /// The reason's verdict, or `Audit` for a drop reason in audit mode.
    pub verdict: Verdict,
    pub reason: Reason,
}

/// The verdicts a reason can be counted under: its own, and `audit` for a
/// drop reason (global audit mode passes what it would drop).
pub fn verdicts_of(reason: Reason) -> &'static [Verdict] {
    match reason.verdict() {
        Verdict::Drop => &[Verdict::Drop, Verdict::Audit],
        Verdict::Pass => &[Verdict::Pass],
        Verdict::Audit => &[Verdict::Audit],
    }
}

/// Flow-table counters kept by the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub created: u64,
    pub insert_failed: u64,
    pub replies: u64,
}

/// A snapshot of the datapath's counters.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub packets: Vec<(StatsKey, Counter)>,
    /// Indexed by list id.
    pub lists: Vec<Counter>,
    /// Indexed by rule id.
    pub rules: Vec<Counter>,
    /// Segmentation denials by (source zone, destination zone).
    pub zone_drops: Vec<(u16, u16, Counter)>,
    pub flows: FlowCounters,
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
    rules: PerCpuArray<MapData, Counter>,
    zone_drops: PerCpuHashMap<MapData, u32, Counter>,
    flows: PerCpuArray<MapData, u64>,
    /// (interface, counter slot)
    ifaces: Vec<(String, u32)>,
}

fn open_map(pin_dir: &Path, name: &'static str) -> Result<Map> {
    let err = |source| DatapathError::Map { map: name, source };
    let data = MapData::from_pin(pin_dir.join(name)).map_err(err)?;
    Map::from_map_data(data).map_err(err)
}

fn open<V: aya::Pod>(pin_dir: &Path, name: &'static str) -> Result<PerCpuArray<MapData, V>> {
    PerCpuArray::try_from(open_map(pin_dir, name)?)
        .map_err(|source| DatapathError::Map { map: name, source })
}

impl Datapath {
    /// A counter reader for the interfaces attached so far.
    pub fn stats_reader(&self) -> Result<StatsReader> {
        Ok(StatsReader {
            stats: open(self.pin_dir(), names::STATS)?,
            lists: open(self.pin_dir(), names::LIST_HITS)?,
            rules: open(self.pin_dir(), names::RULE_HITS)?,
            zone_drops: PerCpuHashMap::try_from(open_map(self.pin_dir(), names::ZONE_DROPS)?)
                .map_err(|source| DatapathError::Map {
                    map: names::ZONE_DROPS,
                    source,
                })?,
            flows: open(self.pin_dir(), names::FLOW_STATS)?,
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
        self.counter_as(slot, dir, reason.verdict(), reason)
    }

    /// As `counter`, for a given verdict (`Audit` for audit-mode drops).
    pub fn counter_as(
        &self,
        slot: u32,
        dir: Direction,
        verdict: Verdict,
        reason: Reason,
    ) -> Result<Counter> {
        let v = self
            .stats
            .get(&stats_index(slot, dir, verdict as u8, reason as u8), 0)
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

    /// Packets and bytes one rule decided, summed over CPUs.
    pub fn rule_counter(&self, rule_id: u16) -> Result<Counter> {
        let v = self
            .rules
            .get(&u32::from(rule_id), 0)
            .map_err(|source| DatapathError::Map {
                map: names::RULE_HITS,
                source,
            })?;
        Ok(sum(v.iter()))
    }

    /// Reads every counter of the attached interfaces, of `list_count`
    /// lists and `rule_count` rules, the zone-pair drops and the flow counters.
    pub fn read(&self, list_count: usize, rule_count: usize) -> Result<Stats> {
        let mut out = Stats::default();
        let err = |map| move |source| DatapathError::Map { map, source };
        for (iface, slot) in &self.ifaces {
            for dir in [Direction::Ingress, Direction::Egress] {
                for reason in Reason::ALL {
                    for &verdict in verdicts_of(reason) {
                        let idx = stats_index(*slot, dir, verdict as u8, reason as u8);
                        let v = self.stats.get(&idx, 0).map_err(err(names::STATS))?;
                        out.packets.push((
                            StatsKey {
                                iface: iface.clone(),
                                direction: dir,
                                verdict,
                                reason,
                            },
                            sum(v.iter()),
                        ));
                    }
                }
            }
        }
        for id in 0..list_count as u32 {
            let v = self.lists.get(&id, 0).map_err(err(names::LIST_HITS))?;
            out.lists.push(sum(v.iter()));
        }
        for id in 0..rule_count as u32 {
            let v = self.rules.get(&id, 0).map_err(err(names::RULE_HITS))?;
            out.rules.push(sum(v.iter()));
        }
        for entry in self.zone_drops.iter() {
            let (key, v) = entry.map_err(err(names::ZONE_DROPS))?;
            out.zone_drops
                .push(((key >> 16) as u16, key as u16, sum(v.iter())));
        }
        out.zone_drops.sort_by_key(|(s, d, _)| (*s, *d));
        let flow = |i: u32| -> Result<u64> {
            let v = self.flows.get(&i, 0).map_err(err(names::FLOW_STATS))?;
            Ok(v.iter().fold(0u64, |a, b| a.saturating_add(*b)))
        };
        out.flows = FlowCounters {
            created: flow(FLOW_STAT_CREATED)?,
            insert_failed: flow(FLOW_STAT_INSERT_FAILED)?,
            replies: flow(FLOW_STAT_REPLIES)?,
        };
        Ok(out)
    }
}
