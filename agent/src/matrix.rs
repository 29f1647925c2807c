//! `tierguard matrix` (placeholder while explain lands).
use std::process::ExitCode;

use crate::cli::MatrixArgs;

pub fn run(_args: &MatrixArgs) -> ExitCode {
    ExitCode::SUCCESS
}
