//! The tierguard agent: configuration, policy compilation, datapath loading,
//! metrics. `main.rs` only wires these together.
pub mod admin;
pub mod audit;
pub mod check;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod events;
pub mod explain;
pub mod matrix;
pub mod metrics;
pub mod policy;
pub mod run;
