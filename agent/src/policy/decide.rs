//! The decision over the compiled policy: `tierguard_common::decide::decide`
//! with lookups that mirror the kernel's maps (longest-prefix match over the
//! same prefixes, the same port tables). `explain` and the tests comparing
//! kernel and user space rely on this.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tierguard_common::{
    decide::{self, Decision, Tables},
    limiter::LimitOutcome,
    maps::{Direction, ListEntry},
    packet::Packet,
    parse::parse,
    reason::Reason,
    segment::{FlowKey, PortEntry, PortSet},
};

use super::CompiledPolicy;

/// The compiled policy seen through the kernel's lookups. No flow is ever
/// alive: each packet is decided as the first of its connection.
pub struct UserTables<'a>(pub &'a CompiledPolicy);

/// The address in a packet's 16-byte field, by family (None for non-IP).
pub fn packet_addr(family: u8, addr: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*addr))),
        _ => None,
    }
}

impl Tables for UserTables<'_> {
    fn list(&self, p: &Packet) -> Option<ListEntry> {
        self.0.lookup_source(packet_addr(p.family, &p.src)?)
    }

    fn failsafe_ports(&self, class: u32, port: u16) -> u32 {
        self.0.segmentation.failsafe_port_mask(class, port)
    }

    fn failsafe_addr(&self, family: u8, addr: &[u8; 16]) -> u32 {
        packet_addr(family, addr).map_or(0, |a| self.0.segmentation.failsafe_addr_mask(a))
    }

    fn zone(&self, family: u8, addr: &[u8; 16]) -> u16 {
        packet_addr(family, addr).map_or(0, |a| self.0.segmentation.zone_of(a))
    }

    fn pair(&self, src_zone: u16, dst_zone: u16) -> u16 {
        self.0.segmentation.pair_record(src_zone, dst_zone)
    }

    fn pair_entry(&self, record: u16, class: usize) -> u32 {
        self.0.segmentation.pair_entry(record, class)
    }

    fn port_set(&self, line: u32) -> Option<&PortSet> {
        self.0.segmentation.port_sets.get(line as usize)
    }

    fn port_table(&self, table: u32, hi: u8) -> PortEntry {
        self.0.segmentation.port_table_entry(table, hi)
    }

    fn port_block(&self, block: u32, lo: u8) -> PortEntry {
        self.0.segmentation.port_block_entry(block, lo)
    }

    fn flow_alive(&self, _key: &FlowKey, _p: &Packet) -> bool {
        false
    }

    /// Blocks are state of the running datapath, not of the policy:
    /// `explain` reads them from the pinned table itself.
    fn blocked(&self, _p: &Packet) -> Option<u16> {
        None
    }

    /// Whether a limit drops depends on traffic, which user space does not
    /// see; `explain` lists the limits that match instead.
    fn limits(&self, _p: &Packet) -> LimitOutcome {
        LimitOutcome::PASS
    }
}

impl CompiledPolicy {
    /// The decision for a parsed packet, as the kernel makes it for the
    /// generation in slot 0 (a non-IP frame passes before any stage, as in
    /// the kernel).
    pub fn decide(&self, dir: Direction, p: &Packet) -> Decision {
        if p.family == 0 {
            return Decision::new(Reason::NonIp);
        }
        decide::decide(dir, p, &self.segmentation.meta, &UserTables(self))
    }

    /// The decision for a whole frame, as the kernel makes it: parse, then
    /// [`decide`](Self::decide). A frame the parser refuses gets its parse
    /// reason (`decide::refused`: a drop, an `audit` in audit mode).
    /// `explain` answers with this, and the tests compare the kernel's
    /// verdict and counted reason with it, frame by frame.
    pub fn decide_frame(&self, dir: Direction, frame: &[u8]) -> (Result<Packet, Reason>, Decision) {
        let parsed = parse(frame);
        let decision = match &parsed {
            Err(reason) => decide::refused(*reason, &self.segmentation.meta),
            Ok(p) => self.decide(dir, p),
        };
        (parsed, decision)
    }
}
