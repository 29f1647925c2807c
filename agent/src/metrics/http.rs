//! A deliberately small HTTP/1.1 server for /metrics, /healthz and /readyz:
//! GET and HEAD only, one request per connection, bounded in size, time and
//! number of connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server asks of the agent.
pub trait Endpoint: Send + Sync + 'static {
    /// The metrics text.
    fn metrics(&self) -> String;
    /// Whether the agent enforces its policy (attached, policy applied).
    fn ready(&self) -> bool;
    /// A connection was closed unanswered: `server_full` or `source_full`.
    fn refused(&self, _cause: &'static str) {}
}

const MAX_REQUEST: usize = 8 * 1024;

/// How long a connection may take, and how many are served at once.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// To send the whole request head.
    read_timeout: Duration,
    /// To take the whole response: a client that stops reading is dropped.
    write_timeout: Duration,
    /// Connections served at once. Each holds a file descriptor, and those
    /// are shared with the rest of the agent (maps, config and list files,
    /// the audit log): idle clients without a bound could make reloads and
    /// the audit log fail.
    connections: usize,
    /// Connections served at once from one source (an IPv4 address, an
    /// IPv6 /64), so that one client holding connections open cannot take
    /// every slot from the scrapers.
    per_source: usize,
}

const LIMITS: Limits = Limits {
    read_timeout: Duration::from_secs(5),
    write_timeout: Duration::from_secs(10),
    connections: 64,
    per_source: 8,
};

/// Connections in progress, in total and by source address.
struct Slots {
    limits: Limits,
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One connection's place in `Slots`, given back on drop.
struct Slot {
    slots: Arc<Slots>,
    source: IpAddr,
}

impl Slots {
    fn take(slots: &Arc<Slots>, source: IpAddr) -> Result<Slot, &'static str> {
        let mut guard = slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_source) = &mut *guard;
        if *total >= slots.limits.connections {
            return Err("server_full");
        }
        let n = by_source.entry(source).or_insert(0);
        if *n >= slots.limits.per_source {
            return Err("source_full");
        }
        *n += 1;
        *total += 1;
        Ok(Slot {
            slots: slots.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_source) = &mut *guard;
        *total -= 1;
        if let Some(n) = by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

/// The source a connection counts against: its IPv4 address, or its IPv6
/// /64, which one host usually holds whole.
fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// Serves until the listener fails; each connection runs on its own task.
/// Connections over the limits (`LIMITS`) are closed at once, unanswered.
pub async fn serve(listener: TcpListener, endpoint: Arc<dyn Endpoint>) {
    serve_with(listener, endpoint, LIMITS).await
}

async fn serve_with(listener: TcpListener, endpoint: Arc<dyn Endpoint>, limits: Limits) {
    let slots = Arc::new(Slots {
        limits,
        inner: Mutex::default(),
    });
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match Slots::take(&slots, source(peer.ip())) {
                Ok(slot) => {
                    let endpoint = endpoint.clone();
                    tokio::spawn(async move {
                        let _ = handle(stream, endpoint.as_ref(), limits).await;
                        drop(slot);
                    });
                }
                Err(cause) => {
                    drop(stream);
                    endpoint.refused(cause);
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads the request head: `Some` if it ended (blank line) within
/// `MAX_REQUEST` bytes and the read timeout, `None` otherwise.
async fn read_head(stream: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            // The size bound is on the head itself, wherever a read ends.
            match head_end(&buf) {
                Some(end) if end <= MAX_REQUEST => return Some(()),
                Some(_) => return None,
                None if buf.len() > MAX_REQUEST => return None,
                None => {}
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Some(())) => Some(buf),
        _ => None,
    }
}

/// Where the head ends: after its blank line (CRLF CRLF, or bare LF LF).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    crlf.into_iter().chain(lf).min()
}

async fn handle(
    mut stream: TcpStream,
    endpoint: &dyn Endpoint,
    limits: Limits,
) -> std::io::Result<()> {
    let head = read_head(&mut stream, limits.read_timeout).await;
    let (status, content_type, body, head_only) = match head {
        Some(head) => route(&head, endpoint),
        None => (400, "text/plain", "bad request\n".to_string(), false),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        if !head_only {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    };
    tokio::time::timeout(limits.write_timeout, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

fn route(request: &[u8], endpoint: &dyn Endpoint) -> (u16, &'static str, String, bool) {
    let text = String::from_utf8_lossy(request);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (400, "text/plain", "bad request\n".into(), false);
    };
    // HTTP/1.0 and 1.1; a later 1.x minor version is read as 1.1 (RFC 9112).
    let minor = version.strip_prefix("HTTP/1.").unwrap_or("");
    if minor.len() != 1 || !minor.bytes().all(|b| b.is_ascii_digit()) {
        return (400, "text/plain", "bad request\n".into(), false);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (405, "text/plain", "method not allowed\n".into(), false);
    }
    // The absolute form (`http://host:port/metrics`) names the same path.
    let target = match target.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
            let path = &rest[rest.find(['/', '?']).unwrap_or(rest.len())..];
            if path.starts_with('/') { path } else { "/" }
        }
        _ => target,
    };
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            endpoint.metrics(),
            head_only,
        ),
        "/healthz" => (200, "text/plain", "ok\n".into(), head_only),
        "/readyz" if endpoint.ready() => (200, "text/plain", "ready\n".into(), head_only),
        "/readyz" => (503, "text/plain", "not ready\n".into(), head_only),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
            head_only,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    struct Fake(AtomicBool);
    impl Endpoint for Fake {
        fn metrics(&self) -> String {
            "tierguard_x 1\n".into()
        }
        fn ready(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    async fn request(addr: std::net::SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn routes_and_rejects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(Fake(AtomicBool::new(false)));
        tokio::spawn(serve(listener, fake.clone()));

        let r = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.ends_with("tierguard_x 1\n"));
        assert!(
            request(addr, b"GET /readyz HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 503")
        );
        fake.0.store(true, Ordering::SeqCst);
        assert!(
            request(addr, b"GET /readyz HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            request(addr, b"GET /healthz HTTP/1.0\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 200")
        );
        let head = request(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200") && !head.contains("tierguard_x"));
        assert!(
            request(addr, b"GET /nope HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        let post = request(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"));
        assert!(
            request(addr, b"garbage\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 400")
        );
        let huge = vec![b'a'; MAX_REQUEST + 10];
        assert!(request(addr, &huge).await.starts_with("HTTP/1.1 400"));
    }

    #[tokio::test]
    async fn malformed_and_odd_requests_get_a_defined_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(Fake(AtomicBool::new(true)))));
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST));
        let many_headers = format!("GET /metrics HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(2000));
        for (raw, status) in [
            // Over 8 KiB, whether or not the head ends in the same read.
            (long_line.as_bytes(), 400),
            (many_headers.as_bytes(), 400),
            (b"GET /metrics\r\n\r\n", 400),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
            (b"GET /metrics HTTP/1.1x\r\n\r\n", 400),
            (b"GET /metrics HTTP/1.\r\n\r\n", 400),
            (b"GET /metrics HTTP/1.9\r\n\r\n", 200),
            (b"\x00\xff\xfe garbage \x01\r\n\r\n", 400),
            (b"get /metrics HTTP/1.1\r\n\r\n", 405),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", 405),
            (b"GET http://node:9642/metrics?x=1 HTTP/1.1\r\n\r\n", 200),
            (b"GET http://node:9642?/metrics HTTP/1.1\r\n\r\n", 404),
            (b"GET /metrics?a=/healthz HTTP/1.1\r\n\r\n", 200),
            (b"GET /x/../metrics HTTP/1.1\r\n\r\n", 404),
            (b"GET /%6detrics HTTP/1.1\r\n\r\n", 404),
            (b"GET /healthz HTTP/1.1\n\n", 200),
        ] {
            let r = request(addr, raw).await;
            assert!(
                r.starts_with(&format!("HTTP/1.1 {status} ")),
                "{:?}: {r}",
                String::from_utf8_lossy(&raw[..raw.len().min(60)])
            );
        }
    }

    /// Records the connections the server refused.
    struct Counting(Mutex<Vec<&'static str>>, String);
    impl Endpoint for Counting {
        fn metrics(&self) -> String {
            self.1.clone()
        }
        fn ready(&self) -> bool {
            true
        }
        fn refused(&self, cause: &'static str) {
            self.0.lock().unwrap().push(cause);
        }
    }

    /// A connection from `source` (any 127/8 address is local).
    async fn connect_from(source: [u8; 4], addr: std::net::SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind((std::net::Ipv4Addr::from(source), 0).into())
            .unwrap();
        s.connect(addr).await.unwrap()
    }

    /// What a client gets for `raw`: the response, or "" if the server
    /// closed the connection unanswered.
    async fn exchange(mut s: TcpStream, raw: &[u8]) -> String {
        let _ = s.write_all(raw).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Guards a test against hanging forever; says nothing about speed.
    async fn guard<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("the server answers")
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }

    #[tokio::test]
    async fn idle_clients_cannot_take_every_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ep = Arc::new(Counting(Mutex::default(), "m 1\n".into()));
        // Timeouts far beyond the test: the idle clients hold their slots.
        let limits = Limits {
            read_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(600),
            connections: 4,
            per_source: 2,
        };
        tokio::spawn(serve_with(listener, ep.clone(), limits));
        let get = b"GET /healthz HTTP/1.1\r\n\r\n";

        // Two silent connections from one address: its third is closed,
        // another address is still served.
        let mut idle = vec![
            connect_from([127, 0, 0, 1], addr).await,
            connect_from([127, 0, 0, 1], addr).await,
        ];
        let r = guard(exchange(connect_from([127, 0, 0, 1], addr).await, get)).await;
        assert_eq!(r, "", "over the per-source limit: closed unanswered");
        let r = guard(exchange(connect_from([127, 0, 0, 2], addr).await, get)).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");

        // Four held in all: everyone else is closed unanswered.
        idle.push(connect_from([127, 0, 0, 2], addr).await);
        idle.push(connect_from([127, 0, 0, 3], addr).await);
        let r = guard(exchange(connect_from([127, 0, 0, 4], addr).await, get)).await;
        assert_eq!(r, "", "over the total limit: closed unanswered");
        assert_eq!(*ep.0.lock().unwrap(), ["source_full", "server_full"]);

        // A client that leaves gives its slot back.
        let mut gone = idle.pop().unwrap();
        gone.shutdown().await.unwrap();
        assert!(guard(exchange(gone, b"")).await.starts_with("HTTP/1.1 400"));
        guard(async {
            loop {
                let r = exchange(connect_from([127, 0, 0, 4], addr).await, get).await;
                if r.starts_with("HTTP/1.1 200") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn stalled_clients_are_dropped_after_the_timeouts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A body far larger than the socket buffers, so that writing it
        // waits on the client.
        let body = "x".repeat(64 << 20);
        let ep = Arc::new(Counting(Mutex::default(), body));
        let limits = Limits {
            read_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_millis(500),
            connections: 1,
            per_source: 1,
        };
        tokio::spawn(serve_with(listener, ep.clone(), limits));

        // A client dripping its request a byte at a time gets a 400 once
        // the read timeout passes, not one more timeout per byte.
        let (mut rd, mut wr) = connect_from([127, 0, 0, 1], addr).await.into_split();
        let drip = tokio::spawn(async move {
            for b in b"GET /healthz HTTP/1.1\r\n".iter().cycle() {
                if wr.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut out = Vec::new();
        guard(rd.read_to_end(&mut out)).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 400"));
        drip.abort();

        // A client that asks for /metrics and never reads holds the only
        // slot until the write timeout; then the next client is served.
        let mut stalled = connect_from([127, 0, 0, 1], addr).await;
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        guard(async {
            loop {
                let s = connect_from([127, 0, 0, 1], addr).await;
                let r = exchange(s, b"GET /healthz HTTP/1.1\r\n\r\n").await;
                if r.starts_with("HTTP/1.1 200") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        drop(stalled);
    }
}
