//! The tierguard agent: configuration, policy compilation, datapath loading,
//! metrics. `main.rs` only wires these together.
pub mod config;
pub mod datapath;
