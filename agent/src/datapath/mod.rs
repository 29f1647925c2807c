//! Loading, attaching and pinning the kernel programs; writing policy into
//! their maps as a transaction; reading their counters.

mod attach;
mod blocks;
mod caps;
mod clock;
mod compat;
mod egress;
mod error;
mod events;
mod flows;
mod handover;
mod limit_tables;
mod map_access;
mod segment_tables;
mod stats;
mod tables;
mod test_run;

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader, programs::Xdp};
use tierguard_common::maps::{PROG_INGRESS, names, programs};
use tierguard_common::segment::FLOW_CAPACITY;

pub use attach::{AttachMode, Attachment, ifindex};
pub use blocks::{Block, BlockTable};
pub use clock::{JiffyClock, coarse_now_ns, jiffy_clock, ns_per_jiffy};
pub use compat::{Layout, Recreated};
pub use error::{DatapathError, Result};
pub use events::{SamplerCounts, SamplerReader, cpus, kernel_config};
pub use flows::{FlowAccounting, FlowSweep, FlowSweeper};
pub use limit_tables::{LimitCounters, LimitReader, state_bytes};
pub use stats::{FlowCounters, Stats, StatsKey, StatsReader, verdicts_of};
pub use test_run::{RunResult, TC_DROP, TC_PASS, XDP_DROP, XDP_PASS};

/// The kernel object, built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tierguard"));

/// bpffs magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What a load can be asked for beyond the object's definitions.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Entries of the benchmark's source table (the agent uses 1: the table
    /// is unused outside the benchmark).
    pub bench_sources: u32,
    /// Turns the kernel's aya-log records on (debug level: drops and
    /// audits; `take_kernel_logger` reads them).
    pub kernel_debug: bool,
    /// The flow table's capacity (`[agent] flow_capacity`).
    pub flow_capacity: u32,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            bench_sources: 1,
            kernel_debug: false,
            flow_capacity: FLOW_CAPACITY,
        }
    }
}

/// The loaded programs and maps of one agent.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    attachments: Vec<Attachment>,
    /// Map contents of the live generation this agent wrote, to delete them
    /// after the next switch without scanning the maps.
    live: Option<tables::Written>,
    /// True when the maps were already pinned by an earlier agent.
    adopted: bool,
    /// Pinned maps of another layout that this load created afresh.
    recreated: Vec<Recreated>,
    /// Maps an earlier version pinned that this one no longer has, unpinned.
    retired: Vec<String>,
    /// (ifindex, slot) pairs of `TG_IFACE_SLOTS`, read once (65,536 entries)
    /// and kept in step with every write.
    slot_table: Option<Vec<(u32, u32)>>,
    /// Rule ids the live policy uses (0: unknown, as after a restart).
    rule_ids_in_use: usize,
    /// During an upgrade that recreated or retired maps, the slot the
    /// earlier agent's programs read through their own active-slot map,
    /// until `install` (see `handover.rs`).
    handover: Option<u8>,
    /// The flow table this load recreated at another capacity, until its
    /// flows are copied over for the last time at `install`.
    flow_carry: Option<flows::FlowCarry>,
}

impl Datapath {
    /// Loads the programs, reusing maps pinned under `pin_dir` if an earlier
    /// agent left them (so counters and the live policy carry over).
    pub fn load(pin_dir: &Path) -> Result<Datapath> {
        Datapath::load_with(pin_dir, 1)
    }

    /// As `load`, with the benchmark's source table sized to `bench_sources`
    /// (the agent uses 1: the table is unused outside the benchmark).
    pub fn load_with(pin_dir: &Path, bench_sources: u32) -> Result<Datapath> {
        Datapath::load_opts(
            pin_dir,
            &LoadOptions {
                bench_sources,
                ..LoadOptions::default()
            },
        )
    }

    /// As `load`, with `options`.
    pub fn load_opts(pin_dir: &Path, options: &LoadOptions) -> Result<Datapath> {
        let LoadOptions {
            bench_sources,
            kernel_debug,
            flow_capacity,
        } = *options;
        let missing = caps::missing();
        if !missing.is_empty() {
            return Err(DatapathError::MissingCapabilities(missing.join(", ")));
        }
        ensure_pin_dir(pin_dir)?;
        // Capacities fixed at load; a pinned map of another capacity is
        // recreated (compat.rs), as after an upgrade that resized it.
        let overrides = [
            (names::BENCH_SOURCES, bench_sources.max(1)),
            (names::FLOWS, flow_capacity),
        ];
        let layouts = compat::object_layouts(EBPF_OBJECT, &overrides);
        // Opened before its pin is removed below.
        let flow_carry = flows::FlowCarry::open(pin_dir, &layouts);
        let recreated = compat::set_aside_incompatible(pin_dir, &layouts);
        let retired = compat::unpin_retired(pin_dir, &layouts);
        for map in &retired {
            tracing::warn!(
                map = %map,
                "a map an earlier version pinned is no longer used: unpinned (its memory is \
                 freed once the old programs are replaced)"
            );
        }
        for r in &recreated {
            let carried = r.map == names::FLOWS && flow_carry.is_some();
            tracing::warn!(
                map = %r.map,
                was = %r.was,
                now = %r.now,
                "a pinned map has another layout than this agent's programs need (an upgrade): \
                 it is created afresh and {}",
                if carried {
                    "its live flows are copied over"
                } else {
                    "its state starts empty"
                }
            );
        }
        let handover = handover::begin(pin_dir, !recreated.is_empty() || !retired.is_empty())?;
        if let Some(slot) = handover {
            tracing::info!(
                slot,
                "handover: the earlier agent's programs keep their generation (slot {slot}) \
                 until this agent's are installed"
            );
        }
        let adopted = handover.is_some() || pin_dir.join(names::ACTIVE_SLOT).exists();
        bump_memlock_rlimit();
        // aya-log's level defaults to "everything" in the object: set it at
        // every load, off unless asked.
        let log_level: u8 = if kernel_debug { KERNEL_DEBUG_LEVEL } else { 0 };
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir).override_global(
            KERNEL_LOG_LEVEL,
            &log_level,
            true,
        );
        for (name, entries) in overrides {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            if is_permission_error(&e) {
                DatapathError::PermissionDenied(e)
            } else {
                DatapathError::Load(e)
            }
        })?;
        let loaded = load_xdp(&mut ebpf, programs::DISPATCH)
            .and_then(|()| load_xdp(&mut ebpf, programs::INGRESS))
            .and_then(|()| egress::load_tc(&mut ebpf, programs::EGRESS_DISPATCH))
            .and_then(|()| egress::load_tc(&mut ebpf, programs::EGRESS));
        if let Err(e) = loaded {
            if !adopted {
                // The maps were pinned by this load: leave nothing behind.
                let _ = std::fs::remove_dir_all(pin_dir);
            }
            return Err(e);
        }
        let mut dp = Datapath {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            attachments: Vec::new(),
            live: None,
            adopted,
            recreated,
            retired,
            slot_table: None,
            rule_ids_in_use: 0,
            handover,
            flow_carry,
        };
        dp.carry_flows("load");
        if let Some(slot) = handover {
            // This load's active-slot map is new (0), or left by a load that
            // did not finish the handover: it starts where the earlier
            // programs are, so the first transaction writes the other slot.
            map_access::array::<u32>(&mut dp.ebpf, names::ACTIVE_SLOT)?
                .set(0, u32::from(slot), 0)
                .map_err(map_access::map_err(names::ACTIVE_SLOT))?;
        }
        if adopted {
            // A crash between writing and switching can leave a half-written
            // inactive generation; clear it before the next transaction.
            tables::clear_inactive(&mut dp.ebpf)?;
        }
        Ok(dp)
    }

    /// Installs this agent's enforcement program in the dispatcher's program
    /// array: one atomic map write. Call after `apply` (the policy is in
    /// place) and before `attach`. For an adopted datapath this is the
    /// moment enforcement passes from the old agent's program to ours.
    pub fn install(&mut self) -> Result<()> {
        let name = names::PROGRAMS;
        let program_error = |source| DatapathError::Program {
            program: programs::INGRESS.into(),
            source,
        };
        let fd = xdp_program(&mut self.ebpf, programs::INGRESS)?
            .fd()
            .map_err(program_error)?
            .try_clone()
            .map_err(|e| program_error(aya::programs::ProgramError::IOError(e)))?;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { map: name })?;
        let mut array = aya::maps::ProgramArray::try_from(map)
            .map_err(|source| DatapathError::Map { map: name, source })?;
        array
            .set(PROG_INGRESS, &fd, 0)
            .map_err(|source| DatapathError::Install { map: name, source })?;
        self.install_egress()?;
        if let Some(slot) = self.handover.take() {
            handover::end(&self.pin_dir)?;
            // The earlier programs' generation, once this agent's replaced it.
            if self.live.is_some() {
                tables::delete_replaced_generation(&mut self.ebpf, slot)?;
            }
        }
        // The earlier programs are replaced: the flows they opened since the
        // load are the last to copy.
        self.carry_flows("install");
        self.flow_carry = None;
        Ok(())
    }

    /// Copies the live flows of the flow table this load recreated (another
    /// capacity) into the new one. A failure is logged, not fatal: the flows
    /// left behind are judged by the rules again, as before carrying existed.
    fn carry_flows(&mut self, stage: &'static str) {
        let Some(carry) = &self.flow_carry else {
            return;
        };
        match carry.copy_into(&mut self.ebpf) {
            Ok(c) if c.left > 0 => tracing::warn!(
                stage,
                copied = c.copied,
                left = c.left,
                "flow table recreated at another capacity: live flows copied over; those left \
                 behind (the least recently seen, beyond the new capacity) are judged by the \
                 rules again"
            ),
            Ok(c) => tracing::info!(
                stage,
                copied = c.copied,
                "flow table recreated at another capacity: live flows copied over"
            ),
            Err(e) => tracing::warn!(
                stage,
                error = %e,
                "cannot copy the live flows into the recreated flow table: their next packets \
                 are judged by the rules again"
            ),
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Whether an earlier agent's pinned maps were adopted.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Pinned maps an earlier version left with another layout, which this
    /// load created afresh (their state started empty, but for the flows of
    /// a flow table that only changed capacity).
    pub fn recreated(&self) -> &[Recreated] {
        &self.recreated
    }

    /// Maps an earlier version pinned that this one no longer has: unpinned at load.
    pub fn retired(&self) -> &[String] {
        &self.retired
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The live policy generation (0 before the first apply).
    pub fn generation(&self) -> Result<u64> {
        tables::live_generation(&self.ebpf)
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }
}

/// The global aya-log's kernel side reads its level from.
const KERNEL_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

/// aya-log's numeric level for `debug` (error 1, warn 2, info 3, debug 4, trace 5).
const KERNEL_DEBUG_LEVEL: u8 = 4;

impl Datapath {
    /// Starts reading the kernel's aya-log records (after `load_opts` with
    /// `kernel_debug`): each becomes a `tracing` event with target `kernel`.
    pub fn take_kernel_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, &KernelLog as &dyn log::Log).ok()
    }
}

/// Forwards aya-log records (the `log` crate's facade) to `tracing`.
struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // Info: `--kernel-debug` is the opt-in; no filter change needed.
        tracing::info!(target: "kernel", "{}", kernel_record(&record.args().to_string()));
    }

    fn flush(&self) {}
}

/// The kernel's record (numbers only, to keep it cheap to verify) in words:
/// `dir=0 verdict=1 reason=3 id=0 fam=4 proto=1 src=cb00:7107:: sport=0
/// dst=... dport=0` becomes `ingress drop deny_list id=0 proto=1
/// 203.0.113.7:0 -> ...:0`. Unknown shapes are passed through.
pub fn kernel_record(text: &str) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use tierguard_common::{Reason, Verdict};
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
    };
    let num = |k: &str| field(k).and_then(|v| v.parse::<u8>().ok());
    let (Some(dir), Some(verdict), Some(reason), Some(fam)) =
        (num("dir"), num("verdict"), num("reason"), num("fam"))
    else {
        return text.to_string();
    };
    let dir = if dir == 0 { "ingress" } else { "egress" };
    let verdict = Verdict::ALL
        .get(usize::from(verdict))
        .map_or("unknown", |v| v.name());
    let reason = Reason::from_u8(reason).map_or("unknown", Reason::name);
    let addr = |k: &str| -> Option<IpAddr> {
        let v6: Ipv6Addr = field(k)?.parse().ok()?;
        Some(if fam == 4 {
            let o = v6.octets();
            IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
        } else {
            IpAddr::V6(v6)
        })
    };
    let id = field("id").unwrap_or("-");
    match (fam, addr("src"), addr("dst")) {
        (4 | 6, Some(s), Some(d)) => format!(
            "{dir} {verdict} reason={reason} id={id} proto={} {}:{} -> {}:{}",
            field("proto").unwrap_or("-"),
            s,
            field("sport").unwrap_or("-"),
            d,
            field("dport").unwrap_or("-")
        ),
        _ => format!("{dir} {verdict} reason={reason} (not parsed)"),
    }
}

/// An XDP program of the object, by name.
pub(crate) fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| DatapathError::Program {
            program: name.to_string(),
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program {
            program: name.to_string(),
            source,
        })
}

fn load_xdp(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    xdp_program(ebpf, name)?
        .load()
        .map_err(|source| load_error(name, source))
}

/// A load failure in words: the verifier's log when the kernel gave one.
fn load_error(name: &str, source: aya::programs::ProgramError) -> DatapathError {
    match source {
        // An empty log means the kernel said no before verifying (EPERM, ENOMEM...).
        aya::programs::ProgramError::LoadError {
            ref verifier_log, ..
        } if !verifier_log.to_string().trim().is_empty() => DatapathError::Verifier {
            program: name.to_string(),
            log: verifier_log.to_string(),
        },
        source => DatapathError::Program {
            program: name.to_string(),
            source,
        },
    }
}

fn ensure_pin_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| DatapathError::PinDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| DatapathError::NotBpffs(dir.to_path_buf()))?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(DatapathError::NotBpffs(dir.to_path_buf()));
    }
    Ok(())
}

fn is_permission_error(e: &aya::EbpfError) -> bool {
    let text = format!("{e:?}");
    text.contains("PermissionDenied") || text.contains("Operation not permitted")
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it there.
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a struct we own; failure only matters on old kernels.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

#[cfg(test)]
mod kernel_record_tests {
    use super::kernel_record;

    #[test]
    fn kernel_records_are_put_in_words() {
        assert_eq!(
            kernel_record(
                "dir=0 verdict=1 reason=3 id=0 fam=4 proto=1 src=cb00:7107:: sport=0 dst=ae5:1:: dport=0"
            ),
            "ingress drop reason=deny_list id=0 proto=1 203.0.113.7:0 -> 10.229.0.1:0"
        );
        assert_eq!(
            kernel_record(
                "dir=1 verdict=2 reason=14 id=3 fam=6 proto=6 src=fd00::1 sport=1 dst=fd00::2 dport=443"
            ),
            "egress audit reason=rule_audit id=3 proto=6 fd00::1:1 -> fd00::2:443"
        );
        assert_eq!(
            kernel_record(
                "dir=0 verdict=1 reason=4 id=65535 fam=0 proto=0 src=:: sport=0 dst=:: dport=0"
            ),
            "ingress drop reason=truncated (not parsed)"
        );
        assert_eq!(kernel_record("something else"), "something else");
    }
}
