//! Event throughput: how many security events per second the real agent
//! writes into its event file while a flood of denied packets arrives.
//!
//! The agent binary runs as a user runs it (`tierguard run --config FILE`),
//! attached to a veth whose peer sits in a throwaway network namespace. A
//! sender thread inside that namespace floods UDP from a denied source over
//! an AF_PACKET socket (sendmmsg, batches of 64, no qdisc), which offers
//! more than `hping3 --flood` (one sendto per packet) can, so that the
//! agent rather than the generator is what runs out. Sampling is wide open (the
//! largest rates and burst the config accepts), so every drop the sampler
//! lets through should become a line; what does not is counted by the agent
//! per stage, and the file is read back and every line parsed.
//!
//! The flood (and the XDP program, which runs in the veth's softirq on the
//! sender's CPU) is pinned to one CPU and the agent to the others, so the
//! flood takes nothing from the agent and rounds compare.
//!
//! Each round starts a fresh agent with a fresh pin directory and event
//! file (so counters start at zero and the file never rotates), floods for
//! a warm-up second, then measures `WINDOW` from the agent's own metrics
//! and the file's length at both ends of the window.
//!
//! The event files go to the temporary directory (`$TMPDIR`, usually a
//! disk: the figure), and to /dev/shm (tmpfs: the agent without a disk and
//! without the kernel's writeback).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tierguard_common::{
    build::{udp, v4_frame},
    event::{Event, MAX_RATE},
    packet::PROTO_UDP,
};
use tierguard_tests::{
    agent::{Agent, free_addr},
    http::{deny_list_drops, sample},
    lab::Lab,
    pins::PinDir,
};

/// Lab name and 10.x net: `tgbe` and 10.233 are used by nothing else
/// (`grep -rn "Lab::new\|Estate::new" tests/`).
const LAB: &str = "tgbe";
const NET: u8 = 233;
/// The flood's source, inside the denied prefix.
const FLOOD_SRC: [u8; 4] = [203, 0, 113, 99];
const ROUNDS: usize = 5;
const WARMUP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);
/// Frames per sendmmsg call (distinct source ports, so lines differ).
const BATCH: usize = 64;
/// Lines that can sit between the kernel's counters and the file: the 1 MiB
/// ring (records plus their 8-byte ring header) and the writer's channel.
const BACKLOG: usize =
    (1 << 20) / (std::mem::size_of::<Event>() + 8) + tierguard::events::sink::CHANNEL_LINES;
/// This section's heading in docs/benchmarks.md (`--only events --write`
/// replaces the file from here on).
pub const HEADING: &str = "## Security events into a file";
/// The stages `tierguard_events_dropped_total` counts for a file sink.
pub const STAGES: [&str; 3] = ["ring_full", "channel_full", "write_error"];

/// One round's rates over the measured window, per second.
#[derive(Clone, Debug)]
pub struct Round {
    /// Packets the XDP program dropped (the deny list), i.e. the offered load.
    pub offered: f64,
    /// Frames the sender handed to the kernel (the veth drops what its ring
    /// cannot take before XDP sees it).
    pub sent: f64,
    /// Lines that reached the event file.
    pub written: f64,
    /// Lost after sampling allowed them, by stage (as `STAGES`).
    pub lost: [f64; 3],
    /// Not emitted because the sampler said no.
    pub suppressed: f64,
    /// Lines in the file for the whole round, each parsed and checked.
    pub lines: u64,
    /// Dirty page cache (MiB, /proc/meminfo) when the window opened: how
    /// much the kernel had yet to write back.
    pub dirty_mib: u64,
}

impl Round {
    pub fn lost_total(&self) -> f64 {
        self.lost.iter().sum()
    }

    /// Lost as a share of what the sampler let through.
    pub fn lost_share(&self) -> f64 {
        let allowed = self.offered - self.suppressed;
        if allowed > 0.0 {
            self.lost_total() / allowed
        } else {
            0.0
        }
    }
}

/// The rounds of one file system.
pub struct Series {
    /// Where the event files were written, and its file system type.
    pub dir: PathBuf,
    pub fs: String,
    pub rounds: Vec<Round>,
    /// The round with the median written rate.
    pub median: Round,
}

pub struct EventRows {
    /// The temporary directory's file system first (the figure), then
    /// tmpfs, if that is another one (the agent without a disk).
    pub series: Vec<Series>,
    /// Possible CPUs: the agent divides the sampler's rates among them.
    pub possible_cpus: usize,
    /// The flood's CPU and the agent's CPUs, if there were enough to split.
    pub split: Option<Split>,
}

/// The flood (sender and, through the veth's NAPI, the XDP program) on one
/// CPU, the agent on every other one: the flood then takes nothing from the
/// agent's CPUs, so rounds compare, and the figure is the agent's.
#[derive(Clone, Debug)]
pub struct Split {
    pub flood: usize,
    pub agent: Vec<usize>,
}

impl Split {
    fn new() -> Option<Split> {
        let mut cpus = allowed_cpus();
        let flood = cpus.pop()?;
        (!cpus.is_empty()).then_some(Split { flood, agent: cpus })
    }
}

pub fn measure() -> EventRows {
    let _interrupt = InterruptGuard::install();
    let lab = Lab::new(LAB, NET);
    let split = Split::new();
    match &split {
        Some(sp) => eprintln!("  flood on CPU {}, agent on CPUs {:?}", sp.flood, sp.agent),
        None => eprintln!("  one CPU only: the flood and the agent share it"),
    }
    let tmp = std::env::temp_dir();
    let shm = PathBuf::from("/dev/shm");
    let memory = fs_type(&shm) == "tmpfs" && fs_type(&tmp) != "tmpfs";
    let (disk, kept) = run_series(&lab, tmp, split.as_ref());
    let mut series = vec![disk];
    if memory {
        series.push(run_series(&lab, shm, split.as_ref()).0);
    }
    // The disk series' files go last: removing gigabytes keeps the file
    // system busy for a while, which would slow the tmpfs rounds.
    drop(kept);
    drop(lab);
    EventRows {
        series,
        possible_cpus: possible_cpus(),
        split,
    }
}

/// Leave at least this much free on a disk when keeping rounds' files.
const KEEP_FREE: u64 = 4 << 30;

/// The rounds of one file system, and the directories of the rounds it
/// keeps (removed when the caller drops them).
fn run_series(lab: &Lab, dir: PathBuf, split: Option<&Split>) -> (Series, Vec<TempDir>) {
    let fs = fs_type(&dir);
    eprintln!("  event files in {} ({fs}):", dir.display());
    // On a disk, each round's files stay until the section is done (while
    // space allows): removing gigabytes sets the file system to work in the
    // next window, and kept files fill the page cache as a long flood would.
    // On tmpfs they would only take memory.
    let keep = fs != "tmpfs";
    // Start from a clean page cache: what earlier sections or runs left
    // dirty is not this series' writeback.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let mut kept = std::collections::VecDeque::new();
    let mut rounds = Vec::new();
    for i in 0..ROUNDS {
        let (r, files) = round(lab, &dir, i, split);
        eprintln!(
            "  round {}: offered {:.0}/s (sent {:.0}/s), written {:.0}/s, lost {:.0}/s (ring_full {:.0}, channel_full {:.0}, write_error {:.0}), suppressed {:.0}/s; dirty {} MiB at start; {} lines checked",
            i + 1,
            r.offered,
            r.sent,
            r.written,
            r.lost_total(),
            r.lost[0],
            r.lost[1],
            r.lost[2],
            r.suppressed,
            r.dirty_mib,
            r.lines
        );
        rounds.push(r);
        if keep {
            kept.push_back(files);
            while free_bytes(&dir) < KEEP_FREE && kept.pop_front().is_some() {}
        }
    }
    let mut sorted = rounds.clone();
    sorted.sort_by(|a, b| a.written.total_cmp(&b.written));
    let series = Series {
        dir,
        fs,
        median: sorted[sorted.len() / 2].clone(),
        rounds,
    };
    (series, kept.into())
}

/// The counters a round reads from /metrics.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    drops: f64,
    emitted: f64,
    suppressed: f64,
    lost: [f64; 3],
}

fn counters(agent: &Agent, iface: &str) -> Counters {
    let m = agent.scrape();
    let get = |series: &str| {
        sample(&m, series).unwrap_or_else(|| panic!("{series} missing from /metrics:\n{m}"))
    };
    Counters {
        drops: deny_list_drops(&m, iface),
        emitted: get("tierguard_events_emitted_total{reason=\"deny_list\"}"),
        suppressed: get("tierguard_events_suppressed_total{reason=\"deny_list\"}"),
        lost: STAGES.map(|s| get(&format!("tierguard_events_dropped_total{{stage=\"{s}\"}}"))),
    }
}

/// One round with its files under `base`; returns its rates and its
/// directory (removed when the caller drops it).
fn round(lab: &Lab, base: &Path, i: usize, split: Option<&Split>) -> (Round, TempDir) {
    let dir = TempDir::new(
        base,
        &format!("tierguard-bench-events-{}-{i}", std::process::id()),
    );
    let pins = PinDir::new(&format!("bench-events-{i}"));
    let out = dir.0.join("events.jsonl");
    let config = dir.0.join("policy.toml");
    // The largest rates and burst the config accepts, and a file that never
    // rotates within a round (2^40 bytes is the largest accepted size).
    std::fs::write(
        &config,
        format!(
            "[agent]\ninterfaces = [\"{iface}\"]\npin_path = \"{pins}\"\nadmin_socket = \"{admin}\"\n\n\
             [[lists]]\nname = \"flood\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\"]\n\n\
             [events]\nenabled = true\nrate_per_reason = {MAX_RATE}\nburst = {MAX_RATE}\nrate_per_source = {MAX_RATE}\nburst_per_source = {MAX_RATE}\nglobal_rate = {MAX_RATE}\n\
             output = \"{out}\"\nfile_max_bytes = {max}\n",
            iface = lab.node_if,
            pins = pins.path().display(),
            admin = dir.0.join("admin.sock").display(),
            out = out.display(),
            max = 1u64 << 40,
        ),
    )
    .expect("write the bench policy");
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    if let Some(sp) = split {
        pin_process(agent.pid(), &sp.agent);
    }

    let flood = Flood::start(
        &lab.ns,
        &lab.peer_if(),
        &lab.node_v4(),
        split.map(|sp| sp.flood),
    );
    sleep_checked(WARMUP);
    let dirty_mib = dirty_mib();
    let (c0, len0, sent0, t0) = snapshot(&agent, &lab.node_if, &out, &flood);
    sleep_checked(WINDOW);
    let (c1, len1, sent1, t1) = snapshot(&agent, &lab.node_if, &out, &flood);
    flood.stop();
    let secs = (t1 - t0).as_secs_f64();

    // Let the pipeline drain, then check that every drop is accounted for:
    // emitted + suppressed + ring_full = dropped (docs/events.md).
    let end = drained(&agent, &lab.node_if, &out);
    assert!(agent.stop().success(), "the agent stops cleanly");
    let (lines, in_window) = check_file(&out, len0, len1);
    let [ring_full, channel_full, write_error] = end.lost;
    assert_eq!(
        lines as f64,
        end.emitted - channel_full - write_error,
        "every emitted event not shed by the agent is a line in the file ({end:?})"
    );
    assert_eq!(
        end.emitted + end.suppressed + ring_full,
        end.drops,
        "every drop is an event, suppressed, or lost to a full ring ({end:?})"
    );
    drop(pins);
    let rate = |a: f64, b: f64| (b - a) / secs;
    let round = Round {
        offered: rate(c0.drops, c1.drops),
        sent: rate(sent0 as f64, sent1 as f64),
        written: in_window as f64 / secs,
        lost: [0, 1, 2].map(|s| rate(c0.lost[s], c1.lost[s])),
        suppressed: rate(c0.suppressed, c1.suppressed),
        lines,
        dirty_mib,
    };
    (round, dir)
}

/// Counters, the event file's length and the frames sent, at one instant.
fn snapshot(
    agent: &Agent,
    iface: &str,
    out: &Path,
    flood: &Flood,
) -> (Counters, u64, u64, Instant) {
    let c = counters(agent, iface);
    let len = std::fs::metadata(out).map_or(0, |m| m.len());
    (c, len, flood.sent.load(Ordering::Relaxed), Instant::now())
}

/// Waits until the agent has read every record and the writer has written
/// every line: the accounting identity holds and the file stops growing.
fn drained(agent: &Agent, iface: &str, out: &Path) -> Counters {
    // Not a performance bound: it only keeps a broken agent from hanging
    // the bench forever.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_len = u64::MAX;
    loop {
        sleep_checked(Duration::from_millis(300));
        let c = counters(agent, iface);
        let len = std::fs::metadata(out).map_or(0, |m| m.len());
        if c.emitted + c.suppressed + c.lost[0] == c.drops && len == last_len {
            return c;
        }
        last_len = len;
        assert!(
            Instant::now() < deadline,
            "the event pipeline did not drain ({c:?}):\n{}",
            agent.log()
        );
    }
}

/// Reads the whole event file: every line must be a JSON deny event of the
/// flood. Returns the number of lines and how many of them ended within
/// bytes `from..=to` (the measured window).
fn check_file(path: &Path, from: u64, to: u64) -> (u64, u64) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let src = std::net::Ipv4Addr::from(FLOOD_SRC).to_string();
    let (mut offset, mut lines, mut in_window) = (0u64, 0u64, 0u64);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .expect("read the event file") as u64;
        if n == 0 {
            break;
        }
        check_interrupt();
        offset += n;
        assert_eq!(
            buf.last(),
            Some(&b'\n'),
            "a partial last line at byte {offset}"
        );
        let e: Value = serde_json::from_slice(&buf).unwrap_or_else(|err| {
            panic!(
                "line {} is not JSON ({err}): {}",
                lines + 1,
                String::from_utf8_lossy(&buf)
            )
        });
        let ok = e["event"] == "packet"
            && e["verdict"] == "drop"
            && matches!(e["reason"].as_str(), Some("deny_list" | "default_deny"))
            && e["src"] == src.as_str()
            && e["protocol"] == "udp";
        assert!(
            ok,
            "line {} is not a deny event of the flood: {e}",
            lines + 1
        );
        lines += 1;
        if offset > from && offset <= to {
            in_window += 1;
        }
    }
    (lines, in_window)
}

/// A UDP flood from the denied source, sent from inside the lab's namespace
/// by one thread; stops (and joins) on `stop` or drop.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    fn start(ns: &str, ifname: &str, dst: &str, cpu: Option<usize>) -> Flood {
        let dst: std::net::Ipv4Addr = dst.parse().expect("node address");
        let frames: Vec<Vec<u8>> = (0..BATCH)
            .map(|i| {
                v4_frame(
                    FLOOD_SRC,
                    dst.octets(),
                    PROTO_UDP,
                    &udp(40_000 + i as u16, 9, 0),
                )
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (ns, ifname) = (ns.to_string(), ifname.to_string());
        let (s, n) = (stop.clone(), sent.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tg-bench-flood".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin(0, &[cpu]);
                }
                let sock = packet_socket_in(&ns, &ifname);
                ready_tx.send(()).expect("bench waits for the sender");
                send_loop(&sock, &frames, &s, &n);
            })
            .expect("spawn the flood thread");
        // A socket that cannot be made panics the thread; say so here.
        if ready_rx.recv().is_err() {
            let _ = thread.join();
            panic!("the flood sender could not open its socket (see the message above)");
        }
        Flood {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}

/// An AF_PACKET socket on `ifname` in network namespace `ns`. The calling
/// thread moves into the namespace (setns affects only the calling thread),
/// which is why the sender has a thread of its own.
fn packet_socket_in(ns: &str, ifname: &str) -> OwnedFd {
    let nsfile = File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open /run/netns/{ns}: {e}"));
    // SAFETY: setns with a valid namespace fd; only this thread moves.
    let rc = unsafe { libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
    // Protocol 0: a send-only socket, so nothing is queued to it for reading.
    // SAFETY: plain socket call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a new socket nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Straight to the driver: the qdisc would only add cost to a flood.
    let one: libc::c_int = 1;
    // SAFETY: option value is a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "PACKET_QDISC_BYPASS: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(ifname).expect("interface name");
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no interface {ifname} in {ns}");
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "bind to {ifname}: {}",
        std::io::Error::last_os_error()
    );
    sock
}

/// Sends `frames` over and over, a batch per sendmmsg, until `stop`.
fn send_loop(sock: &OwnedFd, frames: &[Vec<u8>], stop: &AtomicBool, sent: &AtomicU64) {
    let mut iov: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zero is a valid start.
    let mut msgs: Vec<libc::mmsghdr> = (0..frames.len())
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: msgs point at iovecs and frames that outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            sent.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            // The device queue is full (ENOBUFS) or similar: try again.
            std::thread::yield_now();
        }
    }
}

/// A directory removed with everything in it on drop (the event files of a
/// round run to gigabytes).
struct TempDir(PathBuf);

impl TempDir {
    fn new(base: &Path, name: &str) -> TempDir {
        let p = base.join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Set by SIGINT while the events section runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// While it lives, Ctrl-C sets a flag instead of killing the bench, so the
/// next check panics and the lab, agent and files are removed on the way out.
struct InterruptGuard;

impl InterruptGuard {
    fn install() -> InterruptGuard {
        INTERRUPTED.store(false, Ordering::Relaxed);
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(
                libc::SIGINT,
                on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
        InterruptGuard
    }
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        // SAFETY: restoring the default disposition.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    }
}

/// Panics (and so cleans up) if Ctrl-C came.
fn check_interrupt() {
    assert!(
        !INTERRUPTED.load(Ordering::Relaxed),
        "interrupted; removing the lab"
    );
}

/// Sleeps, checking for Ctrl-C every 100 ms.
fn sleep_checked(d: Duration) {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        check_interrupt();
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; the call fills it for this process.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a cpu_set_t of the given size.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: cpu is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`.
fn pin(tid: libc::pid_t, cpus: &[usize]) {
    // SAFETY: cpu_set_t is plain data; zero is a valid start.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: cpu is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: set is a valid cpu_set_t of the given size.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity({tid}): {}",
        std::io::Error::last_os_error()
    );
}

/// Restricts every thread of process `pid` to `cpus`; threads it starts
/// later inherit the mask of the thread that starts them.
fn pin_process(pid: i32, cpus: &[usize]) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("list the agent's threads: {e}"));
    for t in tasks {
        let tid = t.expect("task entry").file_name();
        pin(
            tid.to_str()
                .and_then(|t| t.parse().ok())
                .expect("thread id"),
            cpus,
        );
    }
}

/// The type of the file system holding `path` (the longest mount point
/// above it in /proc/mounts), or "unknown".
fn fs_type(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (point, fs) = (f.nth(1)?, f.next()?);
            path.starts_with(point)
                .then(|| (point.len(), fs.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}

/// Bytes an unprivileged user could still write under `path`.
fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs is plain data; the call fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated and st is a statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail * st.f_frsize
}

/// Dirty page cache, in MiB.
fn dirty_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let l = m.lines().find(|l| l.starts_with("Dirty:"))?;
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib / 1024)
}

fn possible_cpus() -> usize {
    // "0-1" or "0-3,8-11": count each range.
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .map(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    Some(b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1)
                })
                .sum()
        })
        .unwrap_or(0)
}

pub fn render(s: &mut String, r: &EventRows) {
    let cpus = r.possible_cpus.max(1);
    let _ = writeln!(s, "\n{HEADING}\n");
    let _ = writeln!(
        s,
        "The agent binary (`tierguard run --config FILE`) on a veth, a deny list, `[events]` on with \
         the sampler wide open (`rate_per_reason`, `burst`, `rate_per_source`, `burst_per_source` and `global_rate` at their maximum, \
         {MAX_RATE}) and `output` a file. A thread in the peer namespace floods UDP from a denied \
         source over an AF_PACKET socket ({} s per round after a 1 s warm-up; {ROUNDS} rounds, a \
         fresh agent each). {} Rates are per second over the window, from the agent's /metrics and \
         the event file's length at both ends of it.\n",
        WINDOW.as_secs(),
        match &r.split {
            Some(sp) => format!(
                "The flood (the sender, and the XDP program, which runs in the veth's softirq on \
                 the sender's CPU) is pinned to CPU {}, the agent to CPU{} {}.",
                sp.flood,
                if sp.agent.len() > 1 { "s" } else { "" },
                sp.agent
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "With one CPU the flood and the agent share it.".to_string(),
        }
    );
    for (k, series) in r.series.iter().enumerate() {
        let what = if k == 0 {
            "the temporary directory"
        } else {
            "memory: the agent without a disk or writeback"
        };
        let _ = writeln!(
            s,
            "### Event file on {} (`{}`, {what})\n",
            series.fs,
            series.dir.display()
        );
        let _ = writeln!(
            s,
            "| round | offered drops/s | events written/s | lost/s | lost share | ring_full/s | channel_full/s | write_error/s | suppressed/s | dirty at start (MiB) | lines checked |"
        );
        let _ = writeln!(
            s,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let row = |s: &mut String, name: &str, x: &Round| {
            let _ = writeln!(
                s,
                "| {name} | {:.0} | {:.0} | {:.0} | {:.3} % | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
                x.offered,
                x.written,
                x.lost_total(),
                x.lost_share() * 100.0,
                x.lost[0],
                x.lost[1],
                x.lost[2],
                x.suppressed,
                x.dirty_mib,
                x.lines
            );
        };
        for (i, x) in series.rounds.iter().enumerate() {
            row(s, &(i + 1).to_string(), x);
        }
        row(s, "**median** (by written)", &series.median);
        let _ = writeln!(s, "\n{}\n", verdict(series));
    }
    let m = &r.series[0].median;
    let _ = writeln!(
        s,
        "- offered drops/s: packets the XDP program dropped (`tierguard_packets_total{{reason=\"deny_list\",verdict=\"drop\"}}`), \
         the load the datapath saw (the sender handed {:.0}/s to the kernel in the first table's median round).\n\
         - events written/s: lines that reached the file within the window (its length at both ends). The file trails the \
         kernel's counters by what is queued in between (the ring holds about 11,000 records, the writer's channel 8,192 \
         lines), and that backlog can differ at the two ends, so a rate can be off by up to about {:.0}/s either way \
         and can read a little above the offered rate. After each round every line of the file is parsed as JSON and \
         checked to be a `deny_list` drop of the flood's source, its line count must equal \
         `tierguard_events_emitted_total` minus what the agent shed, and emitted + suppressed + `ring_full` must equal \
         the drops.\n\
         - lost/s: `tierguard_events_dropped_total{{stage}}` for `ring_full` (the kernel found the 1 MiB ring full: the \
         agent's reader was behind), `channel_full` (the 8,192-line channel was full: the writer thread was behind) \
         and `write_error`; the share is of the events the sampler let through.\n\
         - suppressed/s: `tierguard_events_suppressed_total`, the sampler said no. Its buckets are per CPU, each with \
         1/{cpus} of the rates, and the flood arrives on one CPU, so this setup emits at most {:.0} events/s \
         however fast the flood.\n\
         - dirty at start: the page cache the kernel had yet to write back when the window opened (`Dirty` in \
         /proc/meminfo). On a disk the rounds' files are kept until the section ends (removing gigabytes would set \
         the file system to work in the next window), so later rounds write while the kernel writes back the \
         earlier ones once dirty pages pass its background threshold (`vm.dirty_background_ratio` of memory), as \
         in a flood that lasts; the writer thread then competes with that writeback for CPU. The agent's writer \
         takes what is queued (up to 512 lines) and writes it in one `write` call.\n\n\
         Reproduce: `cargo xtask bench` (every section; it builds the agent binary first), or this section alone: \
         `cargo xtask bench -- --only events` (rewrites only this section of docs/benchmarks.md), or printed only: \
         `cargo build --release -p tierguard && cargo run --release -p tierguard-tests --bin tierguard-bench -- --only events`. \
         The event files go to `$TMPDIR` (default `/tmp`), then to `/dev/shm`.",
        m.sent,
        BACKLOG as f64 / WINDOW.as_secs_f64(),
        MAX_RATE as f64 / cpus as f64,
    );
}

/// What limited the median round, in words, and what the rounds without
/// loss showed.
fn verdict(r: &Series) -> String {
    let m = &r.median;
    let n = r.rounds.len();
    let lossless: Vec<&Round> = r.rounds.iter().filter(|x| x.lost_total() == 0.0).collect();
    let mut v = if m.lost_total() == 0.0 && m.suppressed == 0.0 {
        format!(
            "Bottleneck in the median round: the traffic generator. Nothing was lost or suppressed: \
             the agent wrote every drop as an event, so it sustains at least **{:.0} events/s** into \
             a file on {}.",
            m.written, r.fs
        )
    } else if m.lost_total() == 0.0 {
        format!(
            "Bottleneck in the median round: the sampler's cap, not the agent. Nothing was lost after \
             sampling, but {:.0}/s were suppressed: the agent wrote all **{:.0} events/s** the sampler \
             let through into a file on {}, so it sustains at least that.",
            m.suppressed, m.written, r.fs
        )
    } else {
        let worst = STAGES
            .iter()
            .zip(m.lost)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or("", |(s, _)| *s);
        format!(
            "Bottleneck in the median round: the agent. It wrote **{:.0} events/s** into a file on {} \
             and lost {:.0}/s after sampling ({:.3} % of what the sampler let through, mostly `{worst}`).",
            m.written,
            r.fs,
            m.lost_total(),
            m.lost_share() * 100.0,
        )
    };
    let _ = write!(v, " Loss in {} of {n} rounds", n - lossless.len());
    match lossless.iter().map(|x| x.written).max_by(f64::total_cmp) {
        Some(best) if lossless.len() < n => {
            let _ = write!(
                v,
                "; the rounds without loss wrote every event at up to {best:.0} events/s."
            );
        }
        _ => v.push('.'),
    }
    v
}
