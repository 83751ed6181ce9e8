//! Routed unicast over real loopback sockets, on both backends and on one
//! and two shards: messages to nodes the sender cannot connect to find
//! their way through the overlay and the replies come back the same way;
//! a node with no connection gets a typed error; a neighbour sending
//! garbage is disconnected.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use shoal::{Backend, Deliveries, Priority, RouteConfig, RouteError, RouteSender};

/// The routed channel.
const ROUTED: u32 = 8;

struct RouteNode {
    node: Node,
    tx: RouteSender,
    rx: Deliveries,
}

fn route_on(mut node: Node) -> RouteNode {
    let channel = node.channels.remove(0);
    let (tx, rx) = node
        .handle()
        .route(channel, RouteConfig::default(), 1024)
        .expect("route");
    RouteNode { node, tx, rx }
}

fn shutdown(mut node: Node) {
    if let Some(h) = node.handle.take() {
        h.shutdown(Duration::from_millis(100));
    }
}

/// 12 nodes on a ring, each connected to the 2 nearest on either side and
/// authorizing only those, so no two others can connect. Node 1 sends to
/// the 4 nodes two hops away it has no connection to (ring distance 3 and
/// 4: within what neighbour lists tell it, so the route is known, not
/// guessed); each gets its message once, from node 1, and answers through
/// the overlay; node 1 gets every answer. The relays forward without
/// delivering anything. (Farther targets are reached by greedy key
/// distance, which routes around a topology it cannot see only usually:
/// the router's tests measure that.)
fn a_message_finds_its_way_and_the_reply_comes_back(backend: Backend) {
    const N: u64 = 12;
    let nodes: Vec<RouteNode> = ring(backend, N, 2, &[overlay_chan(ROUTED)], |_| Vec::new())
        .into_iter()
        .map(route_on)
        .collect();
    let me = &nodes[0];
    let near = ring_neighbours(N, 2, 1);
    let far: Vec<u64> = vec![4, 5, 9, 10];
    assert!(far.iter().all(|s| !near.contains(s)));
    // Every router knows its neighbours and has heard their lists: the
    // 8 nodes within two hops.
    for n in &nodes {
        wait_until("the routers know the mesh two hops out", || {
            n.tx.neighbors() == 4 && n.tx.known() == 8
        });
    }
    for s in &far {
        assert!(!me.node.handle().is_connected(&key(*s)));
        me.tx
            .send(&key(*s), format!("to {s}").as_bytes())
            .expect("routed");
    }
    for s in &far {
        let n = &nodes[(*s - 1) as usize];
        let d =
            n.rx.recv_timeout(WAIT)
                .expect("routing")
                .unwrap_or_else(|| panic!("node {s} got nothing"));
        assert_eq!(d.origin, key(1));
        assert_eq!(d.id.origin, key(1));
        assert_eq!(d.payload, Bytes::from(format!("to {s}")));
        n.tx.send(&key(1), format!("reply from {s}").as_bytes())
            .expect("reply routed");
    }
    // The replies, taken the async way (`Deliveries::recv` is a `Wait`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut replies = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while replies.len() < far.len() {
        let d = rt
            .block_on(async { tokio::time::timeout_at(deadline, me.rx.recv()).await })
            .unwrap_or_else(|_| panic!("{} of {} replies", replies.len(), far.len()))
            .expect("routing");
        assert!(
            replies.insert(d.payload.clone(), d.origin).is_none(),
            "a reply twice"
        );
    }
    for s in &far {
        assert_eq!(
            replies.get(&Bytes::from(format!("reply from {s}"))),
            Some(&key(*s))
        );
    }
    // The neighbours of node 1 carried messages and opened none.
    for s in &near {
        let st = nodes[(*s - 1) as usize].tx.stats();
        assert_eq!(st.core.delivered, 0, "node {s} delivered a relayed message");
    }
    let forwarded: u64 = nodes.iter().map(|n| n.tx.stats().core.forwarded).sum();
    assert!(
        forwarded >= 2 * far.len() as u64,
        "{forwarded} envelopes relayed"
    );
    assert_eq!(
        me.node.handle().metrics().route_count(ROUTED, "sent"),
        far.len() as u64
    );
    for n in nodes {
        shutdown(n.node);
    }
}

/// A node with no connection: `NoRoute`. A neighbour that sends garbage on
/// the routed channel: counted as malformed and disconnected.
fn no_route_and_a_garbage_neighbour(backend: Backend) {
    let alone = route_on(start_node(
        backend,
        30,
        any_addr(),
        &[],
        &[],
        &[overlay_chan(ROUTED)],
        |_| {},
    ));
    assert_eq!(
        alone.tx.send(&key(31), b"anyone?"),
        Err(RouteError::NoRoute)
    );

    let a = route_on(start_node(
        backend,
        1,
        any_addr(),
        &[2],
        &[],
        &[overlay_chan(ROUTED)],
        |_| {},
    ));
    let b = start_node(
        backend,
        2,
        any_addr(),
        &[1],
        &[(1, a.node.addr)],
        &[overlay_chan(ROUTED)],
        |_| {},
    );
    assert!(b.handle().wait_peers(WAIT, |p| p.contains(&key(1))));
    wait_until("node 1's router sees node 2", || a.tx.is_neighbor(&key(2)));
    let (tx, _) = &b.channels[0];
    for _ in 0..40 {
        let _ = tx.send(
            &key(1),
            Bytes::from_static(b"\xfenot an envelope"),
            Priority::Low,
        );
    }
    wait_until("the garbage neighbour is disconnected", || {
        a.tx.stats().misbehaving_disconnects >= 1
    });
    let m = a.node.handle().metrics();
    assert!(m.route_count(ROUTED, "malformed") >= 16);
    assert!(m.route_count(ROUTED, "misbehaving_disconnect") >= 1);
    for n in [alone.node, a.node, b] {
        shutdown(n);
    }
    assert_eq!(alone.tx.send(&key(31), b"later"), Err(RouteError::Closed));

    // A channel too small for the payload bound plus framing is refused.
    let mut small = start_node(backend, 40, any_addr(), &[], &[], &[chan(ROUTED)], |_| {});
    let channel = small.channels.remove(0);
    match small.handle().route(channel, RouteConfig::default(), 16) {
        Err(shoal::Error::InvalidConfig { field, .. }) => assert_eq!(field, "route max_payload"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a 1 MiB channel took 1 MiB payloads plus framing"),
    }
    shutdown(small);
}

both_backends!(
    a_message_finds_its_way_and_the_reply_comes_back,
    no_route_and_a_garbage_neighbour,
);
