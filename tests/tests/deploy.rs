//! The deployment files in deploy/ checked against the agent they deploy: the
//! Grafana dashboard and the alert rules query only metrics the agent really
//! exports (and parse as PromQL, and the alerts pass their promtool unit
//! tests), the example policies pass `tierguard check`, the systemd unit
//! verifies, the Kubernetes manifests have the agreed shape, and the agent
//! runs with no more than the unit's capabilities and system calls while a
//! real Prometheus evaluates every dashboard query against it.
//!
//! Optional tools (systemd-analyze, yq or python3 with PyYAML, kubectl,
//! strace) deepen the checks where present; each test prints what it checked
//! and what it could not, never skipping silently.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tierguard_tests::{
    agent::{binary, free_addr, run_cli},
    http::{get, sample},
    lab::Lab,
    pins::PinDir,
    prom::Prometheus,
};

/// Every metric the agent exports, with its Prometheus type.
const METRICS: &[(&str, &str)] = &[
    ("tierguard_packets_total", "counter"),
    ("tierguard_bytes_total", "counter"),
    ("tierguard_list_hits_total", "counter"),
    ("tierguard_list_hit_bytes_total", "counter"),
    ("tierguard_policy_reloads_total", "counter"),
    ("tierguard_scrape_errors_total", "counter"),
    ("tierguard_policy_generation", "gauge"),
    ("tierguard_policy_load_duration_seconds", "gauge"),
    ("tierguard_policy_list_prefixes", "gauge"),
    ("tierguard_xdp_attach_mode", "gauge"),
    ("tierguard_policy_info", "gauge"),
    ("tierguard_build_info", "gauge"),
    ("tierguard_events_emitted_total", "counter"),
    ("tierguard_events_suppressed_total", "counter"),
    ("tierguard_events_dropped_total", "counter"),
    ("tierguard_rule_packets_total", "counter"),
    ("tierguard_zone_pair_drops_total", "counter"),
    ("tierguard_flows", "gauge"),
    ("tierguard_flow_evictions_total", "counter"),
];

/// Metrics that appear in a scrape only after some event (a first error).
const EVENT_ONLY_METRICS: &[&str] = &[
    "tierguard_scrape_errors_total",
    "tierguard_events_emitted_total",
    // Only with segmentation rules, and after a first segmentation drop.
    "tierguard_rule_packets_total",
    "tierguard_zone_pair_drops_total",
];

/// The capabilities the unit and the DaemonSet grant, as the kernel numbers them.
const CAPS: &[(&str, u32)] = &[
    ("CAP_BPF", 39),
    ("CAP_NET_ADMIN", 12),
    ("CAP_PERFMON", 38),
    ("CAP_SYS_RESOURCE", 24),
];

const DAEMONSET_ARGS: &[&str] = &[
    "run",
    "--config",
    "/etc/tierguard/policy.toml",
    "--persist",
    "--log-format",
    "json",
    "--metrics-address",
    "0.0.0.0:9642",
];
const UNIT_EXEC_START: &str =
    "/usr/local/bin/tierguard run --config /etc/tierguard/policy.toml --persist --log-format json";

// ---- helpers ----------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn deploy_path(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read_deploy(rel: &str) -> String {
    let p = deploy_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn tmpdir(name: &str) -> PathBuf {
    tierguard_tests::tmpdir("deploy", name)
}

/// The `tierguard_…` identifiers in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("tierguard_") {
        let start = i + pos;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + "tierguard_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

fn assert_known_metrics(names: &BTreeSet<String>, what: &str) {
    let known: BTreeSet<&str> = METRICS.iter().map(|(n, _)| *n).collect();
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} uses metric names the agent does not export: {unknown:?}\nknown: {known:?}"
    );
}

/// An executable on PATH.
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs a command that must succeed; panics with its output otherwise.
fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn promtool() -> PathBuf {
    which("promtool").unwrap_or_else(|| {
        panic!("promtool not found on PATH: it comes with Debian's prometheus package, which `cargo xtask setup` installs")
    })
}

/// Every `expr` string in a JSON document, with the JSON path that holds it.
fn json_exprs(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{path}/{k}");
                if let (true, Some(s)) = (k == "expr", x.as_str()) {
                    out.push((p.clone(), s.to_string()));
                }
                json_exprs(x, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                json_exprs(x, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn dashboard() -> Value {
    let text = read_deploy("grafana/tierguard-dashboard.json");
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("deploy/grafana/tierguard-dashboard.json is not valid JSON: {e}")
    })
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    json_exprs(&dashboard(), "", &mut exprs);
    exprs
}

/// A Grafana query with its template variables replaced, so that Prometheus
/// can run it: `$job`/`$instance`/`$interface` are only used in `=~`.
fn substitute(expr: &str, rate_interval: &str, range: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$__range", range)
        .replace("$__interval", rate_interval)
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$interface", ".*")
}

/// The block under `  policy.toml: |` in configmap.yaml, de-indented.
fn configmap_policy(yaml: &str) -> String {
    let mut lines = yaml.lines();
    lines
        .by_ref()
        .find(|l| l.trim_end() == "  policy.toml: |")
        .expect("configmap.yaml has a `  policy.toml: |` block under data");
    let mut out = String::new();
    for l in lines {
        if l.trim().is_empty() {
            out.push('\n');
            continue;
        }
        match l.strip_prefix("    ") {
            Some(rest) => {
                out.push_str(rest);
                out.push('\n');
            }
            None => break,
        }
    }
    // A literal block keeps one final newline ("clip").
    format!("{}\n", out.trim_end_matches('\n'))
}

/// A YAML file as JSON documents, through whatever converter this machine
/// has (yq, or python3 with PyYAML); None if it has neither.
fn yaml_docs(path: &Path) -> Option<(Vec<Value>, &'static str)> {
    let parse = |out: Output, tool: &str| -> Vec<Value> {
        assert!(
            out.status.success(),
            "{tool} cannot parse {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("{tool} output for {} is not JSON: {e}: {l}", path.display())
                })
            })
            .filter(|v: &Value| !v.is_null())
            .collect()
    };
    if which("yq").is_some() {
        let out = Command::new("yq")
            .arg("-c")
            .arg(".")
            .arg(path)
            .output()
            .expect("run yq");
        return Some((parse(out, "yq"), "yq"));
    }
    if which("python3").is_some() {
        let probe = Command::new("python3")
            .args(["-c", "import yaml"])
            .output()
            .expect("run python3");
        if probe.status.success() {
            let script = "import json,sys,yaml\nfor d in yaml.safe_load_all(open(sys.argv[1])):\n    print(json.dumps(d))";
            let out = Command::new("python3")
                .args(["-c", script])
                .arg(path)
                .output()
                .expect("run python3");
            return Some((parse(out, "python3 yaml"), "python3 with PyYAML"));
        }
    }
    None
}

/// `[Section] Key=value` lines of a unit file, in order, comments dropped.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for l in text.lines() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if l.starts_with('[') && l.ends_with(']') {
            section = l[1..l.len() - 1].to_string();
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("unit line without '=': {l}"));
        assert!(
            !v.ends_with('\\'),
            "continuation lines are not expected in the unit: {l}"
        );
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

fn unit_values<'a>(
    entries: &'a [(String, String, String)],
    section: &str,
    key: &str,
) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// The system calls a unit's SystemCallFilter= lines allow, expanded by
/// systemd-analyze; lines apply in order (the first sets an allow list, later
/// `~` lines remove, later plain lines add).
fn allowed_syscalls(filter_lines: &[&str]) -> BTreeSet<String> {
    fn expand(item: &str, cache: &mut BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
        if !item.starts_with('@') {
            return BTreeSet::from([item.to_string()]);
        }
        if let Some(s) = cache.get(item) {
            return s.clone();
        }
        let out = run_ok(
            Command::new("systemd-analyze").args(["syscall-filter", item]),
            "systemd-analyze syscall-filter",
        );
        let mut set = BTreeSet::new();
        for l in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let t = l.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            set.extend(expand(t, cache));
        }
        assert!(
            !set.is_empty(),
            "systemd-analyze knows no system call group {item}"
        );
        cache.insert(item.to_string(), set.clone());
        set
    }
    let mut cache = BTreeMap::new();
    let mut allowed = BTreeSet::new();
    for (i, line) in filter_lines.iter().enumerate() {
        let (deny, list) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, *line),
        };
        assert!(
            !(i == 0 && deny),
            "the unit's first SystemCallFilter= must be an allow list: {line}"
        );
        for item in list.split_whitespace() {
            let set = expand(item, &mut cache);
            if deny {
                allowed.retain(|s| !set.contains(s));
            } else {
                allowed.extend(set);
            }
        }
    }
    allowed
}

/// Asserts that every `--flag` in `args` is one that `tierguard SUB --help` lists.
fn assert_cli_accepts(args: &[&str], what: &str) {
    let sub = args[0];
    let out = run_cli(&[sub, "--help"]);
    assert!(out.status.success(), "tierguard {sub} --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(a),
            "{what} passes {a}, which `tierguard {sub} --help` does not list:\n{help}"
        );
    }
}

// ---- Grafana ------------------------------------------------------------------

#[test]
fn dashboard_is_a_grafana_dashboard_querying_only_real_metrics() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(
        (36..=41).contains(&schema),
        "schemaVersion {schema}: expected a current Grafana schema (~39)"
    );
    assert!(
        d["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "dashboard uid"
    );
    assert!(
        d["title"].as_str().is_some_and(|t| !t.is_empty()),
        "dashboard title"
    );

    // Template variables: a Prometheus data source, then job, node (instance) and interface.
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable `{name}`"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for name in ["job", "instance", "interface"] {
        let v = var(name);
        assert_eq!(v["type"], "query", "variable {name} is a query variable");
        assert_eq!(
            v["datasource"]["uid"], "${datasource}",
            "variable {name} queries the chosen data source"
        );
        let def = v["definition"]
            .as_str()
            .unwrap_or_else(|| panic!("variable {name} has a definition"));
        assert!(def.starts_with("label_values("), "variable {name}: {def}");
    }

    // Panels: every one with a data source, targets and a place on the grid.
    let panels = d["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "the dashboard has panels");
    let mut ids = BTreeSet::new();
    let mut graphs = 0;
    for p in panels {
        let title = p["title"].as_str().unwrap_or("<untitled>");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id in {title}"
        );
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "panel {title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {title} uses the data source variable"
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {title} has targets"));
        assert!(!targets.is_empty(), "panel {title} has targets");
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "panel {title}: a target without expr"
            );
            assert!(
                t["refId"].is_string(),
                "panel {title}: a target without refId"
            );
        }
    }

    // Every metric name anywhere in the dashboard (queries, variables,
    // descriptions) is one the agent exports.
    let text = read_deploy("grafana/tierguard-dashboard.json");
    let names = metric_names(&text);
    assert_known_metrics(&names, "deploy/grafana/tierguard-dashboard.json");
    let exprs = dashboard_exprs();
    let mut in_exprs = BTreeSet::new();
    for (path, e) in &exprs {
        let n = metric_names(e);
        assert_known_metrics(&n, &format!("dashboard query {path}"));
        in_exprs.extend(n);
    }

    // The panels the dashboard is for.
    let panel_with = |pred: &dyn Fn(&str) -> bool| {
        panels.iter().any(|p| {
            p["targets"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t["expr"].as_str().is_some_and(pred)))
        })
    };
    type Pred<'a> = &'a dyn Fn(&str) -> bool;
    let wanted: &[(&str, Pred)] = &[
        ("dropped packets/s by reason", &|e| {
            e.contains("tierguard_packets_total")
                && e.contains("verdict=\"drop\"")
                && e.contains("by (reason)")
                && e.contains("rate(")
        }),
        ("passed vs dropped", &|e| {
            e.contains("tierguard_packets_total") && e.contains("by (verdict)")
        }),
        ("dropped bytes/s", &|e| {
            e.contains("tierguard_bytes_total")
                && e.contains("verdict=\"drop\"")
                && e.contains("rate(")
        }),
        ("top lists by hits", &|e| {
            e.contains("topk(") && e.contains("tierguard_list_hits_total")
        }),
        ("policy generation", &|e| {
            e.contains("tierguard_policy_generation")
        }),
        ("reload failures", &|e| {
            e.contains("tierguard_policy_reloads_total") && e.contains("result=\"failure\"")
        }),
        ("XDP attach mode", &|e| {
            e.contains("tierguard_xdp_attach_mode")
        }),
        ("scrape errors", &|e| {
            e.contains("tierguard_scrape_errors_total")
        }),
    ];
    for (what, pred) in wanted {
        assert!(panel_with(*pred), "no panel shows {what}");
    }
    assert!(
        panels.iter().any(|p| p["type"] == "table"
            && p["targets"][0]["expr"]
                .as_str()
                .is_some_and(|e| e.contains("tierguard_xdp_attach_mode"))),
        "the XDP attach mode is shown as a table"
    );
    println!(
        "dashboard: {graphs} panels, {} queries; metrics queried: {in_exprs:?}",
        exprs.len()
    );
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let exprs = dashboard_exprs();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        let q = serde_json::to_string(&substitute(e, "5m", "1h")).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {q}\n"
        ));
    }
    let dir = tmpdir("promql");
    let file = dir.join("dashboard-queries.yaml");
    std::fs::write(&file, rules).unwrap();
    let out = run_ok(
        Command::new(promtool()).args(["check", "rules"]).arg(&file),
        "promtool check rules on the dashboard's queries",
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    println!(
        "all {} dashboard queries parse as PromQL (variables substituted)",
        exprs.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}

// ---- Prometheus alert rules ------------------------------------------------------

#[test]
fn alert_rules_pass_promtool_and_use_only_real_metrics() {
    let rel = "prometheus/tierguard-alerts.yaml";
    let out = run_ok(
        Command::new(promtool())
            .args(["check", "rules"])
            .arg(deploy_path(rel)),
        "promtool check rules deploy/prometheus/tierguard-alerts.yaml",
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());

    let text = read_deploy(rel);
    let names = metric_names(&text);
    assert_known_metrics(&names, "deploy/prometheus/tierguard-alerts.yaml");

    // Each alert: a severity and the three annotations operators rely on.
    let blocks: Vec<&str> = text.split("- alert: ").skip(1).collect();
    let mut alerts = BTreeMap::new();
    for b in &blocks {
        let name = b.lines().next().unwrap().trim().to_string();
        let severity = b
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity: "))
            .unwrap_or_else(|| panic!("alert {name} has no severity label"))
            .to_string();
        assert!(
            ["critical", "warning", "info"].contains(&severity.as_str()),
            "alert {name}: severity {severity}"
        );
        for a in ["summary:", "description:", "runbook:"] {
            assert!(
                b.lines().any(|l| l.trim().starts_with(a)),
                "alert {name} has no {a} annotation"
            );
        }
        alerts.insert(name, severity);
    }
    for (name, severity) in [
        ("TierguardDown", "critical"),
        ("TierguardPolicyReloadFailing", "warning"),
        ("TierguardGenericXdpMode", "info"),
        ("TierguardHighDropRate", "warning"),
        ("TierguardScrapeErrors", "warning"),
        ("TierguardNoProgram", "critical"),
        ("TierguardEventsLost", "warning"),
    ] {
        assert_eq!(
            alerts.get(name).map(String::as_str),
            Some(severity),
            "alert {name} with severity {severity}"
        );
    }

    // Every alert is exercised by the promtool unit tests.
    let tests = read_deploy("prometheus/tierguard-alerts.test.yaml");
    for name in alerts.keys() {
        assert!(
            tests.contains(&format!("alertname: {name}\n        exp_alerts:\n")),
            "tierguard-alerts.test.yaml has no case in which {name} fires"
        );
    }
    println!("alerts: {alerts:?}; metrics used: {names:?}");
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let out = run_ok(
        Command::new(promtool())
            .args(["test", "rules"])
            .arg(deploy_path("prometheus/tierguard-alerts.test.yaml")),
        "promtool test rules deploy/prometheus/tierguard-alerts.test.yaml",
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

// ---- example policies ----------------------------------------------------------

#[test]
fn example_policies_pass_tierguard_check() {
    let dir = tmpdir("policies");
    let cm_text = configmap_policy(&read_deploy("kubernetes/configmap.yaml"));
    let cm_file = dir.join("policy.toml");
    std::fs::write(&cm_file, &cm_text).unwrap();

    for (what, file) in [
        (
            "deploy/systemd/policy.toml",
            deploy_path("systemd/policy.toml"),
        ),
        (
            "the policy.toml in deploy/kubernetes/configmap.yaml",
            cm_file.clone(),
        ),
    ] {
        let out = run_cli(&[
            "check",
            "--skip-interface-check",
            "--config",
            file.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "`tierguard check --skip-interface-check` refuses {what} ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains("policy OK"), "{what}: {summary}");
        println!("{what}:\n{summary}");
    }

    // The text extraction agrees with a real YAML parser, where there is one.
    match yaml_docs(&deploy_path("kubernetes/configmap.yaml")) {
        Some((docs, tool)) => {
            let parsed = docs[0]["data"]["policy.toml"]
                .as_str()
                .expect("data.policy.toml is a string");
            assert_eq!(
                parsed, cm_text,
                "the policy extracted from configmap.yaml differs from what {tool} reads"
            );
            println!(
                "configmap.yaml: the extracted policy equals data[\"policy.toml\"] as {tool} parses it"
            );
        }
        None => println!(
            "configmap.yaml: no YAML parser here (yq, python3+PyYAML); checked the text extraction only"
        ),
    }
    let _ = std::fs::remove_dir_all(dir);
}

// ---- systemd -------------------------------------------------------------------

#[test]
fn systemd_unit_verifies_and_grants_only_what_the_agent_needs() {
    let text = read_deploy("systemd/tierguard.service");
    let e = unit_entries(&text);
    let one = |section: &str, key: &str| -> String {
        let v = unit_values(&e, section, key);
        assert_eq!(v.len(), 1, "[{section}] {key}= is set exactly once: {v:?}");
        v[0].to_string()
    };
    assert_eq!(one("Service", "Type"), "simple");
    assert_eq!(one("Service", "ExecStart"), UNIT_EXEC_START);
    let reload = unit_values(&e, "Service", "ExecReload");
    assert_eq!(
        reload.last().copied(),
        Some("/bin/kill -HUP $MAINPID"),
        "ExecReload ends with SIGHUP to the agent"
    );
    assert_eq!(one("Service", "Restart"), "always");
    let caps = |key: &str| -> BTreeSet<String> {
        one("Service", key)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let expected: BTreeSet<String> = CAPS.iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(
        caps("CapabilityBoundingSet"),
        expected,
        "CapabilityBoundingSet"
    );
    assert_eq!(caps("AmbientCapabilities"), expected, "AmbientCapabilities");
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/sys/fs/bpf"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
    ] {
        assert_eq!(one("Service", k), v, "[Service] {k}");
    }
    // Settings that would break BPF pinning or the agent's view of the host.
    for k in [
        "PrivateDevices",
        "ProtectKernelTunables",
        "PrivateNetwork",
        "User",
        "DynamicUser",
    ] {
        assert!(
            unit_values(&e, "Service", k).is_empty(),
            "[Service] {k}= must not be set (see the unit's comments)"
        );
    }
    assert_eq!(one("Install", "WantedBy"), "multi-user.target");
    let exec: Vec<&str> = UNIT_EXEC_START.split_whitespace().skip(1).collect();
    assert_cli_accepts(&exec, "the unit's ExecStart");
    assert_cli_accepts(&["check", "--config"], "the unit's ExecReload");
    println!(
        "systemd unit: parsed and checked Type, ExecStart, ExecReload, Restart, capabilities ({expected:?}), \
         NoNewPrivileges, ProtectSystem=strict with ReadWritePaths=/sys/fs/bpf, ProtectHome, PrivateTmp and the \
         other hardening keys; no PrivateDevices/ProtectKernelTunables/PrivateNetwork/User; ExecStart flags known to the CLI"
    );

    // systemd's own verdict, with ExecStart pointing at the real binary
    // (verify checks that the executable exists).
    if which("systemd-analyze").is_none() {
        println!(
            "systemd-analyze not found: `systemd-analyze verify` NOT run; only the parsed checks above apply"
        );
        return;
    }
    let dir = tmpdir("unit");
    let unit = dir.join("tierguard.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/tierguard", binary().to_str().unwrap()),
    )
    .unwrap();
    let out = run_ok(
        Command::new("systemd-analyze").arg("verify").arg(&unit),
        "systemd-analyze verify",
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify has remarks on the unit:\n{said}"
    );
    println!("systemd-analyze verify: no errors, no warnings");
    let sec = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output();
    match sec {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout);
            if let Some(l) = s.lines().find(|l| l.contains("Overall exposure level")) {
                println!("systemd-analyze security: {}", l.trim());
            }
        }
        _ => println!(
            "systemd-analyze security --offline is not supported here (informational only)"
        ),
    }
    let _ = std::fs::remove_dir_all(dir);
}

// ---- Kubernetes ----------------------------------------------------------------

#[test]
fn kubernetes_manifests_have_the_agreed_shape() {
    let ds_text = read_deploy("kubernetes/daemonset.yaml");
    assert_cli_accepts(DAEMONSET_ARGS, "the DaemonSet's args");

    // Text checks, valid whatever tools the machine has.
    for needle in [
        "hostNetwork: true",
        "priorityClassName: system-node-critical",
        "maxUnavailable: 1",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "mountPropagation: HostToContainer",
        "mountPropagation: Bidirectional",
        "fieldPath: spec.nodeName",
        "path: /healthz",
        "path: /readyz",
        "containerPort: 9642",
        "mountPath: /etc/tierguard",
        "- operator: Exists",
    ] {
        assert!(ds_text.contains(needle), "daemonset.yaml lacks `{needle}`");
    }
    let pm = read_deploy("kubernetes/podmonitor.yaml");
    for needle in [
        "apiVersion: monitoring.coreos.com/v1",
        "kind: PodMonitor",
        "- port: metrics",
        "path: /metrics",
    ] {
        assert!(pm.contains(needle), "podmonitor.yaml lacks `{needle}`");
    }

    // Structure, through a YAML parser where there is one.
    let docs = |rel: &str| yaml_docs(&deploy_path(rel));
    let Some((ds, tool)) = docs("kubernetes/daemonset.yaml") else {
        println!(
            "no YAML parser here (yq, python3+PyYAML): checked daemonset.yaml and podmonitor.yaml as text only \
             (the lines above), NOT their structure"
        );
        return;
    };
    let ds = &ds[0];
    assert_eq!(ds["kind"], "DaemonSet");
    let spec = &ds["spec"];
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
    let selector = spec["selector"]["matchLabels"]
        .as_object()
        .expect("selector.matchLabels");
    for (k, v) in selector {
        assert_eq!(
            &spec["template"]["metadata"]["labels"][k], v,
            "the selector matches the pod template's label {k}"
        );
    }
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "tierguard");
    assert!(
        pod["tolerations"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())),
        "a toleration for every taint"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one agent container");
    let c = &containers[0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg"))
        .collect();
    assert_eq!(args, DAEMONSET_ARGS, "the agent's args");
    let sc = &c["securityContext"];
    assert_ne!(
        sc["privileged"], true,
        "the agent container is not privileged"
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    let expected: BTreeSet<String> = CAPS.iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(added, expected, "the agent's added capabilities");
    let env = c["env"].as_array().expect("env");
    assert!(
        env.iter().any(|e| e["name"] == "NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "NODE_NAME from spec.nodeName"
    );
    let port = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a port named metrics");
    assert_eq!(port["containerPort"], 9642);
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe} port");
    }
    for k in ["requests", "limits"] {
        assert!(
            c["resources"][k]["memory"].is_string(),
            "resources.{k}.memory"
        );
    }
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let mount = |name: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("agent mounts volume {name}"))
    };
    assert_eq!(mount("bpffs")["mountPath"], "/sys/fs/bpf");
    assert_eq!(
        mount("bpffs")["mountPropagation"],
        "HostToContainer",
        "unprivileged containers cannot have Bidirectional"
    );
    assert_eq!(mount("policy")["mountPath"], "/etc/tierguard");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    assert_eq!(volume("bpffs")["hostPath"]["path"], "/sys/fs/bpf");
    let cm_name = volume("policy")["configMap"]["name"]
        .as_str()
        .expect("policy volume is a ConfigMap")
        .to_string();

    // Bidirectional propagation only in the privileged init container, with the agent's image.
    let inits = pod["initContainers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for i in inits {
        let bidi = i["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["mountPropagation"] == "Bidirectional"));
        if bidi {
            assert_eq!(
                i["securityContext"]["privileged"], true,
                "Bidirectional propagation needs a privileged container"
            );
        }
        assert_eq!(
            i["image"], c["image"],
            "init container {} uses the agent's image",
            i["name"]
        );
    }

    let (cm, _) = docs("kubernetes/configmap.yaml").expect("parser available");
    assert_eq!(cm[0]["kind"], "ConfigMap");
    assert_eq!(
        cm[0]["metadata"]["name"],
        cm_name.as_str(),
        "the DaemonSet mounts the ConfigMap by its name"
    );
    assert!(
        cm[0]["data"]["policy.toml"].is_string(),
        "ConfigMap key policy.toml (the agent reads /etc/tierguard/policy.toml)"
    );

    let (pm, _) = docs("kubernetes/podmonitor.yaml").expect("parser available");
    let pm = &pm[0];
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["kind"], "PodMonitor");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"], spec["selector"]["matchLabels"],
        "the PodMonitor selects the agent's pods"
    );
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["port"], "metrics");
    assert_eq!(ep["path"], "/metrics");
    let job_label = pm["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(
        spec["template"]["metadata"]["labels"][job_label], "tierguard",
        "the pods' {job_label} label gives job=\"tierguard\", which the alerts expect"
    );

    let mut namespaces = BTreeSet::new();
    for rel in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "priority-quota.yaml",
        "configmap.yaml",
        "daemonset.yaml",
        "podmonitor.yaml",
    ] {
        let (d, _) = docs(&format!("kubernetes/{rel}")).expect("parser available");
        for doc in &d {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{rel}: apiVersion and kind"
            );
            if doc["kind"] == "Namespace" {
                assert_eq!(doc["metadata"]["name"], "tierguard");
            } else {
                namespaces.insert(
                    doc["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{rel}: metadata.namespace"))
                        .to_string(),
                );
            }
        }
    }
    assert_eq!(
        namespaces,
        BTreeSet::from(["tierguard".to_string()]),
        "everything lives in the tierguard namespace"
    );
    println!("kubernetes manifests: structure checked through {tool}");

    // kustomize builds the install set, where kubectl is present.
    if which("kubectl").is_some() {
        let out = run_ok(
            Command::new("kubectl")
                .arg("kustomize")
                .arg(deploy_path("kubernetes")),
            "kubectl kustomize deploy/kubernetes",
        );
        let built = String::from_utf8_lossy(&out.stdout);
        for kind in [
            "Namespace",
            "ResourceQuota",
            "ServiceAccount",
            "ConfigMap",
            "DaemonSet",
        ] {
            assert!(
                built.contains(&format!("kind: {kind}\n")),
                "kubectl kustomize output lacks a {kind}"
            );
        }
        println!("kubectl kustomize deploy/kubernetes: builds");
    } else {
        println!("kubectl not found: kustomization.yaml not built");
    }
}

// ---- the agent under the unit's privileges, scraped by a real Prometheus ---------

/// Capabilities in this process's bounding set (a sandbox may lack some).
fn bounding_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd")
        .trim();
    u64::from_str_radix(hex, 16).expect("CapBnd is hex")
}

/// Children of a process (its main thread's).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

struct Spawned {
    /// setpriv, which execs strace (or the agent itself without strace).
    child: Child,
    /// The agent's pid.
    agent: u32,
    log: PathBuf,
}

impl Spawned {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: signalling processes this test started.
        unsafe { libc::kill(self.agent as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").expect("scrape /metrics");
    assert_eq!(status, 200, "/metrics status");
    body
}

#[test]
fn agent_runs_with_the_units_privileges_and_serves_every_dashboard_query() {
    let lab = Lab::new("tgdep", 231);
    let pins = PinDir::new("deploy");
    let dir = tmpdir("agent");

    // The systemd example policy, on the lab's interface and a private pin directory.
    let policy = read_deploy("systemd/policy.toml");
    let policy = policy.replace(
        "interfaces = [\"eth0\"]",
        &format!("interfaces = [\"{}\"]", lab.node_if),
    );
    let policy = policy.replace(
        "pin_path = \"/sys/fs/bpf/tierguard\"",
        &format!("pin_path = \"{}\"", pins.path().display()),
    );
    // A private admin socket: another agent may serve the default one.
    let admin = dir.join("run/admin.sock");
    let policy = policy.replace(
        "admin_socket = \"/run/tierguard/admin.sock\"",
        &format!("admin_socket = \"{}\"", admin.display()),
    );
    assert!(
        policy.contains(&lab.node_if)
            && policy.contains(pins.path().to_str().unwrap())
            && policy.contains(admin.to_str().unwrap()),
        "the example policy's interfaces, pin_path and admin_socket lines were rewritten"
    );
    let config = dir.join("policy.toml");
    std::fs::write(&config, &policy).unwrap();

    // The unit's capability set, as far as this sandbox has it.
    let unit = read_deploy("systemd/tierguard.service");
    let entries = unit_entries(&unit);
    let have = bounding_caps();
    let mut granted = Vec::new();
    for (name, bit) in CAPS {
        if have & (1 << bit) != 0 {
            granted.push(name.trim_start_matches("CAP_").to_lowercase());
        } else {
            println!("note: this sandbox has no {name}; the agent runs without it here");
        }
    }
    let caps = format!(
        "-all,{}",
        granted
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let strace = which("strace");
    let trace = dir.join("strace.txt");
    let metrics = free_addr();
    let log = dir.join("agent.log");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--bounding-set",
        &caps,
        "--inh-caps",
        &caps,
        "--ambient-caps",
        &caps,
        "--no-new-privs",
        "--",
    ]);
    if let Some(s) = &strace {
        cmd.arg(s).args(["-f", "-qq", "-o"]).arg(&trace);
    }
    cmd.arg(binary())
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
            "--watch-interval",
            "1",
        ])
        .arg("--metrics-address")
        .arg(metrics.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start setpriv (util-linux): {e}"));
    let pid = child.id();
    let mut agent = Spawned {
        child,
        agent: pid,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = agent.child.try_wait().expect("wait") {
            panic!(
                "the agent exited early ({status}) under the unit's capabilities {caps}:\n{}",
                agent.log()
            );
        }
        if let Some((200, _)) = get(metrics, "/readyz") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent not ready after 60 s under capabilities {caps}:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if strace.is_some() {
        // setpriv exec'd strace, whose one child is the agent.
        agent.agent = *children(pid).first().expect("strace's child, the agent");
    }
    println!(
        "agent ready with capabilities {caps}, no-new-privs{}",
        if strace.is_some() {
            ", under strace"
        } else {
            ""
        }
    );

    // Traffic that shows the example policy's precedence: bogons and the
    // blocked range are dropped, the allow exception inside it passes.
    for (src, passes) in [
        ("198.51.100.7", false),
        ("198.18.1.1", false),
        ("198.18.10.5", true),
    ] {
        lab.add_peer_source(src);
        let ok = lab.ping(Some(src), &lab.node_v4(), 2);
        assert_eq!(
            ok,
            passes,
            "ping from {src}: the example policy should {} it",
            if passes { "pass" } else { "drop" }
        );
    }
    assert!(lab.ping(None, &lab.node_v4(), 2), "ordinary traffic passes");

    // Every exported metric the deploy files use is there, with its type.
    let body = scrape(metrics);
    let mut types = BTreeMap::new();
    for l in body.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                types.insert(n.to_string(), t.to_string());
            }
        }
    }
    for (name, ty) in METRICS {
        if EVENT_ONLY_METRICS.contains(name) {
            continue;
        }
        assert_eq!(
            types.get(*name).map(String::as_str),
            Some(*ty),
            "{name} is in a real scrape as a {ty}:\n{body}"
        );
    }
    let extra: Vec<&String> = types
        .keys()
        .filter(|n| !METRICS.iter().any(|(m, _)| m == n))
        .collect();
    println!(
        "real scrape: all {} used metrics present with the expected types (not yet seen: {EVENT_ONLY_METRICS:?}; others exported: {extra:?})",
        METRICS.len() - EVENT_ONLY_METRICS.len()
    );

    // A real Prometheus scrapes the agent as job "tierguard" and runs every
    // dashboard query and every alert expression.
    let prom = Prometheus::start(&dir, &[metrics]);
    let deadline = Instant::now() + Duration::from_secs(90);
    // Enough samples for rate() over 10 s, and a policy change inside the window.
    loop {
        if prom.ready()
            && !prom
                .query("tierguard_build_info{job=\"tierguard\"}")
                .is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the agent"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A policy change through the file (the ConfigMap path) and a SIGHUP (the
    // unit's ExecReload, which first runs `tierguard check` as the unit does).
    std::fs::write(&config, format!("{policy}\n[[lists]]\nname = \"late-addition\"\naction = \"deny\"\ncidrs = [\"192.0.2.128/25\"]\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(&scrape(metrics), "tierguard_policy_generation") != Some(2.0) {
        assert!(
            Instant::now() < deadline,
            "the changed policy file was not applied:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let check = run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "ExecReload's `tierguard check` on the node: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(agent.agent as i32, libc::SIGHUP) };
    for _ in 0..3 {
        assert!(!lab.ping(Some("198.51.100.7"), &lab.node_v4(), 3));
    }
    std::thread::sleep(Duration::from_secs(12));

    // Queries that legitimately return nothing on a healthy lab agent: no
    // scrape error, and the example policy has lists but no segmentation
    // rules (the segmentation end-to-end tests read those counters).
    let may_be_empty = |e: &str| {
        e.contains("tierguard_scrape_errors_total")
            || e.contains("tierguard_zone_pair_drops_total")
            || e.contains("tierguard_rule_packets_total")
    };
    let mut checked = 0;
    for (path, e) in dashboard_exprs() {
        let q = substitute(&e, "10s", "5m");
        let result = prom.query(&q);
        assert!(
            may_be_empty(&e) || !result.is_empty(),
            "dashboard query {path} returns nothing against a live agent:\n{q}"
        );
        checked += 1;
    }
    let rules = read_deploy("prometheus/tierguard-alerts.yaml");
    let mut alert_exprs = 0;
    let lines: Vec<&str> = rules.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.trim().strip_prefix("expr: ") else {
            continue;
        };
        let expr = if rest == ">-" {
            lines[i + 1..]
                .iter()
                .take_while(|x| x.starts_with("          "))
                .map(|x| x.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            rest.to_string()
        };
        prom.query(&expr);
        alert_exprs += 1;
    }
    assert!(
        alert_exprs >= 6,
        "found the alert expressions ({alert_exprs})"
    );
    // On this healthy agent, the critical "no program" alert must not fire.
    let no_program = lines
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("expr: ")
                .filter(|e| e.contains("no_program"))
        })
        .expect("the no_program alert expression");
    assert!(
        prom.query(no_program).is_empty(),
        "TierguardNoProgram would fire on a healthy agent"
    );
    let up = prom.query("up{job=\"tierguard\"} == 1");
    assert_eq!(up.len(), 1, "TierguardDown's `up` series is there and 1");
    drop(prom);
    println!(
        "Prometheus ran all {checked} dashboard queries (each with data) and {alert_exprs} alert expressions against the live agent"
    );

    // Stop as systemd would (SIGTERM); without --persist the agent cleans up.
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(agent.agent as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = agent.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop within 30 s of SIGTERM:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n{}",
        agent.log()
    );
    assert!(
        !pins.path().exists(),
        "pins removed on SIGTERM without --persist"
    );
    let agent_log = agent.log();
    assert!(
        !agent_log.contains("\"level\":\"ERROR\""),
        "the agent logged errors under the unit's privileges:\n{agent_log}"
    );

    // Every system call the agent made is one the unit's SystemCallFilter allows.
    let Some(_) = strace else {
        println!(
            "strace not found: the agent's system calls were NOT compared with the unit's SystemCallFilter"
        );
        return;
    };
    if which("systemd-analyze").is_none() {
        println!(
            "systemd-analyze not found: cannot expand the unit's SystemCallFilter; system calls NOT compared"
        );
        return;
    }
    let filter = unit_values(&entries, "Service", "SystemCallFilter");
    let allowed = allowed_syscalls(&filter);
    let mut used = BTreeSet::new();
    let f = std::fs::File::open(&trace).expect("strace output");
    for l in BufReader::new(f).lines() {
        let l = l.unwrap();
        // `PID name(args) = result`; resumed calls, signals and exits differ.
        let rest = l.split_once(' ').map_or("", |(_pid, r)| r.trim_start());
        let Some((name, _)) = rest.split_once('(') else {
            continue;
        };
        let is_name = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
        if !name.is_empty() && name.bytes().all(is_name) {
            used.insert(name.to_string());
        }
    }
    assert!(
        used.contains("bpf"),
        "strace saw the agent's bpf() calls: {used:?}"
    );
    let refused: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(
        refused.is_empty(),
        "the agent makes system calls the unit's SystemCallFilter ({filter:?}) refuses: {refused:?}\nall calls seen: {used:?}"
    );
    println!(
        "system calls: all {} the agent made are allowed by SystemCallFilter={filter:?}: {used:?}",
        used.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}
