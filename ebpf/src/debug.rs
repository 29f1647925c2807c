//! Kernel debug logging (aya-log), off unless the agent runs with
//! `--kernel-debug`: the level is a global the agent sets when it loads the
//! programs, so when off a packet pays one global read and no call.

use aya_ebpf::{EbpfContext, macros::map, maps::PerCpuArray};
use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
};
use tierguard_common::{Verdict, decide::Decision, maps::Direction, packet::Packet};

/// What is logged, handed over in a per-CPU slot rather than as arguments:
/// the logging call then starts from the same state whatever path led to
/// it, which keeps the verifier's work bounded.
#[derive(Clone, Copy)]
pub struct LogRecord {
    pub packet: Packet,
    pub parsed: bool,
    pub dir: Direction,
    pub verdict: Verdict,
    pub reason: tierguard_common::Reason,
    pub id: u16,
}

#[map(name = "TG_DEBUG_RECORD")]
static RECORD: PerCpuArray<LogRecord> = PerCpuArray::with_max_entries(1, 0);

/// Logs drops and audits when kernel debug logging is on.
#[inline(always)]
pub fn decision<C: EbpfContext>(ctx: &C, dir: Direction, d: &Decision, p: Option<&Packet>) {
    if d.verdict == Verdict::Pass || !level_enabled(Level::Debug) {
        return;
    }
    let Some(r) = RECORD.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, no other writer on this CPU while we run.
    let r = unsafe { &mut *r };
    r.parsed = p.is_some();
    if let Some(p) = p {
        r.packet = *p;
    }
    r.dir = dir;
    r.verdict = d.verdict;
    r.reason = d.reason;
    r.id = d.id;
    log(ctx);
}

#[inline(never)]
fn log<C: EbpfContext>(ctx: &C) {
    let Some(r) = RECORD.get(0) else {
        return;
    };
    // Numbers only: each string argument is copied byte by byte, and the
    // verifier walks every copy. The agent names them (`KernelLog`).
    let p = &r.packet;
    debug!(
        ctx,
        "dir={} verdict={} reason={} id={} fam={} proto={} src={:i} sport={} dst={:i} dport={}",
        r.dir as u8,
        r.verdict as u8,
        r.reason as u8,
        r.id,
        if r.parsed { p.family } else { 0 },
        p.proto,
        p.src,
        p.sport,
        p.dst,
        p.dport
    );
}
