//! Whom the control shard dials, and when.
//!
//! # Design
//! Two kinds of dials go through [`Dialer`]:
//! - **requests** ([`Dialer::handle_request`]): open mode's queries and
//!   liveness checks, and the embedder's send-to-id. Dialed at the next
//!   [`Dialer::poll_dial`] unless the peer is ourselves, connected, being
//!   dialed or cooling down; refused (`max_outbound`) when the outbound
//!   slots are full. No state is kept for them.
//! - **the dial round**, every `dial_frequency` ([`Dialer::handle_timeout`]):
//!   every known address of an authorized peer (any peer in open mode) that
//!   is not connected, not being dialed and not cooling down, once its
//!   backoff has passed. The first `dial_quick_attempts` tries back off
//!   exponentially ([`super::dial_backoff`]), later ones wait
//!   `dial_backoff_max`, each scaled by a jitter of 0.75–1.25 so that a node
//!   that lost many peers at once does not redial them in step. A peer is
//!   never given up on while it is a candidate; a connected peer starts
//!   over, and so does one with a new address ([`Dialer::handle_new_address`]).
//!   The round ends early when the outbound slots fill.
//!
//! The **tie-break** of simultaneous dials keeps the connection dialed by
//! the smaller key ([`crate::peers`]). So that it rarely has to, a node
//! whose key is larger than the peer's first waits
//! [`LARGER_KEY_GRACE_PERIODS`] dial periods: the smaller key usually dials
//! first and no connection is replaced.
//!
//! [`Unreachable`] holds open mode's marks of nodes whose last dial failed
//! (its queries skip them for [`UNREACHABLE_FOR`]).
//!
//! The dialer decides; starting a dial (an outbound slot, the dialing mark,
//! a data shard) is the loop's ([`super::shards`]). What it needs to know
//! about the node at a decision it asks through [`DialView`], at that
//! moment, since each dial it starts changes the answers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_crypto::PublicKey;

use super::Output;
use crate::config::Config;
use crate::kademlia::NodeId;

/// A node whose key is larger than the peer's waits this many dial periods
/// before its first dial, so that when both know each other's address the
/// smaller key (whose connection the tie-break keeps) usually dials first and
/// no connection has to be replaced.
pub(crate) const LARGER_KEY_GRACE_PERIODS: u32 = 2;
/// A node whose dial failed is not dialed for open-mode queries for this
/// long: its queries fail at once.
pub(crate) const UNREACHABLE_FOR: Duration = Duration::from_secs(60);
/// Nodes remembered as unreachable (beyond this, the oldest mark goes).
pub(crate) const MAX_UNREACHABLE: usize = 1024;

/// The dialer's settings (from [`Config`]).
#[derive(Clone, Debug)]
pub(crate) struct DialPolicy {
    pub me: PublicKey,
    /// Open mode: any peer may be dialed, not only authorized ones.
    pub open: bool,
    pub frequency: Duration,
    pub quick_attempts: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_outbound: usize,
}

impl DialPolicy {
    pub(crate) fn from_config(cfg: &Config) -> Self {
        Self {
            me: cfg.identity.signer.public_key().clone(),
            open: cfg.discovery.open,
            frequency: cfg.discovery.dial_frequency,
            quick_attempts: cfg.discovery.dial_quick_attempts,
            backoff_min: cfg.discovery.dial_backoff_min,
            backoff_max: cfg.discovery.dial_backoff_max,
            max_outbound: cfg.limits.max_outbound,
        }
    }
}

/// What the dialer asks about the node when it decides on a dial.
pub(crate) trait DialView {
    /// An established connection to `peer` exists.
    fn is_connected(&self, peer: &PublicKey) -> bool;
    /// A dial to `peer` is in progress.
    fn is_dialing(&self, peer: &PublicKey) -> bool;
    /// `peer` is cooling down after misbehaving (refused both ways).
    fn is_cooling(&self, peer: &PublicKey, now: Instant) -> bool;
    /// Outbound connections alive (connecting, handshaking or established).
    fn outbound(&self) -> usize;
}

/// Consecutive tries to a peer that did not connect, and when the next
/// may start.
struct DialState {
    failures: u32,
    next_allowed: Instant,
}

/// A dial round in progress: what is left of its candidates.
struct Round {
    candidates: Vec<(PublicKey, SocketAddr)>,
    /// Every candidate of the round (peers not among them are forgotten).
    keys: HashSet<PublicKey>,
    authorized: Arc<HashSet<PublicKey>>,
    /// Peers being dialed when the round started.
    dialing: HashSet<PublicKey>,
}

/// See the module docs.
pub(crate) struct Dialer {
    policy: DialPolicy,
    states: HashMap<PublicKey, DialState>,
    next_round: Instant,
    requests: VecDeque<(PublicKey, SocketAddr)>,
    round: Option<Round>,
}

impl Dialer {
    /// The first round is due at `now`.
    pub(crate) fn new(policy: DialPolicy, now: Instant) -> Self {
        Self {
            policy,
            states: HashMap::new(),
            next_round: now,
            requests: VecDeque::new(),
            round: None,
        }
    }

    /// Dial `peer` at `addr` at the next [`Dialer::poll_dial`].
    pub(crate) fn handle_request(&mut self, peer: PublicKey, addr: SocketAddr) {
        self.requests.push_back((peer, addr));
    }

    /// `peer` has a new address: its backoff starts over and it may be
    /// dialed in the next round.
    pub(crate) fn handle_new_address(&mut self, peer: &PublicKey, now: Instant) {
        if let Some(st) = self.states.get_mut(peer) {
            st.next_allowed = st.next_allowed.min(now);
            st.failures = 0;
        }
    }

    /// When the next dial round is due.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next_round
    }

    /// Starts the dial round if it is due: `candidates` are the known
    /// addresses, `authorized` and `dialing` the authorized keys and the
    /// peers being dialed now.
    pub(crate) fn handle_timeout(
        &mut self,
        now: Instant,
        candidates: HashMap<PublicKey, SocketAddr>,
        authorized: Arc<HashSet<PublicKey>>,
        dialing: HashSet<PublicKey>,
    ) {
        if now < self.next_round {
            return;
        }
        self.next_round = now + self.policy.frequency;
        self.round = Some(Round {
            keys: candidates.keys().cloned().collect(),
            candidates: candidates.into_iter().collect(),
            authorized,
            dialing,
        });
    }

    /// The next dial to start ([`Output::Connect`]) or refusal to count,
    /// requests first; `None` once nothing is left to decide.
    pub(crate) fn poll_dial<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        view: &dyn DialView,
        rng: &mut R,
    ) -> Option<Output> {
        while let Some((peer, addr)) = self.requests.pop_front() {
            if peer == self.policy.me
                || view.is_connected(&peer)
                || view.is_dialing(&peer)
                || view.is_cooling(&peer, now)
            {
                continue;
            }
            if view.outbound() >= self.policy.max_outbound {
                return Some(Output::Refuse("max_outbound"));
            }
            return Some(Output::Connect { peer, addr });
        }
        if let Some(dial) = self.poll_round(now, view, rng) {
            return Some(dial);
        }
        // The round is over: forget peers we can no longer dial (bounded by
        // the candidates).
        let round = self.round.take()?;
        if self.states.len() > round.keys.len() {
            self.states.retain(|k, _| round.keys.contains(k));
        }
        None
    }

    fn poll_round<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        view: &dyn DialView,
        rng: &mut R,
    ) -> Option<Output> {
        let round = self.round.as_mut()?;
        let p = &self.policy;
        while let Some((peer, addr)) = round.candidates.pop() {
            if peer == p.me || (!p.open && !round.authorized.contains(&peer)) {
                continue;
            }
            if view.is_connected(&peer) {
                self.states.remove(&peer);
                continue;
            }
            // A peer cooling down would be refused on both sides.
            if round.dialing.contains(&peer) || view.is_cooling(&peer, now) {
                continue;
            }
            let grace = if p.me > peer {
                p.frequency * LARGER_KEY_GRACE_PERIODS
            } else {
                Duration::ZERO
            };
            let st = self.states.entry(peer.clone()).or_insert(DialState {
                failures: 0,
                next_allowed: now + grace,
            });
            if now < st.next_allowed {
                continue;
            }
            if view.outbound() >= p.max_outbound {
                round.candidates.clear();
                return Some(Output::Refuse("max_outbound"));
            }
            // Backoff for the next try if this one does not connect.
            st.failures = st.failures.saturating_add(1);
            let base = super::dial_backoff::backoff(
                st.failures,
                p.quick_attempts,
                p.backoff_min,
                p.backoff_max,
            );
            let jitter = rng.gen_range(0.75..1.25);
            st.next_allowed = now + base.mul_f64(jitter);
            return Some(Output::Connect { peer, addr });
        }
        None
    }
}

/// Open mode's nodes whose last dial failed, each until a deadline
/// (bounded by [`MAX_UNREACHABLE`]: the mark closest to its end goes first).
pub(crate) struct Unreachable {
    until: HashMap<NodeId, Instant>,
}

impl Unreachable {
    pub(crate) fn new() -> Self {
        Self {
            until: HashMap::new(),
        }
    }

    /// A dial to `id` failed at `now`: unreachable for [`UNREACHABLE_FOR`].
    pub(crate) fn handle_dial_failed(&mut self, id: NodeId, now: Instant) {
        self.until.retain(|_, until| *until > now);
        if self.until.len() >= MAX_UNREACHABLE {
            if let Some(oldest) = self
                .until
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(id, _)| *id)
            {
                self.until.remove(&oldest);
            }
        }
        self.until.insert(id, now + UNREACHABLE_FOR);
    }

    /// `id` connected, or has a new address: no longer marked.
    pub(crate) fn handle_reachable(&mut self, id: &NodeId) {
        self.until.remove(id);
    }

    /// Whether `id` is marked at `now`.
    pub(crate) fn is_marked(&self, id: &NodeId, now: Instant) -> bool {
        self.until.get(id).is_some_and(|t| *t > now)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use shoal_crypto::{Ed25519Signer, Signer};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn key(seed: u64) -> PublicKey {
        Ed25519Signer::insecure_from_seed(seed).public_key().clone()
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([11, 0, 0, i], 9000))
    }

    /// A node nobody is connected to, with a settable outbound count.
    #[derive(Default)]
    struct Node {
        connected: RefCell<HashSet<PublicKey>>,
        dialing: RefCell<HashSet<PublicKey>>,
        cooling: RefCell<HashSet<PublicKey>>,
        outbound: Cell<usize>,
    }

    impl DialView for Node {
        fn is_connected(&self, peer: &PublicKey) -> bool {
            self.connected.borrow().contains(peer)
        }
        fn is_dialing(&self, peer: &PublicKey) -> bool {
            self.dialing.borrow().contains(peer)
        }
        fn is_cooling(&self, peer: &PublicKey, _now: Instant) -> bool {
            self.cooling.borrow().contains(peer)
        }
        fn outbound(&self) -> usize {
            self.outbound.get()
        }
    }

    fn policy(me: PublicKey) -> DialPolicy {
        DialPolicy {
            me,
            open: false,
            frequency: 100 * MS,
            quick_attempts: 3,
            backoff_min: 1000 * MS,
            backoff_max: 10_000 * MS,
            max_outbound: 8,
        }
    }

    /// Every dial the dialer starts now (dials "start" by marking the peer
    /// dialing and taking an outbound slot, as the loop does).
    fn drain(d: &mut Dialer, now: Instant, node: &Node, rng: &mut StdRng) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(o) = d.poll_dial(now, node, rng) {
            if let Output::Connect { peer, .. } = &o {
                node.dialing.borrow_mut().insert(peer.clone());
                node.outbound.set(node.outbound.get() + 1);
            }
            out.push(o);
        }
        out
    }

    fn dialed(out: &[Output]) -> Vec<PublicKey> {
        out.iter()
            .filter_map(|o| match o {
                Output::Connect { peer, .. } => Some(peer.clone()),
                _ => None,
            })
            .collect()
    }

    /// A peer whose key is larger than ours, so no grace period applies.
    fn larger_peer(me: &PublicKey) -> PublicKey {
        (2..).map(key).find(|k| k > me).unwrap()
    }

    /// A round every `frequency`: the peer is dialed, and after each failed
    /// dial waits its backoff (doubling for the quick attempts, then the
    /// maximum), jittered by 0.75–1.25, before the next.
    #[test]
    fn a_peer_that_does_not_connect_is_retried_after_its_backoff() {
        let t0 = Instant::now();
        let me = key(1);
        let peer = larger_peer(&me);
        let mut rng = StdRng::seed_from_u64(7);
        let mut d = Dialer::new(policy(me), t0);
        let node = Node::default();
        let authorized = Arc::new(HashSet::from([peer.clone()]));
        let round = |d: &mut Dialer, now: Instant, rng: &mut StdRng| {
            d.handle_timeout(
                now,
                HashMap::from([(peer.clone(), addr(2))]),
                authorized.clone(),
                node.dialing.borrow().clone(),
            );
            drain(d, now, &node, rng)
        };

        let mut now = t0;
        let mut tries = vec![now];
        assert_eq!(dialed(&round(&mut d, now, &mut rng)), vec![peer.clone()]);
        while tries.len() < 6 {
            // The dial failed.
            node.dialing.borrow_mut().clear();
            node.outbound.set(0);
            now += d.poll_timeout().saturating_duration_since(now).max(MS);
            if !dialed(&round(&mut d, now, &mut rng)).is_empty() {
                tries.push(now);
            }
        }
        let waits: Vec<Duration> = tries.windows(2).map(|w| w[1] - w[0]).collect();
        for (i, (wait, base)) in waits
            .iter()
            .zip([1000, 2000, 10_000, 10_000, 10_000])
            .enumerate()
        {
            let base = base * MS;
            // Rounds come every 100 ms: a dial waits for the first after
            // its backoff.
            assert!(
                *wait >= base.mul_f64(0.75) && *wait <= base.mul_f64(1.25) + 100 * MS,
                "wait {i}: {wait:?} for a backoff of {base:?}"
            );
        }
        // Connected: the peer is not dialed, and its backoff starts over.
        node.dialing.borrow_mut().clear();
        node.connected.borrow_mut().insert(peer.clone());
        now += 100 * MS;
        assert!(round(&mut d, now, &mut rng).is_empty());
        node.connected.borrow_mut().clear();
        now += 100 * MS;
        assert_eq!(dialed(&round(&mut d, now, &mut rng)), vec![peer.clone()]);
    }

    #[test]
    fn a_larger_key_waits_two_periods_before_its_first_dial() {
        let t0 = Instant::now();
        let me = key(1);
        let smaller = (2..).map(key).find(|k| *k < me).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut d = Dialer::new(policy(me), t0);
        let node = Node::default();
        let authorized = Arc::new(HashSet::from([smaller.clone()]));
        let mut at = |now: Instant| {
            d.handle_timeout(
                now,
                HashMap::from([(smaller.clone(), addr(2))]),
                authorized.clone(),
                HashSet::new(),
            );
            dialed(&drain(&mut d, now, &node, &mut rng))
        };
        assert!(at(t0).is_empty());
        assert!(at(t0 + 100 * MS).is_empty());
        assert_eq!(at(t0 + 200 * MS), vec![smaller.clone()]);
    }

    #[test]
    fn the_round_skips_whom_it_must_and_stops_when_outbound_is_full() {
        let t0 = Instant::now();
        let me = key(1);
        let peers: Vec<PublicKey> = (2..).map(key).filter(|k| *k > me).take(5).collect();
        let mut rng = StdRng::seed_from_u64(7);
        let mut pol = policy(me.clone());
        pol.max_outbound = 2;
        let mut d = Dialer::new(pol, t0);
        let node = Node::default();
        node.cooling.borrow_mut().insert(peers[0].clone());
        node.connected.borrow_mut().insert(peers[1].clone());
        let mut candidates: HashMap<PublicKey, SocketAddr> =
            peers.iter().map(|k| (k.clone(), addr(2))).collect();
        candidates.insert(me.clone(), addr(1));
        let stranger = larger_peer(&peers[4]);
        candidates.insert(stranger.clone(), addr(3));
        // Authorized: all but the stranger (and we are never dialed).
        let authorized = Arc::new(peers.iter().cloned().collect::<HashSet<_>>());
        d.handle_timeout(
            t0,
            candidates,
            authorized,
            HashSet::from([peers[2].clone()]),
        );
        let out = drain(&mut d, t0, &node, &mut rng);
        let got = dialed(&out);
        assert!(got.is_empty() || !got.contains(&peers[0]), "cooling");
        assert!(!got.contains(&peers[1]), "connected");
        assert!(!got.contains(&peers[2]), "being dialed");
        assert!(!got.contains(&stranger) && !got.contains(&me));
        assert_eq!(got.len(), 2, "peers 3 and 4 fill the outbound slots");
        assert!(matches!(out.last(), None | Some(Output::Connect { .. })));
        // A round with slots full: one refusal, and the round ends.
        let mut pol = policy(me.clone());
        pol.max_outbound = 0;
        let mut d = Dialer::new(pol, t0);
        let authorized = Arc::new(HashSet::from([peers[3].clone(), peers[4].clone()]));
        let candidates = HashMap::from([(peers[3].clone(), addr(2)), (peers[4].clone(), addr(3))]);
        d.handle_timeout(t0, candidates, authorized, HashSet::new());
        let out = drain(&mut d, t0, &Node::default(), &mut rng);
        assert!(matches!(out[..], [Output::Refuse("max_outbound")]));
        // Not due again before `frequency`.
        d.handle_timeout(t0 + 50 * MS, HashMap::new(), Arc::default(), HashSet::new());
        assert!(d.poll_dial(t0, &Node::default(), &mut rng).is_none());
        assert_eq!(d.poll_timeout(), t0 + 100 * MS);
    }

    #[test]
    fn requests_are_dialed_at_once_unless_pointless_or_over_the_limit() {
        let t0 = Instant::now();
        let me = key(1);
        let (a, b) = (key(2), key(3));
        let mut rng = StdRng::seed_from_u64(7);
        let mut pol = policy(me.clone());
        pol.max_outbound = 1;
        let mut d = Dialer::new(pol, t0 + Duration::from_secs(60));
        let node = Node::default();
        d.handle_request(me, addr(1));
        d.handle_request(a.clone(), addr(2));
        d.handle_request(a.clone(), addr(2));
        d.handle_request(b, addr(3));
        let out = drain(&mut d, t0, &node, &mut rng);
        assert_eq!(dialed(&out), vec![a], "ourselves never; a twice: once");
        assert!(
            matches!(out[1..], [Output::Refuse("max_outbound")]),
            "b: over the outbound limit"
        );
    }

    #[test]
    fn a_new_address_restarts_the_backoff() {
        let t0 = Instant::now();
        let me = key(1);
        let peer = larger_peer(&me);
        let mut rng = StdRng::seed_from_u64(7);
        let mut d = Dialer::new(policy(me), t0);
        let node = Node::default();
        let authorized = Arc::new(HashSet::from([peer.clone()]));
        let mut round = |d: &mut Dialer, now: Instant| {
            d.handle_timeout(
                now,
                HashMap::from([(peer.clone(), addr(2))]),
                authorized.clone(),
                HashSet::new(),
            );
            dialed(&drain(d, now, &node, &mut rng))
        };
        assert_eq!(round(&mut d, t0).len(), 1);
        assert!(round(&mut d, t0 + 100 * MS).is_empty(), "backing off");
        d.handle_new_address(&peer, t0 + 150 * MS);
        assert_eq!(round(&mut d, t0 + 200 * MS).len(), 1, "dialed again");
    }

    #[test]
    fn unreachable_marks_expire_and_are_bounded() {
        let t0 = Instant::now();
        let id = |i: u16| {
            let mut b = [0u8; 32];
            b[..2].copy_from_slice(&i.to_be_bytes());
            NodeId::from_bytes(b)
        };
        let mut u = Unreachable::new();
        u.handle_dial_failed(id(1), t0);
        assert!(u.is_marked(&id(1), t0 + UNREACHABLE_FOR - MS));
        assert!(!u.is_marked(&id(1), t0 + UNREACHABLE_FOR));
        u.handle_reachable(&id(1));
        assert!(!u.is_marked(&id(1), t0));
        for i in 0..MAX_UNREACHABLE as u16 + 1 {
            u.handle_dial_failed(id(i), t0 + u32::from(i) * MS);
        }
        assert_eq!(u.until.len(), MAX_UNREACHABLE);
        assert!(!u.is_marked(&id(0), t0), "the oldest mark went first");
        assert!(u.is_marked(&id(MAX_UNREACHABLE as u16), t0));
    }
}
