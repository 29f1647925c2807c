//! Security events: the record the kernel writes to the ring buffer, the
//! configuration the agent writes for the kernel, and the sampling arithmetic
//! (token buckets) both run. docs/events.md describes every field.
//!
//! Sampling is per CPU: each CPU keeps its own bucket per reason and its own
//! global bucket, and the agent writes rates and bursts already divided by the
//! number of CPUs, so the node-wide figures are at most the configured ones.

use crate::maps::MAX_REASONS;

/// Version of [`Event`]; bumped on any layout change (2: `kind` and the
/// block fields).
pub const EVENT_VERSION: u8 = 3;
/// [`Event::kind`]: a sampled record of a dropped or audited packet.
pub const KIND_PACKET: u8 = 0;
/// [`Event::kind`]: a limit started a block (one record per block, not
/// sampled); the packet fields are those of the packet that crossed it.
pub const KIND_BLOCK_STARTED: u8 = 1;
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const RING_BYTES: u32 = 1 << 20;
/// Nanoseconds per second: the unit bucket levels are scaled by.
pub const NS_PER_SEC: u64 = 1_000_000_000;
/// Largest rate or burst the agent accepts (events per second / events).
pub const MAX_RATE: u64 = 1_000_000;
/// Index of the global bucket in the sampler array (after the per-reason ones).
pub const GLOBAL_BUCKET: u32 = MAX_REASONS;
/// Entries of the sampler array: one per reason, then the global one.
pub const SAMPLER_SIZE: u32 = MAX_REASONS + 1;
/// The kernel asks for a consumer wake-up on every this many events it
/// emits (per CPU); others are submitted without one and picked up by the
/// agent's periodic drain. Batching keeps a flood from costing a wake-up per event.
pub const WAKEUP_EVERY: u64 = 32;

/// One security event, as written by the kernel. No implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// [`EVENT_VERSION`].
    pub version: u8,
    /// `Direction` as u8.
    pub direction: u8,
    /// `Verdict` as u8.
    pub verdict: u8,
    /// `Reason` as u8.
    pub reason: u8,
    /// 4 or 6 (0 if not IP).
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Packet `FLAG_*` bits.
    pub packet_flags: u8,
    /// List (or rule) id that decided; `NO_ID` if none.
    pub list_id: u16,
    pub ifindex: u32,
    /// bpf_ktime_get_ns (monotonic, since boot).
    pub time_ns: u64,
    /// Events of this reason not emitted on this CPU since the previous
    /// emitted one: "N more like this".
    pub suppressed: u64,
    /// Addresses in network byte order; IPv4 in the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// Frame length in bytes.
    pub len: u32,
    /// `KIND_*`.
    pub kind: u8,
    /// For a block start: prefix length of the blocked source prefix.
    pub block_len: u8,
    pub _pad: u16,
    /// For a block start: its duration in seconds.
    pub block_secs: u32,
    /// Zones of the source and destination (`NO_ZONE` when not looked up).
    pub src_zone: u16,
    pub dst_zone: u16,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<Event>() == 88);
const _: () = assert!(core::mem::align_of::<Event>() == 8);

impl Event {
    pub const EMPTY: Event = Event {
        version: EVENT_VERSION,
        direction: 0,
        verdict: 0,
        reason: 0,
        family: 0,
        proto: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        packet_flags: 0,
        list_id: crate::decide::NO_ID,
        ifindex: 0,
        time_ns: 0,
        suppressed: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        len: 0,
        kind: KIND_PACKET,
        block_len: 0,
        _pad: 0,
        block_secs: 0,
        src_zone: crate::decide::NO_ZONE,
        dst_zone: crate::decide::NO_ZONE,
        _pad2: 0,
    };

    /// Decodes a record from ring-buffer bytes (user space): `None` if too
    /// short or of another version.
    pub fn from_bytes(b: &[u8]) -> Option<Event> {
        if b.len() < core::mem::size_of::<Event>() || b[0] != EVENT_VERSION {
            return None;
        }
        // SAFETY: length checked; every bit pattern is a valid Event; unaligned read.
        Some(unsafe { core::ptr::read_unaligned(b.as_ptr() as *const Event) })
    }
}

/// Event settings the agent writes into `TG_EVENT_CONFIG[0]`. Rates and
/// bursts are per CPU (the agent divides the configured figures). Build it
/// with [`EventConfig::new`] so the fill times match the rates.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventConfig {
    /// 0: no events (the default); 1: events for drops.
    pub enabled: u32,
    pub _pad: u32,
    /// Per reason, events per second per CPU.
    pub rate: u64,
    /// Per reason, bucket size per CPU.
    pub burst: u64,
    /// All reasons together, events per second per CPU.
    pub global_rate: u64,
    /// All reasons together, bucket size per CPU.
    pub global_burst: u64,
    /// Nanoseconds to fill an empty per-reason bucket: precomputed so the
    /// datapath never divides.
    pub fill_ns: u64,
    /// The same for the global bucket.
    pub global_fill_ns: u64,
    /// Nanoseconds per kernel jiffy (1e9 / CONFIG_HZ) if the agent could tell
    /// it: the sampler's clock is then `jiffies × ns_per_jiffy`, a plain
    /// memory read. 0: the sampler reads the coarse monotonic clock instead.
    pub ns_per_jiffy: u64,
}
const _: () = assert!(core::mem::size_of::<EventConfig>() == 64);

const fn clamp(v: u64) -> u64 {
    if v == 0 {
        1
    } else if v > MAX_RATE {
        MAX_RATE
    } else {
        v
    }
}

/// Nanoseconds to fill an empty bucket of `burst` at `rate` (rounded up).
pub const fn fill_ns(rate: u64, burst: u64) -> u64 {
    let burst = if burst > MAX_RATE { MAX_RATE } else { burst };
    let rate = if rate == 0 { 1 } else { rate };
    (burst * NS_PER_SEC).div_ceil(rate)
}

impl EventConfig {
    /// Events on, with these per-CPU rates and bursts (each clamped to 1..=MAX_RATE).
    pub const fn new(rate: u64, burst: u64, global_rate: u64, global_burst: u64) -> EventConfig {
        let (rate, burst, global_rate, global_burst) = (
            clamp(rate),
            clamp(burst),
            clamp(global_rate),
            clamp(global_burst),
        );
        EventConfig {
            enabled: 1,
            _pad: 0,
            rate,
            burst,
            global_rate,
            global_burst,
            fill_ns: fill_ns(rate, burst),
            global_fill_ns: fill_ns(global_rate, global_burst),
            ns_per_jiffy: 0,
        }
    }

    /// The per-CPU configuration for node-wide figures spread over `cpus` CPUs.
    /// Each share is rounded down but never below 1 (so with fewer events per
    /// second than CPUs the node-wide rate can reach one per CPU per second).
    pub fn per_cpu(
        rate: u64,
        burst: u64,
        global_rate: u64,
        global_burst: u64,
        cpus: u64,
    ) -> EventConfig {
        let share = |v: u64| (v / cpus.max(1)).max(1);
        EventConfig::new(
            share(rate),
            share(burst),
            share(global_rate),
            share(global_burst),
        )
    }
}

/// Per-CPU sampling state of one reason (or of the global bucket).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Tokens times [`NS_PER_SEC`]: one event costs `NS_PER_SEC`, and `rate`
    /// events per second refill `rate` units per nanosecond, exactly.
    pub level: u64,
    /// Time of the last refill (ns); 0 before first use (the bucket starts full).
    pub last_ns: u64,
    /// Events not emitted since the last emitted one (reset on emit). In the
    /// global bucket, which suppresses nothing itself: events emitted on this
    /// CPU, used to pace consumer wake-ups.
    pub pending: u64,
    /// Events not emitted, ever (the agent's suppressed counter).
    pub suppressed: u64,
    /// Events the sampler allowed but the ring buffer had no room for.
    pub lost: u64,
}
const _: () = assert!(core::mem::size_of::<Bucket>() == 40);

impl Bucket {
    /// Refills for the time elapsed since the last refill. Integer-only, no
    /// division, and overflow-free for any gap: a gap of at least `fill_ns`
    /// (the time to fill an empty bucket, see [`fill_ns`]) fills it without
    /// multiplying, and a shorter gap multiplies to less than `cap + rate`.
    #[inline(always)]
    pub fn refill(&mut self, now: u64, rate: u64, burst: u64, fill_ns: u64) {
        // Bursts are clamped to MAX_RATE so the cap cannot overflow (no
        // saturating_mul: it needs 128-bit arithmetic, which BPF lacks).
        let cap = if burst > MAX_RATE { MAX_RATE } else { burst } * NS_PER_SEC;
        if self.last_ns == 0 {
            self.level = cap;
            self.last_ns = now;
            return;
        }
        // A clock read before `last_ns` (not expected per CPU, but possible if
        // the clock source changed) adds nothing and restarts from `now`.
        let elapsed = now.saturating_sub(self.last_ns);
        self.last_ns = now;
        if elapsed >= fill_ns {
            self.level = cap;
        } else {
            // elapsed < fill_ns = ceil(cap / rate): elapsed * rate < cap + rate.
            let level = self.level + elapsed * rate;
            self.level = if level > cap { cap } else { level };
        }
    }

    #[inline(always)]
    pub fn has_token(&self) -> bool {
        self.level >= NS_PER_SEC
    }

    #[inline(always)]
    pub fn take(&mut self) {
        self.level -= NS_PER_SEC;
    }
}

/// The sampling decision for one event: refills both buckets and, if both
/// hold a token, takes one from each and returns true. Otherwise counts the
/// event as suppressed in `per_reason` and returns false. On true the caller
/// emits the event carrying `per_reason.pending` and then calls [`emitted`].
#[inline(always)]
pub fn sample(per_reason: &mut Bucket, global: &mut Bucket, cfg: &EventConfig, now: u64) -> bool {
    sample_reason(per_reason, cfg, now) && sample_global(per_reason, global, cfg, now)
}

/// First half of [`sample`]: the per-reason bucket alone. On false the event
/// is counted as suppressed and the global bucket need not be read at all
/// (the kernel's cheap path). Refilling later gives the same level as
/// refilling now, so skipping the global bucket changes nothing.
#[inline(always)]
pub fn sample_reason(per_reason: &mut Bucket, cfg: &EventConfig, now: u64) -> bool {
    per_reason.refill(now, cfg.rate, cfg.burst, cfg.fill_ns);
    if per_reason.has_token() {
        true
    } else {
        suppress(per_reason);
        false
    }
}

/// Second half of [`sample`], after [`sample_reason`] said yes: takes a token
/// from both buckets if the global one has one, else counts the event as suppressed.
#[inline(always)]
pub fn sample_global(
    per_reason: &mut Bucket,
    global: &mut Bucket,
    cfg: &EventConfig,
    now: u64,
) -> bool {
    global.refill(now, cfg.global_rate, cfg.global_burst, cfg.global_fill_ns);
    if global.has_token() {
        per_reason.take();
        global.take();
        true
    } else {
        suppress(per_reason);
        false
    }
}

#[inline(always)]
fn suppress(per_reason: &mut Bucket) {
    per_reason.pending += 1;
    per_reason.suppressed += 1;
}

/// After a successful emit: the pending count went out with the event.
#[inline(always)]
pub fn emitted(per_reason: &mut Bucket) {
    per_reason.pending = 0;
}

/// The ring buffer had no room for an allowed event: count it as lost, and
/// let the next emitted event carry it in its `suppressed` count.
#[inline(always)]
pub fn lost(per_reason: &mut Bucket) {
    per_reason.lost += 1;
    per_reason.pending += 1;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, explicit padding, no invalid bit patterns.
    unsafe impl aya::Pod for super::EventConfig {}
    unsafe impl aya::Pod for super::Bucket {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: u64, burst: u64) -> EventConfig {
        EventConfig::new(rate, burst, MAX_RATE, MAX_RATE)
    }

    #[test]
    fn record_layout_is_fixed() {
        use core::mem::offset_of;
        assert_eq!(offset_of!(Event, version), 0);
        assert_eq!(offset_of!(Event, list_id), 10);
        assert_eq!(offset_of!(Event, ifindex), 12);
        assert_eq!(offset_of!(Event, time_ns), 16);
        assert_eq!(offset_of!(Event, suppressed), 24);
        assert_eq!(offset_of!(Event, src), 32);
        assert_eq!(offset_of!(Event, dst), 48);
        assert_eq!(offset_of!(Event, sport), 64);
        assert_eq!(offset_of!(Event, dport), 66);
        assert_eq!(offset_of!(Event, len), 68);
        assert_eq!(offset_of!(Event, kind), 72);
        assert_eq!(offset_of!(Event, block_secs), 76);
        assert_eq!(offset_of!(Event, src_zone), 80);
        assert_eq!(offset_of!(Event, dst_zone), 82);
        // The sum of field sizes is the size: no implicit padding.
        let fields = 10 + 2 + 4 + 8 + 8 + 16 + 16 + 2 + 2 + 4 + 1 + 1 + 2 + 4 + 2 + 2 + 4;
        assert_eq!(fields, core::mem::size_of::<Event>());
    }

    #[test]
    fn decode_round_trips_and_refuses_other_versions() {
        let mut e = Event::EMPTY;
        e.reason = 3;
        e.src[..4].copy_from_slice(&[192, 0, 2, 1]);
        e.len = 98;
        e.suppressed = 7;
        // SAFETY: viewing a repr(C) value without padding as bytes.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                &e as *const Event as *const u8,
                core::mem::size_of::<Event>(),
            )
        };
        assert_eq!(Event::from_bytes(bytes), Some(e));
        assert_eq!(Event::from_bytes(&bytes[..79]), None);
        let mut other = bytes.to_vec();
        other[0] = 1;
        assert_eq!(Event::from_bytes(&other), None);
    }

    /// Simulates events arriving every `gap` ns for `n` events; returns how many were allowed.
    fn run(cfg: &EventConfig, start: u64, gap: u64, n: u64) -> (u64, Bucket) {
        let mut b = Bucket::default();
        let mut g = Bucket::default();
        let mut allowed = 0;
        for i in 0..n {
            if sample(&mut b, &mut g, cfg, start + i * gap) {
                allowed += 1;
                emitted(&mut b);
            }
        }
        (allowed, b)
    }

    #[test]
    fn never_exceeds_rate_times_window_plus_burst() {
        for (rate, burst, gap) in [
            (100, 200, 1_000),
            (1, 1, 7),
            (100, 1, 3_333_333),
            (1000, 50, 999_999),
            (7, 3, 10_000_000),
        ] {
            let c = cfg(rate, burst);
            let n = 20_000;
            let (allowed, b) = run(&c, 1, gap, n);
            let window = (n - 1) * gap;
            let bound = rate * window / NS_PER_SEC + burst;
            assert!(
                allowed <= bound,
                "rate {rate} burst {burst} gap {gap}: {allowed} > {bound}"
            );
            assert_eq!(
                allowed + b.suppressed,
                n,
                "every event is either emitted or suppressed"
            );
            // The burst always goes out (exact refill is checked below).
            assert!(allowed >= burst.min(n));
        }
    }

    #[test]
    fn refill_after_idle_is_exact() {
        let c = cfg(10, 5);
        let mut b = Bucket::default();
        let mut g = Bucket::default();
        let t0 = 1_000;
        for _ in 0..5 {
            assert!(sample(&mut b, &mut g, &c, t0));
        }
        assert!(!sample(&mut b, &mut g, &c, t0), "burst spent");
        // 10/s: one token every 100 ms, exactly.
        assert!(!sample(&mut b, &mut g, &c, t0 + 99_999_999));
        assert!(sample(&mut b, &mut g, &c, t0 + 100_000_000));
        assert!(!sample(&mut b, &mut g, &c, t0 + 100_000_000));
        // 350 ms later: three more, not four.
        let t = t0 + 450_000_000;
        assert_eq!((0..5).filter(|_| sample(&mut b, &mut g, &c, t)).count(), 3);
        // Long idle: full bucket, never more.
        let t = t + 60 * NS_PER_SEC;
        assert_eq!((0..10).filter(|_| sample(&mut b, &mut g, &c, t)).count(), 5);
        assert_eq!(
            b.pending,
            2 + 1 + 2 + 5,
            "pending counts since the last emit() (never called here)"
        );
    }

    #[test]
    fn no_overflow_after_days_or_at_the_limits() {
        let c = EventConfig::new(MAX_RATE, MAX_RATE, MAX_RATE, MAX_RATE);
        let mut b = Bucket::default();
        let mut g = Bucket::default();
        assert!(sample(&mut b, &mut g, &c, 1));
        let days = 30 * 86_400 * NS_PER_SEC;
        assert!(sample(&mut b, &mut g, &c, days));
        assert_eq!(b.level, (MAX_RATE - 1) * NS_PER_SEC);
        let far = u64::MAX - 1;
        assert!(sample(&mut b, &mut g, &c, far));
        assert_eq!(b.level, (MAX_RATE - 1) * NS_PER_SEC);
        // A clock going backwards adds nothing, does not panic, and refills
        // from there on.
        let level = b.level;
        assert!(sample(&mut b, &mut g, &c, 5));
        assert_eq!((b.last_ns, b.level), (5, level - NS_PER_SEC));
        assert!(sample(&mut b, &mut g, &c, 5 + 1_000));
        assert_eq!(b.level, level - NS_PER_SEC + 1_000 * MAX_RATE - NS_PER_SEC);
    }

    #[test]
    fn global_bucket_caps_all_reasons() {
        let c = EventConfig::new(100, 100, 1, 3);
        let mut a = Bucket::default();
        let mut b = Bucket::default();
        let mut g = Bucket::default();
        let mut allowed = 0;
        for _ in 0..10 {
            allowed += sample(&mut a, &mut g, &c, 10) as u32;
            allowed += sample(&mut b, &mut g, &c, 10) as u32;
        }
        assert_eq!(allowed, 3);
        assert_eq!(a.suppressed + b.suppressed, 17);
        // A reason's tokens are not spent when the global bucket says no.
        assert_eq!(a.level / NS_PER_SEC + b.level / NS_PER_SEC, 200 - 3);
    }

    #[test]
    fn pending_resets_on_emit_and_lost_events_are_carried() {
        let c = cfg(1, 1);
        let mut b = Bucket::default();
        let mut g = Bucket::default();
        assert!(sample(&mut b, &mut g, &c, 1));
        emitted(&mut b);
        for _ in 0..4 {
            assert!(!sample(&mut b, &mut g, &c, 2));
        }
        assert_eq!(b.pending, 4);
        assert!(sample(&mut b, &mut g, &c, 2 + NS_PER_SEC));
        lost(&mut b);
        assert_eq!((b.pending, b.lost, b.suppressed), (5, 1, 4));
        assert!(sample(&mut b, &mut g, &c, 3 + 2 * NS_PER_SEC));
        emitted(&mut b);
        assert_eq!(b.pending, 0);
    }

    #[test]
    fn per_cpu_shares_never_exceed_the_total() {
        let c = EventConfig::per_cpu(100, 200, 1000, 1000, 3);
        assert_eq!((c.rate, c.burst, c.global_rate), (33, 66, 333));
        assert!(c.rate * 3 <= 100 && c.burst * 3 <= 200);
        assert_eq!(EventConfig::per_cpu(1, 1, 1, 1, 8).rate, 1);
        assert_eq!(c.fill_ns, (66 * NS_PER_SEC).div_ceil(33));
        assert_eq!(fill_ns(3, 1), 333_333_334);
        let clamped = EventConfig::new(0, u64::MAX, 0, 0);
        assert_eq!((clamped.rate, clamped.burst), (1, MAX_RATE));
    }
}
