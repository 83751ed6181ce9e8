//! The embedder's entry point: build, register channels, start, stop.
//!
//! # Design
//! [`Network::new`] validates the config and returns the network and its
//! [`Oracle`]. Channels are registered before [`Network::start`], which spawns
//! the data shards (one thread each, one driver each) and the control shard.
//! The control shard accepts connections and hands each to the live data
//! shard with the fewest connections (a failed shard gets none), dials
//! known authorized peers that are not connected (`dial_quick_attempts`
//! tries with jittered exponential backoff, then one per `dial_backoff_max`
//! for as long as the peer is authorized: a failed peer is never redialed
//! at once, and never given up on), and disconnects
//! peers that left every tracked set. [`NetworkHandle::shutdown`]
//! closes every connection gracefully (queued messages are flushed up to the
//! deadline), joins every thread, and returns only when every socket and
//! buffer is released.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver as StdReceiver};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use governor::Quota;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use shoal_crypto::PublicKey;
use shoal_wire::{CloseReason, Peers, Record};

use crate::channels::{ChannelSpec, Channels, Receiver, Sender};
use crate::clock::Clock;
use crate::config::{Backend, Config};
use crate::connection::{Authorizer, ControlOut};
use crate::discovery::{Discovery, DiscoveryConfig};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::open::{OpenAction, OpenMode};
use crate::oracle::{Oracle, OracleState};
use crate::peers::PeerTable;
use crate::shard::{Command, ShardCore, ShardLink};
use crate::shared::{ControlEvent, Shared};
use crate::waker::ShardWaker;

/// A configured, not yet started network.
pub struct Network {
    shared: Arc<Shared>,
    queues: Vec<StdReceiver<Command>>,
    channels: HashMap<u32, Arc<ChannelSpec>>,
    control_waker: Arc<ShardWaker>,
    control_rx: StdReceiver<ControlEvent>,
}

#[cfg(test)]
impl Network {
    /// Shard 0's core, built as `start` builds it but driven by the test (no
    /// thread, no sockets), with every key authorized.
    pub(crate) fn into_shard_core(self) -> ShardCore {
        let Network { shared, queues, .. } = self;
        let rx = queues.into_iter().next().expect("at least one shard");
        let conn_cfg = Arc::new(shared.config.connection_config());
        ShardCore::new(0, shared, rx, conn_cfg, Arc::new(|_: &PublicKey| true))
    }
}

impl Network {
    /// Validates `config` and builds the network and its oracle.
    pub fn new(config: Config) -> Result<(Network, Oracle), Error> {
        config.validate()?;
        let metrics = Metrics::default();
        let shards = config.shard_count();
        let mut links = Vec::with_capacity(shards);
        let mut queues = Vec::with_capacity(shards);
        for id in 0..shards {
            let (tx, rx) = sync_channel(config.io.shard_queue);
            let waker = Arc::new(ShardWaker::new(metrics.wakeups.clone())?);
            let slots = metrics
                .shard_connections
                .get_or_create(&crate::metrics::ShardLabel {
                    shard: id.to_string(),
                })
                .clone();
            links.push(ShardLink {
                tx,
                waker,
                load: crate::placement::ShardLoad::new(slots),
            });
            queues.push(rx);
        }
        let oracle = Arc::new(OracleState::new(config.discovery.tracked_peer_sets));
        let config_max_pending = config.limits.max_pending_requests;
        let config_max_connections = config
            .limits
            .max_inbound
            .saturating_add(config.limits.max_outbound);
        let inbound_ips =
            crate::inbound_limit::InboundLimit::new(config.admission.max_inbound_per_ip);
        let cooldown = crate::cooldown::PeerCooldown::new(config.admission.misbehavior_cooldown);
        let (control_tx, control_rx) = sync_channel(config.discovery.control_queue);
        let control_waker = Arc::new(ShardWaker::new(Counter::default())?);
        let shared = Arc::new(Shared {
            config,
            metrics,
            channels: OnceLock::new(),
            peers: PeerTable::default(),
            oracle: oracle.clone(),
            shards: links,
            inbound: AtomicUsize::new(0),
            inbound_ips,
            limiters: crate::limiters::LimiterStore::new(config_max_connections),
            cooldown,
            outbound: AtomicUsize::new(0),
            running: AtomicBool::new(false),
            rpc: crate::rpc::RpcState::new(shards, config_max_pending),
            control_tx,
            control_waker: control_waker.clone(),
        });
        Ok((
            Network {
                shared,
                queues,
                channels: HashMap::new(),
                control_waker,
                control_rx,
            },
            Oracle { state: oracle },
        ))
    }

    /// Registers a channel: inbound `quota` per peer (None = unlimited),
    /// `max_size` bytes per message, `backlog` messages waiting for the
    /// receiver, optional zstd `compression` level.
    pub fn register(
        &mut self,
        channel: u32,
        quota: Option<Quota>,
        max_size: usize,
        backlog: usize,
        compression: Option<i32>,
    ) -> Result<(Sender, Receiver), Error> {
        if self.channels.contains_key(&channel) {
            return Err(Error::DuplicateChannel(channel));
        }
        if backlog == 0 {
            return Err(Error::InvalidConfig {
                field: "backlog",
                reason: "must be > 0".into(),
            });
        }
        if max_size == 0 {
            return Err(Error::InvalidConfig {
                field: "max_size",
                reason: "must be > 0".into(),
            });
        }
        let spec = Arc::new(ChannelSpec {
            id: channel,
            max_size,
            compression,
            quota,
            backlog,
            inbox: crate::inbox::Inbox::new(backlog),
            input_held: AtomicBool::new(false),
            handler: OnceLock::new(),
            metrics: self.shared.metrics.channel(channel),
        });
        self.channels.insert(channel, spec.clone());
        Ok((
            Sender {
                spec: spec.clone(),
                shared: self.shared.clone(),
            },
            Receiver {
                spec,
                shared: self.shared.clone(),
            },
        ))
    }

    /// Runs `handler` on the receiving shard for every message and request
    /// on `channel` (registered first). Its reply answers a request, or is
    /// sent back on the channel for a plain message; an error or panic
    /// affects only that message. Requests on a channel without a handler
    /// are answered with [`crate::RpcStatus::NoHandler`].
    pub fn handle(&mut self, channel: u32, handler: crate::rpc::Handler) -> Result<(), Error> {
        let spec = self.channels.get(&channel).ok_or(Error::InvalidConfig {
            field: "channel",
            reason: format!("{channel} is not registered"),
        })?;
        spec.handler.set(handler).map_err(|_| Error::InvalidConfig {
            field: "channel",
            reason: format!("{channel} already has a handler"),
        })
    }

    /// The node's metrics (register them in a prometheus registry).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.config.identity.signer.public_key().clone()
    }

    /// Binds the listener and starts every thread.
    pub fn start(self) -> Result<NetworkHandle, Error> {
        let Network {
            shared,
            queues,
            channels,
            control_waker,
            control_rx,
        } = self;
        let _ = shared.channels.set(Arc::new(Channels {
            map: channels.into_iter().collect(),
        }));
        let config = &shared.config;
        let (backend, fallback) = crate::driver::resolve_backend(config.io.backend)?;
        if let Some(why) = &fallback {
            tracing::warn!(step = why.step, reason = %why.detail, "io_uring cannot run the driver here; using the epoll backend");
        }
        shared
            .metrics
            .backend
            .get_or_create(&crate::metrics::BackendLabel {
                backend: backend.label().to_string(),
                fallback: fallback.as_ref().map_or("none", |f| f.step).to_string(),
            })
            .set(1);

        let listener = match config.listen.address {
            Some(addr) => {
                let l = TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());

        let conn_cfg = Arc::new(config.connection_config());
        let oracle = shared.oracle.clone();
        let me = config.identity.signer.public_key().clone();
        let open = config.discovery.open;
        let judge = shared.clone();
        let authorizer: Authorizer = Arc::new(move |pk: &PublicKey| {
            if *pk == me || !(open || oracle.is_authorized(pk)) {
                return false;
            }
            if judge.cooldown.active(pk, Instant::now()) {
                judge.metrics.refuse("cooldown");
                return false;
            }
            true
        });

        shared.running.store(true, Ordering::Release);
        let mut threads = Vec::new();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        shared.metrics.shards_alive.set(queues.len() as i64);
        for (id, rx) in queues.into_iter().enumerate() {
            let core = ShardCore::new(id, shared.clone(), rx, conn_cfg.clone(), authorizer.clone());
            let busy = config.io.busy_poll;
            let pin = config
                .io
                .pin_cores
                .then_some((config.io.core_offset + id) % cores);
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("shoal-shard-{id}"))
                .spawn(move || {
                    if let Some(core_id) = pin {
                        crate::driver::pin_to_core(core_id);
                    }
                    // The core (and every connection on it) is released
                    // inside, on success, error and panic alike.
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::driver::run(core, backend, busy)
                    }));
                    shard_stopped(&shared, id, run);
                })?;
            threads.push(t);
        }

        let stop = Arc::new(AtomicBool::new(false));
        let control = {
            let shared = shared.clone();
            let stop = stop.clone();
            let waker = control_waker.clone();
            std::thread::Builder::new()
                .name("shoal-control".into())
                .spawn(move || {
                    control_loop(shared, listener, local_addr, control_rx, waker, stop)
                })?
        };

        Ok(NetworkHandle {
            shared,
            threads,
            control: Some(control),
            control_waker,
            stop,
            local_addr,
            backend,
        })
    }
}

/// A running network.
pub struct NetworkHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    control: Option<JoinHandle<()>>,
    control_waker: Arc<ShardWaker>,
    stop: Arc<AtomicBool>,
    local_addr: Option<SocketAddr>,
    backend: Backend,
}

impl NetworkHandle {
    /// The bound listen address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The backend actually in use (`Auto` resolved).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    #[cfg(feature = "test-hooks")]
    pub(crate) fn shard_link(&self, shard: usize) -> Option<&ShardLink> {
        self.shared.shards.get(shard)
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.config.identity.signer.public_key().clone()
    }

    /// Connected peers.
    pub fn peers(&self) -> Vec<PublicKey> {
        self.shared.peers.peers()
    }

    /// True if an established connection to `peer` exists.
    pub fn is_connected(&self, peer: &PublicKey) -> bool {
        self.shared.peers.contains(peer)
    }

    /// Blocks until `pred(connected peers)` holds or `timeout` passes;
    /// returns whether it holds.
    pub fn wait_peers(&self, timeout: Duration, pred: impl Fn(&[PublicKey]) -> bool) -> bool {
        self.shared.peers.wait_until(timeout, |peers| pred(peers))
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Measures the round trip to `peer` with a ping record.
    pub async fn ping(&self, peer: &PublicKey) -> Result<Duration, crate::rpc::RequestError> {
        use crate::rpc::RequestError;
        let h = self
            .shared
            .peers
            .get(peer)
            .ok_or(RequestError::NotConnected)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let link = self
            .shared
            .shards
            .get(h.id.shard)
            .ok_or(RequestError::NotConnected)?;
        link.send(Command::Ping {
            id: h.id,
            reply: tx,
        })
        .map_err(|_| RequestError::Full)?;
        rx.await.map_err(|_| RequestError::Disconnected)
    }

    /// Open mode: the nodes closest to `target` (a 32-byte node id, i.e. an
    /// ed25519 public key), found with an iterative Kademlia lookup.
    pub async fn lookup(&self, target: [u8; 32]) -> crate::open::LookupResult {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared
            .to_control(ControlEvent::Lookup { target, reply: tx });
        rx.await.unwrap_or_default()
    }

    /// Blocking variant of [`NetworkHandle::lookup`].
    pub fn lookup_blocking(&self, target: [u8; 32]) -> crate::open::LookupResult {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared
            .to_control(ControlEvent::Lookup { target, reply: tx });
        rx.blocking_recv().unwrap_or_default()
    }

    /// Open mode: refresh the neighbourhood (a lookup of our own id).
    pub async fn discover(&self) -> crate::open::LookupResult {
        let mut me = [0u8; 32];
        me.copy_from_slice(
            &self.public_key().as_bytes()[..32.min(self.public_key().as_bytes().len())],
        );
        self.lookup(me).await
    }

    /// Open mode: sends to the node with this id, looking it up and dialing
    /// it first when not connected (waits up to `timeout` for that).
    pub fn send_to_id_blocking(
        &self,
        sender: &Sender,
        id: &PublicKey,
        payload: bytes::Bytes,
        priority: bool,
        timeout: Duration,
    ) -> Result<(), crate::SendError> {
        if !self.is_connected(id) {
            let Ok(target) = <[u8; 32]>::try_from(id.as_bytes()) else {
                self.shared.metrics.send_not_connected.inc();
                return Err(crate::SendError::NotConnected);
            };
            // A lookup can end without the target when its query failed
            // (busy or briefly unreachable node): retry while time is left.
            let deadline = Instant::now() + timeout;
            let mut connected = false;
            while !connected && Instant::now() < deadline {
                let found = self.lookup_blocking(target);
                if let Some((_, addr)) = found.into_iter().find(|(k, _)| k == id) {
                    self.shared.to_control(ControlEvent::Dial {
                        peer: id.clone(),
                        addr,
                    });
                    let left = deadline.saturating_duration_since(Instant::now());
                    connected =
                        self.wait_peers(left.min(Duration::from_secs(5)), |p| p.contains(id));
                }
            }
            if !connected {
                self.shared.metrics.send_not_connected.inc();
                return Err(crate::SendError::NotConnected);
            }
        }
        sender.send_to(id, payload, priority)
    }

    /// Peer connected / disconnected events from now on (bounded: a
    /// subscriber that falls [`crate::peers::EVENT_CAPACITY`] events behind
    /// gets `Lagged(missed)`). Usable from any async runtime
    /// (`recv().await`) or a plain thread (`blocking_recv()`).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<crate::PeerEvent> {
        self.shared.peers.subscribe()
    }

    /// Stops accepting connections: the listening socket is closed, so new
    /// dials to this node are refused by the kernel. Established
    /// connections and our own dials are unaffected.
    pub fn stop_listening(&self) -> Result<(), Error> {
        self.set_listening(false).map(|_| ())
    }

    /// Listens again on the address the node was started with (the same
    /// port when it was chosen by the kernel); returns it.
    pub fn listen(&self) -> Result<SocketAddr, Error> {
        self.set_listening(true)?
            .ok_or_else(|| Error::Io(std::io::Error::other("no listen address configured")))
    }

    fn set_listening(&self, on: bool) -> Result<Option<SocketAddr>, Error> {
        let (tx, rx) = sync_channel(1);
        self.shared
            .to_control(ControlEvent::Listen { on, reply: tx });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r.map_err(Error::Io),
            Err(_) => Err(Error::Io(std::io::Error::other(
                "the control shard did not answer (stopped or overloaded)",
            ))),
        }
    }

    /// Closes the connection to `peer` gracefully.
    pub fn disconnect(&self, peer: &PublicKey) {
        if let Some(h) = self.shared.peers.get(peer) {
            if let Some(link) = self.shared.shards.get(h.id.shard) {
                let _ = link.send(Command::Close {
                    id: h.id,
                    reason: CloseReason::Normal,
                });
            }
        }
    }

    /// Graceful shutdown: stop accepting and dialing, close every connection
    /// (flushing queued messages until `flush` elapses), join every thread.
    pub fn shutdown(mut self, flush: Duration) {
        self.shutdown_inner(flush);
    }

    fn shutdown_inner(&mut self, flush: Duration) {
        self.shared.running.store(false, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        self.control_waker.request_resume();
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        let deadline = Instant::now() + flush;
        for link in &self.shared.shards {
            // The queue may be full of sends; keep trying until it takes the
            // shutdown or the deadline passes (the shard drains continuously).
            let mut cmd = Command::Shutdown { deadline };
            loop {
                match link.send(cmd) {
                    Ok(()) => break,
                    Err(c) => {
                        if Instant::now() >= deadline + Duration::from_secs(1) {
                            break;
                        }
                        cmd = c;
                        std::thread::yield_now();
                    }
                }
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // No shard delivers any more: close every channel so receivers
        // drain what is queued and then return `RecvError`.
        if let Some(channels) = self.shared.channels.get() {
            for spec in channels.map.values() {
                spec.inbox.close();
            }
        }
    }
}

impl Drop for NetworkHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() || self.control.is_some() {
            self.shutdown_inner(Duration::from_millis(100));
        }
    }
}

const LISTENER: Token = Token(0);
const CONTROL_WAKE: Token = Token(1);

struct DialState {
    failures: u32,
    next_allowed: Instant,
}

/// A node whose key is larger than the peer's waits this many dial periods
/// before its first dial, so that when both know each other's address the
/// smaller key (whose connection the tie-break keeps) usually dials first and
/// no connection has to be replaced.
const LARGER_KEY_GRACE_PERIODS: u32 = 2;

#[allow(clippy::too_many_arguments)]
fn control_loop(
    shared: Arc<Shared>,
    mut listener: Option<TcpListener>,
    local_addr: Option<SocketAddr>,
    inbox: StdReceiver<ControlEvent>,
    waker: Arc<ShardWaker>,
    stop: Arc<AtomicBool>,
) {
    let result = (|| -> std::io::Result<()> {
        let mut poll = Poll::new()?;
        let mut events = Events::with_capacity(64);
        if let Some(l) = &listener {
            poll.registry().register(
                &mut SourceFd(&l.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            )?;
        }
        poll.registry().register(
            &mut SourceFd(&waker.rx().as_raw_fd()),
            CONTROL_WAKE,
            Interest::READABLE,
        )?;
        let cfg = &shared.config;
        let me = cfg.identity.signer.public_key().clone();
        let clock = Clock::system();
        let mut discovery = Discovery::new(
            DiscoveryConfig {
                namespace: cfg.identity.namespace.clone(),
                tracked_peer_sets: cfg.discovery.tracked_peer_sets,
                peer_gossip_max: cfg.discovery.peer_gossip_max,
                synchrony_bound: cfg.timeouts.synchrony_bound,
                allow_private_ips: cfg.discovery.allow_private_ips,
            },
            cfg.identity.signer.clone(),
        );
        let advertise = cfg
            .listen
            .advertise
            .or(local_addr)
            .filter(|a| !a.ip().is_unspecified());
        if let Some(addr) = advertise {
            discovery.refresh_own(addr, clock.unix_ms(Instant::now()));
        }
        let mut next_shard = 0usize;
        let mut accept_rate = crate::accept_rate::AcceptRate::new(
            cfg.admission.accept_rate_per_ip,
            cfg.admission.accept_burst_per_ip,
        );
        let mut dial_states: HashMap<PublicKey, DialState> = HashMap::new();
        let mut next_dial = Instant::now();
        let mut next_gossip = Instant::now() + cfg.discovery.gossip_interval;
        let mut last_answer: HashMap<PublicKey, Instant> = HashMap::new();
        let mut seen_version = u64::MAX;
        let mut rng = rand::thread_rng();
        let mut open = if cfg.discovery.open {
            OpenMode::new(
                &me,
                cfg.identity.namespace.clone(),
                cfg.discovery.allow_private_ips,
            )
        } else {
            None
        };
        let mut open_actions = Vec::new();
        let mut join: Option<tokio::sync::oneshot::Receiver<crate::open::LookupResult>> = None;
        let mut now_dials: Vec<(PublicKey, SocketAddr)> = Vec::new();
        let mut pending: Vec<ControlEvent> = Vec::new();
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let mut wake_at = next_dial.min(next_gossip);
            if let Some(t) = open.as_ref().and_then(|o| o.poll_timeout()) {
                wake_at = wake_at.min(t);
            }
            let mut timeout = wake_at.saturating_duration_since(now);
            // Announce the sleep, then look at the inbox once more: a shard
            // that queued an event before seeing the flag gets it handled
            // now; one that queues after sees the flag and wakes us.
            waker.prepare_sleep();
            while pending.len() < cfg.discovery.control_queue {
                match inbox.try_recv() {
                    Ok(ev) => pending.push(ev),
                    Err(_) => break,
                }
            }
            if !pending.is_empty() {
                timeout = Duration::ZERO;
            }
            let polled = poll.poll(&mut events, Some(timeout));
            waker.cancel_sleep();
            if let Err(e) = polled {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            if stop.load(Ordering::Acquire) {
                break;
            }
            for ev in events.iter() {
                if ev.token() == CONTROL_WAKE {
                    waker.woke();
                }
            }
            let _ = waker.take_resume();
            // Accept everything pending.
            if let Some(l) = &listener {
                accept_all(&shared, l, &mut next_shard, &mut accept_rate);
            }

            // Peer sets changed: follow them, drop peers that left every set.
            let version = shared.oracle.version();
            if version != seen_version {
                seen_version = version;
                for (index, keys) in shared.oracle.sets() {
                    discovery.register(index, keys);
                }
                let authorized = shared.oracle.authorized();
                shared.peers.with(|map| {
                    for (peer, h) in map.iter() {
                        if !authorized.contains(peer) {
                            send_to_shard(
                                &shared,
                                h.id.shard,
                                Command::Close {
                                    id: h.id,
                                    reason: CloseReason::Unauthorized,
                                },
                            );
                        }
                    }
                });
            }

            // Discovery records from the data shards.
            let now = Instant::now();
            let now_ms = clock.unix_ms(now);
            while pending.len() < cfg.discovery.control_queue {
                match inbox.try_recv() {
                    Ok(ev) => pending.push(ev),
                    Err(_) => break,
                }
            }
            for ev in pending.drain(..) {
                match ev {
                    ControlEvent::Connected { peer, id } => {
                        tracing::trace!(%peer, "sending our record and a bit vector");
                        // Our record right after the handshake, then a ping.
                        if let Some(own) = discovery.own_record().cloned() {
                            send_control(
                                &shared,
                                id,
                                ControlOut::Peers(Peers { peers: vec![own] }),
                            );
                        }
                        if let Some(o) = open.as_mut() {
                            o.on_connected(&peer, id, &mut open_actions);
                        } else if let Some(bv) = discovery.random_ping(&mut rng) {
                            send_control(&shared, id, ControlOut::BitVec(bv));
                        }
                    }
                    ControlEvent::Lookup { target, reply } => match open.as_mut() {
                        Some(o) => {
                            let target = crate::kademlia::NodeId::from_bytes(target);
                            if !o.start_lookup(target, reply, now) {
                                shared.metrics.refuse("too_many_lookups");
                            }
                        }
                        None => drop(reply),
                    },
                    ControlEvent::Dial { peer, addr } => now_dials.push((peer, addr)),
                    ControlEvent::DialFailed { peer } => {
                        if let Some(o) = open.as_mut() {
                            o.on_dial_failed(&peer, now);
                        }
                    }
                    ControlEvent::Listen { on, reply } => {
                        let r = set_listener(&poll, &mut listener, local_addr, on);
                        let _ = reply.try_send(r);
                    }
                    ControlEvent::Record { peer, id, record } if open.is_some() => {
                        let Some(o) = open.as_mut() else { continue };
                        let connected = |k: &PublicKey| shared.peers.get(k).map(|h| h.id);
                        match record {
                            Record::Peers(p) if p.peers.len() <= 1 => {
                                for r in &p.peers {
                                    if let Err(e) =
                                        o.on_record(r, &connected, now, &mut open_actions)
                                    {
                                        shared.metrics.refuse("bad_peer_record");
                                        if e.is_misbehavior() {
                                            send_to_shard(
                                                &shared,
                                                id.shard,
                                                Command::Close {
                                                    id,
                                                    reason: CloseReason::ProtocolViolation,
                                                },
                                            );
                                        }
                                    }
                                }
                            }
                            Record::FindNode(q) => o.on_find_node(id, &q, &mut open_actions),
                            Record::Nodes(n) => {
                                if o.on_nodes(&peer, &n, now) > 0 {
                                    shared.metrics.refuse("bad_peer_record");
                                }
                            }
                            _ => shared.metrics.refuse("unexpected_control_record"),
                        }
                    }
                    ControlEvent::Record { peer, id, record } => match record {
                        Record::BitVec(bv) => {
                            // Answers cost up to `peer_gossip_max` records:
                            // at most one per peer per quarter interval.
                            let min_gap = cfg.discovery.gossip_interval / 4;
                            if last_answer
                                .get(&peer)
                                .is_some_and(|t| now.duration_since(*t) < min_gap)
                            {
                                shared.metrics.refuse("bit_vec_rate");
                                continue;
                            }
                            last_answer.insert(peer.clone(), now);
                            match discovery.handle_bit_vec(&bv, &mut rng) {
                                Ok(answer) if !answer.peers.is_empty() => {
                                    send_control(&shared, id, ControlOut::Peers(answer));
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    shared.metrics.refuse("bad_bit_vec");
                                    tracing::debug!(%peer, error = %e, "bit vector refused");
                                }
                            }
                        }
                        Record::Peers(peers) => match discovery.handle_peers(&peers, now_ms) {
                            Ok(outcome) => {
                                for r in &outcome.rejected {
                                    shared.metrics.refuse("bad_peer_record");
                                    if r.is_misbehavior() {
                                        tracing::debug!(%peer, error = %r, "peer sent a forged record; disconnecting");
                                        send_to_shard(
                                            &shared,
                                            id.shard,
                                            Command::Close {
                                                id,
                                                reason: CloseReason::ProtocolViolation,
                                            },
                                        );
                                        break;
                                    }
                                }
                                // A peer moved: pass the newer record on once,
                                // so nodes holding the old one learn it (their
                                // bit vectors would never ask for it).
                                if !outcome.moved.is_empty() {
                                    let moved = Peers {
                                        peers: outcome.moved.clone(),
                                    };
                                    shared.peers.with(|map| {
                                        for (k, h) in map.iter() {
                                            if *k != peer {
                                                send_control(
                                                    &shared,
                                                    h.id,
                                                    ControlOut::Peers(moved.clone()),
                                                );
                                            }
                                        }
                                    });
                                }
                                // A new address for a peer: dial it soon.
                                for (k, _) in &outcome.accepted {
                                    if let Some(st) = dial_states.get_mut(k) {
                                        st.next_allowed = st.next_allowed.min(now);
                                        st.failures = 0;
                                    }
                                }
                            }
                            Err(e) => {
                                shared.metrics.refuse("bad_peers");
                                tracing::debug!(%peer, error = %e, "peers batch refused; disconnecting");
                                send_to_shard(
                                    &shared,
                                    id.shard,
                                    Command::Close {
                                        id,
                                        reason: CloseReason::ProtocolViolation,
                                    },
                                );
                            }
                        },
                        // Kademlia records belong to open mode.
                        _ => shared.metrics.refuse("unexpected_control_record"),
                    },
                }
            }

            // Open mode: drive lookups, join, liveness checks.
            if let Some(o) = open.as_mut() {
                let connected = |k: &PublicKey| shared.peers.get(k).map(|h| h.id);
                // Join and refresh: one lookup at a time (see
                // `OpenMode::next_join_target`).
                if let Some(rx) = join.as_mut() {
                    if !matches!(
                        rx.try_recv(),
                        Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                    ) {
                        join = None;
                    }
                }
                if join.is_none() {
                    if let Some(target) = o.next_join_target(now, &mut rng) {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        if o.start_lookup(target, tx, now) {
                            join = Some(rx);
                        }
                    }
                }
                o.poll(&connected, now, &mut open_actions);
                for a in open_actions.drain(..) {
                    match a {
                        OpenAction::Query { id, msg } => {
                            send_control(&shared, id, ControlOut::FindNode(msg))
                        }
                        OpenAction::Answer { id, msg } => {
                            send_control(&shared, id, ControlOut::Nodes(msg))
                        }
                        OpenAction::Dial { peer, addr } => now_dials.push((peer, addr)),
                    }
                }
            }
            // Dials asked for right now (open-mode queries, send-to-id).
            for (peer, addr) in now_dials.drain(..) {
                if peer == me
                    || shared.peers.contains(&peer)
                    || shared.peers.dialing_snapshot().contains(&peer)
                    || shared.cooldown.active(&peer, now)
                {
                    continue;
                }
                if shared.outbound.load(Ordering::Acquire) >= cfg.limits.max_outbound {
                    shared.metrics.refuse("max_outbound");
                    continue;
                }
                start_dial(&shared, &mut next_shard, peer, addr);
            }

            // Gossip: a bit-vector ping on every connection.
            if now >= next_gossip {
                next_gossip = now + cfg.discovery.gossip_interval;
                if let Some(addr) = advertise {
                    // Refresh our record now and then so a restart on a new
                    // port wins everywhere (newer timestamp).
                    if discovery
                        .own_record()
                        .is_none_or(|r| now_ms.saturating_sub(r.timestamp) > OWN_RECORD_REFRESH_MS)
                    {
                        discovery.refresh_own(addr, now_ms);
                    }
                }
                last_answer.retain(|k, _| shared.peers.contains(k));
                shared.peers.with(|map| {
                    for h in map.values() {
                        if open.is_some() {
                            break;
                        }
                        if let Some(bv) = discovery.random_ping(&mut rng) {
                            send_control(&shared, h.id, ControlOut::BitVec(bv));
                        }
                    }
                });
            }

            if now < next_dial {
                continue;
            }
            next_dial = now + cfg.discovery.dial_frequency;

            // Dial tracked, unconnected peers: signed records first (newest
            // address), static addresses (bootstrappers) otherwise.
            let authorized = shared.oracle.authorized();
            let dialing = shared.peers.dialing_snapshot();
            let mut candidates: HashMap<PublicKey, SocketAddr> =
                shared.oracle.addresses().into_iter().collect();
            for (k, a) in discovery.dialable() {
                candidates.insert(k, a);
            }
            let candidate_keys: std::collections::HashSet<PublicKey> =
                candidates.keys().cloned().collect();
            for (peer, addr) in candidates {
                if peer == me || (!cfg.discovery.open && !authorized.contains(&peer)) {
                    continue;
                }
                if shared.peers.contains(&peer) {
                    dial_states.remove(&peer);
                    continue;
                }
                // A peer cooling down would be refused on both sides.
                if dialing.contains(&peer) || shared.cooldown.active(&peer, now) {
                    continue;
                }
                let grace = if me > peer {
                    cfg.discovery.dial_frequency * LARGER_KEY_GRACE_PERIODS
                } else {
                    Duration::ZERO
                };
                let st = dial_states.entry(peer.clone()).or_insert(DialState {
                    failures: 0,
                    next_allowed: now + grace,
                });
                if now < st.next_allowed {
                    continue;
                }
                if shared.outbound.load(Ordering::Acquire) >= cfg.limits.max_outbound {
                    shared.metrics.refuse("max_outbound");
                    break;
                }
                // Backoff for the next try if this one does not connect
                // ([`crate::dial_backoff`]).
                st.failures = st.failures.saturating_add(1);
                let base = crate::dial_backoff::backoff(
                    st.failures,
                    cfg.discovery.dial_quick_attempts,
                    cfg.discovery.dial_backoff_min,
                    cfg.discovery.dial_backoff_max,
                );
                let jitter = rng.gen_range(0.75..1.25);
                st.next_allowed = now + base.mul_f64(jitter);
                start_dial(&shared, &mut next_shard, peer, addr);
            }
            // Forget peers we can no longer dial (bounded by the candidates).
            if dial_states.len() > candidate_keys.len() {
                dial_states.retain(|k, _| candidate_keys.contains(k));
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::error!(error = %e, "control shard failed");
    }
    drop(listener);
}

/// Our own record is re-signed after this long (ms).
const OWN_RECORD_REFRESH_MS: u64 = 60_000;

/// Opens or closes the listening socket (see [`NetworkHandle::listen`]).
fn set_listener(
    poll: &Poll,
    listener: &mut Option<TcpListener>,
    addr: Option<SocketAddr>,
    on: bool,
) -> std::io::Result<Option<SocketAddr>> {
    match (on, listener.as_ref()) {
        (false, Some(l)) => {
            poll.registry().deregister(&mut SourceFd(&l.as_raw_fd()))?;
            *listener = None;
            Ok(None)
        }
        (false, None) => Ok(None),
        (true, Some(l)) => l.local_addr().map(Some),
        (true, None) => {
            let Some(addr) = addr else { return Ok(None) };
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            poll.registry().register(
                &mut SourceFd(&l.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            )?;
            let bound = l.local_addr()?;
            *listener = Some(l);
            Ok(Some(bound))
        }
    }
}

fn accept_all(
    shared: &Shared,
    l: &TcpListener,
    next_shard: &mut usize,
    rate: &mut crate::accept_rate::AcceptRate,
) {
    use crate::accept_rate::Admission;
    let cfg = &shared.config;
    loop {
        match l.accept() {
            Ok((stream, from)) => {
                if shared.inbound.load(Ordering::Acquire) >= cfg.limits.max_inbound {
                    shared.metrics.refuse("max_inbound");
                    tracing::debug!(%from, "inbound limit reached; refusing");
                    drop(stream);
                    continue;
                }
                let ip = from.ip();
                if !shared.inbound_ips.admit(ip) {
                    shared.metrics.refuse("max_inbound_per_ip");
                    tracing::debug!(%from, "per-address inbound limit reached; refusing");
                    drop(stream);
                    continue;
                }
                // Last: a connection another limit refuses uses up none of
                // the address's allowance.
                match rate.admit(ip, Instant::now()) {
                    Admission::Admit => {}
                    Admission::Refuse => {
                        shared.metrics.refuse("accept_rate_per_ip");
                        tracing::debug!(%from, "per-address accept rate exceeded; refusing");
                        shared.inbound_ips.release(ip);
                        drop(stream);
                        continue;
                    }
                    Admission::Untracked => {
                        shared.metrics.accept_rate_untracked.inc();
                        tracing::debug!(%from, "accept rate table full; admitted unchecked");
                    }
                }
                let Some(shard) = pick_shard(shared, next_shard) else {
                    shared.metrics.refuse("no_live_shard");
                    shared.inbound_ips.release(ip);
                    drop(stream);
                    continue;
                };
                shared.inbound.fetch_add(1, Ordering::AcqRel);
                let link = &shared.shards[shard];
                link.load.assign();
                if link.send(Command::Adopt { stream, ip }).is_err() {
                    link.load.release();
                    shared.release_inbound(ip);
                    shared.metrics.refuse("shard_queue_full");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: log and retry on the next tick.
                tracing::warn!(error = %e, "accept failed");
                break;
            }
        }
    }
}

/// Takes a stopped shard out of placement; a shard that failed (error or
/// panic) leaves the node degraded: counted, gauged and logged.
fn shard_stopped(shared: &Shared, id: usize, run: std::thread::Result<std::io::Result<()>>) {
    shared.leave_placement(id);
    let error = match run {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into()),
    };
    shared.metrics.shard_failures.inc();
    let alive = shared.shards.iter().filter(|l| l.load.is_alive()).count();
    tracing::error!(
        shard = id,
        %error,
        alive,
        configured = shared.shards.len(),
        "shard failed: its connections are closed and it gets no new ones; the node is degraded"
    );
}

/// The shard a new connection goes to ([`crate::placement`]).
fn pick_shard(shared: &Shared, next_shard: &mut usize) -> Option<usize> {
    crate::placement::pick(shared.shards.iter().map(|l| &l.load), next_shard)
}

/// Hands a dial to the least loaded live shard, counting it against
/// `max_outbound` and marking the peer as being dialed until it ends.
fn start_dial(shared: &Shared, next_shard: &mut usize, peer: PublicKey, addr: SocketAddr) {
    let Some(shard) = pick_shard(shared, next_shard) else {
        return;
    };
    let link = &shared.shards[shard];
    shared.outbound.fetch_add(1, Ordering::AcqRel);
    shared.peers.mark_dialing(&peer, true);
    link.load.assign();
    if link
        .send(Command::Dial {
            peer: peer.clone(),
            addr,
        })
        .is_err()
    {
        link.load.release();
        shared.outbound.fetch_sub(1, Ordering::AcqRel);
        shared.peers.mark_dialing(&peer, false);
    }
}

fn send_to_shard(shared: &Shared, shard: usize, cmd: Command) {
    if let Some(link) = shared.shards.get(shard) {
        if link.send(cmd).is_err() {
            shared.metrics.control_dropped.inc();
        }
    }
}

fn send_control(shared: &Shared, id: crate::peers::ConnId, record: ControlOut) {
    send_to_shard(shared, id.shard, Command::Control { id, record });
}
