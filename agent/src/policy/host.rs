//! The node's own addresses: the `host` zone is made of those no configured
//! zone covers (docs/design/segmentation.md, "zones and host").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every address of every interface of this node (loopback and link-local
/// included: they are the node's too), sorted, each once; unspecified
/// addresses are skipped. An error if the kernel does not answer (out of
/// file descriptors, for one): the caller decides what an unknown host zone
/// means, since an empty one would change what the policy allows.
pub fn host_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says its real
        // type; each cast below matches the family checked.
        let addr = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        if !addr.is_unspecified() {
            out.push(addr);
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// [`host_addresses`] for the commands that only read a policy (`check`,
/// `explain`): without an answer they go on with an empty host zone, and
/// say so.
pub fn host_addresses_or_empty() -> Vec<IpAddr> {
    host_addresses().unwrap_or_else(|e| {
        eprintln!("warning: cannot list the node's addresses ({e}); the host zone is empty");
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_loopback_sorted_and_once() {
        let a = host_addresses().unwrap();
        assert!(a.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{a:?}");
        assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
        assert!(a.iter().all(|a| !a.is_unspecified()));
    }
}
