//! Event lines for blocks: started (by a limit, from the kernel's record, or
//! over the admin socket) and ended (expired or removed). One line per block
//! start and one per end, on the same sink as packet events (docs/events.md).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Serialize;
use tierguard_common::{
    event::{EVENT_VERSION, Event},
    limiter::{BLOCK_ADMIN, BlockValue},
    packet::{FLAG_L4, PROTO_TCP, PROTO_UDP},
};

use super::record::{Context, Interfaces, rfc3339, tcp_flag_letters};

/// One block event. Field meanings: docs/events.md.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockLine {
    pub version: u8,
    /// `block_started` or `block_ended`.
    pub event: &'static str,
    pub time: String,
    pub time_unix_ns: u64,
    pub node: String,
    /// The blocked prefix.
    pub block: String,
    /// `limit` or `admin`.
    pub origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_id: Option<u16>,
    /// Why, for an admin block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who, for an admin block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    pub started: String,
    pub until: String,
    pub duration_seconds: u64,
    /// For `block_ended`: `expired` or `unblocked`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<&'static str>,
    pub policy_generation: u64,
    pub policy_hash: String,
    /// For a block a limit started: the packet that crossed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_number: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
}

/// Wall-clock ns for a monotonic (coarse or precise) time.
fn wall(mono_ns: u64, ctx: &Context) -> u64 {
    (i128::from(mono_ns) + ctx.boot_offset_ns).clamp(0, i128::from(u64::MAX)) as u64
}

fn limit_name(ctx: &Context, id: u16) -> String {
    ctx.limits
        .get(usize::from(id))
        .cloned()
        .unwrap_or_else(|| format!("limit{id}"))
}

/// The reason text of an admin block.
pub fn reason_text(v: &BlockValue) -> String {
    let end = v
        .reason
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(v.reason.len());
    String::from_utf8_lossy(&v.reason[..end]).into_owned()
}

/// A line for a block in the table: `block_started` (cause `None`) or
/// `block_ended` (with its cause), stamped `now_mono`.
pub fn line(
    net: IpNetwork,
    v: &BlockValue,
    cause: Option<&'static str>,
    now_mono: u64,
    ctx: &Context,
) -> BlockLine {
    let admin = v.origin == BLOCK_ADMIN;
    let now = wall(now_mono, ctx);
    BlockLine {
        version: EVENT_VERSION,
        event: if cause.is_some() {
            "block_ended"
        } else {
            "block_started"
        },
        time: rfc3339(now),
        time_unix_ns: now,
        node: ctx.node.clone(),
        block: net.to_string(),
        origin: if admin { "admin" } else { "limit" },
        limit: (!admin).then(|| limit_name(ctx, v.origin)),
        limit_id: (!admin).then_some(v.origin),
        reason: admin.then(|| reason_text(v)),
        uid: admin.then_some(v.uid),
        started: rfc3339(wall(v.created_ns, ctx)),
        until: rfc3339(wall(v.until_ns, ctx)),
        duration_seconds: v.until_ns.saturating_sub(v.created_ns) / 1_000_000_000,
        cause,
        policy_generation: ctx.generation,
        policy_hash: ctx.policy_hash.clone(),
        interface: None,
        src: None,
        dst: None,
        protocol_number: None,
        dst_port: None,
        tcp_flags: None,
    }
}

fn addr(family: u8, a: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::from([a[0], a[1], a[2], a[3]])),
        6 => Some(IpAddr::from(*a)),
        _ => None,
    }
}

/// The line for the kernel's record of a block a limit started.
pub fn started_by_limit(e: &Event, ctx: &Context, ifaces: &mut Interfaces) -> BlockLine {
    let src = addr(e.family, &e.src);
    let net = src
        .and_then(|a| IpNetwork::new(a, e.block_len).ok())
        .and_then(|n| IpNetwork::new(n.network(), n.prefix()).ok());
    let v = BlockValue {
        until_ns: e
            .time_ns
            .saturating_add(u64::from(e.block_secs) * 1_000_000_000),
        created_ns: e.time_ns,
        origin: e.list_id,
        len: e.block_len,
        ..BlockValue::EMPTY
    };
    let unspecified = IpNetwork::new(IpAddr::from([0u8; 4]), 0).expect("valid");
    let mut l = line(net.unwrap_or(unspecified), &v, None, e.time_ns, ctx);
    let l4 = e.packet_flags & FLAG_L4 != 0;
    l.interface = Some(ifaces.name(e.ifindex));
    l.src = src.map(|a| a.to_string());
    l.dst = addr(e.family, &e.dst).map(|a| a.to_string());
    l.protocol_number = src.map(|_| e.proto);
    l.dst_port = (l4 && (e.proto == PROTO_TCP || e.proto == PROTO_UDP)).then_some(e.dport);
    l.tcp_flags = (l4 && e.proto == PROTO_TCP).then(|| tcp_flag_letters(e.tcp_flags));
    l
}

#[cfg(test)]
mod tests {
    use tierguard_common::event::KIND_BLOCK_STARTED;

    use super::*;

    fn ctx() -> Context {
        Context {
            node: "n1".into(),
            generation: 4,
            policy_hash: "h".into(),
            lists: Vec::new(),
            limits: vec!["syn-flood".into()],
            rules: Vec::new(),
            zones: Vec::new(),
            boot_offset_ns: 1_000_000_000_000_000_000,
        }
    }

    #[test]
    fn a_kernel_block_record_names_the_limit_the_prefix_and_the_packet() {
        let mut e = Event::EMPTY;
        e.kind = KIND_BLOCK_STARTED;
        e.family = 4;
        e.proto = PROTO_TCP;
        e.packet_flags = FLAG_L4;
        e.tcp_flags = 0x02;
        e.src[..4].copy_from_slice(&[198, 51, 100, 77]);
        e.dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        e.dport = 443;
        e.list_id = 0;
        e.block_len = 24;
        e.block_secs = 60;
        e.time_ns = 5_000_000_000;
        e.ifindex = 1;
        let l = started_by_limit(&e, &ctx(), &mut Interfaces::default());
        let j = serde_json::to_value(&l).unwrap();
        assert_eq!(j["event"], "block_started");
        assert_eq!(j["block"], "198.51.100.0/24");
        assert_eq!(
            (j["origin"].as_str(), j["limit"].as_str()),
            (Some("limit"), Some("syn-flood"))
        );
        assert_eq!(j["duration_seconds"], 60);
        assert_eq!(j["src"], "198.51.100.77");
        assert_eq!(
            (j["dst_port"].as_u64(), j["tcp_flags"].as_str()),
            (Some(443), Some("S"))
        );
        assert_eq!(j["interface"], "lo");
        assert_eq!(j["started"], "2001-09-09T01:46:45.000000000Z");
        assert_eq!(j["until"], "2001-09-09T01:47:45.000000000Z");
        assert!(j.get("reason").is_none() && j.get("cause").is_none());
    }

    #[test]
    fn an_admin_block_carries_who_and_why_and_its_end_its_cause() {
        let mut v = BlockValue {
            until_ns: 700_000_000_000,
            created_ns: 100_000_000_000,
            origin: BLOCK_ADMIN,
            len: 32,
            uid: 0,
            ..BlockValue::EMPTY
        };
        v.reason[..4].copy_from_slice(b"scan");
        let net: IpNetwork = "192.0.2.7/32".parse().unwrap();
        let j = serde_json::to_value(line(net, &v, Some("unblocked"), 200_000_000_000, &ctx()))
            .unwrap();
        assert_eq!(j["event"], "block_ended");
        assert_eq!(j["cause"], "unblocked");
        assert_eq!(
            (
                j["origin"].as_str(),
                j["reason"].as_str(),
                j["uid"].as_u64()
            ),
            (Some("admin"), Some("scan"), Some(0))
        );
        assert_eq!(j["duration_seconds"], 600);
        assert!(j.get("limit").is_none() && j.get("src").is_none());
    }
}
