//! Pinned maps across agent versions: a restart over this version's own pins
//! keeps every map (and its state); a pinned map an earlier version left
//! with another layout is created afresh, and the programs enforce with it;
//! a map an earlier version had and this one does not is unpinned.

use std::path::Path;
use std::process::Command;

use tierguard::{
    config::Config,
    datapath::{Datapath, LoadOptions, TC_DROP, TC_PASS, XDP_DROP, XDP_PASS},
    policy::CompiledPolicy,
};
use tierguard_common::{
    build::{tcp, v4_frame},
    maps::{names, programs},
    packet::{PROTO_TCP, TCP_ACK, TCP_SYN},
    segment::{FlowKey, FlowValue},
};
use tierguard_tests::pins::PinDir;

/// Zones with a default deny between them and one rule: edge may reach core on 443.
const POLICY: &str = "[segmentation]\ndefault = \"deny\"\n\n\
    [[zones]]\nname = \"edge\"\ncidrs = [\"10.10.0.0/16\"]\n\n\
    [[zones]]\nname = \"core\"\ncidrs = [\"10.30.0.0/16\"]\n\n\
    [[rules]]\nname = \"edge-to-core-https\"\nfrom = [\"edge\"]\nto = [\"core\"]\nprotocol = \"tcp\"\nports = [443]\naction = \"allow\"\n";

fn loaded(pins: &Path) -> Datapath {
    let config = Config::load_str(POLICY, "test.toml", Path::new(".")).unwrap();
    let policy = CompiledPolicy::compile(&config, &[]).unwrap();
    let mut dp = Datapath::load(pins).unwrap_or_else(|e| panic!("load: {e}"));
    dp.apply(&policy).unwrap_or_else(|e| panic!("apply: {e}"));
    dp
}

fn syn_to(port: u16) -> Vec<u8> {
    syn(40000, port)
}

/// A SYN from edge port `sport` to core port `dport`.
fn syn(sport: u16, dport: u16) -> Vec<u8> {
    v4_frame(
        [10, 10, 0, 5],
        [10, 30, 0, 9],
        PROTO_TCP,
        &tcp(sport, dport, TCP_SYN, 0),
    )
}

fn check_enforcement(dp: &mut Datapath) {
    assert_eq!(
        dp.test_run(programs::INGRESS, &syn_to(443), 1)
            .unwrap()
            .action,
        XDP_PASS,
        "the rule allows edge to core on 443"
    );
    assert_eq!(
        dp.test_run(programs::INGRESS, &syn_to(22), 1)
            .unwrap()
            .action,
        XDP_DROP,
        "the default denies the rest"
    );
}

/// Pins a new map at `path`, as an earlier version would have left it.
fn pin_map(path: &Path, kind: &str, key: usize, value: usize, entries: u32, name: &str) {
    let status = Command::new("bpftool")
        .args(["map", "create"])
        .arg(path)
        .args(["type", kind, "key", &key.to_string(), "value"])
        .arg(value.to_string())
        .args(["entries", &entries.to_string(), "name", name])
        .status()
        .expect("bpftool is installed by `cargo xtask setup`");
    assert!(status.success(), "bpftool map create {name}");
}

type FlowTable = aya::maps::HashMap<aya::maps::MapData, FlowKey, FlowValue>;

fn flow_table(pins: &Path) -> FlowTable {
    let map = aya::maps::MapData::from_pin(pins.join(names::FLOWS)).unwrap();
    aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(map).unwrap()).unwrap()
}

fn flows(pins: &Path) -> usize {
    flow_table(pins).keys().count()
}

/// The source ports of the pinned table's flows, sorted.
fn flow_ports(pins: &Path) -> Vec<u16> {
    let mut ports: Vec<u16> = flow_table(pins).keys().map(|k| k.unwrap().sport).collect();
    ports.sort();
    ports
}

/// A flow from edge to core:443 from source port `sport`, last seen at `seen`.
fn flow(sport: u16, seen: u64) -> (FlowKey, FlowValue) {
    let mut src = [0; 16];
    src[..4].copy_from_slice(&[10, 10, 0, 5]);
    let mut dst = [0; 16];
    dst[..4].copy_from_slice(&[10, 30, 0, 9]);
    let key = FlowKey {
        src,
        dst,
        sport,
        dport: 443,
        proto: PROTO_TCP,
        family: 4,
        _pad: [0; 2],
    };
    let value = FlowValue {
        last_seen_ns: seen,
        ..FlowValue::default()
    };
    (key, value)
}

#[test]
fn a_restart_over_its_own_pins_keeps_every_map() {
    let pins = PinDir::new("upgrade-same");
    let mut first = loaded(pins.path());
    assert!(first.recreated().is_empty(), "a fresh pin directory");
    check_enforcement(&mut first);
    assert_eq!(flows(pins.path()), 1, "the allowed SYN opened a flow");
    drop(first);
    let mut second = loaded(pins.path());
    assert!(second.adopted());
    assert_eq!(
        second.recreated(),
        &[],
        "every pinned map has this version's layout"
    );
    assert_eq!(flows(pins.path()), 1, "the flow table carried over");
    check_enforcement(&mut second);
}

#[test]
fn a_pinned_map_of_an_older_layout_is_created_afresh() {
    let pins = PinDir::new("upgrade-layout");
    let mut first = loaded(pins.path());
    check_enforcement(&mut first);
    drop(first);
    // What an earlier version would have left: the settings map with a
    // smaller value (no flow-clock fields).
    let meta = pins.path().join(names::SEG_META);
    std::fs::remove_file(&meta).unwrap();
    let older = std::mem::size_of::<tierguard_common::segment::SegMeta>() - 16;
    pin_map(&meta, "array", 4, older, 2, names::SEG_META);

    let mut second = loaded(pins.path());
    let r = second.recreated();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].map, names::SEG_META);
    assert_eq!(r[0].was.value_size as usize, older);
    assert_eq!(
        r[0].now.value_size as usize,
        std::mem::size_of::<tierguard_common::segment::SegMeta>()
    );
    assert_eq!(
        flows(pins.path()),
        1,
        "maps of the same layout keep their state"
    );
    check_enforcement(&mut second);
}

#[test]
fn a_map_an_older_version_retired_is_unpinned() {
    let pins = PinDir::new("upgrade-retired");
    let mut first = loaded(pins.path());
    check_enforcement(&mut first);
    drop(first);
    // What an earlier version left: its zone-pair hash map, which this
    // version replaced with the pair matrix.
    let old = pins.path().join("TG_ZONE_PAIRS");
    pin_map(&old, "hash", 8, 4, 1024, "TG_ZONE_PAIRS");

    let mut second = loaded(pins.path());
    assert_eq!(second.retired(), &["TG_ZONE_PAIRS".to_string()]);
    assert!(!old.exists(), "the retired map's pin is removed");
    assert_eq!(second.recreated(), &[], "the other maps are kept");
    assert_eq!(flows(pins.path()), 1, "and keep their state");
    check_enforcement(&mut second);
    let third = loaded(pins.path());
    assert!(third.retired().is_empty(), "nothing left to retire");
}

/// The live generation's slot and `PolicyMeta`, read from the pins.
fn live_meta(pins: &Path) -> (u32, tierguard_common::maps::PolicyMeta) {
    let open = |name: &str| {
        aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(pins.join(name)).unwrap())
            .unwrap()
    };
    let active: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(open(names::ACTIVE_SLOT)).unwrap();
    let slot = active.get(&0, 0).unwrap() & 1;
    let meta: aya::maps::Array<_, tierguard_common::maps::PolicyMeta> =
        aya::maps::Array::try_from(open(names::POLICY_META)).unwrap();
    (slot, meta.get(&slot, 0).unwrap())
}

/// An agent over its own version's pins writes the IPv6 table at the size
/// its policy needs from the first transaction: the program enforcing until
/// `install` reads the size from the generation too. (Programs from before
/// the size field had another table layout: their upgrade is a handover,
/// in which they never read the new generation.)
#[test]
fn an_adopting_agent_writes_the_ipv6_table_at_its_own_size() {
    use tierguard_common::build::{udp, v6_frame};
    use tierguard_common::maps::V6_MIN_BUCKET_BITS;
    use tierguard_common::packet::PROTO_UDP;
    const V6_POLICY: &str =
        "[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"2001:db8:7::/48\"]\n";
    let policy = CompiledPolicy::compile(
        &Config::load_str(V6_POLICY, "test.toml", Path::new(".")).unwrap(),
        &[],
    )
    .unwrap();
    assert_eq!(policy.v6_bucket_bits, V6_MIN_BUCKET_BITS);
    let denied = v6_frame(
        [0x20, 0x01, 0x0d, 0xb8, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        PROTO_UDP,
        &udp(1, 2, 0),
    );
    let pins = PinDir::new("upgrade-v6size");
    let run = |dp: &mut Datapath| dp.test_run(programs::DISPATCH, &denied, 1).unwrap().action;

    let mut first = Datapath::load(pins.path()).unwrap();
    first.apply(&policy).unwrap();
    first.install().unwrap();
    assert_eq!(live_meta(pins.path()).1.v6_bucket_bits, V6_MIN_BUCKET_BITS);
    assert_eq!(run(&mut first), XDP_DROP);

    // Adopted, before install: `first`'s program enforces the new
    // generation, written at the policy's size, and finds the entry.
    let mut second = Datapath::load(pins.path()).unwrap();
    assert!(second.adopted() && second.recreated().is_empty());
    assert_eq!(second.apply(&policy).unwrap(), 2);
    let (_, meta) = live_meta(pins.path());
    assert_eq!(meta.v6_bucket_bits, V6_MIN_BUCKET_BITS);
    assert_eq!(
        run(&mut first),
        XDP_DROP,
        "the earlier program reads it right"
    );
    second.install().unwrap();
    assert_eq!(run(&mut second), XDP_DROP);
}

/// An upgrade that recreates a map: until the new agent's programs are
/// installed, the earlier agent's programs enforce the earlier generation
/// whole (its own copy of the recreated map and the shared maps agree);
/// after `install` the new generation is enforced, and the handover's
/// traces are gone.
#[test]
fn until_install_the_earlier_programs_enforce_their_own_generation_whole() {
    use tierguard_common::build::{udp, v6_frame};
    use tierguard_common::maps::{DirectBlock, V4_DIRECT_BLOCKS, V4_DIRECT_PER_BLOCK, V6Bucket};
    use tierguard_common::packet::PROTO_UDP;
    // The block of the IPv4 direct table (shared by both versions) that
    // holds 10.9.0.0/24, in `slot`.
    let v4_block = |pins: &Path, slot: u32| {
        let m = aya::maps::MapData::from_pin(pins.join(names::V4_DIRECT)).unwrap();
        let a: aya::maps::Array<_, DirectBlock> =
            aya::maps::Array::try_from(aya::maps::Map::from_map_data(m).unwrap()).unwrap();
        let block = slot * V4_DIRECT_BLOCKS + 0x0a_09_00 / V4_DIRECT_PER_BLOCK;
        a.get(&block, 0).unwrap()
    };
    let deny = |cidr: &str| {
        let toml = format!("[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"{cidr}\"]\n");
        CompiledPolicy::compile(
            &Config::load_str(&toml, "test.toml", Path::new(".")).unwrap(),
            &[],
        )
        .unwrap()
    };
    let from = |third: u8| {
        v6_frame(
            [
                0x20, 0x01, 0x0d, 0xb8, 0, third, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            ],
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            PROTO_UDP,
            &udp(1, 2, 0),
        )
    };
    let (a, b) = (from(7), from(8));
    // Through the dispatcher: whichever enforcement program is installed.
    let run =
        |dp: &mut Datapath, frame: &[u8]| dp.test_run(programs::DISPATCH, frame, 1).unwrap().action;
    let pins = PinDir::new("upgrade-handover");
    let mut earlier = Datapath::load(pins.path()).unwrap();
    earlier
        .apply(&deny("2001:db8:7::/48\", \"10.9.0.0/24"))
        .unwrap();
    earlier.install().unwrap();
    assert_eq!(run(&mut earlier, &a), XDP_DROP);
    assert_eq!(run(&mut earlier, &b), XDP_PASS);
    let (earlier_slot, _) = live_meta(pins.path());
    assert_ne!(v4_block(pins.path(), earlier_slot), DirectBlock::EMPTY);

    // What an earlier version would have pinned: the IPv6 table without
    // the flag this version creates it with. `earlier`'s programs keep
    // their own table (with the earlier generation in it).
    let table = pins.path().join(names::V6_TABLE);
    std::fs::remove_file(&table).unwrap();
    let entries = 2 * tierguard_common::maps::V6_BUCKETS;
    pin_map(
        &table,
        "array",
        4,
        std::mem::size_of::<V6Bucket>(),
        entries,
        names::V6_TABLE,
    );

    let mut later = Datapath::load(pins.path()).unwrap();
    assert!(later.adopted());
    let r: Vec<_> = later.recreated().iter().map(|r| r.map.as_str()).collect();
    assert_eq!(r, [names::V6_TABLE]);
    assert!(pins.path().join("handover_active_slot").exists());
    later.apply(&deny("2001:db8:8::/48")).unwrap();
    assert_eq!(
        run(&mut earlier, &a),
        XDP_DROP,
        "before install, the earlier generation is enforced whole"
    );
    assert_eq!(run(&mut earlier, &b), XDP_PASS);
    assert_eq!(
        later
            .apply(&deny("2001:db8:9::/48"))
            .unwrap_err()
            .to_string(),
        "a second policy transaction before install: during an upgrade's handover it would \
         overwrite the generation the earlier agent's programs still read"
    );
    assert_eq!(
        run(&mut earlier, &a),
        XDP_DROP,
        "the refusal changed nothing"
    );

    later.install().unwrap();
    for dp in [&mut earlier, &mut later] {
        assert_eq!(run(dp, &a), XDP_PASS, "the new generation, once installed");
        assert_eq!(run(dp, &b), XDP_DROP);
    }
    assert!(!pins.path().join("handover_active_slot").exists());
    let (slot, meta) = live_meta(pins.path());
    assert_ne!(
        slot, earlier_slot,
        "the new generation went to the other slot"
    );
    assert_eq!(meta.generation, 2);
    // The earlier generation was deleted from the shared maps once replaced.
    assert_eq!(v4_block(pins.path(), earlier_slot), DirectBlock::EMPTY);
    // An ordinary restart later: no handover.
    drop(later);
    let mut again = Datapath::load(pins.path()).unwrap();
    assert!(again.recreated().is_empty());
    assert!(!pins.path().join("handover_active_slot").exists());
    again.apply(&deny("2001:db8:7::/48")).unwrap();
    assert_eq!(run(&mut again, &a), XDP_DROP);
}

/// An agent that stops between load and install during a handover leaves
/// the earlier programs on their own active-slot map: the next agent takes
/// the handover up where it was.
#[test]
fn an_interrupted_handover_is_taken_up_by_the_next_agent() {
    let pins = PinDir::new("upgrade-handover-again");
    let mut earlier = loaded(pins.path());
    earlier.install().unwrap();
    let (earlier_slot, _) = live_meta(pins.path());
    let run = |dp: &mut Datapath, port: u16| {
        dp.test_run(programs::DISPATCH, &syn_to(port), 1)
            .unwrap()
            .action
    };
    assert_eq!(run(&mut earlier, 443), XDP_PASS);
    pin_map(
        &pins.path().join("TG_RETIRED_BY_THIS_VERSION"),
        "array",
        4,
        4,
        1,
        "TG_RETIRED",
    );

    let stopped = Datapath::load(pins.path()).unwrap();
    assert_eq!(stopped.retired(), ["TG_RETIRED_BY_THIS_VERSION"]);
    drop(stopped);
    assert!(pins.path().join("handover_active_slot").exists());

    // Nothing differs any more, but the earlier programs still run. The
    // next policy has no rule: 443 is denied too.
    let mut next = Datapath::load(pins.path()).unwrap();
    assert!(next.recreated().is_empty() && next.retired().is_empty());
    let no_rule = POLICY.split("[[rules]]").next().unwrap();
    let config = Config::load_str(no_rule, "test.toml", Path::new(".")).unwrap();
    next.apply(&CompiledPolicy::compile(&config, &[]).unwrap())
        .unwrap();
    let (slot, _) = live_meta(pins.path());
    assert_ne!(slot, earlier_slot, "written into the other slot");
    assert_eq!(
        run(&mut earlier, 443),
        XDP_PASS,
        "the earlier generation, whole"
    );
    assert_eq!(run(&mut earlier, 22), XDP_DROP);
    next.install().unwrap();
    assert!(!pins.path().join("handover_active_slot").exists());
    assert_eq!(run(&mut next, 443), XDP_DROP, "the next generation");
}

/// `[agent] flow_capacity` changed between two runs: the flow table is
/// created afresh at the new size, through the same handover as an upgrade,
/// and the live flows are copied over (at load, and at install those the
/// earlier programs opened meanwhile), so established connections go on.
#[test]
fn a_new_flow_capacity_recreates_the_flow_table_and_carries_its_flows() {
    let pins = PinDir::new("upgrade-flowcap");
    let mut first = loaded(pins.path());
    first.install().unwrap();
    check_enforcement(&mut first);
    assert_eq!(flow_ports(pins.path()), vec![40000]);
    drop(first);

    let options = LoadOptions {
        flow_capacity: 4096,
        ..LoadOptions::default()
    };
    let mut second = Datapath::load_opts(pins.path(), &options).unwrap();
    let r = second.recreated();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].map, names::FLOWS);
    assert_eq!(
        (r[0].was.max_entries, r[0].now.max_entries),
        (tierguard_common::segment::FLOW_CAPACITY, 4096)
    );
    let info = aya::maps::MapInfo::from_pin(pins.path().join(names::FLOWS)).unwrap();
    assert_eq!(info.max_entries(), 4096);
    assert_eq!(flow_ports(pins.path()), vec![40000], "copied at load");
    // Until install the earlier programs enforce, and open flows in their
    // own table.
    assert_eq!(
        second
            .test_run(programs::DISPATCH, &syn(40001, 443), 1)
            .unwrap()
            .action,
        XDP_PASS
    );
    assert_eq!(flow_ports(pins.path()), vec![40000]);
    let config = Config::load_str(POLICY, "test.toml", Path::new(".")).unwrap();
    second
        .apply(&CompiledPolicy::compile(&config, &[]).unwrap())
        .unwrap();
    second.install().unwrap();
    assert!(!pins.path().join("handover_active_slot").exists());
    assert_eq!(
        flow_ports(pins.path()),
        vec![40000, 40001],
        "copied at install"
    );
    // The replies of both flows pass the new egress program as established;
    // a reply with no flow behind it is judged by the rules (default deny).
    for (port, want) in [(40000, TC_PASS), (40001, TC_PASS), (40002, TC_DROP)] {
        let reply = v4_frame(
            [10, 30, 0, 9],
            [10, 10, 0, 5],
            PROTO_TCP,
            &tcp(443, port, TCP_SYN | TCP_ACK, 0),
        );
        assert_eq!(
            second.test_run(programs::EGRESS, &reply, 1).unwrap().action,
            want,
            "reply to port {port}"
        );
    }
    check_enforcement(&mut second);
}

/// A smaller flow table than the flows live: the most recently seen are
/// copied. (The kernel's LRU may evict before its table is full, as free
/// entries sit in per-CPU lists: the oldest copied go first.)
#[test]
fn a_smaller_flow_table_keeps_the_most_recently_seen_flows() {
    let pins = PinDir::new("upgrade-flowcap-shrink");
    let mut first = loaded(pins.path());
    first.install().unwrap();
    drop(first);
    // 1,100 flows, port p last seen at time p.
    {
        let mut table = flow_table(pins.path());
        for port in 1..=1100u16 {
            let (k, v) = flow(port, u64::from(port));
            table.insert(k, v, 0).unwrap();
        }
    }
    let options = LoadOptions {
        flow_capacity: 1024,
        ..LoadOptions::default()
    };
    let mut second = Datapath::load_opts(pins.path(), &options).unwrap();
    let check = |ports: Vec<u16>| {
        assert!(
            ports.iter().all(|&p| p > 76),
            "only the 1,024 most recent: {:?}",
            &ports[..5]
        );
        assert!(ports.ends_with(&[1096, 1097, 1098, 1099, 1100]));
        assert!(ports.len() > 1024 - 2 * 128, "{}", ports.len());
    };
    check(flow_ports(pins.path()));
    let seen: Vec<u64> = {
        let mut f: Vec<(u16, u64)> = flow_table(pins.path())
            .iter()
            .map(|e| e.unwrap())
            .map(|(k, v)| (k.sport, v.last_seen_ns))
            .collect();
        f.sort();
        f.iter().map(|(_, s)| *s).rev().take(3).collect()
    };
    assert_eq!(seen, vec![1100, 1099, 1098], "with their times");
    second.install().unwrap();
    check(flow_ports(pins.path()));
}

/// A flow table of another layout (here a larger value) cannot be read as
/// this version's: it is recreated empty, and the load goes on.
#[test]
fn a_flow_table_of_another_layout_is_not_copied() {
    let pins = PinDir::new("upgrade-flow-layout");
    let mut first = loaded(pins.path());
    first.install().unwrap();
    drop(first);
    let path = pins.path().join(names::FLOWS);
    std::fs::remove_file(&path).unwrap();
    pin_map(&path, "lru_hash", 40, 24, 1024, "TG_FLOWS");
    let status = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&path)
        .arg("key")
        .args(std::iter::repeat_n("1", 40))
        .arg("value")
        .args(std::iter::repeat_n("1", 24))
        .status()
        .unwrap();
    assert!(status.success());
    let mut second = loaded(pins.path());
    assert_eq!(second.recreated()[0].map, names::FLOWS);
    assert!(flow_ports(pins.path()).is_empty());
    second.install().unwrap();
    check_enforcement(&mut second);
}

/// A `handover_active_slot` pin that no program reads (its agent stopped
/// right after install, or a rollback never finished the handover) names no
/// live generation: the next load removes it and switches as usual.
#[test]
fn a_handover_pin_no_program_reads_is_removed() {
    let pins = PinDir::new("upgrade-handover-stale");
    let mut first = loaded(pins.path());
    first.install().unwrap();
    let (slot, _) = live_meta(pins.path());
    drop(first);
    // Naming the other slot: taken for a pending handover, it would make
    // the next generation go over the one the installed programs read.
    let stale = pins.path().join("handover_active_slot");
    pin_map(&stale, "array", 4, 4, 1, "TG_ACTIVE_SLOT");
    let status = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&stale)
        .args(["key", "0", "0", "0", "0", "value"])
        .arg((1 - slot).to_string())
        .args(["0", "0", "0"])
        .status()
        .unwrap();
    assert!(status.success());

    let mut next = loaded(pins.path());
    assert!(!stale.exists(), "removed at load");
    let (new_slot, meta) = live_meta(pins.path());
    assert_ne!(new_slot, slot, "an ordinary switch to the other slot");
    assert_eq!(meta.generation, 2);
    next.install().unwrap();
    check_enforcement(&mut next);
}
