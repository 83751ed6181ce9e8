//! Fuzz target bodies for discovery and Kademlia, shared by libFuzzer and the
//! corpus replay test.
//!
//! # Design
//!
//! Both targets read the fuzz input as a script of operations on one
//! sans-IO core and check invariants beyond "does not panic" after every
//! step.
//!
//! [`discovery_messages`] drives a [`Discovery`] with peer-set registrations,
//! [`BitVec`]s and [`Peers`] (built from the input, decoded from raw bytes
//! with prost, or read from a raw frame plaintext by shoal-wire's
//! [`RecordReader`]), single inserts, own-record changes and clock moves.
//! Records are built from a pool of ten seeded identities and signed for
//! real, or deliberately broken (flipped signature bit, wrong signer, other
//! timestamp, other namespace, truncated signature, junk key). A plain
//! reference model of the documented rules (window of tracked sets, check
//! order, newest wins, stale skips the signature) must agree with it exactly
//! on every outcome and on the whole visible state, and:
//! - tracked sets never exceed `tracked_peer_sets`, records never exceed the
//!   tracked keys, every held record is for a tracked key other than ours;
//! - every held record verifies on its own (`verify_record`), and a record
//!   the harness broke is never taken: the signature check is never skipped;
//! - an answer to a bit vector holds at most `peer_gossip_max` distinct
//!   records, each held for a key of that set whose bit is clear;
//! - a [`Peers`] over `peer_gossip_max` changes nothing.
//!
//! [`kademlia_messages`] drives a [`RoutingTable`] (small `k` and cache so
//! buckets fill) and one [`Lookup`] at a time: observations, liveness
//! results, removals, `FIND_NODE` targets (decoded with prost, or built),
//! lookup queries, `NODES` answers (built, or decoded from raw bytes with
//! prost and mapped to ids and sockets), failures and timeouts. Invariants:
//! - no bucket holds more than `k` entries, no cache more than its bound, the
//!   local id is never in the table, `len()` matches the entries;
//! - each call changes table membership only as documented (`observe` adds
//!   only the observed id, an eviction removes only the pinged id and
//!   promotes only a cached, previously observed id of the same bucket);
//! - `closest` equals a brute-force sort of the table;
//! - a lookup queries each node at most once, never the local id, at most
//!   `alpha` at a time and at most its query budget; accepts only answers
//!   from nodes it asked; its result is at most `k` responders, closest
//!   first; and it **terminates**: at the end of the input a driver that
//!   answers every query with ever-closer fresh ids, fails some and lets
//!   others time out must see it finish within `2 * max_queries + 2` rounds.
//!
//! `fuzz/fuzz_targets/{discovery_messages,kademlia_messages}.rs` call these;
//! `engine/tests/corpus_replay.rs` replays the committed corpus.
//!
//! Not driven: the engine's glue in `open.rs` (signature checks of `NODES`
//! records, query ids, dials); raw `NODES` records here reach the lookup
//! unverified, as if the glue had verified them.
//!
//! # Security
//!
//! Test harness, not API: it panics (by design) when an invariant is
//! violated. `#[doc(hidden)]`, no stability promise.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use rand::rngs::StdRng;
use rand::SeedableRng;
use shoal_crypto::{Ed25519Signer, Identity, PublicKey, Scheme, ED25519};
use shoal_wire::{BitVec, FindNode, Nodes, PeerRecord, Peers, Record, RecordReader};

use crate::discovery::{
    decode_socket, encode_socket, is_publicly_routable, record_namespace, signing_payload,
    verify_record, BitVecRejected, Discovery, DiscoveryConfig, Inserted, PeersOutcome,
    PeersRejected, RecordRejected, Registered,
};
use crate::kademlia::{
    Lookup, NodeId, Observe, PingOutcome, RoutingTable, TableConfig, ID_BITS, ID_LEN,
};

/// Clock of the discovery target at the start (ms since the Unix epoch).
pub const T0: u64 = 1_700_000_000_000;
/// Steps executed per input at most.
pub const MAX_STEPS: usize = 96;
/// Identities in the discovery pool; index 0 is the node under test.
pub const POOL: usize = 10;

const NS: &[u8] = b"shoal-fuzz";

/// The fuzz input as a stream of bytes; reads past the end give zeros.
struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

// ------------------------------------------------------------ discovery

/// The identity pool (seeded, created once per process).
fn pool() -> &'static [Identity] {
    static POOL_IDS: OnceLock<Vec<Identity>> = OnceLock::new();
    POOL_IDS.get_or_init(|| {
        (0..POOL as u64)
            .map(|i| Arc::new(Ed25519Signer::insecure_from_seed(1000 + i)) as Identity)
            .collect()
    })
}

/// Signs with a small per-thread cache (the same records recur constantly).
fn sign_cached(signer: usize, namespace: &[u8], message: &[u8]) -> Bytes {
    type Signatures = HashMap<(usize, Vec<u8>, Vec<u8>), Bytes>;
    thread_local! {
        static CACHE: std::cell::RefCell<Signatures> = std::cell::RefCell::new(HashMap::new());
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() > 4096 {
            c.clear();
        }
        c.entry((signer, namespace.to_vec(), message.to_vec()))
            .or_insert_with(|| pool()[signer].sign(namespace, message))
            .clone()
    })
}

/// [`verify_record`] under the target's namespace, with a per-thread cache
/// keyed by the whole record (the harness re-checks every held record after
/// every step; the engine's own verification is never cached).
fn verify_cached(record: &PeerRecord) -> Result<(PublicKey, SocketAddr, u64), RecordRejected> {
    type Verdict = Result<(PublicKey, SocketAddr, u64), RecordRejected>;
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<Vec<u8>, Verdict>> =
            std::cell::RefCell::new(HashMap::new());
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() > 4096 {
            c.clear();
        }
        c.entry(record.encode_to_vec())
            .or_insert_with(|| verify_record(&ED25519, NS, record))
            .clone()
    })
}

/// A record built from 4 input bytes, and whether the harness made it
/// cryptographically valid (a valid signature by the key it names).
fn build_record(s: &mut Script<'_>, now: u64) -> (PeerRecord, bool) {
    let who = usize::from(s.byte()) % (POOL + 2);
    let a = s.byte();
    let t = s.byte();
    let corrupt = s.byte();

    let n = a & 0x1f;
    let socket = match a >> 5 {
        0..=2 => encode_socket(SocketAddr::from(([11, 0, 0, n], 9000 + u16::from(a >> 5)))),
        3 => encode_socket(SocketAddr::from(([10, 0, 0, n], 9000))),
        4 => encode_socket(SocketAddr::from(([127, 0, 0, 1], 9000 + u16::from(n)))),
        5 => encode_socket(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2a00, 0, 0, 0, 0, 0, 0, u16::from(n))),
            9000,
        )),
        6 => encode_socket(SocketAddr::from(([11, 0, 0, n], 0))),
        _ => {
            let len = match usize::from(n) {
                6 | 18 => 7,
                l => l,
            };
            Bytes::from(vec![n; len])
        }
    };
    let timestamp = match t {
        0x80 => 0,
        0x7f => u64::MAX,
        _ => now.saturating_add_signed(i64::from(t as i8) * 1000),
    };

    let ns = record_namespace(NS);
    let payload = signing_payload(&socket, timestamp);
    if who >= POOL {
        // A key that does not parse: all zeros (small order) or 31 bytes.
        let key = if who == POOL {
            Bytes::from_static(&[0u8; 32])
        } else {
            Bytes::from_static(&[7u8; 31])
        };
        let record = PeerRecord {
            public_key: key,
            socket,
            timestamp,
            signature: Bytes::from(vec![corrupt; 64]),
        };
        return (record, false);
    }
    let key = pool()[who].public_key().to_bytes();
    let (signature, valid) = match corrupt % 8 {
        0..=3 => (sign_cached(who, &ns, &payload), true),
        4 => {
            let mut sig = sign_cached(who, &ns, &payload).to_vec();
            let bit = usize::from(corrupt >> 3) % (sig.len() * 8);
            sig[bit / 8] ^= 1 << (bit % 8);
            (Bytes::from(sig), false)
        }
        5 => (sign_cached((who + 1) % POOL, &ns, &payload), false),
        6 => {
            let other = signing_payload(&socket, timestamp.wrapping_add(1));
            (sign_cached(who, &ns, &other), false)
        }
        _ => {
            if corrupt & 0x08 != 0 {
                (sign_cached(who, NS, &payload), false)
            } else {
                let sig = sign_cached(who, &ns, &payload);
                (sig.slice(..usize::from(corrupt >> 4) * 4), false)
            }
        }
    };
    let record = PeerRecord {
        public_key: key,
        socket,
        timestamp,
        signature,
    };
    (record, valid)
}

/// A key set from a bit mask over the pool (bit 0 = the node itself).
fn key_set(mask: u16) -> Vec<PublicKey> {
    (0..POOL)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| pool()[i].public_key().clone())
        .collect()
}

/// The reference model of the documented discovery rules.
struct DiscoveryModel {
    own_key: PublicKey,
    max_sets: usize,
    max_gossip: usize,
    synchrony_ms: u64,
    allow_private: bool,
    sets: BTreeMap<u64, Vec<PublicKey>>,
    book: BTreeMap<PublicKey, (PeerRecord, SocketAddr)>,
    own: Option<PeerRecord>,
}

impl DiscoveryModel {
    fn tracked(&self) -> BTreeSet<PublicKey> {
        self.sets.values().flatten().cloned().collect()
    }

    fn register(&mut self, index: u64, mut keys: Vec<PublicKey>) -> Registered {
        keys.sort();
        keys.dedup();
        let outcome =
            if let std::collections::btree_map::Entry::Occupied(mut e) = self.sets.entry(index) {
                e.insert(keys);
                Registered::Replaced
            } else {
                let lowest = self.sets.keys().next().copied();
                if self.sets.len() >= self.max_sets && lowest.is_some_and(|l| index < l) {
                    return Registered::Outdated;
                }
                self.sets.insert(index, keys);
                while self.sets.len() > self.max_sets {
                    self.sets.pop_first();
                }
                Registered::Added
            };
        let tracked = self.tracked();
        self.book.retain(|k, _| tracked.contains(k));
        outcome
    }

    /// The documented check order (see `discovery::book`).
    fn insert(
        &mut self,
        record: &PeerRecord,
        now: u64,
    ) -> Result<(Inserted, PublicKey, SocketAddr), RecordRejected> {
        let key = ED25519
            .parse_public_key(&record.public_key)
            .map_err(|_| RecordRejected::MalformedKey)?;
        if !self.tracked().contains(&key) {
            return Err(RecordRejected::Untracked);
        }
        if key == self.own_key {
            return Err(RecordRejected::SelfRecord);
        }
        let addr = decode_socket(&record.socket)?;
        if addr.port() == 0 {
            return Err(RecordRejected::ZeroPort);
        }
        if record.timestamp > now.saturating_add(self.synchrony_ms) {
            return Err(RecordRejected::FutureTimestamp {
                timestamp: record.timestamp,
                now_ms: now,
            });
        }
        if !self.allow_private && !is_publicly_routable(addr.ip()) {
            return Err(RecordRejected::Private(addr.ip()));
        }
        let previous = self.book.get(&key).map(|(r, a)| (r.timestamp, *a));
        if previous.is_some_and(|(held, _)| record.timestamp <= held) {
            return Ok((Inserted::Stale, key, addr));
        }
        verify_cached(record).map_err(|_| RecordRejected::BadSignature)?;
        self.book.insert(key.clone(), (record.clone(), addr));
        let inserted = match previous {
            None => Inserted::New,
            Some((_, old)) => Inserted::Updated {
                address_changed: old != addr,
            },
        };
        Ok((inserted, key, addr))
    }

    /// The outcome, and per record whether it was taken.
    fn handle_peers(
        &mut self,
        peers: &Peers,
        now: u64,
    ) -> (Result<PeersOutcome, PeersRejected>, Vec<bool>) {
        if peers.peers.len() > self.max_gossip {
            let err = PeersRejected::TooMany {
                got: peers.peers.len(),
                max: self.max_gossip,
            };
            return (Err(err), vec![false; peers.peers.len()]);
        }
        let mut outcome = PeersOutcome::default();
        let mut taken = Vec::with_capacity(peers.peers.len());
        for record in &peers.peers {
            let r = self.insert(record, now);
            taken.push(matches!(
                r,
                Ok((Inserted::New | Inserted::Updated { .. }, _, _))
            ));
            match r {
                Ok((Inserted::Stale, _, _)) => outcome.stale += 1,
                Ok((inserted, key, addr)) => {
                    if inserted
                        == (Inserted::Updated {
                            address_changed: true,
                        })
                    {
                        outcome.moved.push(record.clone());
                    }
                    outcome.accepted.push((key, addr));
                }
                Err(e) => outcome.rejected.push(e),
            }
        }
        (Ok(outcome), taken)
    }

    fn set_own(&mut self, record: &PeerRecord) -> Result<(), RecordRejected> {
        let key = ED25519
            .parse_public_key(&record.public_key)
            .map_err(|_| RecordRejected::MalformedKey)?;
        let addr = decode_socket(&record.socket)?;
        if addr.port() == 0 {
            return Err(RecordRejected::ZeroPort);
        }
        if key != self.own_key {
            return Err(RecordRejected::NotOwnKey);
        }
        verify_cached(record).map_err(|_| RecordRejected::BadSignature)?;
        self.own = Some(record.clone());
        Ok(())
    }

    /// The record held for `key`, own included.
    fn record(&self, key: &PublicKey) -> Option<&PeerRecord> {
        if *key == self.own_key {
            self.own.as_ref()
        } else {
            self.book.get(key).map(|(r, _)| r)
        }
    }

    /// Bit `i` MSB first, computed bit by bit (independently of `sets`).
    fn bits(&self, keys: &[PublicKey]) -> Vec<u8> {
        let mut bits = vec![0u8; keys.len().div_ceil(8)];
        for (i, k) in keys.iter().enumerate() {
            if self.record(k).is_some() {
                bits[i / 8] |= 0x80 >> (i % 8);
            }
        }
        bits
    }
}

struct DiscoveryHarness {
    disc: Discovery,
    model: DiscoveryModel,
    now: u64,
    rng: StdRng,
}

impl DiscoveryHarness {
    /// Compares the whole visible state with the model, and checks the
    /// bounds and the signature of every held record.
    fn check_state(&mut self) {
        let m = &self.model;
        let d = &self.disc;
        let indexes: Vec<u64> = m.sets.keys().copied().collect();
        assert_eq!(d.tracked_indexes(), indexes);
        assert!(indexes.len() <= m.max_sets);
        for (i, keys) in &m.sets {
            assert_eq!(d.peer_set(*i), Some(&keys[..]));
            let want = BitVec {
                index: *i,
                bits: Bytes::from(m.bits(keys)),
            };
            assert_eq!(d.bit_vec(*i), Some(want));
        }
        let tracked = m.tracked();
        assert_eq!(
            d.tracked_keys(),
            tracked.iter().cloned().collect::<Vec<_>>()
        );
        assert_eq!(d.known(), m.book.len());
        assert!(d.known() <= tracked.len());
        let dialable = d.dialable();
        let want: Vec<(PublicKey, SocketAddr)> =
            m.book.iter().map(|(k, (_, a))| (k.clone(), *a)).collect();
        assert_eq!(dialable, want);
        for (k, addr) in &dialable {
            assert!(d.is_tracked(k), "record held for an untracked key");
            assert_ne!(k, &m.own_key, "own key in the book");
            let record = d.record(k).expect("dialable key has a record");
            let (key, a, _) = verify_cached(record).expect("held record verifies");
            assert_eq!((&key, &a), (k, addr));
            assert!(m.allow_private || is_publicly_routable(a.ip()));
            assert_eq!(d.address(k), Some(*addr));
        }
        assert_eq!(d.own_record(), m.own.as_ref());
        for id in pool() {
            let k = id.public_key();
            assert_eq!(d.record(k), m.record(k));
            assert_eq!(d.is_tracked(k), tracked.contains(k));
        }
    }

    fn peers(&mut self, peers: &Peers, valid: Option<&[bool]>) {
        let before = self.disc.known();
        let got = self.disc.handle_peers(peers, self.now);
        let (want, taken) = self.model.handle_peers(peers, self.now);
        assert_eq!(got, want);
        match &got {
            Ok(outcome) => {
                assert_eq!(
                    outcome.accepted.len() + outcome.stale + outcome.rejected.len(),
                    peers.peers.len()
                );
                assert!(outcome.accepted.len() <= self.model.max_gossip);
            }
            Err(_) => assert_eq!(self.disc.known(), before),
        }
        // A record the harness broke is never taken (the model agrees with
        // the engine, so this holds for both).
        if let Some(valid) = valid {
            for (t, ok) in taken.iter().zip(valid) {
                assert!(!t || *ok, "a broken record was accepted");
            }
        }
    }

    fn bit_vec(&mut self, bv: &BitVec) {
        let got = self.disc.handle_bit_vec(bv, &mut self.rng);
        let m = &self.model;
        let Some(keys) = m.sets.get(&bv.index) else {
            assert_eq!(got, Err(BitVecRejected::UntrackedIndex(bv.index)));
            return;
        };
        let expected = keys.len().div_ceil(8);
        if bv.bits.len() != expected {
            assert_eq!(
                got,
                Err(BitVecRejected::WrongLength {
                    expected,
                    got: bv.bits.len()
                })
            );
            return;
        }
        let bit = |i: usize| bv.bits[i / 8] & (0x80 >> (i % 8)) != 0;
        if (keys.len()..expected * 8).any(bit) {
            assert_eq!(got, Err(BitVecRejected::NonzeroPadding));
            return;
        }
        let answer = got.expect("a well-formed bit vector of a tracked set");
        let lacking: Vec<&PeerRecord> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| !bit(*i))
            .filter_map(|(_, k)| m.record(k))
            .collect();
        assert_eq!(answer.peers.len(), lacking.len().min(m.max_gossip));
        let mut seen = HashSet::new();
        for r in &answer.peers {
            assert!(lacking.contains(&r), "answered a record the peer has");
            assert!(seen.insert(r.public_key.clone()), "duplicate in answer");
        }
    }

    fn raw_records(&mut self, plaintext: &[u8]) {
        for item in RecordReader::new(Bytes::copy_from_slice(plaintext)) {
            match item {
                Ok(Record::BitVec(bv)) => self.bit_vec(&bv),
                Ok(Record::Peers(p)) => self.peers(&p, None),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

/// Discovery fed the input script. Byte 0: `tracked_peer_sets = 1 + (b & 3)`,
/// `peer_gossip_max = 1 + ((b >> 2) & 7)`, private addresses allowed if
/// `b & 0x20`; byte 1 seeds the answer picker. Then steps, `op = byte % 10`:
///
/// | op | step |
/// |----|------|
/// | 0 | `register(index, keys)`: index byte (`u64::MAX - (b & 0x7f)` if `b & 0x80`, else `b & 0xf`), 2-byte key mask over the pool |
/// | 1 | `handle_peers` of `byte % (max + 2)` built records (4 bytes each) |
/// | 2 | `handle_peers` of a prost-decoded `Peers` (length byte, bytes) |
/// | 3 | a raw frame plaintext through `RecordReader` (length byte × 2, bytes): bit vectors and peers |
/// | 4 | `handle_bit_vec`: set picked from the tracked ones (or another index), bits: ours xor a mask, zeros, raw, or a padding bit set |
/// | 5 | `insert` of one built record |
/// | 6 | `refresh_own` at a built address, or `set_own` of a built record |
/// | 7 | clock moves by `(byte as i8) * 500 ms` |
/// | 8 | `random_ping` |
/// | 9 | `handle_peers` of a Peers re-encoded and decoded by prost (built records) |
pub fn discovery_messages(data: &[u8]) {
    let mut s = Script { data };
    if s.is_empty() {
        return;
    }
    let h = s.byte();
    let seed = s.byte();
    let mut config = DiscoveryConfig::new(NS);
    config.tracked_peer_sets = 1 + usize::from(h & 3);
    config.peer_gossip_max = 1 + usize::from((h >> 2) & 7);
    config.allow_private_ips = h & 0x20 != 0;
    let own = pool()[0].clone();
    let model = DiscoveryModel {
        own_key: own.public_key().clone(),
        max_sets: config.tracked_peer_sets,
        max_gossip: config.peer_gossip_max,
        synchrony_ms: u64::try_from(config.synchrony_bound.as_millis()).unwrap_or(u64::MAX),
        allow_private: config.allow_private_ips,
        sets: BTreeMap::new(),
        book: BTreeMap::new(),
        own: None,
    };
    let mut hs = DiscoveryHarness {
        disc: Discovery::new(config, own),
        model,
        now: T0,
        rng: StdRng::seed_from_u64(u64::from(seed)),
    };
    hs.check_state();

    for _ in 0..MAX_STEPS {
        if s.is_empty() {
            break;
        }
        let op = s.byte() % 10;
        match op {
            0 => {
                let b = s.byte();
                let index = if b & 0x80 != 0 {
                    u64::MAX - u64::from(b & 0x7f)
                } else {
                    u64::from(b & 0xf)
                };
                let mask = u16::from_be_bytes([s.byte(), s.byte()]);
                let keys = key_set(mask);
                let got = hs.disc.register(index, keys.clone());
                let want = hs.model.register(index, keys);
                assert_eq!(got, want);
            }
            1 | 9 => {
                let n = usize::from(s.byte()) % (hs.model.max_gossip + 2);
                let mut peers = Peers::default();
                let mut valid = Vec::new();
                for _ in 0..n {
                    let (r, ok) = build_record(&mut s, hs.now);
                    peers.peers.push(r);
                    valid.push(ok);
                }
                if op == 9 {
                    // Through the wire encoding, as a peer would send it.
                    peers =
                        Peers::decode(peers.encode_to_vec().as_slice()).expect("prost round trip");
                }
                hs.peers(&peers, Some(&valid));
            }
            2 => {
                let len = usize::from(s.byte());
                if let Ok(p) = Peers::decode(s.take(len)) {
                    hs.peers(&p, None);
                }
            }
            3 => {
                let len = usize::from(s.byte()) + 256 * usize::from(s.byte() & 3);
                let plaintext = s.take(len);
                hs.raw_records(plaintext);
            }
            4 => {
                let indexes: Vec<u64> = hs.model.sets.keys().copied().collect();
                let pick = s.byte();
                let index = indexes
                    .get(usize::from(pick) % (indexes.len() + 1))
                    .copied()
                    .unwrap_or(u64::from(pick >> 4));
                let n = hs.model.sets.get(&index).map_or(0, Vec::len);
                let want_len = n.div_ceil(8);
                let mode = s.byte();
                let bits = match mode % 4 {
                    0 => {
                        let mut bits = hs
                            .disc
                            .bit_vec(index)
                            .map(|b| b.bits.to_vec())
                            .unwrap_or_default();
                        for b in bits.iter_mut() {
                            *b ^= s.byte();
                        }
                        // Keep the padding clear unless the mask says not.
                        if mode & 0x10 == 0 && !n.is_multiple_of(8) {
                            if let Some(last) = bits.last_mut() {
                                *last &= !(0xffu8 >> (n % 8));
                            }
                        }
                        bits
                    }
                    1 => vec![0; want_len],
                    2 => s.take(usize::from(mode >> 4)).to_vec(),
                    _ => {
                        let mut bits = vec![0; want_len];
                        if let Some(last) = bits.last_mut() {
                            *last |= 1;
                        }
                        bits
                    }
                };
                hs.bit_vec(&BitVec {
                    index,
                    bits: Bytes::from(bits),
                });
            }
            5 => {
                let (r, ok) = build_record(&mut s, hs.now);
                let got = hs.disc.insert(&r, hs.now);
                let want = hs.model.insert(&r, hs.now).map(|(i, _, _)| i);
                assert_eq!(got, want);
                if matches!(got, Ok(Inserted::New | Inserted::Updated { .. })) {
                    assert!(ok, "a broken record was inserted");
                }
            }
            6 => {
                if s.byte() & 1 == 0 {
                    let port = u16::from(s.byte() & 3);
                    let addr = SocketAddr::from((Ipv4Addr::new(11, 9, 9, 9), port));
                    let record = hs.disc.refresh_own(addr, hs.now);
                    let _ = hs.model.set_own(&record);
                    assert_eq!(hs.model.own.as_ref() == Some(&record), port != 0);
                } else {
                    // Built records name pool keys; make "own" likely.
                    let mut r = build_record(&mut s, hs.now).0;
                    if s.byte() & 1 == 0 {
                        r.public_key = pool()[0].public_key().to_bytes();
                    }
                    let got = hs.disc.set_own(r.clone());
                    let want = hs.model.set_own(&r);
                    assert_eq!(got, want);
                }
            }
            7 => {
                let delta = i64::from(s.byte() as i8) * 500;
                hs.now = hs.now.saturating_add_signed(delta);
            }
            _ => {
                let ping = hs.disc.random_ping(&mut hs.rng);
                match ping {
                    None => assert!(hs.model.sets.is_empty()),
                    Some(bv) => {
                        assert!(hs.model.sets.contains_key(&bv.index));
                        assert_eq!(hs.disc.bit_vec(bv.index), Some(bv.clone()));
                        // The ping of a node to itself: every known record
                        // bit set, so the answer is empty.
                        let answer = hs.disc.handle_bit_vec(&bv, &mut hs.rng);
                        assert_eq!(answer, Ok(Peers::default()));
                    }
                }
            }
        }
        hs.check_state();
    }
}

// ------------------------------------------------------------- kademlia

/// The local id of the Kademlia target.
const LOCAL: NodeId = NodeId([0x5a; ID_LEN]);

/// The id at distance `d` from `base`, where `d` has its top bit at `bucket`
/// and the 8 bits below it taken from `low`.
fn id_near(base: &NodeId, bucket: u8, low: u8) -> NodeId {
    let mut d = [0u8; ID_LEN];
    let set = |d: &mut [u8; ID_LEN], bit: usize| {
        d[ID_LEN - 1 - bit / 8] |= 1 << (bit % 8);
    };
    let top = usize::from(bucket);
    set(&mut d, top);
    for j in 1..=8usize {
        if top >= j && low & (1 << (j - 1)) != 0 {
            set(&mut d, top - j);
        }
    }
    let mut id = base.0;
    for (b, x) in id.iter_mut().zip(d) {
        *b ^= x;
    }
    NodeId(id)
}

/// An id from 2 input bytes: near the local id (or the local id itself for
/// `ff ff`).
fn read_id(s: &mut Script<'_>, base: &NodeId) -> NodeId {
    let (b, v) = (s.byte(), s.byte());
    if b == 0xff && v == 0xff {
        return LOCAL;
    }
    id_near(base, b, v)
}

fn kad_addr(b: u8) -> SocketAddr {
    SocketAddr::from(([11, 0, 0, b], 9000))
}

/// Brute-force `closest`.
fn brute_closest(table: &RoutingTable, target: &NodeId, n: usize) -> Vec<(NodeId, SocketAddr)> {
    let mut all: Vec<(NodeId, SocketAddr)> = table.iter().map(|e| (e.id, e.addr)).collect();
    all.sort_by_key(|(id, _)| id.distance(target));
    all.truncate(n);
    all
}

fn bucket_of(id: &NodeId) -> Option<usize> {
    LOCAL.distance(id).bucket_index()
}

struct LookupHarness {
    lookup: Lookup,
    target: NodeId,
    k: usize,
    alpha: usize,
    max_queries: usize,
    /// Whether the lookup was told the local id (`with_local_id`).
    local_excluded: bool,
    /// Every node returned by `poll_queries`.
    asked: HashSet<NodeId>,
    /// Nodes whose answer was accepted.
    responded: HashSet<NodeId>,
    /// Nodes reported failed or timed out by the harness.
    failed: HashSet<NodeId>,
    /// Nodes returned by `poll_queries`, in order (to pick responders).
    asked_order: Vec<NodeId>,
    /// A counter for ever-closer fresh ids (termination driver).
    fresh: u32,
}

impl LookupHarness {
    fn check(&self) {
        let l = &self.lookup;
        let stats = l.stats();
        assert!(l.in_flight() <= self.alpha, "more than alpha in flight");
        assert!(stats.queried <= self.max_queries, "query budget exceeded");
        assert_eq!(stats.queried, self.asked.len());
        assert!(stats.responded <= stats.queried);
        assert_eq!(stats.responded, self.responded.len());
        let result = l.result();
        assert!(result.len() <= self.k);
        let mut prev = None;
        for (id, _) in &result {
            assert!(
                !self.local_excluded || *id != LOCAL,
                "local id in a lookup result"
            );
            assert!(self.responded.contains(id), "result holds a non-responder");
            let d = id.distance(&self.target);
            assert!(prev.is_none_or(|p| p < d), "result not closest first");
            prev = Some(d);
        }
        for id in &l.unresponsive() {
            assert!(!result.iter().any(|(r, _)| r == id));
            assert!(self.asked.contains(id) || self.failed.contains(id));
        }
        match l.poll_timeout() {
            Some(_) => assert!(!l.is_done() && l.in_flight() > 0),
            None => assert!(l.is_done() || l.in_flight() == 0),
        }
    }

    fn poll(&mut self, now: Instant) -> Vec<(NodeId, SocketAddr)> {
        let before = self.lookup.in_flight();
        let done = self.lookup.is_done();
        let q = self.lookup.poll_queries(now);
        if done {
            assert!(q.is_empty(), "queries after done");
        }
        assert!(q.len() <= self.alpha.saturating_sub(before));
        assert_eq!(self.lookup.in_flight(), before + q.len());
        let mut prev = None;
        for (id, _) in &q {
            assert!(
                !self.local_excluded || *id != LOCAL,
                "lookup queries the local id"
            );
            assert!(self.asked.insert(*id), "node queried twice");
            self.asked_order.push(*id);
            let d = id.distance(&self.target);
            assert!(prev.is_none_or(|p| p < d), "queries not closest first");
            prev = Some(d);
        }
        self.check();
        q
    }

    fn respond(&mut self, from: NodeId, nodes: Vec<(NodeId, SocketAddr)>, now: Instant) {
        let done = self.lookup.is_done();
        let ignored = self.lookup.stats().ignored;
        let accepted = self.lookup.on_response(from, nodes, now);
        if accepted {
            assert!(!done, "answer accepted after done");
            assert!(self.asked.contains(&from), "unsolicited answer accepted");
            assert!(self.responded.insert(from), "duplicate answer accepted");
        } else {
            assert_eq!(self.lookup.stats().ignored, ignored + 1);
        }
        self.check();
    }

    fn fail(&mut self, from: NodeId, now: Instant) {
        self.lookup.on_failure(from, now);
        self.failed.insert(from);
        self.check();
    }

    /// `n` fresh ids, each closer to the target than any before.
    fn closer_ids(&mut self, n: usize) -> Vec<(NodeId, SocketAddr)> {
        (0..n)
            .map(|_| {
                self.fresh = self.fresh.saturating_sub(1).max(1);
                let mut d = [0u8; ID_LEN];
                d[ID_LEN - 4..].copy_from_slice(&self.fresh.to_be_bytes());
                let mut id = self.target.0;
                for (b, x) in id.iter_mut().zip(d) {
                    *b ^= x;
                }
                (NodeId(id), kad_addr(self.fresh as u8))
            })
            .collect()
    }

    /// Drives the lookup to its end with a hostile but finite environment;
    /// it must finish within `2 * max_queries + 2` rounds.
    fn terminate(&mut self, mut now: Instant, style: u8) {
        let bound = 2 * self.max_queries + 2;
        let mut rounds = 0;
        let mut turn = usize::from(style);
        while !self.lookup.is_done() {
            rounds += 1;
            assert!(
                rounds <= bound,
                "lookup did not terminate in {bound} rounds"
            );
            let q = self.poll(now);
            if q.is_empty() {
                // Nothing to start: something must be in flight, and time
                // must make progress.
                assert!(self.lookup.in_flight() > 0, "lookup stalled");
                now = self.lookup.poll_timeout().expect("deadline in flight");
                self.lookup.handle_timeout(now);
                assert!(self.lookup.poll_timeout().is_none_or(|d| d > now));
                self.check();
                continue;
            }
            for (id, _) in q {
                turn = turn.wrapping_add(1);
                match turn % 3 {
                    0 => {
                        let nodes = self.closer_ids(self.k + 2);
                        self.respond(id, nodes, now);
                    }
                    1 => self.fail(id, now),
                    _ => {} // silent: times out
                }
            }
        }
        assert!(self.lookup.poll_queries(now).is_empty());
        assert!(self.lookup.poll_timeout().is_none());
    }
}

struct KadHarness {
    table: RoutingTable,
    k: usize,
    cache: usize,
    observed: HashSet<NodeId>,
    /// Ids the table asked us to ping.
    pending: Vec<NodeId>,
    lookup: Option<LookupHarness>,
    start: Instant,
    now: Instant,
}

impl KadHarness {
    fn ids(&self) -> BTreeSet<NodeId> {
        self.table.iter().map(|e| e.id).collect()
    }

    fn check_table(&self) {
        let ids = self.ids();
        assert_eq!(ids.len(), self.table.len(), "duplicate entries or bad len");
        assert!(!ids.contains(&LOCAL), "local id in the table");
        for b in 0..ID_BITS {
            assert!(self.table.bucket_len(b) <= self.k, "bucket over k");
            assert!(
                self.table.cache_len(b) <= self.cache,
                "replacement cache over its bound"
            );
        }
        assert_eq!(
            (0..ID_BITS)
                .map(|b| self.table.bucket_len(b))
                .sum::<usize>(),
            self.table.len()
        );
        for id in &ids {
            assert!(self.observed.contains(id), "an unobserved id in the table");
        }
    }

    fn observe(&mut self, id: NodeId, addr: SocketAddr) {
        let before = self.ids();
        let bucket = bucket_of(&id);
        let full = bucket.is_some_and(|b| self.table.bucket_len(b) >= self.k);
        let r = self.table.observe(id, addr, self.now);
        if id != LOCAL {
            self.observed.insert(id);
        }
        let after = self.ids();
        match r {
            Observe::IsSelf => {
                assert_eq!(id, LOCAL);
                assert_eq!(before, after);
            }
            Observe::Refreshed => {
                assert!(before.contains(&id));
                assert_eq!(before, after);
                let e = self.table.get(&id).expect("refreshed entry");
                assert_eq!((e.addr, e.last_seen), (addr, self.now));
            }
            Observe::Inserted => {
                assert!(!before.contains(&id) && !full);
                let mut expect = before;
                expect.insert(id);
                assert_eq!(expect, after);
            }
            Observe::PingOldest { oldest, candidate } => {
                assert!(full && candidate == id && !after.contains(&id));
                assert_eq!(before, after);
                // The least recently seen: first of its bucket in the
                // table's order.
                let first = self.table.iter().find(|e| bucket_of(&e.id) == bucket);
                assert_eq!(
                    first.map(|e| e.id),
                    Some(oldest),
                    "pinged entry is not the oldest"
                );
                self.pending.push(oldest);
            }
            Observe::Cached { candidate } => {
                assert!(full && candidate == id && !after.contains(&id));
                assert_eq!(before, after);
            }
        }
        self.check_table();
    }

    fn ping_result(&mut self, id: NodeId, alive: bool) {
        let before = self.ids();
        let bucket = bucket_of(&id);
        let cached = bucket.map_or(0, |b| self.table.cache_len(b));
        let r = self.table.ping_result(id, alive, self.now);
        let after = self.ids();
        match r {
            PingOutcome::Unknown => {
                assert!(!before.contains(&id));
                assert_eq!(before, after);
            }
            PingOutcome::Refreshed => {
                assert!(alive && before.contains(&id));
                assert_eq!(before, after);
                assert_eq!(self.table.get(&id).map(|e| e.last_seen), Some(self.now));
            }
            PingOutcome::Evicted { promoted } => {
                assert!(!alive && before.contains(&id) && !after.contains(&id));
                let mut expect = before.clone();
                expect.remove(&id);
                match promoted {
                    Some(p) => {
                        assert!(!before.contains(&p) && self.observed.contains(&p));
                        assert_eq!(bucket_of(&p), bucket);
                        expect.insert(p);
                    }
                    None => assert_eq!(cached, 0, "eviction left a hole with a cache"),
                }
                assert_eq!(expect, after);
            }
        }
        self.check_table();
    }

    fn remove(&mut self, id: NodeId) {
        let before = self.ids();
        let r = self.table.remove(&id);
        let after = self.ids();
        assert_eq!(r.is_some(), before.contains(&id));
        assert!(!after.contains(&id));
        let added: Vec<_> = after.difference(&before).collect();
        assert!(added.len() <= usize::from(r.is_some()));
        for p in added {
            assert_eq!(bucket_of(p), bucket_of(&id));
        }
        let removed = before.difference(&after).count();
        assert_eq!(removed, usize::from(r.is_some()));
        self.check_table();
    }

    fn find_node(&self, target: &NodeId, n: usize) {
        let got = self.table.closest(target, n);
        assert_eq!(got, brute_closest(&self.table, target, n));
    }

    fn responder(&self, s: &mut Script<'_>) -> NodeId {
        let pick = s.byte();
        match &self.lookup {
            Some(l) if pick < 0xc0 && !l.asked_order.is_empty() => {
                l.asked_order[usize::from(pick) % l.asked_order.len()]
            }
            _ => read_id(s, &LOCAL),
        }
    }
}

/// Kademlia fed the input script. Byte 0: `k = [1, 2, 3, 16][b & 3]`,
/// replacement cache `(b >> 2) & 3`, ping timeout `1 + ((b >> 4) & 3)` s.
/// Ids are 2 bytes: a bucket and 8 bits below its top bit, relative to the
/// local id (or to a lookup's target in answers); `ff ff` is the local id.
/// Then steps, `op = byte % 12`:
///
/// | op | step |
/// |----|------|
/// | 0 | `observe(id, addr)` |
/// | 1 | `ping_result` of a pending ping (or an id), alive by a bit |
/// | 2 | `remove(id)` |
/// | 3 | a prost-decoded `FindNode` (length byte, bytes): `closest(target, K)` |
/// | 4 | `closest(id, byte % 20)` |
/// | 5 | start a lookup: target id, `k`, `alpha`, budget, timeout, local id seeded or not |
/// | 6 | `poll_queries` |
/// | 7 | answer from an asked node (or an id) with `byte % 20` ids near the target |
/// | 8 | answer with a prost-decoded `Nodes` (length byte, bytes), records mapped to ids and sockets |
/// | 9 | `on_failure` |
/// | 10 | time moves by `byte * 50 ms`, then `handle_timeout` |
/// | 11 | `observe` of a lookup responder (what the engine does on an answer) |
pub fn kademlia_messages(data: &[u8]) {
    let mut s = Script { data };
    if s.is_empty() {
        return;
    }
    let h = s.byte();
    let config = TableConfig {
        k: [1, 2, 3, 16][usize::from(h & 3)],
        replacement_cache: usize::from((h >> 2) & 3),
        ping_timeout: Duration::from_secs(1 + u64::from((h >> 4) & 3)),
    };
    let start = Instant::now();
    let mut kh = KadHarness {
        table: RoutingTable::with_config(LOCAL, config),
        k: config.k,
        cache: config.replacement_cache,
        observed: HashSet::new(),
        pending: Vec::new(),
        lookup: None,
        start,
        now: start,
    };
    assert_eq!(kh.table.local_id(), LOCAL);

    for _ in 0..MAX_STEPS {
        if s.is_empty() {
            break;
        }
        match s.byte() % 12 {
            0 => {
                let id = read_id(&mut s, &LOCAL);
                let addr = kad_addr(s.byte());
                kh.observe(id, addr);
            }
            1 => {
                let pick = s.byte();
                let id = if pick < 0xc0 && !kh.pending.is_empty() {
                    kh.pending.remove(usize::from(pick) % kh.pending.len())
                } else {
                    read_id(&mut s, &LOCAL)
                };
                kh.ping_result(id, pick & 1 == 0);
            }
            2 => {
                let id = read_id(&mut s, &LOCAL);
                kh.remove(id);
            }
            3 => {
                let len = usize::from(s.byte());
                if let Ok(q) = FindNode::decode(s.take(len)) {
                    // open.rs: a target that is not 32 bytes is ignored.
                    if let Ok(t) = <[u8; ID_LEN]>::try_from(&q.target[..]) {
                        kh.find_node(&NodeId(t), crate::kademlia::K);
                    }
                }
            }
            4 => {
                let target = read_id(&mut s, &LOCAL);
                let n = usize::from(s.byte() % 20);
                kh.find_node(&target, n);
            }
            5 => {
                let target = read_id(&mut s, &LOCAL);
                let p = s.byte();
                let q = s.byte();
                let k = 1 + usize::from(p & 7);
                let alpha = 1 + usize::from((p >> 3) & 3);
                let mut seeds = kh.table.closest(&target, k);
                if p & 0x20 != 0 {
                    seeds.push((LOCAL, kad_addr(0)));
                }
                let mut lookup = Lookup::new(target, seeds, k, alpha)
                    .with_query_timeout(Duration::from_millis(100 * (1 + u64::from(q & 0xf))));
                let local_excluded = p & 0x40 == 0;
                if local_excluded {
                    lookup = lookup.with_local_id(LOCAL);
                }
                let max_queries = if p & 0x80 != 0 {
                    let m = usize::from(q >> 4);
                    lookup = lookup.with_max_queries(m);
                    m.max(k)
                } else {
                    10 * k
                };
                let lh = LookupHarness {
                    lookup,
                    target,
                    k,
                    alpha,
                    max_queries,
                    local_excluded,
                    asked: HashSet::new(),
                    responded: HashSet::new(),
                    failed: HashSet::new(),
                    asked_order: Vec::new(),
                    fresh: u32::MAX,
                };
                lh.check();
                kh.lookup = Some(lh);
            }
            6 => {
                let now = kh.now;
                if let Some(l) = kh.lookup.as_mut() {
                    l.poll(now);
                }
            }
            7 => {
                let from = kh.responder(&mut s);
                let n = usize::from(s.byte() % 20);
                let now = kh.now;
                if let Some(l) = kh.lookup.as_mut() {
                    let target = l.target;
                    let nodes = (0..n)
                        .map(|_| {
                            let id = read_id(&mut s, &target);
                            (id, kad_addr(s.byte()))
                        })
                        .collect();
                    l.respond(from, nodes, now);
                }
            }
            8 => {
                let from = kh.responder(&mut s);
                let len = usize::from(s.byte());
                let bytes = s.take(len);
                let now = kh.now;
                if let (Ok(msg), Some(l)) = (Nodes::decode(bytes), kh.lookup.as_mut()) {
                    // open.rs considers at most K records per answer.
                    let nodes = msg
                        .nodes
                        .iter()
                        .take(crate::kademlia::K)
                        .filter_map(|r| {
                            let id = <[u8; ID_LEN]>::try_from(&r.public_key[..]).ok()?;
                            let addr = decode_socket(&r.socket).ok()?;
                            Some((NodeId(id), addr))
                        })
                        .collect();
                    l.respond(from, nodes, now);
                }
            }
            9 => {
                let from = kh.responder(&mut s);
                let now = kh.now;
                if let Some(l) = kh.lookup.as_mut() {
                    l.fail(from, now);
                }
            }
            10 => {
                kh.now += Duration::from_millis(50 * u64::from(s.byte()));
                let now = kh.now;
                if let Some(l) = kh.lookup.as_mut() {
                    let in_flight = l.lookup.in_flight();
                    l.lookup.handle_timeout(now);
                    assert!(l.lookup.in_flight() <= in_flight);
                    assert!(l.lookup.poll_timeout().is_none_or(|d| d > now));
                    l.check();
                }
            }
            _ => {
                let from = kh.responder(&mut s);
                let addr = kad_addr(s.byte());
                kh.observe(from, addr);
            }
        }
    }

    // Every lookup ends, whatever happened before.
    let now = kh.now;
    let style = s.byte();
    if let Some(l) = kh.lookup.as_mut() {
        l.terminate(now, style);
    }
    assert!(kh.now >= kh.start);
    kh.check_table();
}

// ---------------------------------------------------------------- seeds

/// Hand-made seed inputs for both targets: `(target, name, bytes)`.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use shoal_wire::RecordWriter;

    let mut out = Vec::new();

    // Signed records as a peer would send them, for the raw encodings.
    let signed = |who: usize, last: u8, ts: u64| {
        crate::discovery::sign_record(
            &*pool()[who],
            NS,
            SocketAddr::from(([11, 0, 0, last], 9000)),
            ts,
        )
    };
    let raw_peers = Peers {
        peers: vec![signed(5, 5, T0), signed(6, 6, T0 - 1000), signed(0, 1, T0)],
    }
    .encode_to_vec();
    let mut plaintext = bytes::BytesMut::new();
    {
        let mut w = RecordWriter::new(&mut plaintext, usize::MAX);
        let _ = w.push(
            shoal_wire::RecordKind::BitVec,
            &BitVec {
                index: 1,
                bits: Bytes::from_static(&[0, 0]),
            },
        );
        let _ = w.push(
            shoal_wire::RecordKind::Peers,
            &Peers {
                peers: vec![signed(7, 7, T0)],
            },
        );
        let _ = w.push(
            shoal_wire::RecordKind::BitVec,
            &BitVec {
                index: 1,
                bits: Bytes::from_static(&[0xff, 0xc0]),
            },
        );
    }

    // Discovery: 4 sets, 4 records per answer, public addresses only.
    let mut d = vec![0x0f, 7];
    d.extend([0, 1, 0x03, 0xff]); // register set 1: the whole pool
    d.extend([6, 0, 1]); // own record at 11.9.9.9:1
    d.extend([1, 3, 1, 0x01, 0, 0, 2, 0x02, 0, 0, 3, 0x03, 0, 4]); // 2 good, 1 broken
    d.extend([5, 4, 0x04, 0, 0]); // insert one
    d.extend([9, 2, 5, 0x06, 0, 0, 6, 0x07, 0, 1]); // through prost
    d.extend([4, 0, 1]); // bit vector of zeros: answer
    d.extend([4, 0, 0, 0xa5, 0x40]); // ours xor a mask
    d.extend([4, 0, 3]); // padding bit set
    d.extend([8]); // random ping
    d.extend([7, 10]); // +5 s
    d.extend([5, 1, 0x05, 1, 0]); // newer record, new address: moved
    d.extend([0, 2, 0x00, 0x0f]); // set 2: keys 0..3
    d.extend([0, 0x85, 0x00, 0x03]); // a high index
    d.extend([
        1, 5, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5,
    ]); // too many
    d.extend([3, plaintext.len() as u8, (plaintext.len() >> 8) as u8]);
    d.extend_from_slice(&plaintext);
    d.extend([2, raw_peers.len() as u8]);
    d.extend_from_slice(&raw_peers);
    d.extend([0, 1, 0x00, 0x01]); // set 1 shrinks to ourselves: records pruned
    out.push(("discovery_messages", "gossip", d));

    // Private addresses allowed, one set, one record per answer; the
    // rejection reasons one by one.
    let mut d = vec![0x20, 1];
    d.extend([0, 3, 0x00, 0x3f]);
    for rec in [
        [1, 0x61, 0, 0],    // private, allowed
        [1, 0x81, 0, 0],    // loopback
        [1, 0xa1, 0, 0],    // IPv6
        [1, 0xc1, 0, 0],    // port 0
        [1, 0xe3, 0, 0],    // malformed socket
        [1, 0x01, 9, 0],    // future
        [1, 0x01, 0, 5],    // wrong signer
        [1, 0x01, 0, 6],    // other timestamp
        [1, 0x01, 0, 7],    // truncated signature
        [1, 0x01, 0, 15],   // other namespace
        [10, 0x01, 0, 0],   // junk key
        [11, 0x01, 0, 0],   // short key
        [0, 0x01, 0, 0],    // ourselves
        [8, 0x01, 0, 0],    // untracked
        [1, 0x01, 0x80, 0], // timestamp 0: stale
    ] {
        d.push(5);
        d.extend(rec);
    }
    d.extend([6, 1, 0, 0x01, 0, 0, 0]); // set_own: ours
    d.extend([6, 1, 1, 0x01, 0, 0, 1]); // set_own: another key
    d.extend([6, 1, 2, 0x01, 0, 0, 0]); // set_own: key swapped to ours
    d.extend([4, 1, 2]); // an untracked index
    out.push(("discovery_messages", "reasons", d));

    // Kademlia: k = 2, cache 3, ping timeout 1 s.
    let find = FindNode {
        query_id: 9,
        target: Bytes::copy_from_slice(&id_near(&LOCAL, 200, 3).0),
    }
    .encode_to_vec();
    let raw_nodes = Nodes {
        query_id: 9,
        nodes: vec![
            PeerRecord {
                public_key: Bytes::copy_from_slice(&id_near(&LOCAL, 7, 1).0),
                socket: encode_socket(kad_addr(7)),
                timestamp: 1,
                signature: Bytes::new(),
            },
            PeerRecord {
                public_key: Bytes::copy_from_slice(&LOCAL.0),
                socket: encode_socket(kad_addr(8)),
                timestamp: 1,
                signature: Bytes::new(),
            },
        ],
    }
    .encode_to_vec();
    let mut k = vec![0x0d];
    for v in 1..=5u8 {
        k.extend([0, 255, v, v]); // bucket 255: 2 in, 3 cached
    }
    k.extend([1, 0x01]); // the pending ping: dead, promoted
    k.extend([0, 255, 9, 9]);
    k.extend([1, 0x00]); // alive
    k.extend([2, 255, 2]); // remove
    for b in [0u8, 1, 10, 100, 254] {
        k.extend([0, b, 0, b]);
    }
    k.extend([0, 0xff, 0xff, 0]); // ourselves
    k.extend([4, 255, 0, 16]);
    k.extend([3, find.len() as u8]);
    k.extend_from_slice(&find);
    k.extend([5, 255, 7, 0x0b, 0x05]); // lookup: k 4, alpha 2
    k.extend([6]);
    k.extend([7, 0, 3, 254, 1, 1, 253, 2, 2, 0xff, 0xff, 3]); // answer
    k.extend([11, 0, 1]); // observe the responder
    k.extend([6]);
    k.extend([9, 1]); // failure
    k.extend([8, 0, raw_nodes.len() as u8]);
    k.extend_from_slice(&raw_nodes);
    k.extend([10, 40]); // +2 s: timeouts
    k.extend([6, 7, 0xc0, 0, 0, 0]); // unsolicited answer
    k.push(1);
    out.push(("kademlia_messages", "table_and_lookup", k));

    // k = 16, a lookup with a budget, its local id among the seeds.
    let mut k = vec![0x03];
    for i in 0..40u8 {
        k.extend([0, 240 + i % 16, i, i]);
    }
    k.extend([5, 250, 1, 0xff, 0x31]); // k 8, alpha 4, budget 3 (→ 8), local seeded
    k.extend([6, 7, 0, 19]);
    for i in 0..19u8 {
        k.extend([250 - i, i, i]);
    }
    k.extend([6, 10, 255, 6]);
    k.push(0);
    out.push(("kademlia_messages", "big_k_budget", k));

    out
}
