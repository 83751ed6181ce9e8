//! Channel quota limiters that outlive a peer's connection.
//!
//! # Design
//! A connection's per-channel limiters ([`governor`]) are parked here when it
//! closes and taken back by the peer's next connection, so that reconnecting
//! does not refill a peer's quota: a limiter's state matters until it would
//! have refilled completely (`burst × replenish interval` of its quota), and
//! is kept that long. Bounded: at most one entry per peer and
//! `max_inbound + max_outbound` entries in all (the oldest goes first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::DefaultDirectRateLimiter;
use shoal_crypto::PublicKey;

pub(crate) type Limiters = HashMap<u32, (governor::Quota, DefaultDirectRateLimiter)>;

struct Parked {
    until: Instant,
    limiters: Limiters,
}

/// See the module docs.
pub(crate) struct ParkedLimiters {
    map: Mutex<HashMap<PublicKey, Parked>>,
    capacity: usize,
}

impl ParkedLimiters {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// `peer`'s connection closed with these limiters.
    pub fn park(&self, peer: &PublicKey, limiters: Limiters, now: Instant) {
        let keep = limiters
            .values()
            .map(|(q, _)| full_refill(q))
            .max()
            .unwrap_or_default();
        if keep.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, p| p.until > now);
        if map.len() >= self.capacity && !map.contains_key(peer) {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, p)| p.until)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            peer.clone(),
            Parked {
                until: now + keep,
                limiters,
            },
        );
    }

    /// The limiters `peer`'s last connection left, if still relevant.
    pub fn take(&self, peer: &PublicKey, now: Instant) -> Option<Limiters> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            return None;
        }
        map.remove(peer)
            .filter(|p| p.until > now)
            .map(|p| p.limiters)
    }
}

/// How long until a limiter of `q` is full again from empty.
fn full_refill(q: &governor::Quota) -> Duration {
    q.replenish_interval().saturating_mul(q.burst_size().get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crypto::{Ed25519Signer, Signer};
    use std::num::NonZeroU32;

    fn limiters(q: governor::Quota) -> Limiters {
        HashMap::from([(1, (q, governor::RateLimiter::direct(q)))])
    }

    #[test]
    fn parked_until_it_would_have_refilled() {
        let p = ParkedLimiters::new(4);
        let peer = Ed25519Signer::insecure_from_seed(1).public_key().clone();
        let q = governor::Quota::per_second(NonZeroU32::new(5).unwrap()); // 1 s to refill
        let now = Instant::now();
        p.park(&peer, limiters(q), now);
        assert!(p.take(&peer, now + Duration::from_millis(900)).is_some());
        assert!(p.take(&peer, now).is_none(), "taken once");
        p.park(&peer, limiters(q), now);
        assert!(
            p.take(&peer, now + Duration::from_millis(1100)).is_none(),
            "full again: dropped"
        );
    }

    #[test]
    fn bounded_oldest_first() {
        let p = ParkedLimiters::new(2);
        let q = governor::Quota::per_minute(NonZeroU32::new(1).unwrap());
        let now = Instant::now();
        let peers: Vec<PublicKey> = (1..=3)
            .map(|s| Ed25519Signer::insecure_from_seed(s).public_key().clone())
            .collect();
        for (i, peer) in peers.iter().enumerate() {
            p.park(peer, limiters(q), now + Duration::from_secs(i as u64));
        }
        let t = now + Duration::from_secs(3);
        assert!(p.take(&peers[0], t).is_none(), "the oldest was evicted");
        assert!(p.take(&peers[1], t).is_some());
        assert!(p.take(&peers[2], t).is_some());
    }
}
