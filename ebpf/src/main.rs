//! tierguard kernel programs. Thin: parsing and decisions live in
//! `tierguard-common`; this crate reads packet memory, maps and counters.
#![no_std]
#![no_main]

mod bytes;
mod lists;
mod maps;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use tierguard_common::{
    decide, maps::Direction, parse::parse, Reason, Verdict,
};

use crate::bytes::XdpBytes;

/// Ingress enforcement on each configured interface.
#[xdp]
pub fn tierguard_ingress(ctx: XdpContext) -> u32 {
    let bytes = XdpBytes::new(&ctx);
    let len = bytes.frame_len();
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let decision = match parse(&bytes) {
        Err(reason) => decide::Decision::new(reason),
        Ok(p) if p.family == 0 => decide::Decision::new(Reason::NonIp),
        Ok(p) => {
            let slot = maps::active_slot();
            let hit = lists::lookup_source(slot, &p);
            decide::ingress(hit)
        }
    };
    stats::count(ifindex, Direction::Ingress, &decision, len);
    match decision.reason.verdict() {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
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
