//! `cargo xtask test`: every test in the workspace — host unit tests, BPF_PROG_TEST_RUN
//! packet tests and end-to-end tests in network namespaces.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::cmd::{Cmd, describe};

/// The kernel crate builds only for the BPF target (through agent/build.rs); `cargo test`
/// would build it for the host, where its `no_main` binary cannot link. Its programs are
/// tested by tierguard-tests.
const KERNEL_CRATE: &str = "tierguard-ebpf";

pub fn run(extra: &[String]) -> Result<()> {
    crate::setup::run()?;
    if !crate::setup::is_root() {
        eprintln!();
        eprintln!("==========================================================================");
        eprintln!("ERROR: not running as root. The BPF tests (loading programs, test_run,");
        eprintln!("network namespaces) WILL FAIL. Run `sudo -E cargo xtask test`, or as root.");
        eprintln!("==========================================================================");
        eprintln!();
    }
    println!(
        "test: running every test in the workspace ({KERNEL_CRATE} is built for the BPF target \
         by agent/build.rs and tested through tierguard-tests)"
    );
    let start = Instant::now();
    // The end-to-end tests run the agent binary as a user would; cargo test builds only test
    // harnesses, so build the binary first, in the profile the tests use.
    let release = extra
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "--release");
    println!("test: building the agent binary the end-to-end tests run");
    let mut build = Cmd::new("cargo").arg("build");
    if release {
        build = build.arg("--release");
    }
    build
        .args(["-p", "tierguard"])
        .dir(crate::workspace_root())
        .run()?;
    let status = Cmd::new("cargo")
        .args([
            "test",
            "--workspace",
            "--exclude",
            KERNEL_CRATE,
            "--no-fail-fast",
        ])
        .args(extra)
        .dir(crate::workspace_root())
        .status()?;
    let took = start.elapsed().as_secs();
    if status.success() {
        println!("test: PASSED: all tests passed in {took} s");
        Ok(())
    } else {
        bail!(
            "test: FAILED: `cargo test` ended with {} after {took} s",
            describe(status)
        )
    }
}
