//! What the parser extracts from a packet: the facts every later stage reads.

/// Parsed headers. Addresses keep network byte order; an IPv4 address sits in
/// the first four bytes of its 16-byte field and the rest is zero.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// 0 for non-IP, 4 or 6.
    pub family: u8,
    /// Transport protocol number after any IPv6 extension headers.
    pub proto: u8,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 ...), 0 otherwise.
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Number of VLAN tags seen (0 to 2).
    pub vlan_depth: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    pub _pad: u8,
    /// Length of the whole frame in bytes.
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<Packet>() == 48);
// `src_top64` reads `src` as one u64.
const _: () = assert!(core::mem::align_of::<Packet>() == 8);

/// The transport header was parsed: ports, flags or ICMP type are valid.
pub const FLAG_L4: u8 = 0x01;
/// The packet is a fragment (first or later).
pub const FLAG_FRAGMENT: u8 = 0x02;
/// A fragment other than the first: it carries no transport header.
pub const FLAG_LATER_FRAGMENT: u8 = 0x04;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

impl Packet {
    pub const EMPTY: Packet = Packet {
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        proto: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        vlan_depth: 0,
        flags: 0,
        _pad: 0,
        len: 0,
    };

    pub fn has_l4(&self) -> bool {
        self.flags & FLAG_L4 != 0
    }

    /// The first 64 bits of the source as a big-endian u64
    /// (`prefix::v6_top`), in one load where eight byte loads and shifts
    /// would be: `src` is at offset 0 of an 8-aligned struct.
    #[inline(always)]
    pub fn src_top64(&self) -> u64 {
        // SAFETY: the struct is 8-aligned and `src` is its first field, 16
        // bytes long.
        u64::from_be(unsafe { core::ptr::read(self.src.as_ptr().cast::<u64>()) })
    }

    pub fn src_v4(&self) -> [u8; 4] {
        [self.src[0], self.src[1], self.src[2], self.src[3]]
    }

    pub fn dst_v4(&self) -> [u8; 4] {
        [self.dst[0], self.dst[1], self.dst[2], self.dst[3]]
    }
}
