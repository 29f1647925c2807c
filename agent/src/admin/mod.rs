//! Incident response: blocks made over the admin socket and by limits, the
//! sweeper that ends them, and their events and audit records.
//!
//! The socket (server.rs) serves root only; every block and unblock, and
//! every refused request, is appended to the audit log with the peer's
//! uid and pid, and announced on the event sink. docs/operator-guide.md
//! shows the commands (client.rs).

pub mod client;
pub mod protocol;
mod server;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData};
use ipnetwork::IpNetwork;
use serde_json::{Map as JsonMap, Value, json};
use tierguard_common::{
    event::EventConfig,
    limiter::{BLOCK_ADMIN, BLOCK_REASON_LEN, BlockValue},
    maps::names,
};

use crate::config::{duration_text_secs, format_duration, parse_prefix};
use crate::datapath::{Block, BlockTable, LimitReader, coarse_now_ns};
use crate::events::{Context, LineSender, blocks, record::rfc3339};
use crate::metrics::limits::LimitMetrics;
use protocol::{BlockInfo, Request, Response};

pub use server::{Socket, serve};

/// Longest block the admin socket accepts.
pub const MAX_ADMIN_BLOCK: Duration = Duration::from_secs(30 * 86_400);
/// How often expired blocks are removed (and their end reported), at most.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Blocks read per second of sweep interval: the sweep reads every entry (two
/// syscalls each, about 2.4 µs), so with many blocks it runs less often,
/// keeping it near 2 % of a CPU (docs/design/limits.md).
pub const SWEEP_BLOCKS_PER_SECOND: usize = 10_000;
/// How often the limits' slot tables are measured (a read per slot).
pub const TRACKED_INTERVAL: Duration = Duration::from_secs(10);
/// A key counts as tracked if it was seen within this window.
pub const TRACKED_WINDOW: Duration = Duration::from_secs(60);

/// Who is on the other end of an admin connection (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// Appends one record to the audit log (the agent's, if configured).
pub type AuditFn = Box<dyn Fn(JsonMap<String, Value>) + Send + Sync>;

/// The blocked table and what the agent last saw in it.
struct Book {
    table: BlockTable,
    /// Every entry seen at the last sweep or change, to report each end once.
    known: HashMap<IpNetwork, BlockValue>,
}

pub struct Admin {
    book: Mutex<Book>,
    /// Events on or off, as the kernel reads it (`TG_EVENT_CONFIG`).
    event_config: Mutex<Array<MapData, EventConfig>>,
    events: Option<LineSender>,
    ctx: Arc<RwLock<Context>>,
    audit: AuditFn,
    metrics: Arc<LimitMetrics>,
}

fn reason_bytes(text: &str) -> [u8; BLOCK_REASON_LEN] {
    let mut out = [0u8; BLOCK_REASON_LEN];
    let b = text.as_bytes();
    out[..b.len().min(BLOCK_REASON_LEN)].copy_from_slice(&b[..b.len().min(BLOCK_REASON_LEN)]);
    out
}

/// Checks an admin block's reason: printable, at most `BLOCK_REASON_LEN` bytes.
pub fn check_reason(r: &str) -> Result<(), String> {
    if r.trim().is_empty() {
        return Err(
            "a reason is required (--reason TEXT): it is kept with the block and in the audit log"
                .into(),
        );
    }
    if r.len() > BLOCK_REASON_LEN {
        return Err(format!(
            "the reason is {} bytes long; at most {BLOCK_REASON_LEN} are kept",
            r.len()
        ));
    }
    if r.chars().any(char::is_control) {
        return Err("the reason must be one line of printable text".into());
    }
    Ok(())
}

/// Parses an admin block duration (seconds, or a number with one unit: 90s,
/// 10m, 2h, 1d): 1 s to 30 days.
pub fn parse_block_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let secs = match t.parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => duration_text_secs(t),
    };
    let d = Duration::from_secs(secs.ok_or_else(|| {
        format!("'{t}' is not a duration: expected seconds or a number with one unit, like 90s, 10m, 2h, 1d")
    })?);
    if d < Duration::from_secs(1) {
        return Err(format!(
            "'{}' is too short: a block lasts at least 1s",
            text.trim()
        ));
    }
    if d > MAX_ADMIN_BLOCK {
        return Err(format!(
            "'{}' is too long: a block lasts at most 30d",
            text.trim()
        ));
    }
    Ok(d)
}

/// Parses a block target: an address or a CIDR (not /0).
pub fn parse_target(text: &str) -> Result<IpNetwork, String> {
    let net = parse_prefix(text)?;
    if net.prefix() == 0 {
        return Err(format!(
            "'{}' would block every source: block narrower prefixes, or use a deny list",
            text.trim()
        ));
    }
    Ok(net)
}

impl Admin {
    pub fn open(
        pin_dir: &Path,
        events: Option<LineSender>,
        ctx: Arc<RwLock<Context>>,
        audit: AuditFn,
        metrics: Arc<LimitMetrics>,
    ) -> crate::datapath::Result<Admin> {
        let table = BlockTable::open(pin_dir)?;
        let name = names::EVENT_CONFIG;
        let err = |source| crate::datapath::DatapathError::Map { map: name, source };
        let data = MapData::from_pin(pin_dir.join(name)).map_err(err)?;
        let event_config = Array::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)?;
        Ok(Admin {
            book: Mutex::new(Book {
                table,
                known: HashMap::new(),
            }),
            event_config: Mutex::new(event_config),
            events,
            ctx,
            audit,
            metrics,
        })
    }

    fn ctx(&self) -> Context {
        match self.ctx.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Writes a block event if events are on.
    fn event(&self, line: &blocks::BlockLine) {
        let Some(tx) = &self.events else { return };
        let on = self
            .event_config
            .lock()
            .ok()
            .and_then(|a| a.get(&0, 0).ok())
            .is_some_and(|c| c.enabled != 0);
        if on && let Ok(s) = serde_json::to_string(line) {
            tx.send(s);
        }
    }

    fn audit(&self, peer: Peer, op: &str, fields: Value, result: Result<&str, &str>) {
        let mut r = JsonMap::new();
        r.insert("kind".into(), "admin_action".into());
        r.insert("time".into(), rfc3339(wall_now()).into());
        r.insert("node".into(), self.ctx().node.into());
        r.insert("trigger".into(), "admin_socket".into());
        r.insert(
            "peer".into(),
            json!({ "uid": peer.uid, "gid": peer.gid, "pid": peer.pid }),
        );
        r.insert("action".into(), op.into());
        if let Value::Object(f) = fields {
            r.extend(f);
        }
        match result {
            Ok(msg) => {
                r.insert("result".into(), "applied".into());
                r.insert("message".into(), msg.into());
            }
            Err(e) => {
                r.insert("result".into(), "refused".into());
                r.insert("error".into(), e.into());
            }
        }
        (self.audit)(r);
    }

    /// Answers one request from `peer`. `request` is `Err` when the line was
    /// not a request. Everything but a successful listing is audited.
    pub fn handle(&self, peer: Peer, request: Result<Request, String>) -> Response {
        if peer.uid != 0 {
            let e = format!(
                "permission denied: the admin socket serves root (uid 0) only; this request came from uid {}",
                peer.uid
            );
            let op = request.as_ref().map_or("unknown", Request::op);
            self.audit(peer, op, json!({}), Err(&e));
            return Response::error(e);
        }
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                let e = format!("not a request: {e}");
                self.audit(peer, "unknown", json!({}), Err(&e));
                return Response::error(e);
            }
        };
        match request {
            Request::Blocks {} => match self.list() {
                Ok(blocks) => Response {
                    ok: true,
                    blocks: Some(blocks),
                    ..Response::default()
                },
                Err(e) => Response::error(e),
            },
            Request::Block {
                target,
                duration,
                reason,
            } => {
                let fields = json!({ "target": target, "for": duration, "reason": reason });
                let r = self.block(peer, &target, &duration, &reason);
                self.audit(peer, "block", fields, r.as_deref().map_err(String::as_str));
                match r {
                    Ok(m) => Response::done(m),
                    Err(e) => Response::error(e),
                }
            }
            Request::Unblock { target } => {
                let fields = json!({ "target": target });
                let r = self.unblock(&target);
                self.audit(
                    peer,
                    "unblock",
                    fields,
                    r.as_deref().map_err(String::as_str),
                );
                match r {
                    Ok(m) => Response::done(m),
                    Err(e) => Response::error(e),
                }
            }
        }
    }

    fn block(
        &self,
        peer: Peer,
        target: &str,
        duration: &str,
        reason: &str,
    ) -> Result<String, String> {
        let net = parse_target(target)?;
        let d = parse_block_duration(duration)?;
        check_reason(reason)?;
        let now = coarse_now_ns();
        let value = BlockValue {
            until_ns: now.saturating_add(d.as_nanos() as u64),
            created_ns: now,
            origin: BLOCK_ADMIN,
            len: net.prefix(),
            flags: 0,
            uid: peer.uid,
            reason: reason_bytes(reason),
        };
        let mut book = self
            .book
            .lock()
            .map_err(|_| "internal error: block table lock poisoned")?;
        let before = book.table.get(net).map_err(|e| e.to_string())?;
        book.table.insert(net, &value).map_err(|e| {
            format!("cannot block {net}: {e} (the blocked table holds at most 65,536 prefixes per family)")
        })?;
        book.known.insert(net, value);
        drop(book);
        let ctx = self.ctx();
        self.event(&blocks::line(net, &value, None, now, &ctx));
        let until = rfc3339(wall_at(value.until_ns));
        Ok(match before.filter(|b| b.active(now)) {
            Some(_) => format!(
                "{net} was already blocked; now blocked for {} (until {until})",
                format_duration(d)
            ),
            None => format!("blocked {net} for {} (until {until})", format_duration(d)),
        })
    }

    fn unblock(&self, target: &str) -> Result<String, String> {
        // Not parse_target: a /0 cannot be blocked, so it is simply not blocked.
        let net = parse_prefix(target)?;
        let now = coarse_now_ns();
        let mut book = self
            .book
            .lock()
            .map_err(|_| "internal error: block table lock poisoned")?;
        let live = book
            .table
            .get(net)
            .map_err(|e| e.to_string())?
            .filter(|v| v.active(now));
        let Some(value) = live else {
            let inside = match net.network() {
                a if net.prefix() == max_len(a) => book.table.covering(a, now).ok().flatten(),
                _ => None,
            };
            return Err(match inside {
                Some(b) => format!(
                    "{net} is not blocked itself; it is inside the block {}: unblock that",
                    b.net
                ),
                None => format!("{net} is not blocked"),
            });
        };
        book.table.remove(net).map_err(|e| e.to_string())?;
        book.known.remove(&net);
        drop(book);
        self.event(&blocks::line(
            net,
            &value,
            Some("unblocked"),
            now,
            &self.ctx(),
        ));
        Ok(format!("unblocked {net}"))
    }

    fn list(&self) -> Result<Vec<BlockInfo>, String> {
        let now = coarse_now_ns();
        let book = self
            .book
            .lock()
            .map_err(|_| "internal error: block table lock poisoned")?;
        let mut all = book.table.list().map_err(|e| e.to_string())?;
        drop(book);
        all.retain(|b| b.value.active(now));
        all.sort_by_key(|b| (b.net.is_ipv6(), b.net.network(), b.net.prefix()));
        let ctx = self.ctx();
        Ok(all.iter().map(|b| info(b, now, &ctx.limits)).collect())
    }

    /// Removes expired blocks, reports each block's end once, and returns
    /// how many are in force.
    pub fn sweep(&self) -> Result<usize, String> {
        let now = coarse_now_ns();
        let mut ended = Vec::new();
        let active = {
            let mut book = self.book.lock().map_err(|_| "block table lock poisoned")?;
            let entries = book.table.list().map_err(|e| e.to_string())?;
            let mut seen = HashMap::with_capacity(entries.len());
            let mut removed = 0;
            for b in &entries {
                // Replaced since the last sweep (a limit blocked it again
                // after it expired): the earlier block ended.
                if let Some(old) = book.known.get(&b.net)
                    && old.created_ns != b.value.created_ns
                    && !old.active(now)
                {
                    ended.push((b.net, *old));
                }
                if b.value.active(now) {
                    seen.insert(b.net, b.value);
                } else if book.table.remove(b.net).is_ok() {
                    removed += 1;
                    ended.push((b.net, b.value));
                }
            }
            book.known = seen;
            book.table
                .settle_presence(removed == entries.len())
                .map_err(|e| e.to_string())?;
            book.known.len()
        };
        let ctx = self.ctx();
        for (net, v) in ended {
            self.event(&blocks::line(net, &v, Some("expired"), now, &ctx));
        }
        Ok(active)
    }
}

fn max_len(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

/// Wall-clock ns now.
fn wall_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Wall-clock ns of a coarse monotonic time.
fn wall_at(mono_ns: u64) -> u64 {
    (i128::from(mono_ns) + crate::events::record::boot_offset_ns()).clamp(0, i128::from(u64::MAX))
        as u64
}

/// A block as `blocks` and `explain` show it; `limits` names limit ids.
pub fn info(b: &Block, now: u64, limits: &[String]) -> BlockInfo {
    let v = &b.value;
    let admin = v.origin == BLOCK_ADMIN;
    BlockInfo {
        target: b.net.to_string(),
        origin: if admin { "admin" } else { "limit" }.into(),
        limit: (!admin).then(|| {
            limits
                .get(usize::from(v.origin))
                .cloned()
                .unwrap_or_else(|| format!("limit{}", v.origin))
        }),
        reason: admin.then(|| blocks::reason_text(v)),
        uid: admin.then_some(v.uid),
        started: rfc3339(wall_at(v.created_ns)),
        until: rfc3339(wall_at(v.until_ns)),
        remaining_seconds: v.until_ns.saturating_sub(now).div_ceil(1_000_000_000),
    }
}

/// Sweeps blocks every second and measures the limits' slot tables every
/// ten, on a thread of its own (both are map syscalls, a read per entry).
/// Time until the next sweep with `blocks` in force: a second, or one per
/// `SWEEP_BLOCKS_PER_SECOND` blocks.
pub fn sweep_interval(blocks: usize) -> Duration {
    SWEEP_INTERVAL.max(Duration::from_secs(
        blocks.div_ceil(SWEEP_BLOCKS_PER_SECOND) as u64,
    ))
}

pub fn start_sweeper(admin: Arc<Admin>, reader: LimitReader) {
    let metrics = admin.metrics.clone();
    let spawned = std::thread::Builder::new()
        .name("tg-blocks".into())
        .spawn(move || {
            let mut warned = false;
            let (mut sweep_at, mut measure_at) = (Instant::now(), Instant::now());
            loop {
                if Instant::now() >= sweep_at {
                    let n = match admin.sweep() {
                        Ok(n) => {
                            metrics.set_blocked(n);
                            warned = false;
                            n
                        }
                        Err(e) => {
                            if !warned {
                                tracing::warn!(error = %e, "cannot sweep the blocked table");
                                warned = true;
                            }
                            0
                        }
                    };
                    sweep_at = Instant::now() + sweep_interval(n);
                }
                if Instant::now() >= measure_at {
                    let now = coarse_now_ns();
                    let window = TRACKED_WINDOW.as_nanos() as u64;
                    let tracked = metrics
                        .limits()
                        .iter()
                        .enumerate()
                        .map(|(id, l)| {
                            if l.per == tierguard_common::limiter::Per::Global {
                                0
                            } else {
                                reader.tracked_keys(id as u32, now, window).unwrap_or(0)
                            }
                        })
                        .collect();
                    metrics.set_tracked(tracked);
                    measure_at = Instant::now() + TRACKED_INTERVAL;
                }
                std::thread::sleep(SWEEP_INTERVAL);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the block sweeper: expired blocks stay until the next agent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_durations_and_reasons_are_checked() {
        assert_eq!(
            parse_target("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            parse_target("2001:db8::/48").unwrap().to_string(),
            "2001:db8::/48"
        );
        assert!(
            parse_target("192.0.2.7/24")
                .unwrap_err()
                .contains("did you mean 192.0.2.0/24")
        );
        assert!(
            parse_target("banana")
                .unwrap_err()
                .contains("not an IP address")
        );
        assert!(
            parse_target("0.0.0.0/0")
                .unwrap_err()
                .contains("would block every source")
        );
        assert_eq!(parse_block_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_block_duration("30d"), Ok(MAX_ADMIN_BLOCK));
        assert!(
            parse_block_duration("0")
                .unwrap_err()
                .contains("at least 1s")
        );
        assert!(
            parse_block_duration("31d")
                .unwrap_err()
                .contains("at most 30d")
        );
        assert!(
            parse_block_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(check_reason("port scan from 192.0.2.7").is_ok());
        assert!(check_reason(" ").is_err());
        assert!(check_reason("a\nb").is_err());
        assert!(
            check_reason(&"x".repeat(97))
                .unwrap_err()
                .contains("at most 96")
        );
        assert_eq!(&reason_bytes("scan")[..5], b"scan\0");
    }

    #[test]
    fn the_sweep_slows_down_with_many_blocks() {
        assert_eq!(sweep_interval(0), Duration::from_secs(1));
        assert_eq!(sweep_interval(10_000), Duration::from_secs(1));
        assert_eq!(sweep_interval(10_001), Duration::from_secs(2));
        assert_eq!(sweep_interval(131_072), Duration::from_secs(14));
    }
}
