//! How long to wait before reconnecting to the broker: capped exponential backoff with full
//! jitter. Pure; the caller supplies the randomness.
//!
//! A broker that accepts connections but refuses everything after them (seen after a RabbitMQ
//! restart: `basic.consume` answered with 541 INTERNAL_ERROR for minutes) must not be hammered
//! by every component at once, so the delay grows with each failure that followed a short-lived
//! connection, and only a connection that stayed up resets it.

use std::time::Duration;

/// Reconnect delays: the first, the cap, and how long a connection must last to count as
/// healthy again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
    pub stable_after: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            first: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The wait before attempt `failures + 1`, after `failures` failures in a row: a uniformly
    /// random point in `[ceiling / 2, ceiling]`, where the ceiling doubles per failure up to
    /// the cap. Half of it is fixed so that no component ever retries at once; the other half
    /// spreads components that failed together. `random` is any random number.
    pub fn delay(&self, failures: u32, random: u64) -> Duration {
        let ceiling = self
            .first
            .saturating_mul(1_u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX))
            .min(self.cap);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        let half = ceiling_ms / 2;
        let spread = ceiling_ms - half;
        Duration::from_millis(
            half + if spread == 0 {
                0
            } else {
                random % (spread + 1)
            },
        )
    }

    /// The failure count after a connection that lasted `up`: reset when it was healthy long
    /// enough, else one more.
    pub fn after_connection(&self, failures: u32, up: Duration) -> u32 {
        if up >= self.stable_after {
            0
        } else {
            failures.saturating_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_never_reach_zero() {
        let backoff = Backoff::default();
        for random in [0, 1, 12_345, u64::MAX] {
            let delays: Vec<Duration> = (0..10).map(|n| backoff.delay(n, random)).collect();
            for (n, delay) in delays.iter().enumerate() {
                let ceiling = Duration::from_secs(1 << n.min(5)).min(backoff.cap);
                assert!(*delay >= ceiling / 2 && *delay <= ceiling, "{n}: {delay:?}");
            }
        }
        assert_eq!(backoff.delay(0, 0), Duration::from_millis(500));
        assert_eq!(
            backoff.delay(40, u64::MAX - 1),
            backoff.delay(40, u64::MAX - 1)
        );
        assert!(backoff.delay(40, 7) <= backoff.cap);
    }

    #[test]
    fn only_a_connection_that_stayed_up_resets_the_backoff() {
        let backoff = Backoff::default();
        // Refused right after connecting, 40 times: the delay keeps growing.
        let mut failures = 0;
        for _ in 0..40 {
            failures = backoff.after_connection(failures, Duration::from_millis(20));
        }
        assert_eq!(failures, 40);
        assert!(backoff.delay(failures, 0) >= backoff.cap / 2);
        assert_eq!(
            backoff.after_connection(failures, Duration::from_secs(61)),
            0
        );
    }
}
