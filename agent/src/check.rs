//! `tierguard check`: validate a policy without touching the datapath.

use std::process::ExitCode;

use crate::cli::{CheckArgs, ConfigArgs};
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::datapath::ifindex;
use crate::policy::{CompiledPolicy, host_addresses};

/// Loads the config named by the arguments (or the embedded default) and
/// applies the --iface override.
pub fn load(args: &ConfigArgs) -> Result<Config, ConfigErrors> {
    let mut config = match &args.config {
        Some(path) => Config::load_file(path)?,
        None => Config::embedded_default()?,
    };
    if !args.ifaces.is_empty() {
        config.agent.interfaces = args.ifaces.clone();
    }
    Ok(config)
}

/// Errors for a missing or unknown interface.
pub fn interface_errors(config: &Config, from_cli: bool) -> Vec<ConfigError> {
    let file = if from_cli {
        "command line".to_string()
    } else {
        config.origin.clone()
    };
    let err = |message: String| ConfigError {
        file: file.clone(),
        line: 0,
        column: 0,
        message,
    };
    if config.agent.interfaces.is_empty() {
        return vec![err(
            "no interface to enforce on: set agent.interfaces or pass --iface".into(),
        )];
    }
    let mut errors = Vec::new();
    for (n, i) in config.agent.interfaces.iter().enumerate() {
        if config.agent.interfaces[..n].contains(i) {
            errors.push(err(format!("interface '{i}' is given twice")));
        } else if ifindex(i).is_none() {
            errors.push(err(format!("no such interface: '{i}'")));
        }
    }
    errors
}

pub fn check(args: &CheckArgs) -> ExitCode {
    let result = load(&args.config).and_then(|config| {
        let mut errors = Vec::new();
        if !args.skip_interface_check {
            errors.extend(interface_errors(&config, !args.config.ifaces.is_empty()));
        }
        let policy = CompiledPolicy::compile(&config, &host_addresses());
        match policy {
            Ok(p) if errors.is_empty() => Ok((config, p)),
            Ok(_) => Err(ConfigErrors(errors)),
            Err(e) => {
                errors.extend(e.0);
                Err(ConfigErrors(errors))
            }
        }
    });
    match result {
        Ok((config, policy)) => {
            print!("{}", summary(&config, &policy));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s); policy refused", errors.0.len());
            ExitCode::from(2)
        }
    }
}

/// What `check` prints for a valid policy.
pub fn summary(config: &Config, policy: &CompiledPolicy) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "policy OK: {}", config.origin);
    let _ = writeln!(s, "  hash: {}", policy.hash);
    let _ = writeln!(s, "  interfaces: {}", config.agent.interfaces.join(", "));
    let _ = writeln!(s, "  xdp mode: {:?}", config.agent.xdp_mode);
    let _ = writeln!(
        s,
        "  metrics: http://{}/metrics",
        config.agent.metrics_address
    );
    let _ = writeln!(s, "  lists: {}", config.lists.len());
    for l in &policy.lists {
        let _ = writeln!(
            s,
            "    {:<24} {:<5} {} IPv4, {} IPv6 prefixes",
            l.name,
            l.action.name(),
            l.v4_prefixes,
            l.v6_prefixes
        );
    }
    let _ = writeln!(
        s,
        "  table entries: {} IPv4 /24 blocks, {} IPv4 host entries, {} IPv6",
        policy.v4_blocks.len(),
        policy.v4_long.len(),
        policy.v6.len()
    );
    s
}
