//! `tierguard block`, `unblock` and `blocks`: one request to the agent's
//! admin socket, its answer printed. Exit 0 on success, 1 when the request
//! is refused (by the agent, or by the checks here when no agent answers;
//! the reason is printed), 2 when the agent could not be asked.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::protocol::{BlockInfo, Request, Response};
use crate::cli::{BlockArgs, BlocksArgs, UnblockArgs};

/// Longest the client waits for the agent's answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request and reads the response.
pub fn request(socket: &Path, req: &Request) -> Result<Response, String> {
    let shown = socket.display();
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied connecting to {shown}: the admin socket is for root only"
        ),
        _ => format!(
            "cannot reach the agent at {shown}: {e} (is `tierguard run` running, and is --socket its [agent] admin_socket?)"
        ),
    })?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("cannot send the request to {shown}: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from {shown}: {e}"))?;
    if answer.trim().is_empty() {
        return Err(format!(
            "the agent at {shown} closed the connection without an answer"
        ));
    }
    serde_json::from_str(answer.trim()).map_err(|e| format!("unreadable answer from {shown}: {e}"))
}

fn finish(r: Result<Response, String>, print: impl FnOnce(&Response)) -> ExitCode {
    match r {
        Ok(resp) if resp.ok => {
            print(&resp);
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            eprintln!("error: {}", resp.error.as_deref().unwrap_or("refused"));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_message(r: &Response) {
    if let Some(m) = &r.message {
        println!("{m}");
    }
}

/// When the agent could not be asked (or its answer could not be read), the
/// arguments are checked here as the agent would have: a typo then gets its
/// own error (exit 1, as the agent's refusal) rather than only "cannot reach
/// the agent". A reachable agent checks them itself, so that a refused
/// attempt is in its audit log.
fn unreachable_or_invalid(
    r: Result<Response, String>,
    checks: impl FnOnce() -> Result<(), String>,
) -> Result<Response, String> {
    match r {
        Err(unreachable) => match checks() {
            Ok(()) => Err(unreachable),
            Err(invalid) => Ok(Response {
                ok: false,
                error: Some(invalid),
                ..Response::default()
            }),
        },
        answered => answered,
    }
}

pub fn block(a: &BlockArgs) -> ExitCode {
    let req = Request::Block {
        target: a.target.clone(),
        duration: a.duration.clone(),
        reason: a.reason.clone(),
    };
    let r = unreachable_or_invalid(request(&a.admin.socket, &req), || {
        super::parse_target(&a.target)?;
        super::parse_block_duration(&a.duration)?;
        super::check_reason(&a.reason)
    });
    finish(r, print_message)
}

pub fn unblock(a: &UnblockArgs) -> ExitCode {
    let req = Request::Unblock {
        target: a.target.clone(),
    };
    let r = unreachable_or_invalid(request(&a.admin.socket, &req), || {
        super::parse_prefix(&a.target).map(drop)
    });
    finish(r, print_message)
}

pub fn blocks(a: &BlocksArgs) -> ExitCode {
    finish(request(&a.admin.socket, &Request::Blocks {}), |r| {
        let blocks = r.blocks.clone().unwrap_or_default();
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&blocks).unwrap_or_else(|_| "[]".into())
            );
        } else {
            print!("{}", table(&blocks));
        }
    })
}

/// What is blocked, why, by whom and until when, one block per line.
pub fn table(blocks: &[BlockInfo]) -> String {
    if blocks.is_empty() {
        return "nothing is blocked\n".into();
    }
    let by = |b: &BlockInfo| match (&b.limit, b.uid) {
        (Some(l), _) => format!("limit {l}"),
        (None, Some(uid)) => format!("admin (uid {uid})"),
        (None, None) => "admin".into(),
    };
    let width = blocks
        .iter()
        .map(|b| b.target.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let by_width = blocks.iter().map(|b| by(b).len()).max().unwrap_or(0).max(2);
    let mut s = format!(
        "{:<width$}  {:<by_width$}  {:<30}  {:>9}  REASON\n",
        "PREFIX", "BY", "UNTIL", "REMAINING"
    );
    for b in blocks {
        s.push_str(&format!(
            "{:<width$}  {:<by_width$}  {:<30}  {:>8}s  {}\n",
            b.target,
            by(b),
            b.until,
            b.remaining_seconds,
            b.reason.as_deref().unwrap_or("-")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_what_why_by_whom_and_until_when() {
        let t = table(&[
            BlockInfo {
                target: "192.0.2.7/32".into(),
                origin: "admin".into(),
                limit: None,
                reason: Some("port scan".into()),
                uid: Some(0),
                started: "2026-11-24T10:00:00.000000000Z".into(),
                until: "2026-11-24T10:10:00.000000000Z".into(),
                remaining_seconds: 540,
            },
            BlockInfo {
                target: "198.51.100.0/24".into(),
                origin: "limit".into(),
                limit: Some("syn-flood".into()),
                reason: None,
                uid: None,
                started: "2026-11-24T10:00:00.000000000Z".into(),
                until: "2026-11-24T10:01:00.000000000Z".into(),
                remaining_seconds: 12,
            },
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("PREFIX"), "{t}");
        assert!(lines[1].contains("192.0.2.7/32") && lines[1].contains("admin (uid 0)"));
        assert!(lines[1].contains("540s") && lines[1].ends_with("port scan"));
        assert!(lines[2].contains("limit syn-flood") && lines[2].ends_with(" -"));
        assert_eq!(table(&[]), "nothing is blocked\n");
    }
}
