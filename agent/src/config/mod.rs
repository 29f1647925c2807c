//! The policy file: TOML schema, loading, validation.
//!
//! Loading never stops at the first semantic problem: every error found is
//! returned, each with file, line and column (`tierguard check` prints them all).

mod error;
mod failsafe;
pub mod files;
mod limits;
mod prefixes;
mod segmentation;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::Deserialize;
use toml::Spanned;

pub use error::{ConfigError, ConfigErrors, Source, line_col};
pub use failsafe::{BUILTIN_FAILSAFE, FailsafeAllow, FailsafeConfig, FailsafeEntry};
pub use limits::{
    Limit, LimitProtocol, Threshold, ZoneTarget, format_duration,
    interface_errors as limit_interface_errors,
};
pub use prefixes::{ListLine, parse_list_entries, parse_list_text, parse_prefix};
pub use segmentation::{
    FlowsConfig, Mode, Protocol, RESERVED_ZONE_NAMES, Rule, SegmentationConfig, Zone, ZoneRef,
    zone_id, zone_ids,
};
use tierguard_common::maps::{ListAction, MAX_LISTS};
use tierguard_common::segment::FLOW_CAPACITY;
pub use values::{
    MAX_DURATION, MIN_DURATION, Ranges, duration_text_secs, format_ranges, merge_ranges,
};

/// The default policy, embedded in the binary and used when no --config is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/default.toml");
pub const EMBEDDED_NAME: &str = "<embedded default>";

pub const DEFAULT_METRICS_ADDRESS: &str = "0.0.0.0:9642";
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/tierguard";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/tierguard/admin.sock";
/// Bounds of `[agent] flow_capacity`. Below the minimum, a few busy CPUs'
/// LRU lists would evict live flows; above the maximum the table alone takes
/// about 450 MiB of kernel memory (about 112 bytes a flow).
pub const MIN_FLOW_CAPACITY: u32 = 1024;
pub const MAX_FLOW_CAPACITY: u32 = 4 * 1024 * 1024;
/// Bad lines of one list or zone file reported one by one; the rest are
/// counted in one more error. A file of the wrong kind (a binary, an HTML
/// error page) would otherwise bury the output, the reload log line and
/// the audit record under a million errors.
pub const MAX_FILE_ERRORS: usize = 100;
/// Longest accepted list or interface name; names appear in metric labels.
pub const MAX_NAME_LEN: usize = 64;

// ---- the file as written ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
// Each Raw table says what it is in type errors (`failsafe = 1`:
// "expected the [failsafe] table"), not its Rust name (`struct RawFailsafe`).
#[serde(expecting = "a policy (TOML tables)")]
struct RawConfig {
    mode: Option<Spanned<String>>,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    lists: Vec<RawList>,
    #[serde(default)]
    events: RawEvents,
    segmentation: Option<segmentation::RawSegmentation>,
    #[serde(default)]
    flows: segmentation::RawFlows,
    #[serde(default)]
    zones: Vec<segmentation::RawZone>,
    #[serde(default)]
    rules: Vec<segmentation::RawRule>,
    #[serde(default)]
    failsafe: failsafe::RawFailsafe,
    #[serde(default)]
    limits: Vec<limits::RawLimit>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [events] table")]
struct RawEvents {
    enabled: Option<bool>,
    rate_per_reason: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
    rate_per_source: Option<Spanned<i64>>,
    burst_per_source: Option<Spanned<i64>>,
    global_rate: Option<Spanned<i64>>,
    output: Option<Spanned<String>>,
    file_max_bytes: Option<Spanned<i64>>,
    file_keep: Option<Spanned<i64>>,
    webhook_url: Option<Spanned<String>>,
    webhook_token_env: Option<Spanned<String>>,
    webhook_token_file: Option<Spanned<String>>,
    webhook_batch_max: Option<Spanned<i64>>,
    webhook_flush_ms: Option<Spanned<i64>>,
    webhook_queue: Option<Spanned<i64>>,
    webhook_max_attempts: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [agent] table")]
struct RawAgent {
    #[serde(default)]
    interfaces: Vec<Spanned<String>>,
    #[serde(default)]
    xdp_mode: XdpModeSetting,
    metrics_address: Option<Spanned<String>>,
    pin_path: Option<Spanned<String>>,
    audit_log: Option<Spanned<String>>,
    admin_socket: Option<Spanned<String>>,
    flow_capacity: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[lists]] table")]
struct RawList {
    name: Spanned<String>,
    action: ActionSetting,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    files: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ActionSetting {
    Allow,
    Deny,
}

/// How the XDP program is attached.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    Native,
    Generic,
}

impl XdpModeSetting {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "native" => Some(Self::Native),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }
}

// ---- the validated policy ----

/// Where a value came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The config's path, or `<embedded default>`.
    pub origin: String,
    pub agent: AgentConfig,
    pub lists: Vec<List>,
    pub events: EventsConfig,
    /// Enforce, or only report (`mode = "audit"`).
    pub mode: Mode,
    pub segmentation: SegmentationConfig,
    pub flows: FlowsConfig,
    /// Configured zones; zone id = index + 2 (0 `world`, 1 `host`).
    pub zones: Vec<Zone>,
    /// Rules; rule id = index.
    pub rules: Vec<Rule>,
    pub failsafe: FailsafeConfig,
    /// Volumetric limits; limit id = index.
    pub limits: Vec<Limit>,
}

/// Where event lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutput {
    Stdout,
    /// A file, rotated by size.
    File(PathBuf),
}

/// The `[events]` section: security events for drops, sampled in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    pub enabled: bool,
    /// Events per second per reason (node-wide).
    pub rate_per_reason: u64,
    /// Events a reason may emit at once after a quiet period.
    pub burst: u64,
    /// Events per second per source address and reason (node-wide), so one
    /// noisy source cannot use up a reason's budget.
    pub rate_per_source: u64,
    /// Events one source may emit at once for a reason after a quiet period.
    pub burst_per_source: u64,
    /// Events per second over all reasons (node-wide); its burst is one second's worth.
    pub global_rate: u64,
    pub output: EventOutput,
    /// Size at which the event file is rotated.
    pub file_max_bytes: u64,
    /// Rotated files kept besides the live one.
    pub file_keep: u32,
    /// An HTTP webhook that receives every event line too, if set.
    pub webhook: Option<WebhookConfig>,
}

/// `[events] webhook_*`: where and how event batches are POSTed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The URL as written, for messages.
    pub url: String,
    /// Host to connect to (a name or an IP address, without brackets).
    pub host: String,
    pub port: u16,
    /// The Host header: `host` or `host:port` as written in the URL.
    pub host_header: String,
    /// Request target: path and query, at least `/`.
    pub path: String,
    /// Bearer token, if one was configured. Its Debug output is redacted.
    pub token: Option<Token>,
    /// Events per POST.
    pub batch_max: usize,
    /// Longest an event waits for its batch to fill, in milliseconds.
    pub flush_ms: u64,
    /// Events the webhook's queue holds before new ones are shed.
    pub queue: usize,
    /// Attempts per batch before it is given up.
    pub max_attempts: u32,
}

/// A secret: never shown by Debug and has no Display.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(s: String) -> Token {
        Token(s)
    }

    /// The secret itself, for the Authorization header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Bounds and defaults of the webhook settings.
pub const WEBHOOK_DEFAULT_BATCH_MAX: u64 = 100;
pub const WEBHOOK_MAX_BATCH_MAX: u64 = 10_000;
pub const WEBHOOK_DEFAULT_FLUSH_MS: u64 = 1000;
pub const WEBHOOK_MIN_FLUSH_MS: u64 = 10;
pub const WEBHOOK_MAX_FLUSH_MS: u64 = 600_000;
pub const WEBHOOK_DEFAULT_QUEUE: u64 = 10_000;
pub const WEBHOOK_MAX_QUEUE: u64 = 1_000_000;
pub const WEBHOOK_DEFAULT_MAX_ATTEMPTS: u64 = 10;
pub const WEBHOOK_MAX_MAX_ATTEMPTS: u64 = 100;
/// Longest accepted token, in bytes.
pub const WEBHOOK_MAX_TOKEN_LEN: usize = 8192;

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: false,
            rate_per_reason: 100,
            burst: 200,
            rate_per_source: 10,
            burst_per_source: 20,
            global_rate: 1000,
            output: EventOutput::Stdout,
            file_max_bytes: 100 * 1024 * 1024,
            file_keep: 5,
            webhook: None,
        }
    }
}

/// Bounds of `file_max_bytes` and `file_keep`.
pub const EVENT_FILE_MIN_BYTES: u64 = 4096;
pub const EVENT_FILE_MAX_BYTES: u64 = 1 << 40;
pub const EVENT_FILE_MAX_KEEP: u64 = 1000;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeSetting,
    pub metrics_address: SocketAddr,
    pub pin_path: PathBuf,
    /// Hash-chained record of every policy change (absolute path), if set.
    pub audit_log: Option<PathBuf>,
    /// The admin API's Unix socket.
    pub admin_socket: PathBuf,
    /// Flows the flow table holds (`TG_FLOWS`' capacity, fixed at load).
    pub flow_capacity: u32,
}

#[derive(Debug, Clone)]
pub struct List {
    pub name: String,
    pub action: ListAction,
    pub description: Option<String>,
    /// Inline CIDRs first, then each file's, in order.
    pub prefixes: Vec<IpNetwork>,
    /// Where the list was defined.
    pub origin: Origin,
    /// List files read, for `check`'s summary.
    pub files: Vec<PathBuf>,
}

impl Config {
    /// The list and zone files the policy reads, in order: what the running
    /// agent watches for changes besides the config itself.
    pub fn data_files(&self) -> Vec<PathBuf> {
        let lists = self.lists.iter().flat_map(|l| l.files.iter());
        let zones = self.zones.iter().flat_map(|z| z.files.iter());
        lists.chain(zones).cloned().collect()
    }

    /// Loads and validates a config file. List files are relative to it.
    pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
        let name = path.display().to_string();
        let text = read_config_text(path).map_err(|e| ConfigErrors(vec![e]))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::load_str(&text, &name, &base)
    }

    /// The embedded default policy.
    pub fn embedded_default() -> Result<Config, ConfigErrors> {
        Config::load_str(EMBEDDED_DEFAULT, EMBEDDED_NAME, Path::new("."))
    }

    /// Loads and validates config text named `name`; list files resolve against `base`.
    pub fn load_str(text: &str, name: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let src = Source::new(name, text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            ConfigErrors(vec![src.error_at(offset, e.message().trim().to_string())])
        })?;
        let mut errors = Vec::new();
        let agent = validate_agent(&src, raw.agent, &mut errors);
        let lists = validate_lists(&src, base, raw.lists, &mut errors);
        let events = validate_events(&src, base, raw.events, &mut errors);
        let mode = segmentation::validate_mode(&src, raw.mode.as_ref(), &mut errors);
        let zones_or_rules = !raw.zones.is_empty() || !raw.rules.is_empty();
        let seg = segmentation::validate_segmentation(
            &src,
            raw.segmentation,
            zones_or_rules,
            &mut errors,
        );
        let flows = segmentation::validate_flows(&src, raw.flows, &mut errors);
        let zones = segmentation::validate_zones(&src, base, raw.zones, &mut errors);
        let rules = segmentation::validate_rules(&src, &zones, raw.rules, &mut errors);
        let failsafe = failsafe::validate_failsafe(&src, raw.failsafe, &mut errors);
        let zone_names: Vec<String> = zones.iter().map(|z| z.name.clone()).collect();
        let limits = limits::validate_limits(&src, raw.limits, &zone_names, &mut errors);
        if errors.is_empty() {
            Ok(Config {
                origin: name.to_string(),
                agent,
                lists,
                events,
                mode,
                segmentation: seg,
                flows,
                zones,
                rules,
                failsafe,
                limits,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Number of IPv4 and IPv6 prefixes over all lists.
    pub fn prefix_counts(&self) -> (usize, usize) {
        let v4 = self
            .lists
            .iter()
            .flat_map(|l| &l.prefixes)
            .filter(|p| p.is_ipv4())
            .count();
        let total: usize = self.lists.iter().map(|l| l.prefixes.len()).sum();
        (v4, total - v4)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Reads a config file as text: a regular file of at most
/// [`files::MAX_CONFIG_BYTES`], in UTF-8 (a leading byte order mark dropped).
pub fn read_config_text(path: &Path) -> Result<String, ConfigError> {
    let name = path.display().to_string();
    let bytes = files::read_bounded(path, files::MAX_CONFIG_BYTES).map_err(|e| ConfigError {
        file: name.clone(),
        line: 0,
        column: 0,
        message: format!("cannot read config: {e}"),
    })?;
    files::decode_text(bytes).map_err(|e| ConfigError {
        file: name,
        line: e.line,
        column: e.column,
        message: format!("cannot read config: {e}"),
    })
}

/// Reads a prefix file that the `kind` ("list", "zone") named `owner` lists,
/// relative to `base`: its prefixes with where each is written. An
/// unreadable file is an error at its name in the config, a file that is
/// not UTF-8 or a bad line an error at that place of the file.
fn read_prefix_file(
    src: &Source,
    f: &Spanned<String>,
    base: &Path,
    kind: &str,
    owner: &str,
    errors: &mut Vec<ConfigError>,
) -> (PathBuf, Vec<prefixes::ListLine>) {
    let path = base.join(f.get_ref());
    let shown = path.display().to_string();
    let bytes = match files::read_bounded(&path, files::MAX_LIST_FILE_BYTES) {
        Ok(b) => b,
        Err(e) => {
            errors.push(src.error_span(
                &f.span(),
                format!("{kind} '{owner}': cannot read {kind} file '{shown}': {e}"),
            ));
            return (path, Vec::new());
        }
    };
    let text = match files::decode_text(bytes) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError {
                file: shown,
                line: e.line,
                column: e.column,
                message: format!("{kind} '{owner}': {e}"),
            });
            return (path, Vec::new());
        }
    };
    let (lines, line_errors) = parse_list_entries(&text);
    let more = line_errors.len().saturating_sub(MAX_FILE_ERRORS);
    errors.extend(
        line_errors
            .into_iter()
            .take(MAX_FILE_ERRORS)
            .map(|e| ConfigError {
                file: shown.clone(),
                line: e.line,
                column: e.column,
                message: e.message,
            }),
    );
    if more > 0 {
        errors.push(ConfigError {
            file: shown,
            line: 0,
            column: 0,
            message: format!("{more} more bad lines not shown (the first {MAX_FILE_ERRORS} are)"),
        });
    }
    (path, lines)
}

/// The message for an invalid name of a `kind` ("list", "zone"...).
fn invalid_name(kind: &str, name: &str) -> String {
    let name = error::clip(name);
    format!(
        "{kind} name '{name}' must be 1 to {MAX_NAME_LEN} characters of letters, digits, '-', '_' or '.'"
    )
}

/// The message for a name defined twice.
fn duplicate_name(kind: &str, name: &str, first_line: usize) -> String {
    let name = error::clip(name);
    format!("duplicate {kind} name '{name}' (first defined at line {first_line})")
}

fn valid_interface_name(name: &str) -> bool {
    !(name.is_empty() || name.len() >= libc::IF_NAMESIZE || name.contains(['/', ' ', '\0']))
}

/// An integer setting `key` within `range` (`unit` ends the error's text),
/// or `default` when it is absent or out of range (then with an error at
/// the value).
fn int_in_range(
    src: &Source,
    v: &Option<Spanned<i64>>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
    default: u64,
    errors: &mut Vec<ConfigError>,
) -> u64 {
    let Some(v) = v else { return default };
    let n = *v.get_ref();
    match u64::try_from(n) {
        Ok(n) if range.contains(&n) => n,
        _ => {
            let (min, max) = (range.start(), range.end());
            errors.push(src.error_span(
                &v.span(),
                format!("{key} = {n} is out of range: expected {min} to {max}{unit}"),
            ));
            default
        }
    }
}

fn validate_agent(src: &Source, raw: RawAgent, errors: &mut Vec<ConfigError>) -> AgentConfig {
    let mut interfaces: Vec<String> = Vec::new();
    for i in &raw.interfaces {
        let name = i.get_ref();
        if !valid_interface_name(name) {
            errors
                .push(src.error_span(&i.span(), format!("'{name}' is not a valid interface name")));
        } else if interfaces.contains(name) {
            errors.push(src.error_span(&i.span(), format!("interface '{name}' is listed twice")));
        } else {
            interfaces.push(name.clone());
        }
    }
    let metrics_address = match &raw.metrics_address {
        None => DEFAULT_METRICS_ADDRESS
            .parse()
            .expect("default address parses"),
        Some(a) => match parse_listen_address(a.get_ref()) {
            Ok(addr) => addr,
            Err(msg) => {
                errors.push(src.error_span(&a.span(), msg));
                DEFAULT_METRICS_ADDRESS
                    .parse()
                    .expect("default address parses")
            }
        },
    };
    let pin_path = match &raw.pin_path {
        None => PathBuf::from(DEFAULT_PIN_PATH),
        Some(p) => {
            let path = PathBuf::from(p.get_ref());
            if !path.is_absolute() {
                errors.push(src.error_span(
                    &p.span(),
                    "pin_path must be an absolute path under a bpffs mount",
                ));
            }
            path
        }
    };
    let audit_log = raw.audit_log.as_ref().map(|a| {
        let path = PathBuf::from(a.get_ref());
        if !path.is_absolute() || a.get_ref().ends_with('/') {
            errors.push(src.error_span(&a.span(), "audit_log must be an absolute path to a file"));
        }
        path
    });
    let admin_socket = match &raw.admin_socket {
        None => PathBuf::from(DEFAULT_ADMIN_SOCKET),
        Some(a) => {
            let text = a.get_ref();
            // sun_path holds 108 bytes, the terminating NUL included.
            if !text.starts_with('/') || text.ends_with('/') || text.len() > 107 {
                errors.push(src.error_span(
                    &a.span(),
                    "admin_socket must be an absolute path to a socket file, at most 107 bytes long",
                ));
            }
            PathBuf::from(text)
        }
    };
    let flow_capacity = int_in_range(
        src,
        &raw.flow_capacity,
        "agent.flow_capacity",
        u64::from(MIN_FLOW_CAPACITY)..=u64::from(MAX_FLOW_CAPACITY),
        " flows",
        u64::from(FLOW_CAPACITY),
        errors,
    ) as u32;
    AgentConfig {
        interfaces,
        xdp_mode: raw.xdp_mode,
        metrics_address,
        pin_path,
        audit_log,
        admin_socket,
        flow_capacity,
    }
}

fn validate_events(
    src: &Source,
    base: &Path,
    raw: RawEvents,
    errors: &mut Vec<ConfigError>,
) -> EventsConfig {
    let d = EventsConfig::default();
    let max_rate = tierguard_common::event::MAX_RATE;
    let mut num = |v: &Option<Spanned<i64>>, what: &str, min: u64, max: u64, default: u64| {
        int_in_range(
            src,
            v,
            &format!("events.{what}"),
            min..=max,
            "",
            default,
            errors,
        )
    };
    let rate_per_reason = num(
        &raw.rate_per_reason,
        "rate_per_reason",
        1,
        max_rate,
        d.rate_per_reason,
    );
    let burst = num(&raw.burst, "burst", 1, max_rate, d.burst);
    let rate_per_source = num(
        &raw.rate_per_source,
        "rate_per_source",
        1,
        max_rate,
        d.rate_per_source,
    );
    let burst_per_source = num(
        &raw.burst_per_source,
        "burst_per_source",
        1,
        max_rate,
        d.burst_per_source,
    );
    let global_rate = num(&raw.global_rate, "global_rate", 1, max_rate, d.global_rate);
    let file_max_bytes = num(
        &raw.file_max_bytes,
        "file_max_bytes",
        EVENT_FILE_MIN_BYTES,
        EVENT_FILE_MAX_BYTES,
        d.file_max_bytes,
    );
    let file_keep = num(
        &raw.file_keep,
        "file_keep",
        1,
        EVENT_FILE_MAX_KEEP,
        u64::from(d.file_keep),
    ) as u32;
    let batch_max = num(
        &raw.webhook_batch_max,
        "webhook_batch_max",
        1,
        WEBHOOK_MAX_BATCH_MAX,
        WEBHOOK_DEFAULT_BATCH_MAX,
    ) as usize;
    let flush_ms = num(
        &raw.webhook_flush_ms,
        "webhook_flush_ms",
        WEBHOOK_MIN_FLUSH_MS,
        WEBHOOK_MAX_FLUSH_MS,
        WEBHOOK_DEFAULT_FLUSH_MS,
    );
    let queue = num(
        &raw.webhook_queue,
        "webhook_queue",
        1,
        WEBHOOK_MAX_QUEUE,
        WEBHOOK_DEFAULT_QUEUE,
    ) as usize;
    let max_attempts = num(
        &raw.webhook_max_attempts,
        "webhook_max_attempts",
        1,
        WEBHOOK_MAX_MAX_ATTEMPTS,
        WEBHOOK_DEFAULT_MAX_ATTEMPTS,
    ) as u32;
    let output = match &raw.output {
        None => EventOutput::Stdout,
        Some(o) if o.get_ref() == "stdout" => EventOutput::Stdout,
        Some(o) => {
            let text = o.get_ref();
            if text.is_empty() || text.ends_with('/') || text.contains('\0') {
                errors.push(src.error_span(
                    &o.span(),
                    format!("events.output '{text}' is neither \"stdout\" nor a file path"),
                ));
                EventOutput::Stdout
            } else {
                EventOutput::File(base.join(text))
            }
        }
    };
    let webhook = validate_webhook(src, base, &raw, errors).map(|(target, token)| {
        let (url, host, port, host_header, path) = target;
        WebhookConfig {
            url,
            host,
            port,
            host_header,
            path,
            token,
            batch_max,
            flush_ms,
            queue,
            max_attempts,
        }
    });
    EventsConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        rate_per_reason,
        burst,
        rate_per_source,
        burst_per_source,
        global_rate,
        output,
        file_max_bytes,
        file_keep,
        webhook,
    }
}

type WebhookTarget = (String, String, u16, String, String);

/// The webhook URL and token; None (with errors pushed) when they are unusable
/// or when no URL is set (then the other webhook keys are refused).
fn validate_webhook(
    src: &Source,
    base: &Path,
    raw: &RawEvents,
    errors: &mut Vec<ConfigError>,
) -> Option<(WebhookTarget, Option<Token>)> {
    let Some(url) = &raw.webhook_url else {
        for (key, span) in [
            (
                "webhook_token_env",
                raw.webhook_token_env.as_ref().map(|v| v.span()),
            ),
            (
                "webhook_token_file",
                raw.webhook_token_file.as_ref().map(|v| v.span()),
            ),
            (
                "webhook_batch_max",
                raw.webhook_batch_max.as_ref().map(|v| v.span()),
            ),
            (
                "webhook_flush_ms",
                raw.webhook_flush_ms.as_ref().map(|v| v.span()),
            ),
            (
                "webhook_queue",
                raw.webhook_queue.as_ref().map(|v| v.span()),
            ),
            (
                "webhook_max_attempts",
                raw.webhook_max_attempts.as_ref().map(|v| v.span()),
            ),
        ] {
            if let Some(span) = span {
                errors.push(src.error_span(
                    &span,
                    format!("events.{key} is set but events.webhook_url is not"),
                ));
            }
        }
        return None;
    };
    let target = match parse_webhook_url(url.get_ref()) {
        Ok(t) => Some(t),
        Err(msg) => {
            errors.push(src.error_span(&url.span(), msg));
            None
        }
    };
    let token = match (&raw.webhook_token_env, &raw.webhook_token_file) {
        (Some(_), Some(f)) => {
            errors.push(src.error_span(
                &f.span(),
                "events.webhook_token_env and events.webhook_token_file are mutually exclusive: set one",
            ));
            None
        }
        (Some(e), None) => {
            let name = e.get_ref();
            let valid_name =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                errors.push(src.error_span(
                    &e.span(),
                    format!(
                        "events.webhook_token_env '{name}' is not an environment variable name"
                    ),
                ));
                None
            } else {
                match std::env::var(name) {
                    Ok(v) => match check_token(v.trim()) {
                        Ok(t) => Some(t),
                        Err(why) => {
                            errors.push(src.error_span(
                                &e.span(),
                                format!(
                                    "the webhook token in environment variable {name} is {why}"
                                ),
                            ));
                            None
                        }
                    },
                    Err(std::env::VarError::NotPresent) => {
                        errors.push(src.error_span(
                            &e.span(),
                            format!(
                                "environment variable {name} (events.webhook_token_env) is not set"
                            ),
                        ));
                        None
                    }
                    Err(std::env::VarError::NotUnicode(_)) => {
                        errors.push(src.error_span(
                            &e.span(),
                            format!("the webhook token in environment variable {name} is not valid UTF-8"),
                        ));
                        None
                    }
                }
            }
        }
        (None, Some(f)) => {
            let path = base.join(f.get_ref());
            let shown = path.display().to_string();
            // A token is at most 8 KiB: 64 KiB leaves room for whitespace
            // around it, and a device or FIFO named by mistake is refused.
            match files::read_bounded(&path, 64 << 10) {
                Err(e) => {
                    // An I/O error by its kind alone ("permission denied").
                    let why = match e {
                        files::ReadError::Io(e) => e.kind().to_string(),
                        other => other.to_string(),
                    };
                    errors.push(src.error_span(
                        &f.span(),
                        format!("cannot read webhook token file {shown}: {why}"),
                    ));
                    None
                }
                Ok(bytes) => match std::str::from_utf8(&bytes) {
                    Err(_) => {
                        errors.push(src.error_span(
                            &f.span(),
                            format!("webhook token file {shown} is not valid UTF-8"),
                        ));
                        None
                    }
                    Ok(text) => match check_token(text.trim()) {
                        Ok(t) => Some(t),
                        Err(why) => {
                            errors.push(src.error_span(
                                &f.span(),
                                format!("the webhook token in file {shown} is {why}"),
                            ));
                            None
                        }
                    },
                },
            }
        }
        (None, None) => None,
    };
    Some((target?, token))
}

/// A token must fit in a header line: printable ASCII, no spaces. The
/// reason never quotes the token.
fn check_token(t: &str) -> Result<Token, &'static str> {
    if t.is_empty() {
        return Err("empty");
    }
    if t.len() > WEBHOOK_MAX_TOKEN_LEN {
        return Err("too long (more than 8192 bytes)");
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("malformed: expected one line of printable ASCII without spaces");
    }
    Ok(Token::new(t.to_string()))
}

/// Parses `http://host[:port][/path]`: (url, host, port, Host header, target).
pub fn parse_webhook_url(url: &str) -> Result<WebhookTarget, String> {
    let bad = |why: &str| format!("events.webhook_url '{url}' {why}");
    if url.len() > 2048 {
        return Err("events.webhook_url is longer than 2048 bytes".to_string());
    }
    if url.starts_with("https://") {
        return Err(bad(
            "uses https, which the agent does not speak: point it at a local shipper or sidecar that forwards over TLS (http://127.0.0.1:PORT/...)",
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(bad("is not an http:// URL"));
    };
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "contains spaces or characters that are not printable ASCII",
        ));
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let path = match path.split_once('#') {
        Some((p, _)) => p.to_string(),
        None => path,
    };
    if authority.contains('@') {
        return Err(bad(
            "has user information: put the token in webhook_token_env or webhook_token_file",
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return Err(bad("has an unclosed [ in its host"));
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("has an invalid IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("has junk after its host"))?,
            ),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
    {
        return Err(bad("has no valid host"));
    }
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad("has an invalid port: expected 1 to 65535")),
        },
    };
    Ok((url.to_string(), host, port, authority.to_string(), path))
}

/// Parses a metrics listen address: `host:port` with an IP host.
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("'{s}' is not a listen address: expected IP:PORT, like 0.0.0.0:9642 or [::1]:9642")
    })
}

fn validate_lists(
    src: &Source,
    base: &Path,
    raw: Vec<RawList>,
    errors: &mut Vec<ConfigError>,
) -> Vec<List> {
    let mut lists: Vec<List> = Vec::new();
    if raw.len() > MAX_LISTS as usize {
        errors.push(ConfigError {
            file: src.name.to_string(),
            line: 0,
            column: 0,
            message: format!(
                "{} lists configured; at most {MAX_LISTS} are supported",
                raw.len()
            ),
        });
    }
    for r in raw {
        let name = r.name.get_ref().clone();
        let (line, column) = src.line_col(r.name.span().start);
        let origin = Origin {
            file: src.name.to_string(),
            line,
            column,
        };
        if !valid_name(&name) {
            errors.push(src.error_span(&r.name.span(), invalid_name("list", &name)));
        }
        if let Some(first) = lists.iter().find(|l| l.name == name) {
            errors.push(src.error_span(
                &r.name.span(),
                duplicate_name("list", &name, first.origin.line),
            ));
        }
        let mut prefixes = Vec::new();
        for c in &r.cidrs {
            match parse_prefix(c.get_ref()) {
                Ok(n) => prefixes.push(n),
                Err(msg) => errors.push(src.error_span(&c.span(), msg)),
            }
        }
        let mut files = Vec::new();
        for f in &r.files {
            let (path, lines) = read_prefix_file(src, f, base, "list", &name, errors);
            prefixes.extend(lines.into_iter().map(|l| l.net));
            files.push(path);
        }
        if r.cidrs.is_empty() && r.files.is_empty() {
            errors.push(src.error_span(
                &r.name.span(),
                format!("list '{name}' has neither cidrs nor files"),
            ));
        }
        let action = match r.action {
            ActionSetting::Allow => ListAction::Allow,
            ActionSetting::Deny => ListAction::Deny,
        };
        lists.push(List {
            name,
            action,
            description: r.description,
            prefixes,
            origin,
            files,
        });
    }
    lists
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_input;
#[cfg(test)]
mod tests_segmentation;
