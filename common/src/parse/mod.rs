//! Layered packet parser: Ethernet (up to two VLAN tags) → IPv4/IPv6 (options,
//! extension-header chain) → TCP/UDP/ICMP.
//!
//! Written against [`Bytes`], so the kernel reads packet memory with its bounds
//! checks and host tests read a slice, through the same code. Every outcome is
//! defined: see docs/design/malformed-packets.md.

use crate::packet::{
    FLAG_FRAGMENT, FLAG_L4, FLAG_LATER_FRAGMENT, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
    Packet,
};
use crate::reason::Reason;

/// Bounds-checked access to packet bytes.
///
/// Fixed headers are copied whole with `array_at` (one bounds check each);
/// variable parts (IPv4 options, extension headers, TCP options) are only
/// checked for presence with `has`. That shape is also what the verifier accepts.
pub trait Bytes {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the first `end` bytes are all present.
    fn has(&self, end: usize) -> bool;
    /// Copies `N` bytes starting at `off`, or `None` past the end.
    fn array_at<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
}

/// Headers are read within the first `MAX_OFFSET` bytes of a frame; anything
/// further counts as missing (`truncated`). Bounding offsets keeps the
/// verifier's range tracking simple; it covers two VLAN tags, IPv4 options
/// and eight IPv6 extension headers. Every `Bytes` implementation applies it,
/// so the kernel and the host agree.
pub const MAX_OFFSET: usize = 1024;

impl Bytes for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn has(&self, end: usize) -> bool {
        end <= MAX_OFFSET && end <= <[u8]>::len(self)
    }
    fn array_at<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off > MAX_OFFSET {
            return None;
        }
        let b = self.get(off..off.checked_add(N)?)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Some(out)
    }
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
/// Pre-standard QinQ TPID still used by some switches.
pub const ETH_P_QINQ_9100: u16 = 0x9100;
pub const ETH_P_MPLS_UC: u16 = 0x8847;
pub const ETH_P_MPLS_MC: u16 = 0x8848;
pub const ETH_P_PPPOE_SESSION: u16 = 0x8864;
/// VLAN tags followed; a third is refused (`Reason::VlanDepth`).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers followed; one more is refused (`Reason::Ipv6ExtChain`).
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;

/// Parses a frame. `Err` carries the reason the frame is dropped as unparseable.
#[inline(always)]
pub fn parse<B: Bytes + ?Sized>(b: &B) -> Result<Packet, Reason> {
    let mut p = Packet::EMPTY;
    p.len = b.len() as u32;

    let eth: [u8; ETH_HLEN] = b.array_at(0).ok_or(Reason::Truncated)?;
    let mut ethertype = be16(&eth, 12);
    let mut off = ETH_HLEN;
    let mut tags = 0usize;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_9100 {
        if tags == MAX_VLAN_TAGS {
            return Err(Reason::VlanDepth);
        }
        // TCI (2 bytes) then the inner ethertype.
        let tag: [u8; 4] = b.array_at(off).ok_or(Reason::Truncated)?;
        ethertype = be16(&tag, 2);
        off += 4;
        tags += 1;
    }
    p.vlan_depth = tags as u8;

    match ethertype {
        ETH_P_IPV4 => parse_ipv4(b, off, &mut p)?,
        ETH_P_IPV6 => parse_ipv6(b, off, &mut p)?,
        // They carry IP that lists would have to match, but a node's host
        // interfaces do not terminate them: refused rather than passed unread.
        ETH_P_MPLS_UC | ETH_P_MPLS_MC | ETH_P_PPPOE_SESSION => {
            return Err(Reason::UnsupportedEncap);
        }
        _ => {}
    }
    Ok(p)
}

#[inline(always)]
fn parse_ipv4<B: Bytes + ?Sized>(b: &B, off: usize, p: &mut Packet) -> Result<(), Reason> {
    let h: [u8; 20] = b.array_at(off).ok_or(Reason::Truncated)?;
    if h[0] >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Reason::Malformed);
    }
    // The whole header, options included, must be present.
    if !b.has(off + ihl) {
        return Err(Reason::Truncated);
    }
    let frag = be16(&h, 6);
    p.proto = h[9];
    p.src[..4].copy_from_slice(&h[12..16]);
    p.dst[..4].copy_from_slice(&h[16..20]);
    p.family = 4;

    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    if more_fragments || frag_offset != 0 {
        p.flags |= FLAG_FRAGMENT;
    }
    if frag_offset != 0 {
        // Later fragments carry no transport header; address-based stages still apply.
        p.flags |= FLAG_LATER_FRAGMENT;
        return Ok(());
    }
    parse_l4(b, off + ihl, p)
}

#[inline(always)]
fn parse_ipv6<B: Bytes + ?Sized>(b: &B, off: usize, p: &mut Packet) -> Result<(), Reason> {
    let h: [u8; 40] = b.array_at(off).ok_or(Reason::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let mut next = h[6];
    p.src.copy_from_slice(&h[8..24]);
    p.dst.copy_from_slice(&h[24..40]);
    p.family = 6;

    let mut hoff = off + 40;
    let mut seen = 0usize;
    while matches!(
        next,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_DSTOPTS
            | IPPROTO_MH
            | IPPROTO_FRAGMENT
            | IPPROTO_AH
    ) {
        if seen == MAX_IPV6_EXT_HEADERS {
            return Err(Reason::Ipv6ExtChain);
        }
        seen += 1;
        // Every extension header is at least 8 bytes; the first 8 hold what we need.
        let e: [u8; 8] = b.array_at(hoff).ok_or(Reason::Truncated)?;
        let size = match next {
            IPPROTO_FRAGMENT => {
                p.flags |= FLAG_FRAGMENT;
                if be16(&e, 2) & 0xfff8 != 0 {
                    // Non-zero offset: a later fragment without a transport header.
                    p.proto = e[0];
                    p.flags |= FLAG_LATER_FRAGMENT;
                    return Ok(());
                }
                8
            }
            // AH counts its length in 4-byte units, minus 2.
            IPPROTO_AH => (e[1] as usize + 2) * 4,
            _ => (e[1] as usize + 1) * 8,
        };
        // The whole extension header must be present.
        if !b.has(hoff + size) {
            return Err(Reason::Truncated);
        }
        hoff += size;
        next = e[0];
    }
    p.proto = next;
    parse_l4(b, hoff, p)
}

#[inline(always)]
fn parse_l4<B: Bytes + ?Sized>(b: &B, off: usize, p: &mut Packet) -> Result<(), Reason> {
    // A first fragment that cannot hold the transport header is refused as a
    // known evasion; an unfragmented packet that short is simply truncated.
    let short = if p.flags & FLAG_FRAGMENT != 0 {
        Reason::TinyFragment
    } else {
        Reason::Truncated
    };
    match p.proto {
        PROTO_TCP => {
            let t: [u8; 20] = b.array_at(off).ok_or(short)?;
            let doff = (t[12] >> 4) as usize * 4;
            if doff < 20 {
                return Err(Reason::Malformed);
            }
            if !b.has(off + doff) {
                return Err(short);
            }
            p.sport = be16(&t, 0);
            p.dport = be16(&t, 2);
            p.tcp_flags = t[13];
        }
        PROTO_UDP => {
            let u: [u8; 8] = b.array_at(off).ok_or(short)?;
            p.sport = be16(&u, 0);
            p.dport = be16(&u, 2);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let i: [u8; 4] = b.array_at(off).ok_or(short)?;
            p.icmp_type = i[0];
            p.icmp_code = i[1];
        }
        // Other protocols (GRE, ESP, SCTP, IP-in-IP, ...) are judged on addresses.
        _ => return Ok(()),
    }
    p.flags |= FLAG_L4;
    Ok(())
}

#[cfg(test)]
mod tests;
