//! The kernel half of security events through BPF_PROG_TEST_RUN: records
//! read straight from the ring buffer, field by field, and the sampler's
//! accounting (every drop emitted or suppressed) on one CPU.

use std::path::Path;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tierguard::{
    config::{Config, EventsConfig},
    datapath::{Datapath, SamplerReader, XDP_DROP, XDP_PASS, cpus, kernel_config, ns_per_jiffy},
    policy::CompiledPolicy,
};
use tierguard_common::{
    Reason,
    build::{tcp, v4_frame},
    event::{EVENT_VERSION, Event},
    maps::programs,
    packet::{FLAG_L4, PROTO_TCP, TCP_SYN},
};
use tierguard_tests::pins::PinDir;

const POLICY: &str = "[[lists]]\nname = \"allowed\"\naction = \"allow\"\ncidrs = [\"192.0.2.0/24\"]\n\n\
                      [[lists]]\nname = \"denied\"\naction = \"deny\"\ncidrs = [\"198.51.100.0/24\"]\n";

/// Runs this thread on CPU 0 only: the sampler is per CPU.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; we set one bit and pass its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU 0"
        );
    }
}

/// The programs with `POLICY` applied, on CPU 0, with the event ring and
/// the sampler's counters.
fn loaded(pins: &PinDir) -> (Datapath, RingBuf<MapData>, SamplerReader) {
    pin_to_cpu0();
    let config = Config::load_str(POLICY, "test.toml", Path::new(".")).unwrap();
    let policy = CompiledPolicy::compile(&config, &[]).unwrap();
    let mut dp = Datapath::load(pins.path()).unwrap_or_else(|e| panic!("load: {e}"));
    dp.apply(&policy).unwrap();
    let ring = dp.event_ring().unwrap();
    let sampler = dp.sampler_reader().unwrap();
    (dp, ring, sampler)
}

/// The deny-list reason's entry of a per-reason count.
fn deny_list(counts: &[(Reason, u64)]) -> u64 {
    counts
        .iter()
        .find(|(r, _)| *r == Reason::DenyList)
        .expect("every reason is counted")
        .1
}

fn records(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(Event::from_bytes(&item).expect("a version 1 record"));
    }
    out
}

#[test]
fn drops_write_records_with_the_packet_fields_and_sampling_accounts_for_every_drop() {
    let pins = PinDir::new("evk");
    let (mut dp, mut ring, sampler) = loaded(&pins);

    let syn = v4_frame(
        [198, 51, 100, 7],
        [10, 0, 0, 1],
        PROTO_TCP,
        &tcp(40000, 22, TCP_SYN, 0),
    );
    // Off by default: a drop writes nothing and counts nothing.
    assert_eq!(
        dp.test_run(programs::INGRESS, &syn, 1).unwrap().action,
        XDP_DROP
    );
    assert!(records(&mut ring).is_empty());
    assert!(
        sampler
            .read()
            .unwrap()
            .suppressed
            .iter()
            .all(|(_, n)| *n == 0)
    );

    // On, with one event per second per CPU and a burst of 2 per CPU.
    let cfg = EventsConfig {
        enabled: true,
        rate_per_reason: cpus(),
        burst: 2 * cpus(),
        global_rate: 1000 * cpus(),
        ..EventsConfig::default()
    };
    let k = dp.set_events(&cfg).unwrap();
    assert_eq!(
        k,
        tierguard_common::event::EventConfig {
            ns_per_jiffy: ns_per_jiffy(),
            ..kernel_config(&cfg, cpus())
        }
    );
    assert!(
        [0, 1_000_000, 3_333_333, 4_000_000, 10_000_000].contains(&k.ns_per_jiffy),
        "{}",
        k.ns_per_jiffy
    );
    assert_eq!((k.rate, k.burst), (1, 2));

    assert_eq!(
        dp.test_run(programs::INGRESS, &syn, 1).unwrap().action,
        XDP_DROP
    );
    let r = records(&mut ring);
    assert_eq!(r.len(), 1);
    let e = r[0];
    assert_eq!(e.version, EVENT_VERSION);
    assert_eq!(e.reason, Reason::DenyList as u8);
    assert_eq!(e.verdict, 1);
    assert_eq!(e.direction, 0);
    assert_eq!(e.list_id, 1, "the second list");
    assert_eq!(e.family, 4);
    assert_eq!(&e.src[..4], &[198, 51, 100, 7]);
    assert_eq!(&e.src[4..], &[0; 12]);
    assert_eq!(&e.dst[..4], &[10, 0, 0, 1]);
    assert_eq!(
        (e.proto, e.sport, e.dport, e.tcp_flags),
        (PROTO_TCP, 40000, 22, TCP_SYN)
    );
    assert_ne!(e.packet_flags & FLAG_L4, 0);
    assert_eq!(e.len as usize, syn.len());
    assert_eq!(e.suppressed, 0);
    assert!(e.time_ns > 0);

    // Passed packets write nothing.
    let ok = v4_frame(
        [192, 0, 2, 1],
        [10, 0, 0, 1],
        PROTO_TCP,
        &tcp(1, 2, TCP_SYN, 0),
    );
    assert_eq!(
        dp.test_run(programs::INGRESS, &ok, 1).unwrap().action,
        XDP_PASS
    );
    assert!(records(&mut ring).is_empty());

    // A packet the parser refuses: reason only, no addresses.
    assert_eq!(
        dp.test_run(programs::INGRESS, &syn[..20], 1)
            .unwrap()
            .action,
        XDP_DROP
    );
    let r = records(&mut ring);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].reason, Reason::Truncated as u8);
    assert_eq!(
        (r[0].family, r[0].list_id, r[0].src),
        (0, u16::MAX, [0; 16])
    );
    assert_eq!(r[0].len, 20);

    // A flood of 1000 denied packets: the bucket had one token left (burst 2,
    // one spent), plus at most one more refilled during the run.
    assert_eq!(
        dp.test_run(programs::INGRESS, &syn, 1000).unwrap().action,
        XDP_DROP
    );
    let flood = records(&mut ring);
    assert!(
        (1..=2).contains(&flood.len()),
        "{} events for 1000 drops at 1/s with a burst of 2",
        flood.len()
    );
    let counts = sampler.read().unwrap();
    let suppressed = deny_list(&counts.suppressed);
    assert_eq!(
        flood.len() as u64 + suppressed,
        1000,
        "every drop emitted or suppressed"
    );
    assert!(counts.ring_full.iter().all(|(_, n)| *n == 0));

    // A second later the next event says how many were held back since the last one.
    let held: u64 = suppressed - flood.iter().map(|e| e.suppressed).sum::<u64>();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        dp.test_run(programs::INGRESS, &syn, 1).unwrap().action,
        XDP_DROP
    );
    let r = records(&mut ring);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].suppressed, held, "N more like this");
}

#[test]
fn one_noisy_source_does_not_use_up_its_reasons_events() {
    let pins = PinDir::new("evk-src");
    let (mut dp, mut ring, sampler) = loaded(&pins);
    // The reason and global budgets are wide; each source gets a burst of 2
    // per CPU and one more per second.
    let cfg = EventsConfig {
        enabled: true,
        rate_per_reason: 1000 * cpus(),
        burst: 1000 * cpus(),
        rate_per_source: cpus(),
        burst_per_source: 2 * cpus(),
        global_rate: 1000 * cpus(),
        ..EventsConfig::default()
    };
    let k = dp.set_events(&cfg).unwrap();
    assert_eq!((k.source_rate, k.source_burst), (1, 2));
    let syn_from = |last: u8| {
        v4_frame(
            [198, 51, 100, last],
            [10, 0, 0, 1],
            PROTO_TCP,
            &tcp(40000, 22, TCP_SYN, 0),
        )
    };
    let (noisy, quiet) = (syn_from(7), syn_from(8));
    assert_eq!(
        dp.test_run(programs::INGRESS, &noisy, 500).unwrap().action,
        XDP_DROP
    );
    let from_noisy = records(&mut ring);
    assert!(
        (2..=3).contains(&from_noisy.len()),
        "{} events from one source at 1/s with a burst of 2",
        from_noisy.len()
    );
    assert!(from_noisy.iter().all(|e| e.src[..4] == [198, 51, 100, 7]));
    // The same reason, another source: it still has its own budget (unless
    // the random seed put both in one slot: 1 in 4,096, then they share it).
    assert_eq!(
        dp.test_run(programs::INGRESS, &quiet, 500).unwrap().action,
        XDP_DROP
    );
    let from_quiet = records(&mut ring);
    assert!(
        from_quiet.len() <= 3,
        "{} events from the second source",
        from_quiet.len()
    );
    let shared_slot = tierguard_common::event::source_slot(
        &[198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        Reason::DenyList as u8,
        k.source_seed,
    ) == tierguard_common::event::source_slot(
        &[198, 51, 100, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        Reason::DenyList as u8,
        k.source_seed,
    );
    if !shared_slot {
        assert!(from_quiet.len() >= 2, "the second source is not starved");
    }
    assert!(from_quiet.iter().all(|e| e.src[..4] == [198, 51, 100, 8]));
    let suppressed = deny_list(&sampler.read().unwrap().suppressed);
    assert_eq!(
        (from_noisy.len() + from_quiet.len()) as u64 + suppressed,
        1000,
        "every drop emitted or suppressed"
    );
}
