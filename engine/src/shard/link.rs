//! The link to a data shard: what other threads may ask of it, and how.
//!
//! # Design
//! A shard is reached only through its [`ShardLink`]: a bounded queue of
//! [`Command`]s plus the shard's [`ShardWaker`]. [`ShardLink::send`] never
//! blocks: a full queue hands the command back to the caller, who decides
//! what it means (a sender reports `Full`, the control shard refuses the
//! accepted socket and counts it). The waker costs a syscall only when the
//! shard sleeps, so a burst of commands to a sleeping shard wakes it once.
//!
//! This file depends on no other part of the shard, nor on
//! [`crate::shared`] or [`crate::channels`]: those hold and use links, and
//! the shard's core depends on them, so the link sits below all three.

use std::net::SocketAddr;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_crypto::PublicKey;
use shoal_wire::CloseReason;

use crate::connection::{ControlOut, Outgoing, Priority};
use crate::peers::ConnId;
use crate::placement::ShardLoad;
use crate::queue_depth::Share;
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
        priority: Priority,
        /// The message's share of the connection's queue depth, which the
        /// connection takes over (or the shard gives back).
        share: Share,
    },
    /// [`Command::Send`] for several messages to one connection, in order
    /// (one hand-off for the lot; see [`crate::Sender::send_batch`]).
    SendBatch {
        id: ConnId,
        peer: PublicKey,
        msgs: Vec<Outgoing>,
        priority: Priority,
        /// The share of all of `msgs`.
        share: Share,
    },
    /// Take over an accepted socket.
    Adopt {
        stream: std::net::TcpStream,
        /// The remote address, counted in `Shared::inbound_ips`.
        ip: std::net::IpAddr,
    },
    /// Dial `peer` at `addr`.
    Dial { peer: PublicKey, addr: SocketAddr },
    /// Take over an established connection moved from another shard
    /// (`super::moving`).
    Moved(Box<super::moving::Moved>),
    /// Close a connection gracefully.
    Close { id: ConnId, reason: CloseReason },
    /// Send a control record (discovery) on a connection.
    Control { id: ConnId, record: ControlOut },
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
        msgs: Vec<(Outgoing, Priority)>,
    },
    /// The connection `to` replaced is gone: `to` may read.
    Released { to: ConnId, gone: ConnId },
    /// No message for `from` can reach its shard any more: what `to` parked
    /// may go out (see `shard::drain`).
    HandedOver { to: ConnId, from: ConnId },
    /// A shard's own marker, behind the last late send for `old`.
    Drained { old: ConnId },
    /// Open a stream on `channel` on a connection.
    StreamOpen {
        id: ConnId,
        channel: u32,
        reply: super::streams::OpenReply,
    },
    /// The application changed stream `stream`'s pipe (see `streams::pipe`).
    Stream {
        conn: ConnId,
        id: shoal_wire::stream::StreamId,
    },
    /// Start an application task on this shard ([`crate::tasks`]).
    Spawn {
        start: crate::tasks::Start,
        done: tokio::sync::oneshot::Sender<crate::tasks::Outcome>,
    },
    /// Answer request `request_id` on connection `id` (a task's response).
    Respond {
        id: ConnId,
        channel: u32,
        request_id: u64,
        status: shoal_wire::RpcStatus,
        payload: bytes::Bytes,
    },
    /// Close everything, flushing until `deadline`, then exit.
    Shutdown { deadline: Instant },
    /// Make the driver fail (feature `test-hooks`: tests of shard failure).
    #[cfg(feature = "test-hooks")]
    Fail,
}

/// The sending half of a shard's queue plus its waker.
pub(crate) struct ShardLink {
    pub tx: SyncSender<Command>,
    pub waker: Arc<ShardWaker>,
    /// Connection slots and liveness, for placement ([`crate::placement`]).
    pub load: ShardLoad,
    /// A stream poke this queue refused: the shard's timer sweep looks
    /// for dirty pipes (`crate::streams::pipe`).
    pub stream_pokes_deferred: std::sync::atomic::AtomicBool,
}

impl ShardLink {
    /// Enqueues without blocking; wakes the shard only if it sleeps.
    // A refused command comes back by value (the sender retries without a
    // copy); boxing it would cost an allocation per send.
    #[allow(clippy::result_large_err)]
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
