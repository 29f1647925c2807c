//! Security events: the record the kernel writes to the ring buffer, the
//! configuration the agent writes for the kernel, and the sampling arithmetic
//! (token buckets) both run. docs/events.md describes every field.
//!
//! Sampling is per CPU: each CPU keeps its own bucket per reason, per source
//! slot and its own global bucket, and the agent writes rates and bursts
//! already divided by the number of CPUs, so the node-wide figures are at most
//! the configured ones.
//!
//! An event goes out only if three buckets hold a token: its reason's, its
//! source's (for that reason) and the global one. Source buckets live in a
//! fixed array of [`SOURCE_SLOTS`] per CPU indexed by a seeded hash of
//! (source, reason): bounded memory whatever a spoofed flood does, no
//! insertion, and two sources that share a slot share its budget, which can
//! only make sampling stricter.

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
/// Per-CPU source buckets (a power of two): 4,096 × 16 bytes = 64 KiB per CPU.
pub const SOURCE_SLOTS: u32 = 4096;
const SOURCE_SLOT_BITS: u32 = SOURCE_SLOTS.trailing_zeros();
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
    /// Per source and reason, events per second per CPU.
    pub source_rate: u64,
    /// Per source and reason, bucket size per CPU.
    pub source_burst: u64,
    /// The same fill time for a source bucket.
    pub source_fill_ns: u64,
    /// Mixed into the source hash, chosen at random by the agent, so that
    /// nobody can pick addresses that share a victim's slot.
    pub source_seed: u64,
}
const _: () = assert!(core::mem::size_of::<EventConfig>() == 96);

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
            source_rate: MAX_RATE,
            source_burst: MAX_RATE,
            source_fill_ns: fill_ns(MAX_RATE, MAX_RATE),
            source_seed: 0,
        }
    }

    /// The same with a per-source limit (each clamped to 1..=MAX_RATE;
    /// [`EventConfig::new`] leaves sources unlimited).
    pub const fn with_source(mut self, rate: u64, burst: u64, seed: u64) -> EventConfig {
        self.source_rate = clamp(rate);
        self.source_burst = clamp(burst);
        self.source_fill_ns = fill_ns(self.source_rate, self.source_burst);
        self.source_seed = seed;
        self
    }

    /// The per-CPU configuration for node-wide figures spread over `cpus` CPUs.
    /// Each share is rounded down but never below 1 (so with fewer events per
    /// second than CPUs the node-wide rate can reach one per CPU per second).
    pub fn per_cpu(figures: NodeRates, cpus: u64, seed: u64) -> EventConfig {
        let share = |v: u64| (v / cpus.max(1)).max(1);
        EventConfig::new(
            share(figures.rate),
            share(figures.burst),
            share(figures.global_rate),
            share(figures.global_burst),
        )
        .with_source(
            share(figures.source_rate),
            share(figures.source_burst),
            seed,
        )
    }
}

/// Node-wide sampling figures, as configured (events per second and bucket sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeRates {
    pub rate: u64,
    pub burst: u64,
    pub source_rate: u64,
    pub source_burst: u64,
    pub global_rate: u64,
    pub global_burst: u64,
}

/// The source bucket of (`src`, `reason`): the address's two 64-bit halves
/// folded in with a seeded xor-shift-multiply mix (murmur3's finaliser
/// steps), top bits kept. No loop, no division: cheap and verifier-friendly.
#[inline(always)]
pub fn source_slot(src: &[u8; 16], reason: u8, seed: u64) -> u32 {
    #[inline(always)]
    fn mix(mut x: u64) -> u64 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 29;
        x.wrapping_mul(0xC4CE_B9FE_1A85_EC53)
    }
    let half = |i: usize| {
        u64::from_ne_bytes([
            src[i],
            src[i + 1],
            src[i + 2],
            src[i + 3],
            src[i + 4],
            src[i + 5],
            src[i + 6],
            src[i + 7],
        ])
    };
    let h = mix(seed ^ (reason as u64) << 56 ^ half(0));
    // IPv4 addresses (and the unparsed 0) end in zeros: one round is enough.
    let low = half(8);
    let h = if low == 0 { h } else { mix(h ^ low) };
    (h >> (64 - SOURCE_SLOT_BITS)) as u32
}

/// A token bucket's level and clock: all a source's bucket needs (16 bytes,
/// so the per-CPU source array stays small and cache-friendly).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Tokens times [`NS_PER_SEC`]: one event costs `NS_PER_SEC`, and `rate`
    /// events per second refill `rate` units per nanosecond, exactly.
    pub level: u64,
    /// Time of the last refill (ns); 0 before first use (the bucket starts full).
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Tokens>() == 16);

impl Tokens {
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

/// Per-CPU sampling state of one reason (or of the global bucket).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub tokens: Tokens,
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

/// The sampling decision for one event: refills the reason's, the source's
/// and the global bucket and, if all three hold a token, takes one from each
/// and returns true. Otherwise counts the event as suppressed in
/// `per_reason` and returns false. On true the caller emits the event
/// carrying `per_reason.pending` and then calls [`emitted`].
#[inline(always)]
pub fn sample(
    per_reason: &mut Bucket,
    source: &mut Tokens,
    global: &mut Bucket,
    cfg: &EventConfig,
    now: u64,
) -> bool {
    sample_reason(per_reason, cfg, now)
        && sample_source(per_reason, source, cfg, now)
        && sample_global(per_reason, source, global, cfg, now)
}

/// First step of [`sample`]: the per-reason bucket alone. On false the event
/// is counted as suppressed and the other buckets need not be read at all
/// (the kernel's cheap path). Refilling later gives the same level as
/// refilling now, so skipping them changes nothing.
#[inline(always)]
pub fn sample_reason(per_reason: &mut Bucket, cfg: &EventConfig, now: u64) -> bool {
    per_reason
        .tokens
        .refill(now, cfg.rate, cfg.burst, cfg.fill_ns);
    if per_reason.tokens.has_token() {
        true
    } else {
        suppress(per_reason);
        false
    }
}

/// Second step of [`sample`], after [`sample_reason`] said yes: the source's
/// bucket (for this reason); on false the event is counted as suppressed.
#[inline(always)]
pub fn sample_source(
    per_reason: &mut Bucket,
    source: &mut Tokens,
    cfg: &EventConfig,
    now: u64,
) -> bool {
    source.refill(now, cfg.source_rate, cfg.source_burst, cfg.source_fill_ns);
    if source.has_token() {
        true
    } else {
        suppress(per_reason);
        false
    }
}

/// Last step of [`sample`]: takes a token from all three buckets if the
/// global one has one, else counts the event as suppressed.
#[inline(always)]
pub fn sample_global(
    per_reason: &mut Bucket,
    source: &mut Tokens,
    global: &mut Bucket,
    cfg: &EventConfig,
    now: u64,
) -> bool {
    global
        .tokens
        .refill(now, cfg.global_rate, cfg.global_burst, cfg.global_fill_ns);
    if global.tokens.has_token() {
        per_reason.tokens.take();
        source.take();
        global.tokens.take();
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
    unsafe impl aya::Pod for super::Tokens {}
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
            if sample(&mut b, &mut Tokens::default(), &mut g, cfg, start + i * gap) {
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
            assert!(sample(&mut b, &mut Tokens::default(), &mut g, &c, t0));
        }
        assert!(
            !sample(&mut b, &mut Tokens::default(), &mut g, &c, t0),
            "burst spent"
        );
        // 10/s: one token every 100 ms, exactly.
        assert!(!sample(
            &mut b,
            &mut Tokens::default(),
            &mut g,
            &c,
            t0 + 99_999_999
        ));
        assert!(sample(
            &mut b,
            &mut Tokens::default(),
            &mut g,
            &c,
            t0 + 100_000_000
        ));
        assert!(!sample(
            &mut b,
            &mut Tokens::default(),
            &mut g,
            &c,
            t0 + 100_000_000
        ));
        // 350 ms later: three more, not four.
        let t = t0 + 450_000_000;
        assert_eq!(
            (0..5)
                .filter(|_| sample(&mut b, &mut Tokens::default(), &mut g, &c, t))
                .count(),
            3
        );
        // Long idle: full bucket, never more.
        let t = t + 60 * NS_PER_SEC;
        assert_eq!(
            (0..10)
                .filter(|_| sample(&mut b, &mut Tokens::default(), &mut g, &c, t))
                .count(),
            5
        );
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
        assert!(sample(&mut b, &mut Tokens::default(), &mut g, &c, 1));
        let days = 30 * 86_400 * NS_PER_SEC;
        assert!(sample(&mut b, &mut Tokens::default(), &mut g, &c, days));
        assert_eq!(b.tokens.level, (MAX_RATE - 1) * NS_PER_SEC);
        let far = u64::MAX - 1;
        assert!(sample(&mut b, &mut Tokens::default(), &mut g, &c, far));
        assert_eq!(b.tokens.level, (MAX_RATE - 1) * NS_PER_SEC);
        // A clock going backwards adds nothing, does not panic, and refills
        // from there on.
        let level = b.tokens.level;
        assert!(sample(&mut b, &mut Tokens::default(), &mut g, &c, 5));
        assert_eq!((b.tokens.last_ns, b.tokens.level), (5, level - NS_PER_SEC));
        assert!(sample(
            &mut b,
            &mut Tokens::default(),
            &mut g,
            &c,
            5 + 1_000
        ));
        assert_eq!(
            b.tokens.level,
            level - NS_PER_SEC + 1_000 * MAX_RATE - NS_PER_SEC
        );
    }

    #[test]
    fn global_bucket_caps_all_reasons() {
        let c = EventConfig::new(100, 100, 1, 3);
        let mut a = Bucket::default();
        let mut b = Bucket::default();
        let mut g = Bucket::default();
        let mut allowed = 0;
        for _ in 0..10 {
            allowed += sample(&mut a, &mut Tokens::default(), &mut g, &c, 10) as u32;
            allowed += sample(&mut b, &mut Tokens::default(), &mut g, &c, 10) as u32;
        }
        assert_eq!(allowed, 3);
        assert_eq!(a.suppressed + b.suppressed, 17);
        // A reason's tokens are not spent when the global bucket says no.
        assert_eq!(
            a.tokens.level / NS_PER_SEC + b.tokens.level / NS_PER_SEC,
            200 - 3
        );
    }

    #[test]
    fn pending_resets_on_emit_and_lost_events_are_carried() {
        let c = cfg(1, 1);
        let mut b = Bucket::default();
        let mut g = Bucket::default();
        assert!(sample(&mut b, &mut Tokens::default(), &mut g, &c, 1));
        emitted(&mut b);
        for _ in 0..4 {
            assert!(!sample(&mut b, &mut Tokens::default(), &mut g, &c, 2));
        }
        assert_eq!(b.pending, 4);
        assert!(sample(
            &mut b,
            &mut Tokens::default(),
            &mut g,
            &c,
            2 + NS_PER_SEC
        ));
        lost(&mut b);
        assert_eq!((b.pending, b.lost, b.suppressed), (5, 1, 4));
        assert!(sample(
            &mut b,
            &mut Tokens::default(),
            &mut g,
            &c,
            3 + 2 * NS_PER_SEC
        ));
        emitted(&mut b);
        assert_eq!(b.pending, 0);
    }

    #[test]
    fn per_cpu_shares_never_exceed_the_total() {
        let node = NodeRates {
            rate: 100,
            burst: 200,
            source_rate: 10,
            source_burst: 20,
            global_rate: 1000,
            global_burst: 1000,
        };
        let c = EventConfig::per_cpu(node, 3, 7);
        assert_eq!((c.rate, c.burst, c.global_rate), (33, 66, 333));
        assert_eq!((c.source_rate, c.source_burst, c.source_seed), (3, 6, 7));
        assert!(c.rate * 3 <= 100 && c.burst * 3 <= 200);
        let one = NodeRates {
            rate: 1,
            burst: 1,
            source_rate: 1,
            source_burst: 1,
            global_rate: 1,
            global_burst: 1,
        };
        assert_eq!(EventConfig::per_cpu(one, 8, 0).rate, 1);
        assert_eq!(EventConfig::per_cpu(one, 8, 0).source_rate, 1);
        assert_eq!(c.fill_ns, (66 * NS_PER_SEC).div_ceil(33));
        assert_eq!(c.source_fill_ns, (6 * NS_PER_SEC).div_ceil(3));
        assert_eq!(fill_ns(3, 1), 333_333_334);
        let clamped = EventConfig::new(0, u64::MAX, 0, 0);
        assert_eq!((clamped.rate, clamped.burst), (1, MAX_RATE));
        assert_eq!(
            clamped.source_rate, MAX_RATE,
            "sources unlimited unless asked"
        );
    }

    #[test]
    fn each_source_has_its_own_budget_within_a_reason() {
        // Reason and global buckets wide open; 2 events per source.
        let c = EventConfig::new(1000, 1000, 1000, 1000).with_source(1, 2, 42);
        let (mut reason, mut global) = (Bucket::default(), Bucket::default());
        let mut slots = [Tokens::default(); SOURCE_SLOTS as usize];
        let a = [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let (sa, sb) = (source_slot(&a, 3, 42), source_slot(&b, 3, 42));
        assert_ne!(sa, sb, "these two do not collide under this seed");
        let mut send = |slot: u32, t: u64, reason: &mut Bucket| {
            let ok = sample(reason, &mut slots[slot as usize], &mut global, &c, t);
            if ok {
                emitted(reason);
            }
            ok
        };
        let r = &mut reason;
        assert_eq!((0..10).filter(|_| send(sa, 1, r)).count(), 2, "a's burst");
        assert_eq!(
            (0..10).filter(|_| send(sb, 1, r)).count(),
            2,
            "b is not starved by a"
        );
        // One second later each source has one more.
        assert!(send(sa, 1 + NS_PER_SEC, r));
        assert!(!send(sa, 1 + NS_PER_SEC, r));
        assert!(send(sb, 1 + NS_PER_SEC, r));
        assert_eq!(reason.suppressed, 17, "every event not emitted is counted");
    }

    #[test]
    fn source_slots_spread_and_depend_on_reason_and_seed() {
        let mut used = [0u32; SOURCE_SLOTS as usize];
        for i in 0..SOURCE_SLOTS * 4 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&(0x0a00_0000 + i).to_be_bytes());
            let s = source_slot(&a, 1, 99);
            assert!(s < SOURCE_SLOTS);
            used[s as usize] += 1;
        }
        // 4 addresses per slot on average: no slot near-empty or crowded.
        let max = used.iter().max().unwrap();
        assert!(*max <= 16, "crowded slot: {max}");
        assert!(used.iter().filter(|&&n| n == 0).count() < SOURCE_SLOTS as usize / 20);
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let differs = |f: &dyn Fn(u64) -> u32| (0..64).any(|k| f(k) != f(k + 1));
        assert!(differs(&|k| source_slot(&v6, 1, k)), "seed matters");
        assert!(differs(&|k| source_slot(&v6, k as u8, 5)), "reason matters");
    }
}
