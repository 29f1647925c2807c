//! `cargo xtask setup`: install what building, testing and the demo need. Idempotent: each
//! piece is checked first and only installed when missing.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{Cmd, path_with};

/// Debian packages: LLVM 22 to build bpf-linker, and the tools the tests and the demo use.
const DEB_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "iputils-ping",
    "hping3",
    "netsniff-ng",
    "prometheus",
    "bpftool",
    "netcat-openbsd",
    // The deploy tests: a real YAML parser for the manifests, and strace to check
    // the systemd unit's system-call filter against what the agent calls.
    "yq",
    "strace",
    // setpriv (the tests run the agent without capabilities) and systemd-analyze.
    "util-linux",
    "systemd",
];

/// The LLVM major that nightly must carry: bpf-linker is linked against LLVM 22.
const LLVM_MAJOR: u32 = 22;
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPFFS: &str = "/sys/fs/bpf";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `$CARGO_HOME/bin`, or `~/.cargo/bin`.
pub fn cargo_bin() -> PathBuf {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return PathBuf::from(home).join("bin");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cargo").join("bin")
}

/// Put `~/.cargo/bin` on PATH for every child process (cargo, rustup, bpf-linker). Returns
/// true if PATH was changed. Must run before any thread is started.
pub fn put_cargo_bin_on_path() -> bool {
    match path_with(&cargo_bin(), std::env::var_os("PATH")) {
        Some(path) => {
            // SAFETY: called first thing in main, while the process has a single thread.
            unsafe { std::env::set_var("PATH", path) };
            true
        }
        None => false,
    }
}

pub fn run() -> Result<()> {
    println!("setup: checking what building, testing and the demo need");
    let root = is_root();
    if !root {
        println!(
            "warning: not running as root. Loading eBPF programs, creating network namespaces \
             and mounting bpffs need root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON); \
             installing packages needs root too."
        );
    }
    println!(
        "ok: {} is on PATH for child processes",
        cargo_bin().display()
    );
    debian_packages(root)?;
    nightly_toolchain()?;
    bpf_linker()?;
    bpffs(root)?;
    println!("setup: done");
    Ok(())
}

fn debian_packages(root: bool) -> Result<()> {
    let mut missing = Vec::new();
    for pkg in DEB_PACKAGES {
        if deb_installed(pkg) {
            println!("ok: Debian package {pkg} already present");
        } else {
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !root {
        bail!(
            "missing Debian packages: {list}. Installing them needs root: \
             `sudo apt-get update && sudo apt-get install -y {list}`, or run this as root"
        );
    }
    println!("installing Debian packages {list}: apt-get update, then apt-get install -y {list}");
    Cmd::new("apt-get").arg("update").run()?;
    Cmd::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y"])
        .args(&missing)
        .run()?;
    let still: Vec<_> = missing.iter().filter(|p| !deb_installed(p)).collect();
    if !still.is_empty() {
        bail!("apt-get reported success but these packages are still not installed: {still:?}");
    }
    Ok(())
}

fn deb_installed(pkg: &str) -> bool {
    Cmd::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .quiet()
        .output()
        .is_ok_and(|o| dpkg_says_installed(&String::from_utf8_lossy(&o.stdout)))
}

fn dpkg_says_installed(status: &str) -> bool {
    status.trim() == "install ok installed"
}

fn nightly_toolchain() -> Result<()> {
    let list = Cmd::new("rustup")
        .args(["toolchain", "list"])
        .quiet()
        .stdout()
        .context("rustup is needed to manage the nightly toolchain (https://rustup.rs)")?;
    if has_nightly(&list) {
        println!("ok: rustup toolchain nightly already present");
    } else {
        println!(
            "installing rustup toolchain nightly (builds the kernel object): \
             rustup toolchain install nightly --profile minimal"
        );
        Cmd::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .run()?;
    }

    let components = Cmd::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .quiet()
        .stdout()?;
    if components.lines().any(|l| l.trim().starts_with("rust-src")) {
        println!("ok: rust-src for nightly already present");
    } else {
        println!(
            "installing rust-src for nightly (needed by -Z build-std): \
             rustup component add rust-src --toolchain nightly"
        );
        Cmd::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"])
            .run()?;
    }

    let vv = Cmd::new("rustc")
        .args(["+nightly", "-vV"])
        .quiet()
        .stdout()?;
    match llvm_major(&vv) {
        Some(LLVM_MAJOR) => {
            println!("ok: nightly carries LLVM {LLVM_MAJOR}, the major bpf-linker links against");
            Ok(())
        }
        found => {
            let found =
                found.map_or_else(|| "an unknown version".to_owned(), |m| format!("LLVM {m}"));
            bail!(
                "the `nightly` toolchain carries {found}, but the kernel object is linked by \
                 bpf-linker {BPF_LINKER_VERSION} built against LLVM {LLVM_MAJOR} \
                 (Debian's llvm-{LLVM_MAJOR}-dev); bitcode from a different LLVM major cannot be \
                 linked. Install a nightly that carries LLVM {LLVM_MAJOR} as `nightly` (check with \
                 `rustc +nightly -vV`), for example from a dated nightly of 2026, or rebuild \
                 bpf-linker against the matching LLVM.\n`rustc +nightly -vV` said:\n{vv}"
            )
        }
    }
}

fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list
        .lines()
        .any(|l| l.trim_start().starts_with("nightly"))
}

fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.trim().strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
}

fn bpf_linker() -> Result<()> {
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => {
            println!("ok: bpf-linker {BPF_LINKER_VERSION} already present");
            return Ok(());
        }
        Some(v) => println!("bpf-linker {v} found, but {BPF_LINKER_VERSION} is needed"),
        None => println!(
            "bpf-linker not found on PATH or in {}",
            cargo_bin().display()
        ),
    }
    let install = Cmd::new("cargo")
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .env_shown_as(
            "PATH",
            prefixed_path(&Path::new(LLVM_PREFIX).join("bin")),
            &format!("{LLVM_PREFIX}/bin:$PATH"),
        )
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"]);
    println!(
        "installing bpf-linker {BPF_LINKER_VERSION} (links the kernel object; compiling it takes \
         about 3 minutes): {}",
        install.shown()
    );
    install.quiet().run()?;
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => Ok(()),
        other => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION}, but `bpf-linker --version` now reports {other:?}; \
             is another bpf-linker earlier on PATH?"
        ),
    }
}

/// The version `bpf-linker --version` reports (PATH includes ~/.cargo/bin by now).
fn bpf_linker_version() -> Option<String> {
    let out = Cmd::new("bpf-linker")
        .arg("--version")
        .quiet()
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_bpf_linker_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_bpf_linker_version(s: &str) -> Option<String> {
    s.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_owned)
}

fn prefixed_path(dir: &Path) -> std::ffi::OsString {
    let current = std::env::var_os("PATH");
    path_with(dir, current.clone())
        .or(current)
        .unwrap_or_default()
}

fn bpffs(root: bool) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if bpffs_mounted(&mounts) {
        println!("ok: bpffs already mounted at {BPFFS}");
        return Ok(());
    }
    if !root {
        println!(
            "warning: bpffs is not mounted at {BPFFS} and mounting it needs root: \
             `sudo mount -t bpf bpf {BPFFS}`; pinning maps and links will fail until then"
        );
        return Ok(());
    }
    println!(
        "mounting bpffs at {BPFFS} (maps and links are pinned there): mount -t bpf bpf {BPFFS}"
    );
    Cmd::new("mount").args(["-t", "bpf", "bpf", BPFFS]).run()
}

fn bpffs_mounted(proc_mounts: &str) -> bool {
    proc_mounts.lines().any(|l| {
        let f: Vec<_> = l.split_whitespace().collect();
        f.len() >= 3 && f[1] == BPFFS && f[2] == "bpf"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status() {
        assert!(dpkg_says_installed("install ok installed"));
        assert!(!dpkg_says_installed("deinstall ok config-files"));
        assert!(!dpkg_says_installed(""));
    }

    #[test]
    fn toolchains() {
        let list =
            "stable-x86_64-unknown-linux-gnu (active, default)\nnightly-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(!has_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\n1.95.0-x86_64-unknown-linux-gnu\n"
        ));
    }

    #[test]
    fn llvm_version() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("LLVM version: 21.1.0"), Some(21));
        assert_eq!(llvm_major("rustc 1.0"), None);
    }

    #[test]
    fn linker_version() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.0\n").as_deref(),
            Some("0.13.0")
        );
        assert_eq!(parse_bpf_linker_version("bpf-linker\n"), None);
    }

    #[test]
    fn bpffs_detection() {
        assert!(bpffs_mounted(
            "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n"
        ));
        assert!(!bpffs_mounted("sysfs /sys sysfs rw 0 0\n"));
        assert!(!bpffs_mounted("none /sys/fs/bpf tmpfs rw 0 0\n"));
        assert!(!bpffs_mounted("bpf /sys/fs/bpf/x bpf rw 0 0\n"));
    }
}
