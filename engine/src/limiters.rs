//! Channel quota limiters per peer, shared by its connections and kept
//! after them.
//!
//! # Design
//! A peer's per-channel limiters ([`governor`], lock-free and `Sync`) live
//! here, one set per peer, created when its first connection is
//! established. Every connection of the peer holds the same set, so neither
//! a replacement connection (the peer dials again while connected and the
//! new connection wins) nor a reconnect refills its quota. When the last
//! connection closes the set is kept until it would have refilled
//! completely (`burst × replenish interval` of its slowest quota, at most a
//! day), then dropped: a fresh one is the same.
//!
//! Bounded: one set per peer; at most `capacity` (`max_inbound +
//! max_outbound`) sets without a connection are kept, the oldest dropped
//! first. Sets with connections are bounded by the connection limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota};
use shoal_crypto::PublicKey;

/// Longest a set is kept after its last connection.
const MAX_KEEP: Duration = Duration::from_secs(24 * 3600);

/// One peer's limiters, one per channel with a quota.
pub(crate) struct PeerLimiters {
    by_channel: Vec<(u32, DefaultDirectRateLimiter)>,
    keep: Duration,
}

impl PeerLimiters {
    fn new(quotas: &[(u32, Quota)]) -> Self {
        let keep = quotas
            .iter()
            .map(|(_, q)| full_refill(q))
            .max()
            .unwrap_or_default()
            .min(MAX_KEEP);
        Self {
            by_channel: quotas
                .iter()
                .map(|(c, q)| (*c, governor::RateLimiter::direct(*q)))
                .collect(),
            keep,
        }
    }

    /// The limiter of `channel`, if it has a quota.
    pub fn get(&self, channel: u32) -> Option<&DefaultDirectRateLimiter> {
        self.by_channel
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, l)| l)
    }
}

struct Entry {
    set: Arc<PeerLimiters>,
    /// Connections holding `set`.
    holders: usize,
    /// With no holder: dropped after this.
    until: Instant,
}

/// See the module docs.
pub(crate) struct LimiterStore {
    map: Mutex<HashMap<PublicKey, Entry>>,
    capacity: usize,
}

impl LimiterStore {
    /// A store keeping at most `capacity` sets of peers without a
    /// connection.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// A connection of `peer` was established: its limiters (the peer's
    /// existing set, or a new one for the channels with these `quotas`).
    /// `None` when no channel has a quota.
    pub fn acquire(
        &self,
        peer: &PublicKey,
        quotas: &[(u32, Quota)],
        now: Instant,
    ) -> Option<Arc<PeerLimiters>> {
        if quotas.is_empty() {
            return None;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(peer) {
            if e.holders > 0 || e.until > now {
                e.holders += 1;
                return Some(e.set.clone());
            }
        }
        let set = Arc::new(PeerLimiters::new(quotas));
        map.insert(
            peer.clone(),
            Entry {
                set: set.clone(),
                holders: 1,
                until: now,
            },
        );
        Some(set)
    }

    /// A connection of `peer` that acquired limiters closed.
    pub fn release(&self, peer: &PublicKey, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = map.get_mut(peer) else {
            return;
        };
        e.holders = e.holders.saturating_sub(1);
        if e.holders > 0 {
            return;
        }
        match now.checked_add(e.set.keep) {
            Some(until) if !e.set.keep.is_zero() => e.until = until,
            _ => {
                map.remove(peer);
                return;
            }
        }
        // Bound the sets kept without a connection: expired ones go, then
        // the oldest.
        map.retain(|_, e| e.holders > 0 || e.until > now);
        let idle = map.values().filter(|e| e.holders == 0).count();
        if idle > self.capacity {
            if let Some(oldest) = map
                .iter()
                .filter(|(_, e)| e.holders == 0)
                .min_by_key(|(_, e)| e.until)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
    }
}

/// How long until a limiter of `q` is full again from empty.
fn full_refill(q: &Quota) -> Duration {
    q.replenish_interval().saturating_mul(q.burst_size().get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crypto::{Ed25519Signer, Signer};
    use std::num::NonZeroU32;

    fn peer(seed: u64) -> PublicKey {
        Ed25519Signer::insecure_from_seed(seed).public_key().clone()
    }

    fn quotas() -> Vec<(u32, Quota)> {
        // Burst 1, one per second: 1 s to refill.
        vec![(7, Quota::per_second(NonZeroU32::new(1).unwrap()))]
    }

    fn store(capacity: usize) -> LimiterStore {
        LimiterStore::new(capacity)
    }

    #[test]
    fn connections_of_one_peer_share_its_limiters() {
        let s = store(4);
        let now = Instant::now();
        let old = s.acquire(&peer(1), &quotas(), now).unwrap();
        assert!(old.get(7).unwrap().check().is_ok(), "the burst of 1");
        // A replacement connection while the old one lives: same quota.
        let new = s.acquire(&peer(1), &quotas(), now).unwrap();
        assert!(new.get(7).unwrap().check().is_err(), "not refilled");
        assert!(new.get(8).is_none(), "no quota on channel 8");
    }

    #[test]
    fn kept_after_the_last_close_until_it_would_have_refilled() {
        let s = store(4);
        let now = Instant::now();
        let a = s.acquire(&peer(1), &quotas(), now).unwrap();
        assert!(a.get(7).unwrap().check().is_ok());
        s.release(&peer(1), now);
        let b = s
            .acquire(&peer(1), &quotas(), now + Duration::from_millis(10))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "a reconnect gets the same set");
        s.release(&peer(1), now);
        let c = s
            .acquire(&peer(1), &quotas(), now + Duration::from_millis(1100))
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "full again: a fresh set");
    }

    #[test]
    fn idle_sets_are_bounded_oldest_first() {
        let s = store(2);
        let now = Instant::now();
        let sets: Vec<_> = (1..=3)
            .map(|p| s.acquire(&peer(p), &quotas(), now).unwrap())
            .collect();
        for p in 1..=3 {
            s.release(&peer(p), now + Duration::from_millis(p * 10));
        }
        let t = now + Duration::from_millis(50);
        assert!(
            !Arc::ptr_eq(&s.acquire(&peer(1), &quotas(), t).unwrap(), &sets[0]),
            "evicted"
        );
        assert!(Arc::ptr_eq(
            &s.acquire(&peer(3), &quotas(), t).unwrap(),
            &sets[2]
        ));
    }

    #[test]
    fn no_quota_no_limiters() {
        let s = LimiterStore::new(4);
        assert!(s.acquire(&peer(1), &[], Instant::now()).is_none());
        s.release(&peer(1), Instant::now());
    }
}
