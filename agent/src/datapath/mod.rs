//! Loading, attaching and pinning the kernel programs.

/// The kernel object, built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tierguard"));
