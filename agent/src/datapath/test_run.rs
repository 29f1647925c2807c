//! Running the loaded programs on a crafted frame (BPF_PROG_TEST_RUN): the
//! real kernel code path, used by the packet tests and the benchmark.

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};

use super::{Datapath, DatapathError, Result, egress, load_xdp, xdp_program};

/// Outcome of a test run.
#[derive(Debug, Clone, Copy)]
pub struct RunResult {
    /// XDP action (1 drop, 2 pass).
    pub action: u32,
    /// Average time per run as the kernel measured it.
    pub per_run: Duration,
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
/// TC programs' verdicts as `RunResult::action`: TC_ACT_UNSPEC (-1: pass,
/// next program) and TC_ACT_SHOT.
pub const TC_PASS: u32 = u32::MAX;
pub const TC_DROP: u32 = 2;

impl Datapath {
    /// Runs program `name` (XDP or TC) on `frame` `repeat` times.
    pub fn test_run(&mut self, name: &str, frame: &[u8], repeat: u32) -> Result<RunResult> {
        let is_tc = matches!(
            self.ebpf.program(name),
            Some(aya::programs::Program::SchedClassifier(_))
        );
        if is_tc {
            if self.ebpf.program(name).is_none_or(|p| p.fd().is_err()) {
                egress::load_tc(&mut self.ebpf, name)?;
            }
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(frame);
            opts.repeat = repeat.max(1);
            let r = egress::tc_program(&mut self.ebpf, name)?
                .test_run(opts)
                .map_err(|source| DatapathError::Program {
                    program: name.into(),
                    source,
                })?;
            return Ok(RunResult {
                action: r.return_value,
                per_run: r.duration,
            });
        }
        if name != tierguard_common::maps::programs::INGRESS {
            // Other programs (the benchmark baseline) load on first use.
            let loaded = self.ebpf.program(name).is_some_and(|p| p.fd().is_ok());
            if !loaded {
                load_xdp(&mut self.ebpf, name)?;
            }
        }
        let prog = xdp_program(&mut self.ebpf, name)?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat.max(1);
        let r = prog
            .test_run(opts)
            .map_err(|source| DatapathError::Program {
                program: name.into(),
                source,
            })?;
        Ok(RunResult {
            action: r.return_value,
            per_run: r.duration,
        })
    }
}
