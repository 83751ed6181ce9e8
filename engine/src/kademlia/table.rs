//! The routing table: 256 k-buckets with liveness-checked eviction.
//!
//! # Design
//! One bucket per bit of distance from the local id (see [`super::id`] for the
//! index convention). Each bucket holds at most `k` entries ordered from
//! least to most recently seen, plus a bounded *replacement cache* of nodes
//! that were seen while the bucket was full.
//!
//! [`RoutingTable::observe`] is called whenever a node proved it is alive
//! (authenticated connection, answered a query, sent us a request):
//! - a known id moves to the most-recently-seen end (its address is updated);
//! - a new id is inserted if its bucket has room;
//! - otherwise the new id goes to the bucket's replacement cache and the
//!   table answers [`Observe::PingOldest`]: the caller pings the
//!   least-recently-seen entry and reports with [`RoutingTable::ping_result`].
//!   Alive: the old node is refreshed and kept (old, long-lived nodes are
//!   preferred, as in the Kademlia paper); dead: it is evicted and the
//!   freshest cached candidate takes its place. Nothing is ever evicted
//!   without a failed liveness check or an explicit [`RoutingTable::remove`]
//!   (noise evicted peers immediately, or never).
//!
//! At most one ping per bucket is outstanding: while one is pending, further
//! newcomers only enter the cache ([`Observe::Cached`]). A pending ping that
//! is never reported stops blocking the bucket after
//! [`TableConfig::ping_timeout`]; the caller should still report every ping
//! (a timeout is `alive = false`).
//!
//! Bounds: `256 * (k + replacement_cache)` entries at most, plus one pending
//! ping per bucket. No clock, no IO: `now` is passed in.
//!
//! # Security
//! Only call `observe` for nodes that authenticated themselves (a completed
//! handshake proves the key, hence the id) and pass the address the node
//! *listens* on, not the ephemeral source port of an inbound connection.
//! Node addresses merely *mentioned* in someone's `FIND_NODE` answer are
//! unverified and must not be fed to `observe` until we talk to them.
//! Preferring old live entries makes flooding a bucket with fresh Sybil ids
//! ineffective against a live table, but bucket diversity (per-IP / per-
//! subnet limits) is **not** enforced, and nothing stops an attacker that
//! generates many keys near a target from eclipsing it over time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::id::{NodeId, ID_BITS};

/// Default bucket size.
pub const K: usize = 16;

/// Table parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableConfig {
    /// Entries per bucket (default 16). Values below 1 are treated as 1.
    pub k: usize,
    /// Replacement-cache entries per bucket (default 16).
    pub replacement_cache: usize,
    /// After this long, an unreported [`Observe::PingOldest`] no longer
    /// blocks a new one for the same bucket (default 10 s).
    pub ping_timeout: Duration,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            k: K,
            replacement_cache: K,
            ping_timeout: Duration::from_secs(10),
        }
    }
}

/// A routing-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The node's id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// When it was last seen alive.
    pub last_seen: Instant,
}

/// What [`RoutingTable::observe`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observe {
    /// A known node: moved to most-recently-seen, address updated.
    Refreshed,
    /// A new node, inserted.
    Inserted,
    /// The bucket is full: `candidate` waits in the replacement cache; the
    /// caller must ping `oldest` and report with
    /// [`RoutingTable::ping_result`].
    PingOldest {
        /// Least-recently-seen entry of the full bucket.
        oldest: NodeId,
        /// The newcomer, now in the replacement cache.
        candidate: NodeId,
    },
    /// The bucket is full and a ping of its oldest entry is already pending:
    /// `candidate` waits in the replacement cache.
    Cached {
        /// The newcomer, now in the replacement cache.
        candidate: NodeId,
    },
    /// The local id: ignored.
    IsSelf,
}

/// What [`RoutingTable::ping_result`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingOutcome {
    /// The node answered and was moved to most-recently-seen.
    Refreshed,
    /// The node was evicted; `promoted` is the cached candidate that took its
    /// place, if the cache was not empty.
    Evicted {
        /// The replacement, if any.
        promoted: Option<NodeId>,
    },
    /// The node is not in the table (already removed): nothing changed.
    Unknown,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Least recently seen first.
    entries: Vec<Entry>,
    /// Oldest first; the freshest candidate is last.
    cache: Vec<Entry>,
    /// The entry we asked the caller to ping, and when.
    pending: Option<(NodeId, Instant)>,
}

impl Bucket {
    fn position(&self, id: &NodeId) -> Option<usize> {
        self.entries.iter().position(|e| e.id == *id)
    }

    fn uncache(&mut self, id: &NodeId) -> Option<Entry> {
        let pos = self.cache.iter().position(|e| e.id == *id)?;
        Some(self.cache.remove(pos))
    }

    /// Fill free slots from the freshest cached candidates.
    fn promote(&mut self, k: usize) -> Option<NodeId> {
        let mut first = None;
        while self.entries.len() < k {
            let Some(e) = self.cache.pop() else { break };
            first.get_or_insert(e.id);
            self.entries.push(e);
        }
        first
    }
}

/// The Kademlia routing table of one node. Never contains the local id.
#[derive(Debug)]
pub struct RoutingTable {
    local: NodeId,
    config: TableConfig,
    buckets: Vec<Bucket>,
    len: usize,
}

impl RoutingTable {
    /// An empty table with the default parameters (k = 16, 16 cached
    /// replacements per bucket).
    pub fn new(local: NodeId) -> Self {
        Self::with_config(local, TableConfig::default())
    }

    /// An empty table with explicit parameters.
    pub fn with_config(local: NodeId, mut config: TableConfig) -> Self {
        config.k = config.k.max(1);
        Self {
            local,
            config,
            buckets: (0..ID_BITS).map(|_| Bucket::default()).collect(),
            len: 0,
        }
    }

    /// The local node id.
    pub fn local_id(&self) -> NodeId {
        self.local
    }

    /// Number of entries (replacement caches not counted).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bucket_of(&self, id: &NodeId) -> Option<usize> {
        self.local.distance(id).bucket_index()
    }

    /// The entry for `id`, if it is in the table (not the cache).
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        let b = &self.buckets[self.bucket_of(id)?];
        b.position(id).map(|p| &b.entries[p])
    }

    /// Whether `id` is in the table (not the cache).
    pub fn contains(&self, id: &NodeId) -> bool {
        self.get(id).is_some()
    }

    /// All entries, bucket 0 first, least recently seen first within a
    /// bucket.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// Number of entries in bucket `index` (0 when out of range).
    pub fn bucket_len(&self, index: usize) -> usize {
        self.buckets.get(index).map_or(0, |b| b.entries.len())
    }

    /// Number of cached replacements for bucket `index` (0 when out of
    /// range).
    pub fn cache_len(&self, index: usize) -> usize {
        self.buckets.get(index).map_or(0, |b| b.cache.len())
    }

    /// Records that `id`, listening on `addr`, was seen alive at `now`.
    /// See the module docs for the full-bucket protocol.
    pub fn observe(&mut self, id: NodeId, addr: SocketAddr, now: Instant) -> Observe {
        let Some(index) = self.bucket_of(&id) else {
            return Observe::IsSelf;
        };
        let k = self.config.k;
        let cache_cap = self.config.replacement_cache;
        let ping_timeout = self.config.ping_timeout;
        let bucket = &mut self.buckets[index];
        let fresh = Entry {
            id,
            addr,
            last_seen: now,
        };

        if let Some(pos) = bucket.position(&id) {
            bucket.entries.remove(pos);
            bucket.entries.push(fresh);
            return Observe::Refreshed;
        }
        if bucket.entries.len() < k {
            bucket.uncache(&id);
            bucket.entries.push(fresh);
            self.len += 1;
            return Observe::Inserted;
        }

        // Full bucket: the newcomer waits in the cache (freshest last).
        bucket.uncache(&id);
        if cache_cap > 0 {
            if bucket.cache.len() >= cache_cap {
                bucket.cache.remove(0);
            }
            bucket.cache.push(fresh);
        }
        let pending_live = bucket
            .pending
            .is_some_and(|(_, since)| now.saturating_duration_since(since) < ping_timeout);
        if pending_live {
            return Observe::Cached { candidate: id };
        }
        let oldest = bucket.entries[0].id;
        bucket.pending = Some((oldest, now));
        Observe::PingOldest {
            oldest,
            candidate: id,
        }
    }

    /// Reports the ping asked for by [`Observe::PingOldest`] (a timeout or a
    /// failed dial is `alive = false`). Alive: the node is refreshed and the
    /// candidate stays cached. Dead: the node is evicted and the freshest
    /// cached candidate is promoted.
    pub fn ping_result(&mut self, oldest: NodeId, alive: bool, now: Instant) -> PingOutcome {
        let Some(index) = self.bucket_of(&oldest) else {
            return PingOutcome::Unknown;
        };
        let k = self.config.k;
        let bucket = &mut self.buckets[index];
        if bucket.pending.is_some_and(|(id, _)| id == oldest) {
            bucket.pending = None;
        }
        let Some(pos) = bucket.position(&oldest) else {
            return PingOutcome::Unknown;
        };
        let mut entry = bucket.entries.remove(pos);
        if alive {
            entry.last_seen = now;
            bucket.entries.push(entry);
            return PingOutcome::Refreshed;
        }
        self.len -= 1;
        let promoted = bucket.promote(k);
        if promoted.is_some() {
            self.len += 1;
        }
        PingOutcome::Evicted { promoted }
    }

    /// Removes `id` (table or replacement cache), e.g. after repeated
    /// failures. A freed table slot is filled by the freshest cached
    /// candidate. Returns the removed table entry.
    pub fn remove(&mut self, id: &NodeId) -> Option<Entry> {
        let index = self.bucket_of(id)?;
        let k = self.config.k;
        let bucket = &mut self.buckets[index];
        bucket.uncache(id);
        if bucket.pending.is_some_and(|(p, _)| p == *id) {
            bucket.pending = None;
        }
        let pos = bucket.position(id)?;
        let removed = bucket.entries.remove(pos);
        self.len -= 1;
        if bucket.promote(k).is_some() {
            self.len += 1;
        }
        Some(removed)
    }

    /// The `n` table entries closest to `target` by XOR distance, closest
    /// first (exact; ties are impossible since ids are distinct). The local
    /// id is never returned.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<(NodeId, SocketAddr)> {
        if n == 0 {
            return Vec::new();
        }
        // Let j be the bucket of `target`. Entries of bucket j are closer to
        // the target than anything else (distance < 2^j); entries of all
        // buckets i < j come next (distance in [2^j, 2^(j+1)), interleaved,
        // so they are sorted together); then each bucket i > j in increasing
        // order (distance in [2^i, 2^(i+1))). For target == local every
        // bucket i has distances in [2^i, 2^(i+1)).
        let mut out: Vec<(NodeId, SocketAddr)> = Vec::with_capacity(n.min(self.len));
        let mut group: Vec<&Entry> = Vec::new();
        let flush = |group: &mut Vec<&Entry>, out: &mut Vec<(NodeId, SocketAddr)>| {
            group.sort_unstable_by_key(|e| e.id.distance(target));
            for e in group.drain(..) {
                if out.len() == n {
                    break;
                }
                out.push((e.id, e.addr));
            }
        };
        let first_far = match self.bucket_of(target) {
            Some(j) => {
                group.extend(self.buckets[j].entries.iter());
                flush(&mut group, &mut out);
                for b in &self.buckets[..j] {
                    group.extend(b.entries.iter());
                }
                flush(&mut group, &mut out);
                j + 1
            }
            None => 0,
        };
        for b in &self.buckets[first_far..] {
            if out.len() == n {
                break;
            }
            group.extend(b.entries.iter());
            flush(&mut group, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 10_000 + i))
    }

    /// An id at distance `d` (in the last two bytes) from the all-zero id.
    fn id(d: u16) -> NodeId {
        let mut b = [0u8; 32];
        b[30..].copy_from_slice(&d.to_be_bytes());
        NodeId(b)
    }

    fn local() -> NodeId {
        NodeId([0u8; 32])
    }

    /// Fills bucket 8 (distances 256..=511) with 16 entries, ids 256..272,
    /// observed in that order one second apart.
    fn full_bucket(t0: Instant) -> RoutingTable {
        let mut t = RoutingTable::new(local());
        for i in 0..16u16 {
            let r = t.observe(id(256 + i), addr(i), t0 + Duration::from_secs(i.into()));
            assert_eq!(r, Observe::Inserted);
        }
        assert_eq!(t.bucket_len(8), 16);
        t
    }

    #[test]
    fn self_is_never_inserted() {
        let mut t = RoutingTable::new(local());
        assert_eq!(t.observe(local(), addr(0), Instant::now()), Observe::IsSelf);
        assert!(t.is_empty());
        assert!(t.closest(&local(), 16).is_empty());
    }

    #[test]
    fn known_id_moves_to_most_recent_and_updates_addr() {
        let t0 = Instant::now();
        let mut t = full_bucket(t0);
        let later = t0 + Duration::from_secs(100);
        assert_eq!(t.observe(id(256), addr(99), later), Observe::Refreshed);
        let e = t.get(&id(256)).unwrap();
        assert_eq!(e.addr, addr(99));
        assert_eq!(e.last_seen, later);
        // 257 is now the oldest.
        match t.observe(id(300), addr(50), later) {
            Observe::PingOldest { oldest, candidate } => {
                assert_eq!(oldest, id(257));
                assert_eq!(candidate, id(300));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.len(), 16);
    }

    #[test]
    fn full_bucket_oldest_alive_is_kept() {
        let t0 = Instant::now();
        let mut t = full_bucket(t0);
        let now = t0 + Duration::from_secs(60);
        let r = t.observe(id(400), addr(40), now);
        assert_eq!(
            r,
            Observe::PingOldest {
                oldest: id(256),
                candidate: id(400)
            }
        );
        assert!(!t.contains(&id(400)));
        assert_eq!(t.cache_len(8), 1);
        // A second newcomer while the ping is pending: cached, no new ping.
        assert_eq!(
            t.observe(id(401), addr(41), now),
            Observe::Cached { candidate: id(401) }
        );
        assert_eq!(t.cache_len(8), 2);

        let pinged = now + Duration::from_secs(1);
        assert_eq!(t.ping_result(id(256), true, pinged), PingOutcome::Refreshed);
        assert!(t.contains(&id(256)));
        assert_eq!(t.get(&id(256)).unwrap().last_seen, pinged);
        assert!(!t.contains(&id(400)));
        assert!(!t.contains(&id(401)));
        assert_eq!(t.cache_len(8), 2, "candidates stay cached");
        assert_eq!(t.len(), 16);
        // 256 is now most recent; the next full-bucket event pings 257.
        match t.observe(id(402), addr(42), pinged) {
            Observe::PingOldest { oldest, .. } => assert_eq!(oldest, id(257)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn full_bucket_oldest_dead_is_replaced_by_freshest_candidate() {
        let t0 = Instant::now();
        let mut t = full_bucket(t0);
        let now = t0 + Duration::from_secs(60);
        assert!(matches!(
            t.observe(id(400), addr(40), now),
            Observe::PingOldest { .. }
        ));
        assert_eq!(
            t.observe(id(401), addr(41), now + Duration::from_secs(1)),
            Observe::Cached { candidate: id(401) }
        );
        let r = t.ping_result(id(256), false, now + Duration::from_secs(2));
        assert_eq!(
            r,
            PingOutcome::Evicted {
                promoted: Some(id(401))
            }
        );
        assert!(!t.contains(&id(256)));
        assert!(t.contains(&id(401)));
        assert!(!t.contains(&id(400)));
        assert_eq!(t.cache_len(8), 1);
        assert_eq!(t.len(), 16);
        // The promoted entry keeps the address and time it was seen with.
        let e = t.get(&id(401)).unwrap();
        assert_eq!(e.addr, addr(41));
        // Reporting again for an evicted node changes nothing.
        assert_eq!(t.ping_result(id(256), false, now), PingOutcome::Unknown);
        assert_eq!(t.len(), 16);
    }

    #[test]
    fn dead_oldest_with_empty_cache_leaves_a_hole() {
        let t0 = Instant::now();
        let mut t = RoutingTable::with_config(
            local(),
            TableConfig {
                replacement_cache: 0,
                ..TableConfig::default()
            },
        );
        for i in 0..16u16 {
            t.observe(id(256 + i), addr(i), t0);
        }
        assert!(matches!(
            t.observe(id(400), addr(40), t0),
            Observe::PingOldest { .. }
        ));
        assert_eq!(t.cache_len(8), 0);
        assert_eq!(
            t.ping_result(id(256), false, t0),
            PingOutcome::Evicted { promoted: None }
        );
        assert_eq!(t.len(), 15);
        assert_eq!(t.observe(id(400), addr(40), t0), Observe::Inserted);
    }

    #[test]
    fn stale_pending_ping_is_reissued() {
        let t0 = Instant::now();
        let mut t = full_bucket(t0);
        assert!(matches!(
            t.observe(id(400), addr(40), t0),
            Observe::PingOldest { .. }
        ));
        assert!(matches!(
            t.observe(id(401), addr(41), t0 + Duration::from_secs(9)),
            Observe::Cached { .. }
        ));
        assert!(matches!(
            t.observe(id(402), addr(42), t0 + Duration::from_secs(10)),
            Observe::PingOldest { oldest, .. } if oldest == id(256)
        ));
    }

    #[test]
    fn replacement_cache_is_bounded_and_keeps_freshest() {
        let t0 = Instant::now();
        let mut t = full_bucket(t0);
        for i in 0..100u16 {
            t.observe(id(300 + i), addr(i), t0 + Duration::from_secs(i.into()));
            assert!(t.cache_len(8) <= 16);
        }
        assert_eq!(t.cache_len(8), 16);
        assert_eq!(t.len(), 16);
        // Re-observing a cached candidate does not duplicate it.
        t.observe(id(399), addr(1), t0);
        assert_eq!(t.cache_len(8), 16);
        // Evicting promotes the freshest: 399 was re-observed last.
        assert_eq!(
            t.ping_result(id(256), false, t0),
            PingOutcome::Evicted {
                promoted: Some(id(399))
            }
        );
        // Only the last 16 newcomers survived in the cache.
        assert_eq!(
            t.ping_result(id(257), false, t0),
            PingOutcome::Evicted {
                promoted: Some(id(398))
            }
        );
        // Everything stays bounded in total.
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..10_000 {
            t.observe(NodeId::random(&mut rng), addr(0), t0);
        }
        assert!(t.len() <= 256 * 16);
        assert!((0..256).all(|b| t.cache_len(b) <= 16 && t.bucket_len(b) <= 16));
    }

    #[test]
    fn remove_promotes_from_cache_and_clears_cache_entries() {
        let t0 = Instant::now();
        let mut t = full_bucket(t0);
        t.observe(id(400), addr(40), t0);
        t.observe(id(401), addr(41), t0);
        assert_eq!(t.remove(&id(260)).map(|e| e.id), Some(id(260)));
        assert!(t.contains(&id(401)));
        assert_eq!(t.len(), 16);
        // Removing a cached-only id: nothing returned, cache shrinks.
        assert_eq!(t.remove(&id(400)), None);
        assert_eq!(t.cache_len(8), 0);
        assert_eq!(t.remove(&id(261)).map(|e| e.id), Some(id(261)));
        assert_eq!(t.len(), 15);
        assert_eq!(t.remove(&id(261)), None);
        assert_eq!(t.remove(&local()), None);
    }

    #[test]
    fn closest_matches_brute_force() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let t0 = Instant::now();
        for round in 0..200 {
            let me = NodeId::random(&mut rng);
            let mut t = RoutingTable::new(me);
            let count = rng.gen_range(0..600);
            for i in 0..count {
                // Mix uniform ids with ids near `me` so low buckets fill too.
                let other = if rng.gen_bool(0.5) {
                    NodeId::random(&mut rng)
                } else {
                    me.random_in_bucket(rng.gen_range(0..40), &mut rng)
                };
                t.observe(other, addr(i), t0);
            }
            let all: Vec<NodeId> = t.iter().map(|e| e.id).collect();
            assert_eq!(all.len(), t.len());
            assert!(!all.contains(&me));
            for q in 0..5 {
                let target = match q {
                    0 => me,
                    1 => all.first().copied().unwrap_or(me),
                    2 => me.random_in_bucket(rng.gen_range(0..256), &mut rng),
                    _ => NodeId::random(&mut rng),
                };
                let n = [0, 1, 16, 20, 5000][rng.gen_range(0..5)];
                let mut expect = all.clone();
                expect.sort_by_key(|i| i.distance(&target));
                expect.truncate(n);
                let got: Vec<NodeId> = t.closest(&target, n).into_iter().map(|(i, _)| i).collect();
                assert_eq!(got, expect, "round {round} query {q} n {n}");
            }
        }
    }
}
