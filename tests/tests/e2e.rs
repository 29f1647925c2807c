//! End to end: the agent binary enforcing on a veth, real traffic from a peer
//! namespace, counters read back through /metrics.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tierguard_tests::{
    agent::{Agent, free_addr, run_cli},
    http::sample,
    lab::{Lab, sh},
    pins::PinDir,
    prom::Prometheus,
};

const DENIED_V4: &str = "203.0.113.7";
const FLOOD_V4: &str = "203.0.113.66";
const DENIED_V6: &str = "2001:db8::7";

fn write_config(dir: &Path, iface: &str, pins: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("policy.toml");
    let text = format!(
        "[agent]\ninterfaces = [\"{iface}\"]\npin_path = \"{}\"\n\n\
         [[lists]]\nname = \"blocked\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\", \"2001:db8::/32\"]\n{extra}",
        pins.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn tmpdir(name: &str) -> PathBuf {
    tierguard_tests::tmpdir("e2e", name)
}

fn drops(metrics: &str, iface: &str) -> f64 {
    tierguard_tests::http::deny_list_drops(metrics, iface)
}

fn list_hits(metrics: &str, list: &str) -> f64 {
    sample(
        metrics,
        &format!("tierguard_list_hits_total{{action=\"deny\",list=\"{list}\"}}"),
    )
    .unwrap_or(0.0)
}

fn xdp_attached(iface: &str) -> bool {
    let out = sh(&["ip", "link", "show", "dev", iface]);
    String::from_utf8_lossy(&out.stdout).contains(" xdp")
}

/// A TCP server on the node that echoes one line back, for `accepts` connections.
fn echo_server(addr: &str) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let l = TcpListener::bind(format!("{addr}:0")).unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let mut got = Vec::new();
        l.set_nonblocking(false).unwrap();
        if let Ok((s, _)) = l.accept() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_ok() {
                let mut w = s;
                let _ = w.write_all(format!("echo {line}").as_bytes());
                got.push(line.trim().to_string());
            }
        }
        got
    });
    (port, h)
}

#[test]
fn lists_are_enforced_on_real_traffic_and_counted_exactly() {
    let lab = Lab::new("tge1", 211);
    lab.add_peer_source(DENIED_V4);
    lab.add_peer_source(FLOOD_V4);
    lab.add_peer_source(DENIED_V6);
    let pins = PinDir::new("e2e1");
    let dir = tmpdir("lists");
    let config = write_config(&dir, &lab.node_if, pins.path(), "");
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    assert!(xdp_attached(&lab.node_if), "XDP program attached");
    let m = agent.scrape();
    assert_eq!(
        sample(
            &m,
            &format!(
                "tierguard_xdp_attach_mode{{interface=\"{}\",mode=\"native\"}}",
                lab.node_if
            )
        ),
        Some(1.0),
        "veth supports native XDP"
    );

    // Allowed: ICMP both families, TCP with data both ways, UDP.
    assert!(lab.ping(None, &lab.node_v4(), 3), "allowed IPv4 ping");
    assert!(lab.ping(None, &lab.node_v6(), 3), "allowed IPv6 ping");
    let (port, server) = echo_server(&lab.node_v4());
    let reply = lab.exec_ok(&[
        "bash",
        "-c",
        &format!(
            "exec 3<>/dev/tcp/{}/{port}; echo hello >&3; read -t 5 r <&3; echo \"$r\"",
            lab.node_v4()
        ),
    ]);
    assert_eq!(String::from_utf8_lossy(&reply.stdout).trim(), "echo hello");
    assert_eq!(server.join().unwrap(), ["hello"]);
    let udp = UdpSocket::bind(format!("{}:0", lab.node_v4())).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let uport = udp.local_addr().unwrap().port();
    lab.exec_ok(&[
        "bash",
        "-c",
        &format!("echo datagram > /dev/udp/{}/{uport}", lab.node_v4()),
    ]);
    let mut buf = [0u8; 64];
    let (n, _) = udp
        .recv_from(&mut buf)
        .expect("allowed UDP datagram arrives");
    assert_eq!(&buf[..n], b"datagram\n");
    assert_eq!(
        drops(&agent.scrape(), &lab.node_if),
        0.0,
        "nothing allowed was dropped"
    );

    // Denied IPv4 ping: exactly 4 requests, all dropped, all counted.
    let before = agent.scrape();
    assert!(
        !lab.ping(Some(DENIED_V4), &lab.node_v4(), 4),
        "denied ping must fail"
    );
    let after = agent.scrape();
    assert_eq!(
        drops(&after, &lab.node_if) - drops(&before, &lab.node_if),
        4.0,
        "drops rose by the packets sent"
    );
    assert_eq!(
        list_hits(&after, "blocked") - list_hits(&before, "blocked"),
        4.0
    );

    // Denied IPv6 ping (the neighbour entry exists from the allowed ping).
    let before = agent.scrape();
    assert!(!lab.ping(Some(DENIED_V6), &lab.node_v6(), 3));
    let after = agent.scrape();
    assert_eq!(
        drops(&after, &lab.node_if) - drops(&before, &lab.node_if),
        3.0
    );

    // Denied TCP connection: never completes.
    let (port, _server) = echo_server(&lab.node_v4());
    assert!(
        !lab.exec(&[
            "nc",
            "-z",
            "-w",
            "2",
            "-s",
            DENIED_V4,
            &lab.node_v4(),
            &port.to_string()
        ]),
        "denied TCP connect must time out"
    );
    // Unblock the echo server's accept with an allowed connection.
    lab.exec(&["nc", "-z", "-w", "2", &lab.node_v4(), &port.to_string()]);

    // A flood from a denied source: every packet dropped and counted.
    let before = agent.scrape();
    lab.exec(&[
        "hping3",
        "--udp",
        "-p",
        "9999",
        "-a",
        FLOOD_V4,
        "-c",
        "500",
        "-i",
        "u500",
        "-q",
        &lab.node_v4(),
    ]);
    let after = agent.scrape();
    assert_eq!(
        drops(&after, &lab.node_if) - drops(&before, &lab.node_if),
        500.0
    );

    // explain agrees with what the kernel just did, and names the list.
    let e = run_cli(&[
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--src",
        DENIED_V4,
        "--dst",
        &lab.node_v4(),
        "--proto",
        "icmp",
        "--json",
    ]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&e.stdout).expect("explain --json prints JSON");
    assert_eq!(v["verdict"], "drop");
    assert_eq!(v["reason"], "deny_list");
    assert_eq!(v["list"], "blocked");
    assert_eq!(v["matched_prefix"], "203.0.113.0/24");
    let e = run_cli(&[
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--src",
        &lab.peer_v4(),
        "--dst",
        &lab.node_v4(),
        "--dport",
        "22",
    ]);
    assert!(String::from_utf8_lossy(&e.stdout).contains("verdict: pass"));

    // promtool accepts the exposition.
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by `cargo xtask setup`");
    p.stdin.take().unwrap().write_all(after.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let status = agent.stop();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    assert!(!xdp_attached(&lab.node_if), "detached on SIGTERM");
    assert!(!pins.path().exists(), "pins removed on SIGTERM");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_real_prometheus_server_scrapes_the_drop_counter() {
    let lab = Lab::new("tge2", 212);
    lab.add_peer_source(DENIED_V4);
    let pins = PinDir::new("e2e2");
    let dir = tmpdir("prom");
    let config = write_config(&dir, &lab.node_if, pins.path(), "");
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    assert!(!lab.ping(Some(DENIED_V4), &lab.node_v4(), 3));

    let prom = Prometheus::start(&dir, &[agent.metrics]);
    let query = format!(
        "tierguard_packets_total{{direction=\"ingress\",reason=\"deny_list\",verdict=\"drop\",interface=\"{}\"}}",
        lab.node_if
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let value = loop {
        if prom.ready()
            && let Some(r) = prom.query(&query).first()
        {
            assert_eq!(r["metric"]["job"], "tierguard");
            assert_eq!(r["metric"]["verdict"], "drop");
            break r["value"][1].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned the drop counter"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    drop(prom);
    assert_eq!(value, "3", "Prometheus sees the 3 dropped packets");
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn invalid_configs_are_refused_and_nothing_is_attached() {
    let lab = Lab::new("tge3", 213);
    let pins = PinDir::new("e2e3");
    let dir = tmpdir("invalid");
    let head = format!(
        "[agent]\ninterfaces = [\"{}\"]\npin_path = \"{}\"\n",
        lab.node_if,
        pins.path().display()
    );
    let list = "[[lists]]\nname = \"a\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/8\"]\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            format!("{head}colour = \"red\"\n"),
            "policy.toml:4:1: unknown field `colour`",
        ),
        (
            "bad CIDR",
            format!(
                "{head}[[lists]]\nname = \"a\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/33\"]\n"
            ),
            "policy.toml:7:10: '10.0.0.0/33' is not a CIDR",
        ),
        (
            "host bits",
            format!("{head}[[lists]]\nname = \"a\"\naction = \"deny\"\ncidrs = [\"10.1.2.3/8\"]\n"),
            "did you mean 10.0.0.0/8",
        ),
        (
            "duplicate list",
            format!("{head}{list}{list}"),
            "duplicate list name 'a' (first defined at line 5)",
        ),
        (
            "missing list file",
            format!("{head}[[lists]]\nname = \"a\"\naction = \"deny\"\nfiles = [\"absent.txt\"]\n"),
            "cannot read list file",
        ),
        (
            "bad list file line",
            format!("{head}[[lists]]\nname = \"a\"\naction = \"deny\"\nfiles = [\"bad.txt\"]\n"),
            "bad.txt:2:1: 'not-an-address' is not an IP address or CIDR",
        ),
        (
            "unknown interface",
            format!(
                "[agent]\ninterfaces = [\"tgnosuch0\"]\npin_path = \"{}\"\n{list}",
                pins.path().display()
            ),
            "no such interface: 'tgnosuch0'",
        ),
        (
            "no interface",
            format!(
                "[agent]\ninterfaces = []\npin_path = \"{}\"\n{list}",
                pins.path().display()
            ),
            "no interface to enforce on",
        ),
        (
            "malformed metrics address",
            format!(
                "[agent]\ninterfaces = [\"{}\"]\nmetrics_address = \"localhost:http\"\n",
                lab.node_if
            ),
            "'localhost:http' is not a listen address",
        ),
    ];
    std::fs::write(dir.join("bad.txt"), "192.0.2.0/24\nnot-an-address\n").unwrap();
    for (what, text, want) in cases {
        let path = dir.join("policy.toml");
        std::fs::write(&path, &text).unwrap();
        let p = path.to_str().unwrap();
        let check = run_cli(&["check", "--config", p]);
        let err = String::from_utf8_lossy(&check.stderr);
        assert_eq!(
            check.status.code(),
            Some(2),
            "{what}: check exits 2; stderr: {err}"
        );
        assert!(
            err.contains(want),
            "{what}: check names the problem ({want}); stderr: {err}"
        );

        let metrics = free_addr().to_string();
        let run = run_cli(&["run", "--config", p, "--metrics-address", &metrics]);
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{what}: run refuses");
        assert!(
            err.contains(want),
            "{what}: run names the problem; stderr: {err}"
        );
        assert!(
            err.contains("nothing was attached"),
            "{what}: says nothing was attached; stderr: {err}"
        );
        assert!(!xdp_attached(&lab.node_if), "{what}: nothing attached");
        assert!(!pins.path().exists(), "{what}: nothing pinned");
    }
    // The same interface twice on the command line.
    let run = run_cli(&[
        "run",
        "--iface",
        &lab.node_if,
        "-i",
        &lab.node_if,
        "--pin-path",
        pins.path().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("interface '{}' is given twice", lab.node_if)),
        "{err}"
    );
    assert!(!xdp_attached(&lab.node_if));
    // A relative --pin-path is refused.
    let run = run_cli(&[
        "run",
        "--iface",
        &lab.node_if,
        "--pin-path",
        "relative/pins",
    ]);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&run.stderr)
            .contains("--pin-path 'relative/pins' must be an absolute path")
    );
    // A bad --metrics-address on the command line is refused by the argument parser.
    let run = run_cli(&["run", "--iface", &lab.node_if, "--metrics-address", "nope"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&run.stderr)
            .contains("invalid value 'nope' for '--metrics-address")
    );
    // explain refuses what it cannot answer, with the reason.
    let e = run_cli(&["explain", "--src", "10.0.0.1", "--dst", "::1"]);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("different address families"));
    let e = run_cli(&[
        "explain", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--proto", "icmp", "--dport", "22",
    ]);
    assert_eq!(e.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&e.stderr)
            .contains("--dport and --sport apply to tcp and udp only")
    );
    // A valid policy checks clean and says what it holds.
    let path = dir.join("policy.toml");
    std::fs::write(&path, format!("{head}{list}")).unwrap();
    let ok = run_cli(&["check", "--config", path.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        out.contains("policy OK") && out.contains("a ") && out.contains("1 IPv4, 0 IPv6 prefixes"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_capabilities_are_named_and_nothing_is_attached() {
    let lab = Lab::new("tge7", 217);
    let pins = PinDir::new("e2e7");
    let bin = tierguard_tests::agent::binary();
    let metrics = free_addr().to_string();
    // As an unprivileged user with no capabilities at all.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&bin)
        .args([
            "run",
            "--iface",
            &lab.node_if,
            "--metrics-address",
            &metrics,
            "--pin-path",
        ])
        .arg(pins.path())
        .output()
        .expect("setpriv (util-linux) runs the agent unprivileged");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("missing capabilities: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
        "{err}"
    );
    assert!(err.contains("nothing was attached"), "{err}");
    assert!(!xdp_attached(&lab.node_if));
    assert!(!pins.path().exists());
}

#[test]
fn reload_applies_valid_changes_and_refuses_invalid_ones() {
    let lab = Lab::new("tge4", 214);
    lab.add_peer_source("192.0.2.9");
    let pins = PinDir::new("e2e4");
    let dir = tmpdir("reload");
    let config = write_config(&dir, &lab.node_if, pins.path(), "");
    let agent = Agent::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--watch-interval",
            "1",
        ],
        free_addr(),
    );
    assert!(
        lab.ping(Some("192.0.2.9"), &lab.node_v4(), 1),
        "not yet denied"
    );

    let generation = |a: &Agent| sample(&a.scrape(), "tierguard_policy_generation").unwrap();
    assert_eq!(generation(&agent), 1.0);
    // A valid change, picked up from the file.
    write_config(
        &dir,
        &lab.node_if,
        pins.path(),
        "[[lists]]\nname = \"more\"\naction = \"deny\"\ncidrs = [\"192.0.2.0/24\"]\n",
    );
    agent.wait_for("generation 2", |m| {
        sample(m, "tierguard_policy_generation") == Some(2.0)
    });
    assert!(
        !lab.ping(Some("192.0.2.9"), &lab.node_v4(), 2),
        "now denied"
    );
    assert_eq!(list_hits(&agent.scrape(), "more"), 2.0);

    // An invalid change is refused; the live policy stays.
    std::fs::write(
        &config,
        "[[lists]]\nname = \"broken\"\naction = \"deny\"\ncidrs = [\"192.0.2.0/40\"]\n",
    )
    .unwrap();
    agent.wait_for("a reload failure", |m| {
        sample(m, "tierguard_policy_reloads_total{result=\"failure\"}") == Some(1.0)
    });
    assert_eq!(generation(&agent), 2.0);
    assert!(
        !lab.ping(Some("192.0.2.9"), &lab.node_v4(), 1),
        "still denied"
    );
    assert!(
        agent
            .log()
            .contains("new policy refused; the live policy stays"),
        "{}",
        agent.log()
    );

    // SIGHUP reloads too (after a fix).
    std::fs::write(dir.join("feed.txt"), "; feed\n198.51.100.0/24 ; SBL1\n").unwrap();
    write_config(
        &dir,
        &lab.node_if,
        pins.path(),
        "[[lists]]\nname = \"feed\"\naction = \"deny\"\nfiles = [\"feed.txt\"]\n",
    );
    agent.signal(libc::SIGHUP);
    agent.wait_for("generation 3", |m| {
        sample(m, "tierguard_policy_generation") == Some(3.0)
    });
    assert!(
        lab.ping(Some("192.0.2.9"), &lab.node_v4(), 1),
        "allowed again"
    );

    // A refreshed list file is picked up without touching the config.
    std::thread::sleep(Duration::from_millis(1100)); // a new modification time
    std::fs::write(
        dir.join("feed.txt"),
        "; feed\n198.51.100.0/24 ; SBL1\n192.0.2.0/24 ; SBL2\n",
    )
    .unwrap();
    agent.wait_for("generation 4", |m| {
        sample(m, "tierguard_policy_generation") == Some(4.0)
    });
    assert!(
        !lab.ping(Some("192.0.2.9"), &lab.node_v4(), 1),
        "denied by the refreshed feed"
    );

    // A zone file is watched the same way: an inventory that rewrites it
    // changes the zone without a touch to the config or a signal. The peer
    // joins `core`, which may not ping the node.
    std::fs::write(dir.join("core.txt"), "10.9.0.0/16\n").unwrap();
    write_config(
        &dir,
        &lab.node_if,
        pins.path(),
        "[[lists]]\nname = \"feed\"\naction = \"deny\"\nfiles = [\"feed.txt\"]\n\n\
         [segmentation]\ndefault = \"allow\"\n\n\
         [[zones]]\nname = \"core\"\nfiles = [\"core.txt\"]\n\n\
         [[rules]]\nname = \"core-no-ping\"\nfrom = \"core\"\nto = \"host\"\nprotocol = \"icmp\"\naction = \"deny\"\n",
    );
    agent.wait_for("generation 5", |m| {
        sample(m, "tierguard_policy_generation") == Some(5.0)
    });
    assert!(
        lab.ping(None, &lab.node_v4(), 1),
        "the peer is not in core yet"
    );
    std::thread::sleep(Duration::from_millis(1100)); // a new modification time
    std::fs::write(
        dir.join("core.txt"),
        format!("10.9.0.0/16\n{}/32\n", lab.peer_v4()),
    )
    .unwrap();
    agent.wait_for("generation 6", |m| {
        sample(m, "tierguard_policy_generation") == Some(6.0)
    });
    assert!(
        agent
            .log()
            .lines()
            .any(|l| l.contains("policy applied") && l.contains("list or zone file changed")),
        "{}",
        agent.log()
    );
    assert!(
        !lab.ping(None, &lab.node_v4(), 1),
        "the peer is in core now, which may not ping the node"
    );
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn restarts_and_crashes_leave_no_gap_in_enforcement() {
    let lab = Lab::new("tge5", 215);
    lab.add_peer_source(FLOOD_V4);
    let pins = PinDir::new("e2e5");
    let dir = tmpdir("restart");
    let config = write_config(&dir, &lab.node_if, pins.path(), "");
    let cfg = config.to_str().unwrap().to_string();
    let addr = free_addr();
    let first = Agent::start(&["--config", &cfg, "--persist"], addr);

    // Resolve the node's MAC first: the sender's stack discards packets
    // queued behind an unresolved neighbour, which would look like loss here.
    assert!(lab.ping(None, &lab.node_v4(), 1));
    // Anything that slipped past enforcement would reach this socket.
    let sink = UdpSocket::bind(format!("{}:9", lab.node_v4())).unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let delivered = std::thread::spawn(move || {
        let mut n = 0;
        let mut buf = [0u8; 64];
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if sink.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    });
    // A steady stream of denied packets runs across a clean restart and a crash.
    let sent: u32 = 3000;
    let mut stream = lab.udp_flood(FLOOD_V4, u64::from(sent), 2000);
    std::thread::sleep(Duration::from_millis(800));
    assert!(first.stop().success(), "persisting agent exits 0");
    assert!(
        xdp_attached(&lab.node_if),
        "still attached with no agent running"
    );
    std::thread::sleep(Duration::from_millis(500));
    let second = Agent::start(&["--config", &cfg, "--persist"], addr);
    assert!(
        second.log().contains("adopted=true"),
        "second agent adopts the pinned state:\n{}",
        second.log()
    );
    assert!(
        second.log().contains("kept the existing link"),
        "the link is not re-attached:\n{}",
        second.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    second.kill();
    assert!(xdp_attached(&lab.node_if), "still attached after a crash");
    let third = Agent::start(&["--config", &cfg], addr);
    let _ = stream.wait();
    // Counters live in pinned maps, so the third agent sees every drop since the first started.
    let m = third.scrape();
    let passed_ipv4 = sample(
        &m,
        &format!(
            "tierguard_packets_total{{direction=\"ingress\",interface=\"{}\",reason=\"no_match\",verdict=\"pass\"}}",
            lab.node_if
        ),
    );
    assert_eq!(
        drops(&m, &lab.node_if),
        f64::from(sent),
        "every packet of the stream was dropped; passed: {passed_ipv4:?}"
    );
    assert_eq!(
        delivered.join().unwrap(),
        0,
        "no denied datagram reached the node's stack"
    );
    assert_eq!(
        sample(&m, "tierguard_policy_generation"),
        Some(3.0),
        "each agent applied one generation"
    );
    assert!(third.stop().success());
    assert!(
        !xdp_attached(&lab.node_if),
        "a non-persisting stop detaches"
    );
    assert!(!pins.path().exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn removed_interfaces_are_detached_and_counters_stay_with_their_interface() {
    let a = Lab::new("tge8", 218);
    let b = Lab::new("tge9", 219);
    // Distinct sources: routes back to them live in the shared root namespace.
    let (src_a, src_b) = ("203.0.113.218", "203.0.113.219");
    a.add_peer_source(src_a);
    b.add_peer_source(src_b);
    let pins = PinDir::new("e2e8");
    let pin = pins.path().to_str().unwrap().to_string();
    let addr = free_addr();
    let first = Agent::start(
        &[
            "-i",
            &a.node_if,
            "-i",
            &b.node_if,
            "--pin-path",
            &pin,
            "--persist",
        ],
        addr,
    );
    assert!(!a.ping(Some(src_a), &a.node_v4(), 3));
    assert!(!b.ping(Some(src_b), &b.node_v4(), 2));
    assert!(first.stop().success());

    // The next agent enforces on the second interface only, now listed first.
    let second = Agent::start(&["-i", &b.node_if, "--pin-path", &pin], addr);
    assert!(
        !xdp_attached(&a.node_if),
        "an interface removed from the policy is detached"
    );
    assert!(xdp_attached(&b.node_if));
    assert!(
        second
            .log()
            .contains("detached an interface no longer in the policy"),
        "{}",
        second.log()
    );
    let m = second.scrape();
    assert_eq!(
        drops(&m, &b.node_if),
        2.0,
        "the counters stayed with their interface"
    );
    assert!(
        !m.contains(&format!("interface=\"{}\"", a.node_if)),
        "no series for the removed interface"
    );
    assert!(a.ping(Some(src_a), &a.node_v4(), 1), "no longer enforced");
    assert!(second.stop().success());
    assert!(!xdp_attached(&b.node_if));
}

#[test]
fn generic_mode_is_used_when_asked_and_reported() {
    let lab = Lab::new("tge6", 216);
    lab.add_peer_source(DENIED_V4);
    let pins = PinDir::new("e2e6");
    let agent = Agent::start(
        &[
            "--iface",
            &lab.node_if,
            "--xdp-mode",
            "generic",
            "--pin-path",
            pins.path().to_str().unwrap(),
        ],
        free_addr(),
    );
    let out = String::from_utf8_lossy(&sh(&["ip", "link", "show", "dev", &lab.node_if]).stdout)
        .to_string();
    assert!(out.contains("xdpgeneric"), "{out}");
    let m = agent.scrape();
    assert_eq!(
        sample(
            &m,
            &format!(
                "tierguard_xdp_attach_mode{{interface=\"{}\",mode=\"generic\"}}",
                lab.node_if
            )
        ),
        Some(1.0)
    );
    // The embedded default policy denies documentation ranges by a list, and
    // the lab's own addresses are outside its estate (zone `world`), which
    // may not ping the node: segmentation's default deny.
    assert!(!lab.ping(Some(DENIED_V4), &lab.node_v4(), 2));
    assert!(!lab.ping(None, &lab.node_v4(), 1));
    let m = agent.scrape();
    assert_eq!(list_hits(&m, "bogons"), 2.0);
    assert!(
        sample(
            &m,
            &format!(
                "tierguard_packets_total{{direction=\"ingress\",interface=\"{}\",reason=\"default_deny\",verdict=\"drop\"}}",
                lab.node_if
            )
        )
        .is_some_and(|v| v >= 1.0),
        "{m}"
    );
    assert!(agent.stop().success());
}

#[test]
fn audit_log_chains_every_policy_change_and_verify_finds_tampering() {
    let lab = Lab::new("tgea", 227);
    let pins = PinDir::new("e2ea");
    let dir = tmpdir("audit");
    let audit = dir.join("audit.jsonl");
    let policy = |extra: &str| {
        format!(
            "[agent]\ninterfaces = [\"{}\"]\npin_path = \"{}\"\naudit_log = \"{}\"\n\n\
             [[lists]]\nname = \"blocked\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\"]\n{extra}",
            lab.node_if,
            pins.path().display(),
            audit.display()
        )
    };
    let config = dir.join("policy.toml");
    let cfg = config.to_str().unwrap().to_string();
    std::fs::write(&config, policy("")).unwrap();
    let addr = free_addr();
    let agent = Agent::start(&["--config", &cfg, "--watch-interval", "1"], addr);
    let more = "[[lists]]\nname = \"more\"\naction = \"deny\"\ncidrs = [\"198.51.100.0/24\"]\n";
    std::fs::write(&config, policy(more)).unwrap();
    agent.wait_for("generation 2", |m| {
        sample(m, "tierguard_policy_generation") == Some(2.0)
    });
    std::fs::write(
        &config,
        policy("[[lists]]\nname = \"bad\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/33\"]\n"),
    )
    .unwrap();
    agent.wait_for("a refused reload", |m| {
        sample(m, "tierguard_policy_reloads_total{result=\"failure\"}") == Some(1.0)
    });
    std::fs::write(&config, policy(more)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    agent.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.stop().success());
    let again = Agent::start(&["--config", &cfg], addr);
    assert!(again.stop().success());

    let text = std::fs::read_to_string(&audit).expect("the audit log was written");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outline: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["trigger"].as_str().unwrap().to_string(),
                l["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = outline
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("start", "applied"),
            ("config file changed", "applied"),
            ("config file changed", "refused"),
            ("config file changed", "unchanged"),
            ("SIGHUP", "unchanged"),
            ("start", "applied"),
        ],
        "{text}"
    );
    assert_eq!(
        lines[1]["changes"]["lists_added"],
        serde_json::json!(["more"])
    );
    assert_eq!(lines[1]["old_hash"], lines[0]["new_hash"]);
    assert_eq!(lines[1]["generation"], 2);
    assert!(
        lines[2]["errors"][0]
            .as_str()
            .unwrap()
            .contains("'10.0.0.0/33' is not a CIDR"),
        "{}",
        lines[2]
    );
    assert_eq!(lines[5]["seq"], 6, "a restarted agent continues the chain");

    let ok = run_cli(&["audit", "verify", audit.to_str().unwrap()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("6 records, chain intact"));

    // An edited line, then a removed line, are named by number.
    let edited = dir.join("edited.jsonl");
    std::fs::write(
        &edited,
        text.replacen("\"result\":\"refused\"", "\"result\":\"applied\"", 1),
    )
    .unwrap();
    let bad = run_cli(&["audit", "verify", edited.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("edited.jsonl:3: hash does not match"),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    let removed = dir.join("removed.jsonl");
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&removed, kept.join("\n")).unwrap();
    let bad = run_cli(&["audit", "verify", removed.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("removed.jsonl:4: prev does not match"),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn kernel_debug_logging_is_off_by_default_and_names_drops_when_on() {
    let lab = Lab::new("tgeb", 229);
    lab.add_peer_source(DENIED_V4);
    for debug in [false, true] {
        let pins = PinDir::new(if debug { "e2eb-on" } else { "e2eb-off" });
        let dir = tmpdir(if debug { "kdebug-on" } else { "kdebug-off" });
        let config = write_config(&dir, &lab.node_if, pins.path(), "");
        let mut args = vec!["--config", config.to_str().unwrap()];
        if debug {
            args.push("--kernel-debug");
        }
        let agent = Agent::start(&args, free_addr());
        assert!(!lab.ping(Some(DENIED_V4), &lab.node_v4(), 2));
        let kernel_lines = |log: &str| {
            log.lines()
                .filter(|l| l.contains("kernel") && l.contains("reason=deny_list"))
                .count()
        };
        if debug {
            // The records reach the agent through a ring buffer it polls.
            let deadline = Instant::now() + Duration::from_secs(10);
            while kernel_lines(&agent.log()) < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let log = agent.log();
            assert!(kernel_lines(&log) >= 2, "{log}");
            assert!(log.contains(&format!("{DENIED_V4}:0 -> ")), "{log}");
        } else {
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(kernel_lines(&agent.log()), 0, "{}", agent.log());
        }
        drop(agent);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Bytes of every egress series of `iface`, whatever the reason and verdict.
fn egress_bytes(metrics: &str, iface: &str) -> f64 {
    let prefix = format!("tierguard_bytes_total{{direction=\"egress\",interface=\"{iface}\",");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn egress_counts_every_byte_of_a_bulk_send() {
    // The node's TCP stack hands the egress program socket buffers of up to
    // 64 KiB (GSO over the veth) whose linear part holds only the headers:
    // the byte counters must count the whole buffer, not what is read.
    let lab = Lab::new("tgeg", 232);
    let pins = PinDir::new("e2eg");
    let dir = tmpdir("egress-bytes");
    let config = write_config(&dir, &lab.node_if, pins.path(), "");
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    const SENT: usize = 8 << 20;
    let listener = TcpListener::bind(format!("{}:0", lab.node_v4())).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&vec![0x5a; SENT]).unwrap();
    });
    let before = egress_bytes(&agent.scrape(), &lab.node_if);
    let got = lab.exec_ok(&[
        "bash",
        "-c",
        &format!("cat < /dev/tcp/{}/{port} | wc -c", lab.node_v4()),
    ]);
    server.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        SENT.to_string(),
        "the peer received the whole send"
    );
    let counted = egress_bytes(&agent.scrape(), &lab.node_if) - before;
    // Every payload byte left through the egress program, with its headers.
    // Every payload byte left through the egress program, with its headers
    // (a few per cent at most), and nothing twice.
    assert!(
        counted >= SENT as f64 && counted < SENT as f64 * 1.1,
        "egress counted {counted} bytes for a send of {SENT}"
    );
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(dir);
}
