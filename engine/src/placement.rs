//! Which data shard a new connection goes to.
//!
//! # Design
//! The control shard places every accepted and every dialed connection on
//! the live shard with the fewest connection slots, ties broken round robin.
//! A slot counts from the moment the control shard hands the socket (or the
//! dial) over until the shard releases it, so a burst of accepts in one
//! control turn spreads over the shards although none of them has seen its
//! hand-off yet. Slots are what a shard pays for per connection (buffers,
//! timers, a share of its CPU); bytes per connection are bounded by config
//! separately.
//!
//! A shard whose driver stops with an error (or panics) is marked dead: it
//! gets no more connections, its connections are closed and counted
//! (`closes{reason="shard_failed"}`), and the node reports itself degraded
//! (`shoal_shards_alive` below the configured count, `shoal_shard_failures`,
//! an error event). Its peers are redialed onto the remaining shards like any
//! other disconnected peer. A node with no live shard refuses connections
//! (`refused{reason="no_live_shard"}`).
//!
//! # Placed peers
//! The application may place a peer on a chosen shard
//! ([`crate::NetworkHandle::place`]), typically the shard whose task serves
//! it ([`crate::tasks`]), so that the task reaches the peer without leaving
//! its thread. A dial to a placed peer goes to its shard directly. An
//! accepted connection's peer is known only once its handshake is done, on
//! the shard load placement chose: if the peer is placed elsewhere, the
//! established connection moves there before it is admitted to the peer
//! table ([`crate::shard`], `moving`), so the application never sees it on
//! the first shard. Connections established before the peer was placed stay
//! where they are, as does one whose placed shard is dead or has a full
//! command queue when it arrives: placement is a preference, never a reason
//! to drop a peer. Pins are bounded by `limits.max_inbound +
//! limits.max_outbound`, one per connection the node may hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::RwLock;

use prometheus_client::metrics::gauge::Gauge;
use shoal_crypto::PublicKey;

/// One shard's placement state, shared by the control shard (which assigns)
/// and the shard (which releases). The slot count is the shard's
/// `shoal_shard_connections{shard}` gauge itself.
#[derive(Debug)]
pub(crate) struct ShardLoad {
    slots: Gauge,
    alive: AtomicBool,
}

impl Default for ShardLoad {
    fn default() -> Self {
        ShardLoad::new(Gauge::default())
    }
}

impl ShardLoad {
    /// Placement state counting into `slots`.
    pub fn new(slots: Gauge) -> Self {
        ShardLoad {
            slots,
            alive: AtomicBool::new(true),
        }
    }

    /// Connection slots assigned and not yet released.
    pub fn slots(&self) -> usize {
        self.slots.get().max(0) as usize
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// A connection was handed to this shard.
    pub fn assign(&self) {
        self.slots.inc();
    }

    /// A connection handed to this shard is gone (closed, or never became
    /// one). Saturates: a release never wraps the count.
    pub fn release(&self) {
        let _ = self
            .slots
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0).then_some(n - 1)
            });
    }

    /// The shard stopped: no more assignments. Returns whether it was alive.
    pub fn mark_dead(&self) -> bool {
        self.alive.swap(false, Ordering::AcqRel)
    }
}

/// Why [`crate::NetworkHandle::place`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// There is no shard with this index (see [`crate::NetworkHandle::shards`]).
    #[error("no shard {0}")]
    NoSuchShard(usize),
    /// As many peers are placed as the node may hold connections.
    #[error("placement table full")]
    Full,
}

/// Peers placed on a chosen shard; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Pins {
    map: RwLock<HashMap<PublicKey, usize>>,
    /// `map.len()`, read without the lock: most nodes place nobody.
    len: AtomicUsize,
    limit: usize,
}

impl Pins {
    /// At most `limit` placed peers.
    pub fn new(limit: usize) -> Self {
        Pins {
            map: RwLock::new(HashMap::new()),
            len: AtomicUsize::new(0),
            limit,
        }
    }

    /// The shard `peer` is placed on, if any.
    pub fn get(&self, peer: &PublicKey) -> Option<usize> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.read().get(peer).copied()
    }

    /// Places `peer` on `shard` (replacing an earlier placement); false if
    /// the table is full.
    pub fn set(&self, peer: &PublicKey, shard: usize) -> bool {
        let mut map = self.write();
        if map.len() >= self.limit && !map.contains_key(peer) {
            return false;
        }
        map.insert(peer.clone(), shard);
        self.len.store(map.len(), Ordering::Release);
        true
    }

    /// Forgets `peer`'s placement; whether it had one.
    pub fn remove(&self, peer: &PublicKey) -> bool {
        let mut map = self.write();
        let had = map.remove(peer).is_some();
        self.len.store(map.len(), Ordering::Release);
        had
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PublicKey, usize>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<PublicKey, usize>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The live shard with the fewest slots; among equals the first at or after
/// `*next` (which then moves past it). `None` when no shard is alive.
pub(crate) fn pick<'a>(
    loads: impl ExactSizeIterator<Item = &'a ShardLoad>,
    next: &mut usize,
) -> Option<usize> {
    let n = loads.len();
    if n == 0 {
        return None;
    }
    let start = *next % n;
    let mut best: Option<(usize, usize)> = None; // (slots, distance from start)
    for (i, load) in loads.enumerate() {
        if !load.is_alive() {
            continue;
        }
        let dist = (i + n - start) % n;
        let key = (load.slots(), dist);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    let (_, dist) = best?;
    let shard = (start + dist) % n;
    *next = shard + 1;
    Some(shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(slots: &[usize]) -> Vec<ShardLoad> {
        slots
            .iter()
            .map(|&s| {
                let l = ShardLoad::default();
                for _ in 0..s {
                    l.assign();
                }
                l
            })
            .collect()
    }

    #[test]
    fn equal_loads_go_round_robin() {
        let l = loads(&[0, 0, 0]);
        let mut next = 0;
        let picks: Vec<_> = (0..6).map(|_| pick(l.iter(), &mut next)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2].map(Some));
    }

    #[test]
    fn the_least_loaded_shard_wins() {
        let l = loads(&[5, 2, 3]);
        let mut next = 0;
        assert_eq!(pick(l.iter(), &mut next), Some(1));
        l[1].assign();
        l[1].assign();
        // 5, 4, 3: shard 2 now.
        assert_eq!(pick(l.iter(), &mut next), Some(2));
    }

    #[test]
    fn assignments_count_before_the_shard_sees_them() {
        // A burst: each pick assigns, so the next pick sees it.
        let l = loads(&[0, 0]);
        let mut next = 0;
        let mut counts = [0; 2];
        for _ in 0..10 {
            let s = pick(l.iter(), &mut next).unwrap();
            l[s].assign();
            counts[s] += 1;
        }
        assert_eq!(counts, [5, 5]);
        // Shard 0 releases three: the next three go there.
        for _ in 0..3 {
            l[0].release();
        }
        for _ in 0..3 {
            let s = pick(l.iter(), &mut next).unwrap();
            assert_eq!(s, 0);
            l[s].assign();
        }
    }

    #[test]
    fn dead_shards_get_nothing() {
        let l = loads(&[0, 9, 0]);
        assert!(l[0].mark_dead());
        assert!(!l[0].mark_dead(), "dead once");
        let mut next = 0;
        for _ in 0..4 {
            assert_eq!(pick(l.iter(), &mut next), Some(2));
        }
        l[2].mark_dead();
        assert_eq!(pick(l.iter(), &mut next), Some(1));
        l[1].mark_dead();
        assert_eq!(pick(l.iter(), &mut next), None);
        assert_eq!(pick(std::iter::empty::<&ShardLoad>(), &mut next), None);
    }

    #[test]
    fn pins_are_bounded_and_replaceable() {
        let key = |seed| {
            use shoal_crypto::Signer;
            shoal_crypto::Ed25519Signer::insecure_from_seed(seed)
                .public_key()
                .clone()
        };
        let pins = Pins::new(2);
        assert_eq!(pins.get(&key(1)), None);
        assert!(pins.set(&key(1), 0));
        assert!(pins.set(&key(2), 1));
        assert!(!pins.set(&key(3), 1), "full");
        assert!(pins.set(&key(1), 1), "a placed peer can move");
        assert_eq!(pins.get(&key(1)), Some(1));
        assert!(pins.remove(&key(2)));
        assert!(!pins.remove(&key(2)));
        assert!(pins.set(&key(3), 0), "room again");
        assert_eq!(pins.get(&key(3)), Some(0));
    }

    #[test]
    fn release_saturates() {
        let l = ShardLoad::default();
        l.release();
        assert_eq!(l.slots(), 0);
        l.assign();
        l.release();
        l.release();
        assert_eq!(l.slots(), 0);
    }
}
