//! Bad input to a running agent's APIs: the metrics HTTP server and the
//! admin socket. Whatever clients send or hold open, each gets a defined
//! answer (or its connection closed), other clients are still served, and
//! the agent stays ready and enforcing. Nothing here asserts how fast.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tierguard_tests::{
    agent::{Agent, free_addr, output_text, run_cli},
    http::{get, sample},
    lab::Lab,
    pins::PinDir,
};

fn write_config(dir: &Path, lab: &Lab, pins: &Path) -> PathBuf {
    let path = dir.join("policy.toml");
    let text = format!(
        "[agent]\ninterfaces = [\"{}\"]\npin_path = \"{}\"\naudit_log = \"{}\"\nadmin_socket = \"{}\"\n",
        lab.node_if,
        pins.display(),
        dir.join("audit.jsonl").display(),
        dir.join("run/admin.sock").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Sends `raw` over HTTP and returns everything that came back.
fn http_raw(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `raw` to the admin socket, closes the sending side, and returns
/// the response line.
fn admin_raw(socket: &Path, raw: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(raw).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

#[test]
fn bad_and_stalled_api_clients_get_defined_answers_and_enforcement_goes_on() {
    let lab = Lab::new("tgapi1", 233);
    let pins = PinDir::new("api1");
    let dir = tierguard_tests::tmpdir("api", "clients");
    let config = write_config(&dir, &lab, pins.path());
    // Served on every address: the node's own address is a second source.
    let port = free_addr().port();
    let any: SocketAddr = ([0, 0, 0, 0], port).into();
    let other: SocketAddr = (lab.node_v4().parse::<std::net::IpAddr>().unwrap(), port).into();
    let agent = Agent::start(&["--config", config.to_str().unwrap()], any);
    let socket = dir.join("run/admin.sock");
    let s = socket.to_str().unwrap();
    let (peer, node) = (lab.peer_v4(), lab.node_v4());
    assert!(lab.ping(None, &node, 1));

    // HTTP: twenty silent connections from 127.0.0.1. The agent serves 8
    // from one address and closes the rest; a scrape from another address
    // is answered while they are held.
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(any).unwrap()).collect();
    let (status, body) = get(other, "/metrics").expect("scrape from another address");
    assert_eq!(status, 200);
    assert!(
        sample(
            &body,
            "tierguard_http_connections_refused_total{cause=\"source_full\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert_eq!(get(other, "/readyz").map(|r| r.0), Some(200));
    // Malformed requests, each answered.
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
    for (raw, want) in [
        (long_line.as_bytes(), "HTTP/1.1 400 "),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/1.1 400 "),
        (b"\x16\x03\x01\x00\xa5\x01\r\n\r\n", "HTTP/1.1 400 "),
        (b"POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 "),
        (b"GET /../metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "),
    ] {
        let r = http_raw(other, raw);
        assert!(r.starts_with(want), "{r}");
    }
    drop(idle);

    // Admin socket: one client connected and silent, one that asks for the
    // listing and does not read it; others are answered meanwhile. (The
    // listing here is short and fits the socket buffer; a client stalled on
    // a listing that does not is in admin/server.rs's unit tests.)
    let _silent = UnixStream::connect(&socket).unwrap();
    let mut stalled = UnixStream::connect(&socket).unwrap();
    stalled.write_all(b"{\"op\":\"blocks\"}\n").unwrap();
    let big = format!("{{\"op\":\"blocks\",\"x\":\"{}\"}}\n", "a".repeat(10_000));
    for (raw, want) in [
        (&b"hello\n"[..], "not a request: expected value"),
        (b"\xff\xfe\x00\n", "invalid utf-8"),
        (b"{\"op\":\"reboot\"}\n", "unknown variant `reboot`"),
        (big.as_bytes(), "longer than 4096 bytes"),
        (
            b"{\"op\":\"block\",\"target\":\"0.0.0.0/0\",\"for\":\"1m\",\"reason\":\"x\"}\n",
            "would block every source",
        ),
        (
            b"{\"op\":\"block\",\"target\":\"::/0\",\"for\":\"1m\",\"reason\":\"x\"}\n",
            "would block every source",
        ),
        (
            b"{\"op\":\"block\",\"target\":\"192.0.2.1\",\"for\":\"-5m\",\"reason\":\"x\"}\n",
            "is not a duration",
        ),
        (
            b"{\"op\":\"block\",\"target\":\"192.0.2.1\",\"for\":\"99999999999999999999d\",\"reason\":\"x\"}\n",
            "is not a duration",
        ),
        (
            b"{\"op\":\"block\",\"target\":\"192.0.2.1\",\"for\":\"18446744073709551615\",\"reason\":\"x\"}\n",
            "at most 30d",
        ),
        (
            b"{\"op\":\"unblock\",\"target\":\"0.0.0.0/0\"}\n",
            "0.0.0.0/0 is not blocked",
        ),
    ] {
        let line = admin_raw(&socket, raw);
        assert!(
            line.starts_with("{\"ok\":false") && line.contains(want),
            "{:?}: {line}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)])
        );
    }

    // Enforcement is unaffected: a block applies, the agent stays ready.
    let o = run_cli(&[
        "block", &peer, "--for", "10m", "--reason", "api test", "--socket", s,
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(!lab.ping(None, &node, 1), "blocked");
    assert_eq!(get(other, "/readyz").map(|r| r.0), Some(200));
    let o = run_cli(&["unblock", &peer, "--socket", s]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(lab.ping(None, &node, 1), "unblocked");
    drop(stalled);

    // Every refused request is in the audit log, whose chain holds.
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    let refused = audit
        .lines()
        .filter(|l| l.contains("\"admin_action\"") && l.contains("\"refused\""))
        .count();
    assert!(refused >= 10, "{audit}");
    let o = run_cli(&["audit", "verify", dir.join("audit.jsonl").to_str().unwrap()]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(agent.stop().code(), Some(0));
}
