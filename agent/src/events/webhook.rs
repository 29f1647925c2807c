//! The webhook sink: event lines POSTed in batches to an HTTP endpoint.
//!
//! Lines reach it through their own bounded queue, so a slow or dead
//! endpoint never holds up the consumer or the stdout/file writer: when the
//! queue is full, new lines are shed and counted
//! (`tierguard_events_dropped_total{stage="webhook_queue_full"}`).
//!
//! A batch is a JSON array of event objects, sent when it holds
//! `batch_max` events or `flush_ms` after its first event arrived. Each POST
//! uses a fresh connection (`Connection: close`) and a minimal HTTP/1.1
//! client: only the status line of the answer is read; 2xx means delivered.
//! Anything else is retried with exponential backoff and jitter while the
//! batch is held; after `max_attempts` the batch is given up and its events
//! counted under `stage="webhook_failed"`. Plain http only: TLS belongs to a
//! local shipper or sidecar. The token is never logged.

use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{Receiver, Sender, error::TrySendError};
use tokio::time::Instant;

use crate::config::{Token, WebhookConfig};

/// First retry delay; it doubles per attempt up to `BACKOFF_MAX`.
pub const BACKOFF_START: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Bounds of one POST: connecting, and the whole exchange.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest status line read from the endpoint.
const MAX_STATUS_LINE: usize = 1024;

/// Drop stages this sink counts under.
pub const STAGE_QUEUE_FULL: &str = "webhook_queue_full";
pub const STAGE_FAILED: &str = "webhook_failed";

/// The consumer's end of the webhook queue: never blocks.
#[derive(Clone)]
pub struct WebhookSender {
    tx: Sender<String>,
    dropped: IntCounterVec,
}

impl WebhookSender {
    /// Queues a line; if the queue is full, sheds it and counts it.
    pub fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.with_label_values(&[STAGE_QUEUE_FULL]).inc(),
            Err(TrySendError::Closed(_)) => self.dropped.with_label_values(&[STAGE_FAILED]).inc(),
        }
    }
}

/// Starts the webhook task on the current tokio runtime.
/// `dropped` counts lines lost, by stage; `delivered` counts lines delivered.
pub fn spawn(cfg: WebhookConfig, dropped: IntCounterVec, delivered: IntCounter) -> WebhookSender {
    let (tx, rx) = tokio::sync::mpsc::channel(cfg.queue.max(1));
    dropped.with_label_values(&[STAGE_QUEUE_FULL]);
    dropped.with_label_values(&[STAGE_FAILED]);
    tokio::spawn(run(cfg, rx, dropped.clone(), delivered));
    WebhookSender { tx, dropped }
}

/// A cheap jitter source: xorshift seeded from the clock and the pid.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((t ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The delay after failed attempt number `failed` (1 for the first failure):
/// `BACKOFF_START * 2^(failed-1)` capped at `BACKOFF_MAX`, minus up to a
/// quarter of it picked by `random`. Always in `[base * 3/4, base]`.
pub fn backoff(failed: u32, random: u64) -> Duration {
    let shift = failed.saturating_sub(1).min(20);
    let base = (BACKOFF_START.as_millis() as u64)
        .saturating_mul(1 << shift)
        .min(BACKOFF_MAX.as_millis() as u64);
    let spread = base / 4;
    Duration::from_millis(base - random % (spread + 1))
}

/// The JSON array body for a batch of event lines (each one JSON object).
pub fn body(lines: &[String]) -> Vec<u8> {
    let len = lines.iter().map(|l| l.len() + 1).sum::<usize>() + 2;
    let mut b = Vec::with_capacity(len);
    b.push(b'[');
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(l.as_bytes());
    }
    b.push(b']');
    b
}

/// The whole request: head and body.
pub fn request(cfg: &WebhookConfig, token: Option<&Token>, body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tierguard/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        cfg.path,
        cfg.host_header,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    if let Some(t) = token {
        head.push_str("Authorization: Bearer ");
        head.push_str(t.expose());
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    req
}

/// Parses `HTTP/1.x NNN ...` into the status code.
pub fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Why a POST did not deliver. Never holds the token.
#[derive(Debug)]
enum Failure {
    Connect(std::io::Error),
    Io(std::io::Error),
    Timeout,
    BadResponse,
    Status(u16),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Io(e) => write!(f, "connection failed: {e}"),
            Failure::Timeout => write!(f, "no answer within {} s", EXCHANGE_TIMEOUT.as_secs()),
            Failure::BadResponse => write!(f, "the answer is not HTTP/1.x"),
            Failure::Status(s) => write!(f, "answered HTTP {s}"),
        }
    }
}

async fn post(cfg: &WebhookConfig, req: &[u8]) -> Result<(), Failure> {
    let connect = TcpStream::connect((cfg.host.as_str(), cfg.port));
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failure::Connect(e)),
        Err(_) => {
            return Err(Failure::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            )));
        }
    };
    let exchange = async {
        stream.write_all(req).await.map_err(Failure::Io)?;
        stream.flush().await.map_err(Failure::Io)?;
        let mut got = Vec::with_capacity(128);
        let mut buf = [0u8; 256];
        loop {
            let n = stream.read(&mut buf).await.map_err(Failure::Io)?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.contains(&b'\n') || got.len() >= MAX_STATUS_LINE {
                break;
            }
        }
        let end = got.iter().position(|&b| b == b'\n').unwrap_or(got.len());
        let line = String::from_utf8_lossy(&got[..end]);
        match parse_status(line.trim_end()) {
            Some(s) if (200..300).contains(&s) => Ok(()),
            Some(s) => Err(Failure::Status(s)),
            None => Err(Failure::BadResponse),
        }
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

async fn run(
    cfg: WebhookConfig,
    mut rx: Receiver<String>,
    dropped: IntCounterVec,
    delivered: IntCounter,
) {
    let flush = Duration::from_millis(cfg.flush_ms);
    let mut jitter = Jitter::new();
    let mut failing = false;
    let mut batch: Vec<String> = Vec::with_capacity(cfg.batch_max);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = Instant::now() + flush;
        while batch.len() < cfg.batch_max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(l)) => batch.push(l),
                Ok(None) | Err(_) => break,
            }
        }
        let req = request(&cfg, cfg.token.as_ref(), &body(&batch));
        let n = batch.len() as u64;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match post(&cfg, &req).await {
                Ok(()) => {
                    delivered.inc_by(n);
                    if failing {
                        failing = false;
                        tracing::info!(url = cfg.url, "event webhook delivers again");
                    }
                    break;
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        tracing::error!(
                            url = cfg.url,
                            error = %e,
                            "event webhook failing; retrying with backoff, counting what is lost in tierguard_events_dropped_total{{stage=\"webhook_failed\"}} and {{stage=\"webhook_queue_full\"}} until it recovers"
                        );
                    }
                    if attempt >= cfg.max_attempts {
                        dropped.with_label_values(&[STAGE_FAILED]).inc_by(n);
                        break;
                    }
                    tokio::time::sleep(backoff(attempt, jitter.next())).await;
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(token: Option<&str>) -> WebhookConfig {
        let (url, host, port, host_header, path) =
            crate::config::parse_webhook_url("http://siem.example:8080/ingest?x=1").unwrap();
        WebhookConfig {
            url,
            host,
            port,
            host_header,
            path,
            token: token.map(|t| Token::new(t.into())),
            batch_max: 100,
            flush_ms: 1000,
            queue: 10,
            max_attempts: 3,
        }
    }

    #[test]
    fn request_has_its_headers_and_body() {
        let c = cfg(Some("s3cr3t-t0ken"));
        let lines = vec!["{\"a\":1}".to_string(), "{\"b\":2}".to_string()];
        let b = body(&lines);
        assert_eq!(b, b"[{\"a\":1},{\"b\":2}]");
        let req = String::from_utf8(request(&c, c.token.as_ref(), &b)).unwrap();
        let (head, rest) = req.split_once("\r\n\r\n").unwrap();
        assert_eq!(rest, "[{\"a\":1},{\"b\":2}]");
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some("POST /ingest?x=1 HTTP/1.1"));
        let headers: Vec<&str> = lines.collect();
        assert!(headers.contains(&"Host: siem.example:8080"), "{headers:?}");
        assert!(headers.contains(&"Content-Type: application/json"));
        assert!(headers.contains(&format!("Content-Length: {}", b.len()).as_str()));
        assert!(headers.contains(&"Authorization: Bearer s3cr3t-t0ken"));
        assert!(headers.contains(&"Connection: close"));
        // Without a token, no Authorization header.
        let c = cfg(None);
        let req = String::from_utf8(request(&c, None, b"[]")).unwrap();
        assert!(!req.contains("Authorization"), "{req}");
        assert!(req.contains("Content-Length: 2\r\n"), "{req}");
        assert!(body(&[]).eq(b"[]"));
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let c = cfg(Some("s3cr3t-t0ken"));
        let dbg = format!("{c:?} {:?}", c.token);
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("redacted"), "{dbg}");
        let f = Failure::Status(401);
        assert!(!format!("{f} {f:?}").contains("s3cr3t"));
    }

    #[test]
    fn backoff_doubles_within_bounds_and_caps() {
        let mut j = Jitter::new();
        let mut prev_max = Duration::ZERO;
        for failed in 1..40u32 {
            let base = (200u64 << (failed - 1).min(20)).min(30_000);
            for _ in 0..200 {
                let d = backoff(failed, j.next());
                let ms = d.as_millis() as u64;
                assert!(
                    ms <= base && ms >= base - base / 4,
                    "attempt {failed}: {ms} ms vs {base}"
                );
                assert!(d <= BACKOFF_MAX);
            }
            let max = backoff(failed, 0);
            assert!(max >= prev_max);
            prev_max = max;
        }
        assert_eq!(backoff(1, 0), Duration::from_millis(200));
        assert_eq!(backoff(2, 0), Duration::from_millis(400));
        assert_eq!(backoff(9, 0), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX, 0), BACKOFF_MAX);
        assert!(backoff(1, 50) >= Duration::from_millis(150));
        // Jitter varies.
        let a: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff(5, j.next())).collect();
        assert!(a.len() > 1);
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 204"), Some(204));
        assert_eq!(parse_status("HTTP/1.1 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status("HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status(""), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn delivers_to_a_server_and_sheds_when_full() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|h| h.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= len {
                        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .unwrap();
                        return text;
                    }
                }
            }
        });
        let mut c = cfg(Some("tok"));
        c.host = "127.0.0.1".into();
        c.port = port;
        c.flush_ms = 50;
        c.queue = 2;
        let dropped = IntCounterVec::new(prometheus::Opts::new("d", "d"), &["stage"]).unwrap();
        let delivered = IntCounter::new("v", "v").unwrap();
        let tx = spawn(c, dropped.clone(), delivered.clone());
        // The task has not run yet (current-thread runtime): the queue holds 2.
        for i in 0..5 {
            tx.send(format!("{{\"n\":{i}}}"));
        }
        assert_eq!(dropped.with_label_values(&[STAGE_QUEUE_FULL]).get(), 3);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while delivered.get() < 2 {
            assert!(std::time::Instant::now() < deadline, "not delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = server.join().unwrap();
        assert!(text.ends_with("\r\n\r\n[{\"n\":0},{\"n\":1}]"), "{text}");
        assert!(text.contains("Authorization: Bearer tok\r\n"), "{text}");
        assert_eq!(dropped.with_label_values(&[STAGE_FAILED]).get(), 0);
    }
}
