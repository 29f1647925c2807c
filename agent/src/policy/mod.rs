//! Compiling a validated config into the contents of the kernel's maps.
//!
//! The compiled form is what the kernel will see, minus the generation slot;
//! `lookup_source` answers from it with the same precedence code the kernel
//! runs, which is what `tierguard explain` relies on.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use tierguard_common::{
    maps::{
        CODE_ENTRY, CODE_LONGER, DirectBlock, DirectCode, LIST_V4_CAPACITY, LIST_V6_CAPACITY,
        ListAction, ListEntry, V4_CODES_PER_SLOT, V4_DIRECT_PER_BLOCK, V6_BUCKET_BITS,
        V6_MAX_PROBES, V6_MIN_BUCKET_BITS, V6_SLOTS_PER_BUCKET, V6_TABLE_MAX_STRIDE, V6Bucket,
        V6Slot,
    },
    prefix::{
        V6_STRIDES, expand, mask, resolve_v4, slash24, stride_bit, stride_for, stride_len, v6_bits,
        v6_bucket, v6_place, v6_table_find, v6_top64, wins,
    },
};

use crate::config::{Config, ConfigError, ConfigErrors};

mod decide;
pub mod host;
pub mod limits;
pub mod segmentation;
pub mod zone_table;
pub use decide::{UserTables, packet_addr};
pub use host::{host_addresses, host_addresses_or_empty};
pub use limits::CompiledLimits;
pub use segmentation::CompiledSegmentation;

/// One list as compiled: its id is its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListInfo {
    pub name: String,
    pub action: ListAction,
    pub v4_prefixes: usize,
    pub v6_prefixes: usize,
}

/// Map contents for one policy generation.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    pub lists: Vec<ListInfo>,
    /// IPv4 direct table: non-empty 64-entry blocks by block index.
    pub v4_blocks: BTreeMap<u32, DirectBlock>,
    /// What each code of the direct table means (index = code; 0 is unused).
    pub v4_codes: Vec<DirectCode>,
    /// IPv4 prefixes longer than /24, expanded to /32.
    pub v4_long: HashMap<[u8; 4], ListEntry>,
    /// (stride length, masked address) → winning entry: every IPv6 entry,
    /// whichever kernel table holds it.
    pub v6: HashMap<(u8, [u8; 16]), ListEntry>,
    /// The entries of `v6` with strides up to /64, placed in the bucket table:
    /// non-empty buckets by index within a generation.
    pub v6_buckets: BTreeMap<u32, V6Bucket>,
    /// `v6_buckets` has `2^v6_bucket_bits` buckets (`PolicyMeta::v6_bucket_bits`;
    /// 0, as in `Default`, reads as `V6_BUCKET_BITS`).
    pub v6_bucket_bits: u32,
    /// Entries of `v6` with strides longer than /64 (kept in `TG_LIST_V6`).
    pub v6_long: usize,
    pub v6_strides: u32,
    /// Zones, rules, failsafe and flow settings.
    pub segmentation: CompiledSegmentation,
    /// Volumetric limits.
    pub limits: CompiledLimits,
    /// Stable hash of what is enforced (hex), for audit and metrics.
    pub hash: String,
}

impl CompiledPolicy {
    /// Compiles `config` for a node with the addresses `host` (zone `host`
    /// is made of those no configured zone covers; see [`host_addresses`]).
    /// Fails only when the tables would not fit the maps.
    pub fn compile(config: &Config, host: &[IpAddr]) -> Result<CompiledPolicy, ConfigErrors> {
        let mut p = CompiledPolicy::default();
        let mut short_v4: Vec<(u8, u32, ListEntry)> = Vec::new();
        for (id, list) in config.lists.iter().enumerate() {
            let id = u16::try_from(id).expect("list count validated");
            let mut info = ListInfo {
                name: list.name.clone(),
                action: list.action,
                v4_prefixes: 0,
                v6_prefixes: 0,
            };
            for net in &list.prefixes {
                let entry = ListEntry {
                    list_id: id,
                    action: list.action as u8,
                    orig_len: net.prefix(),
                };
                match net {
                    IpNetwork::V4(n) => {
                        info.v4_prefixes += 1;
                        if n.prefix() <= 24 {
                            short_v4.push((n.prefix(), slash24(&n.network().octets()), entry));
                        } else {
                            expand(&mask(&n.network().octets(), n.prefix()), n.prefix(), |a| {
                                upsert(&mut p.v4_long, a, entry);
                            });
                        }
                    }
                    IpNetwork::V6(n) => {
                        info.v6_prefixes += 1;
                        let len = n.prefix();
                        let stride = stride_for(len);
                        p.v6_strides |= 1 << stride_bit(stride);
                        expand(&mask(&n.network().octets(), len), len, |a| {
                            upsert(&mut p.v6, (stride, a), entry)
                        });
                    }
                }
            }
            p.lists.push(info);
        }
        let mut errors = Vec::new();
        if let Err(message) = p.build_direct_table(short_v4) {
            errors.push(ConfigError {
                file: config.origin.clone(),
                line: 0,
                column: 0,
                message,
            });
        }
        if let Err(message) = p.build_v6_table() {
            errors.push(ConfigError {
                file: config.origin.clone(),
                line: 0,
                column: 0,
                message,
            });
        }
        // Both generations share a map during a reload, so one may use half.
        for (what, used, cap) in [
            (
                "IPv4 (longer than /24)",
                p.v4_long.len(),
                LIST_V4_CAPACITY / 2,
            ),
            ("IPv6 (longer than /64)", p.v6_long, LIST_V6_CAPACITY / 2),
        ] {
            if used > cap as usize {
                errors.push(ConfigError {
                    file: config.origin.clone(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "{what} prefixes expand to {used} table entries; at most {cap} fit \
                         (they are stored at multiples of 8 bits: prefer lengths that are multiples of 8)"
                    ),
                });
            }
        }
        match CompiledSegmentation::compile(config, host) {
            Ok(s) => p.segmentation = s,
            Err(messages) => errors.extend(messages.into_iter().map(|message| ConfigError {
                file: config.origin.clone(),
                line: 0,
                column: 0,
                message,
            })),
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        p.limits = CompiledLimits::compile(config);
        p.hash = policy_hash(config);
        Ok(p)
    }

    /// The winning list entry for a source address, exactly as the kernel finds it.
    pub fn lookup_source(&self, addr: IpAddr) -> Option<ListEntry> {
        match addr {
            IpAddr::V4(a) => {
                let a = a.octets();
                let idx = slash24(&a);
                let code = self
                    .v4_blocks
                    .get(&(idx / V4_DIRECT_PER_BLOCK))
                    .map_or(0, |b| b.codes[(idx % V4_DIRECT_PER_BLOCK) as usize]);
                let code = (code != 0).then(|| self.v4_codes[code as usize]);
                resolve_v4(code, || self.v4_long.get(&a).copied())
            }
            IpAddr::V6(a) => {
                let a = a.octets();
                // As the kernel reads the generation's meta.
                let bits = v6_bits(self.v6_bucket_bits);
                (0..V6_STRIDES)
                    .rev()
                    .filter(|i| self.v6_strides & (1 << i) != 0)
                    .find_map(|i| {
                        let len = stride_len(i);
                        if len <= V6_TABLE_MAX_STRIDE {
                            v6_table_find(v6_top64(&a, len), len, bits, |b| self.v6_buckets.get(&b))
                        } else {
                            self.v6.get(&(len, mask(&a, len))).copied()
                        }
                    })
            }
        }
    }

    /// Places the entries of `v6` with strides up to /64 in the bucket table,
    /// sized to them ([`v6_bucket_bits_for`]): a passed packet reads a
    /// random bucket of the table, which for a small list then stays in
    /// cache. Where the entries do not fit within `V6_MAX_PROBES` buckets at
    /// that size (many hashing nearby), the table doubles until they do, up
    /// to `V6_BUCKET_BITS`; past that the policy is refused.
    fn build_v6_table(&mut self) -> Result<(), String> {
        let short = self.v6_short();
        self.v6_long = self.v6.len() - short.len();
        let mut bits = v6_bucket_bits_for(short.len());
        loop {
            match v6_table(&short, bits) {
                Ok(table) => {
                    self.v6_buckets = table;
                    self.v6_bucket_bits = bits;
                    return Ok(());
                }
                Err(_) if bits < V6_BUCKET_BITS => bits += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The entries of `v6` kept in the bucket table (strides up to /64).
    fn v6_short(&self) -> Vec<(u8, [u8; 16], ListEntry)> {
        self.v6
            .iter()
            .filter(|((len, _), _)| *len <= V6_TABLE_MAX_STRIDE)
            .map(|(&(len, addr), &e)| (len, addr, e))
            .collect()
    }

    /// This policy's bucket table placed in `2^bits` buckets instead of its
    /// own `2^v6_bucket_bits`, as agents before the size field placed every
    /// table at the full size (for tests of how programs read such tables).
    pub fn v6_table_at(&self, bits: u32) -> Result<BTreeMap<u32, V6Bucket>, String> {
        v6_table(&self.v6_short(), bits)
    }

    /// Paints prefixes of /24 or shorter into a /24-indexed table, shortest
    /// first so that longer ones overwrite them (at equal length allow is
    /// painted before deny, and later lists before earlier ones, matching
    /// `prefix::wins`); then turns each /24's (list, has-longer) pair into a code.
    fn build_direct_table(&mut self, mut short: Vec<(u8, u32, ListEntry)>) -> Result<(), String> {
        const CELLS: usize = 1 << 24;
        short.sort_by_key(|(len, _, e)| (*len, e.action, std::cmp::Reverse(e.list_id)));
        // 0: nothing; otherwise list id + 1.
        let mut paint = vec![0u16; CELLS];
        for (len, start, e) in &short {
            let start = *start as usize & !((1usize << (24 - len)) - 1);
            paint[start..start + (1 << (24 - len))].fill(e.list_id + 1);
        }
        let mut longer = vec![0u64; CELLS / 64];
        for a in self.v4_long.keys() {
            let i = slash24(a) as usize;
            longer[i / 64] |= 1 << (i % 64);
        }
        let entries: Vec<ListEntry> = self
            .lists
            .iter()
            .enumerate()
            .map(|(id, l)| ListEntry {
                list_id: id as u16,
                action: l.action as u8,
                orig_len: 0,
            })
            .collect();
        self.v4_codes = vec![DirectCode::default()];
        let mut codes: HashMap<(u16, bool), u8> = HashMap::new();
        let per = V4_DIRECT_PER_BLOCK as usize;
        for block in 0..CELLS / per {
            let cells = &paint[block * per..(block + 1) * per];
            let marks = longer[block * per / 64];
            if marks == 0 && cells.iter().all(|&c| c == 0) {
                continue;
            }
            let mut b = DirectBlock::EMPTY;
            for (j, &cell) in cells.iter().enumerate() {
                let long = marks & (1 << j) != 0;
                if cell == 0 && !long {
                    continue;
                }
                let next = self.v4_codes.len();
                let code = *codes.entry((cell, long)).or_insert_with(|| next as u8);
                if code as usize == next {
                    if next >= V4_CODES_PER_SLOT as usize {
                        return Err(format!(
                            "too many distinct IPv4 list outcomes: at most {} (list, has-longer-prefixes) pairs fit",
                            V4_CODES_PER_SLOT - 1
                        ));
                    }
                    let mut flags = if long { CODE_LONGER } else { 0 };
                    let entry = if cell == 0 {
                        ListEntry::default()
                    } else {
                        flags |= CODE_ENTRY;
                        entries[cell as usize - 1]
                    };
                    self.v4_codes.push(DirectCode { entry, flags });
                }
                b.codes[j] = code;
            }
            self.v4_blocks.insert(block as u32, b);
        }
        Ok(())
    }
}

/// Keeps the winner of `entry` and what is already at `key` (`prefix::wins`).
fn upsert<K: std::hash::Hash + Eq>(table: &mut HashMap<K, ListEntry>, key: K, entry: ListEntry) {
    table
        .entry(key)
        .and_modify(|old| {
            if wins(&entry, old) {
                *old = entry;
            }
        })
        .or_insert(entry);
}

/// Most entries per bucket, on average, a generation's IPv6 table is given:
/// about what a million /48s have in the full table (1,000,000 / 2^19 =
/// 1.9), a load that placement within `V6_MAX_PROBES` buckets meets
/// (map-layout.md).
pub const V6_ENTRIES_PER_BUCKET: usize = 2;
/// Buckets per entry a small table is given, up to `V6_SPARSE_MAX_BITS`:
/// lookups in a sparse table mostly read one bucket with at most one entry.
/// With 1,000 /48s, 2^9 buckets (2 per bucket) cost a denied packet 65 to
/// 68 ns over the empty program, 2^12 (1 per 4 buckets) 55 to 57 ns.
pub const V6_SPARSE_BUCKETS_PER_ENTRY: usize = 4;
/// Largest table (2^16 buckets, 4 MiB) made sparser than
/// `V6_ENTRIES_PER_BUCKET` requires: past it, the memory a lookup reads from
/// costs more than fuller buckets do (100,000 /48s: 70 to 79 ns denied at
/// 2^16 buckets, 81 to 126 ns at 2^19).
pub const V6_SPARSE_MAX_BITS: u32 = 16;

/// Bucket bits for a table of `entries` entries, from `V6_MIN_BUCKET_BITS`
/// to `V6_BUCKET_BITS`: `V6_SPARSE_BUCKETS_PER_ENTRY` buckets per entry
/// while that is at most 2^`V6_SPARSE_MAX_BITS` buckets, and never more than
/// `V6_ENTRIES_PER_BUCKET` entries per bucket.
pub fn v6_bucket_bits_for(entries: usize) -> u32 {
    let fewest = |fits: &dyn Fn(u32) -> bool| {
        (V6_MIN_BUCKET_BITS..V6_BUCKET_BITS)
            .find(|&b| fits(b))
            .unwrap_or(V6_BUCKET_BITS)
    };
    let sparse = fewest(&|b| entries.saturating_mul(V6_SPARSE_BUCKETS_PER_ENTRY) <= 1 << b);
    let loaded = fewest(&|b| entries <= V6_ENTRIES_PER_BUCKET << b);
    sparse.min(V6_SPARSE_MAX_BITS).max(loaded)
}

/// Places `entries` (stride, masked address, entry) in a table of `2^bits`
/// buckets, each in the first bucket of its probe sequence with a free slot.
/// Entries are placed in order of home bucket (then stride and address, so
/// equal policies give equal tables): a run of full buckets then holds its
/// entries sorted by home, the order that keeps the longest probe distance
/// smallest (as Robin Hood hashing does). In arbitrary order, a million /48s
/// did not fit within `V6_MAX_PROBES` buckets.
fn v6_table(
    entries: &[(u8, [u8; 16], ListEntry)],
    bits: u32,
) -> Result<BTreeMap<u32, V6Bucket>, String> {
    let mut short: Vec<(u32, u8, [u8; 16], ListEntry)> = entries
        .iter()
        .map(|&(len, addr, e)| (v6_bucket(v6_top64(&addr, len), len, bits), len, addr, e))
        .collect();
    if short.is_empty() {
        return Ok(BTreeMap::new());
    }
    let start = v6_run_start(short.iter().map(|s| s.0), bits);
    let mask = (1u32 << bits) - 1;
    short
        .sort_unstable_by_key(|&(home, len, addr, _)| (home.wrapping_sub(start) & mask, len, addr));
    // Sparse: memory follows the policy, not the table's size.
    let mut table: HashMap<u32, V6Bucket> = HashMap::with_capacity(short.len());
    for &(_, len, addr, e) in &short {
        let key = v6_top64(&addr, len);
        if !v6_place(&mut table, V6Slot::new(key, len, e), bits) {
            return Err(format!(
                "IPv6 table too full: no free slot within {V6_MAX_PROBES} buckets for \
                 {}/{len} ({} entries of /64 or shorter; {} slots)",
                std::net::Ipv6Addr::from(addr),
                short.len(),
                (1usize << bits) * V6_SLOTS_PER_BUCKET
            ));
        }
    }
    Ok(table.into_iter().collect())
}

/// A bucket where no run of full buckets wraps in from the one before, given
/// the home buckets of all entries in a table of `2^bits` buckets: placing
/// from there, entries of a run that wraps around the end of the table are
/// not placed after those of bucket 0.
fn v6_run_start(homes: impl Iterator<Item = u32>, bits: u32) -> u32 {
    let per = V6_SLOTS_PER_BUCKET as u32;
    let mut count = vec![0u32; 1 << bits];
    for h in homes {
        count[h as usize] += 1;
    }
    // Entries spilling into the next bucket, around the table twice: after
    // the first round the carry into bucket 0 is known.
    let mut carry = 0u32;
    for round in 0..2 {
        for (b, &c) in count.iter().enumerate() {
            carry = (carry + c).saturating_sub(per);
            if round == 1 && carry == 0 {
                return (b as u32 + 1) & ((1 << bits) - 1);
            }
        }
    }
    0
}

/// FNV-1a over a canonical rendering of what is enforced: equal policies hash
/// equal whatever their comments, order of keys or list files. The node's
/// own addresses are left out, so one policy has one hash on every node.
fn policy_hash(config: &Config) -> String {
    let mut canon = String::new();
    for l in &config.lists {
        let _ = writeln!(canon, "list {} {}", l.name, l.action.name());
        for p in &l.prefixes {
            let _ = writeln!(canon, " {p}");
        }
    }
    let seg = &config.segmentation;
    let word = |allow: bool| if allow { "allow" } else { "deny" };
    let _ = writeln!(
        canon,
        "mode {}\nsegmentation {} default {} intra_zone {}",
        config.mode.name(),
        seg.enabled,
        word(seg.default_allow),
        word(seg.intra_zone_allow)
    );
    let f = &config.flows;
    let _ = writeln!(
        canon,
        "flows {:?} {:?} {:?} {:?}",
        f.tcp_timeout, f.tcp_closing_timeout, f.udp_timeout, f.other_timeout
    );
    for z in &config.zones {
        let _ = writeln!(canon, "zone {}", z.name);
        for p in &z.prefixes {
            let _ = writeln!(canon, " {p}");
        }
    }
    let zone_name = |id: u16| match id {
        0 => "world",
        1 => "host",
        _ => config.zones[usize::from(id) - 2].name.as_str(),
    };
    let names = |refs: &[crate::config::ZoneRef]| {
        crate::config::zone_ids(refs, config.zones.len())
            .into_iter()
            .map(zone_name)
            .collect::<Vec<_>>()
            .join(",")
    };
    for r in &config.rules {
        let _ = writeln!(
            canon,
            "rule {} {} {} from {} to {} {:?}",
            r.name,
            r.action.name(),
            r.protocol.name(),
            names(&r.from),
            names(&r.to),
            r.port_ranges()
        );
    }
    for e in config.failsafe.entries(config.agent.metrics_address.port()) {
        let _ = writeln!(canon, "failsafe {} {} {:?}", e.name, e.proto, e.ports);
        for p in &e.from {
            let _ = writeln!(canon, " {p}");
        }
    }
    limits::hash_text(config, &mut canon);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canon.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests_segmentation;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use tierguard_common::prefix::v6_probe;

    fn compile(text: &str) -> CompiledPolicy {
        let c = Config::load_str(text, "t.toml", Path::new(".")).unwrap();
        CompiledPolicy::compile(&c, &[]).unwrap()
    }

    fn hit(p: &CompiledPolicy, a: &str) -> Option<(String, ListAction)> {
        p.lookup_source(a.parse().unwrap()).map(|e| {
            (
                p.lists[e.list_id as usize].name.clone(),
                ListAction::from_u8(e.action).unwrap(),
            )
        })
    }

    const POLICY: &str = r#"
[[lists]]
name = "deny-wide"
action = "deny"
cidrs = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.0/25"]
[[lists]]
name = "allow-exception"
action = "allow"
cidrs = ["10.1.0.0/16", "10.1.2.3", "2001:db8:1::/48", "192.0.2.0/25"]
[[lists]]
name = "deny-narrow"
action = "deny"
cidrs = ["10.1.2.0/23"]
"#;

    #[test]
    fn longest_prefix_wins_across_lists() {
        let p = compile(POLICY);
        assert_eq!(
            hit(&p, "10.9.9.9"),
            Some(("deny-wide".into(), ListAction::Deny))
        );
        assert_eq!(
            hit(&p, "10.1.9.9"),
            Some(("allow-exception".into(), ListAction::Allow))
        );
        // /23 inside the /16 exception: deny again.
        assert_eq!(
            hit(&p, "10.1.3.200"),
            Some(("deny-narrow".into(), ListAction::Deny))
        );
        // A /32 exception inside that /23.
        assert_eq!(
            hit(&p, "10.1.2.3"),
            Some(("allow-exception".into(), ListAction::Allow))
        );
        assert_eq!(hit(&p, "11.0.0.1"), None);
        assert_eq!(
            hit(&p, "2001:db8:2::1"),
            Some(("deny-wide".into(), ListAction::Deny))
        );
        assert_eq!(
            hit(&p, "2001:db8:1::1"),
            Some(("allow-exception".into(), ListAction::Allow))
        );
        assert_eq!(hit(&p, "2001:db9::1"), None);
    }

    #[test]
    fn same_prefix_in_allow_and_deny_denies() {
        let p = compile(POLICY);
        assert_eq!(
            hit(&p, "192.0.2.1"),
            Some(("deny-wide".into(), ListAction::Deny))
        );
        assert_eq!(hit(&p, "192.0.2.129"), None);
    }

    #[test]
    fn edges_of_prefixes() {
        let p = compile(
            "[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"10.1.2.0/23\", \"0.0.0.0/0\"]\n",
        );
        // /0 matches everything; the /23 covers exactly 10.1.2.0-10.1.3.255.
        for a in [
            "10.1.1.255",
            "10.1.2.0",
            "10.1.3.255",
            "10.1.4.0",
            "255.255.255.255",
            "0.0.0.0",
        ] {
            assert!(p.lookup_source(a.parse().unwrap()).is_some(), "{a}");
        }
        assert!(p.lookup_source("::1".parse().unwrap()).is_none());
        let q = compile(
            "[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"10.1.2.0/23\"]\n[[lists]]\nname = \"a\"\naction = \"allow\"\ncidrs = [\"10.0.0.0/8\"]\n",
        );
        let list = |a: &str| q.lookup_source(a.parse().unwrap()).map(|e| e.list_id);
        assert_eq!(list("10.1.1.255"), Some(1));
        assert_eq!(list("10.1.2.0"), Some(0));
        assert_eq!(list("10.1.3.255"), Some(0));
        assert_eq!(list("10.1.4.0"), Some(1));
        assert_eq!(list("11.0.0.0"), None);
    }

    #[test]
    fn strides_and_expansion_sizes() {
        let p = compile(
            "[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/22\", \"192.0.2.1\", \"192.0.2.128/25\", \"2001:db8::/33\"]\n",
        );
        // 10.0.0.0/22 paints 4 /24s in one block; 192.0.2.0/24 is marked as holding longer prefixes.
        assert_eq!(p.v4_blocks.len(), 2);
        assert_eq!(p.v4_long.len(), 1 + 128);
        // Codes: unused 0, (d, no longer), (none, longer).
        assert_eq!(p.v4_codes.len(), 3);
        assert_eq!(p.v6.len(), 128);
        // All at stride /40, in the bucket table.
        assert_eq!(p.v6_long, 0);
        let slots: usize = p
            .v6_buckets
            .values()
            .map(|b| b.slots.iter().filter(|s| s.len != 0).count())
            .sum();
        assert_eq!(slots, 128);
        assert_eq!(p.lists[0].v4_prefixes, 3);
        assert_eq!(p.lists[0].v6_prefixes, 1);
    }

    #[test]
    fn ipv6_lengths_on_both_sides_of_64_bits() {
        let p = compile(
            r#"
[[lists]]
name = "deny"
action = "deny"
cidrs = ["2001:db8::/32", "2001:db8:0:1::/64", "2001:db8:0:1:8000::/65", "2001:db8:0:1::5/128", "2001:db8:0:2::/63"]
[[lists]]
name = "allow"
action = "allow"
cidrs = ["2001:db8:0:1::/72", "2001:db8:0:1::4/127", "::/0"]
"#,
        );
        let list = |a: &str| {
            p.lookup_source(a.parse().unwrap())
                .map(|e| p.lists[e.list_id as usize].name.clone())
        };
        assert_eq!(list("2001:db8:0:1::5").as_deref(), Some("deny"), "/128");
        assert_eq!(list("2001:db8:0:1::4").as_deref(), Some("allow"), "/127");
        assert_eq!(list("2001:db8:0:1::6").as_deref(), Some("allow"), "/72");
        assert_eq!(list("2001:db8:0:1:100::").as_deref(), Some("deny"), "/64");
        assert_eq!(list("2001:db8:0:1:8000::1").as_deref(), Some("deny"), "/65");
        assert_eq!(list("2001:db8:0:3::1").as_deref(), Some("deny"), "/63");
        assert_eq!(list("2001:db8:9::1").as_deref(), Some("deny"), "/32");
        assert_eq!(list("2001:db9::1").as_deref(), Some("allow"), "/0");
        // /72, /65 (stride 72), /128 and /127 (stride 128, two entries) are hashed.
        assert_eq!(p.v6_long, 1 + 128 + 1 + 1);
        // Every lookup in the bucket table agrees with the logical map.
        for (&(len, addr), e) in &p.v6 {
            if len <= V6_TABLE_MAX_STRIDE {
                let got =
                    v6_table_find(v6_top64(&addr, len), len, v6_bits(p.v6_bucket_bits), |b| {
                        p.v6_buckets.get(&b)
                    });
                assert_eq!(got, Some(*e));
            }
        }
    }

    const B: u32 = V6_BUCKET_BITS;

    #[test]
    fn placement_probes_neighbouring_buckets_and_reports_a_full_table() {
        let e = ListEntry {
            list_id: 0,
            action: ListAction::Deny as u8,
            orig_len: 48,
        };
        for bits in [V6_MIN_BUCKET_BITS, B] {
            let mut table = HashMap::new();
            // Keys that share a home bucket: search for 17 of them.
            let home = v6_bucket(0, 48, bits);
            let keys: Vec<u64> = (0u64..)
                .map(|k| k << 16)
                .filter(|&k| v6_bucket(k, 48, bits) == home)
                .take(17)
                .collect();
            for (n, &k) in keys.iter().enumerate() {
                let placed = v6_place(&mut table, V6Slot::new(k, 48, e), bits);
                assert_eq!(placed, n < 16, "bits {bits}: entry {n}");
            }
            for p in 0..V6_MAX_PROBES {
                let b = &table[&v6_probe(home, p, bits)];
                assert!(b.slots.iter().all(|s| s.len == 48), "bucket {p} filled");
            }
            for &k in &keys[..16] {
                let got = v6_table_find(k, 48, bits, |b| table.get(&b));
                assert_eq!(got, Some(e));
            }
            assert_eq!(v6_table_find(keys[16], 48, bits, |b| table.get(&b)), None);
        }
    }

    /// A policy of the given /`len` IPv6 keys (top 64 bits), all denied.
    fn v6_policy(keys: impl IntoIterator<Item = u64>, len: u8) -> CompiledPolicy {
        let mut p = CompiledPolicy::default();
        let e = ListEntry {
            list_id: 0,
            action: ListAction::Deny as u8,
            orig_len: len,
        };
        for k in keys {
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&k.to_be_bytes());
            p.v6.insert((len, a), e);
        }
        p.v6_strides = 1 << stride_bit(len);
        p
    }

    /// Every entry of `p.v6` is found where the kernel would look.
    fn all_found(p: &CompiledPolicy) {
        for (&(len, addr), e) in &p.v6 {
            let got = v6_table_find(v6_top64(&addr, len), len, v6_bits(p.v6_bucket_bits), |b| {
                assert!(b < 1 << v6_bits(p.v6_bucket_bits));
                p.v6_buckets.get(&b)
            });
            assert_eq!(got, Some(*e), "{}", std::net::Ipv6Addr::from(addr));
        }
    }

    #[test]
    fn placement_starts_where_no_run_wraps_around() {
        // 8 entries at home bucket NB-1 (4 spill into bucket 0), then 4 at
        // each of buckets 0, 1 and 2, in the smallest table. Placed from
        // bucket 0 on, the last of NB-1's would need a fifth bucket; placed
        // from NB-1, all fit at this size.
        let bits = V6_MIN_BUCKET_BITS;
        let want = [((1 << bits) - 1, 8), (0, 4), (1, 4), (2, 4)];
        let mut have = [0; 4];
        let mut keys = Vec::new();
        let mut k = 0u64;
        while have != [8, 4, 4, 4] {
            k += 1;
            let home = v6_bucket(k, 64, bits);
            if let Some(i) = want.iter().position(|w| w.0 == home)
                && have[i] < want[i].1
            {
                have[i] += 1;
                keys.push(k);
            }
        }
        let mut p = v6_policy(keys, 64);
        p.v6_buckets = v6_table(&p.v6_short(), bits).unwrap();
        p.v6_bucket_bits = bits;
        all_found(&p);
        assert_eq!(p.v6_buckets.len(), 5, "buckets NB-1 and 0 to 3");
    }

    #[test]
    fn the_ipv6_table_is_sized_to_its_entries() {
        assert_eq!(v6_bucket_bits_for(0), V6_MIN_BUCKET_BITS);
        assert_eq!(v6_bucket_bits_for(1), V6_MIN_BUCKET_BITS);
        assert_eq!(v6_bucket_bits_for(16), 6, "4 buckets per entry in 64");
        assert_eq!(v6_bucket_bits_for(17), 7);
        assert_eq!(v6_bucket_bits_for(1_000), 12);
        assert_eq!(v6_bucket_bits_for(16_384), 16);
        assert_eq!(v6_bucket_bits_for(16_385), 16, "sparse only up to 2^16");
        assert_eq!(v6_bucket_bits_for(131_072), 16, "2 per bucket in 2^16");
        assert_eq!(v6_bucket_bits_for(131_073), 17);
        assert_eq!(v6_bucket_bits_for(100_000), 16);
        assert_eq!(
            v6_bucket_bits_for(1_000_000),
            V6_BUCKET_BITS,
            "the largest case keeps the full table"
        );
        assert_eq!(v6_bucket_bits_for(5_000_000), V6_BUCKET_BITS);

        // One prefix, through the compiler: the smallest table.
        let p =
            compile("[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"2001:db8::/48\"]\n");
        assert_eq!(p.v6_bucket_bits, V6_MIN_BUCKET_BITS);
        assert_eq!(p.v6_buckets.len(), 1);
        assert!(p.v6_buckets.keys().all(|&b| b < 1 << V6_MIN_BUCKET_BITS));
        assert!(
            p.lookup_source("2001:db8:0:1::1".parse().unwrap())
                .is_some()
        );
        assert!(p.lookup_source("2001:db8:1::1".parse().unwrap()).is_none());

        // 1k and 100k random /48s.
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut random48 = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x & !0xffff
        };
        for (n, bits) in [(1_000, 12), (100_000, 16)] {
            let mut p = v6_policy((0..n).map(|_| random48()), 48);
            assert_eq!(p.v6.len(), n);
            p.build_v6_table().unwrap();
            assert_eq!(p.v6_bucket_bits, bits, "{n} entries");
            assert!(p.v6_buckets.keys().all(|&b| b < 1 << bits));
            all_found(&p);
        }
    }

    #[test]
    fn an_ipv6_table_too_full_at_its_size_grows() {
        // 17 /48s with one home bucket in the table their number asks for
        // cannot be placed within 4 buckets of 4 there; with one more bit
        // they split in two.
        let chosen = v6_bucket_bits_for(17);
        let home = v6_bucket(0x2001_0000_0000_0000, 48, chosen);
        let keys: Vec<u64> = (0u64..)
            .map(|k| 0x2001_0000_0000_0000u64 | (k << 16))
            .filter(|&k| v6_bucket(k, 48, chosen) == home)
            .take(17)
            .collect();
        let mut p = v6_policy(keys.iter().copied(), 48);
        assert!(v6_table(&p.v6_short(), chosen).is_err());
        p.build_v6_table().unwrap();
        assert!(p.v6_bucket_bits > chosen, "grown");
        assert!(p.v6_bucket_bits < V6_BUCKET_BITS);
        all_found(&p);
        // The same through the compiler, with a miss next to the hits.
        let nets: Vec<String> = keys
            .iter()
            .map(|&k| {
                let mut a = [0u8; 16];
                a[..8].copy_from_slice(&k.to_be_bytes());
                format!("\"{}/48\"", std::net::Ipv6Addr::from(a))
            })
            .collect();
        let q = compile(&format!(
            "[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [{}]\n",
            nets.join(", ")
        ));
        assert_eq!(q.v6_bucket_bits, p.v6_bucket_bits);
        for &k in &keys {
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&(k | 0x1).to_be_bytes());
            assert!(q.lookup_source(IpAddr::from(a)).is_some());
            a[..8].copy_from_slice(&(k + 0x1_0000).to_be_bytes());
            if !keys.contains(&(k + 0x1_0000)) {
                assert!(q.lookup_source(IpAddr::from(a)).is_none());
            }
        }
        // Placed again at the full size (as for a program that reads only
        // that), every entry is found there.
        let mut wide = p.clone();
        wide.v6_buckets = p.v6_table_at(V6_BUCKET_BITS).unwrap();
        wide.v6_bucket_bits = 0;
        all_found(&wide);
    }

    #[test]
    fn a_full_ipv6_table_is_a_config_error() {
        // 17 /48s with the same home bucket in the full table (and so at
        // every size) cannot be placed in 4 buckets of 4.
        let home = v6_bucket(0x2001_0000_0000_0000, 48, B);
        let nets: Vec<String> = (0u64..)
            .map(|k| 0x2001_0000_0000_0000u64 | (k << 16))
            .filter(|&k| v6_bucket(k, 48, B) == home)
            .take(17)
            .map(|k| {
                let mut a = [0u8; 16];
                a[..8].copy_from_slice(&k.to_be_bytes());
                format!("\"{}/48\"", std::net::Ipv6Addr::from(a))
            })
            .collect();
        let text = format!(
            "[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [{}]\n",
            nets.join(", ")
        );
        let c = Config::load_str(&text, "t.toml", Path::new(".")).unwrap();
        let err = CompiledPolicy::compile(&c, &[]).unwrap_err().to_string();
        assert!(err.contains("IPv6 table too full"), "{err}");
        assert!(
            err.contains("2097152 slots"),
            "tried up to the full size: {err}"
        );
        // 16 fit.
        let text = text.replacen(&format!("{}, ", nets[16]), "", 1);
        let text = text.replacen(&format!(", {}", nets[16]), "", 1);
        compile(&text);
    }

    #[test]
    fn hash_ignores_comments_and_changes_with_content() {
        let a = compile(
            "# one\n[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/8\"]\n",
        );
        let b = compile(
            "[[lists]]\n# two\nname = \"d\"\naction = \"deny\"\ncidrs = [ \"10.0.0.0/8\" ]\n",
        );
        let c = compile("[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/9\"]\n");
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }
}
