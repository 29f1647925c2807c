//! tierguard kernel programs. Thin: parsing and decisions live in
//! `tierguard-common`; this crate reads packet memory, maps and counters.
#![no_std]
#![no_main]

mod bench;
mod bytes;
mod events;
mod lists;
mod maps;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use tierguard_common::{
    Reason, Verdict, decide,
    maps::{Direction, PROG_INGRESS},
    parse::parse,
};

use crate::bytes::XdpBytes;

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
        &decide::Decision::new(Reason::NoProgram),
        len,
    );
    xdp_action::XDP_PASS
}

/// Ingress enforcement: parse, decide, count.
#[xdp]
pub fn tierguard_ingress(ctx: XdpContext) -> u32 {
    enforce(&ctx, None)
}

/// The ingress path, shared by the production and benchmark entry points.
/// `src_override` (benchmark only) replaces the parsed source address.
#[inline(always)]
fn enforce(ctx: &XdpContext, src_override: Option<[u8; 16]>) -> u32 {
    let bytes = XdpBytes::new(ctx);
    let len = bytes.frame_len();
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let parsed = parse(&bytes);
    let (decision, packet) = match parsed {
        Err(reason) => (decide::Decision::new(reason), None),
        Ok(p) if p.family == 0 => (decide::Decision::new(Reason::NonIp), None),
        Ok(mut p) => {
            if let Some(src) = src_override {
                p.src = src;
            }
            let slot = maps::active_slot();
            let hit = lists::lookup_source(slot, &p);
            (decide::ingress(hit), Some(p))
        }
    };
    stats::count(ifindex, Direction::Ingress, &decision, len);
    match decision.verdict {
        Verdict::Pass | Verdict::Audit => xdp_action::XDP_PASS,
        Verdict::Drop => {
            events::on_drop(ifindex, Direction::Ingress, &decision, packet.as_ref(), len);
            xdp_action::XDP_DROP
        }
    }
}

/// Benchmark only: the ingress path with the source address taken from a
/// rotating table, so one BPF_PROG_TEST_RUN covers many keys.
#[xdp]
pub fn tierguard_bench_ingress(ctx: XdpContext) -> u32 {
    enforce(&ctx, Some(bench::next_source()))
}

/// Benchmark only: the same rotation, then pass. Subtracted from the above.
#[xdp]
pub fn tierguard_bench_baseline(_ctx: XdpContext) -> u32 {
    let src = bench::next_source();
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
