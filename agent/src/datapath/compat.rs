//! Maps an earlier agent version pinned with another layout.
//!
//! aya reuses a pinned map by name without comparing it with the object's
//! definition. After an upgrade that changed a map's key or value size, its
//! type, flags or capacity, the new programs would then be refused by the
//! verifier (the agent could not start) or, worse, read a layout they were
//! not built for. So before loading, every pinned map is compared with the
//! object's definition; a map that differs is unpinned so that the load
//! creates it afresh. Its state (counters, flows, blocks) starts empty, but
//! for a flow table that only changed capacity (`flows.rs`, `FlowCarry`); the
//! old programs keep their reference to the old map and keep enforcing until
//! the new program is installed, on a generation of their own
//! (`handover.rs`), so there is no gap.

use std::path::Path;

use aya::maps::MapInfo;

/// A pinned map that was set aside because its layout differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recreated {
    pub map: String,
    /// The pinned map's layout.
    pub was: Layout,
    /// The layout this agent's programs need.
    pub now: Layout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// The layouts of the object's maps, by name, with the loader's
/// `max_entries` overrides applied.
pub fn object_layouts(object: &[u8], overrides: &[(&str, u32)]) -> Vec<(String, Layout)> {
    // The object is built with the agent; if it cannot be parsed here, the
    // load reports it in its own words.
    let Ok(obj) = aya_obj::Object::parse(object) else {
        return Vec::new();
    };
    obj.maps
        .iter()
        .map(|(name, m)| {
            let max_entries = overrides
                .iter()
                .find(|(n, _)| n == name)
                .map_or(m.max_entries(), |(_, v)| *v);
            (
                name.clone(),
                Layout {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries,
                    flags: m.map_flags(),
                },
            )
        })
        .collect()
}

/// Unpins every map under `pin_dir` whose layout (type, key and value size,
/// capacity, flags) differs from `wanted`;
/// returns what it set aside. A pin that cannot be read is left for the load
/// to report.
pub fn set_aside_incompatible(pin_dir: &Path, wanted: &[(String, Layout)]) -> Vec<Recreated> {
    let mut out = Vec::new();
    for (name, now) in wanted {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let Some(was) = pinned_layout(&path) else {
            continue;
        };
        if was != *now && std::fs::remove_file(&path).is_ok() {
            out.push(Recreated {
                map: name.clone(),
                was,
                now: *now,
            });
        }
    }
    out
}

/// The layout of the map pinned at `path`, if it can be read.
pub fn pinned_layout(path: &Path) -> Option<Layout> {
    let info = MapInfo::from_pin(path).ok()?;
    Some(Layout {
        map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// Unpins every map under `pin_dir` named as this agent names its maps
/// (`TG_…`) that its object no longer defines: a map an earlier version
/// retired would otherwise keep its kernel memory for as long as the pin
/// lives. Returns the names, sorted. Programs still running keep their own
/// reference until they are replaced.
pub fn unpin_retired(pin_dir: &Path, wanted: &[(String, Layout)]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(MAP_PREFIX))
        .filter(|name| !wanted.iter().any(|(w, _)| w == name))
        .filter(|name| MapInfo::from_pin(pin_dir.join(name)).is_ok())
        .filter(|name| std::fs::remove_file(pin_dir.join(name)).is_ok())
        .collect();
    out.sort();
    out
}

/// The prefix of every map name in the object.
const MAP_PREFIX: &str = "TG_";

#[cfg(test)]
mod tests {
    use tierguard_common::maps::names;

    use super::*;

    #[test]
    fn the_objects_maps_are_read_with_overrides() {
        let layouts = object_layouts(super::super::EBPF_OBJECT, &[(names::BENCH_SOURCES, 7)]);
        let get = |n: &str| layouts.iter().find(|(m, _)| m == n).map(|(_, l)| *l);
        let meta = get(names::SEG_META).expect("TG_SEG_META is in the object");
        assert_eq!(
            meta.value_size as usize,
            std::mem::size_of::<tierguard_common::segment::SegMeta>()
        );
        assert_eq!(meta.key_size, 4);
        assert_eq!(get(names::BENCH_SOURCES).unwrap().max_entries, 7);
    }
}
