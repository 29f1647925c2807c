use std::process::ExitCode;

use clap::Parser;
use tierguard::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check(args) => tierguard::check::check(&args),
        Command::Explain(args) => tierguard::explain::run(&args),
        Command::Matrix(args) => tierguard::matrix::run(&args),
        Command::Audit(tierguard::cli::AuditCommand::Verify { file }) => {
            tierguard::audit::verify_file(&file)
        }
        Command::Block(args) => tierguard::admin::client::block(&args),
        Command::Unblock(args) => tierguard::admin::client::unblock(&args),
        Command::Blocks(args) => tierguard::admin::client::blocks(&args),
        Command::Run(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(tierguard::run::run(args))
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
