//! Segmentation rows of the benchmark: the full path (failsafe, lists,
//! flows, zones, rules) with a small and a large policy, for a new
//! connection's first packet and for an established flow's reply, on XDP
//! ingress and TC egress.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use tierguard::{
    config::Config,
    datapath::{Datapath, TC_PASS, XDP_PASS, coarse_now_ns},
    policy::CompiledPolicy,
};
use tierguard_common::{
    build::{tcp, v4_frame},
    decide::NO_ID,
    maps::{BENCH_SOURCES_CAPACITY, names, programs},
    packet::{PROTO_TCP, TCP_ACK, TCP_SYN},
    segment::{FlowKey, FlowValue},
};
use tierguard_tests::{Rng, pins::PinDir};

use super::{fill_sources, median_ns, to16};

/// The node: 10.0.0.1, in zone `core` (10.0.0.0/16).
const NODE: [u8; 4] = [10, 0, 0, 1];
const SERVICE_PORT: u16 = 443;
const CLIENT_PORT: u16 = 40000;
/// The packets measured in each direction.
const NEW_CONNECTION: &str = "new connection, tuple seen before (SYN, rule allows, flow rewritten)";
const ESTABLISHED: &str = "established (reply of a live flow)";
/// Ingress only: a SYN whose tuple the table has never held.
const NEW_TUPLE: &str = "new connection, new tuple (SYN, rule allows, flow inserted)";

pub struct SegRow {
    pub zones: usize,
    pub rules: usize,
    pub direction: &'static str,
    pub packet: &'static str,
    pub empty: f64,
    pub rotation: f64,
    pub cost: f64,
}

/// `core` (10.0.0.0/16) and `zones - 1` tiers `t1..`, each a /20 (16 to a
/// /16, so the zone lookup takes its two-read path); one rule lets every
/// tier reach core:443, one lets core reach every tier on 443 (the measured
/// paths); the other `rules - 2` are random tier pairs and ports, as a large
/// estate has.
fn policy_text(zones: usize, rules: usize, rng: &mut Rng) -> String {
    let mut s = String::from(
        "[segmentation]\ndefault = \"deny\"\n\n[[zones]]\nname = \"core\"\ncidrs = [\"10.0.0.0/16\"]\n",
    );
    for i in 1..zones {
        let _ = write!(
            s,
            "\n[[zones]]\nname = \"t{i}\"\ncidrs = [\"10.{}.{}.0/20\"]\n",
            1 + i / 16,
            (i % 16) * 16
        );
    }
    let rule = |s: &mut String, n: &mut usize, from: &str, to: &str, port: u16| {
        let _ = write!(
            s,
            "\n[[rules]]\nname = \"r{n}\"\nfrom = {from}\nto = {to}\nprotocol = \"tcp\"\nports = [{port}]\naction = \"allow\"\n"
        );
        *n += 1;
    };
    let mut n = 0;
    let tiers: Vec<String> = (1..zones).map(|i| format!("\"t{i}\"")).collect();
    let tiers = format!("[{}]", tiers.join(", "));
    rule(&mut s, &mut n, &tiers, "\"core\"", SERVICE_PORT);
    rule(&mut s, &mut n, "\"core\"", &tiers, SERVICE_PORT);
    while n < rules {
        let a = 1 + rng.below(zones as u64 - 1);
        let b = 1 + rng.below(zones as u64 - 1);
        // Ports from a realistic set: services reuse a few hundred ports.
        let port = 1000 + rng.below(300) as u16;
        rule(
            &mut s,
            &mut n,
            &format!("\"t{a}\""),
            &format!("\"t{b}\""),
            port,
        );
    }
    s
}

fn tier_address(zones: usize, rng: &mut Rng) -> [u8; 16] {
    let i = 1 + rng.below(zones as u64 - 1) as usize;
    let a = Ipv4Addr::new(
        10,
        (1 + i / 16) as u8,
        ((i % 16) * 16) as u8 + rng.below(16) as u8,
        1 + rng.below(254) as u8,
    );
    to16(a.into())
}

/// Distinct remote addresses in the rotation, whatever the policy: the same
/// number of flows for the small and the large policy, so their ratio
/// measures the policy's size and not the flow table's working set (with 10
/// zones there are 9 tiers of 4,094 addresses).
const DISTINCT_REMOTES: usize = 32_768;

/// `DISTINCT_REMOTES` distinct tier addresses in random order, repeated to
/// fill the rotation.
fn remotes(zones: usize, rng: &mut Rng) -> Vec<[u8; 16]> {
    let mut seen = std::collections::HashSet::new();
    let mut pool = Vec::with_capacity(DISTINCT_REMOTES);
    while pool.len() < DISTINCT_REMOTES {
        let a = tier_address(zones, rng);
        if seen.insert(a) {
            pool.push(a);
        }
    }
    pool.iter()
        .cycle()
        .take(BENCH_SOURCES_CAPACITY as usize)
        .copied()
        .collect()
}

fn flows(dp: &mut Datapath, keys: impl Iterator<Item = FlowKey>) {
    let map = dp.ebpf_mut().map_mut(names::FLOWS).expect("flow map");
    let mut m: aya::maps::HashMap<_, FlowKey, FlowValue> =
        aya::maps::HashMap::try_from(map).expect("hash");
    let now = coarse_now_ns();
    for k in keys {
        let v = FlowValue {
            last_seen_ns: now,
            rule: NO_ID,
            ..FlowValue::default()
        };
        m.insert(k, v, 0).expect("insert flow");
    }
}

fn key(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> FlowKey {
    FlowKey {
        src,
        dst,
        sport,
        dport,
        proto: PROTO_TCP,
        family: 4,
        _pad: [0; 2],
    }
}

pub fn measure(zones: usize, rules: usize) -> Vec<SegRow> {
    let mut rng = Rng(0x5e9_u64 ^ (zones as u64) << 20 ^ rules as u64);
    let text = policy_text(zones, rules, &mut rng);
    let config = Config::load_str(&text, "benchmark", Path::new("/")).expect("policy loads");
    let policy = CompiledPolicy::compile(&config, &[]).expect("policy compiles");
    let pins = PinDir::new(&format!("bench-seg-{zones}-{rules}"));
    let mut dp = Datapath::load_with(pins.path(), BENCH_SOURCES_CAPACITY)
        .unwrap_or_else(|e| panic!("load: {e}"));
    dp.apply(&policy).unwrap_or_else(|e| panic!("apply: {e}"));

    let remotes = remotes(zones, &mut rng);
    fill_sources(&mut dp, &remotes);
    let node = to16(Ipv4Addr::from(NODE).into());
    let node4 = NODE;
    let any = [192, 0, 2, 1];
    let mut rows = Vec::new();
    let mut row = |dp: &mut Datapath, dir: &'static str, packet: &'static str, frame: &[u8]| {
        let (empty, rotation, cost) = if dir == "ingress" {
            let prog = if packet == NEW_TUPLE {
                programs::BENCH_INGRESS_NEW
            } else {
                programs::BENCH_INGRESS
            };
            (
                median_ns(dp, programs::BASELINE, frame, XDP_PASS),
                median_ns(dp, programs::BENCH_BASELINE, frame, XDP_PASS),
                median_ns(dp, prog, frame, XDP_PASS),
            )
        } else {
            (
                median_ns(dp, programs::EGRESS_BASELINE, frame, 0),
                median_ns(dp, programs::BENCH_EGRESS_BASELINE, frame, TC_PASS),
                median_ns(dp, programs::BENCH_EGRESS, frame, TC_PASS),
            )
        };
        rows.push(SegRow {
            zones,
            rules,
            direction: dir,
            packet,
            empty,
            rotation,
            cost,
        });
    };
    // Ingress: tiers connect to core:443 (the source rotates).
    let syn_in = v4_frame(
        any,
        node4,
        PROTO_TCP,
        &tcp(CLIENT_PORT, SERVICE_PORT, TCP_SYN, 0),
    );
    row(&mut dp, "ingress", NEW_CONNECTION, &syn_in);
    // Ingress replies: core connected to each tier's 443 earlier.
    flows(
        &mut dp,
        remotes
            .iter()
            .map(|r| key(node, *r, CLIENT_PORT, SERVICE_PORT)),
    );
    let ack = v4_frame(
        any,
        node4,
        PROTO_TCP,
        &tcp(SERVICE_PORT, CLIENT_PORT, TCP_ACK, 0),
    );
    row(&mut dp, "ingress", ESTABLISHED, &ack);
    // Egress: core connects to each tier's 443 (the destination rotates).
    let syn = v4_frame(
        node4,
        any,
        PROTO_TCP,
        &tcp(CLIENT_PORT, SERVICE_PORT, TCP_SYN, 0),
    );
    row(&mut dp, "egress", NEW_CONNECTION, &syn);
    // Egress replies: the tiers connected to core:443.
    flows(
        &mut dp,
        remotes
            .iter()
            .map(|r| key(*r, node, CLIENT_PORT, SERVICE_PORT)),
    );
    let ack = v4_frame(
        node4,
        any,
        PROTO_TCP,
        &tcp(SERVICE_PORT, CLIENT_PORT, TCP_ACK, 0),
    );
    row(&mut dp, "egress", ESTABLISHED, &ack);
    // Last, as it fills the table with millions of flows: every SYN is a new
    // tuple's, so each is an insert, and once the table is full each insert
    // evicts the least recently used flow.
    row(&mut dp, "ingress", NEW_TUPLE, &syn_in);
    drop(dp);
    drop(pins);
    rows
}

pub fn render(s: &mut String, rows: &[SegRow]) {
    let _ = writeln!(s, "\n## Segmentation: the full path\n");
    let _ = writeln!(
        s,
        "Failsafe, lists, flow lookup, zone of source and destination, rule, flow write; \
         the remote address rotates through 32,768 distinct addresses spread over every tier (the same \
         number for both policies, so both rows keep 32,768 flows live). \
         `overhead` = program minus the rotation alone.\n"
    );
    let _ = writeln!(
        s,
        "| zones | rules | direction | packet | empty program (ns) | rotation alone (ns) | full path (ns) | overhead (ns) |"
    );
    let _ = writeln!(s, "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.zones,
            r.rules,
            r.direction,
            r.packet,
            r.empty,
            r.rotation,
            r.cost,
            r.cost - r.rotation
        );
    }
    let _ = writeln!(s, "\n| target | measured | met |\n| --- | --- | --- |");
    for r in rows {
        let over = r.cost - r.rotation;
        let _ = writeln!(
            s,
            "| {} zones, {} rules, {} {}: within 100 ns of the empty program | {over:.1} ns | {} |",
            r.zones,
            r.rules,
            r.direction,
            r.packet,
            super::yes(over <= 100.0)
        );
    }
    let small = rows.iter().filter(|r| r.rules <= 10);
    for a in small {
        if let Some(b) = rows
            .iter()
            .find(|b| b.rules > 10 && b.direction == a.direction && b.packet == a.packet)
        {
            let ratio = b.cost / a.cost;
            let _ = writeln!(
                s,
                "| {} {}: {} zones / {} rules within 1.2x of {} / {} | {:.1} / {:.1} = {ratio:.2}x | {} |",
                a.direction,
                a.packet,
                b.zones,
                b.rules,
                a.zones,
                a.rules,
                b.cost,
                a.cost,
                super::yes(ratio <= 1.2)
            );
        }
    }
    let _ = writeln!(
        s,
        "\nAn IPv4 zone is found with one or two array reads (a /16 table, then a /24 block where zones split \
         the /16; the trie only for /24s that hold longer prefixes); a rule with two array reads for the zone \
         pair and one for its port set (or one or two of a port table), whatever the number of rules; the \
         flow table is the only hash lookup (docs/design/segmentation.md). \
         The new-connection rows include writing the flow. With a tuple seen before, the rotation revisits \
         sources, so after the first 32,768 packets the write rewrites a flow the table holds (a retransmitted \
         SYN, or a client reusing its port). With a new tuple (ingress, a source port that changes each time \
         the rotation goes round), every packet inserts a flow into the LRU table, and once its 262,144 flows \
         are taken every insert evicts one: the cost of a flood of new connections, which the kernel LRU's \
         locked free lists and bucket updates make several times that of a rewrite, whatever the table's \
         size (docs/design/flows.md).\n"
    );
}
