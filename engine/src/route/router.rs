//! The sans-IO router: one per node (see the module docs for the design).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use shoal_crypto::{Identity, PublicKey, SealError, SEAL_OVERHEAD};

use super::config::RouteConfig;
use super::envelope::{Envelope, Frame, ParseError};
use crate::clock::Clock;
use crate::gossip::budget::Budgets;
use crate::gossip::core::micros;
use crate::gossip::seen::{Seen, SeenCache};
use crate::gossip::MessageId;

/// Appended to the node's namespace for routed-message signatures.
pub const ROUTE_NAMESPACE_SUFFIX: &[u8] = b"/route";

/// Events kept for the driver at most (it drains them after every input).
const MAX_EVENTS: usize = 1024;

/// An envelope for one neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: PublicKey,
    pub bytes: Bytes,
}

/// Something the driver acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message for this node, opened: once per id.
    Delivered {
        id: MessageId,
        channel: u32,
        payload: Bytes,
    },
    /// This neighbour sent `penalty_threshold` malformed or forged
    /// envelopes (reported once; its envelopes are ignored from then on).
    Misbehaving {
        peer: PublicKey,
        reason: &'static str,
    },
}

/// Why a local message was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Larger than `route.max_payload`.
    #[error("message larger than route.max_payload")]
    TooLarge,
    /// No neighbour to hand it to.
    #[error("no route to the target")]
    NoRoute,
    /// The target's key cannot receive sealed messages.
    #[error("cannot seal to the target: {0}")]
    Seal(SealError),
    /// `route.max_queued_bytes` are waiting already.
    #[error("routed output queue full")]
    Full,
    /// The engine's driver ended (the network shut down); the router
    /// itself never returns it.
    #[error("routing closed")]
    Closed,
}

/// Counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages for this node, opened and handed to the driver.
    pub delivered: u64,
    /// Envelopes sent on behalf of others.
    pub forwarded: u64,
    /// Envelopes whose id was taken already (a conforming relay's second
    /// path, or a replay).
    pub duplicates: u64,
    /// Older than the age window or the seen-cache's floor.
    pub too_old: u64,
    /// Further ahead than the allowed clock skew.
    pub too_new: u64,
    /// Unparsable envelopes.
    pub malformed: u64,
    /// Envelopes whose origin signature did not verify.
    pub forged: u64,
    /// Messages for this node that did not open (sealed to another key, or
    /// re-signed by another origin).
    pub undecryptable: u64,
    /// Dropped by a neighbour's or an origin's rate budget.
    pub rate_limited: u64,
    /// Relayed messages that had no hop left.
    pub hop_limit: u64,
    /// Relayed messages with no neighbour to go to.
    pub no_route: u64,
    /// Relayed messages dropped because the output queue was full.
    pub dropped_full: u64,
}

/// A node's routed unicast state.
pub struct Router {
    config: RouteConfig,
    identity: Identity,
    namespace: Vec<u8>,
    /// `now` ↔ the origin clock (microseconds since the Unix epoch).
    clock: Clock,
    last_seq: u64,
    /// Each neighbour and the neighbours it advertised. Ordered, so the
    /// same inputs always choose the same next hops.
    neighbours: BTreeMap<PublicKey, BTreeSet<PublicKey>>,
    /// Our neighbour list changed since we last advertised it.
    advertise: bool,
    penalties: HashMap<PublicKey, u32>,
    seen: SeenCache,
    origins: Budgets<PublicKey>,
    peers: Budgets<PublicKey>,
    transmits: VecDeque<Transmit>,
    queued_bytes: usize,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Router {
    /// A node with no neighbours. `unix_micros` is the wall clock at `now`;
    /// `namespace` the node's signature namespace; `config` must be valid
    /// ([`RouteConfig::validate`]).
    pub fn new(
        config: RouteConfig,
        identity: Identity,
        namespace: &[u8],
        now: Instant,
        unix_micros: u64,
    ) -> Self {
        let mut ns = namespace.to_vec();
        ns.extend_from_slice(ROUTE_NAMESPACE_SUFFIX);
        Self {
            seen: SeenCache::new(
                config.seen_capacity,
                config.max_age + config.max_clock_skew,
                usize::MAX,
            ),
            origins: Budgets::new(config.max_tracked),
            peers: Budgets::new(config.max_tracked),
            config,
            identity,
            namespace: ns,
            clock: Clock::from_micros(now, unix_micros),
            last_seq: 0,
            neighbours: BTreeMap::new(),
            advertise: false,
            penalties: HashMap::new(),
            transmits: VecDeque::new(),
            queued_bytes: 0,
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    // ---- getters ----

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The origin clock at `now`, in microseconds.
    pub fn unix_micros(&self, now: Instant) -> u64 {
        self.clock.unix_micros(now)
    }

    pub fn is_neighbour(&self, peer: &PublicKey) -> bool {
        self.neighbours.contains_key(peer)
    }

    /// Neighbours taking part now.
    pub fn neighbours(&self) -> usize {
        self.neighbours.len()
    }

    pub fn neighbour_keys(&self) -> Vec<PublicKey> {
        self.neighbours.keys().cloned().collect()
    }

    /// Nodes within two hops (neighbours and the neighbours they
    /// advertised), this node aside.
    pub fn known(&self) -> usize {
        let me = self.identity.public_key();
        let mut all: BTreeSet<&PublicKey> = self.neighbours.keys().collect();
        all.extend(self.neighbours.values().flatten());
        all.remove(me);
        all.len()
    }

    // ---- handle_* ----

    /// A connected peer takes part (beyond `route.max_neighbours` it is
    /// ignored).
    pub fn handle_neighbor_up(&mut self, peer: PublicKey) {
        if peer == *self.identity.public_key()
            || self.neighbours.len() >= self.config.max_neighbours
            || self.neighbours.contains_key(&peer)
        {
            return;
        }
        self.neighbours.insert(peer, BTreeSet::new());
        self.advertise = true;
    }

    pub fn handle_neighbor_down(&mut self, peer: &PublicKey) {
        if self.neighbours.remove(peer).is_some() {
            self.advertise = true;
        }
        self.penalties.remove(peer);
    }

    /// A frame from the neighbour `from`. An envelope's checks run cheapest
    /// first: the neighbour's budget, the parse, the seen-cache, the age
    /// window, the origin's signature, the origin's budget.
    pub fn handle_frame(&mut self, now: Instant, from: &PublicKey, bytes: &Bytes) {
        if !self.neighbours.contains_key(from) || self.is_banned(from) {
            return;
        }
        let (rate, burst) = (
            self.config.peer_rate,
            self.config.peer_rate.saturating_mul(2),
        );
        if !self.peers.take(from, now, rate, burst) {
            self.stats.rate_limited += 1;
            return;
        }
        let max_sealed = self.config.max_payload + SEAL_OVERHEAD;
        let env = match Frame::parse(bytes, max_sealed, self.config.max_neighbours) {
            Ok(Frame::Envelope(env)) => env,
            Ok(Frame::Neighbours(keys)) => {
                if let Some(theirs) = self.neighbours.get_mut(from) {
                    *theirs = keys.into_iter().collect();
                }
                return;
            }
            Err(e) => {
                self.stats.malformed += 1;
                self.penalize(from, parse_label(e));
                return;
            }
        };
        if self.seen.contains(&env.id) {
            self.stats.duplicates += 1;
            return;
        }
        let clock = self.unix_micros(now);
        let age = micros(self.config.max_age);
        if env.id.seq.saturating_add(age) <= clock
            || self.seen.floor().is_some_and(|f| env.id.seq <= f)
        {
            self.stats.too_old += 1;
            return;
        }
        if env.id.seq > clock.saturating_add(micros(self.config.max_clock_skew)) {
            self.stats.too_new += 1;
            return;
        }
        let signed = Envelope::signed_bytes(env.id.seq, env.channel, &env.target, &env.sealed);
        let scheme = self.identity.scheme();
        if scheme
            .verify(&env.id.origin, &self.namespace, &signed, &env.signature)
            .is_err()
        {
            self.stats.forged += 1;
            self.penalize(from, "bad_signature");
            return;
        }
        let (rate, burst) = (
            self.config.origin_rate,
            self.config.origin_rate.saturating_mul(2),
        );
        if !self.origins.take(&env.id.origin, now, rate, burst) {
            self.stats.rate_limited += 1;
            return;
        }
        self.seen.insert(now, env.id.clone(), Seen::Accepted(None));
        if env.target == *self.identity.public_key() {
            self.deliver(env);
            return;
        }
        let hops = env.hops_left.min(self.config.max_hops);
        if hops == 0 {
            self.stats.hop_limit += 1;
            return;
        }
        let next = self.next_hops(&env.target, Some(from), &env.id.origin);
        if next.is_empty() {
            self.stats.no_route += 1;
            return;
        }
        let relayed = Envelope {
            hops_left: hops - 1,
            ..env
        }
        .emit();
        for to in next {
            if self.queued_bytes + relayed.len() > self.config.max_queued_bytes {
                self.stats.dropped_full += 1;
                break;
            }
            self.stats.forwarded += 1;
            self.queue(to, relayed.clone());
        }
    }

    // ---- mutators ----

    /// Sends `payload` to `target` on `channel` through the neighbours,
    /// sealed to the target and signed; returns its id.
    pub fn send(
        &mut self,
        now: Instant,
        target: &PublicKey,
        channel: u32,
        payload: &[u8],
    ) -> Result<MessageId, SendError> {
        if payload.len() > self.config.max_payload {
            return Err(SendError::TooLarge);
        }
        let me = self.identity.public_key().clone();
        let next = self.next_hops(target, None, &me);
        if next.is_empty() {
            return Err(SendError::NoRoute);
        }
        let seq = self.unix_micros(now).max(self.last_seq + 1);
        let id = MessageId { origin: me, seq };
        let aad = Envelope::sealed_aad(&id, channel);
        let sealed = self
            .identity
            .scheme()
            .seal(target, &aad, payload)
            .map_err(SendError::Seal)?;
        let signed = Envelope::signed_bytes(seq, channel, target, &sealed);
        let signature = self.identity.sign(&self.namespace, &signed);
        let bytes = Envelope {
            id: id.clone(),
            hops_left: self.config.max_hops,
            channel,
            target: target.clone(),
            sealed: Bytes::from(sealed),
            signature,
        }
        .emit();
        if self.queued_bytes + bytes.len() * next.len() > self.config.max_queued_bytes {
            return Err(SendError::Full);
        }
        self.last_seq = seq;
        self.seen.insert(now, id.clone(), Seen::Accepted(None));
        for to in next {
            self.queue(to, bytes.clone());
        }
        Ok(id)
    }

    // ---- poll_* ----

    /// The next frame to send. A changed neighbour list goes to every
    /// neighbour first (once, however many changes it gathered).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if std::mem::take(&mut self.advertise) {
            let list = Frame::emit_neighbours(self.neighbours.keys());
            let to: Vec<PublicKey> = self.neighbours.keys().cloned().collect();
            for peer in to {
                self.queued_bytes += list.len();
                self.transmits.push_front(Transmit {
                    to: peer,
                    bytes: list.clone(),
                });
            }
        }
        let t = self.transmits.pop_front()?;
        self.queued_bytes -= t.bytes.len();
        Some(t)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals ----

    /// The target itself when it is a neighbour; otherwise up to `fanout`
    /// neighbours that advertise it as theirs; otherwise the `fanout`
    /// neighbours closest to it by key distance. Never `from` or the
    /// origin.
    fn next_hops(
        &self,
        target: &PublicKey,
        from: Option<&PublicKey>,
        origin: &PublicKey,
    ) -> Vec<PublicKey> {
        if self.neighbours.contains_key(target) {
            return vec![target.clone()];
        }
        let usable = |n: &&PublicKey| Some(*n) != from && *n != origin && !self.is_banned(n);
        let mut candidates: Vec<&PublicKey> = self
            .neighbours
            .iter()
            .filter(|(n, theirs)| usable(n) && theirs.contains(target))
            .map(|(n, _)| n)
            .collect();
        if candidates.is_empty() {
            candidates = self.neighbours.keys().filter(usable).collect();
        }
        candidates.sort_by_cached_key(|n| distance(n, target));
        candidates
            .into_iter()
            .take(self.config.fanout)
            .cloned()
            .collect()
    }

    fn deliver(&mut self, env: Envelope) {
        let aad = Envelope::sealed_aad(&env.id, env.channel);
        match self.identity.open_sealed(&aad, &env.sealed) {
            Ok(payload) => {
                self.stats.delivered += 1;
                self.push_event(Event::Delivered {
                    id: env.id,
                    channel: env.channel,
                    payload: Bytes::from(payload),
                });
            }
            // The origin signed a box that is not ours to open: the relay
            // that brought it is not at fault.
            Err(_) => self.stats.undecryptable += 1,
        }
    }

    fn queue(&mut self, to: PublicKey, bytes: Bytes) {
        self.queued_bytes += bytes.len();
        self.transmits.push_back(Transmit { to, bytes });
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() < MAX_EVENTS {
            self.events.push_back(e);
        }
    }

    fn is_banned(&self, peer: &PublicKey) -> bool {
        self.penalties
            .get(peer)
            .is_some_and(|&n| n >= self.config.penalty_threshold)
    }

    fn penalize(&mut self, peer: &PublicKey, reason: &'static str) {
        let n = self.penalties.entry(peer.clone()).or_insert(0);
        *n += 1;
        if *n == self.config.penalty_threshold {
            self.push_event(Event::Misbehaving {
                peer: peer.clone(),
                reason,
            });
        }
    }
}

/// Kademlia's XOR metric over the key bytes (shorter keys are padded with
/// zeros), compared as a big-endian number.
fn distance(a: &PublicKey, b: &PublicKey) -> [u8; 64] {
    let mut out = [0u8; 64];
    let (a, b) = (a.as_bytes(), b.as_bytes());
    for (i, o) in out.iter_mut().enumerate() {
        *o = a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    out
}

fn parse_label(e: ParseError) -> &'static str {
    match e {
        ParseError::TooLarge(_) => "route_too_large",
        _ => "route_malformed",
    }
}
