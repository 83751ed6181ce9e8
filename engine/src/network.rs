//! The embedder's entry point: build, register channels, start, stop.
//!
//! # Design
//! [`Network::new`] validates the config and returns the network and its
//! [`Oracle`]. Channels are registered before [`Network::start`], which binds
//! the listener and spawns the data shards (one thread each, one driver
//! each) and the control shard (`crate::control`: accept, dial, discovery,
//! open mode, peer-set changes). [`NetworkHandle`] is the running node:
//! peers and events, pings and lookups, listening on and off, and
//! [`NetworkHandle::shutdown`], which closes every connection gracefully
//! (queued messages are flushed up to the deadline), joins every thread,
//! and returns only when every socket and buffer is released. A data shard
//! that fails leaves placement and the node runs degraded on the others.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver as StdReceiver};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use shoal_crypto::PublicKey;
use shoal_wire::CloseReason;

use crate::channel_config::ChannelConfig;
use crate::channels::{ChannelSpec, Channels, Sender};
use crate::config::{Backend, Config};
use crate::error::Error;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::open::LookupResult;
use crate::oracle::{Oracle, OracleState};
use crate::peers::PeerTable;
use crate::receiver::Receiver;
use crate::rpc::RequestError;
use crate::shard::{Command, ShardCore, ShardLink};
use crate::shared::{ControlEvent, Shared};
use crate::wait::Wait;
use crate::waker::ShardWaker;

/// A configured, not yet started network: register channels and handlers,
/// then [`Network::start`].
///
/// ```
/// # fn main() -> Result<(), shoal_engine::Error> {
/// use std::time::Duration;
/// use shoal_engine::{ChannelConfig, Config, Network};
/// let (mut net, oracle) = Network::new(Config::local(Some("127.0.0.1:0".parse().unwrap())))?;
/// let (_tx, _rx) = net.register(ChannelConfig::new(1))?;
/// oracle.register(0, vec![net.public_key()]);
/// let node = net.start()?;
/// assert!(node.local_addr().is_some_and(|a| a.port() != 0), "the kernel's port");
/// assert!(node.peers().is_empty());
/// node.shutdown(Duration::from_secs(1));
/// # Ok(()) }
/// ```
pub struct Network {
    shared: Arc<Shared>,
    queues: Vec<StdReceiver<Command>>,
    channels: HashMap<u32, Arc<ChannelSpec>>,
    stream_channels: HashMap<u32, Arc<crate::inbox::Inbox<crate::streams::IncomingStream>>>,
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

    /// Every shard's core, as [`Network::into_shard_core`] builds shard 0's.
    pub(crate) fn into_shard_cores(self) -> Vec<ShardCore> {
        let Network { shared, queues, .. } = self;
        let conn_cfg = Arc::new(shared.config.connection_config());
        queues
            .into_iter()
            .enumerate()
            .map(|(id, rx)| {
                let auth = Arc::new(|_: &PublicKey| true);
                ShardCore::new(id, shared.clone(), rx, conn_cfg.clone(), auth)
            })
            .collect()
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
                stream_pokes_deferred: Default::default(),
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
            crate::control::inbound_limit::InboundLimit::new(config.admission.max_inbound_per_ip);
        let cooldown =
            crate::control::cooldown::PeerCooldown::new(config.admission.misbehavior_cooldown);
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
            pins: crate::placement::Pins::new(config_max_connections),
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
                stream_channels: HashMap::new(),
                control_waker,
                control_rx,
            },
            Oracle { state: oracle },
        ))
    }

    /// Registers a channel (before [`Network::start`]): returns its
    /// [`Sender`] and [`Receiver`]. Fails with [`Error::DuplicateChannel`]
    /// for an id registered twice and [`Error::InvalidConfig`] for a zero
    /// `max_size` or `capacity`.
    ///
    /// ```
    /// # fn main() -> Result<(), shoal_engine::Error> {
    /// use shoal_engine::{ChannelConfig, Config, Network};
    /// let (mut net, _oracle) = Network::new(Config::local(None))?;
    /// let (tx, rx) = net.register(ChannelConfig::new(1).max_size(1 << 16))?;
    /// assert_eq!((tx.channel(), rx.channel()), (1, 1));
    /// assert!(net.register(ChannelConfig::new(2).capacity(0)).is_err());
    /// # Ok(()) }
    /// ```
    pub fn register(&mut self, channel: ChannelConfig) -> Result<(Sender, Receiver), Error> {
        let ChannelConfig {
            id,
            max_size,
            capacity,
            quota,
            compression,
        } = channel;
        let max_size = max_size.unwrap_or(self.shared.config.limits.max_message_size);
        if self.channels.contains_key(&id) {
            return Err(Error::DuplicateChannel(id));
        }
        if capacity == 0 {
            return Err(Error::InvalidConfig {
                field: "capacity",
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
            id,
            max_size,
            compression,
            quota,
            inbox: crate::inbox::Inbox::new(capacity),
            input_held: AtomicBool::new(false),
            handler: OnceLock::new(),
            metrics: self.shared.metrics.channel(id),
        });
        self.channels.insert(id, spec.clone());
        Ok((
            Sender {
                spec: spec.clone(),
                shared: self.shared.clone(),
            },
            Receiver::new(spec, self.shared.clone()),
        ))
    }

    /// Serves `channel` (registered first) with `handler`, run on the
    /// receiving shard (no thread hop) for every message and request that
    /// arrives on it: `handler(sender, payload)`. `Ok(Some(reply))` answers
    /// a request, or is sent back on the channel for a plain message;
    /// `Ok(None)` answers a request with an empty payload and a plain
    /// message with nothing; an `Err` or a panic affects only that
    /// message (a request gets [`crate::RpcStatus::HandlerFailed`]).
    /// Requests on a channel without a handler are answered with
    /// [`crate::RpcStatus::NoHandler`]. The handler runs on a shard thread:
    /// it must not block.
    ///
    /// ```
    /// # fn main() -> Result<(), shoal_engine::Error> {
    /// use shoal_engine::{ChannelConfig, Config, Network};
    /// let (mut net, _oracle) = Network::new(Config::local(None))?;
    /// let _ = net.register(ChannelConfig::new(5))?;
    /// net.serve(5, |_peer, request| Ok(Some(request)))?; // echo
    /// assert!(net.serve(5, |_, _| Ok(None)).is_err(), "one handler per channel");
    /// assert!(net.serve(6, |_, _| Ok(None)).is_err(), "6 is not registered");
    /// # Ok(()) }
    /// ```
    pub fn serve<H>(&mut self, channel: u32, handler: H) -> Result<(), Error>
    where
        H: Fn(&PublicKey, bytes::Bytes) -> crate::rpc::HandlerResult + Send + Sync + 'static,
    {
        let spec = self.channels.get(&channel).ok_or(Error::InvalidConfig {
            field: "channel",
            reason: format!("{channel} is not registered"),
        })?;
        let handler: crate::rpc::Handler = Arc::new(handler);
        spec.handler.set(handler).map_err(|_| Error::InvalidConfig {
            field: "channel",
            reason: format!("{channel} already has a handler"),
        })
    }

    /// Registers `channel` as a stream channel (its own id space, apart
    /// from message channels): the listener yields the streams peers open
    /// on it, at most `backlog` (≥ 1) waiting to be accepted; more are
    /// refused. Streams are limited by the `[streams]` section; a node
    /// with no stream channel carries no stream state on its connections.
    /// See [`crate::streams`].
    ///
    /// ```
    /// # fn main() -> Result<(), shoal_engine::Error> {
    /// use shoal_engine::{Config, Network};
    /// let (mut net, _oracle) = Network::new(Config::local(None))?;
    /// let listener = net.streams(9, 16)?;
    /// assert!(net.streams(9, 16).is_err(), "registered twice");
    /// assert!(listener.try_accept().is_none());
    /// # Ok(()) }
    /// ```
    pub fn streams(
        &mut self,
        channel: u32,
        backlog: usize,
    ) -> Result<crate::streams::StreamListener, Error> {
        if self.stream_channels.contains_key(&channel) {
            return Err(Error::DuplicateChannel(channel));
        }
        if !(1..=65_536).contains(&backlog) {
            return Err(Error::InvalidConfig {
                field: "backlog",
                reason: format!("= {backlog} is out of range: must be within 1 ..= 65536"),
            });
        }
        let inbox = Arc::new(crate::inbox::Inbox::new(backlog));
        self.stream_channels.insert(channel, inbox.clone());
        Ok(crate::streams::StreamListener {
            inbox,
            spin: self.shared.config.effective_wait_spin(),
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
            stream_channels,
            control_waker,
            control_rx,
        } = self;
        let streams = (!stream_channels.is_empty()).then(|| shared.config.streams.wire());
        let _ = shared.channels.set(Arc::new(Channels {
            map: channels.into_iter().collect(),
            streams: stream_channels,
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

        let listener = crate::control::listener::bind(config.listen.address)?;
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());

        let conn_cfg = Arc::new(crate::connection::ConnectionConfig {
            streams,
            ..config.connection_config()
        });
        let authorizer = crate::control::acceptor::authorizer(&shared);

        shared.running.store(true, Ordering::Release);
        let mut threads = Vec::new();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        shared.metrics.shards_alive.set(queues.len() as i64);
        for (id, rx) in queues.into_iter().enumerate() {
            let (conn_cfg, authorizer) = (conn_cfg.clone(), authorizer.clone());
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
                        // Built here: the core holds the shard's tasks,
                        // which never leave this thread.
                        let core = ShardCore::new(id, shared.clone(), rx, conn_cfg, authorizer);
                        crate::driver::run(core, backend, busy)
                    }));
                    shard_stopped(&shared, id, run);
                })?;
            threads.push(t);
        }

        let stop = Arc::new(AtomicBool::new(false));
        let control = crate::control::spawn(
            shared.clone(),
            listener,
            local_addr,
            control_rx,
            control_waker.clone(),
            stop.clone(),
        )?;

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

/// A running network: its peers and events, pings and lookups, and
/// [`NetworkHandle::shutdown`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use shoal_engine::{ChannelConfig, DisconnectReason, Event};
/// let [(a, _), (b, _)] = shoal_engine::__private::connected_pair(&[ChannelConfig::new(1)]);
/// assert_eq!(a.peers(), vec![b.public_key()]);
/// let rtt = a.ping(&b.public_key()).blocking()?;
/// assert!(rtt > Duration::ZERO);
///
/// let mut events = a.events();
/// a.disconnect(&b.public_key());
/// match events.recv().blocking()? {
///     Event::Disconnected { peer, reason } => {
///         assert_eq!(peer, b.public_key());
///         assert_eq!(reason, DisconnectReason::Local);
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
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

    /// `peer`'s current connection and the queue of the shard that owns it.
    fn peer_link(&self, peer: &PublicKey) -> Option<(crate::peers::ConnId, &ShardLink)> {
        let h = self.shared.peers.get(peer)?;
        Some((h.id, self.shared.shards.get(h.id.shard)?))
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.config.identity.signer.public_key().clone()
    }

    /// The number of data shards (`io.shards`); tasks go to one of
    /// `0..shards()` ([`NetworkHandle::spawn_on`]).
    pub fn shards(&self) -> usize {
        self.shared.shards.len()
    }

    /// The shard that holds `peer`'s connection, if connected: a task there
    /// reaches it without leaving its thread.
    pub fn shard_of(&self, peer: &PublicKey) -> Option<usize> {
        self.shared.peers.get(peer).map(|h| h.id.shard)
    }

    /// Places `peer` on data shard `shard`: its next connection lives there
    /// (a dial goes there; an accepted connection moves there once its
    /// handshake shows who it is, before it is announced). Typically the
    /// shard of the task that serves the peer ([`NetworkHandle::spawn_on`]),
    /// so the task reaches it without leaving its thread. A connection
    /// already established stays where it is, and so does one whose placed
    /// shard stopped or had a full command queue when it arrived: check
    /// [`NetworkHandle::shard_of`].
    ///
    /// Fails with `NoSuchShard`, or `Full` once as many peers are placed as
    /// the node may hold connections (`limits.max_inbound +
    /// limits.max_outbound`).
    pub fn place(&self, peer: &PublicKey, shard: usize) -> Result<(), crate::PlaceError> {
        if shard >= self.shared.shards.len() {
            return Err(crate::PlaceError::NoSuchShard(shard));
        }
        if self.shared.pins.set(peer, shard) {
            Ok(())
        } else {
            Err(crate::PlaceError::Full)
        }
    }

    /// Forgets `peer`'s placement ([`NetworkHandle::place`]): its next
    /// connection goes by load. Whether it had one.
    pub fn unplace(&self, peer: &PublicKey) -> bool {
        self.shared.pins.remove(peer)
    }

    /// Starts an application task on data shard `shard`: `start` runs on
    /// that shard's thread and returns the task's future, which may be
    /// `!Send` and is polled there between I/O batches until it finishes,
    /// panics (contained and counted) or the network shuts down. See
    /// [`crate::tasks`] for what its [`Ctx`](crate::tasks::Ctx) offers.
    ///
    /// Fails with `NoSuchShard`, `Full` (the shard's command queue; try
    /// again) or `Closed` (shut down, or the shard stopped).
    pub fn spawn_on<F, Fut>(
        &self,
        shard: usize,
        start: F,
    ) -> Result<crate::tasks::TaskHandle, crate::tasks::SpawnError>
    where
        F: FnOnce(crate::tasks::Ctx) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        use crate::tasks::{SpawnError, TaskHandle};
        let link = self
            .shared
            .shards
            .get(shard)
            .ok_or(SpawnError::NoSuchShard(shard))?;
        if !self.shared.running.load(Ordering::Acquire) || !link.load.is_alive() {
            return Err(SpawnError::Closed);
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        let start: crate::tasks::Start = Box::new(move |ctx| Box::pin(start(ctx)));
        link.send(Command::Spawn { start, done }).map_err(|_| {
            // A stopped shard's queue refuses everything.
            if link.load.is_alive() {
                SpawnError::Full
            } else {
                SpawnError::Closed
            }
        })?;
        Ok(TaskHandle::new(shard, rx))
    }

    /// Connected peers.
    pub fn peers(&self) -> Vec<PublicKey> {
        self.shared.peers.peers()
    }

    /// The address of `peer`'s connection: where this node dialed it, or
    /// the listening address it announced; `None` if not connected or not
    /// known.
    pub fn peer_addr(&self, peer: &PublicKey) -> Option<SocketAddr> {
        self.shared.peers.get(peer).and_then(|h| h.addr)
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

    /// Waits until `pred(connected peers)` holds and returns those peers:
    /// [`NetworkHandle::wait_peers`] for async code. Re-checks at every peer
    /// event. It has no deadline of its own: bound it with your runtime's
    /// timeout (`tokio::time::timeout`); on a plain thread use `wait_peers`,
    /// which takes one (`.blocking()` waits for as long as `pred` fails).
    /// `Err(RecvError)` only if the peer events ended, which takes a
    /// shutdown.
    ///
    /// ```
    /// use shoal_engine::ChannelConfig;
    /// let [(a, _), (b, _)] = shoal_engine::__private::connected_pair(&[ChannelConfig::new(1)]);
    /// let peers = a.peers_when(|p| p.contains(&b.public_key())).blocking()?;
    /// assert_eq!(peers, vec![b.public_key()]);
    /// # Ok::<(), shoal_engine::RecvError>(())
    /// ```
    pub fn peers_when<'a>(
        &'a self,
        pred: impl Fn(&[PublicKey]) -> bool + 'a,
    ) -> Wait<impl Future<Output = Result<Vec<PublicKey>, crate::RecvError>> + 'a> {
        Wait::new(
            async move {
                // Subscribed before the peers are read: no change is missed.
                let mut events = crate::events::Events::new(self.shared.peers.subscribe());
                loop {
                    let peers = self.shared.peers.peers();
                    if pred(&peers) {
                        return Ok(peers);
                    }
                    events.recv().await?;
                }
            },
            Duration::ZERO,
        )
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Measures the round trip to `peer` with a ping record (answered by
    /// its shard, not by the application). `.await` it, or `.blocking()`.
    /// Fails with [`RequestError::NotConnected`], [`RequestError::Full`]
    /// (the shard's command queue) or [`RequestError::Disconnected`].
    pub fn ping<'a>(
        &'a self,
        peer: &'a PublicKey,
    ) -> Wait<impl Future<Output = Result<Duration, RequestError>> + 'a> {
        Wait::new(
            async move {
                let (id, link) = self.peer_link(peer).ok_or(RequestError::NotConnected)?;
                let (tx, rx) = tokio::sync::oneshot::channel();
                link.send(Command::Ping { id, reply: tx })
                    .map_err(|_| RequestError::Full)?;
                rx.await.map_err(|_| RequestError::Disconnected)
            },
            self.shared.config.effective_wait_spin(),
        )
    }

    /// Opens a stream on `channel` to `peer` (connected, and registered
    /// `channel` with [`Network::streams`]; otherwise the peer refuses it
    /// and the first read or write fails with
    /// [`StreamError::Reset`](crate::StreamError::Reset) /
    /// [`Stopped`](crate::StreamError::Stopped)`(`[`REFUSED`](crate::streams::REFUSED)`)`).
    /// `.await` it, or `.blocking()`. Fails with
    /// [`StreamError::NotConnected`](crate::StreamError::NotConnected),
    /// [`TooManyStreams`](crate::StreamError::TooManyStreams) (`streams.max_streams`),
    /// [`Full`](crate::StreamError::Full) (the shard's command queue), or
    /// [`UnknownChannel`](crate::StreamError::UnknownChannel) on a node
    /// that registered no stream channel. See [`crate::streams`].
    pub fn open_stream<'a>(
        &'a self,
        peer: &'a PublicKey,
        channel: u32,
    ) -> Wait<
        impl Future<Output = Result<(crate::SendStream, crate::RecvStream), crate::StreamError>> + 'a,
    > {
        use crate::StreamError;
        Wait::new(
            async move {
                let (id, link) = self.peer_link(peer).ok_or(StreamError::NotConnected)?;
                let (tx, rx) = tokio::sync::oneshot::channel();
                link.send(Command::StreamOpen {
                    id,
                    channel,
                    reply: tx,
                })
                .map_err(|_| {
                    // A stopped shard has no connections left.
                    if !link.load.is_alive() {
                        StreamError::NotConnected
                    } else {
                        StreamError::Full
                    }
                })?;
                rx.await.map_err(|_| StreamError::NotConnected)?
            },
            self.shared.config.effective_wait_spin(),
        )
    }

    /// Open mode: the nodes closest to `target` (a 32-byte node id, i.e. an
    /// ed25519 public key), found with an iterative Kademlia lookup run by
    /// the control shard. `.await` it, or `.blocking()`. Empty when open
    /// mode is off, or the control shard is stopped or too busy to take it.
    pub fn lookup(&self, target: [u8; 32]) -> Wait<impl Future<Output = LookupResult> + '_> {
        Wait::new(
            async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.shared
                    .to_control(ControlEvent::Lookup { target, reply: tx });
                rx.await.unwrap_or_default()
            },
            Duration::ZERO,
        )
    }

    /// Open mode: refreshes the neighbourhood (a lookup of our own id).
    pub fn discover(&self) -> Wait<impl Future<Output = LookupResult> + '_> {
        let mut me = [0u8; 32];
        let key = self.public_key();
        let n = 32.min(key.as_bytes().len());
        me[..n].copy_from_slice(&key.as_bytes()[..n]);
        self.lookup(me)
    }

    /// Open mode: connects to the node with this id if it is not connected
    /// yet, looking it up (Kademlia) and dialing it; then send to it as to
    /// any peer. Blocks this thread for up to `timeout`; returns whether the
    /// node is connected. A lookup that ends without the node (a queried
    /// node was busy or briefly unreachable) is retried while time is left.
    pub fn connect_id(&self, id: &PublicKey, timeout: Duration) -> bool {
        if self.is_connected(id) {
            return true;
        }
        let Ok(target) = <[u8; 32]>::try_from(id.as_bytes()) else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let found = self.lookup(target).blocking();
            if let Some((_, addr)) = found.into_iter().find(|(k, _)| k == id) {
                self.shared.to_control(ControlEvent::Dial {
                    peer: id.clone(),
                    addr,
                });
                let left = deadline.saturating_duration_since(Instant::now());
                if self.wait_peers(left.min(Duration::from_secs(5)), |p| p.contains(id)) {
                    return true;
                }
            }
        }
        false
    }

    /// Peer [`crate::Event`]s from now on: connected, disconnected (with the
    /// cause), and [`crate::Event::Lagged`] for a subscriber that fell more
    /// than [`crate::EVENT_CAPACITY`] events behind. Ends once the network
    /// shut down.
    pub fn events(&self) -> Events {
        Events::new(self.shared.peers.subscribe())
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
        close_peer(&self.shared, peer);
    }

    /// Drives gossip broadcast (Plumtree: an eager-push tree per origin,
    /// lazy id announcements, grafts and pulls; origin-signed) on a registered
    /// channel, taking its `Sender` and `Receiver` (the channel then carries
    /// gossip frames only): returns the broadcasting half and the receiver
    /// of delivered messages (at most `capacity` waiting). `validator`
    /// decides per message whose origin signature verified. Errors:
    /// an invalid `config` (naming the field), `capacity` 0. See
    /// `docs/api.md`, "Gossip".
    ///
    /// ```
    /// use bytes::Bytes;
    /// use shoal_engine::{ChannelConfig, GossipConfig, Verdict};
    /// let [(a, mut ca), (b, mut cb)] =
    ///     shoal_engine::__private::connected_pair(&[ChannelConfig::new(4)]);
    /// let accept = |_: &shoal_engine::PublicKey, _: &[u8]| Verdict::Accept;
    /// let (a_tx, _a_rx) = a.gossip(ca.remove(0), GossipConfig::default(), 64, accept)?;
    /// let (_b_tx, b_rx) = b.gossip(cb.remove(0), GossipConfig::default(), 64, accept)?;
    /// let id = a_tx.broadcast(Bytes::from_static(b"block 7")).expect("broadcast");
    /// let got = b_rx.recv().blocking().expect("delivered"); // or `.await`
    /// assert_eq!((got.id, &got.payload[..]), (id, &b"block 7"[..]));
    /// # Ok::<(), shoal_engine::Error>(())
    /// ```
    pub fn gossip(
        &self,
        channel: (crate::Sender, crate::Receiver),
        config: crate::GossipConfig,
        capacity: usize,
        validator: impl Fn(&PublicKey, &[u8]) -> crate::Verdict + Send + 'static,
    ) -> Result<(crate::GossipSender, crate::Deliveries), Error> {
        crate::gossip::driver::start(
            self.shared.clone(),
            channel.0,
            channel.1,
            config,
            capacity,
            validator,
        )
    }

    /// Drives routed unicast on a registered channel, taking its `Sender`
    /// and `Receiver` (the channel then carries routing frames only):
    /// returns the sending half and the receiver of messages addressed to
    /// this node (at most `capacity` waiting). A message to a node this one
    /// has no connection to goes hop by hop through the overlay: to the
    /// target when connected, else to neighbours connected to it, else to
    /// those closest to it by key distance; sealed to the target and signed
    /// by the origin, so relays can neither read nor alter it. Errors: an
    /// invalid `config` (naming the field), `capacity` 0. See
    /// `docs/api.md`, "Routed unicast".
    pub fn route(
        &self,
        channel: (crate::Sender, crate::Receiver),
        config: crate::RouteConfig,
        capacity: usize,
    ) -> Result<(crate::RouteSender, crate::Deliveries), Error> {
        crate::route::driver::start(self.shared.clone(), channel.0, channel.1, config, capacity)
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
            // Streams nobody accepted: every connection is gone.
            for listener in channels.streams.values() {
                listener.close();
                while listener.try_recv().is_ok() {}
            }
        }
        self.shared.peers.close_events();
    }
}

impl Drop for NetworkHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() || self.control.is_some() {
            self.shutdown_inner(Duration::from_millis(100));
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

/// Closes the connection to `peer` gracefully (if connected).
pub(crate) fn close_peer(shared: &Shared, peer: &PublicKey) {
    if let Some(h) = shared.peers.get(peer) {
        if let Some(link) = shared.shards.get(h.id.shard) {
            let _ = link.send(Command::Close {
                id: h.id,
                reason: CloseReason::Normal,
            });
        }
    }
}
