//! A data shard: one thread that owns its connections for their whole life.
//!
//! # Design
//! [`ShardCore`] is the backend-independent half of a shard: a slab of
//! connections, the command queue from other threads, delivery to channel
//! receivers with backpressure and quotas, the peer table updates and the
//! timers. The I/O drivers ([`crate::driver`]) own the sockets and only move
//! bytes: they call [`ShardCore::process_input`] after receiving,
//! [`ShardCore::poll_transmit`] to get bytes to write, and
//! [`ShardCore::finish_close`] once a socket is gone. The core owns no
//! socket: its only system calls are a yield before the driver sleeps and
//! the wake-ups of other shards it sends commands to.
//!
//! No locks on the per-message path: a send command carries the slab key and
//! generation, so the shard finds the connection with one index.
//!
//! One struct, split by concern:
//! - [`link`]: what other threads may ask of a shard ([`Command`],
//!   [`ShardLink`]); below everything else here.
//! - this file: the slab, the command drain, event dispatch, timers, and the
//!   methods the drivers call.
//! - [`slot`]: what the shard keeps per connection.
//! - [`delivery`] (with [`quota`]): received messages to channel receivers.
//! - [`handover`]: establishment and duplicate connections (tie-break,
//!   hand-over between shards).
//! - [`reroute`]: accepted output whose connection is no longer there.
//! - [`rpc`]: requests, responses, in-shard handlers and pings.
//! - [`close`]: the end of a connection, and of the shard.
//!
//! # Glossary
//! - **slot**, **key**, **generation**: a connection's entry in the slab,
//!   its index, and a counter that tells its occupants apart; a
//!   [`ConnId`] is all three plus the shard, and a stale one finds nothing.
//! - **dirty**: connections the driver must look at: output to flush, or a
//!   receive to re-arm.
//! - **closing**: connections whose protocol ended; the driver flushes and
//!   drops their socket, then calls [`ShardCore::finish_close`].
//! - **replaced** / **replacement**: a peer's connection that lost the
//!   duplicate-connection tie-break to a newer one, and that newer one.
//! - **hand-over**: a replaced connection on another shard passing its
//!   unsent messages to its replacement ([`handover`]).
//! - **reroute**: moving an accepted message from a connection that is gone
//!   (or closing) to the peer's current connection ([`reroute`]).
//! - **held** (input): a received message not yet delivered to its
//!   receiver: the receiver was full, or its channel's quota had no room.
//!   Connections holding input are retried on a resume request and at every
//!   timer sweep ([`ShardCore::retry_held`]).
//! - **paused** (a connection): reads no input for now: it holds a message
//!   its full receiver refused, holds too much quota-held input, or waits
//!   behind the connection it replaced until that one is gone. **Resumed**
//!   when that ends.
//! - **parked** (output): accepted messages not yet on a connection's queue
//!   because order requires a wait: for the peer's next connection (a
//!   replacement still handshaking, per peer), or on a replacement for its
//!   hand-over. Bounded, flushed in order, and counted when dropped.
//! - **notify**: announcing delivered messages to a receiver, once per
//!   channel per batch of input.

use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shoal_crypto::PublicKey;
use shoal_wire::RecordKind;
use slab::Slab;

use crate::channel_spec::Channels;
use crate::config::Config;
use crate::connection::{Authorizer, Connection, ConnectionConfig, ControlOut, Event};
use crate::metrics::Metrics;
use crate::peers::ConnId;
use crate::queue_depth::QueueDepth;
use crate::shared::Shared;
use crate::waker::ShardWaker;

mod close;
mod delivery;
mod handover;
pub(crate) mod link;
mod quota;
mod reroute;
mod rpc;
mod slot;

pub(crate) use link::{Command, ShardLink};
use slot::{ConnSlot, Live};

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
    id: usize,
    shared: Arc<Shared>,
    conns: Slab<ConnSlot>,
    rx: Receiver<Command>,
    waker: Arc<ShardWaker>,
    channels: Arc<Channels>,
    conn_cfg: Arc<ConnectionConfig>,
    authorizer: Authorizer,
    next_generation: u64,
    /// Connections with output to flush.
    dirty: Vec<usize>,
    /// Connections whose protocol state ended; the driver closes their socket.
    closing: Vec<usize>,
    /// Connections holding input, retried by [`ShardCore::retry_held`].
    holding: Vec<usize>,
    /// Channels that got messages since receivers were last notified.
    to_notify: Vec<delivery::Delivered>,
    /// Output parked per peer: accepted messages whose connection closed for
    /// a replacement that is not established yet (the peer rejected our
    /// duplicate first) wait, in order, for the peer's next connection.
    parked: reroute::ParkedByPeer,
    /// Connections closed because they were replaced, recently (bounded):
    /// a send still addressed to one is rerouted like one to a closing
    /// replaced connection.
    recently_replaced: std::collections::VecDeque<(ConnId, Instant)>,
    shutdown: Option<Instant>,
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
            holding: Vec::new(),
            to_notify: Vec::new(),
            parked: Default::default(),
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
        let (cfg, channels, auth) = (
            self.conn_cfg.clone(),
            self.channels.clone(),
            self.authorizer.clone(),
        );
        let mut conn = match &dial {
            Some((peer, _)) => Connection::dialer(cfg, channels, auth, peer.clone(), now),
            None => Connection::dialee(cfg, channels, auth, now),
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        let depth = Arc::new(QueueDepth::new(
            self.shared.config.limits.peer_send_backlog,
            self.shared.config.limits.peer_send_bytes,
        ));
        conn.set_queue_depth(depth.clone());
        self.shared.metrics.handshaking.inc();
        let slot = ConnSlot::new(conn, generation, inbound, dial, depth);
        let key = self.conns.insert(slot);
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
                priority,
                permit,
            } => self.send_on(id, &peer, msg, priority, permit, now, actions),
            Command::SendBatch {
                id,
                peer,
                msgs,
                priority,
                mut permit,
            } => {
                for msg in msgs {
                    let one = permit.split(1, msg.payload.len());
                    self.send_on(id, &peer, msg, priority, one, now, actions);
                }
            }
            Command::Control { id, record } => self.send_control(id, record),
            Command::Ping { id, reply } => self.ping(id, reply, now),
            Command::Adopt { stream, ip } => actions.push(DriverAction::Adopt(stream, ip)),
            Command::Dial { peer, addr } => actions.push(DriverAction::Dial(peer, addr)),
            Command::Close { id, reason } => self.close_conn(id, reason, now),
            Command::ReplacedBy { id, by } => self.replaced_by(id, by, now),
            Command::Handover { to, peer, msgs } => {
                self.take_handover(to, peer, msgs, now, actions)
            }
            Command::Released { to, gone } => self.released(to, gone, now),
            Command::Shutdown { deadline } => {
                self.begin_shutdown(deadline, now);
                actions.push(DriverAction::Shutdown);
            }
            #[cfg(feature = "test-hooks")]
            Command::Fail => self.injected_failure = true,
        }
    }

    /// [`Command::Control`]: queues a discovery record (dropped, counted, if
    /// the connection's control queue is full).
    fn send_control(&mut self, id: ConnId, record: ControlOut) {
        if let Some(slot) = self.conns.live_mut(id) {
            if slot.conn.send_control(record).is_ok() {
                self.dirty.push(id.key);
            } else {
                self.shared.metrics.control_dropped.inc();
            }
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

    /// Turns buffered input into events and handles them, until the input is
    /// used up or delivery must wait (backpressure).
    pub fn process_input(&mut self, key: usize, now: Instant) {
        loop {
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            if slot.paused() {
                break;
            }
            let Some(ev) = slot.conn.poll_event(now) else {
                break;
            };
            self.handle_event(key, ev, now);
        }
        if let Some(slot) = self.conns.get_mut(key) {
            let copied = slot.conn.poll_reassembly_copied_bytes();
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
            slot.close_label = Some(slot.conn.close_label().unwrap_or("local_close"));
        }
        if slot.conn.is_closed() {
            // As soon as the protocol ended, not when the socket is gone: a
            // redial (ours or the peer's) must not slip in between.
            close::note_misbehavior(&self.shared, slot);
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
                _ => self.on_message(key, channel, payload, now),
            },
            Event::Control(record) => {
                let Some(id) = self.conn_id(key) else { return };
                let Some(peer) = self.conns.get(key).and_then(|s| s.conn.peer().cloned()) else {
                    return;
                };
                self.shared
                    .to_control(crate::shared::ControlEvent::Record { peer, id, record });
            }
            Event::Pong { rtt, .. } => self.on_pong(key, rtt),
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

    /// Whether the driver should read from this connection now.
    pub fn wants_read(&self, key: usize) -> bool {
        self.conns
            .get(key)
            .map(|s| !s.paused() && s.conn.wants_read())
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
                .is_some_and(|s| s.conn.has_large_body_pending())
    }

    /// See [`Connection::has_large_records`].
    pub fn large_records(&self, key: usize) -> bool {
        self.conns
            .get(key)
            .is_some_and(|s| s.conn.has_large_records())
    }

    /// See [`Connection::poll_lend_buf`]; `None` unless the connection wants
    /// input and a large body is pending or it carries large records.
    pub fn lend_read_buf(&mut self, key: usize) -> Option<(BytesMut, usize)> {
        if !self.wants_read(key) {
            return None;
        }
        let batch = self.shared.config.io.recv_buffer_size;
        self.conns.get_mut(key)?.conn.poll_lend_buf(batch)
    }

    /// Gives back a buffer lent by [`ShardCore::lend_read_buf`] (dropped if
    /// the connection is gone).
    pub fn return_read_buf(&mut self, key: usize, buf: BytesMut, now: Instant) {
        if let Some(s) = self.conns.get_mut(key) {
            s.conn.handle_returned_buf(buf, now);
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
            .is_none_or(|s| s.conn.is_closed() || s.conn.buffered_len() > PAUSED_INPUT_LIMIT)
    }

    /// Bytes to write for `key`, if any.
    pub fn poll_transmit(&mut self, key: usize) -> Option<Bytes> {
        let slot = self.conns.get_mut(key)?;
        let out = slot.conn.poll_transmit();
        if slot.conn.is_closed() && !self.closing.contains(&key) {
            if slot.close_label.is_none() {
                slot.close_label = Some(slot.conn.close_label().unwrap_or("local_close"));
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
        self.retry_held(now);
        self.expire_handovers(now);
        self.flush_all_parked(now);
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
}

/// What a driver reads of the shard, and marks in it, beyond the calls above.
impl ShardCore {
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The shard's wake-up line (the driver sleeps on it).
    pub fn waker(&self) -> &ShardWaker {
        &self.waker
    }

    pub fn connection_mut(&mut self, key: usize) -> Option<&mut Connection> {
        self.conns.get_mut(key).map(|s| &mut s.conn)
    }

    /// Any connection left (handshaking, open or closing).
    pub fn has_connections(&self) -> bool {
        !self.conns.is_empty()
    }

    pub fn connection_keys(&self) -> Vec<usize> {
        self.conns.iter().map(|(k, _)| k).collect()
    }

    /// The driver must look at `key` (flush its output, re-arm its receive).
    pub fn mark_dirty(&mut self, key: usize) {
        self.dirty.push(key);
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Moves the dirty keys (unsorted, maybe repeated) to the end of `out`.
    pub fn move_dirty_to(&mut self, out: &mut Vec<usize>) {
        out.append(&mut self.dirty);
    }

    /// Takes the dirty keys (unsorted, maybe repeated).
    pub fn take_dirty(&mut self) -> Vec<usize> {
        self.dirty.drain(..).collect()
    }

    /// Connections whose protocol ended: the driver flushes their socket,
    /// drops it and calls [`ShardCore::finish_close`].
    pub fn closing(&self) -> &[usize] {
        &self.closing
    }

    /// Shutdown began ([`Command::Shutdown`]).
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// Building blocks for the shard's unit tests.
#[cfg(test)]
mod test_support {
    use super::*;
    use crate::metrics::ReasonLabel;
    use shoal_crypto::{Ed25519Signer, Signer};

    pub fn key(seed: u64) -> PublicKey {
        Ed25519Signer::insecure_from_seed(seed).public_key().clone()
    }

    /// A connection dialed to `key(seed)`.
    pub fn dialed(core: &mut ShardCore, seed: u64, now: Instant) -> usize {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        core.insert(None, Some((key(seed), addr)), now)
    }

    pub fn count(
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
}
