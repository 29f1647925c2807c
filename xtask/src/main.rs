//! tierguard's task runner: `cargo xtask <command>` (alias in .cargo/config.toml).

mod bench;
mod cmd;
mod demo;
mod lab;
mod setup;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, setup, test, bench and demo tasks for tierguard"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, nightly + rust-src, bpf-linker, bpffs (idempotent)
    Setup,
    /// Setup, then build the agent and its kernel object
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, then run every test (host, BPF_PROG_TEST_RUN, network namespaces); needs root
    Test {
        /// Extra arguments for `cargo test --workspace`, e.g. `-- --test e2e -- --nocapture`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, and show the agent at work in a throwaway network-namespace lab; needs root
    Demo {
        /// Leave the agent and the lab up until Ctrl-C
        #[arg(long)]
        keep: bool,
    },
    /// Setup, then run the benchmarks and write docs/benchmarks.md
    Bench {
        /// Extra arguments for the benchmark binary
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the demo lab with no agent, check it carries traffic, and tear it down
    #[command(hide = true)]
    LabSelftest,
}

fn main() -> ExitCode {
    let path_changed = setup::put_cargo_bin_on_path();
    let cli = Cli::parse();
    if path_changed {
        println!(
            "added {} to PATH for child processes",
            setup::cargo_bin().display()
        );
    }
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            println!(
                "build: building the agent and its kernel object{}",
                if release { " (release)" } else { "" }
            );
            let mut cmd = cmd::Cmd::new("cargo").arg("build");
            if release {
                cmd = cmd.arg("--release");
            }
            cmd.args(["-p", "tierguard"]).dir(workspace_root()).run()?;
            let bin = target_dir()
                .join(if release { "release" } else { "debug" })
                .join("tierguard");
            println!("build: done: {}", bin.display());
            Ok(())
        }
        Task::Test { args } => test::run(&args),
        Task::Demo { keep } => demo::run(keep),
        Task::Bench { args } => bench::run(&args),
        Task::LabSelftest => lab::selftest(),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where cargo puts build output: $CARGO_TARGET_DIR, or target/ in the workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}
