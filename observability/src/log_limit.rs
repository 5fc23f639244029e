//! Log lines that a client can cause at will (a token request over its limit) are kept to one
//! per period, each saying how many were held back since the last: the log cannot be flooded, and
//! nothing goes uncounted.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub struct LogLimit {
    limiter: DefaultDirectRateLimiter,
    held: AtomicU64,
}

impl LogLimit {
    /// One line per `period` (at least a millisecond).
    pub fn every(period: Duration) -> LogLimit {
        let quota = Quota::with_period(period.max(Duration::from_millis(1)))
            .expect("a period of a millisecond or more")
            .allow_burst(NonZeroU32::MIN);
        LogLimit { limiter: RateLimiter::direct(quota), held: AtomicU64::new(0) }
    }

    /// `Some(lines held back since the last)` when a line may be written now; otherwise the line
    /// is counted as held back.
    pub fn admit(&self) -> Option<u64> {
        match self.limiter.check() {
            Ok(()) => Some(self.held.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.held.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_next_counts_the_rest() {
        let limit = LogLimit::every(Duration::from_millis(200));
        assert_eq!(limit.admit(), Some(0));
        assert!((0..50).all(|_| limit.admit().is_none()));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limit.admit(), Some(50));
    }
}
