//! Writing and deleting the segmentation part of a policy generation: zone
//! and failsafe tries, the zone-pair matrix and records, port sets, tables
//! and blocks, failsafe ports,
//! settings. Called inside the transaction in `tables.rs`.

use aya::{
    Ebpf,
    maps::{
        Array,
        lpm_trie::{Key, LpmTrie},
    },
};
use ipnetwork::{Ipv4Network, Ipv6Network};
use tierguard_common::{
    maps::names,
    segment::{
        FAILSAFE_CLASSES, PAIR_LINES_PER_SLOT, PAIR_RECORDS_PER_SLOT, PORT_BLOCKS_PER_SLOT,
        PORT_SET_LINES_PER_SLOT, PORT_TABLES_PER_SLOT, PairClasses, PairLine, PortSet, PortTable,
        SegMeta, SlotAddrV4, SlotAddrV6, ZONE_V4_BLOCKS_PER_SLOT, ZONE_V4_L1_SIZE, ZoneBlock,
        pair_position, trie_prefix_len,
    },
};

use super::Result;
use super::map_access::{array, map_err, trie};
use crate::policy::CompiledSegmentation;

/// Keys of one generation's segmentation entries, to delete it later.
#[derive(Default)]
pub(super) struct WrittenSegmentation {
    zones_v4: Vec<Key<SlotAddrV4>>,
    zones_v6: Vec<Key<SlotAddrV6>>,
    failsafe_v4: Vec<Key<SlotAddrV4>>,
    failsafe_v6: Vec<Key<SlotAddrV6>>,
    /// Absolute indexes (slot included).
    pair_lines: Vec<u32>,
    pair_records: Vec<u32>,
    port_sets: Vec<u32>,
    port_tables: Vec<u32>,
    port_blocks: Vec<u32>,
    failsafe_ports: Vec<u32>,
    zone_l1: Vec<u32>,
    zone_blocks: Vec<u32>,
}

fn v4_key(slot: u8, n: &Ipv4Network) -> Key<SlotAddrV4> {
    Key::new(
        trie_prefix_len(n.prefix()),
        SlotAddrV4 {
            slot,
            addr: n.network().octets(),
            _pad: [0; 3],
        },
    )
}

fn v6_key(slot: u8, n: &Ipv6Network) -> Key<SlotAddrV6> {
    Key::new(
        trie_prefix_len(n.prefix()),
        SlotAddrV6 {
            slot,
            addr: n.network().octets(),
            _pad: [0; 3],
        },
    )
}

fn failsafe_index(slot: u8, class: u32, port: u16) -> u32 {
    ((u32::from(slot) * FAILSAFE_CLASSES + class) << 16) | u32::from(port)
}

/// Writes `seg` into `slot`, recording every key in `w` as it goes (so a
/// failure part-way can be undone).
pub(super) fn write(
    ebpf: &mut Ebpf,
    seg: &CompiledSegmentation,
    slot: u8,
    w: &mut WrittenSegmentation,
) -> Result<()> {
    {
        let mut t: LpmTrie<_, SlotAddrV4, u16> = trie(ebpf, names::ZONES_V4)?;
        for (net, zone) in &seg.zone_v4 {
            let k = v4_key(slot, net);
            t.insert(&k, zone, 0).map_err(map_err(names::ZONES_V4))?;
            w.zones_v4.push(k);
        }
    }
    {
        let mut a: Array<_, u32> = array(ebpf, names::ZONE_V4_L1)?;
        for &(i, e) in &seg.zone_v4_table.l1 {
            let i = u32::from(slot) * ZONE_V4_L1_SIZE + i;
            a.set(i, e, 0).map_err(map_err(names::ZONE_V4_L1))?;
            w.zone_l1.push(i);
        }
    }
    write_array(
        ebpf,
        names::ZONE_V4_BLOCKS,
        u32::from(slot) * ZONE_V4_BLOCKS_PER_SLOT,
        seg.zone_v4_table.blocks.iter().enumerate(),
        &mut w.zone_blocks,
    )?;
    {
        let mut t: LpmTrie<_, SlotAddrV6, u16> = trie(ebpf, names::ZONES_V6)?;
        for (net, zone) in &seg.zone_v6 {
            let k = v6_key(slot, net);
            t.insert(&k, zone, 0).map_err(map_err(names::ZONES_V6))?;
            w.zones_v6.push(k);
        }
    }
    {
        let mut t: LpmTrie<_, SlotAddrV4, u32> = trie(ebpf, names::FAILSAFE_V4)?;
        for (net, mask) in &seg.failsafe_v4 {
            let k = v4_key(slot, net);
            t.insert(&k, mask, 0).map_err(map_err(names::FAILSAFE_V4))?;
            w.failsafe_v4.push(k);
        }
    }
    {
        let mut t: LpmTrie<_, SlotAddrV6, u32> = trie(ebpf, names::FAILSAFE_V6)?;
        for (net, mask) in &seg.failsafe_v6 {
            let k = v6_key(slot, net);
            t.insert(&k, mask, 0).map_err(map_err(names::FAILSAFE_V6))?;
            w.failsafe_v6.push(k);
        }
    }
    {
        let mut a: Array<_, u32> = array(ebpf, names::FAILSAFE_PORTS)?;
        for &(class, port, mask) in &seg.failsafe_ports {
            let i = failsafe_index(slot, class, port);
            a.set(i, mask, 0).map_err(map_err(names::FAILSAFE_PORTS))?;
            w.failsafe_ports.push(i);
        }
    }
    write_array(
        ebpf,
        names::PORT_TABLES,
        u32::from(slot) * PORT_TABLES_PER_SLOT,
        seg.port_tables.iter().enumerate(),
        &mut w.port_tables,
    )?;
    write_array(
        ebpf,
        names::PORT_BLOCKS,
        u32::from(slot) * PORT_BLOCKS_PER_SLOT,
        seg.port_blocks.iter().enumerate(),
        &mut w.port_blocks,
    )?;
    write_array(
        ebpf,
        names::PORT_SETS,
        u32::from(slot) * PORT_SET_LINES_PER_SLOT,
        seg.port_sets.iter().enumerate(),
        &mut w.port_sets,
    )?;
    // Record 0 means "no rule" and is never read: left as it is.
    write_array(
        ebpf,
        names::PAIR_RECORDS,
        u32::from(slot) * PAIR_RECORDS_PER_SLOT,
        seg.pair_records.iter().enumerate().skip(1),
        &mut w.pair_records,
    )?;
    {
        // The matrix last: until a pair's line is written, its record and
        // port set are unreachable (and the slot is not live yet anyway).
        let mut lines: std::collections::BTreeMap<u32, PairLine> = Default::default();
        for &(src, dst, record) in &seg.pairs {
            if let Some((line, at)) = pair_position(slot, src, dst) {
                lines.entry(line).or_insert(PairLine::EMPTY).records[at] = record;
            }
        }
        // `pair_position` gives absolute lines (slot included).
        write_array(
            ebpf,
            names::PAIR_MATRIX,
            0,
            lines.iter().map(|(i, l)| (*i as usize, l)),
            &mut w.pair_lines,
        )?;
    }
    // The policy's settings plus this boot's flow clock (not part of the policy).
    let mut meta = seg.meta;
    if let Some(c) = super::jiffy_clock() {
        meta.ns_per_jiffy = c.ns_per_jiffy;
        meta.jiffy_offset_ns = c.offset_ns;
    }
    array::<SegMeta>(ebpf, names::SEG_META)?
        .set(u32::from(slot), meta, 0)
        .map_err(map_err(names::SEG_META))
}

/// Writes `items` (index in a generation's region, value) into array `name`
/// at `base + index`, recording each absolute index in `written`.
fn write_array<'a, T: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    base: u32,
    items: impl Iterator<Item = (usize, &'a T)>,
    written: &mut Vec<u32>,
) -> Result<()> {
    let mut a: Array<_, T> = array(ebpf, name)?;
    for (i, v) in items {
        let i = base + i as u32;
        a.set(i, v, 0).map_err(map_err(name))?;
        written.push(i);
    }
    Ok(())
}

/// Deletes what `w` records. Best effort: an entry that cannot be removed
/// is unreachable anyway once its slot is not live.
pub(super) fn delete(ebpf: &mut Ebpf, w: &WrittenSegmentation) {
    if let Ok(mut t) = trie::<SlotAddrV4, u16>(ebpf, names::ZONES_V4) {
        w.zones_v4.iter().for_each(|k| drop(t.remove(k)));
    }
    if let Ok(mut t) = trie::<SlotAddrV6, u16>(ebpf, names::ZONES_V6) {
        w.zones_v6.iter().for_each(|k| drop(t.remove(k)));
    }
    if let Ok(mut t) = trie::<SlotAddrV4, u32>(ebpf, names::FAILSAFE_V4) {
        w.failsafe_v4.iter().for_each(|k| drop(t.remove(k)));
    }
    if let Ok(mut t) = trie::<SlotAddrV6, u32>(ebpf, names::FAILSAFE_V6) {
        w.failsafe_v6.iter().for_each(|k| drop(t.remove(k)));
    }
    clear_array(ebpf, names::ZONE_V4_L1, &w.zone_l1, 0u32);
    clear_array(
        ebpf,
        names::ZONE_V4_BLOCKS,
        &w.zone_blocks,
        ZoneBlock::EMPTY,
    );
    clear_array(ebpf, names::FAILSAFE_PORTS, &w.failsafe_ports, 0u32);
    clear_array(ebpf, names::PORT_TABLES, &w.port_tables, PortTable::EMPTY);
    clear_array(ebpf, names::PORT_BLOCKS, &w.port_blocks, PortTable::EMPTY);
    clear_array(ebpf, names::PAIR_MATRIX, &w.pair_lines, PairLine::EMPTY);
    clear_array(
        ebpf,
        names::PAIR_RECORDS,
        &w.pair_records,
        PairClasses::default(),
    );
    clear_array(ebpf, names::PORT_SETS, &w.port_sets, PortSet::EMPTY);
}

/// Sets the `indexes` of array `name` back to `empty`; best effort, as
/// `delete`.
fn clear_array<T: aya::Pod>(ebpf: &mut Ebpf, name: &'static str, indexes: &[u32], empty: T) {
    if let Ok(mut a) = array::<T>(ebpf, name) {
        indexes.iter().for_each(|i| drop(a.set(*i, empty, 0)));
    }
}

/// Deletes every segmentation entry of `slot`, found by scanning (entries
/// written by an earlier agent).
pub(super) fn sweep(ebpf: &mut Ebpf, slot: u8) -> Result<()> {
    let mut w = WrittenSegmentation {
        zones_v4: trie_keys::<SlotAddrV4, u16>(ebpf, names::ZONES_V4, slot, |k| k.slot)?,
        zones_v6: trie_keys::<SlotAddrV6, u16>(ebpf, names::ZONES_V6, slot, |k| k.slot)?,
        failsafe_v4: trie_keys::<SlotAddrV4, u32>(ebpf, names::FAILSAFE_V4, slot, |k| k.slot)?,
        failsafe_v6: trie_keys::<SlotAddrV6, u32>(ebpf, names::FAILSAFE_V6, slot, |k| k.slot)?,
        ..WrittenSegmentation::default()
    };
    // Only the matrix is scanned: records and port sets are reached through
    // it alone, and the next generation writes every one it uses.
    {
        let a: Array<_, PairLine> = array(ebpf, names::PAIR_MATRIX)?;
        let base = u32::from(slot) * PAIR_LINES_PER_SLOT;
        w.pair_lines = (base..base + PAIR_LINES_PER_SLOT)
            .filter(|i| a.get(i, 0).is_ok_and(|l| l != PairLine::EMPTY))
            .collect();
    }
    {
        let a: Array<_, PortTable> = array(ebpf, names::PORT_TABLES)?;
        let base = u32::from(slot) * PORT_TABLES_PER_SLOT;
        w.port_tables = (base..base + PORT_TABLES_PER_SLOT)
            .filter(|i| a.get(i, 0).is_ok_and(|t| t != PortTable::EMPTY))
            .collect();
    }
    {
        let a: Array<_, PortTable> = array(ebpf, names::PORT_BLOCKS)?;
        let base = u32::from(slot) * PORT_BLOCKS_PER_SLOT;
        w.port_blocks = (base..base + PORT_BLOCKS_PER_SLOT)
            .filter(|i| a.get(i, 0).is_ok_and(|t| t != PortTable::EMPTY))
            .collect();
    }
    {
        let a: Array<_, u32> = array(ebpf, names::ZONE_V4_L1)?;
        let base = u32::from(slot) * ZONE_V4_L1_SIZE;
        w.zone_l1 = (base..base + ZONE_V4_L1_SIZE)
            .filter(|i| a.get(i, 0).is_ok_and(|e| e != 0))
            .collect();
    }
    {
        let a: Array<_, ZoneBlock> = array(ebpf, names::ZONE_V4_BLOCKS)?;
        let base = u32::from(slot) * ZONE_V4_BLOCKS_PER_SLOT;
        w.zone_blocks = (base..base + ZONE_V4_BLOCKS_PER_SLOT)
            .filter(|i| a.get(i, 0).is_ok_and(|b| b != ZoneBlock::EMPTY))
            .collect();
    }
    {
        let a: Array<_, u32> = array(ebpf, names::FAILSAFE_PORTS)?;
        let base = failsafe_index(slot, 0, 0);
        w.failsafe_ports = (base..base + FAILSAFE_CLASSES * 65536)
            .filter(|i| a.get(i, 0).is_ok_and(|m| m != 0))
            .collect();
    }
    delete(ebpf, &w);
    Ok(())
}

fn trie_keys<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    slot: u8,
    slot_of: fn(&K) -> u8,
) -> Result<Vec<Key<K>>> {
    let t: LpmTrie<_, K, V> = trie(ebpf, name)?;
    Ok(t.keys()
        .filter_map(|k| k.ok())
        .filter(|k| slot_of(&k.data()) == slot)
        .collect())
}
