//! A validator set that changes at an epoch boundary.
//!
//! What it shows: who may connect is decided by the [`Oracle`]'s peer sets,
//! and changing them changes the connections, with no restart.
//! - Epoch 0: the set is {A, B, C}. D runs too, but nobody in the set
//!   accepts it, so it stays alone.
//! - Epoch 1: the set becomes {A, B, D}. D connects at once, and C stays
//!   connected: each node keeps the last `tracked_peer_sets` sets (2 here)
//!   and authorizes their union, so for one epoch all four form a mesh.
//!   That overlap lets the outgoing validators finish the epoch change.
//! - Epoch 2: the set is {A, B, D} again. Set 0 falls out of the window, C
//!   is in no tracked set any more and every node drops it.
//!
//! Every node registers the same sets, as validators that follow the same
//! chain do. The program prints each node's peers after every step and the
//! peer events A saw ([`NetworkHandle::events`]).
//!
//! Run it with `cargo run --release --example validator_set`. It binds four
//! ephemeral loopback ports and exits within a few seconds; it exits
//! non-zero with a message if the connections do not reach the expected
//! state within 10 s at any step.

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use shoal::{ChannelConfig, Config, Event, Network, NetworkHandle, Oracle, PublicKey};

const WAIT: Duration = Duration::from_secs(10);

struct Node {
    name: &'static str,
    handle: NetworkHandle,
    oracle: Oracle,
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut nodes = Vec::new();
    for name in ["A", "B", "C", "D"] {
        let mut cfg = Config::local(Some("127.0.0.1:0".parse::<SocketAddr>()?));
        // How many of the latest peer sets stay authorized (default 4).
        cfg.discovery.tracked_peer_sets = 2;
        let (mut net, oracle) = Network::new(cfg)?;
        // A channel is not needed to connect; an application would have its
        // consensus channels here.
        let _channel = net.register(ChannelConfig::new(1).max_size(1024).capacity(16))?;
        let handle = net.start()?;
        nodes.push(Node {
            name,
            handle,
            oracle,
        });
    }
    let key_of: HashMap<&str, PublicKey> = nodes
        .iter()
        .map(|n| (n.name, n.handle.public_key()))
        .collect();
    let key = |name: &str| key_of[name].clone();
    let names = |keys: &[PublicKey]| -> String {
        let mut n: Vec<&str> = nodes
            .iter()
            .filter(|node| keys.contains(&node.handle.public_key()))
            .map(|node| node.name)
            .collect();
        n.sort();
        n.join(", ")
    };

    // Every node knows every address (from a config file, a registry or
    // the chain); addresses alone authorize nothing.
    for node in &nodes {
        for other in &nodes {
            if let (true, Some(addr)) = (other.name != node.name, other.handle.local_addr()) {
                node.oracle.add_address(other.handle.public_key(), addr);
            }
        }
    }
    // Subscribed before any set is registered: A's event stream sees
    // every connection it makes from here on.
    let mut a_events = nodes[0].handle.events();

    let epochs: [(u64, [&str; 3]); 3] = [
        (0, ["A", "B", "C"]),
        (1, ["A", "B", "D"]),
        (2, ["A", "B", "D"]),
    ];
    // Who each node is connected to once the epoch's change has settled.
    let expected: [[&[&str]; 4]; 3] = [
        [&["B", "C"], &["A", "C"], &["A", "B"], &[]],
        [
            &["B", "C", "D"],
            &["A", "C", "D"],
            &["A", "B", "D"],
            &["A", "B", "C"],
        ],
        [&["B", "D"], &["A", "D"], &[], &["A", "B"]],
    ];
    for ((index, set), expected) in epochs.iter().zip(expected) {
        println!("epoch {index}: peer set {{{}}}", set.join(", "));
        let keys: Vec<PublicKey> = set.iter().map(|n| key(n)).collect();
        for node in &nodes {
            node.oracle.register(*index, keys.clone());
        }
        for (node, want) in nodes.iter().zip(expected) {
            let want: Vec<PublicKey> = want.iter().map(|n| key(n)).collect();
            let settled = node.handle.wait_peers(WAIT, |peers| {
                peers.len() == want.len() && want.iter().all(|k| peers.contains(k))
            });
            let now = node.handle.peers();
            if !settled {
                return Err(format!(
                    "epoch {index}: {} is connected to [{}], expected [{}]",
                    node.name,
                    names(&now),
                    names(&want)
                )
                .into());
            }
            println!("  {} is connected to [{}]", node.name, names(&now));
        }
        // The events are already there: `try_recv` takes them without
        // waiting.
        while let Ok(Some(event)) = a_events.try_recv() {
            match event {
                Event::Connected(peer) => println!("  A saw {} connect", names(&[peer])),
                Event::Disconnected { peer, reason } => {
                    println!("  A saw {} drop: {reason}", names(&[peer]))
                }
                Event::Lagged(n) => println!("  A missed {n} events"),
            }
        }
    }

    for node in nodes {
        node.handle.shutdown(Duration::from_millis(200));
    }
    Ok(())
}
