//! Open mode (noise's model): 100 loopback nodes bootstrapped from one
//! address find the true 16 closest ids to random targets (noise's own
//! lookup returned 4 of 16 on average), and send-to-id dials an unknown node.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rand::{Rng, SeedableRng};
use shoal::{Backend, ChannelConfig, Network, Priority, PublicKey};

fn start_open(
    backend: Backend,
    seed: u64,
    addr: SocketAddr,
    boot: Option<(u64, SocketAddr)>,
) -> Node {
    let mut cfg = local_config(backend, Some(addr)).with_identity(signer(seed));
    cfg.discovery.open = true;
    cfg.io.uring.recv_buffers = 16;
    cfg.io.shard_queue = 4096;
    let (mut net, oracle) = Network::new(cfg).unwrap();
    let ch = net
        .register(ChannelConfig::new(1).max_size(1 << 16).capacity(64))
        .unwrap();
    if let Some((s, a)) = boot {
        oracle.add_address(key(s), a);
    }
    let handle = net.start().unwrap();
    Node {
        seed,
        addr: handle.local_addr().unwrap(),
        handle: Some(handle),
        oracle,
        channels: vec![ch],
    }
}

/// `n` open-mode nodes; node 1 is everyone's bootstrap, node 2 is node 1's.
fn open_cluster(backend: Backend, n: u64) -> Vec<Node> {
    let first = start_open(backend, 1, any_addr(), None);
    let boot = (1, first.addr);
    let mut nodes = vec![first];
    for s in 2..=n {
        nodes.push(start_open(backend, s, any_addr(), Some(boot)));
    }
    nodes[0].oracle.add_address(key(2), nodes[1].addr);
    nodes
}

fn id(k: &PublicKey) -> [u8; 32] {
    k.as_bytes().try_into().unwrap()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut d = [0u8; 32];
    for i in 0..32 {
        d[i] = a[i] ^ b[i];
    }
    d
}

/// The 100-node runs are heavy for a 2-core machine: one at a time.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The acceptance run: 100 nodes, 100 lookups, >= 95 exact.
fn lookups_find_the_true_closest(backend: Backend) {
    lookup_accuracy(backend, 100);
}

fn lookup_accuracy(backend: Backend, default_nodes: u64) {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let n_nodes: u64 = std::env::var("OPEN_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_nodes);
    let nodes = open_cluster(backend, n_nodes);
    // Join: three rounds in which every node refreshes its neighbourhood
    // (a lookup of its own id), as a joining Kademlia node does.
    for _ in 0..3 {
        for n in &nodes {
            let _ = n.handle().lookup(id(&n.key())).blocking();
        }
    }
    let all: Vec<[u8; 32]> = nodes.iter().map(|n| id(&n.key())).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut exact = 0;
    let mut overlap_sum = 0;
    const LOOKUPS: usize = 100;
    for _ in 0..LOOKUPS {
        let target: [u8; 32] = rng.gen();
        let from = &nodes[rng.gen_range(0..nodes.len())];
        let mut truth: Vec<[u8; 32]> = all
            .iter()
            .copied()
            .filter(|i| *i != id(&from.key()))
            .collect();
        truth.sort_by_key(|i| xor(i, &target));
        truth.truncate(16);
        let got: Vec<[u8; 32]> = from
            .handle()
            .lookup(target)
            .blocking()
            .iter()
            .map(|(k, _)| id(k))
            .collect();
        let overlap = truth.iter().filter(|t| got.contains(t)).count();
        overlap_sum += overlap;
        if overlap == 16 {
            exact += 1;
        } else {
            eprintln!(
                "lookup {:02x?} from node {} returned {} ids, {overlap} of the true 16",
                &target[..3],
                from.seed,
                got.len()
            );
        }
    }
    eprintln!(
        "{backend:?}, {n_nodes} nodes: {exact}/{LOOKUPS} lookups returned exactly the true 16 closest (mean overlap {:.2}/16)",
        overlap_sum as f64 / LOOKUPS as f64
    );
    assert!(exact * 100 >= 95 * LOOKUPS, "only {exact}/{LOOKUPS} exact");
}

fn send_to_id_dials_a_node_found_by_lookup(backend: Backend) {
    let _one_at_a_time = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let nodes = open_cluster(backend, 6);
    for n in &nodes {
        let _ = n.handle().lookup(id(&n.key())).blocking();
    }
    // Node 6 sends to node 5 by id, whether or not they are connected yet.
    let (from, to) = (&nodes[5], &nodes[4]);
    assert!(
        from.handle().connect_id(&to.key(), WAIT),
        "found and dialed"
    );
    from.channels[0]
        .0
        .send(&to.key(), Bytes::from_static(b"by id"), Priority::Low)
        .result()
        .unwrap();
    let (sender, m) = to.channels[0].1.recv_blocking().unwrap();
    assert_eq!(sender, from.key());
    assert_eq!(m, Bytes::from_static(b"by id"));
    let _ = Duration::ZERO;
}

both_backends!(
    lookups_find_the_true_closest,
    send_to_id_dials_a_node_found_by_lookup
);
