//! Gossip broadcast over real loopback sockets, on both backends and on one
//! and two shards: 30 nodes on a partial mesh where every node broadcasts
//! and every message reaches every node exactly once, and a hostile
//! neighbour that floods, replays, forges and sends garbage without
//! stopping the others' delivery.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use shoal::{
    Backend, BroadcastError, Deliveries, GossipConfig, GossipSender, NetworkHandle, Priority,
    Verdict,
};

/// The gossip channel.
const GOSSIP: u32 = 5;

struct GossipNode {
    node: Node,
    tx: GossipSender,
    rx: Deliveries,
}

/// [`ring`] with gossip on every node.
fn gossip_ring(
    backend: Backend,
    n: u64,
    reach: u64,
    config: &GossipConfig,
    extra: impl Fn(u64) -> Vec<u64>,
) -> Vec<GossipNode> {
    ring(backend, n, reach, &[overlay_chan(GOSSIP)], extra)
        .into_iter()
        .map(|mut node| {
            let channel = node.channels.remove(0);
            let (tx, rx) = node
                .handle()
                .gossip(channel, config.clone(), 4096, |_, _| Verdict::Accept)
                .expect("gossip");
            GossipNode { node, tx, rx }
        })
        .collect()
}

fn payload(origin: u64, k: u64) -> Bytes {
    Bytes::from(format!("message {k} from node {origin}"))
}

/// Takes deliveries from `n` until it has every payload of `want`; fails
/// on a duplicate, on a payload not in `want`, or after `WAIT`.
fn collect(n: &GossipNode, want: &BTreeSet<Bytes>) {
    let deadline = Instant::now() + WAIT;
    let mut got = BTreeSet::new();
    let mut ids = BTreeSet::new();
    while got.len() < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "node {}: {} of {} messages delivered",
            n.node.seed,
            got.len(),
            want.len()
        );
        let Some(d) = n.rx.recv_timeout(left).expect("gossip running") else {
            continue;
        };
        assert_eq!(d.origin, d.id.origin);
        assert!(
            want.contains(&d.payload),
            "node {} delivered {:?}, which nobody broadcast",
            n.node.seed,
            d.payload
        );
        assert!(ids.insert(d.id.clone()), "a message delivered twice");
        assert!(got.insert(d.payload), "a payload delivered twice");
    }
}

fn shutdown(nodes: Vec<GossipNode>) {
    for n in nodes {
        let mut n = n;
        if let Some(h) = n.node.handle.take() {
            h.shutdown(Duration::from_millis(100));
        }
    }
}

/// 30 nodes, each connected to 6, every node broadcasting 3 messages: each
/// node delivers the other 87 exactly once (none of its own). The first
/// round forms each origin's tree (its first message takes every link and
/// the duplicates prune them); in the next two, the tree carries the
/// messages with well under one duplicate per delivery, where flooding
/// gives about 4.2 on this ring.
fn every_message_reaches_every_node_once(backend: Backend) {
    const N: u64 = 30;
    const EACH: u64 = 3;
    let nodes = gossip_ring(backend, N, 3, &GossipConfig::default(), |_| Vec::new());
    for n in &nodes {
        assert_eq!(n.tx.neighbors(), 6);
    }
    let round = |k: u64| -> u64 {
        let before: u64 = nodes.iter().map(|n| n.tx.stats().core.duplicates).sum();
        for (i, n) in nodes.iter().enumerate() {
            n.tx.broadcast(payload(i as u64 + 1, k)).expect("broadcast");
        }
        for (i, n) in nodes.iter().enumerate() {
            let want: BTreeSet<Bytes> = (1..=N)
                .filter(|o| *o != i as u64 + 1)
                .map(|o| payload(o, k))
                .collect();
            collect(n, &want);
        }
        let after: u64 = nodes.iter().map(|n| n.tx.stats().core.duplicates).sum();
        after - before
    };
    let forming = round(0);
    let steady: u64 = (1..EACH).map(round).sum();
    // Nothing beyond them is waiting, and the cores agree.
    for n in &nodes {
        assert!(n.rx.try_recv().is_none(), "a delivery beyond the 87");
    }
    let delivered: u64 = nodes.iter().map(|n| n.tx.stats().core.delivered).sum();
    assert_eq!(delivered, N * (N - 1) * EACH);
    let steady_deliveries = N * (N - 1) * (EACH - 1);
    assert!(
        steady * 2 < steady_deliveries,
        "{steady} duplicates for {steady_deliveries} deliveries once the trees formed \
         ({forming} while they formed)"
    );
    let m = nodes[0].node.handle().metrics();
    assert_eq!(m.gossip_count(GOSSIP, "delivered"), (N - 1) * EACH);
    assert_eq!(m.gossip_count(GOSSIP, "published"), EACH);
    let mut nodes = nodes;
    let mut first = nodes.remove(0);
    shutdown(nodes);
    // After its shutdown a node's gossip refuses broadcasts, and its
    // deliveries end once drained.
    if let Some(h) = first.node.handle.take() {
        h.shutdown(Duration::from_millis(100));
    }
    assert_eq!(
        first.tx.broadcast(payload(1, 9)),
        Err(BroadcastError::Closed)
    );
    assert_eq!(first.rx.recv_timeout(WAIT), Err(shoal::RecvError));
}

/// A neighbour of nodes 1 and 7 (of 12, each connected to 4) that runs no
/// gossip of its own but speaks on the channel: it floods node 1 with
/// replays of a message it was pushed and then garbage, and sends node 7
/// forgeries of that message. Node 1 limits the flood and counts the
/// replays and the garbage, node 7 counts the forgeries; both disconnect
/// it, no node delivers a forgery, and every honest broadcast still
/// reaches every honest node exactly once.
fn a_hostile_neighbour_is_contained(backend: Backend) {
    const N: u64 = 12;
    const HOSTILE: u64 = 99;
    let config = GossipConfig {
        peer_rate: 100,
        peer_burst: 50,
        ..GossipConfig::default()
    };
    let nodes = gossip_ring(backend, N, 2, &config, |i| {
        if i == 1 || i == 7 {
            vec![HOSTILE]
        } else {
            Vec::new()
        }
    });
    let dial: Vec<(u64, std::net::SocketAddr)> = [1u64, 7]
        .iter()
        .map(|s| (*s, nodes[(*s - 1) as usize].node.addr))
        .collect();
    let hostile = start_node(
        backend,
        HOSTILE,
        any_addr(),
        &[1, 7],
        &dial,
        &[overlay_chan(GOSSIP)],
        |_| {},
    );
    let h: &NetworkHandle = hostile.handle();
    assert!(h.wait_peers(WAIT, |p| p.len() == 2));
    for s in [1u64, 7] {
        let n = &nodes[(s - 1) as usize];
        assert!(n
            .node
            .handle()
            .wait_peers(WAIT, |p| p.contains(&key(HOSTILE))));
        wait_until("the gossip driver sees the hostile neighbour", || {
            n.tx.neighbors() == 5
        });
    }

    // A message the hostile node is pushed as a neighbour.
    let first = payload(4, 0);
    nodes[3].tx.broadcast(first.clone()).expect("broadcast");
    let (_, rx) = &hostile.channels[0];
    let frame = loop {
        let (_, f) = rx.recv_timeout(WAIT).expect("running").expect("a frame");
        if f.first() == Some(&0x01) && f.ends_with(&first) {
            break f;
        }
    };
    let (tx, _) = &hostile.channels[0];
    // Node 1: a flood of replays, far beyond its budget of 50 frames, then
    // garbage.
    for _ in 0..400 {
        let _ = tx.send(&key(1), frame.clone(), Priority::Low);
    }
    for _ in 0..40 {
        let _ = tx.send(
            &key(1),
            Bytes::from_static(b"\xffnot a gossip frame"),
            Priority::Low,
        );
    }
    // Node 7: forgeries, each under a fresh id (the origin's sequence, at
    // bytes 34..42 after the kind and the length-prefixed key, moved on)
    // with the payload altered, so that only the signature gives it away.
    for k in 0..40u8 {
        let mut forged = frame.to_vec();
        forged[41] ^= k + 1;
        if let Some(last) = forged.last_mut() {
            *last ^= 0x20;
        }
        let _ = tx.send(&key(7), Bytes::from(forged), Priority::Low);
    }
    for s in [1u64, 7] {
        let n = &nodes[(s - 1) as usize];
        wait_until("the hostile neighbour is disconnected", || {
            n.tx.stats().misbehaving_disconnects >= 1
        });
        let m = n.node.handle().metrics();
        assert!(m.gossip_count(GOSSIP, "misbehaving_disconnect") >= 1);
    }
    let one = nodes[0].tx.stats().core;
    assert!(one.over_budget > 0, "the flood was not limited: {one:?}");
    assert!(one.duplicates > 0 && one.parse_errors > 0, "{one:?}");
    let seven = nodes[6].tx.stats().core;
    assert!(seven.forged > 0, "{seven:?}");
    assert_eq!(
        nodes[6]
            .node
            .handle()
            .metrics()
            .gossip_count(GOSSIP, "forged"),
        seven.forged
    );

    // Everyone else is undisturbed: each honest node delivers every
    // honest message once, and never the forgery.
    for (i, n) in nodes.iter().enumerate() {
        n.tx.broadcast(payload(i as u64 + 1, 1)).expect("broadcast");
    }
    for (i, n) in nodes.iter().enumerate() {
        let me = i as u64 + 1;
        let mut want: BTreeSet<Bytes> = (1..=N)
            .filter(|o| *o != me)
            .map(|o| payload(o, 1))
            .collect();
        if me != 4 {
            want.insert(first.clone());
        }
        collect(n, &want);
    }
    let mut hostile = hostile;
    if let Some(h) = hostile.handle.take() {
        h.shutdown(Duration::from_millis(100));
    }
    shutdown(nodes);
}

both_backends!(
    every_message_reaches_every_node_once,
    a_hostile_neighbour_is_contained,
);
