//! A deliberately small HTTP/1.1 server for /metrics, /healthz and /readyz:
//! GET and HEAD only, one request per connection, bounded in size and time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server asks of the agent.
pub trait Endpoint: Send + Sync + 'static {
    /// The metrics text.
    fn metrics(&self) -> String;
    /// Whether the agent enforces its policy (attached, policy applied).
    fn ready(&self) -> bool;
}

const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until the listener fails; each connection runs on its own task.
pub async fn serve(listener: TcpListener, endpoint: Arc<dyn Endpoint>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    let _ = handle(stream, endpoint.as_ref()).await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, endpoint: &dyn Endpoint) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if buf.len() > MAX_REQUEST {
                return Ok(false);
            }
        }
    })
    .await;
    let complete = matches!(head, Ok(Ok(true)));
    let (status, content_type, body, head_only) = if !complete {
        (400, "text/plain", "bad request\n".to_string(), false)
    } else {
        route(&buf, endpoint)
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
    stream.write_all(response.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

fn route(request: &[u8], endpoint: &dyn Endpoint) -> (u16, &'static str, String, bool) {
    let text = String::from_utf8_lossy(request);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (400, "text/plain", "bad request\n".into(), false);
    };
    if !version.starts_with("HTTP/1.") {
        return (400, "text/plain", "bad request\n".into(), false);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (405, "text/plain", "method not allowed\n".into(), false);
    }
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
}
