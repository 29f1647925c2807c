//! Prometheus metrics: agent state in a registry, kernel counters rendered at
//! scrape time from a fresh read of the maps (so they are true counters that
//! survive agent restarts, because the maps are pinned). docs/metrics.md lists them.

mod http;
pub mod limits;

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    proto::{Counter as PCounter, LabelPair, Metric, MetricFamily, MetricType},
};

pub use http::{Endpoint, serve};

use crate::datapath::{SamplerCounts, Stats};
use crate::policy::ListInfo;
use crate::policy::segmentation::{RuleInfo, ZoneInfo};

pub const PREFIX: &str = "tierguard";

/// Agent-side metrics; kernel counters are added at render time.
pub struct Metrics {
    registry: Registry,
    pub generation: IntGauge,
    pub load_seconds: Gauge,
    pub reloads: IntCounterVec,
    pub list_prefixes: IntGaugeVec,
    pub attach_mode: IntGaugeVec,
    pub policy_info: IntGaugeVec,
    pub scrape_errors: IntCounterVec,
    pub events_emitted: IntCounterVec,
    pub events_dropped: IntCounterVec,
    pub events_delivered: IntCounterVec,
    pub flows: IntGauge,
    pub flow_capacity: IntGauge,
    pub flows_expired: IntCounter,
    pub flow_evictions: IntCounter,
    pub http_refused: IntCounterVec,
}

/// Stages at which the agent can lose an event (`ring_full` is counted by the kernel).
pub const EVENT_DROP_STAGES: [&str; 3] = ["channel_full", "write_error", "decode"];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let generation = IntGauge::with_opts(opts(
            "policy_generation",
            "Generation number of the live policy.",
        ))
        .expect("valid metric");
        let load_seconds = Gauge::with_opts(opts(
            "policy_load_duration_seconds",
            "Time the last successful policy change took, from reading the config to the switch.",
        ))
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            opts(
                "policy_reloads_total",
                "Policy loads attempted, by result (success, failure).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let list_prefixes = IntGaugeVec::new(
            opts(
                "policy_list_prefixes",
                "Prefixes configured in each list, by address family.",
            ),
            &["list", "action", "family"],
        )
        .expect("valid metric");
        let attach_mode = IntGaugeVec::new(
            opts(
                "xdp_attach_mode",
                "1 for the XDP mode in use on each interface (native or generic).",
            ),
            &["interface", "mode"],
        )
        .expect("valid metric");
        let policy_info = IntGaugeVec::new(
            opts(
                "policy_info",
                "1, labelled with the live policy's hash and where it came from.",
            ),
            &["hash", "source"],
        )
        .expect("valid metric");
        let scrape_errors = IntCounterVec::new(
            opts(
                "scrape_errors_total",
                "Scrapes that could not read or encode everything, by stage (counters, encode).",
            ),
            &["stage"],
        )
        .expect("valid metric");
        let events_emitted = IntCounterVec::new(
            opts(
                "events_emitted_total",
                "Security events read from the kernel ring buffer, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let events_dropped = IntCounterVec::new(
            opts(
                "events_dropped_total",
                "Security events lost after sampling allowed them, by stage (ring_full, channel_full, write_error, decode).",
            ),
            &["stage"],
        )
        .expect("valid metric");
        let events_delivered = IntCounterVec::new(
            opts(
                "events_delivered_total",
                "Security events a sink confirmed delivered, by sink (webhook); present only when that sink is configured.",
            ),
            &["sink"],
        )
        .expect("valid metric");
        let flows = IntGauge::with_opts(opts(
            "flows",
            "Live flows in the flow table at the last sweep.",
        ))
        .expect("valid metric");
        let flow_capacity = IntGauge::with_opts(opts(
            "flow_table_capacity",
            "Flows the flow table holds before the least recently used is evicted.",
        ))
        .expect("valid metric");
        let flows_expired = IntCounter::with_opts(opts(
            "flows_expired_total",
            "Idle flows the agent freed after their timeout.",
        ))
        .expect("valid metric");
        let flow_evictions = IntCounter::with_opts(opts(
            "flow_evictions_total",
            "Flows evicted by the LRU table before they expired (created, minus live, minus expired).",
        ))
        .expect("valid metric");
        let http_refused = IntCounterVec::new(
            opts(
                "http_connections_refused_total",
                "Connections to this server closed unanswered because too many were open, by cause (server_full, source_full).",
            ),
            &["cause"],
        )
        .expect("valid metric");
        let build = IntGaugeVec::new(
            opts("build_info", "1, labelled with the agent's version."),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(generation.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(load_seconds.clone()),
            Box::new(reloads.clone()),
            Box::new(list_prefixes.clone()),
            Box::new(attach_mode.clone()),
            Box::new(policy_info.clone()),
            Box::new(scrape_errors.clone()),
            Box::new(events_emitted.clone()),
            Box::new(events_dropped.clone()),
            Box::new(events_delivered.clone()),
            Box::new(flows.clone()),
            Box::new(flow_capacity.clone()),
            Box::new(flows_expired.clone()),
            Box::new(flow_evictions.clone()),
            Box::new(http_refused.clone()),
            Box::new(build),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Both results exist from the start, so rate() works before the first failure.
        reloads.with_label_values(&["success"]);
        reloads.with_label_values(&["failure"]);
        for stage in EVENT_DROP_STAGES {
            events_dropped.with_label_values(&[stage]);
        }
        for cause in ["server_full", "source_full"] {
            http_refused.with_label_values(&[cause]);
        }
        Metrics {
            registry,
            generation,
            load_seconds,
            reloads,
            list_prefixes,
            attach_mode,
            policy_info,
            scrape_errors,
            events_emitted,
            events_dropped,
            events_delivered,
            flows,
            flow_capacity,
            flows_expired,
            flow_evictions,
            http_refused,
        }
    }

    /// Records the lists of a newly applied policy.
    pub fn set_policy(&self, generation: u64, hash: &str, source: &str, lists: &[ListInfo]) {
        self.generation.set(generation as i64);
        self.policy_info.reset();
        self.policy_info.with_label_values(&[hash, source]).set(1);
        self.list_prefixes.reset();
        for l in lists {
            let action = l.action.name();
            self.list_prefixes
                .with_label_values(&[l.name.as_str(), action, "ipv4"])
                .set(l.v4_prefixes as i64);
            self.list_prefixes
                .with_label_values(&[l.name.as_str(), action, "ipv6"])
                .set(l.v6_prefixes as i64);
        }
    }

    /// The text exposition: registry metrics plus kernel counters.
    pub fn render(&self, stats: Option<&Stats>, names: &PolicyNames) -> String {
        self.render_with(stats, names, None)
    }

    /// As `render`, with the event sampler's counters when they could be read.
    pub fn render_with(
        &self,
        stats: Option<&Stats>,
        names: &PolicyNames,
        sampler: Option<&SamplerCounts>,
    ) -> String {
        let mut families = self.registry.gather();
        if let Some(s) = stats {
            families.extend(kernel_families(s, names));
        }
        if let Some(c) = sampler {
            let suppressed = c
                .suppressed
                .iter()
                .map(|(r, n)| counter(vec![label("reason", r.name())], *n))
                .collect();
            families.push(family(
                "events_suppressed_total",
                "Security events not emitted because sampling said no (rate per reason or global cap), by reason.",
                suppressed,
            ));
            let ring_full: u64 = c.ring_full.iter().map(|(_, n)| n).sum();
            let name = format!("{PREFIX}_events_dropped_total");
            if let Some(f) = families.iter_mut().find(|f| f.name() == name) {
                let ms = f.mut_metric();
                ms.push(counter(vec![label("stage", "ring_full")], ring_full));
                ms.sort_by(|a, b| a.get_label()[0].value().cmp(b.get_label()[0].value()));
            }
        }
        // The text encoder refuses a family without samples (a policy with no
        // lists has no list-hit series): leave such families out.
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
            self.scrape_errors.with_label_values(&["encode"]).inc();
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn counter(labels: Vec<LabelPair>, value: u64) -> Metric {
    let mut c = PCounter::default();
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

fn family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(format!("{PREFIX}_{name}"));
    f.set_help(help.to_string());
    f.set_field_type(MetricType::COUNTER);
    f.set_metric(metrics);
    f
}

/// What kernel counters are labelled with: the names behind list, rule and zone ids.
#[derive(Debug, Clone, Default)]
pub struct PolicyNames {
    pub lists: Vec<ListInfo>,
    pub rules: Vec<RuleInfo>,
    pub zones: Vec<ZoneInfo>,
}

impl PolicyNames {
    pub fn of(policy: &crate::policy::CompiledPolicy) -> PolicyNames {
        PolicyNames {
            lists: policy.lists.clone(),
            rules: policy.segmentation.rules.clone(),
            zones: policy.segmentation.zones.clone(),
        }
    }

    fn zone(&self, id: u16) -> String {
        self.zones
            .get(id as usize)
            .map_or_else(|| format!("zone-{id}"), |z| z.name.clone())
    }
}

fn kernel_families(s: &Stats, names: &PolicyNames) -> Vec<MetricFamily> {
    let lists = &names.lists;
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    for (k, c) in &s.packets {
        let labels = || {
            vec![
                label("direction", k.direction.name()),
                label("interface", &k.iface),
                label("reason", k.reason.name()),
                label("verdict", k.verdict.name()),
            ]
        };
        packets.push(counter(labels(), c.packets));
        bytes.push(counter(labels(), c.bytes));
    }
    let mut hits = Vec::new();
    let mut hit_bytes = Vec::new();
    for (l, c) in lists.iter().zip(&s.lists) {
        let labels = || vec![label("action", l.action.name()), label("list", &l.name)];
        hits.push(counter(labels(), c.packets));
        hit_bytes.push(counter(labels(), c.bytes));
    }
    let mut rules = Vec::new();
    let mut rule_bytes = Vec::new();
    for (r, c) in names.rules.iter().zip(&s.rules) {
        let labels = || vec![label("action", r.action.name()), label("rule", &r.name)];
        rules.push(counter(labels(), c.packets));
        rule_bytes.push(counter(labels(), c.bytes));
    }
    let mut zone_drops = Vec::new();
    let mut zone_drop_bytes = Vec::new();
    for (src, dst, c) in &s.zone_drops {
        let labels = || {
            vec![
                label("dst_zone", &names.zone(*dst)),
                label("src_zone", &names.zone(*src)),
            ]
        };
        zone_drops.push(counter(labels(), c.packets));
        zone_drop_bytes.push(counter(labels(), c.bytes));
    }
    let flows = |v: u64| vec![counter(Vec::new(), v)];
    vec![
        family(
            "rule_packets_total",
            "Packets each segmentation rule decided (the rule that won).",
            rules,
        ),
        family(
            "rule_bytes_total",
            "Bytes of packets each segmentation rule decided.",
            rule_bytes,
        ),
        family(
            "zone_pair_drops_total",
            "Packets denied by segmentation (a deny rule or a deny default), by source and destination zone; in audit mode, those it would have dropped.",
            zone_drops,
        ),
        family(
            "zone_pair_drop_bytes_total",
            "Bytes of packets denied by segmentation, by zone pair.",
            zone_drop_bytes,
        ),
        family(
            "flows_created_total",
            "Flows opened in the flow table by allowed first packets.",
            flows(s.flows.created),
        ),
        family(
            "flow_insert_failures_total",
            "Flows the kernel could not insert (their replies need a rule of their own).",
            flows(s.flows.insert_failed),
        ),
        family(
            "flow_replies_total",
            "Reply packets passed because a live flow admitted them.",
            flows(s.flows.replies),
        ),
        family(
            "packets_total",
            "Packets seen by the datapath, by interface, direction, verdict and reason.",
            packets,
        ),
        family(
            "bytes_total",
            "Bytes seen by the datapath, by interface, direction, verdict and reason.",
            bytes,
        ),
        family(
            "list_hits_total",
            "Packets whose source matched a list (the list that decided).",
            hits,
        ),
        family(
            "list_hit_bytes_total",
            "Bytes of packets whose source matched a list.",
            hit_bytes,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use tierguard_common::{
        maps::{Counter, Direction, ListAction},
        reason::Reason,
    };

    use super::*;
    use crate::datapath::StatsKey;

    #[test]
    fn renders_a_policy_without_lists() {
        let m = Metrics::new();
        m.set_policy(1, "h", "p.toml", &[]);
        let stats = Stats::default();
        let text = m.render(Some(&stats), &PolicyNames::default());
        assert!(text.contains("tierguard_policy_generation 1"), "{text}");
        assert!(!text.contains("tierguard_list_hits_total"));
    }

    #[test]
    fn renders_kernel_counters_with_labels() {
        let m = Metrics::new();
        let lists = vec![ListInfo {
            name: "bogons".into(),
            action: ListAction::Deny,
            v4_prefixes: 2,
            v6_prefixes: 1,
        }];
        m.set_policy(3, "abc", "p.toml", &lists);
        let stats = Stats {
            packets: vec![(
                StatsKey {
                    iface: "eth0".into(),
                    direction: Direction::Ingress,
                    verdict: tierguard_common::Verdict::Drop,
                    reason: Reason::DenyList,
                },
                Counter {
                    packets: 7,
                    bytes: 420,
                },
            )],
            lists: vec![Counter {
                packets: 7,
                bytes: 420,
            }],
            rules: vec![Counter {
                packets: 4,
                bytes: 240,
            }],
            zone_drops: vec![(
                2,
                0,
                Counter {
                    packets: 9,
                    bytes: 540,
                },
            )],
            flows: crate::datapath::FlowCounters {
                created: 11,
                insert_failed: 0,
                replies: 30,
            },
        };
        let names = PolicyNames {
            lists: lists.clone(),
            rules: vec![RuleInfo {
                name: "edge-to-dmz".into(),
                action: tierguard_common::segment::RuleAction::Allow,
                description: None,
                origin: "p.toml:9:1".into(),
            }],
            zones: ["world", "host", "edge"]
                .iter()
                .map(|n| ZoneInfo {
                    name: n.to_string(),
                })
                .collect(),
        };
        let text = m.render(Some(&stats), &names);
        assert!(
            text.contains("tierguard_rule_packets_total{action=\"allow\",rule=\"edge-to-dmz\"} 4"),
            "{text}"
        );
        assert!(
            text.contains(
                "tierguard_zone_pair_drops_total{dst_zone=\"world\",src_zone=\"edge\"} 9"
            ),
            "{text}"
        );
        assert!(text.contains("tierguard_flows_created_total 11"), "{text}");
        assert!(text.contains("tierguard_flow_replies_total 30"), "{text}");
        assert!(text.contains(
            "tierguard_packets_total{direction=\"ingress\",interface=\"eth0\",reason=\"deny_list\",verdict=\"drop\"} 7"
        ), "{text}");
        assert!(text.contains("tierguard_bytes_total{direction=\"ingress\",interface=\"eth0\",reason=\"deny_list\",verdict=\"drop\"} 420"));
        assert!(text.contains("tierguard_list_hits_total{action=\"deny\",list=\"bogons\"} 7"));
        assert!(text.contains("# TYPE tierguard_packets_total counter"));
        assert!(text.contains("tierguard_policy_generation 3"));
        assert!(text.contains(
            "tierguard_policy_list_prefixes{action=\"deny\",family=\"ipv4\",list=\"bogons\"} 2"
        ));
        assert!(text.contains("tierguard_policy_reloads_total{result=\"failure\"} 0"));
    }

    #[test]
    fn renders_event_counters() {
        let m = Metrics::new();
        m.events_emitted.with_label_values(&["deny_list"]).inc_by(5);
        m.events_dropped
            .with_label_values(&["channel_full"])
            .inc_by(2);
        let sampler = SamplerCounts {
            suppressed: vec![(Reason::DenyList, 40), (Reason::Malformed, 0)],
            ring_full: vec![(Reason::DenyList, 3)],
        };
        let text = m.render_with(None, &PolicyNames::default(), Some(&sampler));
        assert!(
            text.contains("tierguard_events_emitted_total{reason=\"deny_list\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("tierguard_events_suppressed_total{reason=\"deny_list\"} 40"),
            "{text}"
        );
        assert!(
            text.contains("tierguard_events_suppressed_total{reason=\"malformed\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("tierguard_events_dropped_total{stage=\"channel_full\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tierguard_events_dropped_total{stage=\"ring_full\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tierguard_events_dropped_total{stage=\"write_error\"} 0"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE tierguard_events_dropped_total counter")
                .count(),
            1
        );
    }
}
