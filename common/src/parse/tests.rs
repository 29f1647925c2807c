use crate::build::*;
use crate::packet::*;
use crate::parse::*;
use crate::reason::Reason;

const A4: [u8; 4] = [10, 1, 2, 3];
const B4: [u8; 4] = [10, 9, 8, 7];
const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn ok(frame: &[u8]) -> Packet {
    parse(frame).unwrap_or_else(|r| panic!("expected a parse, got {r:?} for {frame:02x?}"))
}

/// Cutting the frame anywhere before `full` must give `want`; at `full` it parses.
fn truncation(frame: &[u8], full: usize, want: Reason) {
    for cut in 0..full {
        assert_eq!(parse(&frame[..cut]), Err(want), "cut at {cut} of {full}");
    }
    assert!(
        parse(&frame[..full]).is_ok(),
        "full header of {full} bytes should parse"
    );
}

#[test]
fn ipv4_tcp() {
    let p = ok(&v4_frame(A4, B4, PROTO_TCP, &tcp(40000, 443, TCP_SYN, 10)));
    assert_eq!((p.family, p.proto), (4, PROTO_TCP));
    assert_eq!(p.src_v4(), A4);
    assert_eq!(p.dst_v4(), B4);
    assert_eq!(&p.src[4..], &[0; 12]);
    assert_eq!((p.sport, p.dport, p.tcp_flags), (40000, 443, TCP_SYN));
    assert!(p.has_l4());
    assert_eq!(p.len, 14 + 20 + 20 + 10);
}

#[test]
fn ipv4_udp_and_icmp() {
    let p = ok(&v4_frame(A4, B4, PROTO_UDP, &udp(5353, 53, 4)));
    assert_eq!((p.sport, p.dport), (5353, 53));
    let p = ok(&v4_frame(A4, B4, PROTO_ICMP, &icmp(8, 0)));
    assert_eq!((p.icmp_type, p.icmp_code, p.proto), (8, 0, PROTO_ICMP));
    assert!(p.has_l4());
}

#[test]
fn ipv4_options_are_skipped() {
    let mut v = V4::new(A4, B4, PROTO_TCP);
    v.options = vec![0x94, 0x04, 0, 0, 1, 1, 1, 0]; // router alert + NOPs
    let frame = ether(&[], ETH_P_IPV4, &v.packet(&tcp(1, 22, TCP_SYN, 0)));
    let p = ok(&frame);
    assert_eq!(p.dport, 22);
    truncation(&frame, frame.len(), Reason::Truncated);
}

#[test]
fn ipv4_bad_headers() {
    let mut frame = v4_frame(A4, B4, PROTO_TCP, &tcp(1, 2, 0, 0));
    frame[14] = 0x44; // IHL 4
    assert_eq!(parse(&frame[..]), Err(Reason::Malformed));
    frame[14] = 0x55; // version 5
    assert_eq!(parse(&frame[..]), Err(Reason::Malformed));
    let mut frame = v4_frame(A4, B4, PROTO_TCP, &tcp(1, 2, 0, 0));
    frame[14 + 20 + 12] = 0x40; // TCP data offset 4
    assert_eq!(parse(&frame[..]), Err(Reason::Malformed));
}

#[test]
fn ipv4_truncation_at_every_boundary() {
    let frame = v4_frame(A4, B4, PROTO_TCP, &tcp(1, 2, TCP_ACK, 0));
    truncation(&frame, frame.len(), Reason::Truncated);
    let frame = v4_frame(A4, B4, PROTO_UDP, &udp(1, 2, 0));
    truncation(&frame, frame.len(), Reason::Truncated);
    let frame = v4_frame(A4, B4, PROTO_ICMP, &icmp(8, 0));
    truncation(&frame, 14 + 20 + 4, Reason::Truncated);
}

#[test]
fn tcp_options_must_be_present() {
    let mut seg = tcp(1, 2, TCP_SYN, 0);
    seg[12] = 8 << 4; // 32-byte header claimed, 20 present
    let frame = v4_frame(A4, B4, PROTO_TCP, &seg);
    assert_eq!(parse(&frame[..]), Err(Reason::Truncated));
    seg.extend_from_slice(&[1; 12]);
    assert_eq!(ok(&v4_frame(A4, B4, PROTO_TCP, &seg)).dport, 2);
}

#[test]
fn ipv4_fragments() {
    let mut v = V4::new(A4, B4, PROTO_UDP);
    v.more_fragments = true;
    let p = ok(&ether(&[], ETH_P_IPV4, &v.packet(&udp(1, 53, 100))));
    assert_eq!(
        p.flags & (FLAG_FRAGMENT | FLAG_LATER_FRAGMENT | FLAG_L4),
        FLAG_FRAGMENT | FLAG_L4
    );
    assert_eq!(p.dport, 53);
    // A first fragment too short for its transport header.
    let frame = ether(&[], ETH_P_IPV4, &v.packet(&[0u8; 4]));
    assert_eq!(parse(&frame[..]), Err(Reason::TinyFragment));
    let mut v = V4::new(A4, B4, PROTO_TCP);
    v.more_fragments = true;
    let frame = ether(&[], ETH_P_IPV4, &v.packet(&tcp(1, 2, 0, 0)[..12]));
    assert_eq!(parse(&frame[..]), Err(Reason::TinyFragment));
    // Later fragments: addresses only.
    v.frag_offset = 185;
    let p = ok(&ether(&[], ETH_P_IPV4, &v.packet(&[0xab; 8])));
    assert_eq!(
        p.flags & (FLAG_LATER_FRAGMENT | FLAG_L4),
        FLAG_LATER_FRAGMENT
    );
    assert_eq!((p.sport, p.dport), (0, 0));
    assert_eq!(p.src_v4(), A4);
}

#[test]
fn vlan_tags() {
    let inner = V4::new(A4, B4, PROTO_UDP).packet(&udp(1, 53, 0));
    let p = ok(&ether(&[ETH_P_8021Q], ETH_P_IPV4, &inner));
    assert_eq!((p.vlan_depth, p.dport), (1, 53));
    let frame = ether(&QINQ, ETH_P_IPV4, &inner);
    let p = ok(&frame);
    assert_eq!((p.vlan_depth, p.src_v4()), (2, A4));
    truncation(&frame, frame.len(), Reason::Truncated);
    let three = ether(
        &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
        ETH_P_IPV4,
        &inner,
    );
    assert_eq!(parse(&three[..]), Err(Reason::VlanDepth));
    // ARP inside a VLAN is still non-IP.
    let arp = ether(&[ETH_P_8021Q], 0x0806, &[0u8; 28]);
    assert_eq!(ok(&arp).family, 0);
}

#[test]
fn non_ip_passes_parse_with_family_zero() {
    let p = ok(&ether(&[], 0x0806, &[0u8; 28]));
    assert_eq!(p.family, 0);
    assert!(!p.has_l4());
    assert_eq!(parse(&[0u8; 13][..]), Err(Reason::Truncated));
}

#[test]
fn ipv6_plain() {
    let p = ok(&v6_frame(
        A6,
        B6,
        PROTO_TCP,
        &tcp(1234, 443, TCP_SYN | TCP_ACK, 0),
    ));
    assert_eq!((p.family, p.src, p.dst), (6, A6, B6));
    assert_eq!((p.dport, p.tcp_flags), (443, TCP_SYN | TCP_ACK));
    let p = ok(&v6_frame(A6, B6, PROTO_ICMPV6, &icmp(135, 0)));
    assert_eq!(p.icmp_type, 135);
    let frame = v6_frame(A6, B6, PROTO_UDP, &udp(1, 53, 0));
    truncation(&frame, frame.len(), Reason::Truncated);
}

#[test]
fn ipv6_extension_chain() {
    let exts = [
        Ext::HopByHop,
        Ext::DestOpts,
        Ext::Routing,
        Ext::Auth { len: 4 },
        Ext::DestOpts,
    ];
    let frame = ether(
        &[],
        ETH_P_IPV6,
        &ipv6(A6, B6, &exts, PROTO_TCP, &tcp(5, 22, TCP_SYN, 0)),
    );
    let p = ok(&frame);
    assert_eq!((p.proto, p.dport), (PROTO_TCP, 22));
    truncation(&frame, frame.len(), Reason::Truncated);
}

#[test]
fn ipv6_chain_limit() {
    let eight = vec![Ext::DestOpts; MAX_IPV6_EXT_HEADERS];
    let frame = ether(
        &[],
        ETH_P_IPV6,
        &ipv6(A6, B6, &eight, PROTO_UDP, &udp(1, 53, 0)),
    );
    assert_eq!(ok(&frame).dport, 53);
    let nine = vec![Ext::DestOpts; MAX_IPV6_EXT_HEADERS + 1];
    let frame = ether(
        &[],
        ETH_P_IPV6,
        &ipv6(A6, B6, &nine, PROTO_UDP, &udp(1, 53, 0)),
    );
    assert_eq!(parse(&frame[..]), Err(Reason::Ipv6ExtChain));
}

#[test]
fn ipv6_fragments() {
    let first = [Ext::Fragment {
        offset: 0,
        more: true,
    }];
    let p = ok(&ether(
        &[],
        ETH_P_IPV6,
        &ipv6(A6, B6, &first, PROTO_UDP, &udp(1, 53, 64)),
    ));
    assert_eq!(p.flags & (FLAG_FRAGMENT | FLAG_L4), FLAG_FRAGMENT | FLAG_L4);
    let tiny = ether(&[], ETH_P_IPV6, &ipv6(A6, B6, &first, PROTO_TCP, &[0u8; 8]));
    assert_eq!(parse(&tiny[..]), Err(Reason::TinyFragment));
    let later = [
        Ext::HopByHop,
        Ext::Fragment {
            offset: 100,
            more: false,
        },
    ];
    let p = ok(&ether(
        &[],
        ETH_P_IPV6,
        &ipv6(A6, B6, &later, PROTO_TCP, &[0u8; 16]),
    ));
    assert_eq!(
        p.flags & (FLAG_LATER_FRAGMENT | FLAG_L4),
        FLAG_LATER_FRAGMENT
    );
    assert_eq!(p.proto, PROTO_TCP);
    assert_eq!(p.src, A6);
}

#[test]
fn ipv6_bad_version() {
    let mut frame = v6_frame(A6, B6, PROTO_UDP, &udp(1, 2, 0));
    frame[14] = 0x40;
    assert_eq!(parse(&frame[..]), Err(Reason::Malformed));
}

#[test]
fn other_transports_are_judged_on_addresses() {
    for proto in [47u8, 50, 132, 4, 41] {
        let p = ok(&v4_frame(A4, B4, proto, &[0u8; 8]));
        assert_eq!((p.proto, p.family), (proto, 4));
        assert!(!p.has_l4());
    }
    // ESP and No Next Header end an IPv6 chain.
    let p = ok(&v6_frame(A6, B6, 59, &[]));
    assert_eq!(p.proto, 59);
}

#[test]
fn garbage_never_panics() {
    // Deterministic pseudo-random frames, including ones shaped like headers.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..20_000usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 200) as usize;
        let mut f: Vec<u8> = (0..len)
            .map(|i| (x.rotate_left(i as u32) & 0xff) as u8)
            .collect();
        if len > 14 {
            let et = [ETH_P_IPV4, ETH_P_IPV6, ETH_P_8021Q][n % 3];
            f[12..14].copy_from_slice(&et.to_be_bytes());
        }
        let _ = parse(&f[..]);
    }
}

#[test]
fn mpls_and_pppoe_are_refused_and_old_qinq_is_followed() {
    assert_eq!(
        parse(&ether(&[], ETH_P_MPLS_UC, &[0u8; 40])[..]),
        Err(Reason::UnsupportedEncap)
    );
    assert_eq!(
        parse(&ether(&[ETH_P_8021Q], ETH_P_PPPOE_SESSION, &[0u8; 40])[..]),
        Err(Reason::UnsupportedEncap)
    );
    let inner = V4::new(A4, B4, PROTO_UDP).packet(&udp(1, 53, 0));
    let p = ok(&ether(&[ETH_P_QINQ_9100, ETH_P_8021Q], ETH_P_IPV4, &inner));
    assert_eq!((p.vlan_depth, p.dport), (2, 53));
}

#[test]
fn headers_past_the_read_limit_count_as_truncated() {
    // 127 eight-byte destination-options headers would end past MAX_OFFSET;
    // the chain limit stops first, and a long options header past the limit is truncated.
    let mut e = vec![17u8, 255];
    e.resize(256 * 8, 0);
    let mut v6 = ipv6(A6, B6, &[], 60, &e);
    v6.extend_from_slice(&udp(1, 2, 0));
    let frame = ether(&[], ETH_P_IPV6, &v6);
    assert!(frame.len() > MAX_OFFSET);
    assert_eq!(parse(&frame[..]), Err(Reason::Truncated));
}
