//! The event maps: writing the sampling configuration, opening the ring
//! buffer and reading the sampler's counters.

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use tierguard_common::{
    event::{Bucket, EventConfig, NodeRates},
    maps::names,
    reason::Reason,
};

use super::map_access::{map_err, pinned};
use super::{Datapath, DatapathError, Result, clock::ns_per_jiffy};
use crate::config::EventsConfig;

/// The kernel configuration for `cfg` on a machine with `cpus` possible CPUs:
/// each CPU samples on its own, so rates and bursts are divided among them.
/// The global bucket holds one second's worth of the global rate.
pub fn kernel_config(cfg: &EventsConfig, cpus: u64) -> EventConfig {
    if !cfg.enabled {
        return EventConfig::default();
    }
    let figures = NodeRates {
        rate: cfg.rate_per_reason,
        burst: cfg.burst,
        source_rate: cfg.rate_per_source,
        source_burst: cfg.burst_per_source,
        global_rate: cfg.global_rate,
        global_burst: cfg.global_rate,
    };
    EventConfig::per_cpu(figures, cpus, source_seed())
}

/// A random seed for the source-slot hash, drawn once per agent process (a
/// restart redraws it, which only reshuffles which sources share a slot).
fn source_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let mut b = [0u8; 8];
        // SAFETY: getrandom writes at most b.len() bytes into the buffer we own.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n == b.len() as isize {
            u64::from_ne_bytes(b)
        } else {
            // No entropy (not expected after boot): the clock still varies by node.
            super::clock::coarse_now_ns().rotate_left(17) ^ u64::from(std::process::id())
        }
    })
}

/// Possible CPUs: the number of values in a per-CPU map.
pub fn cpus() -> u64 {
    aya::util::nr_cpus().map(|n| n as u64).unwrap_or(1).max(1)
}

impl Datapath {
    /// Writes the `[events]` settings into `TG_EVENT_CONFIG`: one map write,
    /// effective on the next packet.
    pub fn set_events(&mut self, cfg: &EventsConfig) -> Result<EventConfig> {
        let name = names::EVENT_CONFIG;
        let mut value = kernel_config(cfg, cpus());
        if value.enabled != 0 {
            value.ns_per_jiffy = ns_per_jiffy();
        }
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { map: name })?;
        let mut array: Array<_, EventConfig> = Array::try_from(map).map_err(map_err(name))?;
        array.set(0, value, 0).map_err(map_err(name))?;
        Ok(value)
    }

    /// The event ring buffer, opened from its pin (so it is independent of
    /// the datapath's borrow).
    pub fn event_ring(&self) -> Result<RingBuf<MapData>> {
        pinned(self.pin_dir(), names::EVENTS)
    }

    /// A reader of the sampler's per-reason counters.
    pub fn sampler_reader(&self) -> Result<SamplerReader> {
        Ok(SamplerReader {
            map: pinned(self.pin_dir(), names::EVENT_SAMPLER)?,
        })
    }
}

/// Sampler counters summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SamplerCounts {
    /// Events not emitted because sampling said no, by reason.
    pub suppressed: Vec<(Reason, u64)>,
    /// Events sampling allowed but the full ring buffer refused, by reason.
    pub ring_full: Vec<(Reason, u64)>,
}

pub struct SamplerReader {
    map: PerCpuArray<MapData, Bucket>,
}

impl SamplerReader {
    pub fn read(&self) -> Result<SamplerCounts> {
        let mut out = SamplerCounts::default();
        for reason in Reason::ALL {
            let v = self
                .map
                .get(&u32::from(reason as u8), 0)
                .map_err(map_err(names::EVENT_SAMPLER))?;
            let suppressed = v.iter().fold(0u64, |a, b| a.saturating_add(b.suppressed));
            let lost = v.iter().fold(0u64, |a, b| a.saturating_add(b.lost));
            out.suppressed.push((reason, suppressed));
            out.ring_full.push((reason, lost));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_config_writes_zero_and_enabled_divides_by_cpus() {
        let off = EventsConfig::default();
        assert_eq!(kernel_config(&off, 4), EventConfig::default());
        let on = EventsConfig {
            enabled: true,
            ..EventsConfig::default()
        };
        let k = kernel_config(&on, 4);
        assert_eq!(
            (k.enabled, k.rate, k.burst, k.global_rate, k.global_burst),
            (1, 25, 50, 250, 250)
        );
        assert_eq!(k.fill_ns, 2_000_000_000, "50 tokens at 25/s");
    }
}
