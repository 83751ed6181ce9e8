//! The bench's loopback cluster: a hub and its spokes, connected and
//! ready before a scenario starts.
//!
//! # Design
//! Every node gets a fresh identity, the plan's base config (its backend,
//! and with `--pin` its own cores), channel 1 for messages and
//! [`RPC_CHANNEL`] answered by an in-shard echo handler. Each spoke
//! authorizes only the hub and the hub every spoke, so a scenario sees
//! exactly `spokes` connections; [`cluster`] returns once all of them are
//! established (or fails after 10 s). Scenarios that need more register
//! their channels and handlers through [`cluster_with`].

use std::sync::Arc;
use std::time::Duration;

use shoal_engine::{
    Backend, ChannelConfig, Ed25519Signer, Network, NetworkHandle, PublicKey, Receiver, Sender,
};

use crate::plan::Plan;

/// One bench node.
pub(crate) struct Node {
    pub(crate) h: NetworkHandle,
    pub(crate) tx: Sender,
    pub(crate) rx: Receiver,
    /// Channel [`RPC_CHANNEL`]: requests, answered by an in-shard echo
    /// handler on every node.
    pub(crate) rpc: Sender,
}

/// The request scenario's channel.
const RPC_CHANNEL: u32 = 2;

/// A hub and `spokes` nodes, every spoke connected to the hub (spokes do
/// not authorize each other).
pub(crate) struct Cluster {
    pub(crate) hub: Node,
    pub(crate) spokes: Vec<Node>,
}

pub(crate) fn cluster(
    p: &Plan,
    backend: Backend,
    spokes: usize,
    max_size: usize,
) -> Result<Cluster, String> {
    cluster_with(p, backend, spokes, max_size, &[], &|_, _| Ok(()))
}

/// [`cluster`], with `extra(i, network)` run on node `i` (0 is the hub)
/// before it starts, for scenario-specific channels and handlers.
pub(crate) fn cluster_with(
    p: &Plan,
    backend: Backend,
    spokes: usize,
    max_size: usize,
    hub_also_allows: &[PublicKey],
    extra: &dyn Fn(usize, &mut Network) -> Result<(), String>,
) -> Result<Cluster, String> {
    let ids: Vec<Arc<Ed25519Signer>> = (0..=spokes)
        .map(|_| Arc::new(Ed25519Signer::generate()))
        .collect();
    let keys: Vec<PublicKey> = ids
        .iter()
        .map(|s| shoal_crypto::Signer::public_key(&**s).clone())
        .collect();
    let mut nodes = Vec::new();
    let mut oracles = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut cfg = p.base.clone().with_identity(id.clone());
        cfg.io.backend = backend;
        // With pinning, consecutive nodes take consecutive cores.
        cfg.io.core_offset = i * cfg.shard_count();
        if i == 0 {
            cfg.limits.max_inbound = cfg
                .limits
                .max_inbound
                .max(hub_also_allows.len() + spokes + 16);
        }
        let (mut net, oracle) = Network::new(cfg).map_err(|e| e.to_string())?;
        let (tx, rx) = net
            .register(
                ChannelConfig::new(1)
                    .max_size(max_size.max(1024))
                    .capacity(8192),
            )
            .map_err(|e| e.to_string())?;
        let (rpc, _requests) = net
            .register(ChannelConfig::new(RPC_CHANNEL).max_size(max_size.max(1024)))
            .map_err(|e| e.to_string())?;
        net.serve(RPC_CHANNEL, |_, request| Ok(Some(request)))
            .map_err(|e| e.to_string())?;
        extra(i, &mut net)?;
        if i == 0 {
            let mut allowed = keys.clone();
            allowed.extend_from_slice(hub_also_allows);
            oracle.register(0, allowed);
        } else {
            oracle.register(0, vec![keys[0].clone()]);
        }
        let h = net.start().map_err(|e| e.to_string())?;
        nodes.push(Node { h, tx, rx, rpc });
        oracles.push(oracle);
    }
    let hub_addr = nodes[0].h.local_addr().ok_or("no listen address")?;
    for i in 1..nodes.len() {
        let addr = nodes[i].h.local_addr().ok_or("no listen address")?;
        oracles[0].add_address(keys[i].clone(), addr);
        oracles[i].add_address(keys[0].clone(), hub_addr);
    }
    let wait = Duration::from_secs(10);
    if !nodes[0].h.wait_peers(wait, |x| x.len() == spokes)
        || !nodes[1..]
            .iter()
            .all(|n| n.h.wait_peers(wait, |x| x.len() == 1))
    {
        return Err(format!(
            "the {} bench nodes did not connect within {} s",
            spokes + 1,
            wait.as_secs()
        ));
    }
    let mut it = nodes.into_iter();
    let hub = it.next().ok_or("no node")?;
    Ok(Cluster {
        hub,
        spokes: it.collect(),
    })
}

pub(crate) fn label(b: Backend) -> &'static str {
    match b {
        Backend::IoUring => "io_uring",
        Backend::Epoll => "epoll",
        Backend::Auto => "auto",
    }
}

pub(crate) fn backend_name(h: &NetworkHandle) -> String {
    label(h.backend()).to_string()
}
