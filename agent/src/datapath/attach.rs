//! Attaching the ingress program to interfaces, with links pinned so that
//! enforcement outlives the agent, and adopted by the next agent without a gap.

use std::ffi::CString;
use std::path::PathBuf;

use aya::{
    maps::Array,
    programs::{
        ProgramError, Xdp,
        links::{FdLink, LinkError, PinnedLink},
        xdp::{XdpLink, XdpMode},
    },
};
use tierguard_common::maps::{IFINDEX_TABLE_SIZE, MAX_IFACE_SLOTS, names, programs};

use super::{Datapath, DatapathError, Result};
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
}

/// Looks an interface up by name.
pub fn ifindex(iface: &str) -> Option<u32> {
    let c = CString::new(iface).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

impl Datapath {
    /// Attaches the ingress program to `iface`. If an earlier agent left a
    /// pinned link there, the program inside it is replaced atomically (no
    /// moment without enforcement); otherwise a new link is made and pinned.
    pub fn attach(&mut self, iface: &str, setting: XdpModeSetting) -> Result<AttachMode> {
        let ifindex = ifindex(iface).ok_or_else(|| DatapathError::UnknownInterface(iface.to_string()))?;
        let slot = self.attachments.len() as u32 + 1;
        if slot >= MAX_IFACE_SLOTS {
            return Err(DatapathError::Attach {
                iface: iface.to_string(),
                mode: "any",
                source: ProgramError::UnexpectedProgramType,
            });
        }
        let links_dir = self.pin_dir.join("links");
        std::fs::create_dir_all(&links_dir)
            .map_err(|source| DatapathError::PinDir { path: links_dir.clone(), source })?;
        let link_path = links_dir.join(format!("xdp_{iface}"));
        let mode_path = links_dir.join(format!("xdp_{iface}.mode"));

        self.set_iface_slot(ifindex, slot)?;
        let prog = ingress(&mut self.ebpf)?;

        let mut adopted = None;
        if link_path.exists() {
            let previous_mode = std::fs::read_to_string(&mode_path).ok().and_then(|s| AttachMode::from_name(&s));
            match (PinnedLink::from_pin(&link_path), previous_mode) {
                (Ok(pinned), Some(mode)) if setting_allows(setting, mode) => {
                    let link = XdpLink::try_from(FdLink::from(pinned));
                    match link.map(|l| prog.attach_to_link(l)) {
                        Ok(Ok(id)) => adopted = Some((id, mode)),
                        Ok(Err(e)) => tracing::warn!(iface, error = %e, "cannot take over pinned XDP link; attaching anew"),
                        Err(e) => tracing::warn!(iface, error = %e, "pinned XDP link is not usable; attaching anew"),
                    }
                }
                _ => {}
            }
            if adopted.is_none() {
                // Stale or of another mode: remove it so the new attach can take its place.
                let _ = std::fs::remove_file(&link_path);
            }
        }
        let (id, mode, was_adopted) = match adopted {
            Some((id, mode)) => (id, mode, true),
            None => {
                let (id, mode) = attach_fresh(prog, iface, setting)?;
                (id, mode, false)
            }
        };
        let link = prog.take_link(id).map_err(|source| DatapathError::Attach {
            iface: iface.to_string(),
            mode: mode.name(),
            source,
        })?;
        let pinned = pin_link(link, iface, &link_path)?;
        let _ = std::fs::write(&mode_path, mode.name());
        self.attachments.push(Attachment {
            iface: iface.to_string(),
            ifindex,
            slot,
            mode,
            adopted: was_adopted,
            link: Some(pinned),
            link_path,
        });
        Ok(mode)
    }

    fn set_iface_slot(&mut self, ifindex: u32, slot: u32) -> Result<()> {
        if ifindex >= IFINDEX_TABLE_SIZE {
            tracing::warn!(ifindex, "ifindex too large for per-interface counters; counted as 'other'");
            return Ok(());
        }
        let name = names::IFACE_SLOTS;
        let map = self.ebpf.map_mut(name).ok_or(DatapathError::MissingMap { map: name })?;
        let mut a: Array<_, u32> = Array::try_from(map).map_err(|source| DatapathError::Map { map: name, source })?;
        a.set(ifindex, slot, 0).map_err(|source| DatapathError::Map { map: name, source })
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
            let _ = std::fs::remove_file(a.link_path.with_extension("mode"));
            let _ = std::fs::remove_file(&a.link_path);
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

fn ingress(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp> {
    let name = programs::INGRESS;
    ebpf.program_mut(name)
        .ok_or_else(|| DatapathError::Program { program: name.to_string(), source: ProgramError::NotLoaded })?
        .try_into()
        .map_err(|source| DatapathError::Program { program: name.to_string(), source })
}

fn attach_fresh(
    prog: &mut Xdp,
    iface: &str,
    setting: XdpModeSetting,
) -> Result<(aya::programs::xdp::XdpLinkId, AttachMode)> {
    let try_mode = |prog: &mut Xdp, mode: AttachMode| {
        prog.attach(iface, mode.xdp_mode()).map_err(|source| DatapathError::Attach {
            iface: iface.to_string(),
            mode: mode.name(),
            source,
        })
    };
    match setting {
        XdpModeSetting::Native => try_mode(prog, AttachMode::Native).map(|id| (id, AttachMode::Native)),
        XdpModeSetting::Generic => try_mode(prog, AttachMode::Generic).map(|id| (id, AttachMode::Generic)),
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
    let fd = FdLink::try_from(link)
        .map_err(|source: LinkError| DatapathError::LinkNotPinnable { iface: iface.to_string(), source })?;
    fd.pin(path).map_err(|source| DatapathError::PinLink { iface: iface.to_string(), path: path.to_path_buf(), source })
}
