//! Sampled security events into the ring buffer. Off by default: then the
//! only cost on a drop is the read of `TG_EVENT_CONFIG`.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use tierguard_common::{
    decide::Decision,
    event::{self, EVENT_VERSION, Event, GLOBAL_BUCKET, KIND_BLOCK_STARTED, WAKEUP_EVERY},
    maps::Direction,
    packet::Packet,
};

use crate::maps::{EVENT_CONFIG, EVENT_SAMPLER, EVENT_SOURCES, EVENTS};

/// Submit without waking the consumer (it drains on a timer).
const BPF_RB_NO_WAKEUP: u64 = 1;
/// Submit and wake the consumer.
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Records an event for a dropped or audited packet if events are on and sampling allows.
/// `p` is the parsed packet, or `None` when parsing failed.
/// Inline, so that with events off a drop costs one array read and no call.
#[inline(always)]
pub fn on_drop(ifindex: u32, dir: Direction, d: &Decision, p: Option<&Packet>, len: u32) {
    let cfg = match EVENT_CONFIG.get(0) {
        Some(c) if c.enabled != 0 => c,
        _ => return,
    };
    let Some(b) = EVENT_SAMPLER.get_ptr_mut(d.reason as u32) else {
        return;
    };
    // SAFETY: per-CPU entry, no other writer on this CPU while we run.
    let b = unsafe { &mut *b };
    // Sampling runs on a tick-granular clock: jiffies when the agent told us
    // their length (the verifier inlines bpf_jiffies64 into a memory read),
    // else the coarse clock. The suppressed path must stay cheap (inline,
    // no call); the record's time is read precisely, only when an event is
    // emitted.
    let coarse = if cfg.ns_per_jiffy != 0 {
        (unsafe { bpf_jiffies64() }) * cfg.ns_per_jiffy
    } else {
        unsafe { bpf_ktime_get_coarse_ns() }
    };
    if !event::sample_reason(b, cfg, coarse) {
        return;
    }
    // The reason has a token: now the source's budget, then the global one.
    let src = match p {
        Some(p) => &p.src,
        None => &[0u8; 16],
    };
    let slot = event::source_slot(src, d.reason as u8, cfg.source_seed);
    let Some(s) = EVENT_SOURCES.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: per-CPU entry, as above.
    let s = unsafe { &mut *s };
    if !event::sample_source(b, s, cfg, coarse) {
        return;
    }
    let Some(g) = EVENT_SAMPLER.get_ptr_mut(GLOBAL_BUCKET) else {
        return;
    };
    // SAFETY: as above; GLOBAL_BUCKET is past every reason's entry.
    if !event::sample_global(b, s, unsafe { &mut *g }, cfg, coarse) {
        return;
    }
    emit(ifindex, dir, d, p, len);
}

/// A call of its own, made only for an event sampling let through: the
/// record is built on its stack frame.
#[inline(never)]
fn emit(ifindex: u32, dir: Direction, d: &Decision, p: Option<&Packet>, len: u32) {
    let (Some(b), Some(g)) = (
        EVENT_SAMPLER.get_ptr_mut(d.reason as u32),
        EVENT_SAMPLER.get_ptr_mut(GLOBAL_BUCKET),
    ) else {
        return;
    };
    // SAFETY: per-CPU entries, no other writer on this CPU while we run.
    let (b, g) = unsafe { (&mut *b, &mut *g) };
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        event::lost(b);
        return;
    };
    let mut e = Event::EMPTY;
    e.version = EVENT_VERSION;
    e.direction = dir as u8;
    e.verdict = d.verdict as u8;
    e.reason = d.reason as u8;
    e.list_id = d.id;
    e.src_zone = d.src_zone;
    e.dst_zone = d.dst_zone;
    e.ifindex = ifindex;
    e.time_ns = now;
    e.suppressed = b.pending;
    e.len = len;
    if let Some(p) = p {
        e.family = p.family;
        e.proto = p.proto;
        e.tcp_flags = p.tcp_flags;
        e.icmp_type = p.icmp_type;
        e.icmp_code = p.icmp_code;
        e.packet_flags = p.flags;
        e.src = p.src;
        e.dst = p.dst;
        e.sport = p.sport;
        e.dport = p.dport;
    }
    entry.write(e);
    event::emitted(b);
    // The global bucket's `pending` counts this CPU's emitted events (see
    // `Bucket`): every WAKEUP_EVERY-th submit wakes the consumer.
    g.pending = g.pending.wrapping_add(1);
    let flags = if g.pending % WAKEUP_EVERY == 0 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
}

/// Records that limit `limit` started a block, when events are on: one
/// record per block, not sampled (a block lasts at least a second, and the
/// blocked table is bounded). Written in place in the ring, as the stack of
/// the deepest stage has no room for a record. False if the ring was full.
#[inline(never)]
pub fn on_block_started(ifindex: u32, p: &Packet, limit: u16, block_len: u8, secs: u32) -> bool {
    match EVENT_CONFIG.get(0) {
        Some(c) if c.enabled != 0 => {}
        _ => return true,
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        return false;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved record of the right size; every field
    // is written before it is submitted.
    unsafe {
        (*e).version = EVENT_VERSION;
        (*e).direction = Direction::Ingress as u8;
        (*e).verdict = tierguard_common::Verdict::Drop as u8;
        (*e).reason = tierguard_common::Reason::Limit as u8;
        (*e).family = p.family;
        (*e).proto = p.proto;
        (*e).tcp_flags = p.tcp_flags;
        (*e).icmp_type = p.icmp_type;
        (*e).icmp_code = p.icmp_code;
        (*e).packet_flags = p.flags;
        (*e).list_id = limit;
        (*e).ifindex = ifindex;
        (*e).time_ns = bpf_ktime_get_ns();
        (*e).suppressed = 0;
        (*e).src = p.src;
        (*e).dst = p.dst;
        (*e).sport = p.sport;
        (*e).dport = p.dport;
        (*e).len = p.len;
        (*e).kind = KIND_BLOCK_STARTED;
        (*e).block_len = block_len;
        (*e)._pad = 0;
        (*e).block_secs = secs;
    }
    entry.submit(BPF_RB_FORCE_WAKEUP);
    true
}
