//! `localRateLimit`: token buckets (`maxTokens`, refilled by `tokensPerFill` every
//! `fillInterval`), one per principal when the request has one, else one for the route.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Buckets kept per limit; past this, full (idle) ones are dropped first.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug)]
pub struct RateLimit {
    pub max_tokens: u64,
    pub tokens_per_fill: u64,
    pub fill_interval: Duration,
    buckets: RefCell<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u64,
    /// When the last fill was counted.
    filled: Instant,
}

impl RateLimit {
    pub fn new(max_tokens: u64, tokens_per_fill: u64, fill_interval: Duration) -> RateLimit {
        RateLimit {
            max_tokens,
            tokens_per_fill,
            fill_interval,
            buckets: RefCell::new(HashMap::new()),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let interval = self.fill_interval.as_nanos().max(1);
        let fills = now.saturating_duration_since(b.filled).as_nanos() / interval;
        if fills > 0 {
            let add = (fills as u64).saturating_mul(self.tokens_per_fill);
            b.tokens = b.tokens.saturating_add(add).min(self.max_tokens);
            b.filled += self.fill_interval * (fills.min(u32::MAX as u128) as u32);
        }
    }

    /// Takes one token from `key`'s bucket. Err: the seconds until one is back (at least 1),
    /// for `Retry-After`.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.borrow_mut();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let mut full = Vec::new();
            for (k, b) in buckets.iter_mut() {
                let mut b2 = *b;
                self.refill(&mut b2, now);
                if b2.tokens >= self.max_tokens {
                    full.push(k.clone());
                }
            }
            for k in full {
                buckets.remove(&k);
            }
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        // Found by the borrowed key: a bucket's name is allocated once, when it is made.
        if !buckets.contains_key(key) {
            let full = Bucket {
                tokens: self.max_tokens,
                filled: now,
            };
            buckets.insert(key.to_string(), full);
        }
        let Some(b) = buckets.get_mut(key) else {
            return Ok(());
        };
        self.refill(b, now);
        if b.tokens > 0 {
            b.tokens -= 1;
            return Ok(());
        }
        let next = (b.filled + self.fill_interval).saturating_duration_since(now);
        Err((next.as_secs_f64().ceil() as u64).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_at_max_tokens_and_refills() {
        let l = RateLimit::new(3, 1, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take("alice", t0), Ok(()));
        }
        assert_eq!(l.take("alice", t0), Err(10));
        assert_eq!(l.take("alice", t0 + Duration::from_millis(9500)), Err(1));
        // Another principal has its own bucket.
        assert_eq!(l.take("bob", t0), Ok(()));
        assert_eq!(l.take("alice", t0 + Duration::from_secs(10)), Ok(()));
        assert!(l.take("alice", t0 + Duration::from_secs(10)).is_err());
        // A long pause refills to the cap, no further.
        let later = t0 + Duration::from_secs(1000);
        for _ in 0..3 {
            assert_eq!(l.take("alice", later), Ok(()));
        }
        assert!(l.take("alice", later).is_err());
    }
}
