//! Summing per-CPU counters, shared so the agent and tests agree on it.

use crate::maps::Counter;

/// Sum of per-CPU values, saturating (a wrap would read as a counter reset).
pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a Counter>) -> Counter {
    per_cpu
        .into_iter()
        .fold(Counter::default(), |acc, c| Counter {
            packets: acc.packets.saturating_add(c.packets),
            bytes: acc.bytes.saturating_add(c.bytes),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_saturates() {
        let a = [
            Counter {
                packets: 1,
                bytes: 60,
            },
            Counter {
                packets: 2,
                bytes: 100,
            },
        ];
        assert_eq!(
            sum(&a),
            Counter {
                packets: 3,
                bytes: 160
            }
        );
        let b = [
            Counter {
                packets: u64::MAX,
                bytes: 1,
            },
            Counter {
                packets: 5,
                bytes: 1,
            },
        ];
        assert_eq!(sum(&b).packets, u64::MAX);
    }
}
