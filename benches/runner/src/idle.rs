//! The idle-connection memory scenario: how much resident memory one
//! established, idle connection costs a node.
//!
//! # Design
//! One node (the hub) listens; `conns` lightweight clients in the same
//! process each complete a real handshake (`shoal_testkit::raw_client`:
//! the sans-IO handshake over a blocking socket) and then hold the socket without
//! speaking. A client costs the process a file descriptor and nothing else,
//! so the growth of the process's resident set between "hub started" and
//! "hub holds `conns` established connections" is the hub's cost. The hub's
//! idle timeout is raised for the run so that the silent clients stay
//! connected while they are counted.
//!
//! By default each backend is measured in a fresh child process
//! ([`idle_in_child`]: this executable's `bench --scenario idle
//! --in-process --json`), so memory one run freed cannot hide the next
//! run's growth; `--in-process` measures here ([`idle_rss`]).

use std::sync::Arc;
use std::time::Duration;

use shoal_crypto::{Ed25519Signer, Identity, Signer};
use shoal_engine::{Backend, ChannelConfig, Config, Network, NetworkHandle};
use shoal_testkit::{process, raw_client};

use crate::args::BenchArgs;
use crate::child::bench_command;
use crate::cluster::label;
use crate::result::RunResult;

fn rss_kib() -> Result<u64, String> {
    process::rss_kib().map_err(|e| format!("cannot read this process's RSS: {e}"))
}

/// What the scenario measured.
pub(crate) struct IdleRss {
    pub(crate) backend: String,
    /// Connections the hub held when memory was read.
    pub(crate) established: usize,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
}

impl IdleRss {
    pub(crate) fn per_connection_kib(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / self.established.max(1) as f64
    }
}

/// Runs the scenario on `backend` with `conns` idle connections.
pub(crate) fn idle_rss(base: &Config, backend: Backend, conns: usize) -> Result<IdleRss, String> {
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
        .register(ChannelConfig::new(1).max_size(1 << 16))
        .map_err(|e| e.to_string())?;
    oracle.register(0, clients.iter().map(|c| c.public_key().clone()).collect());
    let hub: NetworkHandle = net.start().map_err(|e| e.to_string())?;
    let addr = hub.local_addr().ok_or("the hub does not listen")?;
    let backend_name = label(hub.backend()).to_string();
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

/// Runs the idle scenario for one backend in a fresh `shoal bench` process
/// (same config file and shard count) and reads its JSON result.
pub(crate) fn idle_in_child(
    args: &BenchArgs,
    backend: Backend,
    conns: usize,
) -> Result<RunResult, String> {
    let mut cmd = bench_command(args, "idle", backend)?;
    cmd.args(["--in-process", "--json"])
        .args(["--connections", &conns.to_string()]);
    let out = cmd
        .output()
        .map_err(|e| format!("idle: cannot run the child bench: {e}"))?;
    if !out.status.success() {
        return Err(format!("idle: the child bench failed ({})", out.status));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("idle: bad child output: {e}"))?;
    let mut r = RunResult::new(
        "idle",
        v["backend"].as_str().unwrap_or("?").to_string(),
        v["shards"].as_u64().unwrap_or(0) as usize,
        0,
    );
    r.messages = v["messages"].as_u64().unwrap_or(0) as usize;
    r.delivered = v["delivered"].as_u64().unwrap_or(0) as usize;
    r.rss_per_connection_kib = v["rss_per_connection_kib"].as_f64();
    Ok(r)
}
