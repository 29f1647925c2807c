//! Limit and block metrics: counters read from the kernel at each scrape,
//! gauges kept current by the block sweeper. docs/metrics.md lists them.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};

use prometheus::{
    Encoder, TextEncoder,
    proto::{Gauge, Metric, MetricFamily, MetricType},
};

use super::{PREFIX, counter, label};
use crate::datapath::{LimitCounters, LimitReader};
use crate::policy::limits::LimitInfo;

/// What the limit metrics are made of.
pub struct LimitMetrics {
    reader: Mutex<Option<LimitReader>>,
    limits: RwLock<Vec<LimitInfo>>,
    blocked: AtomicI64,
    /// Tracked keys by limit id, at the last measure.
    tracked: Mutex<Vec<u64>>,
    state_bytes: u64,
}

fn gauge(labels: Vec<prometheus::proto::LabelPair>, value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(format!("{PREFIX}_{name}"));
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

impl LimitMetrics {
    pub fn new(state_bytes: u64) -> LimitMetrics {
        LimitMetrics {
            reader: Mutex::new(None),
            limits: RwLock::new(Vec::new()),
            blocked: AtomicI64::new(0),
            tracked: Mutex::new(Vec::new()),
            state_bytes,
        }
    }

    pub fn set_reader(&self, r: LimitReader) {
        if let Ok(mut g) = self.reader.lock() {
            *g = Some(r);
        }
    }

    /// The limits of the live policy.
    pub fn set_limits(&self, limits: &[LimitInfo]) {
        if let Ok(mut l) = self.limits.write() {
            *l = limits.to_vec();
        }
    }

    pub fn limits(&self) -> Vec<LimitInfo> {
        self.limits.read().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn set_blocked(&self, n: usize) {
        self.blocked.store(n as i64, Ordering::Relaxed);
    }

    pub fn set_tracked(&self, by_limit: Vec<u64>) {
        if let Ok(mut t) = self.tracked.lock() {
            *t = by_limit;
        }
    }

    /// The exposition of the limit metrics; an error if the kernel
    /// counters could not be read (the gauges are rendered anyway).
    pub fn render(&self) -> (String, Option<String>) {
        let limits = self.limits();
        let (counters, error) = match self.reader.lock().ok().as_deref().map(|r| r.as_ref()) {
            Some(Some(r)) => match r.counters(limits.len()) {
                Ok(c) => (c, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            },
            _ => (Vec::new(), None),
        };
        let tracked = self.tracked.lock().map(|t| t.clone()).unwrap_or_default();
        let families = families(
            &limits,
            &counters,
            &tracked,
            self.blocked.load(Ordering::Relaxed),
            self.state_bytes,
        );
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            return (String::new(), Some(e.to_string()));
        }
        (String::from_utf8_lossy(&buf).into_owned(), error)
    }
}

fn families(
    limits: &[LimitInfo],
    counters: &[LimitCounters],
    tracked: &[u64],
    blocked: i64,
    state_bytes: u64,
) -> Vec<MetricFamily> {
    let (mut packets, mut blocks, mut failures, mut overflow, mut lost, mut keys) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (l, c) in limits.iter().zip(counters) {
        let name = || label("limit", &l.name);
        for (result, n) in [
            ("passed", c.passed),
            ("dropped", c.dropped),
            ("audited", c.audited),
        ] {
            packets.push(counter(vec![name(), label("result", result)], n));
        }
        blocks.push(counter(vec![name()], c.blocks));
        failures.push(counter(vec![name()], c.block_failed));
        overflow.push(counter(vec![name()], c.overflow));
        lost.push(counter(vec![name()], c.block_events_lost));
    }
    for (l, n) in limits.iter().zip(tracked) {
        keys.push(gauge(vec![label("limit", &l.name)], *n as f64));
    }
    let mut out = vec![
        family(
            "blocked_sources",
            "Prefixes blocked now (by limits and over the admin socket), at the last sweep.",
            MetricType::GAUGE,
            vec![gauge(Vec::new(), blocked as f64)],
        ),
        family(
            "limit_state_bytes",
            "Kernel memory of the limiter's state at its fixed capacity (slots of 16 limits, shared buckets, counters).",
            MetricType::GAUGE,
            vec![gauge(Vec::new(), state_bytes as f64)],
        ),
    ];
    for (name, help, kind, metrics) in [
        (
            "limit_packets_total",
            "Packets each limit matched, by result: passed (within it), dropped (over it, action drop or block), audited (over it, action audit).",
            MetricType::COUNTER,
            packets,
        ),
        (
            "limit_blocks_total",
            "Blocks each limit started (one per crossing of its threshold).",
            MetricType::COUNTER,
            blocks,
        ),
        (
            "limit_block_failures_total",
            "Blocks a limit could not start because the blocked table was full.",
            MetricType::COUNTER,
            failures,
        ),
        (
            "limit_overflow_packets_total",
            "Packets charged to a per-key limit's overflow bucket: their key found both of its slots held by other keys in use.",
            MetricType::COUNTER,
            overflow,
        ),
        (
            "limit_block_events_lost_total",
            "Block-started events the full ring buffer refused (the blocks themselves started).",
            MetricType::COUNTER,
            lost,
        ),
        (
            "limit_tracked_keys",
            "Slots of each per-key limit holding a key seen in the last 60 s, at the last measure (every 10 s).",
            MetricType::GAUGE,
            keys,
        ),
    ] {
        // The text encoder refuses a family without samples.
        if !metrics.is_empty() {
            out.push(family(name, help, kind, metrics));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tierguard_common::limiter::{LimitAction, Per};

    use super::*;

    #[test]
    fn renders_counters_and_gauges_by_limit() {
        let limits = vec![LimitInfo {
            name: "syn-flood".into(),
            per: Per::Source,
            action: LimitAction::Block,
            block_for: Some(Duration::from_secs(60)),
            origin: "p.toml:2:8".into(),
        }];
        let counters = vec![LimitCounters {
            passed: 100,
            dropped: 7,
            audited: 0,
            overflow: 3,
            blocks: 1,
            block_failed: 0,
            block_events_lost: 0,
        }];
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(
                &families(&limits, &counters, &[42], 2, 12_583_424),
                &mut buf,
            )
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        for want in [
            "tierguard_limit_packets_total{limit=\"syn-flood\",result=\"passed\"} 100",
            "tierguard_limit_packets_total{limit=\"syn-flood\",result=\"dropped\"} 7",
            "tierguard_limit_packets_total{limit=\"syn-flood\",result=\"audited\"} 0",
            "tierguard_limit_blocks_total{limit=\"syn-flood\"} 1",
            "tierguard_limit_overflow_packets_total{limit=\"syn-flood\"} 3",
            "tierguard_limit_tracked_keys{limit=\"syn-flood\"} 42",
            "tierguard_blocked_sources 2",
            "tierguard_limit_state_bytes 12583424",
            "# TYPE tierguard_limit_tracked_keys gauge",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        // No limits: only the two gauges.
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&families(&[], &[], &[], 0, 1), &mut buf)
            .unwrap();
        assert!(
            !String::from_utf8(buf)
                .unwrap()
                .contains("limit_packets_total")
        );
    }
}
