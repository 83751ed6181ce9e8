//! Routed unicast driven step by step over simulated links.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_crypto::{Ed25519Signer, Identity, PublicKey};

use super::envelope::Envelope;
use super::*;

const NS: &[u8] = b"shoal-test";
const T0_MICROS: u64 = 1_700_000_000_000_000;

fn identity(i: usize) -> Identity {
    Arc::new(Ed25519Signer::insecure_from_seed(i as u64 + 1))
}

/// Applied to every frame a node sends: `(from, to, bytes)` → bytes.
type Tamper = Box<dyn FnMut(usize, usize, Bytes) -> Bytes>;

/// Routers joined by links; `run` moves every envelope until none is left.
struct Net {
    t0: Instant,
    nodes: Vec<Router>,
    keys: Vec<PublicKey>,
    /// Envelopes in flight: (from, to, bytes).
    wire: VecDeque<(usize, usize, Bytes)>,
    delivered: Vec<Vec<(PublicKey, u32, Bytes)>>,
    misbehaving: Vec<Vec<PublicKey>>,
    tamper: Option<Tamper>,
}

impl Net {
    fn new(n: usize, config: RouteConfig) -> Net {
        let t0 = Instant::now();
        let ids: Vec<Identity> = (0..n).map(identity).collect();
        Net {
            t0,
            keys: ids.iter().map(|i| i.public_key().clone()).collect(),
            nodes: ids
                .into_iter()
                .map(|id| Router::new(config.clone(), id, NS, t0, T0_MICROS))
                .collect(),
            wire: VecDeque::new(),
            delivered: vec![Vec::new(); n],
            misbehaving: vec![Vec::new(); n],
            tamper: None,
        }
    }

    fn link(&mut self, a: usize, b: usize) {
        let (ka, kb) = (self.keys[a].clone(), self.keys[b].clone());
        self.nodes[a].handle_neighbor_up(kb);
        self.nodes[b].handle_neighbor_up(ka);
    }

    fn line(n: usize, config: RouteConfig) -> Net {
        let mut net = Net::new(n, config);
        for i in 1..n {
            net.link(i - 1, i);
        }
        net.settle();
        net
    }

    /// Exchanges the neighbour lists the links made.
    fn settle(&mut self) {
        for i in 0..self.nodes.len() {
            self.collect(i);
        }
        self.run();
    }

    fn index(&self, key: &PublicKey) -> usize {
        self.keys.iter().position(|k| k == key).unwrap()
    }

    /// From now on, every frame sent is also kept, in order, in the list
    /// returned.
    fn record(&mut self) -> Rc<RefCell<Vec<Bytes>>> {
        let log = Rc::new(RefCell::new(Vec::new()));
        let keep = log.clone();
        self.tamper = Some(Box::new(move |_, _, b| {
            keep.borrow_mut().push(b.clone());
            b
        }));
        log
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis(1)
    }

    fn collect(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit() {
            let to = self.index(&t.to);
            let bytes = match self.tamper.as_mut() {
                Some(f) => f(i, to, t.bytes),
                None => t.bytes,
            };
            self.wire.push_back((i, to, bytes));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            match e {
                Event::Delivered {
                    id,
                    channel,
                    payload,
                } => self.delivered[i].push((id.origin, channel, payload)),
                Event::Misbehaving { peer, .. } => self.misbehaving[i].push(peer),
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, payload: &[u8]) -> Result<(), SendError> {
        let (now, target) = (self.now(), self.keys[to].clone());
        self.nodes[from].send(now, &target, 7, payload)?;
        self.collect(from);
        Ok(())
    }

    /// Delivers envelopes until none is in flight (bounded).
    fn run(&mut self) {
        for _ in 0..100_000 {
            let Some((from, to, bytes)) = self.wire.pop_front() else {
                return;
            };
            let (now, key) = (self.now(), self.keys[from].clone());
            self.nodes[to].handle_frame(now, &key, &bytes);
            self.collect(to);
        }
        panic!("envelopes still in flight after 100 000 steps");
    }
}

#[test]
fn a_message_crosses_a_line_and_the_reply_comes_back() {
    let mut net = Net::line(5, RouteConfig::default());
    net.send(0, 4, b"request").unwrap();
    net.run();
    assert_eq!(
        net.delivered[4],
        vec![(net.keys[0].clone(), 7, Bytes::from_static(b"request"))]
    );
    for relay in 1..4 {
        assert!(net.delivered[relay].is_empty());
        assert_eq!(net.nodes[relay].stats().forwarded, 1, "relay {relay}");
    }
    net.send(4, 0, b"reply").unwrap();
    net.run();
    assert_eq!(
        net.delivered[0],
        vec![(net.keys[4].clone(), 7, Bytes::from_static(b"reply"))]
    );
}

#[test]
fn relays_cannot_read_the_payload() {
    let mut net = Net::line(3, RouteConfig::default());
    let seen = net.record();
    net.send(0, 2, b"secret payload").unwrap();
    net.run();
    assert_eq!(net.delivered[2].len(), 1);
    let relay = identity(1);
    for b in seen.borrow().iter() {
        assert!(!b.windows(14).any(|w| w == b"secret payload"));
        let env = Envelope::parse(b, 1 << 20).unwrap();
        let aad = Envelope::sealed_aad(&env.id, env.channel);
        assert!(relay.open_sealed(&aad, &env.sealed).is_err());
    }
}

#[test]
fn an_altered_envelope_dies_at_the_next_honest_relay() {
    let mut net = Net::line(4, RouteConfig::default());
    // Relay 1 flips a byte of every sealed payload it forwards.
    net.tamper = Some(Box::new(|from, _, b| {
        if from != 1 {
            return b;
        }
        let mut v = b.to_vec();
        let last = v.len() - 70;
        v[last] ^= 1;
        Bytes::from(v)
    }));
    net.send(0, 3, b"x").unwrap();
    net.run();
    assert!(net.delivered[3].is_empty());
    assert_eq!(net.nodes[2].stats().forged, 1);
    assert_eq!(net.nodes[2].stats().forwarded, 0);
}

#[test]
fn a_box_re_signed_by_another_origin_does_not_open() {
    let mut net = Net::line(3, RouteConfig::default());
    let captured = net.record();
    net.send(0, 2, b"mine").unwrap();
    net.run();
    assert_eq!(net.delivered[2].len(), 1);
    // Node 1 signs node 0's box as its own and sends it to node 2.
    let env = Envelope::parse(&captured.borrow()[0], 1 << 20).unwrap();
    let thief = identity(1);
    let seq = env.id.seq + 1;
    let signed = Envelope::signed_bytes(seq, env.channel, &env.target, &env.sealed);
    let forged = Envelope {
        id: crate::gossip::MessageId {
            origin: thief.public_key().clone(),
            seq,
        },
        signature: thief.sign(b"shoal-test/route", &signed),
        ..env
    };
    let (now, from) = (net.now(), net.keys[1].clone());
    net.nodes[2].handle_frame(now, &from, &forged.emit());
    net.collect(2);
    assert_eq!(
        net.delivered[2].len(),
        1,
        "the re-signed box is not delivered"
    );
    assert_eq!(net.nodes[2].stats().undecryptable, 1);
}

#[test]
fn a_replay_is_dropped_and_each_relay_forwards_an_id_once() {
    let mut net = Net::line(3, RouteConfig::default());
    let copies = net.record();
    net.send(0, 2, b"once").unwrap();
    net.run();
    let first = copies.borrow()[0].clone();
    let (now, from) = (net.now(), net.keys[0].clone());
    for _ in 0..3 {
        net.nodes[1].handle_frame(now, &from, &first);
        net.collect(1);
    }
    net.run();
    assert_eq!(net.delivered[2].len(), 1);
    assert_eq!(net.nodes[1].stats().forwarded, 1);
    assert_eq!(net.nodes[1].stats().duplicates, 3);
}

#[test]
fn the_hop_limit_stops_a_message() {
    let config = RouteConfig {
        max_hops: 2,
        ..RouteConfig::default()
    };
    let mut net = Net::line(5, config);
    net.send(0, 4, b"far").unwrap();
    net.run();
    assert!(net.delivered[4].is_empty());
    assert_eq!(net.nodes[3].stats().hop_limit, 1);
    net.send(0, 3, b"near enough").unwrap();
    net.run();
    assert_eq!(net.delivered[3].len(), 1);
}

#[test]
fn no_neighbour_is_no_route_and_a_dead_end_is_counted() {
    let mut net = Net::new(3, RouteConfig::default());
    assert_eq!(net.send(0, 2, b"x"), Err(SendError::NoRoute));
    net.link(0, 1);
    net.send(0, 2, b"x").unwrap();
    net.run();
    assert_eq!(net.nodes[1].stats().no_route, 1);
    let big = vec![0u8; (1 << 20) + 1];
    assert_eq!(net.send(0, 1, &big), Err(SendError::TooLarge));
}

#[test]
fn stale_and_future_sequences_are_refused() {
    let mut net = Net::line(3, RouteConfig::default());
    let copies = net.record();
    net.send(0, 2, b"x").unwrap();
    let env = copies.borrow()[0].clone();
    net.wire.clear();
    // The relay's clock is two minutes ahead: the envelope is too old.
    let late = net.t0 + Duration::from_secs(120);
    let from = net.keys[0].clone();
    net.nodes[1].handle_frame(late, &from, &env);
    assert_eq!(net.nodes[1].stats().too_old, 1);
    // A relay whose clock is a minute behind sees it too far ahead.
    let mut behind = Router::new(
        RouteConfig::default(),
        identity(1),
        NS,
        net.t0,
        T0_MICROS - 60_000_000,
    );
    behind.handle_neighbor_up(from.clone());
    behind.handle_frame(net.now(), &from, &env);
    assert_eq!(behind.stats().too_new, 1);
}

#[test]
fn garbage_counts_against_the_neighbour_until_it_is_reported() {
    let config = RouteConfig {
        penalty_threshold: 3,
        ..RouteConfig::default()
    };
    let mut net = Net::line(2, config);
    let (now, from) = (net.now(), net.keys[0].clone());
    for i in 0..5u8 {
        net.nodes[1].handle_frame(now, &from, &Bytes::from(vec![i; 10]));
        net.collect(1);
    }
    assert_eq!(net.misbehaving[1], vec![from.clone()], "reported once");
    assert_eq!(net.nodes[1].stats().malformed, 3, "then ignored");
}

#[test]
fn an_origin_over_its_budget_is_dropped_at_the_relay() {
    let config = RouteConfig {
        origin_rate: 2,
        ..RouteConfig::default()
    };
    let mut net = Net::line(3, config);
    for _ in 0..10 {
        net.send(0, 2, b"flood").unwrap();
    }
    net.run();
    // The burst is twice the rate; time does not pass.
    assert_eq!(net.delivered[2].len(), 4);
    assert_eq!(net.nodes[1].stats().rate_limited, 6);
}

#[test]
fn a_full_queue_refuses_a_send() {
    let config = RouteConfig {
        max_queued_bytes: 64 << 10,
        ..RouteConfig::default()
    };
    let mut net = Net::line(2, config);
    let target = net.keys[1].clone();
    let now = net.now();
    let payload = vec![0u8; 30_000];
    assert!(net.nodes[0].send(now, &target, 1, &payload).is_ok());
    assert!(net.nodes[0].send(now, &target, 1, &payload).is_ok());
    assert_eq!(
        net.nodes[0].send(now, &target, 1, &payload),
        Err(SendError::Full)
    );
    assert!(net.nodes[0].poll_transmit().is_some());
    assert!(net.nodes[0].send(now, &target, 1, &payload).is_ok());
}

/// A deterministic random graph: `n` nodes, each linked to `degree`
/// others chosen by a fixed linear congruential sequence.
fn random_graph(n: usize, degree: usize, config: RouteConfig) -> Net {
    let mut net = Net::new(n, config);
    let mut x: u64 = 0x5eed;
    for a in 0..n {
        for _ in 0..degree / 2 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let b = (x >> 33) as usize % n;
            if b != a && !net.nodes[a].is_neighbour(&net.keys[b]) {
                net.link(a, b);
            }
        }
    }
    net.settle();
    net
}

#[test]
fn every_pair_of_a_partial_mesh_is_reached() {
    let n = 30;
    let mut net = random_graph(n, 6, RouteConfig::default());
    let mut sent = 0;
    for a in 0..n {
        for b in 0..n {
            if a != b {
                net.send(a, b, &[a as u8, b as u8]).unwrap();
                sent += 1;
            }
        }
    }
    net.run();
    let delivered: usize = net.delivered.iter().map(Vec::len).sum();
    let forwarded: u64 = net.nodes.iter().map(|r| r.stats().forwarded).sum();
    eprintln!(
        "{delivered}/{sent} delivered, {:.1} relays per message",
        forwarded as f64 / sent as f64
    );
    assert_eq!(
        delivered, sent,
        "greedy routing with fanout 2 reaches every pair"
    );
    for (b, got) in net.delivered.iter().enumerate() {
        for (origin, _, payload) in got {
            assert_eq!(payload[..], [net.index(origin) as u8, b as u8]);
        }
    }
}

#[test]
fn the_routes_heal_when_a_node_leaves() {
    let n = 30;
    let mut net = random_graph(n, 6, RouteConfig::default());
    // Node 0 leaves: its neighbours drop it and advertise their new lists.
    let gone = net.keys[0].clone();
    for i in 1..n {
        net.nodes[i].handle_neighbor_down(&gone);
    }
    net.settle();
    let mut sent = 0;
    for a in 1..n {
        for b in 1..n {
            if a != b {
                net.send(a, b, b"after").unwrap();
                sent += 1;
            }
        }
    }
    net.run();
    let delivered: usize = net.delivered.iter().map(Vec::len).sum();
    assert_eq!(delivered, sent);
    assert!(net.delivered[0].is_empty());
}
