//! Authorized-mode peer discovery (commonware style), sans IO.
//!
//! # Design
//!
//! [`Discovery`] is a plain state machine: no sockets, no threads, no clock
//! (the caller passes `now_ms`, Unix milliseconds) and no hidden randomness
//! (the caller passes a [`rand::Rng`]). It holds:
//!
//! - the **tracked peer sets**: `register(index, keys)` keeps the last
//!   [`DiscoveryConfig::tracked_peer_sets`] indexes, keys sorted and
//!   deduplicated (see [`sets`] for the window rules and the bit order);
//! - an **address book**: for each tracked key, the newest verified signed
//!   record ([`record`] for the format, [`book`] for the checks and their
//!   order), plus this node's own record, set by the caller.
//!
//! Gossip is pull based. A node sends a [`BitVec`] for one tracked set
//! (bit `i` = "I hold a verified record for the `i`-th sorted key of that
//! set", MSB first, `ceil(n/8)` bytes); the receiver answers with a
//! [`Peers`] of at most [`DiscoveryConfig::peer_gossip_max`] records the
//! sender lacks, picked at random so that several answerers do not all send
//! the same records. Records are relayed exactly as signed; every receiver
//! verifies them itself.
//!
//! Everything is bounded: at most `tracked_peer_sets` sets, at most one
//! record per tracked key (records of keys that leave every tracked set are
//! pruned when sets change), at most `peer_gossip_max` records per answer,
//! and a [`Peers`] larger than that is refused before any record in it is
//! looked at.
//!
//! # Driving it (what the engine does)
//!
//! - At start: [`Discovery::register`] each peer set (and again on every
//!   change), [`Discovery::refresh_own`] (or [`Discovery::set_own`]) with
//!   the listening address, and [`Discovery::insert`] the bootstrappers'
//!   records if it has them signed; bootstrappers known only by address are
//!   dialed directly and send their record on connect.
//! - On every established connection: send a [`Peers`] holding
//!   [`Discovery::own_record`], then a [`BitVec`] from
//!   [`Discovery::random_ping`].
//! - On a received [`BitVec`]: [`Discovery::handle_bit_vec`]; send the
//!   answer if it is not empty (an empty answer is not sent: the bit vector
//!   itself already served as a keep-alive).
//! - On a received [`Peers`]: [`Discovery::handle_peers`]; hand
//!   `accepted` to the dialer; count `rejected` and drop the connection
//!   when [`RecordRejected::is_misbehavior`] says so (the other reasons are
//!   expected from honest peers now and then).
//! - On a timer (per connection, e.g. every few seconds):
//!   [`Discovery::random_ping`] and send it; on a slower timer, or when the
//!   listening address changes, [`Discovery::refresh_own`].
//! - The dialer reads [`Discovery::dialable`]; the handshake's authorization
//!   check is [`Discovery::is_tracked`].
//!
//! The engine should rate-limit bit vectors per connection: each one may
//! cost an answer of `peer_gossip_max` records.
//!
//! # Security
//!
//! Provided:
//! - a record is taken only if it is signed by its key under
//!   `namespace ‖ "/peer"`, for a key in a tracked set, not dated further
//!   ahead than the synchrony bound, and (by default) for a publicly
//!   routable address; a newer timestamp wins, an older or equal one never
//!   overwrites;
//! - a malformed bit vector (wrong length, padding bits set) or an oversized
//!   [`Peers`] is refused with a typed reason; one bad record never stops
//!   the others in the same batch from being processed;
//! - memory is bounded by the tracked sets, independent of what peers send.
//!
//! Not provided:
//! - a record proves that the key holder claimed the address at a time, not
//!   that the address is reachable, that the holder listens there, or that
//!   the address belongs to the holder. The dialer must expect failures and
//!   back off;
//! - freshness: records never expire. A node that moved is found again only
//!   once its newer record spreads. A key holder whose clock ran ahead
//!   (within the synchrony bound) can pin an address until its clock
//!   catches up;
//! - a bit vector is a claim about the sender's knowledge, not a proof; a
//!   peer can always ask for records it already has (hence the rate limit);
//! - availability against a peer that withholds records: a node learns from
//!   every peer it pings, so one withholding peer only slows discovery.

pub mod book;
pub mod record;
pub mod sets;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::Rng;
use shoal_crypto::{Identity, PublicKey};
use shoal_wire::{BitVec, PeerRecord, Peers};

pub use book::Inserted;
pub use record::{
    decode_socket, encode_socket, is_publicly_routable, record_namespace, sign_record,
    signing_payload, verify_record, RecordRejected,
};
#[cfg(test)]
pub use sets::bit_vec_len;
pub use sets::{check_bits, encode_bits, get_bit, BitVecRejected, Registered};

use book::AddressBook;
use sets::PeerSets;

/// Discovery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The application's base namespace. Records are signed and verified
    /// under `namespace ‖ "/peer"`; nodes with different namespaces never
    /// accept each other's records.
    pub namespace: Vec<u8>,
    /// How many peer-set indexes are tracked (the highest ones). Default 4.
    /// Values below 1 are treated as 1.
    pub tracked_peer_sets: usize,
    /// The most records sent in one answer to a bit vector, and the most
    /// accepted in one received [`Peers`] (a larger one is refused
    /// outright). Default 32.
    pub peer_gossip_max: usize,
    /// How far ahead of the local clock a record's timestamp may be
    /// (tolerated clock skew). Default 5 s.
    pub synchrony_bound: Duration,
    /// Accept records for addresses that are not publicly routable (private,
    /// loopback, link-local, unspecified, ...: the list is in [`record`]).
    /// Default `false`; set it for local test networks.
    pub allow_private_ips: bool,
}

impl DiscoveryConfig {
    /// Defaults (4 sets, 32 records, 5 s, public addresses only) for
    /// `namespace`.
    pub fn new(namespace: impl Into<Vec<u8>>) -> Self {
        Self {
            namespace: namespace.into(),
            tracked_peer_sets: 4,
            peer_gossip_max: 32,
            synchrony_bound: Duration::from_secs(5),
            allow_private_ips: false,
        }
    }
}

/// Why a received [`Peers`] was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeersRejected {
    /// More records than [`DiscoveryConfig::peer_gossip_max`].
    #[error("{got} records in one Peers message, at most {max} accepted")]
    TooMany {
        /// Records received.
        got: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// What [`Discovery::handle_peers`] did with each record of a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeersOutcome {
    /// Records taken (new key, or newer record for a known key), in message
    /// order: what the dialer may want to dial.
    pub accepted: Vec<(PublicKey, SocketAddr)>,
    /// Records ignored because they were not newer than the one held.
    pub stale: usize,
    /// Records refused, with their reasons, in message order.
    pub rejected: Vec<RecordRejected>,
    /// Accepted records that replaced an older one *with a different
    /// address* (a peer moved). Bit vectors cannot say "my record for key i
    /// is old", so the engine forwards these once to its other peers; that
    /// is how a restart on a new port reaches nodes that hold the old one.
    pub moved: Vec<PeerRecord>,
}

/// The discovery state of one node (see the module docs).
pub struct Discovery {
    config: DiscoveryConfig,
    identity: Identity,
    sets: PeerSets,
    book: AddressBook,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("public_key", self.identity.public_key())
            .field("config", &self.config)
            .field("sets", &self.sets)
            .field("book", &self.book)
            .finish()
    }
}

impl Discovery {
    /// A node with identity `identity`, no sets, no records.
    pub fn new(config: DiscoveryConfig, identity: Identity) -> Self {
        let book = AddressBook::new(
            identity.scheme(),
            record_namespace(&config.namespace),
            identity.public_key().clone(),
            u64::try_from(config.synchrony_bound.as_millis()).unwrap_or(u64::MAX),
            config.allow_private_ips,
        );
        Self {
            sets: PeerSets::new(config.tracked_peer_sets),
            config,
            identity,
            book,
        }
    }

    /// This node's key.
    #[cfg(test)]
    pub fn public_key(&self) -> &PublicKey {
        self.identity.public_key()
    }

    /// Tracks peer set `index` (see [`sets`] for the window rules) and drops
    /// the records of keys that are no longer in any tracked set.
    pub fn register(&mut self, index: u64, keys: Vec<PublicKey>) -> Registered {
        let outcome = self.sets.register(index, keys);
        if outcome != Registered::Outdated {
            let sets = &self.sets;
            let pruned = self.book.retain(|k| sets.is_tracked(k));
            if pruned > 0 {
                tracing::debug!(index, pruned, "discovery: pruned records of untracked keys");
            }
        }
        outcome
    }

    /// True if `key` is in a tracked set.
    pub fn is_tracked(&self, key: &PublicKey) -> bool {
        self.sets.is_tracked(key)
    }

    /// The union of the tracked sets, sorted.
    pub fn tracked_keys(&self) -> Vec<PublicKey> {
        self.sets.tracked().iter().cloned().collect()
    }

    /// The tracked indexes, ascending.
    pub fn tracked_indexes(&self) -> Vec<u64> {
        self.sets.indexes().collect()
    }

    /// The sorted keys of tracked set `index`.
    pub fn peer_set(&self, index: u64) -> Option<&[PublicKey]> {
        self.sets.get(index)
    }

    /// Replaces this node's own record after checking that it is signed by
    /// this node's key (no address policy and no clock check: the caller is
    /// authoritative). Peers keep the record with the highest timestamp, so
    /// a changed address needs a later timestamp than the last one sent.
    pub fn set_own(&mut self, record: PeerRecord) -> Result<(), RecordRejected> {
        self.book.set_own(record)
    }

    /// Signs a record for `addr` at `now_ms` with this node's identity,
    /// makes it the own record and returns it.
    pub fn refresh_own(&mut self, addr: SocketAddr, now_ms: u64) -> PeerRecord {
        let record = sign_record(&*self.identity, &self.config.namespace, addr, now_ms);
        if let Err(e) = self.book.set_own(record.clone()) {
            // Only reachable with port 0 (a record we sign ourselves is well
            // formed otherwise); the previous own record is kept.
            tracing::warn!(%addr, error = %e, "discovery: own record refused");
        }
        record
    }

    /// This node's own record, to send right after every handshake.
    pub fn own_record(&self) -> Option<&PeerRecord> {
        self.book.own().map(|e| &e.record)
    }

    /// Checks `record` (order of checks in [`book`]) and keeps it if it is
    /// newer than the one held for its key.
    pub fn insert(&mut self, record: &PeerRecord, now_ms: u64) -> Result<Inserted, RecordRejected> {
        let sets = &self.sets;
        self.book
            .insert(record, now_ms, |k| sets.is_tracked(k))
            .map(|(inserted, _, _)| inserted)
    }

    /// The record held for `key` (this node's own included).
    pub fn record(&self, key: &PublicKey) -> Option<&PeerRecord> {
        self.book.get(key).map(|e| &e.record)
    }

    /// The address held for `key` (this node's own included).
    pub fn address(&self, key: &PublicKey) -> Option<SocketAddr> {
        self.book.get(key).map(|e| e.addr)
    }

    /// How many other nodes' records are held.
    pub fn known(&self) -> usize {
        self.book.len()
    }

    /// This node's bit vector for tracked set `index`; `None` if untracked.
    pub fn bit_vec(&self, index: u64) -> Option<BitVec> {
        let keys = self.sets.get(index)?;
        let bits = encode_bits(keys.len(), |i| {
            keys.get(i).is_some_and(|k| self.book.knows(k))
        });
        Some(BitVec {
            index,
            bits: Bytes::from(bits),
        })
    }

    /// The bit vector of a tracked set picked uniformly at random (what to
    /// send as a ping); `None` if no set is tracked.
    pub fn random_ping(&self, rng: &mut impl Rng) -> Option<BitVec> {
        let count = self.sets.len();
        if count == 0 {
            return None;
        }
        let index = self.sets.indexes().nth(rng.gen_range(0..count))?;
        self.bit_vec(index)
    }

    /// The answer to a peer's bit vector: at most `peer_gossip_max` records,
    /// picked at random among the keys of that set whose bit is clear and
    /// whose record this node holds (its own included). May be empty.
    pub fn handle_bit_vec(
        &self,
        bit_vec: &BitVec,
        rng: &mut impl Rng,
    ) -> Result<Peers, BitVecRejected> {
        let keys = self
            .sets
            .get(bit_vec.index)
            .ok_or(BitVecRejected::UntrackedIndex(bit_vec.index))?;
        check_bits(keys.len(), &bit_vec.bits)?;
        let lacking: Vec<&PeerRecord> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| !get_bit(&bit_vec.bits, *i))
            .filter_map(|(_, k)| self.book.get(k).map(|e| &e.record))
            .collect();
        let peers = lacking
            .choose_multiple(rng, self.config.peer_gossip_max)
            .map(|r| (*r).clone())
            .collect();
        Ok(Peers { peers })
    }

    /// Takes a peer's batch of records: refused outright if it holds more
    /// than `peer_gossip_max`; otherwise each record is
    /// [`insert`](Self::insert)ed on its own and the outcome reported.
    pub fn handle_peers(
        &mut self,
        peers: &Peers,
        now_ms: u64,
    ) -> Result<PeersOutcome, PeersRejected> {
        let max = self.config.peer_gossip_max;
        if peers.peers.len() > max {
            return Err(PeersRejected::TooMany {
                got: peers.peers.len(),
                max,
            });
        }
        let mut outcome = PeersOutcome::default();
        let sets = &self.sets;
        for record in &peers.peers {
            match self.book.insert(record, now_ms, |k| sets.is_tracked(k)) {
                Ok((Inserted::Stale, _, _)) => outcome.stale += 1,
                Ok((inserted, key, addr)) => {
                    if matches!(
                        inserted,
                        Inserted::Updated {
                            address_changed: true
                        }
                    ) {
                        outcome.moved.push(record.clone());
                    }
                    outcome.accepted.push((key, addr));
                }
                Err(reason) => outcome.rejected.push(reason),
            }
        }
        Ok(outcome)
    }

    /// Tracked keys with a known address, this node excluded, sorted by key:
    /// what the dialer may dial.
    pub fn dialable(&self) -> Vec<(PublicKey, SocketAddr)> {
        self.book
            .entries()
            .map(|(k, e)| (k.clone(), e.addr))
            .collect()
    }
}
