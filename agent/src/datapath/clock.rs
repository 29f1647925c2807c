//! The kernel clocks the datapath stamps time with, seen from user space.
//!
//! Flow timestamps and the event sampler read jiffies when the agent could
//! tell their length: the verifier turns `bpf_jiffies64` into a plain memory
//! read, where `bpf_ktime_get_coarse_ns` is a helper call (10 to 15 ns on
//! machines with return-thunk mitigations). Flow stamps must stay comparable
//! with `CLOCK_MONOTONIC_COARSE` (the agent's sweeper and `explain` read it),
//! so the kernel computes `jiffies × ns_per_jiffy − offset`, with the offset
//! measured here: jiffies advance with the monotonic clock (the tick code
//! derives them from it), so one measurement holds for the life of the boot.

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock `bpf_ktime_get_coarse_ns` reads.
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The jiffy clock as the kernel programs use it: nanoseconds per jiffy and
/// the offset that turns `jiffies × ns_per_jiffy` into monotonic time, or
/// `None` if it cannot be told (the programs then call the coarse-clock
/// helper). Measured once per process.
pub fn jiffy_clock() -> Option<JiffyClock> {
    static CACHE: std::sync::OnceLock<Option<JiffyClock>> = std::sync::OnceLock::new();
    *CACHE.get_or_init(|| {
        let a = read_timer_list()?;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let b = read_timer_list()?;
        let hz = hz_from_samples(a, b)?;
        Some(JiffyClock::from_sample(1_000_000_000 / hz, b))
    })
}

/// Nanoseconds per kernel jiffy, or 0 if it cannot be told.
pub fn ns_per_jiffy() -> u64 {
    jiffy_clock().map_or(0, |c| c.ns_per_jiffy)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JiffyClock {
    pub ns_per_jiffy: u64,
    /// `jiffies × ns_per_jiffy − monotonic ns` (wrapping: jiffies start five
    /// minutes short of a 32-bit wrap, far ahead of the monotonic clock).
    pub offset_ns: u64,
}

impl JiffyClock {
    /// From one (monotonic ns, jiffies) sample. Jiffies lag the time they
    /// count by up to a tick, in the sample and at every later reading; one
    /// tick is taken off the offset so that the kernel's reading is never
    /// earlier than the monotonic clock (at most two ticks later), and a
    /// stamp read back by the sweeper never looks older than it is.
    pub fn from_sample(ns_per_jiffy: u64, (now, jiffies): (u64, u64)) -> JiffyClock {
        JiffyClock {
            ns_per_jiffy,
            offset_ns: jiffies
                .wrapping_mul(ns_per_jiffy)
                .wrapping_sub(now)
                .wrapping_sub(ns_per_jiffy),
        }
    }

    /// The monotonic time the kernel computes from `jiffies`.
    pub fn at(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(self.ns_per_jiffy)
            .wrapping_sub(self.offset_ns)
    }
}

/// (monotonic ns, jiffies) from /proc/timer_list.
fn read_timer_list() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/timer_list").ok()?;
    parse_timer_list(&text)
}

fn parse_timer_list(text: &str) -> Option<(u64, u64)> {
    let now = text.lines().find_map(|l| {
        l.strip_prefix("now at ")?
            .strip_suffix(" nsecs")?
            .trim()
            .parse()
            .ok()
    })?;
    let jiffies = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies: ")?.trim().parse().ok())?;
    Some((now, jiffies))
}

/// CONFIG_HZ from two (ns, jiffies) samples, if it is one of the usual values.
fn hz_from_samples(a: (u64, u64), b: (u64, u64)) -> Option<u64> {
    let dns = b.0.checked_sub(a.0)?;
    let dj = b.1.checked_sub(a.1)?;
    if dns < 50_000_000 {
        return None;
    }
    let hz = dj as f64 * 1e9 / dns as f64;
    [100u64, 250, 300, 1000]
        .into_iter()
        .find(|&h| (hz - h as f64).abs() <= h as f64 * 0.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hz_is_read_from_timer_list_samples() {
        let text = "Timer List Version: v0.10\nnow at 4719748217687 nsecs\n\ncpu: 0\n jiffies: 4296072170\n";
        assert_eq!(
            parse_timer_list(text),
            Some((4_719_748_217_687, 4_296_072_170))
        );
        assert_eq!(hz_from_samples((0, 1000), (100_000_000, 1025)), Some(250));
        assert_eq!(hz_from_samples((0, 1000), (100_000_000, 1026)), Some(250));
        assert_eq!(hz_from_samples((0, 1000), (100_000_000, 1100)), Some(1000));
        assert_eq!(hz_from_samples((0, 1000), (100_000_000, 1010)), Some(100));
        assert_eq!(
            hz_from_samples((0, 1000), (100_000_000, 1050)),
            None,
            "500 Hz is not a usual value"
        );
        assert_eq!(
            hz_from_samples((0, 1000), (10_000_000, 1003)),
            None,
            "too short to tell"
        );
    }

    #[test]
    fn the_jiffy_clock_reads_as_monotonic_time() {
        // 250 Hz, jiffies near their boot value, 10 s after boot.
        let jiffies = (1u64 << 32) - 300 * 250 + 2500;
        let c = JiffyClock::from_sample(4_000_000, (10_000_000_000, jiffies));
        // At the sample: a tick late, never early.
        assert_eq!(c.at(jiffies), 10_000_000_000 + 4_000_000);
        // A minute later, by jiffies.
        assert_eq!(c.at(jiffies + 60 * 250), 70_000_000_000 + 4_000_000);
    }

    #[test]
    fn this_machines_jiffy_clock_agrees_with_the_monotonic_clock() {
        let Some(c) = jiffy_clock() else {
            // Without /proc/timer_list the kernel uses the coarse helper.
            assert_eq!(ns_per_jiffy(), 0);
            return;
        };
        let (now, jiffies) = read_timer_list().expect("it was readable");
        let kernel = c.at(jiffies);
        let diff = kernel.abs_diff(now);
        assert!(
            diff <= 3 * c.ns_per_jiffy,
            "{kernel} vs {now}: {diff} ns apart"
        );
    }
}
