//! Datapath errors, in words an operator can act on; the underlying error is
//! kept as the source.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "{0} is not on a bpffs mount, so maps and links cannot be pinned \
         (mount one with `mount -t bpf bpf /sys/fs/bpf`)"
    )]
    NotBpffs(PathBuf),
    #[error(
        "missing capabilities: {0}; run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
         (systemd: AmbientCapabilities=; Kubernetes: securityContext.capabilities.add)"
    )]
    MissingCapabilities(String),
    #[error("cannot create pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "permission denied loading eBPF programs: run as root or grant CAP_BPF, \
         CAP_NET_ADMIN and CAP_PERFMON"
    )]
    PermissionDenied(#[source] aya::EbpfError),
    #[error("cannot load the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the kernel refused program {program}; verifier log follows:\n{log}")]
    Verifier { program: String, log: String },
    #[error("cannot prepare program {program}: {source}")]
    Program {
        program: String,
        source: aya::programs::ProgramError,
    },
    #[error("at most {0} interfaces can be enforced on")]
    TooManyInterfaces(u32),
    #[error("cannot install the enforcement program in {map}: {source}")]
    Install {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("no such interface: {0}")]
    UnknownInterface(String),
    #[error("cannot attach XDP to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("cannot pin the XDP link of {iface} at {path}: {source}")]
    PinLink {
        iface: String,
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error(
        "the XDP attachment on {iface} is not a BPF link (kernel older than 5.9?), so it \
         cannot be pinned to survive agent restarts: {source}"
    )]
    LinkNotPinnable {
        iface: String,
        source: aya::programs::links::LinkError,
    },
    #[error("cannot hand over from the earlier agent's programs ({path}): {source}")]
    Handover {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "a second policy transaction before install: during an upgrade's handover it would \
         overwrite the generation the earlier agent's programs still read"
    )]
    HandoverPending,
    #[error("cannot count the possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("map {map} is missing from the eBPF object")]
    MissingMap { map: &'static str },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

pub type Result<T> = std::result::Result<T, DatapathError>;
