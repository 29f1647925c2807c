//! `cargo xtask test`: every test in the workspace — host unit tests, BPF_PROG_TEST_RUN
//! packet tests and end-to-end tests in network namespaces.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::cmd::{Cmd, describe};

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
    println!("test: running every test in the workspace");
    let start = Instant::now();
    let status = Cmd::new("cargo")
        .args(["test", "--workspace"])
        .args(extra)
        .dir(crate::workspace_root())
        .status()?;
    let took = start.elapsed().as_secs();
    if status.success() {
        println!("test: PASSED: all tests passed in {took} s");
        Ok(())
    } else {
        bail!(
            "test: FAILED: `cargo test --workspace` ended with {} after {took} s",
            describe(status)
        )
    }
}
