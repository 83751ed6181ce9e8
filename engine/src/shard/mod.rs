//! A data shard: one thread that owns its connections for their whole life.
//!
//! # Design
//! [`ShardCore`] is the backend-independent half of a shard: a slab of
//! connections, the command queue from other threads, delivery to channel
//! receivers with backpressure and quotas, the peer table updates and the
//! timers. The I/O drivers ([`crate::driver`]) own the sockets and only move
//! bytes: they call [`ShardCore::process_input`] after receiving,
//! [`ShardCore::poll_transmit`] to get bytes to write, and
//! [`ShardCore::finish_close`] once a socket is gone.
//!
//! No locks on the per-message path: a send command carries the slab key and
//! generation, so the shard finds the connection with one index.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shoal_crypto::PublicKey;
use shoal_wire::{CloseReason, RecordKind, RpcStatus};
use slab::Slab;

use crate::channels::{ChannelSpec, Channels};
use crate::connection::{Authorizer, Connection, ConnectionConfig, Event, Outgoing};
use crate::inbox::Rejected;
use crate::peers::{Admit, ConnId, PeerHandle};
use crate::queue_depth::QueueDepth;
use crate::rpc::RequestError;
use crate::shared::Shared;
use crate::waker::ShardWaker;

/// Work for a shard from other threads.
pub(crate) enum Command {
    /// Queue a message on a connection.
    Send {
        id: ConnId,
        /// Whom it is for: if `id` closed meanwhile (a replaced duplicate
        /// connection), the message moves to the peer's current connection.
        peer: PublicKey,
        msg: Outgoing,
        high: bool,
    },
    /// [`Command::Send`] for several messages to one connection, in order
    /// (one hand-off for the lot; see [`crate::Sender::send_batch_to`]).
    SendBatch {
        id: ConnId,
        peer: PublicKey,
        msgs: Vec<Outgoing>,
        high: bool,
    },
    /// Take over an accepted socket.
    Adopt {
        stream: std::net::TcpStream,
        /// The remote address, counted in `Shared::inbound_ips`.
        ip: std::net::IpAddr,
    },
    /// Dial `peer` at `addr`.
    Dial { peer: PublicKey, addr: SocketAddr },
    /// Close a connection gracefully.
    Close { id: ConnId, reason: CloseReason },
    /// Send a control record (discovery) on a connection.
    Control {
        id: ConnId,
        record: crate::connection::ControlOut,
    },
    /// Ping a connection; answer with the round trip.
    Ping {
        id: ConnId,
        reply: tokio::sync::oneshot::Sender<Duration>,
    },
    /// Connection `id` lost to `by`, on another shard: close it, hand its
    /// unsent messages over ([`Command::Handover`]) and tell `by` when it is
    /// gone ([`Command::Released`]).
    ReplacedBy { id: ConnId, by: ConnId },
    /// The unsent messages of the connection `to` replaced, in order: they
    /// go out on `to` ahead of everything sent to `to` meanwhile.
    Handover {
        to: ConnId,
        peer: PublicKey,
        msgs: Vec<(Outgoing, bool)>,
    },
    /// The connection `to` replaced is gone: `to` may read.
    Released { to: ConnId, gone: ConnId },
    /// Close everything, flushing until `deadline`, then exit.
    Shutdown { deadline: Instant },
    /// Make the driver fail (feature `test-hooks`: tests of shard failure).
    #[cfg(feature = "test-hooks")]
    Fail,
}

mod handover;
mod quota;

/// The sending half of a shard's queue plus its waker.
pub(crate) struct ShardLink {
    pub tx: SyncSender<Command>,
    pub waker: Arc<ShardWaker>,
    /// Connection slots and liveness, for placement ([`crate::placement`]).
    pub load: crate::placement::ShardLoad,
}

impl ShardLink {
    /// Enqueues without blocking; wakes the shard only if it sleeps.
    pub fn send(&self, cmd: Command) -> Result<(), Command> {
        match self.tx.try_send(cmd) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(c)) | Err(TrySendError::Disconnected(c)) => Err(c),
        }
    }
}

/// Messages waiting for a peer's replacement connection.
struct Parked {
    since: Instant,
    /// Payload bytes of `msgs`, bounded by `LimitSettings::peer_send_bytes`.
    bytes: usize,
    msgs: std::collections::VecDeque<(Outgoing, bool)>,
}

/// Messages delivered to one channel since its receiver was last woken.
struct Delivered {
    spec: Arc<ChannelSpec>,
    messages: u64,
    bytes: u64,
    /// Pushed and not yet announced to the receiver
    /// ([`crate::inbox::Inbox::publish`]).
    unpublished: u64,
}

/// A message that could not be delivered yet (receiver full or over quota).
struct Stashed {
    spec: Arc<ChannelSpec>,
    payload: Bytes,
}

/// One connection slot.
pub(crate) struct ConnSlot {
    pub conn: Connection,
    pub generation: u64,
    /// For accepted connections: the remote address (counted in
    /// `Shared::inbound_ips` until the close).
    pub inbound: Option<std::net::IpAddr>,
    /// For dialed connections: who and where.
    pub dial: Option<(PublicKey, SocketAddr)>,
    /// Set once established and admitted to the peer table.
    pub handle: Option<Arc<PeerHandle>>,
    depth: Arc<QueueDepth>,
    stash: Option<Stashed>,
    paused_until: Option<Instant>,
    /// The peer's per-channel quota limiters, shared with its other
    /// connections ([`crate::limiters`]); set once established.
    limiters: Option<Arc<crate::limiters::PeerLimiters>>,
    /// Records held back by their channel's quota ([`quota`]).
    quota_hold: quota::QuotaHold,
    close_label: Option<&'static str>,
    /// The misbehavior cooldown for this connection's peer was looked at
    /// (started or not) when the connection closed.
    cooldown_noted: bool,
    /// The unsent queue already moved to the replacing connection.
    moved_unsent: bool,
    /// This connection replaced `hold_for` (same shard): its input waits
    /// until that one is gone, so the peer's messages still in flight on
    /// the old connection are delivered before anything sent on this one.
    hold_for: Option<ConnId>,
    /// This connection replaced one on another shard: its output and input
    /// wait for that shard's hand-over ([`handover`]).
    handover: Option<Box<handover::Handover>>,
    /// This connection was replaced by `notify_on_close` on another shard,
    /// which waits for its close to read ([`Command::Released`]).
    notify_on_close: Option<ConnId>,
    counted_handshaking: bool,
    /// A write handed to the driver is outstanding and has made no progress
    /// since then: past [`TimeoutSettings::write_timeout`] the connection is aborted.
    ///
    /// [`TimeoutSettings::write_timeout`]: crate::config::TimeoutSettings::write_timeout
    write_since: Option<Instant>,
    /// When the protocol ended (the key joined `closing`): the driver has
    /// until `write_timeout` after it to flush, then resets the socket.
    closed_at: Option<Instant>,
    /// The socket must be reset now, without flushing.
    abort: bool,
    /// `ping()` callers waiting for the next pong (bounded).
    ping_waiters: Vec<tokio::sync::oneshot::Sender<Duration>>,
}

/// What the driver must do after [`ShardCore::handle_command`].
pub(crate) enum DriverAction {
    /// Register this accepted socket as a new connection.
    Adopt(std::net::TcpStream, std::net::IpAddr),
    /// Connect to `addr` for `peer`.
    Dial(PublicKey, SocketAddr),
    /// Begin shutdown (the core tracks the deadline).
    Shutdown,
}

/// The backend-independent half of a shard. See the module docs.
pub(crate) struct ShardCore {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub conns: Slab<ConnSlot>,
    rx: Receiver<Command>,
    pub waker: Arc<ShardWaker>,
    channels: Arc<Channels>,
    conn_cfg: Arc<ConnectionConfig>,
    authorizer: Authorizer,
    next_generation: u64,
    /// Connections with output to flush.
    pub dirty: Vec<usize>,
    /// Connections whose protocol state ended; the driver closes their socket.
    pub closing: Vec<usize>,
    paused: Vec<usize>,
    /// Channels that got messages since receivers were last woken.
    to_notify: Vec<Delivered>,
    /// Accepted messages whose connection closed for a replacement that is
    /// not established yet (the peer rejected our duplicate first): they
    /// wait, in order, for the peer's next connection (see `reroute`).
    parked: HashMap<PublicKey, Parked>,
    /// Connections closed because they were replaced, recently (bounded):
    /// a send still addressed to one is rerouted like one to a closing
    /// replaced connection.
    recently_replaced: std::collections::VecDeque<(ConnId, Instant)>,
    pub shutdown: Option<Instant>,
    next_timer_sweep: Instant,
    /// Set when [`ShardCore::poll_transmit`] hands the driver bytes; taken by
    /// [`ShardCore::yield_for_commands`].
    wrote: bool,
    /// Channels with a quota (for the peers' limiters).
    quota_channels: Vec<(u32, governor::Quota)>,
    /// Set by [`Command::Fail`] (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    injected_failure: bool,
}

const TIMER_GRANULARITY: Duration = Duration::from_millis(20);
/// Input a paused connection may buffer before its receive is cancelled
/// (see [`ShardCore::must_stop_reading`]).
pub const PAUSED_INPUT_LIMIT: usize = 256 * 1024;
/// `ping()` callers that may wait on one connection at once.
const MAX_PING_WAITERS: usize = 64;

/// Starts the peer's misbehavior cooldown if its established connection
/// closed because it provably broke the protocol
/// ([`crate::connection::CloseCause::is_peer_misbehavior`]); once per
/// connection.
fn note_misbehavior(shared: &Shared, slot: &mut ConnSlot) {
    if slot.cooldown_noted || !slot.conn.is_closed() {
        return;
    }
    slot.cooldown_noted = true;
    let Some(h) = &slot.handle else {
        return;
    };
    if shared
        .cooldown
        .on_close(&h.peer, slot.conn.closed_for_misbehavior(), Instant::now())
    {
        shared.metrics.misbehavior_cooldowns.inc();
        tracing::warn!(
            peer = %h.peer,
            reason = slot.conn.closed_label().unwrap_or("?"),
            cooldown = ?shared.config.admission.misbehavior_cooldown,
            "peer misbehaved; refusing it for the cooldown"
        );
    }
}

impl ConnSlot {
    /// Output handed to the driver made no progress for `timeout`, or the
    /// connection has been closing (flushing) that long.
    fn write_overdue(&self, now: Instant, timeout: Duration) -> bool {
        let past =
            |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) >= timeout);
        past(self.write_since) || past(self.closed_at)
    }
}

impl ShardCore {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        rx: Receiver<Command>,
        conn_cfg: Arc<ConnectionConfig>,
        authorizer: Authorizer,
    ) -> Self {
        let channels = shared.channels.get().cloned().unwrap_or_default();
        let waker = shared.shards[id].waker.clone();
        let mut quota_channels: Vec<(u32, governor::Quota)> = channels
            .map
            .values()
            .filter_map(|c| c.quota.map(|q| (c.id, q)))
            .collect();
        quota_channels.sort_by_key(|(c, _)| *c);
        Self {
            id,
            shared,
            conns: Slab::new(),
            rx,
            waker,
            channels,
            conn_cfg,
            authorizer,
            next_generation: 1,
            dirty: Vec::new(),
            closing: Vec::new(),
            paused: Vec::new(),
            to_notify: Vec::new(),
            parked: HashMap::new(),
            recently_replaced: std::collections::VecDeque::new(),
            shutdown: None,
            next_timer_sweep: Instant::now(),
            wrote: false,
            quota_channels,
            #[cfg(feature = "test-hooks")]
            injected_failure: false,
        }
    }

    /// Adds a connection (accepted from `inbound`'s address, or dialed);
    /// returns its slab key.
    pub fn insert(
        &mut self,
        inbound: Option<std::net::IpAddr>,
        dial: Option<(PublicKey, SocketAddr)>,
        now: Instant,
    ) -> usize {
        let conn = match &dial {
            Some((peer, _)) => Connection::dialer(
                self.conn_cfg.clone(),
                self.channels.clone(),
                self.authorizer.clone(),
                peer.clone(),
                now,
            ),
            None => Connection::dialee(
                self.conn_cfg.clone(),
                self.channels.clone(),
                self.authorizer.clone(),
                now,
            ),
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        let depth = Arc::new(QueueDepth::new(
            self.shared.config.limits.peer_send_backlog,
            self.shared.config.limits.peer_send_bytes,
        ));
        let mut conn = conn;
        conn.set_queue_depth(depth.clone());
        self.shared.metrics.handshaking.inc();
        let key = self.conns.insert(ConnSlot {
            conn,
            generation,
            inbound,
            dial,
            handle: None,
            depth,
            stash: None,
            paused_until: None,
            limiters: None,
            quota_hold: Default::default(),
            close_label: None,
            cooldown_noted: false,
            moved_unsent: false,
            hold_for: None,
            handover: None,
            notify_on_close: None,
            counted_handshaking: true,
            write_since: None,
            closed_at: None,
            abort: false,
            ping_waiters: Vec::new(),
        });
        self.dirty.push(key);
        key
    }

    /// Drains the command queue; returns actions the driver must perform.
    /// Returns whether there were any.
    pub fn drain_commands(&mut self, now: Instant, actions: &mut Vec<DriverAction>) -> bool {
        let mut any = false;
        while let Ok(cmd) = self.rx.try_recv() {
            self.handle_command(cmd, now, actions);
            any = true;
        }
        any
    }

    /// Before sleeping, give the CPU away once and look at the queue again.
    /// A producer in a burst that shares this core (the scheduler often runs
    /// a woken shard on its waker's CPU) gets to enqueue the rest of its
    /// burst, so the burst costs one wake-up instead of one per message. A
    /// timed spin was measured worse on shared cores: it starved the threads
    /// on the latency path. Not after a write while requests are outstanding
    /// (see inside). Returns true if a command arrived (and was handled).
    pub fn yield_for_commands(&mut self, actions: &mut Vec<DriverAction>) -> bool {
        // A shard that wrote while requests are outstanding goes straight to
        // its wait: what comes next is most likely an answer, which wakes it
        // directly, while a yield on a busy core can leave it runnable
        // behind the requester's spinning thread for a whole time slice
        // after that answer arrived. (Without requests outstanding the yield
        // stays: a producer streaming messages refills the queue during it.)
        if std::mem::take(&mut self.wrote) && self.shared.rpc.outstanding() > 0 {
            return self.has_commands(Instant::now(), actions);
        }
        std::thread::yield_now();
        self.has_commands(Instant::now(), actions)
    }

    /// True if a command is waiting (used after announcing sleep).
    pub fn has_commands(&mut self, now: Instant, actions: &mut Vec<DriverAction>) -> bool {
        match self.rx.try_recv() {
            Ok(cmd) => {
                self.handle_command(cmd, now, actions);
                true
            }
            Err(_) => false,
        }
    }

    fn handle_command(&mut self, cmd: Command, now: Instant, actions: &mut Vec<DriverAction>) {
        match cmd {
            Command::Send {
                id,
                peer,
                msg,
                high,
            } => self.send_on(id, &peer, msg, high, now, actions),
            Command::SendBatch {
                id,
                peer,
                msgs,
                high,
            } => {
                for msg in msgs {
                    self.send_on(id, &peer, msg, high, now, actions);
                }
            }
            Command::Control { id, record } => {
                if let Some(slot) = self
                    .conns
                    .get_mut(id.key)
                    .filter(|s| s.generation == id.generation)
                {
                    if slot.conn.send_control(record).is_ok() {
                        self.dirty.push(id.key);
                    } else {
                        self.shared.metrics.control_dropped.inc();
                    }
                }
            }
            Command::Ping { id, reply } => {
                if let Some(slot) = self
                    .conns
                    .get_mut(id.key)
                    .filter(|s| s.generation == id.generation)
                {
                    if slot.ping_waiters.len() < MAX_PING_WAITERS && slot.conn.ping(now).is_some() {
                        slot.ping_waiters.push(reply);
                        self.dirty.push(id.key);
                    }
                }
            }
            Command::Adopt { stream, ip } => actions.push(DriverAction::Adopt(stream, ip)),
            Command::Dial { peer, addr } => actions.push(DriverAction::Dial(peer, addr)),
            Command::Close { id, reason } => {
                if let Some(slot) = self.conns.get_mut(id.key) {
                    if slot.generation == id.generation {
                        slot.conn.close(reason, now);
                        self.dirty.push(id.key);
                        self.after_io(id.key, now);
                    }
                }
            }
            Command::ReplacedBy { id, by } => self.replaced_by(id, by, now),
            Command::Handover { to, peer, msgs } => {
                self.take_handover(to, peer, msgs, now, actions)
            }
            Command::Released { to, gone } => self.released(to, gone, now),
            Command::Shutdown { deadline } => {
                self.shutdown = Some(deadline);
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for k in keys {
                    if let Some(slot) = self.conns.get_mut(k) {
                        slot.conn.close(CloseReason::Shutdown, now);
                    }
                    self.dirty.push(k);
                    self.after_io(k, now);
                }
                actions.push(DriverAction::Shutdown);
            }
            #[cfg(feature = "test-hooks")]
            Command::Fail => self.injected_failure = true,
        }
    }

    /// An error the driver must stop with: only ever one a test injected
    /// (feature `test-hooks`); drivers call it once per turn.
    #[inline]
    pub fn injected_failure(&self) -> std::io::Result<()> {
        #[cfg(feature = "test-hooks")]
        if self.injected_failure {
            return Err(std::io::Error::other("failure injected by a test"));
        }
        Ok(())
    }

    /// The driver stops with an error: the shard leaves placement at once
    /// (not after the driver's teardown), and every connection still here
    /// closes as `shard_failed` (however the driver then releases it).
    pub fn driver_failed(&mut self) {
        self.leave_placement();
        for (_, slot) in self.conns.iter_mut() {
            slot.close_label.get_or_insert("shard_failed");
        }
    }

    /// No more connections for this shard ([`crate::placement`]).
    fn leave_placement(&self) {
        self.shared.leave_placement(self.id);
    }

    /// A connection handed to this shard never became one (the driver could
    /// not take its socket): give back what its hand-off counted.
    pub fn adopt_failed(&self, ip: std::net::IpAddr) {
        self.shared.release_inbound(ip);
        self.shared.shards[self.id].load.release();
    }

    /// Turns buffered input into events and handles them, until the input is
    /// used up or delivery must wait (backpressure).
    pub fn process_input(&mut self, key: usize, now: Instant) {
        loop {
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            if slot.stash.is_some() || slot.paused_until.is_some() || slot.hold_for.is_some() {
                break;
            }
            let Some(ev) = slot.conn.poll_event(now) else {
                break;
            };
            self.handle_event(key, ev, now);
        }
        if let Some(slot) = self.conns.get_mut(key) {
            let copied = slot.conn.take_reassembly_copied_bytes();
            if copied > 0 {
                self.shared.metrics.reassembly_copied_bytes.inc_by(copied);
            }
        }
        self.notify_receivers();
        self.after_io(key, now);
    }

    /// Bookkeeping after any input or command touched a connection.
    pub fn after_io(&mut self, key: usize, now: Instant) {
        self.move_unsent_if_replaced(key, now);
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if slot.conn.has_output() {
            self.dirty.push(key);
        }
        if slot.conn.is_closed() && slot.close_label.is_none() {
            // Closed without an event we saw (e.g. after graceful close).
            slot.close_label = Some(slot.conn.closed_label().unwrap_or("local_close"));
        }
        if slot.conn.is_closed() {
            // As soon as the protocol ended, not when the socket is gone: a
            // redial (ours or the peer's) must not slip in between.
            note_misbehavior(&self.shared, slot);
        }
        if slot.conn.is_closed() && !self.closing.contains(&key) {
            slot.closed_at = Some(now);
            self.closing.push(key);
        }
    }

    fn handle_event(&mut self, key: usize, ev: Event, now: Instant) {
        match ev {
            Event::Established { peer } => self.on_established(key, peer),
            Event::Message {
                kind,
                channel,
                request_id,
                status,
                payload,
            } => match kind {
                RecordKind::RpcResponse => self.on_response(key, request_id, status, payload),
                RecordKind::RpcRequest => self.on_request(key, channel, request_id, payload),
                _ => {
                    let Some(spec) = self.channels.get(channel).cloned() else {
                        self.shared.metrics.refuse("unknown_channel");
                        return;
                    };
                    if spec.handler.get().is_some() {
                        self.run_handler_for_message(key, &spec, payload);
                    } else {
                        self.deliver(key, Stashed { spec, payload }, now);
                    }
                }
            },
            Event::Control(record) => {
                let Some(id) = self.conn_id(key) else { return };
                let Some(peer) = self.conns.get(key).and_then(|s| s.conn.peer().cloned()) else {
                    return;
                };
                self.shared
                    .to_control(crate::shared::ControlEvent::Record { peer, id, record });
            }
            Event::Pong { rtt, .. } => {
                if let Some(slot) = self.conns.get_mut(key) {
                    for w in slot.ping_waiters.drain(..) {
                        let _ = w.send(rtt);
                    }
                }
            }
            Event::Closed(cause) => {
                // Counted once, in `finish_close` (closes, and the
                // handshake's result for one that never established).
                if let Some(slot) = self.conns.get_mut(key) {
                    slot.close_label = Some(cause.label());
                }
                tracing::debug!(shard = self.id, key, %cause, "connection closed");
            }
        }
    }

    fn conn_id(&self, key: usize) -> Option<ConnId> {
        self.conns.get(key).map(|s| ConnId {
            shard: self.id,
            key,
            generation: s.generation,
        })
    }

    fn on_response(&mut self, key: usize, request_id: u64, status: u32, payload: Bytes) {
        let Some(id) = self.conn_id(key) else { return };
        let result = match RpcStatus::from_u32(status) {
            RpcStatus::Ok => Ok(payload),
            other => Err(RequestError::Remote(other)),
        };
        if !self.shared.rpc.complete(id, request_id, result) {
            // Late (cancelled or timed out), duplicate, or never asked.
            self.shared.metrics.refuse("rpc_unmatched_response");
        }
    }

    fn on_request(&mut self, key: usize, channel: u32, request_id: u64, payload: Bytes) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let Some(peer) = slot.conn.peer().cloned() else {
            return;
        };
        let spec = self.channels.get(channel).cloned();
        let (status, reply) = match spec.as_ref().and_then(|s| s.handler.get()) {
            None => (RpcStatus::NoHandler, Bytes::new()),
            Some(handler) => match crate::rpc::run_handler(handler, &peer, payload) {
                Ok(r) => (RpcStatus::Ok, r.unwrap_or_default()),
                Err(e) => {
                    self.shared.metrics.refuse("handler_failed");
                    tracing::debug!(shard = self.id, %peer, channel, error = %e, "handler failed");
                    (RpcStatus::HandlerFailed, Bytes::new())
                }
            },
        };
        if let Some(spec) = &spec {
            spec.metrics.messages_in.inc();
        }
        let msg = Outgoing {
            kind: RecordKind::RpcResponse,
            channel,
            request_id,
            status: status as u32,
            compressed: false,
            payload: reply,
        };
        if slot.conn.send_internal(msg, true).is_err() {
            self.shared.metrics.refuse("rpc_response_queue_full");
        }
        self.dirty.push(key);
    }

    fn run_handler_for_message(&mut self, key: usize, spec: &Arc<ChannelSpec>, payload: Bytes) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let Some(peer) = slot.conn.peer().cloned() else {
            return;
        };
        let Some(handler) = spec.handler.get() else {
            return;
        };
        spec.metrics.messages_in.inc();
        spec.metrics.bytes_in.inc_by(payload.len() as u64);
        match crate::rpc::run_handler(handler, &peer, payload) {
            Ok(Some(reply)) => {
                if slot
                    .conn
                    .send_internal(Outgoing::data(spec.id, reply, false), false)
                    .is_err()
                {
                    self.shared.metrics.refuse("handler_reply_queue_full");
                }
                self.dirty.push(key);
            }
            Ok(None) => {}
            Err(e) => {
                self.shared.metrics.refuse("handler_failed");
                tracing::debug!(shard = self.id, %peer, channel = spec.id, error = %e, "handler failed");
            }
        }
    }

    fn on_established(&mut self, key: usize, peer: PublicKey) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        // The handshake checked the cooldown at the peer's Hello; a peer
        // that started this handshake before misbehaving on another
        // connection must not finish it now.
        if self.shared.cooldown.active(&peer, Instant::now()) {
            self.shared.metrics.refuse("cooldown");
            tracing::debug!(shard = self.id, %peer, "peer cooling down; closing its new connection");
            slot.conn.abort(crate::connection::CloseCause::Local(
                CloseReason::Unauthorized,
            ));
            return;
        }
        let me = self.shared.config.identity.signer.public_key().clone();
        let (dialer, addr) = match &slot.dial {
            Some((_, addr)) => (me, Some(*addr)),
            None => (peer.clone(), None),
        };
        if let Some((dialed, _)) = &slot.dial {
            self.shared.peers.mark_dialing(dialed, false);
        }
        let handle = Arc::new(PeerHandle {
            peer: peer.clone(),
            id: ConnId {
                shard: self.id,
                key,
                generation: slot.generation,
            },
            depth: slot.depth.clone(),
            dialer,
            addr,
        });
        self.shared.metrics.handshake("ok");
        if slot.counted_handshaking {
            slot.counted_handshaking = false;
            self.shared.metrics.handshaking.dec();
        }
        let admit = self.shared.peers.insert(handle.clone());
        match admit {
            Admit::Inserted => {}
            Admit::Replaced(old) => {
                let old_here = old.id.shard == self.id
                    && self
                        .conns
                        .get(old.id.key)
                        .is_some_and(|s| s.generation == old.id.generation);
                if old_here {
                    if let Some(slot) = self.conns.get_mut(key) {
                        slot.hold_for = Some(old.id);
                    }
                }
                // On another shard, the old connection hands its unsent
                // messages and its remaining input over in order.
                if old.id.shard == self.id || !self.await_handover(key, &old) {
                    self.close_elsewhere(&old, CloseReason::Replaced)
                }
            }
            Admit::Rejected => {
                tracing::debug!(shard = self.id, %peer, "duplicate connection rejected by tie-break");
                let mut rejected = None;
                if let Some(slot) = self.conns.get_mut(key) {
                    slot.conn.close(CloseReason::Replaced, Instant::now());
                    rejected = Some(ConnId {
                        shard: self.id,
                        key,
                        generation: slot.generation,
                    });
                }
                // The peer may have sent on this connection before it learned
                // that the other one wins: the winner's input waits until this
                // one has delivered what it carries and closed.
                if let (Some(rejected), Some(winner)) = (rejected, self.shared.peers.get(&peer)) {
                    if winner.id.shard == self.id {
                        if let Some(w) = self
                            .conns
                            .get_mut(winner.id.key)
                            .filter(|w| w.generation == winner.id.generation)
                        {
                            w.hold_for = Some(rejected);
                        }
                    }
                }
                return;
            }
        }
        self.shared.metrics.connections.inc();
        let id = handle.id;
        let limiters = self
            .shared
            .limiters
            .acquire(&peer, &self.quota_channels, Instant::now());
        if let Some(slot) = self.conns.get_mut(key) {
            slot.handle = Some(handle);
            // The peer's quotas, as its other (and last) connections left them.
            slot.limiters = limiters;
        }
        // Authorization was checked at the peer's Hello. The control shard's
        // sweep of peers that left every tracked set may have run since,
        // before this connection was in the peer table: checked again now
        // that it is, so either the sweep saw it or this sees the change.
        // (Before anything is queued on it or announced.)
        if !(self.authorizer)(&peer) {
            tracing::debug!(shard = self.id, %peer, "deauthorized during its handshake; closing");
            if let Some(slot) = self.conns.get_mut(key) {
                slot.conn.abort(crate::connection::CloseCause::Local(
                    CloseReason::Unauthorized,
                ));
            }
            self.dirty.push(key);
            self.after_io(key, Instant::now());
            return;
        }
        // Messages parked for this peer go first, ahead of anything sent on
        // the new connection since.
        self.flush_parked(&peer, Instant::now());
        self.shared
            .to_control(crate::shared::ControlEvent::Connected {
                peer: peer.clone(),
                id,
            });
        tracing::debug!(shard = self.id, %peer, "connection established");
    }

    fn close_elsewhere(&mut self, old: &PeerHandle, reason: CloseReason) {
        if old.id.shard == self.id {
            if let Some(slot) = self.conns.get_mut(old.id.key) {
                if slot.generation == old.id.generation {
                    // The handle stays: it was counted as established, and
                    // its release decrements the gauge; the peer table
                    // already points at the new connection, so releasing
                    // the old id there is a no-op.
                    slot.conn.close(reason, Instant::now());
                    self.dirty.push(old.id.key);
                    self.move_unsent_if_replaced(old.id.key, Instant::now());
                }
            }
        } else if let Some(link) = self.shared.shards.get(old.id.shard) {
            let _ = link.send(Command::Close { id: old.id, reason });
        }
    }

    /// A connection being closed because another one to the same peer won
    /// the tie-break hands its unsent messages to the winner at once, ahead
    /// of anything sent later, instead of flushing them on a connection the
    /// peer is tearing down.
    fn move_unsent_if_replaced(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if slot.moved_unsent || !slot.conn.closing_replaced() {
            return;
        }
        slot.moved_unsent = true;
        let Some(peer) = slot.conn.peer().cloned() else {
            return;
        };
        let old = ConnId {
            shard: self.id,
            key,
            generation: slot.generation,
        };
        let mut unsent = slot.conn.take_unsent();
        unsent.extend(handover::take_held(slot));
        let mut no_actions = Vec::new();
        for (msg, high) in unsent {
            self.reroute(old, peer.clone(), msg, high, true, now, &mut no_actions);
        }
        debug_assert!(no_actions.is_empty(), "sends never produce driver actions");
    }

    /// Moves an accepted message whose connection `old` closed to the peer's
    /// current connection: the simultaneous-dial tie-break and reconnects
    /// replace connections while senders still hold the old one, and
    /// `send` already told the application the message was accepted. Same
    /// shard: queued right behind what was already routed there; another
    /// shard: through its queue. Counted; a message with no connection left
    /// to go to is counted as dropped, never silently lost.
    /// Queues one application message on connection `id` (its depth slot
    /// already reserved), or moves it to the peer's current connection.
    fn send_on(
        &mut self,
        id: ConnId,
        peer: &PublicKey,
        msg: Outgoing,
        high: bool,
        now: Instant,
        actions: &mut Vec<DriverAction>,
    ) {
        let slot = self
            .conns
            .get_mut(id.key)
            .filter(|slot| slot.generation == id.generation);
        match slot {
            Some(slot) if slot.conn.accepts_messages() => {
                if slot.handover.is_some() {
                    let Some((msg, high)) = self.hold_if_waiting(id.key, msg, high) else {
                        return;
                    };
                    if let Some(slot) = self.conns.get_mut(id.key) {
                        if slot.conn.send(msg, high).is_ok() {
                            self.dirty.push(id.key);
                        } else {
                            self.shared.metrics.send_dropped("queue_full");
                        }
                    }
                    return;
                }
                // The connection enforces its own hard cap and fixes the
                // depth counter if it refuses (a rerouted message can find
                // it full).
                if slot.conn.send(msg, high).is_ok() {
                    self.dirty.push(id.key);
                } else {
                    self.shared.metrics.send_dropped("queue_full");
                }
            }
            closing => {
                // Accepted for a connection that began closing (or is gone)
                // since: give its slot back and move the message to the
                // peer's current connection.
                let replaced = match closing {
                    Some(slot) => {
                        slot.depth.release(1, msg.payload.len());
                        slot.conn.closing_replaced()
                    }
                    None => self.recently_replaced.iter().any(|(c, _)| *c == id),
                };
                self.reroute(id, peer.clone(), msg, high, replaced, now, actions);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn reroute(
        &mut self,
        old: ConnId,
        peer: PublicKey,
        msg: Outgoing,
        high: bool,
        replaced: bool,
        now: Instant,
        actions: &mut Vec<DriverAction>,
    ) {
        let Some(h) = self.shared.peers.get(&peer).filter(|h| h.id != old) else {
            if !replaced {
                // The peer left (shutdown, error): nothing to wait for.
                self.shared.metrics.send_dropped("disconnected");
                return;
            }
            // Replaced by a connection still handshaking (the peer rejected
            // our duplicate first): wait for it, bounded in count, bytes
            // and time.
            let cfg = &self.shared.config;
            let p = self.parked.entry(peer).or_insert_with(|| Parked {
                since: now,
                bytes: 0,
                msgs: std::collections::VecDeque::new(),
            });
            let len = msg.payload.len();
            if p.msgs.len() < cfg.limits.peer_send_backlog
                && (p.bytes == 0 || p.bytes.saturating_add(len) <= cfg.limits.peer_send_bytes)
            {
                p.bytes += len;
                p.msgs.push_back((msg, high));
            } else {
                self.shared.metrics.send_dropped("disconnected");
            }
            return;
        };
        if self.parked.contains_key(&peer) {
            // Older messages waited for this connection: they go first.
            self.flush_parked(&peer, now);
        }
        self.send_to_current(&h, peer, msg, high, now, actions);
    }

    /// Hands `peer`'s parked messages to its current connection, if it has
    /// one that is not closing; drops them (counted) once they waited longer
    /// than a handshake may take.
    fn flush_parked(&mut self, peer: &PublicKey, now: Instant) {
        let Some(h) = self.shared.peers.get(peer) else {
            return self.expire_parked(peer, now);
        };
        let usable = h.id.shard != self.id
            || self
                .conns
                .get(h.id.key)
                .is_some_and(|s| s.generation == h.id.generation && s.conn.accepts_messages());
        if !usable {
            return self.expire_parked(peer, now);
        }
        let Some(p) = self.parked.remove(peer) else {
            return;
        };
        let mut no_actions = Vec::new();
        for (msg, high) in p.msgs {
            self.send_to_current(&h, peer.clone(), msg, high, now, &mut no_actions);
        }
    }

    /// Queues an already-accepted message on `h`, the peer's current
    /// connection (here, or through its shard's queue), counted as rerouted.
    fn send_to_current(
        &mut self,
        h: &PeerHandle,
        peer: PublicKey,
        msg: Outgoing,
        high: bool,
        now: Instant,
        actions: &mut Vec<DriverAction>,
    ) {
        let bytes = msg.payload.len();
        h.depth.force_reserve(bytes);
        self.shared.metrics.send_rerouted.inc();
        let cmd = Command::Send {
            id: h.id,
            peer,
            msg,
            high,
        };
        if h.id.shard == self.id {
            // Terminates: the table points at `h.id`, so if that one is
            // closing too, its reroute finds `h.id == old` and parks or drops.
            self.handle_command(cmd, now, actions);
            return;
        }
        let sent = self
            .shared
            .shards
            .get(h.id.shard)
            .is_some_and(|link| link.send(cmd).is_ok());
        if !sent {
            h.depth.release(1, bytes);
            self.shared.metrics.send_dropped("shard_queue_full");
        }
    }

    fn expire_parked(&mut self, peer: &PublicKey, now: Instant) {
        let wait = self.shared.config.timeouts.handshake_timeout;
        if let Some(p) = self.parked.get(peer) {
            if now.saturating_duration_since(p.since) >= wait {
                let n = p.msgs.len();
                self.parked.remove(peer);
                self.shared.metrics.send_dropped_n("disconnected", n);
            }
        }
    }

    /// Delivers a message to its channel, or stashes it and pauses reading.
    fn deliver(&mut self, key: usize, msg: Stashed, now: Instant) {
        if let Some(msg) = self.check_quota(key, msg, now) {
            self.push_to_receiver(key, msg, now);
        }
    }

    /// Hands a message that passed its quota to its channel's receiver, or
    /// stashes it and pauses reading while the receiver is full.
    fn push_to_receiver(&mut self, key: usize, msg: Stashed, _now: Instant) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        let Some(peer) = slot.conn.peer().cloned() else {
            return;
        };
        let len = msg.payload.len() as u64;
        let Stashed { spec, payload } = msg;
        let pushed = match spec.inbox.push((peer, payload)) {
            Ok(()) => true,
            Err(Rejected::Full(item)) => {
                spec.blocked.store(true, Ordering::SeqCst);
                // Retry after publishing `blocked`: the receiver may have
                // drained in between and would not know to wake us.
                match spec.inbox.push(item) {
                    Ok(()) => true,
                    Err(Rejected::Closed(_)) => {
                        self.shared.metrics.refuse("receiver_dropped");
                        false
                    }
                    Err(Rejected::Full((_, payload))) => {
                        self.shared.metrics.receiver_full_pauses.inc();
                        // Announce its earlier messages now: the receiver
                        // can only make room by taking them.
                        let d = self
                            .to_notify
                            .iter_mut()
                            .find(|d| Arc::ptr_eq(&d.spec, &spec));
                        let n = d.map_or(0, |d| std::mem::take(&mut d.unpublished));
                        spec.inbox.publish(n);
                        slot.stash = Some(Stashed {
                            spec: spec.clone(),
                            payload,
                        });
                        if !self.paused.contains(&key) {
                            self.paused.push(key);
                        }
                        false
                    }
                }
            }
            Err(Rejected::Closed(_)) => {
                self.shared.metrics.refuse("receiver_dropped");
                false
            }
        };
        if pushed {
            // One wake-up and one metrics update per channel per batch (see
            // `notify_receivers`).
            match self
                .to_notify
                .iter_mut()
                .find(|d| Arc::ptr_eq(&d.spec, &spec))
            {
                Some(d) => {
                    d.messages += 1;
                    d.unpublished += 1;
                    d.bytes += len;
                }
                None => self.to_notify.push(Delivered {
                    spec,
                    messages: 1,
                    bytes: len,
                    unpublished: 1,
                }),
            }
        }
    }

    /// Wakes the receivers of every channel that got messages since the last
    /// call, and counts those messages: once per batch of input, not once
    /// per message.
    pub fn notify_receivers(&mut self) {
        for d in self.to_notify.drain(..) {
            d.spec.metrics.messages_in.inc_by(d.messages);
            d.spec.metrics.bytes_in.inc_by(d.bytes);
            d.spec.inbox.publish(d.unpublished);
        }
    }

    /// Retries paused connections (receiver space freed or quota refilled).
    pub fn resume_paused(&mut self, now: Instant) {
        if self.paused.is_empty() {
            return;
        }
        let paused = std::mem::take(&mut self.paused);
        for key in paused {
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            if let Some(until) = slot.paused_until {
                if now < until {
                    self.paused.push(key);
                    continue;
                }
                slot.paused_until = None;
            }
            // The stash passed its quota already: only the receiver was full.
            if let Some(msg) = slot.stash.take() {
                self.push_to_receiver(key, msg, now);
            }
            self.release_quota_held(key, now);
            let Some(slot) = self.conns.get_mut(key) else {
                continue;
            };
            if slot.quota_hold.full() {
                slot.paused_until = Some(now);
            }
            let still = slot.stash.is_some() || slot.paused_until.is_some();
            if (still || !slot.quota_hold.is_empty()) && !self.paused.contains(&key) {
                self.paused.push(key);
            }
            if !still {
                self.process_input(key, now);
                // The driver must look at it even without output: a receive
                // that ended while it was paused (io_uring's direct receive,
                // or a cancelled multishot) is re-armed from the dirty list.
                // Without this it stayed unarmed until a ping or gossip
                // next gave the connection output.
                self.dirty.push(key);
            }
        }
        self.notify_receivers();
    }

    /// True if some connection waits for the receiver or quota.
    pub fn has_paused(&self) -> bool {
        !self.paused.is_empty()
    }

    /// Whether the driver should read from this connection now.
    pub fn wants_read(&self, key: usize) -> bool {
        self.conns
            .get(key)
            .map(|s| {
                s.stash.is_none()
                    && s.paused_until.is_none()
                    && s.hold_for.is_none()
                    && s.conn.wants_read()
            })
            .unwrap_or(false)
    }

    /// Whether `key` wants input and a large frame body is pending, which a
    /// driver had better receive straight into the connection's buffer
    /// ([`ShardCore::lend_read_buf`]) than through its receive pool.
    pub fn large_body_pending(&self, key: usize) -> bool {
        self.wants_read(key)
            && self
                .conns
                .get(key)
                .is_some_and(|s| s.conn.large_body_pending())
    }

    /// See [`Connection::large_records`].
    pub fn large_records(&self, key: usize) -> bool {
        self.conns.get(key).is_some_and(|s| s.conn.large_records())
    }

    /// See [`Connection::lend_read_buf`]; `None` unless the connection wants
    /// input and a large body is pending or it carries large records.
    pub fn lend_read_buf(&mut self, key: usize) -> Option<(BytesMut, usize)> {
        if !self.wants_read(key) {
            return None;
        }
        let batch = self.shared.config.io.recv_buffer_size;
        self.conns.get_mut(key)?.conn.lend_read_buf(batch)
    }

    /// Gives back a buffer lent by [`ShardCore::lend_read_buf`] (dropped if
    /// the connection is gone).
    pub fn return_read_buf(&mut self, key: usize, buf: BytesMut, now: Instant) {
        if let Some(s) = self.conns.get_mut(key) {
            s.conn.return_read_buf(buf, now);
        }
    }

    /// Whether a driver that keeps a receive armed (io_uring's multishot)
    /// must cancel it: the connection is closed, or it is paused (receiver
    /// full, quota, replacement) with more than [`PAUSED_INPUT_LIMIT`] bytes
    /// already buffered. Short pauses thus cost no cancel and re-arm, while
    /// a long one still stops reading (TCP backpressure), with the buffered
    /// input bounded per connection.
    pub fn must_stop_reading(&self, key: usize) -> bool {
        if self.wants_read(key) {
            return false;
        }
        self.conns
            .get(key)
            .is_none_or(|s| s.conn.is_closed() || s.conn.buffered() > PAUSED_INPUT_LIMIT)
    }

    /// Bytes to write for `key`, if any.
    pub fn poll_transmit(&mut self, key: usize) -> Option<Bytes> {
        let slot = self.conns.get_mut(key)?;
        let out = slot.conn.poll_transmit();
        if slot.conn.is_closed() && !self.closing.contains(&key) {
            if slot.close_label.is_none() {
                slot.close_label = Some(slot.conn.closed_label().unwrap_or("local_close"));
            }
            slot.closed_at = Some(Instant::now());
            self.closing.push(key);
        }
        if out.is_some() {
            if slot.write_since.is_none() {
                slot.write_since = Some(Instant::now());
            }
            self.shared.metrics.writes.inc();
            self.wrote = true;
        }
        out
    }

    /// The driver wrote some of what [`ShardCore::poll_transmit`] handed it
    /// (`done`: all of it): the connection's output made progress.
    pub fn handle_sent(&mut self, key: usize, done: bool, now: Instant) {
        if let Some(slot) = self.conns.get_mut(key) {
            slot.write_since = if done { None } else { Some(now) };
        }
    }

    /// Whether the driver must reset `key`'s socket now instead of flushing
    /// it: its output stalled past `write_timeout` (or its close flush ran
    /// out of time), or shutdown is overdue.
    pub fn must_abort(&self, key: usize, now: Instant) -> bool {
        self.shutdown_overdue(now)
            || self.conns.get(key).is_some_and(|s| {
                s.abort || s.write_overdue(now, self.shared.config.timeouts.write_timeout)
            })
    }

    /// Aborts a connection whose output stalled past `write_timeout`: its
    /// queues are dropped (counted) and the driver resets the socket.
    fn abort_stalled(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        slot.abort = true;
        self.shared.metrics.write_timeouts.inc();
        if !slot.conn.is_closed() {
            slot.conn.abort(crate::connection::CloseCause::WriteTimeout);
        }
        let peer = slot.conn.peer().cloned();
        tracing::warn!(
            shard = self.id,
            peer = ?peer,
            timeout = ?self.shared.config.timeouts.write_timeout,
            "connection output stalled; resetting it"
        );
        self.process_input(key, now);
    }

    /// Runs connection timers at a coarse granularity.
    pub fn handle_timers(&mut self, now: Instant) {
        if now < self.next_timer_sweep {
            return;
        }
        self.next_timer_sweep = now + TIMER_GRANULARITY;
        let write_timeout = self.shared.config.timeouts.write_timeout;
        let keys: Vec<(usize, bool)> = self
            .conns
            .iter()
            .filter_map(|(k, s)| {
                let stalled = !s.abort && s.write_overdue(now, write_timeout);
                let timer = s.conn.poll_timeout().is_some_and(|t| t <= now);
                (stalled || timer).then_some((k, stalled))
            })
            .collect();
        for (key, stalled) in keys {
            if stalled {
                self.abort_stalled(key, now);
                continue;
            }
            if let Some(slot) = self.conns.get_mut(key) {
                slot.conn.handle_timeout(now);
            }
            self.process_input(key, now);
        }
        if self.has_paused() {
            self.resume_paused(now);
        }
        self.expire_handovers(now);
        if !self.parked.is_empty() {
            let peers: Vec<PublicKey> = self.parked.keys().cloned().collect();
            for peer in peers {
                self.flush_parked(&peer, now);
            }
        }
        self.shared.rpc.expire(self.id, now, None);
    }

    /// How long the driver may sleep.
    pub fn sleep_budget(&self, now: Instant) -> Duration {
        let mut d = self
            .next_timer_sweep
            .saturating_duration_since(now)
            .max(TIMER_GRANULARITY);
        if self.shutdown.is_some() {
            d = d.min(Duration::from_millis(5));
        }
        d
    }

    /// The driver closed (or failed) the socket of `key`: forget it.
    pub fn finish_close(&mut self, key: usize, io_error: Option<String>) {
        if !self.conns.contains(key) {
            return;
        }
        let mut slot = self.conns.remove(key);
        // The connection that replaced this one may read now.
        let gone = ConnId {
            shard: self.id,
            key,
            generation: slot.generation,
        };
        self.announce_release(gone, slot.notify_on_close.take());
        self.drop_held(&mut slot);
        self.shared
            .metrics
            .refuse_n("quota_held_at_close", slot.quota_hold.len());
        let held: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, s)| s.hold_for == Some(gone))
            .map(|(k, _)| k)
            .collect();
        for k in held {
            if let Some(s) = self.conns.get_mut(k) {
                s.hold_for = None;
            }
            self.process_input(k, Instant::now());
            self.dirty.push(k);
        }
        if slot.moved_unsent {
            let now = Instant::now();
            let keep = self.shared.config.timeouts.handshake_timeout;
            while self
                .recently_replaced
                .front()
                .is_some_and(|(_, t)| now.saturating_duration_since(*t) > keep)
                || self.recently_replaced.len() >= 1024
            {
                self.recently_replaced.pop_front();
            }
            self.recently_replaced.push_back((
                ConnId {
                    shard: self.id,
                    key,
                    generation: slot.generation,
                },
                now,
            ));
        }
        if let Some(err) = io_error {
            slot.conn.handle_io_error(err);
            while let Some(ev) = slot.conn.poll_event(Instant::now()) {
                if let Event::Closed(cause) = ev {
                    if slot.close_label.is_none() {
                        slot.close_label = Some(cause.label());
                    }
                }
            }
        }
        // Nothing queued will be written: release the app-visible depth.
        slot.conn
            .abort(crate::connection::CloseCause::Local(CloseReason::Normal));
        // Accepted messages still queued are gone with the connection: count
        // them (the stash is an inbound message, not counted here).
        self.shared
            .metrics
            .send_dropped_n("disconnected", slot.conn.dropped_on_close());
        let label = slot.close_label.unwrap_or("io_error");
        self.shared.metrics.close(label);
        if slot.counted_handshaking {
            self.shared.metrics.handshaking.dec();
            if slot.handle.is_none() {
                self.shared.metrics.handshake(label);
            }
        }
        note_misbehavior(&self.shared, &mut slot);
        if let Some(h) = &slot.handle {
            self.shared.metrics.connections.dec();
            self.shared.peers.remove(&h.peer, h.id, label);
            if slot.limiters.take().is_some() {
                self.shared.limiters.release(&h.peer, Instant::now());
            }
        }
        // Requests waiting on this connection fail now, not at their
        // timeout. After the peer table forgets the connection: a request
        // registered later sees it gone (`Sender::register_request`).
        self.shared.rpc.expire(
            self.id,
            Instant::now(),
            Some(ConnId {
                shard: self.id,
                key,
                generation: slot.generation,
            }),
        );
        if let Some(ip) = slot.inbound {
            self.shared.release_inbound(ip);
        } else {
            self.shared.outbound.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.shards[self.id].load.release();
        if let Some((peer, _)) = &slot.dial {
            self.shared.peers.mark_dialing(peer, false);
            if slot.handle.is_none() {
                self.shared.metrics.dial_failures.inc();
                tracing::debug!(shard = self.id, %peer, reason = label, "dial failed");
                // A dial that lost the tie-break to a live connection did
                // not fail.
                if self.shared.config.discovery.open && !self.shared.peers.contains(peer) {
                    self.shared
                        .to_control(crate::shared::ControlEvent::DialFailed { peer: peer.clone() });
                }
            }
        }
        self.closing.retain(|&k| k != key);
        self.paused.retain(|&k| k != key);
    }

    /// True when shutdown was requested and every connection is gone.
    pub fn shutdown_complete(&self) -> bool {
        self.shutdown.is_some() && self.conns.is_empty()
    }

    /// True when the shutdown deadline passed.
    pub fn shutdown_overdue(&self, now: Instant) -> bool {
        self.shutdown.is_some_and(|d| now >= d)
    }
}

impl Drop for ShardCore {
    /// Accepted messages that never reached a connection end here: those
    /// parked for a peer's replacement connection, and sends still in the
    /// command queue (accepted just before shutdown, or before the shard's
    /// driver failed). Each is counted as
    /// `send_dropped{reason="shutdown"}`, like every other accepted message
    /// that is not delivered.
    fn drop(&mut self) {
        // Connections still here when the driver stopped (it failed, or
        // shutdown ran out of time) are closed now and counted like any
        // other close: peer table, gauges, address counts, waiting requests.
        // Their sockets closed with the driver.
        let label = if self.shutdown.is_some() {
            "shutdown"
        } else {
            "shard_failed"
        };
        // Before draining the queue: hand-offs stop coming.
        self.leave_placement();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some(slot) = self.conns.get_mut(k) {
                slot.close_label.get_or_insert(label);
                // Senders waiting for room on this connection must not
                // wait (or retry a full command queue) forever.
                slot.depth.close();
            }
            self.finish_close(k, None);
        }
        let parked: usize = self.parked.values().map(|p| p.msgs.len()).sum();
        let mut queued = 0;
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Send { .. } => queued += 1,
                Command::SendBatch { msgs, .. } => queued += msgs.len(),
                Command::Handover { msgs, .. } => queued += msgs.len(),
                Command::ReplacedBy { id, by } => self.announce_release(id, Some(by)),
                Command::Adopt { ip, .. } => self.adopt_failed(ip),
                Command::Dial { peer, .. } => {
                    self.shared.outbound.fetch_sub(1, Ordering::AcqRel);
                    self.shared.peers.mark_dialing(&peer, false);
                    self.shared.shards[self.id].load.release();
                }
                _ => {}
            }
        }
        self.shared
            .metrics
            .send_dropped_n("shutdown", parked + queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::ReasonLabel;
    use crate::network::Network;
    use crate::queue_depth::Reserve;
    use shoal_crypto::{Ed25519Signer, Signer};

    fn key(seed: u64) -> PublicKey {
        Ed25519Signer::insecure_from_seed(seed).public_key().clone()
    }

    fn msg() -> Outgoing {
        Outgoing::data(1, Bytes::from_static(b"m"), false)
    }

    /// A shard that exits (shutdown, or a failed driver) with accepted
    /// messages it never handed to a connection counts each one as
    /// `send_dropped{reason="shutdown"}` (sends still in its command queue,
    /// messages parked for a peer's next connection), and closes its
    /// connections' queue depths so a sender blocked on a full one returns
    /// instead of waiting forever.
    #[test]
    fn an_exiting_shard_counts_what_it_drops_and_releases_blocked_senders() {
        let (net, _oracle) = Network::new(Config::local(None)).unwrap();
        let mut core = net.into_shard_core();
        let shared = core.shared.clone();
        let now = Instant::now();
        let peer = key(7);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let slot_key = core.insert(None, Some((peer.clone(), addr)), now);
        let id = ConnId {
            shard: 0,
            key: slot_key,
            generation: core.conns[slot_key].generation,
        };
        // The connection's queue is full, and a sender waits for room.
        let depth = core.conns[slot_key].depth.clone();
        while depth.try_reserve(1) {}
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let blocked = {
            let depth = depth.clone();
            std::thread::spawn(move || done_tx.send(depth.reserve_blocking(1)))
        };
        // Accepted but never handled: 3 sends and a batch of 2 in the command
        // queue, 4 messages parked for another peer's replacement connection.
        let link = &shared.shards[0];
        for _ in 0..3 {
            let send = Command::Send {
                id,
                peer: peer.clone(),
                msg: msg(),
                high: false,
            };
            assert!(link.send(send).is_ok());
        }
        let batch = Command::SendBatch {
            id,
            peer: peer.clone(),
            msgs: vec![msg(), msg()],
            high: false,
        };
        assert!(link.send(batch).is_ok());
        core.parked.insert(
            key(8),
            Parked {
                since: now,
                bytes: 4,
                msgs: (0..4).map(|_| (msg(), false)).collect(),
            },
        );

        drop(core);

        let dropped = shared
            .metrics
            .send_dropped
            .get_or_create(&ReasonLabel {
                reason: "shutdown".into(),
            })
            .get();
        assert_eq!(dropped, 3 + 2 + 4);
        let released = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the blocked sender was never released");
        assert_eq!(released, Reserve::Closed);
        blocked.join().unwrap().unwrap();
    }

    fn dialed(core: &mut ShardCore, seed: u64, now: Instant) -> usize {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        core.insert(None, Some((key(seed), addr)), now)
    }

    fn count(
        f: &prometheus_client::metrics::family::Family<
            ReasonLabel,
            prometheus_client::metrics::counter::Counter,
        >,
        reason: &str,
    ) -> u64 {
        f.get_or_create(&ReasonLabel {
            reason: reason.into(),
        })
        .get()
    }

    /// A handshake that times out is one handshake outcome and one close,
    /// each counted once, when its socket is released.
    #[test]
    fn a_failed_handshake_is_counted_once() {
        let (net, _oracle) = Network::new(Config::local(None)).unwrap();
        let mut core = net.into_shard_core();
        let shared = core.shared.clone();
        let now = Instant::now();
        let k = dialed(&mut core, 7, now);
        assert_eq!(shared.metrics.handshaking.get(), 1);
        let later = now + shared.config.timeouts.handshake_timeout + Duration::from_secs(1);
        core.handle_timers(later);
        assert!(core.closing.contains(&k), "the handshake timed out");
        core.finish_close(k, None);
        assert_eq!(count(&shared.metrics.handshakes, "handshake_timeout"), 1);
        assert_eq!(count(&shared.metrics.closes, "handshake_timeout"), 1);
        assert_eq!(shared.metrics.handshaking.get(), 0);
        core.finish_close(k, None);
        assert_eq!(
            count(&shared.metrics.handshakes, "handshake_timeout"),
            1,
            "a second release counts nothing"
        );
    }

    /// Output handed to the driver that makes no progress for
    /// `write_timeout` gets the connection reset (counted once, the slot
    /// marked for abort); output that progresses never does.
    #[test]
    fn stalled_output_is_aborted_after_the_write_timeout() {
        let mut cfg = Config::local(None);
        cfg.timeouts.handshake_timeout = Duration::from_secs(300);
        cfg.timeouts.write_timeout = Duration::from_secs(5);
        let (net, _oracle) = Network::new(cfg).unwrap();
        let mut core = net.into_shard_core();
        let shared = core.shared.clone();
        let now = Instant::now();
        let (stalled, moving) = (dialed(&mut core, 7, now), dialed(&mut core, 8, now));
        assert!(
            core.poll_transmit(stalled).is_some(),
            "a dialer sends its hello"
        );
        assert!(core.poll_transmit(moving).is_some());
        let t0 = Instant::now();
        core.handle_sent(moving, true, t0);
        let before = t0 + Duration::from_secs(4);
        assert!(!core.must_abort(stalled, before));
        core.handle_timers(before);
        assert_eq!(shared.metrics.write_timeouts.get(), 0);
        let after = t0 + Duration::from_secs(6);
        assert!(core.must_abort(stalled, after));
        assert!(!core.must_abort(moving, after), "its output was written");
        core.handle_timers(after);
        assert_eq!(shared.metrics.write_timeouts.get(), 1);
        assert!(core.closing.contains(&stalled));
        core.handle_timers(after + Duration::from_secs(1));
        assert_eq!(shared.metrics.write_timeouts.get(), 1, "counted once");
        core.finish_close(stalled, None);
        assert_eq!(count(&shared.metrics.closes, "write_timeout"), 1);
    }
}
