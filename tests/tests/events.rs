//! Security events end to end: the agent on a veth, denied traffic from a
//! peer namespace, JSON lines read back from the event file and checked field
//! by field against what was sent; sampling checked against /metrics.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tierguard_tests::{
    agent::{Agent, free_addr},
    http::sample,
    lab::Lab,
    pins::PinDir,
};

const DENIED_V4: &str = "203.0.113.7";
const DENIED_V6: &str = "2001:db8::7";
const FLOOD_V4: &str = "203.0.113.99";

fn tmpdir(name: &str) -> PathBuf {
    tierguard_tests::tmpdir("events", name)
}

fn write_config(dir: &Path, iface: &str, pins: &Path, events: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    let text = format!(
        "[agent]\ninterfaces = [\"{iface}\"]\npin_path = \"{}\"\n\n\
         [[lists]]\nname = \"partners\"\naction = \"allow\"\ncidrs = [\"198.51.100.0/24\"]\n\n\
         [[lists]]\nname = \"blocked\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\", \"2001:db8::/32\"]\n\n\
         [events]\n{events}",
        pins.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The event file's lines, parsed.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("event line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Waits until `pred` holds for the event file's lines (events are drained
/// within 100 ms; the bound is generous for slow machines).
fn wait_lines(path: &Path, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = lines(path);
        if pred(&l) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; lines so far:\n{l:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn expected_node() -> String {
    match std::env::var("NODE_NAME") {
        Ok(n) if !n.is_empty() => n,
        _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_string(),
    }
}

fn drops(metrics: &str, iface: &str) -> u64 {
    tierguard_tests::http::deny_list_drops(metrics, iface) as u64
}

fn metric(metrics: &str, series: &str) -> u64 {
    sample(metrics, series).unwrap_or_else(|| panic!("{series} missing from:\n{metrics}")) as u64
}

#[test]
fn denied_traffic_produces_events_with_every_field_right() {
    let lab = Lab::new("tgv1", 221);
    lab.add_peer_source(DENIED_V4);
    lab.add_peer_source(DENIED_V6);
    let pins = PinDir::new("ev1");
    let dir = tmpdir("fields");
    let out = dir.join("events.jsonl");
    let config = write_config(
        &dir,
        &lab.node_if,
        pins.path(),
        &format!(
            "enabled = true\nrate_per_reason = 1000\nburst = 1000\nrate_per_source = 1000\nburst_per_source = 1000\nglobal_rate = 10000\noutput = \"{}\"\n",
            out.display()
        ),
    );
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());

    // Allowed traffic makes no events (and fills the neighbour caches).
    assert!(lab.ping(None, &lab.node_v4(), 2));
    assert!(lab.ping(None, &lab.node_v6(), 2));

    // Denied IPv4 ping: four echo requests, four events.
    assert!(!lab.ping(Some(DENIED_V4), &lab.node_v4(), 4));
    let got = wait_lines(&out, "4 IPv4 events", |l| l.len() >= 4);
    assert_eq!(
        got.len(),
        4,
        "one event per denied packet, none for allowed ones: {got:#?}"
    );
    let node = expected_node();
    for e in &got {
        assert_eq!(e["version"], 3);
        assert_eq!(e["node"], node.as_str());
        assert_eq!(e["interface"], lab.node_if.as_str());
        assert_eq!(e["direction"], "ingress");
        assert_eq!(e["verdict"], "drop");
        assert_eq!(e["reason"], "deny_list");
        assert_eq!(e["list"], "blocked");
        assert_eq!(e["list_id"], 1);
        assert_eq!(e["policy_generation"], 1);
        assert_eq!(e["family"], "ipv4");
        assert_eq!(e["src"], DENIED_V4);
        assert_eq!(e["dst"], lab.node_v4().as_str());
        assert_eq!(e["protocol"], "icmp");
        assert_eq!(e["protocol_number"], 1);
        assert_eq!(e["icmp_type"], 8, "echo request");
        assert_eq!(e["icmp_code"], 0);
        assert!(e.get("src_port").is_none() && e.get("tcp_flags").is_none());
        assert_eq!(
            e["length"],
            14 + 20 + 8 + 56,
            "Ethernet + IPv4 + ICMP + ping's 56 data bytes"
        );
        assert_eq!(e["suppressed"], 0);
        assert_eq!(e["fragment"], false);
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        assert!(e["policy_hash"].as_str().is_some_and(|h| !h.is_empty()));
    }
    // Times are real and in order.
    let t: Vec<u64> = got
        .iter()
        .map(|e| e["time_unix_ns"].as_u64().unwrap())
        .collect();
    assert!(t.windows(2).all(|w| w[0] <= w[1]), "{t:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        now >= t[3] && now - t[0] < 120_000_000_000,
        "event times are close to now: {t:?} vs {now}"
    );

    // Denied TCP SYN from a fixed source port.
    lab.exec(&[
        "hping3",
        "-S",
        "-p",
        "22",
        "-s",
        "40000",
        "-k",
        "-c",
        "1",
        "-a",
        DENIED_V4,
        &lab.node_v4(),
    ]);
    let got = wait_lines(&out, "the TCP event", |l| l.len() >= 5);
    let e = &got[4];
    assert_eq!(e["protocol"], "tcp");
    assert_eq!(e["src"], DENIED_V4);
    assert_eq!(e["src_port"], 40000);
    assert_eq!(e["dst_port"], 22);
    assert_eq!(e["tcp_flags"], "S");
    assert!(e.get("icmp_type").is_none());
    assert_eq!(e["length"], 14 + 20 + 20);

    // Denied IPv6 ping.
    assert!(!lab.ping(Some(DENIED_V6), &lab.node_v6(), 2));
    let got = wait_lines(&out, "2 IPv6 events", |l| l.len() >= 7);
    for e in &got[5..] {
        assert_eq!(e["family"], "ipv6");
        assert_eq!(e["src"], DENIED_V6);
        assert_eq!(e["dst"], lab.node_v6().as_str());
        assert_eq!(e["protocol"], "icmpv6");
        assert_eq!(e["icmp_type"], 128, "echo request");
        assert_eq!(e["list"], "blocked");
        assert_eq!(e["length"], 14 + 40 + 8 + 56);
    }

    let m = agent.scrape();
    assert_eq!(
        metric(&m, "tierguard_events_emitted_total{reason=\"deny_list\"}"),
        7
    );
    assert_eq!(
        metric(
            &m,
            "tierguard_events_suppressed_total{reason=\"deny_list\"}"
        ),
        0
    );
    assert_eq!(drops(&m, &lab.node_if), 7);
    for stage in ["channel_full", "decode", "ring_full", "write_error"] {
        assert_eq!(
            metric(
                &m,
                &format!("tierguard_events_dropped_total{{stage=\"{stage}\"}}")
            ),
            0,
            "{stage}"
        );
    }
    promtool_accepts(&m);
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_flood_is_sampled_and_every_drop_is_emitted_or_suppressed() {
    let lab = Lab::new("tgv2", 222);
    let pins = PinDir::new("ev2");
    let dir = tmpdir("flood");
    let out = dir.join("events.jsonl");
    let (rate, burst) = (10u64, 20u64);
    let config = write_config(
        &dir,
        &lab.node_if,
        pins.path(),
        &format!(
            "enabled = true\nrate_per_reason = {rate}\nburst = {burst}\nglobal_rate = 1000\noutput = \"{}\"\n",
            out.display()
        ),
    );
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    assert_eq!(drops(&agent.scrape(), &lab.node_if), 0);

    let sent = 3000u64;
    let start = Instant::now();
    // hping3 exits non-zero when nothing answers: only its end matters.
    let _ = lab.udp_flood(FLOOD_V4, sent, 300).wait();
    let elapsed = start.elapsed();

    // Wait for the drain, then compare the counters.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (dropped, emitted, suppressed) = loop {
        let m = agent.scrape();
        let d = drops(&m, &lab.node_if);
        let e = metric(&m, "tierguard_events_emitted_total{reason=\"deny_list\"}");
        let s = metric(
            &m,
            "tierguard_events_suppressed_total{reason=\"deny_list\"}",
        );
        let lost = metric(&m, "tierguard_events_dropped_total{stage=\"ring_full\"}");
        if d == sent && e + s + lost == d {
            assert_eq!(lost, 0, "a 1 MiB ring does not fill at this rate");
            break (d, e, s);
        }
        assert!(
            Instant::now() < deadline,
            "dropped {d}, emitted {e}, suppressed {s}, ring_full {lost}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "flood: {dropped} dropped, {emitted} emitted, {suppressed} suppressed in {elapsed:?}"
    );
    assert_eq!(dropped, sent, "every flood packet dropped");
    assert_eq!(
        emitted + suppressed,
        dropped,
        "each drop is either an event or counted as suppressed"
    );
    // The sampler's window is inside the time we measured around the flood.
    let bound = rate * elapsed.as_millis() as u64 / 1000 + rate + burst;
    assert!(
        emitted <= bound,
        "{emitted} events in {elapsed:?} exceeds rate {rate}/s + burst {burst} (bound {bound})"
    );
    assert!(
        emitted >= burst / 2,
        "at least the burst (per-CPU share) goes out: {emitted}"
    );
    assert!(suppressed > 0);

    // The file holds exactly the emitted events; their `suppressed` fields
    // account for suppressed drops, except those after the last event.
    let got = wait_lines(&out, "all emitted events", |l| l.len() as u64 >= emitted);
    assert_eq!(got.len() as u64, emitted);
    let reported: u64 = got.iter().map(|e| e["suppressed"].as_u64().unwrap()).sum();
    assert!(
        reported <= suppressed,
        "{reported} reported > {suppressed} suppressed"
    );
    assert!(
        reported > 0,
        "events carry the count of suppressed ones before them"
    );
    for e in &got {
        assert_eq!(e["src"], FLOOD_V4);
        assert_eq!(e["protocol"], "udp");
        assert_eq!(e["dst_port"], 9);
        assert_eq!(e["reason"], "deny_list");
    }
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn events_are_off_by_default_and_a_reload_switches_them_on() {
    let lab = Lab::new("tgv3", 223);
    lab.add_peer_source("203.0.113.33");
    let pins = PinDir::new("ev3");
    let dir = tmpdir("reload");
    let out = dir.join("events.jsonl");
    let config = write_config(
        &dir,
        &lab.node_if,
        pins.path(),
        &format!("output = \"{}\"\n", out.display()),
    );
    let agent = Agent::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--watch-interval",
            "0",
        ],
        free_addr(),
    );
    assert!(!lab.ping(Some("203.0.113.33"), &lab.node_v4(), 2));
    std::thread::sleep(Duration::from_millis(500));
    let m = agent.scrape();
    assert_eq!(drops(&m, &lab.node_if), 2);
    assert!(lines(&out).is_empty(), "no events while disabled");
    assert_eq!(
        metric(
            &m,
            "tierguard_events_suppressed_total{reason=\"deny_list\"}"
        ),
        0,
        "disabled is not suppressed"
    );

    write_config(
        &dir,
        &lab.node_if,
        pins.path(),
        &format!("enabled = true\noutput = \"{}\"\n", out.display()),
    );
    agent.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        lab.ping(Some("203.0.113.33"), &lab.node_v4(), 1);
        if !lines(&out).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no event after enabling:\n{}",
            agent.log()
        );
    }
    let got = lines(&out);
    assert_eq!(got[0]["src"], "203.0.113.33");
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_event_file_rotates_and_keeps_the_configured_number_of_files() {
    let lab = Lab::new("tgv4", 224);
    let pins = PinDir::new("ev4");
    let dir = tmpdir("rotate");
    let out = dir.join("events.jsonl");
    let config = write_config(
        &dir,
        &lab.node_if,
        pins.path(),
        &format!(
            "enabled = true\nrate_per_reason = 100000\nburst = 100000\nrate_per_source = 100000\nburst_per_source = 100000\nglobal_rate = 100000\noutput = \"{}\"\nfile_max_bytes = 4096\nfile_keep = 2\n",
            out.display()
        ),
    );
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    let sent = 200u64;
    lab.exec(&[
        "hping3",
        "--udp",
        "-p",
        "9",
        "-a",
        FLOOD_V4,
        "-c",
        &sent.to_string(),
        "-i",
        "u1000",
        "-q",
        &lab.node_v4(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = agent.scrape();
        if metric(&m, "tierguard_events_emitted_total{reason=\"deny_list\"}") == sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all {sent} events emitted:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The writer thread may still be behind the counter by a few lines.
    std::thread::sleep(Duration::from_millis(500));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("events.jsonl"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["events.jsonl", "events.jsonl.1", "events.jsonl.2"],
        "the live file and file_keep = 2 rotated ones"
    );
    for n in &names {
        let p = dir.join(n);
        assert!(
            std::fs::metadata(&p).unwrap().len() <= 4096,
            "{n} is within file_max_bytes"
        );
        // Whole lines only.
        assert!(lines(&p).iter().all(|e| e["src"] == FLOOD_V4));
    }
    let m = agent.scrape();
    assert_eq!(
        metric(&m, "tierguard_events_dropped_total{stage=\"write_error\"}"),
        0
    );
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_unwritable_event_file_never_stops_enforcement_and_is_counted() {
    let lab = Lab::new("tgv5", 225);
    lab.add_peer_source("203.0.113.55");
    let pins = PinDir::new("ev5");
    let dir = tmpdir("unwritable");
    // The directory does not exist: every write fails until it does.
    let out = dir.join("missing").join("events.jsonl");
    let config = write_config(
        &dir,
        &lab.node_if,
        pins.path(),
        &format!("enabled = true\noutput = \"{}\"\n", out.display()),
    );
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    assert!(!lab.ping(Some("203.0.113.55"), &lab.node_v4(), 3));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = agent.scrape();
        let failed = metric(&m, "tierguard_events_dropped_total{stage=\"write_error\"}");
        if failed == 3 {
            assert_eq!(drops(&m, &lab.node_if), 3, "enforcement goes on");
            assert_eq!(
                metric(&m, "tierguard_events_emitted_total{reason=\"deny_list\"}"),
                3
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "write errors not counted ({failed}):\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        agent.log().matches("cannot write events").count(),
        1,
        "said once, not per line:\n{}",
        agent.log()
    );
    // Allowed traffic still flows.
    assert!(lab.ping(None, &lab.node_v4(), 1));

    // The directory appears: the sink recovers by itself. (It reports the
    // recovery on a write at least a second after its last failure.)
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(!lab.ping(Some("203.0.113.55"), &lab.node_v4(), 1));
    let got = wait_lines(&out, "the event after recovery", |l| !l.is_empty());
    assert_eq!(got[0]["src"], "203.0.113.55");
    assert!(
        agent.log().contains("event sink writes again"),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(dir);
}

fn promtool_accepts(metrics: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    p.stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small tmpfs mounted for one test, unmounted however the test ends.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tgv6disk"])
            .arg(&at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs at {}", at.display());
        SmallDisk(at)
    }

    fn grow(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {}", self.0.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_never_stops_enforcement_and_the_file_recovers_when_space_returns() {
    let lab = Lab::new("tgv6", 226);
    let pins = PinDir::new("ev6");
    let dir = tmpdir("fulldisk");
    // 16 KiB holds a few dozen event lines; the file may grow to 1 MiB, so
    // the disk fills long before rotation would start.
    let disk = SmallDisk::mount(dir.join("disk"), "16k");
    let out = disk.0.join("events.jsonl");
    let config = write_config(
        &dir,
        &lab.node_if,
        pins.path(),
        &format!(
            "enabled = true\nrate_per_reason = 100000\nburst = 100000\nrate_per_source = 100000\n\
             burst_per_source = 100000\nglobal_rate = 100000\noutput = \"{}\"\nfile_max_bytes = 1048576\n",
            out.display()
        ),
    );
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    let sent = 200u64;
    let _ = lab.udp_flood(FLOOD_V4, sent, 2000).wait();
    let failed = |m: &str| metric(m, "tierguard_events_dropped_total{stage=\"write_error\"}");
    agent.wait_for("the events that found no room counted", |m| {
        let written = lines(&out).len() as u64;
        written + failed(m) + metric(m, "tierguard_events_dropped_total{stage=\"channel_full\"}")
            == sent
    });
    let m = agent.scrape();
    assert_eq!(drops(&m, &lab.node_if), sent, "enforcement goes on");
    assert_eq!(
        metric(&m, "tierguard_events_emitted_total{reason=\"deny_list\"}"),
        sent
    );
    let kept = lines(&out);
    assert!(failed(&m) > 0, "the disk filled: {} lines kept", kept.len());
    assert!(!kept.is_empty(), "what fitted was written");
    // `lines` parses every line: a line cut by the full disk would fail here.
    assert!(
        std::fs::read_to_string(&out).unwrap().ends_with('\n'),
        "no half-written record is left at the end of the file"
    );
    assert_eq!(
        agent.log().matches("cannot write events").count(),
        1,
        "said once, not per line:\n{}",
        agent.log()
    );
    assert!(lab.ping(None, &lab.node_v4(), 1), "allowed traffic flows");

    // Space comes back: the next event is written after the last whole line
    // (and, a second after the last failure, reported as a recovery).
    disk.grow("1m");
    std::thread::sleep(Duration::from_millis(1100));
    let _ = lab.udp_flood(FLOOD_V4, 1, 1000).wait();
    let got = wait_lines(&out, "the event after recovery", |l| l.len() > kept.len());
    assert_eq!(got.len(), kept.len() + 1);
    assert_eq!(got[kept.len()]["src"], FLOOD_V4);
    assert!(
        agent.log().contains("event sink writes again"),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success());
    drop(disk);
    let _ = std::fs::remove_dir_all(dir);
}
