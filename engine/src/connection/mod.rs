//! The connection state machine: bytes in → events out, commands in → sealed
//! frames out. No sockets, no clock.
//!
//! # Design
//! A [`Connection`] is an "encrypted pipe" in the rustls sense, driven the
//! quinn-proto way: inputs are `handle_*`, outputs are `poll_*`, every input
//! that depends on time takes `now`, and nothing here reads a clock or
//! touches a socket, so the whole protocol is tested deterministically on a
//! simulated pair.
//!
//! Life: `Handshaking` (shoal-crypto's [`Handshake`]) → `Established` (after
//! both key confirmations verify; only then is [`Event::Established`]
//! emitted) → `Closed` (sticky: the first fatal error or close wins and
//! every later call is a no-op; see `close`).
//!
//! ## The surface, in the order a shard drives it
//! **Create**: [`Connection::dialer`] (its Hello is queued at once) or
//! [`Connection::dialee`], then [`Connection::set_queue_depth`] links the
//! application-visible send-queue depth.
//!
//! **Getters** (no side effects): [`peer`](Connection::peer),
//! [`is_established`](Connection::is_established),
//! [`is_open`](Connection::is_open) (takes messages),
//! [`is_closed`](Connection::is_closed),
//! [`wants_read`](Connection::wants_read),
//! [`has_large_records`](Connection::has_large_records),
//! [`has_large_body_pending`](Connection::has_large_body_pending),
//! [`buffered_len`](Connection::buffered_len),
//! [`has_output`](Connection::has_output), and once closed
//! [`close_label`](Connection::close_label),
//! [`is_closed_for_misbehavior`](Connection::is_closed_for_misbehavior),
//! [`dropped_on_close`](Connection::dropped_on_close),
//! [`is_replaced`](Connection::is_replaced).
//!
//! **Inputs** (`handle_*`), as they come from the driver:
//! 1. received bytes, one of two ways (see `recv_buf`):
//!    [`poll_lend_buf`](Connection::poll_lend_buf), a receive straight
//!    into the lent buffer, then
//!    [`handle_returned_buf`](Connection::handle_returned_buf); or
//!    [`handle_input`](Connection::handle_input) (a copy out of a pooled
//!    buffer);
//! 2. [`handle_timeout`](Connection::handle_timeout) once
//!    [`poll_timeout`](Connection::poll_timeout) has passed;
//! 3. [`handle_io_error`](Connection::handle_io_error) when the socket fails.
//!
//! **Mutators**, the shard's and the application's commands:
//! [`send`](Connection::send) (a data message with its priority and its
//! queue-depth share), [`send_control`](Connection::send_control),
//! [`ping`](Connection::ping), [`close`](Connection::close) (orderly),
//! [`abort`](Connection::abort) (at once).
//!
//! **Outputs** (`poll_*`), pulled after inputs and commands:
//! 1. [`poll_event`](Connection::poll_event): the next [`Event`], decoding
//!    lazily (see `decode`);
//! 2. [`poll_transmit`](Connection::poll_transmit): sealed bytes to write
//!    (see `encode`);
//! 3. [`poll_timeout`](Connection::poll_timeout): when to call
//!    `handle_timeout` next;
//! 4. [`poll_unsent`](Connection::poll_unsent): the application's unsent
//!    messages of a connection being replaced, for its successor;
//! 5. [`poll_reassembly_copied_bytes`](Connection::poll_reassembly_copied_bytes):
//!    a metric.
//!
//! ## Files
//! - `config`: [`ConnectionConfig`], [`ChannelLookup`], [`Authorizer`].
//! - `recv_buf`: the receive buffer and the two ways bytes get in.
//! - `decode`: frames → handshake or records → [`Event`]s.
//! - `queue`: [`Priority`], [`Outgoing`], the outgoing queues and the
//!   queue-depth shares of the messages in them.
//! - `encode`: queued records → sealed frames.
//! - `timers`: handshake deadline, keep-alive pings, idle timeout.
//! - `streams`: the byte streams the connection carries.
//! - `close`: [`CloseCause`] and the close lifecycle.
//!
//! Not provided: sockets, reading policy (backpressure is the shard's),
//! routing between connections.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use shoal_crypto::{Handshake, PublicKey, RecordOpener, RecordSealer};
use shoal_wire::{MAX_DATA_OVERHEAD, TAG_LEN};

use crate::queue_depth::QueueDepth;

mod close;
mod config;
mod decode;
mod encode;
mod queue;
mod recv_buf;
mod streams;
#[cfg(test)]
mod testing;
mod timers;

pub use close::CloseCause;
pub use config::{Authorizer, ChannelLimit, ChannelLookup, ConnectionConfig};
pub use decode::Event;
#[cfg(test)]
pub use queue::QueueFull;
pub use queue::{ControlOut, Outgoing, Priority};

// Established is the hot, long-lived state; boxing its ciphers would add a
// pointer chase per frame, so the size difference is deliberate.
#[allow(clippy::large_enum_variant)]
enum State {
    Handshaking(Box<Handshake>),
    Established {
        peer: PublicKey,
        sealer: RecordSealer,
        opener: RecordOpener,
    },
    Closed,
}

/// One peer connection's protocol state. See the module docs.
pub struct Connection {
    state: State,
    cfg: Arc<ConnectionConfig>,
    channels: Arc<dyn ChannelLookup>,
    authorize: Authorizer,
    /// The receive path: frame decoder, reassembly, the frame being read.
    rx: decode::Inbound,
    events: VecDeque<Event>,
    /// The send path: control records and the two priority queues.
    tx: queue::Outbox,
    /// Sealed frames not yet handed to the driver.
    out: BytesMut,
    /// Largest payload part one data record carries.
    chunk_size: usize,
    timers: timers::Timers,
    close: close::Closing,
    /// Which side dialed: stream ids carry it.
    side: shoal_wire::stream::Side,
    /// Once established on a node with stream channels (see `streams`).
    streams: Option<Box<shoal_wire::stream::Streams>>,
    /// Stream records go before low-priority messages in this frame (they
    /// take turns; see `streams`).
    streams_first: bool,
    /// Our streams' `Limits` is still to open our first frame.
    limits_first: bool,
    /// Whether the peer takes streams, from its first record once
    /// established (see `streams`).
    peer_streams: Option<bool>,
}

impl Connection {
    /// A dialed connection to `peer` (its Hello is queued at once).
    pub fn dialer(
        cfg: Arc<ConnectionConfig>,
        channels: Arc<dyn ChannelLookup>,
        authorize: Authorizer,
        peer: PublicKey,
        now: Instant,
    ) -> Self {
        let hs = Handshake::dialer(
            cfg.identity.clone(),
            peer,
            cfg.handshake.clone(),
            cfg.clock.unix_ms(now),
        );
        Self::new(cfg, channels, authorize, hs, true, now)
    }

    /// An accepted connection.
    pub fn dialee(
        cfg: Arc<ConnectionConfig>,
        channels: Arc<dyn ChannelLookup>,
        authorize: Authorizer,
        now: Instant,
    ) -> Self {
        let hs = Handshake::dialee(
            cfg.identity.clone(),
            cfg.handshake.clone(),
            cfg.clock.unix_ms(now),
        );
        Self::new(cfg, channels, authorize, hs, false, now)
    }

    fn new(
        cfg: Arc<ConnectionConfig>,
        channels: Arc<dyn ChannelLookup>,
        authorize: Authorizer,
        hs: Handshake,
        dialer: bool,
        now: Instant,
    ) -> Self {
        let mut conn = Self {
            state: State::Handshaking(Box::new(hs)),
            rx: decode::Inbound::new(&cfg),
            events: VecDeque::new(),
            tx: queue::Outbox::new(),
            out: BytesMut::new(),
            chunk_size: cfg.max_frame_body - TAG_LEN - MAX_DATA_OVERHEAD,
            timers: timers::Timers::new(now, cfg.handshake.timeout),
            close: close::Closing::default(),
            side: streams::side(dialer),
            streams: None,
            streams_first: false,
            limits_first: false,
            peer_streams: None,
            cfg,
            channels,
            authorize,
        };
        conn.pull_handshake_output();
        conn
    }

    /// Links the application-visible queue depth: the shares of queued
    /// messages are taken from it ([`Connection::send`]) and go back to it,
    /// and the connection closes it when it ends, so that senders waiting
    /// for room return.
    pub fn set_queue_depth(&mut self, depth: Arc<QueueDepth>) {
        self.tx.set_depth(depth);
    }

    /// The authenticated peer, once established.
    pub fn peer(&self) -> Option<&PublicKey> {
        match &self.state {
            State::Established { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// True once both confirmations verified.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// Whether [`Connection::send`] would take a message (established or
    /// handshaking, and no close begun).
    pub fn is_open(&self) -> bool {
        !self.is_closed() && self.close.cause.is_none()
    }

    /// True once the connection is over (nothing more will be produced except
    /// already-sealed output).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Heap bytes held by the connection's input and output buffers.
    #[cfg(test)]
    fn buffer_capacity(&self) -> usize {
        self.rx.decoder.capacity() + self.out.capacity()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::testing::{pair, pump};
    use super::*;

    #[test]
    fn a_new_connection_holds_small_buffers() {
        // Ten thousand idle peers must not each hold a read or write batch.
        // (The frame limit here is 4 KiB; a write batch is 16 KiB.)
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        assert!(a.ping(t0).is_some());
        let (ea, _) = pump(&mut a, &mut b, t0);
        assert!(ea.iter().any(|e| matches!(e, Event::Pong { .. })));
        assert!(a.buffer_capacity() < 1024, "{}", a.buffer_capacity());
        assert!(b.buffer_capacity() < 1024, "{}", b.buffer_capacity());
    }
}
