//! A per-peer token-bucket rate limiter shared by every front-end.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// Most keys tracked before idle, full buckets are pruned.
const PRUNE_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by peer (usually an IP address).
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate_per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// `rate_per_sec` tokens refill per second, up to `burst`. A rate of 0 disables limiting.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        RateLimiter {
            rate_per_sec,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `key`; false when the peer is over its rate.
    pub fn check(&self, key: &K) -> bool {
        self.check_at(key, Instant::now())
    }

    /// [`RateLimiter::check`] at a given instant (for tests).
    pub fn check_at(&self, key: &K, now: Instant) -> bool {
        if self.rate_per_sec <= 0.0 {
            return true;
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= PRUNE_AT {
            let (rate, burst) = (self.rate_per_sec, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_sec).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        assert!(rl.check_at(&"p", t0));
        assert!(rl.check_at(&"p", t0));
        assert!(rl.check_at(&"p", t0));
        assert!(!rl.check_at(&"p", t0));
        assert!(rl.check_at(&"other", t0));
        assert!(rl.check_at(&"p", t0 + Duration::from_millis(500)));
        assert!(!rl.check_at(&"p", t0 + Duration::from_millis(500)));
    }

    #[test]
    fn zero_rate_disables() {
        let rl = RateLimiter::new(0.0, 1);
        for _ in 0..100 {
            assert!(rl.check(&1));
        }
    }
}
