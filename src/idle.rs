//! The idle-connection memory scenario: how much resident memory one
//! established, idle connection costs a node.
//!
//! # Design
//! One node (the hub) listens; `conns` lightweight clients in the same
//! process each complete a real handshake (`shoal::raw_client`: the
//! sans-IO handshake over a blocking socket) and then hold the socket without
//! speaking. A client costs the process a file descriptor and nothing else,
//! so the growth of the process's resident set between "hub started" and
//! "hub holds `conns` established connections" is the hub's cost. The hub's
//! idle timeout is raised for the run so that the silent clients stay
//! connected while they are counted.

use std::sync::Arc;
use std::time::Duration;

use shoal::crypto::{Ed25519Signer, Identity, Signer};
use shoal::engine::{Backend, Config, Network, NetworkHandle};
use shoal::raw_client;

fn rss_kib() -> Result<u64, String> {
    raw_client::rss_kib().map_err(|e| format!("cannot read this process's RSS: {e}"))
}

/// What the scenario measured.
pub struct IdleRss {
    pub backend: String,
    /// Connections the hub held when memory was read.
    pub established: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

impl IdleRss {
    pub fn per_connection_kib(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / self.established.max(1) as f64
    }
}

/// Runs the scenario on `backend` with `conns` idle connections.
pub fn idle_rss(base: &Config, backend: Backend, conns: usize) -> Result<IdleRss, String> {
    let clients: Vec<Arc<Ed25519Signer>> = (0..conns)
        .map(|_| Arc::new(Ed25519Signer::generate()))
        .collect();
    let hub_id = Arc::new(Ed25519Signer::generate());
    let hub_key = hub_id.public_key().clone();
    let mut cfg = base.clone().with_identity(hub_id);
    cfg.io.backend = backend;
    cfg.limits.max_inbound = conns + 16;
    cfg.timeouts.idle_timeout = Duration::from_secs(600);
    let client_cfg = cfg.clone();
    let (mut net, oracle) = Network::new(cfg).map_err(|e| e.to_string())?;
    let _channel = net
        .register(1, None, 1 << 16, 1024, None)
        .map_err(|e| e.to_string())?;
    oracle.register(0, clients.iter().map(|c| c.public_key().clone()).collect());
    let hub: NetworkHandle = net.start().map_err(|e| e.to_string())?;
    let addr = hub.local_addr().ok_or("the hub does not listen")?;
    let backend_name = crate::bench::label(hub.backend()).to_string();
    let rss_before_kib = rss_kib()?;
    let mut sockets = Vec::with_capacity(conns);
    for c in &clients {
        let identity: Identity = c.clone();
        let (socket, _session) = raw_client::dial(
            addr,
            &hub_key,
            identity,
            &client_cfg,
            Duration::from_secs(10),
        )
        .map_err(|e| format!("idle: client handshake: {e}"))?;
        sockets.push(socket);
    }
    let all = hub.wait_peers(Duration::from_secs(30), |p| p.len() == conns);
    let established = hub.peers().len();
    let rss_after_kib = rss_kib()?;
    drop(sockets);
    hub.shutdown(Duration::from_millis(100));
    if !all {
        return Err(format!(
            "idle: the hub established {established} of {conns} connections"
        ));
    }
    Ok(IdleRss {
        backend: backend_name,
        established,
        rss_before_kib,
        rss_after_kib,
    })
}
