//! Verdict precedence: implemented once, called by the kernel and by `explain`.
//!
//! Order (docs/design/verdict-precedence.md): parse → lists (longest prefix
//! wins; deny beats allow at equal length) → default pass.

use crate::maps::{ListAction, ListEntry};
use crate::reason::Reason;

/// A decision: why, and which list or rule (by id) decided, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub reason: Reason,
    /// List id for list reasons; `NO_ID` otherwise.
    pub id: u16,
}

pub const NO_ID: u16 = u16::MAX;

impl Decision {
    pub const fn new(reason: Reason) -> Self {
        Decision { reason, id: NO_ID }
    }
}

/// The list stage. `hit` is the winning entry of the source-address lookup.
#[inline(always)]
pub fn lists(hit: Option<ListEntry>) -> Option<Decision> {
    let e = hit?;
    let reason = match ListAction::from_u8(e.action)? {
        ListAction::Deny => Reason::DenyList,
        ListAction::Allow => Reason::AllowList,
    };
    Some(Decision {
        reason,
        id: e.list_id,
    })
}

/// Ingress decision for a parsed IP packet.
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
        assert_eq!(
            ingress(Some(deny)),
            Decision {
                reason: Reason::DenyList,
                id: 3
            }
        );
        assert_eq!(
            ingress(Some(allow)),
            Decision {
                reason: Reason::AllowList,
                id: 4
            }
        );
        assert_eq!(ingress(None), Decision::new(Reason::NoMatch));
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
