//! The idle-connection memory scenario: how much resident memory one
//! established, idle connection costs a node.
//!
//! # Design
//! One node (the hub) listens; `conns` lightweight clients in the same
//! process each complete a real handshake (shoal-crypto's sans-IO
//! [`Handshake`] over a blocking socket) and then hold the socket without
//! speaking. A client costs the process a file descriptor and nothing else,
//! so the growth of the process's resident set between "hub started" and
//! "hub holds `conns` established connections" is the hub's cost. The hub's
//! idle timeout is raised for the run so that the silent clients stay
//! connected while they are counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal::crypto::{Ed25519Signer, Handshake, HandshakeConfig, Identity, PublicKey, Signer};
use shoal::engine::{Backend, Config, Network, NetworkHandle};

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

/// This process's resident set in KiB (Linux `/proc/self/status`).
pub fn rss_kib() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS line in /proc/self/status".to_string())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Dials `addr`, completes the handshake as `identity`, returns the socket.
fn handshake(
    addr: SocketAddr,
    hub: &PublicKey,
    identity: Identity,
    cfg: &Arc<HandshakeConfig>,
    max_frame: usize,
) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut hs = Handshake::dialer(identity, hub.clone(), cfg.clone(), unix_ms());
    loop {
        while let Some(frame) = hs.poll_transmit() {
            s.write_all(&frame).map_err(|e| format!("write: {e}"))?;
        }
        if hs.is_complete() {
            return Ok(s);
        }
        let mut header = [0u8; 4];
        s.read_exact(&mut header)
            .map_err(|e| format!("read: {e}"))?;
        let len = u32::from_be_bytes(header) as usize;
        if len == 0 || len > max_frame {
            return Err(format!("handshake frame of {len} bytes"));
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
        hs.handle_frame(&mut body, unix_ms(), &mut |k| k == hub)
            .map_err(|e| format!("handshake: {e}"))?;
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
    cfg.backend = backend;
    cfg.max_inbound = conns + 16;
    cfg.idle_timeout = Duration::from_secs(600);
    let hs_cfg = Arc::new(HandshakeConfig {
        namespace: cfg.namespace.clone(),
        max_age: cfg.handshake_max_age,
        synchrony_bound: cfg.synchrony_bound,
        timeout: cfg.handshake_timeout,
    });
    let max_frame = cfg.max_frame_body;
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
        sockets.push(handshake(addr, &hub_key, identity, &hs_cfg, max_frame)?);
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
