//! Compiling a validated config into the contents of the kernel's maps.
//!
//! The compiled form is what the kernel will see, minus the generation slot;
//! `lookup_source` answers from it with the same precedence code the kernel
//! runs, which is what `tierguard explain` relies on.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use tierguard_common::{
    maps::{LIST_V4_CAPACITY, LIST_V6_CAPACITY, ListAction, ListEntry},
    prefix::{V4_STRIDES, V6_STRIDES, expand, mask, stride_bit, stride_for, stride_len, wins},
};

use crate::config::{Config, ConfigError, ConfigErrors};

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
    /// (stride length, masked address) → winning entry.
    pub v4: HashMap<(u8, [u8; 4]), ListEntry>,
    pub v6: HashMap<(u8, [u8; 16]), ListEntry>,
    pub v4_strides: u32,
    pub v6_strides: u32,
    /// Stable hash of what is enforced (hex), for audit and metrics.
    pub hash: String,
}

impl CompiledPolicy {
    /// Compiles `config`. Fails only when the tables would not fit the maps.
    pub fn compile(config: &Config) -> Result<CompiledPolicy, ConfigErrors> {
        let mut p = CompiledPolicy::default();
        for (id, list) in config.lists.iter().enumerate() {
            let id = u16::try_from(id).expect("list count validated");
            let mut info = ListInfo {
                name: list.name.clone(),
                action: list.action,
                v4_prefixes: 0,
                v6_prefixes: 0,
            };
            for net in &list.prefixes {
                let entry = ListEntry { list_id: id, action: list.action as u8, orig_len: net.prefix() };
                match net {
                    IpNetwork::V4(n) => {
                        info.v4_prefixes += 1;
                        insert(&mut p.v4, &mut p.v4_strides, n.network().octets(), n.prefix(), entry);
                    }
                    IpNetwork::V6(n) => {
                        info.v6_prefixes += 1;
                        insert(&mut p.v6, &mut p.v6_strides, n.network().octets(), n.prefix(), entry);
                    }
                }
            }
            p.lists.push(info);
        }
        // Both generations share a map during a reload, so one may use half.
        let mut errors = Vec::new();
        for (what, used, cap) in [
            ("IPv4", p.v4.len(), LIST_V4_CAPACITY / 2),
            ("IPv6", p.v6.len(), LIST_V6_CAPACITY / 2),
        ] {
            if used > cap as usize {
                errors.push(ConfigError {
                    file: config.origin.clone(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "{what} lists expand to {used} table entries; at most {cap} fit \
                         (prefixes are stored at multiples of 8 bits: prefer /8, /16, /24, /32 for IPv4)"
                    ),
                });
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        p.hash = policy_hash(config);
        Ok(p)
    }

    /// The winning list entry for a source address, exactly as the kernel finds it.
    pub fn lookup_source(&self, addr: IpAddr) -> Option<ListEntry> {
        match addr {
            IpAddr::V4(a) => lookup(&self.v4, self.v4_strides, V4_STRIDES, &a.octets()),
            IpAddr::V6(a) => lookup(&self.v6, self.v6_strides, V6_STRIDES, &a.octets()),
        }
    }
}

fn insert<const N: usize>(
    table: &mut HashMap<(u8, [u8; N]), ListEntry>,
    strides: &mut u32,
    addr: [u8; N],
    len: u8,
    entry: ListEntry,
) {
    let stride = stride_for(len);
    *strides |= 1 << stride_bit(stride);
    expand(&mask(&addr, len), len, |a| {
        table
            .entry((stride, a))
            .and_modify(|old| {
                if wins(&entry, old) {
                    *old = entry;
                }
            })
            .or_insert(entry);
    });
}

fn lookup<const N: usize>(
    table: &HashMap<(u8, [u8; N]), ListEntry>,
    strides: u32,
    max: u32,
    addr: &[u8; N],
) -> Option<ListEntry> {
    (0..max)
        .rev()
        .filter(|i| strides & (1 << i) != 0)
        .find_map(|i| {
            let len = stride_len(i);
            table.get(&(len, mask(addr, len))).copied()
        })
}

/// FNV-1a over a canonical rendering of what is enforced: equal policies hash
/// equal whatever their comments, order of keys or list files.
fn policy_hash(config: &Config) -> String {
    let mut canon = String::new();
    for l in &config.lists {
        let _ = writeln!(canon, "list {} {}", l.name, l.action.name());
        for p in &l.prefixes {
            let _ = writeln!(canon, " {p}");
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canon.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn compile(text: &str) -> CompiledPolicy {
        let c = Config::load_str(text, "t.toml", Path::new(".")).unwrap();
        CompiledPolicy::compile(&c).unwrap()
    }

    fn hit(p: &CompiledPolicy, a: &str) -> Option<(String, ListAction)> {
        p.lookup_source(a.parse().unwrap())
            .map(|e| (p.lists[e.list_id as usize].name.clone(), ListAction::from_u8(e.action).unwrap()))
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
        assert_eq!(hit(&p, "10.9.9.9"), Some(("deny-wide".into(), ListAction::Deny)));
        assert_eq!(hit(&p, "10.1.9.9"), Some(("allow-exception".into(), ListAction::Allow)));
        // /23 inside the /16 exception: deny again.
        assert_eq!(hit(&p, "10.1.3.200"), Some(("deny-narrow".into(), ListAction::Deny)));
        // A /32 exception inside that /23.
        assert_eq!(hit(&p, "10.1.2.3"), Some(("allow-exception".into(), ListAction::Allow)));
        assert_eq!(hit(&p, "11.0.0.1"), None);
        assert_eq!(hit(&p, "2001:db8:2::1"), Some(("deny-wide".into(), ListAction::Deny)));
        assert_eq!(hit(&p, "2001:db8:1::1"), Some(("allow-exception".into(), ListAction::Allow)));
        assert_eq!(hit(&p, "2001:db9::1"), None);
    }

    #[test]
    fn same_prefix_in_allow_and_deny_denies() {
        let p = compile(POLICY);
        assert_eq!(hit(&p, "192.0.2.1"), Some(("deny-wide".into(), ListAction::Deny)));
        assert_eq!(hit(&p, "192.0.2.129"), None);
    }

    #[test]
    fn edges_of_prefixes() {
        let p = compile("[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"10.1.2.0/23\", \"0.0.0.0/0\"]\n");
        // /0 matches everything not more specific; the /23 covers exactly 10.1.2.0-10.1.3.255.
        assert_eq!(p.lookup_source("10.1.1.255".parse().unwrap()).unwrap().orig_len, 0);
        assert_eq!(p.lookup_source("10.1.2.0".parse().unwrap()).unwrap().orig_len, 23);
        assert_eq!(p.lookup_source("10.1.3.255".parse().unwrap()).unwrap().orig_len, 23);
        assert_eq!(p.lookup_source("10.1.4.0".parse().unwrap()).unwrap().orig_len, 0);
        assert!(p.lookup_source("::1".parse().unwrap()).is_none());
    }

    #[test]
    fn strides_and_expansion_sizes() {
        let p = compile("[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/22\", \"192.0.2.1\", \"2001:db8::/33\"]\n");
        assert_eq!(p.v4_strides, (1 << stride_bit(24)) | (1 << stride_bit(32)));
        assert_eq!(p.v4.len(), 4 + 1);
        assert_eq!(p.v6.len(), 128);
        assert_eq!(p.lists[0].v4_prefixes, 2);
        assert_eq!(p.lists[0].v6_prefixes, 1);
    }

    #[test]
    fn hash_ignores_comments_and_changes_with_content() {
        let a = compile("# one\n[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/8\"]\n");
        let b = compile("[[lists]]\n# two\nname = \"d\"\naction = \"deny\"\ncidrs = [ \"10.0.0.0/8\" ]\n");
        let c = compile("[[lists]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/9\"]\n");
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }
}
