//! Shared by the kernel programs (`tierguard-ebpf`), the agent and host tests.
//!
//! Everything that decides a packet's fate lives here as plain functions, so the
//! kernel, `tierguard explain` and the unit tests run the very same code.
#![cfg_attr(target_arch = "bpf", no_std)]
// `prefix::opaque`: an empty asm statement as an optimisation barrier.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(not(target_arch = "bpf"))]
pub mod build;
pub mod counters;
pub mod decide;
pub mod event;
pub mod limit;
pub mod limiter;
pub mod maps;
pub mod packet;
pub mod parse;
pub mod prefix;
pub mod reason;
pub mod segment;

pub use reason::{Reason, Verdict};
