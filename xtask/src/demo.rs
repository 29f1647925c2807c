//! `cargo xtask demo`: build, create a throwaway lab, run the agent on the embedded default
//! policy, send allowed, denied and flood traffic, and show what was dropped and where the
//! metrics are.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{Cmd, describe};
use crate::lab::{self, Lab};

const METRICS_ADDR: &str = "127.0.0.1:9642";
const PIN_PATH: &str = "/sys/fs/bpf/tierguard-demo";
/// Allowed from the edge to the DMZ by the default policy (rule edge-to-dmz-https).
const LISTEN_PORT: u16 = 8443;
/// Not allowed from the edge to the DMZ: segmentation's default deny.
const CLOSED_PORT: u16 = 8080;
const FLOOD_SOURCE: &str = "203.0.113.66";
const FLOOD_COUNT: u64 = 20_000;

pub fn run(keep: bool) -> Result<()> {
    crate::setup::run()?;
    if !crate::setup::is_root() {
        bail!("the demo needs root: it creates a network namespace and loads eBPF programs");
    }
    let root = crate::workspace_root();
    println!("demo: building the agent (release)");
    Cmd::new("cargo")
        .args(["build", "--release", "-p", "tierguard"])
        .dir(&root)
        .run()?;
    let target = crate::target_dir();
    let bin = target.join("release").join("tierguard");
    if !bin.exists() {
        bail!("the build finished but {} does not exist", bin.display());
    }
    if TcpStream::connect_timeout(&METRICS_ADDR.parse()?, Duration::from_millis(300)).is_ok() {
        bail!(
            "something already listens on {METRICS_ADDR} (an agent from an earlier demo?); \
             stop it first so the demo does not read someone else's metrics"
        );
    }
    install_signal_flag();

    // Dropped in reverse order: agent, listener, lab, pins.
    let _pins = PinDir::claim(PIN_PATH)?;
    let lab = Lab::create()?;
    let listener = LineServer::start(lab::HOST_V4, LISTEN_PORT)?;
    let closed = LineServer::start(lab::HOST_V4, CLOSED_PORT)?;
    let log = target.join("tierguard-demo.log");
    let mut agent = Agent::start(&bin, &log)?;
    agent.wait_ready(Duration::from_secs(30))?;
    check_interrupt()?;

    let mut steps = Steps::default();
    println!(
        "\ndemo: the node is {} in tier \"dmz\", the peer {} in tier \"edge\" (config/default.toml)",
        lab::HOST_V4,
        lab::PEER_V4
    );
    println!(
        "\ndemo: allowed traffic (expected to pass: rules estate-ping, estate-ping6, edge-to-dmz-https)"
    );
    for (src, dst) in [(lab::PEER_V4, lab::HOST_V4), (lab::PEER_V6, lab::HOST_V6)] {
        let r = lab.ping(src, dst)?;
        steps.record(
            "allowed",
            &format!("ping {src} -> {dst}"),
            r.success && r.received > 0,
            &r.summary,
        );
        check_interrupt()?;
    }
    let reply = tcp_exchange(&lab, lab::PEER_V4, lab::HOST_V4, LISTEN_PORT)?;
    steps.record(
        "allowed",
        &format!("tcp {} -> {}:{LISTEN_PORT}", lab::PEER_V4, lab::HOST_V4),
        reply.is_some(),
        &reply.map_or_else(|| "no answer".to_owned(), |r| format!("answered {r:?}")),
    );
    check_interrupt()?;

    println!(
        "\ndemo: edge to dmz on a port no rule opens (expected to be dropped: segmentation default deny)"
    );
    let reply = tcp_exchange(&lab, lab::PEER_V4, lab::HOST_V4, CLOSED_PORT)?;
    let seen = closed.peers_seen(lab::PEER_V4);
    steps.record(
        "denied",
        &format!("tcp {} -> {}:{CLOSED_PORT}", lab::PEER_V4, lab::HOST_V4),
        reply.is_none() && seen == 0,
        &match reply {
            None => format!("timed out; the listener saw {seen} connection(s)"),
            Some(r) => format!("answered {r:?}"),
        },
    );
    check_interrupt()?;

    println!("\ndemo: denied traffic from the \"bogons\" deny list (expected to be dropped)");
    for (src, dst) in [
        (lab::ATTACKER_V4, lab::HOST_V4),
        (lab::ATTACKER_V6, lab::HOST_V6),
    ] {
        let r = lab.ping(src, dst)?;
        steps.record(
            "denied",
            &format!("ping {src} -> {dst}"),
            r.transmitted > 0 && r.received == 0,
            &r.summary,
        );
        check_interrupt()?;
    }
    let reply = tcp_exchange(&lab, lab::ATTACKER_V4, lab::HOST_V4, LISTEN_PORT)?;
    let seen = listener.peers_seen(lab::ATTACKER_V4);
    steps.record(
        "denied",
        &format!("tcp {} -> {}:{LISTEN_PORT}", lab::ATTACKER_V4, lab::HOST_V4),
        reply.is_none() && seen == 0,
        &match reply {
            None => format!(
                "timed out; the listener saw {seen} connection(s) from {}",
                lab::ATTACKER_V4
            ),
            Some(r) => format!("answered {r:?}"),
        },
    );
    check_interrupt()?;

    println!(
        "\ndemo: flood of {FLOOD_COUNT} UDP packets to port 53 from spoofed {FLOOD_SOURCE} (expected to be dropped)"
    );
    let before = drops_total(&scrape()?);
    let flood = flood(&lab)?;
    check_interrupt()?;
    let sent = flood.unwrap_or(FLOOD_COUNT);
    let delta = wait_for_drops(before, sent)?;
    steps.record(
        "flood",
        &format!("hping3 --udp -p 53 -a {FLOOD_SOURCE} -c {FLOOD_COUNT}"),
        delta >= sent * 95 / 100,
        &format!(
            "{} sent; tierguard's drop counters rose by {delta}",
            flood.map_or_else(
                || "hping3 did not report how many were".to_owned(),
                |n| n.to_string()
            )
        ),
    );

    let text = scrape()?;
    show_metrics(&text);

    if keep {
        println!(
            "\ndemo: --keep: the agent and the lab stay up until Ctrl-C.\n  \
             metrics: http://{METRICS_ADDR}/metrics\n  agent log: {}\n  \
             try: ip netns exec {} ping -I {} {}",
            log.display(),
            lab::NETNS,
            lab::ATTACKER_V4,
            lab::HOST_V4
        );
        while !interrupted() {
            if let Some(status) = agent.exited() {
                println!("demo: the agent exited on its own ({})", describe(status));
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("\ndemo: stopping");
    }

    let status = agent.stop()?;
    println!("demo: the agent exited ({})", describe(status));
    drop(listener);
    drop(closed);
    lab.remove()?;
    let agent_ok = status.success();

    let failed = steps.failed();
    println!();
    if failed.is_empty() && agent_ok {
        println!(
            "demo: all {} traffic checks behaved as expected; lab removed",
            steps.0.len()
        );
        Ok(())
    } else {
        if !agent_ok {
            println!(
                "demo: the agent did not exit cleanly on SIGTERM; see {}",
                log.display()
            );
        }
        for f in &failed {
            println!("demo: NOT AS EXPECTED: {f}");
        }
        bail!(
            "demo: {} of {} traffic checks did not behave as expected",
            failed.len(),
            steps.0.len()
        )
    }
}

/// Outcomes of the traffic steps, printed as they happen.
#[derive(Default)]
struct Steps(Vec<(String, bool)>);

impl Steps {
    fn record(&mut self, kind: &str, what: &str, as_expected: bool, detail: &str) {
        let verdict = if as_expected {
            "as expected"
        } else {
            "NOT AS EXPECTED"
        };
        println!("  [{kind:>7}] {what}: {detail} -> {verdict}");
        self.0
            .push((format!("[{kind}] {what}: {detail}"), as_expected));
    }

    fn failed(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(s, _)| s.as_str())
            .collect()
    }
}

// --- Ctrl-C ------------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM only set a flag, so that the demo stops between steps and the guards
/// clean up. Programs the demo runs in the netns get Ctrl-C from the terminal themselves.
fn install_signal_flag() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

// --- the agent ---------------------------------------------------------------------------

struct Agent {
    child: Child,
    log: PathBuf,
    done: Option<ExitStatus>,
}

impl Agent {
    fn start(bin: &Path, log: &Path) -> Result<Self> {
        let args = [
            "run",
            "--iface",
            lab::HOST_IF,
            "--metrics-address",
            METRICS_ADDR,
            "--pin-path",
            PIN_PATH,
        ];
        println!(
            "demo: starting the agent on the embedded default policy: {} {}\n  (its output goes to {})",
            bin.display(),
            args.join(" "),
            log.display()
        );
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        {
            use std::os::unix::process::CommandExt as _;
            // Its own process group: Ctrl-C reaches the demo, which stops the agent with SIGTERM.
            cmd.process_group(0);
            // SAFETY: prctl is async-signal-safe; it makes the kernel send SIGTERM to the agent
            // if the demo dies without cleaning up.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            log: log.to_owned(),
            done: None,
        })
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.done.is_none() {
            self.done = self.child.try_wait().ok().flatten();
        }
        self.done
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        println!("demo: waiting for http://{METRICS_ADDR}/readyz to answer 200");
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "the agent exited before it was ready ({})\n{}",
                    describe(status),
                    self.log_tail(40)
                );
            }
            let last = match http_get(METRICS_ADDR, "/readyz") {
                Ok((200, _)) => {
                    println!(
                        "demo: agent ready after {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if start.elapsed() > timeout {
                bail!(
                    "the agent was not ready after {timeout:?} (last: {last})\n{}",
                    self.log_tail(40)
                );
            }
            check_interrupt()?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        println!("demo: stopping the agent with SIGTERM");
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: plain syscall on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("demo: the agent did not exit within 10 s of SIGTERM; killing it");
        self.child.kill().ok();
        let status = self.child.wait()?;
        self.done = Some(status);
        bail!(
            "the agent ignored SIGTERM for 10 s and was killed\n{}",
            self.log_tail(40)
        )
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log.display())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.done.is_none()
            && let Err(e) = self.stop()
        {
            eprintln!("warning: {e:#}");
        }
    }
}

/// The demo's pin directory: removed before the run (stale pins) and after it.
struct PinDir(PathBuf);

impl PinDir {
    fn claim(path: &str) -> Result<Self> {
        let dir = Self(PathBuf::from(path));
        if dir.0.exists() {
            println!("demo: removing stale pins under {path}");
            dir.remove()?;
        }
        Ok(dir)
    }

    fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.0.display()))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.0.exists() {
            println!("demo: removing pins under {}", self.0.display());
            if let Err(e) = self.remove() {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

// --- traffic -----------------------------------------------------------------------------

/// A TCP listener in the root namespace that answers one line per connection and remembers
/// who connected.
pub struct LineServer {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<IpAddr>>>,
    thread: Option<JoinHandle<()>>,
}

impl LineServer {
    pub fn start(ip: &str, port: u16) -> Result<Self> {
        let addr = SocketAddr::new(ip.parse()?, port);
        let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        listener.set_nonblocking(true)?;
        println!("demo: listening on {addr} (answers one line per connection)");
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, peers) = (stop.clone(), peers.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, peer)) => {
                            peers
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(peer.ip());
                            let _ = answer(conn, addr);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(Self {
            stop,
            peers,
            thread: Some(thread),
        })
    }

    pub fn peers_seen(&self, ip: &str) -> usize {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return 0;
        };
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| **p == ip)
            .count()
    }
}

fn answer(conn: TcpStream, me: SocketAddr) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    (&conn).write_all(format!("hello from {me}\n").as_bytes())
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connect from `src` inside the lab namespace, send a line, return the answer line (None if
/// the connection failed or nothing came back within 2 s).
pub fn tcp_exchange(lab: &Lab, src: &str, dst: &str, port: u16) -> Result<Option<String>> {
    let port = port.to_string();
    let out = lab
        .exec(["nc", "-s", src, "-w", "2", dst, &port])
        .output_with_input(format!("hello from {src}\n").as_bytes())?;
    let reply = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok((out.status.success() && !reply.is_empty()).then_some(reply))
}

/// The hping3 flood; returns how many packets hping3 says it sent. hping3 sometimes exits
/// non-zero after a complete run, so its exit code is only shown.
fn flood(lab: &Lab) -> Result<Option<u64>> {
    let count = FLOOD_COUNT.to_string();
    let out = lab
        .exec([
            "timeout",
            "120",
            "hping3",
            "--udp",
            "-p",
            "53",
            "-a",
            FLOOD_SOURCE,
            "-i",
            "u50",
            "-c",
            &count,
        ])
        .arg(lab::HOST_V4)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Vec<_> = text
        .lines()
        .filter(|l| l.contains("packets tr") || l.contains("statistic"))
        .collect();
    println!("  hping3 ({}): {}", describe(out.status), stats.join(" / "));
    Ok(stats
        .iter()
        .find(|l| l.contains("packets tr"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok()))
}

/// Poll /metrics until the drop counters rose by `expected` (or 5 s passed); returns the rise.
fn wait_for_drops(before: u64, expected: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let delta = drops_total(&scrape()?).saturating_sub(before);
        if delta >= expected || Instant::now() > deadline {
            return Ok(delta);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

// --- metrics -----------------------------------------------------------------------------

fn scrape() -> Result<String> {
    match http_get(METRICS_ADDR, "/metrics")? {
        (200, body) => Ok(body),
        (code, body) => bail!("GET /metrics answered HTTP {code}: {}", body.trim()),
    }
}

fn drops_total(text: &str) -> u64 {
    parse_metrics(text)
        .iter()
        .filter(|s| s.name == "tierguard_packets_total" && s.label("verdict") == Some("drop"))
        .map(|s| s.value as u64)
        .sum()
}

fn show_metrics(text: &str) {
    let samples = parse_metrics(text);
    println!("\ndemo: dropped packets (tierguard_packets_total, verdict=\"drop\")");
    let all: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "tierguard_packets_total" && s.label("verdict") == Some("drop"))
        .collect();
    let drops: Vec<_> = all.iter().filter(|s| s.value > 0.0).collect();
    if drops.is_empty() {
        println!("  (no drops counted)");
    } else {
        println!(
            "  {:<12} {:<10} {:<24} {:>10}",
            "interface", "direction", "reason", "packets"
        );
        for s in &drops {
            println!(
                "  {:<12} {:<10} {:<24} {:>10}",
                s.label("interface").unwrap_or("-"),
                s.label("direction").unwrap_or("-"),
                s.label("reason").unwrap_or("-"),
                s.value
            );
        }
    }
    if all.len() > drops.len() {
        println!(
            "  ({} other drop reasons counted 0 packets)",
            all.len() - drops.len()
        );
    }
    println!("\ndemo: list hits (tierguard_list_hits_total)");
    let hits: Vec<_> = samples
        .iter()
        .filter(|s| s.name == "tierguard_list_hits_total")
        .collect();
    if hits.is_empty() {
        println!("  (no samples)");
    } else {
        println!("  {:<24} {:<10} {:>10}", "list", "action", "hits");
        for s in hits {
            println!(
                "  {:<24} {:<10} {:>10}",
                s.label("list").unwrap_or("-"),
                s.label("action").unwrap_or("-"),
                s.value
            );
        }
    }
    println!("\ndemo: segmentation rules that decided packets (tierguard_rule_packets_total)");
    for s in samples
        .iter()
        .filter(|s| s.name == "tierguard_rule_packets_total" && s.value > 0.0)
    {
        println!(
            "  {:<24} {:<10} {:>10}",
            s.label("rule").unwrap_or("-"),
            s.label("action").unwrap_or("-"),
            s.value
        );
    }
    println!("\ndemo: segmentation drops by zone pair (tierguard_zone_pair_drops_total)");
    for s in samples
        .iter()
        .filter(|s| s.name == "tierguard_zone_pair_drops_total" && s.value > 0.0)
    {
        println!(
            "  {:<12} -> {:<12} {:>10}",
            s.label("src_zone").unwrap_or("-"),
            s.label("dst_zone").unwrap_or("-"),
            s.value
        );
    }
    for s in samples
        .iter()
        .filter(|s| s.name == "tierguard_xdp_attach_mode" && s.value == 1.0)
    {
        println!(
            "\ndemo: XDP attach mode on {}: {}",
            s.label("interface").unwrap_or("-"),
            s.label("mode").unwrap_or("-")
        );
    }
    println!("\ndemo: metrics are at http://{METRICS_ADDR}/metrics; the first 25 lines:");
    for line in text.lines().take(25) {
        println!("  {line}");
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse the Prometheus text exposition format (comments skipped, bad lines ignored).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end = loop {
            // skip separators
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let (i, c) = chars.next()?;
            if c == '}' {
                break i + 1;
            }
            let mut key = String::from(c);
            loop {
                let (_, c) = chars.next()?;
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            labels.push((key.trim().to_owned(), value));
        };
        rest = &after[end..];
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

// --- HTTP --------------------------------------------------------------------------------

/// A minimal HTTP/1.0 GET: returns the status code and the body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let sock: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr}"))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let host = sock.ip();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {status_line:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        s = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples() {
        let text = "# HELP tierguard_packets_total Packets.\n# TYPE tierguard_packets_total counter\n\
            tierguard_packets_total{direction=\"ingress\",interface=\"tgdemo0\",reason=\"deny_list\",verdict=\"drop\"} 20006\n\
            tierguard_policy_generation 1\n\
            weird{a=\"x\\\"y,z}\",b=\"\"} 2.5e3 1700000000\n\
            broken{a=\"x\" \n";
        let s = parse_metrics(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "tierguard_packets_total");
        assert_eq!(s[0].label("reason"), Some("deny_list"));
        assert_eq!(s[0].label("verdict"), Some("drop"));
        assert_eq!(s[0].value, 20006.0);
        assert_eq!(
            s[1],
            Sample {
                name: "tierguard_policy_generation".into(),
                labels: vec![],
                value: 1.0
            }
        );
        assert_eq!(s[2].label("a"), Some("x\"y,z}"));
        assert_eq!(s[2].label("b"), Some(""));
        assert_eq!(s[2].value, 2500.0);
        assert_eq!(drops_total(text), 20006);
    }

    #[test]
    fn responses() {
        let (code, body) =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").unwrap();
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        let (code, body) =
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((code, body.as_str()), (503, "not ready"));
        assert!(parse_response(b"garbage").is_err());
    }
}
