//! The one bounds-check primitive: every packet read goes through here.

use aya_ebpf::programs::{TcContext, XdpContext};
use tierguard_common::parse::{Bytes, MAX_OFFSET};

/// The readable bytes of a packet: XDP's frame or a socket buffer's linear part.
pub struct PacketBytes {
    start: usize,
    end: usize,
}

/// Headers the parser may need: at most two VLAN tags, IPv6 with a bounded
/// extension chain and a TCP header fit well within this.
const TC_PULL: u32 = 256;

impl PacketBytes {
    #[inline(always)]
    pub fn xdp(ctx: &XdpContext) -> Self {
        PacketBytes {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// On TC, headers may sit outside the linear part of a socket buffer
    /// (GSO, some drivers): pull them in first so the parser sees them.
    #[inline(always)]
    pub fn tc(ctx: &TcContext) -> Self {
        let len = ctx.len();
        let want = if len < TC_PULL { len } else { TC_PULL };
        if ((ctx.data_end() - ctx.data()) as u32) < want {
            // On failure the parser reports `truncated`, as for a short frame.
            let _ = ctx.pull_data(want);
        }
        PacketBytes {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// The readable length: the whole frame on XDP (TC counts `ctx.len()`).
    #[inline(always)]
    pub fn frame_len(&self) -> u32 {
        (self.end - self.start) as u32
    }

    /// Pointer to `N` readable bytes at `off`, or `None` past the end.
    #[inline(always)]
    fn at<const N: usize>(&self, off: usize) -> Option<*const [u8; N]> {
        if off > MAX_OFFSET {
            return None;
        }
        let p = self.start + off;
        if p + N > self.end {
            return None;
        }
        Some(p as *const [u8; N])
    }
}

impl Bytes for PacketBytes {
    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline(always)]
    fn has(&self, end: usize) -> bool {
        end <= MAX_OFFSET && self.start + end <= self.end
    }

    #[inline(always)]
    fn array_at<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // SAFETY: `at` checked that the N bytes lie inside the packet; the
        // read is byte-wise, so alignment does not matter.
        self.at::<N>(off)
            .map(|p| unsafe { core::ptr::read_unaligned(p) })
    }
}
