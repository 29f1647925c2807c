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

/// A client has this long to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

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
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, admin.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, admin: Arc<Admin>) {
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
    let request = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Err("no request within 5 s".to_string()),
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
    let handler = admin.clone();
    let response = tokio::task::spawn_blocking(move || handler.handle(peer, request))
        .await
        .unwrap_or_else(|e| Response::error(format!("internal error: {e}")));
    let mut out = serde_json::to_string(&response).unwrap_or_else(|_| {
        r#"{"ok":false,"error":"internal error: cannot encode the response"}"#.to_string()
    });
    out.push('\n');
    if let Err(e) = w.write_all(out.as_bytes()).await {
        tracing::debug!(error = %e, "admin socket: the client left before the response");
    }
}
