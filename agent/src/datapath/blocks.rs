//! The blocked-sources tries from user space: listing, adding and removing
//! blocks (the admin socket), removing expired ones (the sweeper) and
//! reading them for `explain`. Opened from their pins, independently of a
//! loaded datapath.

use std::net::IpAddr;
use std::path::Path;

use aya::maps::{
    Array, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use ipnetwork::IpNetwork;
use tierguard_common::{
    limiter::{BlockValue, MAX_BLOCK_NESTING},
    maps::names,
};

use super::map_access::{map_err, pinned};
use super::{DatapathError, Result};

/// One blocked prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub net: IpNetwork,
    pub value: BlockValue,
}

pub struct BlockTable {
    v4: LpmTrie<MapData, [u8; 4], BlockValue>,
    v6: LpmTrie<MapData, [u8; 16], BlockValue>,
    /// `TG_BLOCKS_PRESENT`: whether the kernel looks in the tries at all.
    present: Array<MapData, u32>,
}

fn not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

fn v4(net: &IpNetwork) -> Option<Key<[u8; 4]>> {
    match net {
        IpNetwork::V4(n) => Some(Key::new(u32::from(n.prefix()), n.network().octets())),
        IpNetwork::V6(_) => None,
    }
}

fn v6(net: &IpNetwork) -> Option<Key<[u8; 16]>> {
    match net {
        IpNetwork::V6(n) => Some(Key::new(u32::from(n.prefix()), n.network().octets())),
        IpNetwork::V4(_) => None,
    }
}

impl BlockTable {
    pub fn open(pin_dir: &Path) -> Result<BlockTable> {
        Ok(BlockTable {
            v4: pinned(pin_dir, names::BLOCKS_V4)?,
            v6: pinned(pin_dir, names::BLOCKS_V6)?,
            present: pinned(pin_dir, names::BLOCKS_PRESENT)?,
        })
    }

    fn set_present(&mut self, on: bool) -> Result<()> {
        self.present
            .set(0, u32::from(on), 0)
            .map_err(map_err(names::BLOCKS_PRESENT))
    }

    /// Tells the kernel whether to look in the tries: `empty` is what the
    /// caller just found. The flag is set before every insert (here and in
    /// the kernel); clearing it races a kernel insert, so the tries are read
    /// again once it is cleared.
    pub fn settle_presence(&mut self, empty: bool) -> Result<()> {
        if !empty {
            return self.set_present(true);
        }
        self.set_present(false)?;
        if !self.list()?.is_empty() {
            self.set_present(true)?;
        }
        Ok(())
    }

    /// Every entry, expired ones included, IPv4 first.
    pub fn list(&self) -> Result<Vec<Block>> {
        let mut out = Vec::new();
        for item in self.v4.iter() {
            let (k, value) = item.map_err(map_err(names::BLOCKS_V4))?;
            if let Ok(net) = IpNetwork::new(IpAddr::from(k.data()), k.prefix_len() as u8) {
                out.push(Block { net, value });
            }
        }
        for item in self.v6.iter() {
            let (k, value) = item.map_err(map_err(names::BLOCKS_V6))?;
            if let Ok(net) = IpNetwork::new(IpAddr::from(k.data()), k.prefix_len() as u8) {
                out.push(Block { net, value });
            }
        }
        Ok(out)
    }

    /// The entry for exactly `net`, if there is one.
    pub fn get(&self, net: IpNetwork) -> Result<Option<BlockValue>> {
        let hit = match (v4(&net), v6(&net)) {
            (Some(k), _) => self.v4.get(&k, 0),
            (_, Some(k)) => self.v6.get(&k, 0),
            _ => return Ok(None),
        };
        match hit {
            // The longest match no longer than `net`: its own entry only if
            // it is as long.
            Ok(v) => Ok((v.len == net.prefix()).then_some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                map: map_name(&net),
                source,
            }),
        }
    }

    /// Adds or replaces the entry for `net`.
    pub fn insert(&mut self, net: IpNetwork, value: &BlockValue) -> Result<()> {
        self.set_present(true)?;
        let r = match (v4(&net), v6(&net)) {
            (Some(k), _) => self.v4.insert(&k, value, 0),
            (_, Some(k)) => self.v6.insert(&k, value, 0),
            _ => return Ok(()),
        };
        r.map_err(|source| DatapathError::Map {
            map: map_name(&net),
            source,
        })
    }

    /// Removes the entry for `net`; false if there was none.
    pub fn remove(&mut self, net: IpNetwork) -> Result<bool> {
        let r = match (v4(&net), v6(&net)) {
            (Some(k), _) => self.v4.remove(&k),
            (_, Some(k)) => self.v6.remove(&k),
            _ => return Ok(false),
        };
        match r {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(source) => Err(DatapathError::Map {
                map: map_name(&net),
                source,
            }),
        }
    }

    /// The block the kernel applies to `addr` at `now`: the longest entry in
    /// force that covers it, looking past expired ones as the kernel does.
    pub fn covering(&self, addr: IpAddr, now: u64) -> Result<Option<Block>> {
        let mut len: u8 = if addr.is_ipv4() { 32 } else { 128 };
        for _ in 0..MAX_BLOCK_NESTING {
            let hit = match addr {
                IpAddr::V4(a) => self.v4.get(&Key::new(u32::from(len), a.octets()), 0),
                IpAddr::V6(a) => self.v6.get(&Key::new(u32::from(len), a.octets()), 0),
            };
            let value = match hit {
                Ok(v) => v,
                Err(e) if not_found(&e) => return Ok(None),
                Err(source) => {
                    let map = if addr.is_ipv4() {
                        names::BLOCKS_V4
                    } else {
                        names::BLOCKS_V6
                    };
                    return Err(DatapathError::Map { map, source });
                }
            };
            if value.active(now) {
                let Ok(net) = IpNetwork::new(addr, value.len) else {
                    return Ok(None);
                };
                let net = IpNetwork::new(net.network(), value.len).unwrap_or(net);
                return Ok(Some(Block { net, value }));
            }
            if value.len == 0 || value.len > len {
                return Ok(None);
            }
            len = value.len - 1;
        }
        Ok(None)
    }
}

fn map_name(net: &IpNetwork) -> &'static str {
    if net.is_ipv4() {
        names::BLOCKS_V4
    } else {
        names::BLOCKS_V6
    }
}
