//! The one list of reasons a packet is passed or dropped.
//!
//! Numbers are stable: they index kernel counters and appear in events. Append
//! new reasons at the end; never renumber.

/// What the datapath does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Verdict {
    Pass = 0,
    Drop = 1,
    /// Would have been dropped, but passed: an `audit` rule or limit, or
    /// any drop in global audit mode (a parse drop included).
    Audit = 2,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Pass, Verdict::Drop, Verdict::Audit];

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::Audit => "audit",
        }
    }

    /// Whether the packet goes on (pass and audit both do).
    pub const fn passes(self) -> bool {
        !matches!(self, Verdict::Drop)
    }
}

/// Why a verdict was reached. Each reason implies exactly one verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reason {
    /// No stage decided: the packet passed by default.
    NoMatch = 0,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed untouched.
    NonIp = 1,
    /// Source is in an allow list.
    AllowList = 2,
    /// Source is in a deny list.
    DenyList = 3,
    /// A header was cut short by the end of the packet.
    Truncated = 4,
    /// A header carried impossible values (IPv4 IHL < 5, bad TCP data offset, ...).
    Malformed = 5,
    /// More VLAN tags than the parser follows (two).
    VlanDepth = 6,
    /// More IPv6 extension headers than the parser follows.
    Ipv6ExtChain = 7,
    /// First fragment too small to carry the whole transport header.
    TinyFragment = 8,
    /// The dispatcher found no enforcement program installed (only between
    /// attaching and installing, or if the program array was emptied by
    /// hand): passed, so a broken install never cuts a node off.
    NoProgram = 9,
    /// IP inside an encapsulation the parser does not open (MPLS, PPPoE).
    UnsupportedEncap = 10,
    /// Failsafe traffic (management SSH, metrics scrape, ND, DHCP...): never dropped.
    Failsafe = 11,
    /// A reply of a flow that an allowed packet opened.
    Established = 12,
    /// A segmentation rule allowed it.
    RuleAllow = 13,
    /// An `audit` rule matched: passed, reported as a would-be drop.
    RuleAudit = 14,
    /// A segmentation rule denied it.
    RuleDeny = 15,
    /// No rule matched; the zone pair's default is allow.
    DefaultAllow = 16,
    /// No rule matched; the zone pair's default is deny.
    DefaultDeny = 17,
    /// The source is blocked (by a limit's `block` action or over the admin socket).
    Blocked = 18,
    /// Over a limit whose action drops (or blocks): the excess.
    Limit = 19,
    /// Over a limit whose action is `audit`: passed, reported.
    LimitAudit = 20,
}

impl Reason {
    /// Every reason, in numeric order.
    pub const ALL: [Reason; 21] = [
        Reason::NoMatch,
        Reason::NonIp,
        Reason::AllowList,
        Reason::DenyList,
        Reason::Truncated,
        Reason::Malformed,
        Reason::VlanDepth,
        Reason::Ipv6ExtChain,
        Reason::TinyFragment,
        Reason::NoProgram,
        Reason::UnsupportedEncap,
        Reason::Failsafe,
        Reason::Established,
        Reason::RuleAllow,
        Reason::RuleAudit,
        Reason::RuleDeny,
        Reason::DefaultAllow,
        Reason::DefaultDeny,
        Reason::Blocked,
        Reason::Limit,
        Reason::LimitAudit,
    ];

    pub const fn verdict(self) -> Verdict {
        match self {
            Reason::NoMatch
            | Reason::NonIp
            | Reason::AllowList
            | Reason::NoProgram
            | Reason::Failsafe
            | Reason::Established
            | Reason::RuleAllow
            | Reason::DefaultAllow => Verdict::Pass,
            Reason::RuleAudit | Reason::LimitAudit => Verdict::Audit,
            Reason::DenyList
            | Reason::Truncated
            | Reason::Malformed
            | Reason::VlanDepth
            | Reason::Ipv6ExtChain
            | Reason::TinyFragment
            | Reason::UnsupportedEncap
            | Reason::RuleDeny
            | Reason::DefaultDeny
            | Reason::Blocked
            | Reason::Limit => Verdict::Drop,
        }
    }

    /// Label value used in metrics and events (snake_case, stable).
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NoMatch => "no_match",
            Reason::NonIp => "non_ip",
            Reason::AllowList => "allow_list",
            Reason::DenyList => "deny_list",
            Reason::Truncated => "truncated",
            Reason::Malformed => "malformed",
            Reason::VlanDepth => "vlan_depth",
            Reason::Ipv6ExtChain => "ipv6_ext_chain",
            Reason::TinyFragment => "tiny_fragment",
            Reason::NoProgram => "no_program",
            Reason::UnsupportedEncap => "unsupported_encap",
            Reason::Failsafe => "failsafe",
            Reason::Established => "established",
            Reason::RuleAllow => "rule_allow",
            Reason::RuleAudit => "rule_audit",
            Reason::RuleDeny => "rule_deny",
            Reason::DefaultAllow => "default_allow",
            Reason::DefaultDeny => "default_deny",
            Reason::Blocked => "blocked",
            Reason::Limit => "limit",
            Reason::LimitAudit => "limit_audit",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Reason> {
        if (v as usize) < Reason::ALL.len() {
            Some(Reason::ALL[v as usize])
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_is_dense_and_round_trips() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(Reason::from_u8(i as u8), Some(*r));
        }
        assert_eq!(Reason::from_u8(Reason::ALL.len() as u8), None);
        assert!(Reason::ALL.len() <= crate::maps::MAX_REASONS as usize);
    }

    #[test]
    fn names_are_unique_snake_case() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            assert!(
                a.name()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            );
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn only_pass_reasons_pass() {
        assert_eq!(Reason::AllowList.verdict(), Verdict::Pass);
        assert_eq!(Reason::NonIp.verdict(), Verdict::Pass);
        assert_eq!(Reason::DenyList.verdict(), Verdict::Drop);
        assert_eq!(Reason::Truncated.verdict(), Verdict::Drop);
    }
}
