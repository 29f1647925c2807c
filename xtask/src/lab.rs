//! A throwaway network-namespace lab: the node side of a veth pair stays in the root
//! namespace (where the agent runs and attaches), the peer side lives in a namespace and sends
//! traffic from allowed and from denied ("attacker") source addresses.
//!
//! [`Lab::create`] first removes whatever an earlier run left behind (whole or half-built);
//! dropping the [`Lab`] removes everything again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::cmd::Cmd;

pub const NETNS: &str = "tgdemo-peer";
/// Node side, root namespace; the agent attaches here.
pub const HOST_IF: &str = "tgdemo0";
/// Peer side, inside [`NETNS`].
pub const PEER_IF: &str = "tgdemo1";

// Addresses from the default policy's estate (config/default.toml): the
// node is an application-tier ("dmz") host, the peer an "edge" host.
pub const HOST_V4: &str = "10.20.0.1";
pub const PEER_V4: &str = "10.10.0.2";
pub const HOST_V6: &str = "fd00:20::1";
pub const PEER_V6: &str = "fd00:10::2";
/// Attacker sources on the peer, inside the default policy's "bogons" deny list.
pub const ATTACKER_V4: &str = "203.0.113.7";
pub const ATTACKER_V6: &str = "2001:db8::7";

/// Documentation prefixes routed into the lab from the root namespace, so that any reply to
/// a spoofed source (e.g. hping3's 203.0.113.66) stays on the veth and never leaves the host.
const LAB_ROUTES_V4: &[&str] = &["203.0.113.7/32", "203.0.113.0/24"];
const LAB_ROUTES_V6: &[&str] = &["2001:db8::7/128", "2001:db8::/32"];

pub struct Lab {
    removed: bool,
}

impl Lab {
    /// Build the lab, removing stale state from an earlier run first.
    pub fn create() -> Result<Self> {
        if !crate::setup::is_root() {
            bail!("the lab needs root: it creates a network namespace and a veth pair");
        }
        remove_stale()?;
        println!(
            "lab: creating namespace {NETNS} and veth pair {HOST_IF} (here) <-> {PEER_IF} (in {NETNS})"
        );
        // From here on, a failure drops the guard and removes what was built.
        let lab = Self { removed: false };
        ip(&["netns", "add", NETNS])?;
        ip(&[
            "link", "add", HOST_IF, "type", "veth", "peer", "name", PEER_IF, "netns", NETNS,
        ])?;

        // No duplicate address detection, so that IPv6 addresses are usable at once.
        sysctl_here(&format!("net.ipv6.conf.{HOST_IF}.accept_dad=0"))?;
        lab.exec([
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv6.conf.{PEER_IF}.accept_dad=0"),
        ])
        .run()?;

        // Host addresses and host routes only: the two ends are in different
        // tiers, and no route of this machine's own networks is shadowed.
        println!("lab: node side {HOST_IF}: {HOST_V4}/32, {HOST_V6}/128");
        ip(&["addr", "add", &format!("{HOST_V4}/32"), "dev", HOST_IF])?;
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{HOST_V6}/128"),
            "dev",
            HOST_IF,
            "nodad",
        ])?;
        ip(&["link", "set", HOST_IF, "up"])?;
        ip(&["route", "add", &format!("{PEER_V4}/32"), "dev", HOST_IF])?;
        ip(&[
            "-6",
            "route",
            "add",
            &format!("{PEER_V6}/128"),
            "dev",
            HOST_IF,
        ])?;

        println!(
            "lab: peer side {PEER_IF}: {PEER_V4}/32, {PEER_V6}/128, attacker sources \
             {ATTACKER_V4}/32 and {ATTACKER_V6}/128"
        );
        lab.ip_in(&["link", "set", "lo", "up"])?;
        lab.ip_in(&["addr", "add", &format!("{PEER_V4}/32"), "dev", PEER_IF])?;
        lab.ip_in(&["addr", "add", &format!("{ATTACKER_V4}/32"), "dev", PEER_IF])?;
        lab.ip_in(&[
            "-6",
            "addr",
            "add",
            &format!("{PEER_V6}/128"),
            "dev",
            PEER_IF,
            "nodad",
        ])?;
        lab.ip_in(&[
            "-6",
            "addr",
            "add",
            &format!("{ATTACKER_V6}/128"),
            "dev",
            PEER_IF,
            "nodad",
        ])?;
        lab.ip_in(&["link", "set", PEER_IF, "up"])?;
        lab.ip_in(&["route", "add", &format!("{HOST_V4}/32"), "dev", PEER_IF])?;
        lab.ip_in(&[
            "-6",
            "route",
            "add",
            &format!("{HOST_V6}/128"),
            "dev",
            PEER_IF,
        ])?;

        println!("lab: routing the attacker addresses back through {HOST_IF}");
        for r in LAB_ROUTES_V4 {
            ip(&["route", "add", r, "dev", HOST_IF])?;
        }
        for r in LAB_ROUTES_V6 {
            ip(&["-6", "route", "add", r, "dev", HOST_IF])?;
        }
        wait_for_ipv6_ready()?;
        println!("lab: ready");
        Ok(lab)
    }

    /// A command run inside the lab namespace: `ip netns exec tgdemo-peer ...`.
    pub fn exec<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Cmd::new("ip").args(["netns", "exec", NETNS]).args(args)
    }

    fn ip_in(&self, args: &[&str]) -> Result<()> {
        self.exec(["ip"]).args(args).run()
    }

    /// Remove the lab now (also done on drop).
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        teardown()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = teardown()
        {
            eprintln!("warning: lab cleanup incomplete: {e:#}");
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    Cmd::new("ip").args(args).run()
}

fn sysctl_here(setting: &str) -> Result<()> {
    Cmd::new("sysctl").args(["-q", "-w", setting]).run()
}

fn link_exists(name: &str) -> bool {
    Cmd::new("ip")
        .args(["link", "show", "dev", name])
        .quiet()
        .succeeds()
}

fn netns_exists() -> bool {
    Path::new("/run/netns").join(NETNS).exists()
}

/// True if anything of the lab exists in the root namespace or as a named namespace.
pub fn any_left() -> bool {
    netns_exists() || link_exists(HOST_IF) || link_exists(PEER_IF)
}

fn remove_stale() -> Result<()> {
    if any_left() {
        println!("lab: removing what an earlier run left behind");
        teardown()?;
    }
    Ok(())
}

/// Remove every piece that exists; tolerant of half-built state.
fn teardown() -> Result<()> {
    println!("lab: removing namespace {NETNS} and veth pair {HOST_IF}/{PEER_IF}");
    // Deleting one end of a veth pair deletes the other; routes on it go with it.
    for dev in [HOST_IF, PEER_IF] {
        if link_exists(dev) {
            Cmd::new("ip").args(["link", "del", "dev", dev]).run().ok();
        }
    }
    if netns_exists() && Cmd::new("ip").args(["netns", "del", NETNS]).run().is_err() {
        // A half-made namespace can leave a plain file behind that `ip netns del` rejects.
        let file = Path::new("/run/netns").join(NETNS);
        std::fs::remove_file(&file).ok();
    }
    // Namespace teardown is asynchronous in the kernel: wait until the veth is really gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while any_left() {
        if Instant::now() > deadline {
            let mut left = Vec::new();
            if netns_exists() {
                left.push(format!("namespace {NETNS}"));
            }
            for dev in [HOST_IF, PEER_IF] {
                if link_exists(dev) {
                    left.push(format!("link {dev}"));
                }
            }
            bail!("after 10 s these still exist: {}", left.join(", "));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// With DAD off, addresses are usable at once; wait until none is still tentative (bounded).
fn wait_for_ipv6_ready() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let here = Cmd::new("ip")
            .args(["-6", "addr", "show", "dev", HOST_IF, "tentative"])
            .quiet()
            .stdout()?;
        let there = Cmd::new("ip")
            .args([
                "netns",
                "exec",
                NETNS,
                "ip",
                "-6",
                "addr",
                "show",
                "dev",
                PEER_IF,
                "tentative",
            ])
            .quiet()
            .stdout()?;
        if here.trim().is_empty() && there.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("IPv6 addresses still tentative after 5 s:\n{here}{there}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Outcome of a ping, from ping's own summary line.
pub struct PingResult {
    pub success: bool,
    pub transmitted: u32,
    pub received: u32,
    pub summary: String,
}

impl Lab {
    /// `ping -c 3 -W 1 -I <src> <dst>` from inside the namespace.
    pub fn ping(&self, src: &str, dst: &str) -> Result<PingResult> {
        let out = self
            .exec(["ping", "-c", "3", "-W", "1", "-I", src, dst])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let summary = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("")
            .trim()
            .to_owned();
        let (transmitted, received) = parse_ping_summary(&summary).unwrap_or((0, 0));
        let summary = if summary.is_empty() {
            String::from_utf8_lossy(&out.stderr).trim().to_owned()
        } else {
            summary
        };
        Ok(PingResult {
            success: out.status.success(),
            transmitted,
            received,
            summary,
        })
    }
}

/// "3 packets transmitted, 3 received, 0% packet loss, time 2003ms" -> (3, 3).
fn parse_ping_summary(line: &str) -> Option<(u32, u32)> {
    let mut parts = line.split(',');
    let tx = parts.next()?.split_whitespace().next()?.parse().ok()?;
    let rx = parts.next()?.split_whitespace().next()?.parse().ok()?;
    Some((tx, rx))
}

/// `cargo xtask lab-selftest`: build the lab, check it carries traffic with no agent (the
/// attacker sources too, which proves that in the demo it is the agent that drops them),
/// survive stale and half-built state, and leave nothing behind.
pub fn selftest() -> Result<()> {
    let mut failures = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        println!("{} {what}: {detail}", if ok { "ok:  " } else { "FAIL:" });
        if !ok {
            failures.push(what.to_owned());
        }
    };

    println!("lab-selftest: 1. build the lab from nothing and send traffic with no agent");
    let lab = Lab::create()?;
    for (src, dst) in [
        (PEER_V4, HOST_V4),
        (PEER_V6, HOST_V6),
        (ATTACKER_V4, HOST_V4),
        (ATTACKER_V6, HOST_V6),
    ] {
        let r = lab.ping(src, dst)?;
        check(
            &format!("ping {src} -> {dst}"),
            r.success && r.received == r.transmitted,
            r.summary,
        );
    }
    let listener = crate::demo::LineServer::start(HOST_V4, 8080)?;
    for src in [PEER_V4, ATTACKER_V4] {
        let reply = crate::demo::tcp_exchange(&lab, src, HOST_V4, 8080)?;
        check(
            &format!("tcp {src} -> {HOST_V4}:8080"),
            reply.is_some(),
            format!("{reply:?}"),
        );
    }
    check(
        "listener saw both peers",
        listener.peers_seen(PEER_V4) >= 1 && listener.peers_seen(ATTACKER_V4) >= 1,
        format!(
            "{} from {PEER_V4}, {} from {ATTACKER_V4}",
            listener.peers_seen(PEER_V4),
            listener.peers_seen(ATTACKER_V4)
        ),
    );
    drop(listener);

    println!(
        "lab-selftest: 2. leave the whole lab behind (as a crashed run would) and build it again"
    );
    std::mem::forget(lab);
    let lab = Lab::create()?;
    let r = lab.ping(PEER_V4, HOST_V4)?;
    check(
        "ping after rebuilding over a stale lab",
        r.success,
        r.summary,
    );
    lab.remove()?;
    check("nothing left after remove()", !any_left(), String::new());

    println!(
        "lab-selftest: 3. half-built state: a namespace alone, then a lone veth in the root namespace"
    );
    ip(&["netns", "add", NETNS])?;
    ip(&[
        "link", "add", PEER_IF, "type", "veth", "peer", "name", "tgdemo-x",
    ])?;
    let lab = Lab::create()?;
    let r = lab.ping(PEER_V6, HOST_V6)?;
    check(
        "ping after rebuilding over a half-built lab",
        r.success,
        r.summary,
    );
    check(
        "stray veth end removed",
        !link_exists("tgdemo-x"),
        String::new(),
    );

    println!("lab-selftest: 4. drop the lab guard");
    drop(lab);
    check("nothing left after drop", !any_left(), String::new());

    if failures.is_empty() {
        println!("lab-selftest: all checks passed");
        Ok(())
    } else {
        bail!(
            "lab-selftest: {} check(s) failed: {}",
            failures.len(),
            failures.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary() {
        assert_eq!(
            parse_ping_summary("3 packets transmitted, 3 received, 0% packet loss, time 2003ms"),
            Some((3, 3))
        );
        assert_eq!(
            parse_ping_summary("3 packets transmitted, 0 received, 100% packet loss, time 2051ms"),
            Some((3, 0))
        );
        assert_eq!(
            parse_ping_summary("3 packets transmitted, 0 received, +3 errors, 100% packet loss"),
            Some((3, 0))
        );
        assert_eq!(parse_ping_summary(""), None);
    }
}
