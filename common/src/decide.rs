//! Verdict precedence: implemented once, called by the kernel and by `explain`.
//!
//! Order (docs/design/verdict-precedence.md): parse → failsafe → blocked
//! sources (ingress) → lists (ingress, source address) → limits (ingress) →
//! established replies → segmentation rules → the zone pair's default. In
//! global audit mode every drop becomes `audit`, a frame the parser refuses
//! included ([`refused`]).

use crate::limiter::LimitOutcome;
use crate::maps::{Direction, ListAction, ListEntry};
use crate::packet::Packet;
use crate::reason::{Reason, Verdict};
use crate::segment::{
    FlowKey, PAIR_TABLE, PORT_BLOCK, PortEntry, PortSet, RuleAction, SEG_AUDIT_MODE,
    SEG_DEFAULT_ALLOW, SEG_ENABLED, SEG_FAILSAFE, SEG_INTRA_ALLOW, SET_MAX_LINES, SegMeta,
    class_index, decode_rule, failsafe_class, failsafe_port, may_be_reply, proto_class, reply_key,
    rule_port,
};

/// A decision: why, which list or rule (by id) decided, and between which zones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub reason: Reason,
    /// The reason's verdict, or `Audit` for a drop in global audit mode.
    pub verdict: Verdict,
    /// List id for list reasons, rule id for rule reasons, failsafe entry
    /// for `failsafe`; `NO_ID` otherwise.
    pub id: u16,
    /// Zones of the source and destination (`NO_ZONE` when not looked up).
    pub src_zone: u16,
    pub dst_zone: u16,
}

pub const NO_ID: u16 = u16::MAX;
pub const NO_ZONE: u16 = u16::MAX;

impl Decision {
    pub const fn new(reason: Reason) -> Self {
        Decision::with_id(reason, NO_ID)
    }

    pub const fn with_id(reason: Reason, id: u16) -> Self {
        Decision {
            reason,
            verdict: reason.verdict(),
            id,
            src_zone: NO_ZONE,
            dst_zone: NO_ZONE,
        }
    }

    /// Applies global audit mode: a drop is reported but not enforced.
    #[inline(always)]
    pub const fn finish(mut self, meta: &SegMeta) -> Self {
        if meta.flags & SEG_AUDIT_MODE != 0 && matches!(self.verdict, Verdict::Drop) {
            self.verdict = Verdict::Audit;
        }
        self
    }
}

/// The decision for a frame the parser refused, with the parse reason: a
/// drop, or in global audit mode an `audit` (passed and reported), since
/// audit mode drops nothing (docs/design/malformed-packets.md). Called by
/// the kernel and by the agent's `decide_frame` (`explain`), so both give
/// the same verdict.
#[inline(always)]
pub const fn refused(reason: Reason, meta: &SegMeta) -> Decision {
    Decision::new(reason).finish(meta)
}

/// What a decision reads, implemented over BPF maps by the kernel and over
/// the compiled policy by the agent. Every method is one bounded lookup.
pub trait Tables {
    /// Winning list entry for an address (the lists match sources).
    fn list(&self, p: &Packet) -> Option<ListEntry>;
    /// Failsafe entries (bit mask) naming this protocol class and node-side port.
    fn failsafe_ports(&self, class: u32, port: u16) -> u32;
    /// Failsafe entries (bit mask) whose remote ranges hold this address.
    fn failsafe_addr(&self, family: u8, addr: &[u8; 16]) -> u32;
    /// Zone id of an address (`ZONE_WORLD` if in no zone).
    fn zone(&self, family: u8, addr: &[u8; 16]) -> u16;
    /// The pair record of a (source zone, destination zone), 0 if no rule
    /// names the pair.
    fn pair(&self, src_zone: u16, dst_zone: u16) -> u16;
    /// Entry `class` (`class_index`) of pair record `record`: 0, a port
    /// table (`PAIR_TABLE | t`) or a port set's first line plus one.
    fn pair_entry(&self, record: u16, class: usize) -> u32;
    /// Line `line` of the generation's port sets.
    fn port_set(&self, line: u32) -> Option<&PortSet>;
    /// Entry `hi` of port table `table`.
    fn port_table(&self, table: u32, hi: u8) -> PortEntry;
    /// Entry `lo` of port block `block`.
    fn port_block(&self, block: u32, lo: u8) -> PortEntry;
    /// The packet's source zone, destination zone and rule entry:
    /// [`classify`] over the methods above (the kernel makes it a call of
    /// its own, which keeps the verifier's work in bounds).
    fn classify(&self, p: &Packet) -> (u16, u16, PortEntry) {
        classify(self, p)
    }
    /// Whether a live flow has this key (the kernel also refreshes it).
    fn flow_alive(&self, key: &FlowKey, p: &Packet) -> bool;
    /// The origin (a limit id, or `limiter::BLOCK_ADMIN`) of a block in
    /// force on the packet's source, if any.
    fn blocked(&self, p: &Packet) -> Option<u16>;
    /// The limit stage: charges the packet to each matching limit in order
    /// until one refuses it. The kernel keeps the buckets; the agent has no
    /// traffic to count and passes (`explain` lists the matching limits).
    fn limits(&self, p: &Packet) -> LimitOutcome;
}

/// The list stage. `hit` is the winning entry of the source-address lookup.
#[inline(always)]
pub fn lists(hit: Option<ListEntry>) -> Option<Decision> {
    let e = hit?;
    let reason = match ListAction::from_u8(e.action)? {
        ListAction::Deny => Reason::DenyList,
        ListAction::Allow => Reason::AllowList,
    };
    Some(Decision::with_id(reason, e.list_id))
}

/// The failsafe stage: the lowest failsafe entry that names this packet.
#[inline(always)]
pub fn failsafe<T: Tables>(dir: Direction, p: &Packet, meta: &SegMeta, t: &T) -> Option<u16> {
    if meta.flags & SEG_FAILSAFE == 0 {
        return None;
    }
    let egress = matches!(dir, Direction::Egress);
    let class = failsafe_class(p.proto)?;
    let port = failsafe_port(p, egress)?;
    let ports = t.failsafe_ports(class, port);
    if ports == 0 {
        return None;
    }
    let remote = if egress { &p.dst } else { &p.src };
    let hit = ports & t.failsafe_addr(p.family, remote);
    if hit == 0 {
        return None;
    }
    Some(hit.trailing_zeros() as u16)
}

/// The rule entry for a zone pair, protocol class and port: the pair's
/// record (two array reads), then its port set (a line or a few, scanned) or
/// port table (one or two array reads), whatever the number of rules.
#[inline(always)]
pub fn rule_entry<T: Tables + ?Sized>(
    t: &T,
    src_zone: u16,
    dst_zone: u16,
    class: u8,
    port: u16,
) -> PortEntry {
    let record = t.pair(src_zone, dst_zone);
    if record == 0 {
        return 0;
    }
    let e = t.pair_entry(record, class_index(class));
    if e == 0 {
        return 0;
    }
    if e & PAIR_TABLE != 0 {
        let e = t.port_table(e & !PAIR_TABLE, (port >> 8) as u8);
        return if e & PORT_BLOCK != 0 {
            t.port_block(e & !PORT_BLOCK, (port & 0xff) as u8)
        } else {
            e
        };
    }
    set_entry(e - 1, port, |line| t.port_set(line))
}

/// The code of the run holding `port` in the port set starting at line
/// `first`; `line(i)` reads line `i` of the generation's port sets.
#[inline(always)]
pub fn set_entry<'a>(
    first: u32,
    port: u16,
    line: impl Fn(u32) -> Option<&'a PortSet>,
) -> PortEntry {
    let mut i = 0;
    while i < SET_MAX_LINES {
        let Some(s) = line(first.wrapping_add(i)) else {
            return 0;
        };
        let code = s.find(port);
        if code != 0 || s.more == 0 {
            return code;
        }
        i += 1;
    }
    0
}

/// The zones of a packet's addresses and the rule entry for them, its
/// protocol class and its port.
#[inline(always)]
pub fn classify<T: Tables + ?Sized>(t: &T, p: &Packet) -> (u16, u16, PortEntry) {
    let src_zone = t.zone(p.family, &p.src);
    let dst_zone = t.zone(p.family, &p.dst);
    let entry = rule_entry(t, src_zone, dst_zone, proto_class(p.proto), rule_port(p));
    (src_zone, dst_zone, entry)
}

/// The segmentation stage for a packet no earlier stage decided.
#[inline(always)]
pub fn segmentation<T: Tables>(p: &Packet, meta: &SegMeta, t: &T) -> Decision {
    let (src_zone, dst_zone, entry) = t.classify(p);
    let mut d = match decode_rule(entry) {
        Some((id, RuleAction::Allow)) => Decision::with_id(Reason::RuleAllow, id),
        Some((id, RuleAction::Audit)) => Decision::with_id(Reason::RuleAudit, id),
        Some((id, RuleAction::Deny)) => Decision::with_id(Reason::RuleDeny, id),
        None => {
            let allow = if src_zone == dst_zone {
                meta.flags & SEG_INTRA_ALLOW != 0
            } else {
                meta.flags & SEG_DEFAULT_ALLOW != 0
            };
            Decision::new(if allow {
                Reason::DefaultAllow
            } else {
                Reason::DefaultDeny
            })
        }
    };
    d.src_zone = src_zone;
    d.dst_zone = dst_zone;
    d
}

/// A packet over an `audit` limit is reported as `limit_audit` when the later
/// stages pass it; a drop (or another audit) stands.
#[inline(always)]
pub fn over_audit_limit(d: Decision, limits: LimitOutcome) -> Decision {
    match limits.audited_by() {
        Some(id) if matches!(d.verdict, Verdict::Pass) => Decision {
            reason: Reason::LimitAudit,
            verdict: Verdict::Audit,
            id,
            ..d
        },
        _ => d,
    }
}

/// The whole decision for a parsed IP packet.
#[inline(always)]
pub fn decide<T: Tables>(dir: Direction, p: &Packet, meta: &SegMeta, t: &T) -> Decision {
    if let Some(entry) = failsafe(dir, p, meta, t) {
        return Decision::with_id(Reason::Failsafe, entry);
    }
    let mut audit = LimitOutcome::PASS;
    if matches!(dir, Direction::Ingress) {
        if let Some(origin) = t.blocked(p) {
            return Decision::with_id(Reason::Blocked, origin).finish(meta);
        }
        if let Some(d) = lists(t.list(p)) {
            return d.finish(meta);
        }
        audit = t.limits(p);
        if let Some(id) = audit.dropped_by() {
            return Decision::with_id(Reason::Limit, id).finish(meta);
        }
    }
    if meta.flags & SEG_ENABLED == 0 {
        return over_audit_limit(Decision::new(Reason::NoMatch), audit);
    }
    if may_be_reply(p) && t.flow_alive(&reply_key(p), p) {
        return over_audit_limit(Decision::new(Reason::Established), audit);
    }
    over_audit_limit(segmentation(p, meta, t).finish(meta), audit)
}

/// Ingress decision from the list stage alone (no segmentation configured).
#[inline(always)]
pub fn ingress(list_hit: Option<ListEntry>) -> Decision {
    if let Some(d) = lists(list_hit) {
        return d;
    }
    Decision::new(Reason::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_hits_decide_and_misses_pass() {
        let deny = ListEntry {
            list_id: 3,
            action: ListAction::Deny as u8,
            orig_len: 24,
        };
        let allow = ListEntry {
            list_id: 4,
            action: ListAction::Allow as u8,
            orig_len: 24,
        };
        assert_eq!(ingress(Some(deny)), Decision::with_id(Reason::DenyList, 3));
        assert_eq!(
            ingress(Some(allow)),
            Decision::with_id(Reason::AllowList, 4)
        );
        assert_eq!(ingress(None), Decision::new(Reason::NoMatch));
    }

    /// Tables answering what each test sets: no failsafe port unless
    /// `failsafe`, one list entry, a block, a limit outcome, no rules.
    struct Fake {
        failsafe: bool,
        list: Option<ListEntry>,
        blocked: Option<u16>,
        limits: LimitOutcome,
    }

    impl Tables for Fake {
        fn list(&self, _: &Packet) -> Option<ListEntry> {
            self.list
        }
        fn failsafe_ports(&self, _: u32, _: u16) -> u32 {
            u32::from(self.failsafe)
        }
        fn failsafe_addr(&self, _: u8, _: &[u8; 16]) -> u32 {
            1
        }
        fn zone(&self, _: u8, _: &[u8; 16]) -> u16 {
            0
        }
        fn pair(&self, _: u16, _: u16) -> u16 {
            0
        }
        fn pair_entry(&self, _: u16, _: usize) -> u32 {
            0
        }
        fn port_set(&self, _: u32) -> Option<&PortSet> {
            None
        }
        fn port_table(&self, _: u32, _: u8) -> PortEntry {
            0
        }
        fn port_block(&self, _: u32, _: u8) -> PortEntry {
            0
        }
        fn flow_alive(&self, _: &FlowKey, _: &Packet) -> bool {
            false
        }
        fn blocked(&self, _: &Packet) -> Option<u16> {
            self.blocked
        }
        fn limits(&self, _: &Packet) -> LimitOutcome {
            self.limits
        }
    }

    fn syn() -> Packet {
        let mut p = Packet::EMPTY;
        p.family = 4;
        p.proto = crate::packet::PROTO_TCP;
        p.flags = crate::packet::FLAG_L4;
        p.tcp_flags = crate::packet::TCP_SYN;
        p.dport = 22;
        p
    }

    #[test]
    fn blocks_and_limits_take_their_place_in_the_order() {
        let allow = ListEntry {
            list_id: 4,
            action: ListAction::Allow as u8,
            orig_len: 24,
        };
        let deny = ListEntry {
            action: ListAction::Deny as u8,
            ..allow
        };
        let none = Fake {
            failsafe: false,
            list: None,
            blocked: None,
            limits: LimitOutcome::PASS,
        };
        let seg = SegMeta {
            flags: SEG_ENABLED | SEG_FAILSAFE | SEG_DEFAULT_ALLOW | SEG_INTRA_ALLOW,
            ..SegMeta::default()
        };
        let off = SegMeta::default();
        let d = |t: &Fake, meta: &SegMeta| decide(Direction::Ingress, &syn(), meta, t);
        // Failsafe beats a block: operators cannot block themselves out.
        let t = Fake {
            failsafe: true,
            blocked: Some(3),
            ..none
        };
        assert_eq!(d(&t, &seg).reason, Reason::Failsafe);
        // A block beats the lists, even an allow list.
        let t = Fake {
            blocked: Some(3),
            list: Some(allow),
            ..none
        };
        assert_eq!(d(&t, &off), Decision::with_id(Reason::Blocked, 3));
        // An allow list ends evaluation before the limits.
        let t = Fake {
            list: Some(allow),
            limits: LimitOutcome::drop(1),
            ..none
        };
        assert_eq!(d(&t, &off).reason, Reason::AllowList);
        let t = Fake {
            list: Some(deny),
            limits: LimitOutcome::drop(1),
            ..none
        };
        assert_eq!(d(&t, &off).reason, Reason::DenyList);
        // A limit's drop decides.
        let t = Fake {
            limits: LimitOutcome::drop(1),
            ..none
        };
        assert_eq!(d(&t, &seg), Decision::with_id(Reason::Limit, 1));
        // An audit limit reports a packet the later stages pass...
        let t = Fake {
            limits: LimitOutcome::audit(2),
            ..none
        };
        let got = d(&t, &off);
        assert_eq!(
            (got.reason, got.verdict, got.id),
            (Reason::LimitAudit, Verdict::Audit, 2)
        );
        assert_eq!(d(&t, &seg).reason, Reason::LimitAudit);
        // ...but never lets through what they drop.
        let strict = SegMeta {
            flags: SEG_ENABLED,
            ..SegMeta::default()
        };
        assert_eq!(d(&t, &strict).reason, Reason::DefaultDeny);
        // In global audit mode a block or a limit is reported, not enforced.
        let audit_mode = SegMeta {
            flags: SEG_AUDIT_MODE,
            ..SegMeta::default()
        };
        let t = Fake {
            blocked: Some(BLOCKED_BY_ADMIN),
            ..none
        };
        let got = d(&t, &audit_mode);
        assert_eq!((got.reason, got.verdict), (Reason::Blocked, Verdict::Audit));
        // Egress: neither blocks nor limits apply.
        let t = Fake {
            blocked: Some(3),
            limits: LimitOutcome::drop(1),
            ..none
        };
        let got = decide(Direction::Egress, &syn(), &off, &t);
        assert_eq!(got.reason, Reason::NoMatch);
    }

    const BLOCKED_BY_ADMIN: u16 = crate::limiter::BLOCK_ADMIN;

    #[test]
    fn a_refused_frame_is_dropped_and_in_audit_mode_audited() {
        let enforce = SegMeta::default();
        let audit = SegMeta {
            flags: SEG_AUDIT_MODE,
            ..SegMeta::default()
        };
        for reason in [
            Reason::Truncated,
            Reason::Malformed,
            Reason::VlanDepth,
            Reason::Ipv6ExtChain,
            Reason::TinyFragment,
            Reason::UnsupportedEncap,
        ] {
            let d = refused(reason, &enforce);
            assert_eq!((d.reason, d.verdict), (reason, Verdict::Drop));
            let d = refused(reason, &audit);
            assert_eq!((d.reason, d.verdict), (reason, Verdict::Audit));
        }
    }

    #[test]
    fn unknown_action_byte_is_ignored_not_trusted() {
        let bad = ListEntry {
            list_id: 1,
            action: 9,
            orig_len: 8,
        };
        assert_eq!(ingress(Some(bad)), Decision::new(Reason::NoMatch));
    }
}
