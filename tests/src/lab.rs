//! Network namespaces joined to the root namespace by veth pairs. The agent
//! runs in the root namespace on the node-side end; traffic comes from the
//! peer namespace. Everything is removed on drop.

use std::process::{Command, Output};

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command and returns whether it succeeded (for traffic that may be dropped).
pub fn try_sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// One peer namespace with a veth to the root namespace.
///
/// Node side: `{name}n`, 10.{net}.0.1/24 and fd00:{net}::1/64.
/// Peer side: `{name}p` in namespace `{name}`, 10.{net}.0.2/24 and fd00:{net}::2/64.
pub struct Lab {
    pub ns: String,
    pub node_if: String,
    pub net: u8,
}

impl Lab {
    pub fn new(name: &str, net: u8) -> Lab {
        crate::require_root();
        assert!(name.len() <= 12, "interface names must stay short");
        let lab = Lab {
            ns: name.to_string(),
            node_if: format!("{name}n"),
            net,
        };
        lab.remove();
        let peer = format!("{name}p");
        sh(&["ip", "netns", "add", name]);
        sh(&[
            "ip",
            "link",
            "add",
            &lab.node_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        sh(&["ip", "link", "set", &peer, "netns", name]);
        for (dev, ns) in [(&lab.node_if, None), (&peer, Some(name))] {
            let mut cmd: Vec<&str> = Vec::new();
            if let Some(ns) = ns {
                cmd.extend(["ip", "netns", "exec", ns]);
            }
            let key = format!("net.ipv6.conf.{dev}.accept_dad=0");
            let mut c = cmd.clone();
            c.extend(["sysctl", "-qw", &key]);
            sh(&c);
        }
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.{net}.0.1/24"),
            "dev",
            &lab.node_if,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("fd00:{net}::1/64"),
            "dev",
            &lab.node_if,
            "nodad",
        ]);
        sh(&["ip", "link", "set", &lab.node_if, "up"]);
        lab.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("10.{net}.0.2/24"),
            "dev",
            &peer,
        ]);
        lab.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("fd00:{net}::2/64"),
            "dev",
            &peer,
            "nodad",
        ]);
        lab.exec_ok(&["ip", "link", "set", &peer, "up"]);
        lab.exec_ok(&["ip", "link", "set", "lo", "up"]);
        lab
    }

    pub fn peer_if(&self) -> String {
        format!("{}p", self.ns)
    }

    pub fn node_v4(&self) -> String {
        format!("10.{}.0.1", self.net)
    }

    pub fn peer_v4(&self) -> String {
        format!("10.{}.0.2", self.net)
    }

    pub fn node_v6(&self) -> String {
        format!("fd00:{}::1", self.net)
    }

    /// Adds an extra source address on the peer, routed back from the node.
    pub fn add_peer_source(&self, addr: &str) {
        let v6 = addr.contains(':');
        let plen = if v6 { "128" } else { "32" };
        self.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{addr}/{plen}"),
            "dev",
            &self.peer_if(),
            "nodad",
        ]);
        let mut route = vec!["ip"];
        if v6 {
            route.push("-6");
        }
        route.extend(["route", "replace", addr, "dev", &self.node_if]);
        sh(&route);
    }

    fn exec_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ip", "netns", "exec", self.ns.as_str()];
        v.extend_from_slice(args);
        v
    }

    /// Runs a command in the peer namespace; panics on failure.
    pub fn exec_ok(&self, args: &[&str]) -> Output {
        sh(&self.exec_args(args))
    }

    /// Pings `dst` from the peer namespace `count` times (0.2 s apart, 2 s
    /// to answer), from `src` if given; true if it got its replies.
    pub fn ping(&self, src: Option<&str>, dst: &str, count: u32) -> bool {
        let count = count.to_string();
        let mut args = vec!["ping"];
        if dst.contains(':') {
            args.push("-6");
        }
        args.extend(["-c", &count, "-i", "0.2", "-W", "2"]);
        if let Some(src) = src {
            args.extend(["-I", src]);
        }
        args.push(dst);
        self.exec(&args)
    }

    /// Starts a UDP flood from the peer namespace to the node (port 9), with a
    /// spoofed `src`: `count` packets, one every `interval_us`. hping3 stops by
    /// itself; wait on the child to know when.
    pub fn udp_flood(&self, src: &str, count: u64, interval_us: u32) -> std::process::Child {
        let (count, interval, dst) = (count.to_string(), format!("u{interval_us}"), self.node_v4());
        let args = [
            "hping3", "--udp", "-p", "9", "-a", src, "-c", &count, "-i", &interval, "-q", &dst,
        ];
        Command::new("ip")
            .args(&self.exec_args(&args)[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("hping3 is installed by `cargo xtask setup`")
    }

    /// Runs a command in the peer namespace; its stdout if it succeeded.
    pub fn output(&self, args: &[&str]) -> Option<String> {
        let args = self.exec_args(args);
        let out = Command::new(args[0]).args(&args[1..]).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sends one line over TCP from the peer namespace to `addr`:`port` and
    /// returns what came back (netcat, 3 s to connect and answer).
    pub fn tcp_exchange(&self, addr: &str, port: u16, line: &str) -> Option<String> {
        let script = format!("echo {line} | nc -N -w 3 {addr} {port}");
        self.output(&["sh", "-c", &script])
            .filter(|s| !s.is_empty())
    }

    /// Sends `count` crafted TCP or UDP packets with hping3 from the peer to
    /// `dst`, from source port `sport` to `dport`; `flags` are hping3's
    /// (for example "-A" for a bare ACK, "--udp" for UDP). hping3's exit
    /// status says whether replies came, which callers check by counters.
    pub fn hping(&self, flags: &str, sport: u16, dport: u16, count: u32, dst: &str) {
        let (sport, dport, count) = (sport.to_string(), dport.to_string(), count.to_string());
        let _ = self.exec(&[
            "hping3", flags, "-s", &sport, "-k", "-p", &dport, "-c", &count, "-i", "u20000", "-q",
            dst,
        ]);
    }

    /// Runs a command in the peer namespace; returns success.
    pub fn exec(&self, args: &[&str]) -> bool {
        try_sh(&self.exec_args(args))
    }

    fn remove(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.node_if])
            .output();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.remove();
    }
}
