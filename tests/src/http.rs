//! Minimal HTTP GET for scraping the agent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// GET `path`; returns (status, body) or None if nothing answers.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of the first sample whose line starts with `series` exactly
/// (name plus its labels as rendered), e.g. `tierguard_policy_generation`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Ingress packets dropped by a deny list on `iface` (0 before the first).
pub fn deny_list_drops(metrics: &str, iface: &str) -> f64 {
    sample(
        metrics,
        &format!("tierguard_packets_total{{direction=\"ingress\",interface=\"{iface}\",reason=\"deny_list\",verdict=\"drop\"}}"),
    )
    .unwrap_or(0.0)
}
