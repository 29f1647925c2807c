//! A real Prometheus server (Debian's `prometheus`) scraping the agent.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// Prometheus scraping `targets` as job "tierguard" every second, with its
/// data under `dir`; stopped on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
}

impl Prometheus {
    pub fn start(dir: &Path, targets: &[SocketAddr]) -> Prometheus {
        let addr = crate::agent::free_addr();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tierguard\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed by `cargo xtask setup` (Debian package prometheus)");
        Prometheus { child, addr }
    }

    /// Whether the server answers its readiness endpoint.
    pub fn ready(&self) -> bool {
        crate::http::get(self.addr, "/-/ready").is_some_and(|(s, _)| s == 200)
    }

    /// The result array of an instant query (empty while there is no data).
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let mut enc = String::new();
        for b in expr.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        let (status, body) = crate::http::get(self.addr, &format!("/api/v1/query?query={enc}"))
            .unwrap_or_else(|| panic!("Prometheus does not answer the query {expr}"));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("query {expr}: not JSON ({e}): {body}"));
        assert_eq!(status, 200, "query {expr} failed: {body}");
        assert_eq!(v["status"], "success", "query {expr}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
