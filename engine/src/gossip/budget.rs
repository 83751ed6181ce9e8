//! Rate budgets with the time passed in: a token bucket, and a bounded
//! table of them keyed by origin.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Instant;

/// A token bucket: `rate` tokens per second up to `burst`, starting full.
#[derive(Clone, Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `burst` tokens at `now`.
    pub fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Takes `n` tokens if there are that many (after refilling up to
    /// `now`); false otherwise, taking none.
    pub fn take(&mut self, now: Instant, n: u32, rate: u32, burst: u32) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        self.tokens = (self.tokens + dt * f64::from(rate)).min(f64::from(burst));
        if self.tokens >= f64::from(n) {
            self.tokens -= f64::from(n);
            true
        } else {
            false
        }
    }
}

/// Buckets for at most `capacity` keys; a new key beyond it forgets the
/// key added longest ago (which starts full when it comes back).
#[derive(Debug)]
pub struct Budgets<K> {
    map: HashMap<K, Bucket>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Clone + Eq + Hash> Budgets<K> {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Takes one token from `key`'s bucket.
    pub fn take(&mut self, key: &K, now: Instant, rate: u32, burst: u32) -> bool {
        if let Some(b) = self.map.get_mut(key) {
            return b.take(now, 1, rate, burst);
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        let mut b = Bucket::full(burst, now);
        let ok = b.take(now, 1, rate, burst);
        self.map.insert(key.clone(), b);
        self.order.push_back(key.clone());
        ok
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_refills_at_rate_up_to_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::full(2, t0);
        assert!(b.take(t0, 1, 10, 2));
        assert!(b.take(t0, 1, 10, 2));
        assert!(!b.take(t0, 1, 10, 2));
        assert!(b.take(t0 + Duration::from_millis(100), 1, 10, 2));
        assert!(!b.take(t0 + Duration::from_millis(100), 1, 10, 2));
        // A long pause refills to the burst only.
        let t1 = t0 + Duration::from_secs(100);
        assert!(b.take(t1, 2, 10, 2));
        assert!(!b.take(t1, 1, 10, 2));
    }

    #[test]
    fn budgets_are_bounded() {
        let t0 = Instant::now();
        let mut b = Budgets::new(3);
        for k in 0..100u32 {
            assert!(b.take(&k, t0, 1, 1));
            assert!(b.len() <= 3);
        }
        assert!(!b.take(&99, t0, 1, 1), "99 is still tracked and empty");
    }
}
