//! The event pipeline: kernel ring buffer → decode → enrich → JSON line →
//! bounded channel → sink. docs/events.md describes the output.
//!
//! The consumer is woken by the ring buffer (the kernel asks for a wake-up
//! every `WAKEUP_EVERY` events per CPU) and also drains on a short timer, so
//! batches submitted without a wake-up go out within `DRAIN_INTERVAL`.

pub mod blocks;
pub mod record;
pub mod sink;
pub mod webhook;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use prometheus::IntCounterVec;
use tierguard_common::{
    Reason,
    event::{Event, KIND_BLOCK_STARTED},
};
use tokio::io::unix::AsyncFd;

pub use record::{Context, EventLine, Interfaces, enrich};
pub use sink::{LineSender, Sink, spawn_writer};

/// Longest a record submitted without a wake-up waits in the ring.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// The node name: $NODE_NAME (set from the downward API in the DaemonSet), or the hostname.
pub fn node_name() -> String {
    match std::env::var("NODE_NAME") {
        Ok(n) if !n.is_empty() => return n,
        _ => {}
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Counters the consumer updates.
#[derive(Clone)]
pub struct Counters {
    /// Records read from the ring, by reason.
    pub emitted: IntCounterVec,
    /// Lines lost in the agent, by stage.
    pub dropped: IntCounterVec,
}

/// Reads the ring until the agent stops. `ctx` is updated by reloads.
pub async fn consume(
    ring: RingBuf<MapData>,
    ctx: Arc<RwLock<Context>>,
    tx: LineSender,
    counters: Counters,
) {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
    // for as long as the AsyncFd holds it.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the event ring buffer; no events will be written");
            return;
        }
    };
    let mut ifaces = Interfaces::default();
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                match guard {
                    Ok(mut g) => {
                        drain(g.get_inner_mut(), &ctx, &mut ifaces, &tx, &counters);
                        g.clear_ready();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "event ring buffer poll failed; draining on the timer only");
                        // Fall back to the timer alone.
                        loop {
                            tick.tick().await;
                            drain(fd.get_mut(), &ctx, &mut ifaces, &tx, &counters);
                        }
                    }
                }
            }
            _ = tick.tick() => drain(fd.get_mut(), &ctx, &mut ifaces, &tx, &counters),
        }
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    ctx: &RwLock<Context>,
    ifaces: &mut Interfaces,
    tx: &LineSender,
    counters: &Counters,
) {
    let ctx = match ctx.read() {
        Ok(c) => c.clone(),
        Err(p) => p.into_inner().clone(),
    };
    while let Some(item) = ring.next() {
        let Some(e) = Event::from_bytes(&item) else {
            counters.dropped.with_label_values(&["decode"]).inc();
            continue;
        };
        drop(item);
        // Block starts are counted by the limits' block counters, not as
        // sampled packet events.
        let json = if e.kind == KIND_BLOCK_STARTED {
            serde_json::to_string(&blocks::started_by_limit(&e, &ctx, ifaces))
        } else {
            let reason = Reason::from_u8(e.reason).map_or("unknown", Reason::name);
            counters.emitted.with_label_values(&[reason]).inc();
            serde_json::to_string(&enrich(&e, &ctx, ifaces))
        };
        match json {
            Ok(s) => tx.send(s),
            Err(_) => counters.dropped.with_label_values(&["decode"]).inc(),
        }
    }
}
