//! Segmentation end to end: the node is a core-tier machine with the agent
//! enforcing on its links to an edge, a DMZ and a bastion namespace. Real TCP
//! and UDP across XDP ingress and TC egress; outcomes checked by traffic and
//! by exact counter deltas.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tierguard_tests::{
    agent::{Agent, free_addr},
    http::sample,
    lab::Lab,
    pins::PinDir,
};

/// Three tiers around the node. Zones name the peers' addresses; the node's
/// own addresses form the core (it is a core machine).
struct Estate {
    edge: Lab,
    dmz: Lab,
    bastion: Lab,
}

impl Estate {
    fn new(prefix: &str, first_net: u8) -> Estate {
        Estate {
            edge: Lab::new(&format!("{prefix}e"), first_net),
            dmz: Lab::new(&format!("{prefix}d"), first_net + 1),
            bastion: Lab::new(&format!("{prefix}b"), first_net + 2),
        }
    }

    fn zones(&self) -> String {
        let core: Vec<String> = [&self.edge, &self.dmz, &self.bastion]
            .iter()
            .flat_map(|l| {
                [
                    format!("\"{}/32\"", l.node_v4()),
                    format!("\"{}/128\"", l.node_v6()),
                ]
            })
            .collect();
        let peer = |l: &Lab| format!("[\"{}/32\", \"fd00:{}::2/128\"]", l.peer_v4(), l.net);
        format!(
            "[[zones]]\nname = \"edge\"\ncidrs = {}\n\n\
             [[zones]]\nname = \"dmz\"\ncidrs = {}\n\n\
             [[zones]]\nname = \"bastion\"\ncidrs = {}\n\n\
             [[zones]]\nname = \"core\"\ncidrs = [{}]\n\n",
            peer(&self.edge),
            peer(&self.dmz),
            peer(&self.bastion),
            core.join(", ")
        )
    }

    fn config(&self, dir: &Path, pins: &Path, body: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("policy.toml");
        // `mode` goes at the top, `flow_capacity` into [agent], the rest
        // after the zones.
        let lines = |keep: &dyn Fn(&str) -> bool| {
            body.lines()
                .filter(|l| keep(l))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let text = format!(
            "{}\n[agent]\ninterfaces = [\"{}\", \"{}\", \"{}\"]\npin_path = \"{}\"\n{}\n\n{}{}",
            lines(&|l| l.starts_with("mode")),
            self.edge.node_if,
            self.dmz.node_if,
            self.bastion.node_if,
            pins.display(),
            lines(&|l| l.starts_with("flow_capacity")),
            self.zones(),
            lines(&|l| !l.starts_with("mode") && !l.starts_with("flow_capacity")),
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A TCP server on the node answering every line with "echo <line>".
fn echo_server(port: u16) -> std::thread::JoinHandle<()> {
    let l = TcpListener::bind(("::", port)).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_ok() {
                    let mut w = s;
                    let _ = w.write_all(format!("echo {line}").as_bytes());
                }
            });
        }
    })
}

fn counter(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or(0.0)
}

fn packets(metrics: &str, iface: &str, dir: &str, verdict: &str, reason: &str) -> f64 {
    counter(
        metrics,
        &format!(
            "tierguard_packets_total{{direction=\"{dir}\",interface=\"{iface}\",reason=\"{reason}\",verdict=\"{verdict}\"}}"
        ),
    )
}

fn rule(metrics: &str, action: &str, name: &str) -> f64 {
    counter(
        metrics,
        &format!("tierguard_rule_packets_total{{action=\"{action}\",rule=\"{name}\"}}"),
    )
}

fn tmpdir(name: &str) -> PathBuf {
    tierguard_tests::tmpdir("segmentation", name)
}

const RULES: &str = r#"
[segmentation]
default = "deny"
intra_zone = "allow"

[[rules]]
name = "dmz-to-core-mesh"
from = ["dmz"]
to = ["core"]
protocol = "tcp"
ports = [15443]
action = "allow"

[[rules]]
name = "edge-to-core-trial"
from = "edge"
to = "core"
protocol = "tcp"
ports = [8443]
action = "audit"

[[rules]]
name = "core-to-edge-feed"
from = "core"
to = "edge"
protocol = "tcp"
ports = ["7000-7000"]
action = "allow"

[[rules]]
name = "core-to-edge-dns"
from = "core"
to = "edge"
protocol = "udp"
ports = [5353]
action = "allow"
"#;

#[test]
fn tiers_reach_only_what_the_rules_allow_in_both_directions() {
    let estate = Estate::new("tgsa", 241);
    let pins = PinDir::new("seg-rules");
    let dir = tmpdir("rules");
    let events_file = dir.join("events.jsonl");
    let body = format!(
        "{RULES}\n[events]\nenabled = true\noutput = \"{}\"\n",
        events_file.display()
    );
    let config = estate.config(&dir, pins.path(), &body);
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    let _mesh = echo_server(15443);
    let _trial = echo_server(8443);
    let (edge, dmz) = (&estate.edge, &estate.dmz);

    // Allowed: the DMZ reaches the core's mesh port; data flows both ways,
    // over IPv4 and IPv6.
    let before = agent.scrape();
    assert_eq!(
        dmz.tcp_exchange(&dmz.node_v4(), 15443, "hello").as_deref(),
        Some("echo hello\n")
    );
    assert_eq!(
        dmz.tcp_exchange(&dmz.node_v6(), 15443, "hello6").as_deref(),
        Some("echo hello6\n")
    );
    let after = agent.scrape();
    assert!(
        rule(&after, "allow", "dmz-to-core-mesh")
            >= rule(&before, "allow", "dmz-to-core-mesh") + 2.0,
        "both SYNs (and the client's later packets) are counted for the rule:\n{after}"
    );
    assert!(
        packets(&after, &dmz.node_if, "egress", "pass", "established")
            > packets(&before, &dmz.node_if, "egress", "pass", "established"),
        "the server's replies pass egress as an established flow"
    );

    // Forbidden: the edge may not reach the mesh port. Every SYN is dropped
    // and counted against the edge → core zone pair.
    let before = agent.scrape();
    assert_eq!(edge.tcp_exchange(&edge.node_v4(), 15443, "x"), None);
    let after = agent.scrape();
    let denied = packets(&after, &edge.node_if, "ingress", "drop", "default_deny")
        - packets(&before, &edge.node_if, "ingress", "drop", "default_deny");
    assert!(denied >= 1.0, "the edge's SYNs are dropped:\n{after}");
    let pair = "tierguard_zone_pair_drops_total{dst_zone=\"core\",src_zone=\"edge\"}";
    assert!(counter(&after, pair) >= denied, "{after}");

    // A forged ACK and a forged UDP "reply" from the edge, with no flow
    // behind them: dropped, exactly as many as were sent.
    let before = agent.scrape();
    edge.hping("-A", 443, 40000, 5, &edge.node_v4());
    edge.hping("--udp", 53, 40001, 5, &edge.node_v4());
    let after = agent.scrape();
    assert_eq!(
        packets(&after, &edge.node_if, "ingress", "drop", "default_deny")
            - packets(&before, &edge.node_if, "ingress", "drop", "default_deny"),
        10.0,
        "5 forged ACKs and 5 forged UDP replies dropped"
    );

    // An audit rule: the edge's connection to 8443 goes through, and the
    // rule counts it as a would-be drop.
    let before = agent.scrape();
    assert_eq!(
        edge.tcp_exchange(&edge.node_v4(), 8443, "trial").as_deref(),
        Some("echo trial\n")
    );
    let after = agent.scrape();
    assert!(
        rule(&after, "audit", "edge-to-core-trial") > rule(&before, "audit", "edge-to-core-trial")
    );
    assert!(
        packets(&after, &edge.node_if, "ingress", "audit", "rule_audit")
            > packets(&before, &edge.node_if, "ingress", "audit", "rule_audit")
    );

    // Security events name the rule and the zones of what they report.
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&events_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let audited = (0..50)
        .find_map(|_| {
            let found = lines()
                .into_iter()
                .find(|e| e["reason"] == "rule_audit" && e["dst_port"] == 8443);
            if found.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            found
        })
        .expect("an event for the audited connection");
    assert_eq!(audited["verdict"], "audit");
    assert_eq!(audited["rule"], "edge-to-core-trial");
    assert_eq!(audited["src_zone"], "edge");
    assert_eq!(audited["dst_zone"], "core");
    let denied = lines()
        .into_iter()
        .find(|e| e["reason"] == "default_deny" && e["dst_port"] == 15443)
        .expect("an event for the edge's refused SYN");
    assert_eq!(
        (denied["src_zone"].as_str(), denied["dst_zone"].as_str()),
        (Some("edge"), Some("core"))
    );
    assert!(
        denied.get("rule").is_none() && denied.get("list").is_none(),
        "{denied}"
    );

    // Egress: the core may open the feed on 7000 (the reply comes back as
    // an established flow) but nothing else on the edge.
    let node_addr: SocketAddr = format!("{}:7000", edge.peer_v4()).parse().unwrap();
    let mut server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &edge.ns,
            "sh",
            "-c",
            "echo feed | nc -l -N -w 5 7000",
        ])
        .spawn()
        .unwrap();
    let got = (0..20).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let mut s = TcpStream::connect_timeout(&node_addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        Some(buf)
    });
    let _ = server.wait();
    assert_eq!(
        got.as_deref(),
        Some("feed\n"),
        "the allowed egress connection works"
    );

    let before = agent.scrape();
    let blocked: SocketAddr = format!("{}:7001", edge.peer_v4()).parse().unwrap();
    assert!(
        TcpStream::connect_timeout(&blocked, Duration::from_secs(2)).is_err(),
        "a forbidden egress connection does not complete"
    );
    let after = agent.scrape();
    assert!(
        packets(&after, &edge.node_if, "egress", "drop", "default_deny")
            > packets(&before, &edge.node_if, "egress", "drop", "default_deny"),
        "the SYN is dropped on egress:\n{after}"
    );

    // UDP: the node asks the edge on 5353 (allowed); the edge's answer from
    // 5353 to the asking port is a reply and passes.
    let sock = UdpSocket::bind(format!("{}:0", edge.node_v4())).unwrap();
    let port = sock.local_addr().unwrap().port();
    sock.send_to(b"query", format!("{}:5353", edge.peer_v4()))
        .unwrap();
    let before = agent.scrape();
    edge.hping("--udp", 5353, port, 3, &edge.node_v4());
    let after = agent.scrape();
    assert_eq!(
        packets(&after, &edge.node_if, "ingress", "pass", "established")
            - packets(&before, &edge.node_if, "ingress", "pass", "established"),
        3.0,
        "the three answers pass as replies of the node's query"
    );
    assert!(
        counter(&after, "tierguard_flow_replies_total")
            >= counter(&before, "tierguard_flow_replies_total") + 3.0,
        "and are counted as flow replies"
    );
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    assert!(sock.recv_from(&mut buf).is_ok(), "and reach the socket");
    assert!(
        counter(&after, "tierguard_flows_created_total") >= 4.0,
        "{after}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn audit_mode_passes_everything_and_counts_what_it_would_drop() {
    let estate = Estate::new("tgsb", 244);
    let pins = PinDir::new("seg-audit");
    let dir = tmpdir("audit");
    let body = "mode = \"audit\"\n[segmentation]\ndefault = \"deny\"\n";
    let config = estate.config(&dir, pins.path(), body);
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    let _server = echo_server(15444);
    let edge = &estate.edge;
    let before = agent.scrape();
    assert_eq!(
        edge.tcp_exchange(&edge.node_v4(), 15444, "audited")
            .as_deref(),
        Some("echo audited\n"),
        "audit mode drops nothing"
    );
    let after = agent.scrape();
    assert!(
        packets(&after, &edge.node_if, "ingress", "audit", "default_deny")
            > packets(&before, &edge.node_if, "ingress", "audit", "default_deny"),
        "what would have been dropped is counted as audit:\n{after}"
    );
    assert_eq!(
        packets(&after, &edge.node_if, "ingress", "drop", "default_deny"),
        0.0
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn failsafe_ssh_from_the_management_range_survives_a_deny_everything_policy() {
    let estate = Estate::new("tgsc", 247);
    let pins = PinDir::new("seg-failsafe");
    let dir = tmpdir("failsafe");
    let body = format!(
        "[segmentation]\ndefault = \"deny\"\nintra_zone = \"deny\"\n\n\
         [failsafe]\nmanagement = [\"{}/32\"]\nssh_port = 2222\n",
        estate.bastion.peer_v4()
    );
    let config = estate.config(&dir, pins.path(), &body);
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    let _ssh = echo_server(2222);
    let (bastion, edge) = (&estate.bastion, &estate.edge);
    let before = agent.scrape();
    assert_eq!(
        bastion
            .tcp_exchange(&bastion.node_v4(), 2222, "admin")
            .as_deref(),
        Some("echo admin\n"),
        "the management range still reaches SSH"
    );
    let after = agent.scrape();
    assert!(
        packets(&after, &bastion.node_if, "ingress", "pass", "failsafe")
            > packets(&before, &bastion.node_if, "ingress", "pass", "failsafe")
    );
    assert!(
        packets(&after, &bastion.node_if, "egress", "pass", "failsafe")
            > packets(&before, &bastion.node_if, "egress", "pass", "failsafe"),
        "the server's side of the session passes egress by the failsafe too"
    );
    assert_eq!(
        edge.tcp_exchange(&edge.node_v4(), 2222, "intruder"),
        None,
        "anyone else is denied"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn replies_stop_passing_once_their_flow_has_expired() {
    let estate = Estate::new("tgsd", 235);
    let pins = PinDir::new("seg-expiry");
    let dir = tmpdir("expiry");
    // A smaller flow table than the default, as `[agent] flow_capacity`.
    let body = format!("flow_capacity = 65536\n{RULES}\n[flows]\nudp_timeout = \"2s\"\n");
    let config = estate.config(&dir, pins.path(), &body);
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    let edge = &estate.edge;
    let sock = UdpSocket::bind(format!("{}:0", edge.node_v4())).unwrap();
    let port = sock.local_addr().unwrap().port();
    let established = |m: &str| packets(m, &edge.node_if, "ingress", "pass", "established");
    let denied = |m: &str| packets(m, &edge.node_if, "ingress", "drop", "default_deny");

    // A fresh query: its answer passes (the scrape comes first so that the
    // answer follows the query as closely as a loaded machine allows).
    let before = agent.scrape();
    sock.send_to(b"query", format!("{}:5353", edge.peer_v4()))
        .unwrap();
    edge.hping("--udp", 5353, port, 1, &edge.node_v4());
    let after = agent.scrape();
    assert_eq!(established(&after) - established(&before), 1.0);

    // Idle for longer than udp_timeout: the same "answer" is now a packet
    // from the edge to a port no rule opens.
    std::thread::sleep(Duration::from_millis(4000));
    let before = agent.scrape();
    edge.hping("--udp", 5353, port, 1, &edge.node_v4());
    let after = agent.scrape();
    assert_eq!(established(&after) - established(&before), 0.0);
    assert_eq!(denied(&after) - denied(&before), 1.0, "{after}");

    // The agent's sweeper (every 10 s) frees the expired flow and counts it.
    agent.wait_for("the sweeper to free the expired flow", |m| {
        counter(m, "tierguard_flows_expired_total") >= 1.0
    });
    let m = agent.scrape();
    assert_eq!(counter(&m, "tierguard_flow_table_capacity"), 65_536.0);
    let flows =
        aya::maps::MapInfo::from_pin(pins.path().join(tierguard_common::maps::names::FLOWS))
            .unwrap();
    assert_eq!(
        flows.max_entries(),
        65_536,
        "the table was created at that size"
    );
    assert_eq!(counter(&m, "tierguard_flow_evictions_total"), 0.0, "{m}");
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

/// A restart with another `[agent] flow_capacity` recreates the flow table;
/// the flows live before it are copied over, so an exchange that began under
/// the first agent gets its answers under the second.
#[test]
fn a_flow_capacity_change_keeps_the_live_flows() {
    let estate = Estate::new("tgsf", 238);
    let pins = PinDir::new("seg-carry");
    let dir = tmpdir("carry");
    let config = estate.config(&dir, pins.path(), RULES);
    let cfg = config.to_str().unwrap().to_string();
    let first = Agent::start(&["--config", &cfg, "--persist"], free_addr());
    let edge = &estate.edge;
    let sock = UdpSocket::bind(format!("{}:0", edge.node_v4())).unwrap();
    let port = sock.local_addr().unwrap().port();
    // The query opens a flow (core → edge on 5353 is allowed).
    sock.send_to(b"query", format!("{}:5353", edge.peer_v4()))
        .unwrap();
    first.wait_for("the query's flow", |m| {
        counter(m, "tierguard_flows_created_total") >= 1.0
    });
    assert!(first.stop().success());

    let config = estate.config(
        &dir,
        pins.path(),
        &format!("flow_capacity = 65536\n{RULES}"),
    );
    let second = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    assert!(
        second.log().contains("live flows copied over"),
        "{}",
        second.log()
    );
    let established = |m: &str| packets(m, &edge.node_if, "ingress", "pass", "established");
    let denied = |m: &str| packets(m, &edge.node_if, "ingress", "drop", "default_deny");
    // The answer passes as established; the same packet to a port with no
    // flow behind it is denied.
    let before = second.scrape();
    edge.hping("--udp", 5353, port, 1, &edge.node_v4());
    edge.hping("--udp", 5353, port.wrapping_add(1), 1, &edge.node_v4());
    let after = second.scrape();
    assert_eq!(established(&after) - established(&before), 1.0, "{after}");
    assert_eq!(denied(&after) - denied(&before), 1.0, "{after}");
    assert_eq!(counter(&after, "tierguard_flow_table_capacity"), 65_536.0);
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}
