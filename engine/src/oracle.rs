//! The peer-set oracle: who may connect, and where to dial them.
//!
//! # Design
//! `register(index, keys)` records a peer set; the last `tracked` indexes are
//! kept and the union of their keys is the authorized set, published as an
//! `ArcSwap` snapshot so the handshake's authorization check never locks.
//! Known addresses (bootstrappers, or added by the embedder) are what the
//! dialer dials. Keys that leave every tracked set are disconnected by the
//! control shard on its next tick (it watches [`OracleState::version`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use shoal_crypto::PublicKey;

/// Shared oracle state.
pub struct OracleState {
    tracked: usize,
    sets: Mutex<BTreeMap<u64, Vec<PublicKey>>>,
    authorized: ArcSwap<HashSet<PublicKey>>,
    addresses: Mutex<HashMap<PublicKey, SocketAddr>>,
    version: AtomicU64,
}

impl OracleState {
    pub fn new(tracked: usize) -> Self {
        Self {
            tracked: tracked.max(1),
            sets: Mutex::new(BTreeMap::new()),
            authorized: ArcSwap::from_pointee(HashSet::new()),
            addresses: Mutex::new(HashMap::new()),
            version: AtomicU64::new(0),
        }
    }

    /// True if `key` is in a tracked set.
    pub fn is_authorized(&self, key: &PublicKey) -> bool {
        self.authorized.load().contains(key)
    }

    /// Snapshot of the authorized keys.
    pub fn authorized(&self) -> Arc<HashSet<PublicKey>> {
        self.authorized.load_full()
    }

    /// Bumped on every change of sets or addresses.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The tracked peer sets (index, sorted keys).
    pub fn sets(&self) -> Vec<(u64, Vec<PublicKey>)> {
        self.sets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(i, k)| (*i, k.clone()))
            .collect()
    }

    /// Every known (key, address).
    pub fn addresses(&self) -> Vec<(PublicKey, SocketAddr)> {
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, a)| (k.clone(), *a))
            .collect()
    }

    fn register(&self, index: u64, mut keys: Vec<PublicKey>) {
        keys.sort();
        keys.dedup();
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        sets.insert(index, keys);
        while sets.len() > self.tracked {
            let Some((&first, _)) = sets.iter().next() else {
                break;
            };
            sets.remove(&first);
        }
        let union: HashSet<PublicKey> = sets.values().flatten().cloned().collect();
        self.authorized.store(Arc::new(union));
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    fn set_address(&self, key: PublicKey, addr: SocketAddr) {
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, addr);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// The embedder's handle on peer sets and addresses. Cheap to clone; usable
/// before and after the network starts.
///
/// ```
/// # fn main() -> Result<(), shoal_engine::Error> {
/// use shoal_engine::{Config, Ed25519Signer, Network, Signer};
/// let (_net, oracle) = Network::new(Config::local(None))?;
/// let [v1, v2, v3] = [1, 2, 3].map(|s| Ed25519Signer::insecure_from_seed(s).public_key().clone());
/// oracle.register(0, vec![v1.clone(), v2.clone()]); // epoch 0's validators
/// oracle.register(1, vec![v2.clone(), v3.clone()]); // epoch 1's
/// assert!(oracle.is_authorized(&v1) && oracle.is_authorized(&v3), "both sets tracked");
/// oracle.add_address(v3, "127.0.0.1:9000".parse().unwrap()); // where to dial it
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Oracle {
    pub(crate) state: Arc<OracleState>,
}

impl Oracle {
    /// Registers peer set `index`; only the last `tracked` sets are kept.
    pub fn register(&self, index: u64, peers: Vec<PublicKey>) {
        self.state.register(index, peers);
    }

    /// Tells the dialer where `peer` listens (bootstrappers, static config).
    pub fn add_address(&self, peer: PublicKey, addr: SocketAddr) {
        self.state.set_address(peer, addr);
    }

    /// True if `key` is in a tracked set.
    pub fn is_authorized(&self, key: &PublicKey) -> bool {
        self.state.is_authorized(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(b: u8) -> PublicKey {
        PublicKey::from_bytes_unchecked(vec![b; 32])
    }

    #[test]
    fn keeps_only_the_last_tracked_sets() {
        let s = OracleState::new(2);
        s.register(1, vec![pk(1)]);
        s.register(2, vec![pk(2)]);
        assert!(s.is_authorized(&pk(1)) && s.is_authorized(&pk(2)));
        s.register(3, vec![pk(3)]);
        assert!(!s.is_authorized(&pk(1)), "set 1 fell out of the window");
        assert!(s.is_authorized(&pk(2)) && s.is_authorized(&pk(3)));
    }
}
