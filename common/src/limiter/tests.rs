use super::*;
use crate::limit::Unit;
use crate::packet::{FLAG_FRAGMENT, FLAG_L4, FLAG_LATER_FRAGMENT, PROTO_UDP, TCP_RST};

const NS: u64 = 1_000_000_000;

fn spec(per: Per, pps: u64, burst: u64) -> LimitSpec {
    LimitSpec {
        flags: LIMIT_USED | LIMIT_PPS,
        per: per as u8,
        prefix_v4: 24,
        prefix_v6: 64,
        seed: 0x1234_5678,
        per_key: Rates {
            packets: Rate::new(pps, burst, Unit::Packets).unwrap(),
            bits: Rate::NONE,
        },
        shared: Rates {
            packets: Rate::new(
                pps * OVERFLOW_FACTOR,
                burst * OVERFLOW_FACTOR,
                Unit::Packets,
            )
            .unwrap(),
            bits: Rate::NONE,
        },
        ..LimitSpec::UNUSED
    }
}

fn v4(src: [u8; 4], dst: [u8; 4], proto: u8) -> Packet {
    let mut p = Packet::EMPTY;
    p.family = 4;
    p.proto = proto;
    p.flags = FLAG_L4;
    p.src[..4].copy_from_slice(&src);
    p.dst[..4].copy_from_slice(&dst);
    p.dport = 443;
    p.len = 64;
    p
}

fn v6(src: [u8; 16]) -> Packet {
    let mut p = Packet::EMPTY;
    p.family = 6;
    p.proto = PROTO_UDP;
    p.flags = FLAG_L4;
    p.src = src;
    p.len = 100;
    p
}

#[test]
fn keys_mask_the_source_prefix_in_each_family() {
    let p = v4([203, 0, 113, 77], [10, 0, 0, 1], PROTO_TCP);
    let mut s = spec(Per::Source, 10, 10);
    assert_eq!(key(&s, &p), v4_key([203, 0, 113, 77]));
    s.per = Per::SourcePrefix as u8;
    assert_eq!(key(&s, &p), v4_key([203, 0, 113, 0]));
    s.prefix_v4 = 20;
    assert_eq!(key(&s, &p), v4_key([203, 0, 112, 0]));
    s.prefix_v4 = 32;
    assert_eq!(key(&s, &p), v4_key([203, 0, 113, 77]));
    s.per = Per::Destination as u8;
    assert_eq!(key(&s, &p), v4_key([10, 0, 0, 1]));
    s.per = Per::Global as u8;
    assert_eq!(key(&s, &p), [0; 16]);

    let a: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let q = v6(a);
    let mut s = spec(Per::Source, 10, 10);
    assert_eq!(key(&s, &q), a);
    s.per = Per::SourcePrefix as u8;
    let mut want = a;
    want[8..].fill(0);
    assert_eq!(key(&s, &q), want, "/64");
    s.prefix_v6 = 60;
    want[7] = 0;
    assert_eq!(key(&s, &q), want, "/60 cuts the low nibble of byte 7");
    assert_eq!(block_len(&s, 6), 60);
    assert_eq!(block_len(&s, 4), 24);
    s.per = Per::Source as u8;
    assert_eq!((block_len(&s, 4), block_len(&s, 6)), (32, 128));
    // An IPv4 key is IPv4-mapped: it cannot equal a native IPv6 address's.
    let mut native = [0u8; 16];
    native[12..].copy_from_slice(&[203, 0, 113, 77]);
    assert_ne!(v4_key([203, 0, 113, 77]), native);
}

#[test]
fn masks_agree_with_the_byte_wise_mask_at_every_length() {
    let a: [u8; 16] = [
        0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8, 0xf7, 0xf6, 0xf5, 0xf4, 0xf3, 0xf2, 0xf1,
        0xf0,
    ];
    for len in 0..=255u8 {
        assert_eq!(
            mask_v6(&a, len),
            crate::prefix::mask(&a, len.min(128)),
            "/{len}"
        );
        let v4 = [a[0], a[1], a[2], a[3]];
        assert_eq!(
            mask_v4(v4, len),
            crate::prefix::mask(&v4, len.min(32)),
            "/{len}"
        );
    }
}

#[test]
fn candidates_are_two_distinct_slots_that_depend_on_the_seed() {
    let mut moved = 0;
    for i in 0..10_000u32 {
        let k = v4_key(i.to_be_bytes());
        let (a, b) = candidates(1, &k);
        assert!(a < SLOTS_PER_LIMIT && b < SLOTS_PER_LIMIT && a != b);
        if candidates(2, &k) != (a, b) {
            moved += 1;
        }
    }
    assert!(moved > 9_990, "another seed places keys elsewhere: {moved}");
    // Spread: 10,000 keys over 16,384 slots leave few slots doubly used.
    let mut used = vec![0u8; SLOTS_PER_LIMIT as usize];
    for i in 0..10_000u32 {
        used[candidates(7, &v4_key(i.to_be_bytes())).0 as usize] += 1;
    }
    let crowded = used.iter().filter(|&&n| n > 3).count();
    assert!(
        crowded < 50,
        "{crowded} slots hold more than 3 first candidates"
    );
}

#[test]
fn a_key_uses_its_slot_takes_an_idle_one_or_overflows() {
    let s = spec(Per::Source, 10, 5);
    let me = v4_key([1, 1, 1, 1]);
    let other = v4_key([2, 2, 2, 2]);
    let now = 100 * NS;
    let empty = Slot::default();
    assert_eq!(choose(&empty, &empty, &me, &s, now), Choice::Take(0));
    let mut a = Slot::default();
    take(&mut a, &other);
    assert_eq!(
        choose(&a, &empty, &me, &s, now),
        Choice::Take(0),
        "full: idle"
    );
    assert!(admit(&mut a.buckets, s.flags, &s.per_key, now, 64));
    assert_eq!(
        choose(&a, &empty, &me, &s, now),
        Choice::Take(1),
        "one token used: busy"
    );
    let mut b = a;
    assert_eq!(choose(&a, &b, &me, &s, now), Choice::Overflow);
    assert_eq!(choose(&a, &b, &other, &s, now), Choice::Own(0));
    b.key = me;
    assert_eq!(choose(&a, &b, &me, &s, now), Choice::Own(1));
    // One token back takes 100 ms at 10/s: busy 1 ns before, idle at it.
    assert_eq!(choose(&a, &a, &me, &s, now + NS / 10 - 1), Choice::Overflow);
    assert_eq!(choose(&a, &a, &me, &s, now + NS / 10), Choice::Take(0));
    // Taking resets the buckets: the new key starts full.
    take(&mut a, &me);
    assert_eq!((a.key, a.buckets), (me, Buckets::default()));
}

#[test]
fn idle_needs_every_configured_bucket_full() {
    let mut s = spec(Per::Source, 10, 5);
    s.flags |= LIMIT_BPS;
    s.per_key.bits = Rate::new(1_000_000, 12_144, Unit::Bits).unwrap();
    let mut slot = Slot::default();
    let now = NS;
    assert!(idle(&slot, &s, now));
    assert!(admit(&mut slot.buckets, s.flags, &s.per_key, now, 1500));
    assert!(!idle(&slot, &s, now));
    // Packets refill in 100 ms; 12,000 bits at 1 Mbit/s in 12 ms.
    assert!(!idle(&slot, &s, now + 50_000_000));
    assert!(idle(&slot, &s, now + 100_000_000));
}

#[test]
fn a_tight_loop_passes_exactly_the_burst_and_refused_packets_cost_nothing() {
    for (pps, burst) in [(1, 1), (100, 200), (1000, 7)] {
        let s = spec(Per::Source, pps, burst);
        let mut slot = Slot::default();
        let now = 5 * NS;
        let passed = (0..burst + 50)
            .filter(|_| admit(&mut slot.buckets, s.flags, &s.per_key, now, 64))
            .count() as u64;
        assert_eq!(passed, burst);
        // Exactly one token after 1/pps, however many were refused before.
        let later = now + NS / pps;
        assert!(admit(&mut slot.buckets, s.flags, &s.per_key, later, 64));
        assert!(!admit(&mut slot.buckets, s.flags, &s.per_key, later, 64));
    }
}

#[test]
fn both_rates_must_admit_and_only_then_both_are_charged() {
    let mut s = spec(Per::Global, 1000, 1000);
    s.flags |= LIMIT_BPS;
    // 3 full frames of bits.
    s.per_key.bits = Rate::new(8_000, 3 * 1500 * 8, Unit::Bits).unwrap();
    let mut b = Buckets::default();
    for _ in 0..3 {
        assert!(admit(&mut b, s.flags, &s.per_key, NS, 1500));
    }
    let before = b.packets;
    assert!(!admit(&mut b, s.flags, &s.per_key, NS, 1500));
    assert_eq!(
        b.packets.tokens, before.tokens,
        "the packet bucket is not charged for a refusal"
    );
    // Small packets still fit in what the bits bucket has left: none.
    assert!(!admit(&mut b, s.flags, &s.per_key, NS, 64));
    // Bits only.
    s.flags &= !LIMIT_PPS;
    let mut b = Buckets::default();
    let n = (0..100)
        .filter(|_| admit(&mut b, s.flags, &s.per_key, NS, 100))
        .count();
    assert_eq!(n, 45, "36,000 bits of 800-bit packets");
    assert_eq!(
        b.packets,
        Bucket::default(),
        "an unconfigured bucket is never touched"
    );
}

#[test]
fn matching_checks_protocol_flags_interfaces_ports_and_zone_lazily() {
    let mut s = spec(Per::Source, 10, 10);
    let mut p = v4([1, 2, 3, 4], [10, 0, 0, 1], PROTO_TCP);
    p.tcp_flags = TCP_SYN;
    let no_port = |_: u16| -> bool { panic!("ports not configured") };
    let no_zone = || -> u16 { panic!("zone not configured") };
    assert!(matches(&s, &p, 3, no_port, no_zone));
    s.proto = PROTO_UDP;
    assert!(!matches(&s, &p, 3, no_port, no_zone));
    s.proto = PROTO_TCP;
    s.flags |= LIMIT_SYN;
    assert!(matches(&s, &p, 3, no_port, no_zone));
    for flags in [TCP_SYN | TCP_ACK, TCP_ACK, TCP_RST] {
        p.tcp_flags = flags;
        assert!(!matches(&s, &p, 3, no_port, no_zone), "flags {flags:#x}");
    }
    p.tcp_flags = TCP_SYN | TCP_RST;
    assert!(matches(&s, &p, 3, no_port, no_zone), "SYN without ACK");
    s.flags |= LIMIT_IFACES;
    s.ifindexes[2] = 7;
    assert!(!matches(&s, &p, 3, no_port, no_zone));
    assert!(matches(&s, &p, 7, no_port, no_zone));
    assert!(
        !matches(&s, &p, 0, no_port, no_zone),
        "unused entries are 0"
    );
    s.flags |= LIMIT_PORTS;
    assert!(matches(&s, &p, 7, |port| port == 443, no_zone));
    assert!(!matches(&s, &p, 7, |port| port == 80, no_zone));
    s.flags |= LIMIT_ZONE;
    s.to_zone = 5;
    assert!(matches(&s, &p, 7, |_| true, || 5));
    assert!(!matches(&s, &p, 7, |_| true, || 4));
    // Later fragments: no SYN, so no SYN limit; port limits still apply.
    let mut frag = v4([1, 2, 3, 4], [10, 0, 0, 1], PROTO_UDP);
    frag.flags = FLAG_FRAGMENT | FLAG_LATER_FRAGMENT;
    let mut u = spec(Per::Source, 10, 10);
    u.proto = PROTO_UDP;
    u.flags |= LIMIT_PORTS;
    assert!(matches(&u, &frag, 1, |_| false, no_zone));
    frag.proto = PROTO_TCP;
    assert!(!matches(&s, &frag, 7, |_| true, || 5));
    assert!(!matches(&LimitSpec::UNUSED, &p, 7, |_| true, || 5));
}

#[test]
fn outcomes_say_which_limit_drops_or_audits() {
    assert_eq!(LimitOutcome::PASS.dropped_by(), None);
    assert_eq!(LimitOutcome::PASS.audited_by(), None);
    assert_eq!(LimitOutcome::drop(15).dropped_by(), Some(15));
    assert_eq!(LimitOutcome::drop(15).audited_by(), None);
    assert_eq!(LimitOutcome::audit(0).audited_by(), Some(0));
    assert_eq!(LimitOutcome::audit(u16::MAX).dropped_by(), None);
    assert_eq!(
        LimitOutcome(7 << 16).dropped_by(),
        None,
        "unknown kinds pass"
    );
    assert_eq!(LimitOutcome(7 << 16).audited_by(), None);
}

#[test]
fn blocks_end_at_their_time() {
    let b = BlockValue {
        until_ns: 10,
        ..BlockValue::EMPTY
    };
    assert!(b.active(9));
    assert!(!b.active(10));
    assert!(!BlockValue::EMPTY.active(0));
}

/// The charging glue the kernel runs (ebpf/src/limits.rs), over a vector.
fn charge(
    slots: &mut [Slot],
    shared: &mut Buckets,
    s: &LimitSpec,
    k: &[u8; 16],
    now: u64,
) -> (Choice, bool) {
    let (ia, ib) = candidates(s.seed, k);
    let c = choose(&slots[ia as usize], &slots[ib as usize], k, s, now);
    let ok = match c {
        Choice::Own(i) | Choice::Take(i) => {
            let slot = &mut slots[if i == 0 { ia } else { ib } as usize];
            if matches!(c, Choice::Take(_)) {
                take(slot, k);
            }
            admit(&mut slot.buckets, s.flags, &s.per_key, now, 64)
        }
        Choice::Overflow => admit(shared, s.flags, &s.shared, now, 64),
    };
    (c, ok)
}

#[test]
fn a_random_source_flood_neither_evicts_active_clients_nor_passes_uncapped_overflow() {
    // 200 clients each send 5 pps against a 10 pps / burst 10 limit while
    // 200,000 spoofed sources send one packet each over 10 s.
    let s = spec(Per::Source, 10, 10);
    let mut slots = vec![Slot::default(); SLOTS_PER_LIMIT as usize];
    let mut shared = Buckets::default();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let clients: Vec<[u8; 16]> = (0..200u32)
        .map(|i| v4_key((0x0a00_0000 + i).to_be_bytes()))
        .collect();
    let (mut client_ok, mut client_pkts, mut overflow_ok, mut overflow_pkts) = (0, 0, 0u64, 0u64);
    let start = 1_000 * NS;
    for step in 0..10_000u64 {
        // One millisecond: 20 flood packets; every 200 ms each client sends.
        let now = start + step * 1_000_000;
        for _ in 0..20 {
            let k = v4_key((next() as u32).to_be_bytes());
            let (c, ok) = charge(&mut slots, &mut shared, &s, &k, now);
            if c == Choice::Overflow {
                overflow_pkts += 1;
                overflow_ok += u64::from(ok);
            }
        }
        if step % 200 == 0 {
            for k in &clients {
                let (_, ok) = charge(&mut slots, &mut shared, &s, k, now);
                client_pkts += 1;
                client_ok += u64::from(ok);
            }
        }
    }
    // A client loses its slot only while idle, and then takes an idle
    // candidate again; it overflows only if both candidates are busy at that
    // instant. Each flood packet keeps a slot busy for 1/rate = 100 ms:
    // about 20,000 x 0.1 / 16,384 = 12 % of slots, so about 1.5 % (0.12^2)
    // of a client's packets that lost their slot overflow, and the flood has
    // drained the overflow. Seen: 98.5 % served.
    assert!(
        client_ok * 100 >= client_pkts * 97,
        "clients served: {client_ok} of {client_pkts}"
    );
    // What overflowed passed at most at the overflow rate (40/s) plus its burst (40).
    assert!(
        overflow_ok <= 40 * 10 + 40,
        "{overflow_ok} of {overflow_pkts} passed the overflow"
    );
}
