//! Command-line interface.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::XdpModeSetting;

/// tierguard: network enforcement for Linux nodes with eBPF.
///
/// XDP and TC programs decide every packet against a TOML policy (allow and
/// deny lists, segmentation between zones, a failsafe); the agent keeps the
/// policy current and exports metrics.
///
/// Without --config, commands use the policy embedded in the binary.
#[derive(Debug, Parser)]
#[command(name = "tierguard", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enforce a policy: load it, attach to the interfaces, serve metrics.
    ///
    /// Reloads on SIGHUP and when the config file changes; an invalid new
    /// policy is refused and the live one stays. SIGTERM or SIGINT detaches
    /// and exits 0 (unless --persist).
    Run(RunArgs),
    /// Validate a policy and print a summary; on errors, print each with
    /// file, line and column and exit non-zero.
    Check(CheckArgs),
    /// Show what the policy does with a packet and which stage, list, rule or
    /// failsafe entry decides, computed by the same code the kernel runs.
    ///
    /// The packet is taken as the first packet of a new connection: a TCP
    /// SYN, a UDP datagram, an ICMP echo request (or the --icmp-type given).
    /// Replies of connections already admitted pass as `established` in the
    /// kernel; explain does not model them.
    Explain(ExplainArgs),
    /// Print the zone-by-zone reachability table the policy enforces: for
    /// each pair of zones (world and host included), what is allowed, audited
    /// and denied, and the default for everything else.
    Matrix(MatrixArgs),
    /// Work with the audit log of policy changes.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Block an address or prefix (all its traffic, before the lists) for a
    /// while, through the running agent's admin socket (root only; audited).
    Block(BlockArgs),
    /// Remove the block of an address or prefix (as blocked: unblocking one
    /// address inside a blocked prefix is refused).
    Unblock(UnblockArgs),
    /// List what is blocked, why, by whom and until when.
    Blocks(BlocksArgs),
}

#[derive(Debug, Args)]
pub struct AdminSocketArg {
    /// The agent's admin socket (its `[agent] admin_socket`).
    #[arg(long, value_name = "PATH", default_value = crate::config::DEFAULT_ADMIN_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct BlockArgs {
    /// Address (a /32 or /128) or CIDR prefix.
    #[arg(value_name = "ADDR|CIDR")]
    pub target: String,
    /// How long: seconds, or a number with a unit (90s, 10m, 2h, 1d); 1s to 30d.
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: String,
    /// Why (kept with the block, shown by `blocks`, written to the audit log).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

#[derive(Debug, Args)]
pub struct UnblockArgs {
    /// The blocked address or prefix.
    #[arg(value_name = "ADDR|CIDR")]
    pub target: String,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

#[derive(Debug, Args)]
pub struct BlocksArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check a hash-chained audit log; names the first line that was edited,
    /// removed or reordered. Exit 0 if intact, 1 if broken, 2 if unreadable.
    Verify {
        /// The audit log (the `audit_log` of the policy's [agent] section).
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Source address.
    #[arg(long)]
    pub src: IpAddr,
    /// Destination address.
    #[arg(long)]
    pub dst: IpAddr,
    /// Transport protocol (tcp sends a SYN; icmp/icmpv6 an echo request
    /// unless --icmp-type is given).
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub proto: Proto,
    /// Destination port (tcp, udp).
    #[arg(long)]
    pub dport: Option<u16>,
    /// Source port (tcp, udp).
    #[arg(long)]
    pub sport: Option<u16>,
    /// ICMP or ICMPv6 type (icmp, icmpv6); default: echo request.
    #[arg(long, value_name = "TYPE")]
    pub icmp_type: Option<u8>,
    /// Direction as the node sees the packet: ingress (arriving; lists
    /// apply) or egress (leaving).
    #[arg(long, value_enum, default_value_t = Direction::Ingress)]
    pub direction: Direction,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Policy file (TOML). Without it, the embedded default policy is used.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Policy file (TOML). Without it, the embedded default policy is used.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to enforce on; repeat for several. Replaces the config's list.
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    pub ifaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// XDP attach mode; overrides the config.
    #[arg(long, value_enum, value_name = "MODE")]
    pub xdp_mode: Option<XdpModeArg>,
    /// Metrics listen address (IP:PORT); overrides the config.
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<SocketAddr>,
    /// bpffs directory for pinned maps and links; overrides the config.
    #[arg(long, value_name = "DIR")]
    pub pin_path: Option<PathBuf>,
    /// On SIGTERM/SIGINT, leave programs attached and maps pinned so the next
    /// agent takes over without a gap in enforcement.
    #[arg(long)]
    pub persist: bool,
    /// Seconds between checks of the config file for changes, 0 to 86400
    /// (0: only SIGHUP).
    // Bounded: the timer adds the interval to the current instant, which
    // overflows (a panic, in the running agent) for values near u64::MAX.
    #[arg(long, value_name = "SECONDS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(0..=MAX_WATCH_INTERVAL))]
    pub watch_interval: u64,
    /// Kernel debug logging (aya-log): every drop and audit the kernel
    /// decides is logged by the agent (target `kernel`). Costs a log record
    /// per such packet: for troubleshooting, not for floods. Off by default.
    #[arg(long)]
    pub kernel_debug: bool,
}

/// Longest `--watch-interval`: a day.
pub const MAX_WATCH_INTERVAL: u64 = 86_400;

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Do not require the interfaces to exist on this machine.
    #[arg(long)]
    pub skip_interface_check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

impl From<XdpModeArg> for XdpModeSetting {
    fn from(m: XdpModeArg) -> Self {
        match m {
            XdpModeArg::Auto => XdpModeSetting::Auto,
            XdpModeArg::Native => XdpModeSetting::Native,
            XdpModeArg::Generic => XdpModeSetting::Generic,
        }
    }
}
