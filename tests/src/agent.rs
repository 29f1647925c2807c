//! The agent binary as a user runs it: a child process with a config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the `tierguard` binary: $TIERGUARD_BIN, or in the profile
/// directory: next to this test executable's deps directory (`cargo xtask
/// test` builds it first), or beside this executable when it is a binary of
/// its own, as the benchmark is (`cargo xtask bench` builds it first).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TIERGUARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("executable directory");
    let candidates = [
        dir.parent().map(|d| d.join("tierguard")),
        Some(dir.join("tierguard")),
    ];
    let found = candidates.iter().flatten().find(|b| b.is_file());
    found.cloned().unwrap_or_else(|| {
        panic!(
            "tierguard not found beside {}: build the agent first (`cargo build -p tierguard`; `cargo xtask test` and `cargo xtask bench` do it)",
            exe.display()
        )
    })
}

/// Runs `tierguard ARGS` to completion.
pub fn run_cli(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run tierguard")
}

/// A command's stdout then stderr, as text (for assertions and messages).
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A running agent, stopped with SIGTERM on drop.
pub struct Agent {
    child: Option<Child>,
    pub metrics: SocketAddr,
    log: PathBuf,
}

impl Agent {
    /// Starts `tierguard run` and waits until /readyz answers 200 (or the
    /// process exits, which panics with its log).
    pub fn start(args: &[&str], metrics: SocketAddr) -> Agent {
        let log = std::env::temp_dir().join(format!(
            "tierguard-agent-{}-{}.log",
            std::process::id(),
            metrics.port()
        ));
        let file = std::fs::File::create(&log).expect("agent log file");
        let child = Command::new(binary())
            .arg("run")
            .args(args)
            .arg("--metrics-address")
            .arg(metrics.to_string())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn tierguard run");
        let mut agent = Agent {
            child: Some(child),
            metrics,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().expect("wait") {
                panic!("agent exited early ({status}):\n{}", agent.log());
            }
            if let Some((200, _)) = crate::http::get(metrics, "/readyz") {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready after 60 s:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn scrape(&self) -> String {
        let (status, body) = crate::http::get(self.metrics, "/metrics").expect("scrape /metrics");
        assert_eq!(status, 200, "scrape status");
        body
    }

    /// Scrapes until `f` accepts the metrics; panics with the agent's log
    /// after 30 s.
    pub fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f(&self.scrape()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not stop within 30 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the agent without letting it clean up, as a crash would.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}
