//! Helpers for integration tests: loopback clusters on either backend.
#![allow(dead_code)]

use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use shoal::{
    Backend, Config, Ed25519Signer, Network, NetworkHandle, Oracle, PublicKey, Receiver, Sender,
};

pub const WAIT: Duration = Duration::from_secs(20);

/// A handler the tests pass around before serving a channel with it.
pub type Handler =
    Arc<dyn Fn(&PublicKey, bytes::Bytes) -> shoal::HandlerResult + Send + Sync + 'static>;

thread_local! {
    static SHARDS: Cell<usize> = const { Cell::new(1) };
}

/// Data shards per node for the nodes this test thread starts: 1, or 2 in
/// the `*_two_shards` variants [`both_backends!`] generates. Every helper that
/// builds a node config applies it (before the test's own tweak).
pub fn shards() -> usize {
    SHARDS.with(|s| s.get())
}

/// Runs `f` with [`shards`] set to `n` on this thread.
pub fn with_shards<R>(n: usize, f: impl FnOnce() -> R) -> R {
    let before = SHARDS.with(|s| s.replace(n));
    let r = f();
    SHARDS.with(|s| s.set(before));
    r
}

/// A node config on `backend` with this thread's [`shards`].
pub fn local_config(backend: Backend, listen: Option<SocketAddr>) -> Config {
    let mut cfg = Config::local(listen);
    cfg.io.backend = backend;
    cfg.io.shards = shards();
    cfg
}

/// Polls `cond` (a metric, a socket state: what has no event to await)
/// until it holds; panics past `WAIT`. Returns the time taken.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    let deadline = start + WAIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

/// io_uring availability; tests for it skip (with a printed reason) without it.
pub fn backend_available(backend: Backend) -> bool {
    if backend != Backend::IoUring {
        return true;
    }
    match io_uring_probe() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIP: io_uring unavailable here: {e}");
            false
        }
    }
}

fn io_uring_probe() -> Result<(), String> {
    // Start a throwaway network on io_uring; failure means unavailable.
    let mut cfg = Config::local(None);
    cfg.io.backend = Backend::IoUring;
    let (net, _o) = Network::new(cfg).map_err(|e| e.to_string())?;
    let h = net.start().map_err(|e| e.to_string())?;
    h.shutdown(Duration::from_millis(10));
    Ok(())
}

/// A loopback address with port 0: the node binds a fresh port and reports
/// it (`Node::addr`). Reserving a port up front races with ephemeral ports.
pub fn any_addr() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
}

/// A free loopback port (bound then released) — only for restarting a node
/// on the port it had.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap()
}

/// Tells every node the address of every other node.
pub fn introduce_all(nodes: &[Node]) {
    for a in nodes {
        for b in nodes {
            if a.seed != b.seed {
                a.oracle.add_address(b.key(), b.addr);
            }
        }
    }
}

pub fn signer(seed: u64) -> Arc<Ed25519Signer> {
    Arc::new(Ed25519Signer::insecure_from_seed(seed))
}

pub fn key(seed: u64) -> PublicKey {
    shoal::crypto::Signer::public_key(&*signer(seed)).clone()
}

pub struct Node {
    pub seed: u64,
    pub addr: SocketAddr,
    pub handle: Option<NetworkHandle>,
    pub oracle: Oracle,
    pub channels: Vec<(Sender, Receiver)>,
}

impl Node {
    pub fn handle(&self) -> &NetworkHandle {
        self.handle.as_ref().unwrap()
    }
    pub fn key(&self) -> PublicKey {
        key(self.seed)
    }
}

pub struct ChannelDef {
    pub quota: Option<shoal::Quota>,
    pub id: u32,
    pub max_size: usize,
    pub backlog: usize,
    pub compression: Option<i32>,
}

impl ChannelDef {
    pub fn config(&self) -> shoal::ChannelConfig {
        let mut c = shoal::ChannelConfig::new(self.id)
            .max_size(self.max_size)
            .capacity(self.backlog);
        if let Some(q) = self.quota {
            c = c.quota(q);
        }
        if let Some(level) = self.compression {
            c = c.compression(level);
        }
        c
    }
}

/// A channel for gossip or routed unicast: room for their default 1 MiB
/// payload plus framing.
pub fn overlay_chan(id: u32) -> ChannelDef {
    ChannelDef {
        max_size: 2 << 20,
        ..chan(id)
    }
}

pub fn chan(id: u32) -> ChannelDef {
    ChannelDef {
        quota: None,
        id,
        max_size: 1 << 20,
        backlog: 1024,
        compression: None,
    }
}

/// Starts node `seed` listening on `addr`, authorizing `peers` (seeds), with
/// the addresses of `dial` (seed, addr) known.
pub fn start_node(
    backend: Backend,
    seed: u64,
    addr: SocketAddr,
    peers: &[u64],
    dial: &[(u64, SocketAddr)],
    channels: &[ChannelDef],
    tweak: impl FnOnce(&mut Config),
) -> Node {
    let mut cfg = local_config(backend, Some(addr)).with_identity(signer(seed));
    tweak(&mut cfg);
    let (mut net, oracle) = Network::new(cfg).expect("config");
    let mut chans = Vec::new();
    for c in channels {
        chans.push(net.register(c.config()).expect("register"));
    }
    oracle.register(0, peers.iter().map(|s| key(*s)).collect());
    for (s, a) in dial {
        oracle.add_address(key(*s), *a);
    }
    let handle = net.start().expect("start");
    if backend != Backend::Auto {
        assert_eq!(handle.backend(), backend, "the requested backend runs");
    }
    Node {
        seed,
        addr: handle.local_addr().unwrap(),
        handle: Some(handle),
        oracle,
        channels: chans,
    }
}

/// A full mesh of `n` nodes (seeds 1..=n); each knows every address.
pub fn mesh(
    backend: Backend,
    n: u64,
    channels: &[ChannelDef],
    tweak: impl Fn(&mut Config),
) -> Vec<Node> {
    let seeds: Vec<u64> = (1..=n).collect();
    let nodes: Vec<Node> = seeds
        .iter()
        .map(|s| start_node(backend, *s, any_addr(), &seeds, &[], channels, &tweak))
        .collect();
    introduce_all(&nodes);
    for node in &nodes {
        let want = (n - 1) as usize;
        assert!(
            node.handle().wait_peers(WAIT, |p| p.len() == want),
            "node {} did not connect to all peers",
            node.seed
        );
    }
    nodes
}

/// Defines, for every `fn NAME(Backend)` given, the test matrix: `epoll::NAME`
/// and `io_uring::NAME` (one shard per node) and `epoll_two_shards::NAME` and
/// `io_uring_two_shards::NAME` (two: connections, and so sends, RPC and
/// replacements, spread over shards). The io_uring ones skip (with a printed
/// reason) where io_uring is unavailable.
#[allow(unused_macros)]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { super::$name(shoal::Backend::Epoll) } )*
        }
        mod io_uring {
            $( #[test] fn $name() {
                if super::backend_available(shoal::Backend::IoUring) {
                    super::$name(shoal::Backend::IoUring)
                }
            } )*
        }
        mod epoll_two_shards {
            $( #[test] fn $name() {
                super::with_shards(2, || super::$name(shoal::Backend::Epoll))
            } )*
        }
        mod io_uring_two_shards {
            $( #[test] fn $name() {
                if super::backend_available(shoal::Backend::IoUring) {
                    super::with_shards(2, || super::$name(shoal::Backend::IoUring))
                }
            } )*
        }
    };
}

/// Seeds `1..=n` on a ring where each node is connected to the `reach`
/// nearest on either side (degree `2 * reach`), each link dialed by one
/// end, every node with `channels` registered; node `i` authorizes its
/// ring neighbours and the seeds `extra(i)`. Returns once every node has
/// its neighbours.
pub fn ring(
    backend: Backend,
    n: u64,
    reach: u64,
    channels: &[ChannelDef],
    extra: impl Fn(u64) -> Vec<u64>,
) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=n)
        .map(|i| {
            let mut peers = ring_neighbours(n, reach, i);
            peers.extend(extra(i));
            start_node(backend, i, any_addr(), &peers, &[], channels, |c| {
                c.limits.max_inbound = 64;
            })
        })
        .collect();
    for i in 1..=n {
        for d in 1..=reach {
            let j = (i - 1 + d) % n + 1;
            let addr = nodes[(j - 1) as usize].addr;
            nodes[(i - 1) as usize].oracle.add_address(key(j), addr);
        }
    }
    for node in &nodes {
        let want: Vec<_> = ring_neighbours(n, reach, node.seed)
            .into_iter()
            .map(key)
            .collect();
        assert!(
            node.handle()
                .wait_peers(WAIT, |p| want.iter().all(|k| p.contains(k))),
            "node {} reaches its {} neighbours",
            node.seed,
            want.len()
        );
    }
    nodes
}

/// The seeds node `i` is connected to on [`ring`]`(_, n, reach, ..)`.
pub fn ring_neighbours(n: u64, reach: u64, i: u64) -> Vec<u64> {
    (1..=reach)
        .flat_map(|d| [(i - 1 + d) % n + 1, (i - 1 + n - d) % n + 1])
        .collect()
}

/// Threads of this process whose name starts with `shoal-` (the engine's).
pub fn shoal_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .map(|c| c.starts_with("shoal-"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Largest part in one frame: inside the default `max_frame_body`.
pub const PART: usize = 60_000;

/// The sealed frames of one whole message on `channel`, as an honest
/// sender writes them: parts of at most [`PART`] bytes, one per frame.
pub fn message_frames(
    sealer: &mut shoal::crypto::RecordSealer,
    channel: u32,
    message_id: u64,
    payload: &[u8],
) -> Vec<Vec<u8>> {
    let parts: Vec<&[u8]> = payload.chunks(PART).collect();
    let mut frames = Vec::with_capacity(parts.len());
    for (part, chunk) in parts.iter().enumerate() {
        let header = shoal::wire::DataHeader {
            channel,
            message_id,
            part: part as u32,
            total_parts: parts.len() as u32,
            total_len: payload.len() as u64,
            compressed: false,
            request_id: 0,
            status: 0,
        };
        let mut buf = bytes::BytesMut::with_capacity(chunk.len() + 64);
        buf.extend_from_slice(&[0u8; 4]);
        shoal::wire::RecordWriter::new(&mut buf, PART + 256)
            .push_data(shoal::wire::RecordKind::Data, &header, chunk)
            .unwrap();
        buf.extend_from_slice(&[0u8; shoal::crypto::TAG_LEN]);
        sealer.seal_in_place(&mut buf[4..]).unwrap();
        let len = buf.len() - 4;
        buf[..4].copy_from_slice(&shoal::wire::encode_header(len));
        frames.push(buf.to_vec());
    }
    frames
}

/// Shuts every node down (500 ms to flush).
pub fn stop_all(nodes: Vec<Node>) {
    for mut n in nodes {
        if let Some(h) = n.handle.take() {
            h.shutdown(Duration::from_millis(500));
        }
    }
}
