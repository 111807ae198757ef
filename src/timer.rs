//! The deadline queue: the loop polls with the earliest deadline as its timeout, then pops
//! what expired. Timers are never cancelled; whoever handles one checks it still applies.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

pub struct Timers<K> {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    kinds: crate::idmap::IdMap<u64, K>,
    seq: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            kinds: crate::idmap::IdMap::default(),
            seq: 0,
        }
    }
}

impl<K> Timers<K> {
    pub fn add(&mut self, at: Instant, kind: K) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq)));
        self.kinds.insert(self.seq, kind);
    }

    /// How long until the next deadline (None: no timers).
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(now))
    }

    /// The next expired timer, if any.
    pub fn pop_expired(&mut self, now: Instant) -> Option<K> {
        let Reverse((at, seq)) = *self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        self.kinds.remove(&seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.add(t0 + Duration::from_secs(2), "b");
        t.add(t0 + Duration::from_secs(1), "a");
        t.add(t0 + Duration::from_secs(5), "c");
        assert_eq!(t.next_timeout(t0), Some(Duration::from_secs(1)));
        let now = t0 + Duration::from_secs(3);
        assert_eq!(t.pop_expired(now), Some("a"));
        assert_eq!(t.pop_expired(now), Some("b"));
        assert_eq!(t.pop_expired(now), None);
        assert_eq!(t.next_timeout(now), Some(Duration::from_secs(2)));
    }
}
