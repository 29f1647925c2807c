//! Attaching the ingress program to interfaces, with links pinned so that
//! enforcement outlives the agent, and adopted by the next agent without a gap.

use std::ffi::CString;
use std::path::PathBuf;

use aya::{
    maps::{Array, PerCpuArray},
    programs::{
        Xdp,
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpMode},
    },
};
use tierguard_common::maps::{
    Counter, Direction, IFINDEX_TABLE_SIZE, MAX_IFACE_SLOTS, MAX_REASONS, VERDICTS, names,
    programs, stats_index,
};

use super::{Datapath, DatapathError, Result, tables::zero_per_cpu, xdp_program};
use crate::config::XdpModeSetting;

/// The XDP mode actually in use on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }

    fn from_name(s: &str) -> Option<AttachMode> {
        match s.trim() {
            "native" => Some(AttachMode::Native),
            "generic" => Some(AttachMode::Generic),
            _ => None,
        }
    }

    fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
}

/// One interface the program is attached to.
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// Counter slot (1-based; 0 collects unknown interfaces).
    pub slot: u32,
    pub mode: AttachMode,
    /// True when an earlier agent's link was taken over.
    pub adopted: bool,
    link: Option<PinnedLink>,
    link_path: PathBuf,
    /// The TC egress link and its pin.
    egress_link: Option<PinnedLink>,
    egress_link_path: PathBuf,
}

/// Looks an interface up by name.
pub fn ifindex(iface: &str) -> Option<u32> {
    let c = CString::new(iface).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// A link is pinned as `links/<ifindex>@<iface>@<mode>@<dispatcher tag>`:
/// bpffs holds only BPF objects, so what the next agent must know about the
/// link is kept in its name, where it cannot drift from the link itself.
/// bpffs refuses dots in names, so dots in interface names become `_`; the
/// ifindex is what identifies the interface.
struct LinkPin {
    path: PathBuf,
    mode: AttachMode,
    tag: u64,
}

impl LinkPin {
    fn path(
        dir: &std::path::Path,
        ifindex: u32,
        iface: &str,
        mode: AttachMode,
        tag: u64,
    ) -> PathBuf {
        dir.join(format!(
            "{ifindex}@{}@{}@{tag:016x}",
            iface.replace('.', "_"),
            mode.name()
        ))
    }

    /// Pins left for the interface `ifindex` (normally at most one).
    fn find(dir: &std::path::Path, ifindex: u32) -> Vec<LinkPin> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                let name = path.file_name()?.to_str()?.to_string();
                let mut parts = name.split('@');
                let index: u32 = parts.next()?.parse().ok()?;
                let _iface = parts.next()?;
                let mode = AttachMode::from_name(parts.next()?)?;
                let tag = u64::from_str_radix(parts.next()?, 16).ok()?;
                (index == ifindex).then_some(LinkPin { path, mode, tag })
            })
            .collect()
    }
}

impl Datapath {
    /// Attaches the dispatcher to `iface`.
    ///
    /// If an earlier agent left a pinned link there with the same dispatcher,
    /// the link is kept exactly as it is: enforcement changed hands when
    /// `install` swapped the program array entry. Only a different dispatcher
    /// (a rare upgrade) is swapped into the link, atomically.
    pub fn attach(&mut self, iface: &str, setting: XdpModeSetting) -> Result<AttachMode> {
        let ifindex =
            ifindex(iface).ok_or_else(|| DatapathError::UnknownInterface(iface.to_string()))?;
        let slot = self.slot_for(ifindex)?;
        let links_dir = self.pin_dir.join("links");
        std::fs::create_dir_all(&links_dir).map_err(|source| DatapathError::PinDir {
            path: links_dir.clone(),
            source,
        })?;

        self.set_iface_slot(ifindex, slot)?;
        let prog = xdp_program(&mut self.ebpf, programs::DISPATCH)?;
        let tag = prog
            .info()
            .map_err(|source| DatapathError::Program {
                program: programs::DISPATCH.into(),
                source,
            })?
            .tag();

        let mut adopted: Option<(PinnedLink, AttachMode, PathBuf)> = None;
        for old in LinkPin::find(&links_dir, ifindex) {
            if adopted.is_none() && setting_allows(setting, old.mode) {
                match PinnedLink::from_pin(&old.path) {
                    Ok(pinned) if old.tag == tag => {
                        adopted = Some((pinned, old.mode, old.path));
                        continue;
                    }
                    Ok(pinned) => {
                        let path = LinkPin::path(&links_dir, ifindex, iface, old.mode, tag);
                        if let Some(p) = replace_in_link(prog, pinned, iface, &old.path, &path)? {
                            adopted = Some((p, old.mode, path));
                            continue;
                        }
                    }
                    Err(e) => tracing::warn!(iface, error = %e, "cannot open pinned XDP link"),
                }
            }
            tracing::warn!(iface, pin = %old.path.display(), "removing a pinned XDP link that cannot be adopted");
            let _ = std::fs::remove_file(&old.path);
        }
        let (link, mode, link_path, was_adopted) = match adopted {
            Some((link, mode, path)) => (link, mode, path, true),
            None => {
                let (id, mode) = attach_fresh(prog, iface, setting)?;
                let link = prog.take_link(id).map_err(|source| DatapathError::Attach {
                    iface: iface.to_string(),
                    mode: mode.name(),
                    source,
                })?;
                let path = LinkPin::path(&links_dir, ifindex, iface, mode, tag);
                (pin_link(link, iface, &path)?, mode, path, false)
            }
        };
        let (egress_link, egress_link_path, _) =
            match self.attach_egress(iface, ifindex, &links_dir) {
                Ok(e) => e,
                Err(e) => {
                    if !was_adopted {
                        // Leave nothing half-attached: the XDP link just made goes too.
                        drop(link.unpin());
                        let _ = std::fs::remove_file(&link_path);
                    }
                    return Err(e);
                }
            };
        self.attachments.push(Attachment {
            iface: iface.to_string(),
            ifindex,
            slot,
            mode,
            adopted: was_adopted,
            link: Some(link),
            link_path,
            egress_link: Some(egress_link),
            egress_link_path,
        });
        Ok(mode)
    }

    fn iface_slots(&mut self) -> Result<Array<&mut aya::maps::MapData, u32>> {
        let name = names::IFACE_SLOTS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { map: name })?;
        Array::try_from(map).map_err(|source| DatapathError::Map { map: name, source })
    }

    /// (ifindex, slot) pairs recorded in the slot table.
    fn recorded_slots(&mut self) -> Result<Vec<(u32, u32)>> {
        if let Some(t) = &self.slot_table {
            return Ok(t.clone());
        }
        let a = self.iface_slots()?;
        let table: Vec<(u32, u32)> = (0..IFINDEX_TABLE_SIZE)
            .filter_map(|i| a.get(&i, 0).ok().filter(|s| *s != 0).map(|s| (i, s)))
            .collect();
        self.slot_table = Some(table.clone());
        Ok(table)
    }

    /// The counter slot for `ifindex`: the one it already has (so its
    /// counters go on across restarts), or else the lowest free one, zeroed.
    fn slot_for(&mut self, ifindex: u32) -> Result<u32> {
        if ifindex >= IFINDEX_TABLE_SIZE {
            tracing::warn!(
                ifindex,
                "ifindex too large for per-interface counters; counted with unconfigured interfaces"
            );
            return Ok(0);
        }
        let taken: Vec<u32> = self.attachments.iter().map(|a| a.slot).collect();
        let recorded = self.recorded_slots()?;
        if let Some(&(_, s)) = recorded.iter().find(|(i, _)| *i == ifindex)
            && s < MAX_IFACE_SLOTS
            && !taken.contains(&s)
        {
            return Ok(s);
        }
        let slot = (1..MAX_IFACE_SLOTS)
            .find(|s| !taken.contains(s) && !recorded.iter().any(|(_, r)| r == s))
            .ok_or(DatapathError::TooManyInterfaces(MAX_IFACE_SLOTS - 1))?;
        self.zero_slot_counters(slot)?;
        Ok(slot)
    }

    fn zero_slot_counters(&mut self, slot: u32) -> Result<()> {
        let name = names::STATS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { map: name })?;
        let mut stats: PerCpuArray<_, Counter> = PerCpuArray::try_from(map)
            .map_err(|source| DatapathError::Map { map: name, source })?;
        for dir in [Direction::Ingress, Direction::Egress] {
            // Every (verdict, reason) cell of this slot and direction.
            for cell in 0..VERDICTS * MAX_REASONS {
                stats
                    .set(stats_index(slot, dir, 0, 0) + cell, zero_per_cpu()?, 0)
                    .map_err(|source| DatapathError::Map { map: name, source })?;
            }
        }
        Ok(())
    }

    fn set_iface_slot(&mut self, ifindex: u32, slot: u32) -> Result<()> {
        if ifindex >= IFINDEX_TABLE_SIZE {
            return Ok(());
        }
        self.iface_slots()?
            .set(ifindex, slot, 0)
            .map_err(|source| DatapathError::Map {
                map: names::IFACE_SLOTS,
                source,
            })?;
        if let Some(t) = &mut self.slot_table {
            t.retain(|(i, _)| *i != ifindex);
            if slot != 0 {
                t.push((ifindex, slot));
            }
        }
        Ok(())
    }

    /// Detaches links pinned for interfaces this agent does not enforce on
    /// (removed from the config since an earlier agent) and frees their
    /// counter slots. Returns the pins removed. Call after every `attach`.
    pub fn remove_stale_links(&mut self) -> Result<Vec<PathBuf>> {
        let keep: Vec<u32> = self.attachments.iter().map(|a| a.ifindex).collect();
        let links_dir = self.pin_dir.join("links");
        let mut removed = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&links_dir) {
            for e in entries.flatten() {
                let path = e.path();
                let index = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split('@').next())
                    .and_then(|i| i.parse::<u32>().ok());
                if index.is_some_and(|i| keep.contains(&i)) {
                    continue;
                }
                // The pin held the last reference: removing it detaches the link.
                if std::fs::remove_file(&path).is_ok() {
                    removed.push(path);
                }
            }
        }
        for (ifindex, _) in self.recorded_slots()? {
            if !keep.contains(&ifindex) {
                self.set_iface_slot(ifindex, 0)?;
            }
        }
        Ok(removed)
    }

    /// Detaches from every interface and removes all pins: the node is left
    /// as if tierguard had never run.
    pub fn detach_and_unpin(mut self) {
        for a in self.attachments.drain(..) {
            if let Some(link) = a.link {
                match link.unpin() {
                    // Dropping the last reference to the link detaches it.
                    Ok(fd) => drop(fd),
                    Err(e) => tracing::warn!(iface = a.iface, error = %e, "cannot unpin XDP link"),
                }
            }
            let _ = std::fs::remove_file(&a.link_path);
            if let Some(link) = a.egress_link {
                match link.unpin() {
                    Ok(fd) => drop(fd),
                    Err(e) => {
                        tracing::warn!(iface = a.iface, error = %e, "cannot unpin egress link")
                    }
                }
            }
            let _ = std::fs::remove_file(&a.egress_link_path);
        }
        let pin_dir = self.pin_dir.clone();
        // Removing a pin file from bpffs is what unpinning is.
        let map_names: Vec<String> = self.ebpf.maps().map(|(n, _)| n.to_string()).collect();
        for name in map_names {
            let _ = std::fs::remove_file(pin_dir.join(name));
        }
        let _ = std::fs::remove_dir(pin_dir.join("links"));
        let _ = std::fs::remove_dir(&pin_dir);
    }

    /// Leaves programs attached and maps pinned for the next agent.
    pub fn leave_pinned(self) {
        // Pinned links and maps keep their kernel objects alive on their own.
        drop(self);
    }
}

fn setting_allows(setting: XdpModeSetting, mode: AttachMode) -> bool {
    match setting {
        XdpModeSetting::Auto => true,
        XdpModeSetting::Native => mode == AttachMode::Native,
        XdpModeSetting::Generic => mode == AttachMode::Generic,
    }
}

/// Swaps our dispatcher into an existing link (pinned at `old`) and re-pins
/// it at `new`; `None` if the link is unusable.
fn replace_in_link(
    prog: &mut Xdp,
    pinned: PinnedLink,
    iface: &str,
    old: &std::path::Path,
    new: &std::path::Path,
) -> Result<Option<PinnedLink>> {
    let link = match XdpLink::try_from(FdLink::from(pinned)) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(iface, error = %e, "pinned XDP link is not usable; attaching anew");
            return Ok(None);
        }
    };
    let id = match prog.attach_to_link(link) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(iface, error = %e, "cannot update the pinned XDP link; attaching anew");
            return Ok(None);
        }
    };
    tracing::info!(iface, "dispatcher changed: swapped into the existing link");
    let link = prog.take_link(id).map_err(|source| DatapathError::Attach {
        iface: iface.to_string(),
        mode: "existing",
        source,
    })?;
    // Pin under the new name first, then drop the old name: the link always
    // has at least one pin, so it stays attached throughout.
    let pinned = pin_link(link, iface, new)?;
    let _ = std::fs::remove_file(old);
    Ok(Some(pinned))
}

fn attach_fresh(
    prog: &mut Xdp,
    iface: &str,
    setting: XdpModeSetting,
) -> Result<(aya::programs::xdp::XdpLinkId, AttachMode)> {
    let try_mode = |prog: &mut Xdp, mode: AttachMode| {
        prog.attach(iface, mode.xdp_mode())
            .map_err(|source| DatapathError::Attach {
                iface: iface.to_string(),
                mode: mode.name(),
                source,
            })
    };
    match setting {
        XdpModeSetting::Native => {
            try_mode(prog, AttachMode::Native).map(|id| (id, AttachMode::Native))
        }
        XdpModeSetting::Generic => {
            try_mode(prog, AttachMode::Generic).map(|id| (id, AttachMode::Generic))
        }
        XdpModeSetting::Auto => match try_mode(prog, AttachMode::Native) {
            Ok(id) => Ok((id, AttachMode::Native)),
            Err(e) => {
                tracing::info!(iface, error = %e, "native XDP unavailable; using generic mode");
                try_mode(prog, AttachMode::Generic).map(|id| (id, AttachMode::Generic))
            }
        },
    }
}

fn pin_link(link: XdpLink, iface: &str, path: &std::path::Path) -> Result<PinnedLink> {
    let fd =
        FdLink::try_from(link).map_err(|source: LinkError| DatapathError::LinkNotPinnable {
            iface: iface.to_string(),
            source,
        })?;
    fd.pin(path).map_err(|source| DatapathError::PinLink {
        iface: iface.to_string(),
        path: path.to_path_buf(),
        source,
    })
}
