//! The event webhook end to end: the agent on a veth with events going both
//! to a file and to an HTTP server this test runs on 127.0.0.1. Denied pings
//! reach the server in batches with the bearer token; with the server down,
//! enforcement and the file sink go on while the webhook's loss counters
//! rise; when the server returns on the same port, delivery resumes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tierguard_tests::{
    agent::{Agent, free_addr},
    http::sample,
    lab::Lab,
    pins::PinDir,
};

const DENIED_V4: &str = "203.0.113.7";
const TOKEN: &str = "tgw-test-token-6f1c2a9e";

/// One request the server received.
#[derive(Debug, Clone)]
struct Request {
    request_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn events(&self) -> Vec<Value> {
        match serde_json::from_str(&self.body) {
            Ok(Value::Array(a)) => a,
            other => panic!("body is not a JSON array ({other:?}): {}", self.body),
        }
    }
}

/// An HTTP server on 127.0.0.1 that answers 200 to every request and keeps
/// what it received. Stopped (its port closed) on `stop` or drop.
struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(addr: &str) -> Server {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(req) = serve(conn) {
                            r.lock().unwrap().push(req);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        Server {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<Value> {
        self.requests().iter().flat_map(Request::events).collect()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one request and answers 200.
fn serve(mut conn: TcpStream) -> Option<Request> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8(got[..head_end].to_vec()).expect("head is UTF-8");
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().expect("Content-Length is a number"))
        .expect("request has Content-Length");
    let mut body = got[head_end + 4..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    assert_eq!(body.len(), len, "body length matches Content-Length");
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    Some(Request {
        request_line,
        headers,
        body: String::from_utf8(body).expect("body is UTF-8"),
    })
}

fn tmpdir(name: &str) -> PathBuf {
    tierguard_tests::tmpdir("webhook", name)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn metric(metrics: &str, series: &str) -> u64 {
    sample(metrics, series).unwrap_or_else(|| panic!("{series} missing from:\n{metrics}")) as u64
}

fn drops(m: &str, iface: &str) -> u64 {
    metric(
        m,
        &format!(
            "tierguard_packets_total{{direction=\"ingress\",interface=\"{iface}\",reason=\"deny_list\",verdict=\"drop\"}}"
        ),
    )
}

const DELIVERED: &str = "tierguard_events_delivered_total{sink=\"webhook\"}";
const FAILED: &str = "tierguard_events_dropped_total{stage=\"webhook_failed\"}";
const QUEUE_FULL: &str = "tierguard_events_dropped_total{stage=\"webhook_queue_full\"}";

/// Polls `f` until it returns Some, or panics with `what` and the last state.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f() {
            Ok(v) => return v,
            Err(state) => assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {state}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ping_denied(lab: &Lab, count: u32, interval: &str) {
    let count = count.to_string();
    assert!(
        !lab.exec(&[
            "ping",
            "-c",
            &count,
            "-i",
            interval,
            "-W",
            "1",
            "-I",
            DENIED_V4,
            &lab.node_v4()
        ]),
        "denied pings must not be answered"
    );
}

#[test]
fn webhook_delivers_batches_sheds_while_down_and_resumes() {
    let lab = Lab::new("tgw1", 228);
    lab.add_peer_source(DENIED_V4);
    let pins = PinDir::new("wh1");
    let dir = tmpdir("e2e");
    let out = dir.join("events.jsonl");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut server = Server::start("127.0.0.1:0");
    let port = server.addr.port();
    let config = dir.join("policy.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ninterfaces = [\"{}\"]\npin_path = \"{}\"\n\n\
             [[lists]]\nname = \"blocked\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\"]\n\n\
             [events]\nenabled = true\nrate_per_reason = 1000\nburst = 1000\nrate_per_source = 1000\nburst_per_source = 1000\nglobal_rate = 10000\n\
             output = \"{}\"\n\
             webhook_url = \"http://127.0.0.1:{port}/ingest\"\nwebhook_token_file = \"{}\"\n\
             webhook_batch_max = 3\nwebhook_flush_ms = 500\nwebhook_queue = 2\nwebhook_max_attempts = 2\n",
            lab.node_if,
            pins.path().display(),
            out.display(),
            token_file.display()
        ),
    )
    .unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()], free_addr());
    // Allowed traffic (fills the neighbour caches) makes no events.
    assert!(lab.ping(None, &lab.node_v4(), 2));

    // 1. Delivered, in batches, with the token.
    ping_denied(&lab, 6, "0.05");
    let events = wait_for("6 events at the server", || {
        let e = server.events();
        if e.len() >= 6 {
            Ok(e)
        } else {
            Err(format!("{} so far", e.len()))
        }
    });
    assert_eq!(events.len(), 6, "{events:#?}");
    for e in &events {
        assert_eq!(e["reason"], "deny_list");
        assert_eq!(e["src"], DENIED_V4);
        assert_eq!(e["dst"], lab.node_v4().as_str());
        assert_eq!(e["interface"], lab.node_if.as_str());
        assert_eq!(e["list"], "blocked");
    }
    let reqs = server.requests();
    for r in &reqs {
        assert_eq!(r.request_line, "POST /ingest HTTP/1.1");
        assert_eq!(
            r.header("Authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("Host"), Some(format!("127.0.0.1:{port}").as_str()));
        let n = r.events().len();
        assert!(
            (1..=3).contains(&n),
            "batches hold 1 to webhook_batch_max events: {n}"
        );
    }
    assert!(
        reqs.len() < 6,
        "six events close together arrive in fewer than six POSTs: {reqs:#?}"
    );
    // The file sink got the same events.
    let file = wait_for("6 lines in the file", || {
        let l = lines(&out);
        if l.len() >= 6 {
            Ok(l)
        } else {
            Err(format!("{} lines", l.len()))
        }
    });
    let key = |v: &[Value]| {
        let mut t: Vec<u64> = v
            .iter()
            .map(|e| e["time_unix_ns"].as_u64().unwrap())
            .collect();
        t.sort();
        t
    };
    assert_eq!(key(&file), key(&events), "both sinks receive every event");
    let m = agent.scrape();
    assert_eq!(metric(&m, DELIVERED), 6);
    assert_eq!(metric(&m, FAILED), 0);
    assert_eq!(metric(&m, QUEUE_FULL), 0);
    assert_eq!(drops(&m, &lab.node_if), 6);

    // 2. The server goes away: enforcement and the file go on, the webhook counts its losses.
    server.stop();
    let n2 = 50u64;
    ping_denied(&lab, n2 as u32, "0.002");
    let m = wait_for(
        "every webhook line of the outage counted as failed or shed",
        || {
            let m = agent.scrape();
            let (f, q) = (metric(&m, FAILED), metric(&m, QUEUE_FULL));
            if f + q >= n2 {
                Ok(m)
            } else {
                Err(format!("failed {f}, queue_full {q}"))
            }
        },
    );
    assert_eq!(drops(&m, &lab.node_if), 6 + n2, "enforcement goes on");
    assert_eq!(metric(&m, DELIVERED), 6);
    let (failed, shed) = (metric(&m, FAILED), metric(&m, QUEUE_FULL));
    assert_eq!(failed + shed, n2, "failed {failed} + shed {shed}");
    assert!(failed >= 1, "batches given up are counted");
    assert!(
        shed >= 1,
        "a full queue sheds: failed {failed}, shed {shed}"
    );
    assert_eq!(
        lines(&out).len() as u64,
        6 + n2,
        "the file sink is not held up"
    );
    let log = agent.log();
    assert_eq!(
        log.matches("event webhook failing").count(),
        1,
        "the failure is reported once:\n{log}"
    );
    assert!(!log.contains(TOKEN), "the token is never logged:\n{log}");

    // 3. Back on the same port: delivery resumes.
    let server2 = Server::start(&format!("127.0.0.1:{port}"));
    ping_denied(&lab, 4, "0.2");
    let events = wait_for("4 new events at the restarted server", || {
        let e = server2.events();
        if e.len() >= 4 {
            Ok(e)
        } else {
            Err(format!("{} so far", e.len()))
        }
    });
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| e["src"] == DENIED_V4));
    assert!(
        server2
            .requests()
            .iter()
            .all(|r| r.header("Authorization") == Some(format!("Bearer {TOKEN}").as_str()))
    );
    let m = wait_for("delivered = 10", || {
        let m = agent.scrape();
        if metric(&m, DELIVERED) >= 10 {
            Ok(m)
        } else {
            Err(m)
        }
    });
    assert_eq!(metric(&m, DELIVERED), 10);
    assert_eq!(drops(&m, &lab.node_if), 6 + n2 + 4);
    assert_eq!(
        metric(&m, FAILED) + metric(&m, QUEUE_FULL),
        n2,
        "nothing lost after the return"
    );
    let log = agent.log();
    assert_eq!(
        log.matches("event webhook delivers again").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("event webhook failing").count(), 1, "{log}");
    assert!(!log.contains(TOKEN));
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(dir);
}
