//! The embedded default policy (config/default.toml) says what the estate
//! description says: checked through `tierguard explain`, which runs the
//! kernel's decision code over the compiled tables (the kernel itself is
//! compared with explain in prog_test_run.rs).

use tierguard_tests::agent::run_cli;

/// (direction, src, dst, proto, dport, expected verdict, expected rule or list or failsafe)
const CASES: &[(&str, &str, &str, &str, u16, &str, &str)] = &[
    // The public reaches the edge on 443, and only on 443.
    (
        "ingress",
        "198.51.99.7",
        "10.10.0.5",
        "tcp",
        443,
        "pass",
        "public-to-edge-https",
    ),
    ("ingress", "198.51.99.7", "10.10.0.5", "tcp", 80, "drop", ""),
    (
        "ingress",
        "198.51.99.7",
        "10.20.0.5",
        "tcp",
        443,
        "drop",
        "",
    ),
    // The edge reaches the DMZ on 443 and 8443.
    (
        "ingress",
        "10.10.0.5",
        "10.20.0.5",
        "tcp",
        443,
        "pass",
        "edge-to-dmz-https",
    ),
    (
        "ingress",
        "10.10.0.5",
        "10.20.0.5",
        "tcp",
        8443,
        "pass",
        "edge-to-dmz-https",
    ),
    ("ingress", "10.10.0.5", "10.20.0.5", "tcp", 8080, "drop", ""),
    // Only the DMZ reaches the core's mesh port.
    (
        "ingress",
        "10.20.0.5",
        "10.30.0.5",
        "tcp",
        15443,
        "pass",
        "dmz-to-core-mesh",
    ),
    (
        "ingress",
        "10.10.0.5",
        "10.30.0.5",
        "tcp",
        15443,
        "drop",
        "",
    ),
    (
        "ingress",
        "198.51.99.7",
        "10.30.0.5",
        "tcp",
        15443,
        "drop",
        "",
    ),
    (
        "ingress",
        "fd00:20::5",
        "fd00:30::5",
        "tcp",
        15443,
        "pass",
        "dmz-to-core-mesh",
    ),
    (
        "ingress",
        "fd00:10::5",
        "fd00:30::5",
        "tcp",
        15443,
        "drop",
        "",
    ),
    // Only the bastions reach SSH in the core (the failsafe answers first).
    (
        "ingress",
        "10.99.0.5",
        "10.30.0.5",
        "tcp",
        22,
        "pass",
        "ssh",
    ),
    (
        "ingress",
        "10.20.0.5",
        "10.30.0.5",
        "tcp",
        22,
        "drop",
        "ssh-only-from-bastion",
    ),
    (
        "ingress",
        "10.30.0.6",
        "10.30.0.5",
        "tcp",
        22,
        "drop",
        "ssh-only-from-bastion",
    ),
    // The core reaches nothing outside the estate but the mirror on 443.
    (
        "egress",
        "10.30.0.5",
        "198.18.0.9",
        "tcp",
        443,
        "pass",
        "core-to-mirror",
    ),
    ("egress", "10.30.0.5", "198.18.0.9", "tcp", 80, "drop", ""),
    ("egress", "10.30.0.5", "198.51.99.7", "tcp", 443, "drop", ""),
    // Bogon sources are dropped by the list before anything else.
    (
        "ingress",
        "203.0.113.7",
        "10.10.0.5",
        "tcp",
        443,
        "drop",
        "bogons",
    ),
];

fn field<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

#[test]
fn the_default_policy_enforces_the_estate_it_describes() {
    let mut failures = Vec::new();
    for &(dir, src, dst, proto, dport, verdict, by) in CASES {
        let port = dport.to_string();
        let out = run_cli(&[
            "explain",
            "--src",
            src,
            "--dst",
            dst,
            "--proto",
            proto,
            "--dport",
            &port,
            "--direction",
            dir,
            "--json",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => panic!(
                "explain {src} -> {dst}:{dport}: not JSON ({e}): {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        };
        let decided_by = [field(&v, "rule"), field(&v, "list"), field(&v, "failsafe")]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or("");
        if field(&v, "verdict") != verdict || (!by.is_empty() && decided_by != by) {
            failures.push(format!(
                "{dir} {src} -> {dst} {proto}/{dport}: expected {verdict} by {by:?}, got {} by {decided_by:?} (stage {})",
                field(&v, "verdict"),
                field(&v, "stage")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_default_policy_passes_check() {
    let out = run_cli(&["check"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
