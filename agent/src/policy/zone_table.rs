//! The IPv4 zone accelerator: a /16 table and blocks of /24s that answer a
//! zone lookup in one or two array reads; the zone trie is asked only for
//! /24s that hold longer prefixes. Built from the same prefixes as the trie
//! and with the same answer (longest prefix wins).

use ipnetwork::Ipv4Network;
use tierguard_common::segment::{
    ZONE_L1_BLOCK, ZONE_LONGER, ZONE_V4_BLOCKS_PER_SLOT, ZONE_V4_L1_SIZE, ZoneBlock,
};

/// The tables for one generation: non-zero /16 entries, and the blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneTableV4 {
    /// (/16 index, entry) for every entry that is not 0 (`world`).
    pub l1: Vec<(u32, u32)>,
    pub blocks: Vec<ZoneBlock>,
}

impl ZoneTableV4 {
    /// Builds the tables for `prefixes` (prefix, zone); errors if more /16s
    /// are split than there are blocks.
    pub fn build(prefixes: &[(Ipv4Network, u16)]) -> Result<ZoneTableV4, String> {
        let mut sorted: Vec<&(Ipv4Network, u16)> = prefixes.iter().collect();
        // Shorter first: a longer prefix written later overrides it.
        sorted.sort_by_key(|(n, _)| n.prefix());
        let mut l1 = vec![0u32; ZONE_V4_L1_SIZE as usize];
        let mut blocks: Vec<ZoneBlock> = Vec::new();
        // The block of /16 `i`, made on first use: its /24s start with the
        // /16's zone.
        fn block_of(l1: &mut [u32], blocks: &mut Vec<ZoneBlock>, i: usize) -> usize {
            if l1[i] & ZONE_L1_BLOCK == 0 {
                blocks.push(ZoneBlock {
                    zones: [l1[i]; 256],
                });
                l1[i] = ZONE_L1_BLOCK | (blocks.len() - 1) as u32;
            }
            (l1[i] & !ZONE_L1_BLOCK) as usize
        }
        let mut marks: Vec<(usize, usize)> = Vec::new();
        for (net, zone) in sorted {
            let a = u32::from(net.network());
            let len = net.prefix();
            let zone = u32::from(*zone);
            if len <= 16 {
                let first = (a >> 16) as usize;
                let count = 1usize << (16 - len);
                // Sorted by length: no block exists yet while these are written.
                l1[first..first + count].fill(zone);
            } else if len <= 24 {
                let i = (a >> 16) as usize;
                let b = block_of(&mut l1, &mut blocks, i);
                let first = ((a >> 8) & 0xff) as usize;
                let count = 1usize << (24 - len);
                for z in &mut blocks[b].zones[first..first + count] {
                    *z = zone;
                }
            } else {
                let i = (a >> 16) as usize;
                let b = block_of(&mut l1, &mut blocks, i);
                marks.push((b, ((a >> 8) & 0xff) as usize));
            }
        }
        for (b, j) in marks {
            blocks[b].zones[j] |= ZONE_LONGER;
        }
        if blocks.len() > ZONE_V4_BLOCKS_PER_SLOT as usize {
            return Err(format!(
                "IPv4 zone prefixes longer than /16 split {} /16s; at most {} fit: {} too many",
                blocks.len(),
                ZONE_V4_BLOCKS_PER_SLOT,
                blocks.len() - ZONE_V4_BLOCKS_PER_SLOT as usize
            ));
        }
        Ok(ZoneTableV4 {
            l1: l1
                .iter()
                .enumerate()
                .filter(|(_, e)| **e != 0)
                .map(|(i, e)| (i as u32, *e))
                .collect(),
            blocks,
        })
    }

    /// The lookup the kernel does; `trie` answers for /24s marked
    /// `ZONE_LONGER` (with the /24's own zone when it finds nothing).
    pub fn lookup(&self, addr: [u8; 4], trie: impl Fn([u8; 4]) -> Option<u16>) -> u16 {
        let i = u32::from(addr[0]) << 8 | u32::from(addr[1]);
        let e = self
            .l1
            .binary_search_by_key(&i, |(k, _)| *k)
            .map_or(0, |n| self.l1[n].1);
        if e & ZONE_L1_BLOCK == 0 {
            return e as u16;
        }
        let e = self.blocks[(e & !ZONE_L1_BLOCK) as usize].zones[usize::from(addr[2])];
        if e & ZONE_LONGER == 0 {
            return e as u16;
        }
        trie(addr).unwrap_or(e as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lpm(prefixes: &[(Ipv4Network, u16)], a: [u8; 4]) -> Option<u16> {
        prefixes
            .iter()
            .filter(|(n, _)| n.contains(a.into()))
            .max_by_key(|(n, _)| n.prefix())
            .map(|(_, z)| *z)
    }

    #[test]
    fn answers_as_the_longest_prefix_does() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20 {
            let mut prefixes: Vec<(Ipv4Network, u16)> = Vec::new();
            for z in 0..40u16 {
                // Clustered in 10.0.0.0/14 so they nest, every length.
                let a = 0x0a00_0000 | (next() as u32 & 0x0003_ffff);
                let len = (next() % 33) as u8;
                let net = Ipv4Network::new(a.into(), len).unwrap();
                let net = Ipv4Network::new(net.network(), len).unwrap();
                if !prefixes.iter().any(|(n, _)| *n == net) {
                    prefixes.push((net, 2 + z));
                }
            }
            let t = ZoneTableV4::build(&prefixes).unwrap();
            for _ in 0..2000 {
                let a = (0x0a00_0000 | (next() as u32 & 0x0003_ffff)).to_be_bytes();
                let a = if next() % 10 == 0 {
                    (next() as u32).to_be_bytes()
                } else {
                    a
                };
                let want = lpm(&prefixes, a).unwrap_or(0);
                assert_eq!(
                    t.lookup(a, |a| lpm(&prefixes, a)),
                    want,
                    "{a:?} in {prefixes:?}"
                );
            }
        }
    }

    #[test]
    fn a_whole_slash_16_costs_no_block_and_a_split_one_costs_one() {
        let n = |s: &str| s.parse::<Ipv4Network>().unwrap();
        let t = ZoneTableV4::build(&[(n("10.0.0.0/8"), 2), (n("10.1.0.0/16"), 3)]).unwrap();
        assert!(t.blocks.is_empty());
        assert_eq!(t.l1.len(), 256);
        let t = ZoneTableV4::build(&[(n("10.1.2.0/24"), 3), (n("10.1.2.128/25"), 4)]).unwrap();
        assert_eq!(t.blocks.len(), 1);
        assert_eq!(t.blocks[0].zones[2], 3 | ZONE_LONGER);
        assert_eq!(t.blocks[0].zones[3], 0);
    }

    #[test]
    fn too_many_split_slash_16s_is_an_error_with_the_excess() {
        let p: Vec<(Ipv4Network, u16)> = (0..=ZONE_V4_BLOCKS_PER_SLOT)
            .map(|i| {
                (
                    Ipv4Network::new((0x0a00_0000 + (i << 16)).into(), 24).unwrap(),
                    2,
                )
            })
            .collect();
        let err = ZoneTableV4::build(&p).unwrap_err();
        assert!(
            err.contains("split 2049 /16s; at most 2048 fit: 1 too many"),
            "{err}"
        );
    }
}
