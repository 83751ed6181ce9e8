//! [`Gossip`]: one node's Plumtree state machine.
//!
//! # Design
//! There is one tree per origin (bounded: `max_origins`, the least recently
//! added forgotten first). For each origin, every neighbour is *eager* (full
//! messages from that origin are pushed to it) or *lazy* (only their ids are
//! announced to it, batched for `lazy_interval`); a neighbour is eager until
//! pruned. A message arriving a second time means the origin's eager links
//! hold a cycle: the neighbour it came from is made lazy for that origin and
//! told so (PRUNE with the origin), so each origin's eager links converge on
//! the tree its first message took (first arrivals: a low-latency tree) and a
//! node receives about one copy of each later message. One tree shared by
//! all origins, as in the Plumtree paper, degenerates under many origins
//! into a deep tree (every origin prunes other links) and was 4× slower than
//! flooding in the simulation.
//!
//! An id announced (IHAVE) but not received within `graft_timeout` is
//! grafted from its first announcer (GRAFT: the link becomes eager for that
//! origin in both directions and the message is sent): that repairs the tree where a node
//! or a frame went missing. (Unlike the Plumtree paper, a full message from
//! a lazy neighbour does not make it eager: with several messages in
//! flight, a push sent before our PRUNE arrived would otherwise undo the
//! prune and the cycle would never go away; only a GRAFT makes a link
//! eager.) If it still has not come `retry_timeout` later,
//! the next announcer is asked with a plain pull (IWANT), and so on; after
//! the last announcer the id is given up.
//!
//! A message is taken only after these checks, cheapest first: the
//! neighbour's message budget, size, not seen before, the origin's sequence
//! within `[now - max_age, now + max_clock_skew]` and above the seen-cache's
//! floor (no replay outlives the cache), the origin's signature
//! ([`Verifier`]), the origin's budget, then the application's
//! [`Verdict`]. A forged, rejected or oversized message, or an unparsable
//! frame, counts against the neighbour that sent it; at `penalty_threshold`
//! the neighbour is ignored from then on and reported
//! ([`Event::Misbehaving`]).
//!
//! Time is passed in; outputs are drained with [`Gossip::poll_transmit`] and
//! [`Gossip::poll_event`] after every input (each input queues a bounded
//! amount: at most one frame per neighbour and one event).

use std::collections::{BTreeMap, HashMap, VecDeque};

use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_crypto::PublicKey;

use super::auth::Verifier;
use super::budget::{Bucket, Budgets};
use super::config::GossipConfig;
use super::seen::{Seen, SeenCache, Stored};
use super::wire::{DataFrame, Frame, MessageId, ParseError};
use crate::clock::Clock;

/// Departed neighbours whose places in the trees are kept: a tree's lazy
/// set holds at most the current neighbours and these.
pub const DEPARTED_KEPT: usize = 32;

/// The application's verdict on a message whose signature verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it and forward it.
    Accept,
    /// Deliver it, do not forward it.
    AcceptNoForward,
    /// Do not deliver, do not forward; counts against the sender.
    Reject,
}

/// The application's validation hook.
pub type Validator = Box<dyn FnMut(&PublicKey, &Bytes) -> Verdict + Send>;

/// A frame for one neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: PublicKey,
    pub frame: Bytes,
}

/// What the core tells its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new message for the application (once per id).
    Delivered {
        id: MessageId,
        payload: Bytes,
        /// The neighbour it came from.
        from: PublicKey,
        /// Relays between the origin and us (0: from the origin itself).
        hops: u8,
    },
    /// A neighbour reached the penalty threshold; it is ignored from now on.
    Misbehaving {
        peer: PublicKey,
        reason: &'static str,
    },
}

/// Why a local message was not published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("message larger than gossip.max_message_size")]
    TooLarge,
    #[error("message id already used")]
    Duplicate,
}

/// Counters of one node (what the engine exports as metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub delivered: u64,
    pub published: u64,
    /// Full copies received of a message already taken.
    pub duplicates: u64,
    /// Full messages sent on behalf of others (eager pushes and answers).
    pub forwarded: u64,
    /// Messages received while a graft or pull for them was outstanding.
    pub pulled: u64,
    pub rejected: u64,
    pub forged: u64,
    /// Messages older than the age window or the cache's floor (replays).
    pub too_old: u64,
    pub too_new: u64,
    pub too_large: u64,
    /// Frames dropped by a neighbour's or an origin's budget.
    pub over_budget: u64,
    pub parse_errors: u64,
    /// Grafts sent (a lazy link made eager to get a missing message).
    pub tree_repairs: u64,
    pub prunes_sent: u64,
    pub iwants_sent: u64,
    pub ihave_ids_sent: u64,
    /// Missing ids given up (no announcer delivered) or not tracked (full).
    pub missing_given_up: u64,
    /// Frames from ignored (misbehaving) neighbours.
    pub ignored_frames: u64,
}

#[derive(Debug)]
struct Peer {
    budget: Bucket,
    control: Bucket,
    penalty: u32,
    banned: bool,
    pending: Vec<(MessageId, u8)>,
}

/// One origin's tree: the neighbours pruned from it (all others are
/// eager).
#[derive(Debug, Default)]
struct Tree {
    lazy: std::collections::BTreeSet<PublicKey>,
}

#[derive(Debug)]
struct Missing {
    announcers: VecDeque<PublicKey>,
    asked: bool,
    timer: (Instant, u64),
}

/// One node's gossip state machine (see the module docs).
pub struct Gossip {
    config: GossipConfig,
    verifier: Box<dyn Verifier>,
    validator: Validator,
    /// `now` ↔ the origin clock (microseconds since the Unix epoch).
    clock: Clock,
    /// Ordered, so that the frames an input produces come out in a
    /// deterministic order.
    peers: BTreeMap<PublicKey, Peer>,
    /// Neighbours that left whose places in the trees are kept (oldest
    /// first; at most [`DEPARTED_KEPT`]).
    departed: VecDeque<PublicKey>,
    seen: SeenCache,
    origins: Budgets<PublicKey>,
    trees: HashMap<PublicKey, Tree>,
    tree_order: VecDeque<PublicKey>,
    missing: HashMap<MessageId, Missing>,
    timers: BTreeMap<(Instant, u64), MessageId>,
    timer_seq: u64,
    lazy_deadline: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Gossip {
    /// A node with no neighbours. `unix_micros` is the wall clock at `now`
    /// (origins' sequences are checked against it); `config` must be valid
    /// ([`GossipConfig::validate`]).
    pub fn new(
        config: GossipConfig,
        verifier: Box<dyn Verifier>,
        validator: Validator,
        now: Instant,
        unix_micros: u64,
    ) -> Self {
        Self {
            seen: SeenCache::new(
                config.seen_capacity,
                config.max_age + config.max_clock_skew,
                config.cache_bytes,
            ),
            origins: Budgets::new(config.max_origins),
            trees: HashMap::new(),
            tree_order: VecDeque::new(),
            config,
            verifier,
            validator,
            clock: Clock::from_micros(now, unix_micros),
            peers: BTreeMap::new(),
            departed: VecDeque::new(),
            missing: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            lazy_deadline: None,
            transmits: VecDeque::new(),
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

    /// Whether `origin`'s messages are pushed to `peer`.
    pub fn is_eager(&self, origin: &PublicKey, peer: &PublicKey) -> bool {
        self.peers.get(peer).is_some_and(|p| !p.banned)
            && !self
                .trees
                .get(origin)
                .is_some_and(|t| t.lazy.contains(peer))
    }

    /// Neighbours `origin`'s messages are pushed to.
    pub fn eager_count(&self, origin: &PublicKey) -> usize {
        self.peers
            .keys()
            .filter(|k| self.is_eager(origin, k))
            .count()
    }

    /// Origins with a tree.
    pub fn trees(&self) -> usize {
        self.trees.len()
    }

    pub fn neighbors(&self) -> usize {
        self.peers.len()
    }

    pub fn neighbor_keys(&self) -> Vec<PublicKey> {
        self.peers.keys().cloned().collect()
    }

    pub fn seen_len(&self) -> usize {
        self.seen.len()
    }

    pub fn missing_len(&self) -> usize {
        self.missing.len()
    }

    pub fn has_seen(&self, id: &MessageId) -> bool {
        self.seen.contains(id)
    }

    // ---- inputs ----

    /// A neighbour connected: it joins as eager.
    pub fn handle_neighbor_up(&mut self, now: Instant, peer: PublicKey) {
        if self.peers.contains_key(&peer) || self.peers.len() >= self.config.max_peers {
            return;
        }
        self.departed.retain(|d| *d != peer);
        let c = &self.config;
        self.peers.insert(
            peer,
            Peer {
                budget: Bucket::full(c.peer_burst, now),
                control: Bucket::full(c.peer_control_rate, now),
                penalty: 0,
                banned: false,
                pending: Vec::new(),
            },
        );
    }

    /// A neighbour disconnected: it no longer takes part. Its place in the
    /// trees is kept for the last [`DEPARTED_KEPT`] neighbours that left, so
    /// one that reconnects (a restart, a broken connection) is lazy again
    /// where it was pruned instead of pushed every message anew.
    pub fn handle_neighbor_down(&mut self, _now: Instant, peer: &PublicKey) {
        if self.peers.remove(peer).is_none() {
            return;
        }
        self.departed.retain(|d| d != peer);
        self.departed.push_back(peer.clone());
        if self.departed.len() > DEPARTED_KEPT {
            if let Some(old) = self.departed.pop_front() {
                for t in self.trees.values_mut() {
                    t.lazy.remove(&old);
                }
            }
        }
    }

    /// A frame from neighbour `from`.
    pub fn handle_frame(&mut self, now: Instant, from: &PublicKey, bytes: &Bytes) {
        let Some(p) = self.peers.get(from) else {
            self.stats.ignored_frames += 1;
            return;
        };
        if p.banned {
            self.stats.ignored_frames += 1;
            return;
        }
        match Frame::parse(bytes, self.config.max_ids_per_frame) {
            Ok(Frame::Data(d)) => self.on_data(now, from, d),
            Ok(Frame::IHave(ids)) => self.on_ihave(now, from, ids),
            Ok(Frame::Graft(ids)) => {
                if self.control_budget(now, from, ids.len()) {
                    for id in &ids {
                        self.set_eager(&id.origin, from, true);
                    }
                    self.send_stored(from, &ids);
                }
            }
            Ok(Frame::IWant(ids)) => {
                if self.control_budget(now, from, ids.len()) {
                    self.send_stored(from, &ids);
                }
            }
            Ok(Frame::Prune(origin)) => {
                if self.control_budget(now, from, 1) {
                    self.set_eager(&origin, from, false);
                }
            }
            Err(e) => self.on_parse_error(from, e),
        }
    }

    /// Publishes a message signed by this node (see `super::auth`): pushed
    /// to every eager neighbour, announced to the lazy ones. Not delivered
    /// locally.
    pub fn publish(&mut self, now: Instant, frame: DataFrame) -> Result<MessageId, PublishError> {
        if frame.payload.len() > self.config.max_message_size {
            return Err(PublishError::TooLarge);
        }
        if self.seen.contains(&frame.id) {
            return Err(PublishError::Duplicate);
        }
        let id = frame.id.clone();
        self.stats.published += 1;
        self.accept(now, None, frame, true);
        Ok(id)
    }

    /// Fires whatever is due at `now`: graft and pull timers, the batched
    /// announcements, cache expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.seen.expire(now);
        if self.lazy_deadline.is_some_and(|d| d <= now) {
            self.flush_lazy();
        }
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            self.missing_timer(now, id);
        }
    }

    // ---- outputs ----

    /// The next instant [`Gossip::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timers.keys().next().map(|k| k.0);
        match (t, self.lazy_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn send(&mut self, to: &PublicKey, frame: &Frame) {
        self.transmits.push_back(Transmit {
            to: to.clone(),
            frame: frame.emit(),
        });
    }

    /// Changes `origin`'s tree (only an origin with a tree: trees are made
    /// for verified messages only).
    fn set_eager(&mut self, origin: &PublicKey, peer: &PublicKey, eager: bool) {
        if let Some(t) = self.trees.get_mut(origin) {
            if eager {
                t.lazy.remove(peer);
            } else if self.peers.contains_key(peer) {
                t.lazy.insert(peer.clone());
            }
        }
    }

    /// Makes sure `origin` has a tree (all neighbours eager), forgetting the
    /// oldest beyond `max_origins`.
    fn ensure_tree(&mut self, origin: &PublicKey) {
        if self.trees.contains_key(origin) {
            return;
        }
        while self.trees.len() >= self.config.max_origins {
            match self.tree_order.pop_front() {
                Some(old) => {
                    self.trees.remove(&old);
                }
                None => break,
            }
        }
        self.trees.insert(origin.clone(), Tree::default());
        self.tree_order.push_back(origin.clone());
    }

    fn penalize(&mut self, peer: &PublicKey, reason: &'static str) {
        let threshold = self.config.penalty_threshold;
        if let Some(p) = self.peers.get_mut(peer) {
            p.penalty = p.penalty.saturating_add(1);
            if p.penalty >= threshold && !p.banned {
                p.banned = true;
                p.pending.clear();
                tracing::debug!(%peer, reason, "gossip neighbour ignored after misbehaving");
                self.events.push_back(Event::Misbehaving {
                    peer: peer.clone(),
                    reason,
                });
            }
        }
    }

    fn on_parse_error(&mut self, from: &PublicKey, e: ParseError) {
        self.stats.parse_errors += 1;
        tracing::debug!(peer = %from, error = %e, "unparsable gossip frame");
        self.penalize(from, "malformed");
    }

    fn control_budget(&mut self, now: Instant, from: &PublicKey, n: usize) -> bool {
        let rate = self.config.peer_control_rate;
        let ok = self.peers.get_mut(from).is_some_and(|p| {
            p.control
                .take(now, u32::try_from(n.max(1)).unwrap_or(u32::MAX), rate, rate)
        });
        if !ok {
            self.stats.over_budget += 1;
        }
        ok
    }

    fn on_data(&mut self, now: Instant, from: &PublicKey, d: DataFrame) {
        let (rate, burst) = (self.config.peer_rate, self.config.peer_burst);
        if !self
            .peers
            .get_mut(from)
            .is_some_and(|p| p.budget.take(now, 1, rate, burst))
        {
            self.stats.over_budget += 1;
            return;
        }
        if d.payload.len() > self.config.max_message_size {
            self.stats.too_large += 1;
            self.penalize(from, "too_large");
            return;
        }
        if self.seen.contains(&d.id) {
            // Pruned even when it is lazy here: it pushed, so it thinks the
            // link is eager (our earlier PRUNE was lost).
            self.stats.duplicates += 1;
            self.set_eager(&d.id.origin, from, false);
            self.stats.prunes_sent += 1;
            self.send(from, &Frame::Prune(d.id.origin.clone()));
            return;
        }
        let clock = self.unix_micros(now);
        let age = micros(self.config.max_age);
        let skew = micros(self.config.max_clock_skew);
        if d.id.seq.saturating_add(age) <= clock || self.seen.floor().is_some_and(|f| d.id.seq <= f)
        {
            self.stats.too_old += 1;
            return;
        }
        if d.id.seq > clock.saturating_add(skew) {
            self.stats.too_new += 1;
            return;
        }
        if !self.verifier.verify(&d) {
            self.stats.forged += 1;
            self.penalize(from, "bad_signature");
            return;
        }
        if !self.origins.take(
            &d.id.origin,
            now,
            self.config.origin_rate,
            self.config.origin_burst,
        ) {
            self.stats.over_budget += 1;
            return;
        }
        match (self.validator)(&d.id.origin, &d.payload) {
            Verdict::Reject => {
                self.stats.rejected += 1;
                self.forget_missing(&d.id);
                self.seen.insert(now, d.id, Seen::Rejected);
                self.penalize(from, "rejected");
            }
            v => self.accept(now, Some(from), d, v == Verdict::Accept),
        }
    }

    fn forget_missing(&mut self, id: &MessageId) -> bool {
        match self.missing.remove(id) {
            Some(m) => {
                self.timers.remove(&m.timer);
                m.asked
            }
            None => false,
        }
    }

    /// Takes a verified, validated message (`from` is `None` for our own).
    fn accept(&mut self, now: Instant, from: Option<&PublicKey>, d: DataFrame, forward: bool) {
        if self.forget_missing(&d.id) {
            self.stats.pulled += 1;
        }
        let forward = forward && d.hops < self.config.max_hops;
        let stored = forward.then(|| Stored {
            signature: d.signature.clone(),
            payload: d.payload.clone(),
            hops: d.hops,
        });
        self.seen
            .insert(now, d.id.clone(), Seen::Accepted(stored.clone()));
        if let Some(from) = from {
            self.stats.delivered += 1;
            self.events.push_back(Event::Delivered {
                id: d.id.clone(),
                payload: d.payload.clone(),
                from: from.clone(),
                hops: d.hops,
            });
        }
        let Some(stored) = stored else { return };
        // Our own message goes out with hops 0, a relayed one with hops + 1.
        let out = if from.is_some() {
            stored.frame(&d.id)
        } else {
            d
        };
        let frame = Frame::Data(out.clone()).emit();
        let max_ids = self.config.max_ids_per_frame;
        let mut full = Vec::new();
        self.ensure_tree(&out.id.origin);
        let tree = self.trees.get(&out.id.origin);
        for (key, p) in &mut self.peers {
            if Some(key) == from || p.banned {
                continue;
            }
            if !tree.is_some_and(|t| t.lazy.contains(key)) {
                self.transmits.push_back(Transmit {
                    to: key.clone(),
                    frame: frame.clone(),
                });
                if from.is_some() {
                    self.stats.forwarded += 1;
                }
            } else {
                p.pending.push((out.id.clone(), out.hops));
                if p.pending.len() >= max_ids {
                    full.push(key.clone());
                }
            }
        }
        for key in full {
            self.flush_peer(&key);
        }
        if self.lazy_deadline.is_none() && self.peers.values().any(|p| !p.pending.is_empty()) {
            self.lazy_deadline = Some(now + self.config.lazy_interval);
        }
    }

    fn flush_peer(&mut self, key: &PublicKey) {
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        if p.pending.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut p.pending);
        self.stats.ihave_ids_sent += ids.len() as u64;
        self.send(key, &Frame::IHave(ids));
    }

    fn flush_lazy(&mut self) {
        self.lazy_deadline = None;
        let keys: Vec<PublicKey> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.pending.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.flush_peer(&k);
        }
    }

    fn on_ihave(&mut self, now: Instant, from: &PublicKey, ids: Vec<(MessageId, u8)>) {
        if !self.control_budget(now, from, ids.len()) {
            return;
        }
        for (id, _hops) in ids {
            if self.seen.contains(&id) {
                continue;
            }
            if let Some(m) = self.missing.get_mut(&id) {
                if m.announcers.len() < self.config.max_announcers && !m.announcers.contains(from) {
                    m.announcers.push_back(from.clone());
                }
                continue;
            }
            if self.missing.len() >= self.config.max_missing {
                self.stats.missing_given_up += 1;
                continue;
            }
            let timer = self.arm(now + self.config.graft_timeout, id.clone());
            self.missing.insert(
                id,
                Missing {
                    announcers: VecDeque::from([from.clone()]),
                    asked: false,
                    timer,
                },
            );
        }
    }

    fn arm(&mut self, at: Instant, id: MessageId) -> (Instant, u64) {
        self.timer_seq += 1;
        let key = (at, self.timer_seq);
        self.timers.insert(key, id);
        key
    }

    /// A missing message's timer fired: graft (first time) or pull from the
    /// next announcer still connected.
    fn missing_timer(&mut self, now: Instant, id: MessageId) {
        let Some(mut m) = self.missing.remove(&id) else {
            return;
        };
        let next = loop {
            match m.announcers.pop_front() {
                Some(a) if self.peers.get(&a).is_some_and(|p| !p.banned) => break Some(a),
                Some(_) => continue,
                None => break None,
            }
        };
        let Some(peer) = next else {
            self.stats.missing_given_up += 1;
            return;
        };
        if m.asked {
            self.stats.iwants_sent += 1;
            self.send(&peer, &Frame::IWant(vec![id.clone()]));
        } else {
            self.stats.tree_repairs += 1;
            self.set_eager(&id.origin, &peer, true);
            self.send(&peer, &Frame::Graft(vec![id.clone()]));
        }
        m.asked = true;
        m.timer = self.arm(now + self.config.retry_timeout, id.clone());
        self.missing.insert(id, m);
    }

    fn send_stored(&mut self, to: &PublicKey, ids: &[MessageId]) {
        for id in ids {
            if let Some(Seen::Accepted(Some(st))) = self.seen.get(id) {
                let frame = Frame::Data(st.frame(id));
                self.stats.forwarded += 1;
                self.send(to, &frame);
            }
        }
    }
}

/// `Duration` in whole microseconds (saturating).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
