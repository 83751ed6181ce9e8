//! A data shard: one thread that owns its connections for their whole life.
//!
//! # Design
//! [`ShardCore`] is the backend-independent half of a shard: a slab of
//! connections, the command queue from other threads, delivery to channel
//! receivers with backpressure and quotas, the peer table updates and the
//! timers. The I/O drivers ([`crate::driver`]) own the sockets and only move
//! bytes, through [`io`]: [`ShardCore::read_plan`] says how to receive,
//! [`ShardCore::on_received`] takes what arrived, [`ShardCore::poll_transmit`]
//! gives bytes to write, and [`ShardCore::finish_close`] forgets a
//! connection once its socket is gone. The core owns no socket: its only
//! system calls are a yield before the driver sleeps and the wake-ups of
//! other shards it sends commands to.
//!
//! No locks on the per-message path: a send command carries the slab key and
//! generation, so the shard finds the connection with one index.
//!
//! One struct, split by concern:
//! - [`link`]: what other threads may ask of a shard ([`Command`],
//!   [`ShardLink`]); below everything else here.
//! - this file: the slab, the command drain, event dispatch and timers.
//! - [`io`]: everything a driver asks of the shard: the read plan, received
//!   input, output, closes, the sleep budget.
//! - [`slot`]: what the shard keeps per connection.
//! - [`delivery`] (with [`quota`]): received messages to channel receivers.
//! - [`handover`]: establishment and duplicate connections (tie-break,
//!   hand-over between shards).
//! - [`moving`]: an accepted connection moving to the shard its peer is
//!   placed on.
//! - [`reroute`]: accepted output whose connection is no longer there.
//! - [`rpc`]: requests, responses, in-shard handlers and pings.
//! - [`streams`]: byte streams between the connections and the
//!   application's pipes.
//! - [`tasks`]: the application's tasks on this shard ([`crate::tasks`]).
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
//!   behind the connection it replaced until that one is gone, or moves to
//!   another shard. **Resumed**
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

use shoal_crypto::PublicKey;
use shoal_wire::RecordKind;
use slab::Slab;

use crate::channel_spec::Channels;
use crate::connection::{Authorizer, Connection, ConnectionConfig, ControlOut, Event};
use crate::peers::ConnId;
use crate::queue_depth::QueueDepth;
use crate::shared::Shared;
use crate::waker::ShardWaker;

mod close;
mod delivery;
mod drain;
mod handover;
mod io;
pub(crate) mod link;
mod moving;
mod quota;
mod reroute;
mod rpc;
mod slot;
mod streams;
mod tasks;

pub(crate) use io::{Arrived, ReadAhead, ReadPlan};
pub(crate) use link::{Command, ShardLink};
use slot::{ConnSlot, Live};

/// What the driver must do after [`ShardCore::handle_command`].
pub(crate) enum DriverAction {
    /// Register this accepted socket as a new connection.
    Adopt(std::net::TcpStream, std::net::IpAddr),
    /// Connect to `addr` for `peer`.
    Dial(PublicKey, SocketAddr),
    /// Take over a connection moved here from another shard, with its
    /// socket ([`moving`]).
    Moved(Box<moving::Moved>),
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
    /// Connections moving to another shard whose socket the driver has not
    /// let go of yet ([`moving`]).
    detaching: Vec<usize>,
    /// Connections whose move the target refused: adopted again here
    /// ([`moving`]).
    readopt: Vec<moving::Moved>,
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
    /// Connections replaced from another shard whose late sends are still
    /// forwarded to their replacement (`drain`).
    draining: Vec<drain::Drain>,
    shutdown: Option<Instant>,
    next_timer_sweep: Instant,
    /// Set when [`ShardCore::poll_transmit`] hands the driver bytes; taken by
    /// [`ShardCore::yield_for_commands`].
    wrote: bool,
    /// Channels with a quota (for the peers' limiters).
    quota_channels: Vec<(u32, governor::Quota)>,
    /// The application's tasks on this shard and what they share with it.
    tasks: crate::tasks::executor::Executor,
    local: std::rc::Rc<crate::tasks::local::Local>,
    /// The outbox's buffer between two applications of it.
    task_commands: Vec<Command>,
    /// Set by [`Command::Fail`] (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    injected_failure: bool,
}

const TIMER_GRANULARITY: Duration = Duration::from_millis(20);

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
        let local = std::rc::Rc::new(crate::tasks::local::Local::new(id));
        let tasks = crate::tasks::executor::Executor::new(
            local.clone(),
            waker.clone(),
            shared.metrics.clone(),
        );
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
            detaching: Vec::new(),
            readopt: Vec::new(),
            to_notify: Vec::new(),
            parked: Default::default(),
            recently_replaced: std::collections::VecDeque::new(),
            draining: Vec::new(),
            shutdown: None,
            next_timer_sweep: Instant::now(),
            wrote: false,
            quota_channels,
            tasks,
            local,
            task_commands: Vec::new(),
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
        let mut any = self.take_readopted(actions);
        while let Ok(cmd) = self.rx.try_recv() {
            self.handle_command(cmd, now, actions);
            any = true;
        }
        self.poll_drains(now);
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
                share,
            } => self.send_on(id, &peer, msg, priority, share, now, actions),
            Command::SendBatch {
                id,
                peer,
                msgs,
                priority,
                mut share,
            } => {
                for msg in msgs {
                    let one = share.split(1, msg.payload.len());
                    self.send_on(id, &peer, msg, priority, one, now, actions);
                }
            }
            Command::Control { id, record } => self.send_control(id, record),
            Command::Ping { id, reply } => self.ping(id, reply, now),
            Command::Adopt { stream, ip } => actions.push(DriverAction::Adopt(stream, ip)),
            Command::Moved(moved) => actions.push(DriverAction::Moved(moved)),
            Command::Dial { peer, addr } => actions.push(DriverAction::Dial(peer, addr)),
            Command::Close { id, reason } => self.close_conn(id, reason, now),
            Command::ReplacedBy { id, by } => self.replaced_by(id, by, now),
            Command::Handover { to, peer, msgs } => {
                self.take_handover(to, peer, msgs, now, actions)
            }
            Command::Released { to, gone } => self.released(to, gone, now),
            Command::HandedOver { to, from } => self.handed_over(to, from, now),
            Command::Drained { old } => self.drained(old),
            Command::StreamOpen { id, channel, reply } => self.open_stream(id, channel, reply),
            Command::Stream { conn, id } => self.stream_poked(conn, id, now),
            Command::Spawn { start, done } => self.spawn_task(start, done),
            Command::Respond {
                id,
                channel,
                request_id,
                status,
                payload,
            } => self.respond(id, channel, request_id, status, payload),
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
        self.sync_dirty_pipes();
        self.expire_handovers(now);
        self.flush_all_parked(now);
        self.shared.rpc.expire(self.id, now, None);
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
