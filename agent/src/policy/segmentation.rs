//! Zones, rules and failsafe compiled into the contents of the kernel's
//! segmentation maps (layout: `tierguard_common::segment`,
//! docs/design/segmentation.md).

use ipnetwork::{Ipv4Network, Ipv6Network};
use tierguard_common::segment::{PairKey, PortTable, RuleAction, SegMeta};

/// A zone as compiled; its id is its index (0 `world`, 1 `host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneInfo {
    pub name: String,
}

/// A rule as compiled; its id is its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub name: String,
    pub action: RuleAction,
    pub description: Option<String>,
    /// Where it is defined (file:line:column).
    pub origin: String,
}

/// A failsafe entry as compiled; its id is its bit in the failsafe masks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafeInfo {
    pub name: String,
}

/// Map contents for the segmentation part of one policy generation. Keys
/// carry slot 0; the writer sets the generation's slot.
#[derive(Debug, Clone, Default)]
pub struct CompiledSegmentation {
    /// Flags (`SEG_*`) and flow timeouts.
    pub meta: SegMeta,
    pub zones: Vec<ZoneInfo>,
    /// Zone prefixes, the node's own addresses (zone `host`) included.
    pub zone_v4: Vec<(Ipv4Network, u16)>,
    pub zone_v6: Vec<(Ipv6Network, u16)>,
    pub rules: Vec<RuleInfo>,
    /// (zone pair and protocol class) → index into `port_tables`.
    pub pairs: Vec<(PairKey, u32)>,
    pub port_tables: Vec<PortTable>,
    pub port_blocks: Vec<PortTable>,
    pub failsafe: Vec<FailsafeInfo>,
    /// (protocol class, node-side port) → mask of failsafe entries; only non-zero masks.
    pub failsafe_ports: Vec<(u32, u16, u32)>,
    /// Remote prefixes → mask of failsafe entries, already OR-ed with the
    /// masks of every shorter prefix that contains them.
    pub failsafe_v4: Vec<(Ipv4Network, u32)>,
    pub failsafe_v6: Vec<(Ipv6Network, u32)>,
}
