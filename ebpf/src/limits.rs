//! The blocked-sources check and the limit stage over the BPF maps. What
//! matches, which key, which slot and what is admitted are decided by
//! `tierguard_common::limiter`; this module reads and writes the maps.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_loop},
    maps::lpm_trie::Key,
};
use tierguard_common::{
    limiter::{
        Buckets, Choice, LIMIT_STATS, LSTAT_AUDITED, LSTAT_BLOCK_EVENT_LOST, LSTAT_BLOCK_FAILED,
        LSTAT_BLOCKS, LSTAT_DROPPED, LSTAT_OVERFLOW, LSTAT_PASSED, LimitAction, LimitOutcome,
        LimitSpec, MAX_BLOCK_NESTING, MAX_LIMITS, PORT_WORDS, Per, SLOTS_PER_LIMIT, Slot, admit,
        block_len, candidates, choose_with, idle, key, mask_v4, mask_v6, matches, take,
    },
    packet::Packet,
};

use crate::events;
use crate::maps::{
    BLOCK_SCRATCH, BLOCKS_PRESENT, BLOCKS_V4, BLOCKS_V6, LIMIT_OUTCOME, LIMIT_PORTS, LIMIT_SHARED,
    LIMIT_SLOTS, LIMIT_STATS_MAP, LIMITS,
};
use crate::segment::zone_of;

/// `blocked_origin`'s result when no block is in force.
const NOT_BLOCKED: u32 = u32::MAX;
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

#[inline(always)]
pub fn blocked(p: &Packet) -> Option<u16> {
    if BLOCKS_PRESENT.get(0).is_none_or(|n| *n == 0) {
        return None;
    }
    match blocked_origin(p) {
        NOT_BLOCKED => None,
        origin => Some(origin as u16),
    }
}

/// The origin of the longest block in force that covers the source. An
/// expired entry (not yet removed by the agent) is looked past: the next
/// lookup is limited to shorter prefixes. The clock is read only on a hit.
/// Not inlined, and returning a plain integer, for the verifier (see lists.rs).
#[inline(never)]
fn blocked_origin(p: &Packet) -> u32 {
    let v4 = p.family == 4;
    let mut len: u32 = if v4 { 32 } else { 128 };
    let mut now = 0;
    for _ in 0..MAX_BLOCK_NESTING {
        let hit = if v4 {
            BLOCKS_V4.get(Key::new(len, [p.src[0], p.src[1], p.src[2], p.src[3]]))
        } else {
            BLOCKS_V6.get(Key::new(len, p.src))
        };
        let Some(b) = hit else {
            return NOT_BLOCKED;
        };
        if now == 0 {
            now = unsafe { bpf_ktime_get_coarse_ns() };
        }
        if b.active(now) {
            return u32::from(b.origin);
        }
        let entry_len = u32::from(b.len);
        if entry_len == 0 || entry_len > len {
            return NOT_BLOCKED;
        }
        len = entry_len - 1;
    }
    NOT_BLOCKED
}

/// The outcome is handed over through a per-CPU slot rather than returned:
/// read back from a map it is one unknown value to the verifier, so the
/// stages after this one are explored once, not once for each value the loop
/// can leave (returned, the program took 590,000 verified instructions
/// instead of 406,000 when measured).
#[inline(always)]
pub fn limits(slot: u8, p: &Packet, ifindex: u32) -> LimitOutcome {
    // No limit configured: one array read (the verifier inlines it).
    if !LIMITS
        .get(u32::from(slot) * MAX_LIMITS)
        .is_some_and(LimitSpec::used)
    {
        return LimitOutcome::PASS;
    }
    let Some(out) = LIMIT_OUTCOME.get_ptr_mut(0) else {
        return LimitOutcome::PASS;
    };
    limit_stage(slot, p, ifindex, out);
    // SAFETY: per-CPU value written by `limit_stage` on this CPU just now.
    LimitOutcome(unsafe { *out })
}

#[inline(always)]
fn bump(limit: u32, stat: u32) {
    if let Some(c) = LIMIT_STATS_MAP.get_ptr_mut(limit * LIMIT_STATS + stat) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// `charge`'s flag: the refused packet's key is to be blocked.
const START_BLOCK: u32 = 1 << 24;

/// What the limit loop carries from one limit to the next.
#[repr(C)]
struct StageCtx {
    p: *const Packet,
    ifindex: u32,
    slot: u32,
    outcome: u32,
    _pad: u32,
}

/// Charges the packet to each matching limit of generation `slot`, in
/// order, until one refuses it; the outcome goes to `*out`. The loop is
/// `bpf_loop`, whose body the verifier checks as one function however many
/// limits there are (unrolled, 16 limits exhausted its instruction budget),
/// and matching, charging and blocking are calls side by side rather than
/// nested, so their frames together fit the 512-byte stack.
#[inline(never)]
fn limit_stage(slot: u8, p: &Packet, ifindex: u32, out: *mut u32) {
    let mut ctx = StageCtx {
        p,
        ifindex,
        slot: u32::from(slot),
        outcome: LimitOutcome::PASS.0,
        _pad: 0,
    };
    // SAFETY: the callback uses `ctx` only while bpf_loop runs.
    unsafe {
        bpf_loop(
            MAX_LIMITS,
            limit_step as *mut c_void,
            &mut ctx as *mut StageCtx as *mut c_void,
            0,
        );
        *out = ctx.outcome;
    }
}

/// One limit: 0 to go on to the next, 1 to stop (past the last limit, or
/// the packet is dropped).
extern "C" fn limit_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `StageCtx` of `limit_stage`'s frame.
    let c = unsafe { &mut *(ctx as *mut StageCtx) };
    let i = index as u32 & (MAX_LIMITS - 1);
    let slot = (c.slot & 1) as u8;
    match LIMITS.get(u32::from(slot) * MAX_LIMITS + i) {
        Some(spec) if spec.used() => {}
        _ => return 1,
    }
    // SAFETY: the packet record of the enforcing frame, alive for the loop.
    let p = unsafe { &*c.p };
    if match_one(slot, i, p, c.ifindex) == 0 {
        return 0;
    }
    let r = charge(slot, i, p);
    if r & START_BLOCK != 0 {
        block(slot, i, p, c.ifindex);
    }
    let r = LimitOutcome(r & !START_BLOCK);
    if r.dropped_by().is_some() {
        c.outcome = r.0;
        return 1;
    }
    // The first audit is reported; later limits may still drop.
    if c.outcome == LimitOutcome::PASS.0 {
        c.outcome = r.0;
    }
    0
}

/// 1 if limit `i` of generation `slot` applies to the packet, else 0.
#[inline(never)]
fn match_one(slot: u8, i: u32, p: &Packet, ifindex: u32) -> u32 {
    let entry = u32::from(slot) * MAX_LIMITS + i;
    let Some(spec) = LIMITS.get(entry) else {
        return 0;
    };
    let hit = matches(
        spec,
        p,
        ifindex,
        |port| port_set(entry, port),
        || zone_of(slot, p.family, &p.dst),
    );
    u32::from(hit)
}

/// Whether `port` is in the bitmap of limit entry `entry` (slot and id).
#[inline(always)]
fn port_set(entry: u32, port: u16) -> bool {
    let word = entry * PORT_WORDS + u32::from(port >> 6);
    LIMIT_PORTS
        .get(word)
        .is_some_and(|w| w & (1u64 << (port & 63)) != 0)
}

/// Charges one packet to limit `i`: the key's slot, a slot it takes over, or
/// the overflow bucket; or the bucket of a global limit. Returns the
/// outcome, with `START_BLOCK` when the refusal starts a block.
#[inline(never)]
fn charge(slot: u8, i: u32, p: &Packet) -> u32 {
    let Some(spec) = LIMITS.get(u32::from(slot) * MAX_LIMITS + i) else {
        return LimitOutcome::PASS.0;
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let mut overflowed = false;
    let admitted = if spec.is_per_key() {
        let k = key(spec, p);
        let (ia, ib) = candidates(spec.seed, &k);
        let base = i * SLOTS_PER_LIMIT;
        let (Some(a), Some(b)) = (
            LIMIT_SLOTS.get_ptr_mut(base + ia),
            LIMIT_SLOTS.get_ptr_mut(base + ib),
        ) else {
            return LimitOutcome::PASS.0;
        };
        // SAFETY: two distinct entries of a shared array; racing CPUs may
        // interleave their updates (approximate by a few packets, see
        // docs/design/limits.md), which never breaks the bucket bounds.
        let (a, b) = unsafe { (&mut *a, &mut *b) };
        let choice = choose_with(a, b, &k, |s| slot_idle(s, spec, now) != 0);
        let s = match choice {
            Choice::Own(0) | Choice::Take(0) => Some(a),
            Choice::Own(_) | Choice::Take(_) => Some(b),
            Choice::Overflow => None,
        };
        match s {
            Some(s) => {
                if matches!(choice, Choice::Take(_)) {
                    take(s, &k);
                }
                admit_in(&mut s.buckets, spec, 0, now, p.len) != 0
            }
            None => {
                overflowed = true;
                bump(i, LSTAT_OVERFLOW);
                admit_shared(i, spec, now, p.len)
            }
        }
    } else {
        admit_shared(i, spec, now, p.len)
    };
    if admitted {
        bump(i, LSTAT_PASSED);
        return LimitOutcome::PASS.0;
    }
    match LimitAction::from_u8(spec.action) {
        Some(LimitAction::Audit) => {
            bump(i, LSTAT_AUDITED);
            LimitOutcome::audit(i as u16).0
        }
        action => {
            bump(i, LSTAT_DROPPED);
            // A refusal of the shared overflow says nothing about this key:
            // only a key's own bucket starts a block.
            let blocks = matches!(action, Some(LimitAction::Block))
                && !overflowed
                && matches!(
                    Per::from_u8(spec.per),
                    Some(Per::Source | Per::SourcePrefix)
                );
            LimitOutcome::drop(i as u16).0 | if blocks { START_BLOCK } else { 0 }
        }
    }
}

/// Whether a slot may be taken over, as a plain integer. Not inlined, like
/// `admit_in`: their branches then meet at the return instead of multiplying
/// through the rest of `charge` in the verifier.
#[inline(never)]
fn slot_idle(s: &Slot, spec: &LimitSpec, now: u64) -> u32 {
    u32::from(idle(s, spec, now))
}

/// `admit` against the per-key rates, or the shared ones if `shared` is 1.
#[inline(never)]
fn admit_in(b: &mut Buckets, spec: &LimitSpec, shared: u32, now: u64, len: u32) -> u32 {
    let rates = if shared != 0 {
        &spec.shared
    } else {
        &spec.per_key
    };
    u32::from(admit(b, spec.flags, rates, now, len))
}

#[inline(always)]
fn admit_shared(i: u32, spec: &LimitSpec, now: u64, len: u32) -> bool {
    match LIMIT_SHARED.get_ptr_mut(i) {
        // SAFETY: shared map value; racing updates as above.
        Some(b) => admit_in(unsafe { &mut *b }, spec, 1, now, len) != 0,
        None => true,
    }
}

/// Blocks the source (or its prefix) of a packet that crossed limit `i`
/// and reports it: one insert when the threshold is crossed, after which the
/// blocked stage drops the source before it reaches the limits.
#[inline(never)]
fn block(slot: u8, i: u32, p: &Packet, ifindex: u32) {
    let Some(spec) = LIMITS.get(u32::from(slot) * MAX_LIMITS + i) else {
        return;
    };
    let len = block_len(spec, p.family);
    match start_block(slot, i, p) {
        BLOCK_STARTED => {
            bump(i, LSTAT_BLOCKS);
            let secs = (spec.block_ns / 1_000_000_000) as u32;
            if !events::on_block_started(ifindex, p, i as u16, len, secs) {
                bump(i, LSTAT_BLOCK_EVENT_LOST);
            }
        }
        BLOCK_FAILED => bump(i, LSTAT_BLOCK_FAILED),
        _ => {}
    }
}

const BLOCK_STARTED: u32 = 0;
/// Another CPU blocked the key an instant before: nothing to count or report.
const BLOCK_RACED: u32 = 1;
/// The blocked table is full.
const BLOCK_FAILED: u32 = 2;

/// Inserts the block. An expired entry the agent has not removed yet is
/// replaced; a live one means another CPU was first.
#[inline(never)]
fn start_block(slot: u8, i: u32, p: &Packet) -> u32 {
    let Some(spec) = LIMITS.get(u32::from(slot) * MAX_LIMITS + i) else {
        return BLOCK_RACED;
    };
    let Some(v) = BLOCK_SCRATCH.get_ptr_mut(0) else {
        return BLOCK_FAILED;
    };
    // SAFETY: per-CPU scratch value, used only here.
    let v = unsafe { &mut *v };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let len = block_len(spec, p.family);
    v.until_ns = now.saturating_add(spec.block_ns);
    v.created_ns = now;
    v.origin = i as u16;
    v.len = len;
    v.flags = 0;
    v.uid = 0;
    if let Some(present) = BLOCKS_PRESENT.get_ptr_mut(0) {
        // SAFETY: a shared u32 written whole. Set before the insert: the
        // agent clears it only when it finds both tries empty, and looks again.
        unsafe { *present = 1 };
    }
    let (inserted, old) = if p.family == 4 {
        let k = Key::new(
            u32::from(len),
            mask_v4([p.src[0], p.src[1], p.src[2], p.src[3]], len),
        );
        if BLOCKS_V4.insert(&k, &*v, BPF_NOEXIST).is_ok() {
            (true, None)
        } else {
            let old = BLOCKS_V4
                .get(&k)
                .filter(|o| o.len == len)
                .map(|o| o.until_ns);
            let replaced =
                old.is_some_and(|u| u <= now) && BLOCKS_V4.insert(&k, &*v, BPF_EXIST).is_ok();
            (replaced, old)
        }
    } else {
        let k = Key::new(u32::from(len), mask_v6(&p.src, len));
        if BLOCKS_V6.insert(&k, &*v, BPF_NOEXIST).is_ok() {
            (true, None)
        } else {
            let old = BLOCKS_V6
                .get(&k)
                .filter(|o| o.len == len)
                .map(|o| o.until_ns);
            let replaced =
                old.is_some_and(|u| u <= now) && BLOCKS_V6.insert(&k, &*v, BPF_EXIST).is_ok();
            (replaced, old)
        }
    };
    match (inserted, old) {
        (true, _) => BLOCK_STARTED,
        (false, Some(until)) if until > now => BLOCK_RACED,
        _ => BLOCK_FAILED,
    }
}
