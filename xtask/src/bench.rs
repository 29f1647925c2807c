//! `cargo xtask bench`: run the benchmark binary and write docs/benchmarks.md.

use anyhow::Result;

use crate::cmd::Cmd;

pub fn run(extra: &[String]) -> Result<()> {
    crate::setup::run()?;
    if !crate::setup::is_root() {
        println!("warning: not running as root; the benchmarks load eBPF programs and will fail");
    }
    // The events section runs the agent binary as a user would; `cargo run` builds only the
    // bench binary, so build the agent first, in the same (release) profile.
    println!("bench: building the agent binary the events section runs");
    Cmd::new("cargo")
        .args(["build", "--release", "-p", "tierguard"])
        .dir(crate::workspace_root())
        .run()?;
    println!("bench: running the benchmarks; results go to docs/benchmarks.md");
    Cmd::new("cargo")
        .args([
            "run",
            "--release",
            "-p",
            "tierguard-tests",
            "--bin",
            "tierguard-bench",
            "--",
        ])
        .args(["--write", "docs/benchmarks.md"])
        .args(extra)
        .dir(crate::workspace_root())
        .run()
}
