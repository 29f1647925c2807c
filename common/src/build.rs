//! Crafting frames for tests and benchmarks (host only).
//!
//! Small composable pieces: a transport header, wrapped in IPv4 or IPv6
//! (with options or extension headers), wrapped in Ethernet (with VLAN tags).

use crate::parse::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6};

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// A TCP header (20 bytes, no options) plus `payload` bytes.
pub fn tcp(sport: u16, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
    let mut h = vec![0u8; 20 + payload];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    h
}

/// A UDP header plus `payload` bytes.
pub fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut h = vec![0u8; 8 + payload];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    h
}

/// An ICMP or ICMPv6 header (8 bytes: type, code, checksum, rest).
pub fn icmp(ty: u8, code: u8) -> Vec<u8> {
    vec![ty, code, 0, 0, 0, 0, 0, 1]
}

/// IPv4 fields a test may want to bend.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    /// Option bytes (padded to a multiple of 4).
    pub options: Vec<u8>,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub more_fragments: bool,
}

impl V4 {
    pub fn new(src: [u8; 4], dst: [u8; 4], proto: u8) -> V4 {
        V4 {
            src,
            dst,
            proto,
            options: Vec::new(),
            frag_offset: 0,
            more_fragments: false,
        }
    }

    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        let ihl = 20 + opts.len();
        let mut h = vec![0u8; ihl];
        h[0] = 0x40 | (ihl / 4) as u8;
        h[2..4].copy_from_slice(&((ihl + payload.len()) as u16).to_be_bytes());
        let frag = self.frag_offset | if self.more_fragments { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src);
        h[16..20].copy_from_slice(&self.dst);
        h[20..].copy_from_slice(&opts);
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// An IPv6 extension header in the chain.
#[derive(Clone, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// Fragment header with offset (8-byte units) and more-fragments flag.
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Authentication header with `len` in its own units (4-byte words minus 2).
    Auth {
        len: u8,
    },
}

impl Ext {
    fn code(&self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::DestOpts => 60,
            Ext::Fragment { .. } => 44,
            Ext::Auth { .. } => 51,
        }
    }
}

/// An IPv6 packet with an extension-header chain before `proto`.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], exts: &[Ext], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, Ext::code);
        match e {
            Ext::Fragment { offset, more } => {
                let f = (offset << 3) | u16::from(*more);
                let [a, b] = f.to_be_bytes();
                chain.extend_from_slice(&[next, 0, a, b, 0, 0, 0, 1]);
            }
            Ext::Auth { len } => {
                let size = (*len as usize + 2) * 4;
                let mut h = vec![0u8; size];
                h[0] = next;
                h[1] = *len;
                chain.extend_from_slice(&h);
            }
            _ => {
                // 8 bytes: next, length 0, and a PadN option filling the rest.
                chain.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
    }
    let first = exts.first().map_or(proto, Ext::code);
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&((chain.len() + payload.len()) as u16).to_be_bytes());
    h[6] = first;
    h[7] = 64;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h.extend_from_slice(&chain);
    h.extend_from_slice(payload);
    h
}

/// An Ethernet frame, with VLAN tags given by their TPIDs (outermost first).
pub fn ether(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * tags.len() + payload.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for (i, tpid) in tags.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet + IPv4 + `l4`, the common case.
pub fn v4_frame(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    ether(&[], ETH_P_IPV4, &V4::new(src, dst, proto).packet(l4))
}

/// Ethernet + IPv6 + `l4`.
pub fn v6_frame(src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8]) -> Vec<u8> {
    ether(&[], ETH_P_IPV6, &ipv6(src, dst, &[], proto, l4))
}

pub const QINQ: [u16; 2] = [ETH_P_8021AD, ETH_P_8021Q];

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
