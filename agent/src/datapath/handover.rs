//! Upgrades that recreate or retire maps: until this agent's programs are
//! installed, the earlier agent's programs keep enforcing, and they read
//! their own copies of the recreated maps (the old layout) beside the maps
//! both versions share. Were the first transaction to switch the shared
//! active slot, they would read the new generation from the shared maps and
//! the previous one (or nothing) from their own: a mix of two policies,
//! until `install`.
//!
//! So such a load sets the pinned `TG_ACTIVE_SLOT` aside under another name
//! (the earlier programs keep reading it, and the slot it names stays as it
//! is), and creates a new one that starts at the same slot: this agent's
//! first transaction writes the other slot and switches only the new map,
//! which only its own programs read. `install` hands over to them in one
//! write; the earlier generation is deleted after that. See
//! docs/design/pinning-and-restarts.md, "Handover".

use std::path::Path;

use aya::maps::{Array, MapData};
use tierguard_common::maps::names;

use super::map_access::{map_err, pinned};
use super::{DatapathError, Result};

/// Where the earlier programs' active-slot map is kept during a handover.
/// Not `TG_…`: retired-map cleanup must leave it alone.
pub const PIN: &str = "handover_active_slot";

/// The slot the running (earlier) programs read, if this load must keep them
/// on their own active-slot map: when `layout_changed` (maps were recreated
/// or retired), or when a handover that an earlier load began was not
/// finished (the agent stopped between load and install: a loaded program
/// still uses the renamed map; a pin no program uses is removed).
pub fn begin(pin_dir: &Path, layout_changed: bool) -> Result<Option<u8>> {
    let held = pin_dir.join(PIN);
    if held.exists() {
        if still_read(&held) {
            return slot_in(pin_dir, PIN).map(Some);
        }
        // Left by an agent that stopped between `install` and `end`, or by
        // a handover a rollback to an earlier version never finished: no
        // program reads it, so it names no live generation.
        tracing::info!(pin = %held.display(), "no program reads this pin: removed");
        end(pin_dir)?;
    }
    let active = pin_dir.join(names::ACTIVE_SLOT);
    if !layout_changed || !active.exists() {
        return Ok(None);
    }
    let slot = slot_in(pin_dir, names::ACTIVE_SLOT)?;
    std::fs::rename(&active, &held).map_err(|source| DatapathError::Handover {
        path: held.clone(),
        source,
    })?;
    Ok(Some(slot))
}

/// After `install`: the earlier programs are gone; their active-slot map is
/// freed with its pin.
pub fn end(pin_dir: &Path) -> Result<()> {
    let held = pin_dir.join(PIN);
    match std::fs::remove_file(&held) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DatapathError::Handover {
            path: held,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Whether a loaded program uses the map pinned at `path`: the earlier
/// programs still enforce. If the kernel cannot tell (listing programs
/// needs CAP_SYS_ADMIN), they are assumed to.
fn still_read(path: &Path) -> bool {
    let Ok(id) = aya::maps::MapInfo::from_pin(path).map(|m| m.id()) else {
        return true;
    };
    aya::programs::loaded_programs().any(|p| {
        p.ok()
            .and_then(|p| p.map_ids().ok().flatten())
            .is_none_or(|ids| ids.contains(&id))
    })
}

/// The slot an active-slot map pinned under `pin_dir` as `name` holds.
fn slot_in(pin_dir: &Path, name: &'static str) -> Result<u8> {
    let slots: Array<MapData, u32> = pinned(pin_dir, name)?;
    Ok((slots.get(&0, 0).map_err(map_err(name))? & 1) as u8)
}
