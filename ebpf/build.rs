//! Rebuild the kernel object when bpf-linker changes (it is not a cargo input),
//! and tell bpf-linker how to lower memset.
fn main() {
    // bpf-linker passes `--bpf-expand-memcpy-in-order` to LLVM by default,
    // which also turns off LLVM's inline expansion of memset: every zeroed
    // key or record (even a 3-byte pad) became a BPF-to-BPF call into a
    // byte-at-a-time loop, ~20 ns per packet on the hot path. Without it
    // memset and memcpy are expanded into plain stores.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
