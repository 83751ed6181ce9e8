//! Deterministic tests of the core: a few nodes driven step by step, frames
//! passed in order with no delay, time advanced to the next timer.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_crypto::{Ed25519Signer, PublicKey, Signer};

use super::auth::{namespace, sign_message, SchemeSigner, SchemeVerifier};
use super::*;

const T0_UNIX: u64 = 1_800_000_000_000_000;

struct Node {
    key: PublicKey,
    core: Gossip,
    signer: SchemeSigner,
    delivered: Vec<(MessageId, Bytes)>,
    misbehaving: Vec<PublicKey>,
    seq: u64,
}

type Drop = Box<dyn FnMut(usize, usize, &Frame) -> bool>;

struct Net {
    nodes: Vec<Node>,
    index: HashMap<PublicKey, usize>,
    now: Instant,
    queue: VecDeque<(usize, usize, Bytes)>,
    drop: Drop,
}

fn config() -> GossipConfig {
    GossipConfig {
        lazy_interval: Duration::from_millis(5),
        graft_timeout: Duration::from_millis(50),
        retry_timeout: Duration::from_millis(50),
        ..GossipConfig::default()
    }
}

fn reject_bad() -> Validator {
    Box::new(|_: &PublicKey, p: &Bytes| match &p[..] {
        b"bad" => Verdict::Reject,
        b"local" => Verdict::AcceptNoForward,
        _ => Verdict::Accept,
    })
}

impl Net {
    fn new(n: usize, cfg: GossipConfig) -> Self {
        let now = Instant::now();
        let mut nodes = Vec::new();
        for i in 0..n {
            let id: Arc<dyn Signer> = Arc::new(Ed25519Signer::insecure_from_seed(i as u64 + 1));
            let verifier = SchemeVerifier::new(id.scheme(), namespace(b"t", 1));
            nodes.push(Node {
                key: id.public_key().clone(),
                core: Gossip::new(cfg.clone(), Box::new(verifier), reject_bad(), now, T0_UNIX),
                signer: SchemeSigner::new(id, namespace(b"t", 1)),
                delivered: Vec::new(),
                misbehaving: Vec::new(),
                seq: T0_UNIX,
            });
        }
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.key.clone(), i))
            .collect();
        Net {
            nodes,
            index,
            now,
            queue: VecDeque::new(),
            drop: Box::new(|_, _, _| false),
        }
    }

    fn link(&mut self, a: usize, b: usize) {
        let (ka, kb) = (self.nodes[a].key.clone(), self.nodes[b].key.clone());
        self.nodes[a].core.handle_neighbor_up(self.now, kb);
        self.nodes[b].core.handle_neighbor_up(self.now, ka);
    }

    fn unlink_all(&mut self, a: usize) {
        let ka = self.nodes[a].key.clone();
        for i in 0..self.nodes.len() {
            let ki = self.nodes[i].key.clone();
            self.nodes[i].core.handle_neighbor_down(self.now, &ka);
            self.nodes[a].core.handle_neighbor_down(self.now, &ki);
        }
    }

    fn full_mesh(n: usize) -> Self {
        let mut net = Net::new(n, config());
        for a in 0..n {
            for b in a + 1..n {
                net.link(a, b);
            }
        }
        net
    }

    fn drain(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].core.poll_transmit() {
            let j = self.index[&t.to];
            self.queue.push_back((i, j, t.frame));
        }
        while let Some(e) = self.nodes[i].core.poll_event() {
            match e {
                Event::Delivered { id, payload, .. } => self.nodes[i].delivered.push((id, payload)),
                Event::Misbehaving { peer, .. } => self.nodes[i].misbehaving.push(peer),
            }
        }
    }

    fn frame(&mut self, i: usize, payload: &'static [u8]) -> DataFrame {
        let n = &mut self.nodes[i];
        n.seq += 1;
        sign_message(&n.signer, n.seq, Bytes::from_static(payload))
    }

    fn publish(&mut self, i: usize, payload: &'static [u8]) -> MessageId {
        let f = self.frame(i, payload);
        let id = self.nodes[i].core.publish(self.now, f).unwrap();
        self.drain(i);
        id
    }

    /// Frames in order, then timers, until nothing is left.
    fn run(&mut self) {
        for _ in 0..100_000 {
            if let Some((from, to, bytes)) = self.queue.pop_front() {
                let frame = Frame::parse(&bytes, 4096).unwrap();
                if (self.drop)(from, to, &frame) {
                    continue;
                }
                let key = self.nodes[from].key.clone();
                self.nodes[to].core.handle_frame(self.now, &key, &bytes);
                self.drain(to);
                continue;
            }
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.core.poll_timeout())
                .min();
            let Some(t) = next else { return };
            self.now = self.now.max(t);
            for i in 0..self.nodes.len() {
                if self.nodes[i]
                    .core
                    .poll_timeout()
                    .is_some_and(|d| d <= self.now)
                {
                    self.nodes[i].core.handle_timeout(self.now);
                    self.drain(i);
                }
            }
        }
        panic!("did not settle");
    }

    fn delivered_once(&self, id: &MessageId, except: &[usize]) {
        for (i, n) in self.nodes.iter().enumerate() {
            let count = n.delivered.iter().filter(|(d, _)| d == id).count();
            let want = usize::from(!except.contains(&i) && n.key != id.origin);
            assert_eq!(count, want, "node {i}");
        }
    }

    fn total(&self, f: impl Fn(&Stats) -> u64) -> u64 {
        self.nodes.iter().map(|n| f(&n.core.stats())).sum()
    }
}

#[test]
fn delivers_once_and_prunes_each_origin_to_a_tree() {
    let mut net = Net::full_mesh(6);
    for origin in [0, 3, 5] {
        let key = net.nodes[origin].key.clone();
        let first = net.publish(origin, b"one");
        net.run();
        net.delivered_once(&first, &[]);
        // The first message of an origin takes every link; the duplicates
        // prune its tree down to the links the first copies took.
        let before = net.total(|s| s.duplicates);
        assert!(before > 0, "a full mesh sends duplicates at first");
        for _ in 0..3 {
            let id = net.publish(origin, b"next");
            net.run();
            net.delivered_once(&id, &[]);
            assert_eq!(net.total(|s| s.duplicates), before, "origin {origin}");
        }
        let eager: usize = net.nodes.iter().map(|n| n.core.eager_count(&key)).sum();
        assert_eq!(eager, 2 * 5, "a spanning tree of 6 nodes has 5 links");
        net.nodes.iter_mut().for_each(|n| n.delivered.clear());
        let dups = net.total(|s| s.duplicates);
        assert_eq!(dups, before);
    }
    assert_eq!(net.nodes[1].core.trees(), 3);
}

#[test]
fn lost_push_is_grafted_from_an_announcer() {
    let mut net = Net::full_mesh(5);
    let first = net.publish(0, b"tree");
    net.run();
    net.delivered_once(&first, &[]);
    // Every full message to node 4 is lost once.
    let mut lost = 0;
    net.drop = Box::new(move |_, to, f| {
        if to == 4 && matches!(f, Frame::Data(_)) && lost == 0 {
            lost += 1;
            return true;
        }
        false
    });
    let id = net.publish(0, b"second");
    net.run();
    net.delivered_once(&id, &[]);
    assert_eq!(net.nodes[4].core.stats().tree_repairs, 1);
    assert_eq!(net.nodes[4].core.stats().pulled, 1);
}

#[test]
fn graft_retries_the_next_announcer_when_one_fails() {
    let mut net = Net::full_mesh(5);
    let first = net.publish(0, b"tree");
    net.run();
    // Node 4 loses its pushed copy and the answer to its first graft.
    let mut lost = 0;
    net.drop = Box::new(move |_, to, f| {
        if to == 4 && matches!(f, Frame::Data(_)) && lost < 2 {
            lost += 1;
            return true;
        }
        false
    });
    let id = net.publish(0, b"second");
    net.run();
    net.delivered_once(&first, &[]);
    net.delivered_once(&id, &[]);
    let s = net.nodes[4].core.stats();
    assert_eq!((s.tree_repairs, s.iwants_sent, s.pulled), (1, 1, 1));
}

#[test]
fn tree_heals_after_a_node_leaves() {
    // A ring of 8 with chords: several paths between any two nodes.
    let mut net = Net::new(8, config());
    for i in 0..8 {
        net.link(i, (i + 1) % 8);
    }
    net.link(0, 4);
    net.link(2, 6);
    let a = net.publish(0, b"a");
    net.run();
    net.delivered_once(&a, &[]);
    // Take out a node that relays for others in the tree.
    let k0 = net.nodes[0].key.clone();
    let relay = (1..8)
        .max_by_key(|&i| net.nodes[i].core.eager_count(&k0))
        .unwrap();
    net.unlink_all(relay);
    for origin in [0, 5] {
        let origin = if origin == relay { 3 } else { origin };
        let id = net.publish(origin, b"after");
        net.run();
        net.delivered_once(&id, &[relay]);
    }
    // A node that comes back takes part again (eager where it was, lazy
    // where it had been pruned) and everything reaches it once.
    for i in [relay + 7, relay + 1] {
        net.link(relay, i % 8);
    }
    let id = net.publish(0, b"back");
    net.run();
    net.delivered_once(&id, &[]);
}

#[test]
fn a_neighbour_that_reconnects_stays_lazy_where_it_was_pruned() {
    // A triangle: node 0's first message reaches 1 and 2 directly, and the
    // copies 1 and 2 then forward to each other prune the 1-2 link.
    let mut net = Net::new(3, config());
    net.link(0, 1);
    net.link(0, 2);
    net.link(1, 2);
    let a = net.publish(0, b"a");
    net.run();
    net.delivered_once(&a, &[]);
    let (k0, k2) = (net.nodes[0].key.clone(), net.nodes[2].key.clone());
    assert!(
        !net.nodes[1].core.is_eager(&k0, &k2),
        "the 1-2 link was pruned"
    );
    // Node 2 goes and comes back.
    net.unlink_all(2);
    net.link(2, 0);
    net.link(2, 1);
    assert!(
        !net.nodes[1].core.is_eager(&k0, &k2),
        "a reconnected neighbour keeps its place in the tree"
    );
    assert!(net.nodes[0].core.is_eager(&k0, &k2));
    let dup_before = net.total(|s| s.duplicates);
    let b = net.publish(0, b"b");
    net.run();
    net.delivered_once(&b, &[]);
    // Both ends kept the pruned link: no duplicate (before, the
    // reconnected link was eager again and carried one each way).
    assert_eq!(net.total(|s| s.duplicates) - dup_before, 0);
}

#[test]
fn rejected_is_not_forwarded_and_counts_against_the_sender() {
    let mut cfg = config();
    cfg.penalty_threshold = 2;
    let mut net = Net::new(3, cfg);
    net.link(0, 1);
    net.link(1, 2);
    let bad = net.publish(0, b"bad");
    net.run();
    assert!(net.nodes[1].delivered.is_empty() && net.nodes[2].delivered.is_empty());
    assert_eq!(net.nodes[1].core.stats().rejected, 1);
    assert!(net.nodes[1].core.has_seen(&bad), "not checked twice");
    let local = net.publish(0, b"local");
    net.run();
    net.delivered_once(&local, &[2]);
    let bad2 = net.publish(0, b"bad");
    net.run();
    assert!(!net.nodes[2].core.has_seen(&bad2));
    assert_eq!(net.nodes[1].misbehaving, vec![net.nodes[0].key.clone()]);
    // Ignored from now on, even for good messages.
    net.publish(0, b"good");
    net.run();
    assert_eq!(net.nodes[1].delivered.len(), 1);
    assert!(net.nodes[1].core.stats().ignored_frames > 0);
}

#[test]
fn forged_or_altered_message_is_dropped_and_the_genuine_one_still_taken() {
    let mut net = Net::new(2, config());
    net.link(0, 1);
    let genuine = net.frame(0, b"block");
    let mut altered = genuine.clone();
    altered.payload = Bytes::from_static(b"blocK");
    let mut forged = genuine.clone();
    forged.signature = Bytes::from(vec![7u8; 64]);
    let from = net.nodes[0].key.clone();
    for f in [altered, forged] {
        net.nodes[1]
            .core
            .handle_frame(net.now, &from, &Frame::Data(f).emit());
    }
    net.drain(1);
    assert!(net.queue.is_empty() && net.nodes[1].delivered.is_empty());
    assert_eq!(net.nodes[1].core.stats().forged, 2);
    net.nodes[1]
        .core
        .handle_frame(net.now, &from, &Frame::Data(genuine.clone()).emit());
    net.drain(1);
    net.delivered_once(&genuine.id, &[]);
}

#[test]
fn replays_are_dropped_while_seen_and_after_by_age_or_floor() {
    let mut cfg = config();
    cfg.seen_capacity = 16;
    let mut net = Net::new(2, cfg.clone());
    net.link(0, 1);
    let from = net.nodes[0].key.clone();
    let old = net.frame(0, b"x");
    let bytes = Frame::Data(old.clone()).emit();
    net.nodes[1].core.handle_frame(net.now, &from, &bytes);
    net.nodes[1].core.handle_frame(net.now, &from, &bytes);
    net.drain(1);
    assert_eq!(net.nodes[1].delivered.len(), 1);
    assert_eq!(net.nodes[1].core.stats().duplicates, 1);
    // Fill the cache past its count: the old id is forgotten early, and
    // the floor refuses its replay.
    for _ in 0..20 {
        let f = net.frame(0, b"y");
        net.nodes[1]
            .core
            .handle_frame(net.now, &from, &Frame::Data(f).emit());
    }
    assert!(!net.nodes[1].core.has_seen(&old.id));
    net.nodes[1].core.handle_frame(net.now, &from, &bytes);
    assert_eq!(net.nodes[1].core.stats().too_old, 1);
    // After the age: refused by age.
    let mut net = Net::new(2, cfg.clone());
    net.link(0, 1);
    let f = net.frame(0, b"z");
    net.now += cfg.max_age + cfg.max_clock_skew;
    net.nodes[1].core.handle_timeout(net.now);
    net.nodes[1]
        .core
        .handle_frame(net.now, &from, &Frame::Data(f).emit());
    assert_eq!(net.nodes[1].core.stats().too_old, 1);
    // And from too far ahead.
    let n = &mut net.nodes[0];
    let ahead = sign_message(&n.signer, u64::MAX / 2, Bytes::from_static(b"f"));
    net.nodes[1]
        .core
        .handle_frame(net.now, &from, &Frame::Data(ahead).emit());
    assert_eq!(net.nodes[1].core.stats().too_new, 1);
    assert_eq!(net.nodes[1].delivered.len(), 0);
}

#[test]
fn bounds_hold_under_flood() {
    let mut cfg = config();
    cfg.max_missing = 100;
    cfg.max_announcers = 2;
    cfg.peer_rate = 10;
    cfg.peer_burst = 10;
    cfg.peer_control_rate = 1000;
    let mut net = Net::new(3, cfg.clone());
    net.link(0, 1);
    net.link(2, 1);
    let (k0, k2) = (net.nodes[0].key.clone(), net.nodes[2].key.clone());
    // Announcements of ids nobody has: tracked up to max_missing, then the
    // control budget cuts them off.
    for round in 0..50u64 {
        let ids: Vec<(MessageId, u8)> = (0..100)
            .map(|i| {
                let id = MessageId {
                    origin: k0.clone(),
                    seq: round * 1000 + i,
                };
                (id, 0)
            })
            .collect();
        for from in [&k0, &k2] {
            net.nodes[1]
                .core
                .handle_frame(net.now, from, &Frame::IHave(ids.clone()).emit());
        }
        assert!(net.nodes[1].core.missing_len() <= cfg.max_missing);
    }
    let s = net.nodes[1].core.stats();
    assert!(s.missing_given_up > 0 && s.over_budget > 0, "{s:?}");
    // Full messages beyond the neighbour's budget are dropped before any
    // signature check.
    for _ in 0..100 {
        let f = net.frame(0, b"m");
        net.nodes[1]
            .core
            .handle_frame(net.now, &k0, &Frame::Data(f).emit());
    }
    net.drain(1);
    assert_eq!(net.nodes[1].delivered.len(), 10);
    // The graft timers all fire and give up in bounded time.
    net.queue.clear();
    net.run();
    assert_eq!(net.nodes[1].core.missing_len(), 0);
}

#[test]
fn garbage_frames_get_a_neighbour_ignored() {
    use rand::{Rng, SeedableRng};
    let mut cfg = config();
    cfg.penalty_threshold = 5;
    let mut net = Net::new(2, cfg);
    net.link(0, 1);
    let k0 = net.nodes[0].key.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..2000 {
        let len = rng.gen_range(0..80);
        let b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        net.nodes[1]
            .core
            .handle_frame(net.now, &k0, &Bytes::from(b));
    }
    net.drain(1);
    assert_eq!(net.nodes[1].misbehaving, vec![k0]);
    assert!(net.nodes[1].core.stats().parse_errors >= 5);
    assert!(net.nodes[1].delivered.is_empty());
}

#[test]
fn oversized_publish_is_refused() {
    let mut cfg = config();
    cfg.max_message_size = 4;
    let mut net = Net::new(1, cfg);
    let f = net.frame(0, b"12345");
    assert_eq!(
        net.nodes[0].core.publish(net.now, f),
        Err(PublishError::TooLarge)
    );
    let f = net.frame(0, b"1234");
    assert!(net.nodes[0].core.publish(net.now, f.clone()).is_ok());
    assert_eq!(
        net.nodes[0].core.publish(net.now, f),
        Err(PublishError::Duplicate)
    );
}

#[test]
fn trees_are_bounded_by_max_origins() {
    let mut cfg = config();
    cfg.max_origins = 16;
    let mut net = Net::new(20, cfg);
    for i in 1..20 {
        net.link(0, i);
    }
    for origin in 1..20 {
        let id = net.publish(origin, b"m");
        net.run();
        net.delivered_once(&id, &[]);
        assert!(net.nodes[0].core.trees() <= 16);
    }
    assert_eq!(net.nodes[0].core.trees(), 16);
}
