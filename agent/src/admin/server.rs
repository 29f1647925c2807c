//! The admin socket: a Unix stream socket, mode 0600 in a directory the
//! agent makes 0700, served to root alone (the peer's uid is checked with
//! SO_PEERCRED as well). One JSON request per line, one JSON response.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::protocol::{MAX_REQUEST_BYTES, Request, Response};
use super::{Admin, Peer};

/// How long a client has to send its request, and to take the response (a
/// `blocks` listing can be megabytes): one that stops reading is dropped
/// rather than holding its connection and task for as long as it likes.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    read: Duration,
    write: Duration,
}

const TIMEOUTS: Timeouts = Timeouts {
    read: Duration::from_secs(5),
    write: Duration::from_secs(30),
};

/// Answers one request (`Admin::handle`; a stand-in in tests).
type Handler = dyn Fn(Peer, Result<Request, String>) -> Response + Send + Sync;

/// The bound socket; its file is removed when this is dropped.
pub struct Socket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl Socket {
    /// Binds `path`: creates its directory (mode 0700) if missing, replaces a
    /// stale socket file, refuses to take over one another process serves,
    /// and gives the socket mode 0600 before it appears under its name.
    pub fn bind(path: &Path) -> io::Result<Socket> {
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process serves {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        // Bound under a temporary name, restricted, then renamed: the socket
        // is never reachable with the process umask's mode.
        let tmp = dir.join(format!(
            ".{}.{}",
            path.file_name()
                .map_or("admin".into(), |n| n.to_string_lossy()),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        let restrict = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = restrict {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        listener.set_nonblocking(true)?;
        Ok(Socket {
            listener: Some(UnixListener::from_std(listener)?),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, for `serve` (once).
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves requests until the runtime stops.
pub async fn serve(listener: UnixListener, admin: Arc<Admin>) {
    let handler: Arc<Handler> = Arc::new(move |peer, request| admin.handle(peer, request));
    serve_with(listener, handler, TIMEOUTS).await
}

async fn serve_with(listener: UnixListener, handler: Arc<Handler>, timeouts: Timeouts) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, handler.clone(), timeouts));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, handler: Arc<Handler>, timeouts: Timeouts) {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: cannot read the peer's credentials; connection closed");
            return;
        }
    };
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = String::new();
    let request = match tokio::time::timeout(timeouts.read, reader.read_line(&mut line)).await {
        Err(_) => Err(format!("no request within {} s", timeouts.read.as_secs())),
        // Connected and left without a byte: a liveness probe (a starting
        // agent checks whether this socket is in use), not an admin action,
        // so nothing to audit or answer.
        Ok(Ok(0)) => {
            tracing::debug!(
                pid = peer.pid,
                "admin socket: a connection closed without a request"
            );
            return;
        }
        Ok(Err(e)) => Err(format!("cannot read the request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => Err(format!(
            "the request is longer than {MAX_REQUEST_BYTES} bytes"
        )),
        Ok(Ok(_)) => serde_json::from_str::<Request>(line.trim()).map_err(|e| e.to_string()),
    };
    let response = tokio::task::spawn_blocking(move || handler(peer, request))
        .await
        .unwrap_or_else(|e| Response::error(format!("internal error: {e}")));
    let mut out = serde_json::to_string(&response).unwrap_or_else(|_| {
        r#"{"ok":false,"error":"internal error: cannot encode the response"}"#.to_string()
    });
    out.push('\n');
    match tokio::time::timeout(timeouts.write, w.write_all(out.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "admin socket: the client left before the response");
        }
        Err(_) => tracing::warn!(
            pid = peer.pid,
            "admin socket: the client did not read its response in time; connection closed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket served by `handler` in a fresh directory.
    fn start(name: &str, handler: Arc<Handler>, timeouts: Timeouts) -> Socket {
        let dir = std::env::temp_dir().join(format!("tg-admin-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut socket = Socket::bind(&dir.join("admin.sock")).unwrap();
        let listener = socket.take_listener().unwrap();
        tokio::spawn(serve_with(listener, handler, timeouts));
        socket
    }

    /// Removes the socket and its directory.
    fn stop(socket: Socket) {
        let dir = socket.path().parent().unwrap().to_path_buf();
        drop(socket);
        let _ = std::fs::remove_dir(dir);
    }

    /// Sends `raw`, then reads the response line (empty if none came).
    async fn exchange(path: &Path, raw: &[u8]) -> String {
        let s = UnixStream::connect(path).await.unwrap();
        let (r, mut w) = s.into_split();
        let _ = w.write_all(raw).await;
        let mut line = String::new();
        let _ = BufReader::new(r).read_line(&mut line).await;
        line
    }

    /// Guards a test against hanging forever; says nothing about speed.
    async fn guard<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("the server answers")
    }

    fn echo() -> Arc<Handler> {
        Arc::new(|_, request: Result<Request, String>| match request {
            Ok(r) => Response::done(r.op()),
            Err(e) => Response::error(e),
        })
    }

    #[tokio::test]
    async fn bad_requests_get_an_error_line() {
        let timeouts = Timeouts {
            read: Duration::from_secs(1),
            write: Duration::from_secs(600),
        };
        let socket = start("bad", echo(), timeouts);
        let path = socket.path();
        let big = format!("{{\"op\":\"blocks\",\"x\":\"{}\"}}\n", "a".repeat(10_000));
        let deep = format!("{}{}\n", "[".repeat(5000), "]".repeat(5000));
        for (raw, want) in [
            (&b"{\"op\":\"blocks\"}\n"[..], r#"{"ok":true,"message":"blocks"}"#),
            (b"{\"op\":\"blocks\"}", r#""message":"blocks""#),
            (b"hello\n", "expected value"),
            (b"\x00\x01\xff\n", "invalid utf-8"),
            (b"{\"op\":\"blo", "EOF while parsing"),
            (b"{\"op\":\"reboot\"}\n", "unknown variant `reboot`"),
            (big.as_bytes(), "longer than 4096 bytes"),
            (deep.as_bytes(), "longer than 4096 bytes"),
            (b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n", "invalid type"),
        ] {
            // Sent in full and the writing side closed, as a client would.
            let s = UnixStream::connect(path).await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(raw).await.unwrap();
            w.shutdown().await.unwrap();
            let mut line = String::new();
            let _ = guard(BufReader::new(r).read_line(&mut line)).await;
            assert!(
                line.contains(want) && line.ends_with('\n'),
                "{:?}: {line}",
                String::from_utf8_lossy(&raw[..raw.len().min(40)])
            );
        }
        // A client that never sends gets an answer once the read timeout passes.
        let line = guard(exchange(path, b"")).await;
        assert!(line.contains("no request within 1 s"), "{line}");
        stop(socket);
    }

    #[tokio::test]
    async fn a_client_that_stalls_does_not_hold_others_or_its_connection() {
        // A response far larger than the socket's buffers.
        let big = "x".repeat(32 << 20);
        let handler: Arc<Handler> =
            Arc::new(move |_, request: Result<Request, String>| match request {
                Ok(Request::Blocks {}) => Response::done(big.clone()),
                Ok(r) => Response::done(r.op()),
                Err(e) => Response::error(e),
            });
        let timeouts = Timeouts {
            read: Duration::from_secs(600),
            write: Duration::from_millis(500),
        };
        let socket = start("stall", handler, timeouts);
        let path = socket.path();

        // One client connected and silent, another asking for a listing it
        // never reads: a third is answered meanwhile.
        let _silent = UnixStream::connect(path).await.unwrap();
        let mut stalled = UnixStream::connect(path).await.unwrap();
        stalled.write_all(b"{\"op\":\"blocks\"}\n").await.unwrap();
        let line = guard(exchange(
            path,
            b"{\"op\":\"unblock\",\"target\":\"192.0.2.1\"}\n",
        ))
        .await;
        assert!(line.contains(r#""message":"unblock""#), "{line}");

        // The stalled client's connection is closed after the write timeout:
        // read slowly, the response ends early instead of coming whole.
        let got = guard(async {
            let (mut got, mut buf) = (0, [0u8; 4096]);
            while let Ok(n @ 1..) = stalled.read(&mut buf).await {
                got += n;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            got
        })
        .await;
        assert!(got < 32 << 20, "cut short: {got} bytes");
        stop(socket);
    }
}
