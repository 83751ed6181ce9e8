//! Open mode: Kademlia over authenticated connections (noise's model, fixed).
//!
//! # Design
//! Runs on the control shard beside authorized discovery. Node id = the
//! peer's ed25519 public key (the handshake authenticates it). Every peer
//! sends its signed address record right after the handshake; a verified
//! record puts the peer in the [`RoutingTable`]. A full bucket asks for the
//! least-recently-seen entry to be checked: an entry with a live connection is
//! alive (its keep-alive pings prove it within the idle timeout), an entry
//! without one is dialed, and only an entry that cannot be reached is replaced.
//!
//! Lookups are iterative `FIND_NODE` toward the *target* with α = 3 (noise
//! asked peers for nodes near *themselves* and never converged on far
//! targets). Querying a node needs a connection: a node that is not connected
//! is dialed and its query sent once the handshake completes; a dial that
//! fails is a failed query. Answers are signed records, verified before they
//! reach the lookup.
//!
//! # Driving it
//! `OpenMode` is sans-IO: the control loop hands it what happened and sends
//! what it asks for (its outputs: records to send, dials, closes, refusals
//! to count). Inputs, in the order a node meets them:
//! - `handle_timeout` on every loop iteration: the join and refresh
//!   lookups (one at a time), liveness checks and lookup timers;
//! - `handle_connected` / `handle_dial_failed` as connections come and
//!   dials fail;
//! - `handle_record` for every `PEERS` (one record: the peer's own),
//!   `FIND_NODE` and `NODES` from a peer;
//! - `handle_lookup` for the embedder's lookups
//!   ([`crate::NetworkHandle::lookup`]).
//!
//! Outputs come from `poll_output`; `poll_timeout` says when
//! `handle_timeout` is due next.
//!
//! # Security
//! Addresses in answers are signed by their owners, so a responder cannot
//! redirect a key to its own address. Sybil and eclipse resistance are not
//! provided (keys are free; see [`crate::kademlia`]). Everything is bounded:
//! the table, at most [`MAX_LOOKUPS`] concurrent lookups, the records kept for
//! answers (one per table entry), the queries waiting for a connection, the
//! nodes marked unreachable.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_crypto::{PublicKey, Scheme, ED25519};
use shoal_wire::{CloseReason, FindNode, Nodes, PeerRecord, Record};
use tokio::sync::oneshot;

use super::dialer::Unreachable;
use super::join::Join;
use super::Output;
use crate::connection::ControlOut;
use crate::discovery::{verify_record, RecordRejected};
use crate::kademlia::{Lookup, NodeId, Observe, RoutingTable, ALPHA, K};
use crate::peers::ConnId;

/// Concurrent lookups per node.
pub const MAX_LOOKUPS: usize = 64;
/// How long a query may wait for its dial to connect (a dial that fails
/// fails its queries at once; this bounds one that hangs).
const CONNECT_WAIT: Duration = Duration::from_secs(3);

#[cfg(test)]
use super::join::REFRESH_INTERVAL;

/// The answer to a lookup: the closest responders (key, address).
pub type LookupResult = Vec<(PublicKey, SocketAddr)>;

/// A key's connection, if established.
pub(crate) type Connected<'a> = &'a dyn Fn(&PublicKey) -> Option<ConnId>;

struct ActiveLookup {
    lookup: Lookup,
    /// Where the result goes (none: a join lookup).
    reply: Option<oneshot::Sender<LookupResult>>,
    /// query id -> node asked
    queries: HashMap<u64, NodeId>,
}

struct WaitingQuery {
    lookup: u64,
    since: Instant,
}

/// Open-mode state. See the module docs.
pub(crate) struct OpenMode {
    local: NodeId,
    namespace: Vec<u8>,
    allow_private: bool,
    table: RoutingTable,
    /// The signed record of every table entry (what we answer with).
    records: HashMap<NodeId, PeerRecord>,
    keys: HashMap<NodeId, PublicKey>,
    lookups: HashMap<u64, ActiveLookup>,
    next_lookup: u64,
    next_query: u64,
    /// Queries for nodes being dialed: node -> (lookup id, since).
    waiting: HashMap<NodeId, Vec<WaitingQuery>>,
    /// Liveness checks in progress: oldest -> deadline.
    checks: HashMap<NodeId, Instant>,
    /// Nodes whose last dial failed: queries skip them for a while.
    unreachable: Unreachable,
    /// The join and refresh sequence.
    join: Join,
    out: VecDeque<Output>,
}

impl OpenMode {
    /// The node's open mode: `None` unless `cfg.open`.
    pub fn from_config(cfg: &crate::Config) -> Option<Self> {
        if !cfg.discovery.open {
            return None;
        }
        Self::new(
            cfg.identity.signer.public_key(),
            cfg.identity.namespace.clone(),
            cfg.discovery.allow_private_ips,
        )
    }

    pub fn new(local: &PublicKey, namespace: Vec<u8>, allow_private: bool) -> Option<Self> {
        let local = NodeId::from_public_key(local)?;
        Some(Self {
            local,
            namespace,
            allow_private,
            table: RoutingTable::new(local),
            records: HashMap::new(),
            keys: HashMap::new(),
            lookups: HashMap::new(),
            next_lookup: 1,
            next_query: 1,
            waiting: HashMap::new(),
            checks: HashMap::new(),
            unreachable: Unreachable::new(),
            join: Join::new(),
            out: VecDeque::new(),
        })
    }

    /// A control record from `peer` on `id`.
    pub fn handle_record(
        &mut self,
        peer: &PublicKey,
        id: ConnId,
        record: Record,
        connected: Connected<'_>,
        now: Instant,
    ) {
        match record {
            Record::Peers(p) if p.peers.len() <= 1 => {
                for r in &p.peers {
                    if let Err(e) = self.on_record(r, connected, now) {
                        self.out.push_back(Output::Refuse("bad_peer_record"));
                        if e.is_misbehavior() {
                            self.out.push_back(Output::Close {
                                id,
                                reason: CloseReason::ProtocolViolation,
                            });
                        }
                    }
                }
            }
            Record::FindNode(q) => self.on_find_node(id, &q),
            Record::Nodes(n) => {
                if self.on_nodes(peer, &n, now) > 0 {
                    self.out.push_back(Output::Refuse("bad_peer_record"));
                }
            }
            _ => self
                .out
                .push_back(Output::Refuse("unexpected_control_record")),
        }
    }

    /// A verified record from `from` (its own, after the handshake).
    fn on_record(
        &mut self,
        record: &PeerRecord,
        connected: Connected<'_>,
        now: Instant,
    ) -> Result<(), RecordRejected> {
        let scheme = &ED25519;
        let (key, addr, _) = verify_record(scheme, &self.namespace, record)?;
        if !self.allow_private && !crate::discovery::is_publicly_routable(addr.ip()) {
            return Err(RecordRejected::Private(addr.ip()));
        }
        let Some(id) = NodeId::from_public_key(&key) else {
            return Err(RecordRejected::MalformedKey);
        };
        if id == self.local {
            return Ok(());
        }
        if self.table.get(&id).is_none_or(|e| e.addr != addr) {
            // A node that moved may be reachable at its new address.
            self.unreachable.handle_reachable(&id);
        }
        match self.table.observe(id, addr, now) {
            Observe::Inserted | Observe::Refreshed => {
                self.records.insert(id, record.clone());
                self.keys.insert(id, key);
            }
            Observe::PingOldest { oldest, .. } => {
                // Alive if connected (keep-alives prove it); else dial it and
                // decide when the dial ends.
                let oldest_key = self.keys.get(&oldest).cloned();
                match oldest_key.as_ref().and_then(connected) {
                    Some(_) => {
                        self.table.ping_result(oldest, true, now);
                    }
                    None => {
                        if let (Some(k), Some(e)) = (oldest_key, self.table.get(&oldest)) {
                            self.checks.insert(oldest, now + CONNECT_WAIT);
                            self.out.push_back(Output::Dial {
                                peer: k,
                                addr: e.addr,
                            });
                        } else {
                            self.table.ping_result(oldest, false, now);
                        }
                    }
                }
                // The candidate waits in the cache; remember its record.
                self.records.insert(id, record.clone());
                self.keys.insert(id, key);
            }
            Observe::Cached { .. } => {
                self.records.insert(id, record.clone());
                self.keys.insert(id, key);
            }
            Observe::IsSelf => {}
        }
        self.prune_records();
        Ok(())
    }

    fn prune_records(&mut self) {
        // Keep records only for ids the table (or its caches) may return.
        if self.records.len() > 2 * (self.table.len() + 256 * K) {
            let table = &self.table;
            self.records.retain(|id, _| table.contains(id));
            let records = &self.records;
            self.keys.retain(|id, _| records.contains_key(id));
        }
    }

    /// A FIND_NODE from a connected peer: answer with our closest records.
    fn on_find_node(&mut self, from: ConnId, q: &FindNode) {
        let Ok(target) = <[u8; 32]>::try_from(&q.target[..]) else {
            return;
        };
        let target = NodeId::from_bytes(target);
        let nodes = self
            .table
            .closest(&target, K)
            .into_iter()
            .filter_map(|(id, _)| self.records.get(&id).cloned())
            .collect();
        self.out.push_back(Output::Send {
            id: from,
            record: ControlOut::Nodes(Nodes {
                query_id: q.query_id,
                nodes,
            }),
        });
    }

    /// NODES answering one of our queries; returns how many of its records
    /// were refused.
    fn on_nodes(&mut self, from: &PublicKey, msg: &Nodes, now: Instant) -> usize {
        let Some(from_id) = NodeId::from_public_key(from) else {
            return 0;
        };
        let mut rejected = 0;
        let mut verified = Vec::new();
        for r in msg.nodes.iter().take(K) {
            match verify_record(&ED25519, &self.namespace, r) {
                Ok((key, addr, _)) => {
                    if !self.allow_private && !crate::discovery::is_publicly_routable(addr.ip()) {
                        rejected += 1;
                        continue;
                    }
                    if let Some(id) = NodeId::from_public_key(&key) {
                        self.keys.entry(id).or_insert(key);
                        self.records.entry(id).or_insert_with(|| r.clone());
                        verified.push((id, addr));
                    }
                }
                Err(_) => rejected += 1,
            }
        }
        for l in self.lookups.values_mut() {
            if l.queries.remove(&msg.query_id) == Some(from_id) {
                l.lookup.on_response(from_id, verified, now);
                break;
            }
        }
        rejected
    }

    /// The embedder's lookup toward `target`; the result arrives on `reply`
    /// (dropped at once, and counted, when [`MAX_LOOKUPS`] are running).
    pub fn handle_lookup(&mut self, target: [u8; 32], reply: oneshot::Sender<LookupResult>) {
        if self
            .start_lookup(NodeId::from_bytes(target), Some(reply))
            .is_none()
        {
            self.out.push_back(Output::Refuse("too_many_lookups"));
        }
    }

    /// Starts a lookup toward `target`; its id, or `None` when
    /// [`MAX_LOOKUPS`] are running.
    fn start_lookup(
        &mut self,
        target: NodeId,
        reply: Option<oneshot::Sender<LookupResult>>,
    ) -> Option<u64> {
        if self.lookups.len() >= MAX_LOOKUPS {
            return None;
        }
        let seeds = self.table.closest(&target, K);
        let lookup = Lookup::new(target, seeds, K, ALPHA).with_local_id(self.local);
        let id = self.next_lookup;
        self.next_lookup += 1;
        self.lookups.insert(
            id,
            ActiveLookup {
                lookup,
                reply,
                queries: HashMap::new(),
            },
        );
        Some(id)
    }

    /// The next target of the join sequence ([`super::join`]).
    #[cfg(test)]
    fn next_join_target<R: rand::Rng + ?Sized>(
        &mut self,
        now: Instant,
        rng: &mut R,
    ) -> Option<NodeId> {
        self.join.next_target(&self.table, self.local, now, rng)
    }

    /// A connection to `peer` came up: send the queries that waited for it.
    pub fn handle_connected(&mut self, peer: &PublicKey, conn: ConnId) {
        let Some(id) = NodeId::from_public_key(peer) else {
            return;
        };
        self.unreachable.handle_reachable(&id);
        if self.checks.remove(&id).is_some() {
            self.table.ping_result(id, true, Instant::now());
        }
        // A new connection to a node we already asked replaced the one the
        // query went out on (the simultaneous-dial tie-break closes one of
        // two): the query, or its answer, may have died with the old one.
        // Ask again under the same id; a second answer is ignored.
        for l in self.lookups.values() {
            for (&qid, _) in l.queries.iter().filter(|(_, n)| **n == id) {
                self.out.push_back(query(conn, qid, &l.lookup));
            }
        }
        if let Some(waiting) = self.waiting.remove(&id) {
            for w in waiting {
                if let Some(l) = self.lookups.get_mut(&w.lookup) {
                    let qid = self.next_query;
                    self.next_query += 1;
                    l.queries.insert(qid, id);
                    self.out.push_back(query(conn, qid, &l.lookup));
                }
            }
        }
    }

    /// A dial to `peer` failed: the queries waiting for it fail now (not
    /// after `CONNECT_WAIT`), a liveness check of it fails, and queries skip
    /// it for [`super::dialer::UNREACHABLE_FOR`].
    pub fn handle_dial_failed(&mut self, peer: &PublicKey, now: Instant) {
        let Some(id) = NodeId::from_public_key(peer) else {
            return;
        };
        if self.checks.remove(&id).is_some() {
            self.table.ping_result(id, false, now);
        }
        if let Some(waiting) = self.waiting.remove(&id) {
            for w in waiting {
                if let Some(l) = self.lookups.get_mut(&w.lookup) {
                    l.lookup.on_failure(id, now);
                }
            }
        }
        self.unreachable.handle_dial_failed(id, now);
    }

    /// Drives the join and refresh sequence (one lookup at a time), then
    /// lookups and liveness checks; `connected` maps a key to its
    /// connection.
    pub fn handle_timeout<R: rand::Rng + ?Sized>(
        &mut self,
        now: Instant,
        connected: Connected<'_>,
        rng: &mut R,
    ) {
        let lookups = &self.lookups;
        let running = |id| lookups.contains_key(&id);
        if let Some(target) = self
            .join
            .poll_target(&self.table, self.local, running, now, rng)
        {
            let started = self.start_lookup(target, None);
            self.join.handle_started(started);
        }
        self.poll(connected, now);
    }

    /// Drives lookups and liveness checks.
    fn poll(&mut self, connected: Connected<'_>, now: Instant) {
        // Liveness checks whose dial never connected: dead.
        let expired: Vec<NodeId> = self
            .checks
            .iter()
            .filter(|(_, d)| now >= **d)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.checks.remove(&id);
            self.table.ping_result(id, false, now);
        }
        // Queries waiting for a node that is connected by now (it dialed us,
        // or another dial won): send them.
        let ready: Vec<(NodeId, PublicKey, ConnId)> = self
            .waiting
            .keys()
            .filter_map(|nid| {
                let key = self.keys.get(nid)?.clone();
                let conn = connected(&key)?;
                Some((*nid, key, conn))
            })
            .collect();
        for (_, key, conn) in ready {
            self.handle_connected(&key, conn);
        }
        // Queries whose dial never connected: failed.
        let mut failed: Vec<(u64, NodeId)> = Vec::new();
        self.waiting.retain(|id, ws| {
            ws.retain(|w| {
                let late = now.duration_since(w.since) >= CONNECT_WAIT;
                if late {
                    failed.push((w.lookup, *id));
                }
                !late
            });
            !ws.is_empty()
        });
        for (lid, nid) in failed {
            if let Some(l) = self.lookups.get_mut(&lid) {
                l.lookup.on_failure(nid, now);
            }
        }
        let done = self.send_queries(connected, now);
        self.finish(done);
    }

    /// Sends every lookup's next queries (dialing nodes that are not
    /// connected); returns the lookups that are done.
    fn send_queries(&mut self, connected: Connected<'_>, now: Instant) -> Vec<u64> {
        let mut done = Vec::new();
        for (lid, l) in self.lookups.iter_mut() {
            l.lookup.handle_timeout(now);
            for (nid, addr) in l.lookup.poll_queries(now) {
                let key = match self.keys.get(&nid) {
                    Some(k) => k.clone(),
                    None => match ED25519.parse_public_key(nid.as_bytes()) {
                        Ok(k) => k,
                        Err(_) => {
                            l.lookup.on_failure(nid, now);
                            continue;
                        }
                    },
                };
                match connected(&key) {
                    Some(conn) => {
                        let qid = self.next_query;
                        self.next_query += 1;
                        l.queries.insert(qid, nid);
                        self.out.push_back(query(conn, qid, &l.lookup));
                    }
                    None if self.unreachable.is_marked(&nid, now) => {
                        l.lookup.on_failure(nid, now);
                    }
                    None => {
                        let ws = self.waiting.entry(nid).or_default();
                        if ws.len() < MAX_LOOKUPS {
                            ws.push(WaitingQuery {
                                lookup: *lid,
                                since: now,
                            });
                        }
                        self.out.push_back(Output::Dial { peer: key, addr });
                    }
                }
            }
            if l.lookup.is_done() {
                done.push(*lid);
            }
        }
        done
    }

    /// Ends the `done` lookups: their results to whoever asked, their
    /// unresponsive nodes out of the table.
    fn finish(&mut self, done: Vec<u64>) {
        for lid in done {
            if let Some(mut l) = self.lookups.remove(&lid) {
                let result: LookupResult = l
                    .lookup
                    .result()
                    .into_iter()
                    .filter_map(|(id, addr)| self.keys.get(&id).map(|k| (k.clone(), addr)))
                    .collect();
                for dead in l.lookup.unresponsive() {
                    self.table.remove(&dead);
                }
                if let Some(reply) = l.reply.take() {
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// When [`OpenMode::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let lookups = self
            .lookups
            .values()
            .filter_map(|l| l.lookup.poll_timeout())
            .min();
        let checks = self.checks.values().min().copied();
        let waits = self
            .waiting
            .values()
            .flatten()
            .map(|w| w.since + CONNECT_WAIT)
            .min();
        [lookups, checks, waits].into_iter().flatten().min()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

/// FIND_NODE `qid` of lookup `l` on `conn`.
fn query(conn: ConnId, qid: u64, l: &Lookup) -> Output {
    Output::Send {
        id: conn,
        record: ControlOut::FindNode(FindNode {
            query_id: qid,
            target: bytes::Bytes::copy_from_slice(l.target().as_bytes()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::SeedableRng;
    use shoal_crypto::{Ed25519Signer, Signer};

    use super::*;
    use crate::discovery::sign_record;

    const NS: &[u8] = b"shoal-open-test";

    fn ident(seed: u64) -> Arc<Ed25519Signer> {
        Arc::new(Ed25519Signer::insecure_from_seed(seed))
    }

    fn addr(i: u64) -> SocketAddr {
        SocketAddr::from(([11, 0, (i >> 8) as u8, i as u8], 9000))
    }

    fn record(seed: u64) -> PeerRecord {
        sign_record(&*ident(seed), NS, addr(seed), 1_700_000_000_000)
    }

    fn conn(key: usize) -> ConnId {
        ConnId {
            shard: 0,
            key,
            generation: 1,
        }
    }

    fn drain(open: &mut OpenMode) -> Vec<Output> {
        std::iter::from_fn(|| open.poll_output()).collect()
    }

    fn queries(actions: &[Output]) -> Vec<(ConnId, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Output::Send {
                    id,
                    record: ControlOut::FindNode(msg),
                } => Some((*id, msg.query_id)),
                _ => None,
            })
            .collect()
    }

    fn dials(actions: &[Output]) -> Vec<PublicKey> {
        actions
            .iter()
            .filter_map(|a| match a {
                Output::Dial { peer, .. } => Some(peer.clone()),
                _ => None,
            })
            .collect()
    }

    /// A query whose connection was replaced (simultaneous-dial tie-break)
    /// is asked again on the new connection under the same id, and the
    /// answer that then arrives completes the lookup; otherwise the query
    /// would wait out its 5 s timeout and the node would be dropped from
    /// the table as unresponsive.
    #[test]
    fn a_replaced_connection_gets_the_query_again() {
        let now = Instant::now();
        let me = ident(1);
        let mut open = OpenMode::new(me.public_key(), NS.to_vec(), false).unwrap();
        let peer = ident(2);
        let connected = |k: &PublicKey| (k == peer.public_key()).then_some(conn(7));
        open.on_record(&record(2), &connected, now).unwrap();
        let (tx, mut rx) = oneshot::channel();
        let target = NodeId::from_bytes([0x55; 32]);
        assert!(open.start_lookup(target, Some(tx)).is_some());
        open.poll(&connected, now);
        let first = queries(&drain(&mut open));
        assert_eq!(first.len(), 1, "one known node, one query");
        assert_eq!(first[0].0, conn(7));

        // The connection is replaced: the same query goes out on the new one.
        open.handle_connected(peer.public_key(), conn(9));
        assert_eq!(queries(&drain(&mut open)), vec![(conn(9), first[0].1)]);

        // Its answer completes the lookup with the responder in the result.
        let answer = Nodes {
            query_id: first[0].1,
            nodes: vec![],
        };
        assert_eq!(open.on_nodes(peer.public_key(), &answer, now), 0);
        let connected9 = |k: &PublicKey| (k == peer.public_key()).then_some(conn(9));
        open.poll(&connected9, now);
        let result = rx.try_recv().expect("lookup finished");
        assert_eq!(result, vec![(peer.public_key().clone(), addr(2))]);
        // A duplicate answer (from the old connection) changes nothing.
        assert_eq!(open.on_nodes(peer.public_key(), &answer, now), 0);
        assert!(open
            .table
            .contains(&NodeId::from_public_key(peer.public_key()).unwrap()));
    }

    /// Nodes in the table whose addresses are dead: each failed dial fails
    /// its query at once, so the lookup ends without waiting out
    /// `CONNECT_WAIT` (3 s) per node (the clock does not move here); a node
    /// marked unreachable is not dialed again for a query.
    #[test]
    fn dead_addresses_fail_their_queries_at_once() {
        let now = Instant::now();
        let me = ident(1);
        let mut open = OpenMode::new(me.public_key(), NS.to_vec(), true).unwrap();
        let nobody = |_: &PublicKey| None;
        for seed in 2..=4 {
            open.on_record(&record(seed), &nobody, now).unwrap();
        }
        let (tx, mut rx) = oneshot::channel();
        let target = NodeId::from_bytes([0x55; 32]);
        assert!(open.start_lookup(target, Some(tx)).is_some());
        open.poll(&nobody, now);
        let dialed = dials(&drain(&mut open));
        assert_eq!(dialed.len(), 3, "every known node is dialed for its query");
        for peer in &dialed {
            open.handle_dial_failed(peer, now);
        }
        open.poll(&nobody, now);
        let result = rx.try_recv().expect("the lookup ended at once");
        assert!(result.is_empty(), "nobody answered: {result:?}");

        // A node marked unreachable fails a new lookup's query without a dial.
        open.on_record(&record(5), &nobody, now).unwrap();
        let five = ident(5).public_key().clone();
        open.handle_dial_failed(&five, now);
        let (tx, mut rx) = oneshot::channel();
        let target = NodeId::from_bytes([0x66; 32]);
        assert!(open.start_lookup(target, Some(tx)).is_some());
        drain(&mut open);
        open.poll(&nobody, now);
        assert!(
            !dials(&drain(&mut open)).contains(&five),
            "an unreachable node is not dialed again"
        );
        assert!(rx.try_recv().is_ok(), "and its lookup ends at once");
    }

    /// The join sequence: our own id twice, then one random id in every
    /// bucket farther than the closest neighbour, farthest first, then
    /// nothing until the refresh interval has passed.
    #[test]
    fn join_refreshes_every_bucket_beyond_the_closest_neighbour() {
        let now = Instant::now();
        let me = ident(1);
        let local = NodeId::from_public_key(me.public_key()).unwrap();
        let mut open = OpenMode::new(me.public_key(), NS.to_vec(), false).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(open.next_join_target(now, &mut rng), None, "empty table");

        let none = |_: &PublicKey| None;
        open.on_record(&record(2), &none, now).unwrap();
        let closest = local
            .distance(&NodeId::from_public_key(ident(2).public_key()).unwrap())
            .bucket_index()
            .unwrap();

        let mut targets = Vec::new();
        while let Some(t) = open.next_join_target(now, &mut rng) {
            targets.push(t);
            assert!(targets.len() <= 64, "the round must end");
        }
        assert_eq!(&targets[..2], &[local, local]);
        let buckets: Vec<usize> = targets[2..]
            .iter()
            .map(|t| local.distance(t).bucket_index().unwrap())
            .collect();
        let expected: Vec<usize> = (closest + 1..=255)
            .rev()
            .take(crate::control::join::MAX_BUCKET_REFRESH as usize)
            .collect();
        assert_eq!(buckets, expected);

        // The round repeats after the refresh interval.
        assert_eq!(
            open.next_join_target(now + REFRESH_INTERVAL / 2, &mut rng),
            None
        );
        assert_eq!(
            open.next_join_target(now + REFRESH_INTERVAL, &mut rng),
            Some(local)
        );
    }

    /// `handle_timeout` runs the join: a lookup of our own id as soon as
    /// the table has an entry (its query goes to that entry), one lookup at
    /// a time, the next only once the previous has ended.
    #[test]
    fn the_join_runs_one_lookup_at_a_time() {
        let now = Instant::now();
        let me = ident(1);
        let mut open = OpenMode::new(me.public_key(), NS.to_vec(), false).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let peer = ident(2);
        let connected = |k: &PublicKey| (k == peer.public_key()).then_some(conn(7));
        open.handle_timeout(now, &connected, &mut rng);
        assert!(
            drain(&mut open).is_empty(),
            "empty table: nothing to look up"
        );

        open.on_record(&record(2), &connected, now).unwrap();
        open.handle_timeout(now, &connected, &mut rng);
        let first = queries(&drain(&mut open));
        assert_eq!(first.len(), 1, "the join's first lookup asks node 2");
        assert_eq!(open.lookups.len(), 1);
        open.handle_timeout(now, &connected, &mut rng);
        assert_eq!(open.lookups.len(), 1, "the next waits for it to end");
        assert!(queries(&drain(&mut open)).is_empty());

        // Node 2 answers: the lookup ends and the next one starts.
        let answer = Nodes {
            query_id: first[0].1,
            nodes: vec![],
        };
        assert_eq!(open.on_nodes(peer.public_key(), &answer, now), 0);
        open.handle_timeout(now, &connected, &mut rng);
        assert!(open.lookups.is_empty(), "the first join lookup ended");
        open.handle_timeout(now, &connected, &mut rng);
        assert_eq!(open.lookups.len(), 1, "the second started");
        assert_eq!(queries(&drain(&mut open)).len(), 1);
    }

    /// Records are routed by kind; what does not belong to open mode, or
    /// does not verify, is counted, and a forged own record closes.
    #[test]
    fn records_are_checked_and_counted() {
        let now = Instant::now();
        let me = ident(1);
        let mut open = OpenMode::new(me.public_key(), NS.to_vec(), false).unwrap();
        let peer = ident(2).public_key().clone();
        let nobody = |_: &PublicKey| None;
        let peers = |records| Record::Peers(shoal_wire::Peers { peers: records });

        open.handle_record(&peer, conn(2), peers(vec![record(2)]), &nobody, now);
        assert!(drain(&mut open).is_empty(), "its own record: taken");
        assert!(open
            .table
            .contains(&NodeId::from_public_key(&peer).unwrap()));

        let two = vec![record(3), record(4)];
        open.handle_record(&peer, conn(2), peers(two), &nobody, now);
        assert!(matches!(
            drain(&mut open)[..],
            [Output::Refuse("unexpected_control_record")]
        ));

        let mut forged = record(3);
        forged.signature = vec![0u8; 64].into();
        open.handle_record(&peer, conn(2), peers(vec![forged.clone()]), &nobody, now);
        assert!(matches!(
            drain(&mut open)[..],
            [
                Output::Refuse("bad_peer_record"),
                Output::Close {
                    reason: CloseReason::ProtocolViolation,
                    ..
                }
            ]
        ));

        let nodes = Record::Nodes(Nodes {
            query_id: 1,
            nodes: vec![forged, record(4)],
        });
        open.handle_record(&peer, conn(2), nodes, &nobody, now);
        assert!(
            matches!(drain(&mut open)[..], [Output::Refuse("bad_peer_record")]),
            "counted once per answer"
        );

        let find = Record::FindNode(FindNode {
            query_id: 9,
            target: bytes::Bytes::copy_from_slice(&[0x55; 32]),
        });
        open.handle_record(&peer, conn(2), find, &nobody, now);
        let answer = drain(&mut open);
        assert!(
            matches!(&answer[..], [Output::Send { id, record: ControlOut::Nodes(n) }]
                if *id == conn(2) && n.query_id == 9 && n.nodes.len() == 1),
            "answered with the one record held"
        );
    }

    #[test]
    fn lookups_beyond_the_limit_are_refused() {
        let me = ident(1);
        let mut open = OpenMode::new(me.public_key(), NS.to_vec(), false).unwrap();
        let mut replies = Vec::new();
        for _ in 0..MAX_LOOKUPS {
            let (tx, rx) = oneshot::channel();
            open.handle_lookup([0x55; 32], tx);
            replies.push(rx);
        }
        assert!(drain(&mut open).is_empty());
        let (tx, mut rx) = oneshot::channel();
        open.handle_lookup([0x55; 32], tx);
        assert!(matches!(
            drain(&mut open)[..],
            [Output::Refuse("too_many_lookups")]
        ));
        assert!(rx.try_recv().is_err(), "its reply was dropped");
    }
}
