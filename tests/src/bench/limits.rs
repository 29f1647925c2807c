//! Limiter rows of the benchmark: the ingress path with a per-source limit
//! for a known source (its own slot) and for rotating sources while every
//! slot is held (the overflow bucket), with a full blocked table, against the
//! same path without limits and the empty program in the same run; and the
//! kernel memory of the limiter's state and of the blocked table at their
//! capacity.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{Array, MapData};
use ipnetwork::IpNetwork;
use tierguard::{
    config::Config,
    datapath::{BlockTable, Datapath, XDP_DROP, XDP_PASS, coarse_now_ns},
    policy::CompiledPolicy,
};
use tierguard_common::{
    build::{udp, v4_frame},
    limit::Bucket,
    limiter::{
        BLOCK_ADMIN, BLOCK_CAPACITY, BlockValue, Buckets, MAX_LIMITS, SLOTS_PER_LIMIT, Slot, v4_key,
    },
    maps::{BENCH_SOURCES_CAPACITY, names, programs},
    packet::PROTO_UDP,
};
use tierguard_tests::{Rng, pins::PinDir};

use super::{fill_sources, median_ns, to16};

const KNOWN: [u8; 4] = [192, 0, 2, 1];
const NODE: [u8; 4] = [10, 0, 0, 1];

pub struct LimitRows {
    pub empty: f64,
    pub rotation: f64,
    /// Fixed source, no limit configured.
    pub no_limit: f64,
    /// Fixed source within its per-source limit (it owns its slot).
    pub known: f64,
    /// Rotating sources, a high per-key rate: each new key takes an idle slot.
    pub taking: f64,
    /// Rotating sources while every slot is held by a key in use: the
    /// overflow bucket, over its rate (dropped).
    pub full: f64,
    /// Rotating sources not blocked, with the blocked table full.
    pub blocks_miss: f64,
    /// A global limit (one bucket shared by every CPU), fixed source.
    pub global: f64,
    /// Two CPUs at once: a global limit (both write its bucket), and a
    /// per-source limit with one source per CPU (each its own slot).
    pub global_two_cpus: f64,
    pub per_source_two_cpus: f64,
    /// A blocked source, with the blocked table full.
    pub blocked: f64,
    /// Kernel memory (bytes, from the maps' fdinfo).
    pub slots_bytes: u64,
    pub shared_bytes: u64,
    pub stats_bytes: u64,
    pub blocks_v4_bytes: u64,
    pub blocks_v6_bytes: u64,
    /// Reading every entry of the full blocked tables from user space, as
    /// the agent's sweeper does at each sweep.
    pub sweep: Duration,
}

fn load(name: &str, policy: &str) -> (Datapath, PinDir) {
    let config = Config::load_str(policy, "benchmark", Path::new("/")).expect("policy loads");
    let policy = CompiledPolicy::compile(&config, &[]).expect("policy compiles");
    let pins = PinDir::new(name);
    let mut dp = Datapath::load_with(pins.path(), BENCH_SOURCES_CAPACITY)
        .unwrap_or_else(|e| panic!("load: {e}"));
    dp.apply(&policy).unwrap_or_else(|e| panic!("apply: {e}"));
    (dp, pins)
}

/// What the kernel charges for a map (`memlock` in its fdinfo).
fn memlock(pins: &Path, name: &str) -> u64 {
    let map = MapData::from_pin(pins.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let fd = map.fd().as_fd().as_raw_fd();
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("memlock:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

fn random_sources(rng: &mut Rng) -> Vec<[u8; 16]> {
    (0..BENCH_SOURCES_CAPACITY)
        .map(|_| {
            let mut a: [u8; 4] = rng.bytes();
            // Keep clear of the known source and the node.
            a[0] = a[0].clamp(11, 191);
            to16(IpAddr::from(a))
        })
        .collect()
}

/// Every slot of limit 0 held by another key that has just spent its
/// burst: busy for burst/rate seconds.
fn hold_every_slot(dp: &mut Datapath) {
    let map = dp.ebpf_mut().map_mut(names::LIMIT_SLOTS).expect("slots");
    let mut slots: Array<_, Slot> = Array::try_from(map).expect("array");
    let now = coarse_now_ns();
    for i in 0..SLOTS_PER_LIMIT {
        let holder = Slot {
            key: v4_key([1, 0, (i >> 8) as u8, i as u8]),
            buckets: Buckets {
                packets: Bucket {
                    tokens: 0,
                    last_ns: now,
                },
                ..Buckets::default()
            },
        };
        slots.set(i, holder, 0).expect("set slot");
    }
}

/// Fills both blocked tables to capacity with distinct random prefixes; the
/// IPv4 table's last entry is 203.0.113.0/24, the block measured.
fn fill_blocks(pins: &Path, rng: &mut Rng) {
    let mut t = BlockTable::open(pins).expect("block tables");
    let v = |len| BlockValue {
        until_ns: u64::MAX,
        created_ns: 1,
        origin: BLOCK_ADMIN,
        len,
        ..BlockValue::EMPTY
    };
    let mut v4 = std::collections::HashSet::new();
    while v4.len() < BLOCK_CAPACITY as usize - 1 {
        let a: [u8; 4] = rng.bytes();
        // Clear of 203.0.113.0/24, of the known source and of the node.
        v4.insert([a[0].clamp(11, 191), a[1], a[2], a[3]]);
    }
    for a in v4 {
        t.insert(IpNetwork::new(a.into(), 32).unwrap(), &v(32))
            .expect("insert an IPv4 block");
    }
    t.insert("203.0.113.0/24".parse().unwrap(), &v(24))
        .expect("insert the measured block");
    let mut v6 = std::collections::HashSet::new();
    while v6.len() < BLOCK_CAPACITY as usize {
        let mut b: [u8; 16] = rng.bytes();
        b[0] = 0x20;
        v6.insert(b);
    }
    for b in v6 {
        t.insert(IpNetwork::new(b.into(), 128).unwrap(), &v(128))
            .expect("insert an IPv6 block");
    }
}

/// The ingress program run on CPU 0 and CPU 1 at the same time, one frame
/// each, against the same pinned maps (a second agent's programs adopt
/// them): the mean of the two medians, in ns per packet.
fn two_cpus(dp: &mut Datapath, pins: &Path, frames: [&[u8]; 2]) -> f64 {
    let mut other = Datapath::load(pins).unwrap_or_else(|e| panic!("second load: {e}"));
    let run = |dp: &mut Datapath, cpu: usize, frame: &[u8]| {
        // SAFETY: a cpu_set_t we own, for this thread only.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        median_ns(dp, programs::INGRESS, frame, XDP_PASS)
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(dp, 0, frames[0]));
        let b = s.spawn(|| run(&mut other, 1, frames[1]));
        (a.join().expect("cpu 0"), b.join().expect("cpu 1"))
    });
    (a + b) / 2.0
}

pub fn measure() -> LimitRows {
    let mut rng = Rng(0x11_3173);
    let known = v4_frame(KNOWN, NODE, PROTO_UDP, &udp(1234, 53, 18));
    let sources = random_sources(&mut rng);

    // No limit: the reference path.
    let (mut dp, pins) = load("bench-limits-none", "");
    let empty = median_ns(&mut dp, programs::BASELINE, &known, XDP_PASS);
    let rotation = median_ns(&mut dp, programs::BENCH_BASELINE, &known, XDP_PASS);
    let no_limit = median_ns(&mut dp, programs::INGRESS, &known, XDP_PASS);
    drop(dp);
    drop(pins);

    // A per-source limit no packet here exceeds.
    let (mut dp, pins) = load(
        "bench-limits-high",
        "[[limits]]\nname = \"udp\"\nprotocol = \"udp\"\npps = \"1G\"\nburst = \"1G\"\n",
    );
    let known_ns = median_ns(&mut dp, programs::INGRESS, &known, XDP_PASS);
    fill_sources(&mut dp, &sources);
    let taking = median_ns(&mut dp, programs::BENCH_INGRESS, &known, XDP_PASS);
    drop(dp);
    drop(pins);

    // A global limit no packet here exceeds: alone, then from two CPUs at once.
    let (mut dp, pins) = load(
        "bench-limits-global",
        "[[limits]]\nname = \"udp\"\nprotocol = \"udp\"\nper = \"global\"\npps = \"1G\"\nburst = \"1G\"\n",
    );
    let global = median_ns(&mut dp, programs::INGRESS, &known, XDP_PASS);
    let global_two_cpus = two_cpus(&mut dp, pins.path(), [&known, &known]);
    drop(dp);
    drop(pins);
    let (mut dp, pins) = load(
        "bench-limits-two",
        "[[limits]]\nname = \"udp\"\nprotocol = \"udp\"\npps = \"1G\"\nburst = \"1G\"\n",
    );
    let other = v4_frame([192, 0, 2, 2], NODE, PROTO_UDP, &udp(1234, 53, 18));
    let per_source_two_cpus = two_cpus(&mut dp, pins.path(), [&known, &other]);
    drop(dp);
    drop(pins);

    // One packet a second per source: every slot held, the overflow spent.
    let (mut dp, pins) = load(
        "bench-limits-full",
        "[[limits]]\nname = \"udp\"\nprotocol = \"udp\"\npps = 1\nburst = 1000\n",
    );
    hold_every_slot(&mut dp);
    fill_sources(&mut dp, &sources);
    let full = median_ns(&mut dp, programs::BENCH_INGRESS, &known, XDP_DROP);
    let slots_bytes = memlock(pins.path(), names::LIMIT_SLOTS);
    let shared_bytes = memlock(pins.path(), names::LIMIT_SHARED);
    let stats_bytes = memlock(pins.path(), names::LIMIT_STATS);
    drop(dp);
    drop(pins);

    // The blocked table full: sources not in it, then one that is.
    let (mut dp, pins) = load("bench-limits-blocks", "");
    fill_blocks(pins.path(), &mut rng);
    fill_sources(&mut dp, &sources);
    let blocks_miss = median_ns(&mut dp, programs::BENCH_INGRESS, &known, XDP_PASS);
    let blocked_frame = v4_frame([203, 0, 113, 9], NODE, PROTO_UDP, &udp(1234, 53, 18));
    let blocked = median_ns(&mut dp, programs::INGRESS, &blocked_frame, XDP_DROP);
    let blocks_v4_bytes = memlock(pins.path(), names::BLOCKS_V4);
    let blocks_v6_bytes = memlock(pins.path(), names::BLOCKS_V6);
    let table = BlockTable::open(pins.path()).expect("block tables");
    let t = Instant::now();
    let listed = table.list().expect("list blocks").len();
    let sweep = t.elapsed();
    assert_eq!(listed, 2 * BLOCK_CAPACITY as usize, "the tables are full");
    drop(dp);
    drop(pins);

    LimitRows {
        empty,
        rotation,
        no_limit,
        known: known_ns,
        taking,
        global,
        global_two_cpus,
        per_source_two_cpus,
        full,
        blocks_miss,
        blocked,
        slots_bytes,
        shared_bytes,
        stats_bytes,
        blocks_v4_bytes,
        blocks_v6_bytes,
        sweep,
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

pub fn render(s: &mut String, r: &LimitRows) {
    let _ = writeln!(s, "\n## Limits and blocks\n");
    let _ = writeln!(
        s,
        "One per-source UDP limit (the limit stage reads one limit entry and charges one key). \
         `overhead` = program minus the empty program (fixed source) or minus the rotation alone \
         (rotating sources), as above.\n"
    );
    let _ = writeln!(s, "| case | program (ns) | overhead (ns) |");
    let _ = writeln!(s, "| --- | ---: | ---: |");
    let rows = [
        ("empty program", r.empty, 0.0),
        ("rotation alone", r.rotation, 0.0),
        (
            "fixed source, no limit configured",
            r.no_limit,
            r.no_limit - r.empty,
        ),
        (
            "known source within its limit (its own slot)",
            r.known,
            r.known - r.empty,
        ),
        (
            "65,536 rotating sources, high per-key rate (each takes an idle slot)",
            r.taking,
            r.taking - r.rotation,
        ),
        (
            "65,536 rotating sources, every slot held (overflow bucket, dropped)",
            r.full,
            r.full - r.rotation,
        ),
        (
            "global limit, fixed source (one shared bucket)",
            r.global,
            r.global - r.empty,
        ),
        (
            "global limit, two CPUs at once (both write its bucket)",
            r.global_two_cpus,
            r.global_two_cpus - r.empty,
        ),
        (
            "per-source limit, two CPUs at once, one source each (no shared line)",
            r.per_source_two_cpus,
            r.per_source_two_cpus - r.empty,
        ),
        (
            "65,536 rotating sources not blocked, blocked tables full (131,072 prefixes)",
            r.blocks_miss,
            r.blocks_miss - r.rotation,
        ),
        (
            "blocked source, blocked tables full",
            r.blocked,
            r.blocked - r.empty,
        ),
    ];
    for (case, ns, over) in rows {
        let _ = writeln!(s, "| {case} | {ns:.1} | {over:.1} |");
    }
    let known = r.known - r.empty;
    let full = r.full - r.rotation;
    let _ = writeln!(s, "\n| target | measured | met |\n| --- | --- | --- |");
    let _ = writeln!(
        s,
        "| random sources with the per-source table full: at most 2x the known-source cost | {full:.1} / {known:.1} = {:.2}x | {} |",
        full / known,
        super::yes(full <= 2.0 * known)
    );
    let _ = writeln!(
        s,
        "\nLimiter state at its fixed capacity (kernel `memlock` of each map, preallocated whatever the policy):\n"
    );
    let _ = writeln!(s, "| state | capacity | memory |");
    let _ = writeln!(s, "| --- | --- | ---: |");
    let _ = writeln!(
        s,
        "| per-key slots (`TG_LIMIT_SLOTS`) | {MAX_LIMITS} limits x {SLOTS_PER_LIMIT} slots of 48 bytes | {} |",
        mib(r.slots_bytes)
    );
    let _ = writeln!(
        s,
        "| overflow and global buckets (`TG_LIMIT_SHARED`) | {MAX_LIMITS} x 32 bytes | {} bytes |",
        r.shared_bytes
    );
    let _ = writeln!(
        s,
        "| counters (`TG_LIMIT_STATS`, per CPU) | {MAX_LIMITS} x 8 counters | {} bytes |",
        r.stats_bytes
    );
    let _ = writeln!(
        s,
        "| blocked IPv4 prefixes (`TG_BLOCKS_V4`, filled) | {BLOCK_CAPACITY} | {} |",
        mib(r.blocks_v4_bytes)
    );
    let _ = writeln!(
        s,
        "| blocked IPv6 prefixes (`TG_BLOCKS_V6`, filled) | {BLOCK_CAPACITY} | {} |",
        mib(r.blocks_v6_bytes)
    );
    let _ = writeln!(
        s,
        "\n- Known source: `tierguard_ingress` on one frame; the key owns its slot (a cache line that stays hot).\n\
- Two CPUs at once: the ingress program runs on CPU 0 and CPU 1 simultaneously (a second loader's programs \
  on the same pinned maps). A global limit's one bucket is written by both, so its cache line moves between \
  them; with a per-source limit each CPU's source has its own slot. The difference is what the shared bucket \
  costs (docs/design/limits.md: why global limits share one bucket rather than split the rate per CPU).\n\
- Every slot held: each of the 16,384 slots of the limit belongs to another key that has just spent its burst \
  (busy for burst/rate = 1,000 s), so every rotating source reads its two candidate slots, finds both busy and \
  is charged to the overflow bucket, which it has spent: the worst case of a spoofed flood.\n\
- The blocked tables are full: 65,535 random IPv4 /32s and the measured /24, and 65,536 random IPv6 /128s. Every packet pays one longest-prefix lookup in the trie of its family (docs/design/limits.md).\n\
- The agent's sweeper reads every blocked entry at each sweep (to end expired blocks): with both tables full \
  that read took {:.0} ms here; the sweep runs every second up to 10,000 blocks, then once per 10,000 blocks' \
  worth of seconds.\n\n\
Reproduce: `cargo xtask bench` (every section), or this section alone, printed: \
`cargo run --release -p tierguard-tests --bin tierguard-bench -- --only limits`.",
        r.sweep.as_secs_f64() * 1000.0
    );
}
