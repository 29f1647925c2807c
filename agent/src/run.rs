//! `tierguard run`: the enforcement daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, Admin};
use crate::audit::{self, AuditLog};
use crate::check::{interface_errors, load};
use crate::cli::RunArgs;
use crate::config::{Config, ConfigErrors};
use crate::datapath::{Datapath, LoadOptions, SamplerReader, StatsReader};
use crate::events::{self, Context};
use crate::metrics::{self, Metrics, PolicyNames, limits::LimitMetrics};
use crate::policy::CompiledPolicy;

/// What the metrics endpoint reads.
struct Shared {
    metrics: Metrics,
    stats: Mutex<Option<StatsReader>>,
    /// Names behind the ids in kernel counters.
    names: RwLock<PolicyNames>,
    ready: AtomicBool,
    sampler: Mutex<Option<SamplerReader>>,
    /// What event enrichment needs from the live policy.
    event_ctx: Arc<RwLock<Context>>,
    /// The audit trail of policy changes, if `audit_log` is set.
    audit: Mutex<Option<AuditLog>>,
    /// The live policy's config, for the audit summary of the next change.
    live_config: Mutex<Option<Config>>,
    /// Limit counters and block gauges.
    limits: Arc<LimitMetrics>,
}

impl Shared {
    /// Appends an audit record; a failure is logged and enforcement goes on.
    fn audit(&self, trigger: &str, result: &str, fields: serde_json::Value, new: Option<&Config>) {
        let Ok(mut audit) = self.audit.lock() else {
            return;
        };
        let Some(log) = audit.as_mut() else { return };
        let old = self.live_config.lock().ok().and_then(|c| c.clone());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut r = serde_json::Map::new();
        r.insert("kind".into(), "policy_change".into());
        r.insert("time".into(), events::record::rfc3339(now).into());
        r.insert("node".into(), events::node_name().into());
        r.insert("trigger".into(), trigger.into());
        r.insert("result".into(), result.into());
        if let serde_json::Value::Object(f) = fields {
            r.extend(f);
        }
        if new.is_some() {
            r.insert("changes".into(), audit::summary(old.as_ref(), new));
        }
        if let Err(e) = log.append(r) {
            tracing::error!(error = %e, "cannot write the audit log; enforcement goes on");
        }
    }

    /// Appends a record made elsewhere (admin actions); a failure is logged.
    fn append_audit(&self, r: serde_json::Map<String, serde_json::Value>) {
        let Ok(mut audit) = self.audit.lock() else {
            return;
        };
        if let Some(log) = audit.as_mut()
            && let Err(e) = log.append(r)
        {
            tracing::error!(error = %e, "cannot write the audit log; enforcement goes on");
        }
    }
}

impl metrics::Endpoint for Shared {
    fn metrics(&self) -> String {
        let names = self.names.read().map(|l| l.clone()).unwrap_or_default();
        let stats = self.stats.lock().ok().and_then(|r| {
            r.as_ref()
                .and_then(|r| match r.read(names.lists.len(), names.rules.len()) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read kernel counters");
                        self.metrics
                            .scrape_errors
                            .with_label_values(&["counters"])
                            .inc();
                        None
                    }
                })
        });
        let sampler = self.sampler.lock().ok().and_then(|r| {
            r.as_ref().and_then(|r| match r.read() {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read event sampler counters");
                    self.metrics
                        .scrape_errors
                        .with_label_values(&["event_sampler"])
                        .inc();
                    None
                }
            })
        });
        let mut text = self
            .metrics
            .render_with(stats.as_ref(), &names, sampler.as_ref());
        let (limits, error) = self.limits.render();
        if let Some(e) = error {
            tracing::warn!(error = %e, "cannot read the limit counters");
            self.metrics
                .scrape_errors
                .with_label_values(&["limits"])
                .inc();
        }
        text.push_str(&limits);
        text
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn refused(&self, cause: &'static str) {
        self.metrics.http_refused.with_label_values(&[cause]).inc();
    }
}

/// Reads the kernel's aya-log records as they come (`--kernel-debug`).
fn start_kernel_log(datapath: &mut Datapath) {
    let Some(logger) = datapath.take_kernel_logger() else {
        tracing::warn!("kernel debug logging unavailable: the object has no aya-log buffer");
        return;
    };
    // SAFETY: the logger owns its ring buffer's map fd and keeps it open,
    // unchanged, for as long as the AsyncFd holds it.
    let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "kernel debug logging unavailable");
            return;
        }
    };
    tracing::info!("kernel debug logging on: drops and audits are logged with target \"kernel\"");
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable_mut().await else {
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
}

/// How often idle flows are freed and the flow table measured.
const FLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Frees expired flows and keeps the flow metrics current, on a thread of
/// its own: a full table is a few hundred thousand map syscalls.
fn start_flow_sweeper(pin_dir: &std::path::Path, metrics: &Metrics) {
    let mut sweeper = match crate::datapath::FlowSweeper::open(pin_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "flow table unavailable: no flow metrics, no sweeping");
            return;
        }
    };
    metrics.flow_capacity.set(i64::from(sweeper.capacity()));
    let (flows, expired, evictions) = (
        metrics.flows.clone(),
        metrics.flows_expired.clone(),
        metrics.flow_evictions.clone(),
    );
    std::thread::spawn(move || {
        let mut accounting = crate::datapath::FlowAccounting::default();
        let mut warned = false;
        loop {
            match sweeper.sweep() {
                Ok(s) => {
                    let (new_expired, new_evicted) = accounting.record(s);
                    flows.set(s.entries as i64);
                    expired.inc_by(new_expired);
                    evictions.inc_by(new_evicted);
                    warned = false;
                }
                Err(e) if !warned => {
                    tracing::warn!(error = %e, "cannot sweep the flow table");
                    warned = true;
                }
                Err(_) => {}
            }
            std::thread::sleep(FLOW_SWEEP_INTERVAL);
        }
    });
}

fn report(errors: &ConfigErrors) {
    for e in &errors.0 {
        eprintln!("error: {e}");
    }
}

/// Loads and compiles the policy; config errors are printed, not logged, so
/// they read the same as `tierguard check`.
fn prepare(args: &RunArgs) -> Result<(Config, CompiledPolicy), ConfigErrors> {
    let mut config = load(&args.config)?;
    if let Some(m) = args.xdp_mode {
        config.agent.xdp_mode = m.into();
    }
    if let Some(a) = args.metrics_address {
        config.agent.metrics_address = a;
    }
    let mut errors = Vec::new();
    if let Some(p) = &args.pin_path {
        if !p.is_absolute() {
            errors.push(crate::config::ConfigError {
                file: "command line".into(),
                line: 0,
                column: 0,
                message: format!(
                    "--pin-path '{}' must be an absolute path under a bpffs mount",
                    p.display()
                ),
            });
        }
        config.agent.pin_path = p.clone();
    }
    errors.extend(interface_errors(&config, !args.config.ifaces.is_empty()));
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let policy = compile_for_host(&config, crate::policy::host_addresses())?;
    Ok((config, policy))
}

/// Compiles the policy for the node's addresses. Without them the load is
/// refused: an empty `host` zone would change what the policy allows (at
/// start nothing is attached; on a reload the live policy stays).
fn compile_for_host(
    config: &Config,
    hosts: std::io::Result<Vec<std::net::IpAddr>>,
) -> Result<CompiledPolicy, ConfigErrors> {
    let hosts = hosts.map_err(|e| {
        ConfigErrors(vec![crate::config::ConfigError {
            file: "node".into(),
            line: 0,
            column: 0,
            message: format!("cannot list the node's addresses for the host zone: {e}"),
        }])
    })?;
    CompiledPolicy::compile(config, &hosts)
}

/// The signals the agent acts on, installed before anything else so that a
/// signal during start-up is handled, not fatal (SIGHUP's default is to exit).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What the watched files looked like when the policy was loaded: read before
/// loading, so a change that races the load causes one extra reload rather
/// than none.
struct Baseline {
    config_text: Option<Vec<u8>>,
    file_stamps: Vec<Option<(u64, std::time::SystemTime)>>,
}

pub async fn run(args: RunArgs) -> ExitCode {
    let started = Instant::now();
    let signals = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(term), Ok(int), Ok(hup)) => Signals { term, int, hup },
        _ => {
            eprintln!("error: cannot install signal handlers; nothing was attached");
            return ExitCode::FAILURE;
        }
    };
    let config_text = args.config.config.as_deref().and_then(read_watched);
    let (config, policy) = match prepare(&args) {
        Ok(p) => p,
        Err(e) => {
            report(&e);
            eprintln!("policy refused; nothing was attached");
            return ExitCode::from(2);
        }
    };
    let baseline = Baseline {
        config_text,
        file_stamps: file_stamps(&config.data_files()),
    };
    let listener = match tokio::net::TcpListener::bind(config.agent.metrics_address).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot listen for metrics on {}: {e}; nothing was attached",
                config.agent.metrics_address
            );
            return ExitCode::FAILURE;
        }
    };

    let options = LoadOptions {
        kernel_debug: args.kernel_debug,
        flow_capacity: config.agent.flow_capacity,
        ..LoadOptions::default()
    };
    let mut datapath = match Datapath::load_opts(&config.agent.pin_path, &options) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            eprintln!("nothing was attached");
            return ExitCode::FAILURE;
        }
    };
    if args.kernel_debug {
        start_kernel_log(&mut datapath);
    }
    let adopted = datapath.adopted();
    // Policy first, then attach: the program never runs on an empty policy.
    let generation = match datapath.apply(&policy) {
        Ok(g) => g,
        Err(e) => {
            eprintln!(
                "error: cannot write the policy into the kernel maps: {}",
                error_chain(&e)
            );
            abandon(datapath, adopted);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = datapath.set_events(&config.events) {
        eprintln!(
            "error: cannot write the event settings into the kernel: {}",
            error_chain(&e)
        );
        abandon(datapath, adopted);
        return ExitCode::FAILURE;
    }
    if let Err(e) = datapath.install() {
        eprintln!("error: {}", error_chain(&e));
        abandon(datapath, adopted);
        return ExitCode::FAILURE;
    }
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        stats: Mutex::new(None),
        names: RwLock::new(PolicyNames::of(&policy)),
        ready: AtomicBool::new(false),
        sampler: Mutex::new(None),
        event_ctx: Arc::new(RwLock::new(Context {
            node: events::node_name(),
            generation,
            policy_hash: policy.hash.clone(),
            lists: policy.lists.iter().map(|l| l.name.clone()).collect(),
            limits: policy.limits.infos.iter().map(|l| l.name.clone()).collect(),
            rules: policy.segmentation.rules.iter().map(|r| r.name.clone()).collect(),
            zones: policy.segmentation.zones.iter().map(|z| z.name.clone()).collect(),
            boot_offset_ns: events::record::boot_offset_ns(),
        })),
        audit: Mutex::new(config.agent.audit_log.as_deref().and_then(|p| match AuditLog::open(p) {
            Ok(log) => Some(log),
            Err(e) => {
                tracing::error!(error = %e, "audit log unavailable; policy changes are logged but not chained");
                None
            }
        })),
        live_config: Mutex::new(None),
        limits: Arc::new(LimitMetrics::new(crate::datapath::state_bytes(
            crate::datapath::cpus(),
        ))),
    });
    for iface in &config.agent.interfaces {
        match datapath.attach(iface, config.agent.xdp_mode) {
            Ok(mode) => {
                let kept = datapath.attachments().last().is_some_and(|a| a.adopted);
                if kept {
                    tracing::info!(
                        iface,
                        mode = mode.name(),
                        "kept the existing link; enforcement handed over through the program array"
                    );
                } else {
                    tracing::info!(iface, mode = mode.name(), "XDP dispatcher attached");
                }
                shared
                    .metrics
                    .attach_mode
                    .with_label_values(&[iface.as_str(), mode.name()])
                    .set(1);
            }
            Err(e) => {
                eprintln!("error: {}", error_chain(&e));
                if adopted {
                    eprintln!(
                        "the links pinned by the earlier agent stay attached and enforce the policy just applied"
                    );
                } else {
                    eprintln!("detaching from every interface; nothing stays attached");
                }
                abandon(datapath, adopted);
                return ExitCode::FAILURE;
            }
        }
    }
    match datapath.remove_stale_links() {
        Ok(removed) => {
            for pin in removed {
                tracing::info!(pin = %pin.display(), "detached an interface no longer in the policy");
            }
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "cannot clean up links of removed interfaces")
        }
    }
    match datapath.stats_reader() {
        Ok(r) => *shared.stats.lock().expect("stats lock") = Some(r),
        Err(e) => tracing::warn!(error = %e, "kernel counters unavailable to metrics"),
    }
    match datapath.sampler_reader() {
        Ok(r) => *shared.sampler.lock().expect("sampler lock") = Some(r),
        Err(e) => tracing::warn!(error = %e, "event sampler counters unavailable to metrics"),
    }
    let event_lines = start_events(&config, &datapath, &shared);
    start_flow_sweeper(datapath.pin_dir(), &shared.metrics);
    let _admin_socket = start_admin(&config, &datapath, &shared, event_lines, &policy);
    shared
        .metrics
        .set_policy(generation, &policy.hash, &config.origin, &policy.lists);
    shared
        .metrics
        .load_seconds
        .set(started.elapsed().as_secs_f64());
    shared.metrics.reloads.with_label_values(&["success"]).inc();
    shared.ready.store(true, Ordering::SeqCst);
    tracing::info!(
        generation,
        hash = policy.hash,
        source = config.origin,
        adopted,
        metrics = %format!("http://{}/metrics", config.agent.metrics_address),
        "enforcing"
    );
    shared.audit(
        "start",
        "applied",
        serde_json::json!({
            "source": config.origin,
            "old_hash": serde_json::Value::Null,
            "new_hash": policy.hash,
            "generation": generation,
            "adopted_pinned_state": adopted,
        }),
        Some(&config),
    );
    if let Ok(mut c) = shared.live_config.lock() {
        *c = Some(config.clone());
    }
    tokio::spawn(metrics::serve(listener, shared.clone()));

    let outcome = event_loop(
        &args,
        &config,
        &mut datapath,
        &shared,
        Live::of(&policy),
        signals,
        baseline,
    )
    .await;
    shared.ready.store(false, Ordering::SeqCst);
    if args.persist {
        tracing::info!(pin_path = %datapath.pin_dir().display(), "leaving programs attached and maps pinned");
        datapath.leave_pinned();
    } else {
        tracing::info!("detaching and removing pins");
        datapath.detach_and_unpin();
    }
    outcome
}

/// Starts the event consumer and its writer. The consumer runs even with
/// events off (it then reads nothing), so a reload can switch them on; the
/// output (and the webhook) is fixed at start.
fn start_events(
    config: &Config,
    datapath: &Datapath,
    shared: &Arc<Shared>,
) -> Option<events::LineSender> {
    let ring = match datapath.event_ring() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "cannot open the event ring buffer; no events will be written");
            return None;
        }
    };
    let ev = &config.events;
    let sink = events::Sink::open(&ev.output, ev.file_max_bytes, ev.file_keep);
    let mut tx = events::spawn_writer(
        sink,
        shared.metrics.events_dropped.clone(),
        events::sink::CHANNEL_LINES,
    );
    if let Some(w) = &ev.webhook {
        tx = tx.with_webhook(events::webhook::spawn(
            w.clone(),
            shared.metrics.events_dropped.clone(),
            shared
                .metrics
                .events_delivered
                .with_label_values(&["webhook"]),
        ));
        tracing::info!(
            url = w.url,
            token = if w.token.is_some() { "set" } else { "none" },
            batch_max = w.batch_max,
            flush_ms = w.flush_ms,
            queue = w.queue,
            max_attempts = w.max_attempts,
            "event webhook"
        );
    }
    let counters = events::Counters {
        emitted: shared.metrics.events_emitted.clone(),
        dropped: shared.metrics.events_dropped.clone(),
    };
    let lines = tx.clone();
    tokio::spawn(events::consume(
        ring,
        shared.event_ctx.clone(),
        tx,
        counters,
    ));
    tracing::info!(
        enabled = ev.enabled,
        rate_per_reason = ev.rate_per_reason,
        burst = ev.burst,
        rate_per_source = ev.rate_per_source,
        burst_per_source = ev.burst_per_source,
        global_rate = ev.global_rate,
        output = %match &ev.output {
            crate::config::EventOutput::Stdout => "stdout".to_string(),
            crate::config::EventOutput::File(p) => p.display().to_string(),
        },
        "security events"
    );
    Some(lines)
}

/// Starts limit metrics, the block sweeper and the admin socket. The socket
/// is removed when the returned guard is dropped; without it (another agent
/// serves the path, say) enforcement goes on and the error is logged.
fn start_admin(
    config: &Config,
    datapath: &Datapath,
    shared: &Arc<Shared>,
    lines: Option<events::LineSender>,
    policy: &CompiledPolicy,
) -> Option<admin::Socket> {
    shared.limits.set_limits(&policy.limits.infos);
    let readers = (
        crate::datapath::LimitReader::open(datapath.pin_dir()),
        crate::datapath::LimitReader::open(datapath.pin_dir()),
    );
    let (Ok(for_metrics), Ok(for_sweeper)) = readers else {
        tracing::error!(
            "limit counters unavailable: no limit metrics, no block sweeping, no admin socket"
        );
        return None;
    };
    shared.limits.set_reader(for_metrics);
    let audit_to = shared.clone();
    let admin = match Admin::open(
        datapath.pin_dir(),
        lines,
        shared.event_ctx.clone(),
        Box::new(move |r| audit_to.append_audit(r)),
        shared.limits.clone(),
    ) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "cannot open the blocked table: no block sweeping, no admin socket");
            return None;
        }
    };
    admin::start_sweeper(admin.clone(), for_sweeper);
    let path = &config.agent.admin_socket;
    match admin::Socket::bind(path) {
        Ok(mut socket) => {
            if let Some(listener) = socket.take_listener() {
                tokio::spawn(admin::serve(listener, admin));
            }
            tracing::info!(socket = %socket.path().display(), "admin socket (root only)");
            Some(socket)
        }
        Err(e) => {
            tracing::error!(socket = %path.display(), error = %e, "cannot serve the admin socket; block, unblock and blocks are unavailable, enforcement goes on");
            None
        }
    }
}

/// On a failed start: remove what this agent created, but never tear down
/// enforcement that an earlier agent left pinned.
fn abandon(datapath: Datapath, adopted: bool) {
    if adopted {
        datapath.leave_pinned();
    } else {
        datapath.detach_and_unpin();
    }
}

/// What the live generation enforces, to tell a reload that changes nothing:
/// the policy hash, and the node's own addresses in zone `host`, which the
/// hash leaves out on purpose (one policy has one hash on every node).
struct Live {
    hash: String,
    host: Vec<ipnetwork::IpNetwork>,
}

impl Live {
    fn of(policy: &CompiledPolicy) -> Live {
        Live {
            hash: policy.hash.clone(),
            host: policy.segmentation.host_prefixes(),
        }
    }
}

async fn event_loop(
    args: &RunArgs,
    config: &Config,
    datapath: &mut Datapath,
    shared: &Shared,
    mut live: Live,
    signals: Signals,
    baseline: Baseline,
) -> ExitCode {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    let watch_path: Option<PathBuf> = args
        .config
        .config
        .clone()
        .filter(|_| args.watch_interval > 0);
    let mut last_text = baseline.config_text;
    // List and zone files are watched by size and modification time (they
    // can be large).
    let mut data_files = config.data_files();
    let mut last_stamps = baseline.file_stamps;
    let mut tick = tokio::time::interval(Duration::from_secs(args.watch_interval.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The node's addresses form the `host` zone: when they change (DHCP,
    // an interface coming up) the zone tables are rewritten.
    let mut hosts = HostWatch {
        last: crate::policy::host_addresses().ok(),
        failing: false,
    };
    loop {
        let trigger = tokio::select! {
            _ = term.recv() => return ExitCode::SUCCESS,
            _ = int.recv() => return ExitCode::SUCCESS,
            _ = hup.recv() => "SIGHUP",
            _ = tick.tick() => {
                let host_tick = hosts.observe(crate::policy::host_addresses());
                // Without the node's addresses a reload is refused: leave
                // any change of the files to a tick that can apply it.
                if host_tick == HostTick::Unknown {
                    continue;
                }
                let files_changed = watch_path.as_ref().and_then(|p| {
                    let now = read_watched(p);
                    let stamps_now = file_stamps(&data_files);
                    if now.is_some() && now != last_text {
                        last_text = now;
                        Some("config file changed")
                    } else if stamps_now != last_stamps {
                        last_stamps = stamps_now;
                        Some("list or zone file changed")
                    } else {
                        None
                    }
                });
                if let Some(t) = files_changed {
                    t
                } else if host_tick == HostTick::Changed {
                    "node addresses changed"
                } else {
                    continue;
                }
            }
        };
        if let Some(files) = reload(args, config, datapath, shared, &mut live, trigger) {
            data_files = files;
            last_stamps = file_stamps(&data_files);
        }
    }
}

/// What the watcher knows of the node's addresses.
struct HostWatch {
    /// The addresses last listed; `None` until a listing succeeds.
    last: Option<Vec<std::net::IpAddr>>,
    /// Whether the last listing failed (said once, not at every tick).
    failing: bool,
}

/// One tick's listing of the node's addresses, against the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostTick {
    /// The kernel did not answer (out of file descriptors, for one).
    Unknown,
    Same,
    Changed,
}

impl HostWatch {
    fn observe(&mut self, now: std::io::Result<Vec<std::net::IpAddr>>) -> HostTick {
        match now {
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e, "cannot list the node's addresses; reloads wait until they can be listed");
                }
                self.failing = true;
                HostTick::Unknown
            }
            Ok(now) => {
                if self.failing {
                    tracing::info!("the node's addresses can be listed again");
                }
                self.failing = false;
                let changed = self.last.as_ref().is_some_and(|last| *last != now);
                self.last = Some(now);
                if changed {
                    HostTick::Changed
                } else {
                    HostTick::Same
                }
            }
        }
    }
}

/// The watched config file's bytes, read as a load would read them: a FIFO
/// or a device put in its place must not stall the event loop (which also
/// answers SIGTERM), and is then skipped like an unreadable file.
fn read_watched(path: &std::path::Path) -> Option<Vec<u8>> {
    use crate::config::files::{MAX_CONFIG_BYTES, read_bounded};
    read_bounded(path, MAX_CONFIG_BYTES).ok()
}

/// Size and modification time of each file (None where it cannot be read).
fn file_stamps(files: &[PathBuf]) -> Vec<Option<(u64, std::time::SystemTime)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
        })
        .collect()
}

/// Reloads the policy; returns the list and zone files of the loaded config,
/// to watch.
fn reload(
    args: &RunArgs,
    started_with: &Config,
    datapath: &mut Datapath,
    shared: &Shared,
    live: &mut Live,
    trigger: &str,
) -> Option<Vec<PathBuf>> {
    let t = Instant::now();
    let (config, policy) = match prepare(args) {
        Ok(p) => p,
        Err(e) => {
            shared.metrics.reloads.with_label_values(&["failure"]).inc();
            tracing::error!(trigger, errors = %e, "new policy refused; the live policy stays");
            let errors: Vec<String> = e.0.iter().map(ToString::to_string).collect();
            shared.audit(
                trigger,
                "refused",
                serde_json::json!({ "live_hash": live.hash, "errors": errors }),
                None,
            );
            return None;
        }
    };
    let files = config.data_files();
    let (old, new) = (&started_with.agent, &config.agent);
    for (what, changed) in [
        ("interfaces", old.interfaces != new.interfaces),
        ("xdp_mode", old.xdp_mode != new.xdp_mode),
        (
            "metrics_address",
            old.metrics_address != new.metrics_address,
        ),
        ("pin_path", old.pin_path != new.pin_path),
        ("flow_capacity", old.flow_capacity != new.flow_capacity),
    ] {
        if changed {
            tracing::warn!(
                setting = what,
                "this [agent] setting takes effect on restart; the running agent keeps the old value"
            );
        }
    }
    // Event settings are not part of the policy hash: apply them even when the policy is unchanged.
    if config.events.output != started_with.events.output {
        tracing::warn!("a new events.output takes effect on restart");
    }
    if let Err(e) = datapath.set_events(&config.events) {
        tracing::error!(trigger, error = %error_chain(&e), "cannot write the new event settings; the old ones stay");
    }
    if policy.hash == live.hash && policy.segmentation.host_prefixes() == live.host {
        tracing::info!(trigger, hash = policy.hash, "policy unchanged");
        shared.audit(
            trigger,
            "unchanged",
            serde_json::json!({ "live_hash": live.hash }),
            None,
        );
        return Some(files);
    }
    match datapath.apply(&policy) {
        Ok(generation) => {
            if let Ok(mut l) = shared.names.write() {
                *l = PolicyNames::of(&policy);
            }
            if let Ok(mut c) = shared.event_ctx.write() {
                c.generation = generation;
                c.policy_hash = policy.hash.clone();
                c.lists = policy.lists.iter().map(|l| l.name.clone()).collect();
                c.limits = policy.limits.infos.iter().map(|l| l.name.clone()).collect();
                c.rules = policy
                    .segmentation
                    .rules
                    .iter()
                    .map(|r| r.name.clone())
                    .collect();
                c.zones = policy
                    .segmentation
                    .zones
                    .iter()
                    .map(|z| z.name.clone())
                    .collect();
            }
            shared.limits.set_limits(&policy.limits.infos);
            shared
                .metrics
                .set_policy(generation, &policy.hash, &config.origin, &policy.lists);
            shared.metrics.load_seconds.set(t.elapsed().as_secs_f64());
            shared.metrics.reloads.with_label_values(&["success"]).inc();
            tracing::info!(trigger, generation, old_hash = %live.hash, new_hash = policy.hash, "policy applied");
            shared.audit(
                trigger,
                "applied",
                serde_json::json!({
                    "source": config.origin,
                    "old_hash": live.hash,
                    "new_hash": policy.hash,
                    "generation": generation,
                }),
                Some(&config),
            );
            if let Ok(mut c) = shared.live_config.lock() {
                *c = Some(config);
            }
            *live = Live::of(&policy);
            Some(files)
        }
        Err(e) => {
            shared.metrics.reloads.with_label_values(&["failure"]).inc();
            tracing::error!(trigger, error = %error_chain(&e), "cannot apply the new policy; the live policy stays");
            shared.audit(
                trigger,
                "refused",
                serde_json::json!({ "live_hash": live.hash, "errors": [error_chain(&e)] }),
                None,
            );
            None
        }
    }
}

/// An error with its sources, one per line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!("\n  caused by: {c}"));
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_node_addresses_a_load_is_refused_and_the_watcher_waits() {
        let config = crate::config::Config::load_str(
            "[[zones]]\nname = \"core\"\ncidrs = [\"10.9.0.0/16\"]\n",
            "p.toml",
            std::path::Path::new("/"),
        )
        .unwrap();
        let emfile = || Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        let e = compile_for_host(&config, emfile()).unwrap_err();
        assert_eq!(
            e.to_string().trim_end(),
            "node: cannot list the node's addresses for the host zone: Too many open files (os error 24)"
        );
        let hosts = vec![std::net::IpAddr::from([192, 0, 2, 7])];
        assert!(compile_for_host(&config, Ok(hosts.clone())).is_ok());

        // The watcher: a failed listing is unknown (the tick is skipped, so
        // a file change waits for a tick that can apply it) and forgets
        // nothing; a first listing after a failed start is not a change.
        let mut w = HostWatch {
            last: None,
            failing: false,
        };
        assert_eq!(w.observe(emfile()), HostTick::Unknown);
        assert_eq!(w.observe(Ok(hosts.clone())), HostTick::Same);
        assert_eq!(w.observe(emfile()), HostTick::Unknown);
        assert_eq!(w.last.as_deref(), Some(&hosts[..]));
        assert_eq!(w.observe(Ok(hosts.clone())), HostTick::Same);
        let moved = vec![std::net::IpAddr::from([192, 0, 2, 8])];
        assert_eq!(w.observe(Ok(moved.clone())), HostTick::Changed);
        assert_eq!(w.last, Some(moved));
    }

    #[test]
    fn the_watcher_skips_a_config_that_became_a_fifo_or_a_device() {
        // std::fs::read blocked on a FIFO's open and never ended on
        // /dev/zero, stalling the event loop (and with it SIGTERM).
        let dir = std::env::temp_dir().join(format!("tg-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("p.toml");
        crate::config::files::mkfifo(&fifo);
        assert_eq!(read_watched(&fifo), None);
        assert_eq!(read_watched(std::path::Path::new("/dev/zero")), None);
        std::fs::remove_file(&fifo).unwrap();
        std::fs::write(&fifo, "mode = \"audit\"\n").unwrap();
        assert_eq!(
            read_watched(&fifo).as_deref(),
            Some(&b"mode = \"audit\"\n"[..])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
