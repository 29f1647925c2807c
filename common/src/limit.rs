//! Token buckets for rate limits: the arithmetic only, shared by kernel and agent.
//!
//! A [`Rate`] is a threshold (packets/s or bits/s) with a burst; a [`Bucket`] is
//! the state kept per key (a source, a prefix, or one global key). [`admit`]
//! refills the bucket for the time since it was last used and takes the
//! packet's cost if it is there. Integer only; no loops, division, panics or
//! overflow on the packet path, so the kernel runs the same code as the host
//! tests.
//! Semantics and reasons are in docs/design/token-bucket.md.

use core::fmt;

/// Fixed-point scale: a bucket holds tokens in billionths of a token (of a
/// packet or of a bit). A rate of `r` tokens per second then refills exactly
/// `r` units per nanosecond, so the refill over `elapsed_ns` is
/// `elapsed_ns * r * SCALE / 1e9 = elapsed_ns * r`: exact, with no division
/// and no remainder to carry.
pub const SCALE: u64 = 1_000_000_000;

/// Largest rate accepted in packets per second (above the minimal-frame line
/// rate of a 400 Gbit/s link, about 595 Mpps).
pub const MAX_PACKETS_PER_SECOND: u64 = 1_000_000_000;
/// Largest rate accepted in bits per second: 1 Tbit/s.
pub const MAX_BITS_PER_SECOND: u64 = 1_000_000_000_000;
/// Largest burst accepted, in tokens of either unit. `MAX_BURST * SCALE` must
/// fit a u64 with room for one nanosecond of refill at the largest rate,
/// which rounding `fill_ns` up can add (see [`refill`]): 1e19 + 1e12 <
/// 1.8e19. In bits this is 1.25 GB, 0.1 s at 100 Gbit/s.
pub const MAX_BURST: u64 = 10_000_000_000;
/// Smallest burst accepted in bits: one minimal Ethernet frame (64 bytes).
pub const MIN_BURST_BITS: u64 = 64 * 8;

const _: () = assert!(
    (MAX_BURST as u128) * (SCALE as u128) + (MAX_BITS_PER_SECOND as u128) <= u64::MAX as u128
);
const _: () = assert!(MAX_PACKETS_PER_SECOND <= MAX_BITS_PER_SECOND);

/// What a rate counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Unit {
    /// Every packet costs one token.
    Packets = 0,
    /// A packet costs its length in bits (bytes × 8).
    Bits = 1,
}

impl Unit {
    pub const fn from_u8(v: u8) -> Option<Unit> {
        match v {
            0 => Some(Unit::Packets),
            1 => Some(Unit::Bits),
            _ => None,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            Unit::Packets => "packets",
            Unit::Bits => "bits",
        }
    }
    /// Largest rate accepted for this unit, per second.
    pub const fn max_per_second(self) -> u64 {
        match self {
            Unit::Packets => MAX_PACKETS_PER_SECOND,
            Unit::Bits => MAX_BITS_PER_SECOND,
        }
    }
    /// Smallest burst accepted for this unit: one packet.
    pub const fn min_burst(self) -> u64 {
        match self {
            Unit::Packets => 1,
            Unit::Bits => MIN_BURST_BITS,
        }
    }
}

/// State of one token bucket: a map value.
///
/// The all-zero value is a bucket never used: the first [`admit`] finds it
/// full, so a new key (or one evicted and seen again) needs no initialisation
/// and gets what a key idle for long would get.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Tokens available, in units of 1/`SCALE` token.
    pub tokens: u64,
    /// Clock reading (ns) the tokens were last brought up to date for; never
    /// 0 once the bucket has been used.
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Bucket>() == 16);

/// A validated threshold: refill rate and capacity, precomputed for [`admit`].
///
/// Build it with [`Rate::new`]. The fields are private so that a `Rate` made
/// in user space is always valid; [`admit`] still stays in bounds with any bit
/// pattern (a `Rate` read from a map the agent did not write, say).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Tokens per second, which is also units of 1/`SCALE` token per ns.
    per_second: u64,
    /// Burst × `SCALE`: the most a bucket holds.
    capacity: u64,
    /// Nanoseconds to fill an empty bucket, rounded up: refill never needs
    /// to look further back than this.
    fill_ns: u64,
    /// `Unit` as u8.
    unit: u8,
    _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<Rate>() == 32);

/// Why a threshold was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateError {
    /// A rate of zero would drop everything; that is a deny rule, not a limit.
    ZeroRate,
    /// More than [`Unit::max_per_second`].
    RateTooHigh {
        unit: Unit,
        per_second: u64,
        max: u64,
    },
    /// Less than one packet: nothing could ever pass.
    BurstTooSmall { unit: Unit, burst: u64, min: u64 },
    /// More than [`MAX_BURST`].
    BurstTooLarge { unit: Unit, burst: u64, max: u64 },
}

impl fmt::Display for RateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RateError::ZeroRate => write!(f, "rate must be greater than zero"),
            RateError::RateTooHigh {
                unit,
                per_second,
                max,
            } => write!(
                f,
                "rate of {per_second} {}/s is above the maximum of {max} {}/s",
                unit.name(),
                unit.name()
            ),
            RateError::BurstTooSmall {
                unit: Unit::Bits,
                burst,
                min,
            } => write!(
                f,
                "burst of {burst} bits is smaller than one minimal 64-byte frame ({min} bits): \
                 no packet could ever pass"
            ),
            RateError::BurstTooSmall { unit, burst, min } => write!(
                f,
                "burst of {burst} {} is smaller than one packet (at least {min}): \
                 no packet could ever pass",
                unit.name()
            ),
            RateError::BurstTooLarge { unit, burst, max } => write!(
                f,
                "burst of {burst} {} is above the maximum of {max} {}",
                unit.name(),
                unit.name()
            ),
        }
    }
}

impl Rate {
    /// The all-zero rate: a placeholder where no threshold of a unit is
    /// configured. Admits nothing but zero-cost packets; callers check
    /// whether a rate is configured before using it.
    pub const NONE: Rate = Rate {
        per_second: 0,
        capacity: 0,
        fill_ns: 0,
        unit: 0,
        _pad: [0; 7],
    };

    /// A threshold of `per_second` tokens per second with a bucket of `burst`
    /// tokens, tokens being packets or bits as `unit` says.
    pub const fn new(per_second: u64, burst: u64, unit: Unit) -> Result<Rate, RateError> {
        if per_second == 0 {
            return Err(RateError::ZeroRate);
        }
        let max = unit.max_per_second();
        if per_second > max {
            return Err(RateError::RateTooHigh {
                unit,
                per_second,
                max,
            });
        }
        let min = unit.min_burst();
        if burst < min {
            return Err(RateError::BurstTooSmall { unit, burst, min });
        }
        if burst > MAX_BURST {
            return Err(RateError::BurstTooLarge {
                unit,
                burst,
                max: MAX_BURST,
            });
        }
        // In range by the checks above and the const assertions.
        let capacity = burst.wrapping_mul(SCALE);
        Ok(Rate {
            per_second,
            capacity,
            fill_ns: capacity.div_ceil(per_second),
            unit: unit as u8,
            _pad: [0; 7],
        })
    }

    /// Tokens per second.
    pub const fn per_second(&self) -> u64 {
        self.per_second
    }

    /// Bucket capacity in tokens.
    pub const fn burst(&self) -> u64 {
        self.capacity / SCALE
    }

    /// Bucket capacity in units of 1/`SCALE` token (what [`Bucket::tokens`] holds).
    pub const fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The unit; `None` only for a `Rate` not made by [`Rate::new`].
    pub const fn unit(&self) -> Option<Unit> {
        Unit::from_u8(self.unit)
    }

    /// Tokens a packet of `len` bytes costs: 1 for a packet rate, `len * 8`
    /// for a bit rate (saturating: a cost that large is never admitted).
    #[inline(always)]
    pub const fn cost(&self, len: u64) -> u64 {
        if self.unit == Unit::Bits as u8 {
            mul_sat(len, 8)
        } else {
            1
        }
    }
}

/// Brings `bucket` up to date at `now_ns`: adds what `rate` refilled since
/// `last_ns`, up to the capacity.
///
/// - A never-used bucket (all zero) becomes full.
/// - `now_ns` before `last_ns` (another CPU's update raced ahead, or a clock
///   step back) refills nothing and leaves `last_ns` where it is, so the
///   interval is not counted twice later.
/// - The elapsed time is capped at the time to fill an empty bucket before it
///   is multiplied by the rate: past that the bucket is full anyway, and the
///   product stays below capacity + rate, which fits (see [`MAX_BURST`]),
///   whatever the idle gap.
/// - Tokens above the capacity (the burst was lowered by a reload) are cut
///   to the capacity.
#[inline(always)]
pub fn refill(bucket: &mut Bucket, rate: &Rate, now_ns: u64) {
    let tokens = if bucket.last_ns == 0 && bucket.tokens == 0 {
        rate.capacity
    } else if now_ns > bucket.last_ns {
        let elapsed = now_ns.wrapping_sub(bucket.last_ns);
        let elapsed = if elapsed < rate.fill_ns {
            elapsed
        } else {
            rate.fill_ns
        };
        add_sat(bucket.tokens, mul_sat(elapsed, rate.per_second))
    } else {
        bucket.tokens
    };
    bucket.tokens = if tokens < rate.capacity {
        tokens
    } else {
        rate.capacity
    };
    // Never moves back, and never stores 0, which marks an unused bucket.
    if now_ns > bucket.last_ns {
        bucket.last_ns = now_ns;
    }
    if bucket.last_ns == 0 {
        bucket.last_ns = 1;
    }
}

/// Whether a packet costing `cost` tokens (see [`Rate::cost`]) is within
/// `rate` at `now_ns`. If it is, its tokens are taken from `bucket`;
/// otherwise the bucket is only refilled, so a dropped packet costs nothing.
#[inline(always)]
pub fn admit(bucket: &mut Bucket, rate: &Rate, now_ns: u64, cost: u64) -> bool {
    refill(bucket, rate, now_ns);
    let need = mul_sat(cost, SCALE);
    if bucket.tokens >= need {
        bucket.tokens = bucket.tokens.wrapping_sub(need);
        true
    } else {
        false
    }
}

/// `a * b`, or `u64::MAX` if that does not fit.
///
/// Not `u64::saturating_mul`: LLVM lowers that to a 128-bit multiply
/// (`__multi3`), which the BPF backend cannot call. Built from 32-bit halves,
/// this is three multiplies, shifts and compares, exact for every input.
#[inline(always)]
pub const fn mul_sat(a: u64, b: u64) -> u64 {
    const LO: u64 = 0xffff_ffff;
    let (a_hi, a_lo, b_hi, b_lo) = (a >> 32, a & LO, b >> 32, b & LO);
    if a_hi != 0 && b_hi != 0 {
        return u64::MAX;
    }
    // At most one cross term is non-zero; each is below 2^64.
    let cross = a_hi.wrapping_mul(b_lo) | b_hi.wrapping_mul(a_lo);
    if cross > LO {
        return u64::MAX;
    }
    add_sat(cross << 32, a_lo.wrapping_mul(b_lo))
}

/// `a + b`, or `u64::MAX` if that does not fit.
#[inline(always)]
pub const fn add_sat(a: u64, b: u64) -> u64 {
    let sum = a.wrapping_add(b);
    if sum < a { u64::MAX } else { sum }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are repr(C), Copy, with explicit padding and no invalid bit
    // patterns (`Rate::unit` is a plain u8, and `admit` accepts any value).
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::Rate {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: u64 = 1_000_000_000;

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// Uniform enough in `lo..=hi` for tests.
        fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.next() % (hi - lo + 1)
        }
        /// Log-uniform in `lo..=hi`, so small and huge values both show up.
        fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
            let (llo, lhi) = ((lo as f64).ln(), (hi as f64).ln());
            let x = llo + (lhi - llo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64;
            (x.exp() as u64).clamp(lo, hi)
        }
    }

    fn rate(per_second: u64, burst: u64, unit: Unit) -> Rate {
        Rate::new(per_second, burst, unit).expect("valid rate")
    }

    /// The largest excess over any window [t_i, t_j] of the admitted cost over
    /// `per_second * (t_j - t_i) + burst`, in units of 1/SCALE token, for
    /// arrivals `(effective time, admitted cost)` in time order. Kadane-style:
    /// excess(i, j) = (S_j - S_{i-1}) - r (t_j - t_i) - burst, maximised over i
    /// by keeping the best `r t_i - S_{i-1}` seen so far.
    fn worst_window_excess(arrivals: &[(u64, u64)], r: &Rate) -> i128 {
        let mut sum: i128 = 0; // S_{j}
        let mut best_start = i128::MIN; // max over i <= j of r t_i - S_{i-1}
        let mut worst = i128::MIN;
        for &(t, admitted) in arrivals {
            let rt = r.per_second as i128 * t as i128;
            best_start = best_start.max(rt - sum);
            sum += admitted as i128 * SCALE as i128;
            worst = worst.max(sum - rt + best_start - r.capacity as i128);
        }
        worst
    }

    #[test]
    fn never_more_than_rate_times_window_plus_burst() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut passed, mut dropped) = (0u64, 0u64);
        for case in 0..400 {
            let unit = if case % 2 == 0 {
                Unit::Packets
            } else {
                Unit::Bits
            };
            let per_second = rng.log_range(1, unit.max_per_second());
            let typical = if unit == Unit::Bits {
                rng.log_range(512, 72_000)
            } else {
                1
            };
            // Mostly bursts of a few packets, so buckets drain; sometimes huge.
            let burst = if case % 10 == 0 {
                rng.log_range(unit.min_burst(), MAX_BURST)
            } else {
                rng.log_range(unit.min_burst(), typical * 50)
            };
            let r = rate(per_second, burst, unit);
            // Mean gap between a quarter and four times the time one typical
            // packet's tokens take: under, near and over the rate.
            let one = typical as u128 * NS as u128 / per_second as u128;
            let mean_gap = (one * rng.range(1, 16) as u128 / 4).clamp(1, 10 * NS as u128) as u64;
            let mut b = Bucket::default();
            let mut now = rng.range(0, 1 << 40);
            let mut effective = 0;
            let mut arrivals = Vec::new();
            for _ in 0..3000 {
                match rng.range(0, 9) {
                    // Bursts: several packets in the same nanosecond.
                    0 => {}
                    // Clock seen going back (another CPU raced ahead).
                    1 => now = now.saturating_sub(rng.range(0, mean_gap)),
                    // Long idle gap.
                    2 => now += rng.range(0, 20 * mean_gap),
                    _ => now += rng.range(0, 2 * mean_gap),
                }
                let cost = match unit {
                    Unit::Packets => rng.range(0, 3),
                    Unit::Bits => r.cost(rng.range(60, typical / 8 + 60)),
                };
                let ok = admit(&mut b, &r, now, cost);
                assert!(b.tokens <= r.capacity(), "case {case}: over capacity");
                effective = effective.max(now);
                assert_eq!(b.last_ns, effective.max(1), "case {case}");
                arrivals.push((effective, if ok { cost } else { 0 }));
                if ok { passed += 1 } else { dropped += 1 }
            }
            let excess = worst_window_excess(&arrivals, &r);
            assert!(
                excess <= 0,
                "case {case}: {per_second}/s burst {burst} {unit:?}: excess {excess}"
            );
        }
        // The arrivals exercise both sides of the threshold.
        assert!(
            passed > 200_000 && dropped > 200_000,
            "{passed} passed, {dropped} dropped"
        );
    }

    #[test]
    fn window_check_catches_a_leak() {
        // The checker itself: admitting one token too many is reported.
        let r = rate(1000, 5, Unit::Packets);
        let ok: Vec<(u64, u64)> = (0..5).map(|_| (1_000, 1)).collect();
        assert_eq!(worst_window_excess(&ok, &r), 0);
        let mut leak = ok.clone();
        leak.push((1_000 + NS / 1000 - 1, 1));
        assert!(worst_window_excess(&leak, &r) > 0);
    }

    #[test]
    fn first_use_finds_a_full_bucket() {
        let r = rate(10, 3, Unit::Packets);
        let mut b = Bucket::default();
        assert!(admit(&mut b, &r, 5_000, 3));
        assert_eq!(
            b,
            Bucket {
                tokens: 0,
                last_ns: 5_000
            }
        );
        assert!(!admit(&mut b, &r, 5_000, 1));
        // Used at time 0: last_ns is stored as 1, so the drained bucket is
        // not mistaken for an unused one.
        let mut b = Bucket::default();
        assert!(admit(&mut b, &r, 0, 3));
        assert_eq!(b.last_ns, 1);
        assert!(!admit(&mut b, &r, 0, 1));
        assert!(!admit(&mut b, &r, 1, 1));
    }

    #[test]
    fn refill_after_idle_is_exact() {
        let r = rate(1000, 10, Unit::Packets);
        let mut b = Bucket::default();
        let t0 = 1_000_000;
        assert!(admit(&mut b, &r, t0, 10));
        assert_eq!(b.tokens, 0);
        // One nanosecond short of 1 ms: not yet a whole token.
        assert!(!admit(&mut b, &r, t0 + 999_999, 1));
        assert_eq!(b.tokens, 999_999 * 1000);
        assert!(admit(&mut b, &r, t0 + 1_000_000, 1));
        assert_eq!(b.tokens, 0);
        // 1 ms idle → exactly one token, not more.
        assert!(admit(&mut b, &r, t0 + 2_000_000, 1));
        assert!(!admit(&mut b, &r, t0 + 2_000_000, 1));
        // 7.5 ms → 7 whole tokens and half of the next.
        let t = t0 + 9_500_000;
        refill(&mut b, &r, t);
        assert_eq!(b.tokens, 7 * SCALE + SCALE / 2);

        // Rates that do not divide 1e9 are exact too: 3 packets/s over 1 s.
        let r = rate(3, 3, Unit::Packets);
        let mut b = Bucket::default();
        assert!(admit(&mut b, &r, 10, 3));
        refill(&mut b, &r, 10 + NS / 3);
        assert_eq!(b.tokens, (NS / 3) * 3);
        refill(&mut b, &r, 10 + NS);
        assert_eq!(b.tokens, 3 * SCALE);

        // Bits: 1 Mbit/s, a 1500-byte packet needs exactly 12 ms.
        let r = rate(1_000_000, 12_000, Unit::Bits);
        let mut b = Bucket::default();
        assert!(admit(&mut b, &r, 1, r.cost(1500)));
        assert!(!admit(&mut b, &r, 1 + 12_000_000 - 1, r.cost(1500)));
        assert!(admit(&mut b, &r, 1 + 12_000_000, r.cost(1500)));
    }

    #[test]
    fn coarse_refills_add_up_to_the_same() {
        // Refilling in many small steps gives what one step gives.
        let r = rate(7_777, 100, Unit::Packets);
        let (mut fine, mut once) = (Bucket::default(), Bucket::default());
        assert!(admit(&mut fine, &r, 1, 100));
        assert!(admit(&mut once, &r, 1, 100));
        let mut t = 1;
        for _ in 0..1000 {
            t += 3_333;
            refill(&mut fine, &r, t);
        }
        refill(&mut once, &r, t);
        assert_eq!(fine, once);
    }

    #[test]
    fn no_overflow_at_extremes() {
        // 100 Gbit/s, jumbo frames, the largest burst.
        let r = rate(100_000_000_000, MAX_BURST, Unit::Bits);
        let jumbo = r.cost(9000);
        assert_eq!(jumbo, 72_000);
        let mut b = Bucket::default();
        let mut t = 1_000;
        // Drain the burst, then exactly line rate (720 ns per frame) all passes.
        let mut n = 0u64;
        while admit(&mut b, &r, t, jumbo) {
            n += 1;
        }
        assert_eq!(n, MAX_BURST / 72_000);
        for _ in 0..10_000 {
            t += 720;
            assert!(admit(&mut b, &r, t, jumbo));
        }
        // Twice line rate: every other frame.
        let before = b.tokens;
        let mut passed = 0;
        for _ in 0..10_000 {
            t += 360;
            passed += admit(&mut b, &r, t, jumbo) as u32;
        }
        assert!((4_999..=5_001).contains(&passed), "{passed}");
        assert!(b.tokens <= before + 72_000 * SCALE);

        // Idle for u64::MAX / 2 ns (about 292 years): exactly full.
        assert!(admit(&mut b, &r, t, 0));
        t += u64::MAX / 2;
        refill(&mut b, &r, t);
        assert_eq!(b.tokens, r.capacity());
        // And to the very end of the clock.
        refill(&mut b, &r, u64::MAX);
        assert_eq!(
            b,
            Bucket {
                tokens: r.capacity(),
                last_ns: u64::MAX
            }
        );
        assert!(admit(&mut b, &r, u64::MAX, jumbo));

        // Now going backwards: no refill, last_ns kept.
        let mut b = Bucket {
            tokens: 5 * SCALE,
            last_ns: 1_000_000,
        };
        let r = rate(1_000, 100, Unit::Packets);
        assert!(admit(&mut b, &r, 10, 1));
        assert_eq!(
            b,
            Bucket {
                tokens: 4 * SCALE,
                last_ns: 1_000_000
            }
        );
        assert!(admit(&mut b, &r, 0, 1));
        assert_eq!(
            b,
            Bucket {
                tokens: 3 * SCALE,
                last_ns: 1_000_000
            }
        );
        // Time resumes: only what elapsed after last_ns counts.
        refill(&mut b, &r, 2_000_000);
        assert_eq!(b.tokens, 4 * SCALE);

        // Largest rates and cost; a cost too large to scale is refused.
        for unit in [Unit::Packets, Unit::Bits] {
            let r = rate(unit.max_per_second(), MAX_BURST, unit);
            let mut b = Bucket::default();
            assert!(!admit(&mut b, &r, 1, u64::MAX));
            assert!(!admit(&mut b, &r, 2, MAX_BURST + 1));
            assert!(admit(&mut b, &r, 3, MAX_BURST));
            refill(&mut b, &r, u64::MAX / 2);
            assert_eq!(b.tokens, r.capacity());
            assert_eq!(
                r.cost(u64::MAX),
                if unit == Unit::Bits { u64::MAX } else { 1 }
            );
        }
    }

    #[test]
    fn any_bit_pattern_stays_in_bounds() {
        // A Rate read from a map could hold anything; admit must neither
        // panic nor leave more than the capacity.
        let mut rng = Rng(12345);
        for _ in 0..100_000 {
            let pick = |rng: &mut Rng| match rng.range(0, 3) {
                0 => 0,
                1 => u64::MAX,
                2 => rng.next() >> rng.range(0, 63),
                _ => rng.next(),
            };
            let r = Rate {
                per_second: pick(&mut rng),
                capacity: pick(&mut rng),
                fill_ns: pick(&mut rng),
                unit: rng.next() as u8,
                _pad: [0; 7],
            };
            let mut b = Bucket {
                tokens: pick(&mut rng),
                last_ns: pick(&mut rng),
            };
            let now = pick(&mut rng);
            let cost = pick(&mut rng);
            let _ = admit(&mut b, &r, now, cost);
            assert!(b.tokens <= r.capacity);
            assert!(b.last_ns >= now.max(1));
            let _ = r.cost(pick(&mut rng));
        }
    }

    #[test]
    fn full_bucket_stays_full() {
        let r = rate(1_000_000, 64, Unit::Packets);
        let mut b = Bucket::default();
        refill(&mut b, &r, 1);
        assert_eq!(b.tokens, r.capacity());
        let mut t = 1;
        for step in [0, 1, 999, 1_000_000, NS, 1 << 50] {
            t += step;
            // Refused packets (too expensive) change nothing but the clock.
            assert!(!admit(&mut b, &r, t, 65));
            assert_eq!(
                b,
                Bucket {
                    tokens: r.capacity(),
                    last_ns: t
                }
            );
        }
        // A burst lowered by a reload cuts the tokens to the new capacity.
        let smaller = rate(1_000_000, 8, Unit::Packets);
        refill(&mut b, &smaller, t);
        assert_eq!(b.tokens, smaller.capacity());
    }

    #[test]
    fn steady_over_rate_gets_rate_times_time_plus_burst() {
        // (rate, burst, unit, packet bytes, arrivals per second)
        let cases = [
            (1_000, 50, Unit::Packets, 64, 10_000),
            (25_000, 1, Unit::Packets, 64, 1_000_000),
            (3_000, 2, Unit::Packets, 64, 97_000),
            (10_000_000, 15_000, Unit::Bits, 1500, 10_000),
            (100_000_000_000, 1_000_000, Unit::Bits, 9000, 3_000_000),
        ];
        for (per_second, burst, unit, len, arrivals) in cases {
            let r = rate(per_second, burst, unit);
            let cost = r.cost(len);
            let mut b = Bucket::default();
            let gap = NS / arrivals;
            let start = 123_456_789;
            let mut admitted = 0u64;
            let mut t = start;
            while t <= start + 10 * NS {
                if admit(&mut b, &r, t, cost) {
                    admitted += cost;
                }
                t += gap;
            }
            let expected = (per_second * 10 + burst) as f64;
            let err = (admitted as f64 - expected).abs() / expected;
            assert!(
                err < 0.001,
                "{per_second}/s burst {burst}: {admitted} vs {expected}"
            );
            assert!(admitted as u128 <= per_second as u128 * 10 + burst as u128);
        }
    }

    #[test]
    fn saturating_arithmetic_matches_u128() {
        let mut rng = Rng(0xdead_beef);
        let edges = [
            0,
            1,
            2,
            0xffff_ffff,
            1 << 32,
            (1 << 32) + 1,
            SCALE,
            u64::MAX / 2,
            u64::MAX - 1,
            u64::MAX,
        ];
        let mut values: Vec<u64> = edges.to_vec();
        for _ in 0..2_000 {
            values.push(rng.next() >> rng.range(0, 63));
        }
        for (i, &a) in values.iter().enumerate() {
            for &b in values.iter().skip(i % 7).step_by(7) {
                let want = (a as u128 * b as u128).min(u64::MAX as u128) as u64;
                assert_eq!(mul_sat(a, b), want, "{a} * {b}");
                assert_eq!(mul_sat(b, a), want, "{b} * {a}");
                let want = (a as u128 + b as u128).min(u64::MAX as u128) as u64;
                assert_eq!(add_sat(a, b), want, "{a} + {b}");
            }
        }
    }

    #[test]
    fn bad_thresholds_are_refused_with_reasons() {
        assert_eq!(Rate::new(0, 10, Unit::Packets), Err(RateError::ZeroRate));
        assert_eq!(
            Rate::new(10, 0, Unit::Packets),
            Err(RateError::BurstTooSmall {
                unit: Unit::Packets,
                burst: 0,
                min: 1
            })
        );
        assert_eq!(
            Rate::new(1_000_000, 511, Unit::Bits),
            Err(RateError::BurstTooSmall {
                unit: Unit::Bits,
                burst: 511,
                min: 512
            })
        );
        assert!(Rate::new(1_000_000, 512, Unit::Bits).is_ok());
        assert!(Rate::new(1, 1, Unit::Packets).is_ok());
        assert!(matches!(
            Rate::new(MAX_BITS_PER_SECOND + 1, 10_000, Unit::Bits),
            Err(RateError::RateTooHigh { .. })
        ));
        assert!(matches!(
            Rate::new(MAX_PACKETS_PER_SECOND + 1, 10, Unit::Packets),
            Err(RateError::RateTooHigh { .. })
        ));
        assert!(Rate::new(MAX_PACKETS_PER_SECOND, MAX_BURST, Unit::Packets).is_ok());
        assert!(matches!(
            Rate::new(10, MAX_BURST + 1, Unit::Packets),
            Err(RateError::BurstTooLarge { .. })
        ));

        let msg = |e: RateError| e.to_string();
        assert_eq!(msg(RateError::ZeroRate), "rate must be greater than zero");
        assert_eq!(
            msg(Rate::new(10, 100, Unit::Bits).unwrap_err()),
            "burst of 100 bits is smaller than one minimal 64-byte frame (512 bits): no packet could ever pass"
        );
        assert_eq!(
            msg(Rate::new(10, 0, Unit::Packets).unwrap_err()),
            "burst of 0 packets is smaller than one packet (at least 1): no packet could ever pass"
        );
        assert_eq!(
            msg(Rate::new(2_000_000_000_000, 10_000, Unit::Bits).unwrap_err()),
            "rate of 2000000000000 bits/s is above the maximum of 1000000000000 bits/s"
        );

        let r = rate(1_000, 600, Unit::Bits);
        assert_eq!(
            (r.per_second(), r.burst(), r.unit()),
            (1_000, 600, Some(Unit::Bits))
        );
        assert_eq!(r.capacity(), 600 * SCALE);
    }
}
