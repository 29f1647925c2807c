//! tierguard kernel programs. Thin: parsing and decisions live in
//! `tierguard-common`; this crate reads packet memory, maps and counters.
#![no_std]
#![no_main]

mod bench;
mod bytes;
mod debug;
mod events;
mod limits;
mod lists;
mod maps;
mod segment;
mod stats;

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use tierguard_common::{
    Reason, Verdict,
    decide::{self, Decision},
    maps::{Direction, PROG_EGRESS, PROG_INGRESS},
    packet::Packet,
    parse::parse,
};

use crate::bytes::PacketBytes;
use crate::segment::KernelTables;

/// TC verdict "pass, and let later programs on the hook see it" (TCX_NEXT).
const TC_ACT_UNSPEC: i32 = -1;

/// Attached to each configured interface. It only tail-calls the installed
/// enforcement program, so a new agent swaps enforcement with one map write
/// and never re-attaches: re-attaching (even an atomic link update) lets a
/// few packets bypass XDP on some drivers. See docs/design/pinning-and-restarts.md.
#[xdp]
pub fn tierguard_dispatch(ctx: XdpContext) -> u32 {
    // SAFETY: on success the tail call does not return.
    unsafe { maps::PROGRAMS.tail_call(&ctx, PROG_INGRESS) };
    // Nothing installed: fail open (never cut a node off), but count it.
    let len = (ctx.data_end() - ctx.data()) as u32;
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    stats::count(
        ifindex,
        Direction::Ingress,
        &Decision::new(Reason::NoProgram),
        len,
    );
    xdp_action::XDP_PASS
}

/// Ingress enforcement: parse, decide, count.
#[xdp]
pub fn tierguard_ingress(ctx: XdpContext) -> u32 {
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let bytes = PacketBytes::xdp(&ctx);
    match enforce(&ctx, &bytes, bytes.frame_len(), ifindex, Direction::Ingress) {
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Pass | Verdict::Audit => xdp_action::XDP_PASS,
    }
}

/// Attached on clsact egress of each configured interface; the egress twin
/// of `tierguard_dispatch`.
#[classifier]
pub fn tierguard_egress_dispatch(ctx: TcContext) -> i32 {
    // SAFETY: on success the tail call does not return.
    unsafe { maps::EGRESS_PROGRAMS.tail_call(&ctx, PROG_EGRESS) };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    stats::count(
        ifindex,
        Direction::Egress,
        &Decision::new(Reason::NoProgram),
        ctx.len(),
    );
    TC_ACT_UNSPEC
}

/// Egress enforcement: what the node's own workloads may send.
#[classifier]
pub fn tierguard_egress(ctx: TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let bytes = PacketBytes::tc(&ctx);
    match enforce(&ctx, &bytes, ctx.len(), ifindex, Direction::Egress) {
        Verdict::Drop => TC_ACT_SHOT as i32,
        Verdict::Pass | Verdict::Audit => TC_ACT_UNSPEC,
    }
}

/// Benchmark only: an address that replaces the parsed one.
#[derive(Clone, Copy)]
enum Override {
    None,
    Src([u8; 16]),
    Dst([u8; 16]),
    /// A source address and a source port.
    SrcPort([u8; 16], u16),
}

/// The enforcement path, shared by both directions. `len` is the frame's
/// length as counted: on TC the socket buffer's, paged data included (a GSO
/// send of 64 KiB counts 64 KiB, though only its headers are in `bytes`).
#[inline(always)]
fn enforce<C: EbpfContext>(
    ctx: &C,
    bytes: &PacketBytes,
    len: u32,
    ifindex: u32,
    dir: Direction,
) -> Verdict {
    enforce_with(ctx, bytes, len, ifindex, dir, Override::None)
}

/// The enforcement path with the benchmark's address override.
#[inline(always)]
fn enforce_with<C: EbpfContext>(
    ctx: &C,
    bytes: &PacketBytes,
    len: u32,
    ifindex: u32,
    dir: Direction,
    over: Override,
) -> Verdict {
    let slot = maps::active_slot();
    let meta = segment::meta(slot);
    // One packet record in this frame, filled in place: moving it through
    // `Result`s and `Option`s would copy it three times over the BPF stack.
    let mut p = Packet::EMPTY;
    let parsed = parse_packet(bytes, &mut p);
    let decision = if parsed != PARSED {
        decide::refused(Reason::from_u8(parsed).unwrap_or(Reason::Malformed), meta)
    } else if p.family == 0 {
        Decision::new(Reason::NonIp)
    } else {
        // The parser counts what it can read; the frame may hold more.
        p.len = len;
        match over {
            Override::None => {}
            Override::Src(a) => p.src = a,
            Override::Dst(a) => p.dst = a,
            Override::SrcPort(a, port) => {
                p.src = a;
                p.sport = port;
            }
        }
        let d = decide_packet(dir, slot, &p, meta, ifindex);
        // Checked here, not in the callee: a call costs more than the check.
        if segment::after_has_work(meta, &d) {
            segment::after(dir, meta, &p, &d, len);
        }
        d
    };
    let packet = (parsed == PARSED && p.family != 0).then_some(&p);
    stats::count(ifindex, dir, &decision, len);
    debug::decision(ctx, dir, &decision, packet);
    if decision.verdict != Verdict::Pass {
        events::on_drop(ifindex, dir, &decision, packet, len);
    }
    decision.verdict
}

// The stages below are BPF-to-BPF calls, not inlined: each gets its own
// stack frame, released before the next, so together they fit the 512-byte
// BPF stack that one inlined body would exceed.

/// `parse_packet`'s result when the packet was parsed (not a `Reason`).
const PARSED: u8 = u8::MAX;

/// Parses into `out`; returns `PARSED` or the reason the frame is refused.
#[inline(never)]
fn parse_packet(bytes: &PacketBytes, out: &mut Packet) -> u8 {
    match parse(bytes) {
        Ok(p) => {
            *out = p;
            PARSED
        }
        Err(reason) => reason as u8,
    }
}

#[inline(never)]
fn decide_packet(
    dir: Direction,
    slot: u8,
    p: &Packet,
    meta: &'static tierguard_common::segment::SegMeta,
    ifindex: u32,
) -> Decision {
    decide::decide(
        dir,
        p,
        meta,
        &KernelTables {
            slot,
            meta,
            ifindex,
        },
    )
}

/// Benchmark only: the ingress path with the source address taken from a
/// rotating table, so one BPF_PROG_TEST_RUN covers many keys.
#[xdp]
pub fn tierguard_bench_ingress(ctx: XdpContext) -> u32 {
    match bench::next_source() {
        Some(src) => bench_ingress(&ctx, Override::Src(src)),
        None => xdp_action::XDP_PASS,
    }
}

/// Benchmark only: as `tierguard_bench_ingress`, with a source port that
/// changes each time the rotation goes round, so that every packet is a
/// new flow's (for 65,536 rounds).
#[xdp]
pub fn tierguard_bench_ingress_new(ctx: XdpContext) -> u32 {
    match bench::next_source_and_round() {
        Some((src, round)) => bench_ingress(&ctx, Override::SrcPort(src, round)),
        None => xdp_action::XDP_PASS,
    }
}

/// The ingress path with the benchmark's override, as an XDP action.
#[inline(always)]
fn bench_ingress(ctx: &XdpContext, over: Override) -> u32 {
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let bytes = PacketBytes::xdp(ctx);
    match enforce_with(
        ctx,
        &bytes,
        bytes.frame_len(),
        ifindex,
        Direction::Ingress,
        over,
    ) {
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Pass | Verdict::Audit => xdp_action::XDP_PASS,
    }
}

/// Benchmark only: the same rotation, then pass. Subtracted from the above.
#[xdp]
pub fn tierguard_bench_baseline(_ctx: XdpContext) -> u32 {
    let Some(src) = bench::next_source() else {
        return xdp_action::XDP_PASS;
    };
    // Depend on the value so the rotation is not optimised away.
    if src[0] == 0xff && src[15] == 0xfe {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}

/// Passes everything: loaded beside the real program so the benchmark can
/// subtract the cost of running any XDP program at all.
#[xdp]
pub fn tierguard_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmark only: the egress path with the destination address taken from
/// the rotating table (the node is the source on egress).
#[classifier]
pub fn tierguard_bench_egress(ctx: TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(dst) = bench::next_source() else {
        return TC_ACT_UNSPEC;
    };
    match enforce_with(
        &ctx,
        &PacketBytes::tc(&ctx),
        ctx.len(),
        ifindex,
        Direction::Egress,
        Override::Dst(dst),
    ) {
        Verdict::Drop => TC_ACT_SHOT as i32,
        Verdict::Pass | Verdict::Audit => TC_ACT_UNSPEC,
    }
}

/// Benchmark only: the rotation alone on TC. Subtracted from the above.
#[classifier]
pub fn tierguard_bench_egress_baseline(_ctx: TcContext) -> i32 {
    let Some(dst) = bench::next_source() else {
        return TC_ACT_UNSPEC;
    };
    if dst[0] == 0xff && dst[15] == 0xfe {
        return TC_ACT_SHOT as i32;
    }
    TC_ACT_UNSPEC
}

/// The egress benchmark's empty program.
#[classifier]
pub fn tierguard_egress_baseline(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
