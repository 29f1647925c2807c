//! The policy transaction: write the new generation into the inactive slot,
//! switch the active slot with one map write, then delete the old generation.
//! See docs/design/policy-transaction.md.

use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuArray, PerCpuValues},
};
use tierguard_common::maps::{
    Counter, DirectBlock, DirectCode, LIST_NAME_LEN, ListEntry, MAX_LISTS, PolicyMeta, PrefixKeyV4,
    PrefixKeyV6, V4_CODES_PER_SLOT, V4_DIRECT_BLOCKS, V6_BUCKETS, V6_TABLE_MAX_STRIDE, V6Bucket,
    names,
};
use tierguard_common::prefix::v6_bits;
use tierguard_common::segment::MAX_RULES;

use super::limit_tables;
use super::map_access::{array, hash, map_err};
use super::segment_tables::{self, WrittenSegmentation};
use super::{Datapath, DatapathError, Result};
use crate::policy::CompiledPolicy;

/// Keys of one generation, kept to delete it once it is no longer live.
pub(super) struct Written {
    /// Direct-table blocks written (absolute indexes, slot included).
    blocks: Vec<u32>,
    /// IPv6 bucket-table buckets written (absolute indexes, slot included).
    v6_buckets: Vec<u32>,
    v4: Vec<PrefixKeyV4>,
    v6: Vec<PrefixKeyV6>,
    segmentation: WrittenSegmentation,
}

/// Programs that read the old slot finish within microseconds (they run under
/// RCU); this grace is generous.
const GRACE: Duration = Duration::from_millis(20);

fn active_slot(ebpf: &mut Ebpf) -> Result<u8> {
    let a: Array<_, u32> = array(ebpf, names::ACTIVE_SLOT)?;
    Ok((a.get(&0, 0).map_err(map_err(names::ACTIVE_SLOT))? & 1) as u8)
}

pub(super) fn live_generation(ebpf: &Ebpf) -> Result<u64> {
    let name = names::ACTIVE_SLOT;
    let a: Array<_, u32> = Array::try_from(
        ebpf.map(name)
            .ok_or(DatapathError::MissingMap { map: name })?,
    )
    .map_err(map_err(name))?;
    let slot = a.get(&0, 0).map_err(map_err(name))? & 1;
    let name = names::POLICY_META;
    let m: Array<_, PolicyMeta> = Array::try_from(
        ebpf.map(name)
            .ok_or(DatapathError::MissingMap { map: name })?,
    )
    .map_err(map_err(name))?;
    Ok(m.get(&slot, 0).map_err(map_err(name))?.generation)
}

/// Deletes the generation in `slot` that an earlier agent's programs read
/// until a moment ago (`install` after a handover).
pub(super) fn delete_replaced_generation(ebpf: &mut Ebpf, slot: u8) -> Result<()> {
    std::thread::sleep(GRACE);
    sweep_slot(ebpf, slot)
}

/// Deletes every entry of the inactive slot (left by a crash mid-transaction).
pub(super) fn clear_inactive(ebpf: &mut Ebpf) -> Result<()> {
    let inactive = 1 - active_slot(ebpf)?;
    sweep_slot(ebpf, inactive)
}

/// Deletes every table entry of `slot`, found by scanning (used when the
/// entries were written by an earlier agent).
fn sweep_slot(ebpf: &mut Ebpf, slot: u8) -> Result<()> {
    sweep::<PrefixKeyV4>(ebpf, names::LIST_V4, slot, |k| k.slot)?;
    sweep::<PrefixKeyV6>(ebpf, names::LIST_V6, slot, |k| k.slot)?;
    let mut direct: Array<_, DirectBlock> = array(ebpf, names::V4_DIRECT)?;
    let base = u32::from(slot) * V4_DIRECT_BLOCKS;
    for i in base..base + V4_DIRECT_BLOCKS {
        if direct.get(&i, 0).is_ok_and(|b| b != DirectBlock::EMPTY) {
            direct
                .set(i, DirectBlock::EMPTY, 0)
                .map_err(map_err(names::V4_DIRECT))?;
        }
    }
    let mut table: Array<_, V6Bucket> = array(ebpf, names::V6_TABLE)?;
    let base = u32::from(slot) * V6_BUCKETS;
    for i in base..base + V6_BUCKETS {
        if table.get(&i, 0).is_ok_and(|b| b != V6Bucket::EMPTY) {
            table
                .set(i, V6Bucket::EMPTY, 0)
                .map_err(map_err(names::V6_TABLE))?;
        }
    }
    segment_tables::sweep(ebpf, slot)
}

fn sweep<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    slot: u8,
    slot_of: fn(&K) -> u8,
) -> Result<()> {
    let mut m: HashMap<_, K, ListEntry> = hash(ebpf, name)?;
    let stale: Vec<K> = m
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| slot_of(k) == slot)
        .collect();
    for k in &stale {
        let _ = m.remove(k);
    }
    Ok(())
}

impl Datapath {
    /// Applies `policy` as one transaction and returns its generation number:
    /// writes it into the inactive slot, switches to it and deletes the old
    /// one. On error the live policy is untouched and nothing of the new one
    /// remains.
    pub fn apply(&mut self, policy: &CompiledPolicy) -> Result<u64> {
        if self.handover.is_some() && self.live.is_some() {
            // This agent's generation is in the other slot already; a second
            // one would go into the slot the earlier programs still read.
            return Err(DatapathError::HandoverPending);
        }
        let ebpf = &mut self.ebpf;
        let generation = live_generation(ebpf)? + 1;
        let old = active_slot(ebpf)?;
        let new = 1 - old;

        let mut written = Written {
            blocks: Vec::with_capacity(policy.v4_blocks.len()),
            v6_buckets: Vec::with_capacity(policy.v6_buckets.len()),
            v4: Vec::with_capacity(policy.v4_long.len()),
            v6: Vec::with_capacity(policy.v6_long),
            segmentation: WrittenSegmentation::default(),
        };
        if let Err(e) = write_generation(ebpf, policy, new, &mut written) {
            delete(ebpf, &written);
            return Err(e);
        }
        let meta = PolicyMeta {
            v6_bucket_bits: v6_bits(policy.v6_bucket_bits),
            v6_strides: policy.v6_strides,
            generation,
        };
        let commit = (|| {
            array::<PolicyMeta>(ebpf, names::POLICY_META)?
                .set(u32::from(new), meta, 0)
                .map_err(map_err(names::POLICY_META))?;
            // The commit: one write switches every CPU to the new generation.
            array::<u32>(ebpf, names::ACTIVE_SLOT)?
                .set(0, u32::from(new), 0)
                .map_err(map_err(names::ACTIVE_SLOT))
        })();
        if let Err(e) = commit {
            delete(ebpf, &written);
            return Err(e);
        }

        std::thread::sleep(GRACE);
        // State may be in the maps unless this agent created them and this
        // is its first policy.
        let stateful = self.adopted || self.live.is_some();
        match self.live.take() {
            Some(previous) => delete(&mut self.ebpf, &previous),
            // Maps this load created: the old slot was never written.
            None if !self.adopted => {}
            // The earlier programs still read it: deleted at `install`.
            None if self.handover.is_some() => {}
            // Written by an earlier agent (or nothing): find it by slot. The
            // scan reads every array entry of the slot (786,432 map lookups),
            // so it is done only here and in `clear_inactive`.
            None => sweep_slot(&mut self.ebpf, old)?,
        }
        self.live = Some(written);
        reset_renamed_list_counters(&mut self.ebpf, policy)?;
        let scan = if self.rule_ids_in_use == 0 {
            // Unknown after a restart: ids an earlier agent used may be anywhere.
            MAX_RULES as usize
        } else {
            self.rule_ids_in_use.max(policy.segmentation.rules.len())
        };
        reset_renamed_rule_counters(&mut self.ebpf, policy, scan)?;
        self.rule_ids_in_use = policy.segmentation.rules.len().max(1);
        limit_tables::reset_renamed(&mut self.ebpf, &policy.limits, stateful)?;
        Ok(generation)
    }
}

/// Keeps `TG_LIST_HITS[id]` about one list: where the name at an id changed
/// (lists added, removed or reordered, now or since an earlier agent), the
/// counter starts again from zero, which Prometheus reads as a reset.
fn reset_renamed_list_counters(ebpf: &mut Ebpf, policy: &CompiledPolicy) -> Result<()> {
    let mut changed = Vec::new();
    {
        let mut names_map: Array<_, [u8; LIST_NAME_LEN]> = array(ebpf, names::LIST_NAMES)?;
        for id in 0..MAX_LISTS {
            let mut want = [0u8; LIST_NAME_LEN];
            if let Some(l) = policy.lists.get(id as usize) {
                let b = l.name.as_bytes();
                want[..b.len().min(LIST_NAME_LEN)]
                    .copy_from_slice(&b[..b.len().min(LIST_NAME_LEN)]);
            }
            let have = names_map.get(&id, 0).map_err(map_err(names::LIST_NAMES))?;
            if have != want {
                names_map
                    .set(id, want, 0)
                    .map_err(map_err(names::LIST_NAMES))?;
                changed.push(id);
            }
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let name = names::LIST_HITS;
    let map = ebpf
        .map_mut(name)
        .ok_or(DatapathError::MissingMap { map: name })?;
    let mut hits: PerCpuArray<_, Counter> = PerCpuArray::try_from(map).map_err(map_err(name))?;
    for id in changed {
        hits.set(id, zero_per_cpu()?, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// As `reset_renamed_list_counters`, for rules, comparing name hashes over
/// the first `scan` ids (every id a policy may have used).
fn reset_renamed_rule_counters(
    ebpf: &mut Ebpf,
    policy: &CompiledPolicy,
    scan: usize,
) -> Result<()> {
    let rules = &policy.segmentation.rules;
    let changed = renamed_ids(
        ebpf,
        names::RULE_NAMES,
        scan.min(MAX_RULES as usize) as u32,
        |id| rules.get(id as usize).map(|r| r.name.as_str()),
    )?;
    let name = names::RULE_HITS;
    let map = ebpf
        .map_mut(name)
        .ok_or(DatapathError::MissingMap { map: name })?;
    let mut hits: PerCpuArray<_, Counter> = PerCpuArray::try_from(map).map_err(map_err(name))?;
    for id in changed {
        hits.set(id, zero_per_cpu()?, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// FNV-1a of a name, as kept beside per-id counters (0: no name).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The ids among `0..count` whose name (by `name_of`) differs from the hash
/// kept in the array `map`, which is updated to the new names. Counters of
/// these ids count for something else now and must restart from zero.
pub(super) fn renamed_ids<'a>(
    ebpf: &mut Ebpf,
    map: &'static str,
    count: u32,
    name_of: impl Fn(u32) -> Option<&'a str>,
) -> Result<Vec<u32>> {
    let mut hashes: Array<_, u64> = array(ebpf, map)?;
    let mut changed = Vec::new();
    for id in 0..count {
        let want = name_of(id).map_or(0, name_hash);
        if hashes.get(&id, 0).map_err(map_err(map))? != want {
            hashes.set(id, want, 0).map_err(map_err(map))?;
            changed.push(id);
        }
    }
    Ok(changed)
}

/// A zero counter for every possible CPU.
pub(super) fn zero_per_cpu() -> Result<PerCpuValues<Counter>> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
    PerCpuValues::try_from(vec![Counter::default(); n]).map_err(DatapathError::Cpus)
}

fn write_generation(
    ebpf: &mut Ebpf,
    policy: &CompiledPolicy,
    slot: u8,
    written: &mut Written,
) -> Result<()> {
    let mut codes: Array<_, DirectCode> = array(ebpf, names::V4_CODES)?;
    for (i, code) in policy.v4_codes.iter().enumerate() {
        codes
            .set(u32::from(slot) * V4_CODES_PER_SLOT + i as u32, *code, 0)
            .map_err(map_err(names::V4_CODES))?;
    }
    let mut direct: Array<_, DirectBlock> = array(ebpf, names::V4_DIRECT)?;
    for (&block, b) in &policy.v4_blocks {
        let i = u32::from(slot) * V4_DIRECT_BLOCKS + block;
        direct.set(i, *b, 0).map_err(map_err(names::V4_DIRECT))?;
        written.blocks.push(i);
    }
    let mut v4: HashMap<_, PrefixKeyV4, ListEntry> = hash(ebpf, names::LIST_V4)?;
    for (&addr, entry) in &policy.v4_long {
        let key = PrefixKeyV4 {
            slot,
            len: 32,
            _pad: [0; 2],
            addr,
        };
        v4.insert(key, *entry, 0).map_err(map_err(names::LIST_V4))?;
        written.v4.push(key);
    }
    // Only the generation's buckets are written, and each is recorded:
    // `delete` clears exactly these once the generation is no longer live,
    // so a slot holds no bucket of an earlier generation when it is written
    // again, whatever size that one had.
    let mut table: Array<_, V6Bucket> = array(ebpf, names::V6_TABLE)?;
    for (&bucket, b) in &policy.v6_buckets {
        let i = u32::from(slot) * V6_BUCKETS + bucket;
        table.set(i, *b, 0).map_err(map_err(names::V6_TABLE))?;
        written.v6_buckets.push(i);
    }
    let mut v6: HashMap<_, PrefixKeyV6, ListEntry> = hash(ebpf, names::LIST_V6)?;
    // Strides up to /64 are in the bucket table.
    for (&(len, addr), entry) in policy.v6.iter().filter(|(k, _)| k.0 > V6_TABLE_MAX_STRIDE) {
        let key = PrefixKeyV6 {
            slot,
            len,
            _pad: [0; 2],
            addr,
        };
        v6.insert(key, *entry, 0).map_err(map_err(names::LIST_V6))?;
        written.v6.push(key);
    }
    segment_tables::write(ebpf, &policy.segmentation, slot, &mut written.segmentation)?;
    limit_tables::write(ebpf, &policy.limits, slot, 1 - slot)
}

fn delete(ebpf: &mut Ebpf, w: &Written) {
    if let Ok(mut a) = array::<DirectBlock>(ebpf, names::V4_DIRECT) {
        for i in &w.blocks {
            let _ = a.set(*i, DirectBlock::EMPTY, 0);
        }
    }
    if let Ok(mut a) = array::<V6Bucket>(ebpf, names::V6_TABLE) {
        for i in &w.v6_buckets {
            let _ = a.set(*i, V6Bucket::EMPTY, 0);
        }
    }
    if let Ok(mut m) = hash::<PrefixKeyV4, ListEntry>(ebpf, names::LIST_V4) {
        for k in &w.v4 {
            let _ = m.remove(k);
        }
    }
    if let Ok(mut m) = hash::<PrefixKeyV6, ListEntry>(ebpf, names::LIST_V6) {
        for k in &w.v6 {
            let _ = m.remove(k);
        }
    }
    segment_tables::delete(ebpf, &w.segmentation);
}

#[cfg(test)]
mod tests {
    use super::name_hash;

    #[test]
    fn name_hashes_differ_by_name_and_none_is_zero() {
        assert_ne!(name_hash("a"), name_hash("b"));
        assert_ne!(name_hash(""), 0, "0 is kept for \"no name\"");
    }
}
