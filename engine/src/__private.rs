//! What shoal's own benches and doc examples need of the engine's
//! internals. Not part of the API: no stability, no documentation beyond
//! this.
//!
//! # Design
//! The documented API lists only what an embedder uses; the per-message
//! cost bench (`benches/connection.rs`) drives the sans-IO connection
//! directly, and the doc examples of the public types start from two
//! connected nodes without repeating how to connect them in each one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::{ChannelConfig, Config, Ed25519Signer, Network, NetworkHandle, Receiver, Sender};

/// The sans-IO connection, for `benches/connection.rs`.
pub mod connection {
    pub use crate::connection::{
        ChannelLimit, ChannelLookup, Connection, ConnectionConfig, Event, Outgoing, Priority,
    };

    /// The connection config a network built from `config` gives its
    /// connections.
    pub fn config(config: &crate::Config) -> ConnectionConfig {
        config.connection_config()
    }
}

/// A started node and its channels.
pub type Node = (NetworkHandle, Vec<(Sender, Receiver)>);

/// Two nodes on loopback (identities from seeds 1 and 2), each authorizing
/// the other, with `channels` registered on both, connected: the first
/// dialed the second. Panics if they do not connect within 10 s.
pub fn connected_pair(channels: &[ChannelConfig]) -> [Node; 2] {
    connected_pair_with(channels, |_| Ok(()))
}

/// [`connected_pair`] with `setup` run on each network before it starts
/// (to serve a channel).
pub fn connected_pair_with(
    channels: &[ChannelConfig],
    setup: impl Fn(&mut Network) -> Result<(), crate::Error>,
) -> [Node; 2] {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let keys: Vec<_> = [1, 2]
        .map(|s| Arc::new(Ed25519Signer::insecure_from_seed(s)))
        .to_vec();
    let start = |i: usize| {
        let config = Config::local(Some(loopback)).with_identity(keys[i].clone());
        let (mut net, oracle) = Network::new(config).expect("config");
        let chans = channels
            .iter()
            .map(|c| net.register(c.clone()).expect("register"))
            .collect();
        setup(&mut net).expect("setup");
        oracle.register(
            0,
            keys.iter()
                .map(|k| crate::Signer::public_key(&**k).clone())
                .collect(),
        );
        (net.start().expect("start"), chans, oracle)
    };
    let (b, b_chans, _) = start(1);
    let (a, a_chans, a_oracle) = start(0);
    let b_addr = b.local_addr().expect("b listens");
    a_oracle.add_address(b.public_key(), b_addr);
    let (ka, kb) = (a.public_key(), b.public_key());
    let wait = Duration::from_secs(10);
    assert!(
        a.wait_peers(wait, |p| p.contains(&kb)) && b.wait_peers(wait, |p| p.contains(&ka)),
        "the pair did not connect"
    );
    [(a, a_chans), (b, b_chans)]
}
