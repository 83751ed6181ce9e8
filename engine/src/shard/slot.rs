//! What a shard keeps per connection: the connection and its deferred work.
//!
//! # Design
//! A [`ConnSlot`] lives in the shard's slab from the socket's hand-off to
//! [`super::ShardCore::finish_close`]. Besides the sans-IO [`Connection`] it
//! records what the shard owes the rest of the node for it (address and
//! load counts, the peer table entry, quota limiters) and the connection's
//! deferred work in the shard's vocabulary (see the glossary in
//! [`super`]): input **held** back, reading **paused**, output **parked**
//! for a hand-over. A slot is found by [`ConnId`] (key and generation), so a
//! command for a connection that closed meanwhile never reaches the one
//! that took its key ([`Live`]).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_crypto::PublicKey;
use slab::Slab;

use super::delivery::Received;
use super::quota::QuotaHeld;
use crate::connection::{Connection, Outgoing, Priority};
use crate::limiters::PeerLimiters;
use crate::peers::{ConnId, PeerHandle};
use crate::queue_depth::{QueueDepth, Share};
use crate::streams::pipe::Pipe;
use shoal_wire::stream::StreamId;

/// One connection slot.
pub(super) struct ConnSlot {
    pub(super) conn: Connection,
    pub(super) generation: u64,
    /// For accepted connections: the remote address (counted in
    /// `Shared::inbound_ips` until the close).
    pub(super) inbound: Option<IpAddr>,
    /// For dialed connections: who and where.
    pub(super) dial: Option<(PublicKey, SocketAddr)>,
    /// Set once established and admitted to the peer table.
    pub(super) handle: Option<Arc<PeerHandle>>,
    pub(super) depth: Arc<QueueDepth>,
    /// Held input: the message its full receiver refused, delivered before
    /// any other once the receiver has room. The connection is paused while
    /// it is here.
    pub(super) held: Option<Received>,
    /// Paused because its quota-held input is full ([`QuotaHeld::full`]):
    /// reading resumes at the next retry after this.
    pub(super) paused_until: Option<Instant>,
    /// The peer's per-channel quota limiters, shared with its other
    /// connections ([`crate::limiters`]); set once established.
    pub(super) limiters: Option<Arc<PeerLimiters>>,
    /// Held input: records held back by their channel's quota
    /// ([`super::quota`]).
    pub(super) quota_held: QuotaHeld,
    pub(super) close_label: Option<&'static str>,
    /// The misbehavior cooldown for this connection's peer was looked at
    /// (started or not) when the connection closed.
    pub(super) cooldown_noted: bool,
    /// The unsent queue already moved to the replacing connection.
    pub(super) moved_unsent: bool,
    /// Paused behind the connection this one replaced: its input waits
    /// until that one is gone, so the peer's messages still in flight on
    /// the old connection are delivered before anything sent on this one.
    pub(super) paused_behind: Option<ConnId>,
    /// This connection replaced one on another shard: its output is parked
    /// and its input paused until that shard's hand-over
    /// ([`super::handover`]).
    pub(super) handover: Option<Box<Handover>>,
    /// This connection was replaced by `notify_on_close` on another shard,
    /// which waits for its close to read ([`super::Command::Released`]).
    pub(super) notify_on_close: Option<ConnId>,
    pub(super) counted_handshaking: bool,
    /// Established, and moving to the shard its peer is placed on
    /// ([`super::moving`]): paused, transmits nothing, until the driver
    /// lets go of its socket.
    pub(super) moving: Option<usize>,
    /// Moved here from another shard: never moves again.
    pub(super) moved_in: bool,
    /// A write handed to the driver is outstanding and has made no progress
    /// since then: past [`TimeoutSettings::write_timeout`] the connection is aborted.
    ///
    /// [`TimeoutSettings::write_timeout`]: crate::config::TimeoutSettings::write_timeout
    pub(super) write_since: Option<Instant>,
    /// When the protocol ended (the key joined `closing`): the driver has
    /// until `write_timeout` after it to flush, then resets the socket.
    pub(super) closed_at: Option<Instant>,
    /// The socket must be reset now, without flushing.
    pub(super) abort: bool,
    /// `ping()` callers waiting for the next pong (bounded).
    pub(super) ping_waiters: Vec<tokio::sync::oneshot::Sender<Duration>>,
    /// The pipes of the streams the application holds (see
    /// [`super::streams`]); at most `streams.max_streams` each way.
    pub(super) pipes: HashMap<StreamId, Arc<Pipe>>,
    /// Opens waiting for the peer's stream limits (at most
    /// `streams.max_streams`); dropped, so failed, with the slot.
    pub(super) pending_opens: Vec<(u32, super::streams::OpenReply)>,
}

/// A new connection's wait for the one it replaced on another shard
/// ([`super::handover`]).
pub(super) struct Handover {
    pub(super) from: ConnId,
    /// Stop waiting (for the messages and for the input) after this.
    pub(super) deadline: Instant,
    /// The wait for messages is over (parked ones went out): only the
    /// input may still wait.
    pub(super) messages_in: bool,
    /// A [`super::Command::Handover`] arrived: the old shard forwards late
    /// sends too, and says when none can come ([`super::Command::HandedOver`]).
    pub(super) handed: bool,
    /// Output parked: sent to this connection before the hand-over
    /// arrived, in order, each with its share of this connection's queue
    /// depth.
    pub(super) parked: VecDeque<(Outgoing, Priority, Share)>,
}

impl ConnSlot {
    /// A slot for a connection that is just starting its handshake (counted
    /// in the `handshaking` gauge until it ends).
    pub(super) fn new(
        conn: Connection,
        generation: u64,
        inbound: Option<IpAddr>,
        dial: Option<(PublicKey, SocketAddr)>,
        depth: Arc<QueueDepth>,
    ) -> Self {
        Self {
            conn,
            generation,
            inbound,
            dial,
            handle: None,
            depth,
            held: None,
            paused_until: None,
            limiters: None,
            quota_held: Default::default(),
            close_label: None,
            cooldown_noted: false,
            moved_unsent: false,
            paused_behind: None,
            handover: None,
            notify_on_close: None,
            counted_handshaking: true,
            moving: None,
            moved_in: false,
            write_since: None,
            closed_at: None,
            abort: false,
            ping_waiters: Vec::new(),
            pipes: HashMap::new(),
            pending_opens: Vec::new(),
        }
    }

    /// Why the connection ended (or is ending), as its streams report it:
    /// the label it closed with, the cause its close began with, else
    /// `fallback`.
    pub(super) fn end_reason(&self, fallback: &'static str) -> crate::events::DisconnectReason {
        let label = self.close_label.or(self.conn.closing_label());
        crate::events::DisconnectReason::from_label(label.unwrap_or(fallback))
    }

    /// Paused: the connection reads no input for now (held input its
    /// receiver refused, too much quota-held input, or the connection it
    /// replaced is not gone yet).
    #[inline]
    pub(super) fn paused(&self) -> bool {
        self.held.is_some()
            || self.paused_until.is_some()
            || self.paused_behind.is_some()
            || self.moving.is_some()
    }

    /// Output handed to the driver made no progress for `timeout`, or the
    /// connection has been closing (flushing) that long.
    pub(super) fn write_overdue(&self, now: Instant, timeout: Duration) -> bool {
        let past =
            |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) >= timeout);
        past(self.write_since) || past(self.closed_at)
    }
}

/// Looks a slot up by [`ConnId`]: `None` if the key is free or was reused
/// by a newer connection.
pub(super) trait Live {
    fn live(&self, id: ConnId) -> Option<&ConnSlot>;
    fn live_mut(&mut self, id: ConnId) -> Option<&mut ConnSlot>;
}

impl Live for Slab<ConnSlot> {
    #[inline]
    fn live(&self, id: ConnId) -> Option<&ConnSlot> {
        self.get(id.key).filter(|s| s.generation == id.generation)
    }

    #[inline]
    fn live_mut(&mut self, id: ConnId) -> Option<&mut ConnSlot> {
        self.get_mut(id.key)
            .filter(|s| s.generation == id.generation)
    }
}
