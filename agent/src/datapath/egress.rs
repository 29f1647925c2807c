//! The egress side: a TC classifier on each interface's egress hook (a tcx
//! link, pinned like the XDP one), dispatching into the egress program.
//! Same adoption rules as `attach.rs`: an earlier agent's link with the same
//! dispatcher is kept untouched; a different dispatcher is swapped into it
//! atomically.

use std::path::{Path, PathBuf};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
};
use tierguard_common::maps::{PROG_EGRESS, names, programs};

use super::{Datapath, DatapathError, Result};

/// Pin-name tag of egress links (`<ifindex>@<iface>@egress@<tag>`).
pub(super) const EGRESS_PIN_MODE: &str = "egress";

pub(super) fn tc_program<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &str,
) -> Result<&'a mut SchedClassifier> {
    let program_error = |source| DatapathError::Program {
        program: name.to_string(),
        source,
    };
    ebpf.program_mut(name)
        .ok_or_else(|| program_error(aya::programs::ProgramError::NotLoaded))?
        .try_into()
        .map_err(program_error)
}

pub(super) fn load_tc(ebpf: &mut aya::Ebpf, name: &str) -> Result<()> {
    tc_program(ebpf, name)?
        .load()
        .map_err(|source| super::load_error(name, source))
}

fn egress_pins(dir: &Path, ifindex: u32) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?.to_string();
            let parts: Vec<&str> = name.split('@').collect();
            let [index, _iface, mode, tag] = parts[..] else {
                return None;
            };
            let tag = u64::from_str_radix(tag, 16).ok()?;
            (index.parse::<u32>().ok()? == ifindex && mode == EGRESS_PIN_MODE)
                .then_some((path, tag))
        })
        .collect()
}

impl Datapath {
    /// Installs the egress program in the egress dispatcher's program array.
    pub(super) fn install_egress(&mut self) -> Result<()> {
        let program_error = |source| DatapathError::Program {
            program: programs::EGRESS.into(),
            source,
        };
        let fd = tc_program(&mut self.ebpf, programs::EGRESS)?
            .fd()
            .map_err(program_error)?
            .try_clone()
            .map_err(|e| program_error(aya::programs::ProgramError::IOError(e)))?;
        let name = names::EGRESS_PROGRAMS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { map: name })?;
        let mut array = aya::maps::ProgramArray::try_from(map)
            .map_err(|source| DatapathError::Map { map: name, source })?;
        array
            .set(PROG_EGRESS, &fd, 0)
            .map_err(|source| DatapathError::Install { map: name, source })
    }

    /// Attaches the egress dispatcher to `iface` (or adopts the pinned link
    /// an earlier agent left). Returns the link, its pin and whether it was adopted.
    pub(super) fn attach_egress(
        &mut self,
        iface: &str,
        ifindex: u32,
        links_dir: &Path,
    ) -> Result<(PinnedLink, PathBuf, bool)> {
        let prog = tc_program(&mut self.ebpf, programs::EGRESS_DISPATCH)?;
        let tag = prog
            .info()
            .map_err(|source| DatapathError::Program {
                program: programs::EGRESS_DISPATCH.into(),
                source,
            })?
            .tag();
        let path = links_dir.join(format!(
            "{ifindex}@{}@{EGRESS_PIN_MODE}@{tag:016x}",
            iface.replace('.', "_")
        ));
        let attach_error = |source| DatapathError::Attach {
            iface: iface.to_string(),
            mode: "tc egress",
            source,
        };
        let mut result = None;
        for (old, old_tag) in egress_pins(links_dir, ifindex) {
            if result.is_none()
                && let Ok(pinned) = PinnedLink::from_pin(&old)
            {
                if old_tag == tag {
                    result = Some((pinned, old.clone(), true));
                    continue;
                }
                // A different dispatcher: swap ours into the same link.
                if let Ok(link) = SchedClassifierLink::try_from(FdLink::from(pinned)) {
                    let id = prog.attach_to_link(link).map_err(attach_error)?;
                    let link = prog.take_link(id).map_err(attach_error)?;
                    let pinned = pin(link, iface, &path)?;
                    let _ = std::fs::remove_file(&old);
                    result = Some((pinned, path.clone(), true));
                    continue;
                }
            }
            tracing::warn!(iface, pin = %old.display(), "removing a pinned egress link that cannot be adopted");
            let _ = std::fs::remove_file(&old);
        }
        if let Some(r) = result {
            return Ok(r);
        }
        // tcx (Linux 6.6+): a BPF link that can be pinned, and that runs
        // alongside other tcx programs (Cilium's, for one) instead of
        // replacing a qdisc filter.
        let id = prog
            .attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_error)?;
        let link = prog.take_link(id).map_err(attach_error)?;
        Ok((pin(link, iface, &path)?, path, false))
    }
}

fn pin(link: SchedClassifierLink, iface: &str, path: &Path) -> Result<PinnedLink> {
    let fd = FdLink::try_from(link).map_err(|source| DatapathError::LinkNotPinnable {
        iface: iface.to_string(),
        source,
    })?;
    fd.pin(path).map_err(|source| DatapathError::PinLink {
        iface: iface.to_string(),
        path: path.to_path_buf(),
        source,
    })
}
