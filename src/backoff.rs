//! The one backoff of twinreg: exponential from a base to a cap, with a jitter so that many
//! retries (instances re-driven after an outage, watches reconnecting, pools warming up) spread
//! out instead of firing together.
//!
//! Hand-written rather than taken from a crate: the well-kept ones (backon) add their jitter on top
//! of the delay, and the repairer's promise is *full* jitter (a uniform delay in `[0, ceiling]`,
//! the variant that spreads a thundering herd best); this is a dozen lines.

use std::time::Duration;

use rand::Rng;

/// How much of the delay is random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, ceiling]`.
    Full,
    /// Uniform in `[ceiling / 2, ceiling]`: never much shorter than the ceiling.
    Half,
}

/// `ceiling(attempt) = min(cap, base * 2^attempt)`, then jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub jitter: Jitter,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration, jitter: Jitter) -> Self {
        Self { base, cap, jitter }
    }

    /// The delay before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let low = match self.jitter {
            Jitter::Full => Duration::ZERO,
            Jitter::Half => ceiling / 2,
        };
        let spread = (ceiling - low).as_micros() as u64;
        low + Duration::from_micros(rand::rng().random_range(0..=spread))
    }

    /// The largest delay of retry number `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(2u32.saturating_pow(attempt.min(30)))
            .min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_their_band_and_spread() {
        let full = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(30),
            Jitter::Full,
        );
        let half = Backoff {
            jitter: Jitter::Half,
            ..full
        };
        for attempt in 0..40 {
            let ceiling = full.ceiling(attempt);
            assert!(ceiling <= Duration::from_secs(30));
            for _ in 0..50 {
                assert!(full.delay(attempt) <= ceiling);
                let d = half.delay(attempt);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{d:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
        assert_eq!(full.ceiling(0), Duration::from_millis(200));
        assert_eq!(full.ceiling(3), Duration::from_millis(1600));
        let spread: std::collections::HashSet<_> = (0..50).map(|_| full.delay(10)).collect();
        assert!(spread.len() > 10, "delays must differ, got {spread:?}");
    }
}
