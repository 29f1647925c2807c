//! The one bounds-check primitive: every packet read goes through here.

use aya_ebpf::programs::XdpContext;
use tierguard_common::parse::{Bytes, MAX_OFFSET};

pub struct XdpBytes {
    start: usize,
    end: usize,
}

impl XdpBytes {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        XdpBytes {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

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

impl Bytes for XdpBytes {
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
