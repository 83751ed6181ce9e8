//! Authorized discovery over real loopback sockets, both backends: a 50-node
//! mesh from one bootstrapper, a restart on a new port found through its newer
//! signed record, and peer-set changes that disconnect and connect.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use shoal::{Backend, Config};

fn small(c: &mut Config) {
    c.io.uring.recv_buffers = 32;
    c.io.shard_queue = 4096;
}

fn fifty_nodes_reach_a_full_mesh_from_one_bootstrapper(backend: Backend) {
    const N: u64 = 50;
    let seeds: Vec<u64> = (1..=N).collect();
    let started = Instant::now();
    // Every node knows only node 1's address; node 1 knows node 2's.
    let first = start_node(backend, 1, any_addr(), &seeds, &[], &[chan(1)], small);
    let boot = (1, first.addr);
    let mut nodes = vec![first];
    for &s in &seeds[1..] {
        nodes.push(start_node(
            backend,
            s,
            any_addr(),
            &seeds,
            &[boot],
            &[chan(1)],
            small,
        ));
    }
    nodes[0].oracle.add_address(key(2), nodes[1].addr);
    for n in &nodes {
        assert!(
            n.handle()
                .wait_peers(Duration::from_secs(90), |p| p.len() == (N - 1) as usize),
            "node {} has {} of {} peers",
            n.seed,
            n.handle().peers().len(),
            N - 1
        );
    }
    eprintln!(
        "{backend:?}: {N} nodes reached a full mesh from one bootstrapper in {:.2?}",
        started.elapsed()
    );
}

fn restart_on_a_new_port_is_found_through_the_newer_record(backend: Backend) {
    let all = [1, 2, 3];
    let a = start_node(backend, 1, any_addr(), &all, &[], &[chan(1)], small);
    let a_addr = a.addr;
    let b = start_node(
        backend,
        2,
        any_addr(),
        &all,
        &[(1, a_addr)],
        &[chan(1)],
        small,
    );
    // Node 3 only ever dials its bootstrapper (node 1): the others must find
    // it through its signed record.
    let only_bootstrap = |c: &mut Config| {
        small(c);
        c.limits.max_outbound = 1;
    };
    let c = start_node(
        backend,
        3,
        any_addr(),
        &all,
        &[(1, a_addr)],
        &[chan(1)],
        only_bootstrap,
    );
    assert!(
        b.handle().wait_peers(WAIT, |p| p.contains(&key(3))),
        "b found c via gossip"
    );
    let old_port = c.addr.port();
    drop(c);
    assert!(
        b.handle().wait_peers(WAIT, |p| !p.contains(&key(3))),
        "b saw c leave"
    );
    let c2 = start_node(
        backend,
        3,
        any_addr(),
        &all,
        &[(1, a_addr)],
        &[chan(1)],
        only_bootstrap,
    );
    assert_ne!(c2.addr.port(), old_port);
    assert!(
        b.handle().wait_peers(WAIT, |p| p.contains(&key(3))),
        "b dialed c at its new port, learned from the newer record"
    );
    drop(a);
}

fn a_new_peer_set_disconnects_the_old_and_connects_the_new(backend: Backend) {
    let one_set = |c: &mut Config| {
        small(c);
        c.discovery.tracked_peer_sets = 1;
    };
    // Set 0 = {1, 2, 3}; node 4 only tracks set 1 = {1, 3, 4} from the start.
    let nodes: Vec<Node> = (1..=3u64)
        .map(|s| start_node(backend, s, any_addr(), &[1, 2, 3], &[], &[chan(1)], one_set))
        .collect();
    introduce_all(&nodes);
    for n in &nodes {
        assert!(n.handle().wait_peers(WAIT, |p| p.len() == 2));
    }
    let dial: Vec<(u64, SocketAddr)> = nodes.iter().map(|n| (n.seed, n.addr)).collect();
    let d = start_node(
        backend,
        4,
        any_addr(),
        &[1, 3, 4],
        &dial,
        &[chan(1)],
        one_set,
    );
    for n in &nodes {
        n.oracle.add_address(key(4), d.addr);
    }
    for n in [&nodes[0], &nodes[2]] {
        n.oracle.register(1, vec![key(1), key(3), key(4)]);
    }
    let want = |me: u64| -> Vec<shoal::PublicKey> {
        [1u64, 3, 4]
            .iter()
            .filter(|&&s| s != me)
            .map(|&s| key(s))
            .collect()
    };
    for (n, seed) in [(&nodes[0], 1), (&nodes[2], 3), (&d, 4)] {
        let w = want(seed);
        assert!(
            n.handle()
                .wait_peers(WAIT, |p| p.len() == 2 && w.iter().all(|k| p.contains(k))),
            "node {seed} is connected to exactly the new set"
        );
    }
    assert!(
        nodes[1].handle().wait_peers(WAIT, |p| p.is_empty()),
        "node 2 was dropped by everyone"
    );
}

both_backends!(
    fifty_nodes_reach_a_full_mesh_from_one_bootstrapper,
    restart_on_a_new_port_is_found_through_the_newer_record,
    a_new_peer_set_disconnects_the_old_and_connects_the_new,
);
