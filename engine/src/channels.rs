//! Channels: how the application sends and receives.
//!
//! # Design
//! `Network::register(channel, quota, max_size, backlog, compression)` gives a
//! [`Sender`] and a [`Receiver`]. Channels are fixed before the network starts,
//! so the table every shard reads is immutable and lock-free.
//!
//! Sending never blocks on a slow peer. Each established connection has an
//! application-visible queue depth counter; `send` bumps it and refuses with
//! [`SendError::Full`] when the peer's backlog is reached, so a full queue is
//! an explicit result (and a metric), never a silent drop. Compression
//! (zstd, per channel) runs on the sending thread, once per message whatever
//! the number of recipients, and only when it makes the message smaller.
//!
//! Receiving: a bounded queue of `backlog` messages per channel. When it is
//! full the shard holds the next message and stops reading from the
//! connection that carried it (backpressure), and resumes when the receiver
//! frees space. An inbound quota (`governor`) per peer per channel holds that
//! channel's messages back until the quota allows them; only a connection
//! holding too much of them stops reading.
//!
//! The channel table itself ([`ChannelSpec`], [`Channels`]) is defined
//! below this module (`channel_spec`), and this module reaches the shards
//! only through their link (`shard::link`), so neither the shards nor the
//! shared state depend on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use shoal_crypto::PublicKey;

pub use crate::channel_spec::{ChannelSpec, Channels};
use crate::connection::{Outgoing, Priority};
use crate::error::SendError;
use crate::peers::PeerHandle;
use crate::queue_depth::DepthPermit;
use crate::rpc::RequestError;
use crate::shard::link::Command;
use crate::shared::Shared;

/// Who a message goes to.
#[derive(Clone, Debug)]
pub enum Recipients {
    /// Every connected peer.
    All,
    /// These peers.
    Some(Vec<PublicKey>),
    /// One peer.
    One(PublicKey),
}

/// Which peers took a message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// Queued for these peers.
    pub accepted: Vec<PublicKey>,
    /// Not queued: the peer's send queue was full.
    pub full: Vec<PublicKey>,
    /// Not queued: no established connection (explicit recipients only).
    pub not_connected: Vec<PublicKey>,
}

/// Sends on one channel. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Sender {
    pub(crate) spec: Arc<ChannelSpec>,
    pub(crate) shared: Arc<Shared>,
}

impl Sender {
    /// The channel id.
    pub fn channel(&self) -> u32 {
        self.spec.id
    }

    /// Sends to `recipients`; returns the peers that accepted the message.
    /// Peers whose queue is full are left out (see [`Sender::send_report`]
    /// to tell full from not connected).
    pub fn send(
        &self,
        recipients: Recipients,
        payload: Bytes,
        priority: bool,
    ) -> Result<Vec<PublicKey>, SendError> {
        Ok(self.send_report(recipients, payload, priority)?.accepted)
    }

    /// Sends to `recipients` and says what happened for each.
    pub fn send_report(
        &self,
        recipients: Recipients,
        payload: Bytes,
        priority: bool,
    ) -> Result<SendReport, SendError> {
        let msg = self.prepare(payload)?;
        let mut report = SendReport::default();
        let one = |peer: &PublicKey, handle: Option<&Arc<PeerHandle>>, report: &mut SendReport| {
            match handle {
                None => {
                    self.shared.metrics.send_not_connected.inc();
                    report.not_connected.push(peer.clone());
                }
                Some(h) => match self.enqueue(h, msg.clone(), Priority::from_high(priority)) {
                    Ok(()) => report.accepted.push(peer.clone()),
                    Err(SendError::Full) => report.full.push(peer.clone()),
                    Err(_) => report.not_connected.push(peer.clone()),
                },
            }
        };
        self.shared.peers.with(|map| match &recipients {
            Recipients::All => {
                for (peer, h) in map.iter() {
                    one(peer, Some(h), &mut report);
                }
            }
            Recipients::Some(list) => {
                for peer in list {
                    one(peer, map.get(peer), &mut report);
                }
            }
            Recipients::One(peer) => one(peer, map.get(peer), &mut report),
        });
        Ok(report)
    }

    /// Sends to one peer: `Ok` if queued, else why not.
    pub fn send_to(
        &self,
        peer: &PublicKey,
        payload: Bytes,
        priority: bool,
    ) -> Result<(), SendError> {
        let msg = self.prepare(payload)?;
        let h = self.connected(peer)?;
        self.enqueue(&h, msg, Priority::from_high(priority))
    }

    /// The peer's connection handle, or `NotConnected` counted in
    /// `send_not_connected` (every send variant refuses the same way).
    fn connected(&self, peer: &PublicKey) -> Result<Arc<PeerHandle>, SendError> {
        self.shared
            .peers
            .get(peer)
            .ok_or_else(|| self.not_connected())
    }

    /// Counts a send refused because the peer is (no longer) connected.
    fn not_connected(&self) -> SendError {
        self.shared.metrics.send_not_connected.inc();
        SendError::NotConnected
    }

    /// Sends to one peer, waiting (async) while its queue is full. Fails if
    /// the peer is not connected or disconnects while waiting.
    pub async fn send_to_wait(
        &self,
        peer: &PublicKey,
        payload: Bytes,
        priority: bool,
    ) -> Result<(), SendError> {
        let mut msg = self.prepare(payload)?;
        let h = self.connected(peer)?;
        let priority = Priority::from_high(priority);
        loop {
            let Ok(permit) = h.depth.reserve(msg.payload.len()).await else {
                return Err(self.not_connected());
            };
            match self.enqueue_after_reserve(&h, msg, priority, permit) {
                Ok(()) => return Ok(()),
                Err(back) => msg = back,
            }
        }
    }

    /// Queues `msg` with the `permit` a waiting send reserved. `Err` hands
    /// it back: the shard's command queue was full (it is draining; the
    /// share was given back), reserve again. The message moves rather than
    /// being cloned per attempt: a clone and a drop per send were two atomic
    /// operations on a reference count the shard also touches.
    fn enqueue_after_reserve(
        &self,
        h: &PeerHandle,
        msg: Outgoing,
        priority: Priority,
        permit: DepthPermit<'_>,
    ) -> Result<(), Outgoing> {
        match self
            .shared
            .enqueue_reserved_or_back(h, msg, priority, permit)
        {
            Ok(()) => {
                self.spec.metrics.messages_out.inc();
                Ok(())
            }
            Err(back) => {
                std::thread::yield_now();
                Err(back)
            }
        }
    }

    /// Blocking variant of [`Sender::send_to_wait`] for plain threads.
    pub fn send_to_blocking(
        &self,
        peer: &PublicKey,
        payload: Bytes,
        priority: bool,
    ) -> Result<(), SendError> {
        let mut msg = self.prepare(payload)?;
        let h = self.connected(peer)?;
        let priority = Priority::from_high(priority);
        loop {
            let Ok(permit) = h.depth.reserve_blocking(msg.payload.len()) else {
                return Err(self.not_connected());
            };
            match self.enqueue_after_reserve(&h, msg, priority, permit) {
                Ok(()) => return Ok(()),
                Err(back) => msg = back,
            }
        }
    }

    /// Sends `payloads` to one peer, in order, as one hand-off to its shard:
    /// one peer lookup, one queue reservation and one cross-thread command
    /// for the batch instead of one of each per message. The cheap way to
    /// send many small messages that exist together (a burst of votes or
    /// transactions). All or nothing: `Full` if the peer's queue lacks room
    /// for the whole batch now, `TooLarge` if any message is over the
    /// channel's limit; nothing is queued then.
    pub fn send_batch_to(
        &self,
        peer: &PublicKey,
        payloads: impl IntoIterator<Item = Bytes>,
        priority: bool,
    ) -> Result<(), SendError> {
        let msgs = self.prepare_batch(payloads)?;
        let h = self.connected(peer)?;
        if msgs.is_empty() {
            return Ok(());
        }
        let Some(permit) = h.depth.try_reserve_n(msgs.len(), payload_bytes(&msgs)) else {
            self.shared.metrics.send_full.inc();
            self.spec.metrics.send_full.inc();
            return Err(SendError::Full);
        };
        let n = msgs.len() as u64;
        self.shared
            .enqueue_batch_reserved(&h, msgs, Priority::from_high(priority), permit)
            .map_err(|back| {
                if back.is_empty() {
                    self.not_connected()
                } else {
                    SendError::Full
                }
            })?;
        self.spec.metrics.messages_out.inc_by(n);
        Ok(())
    }

    /// [`Sender::send_batch_to`] that waits while the peer's queue is full,
    /// handing the batch over in pieces of at most half the peer backlog
    /// (so a piece always fits once the queue drains). Fails if the peer is
    /// not connected or disconnects while waiting; pieces already handed
    /// over stay queued.
    pub fn send_batch_to_blocking(
        &self,
        peer: &PublicKey,
        payloads: impl IntoIterator<Item = Bytes>,
        priority: bool,
    ) -> Result<(), SendError> {
        let msgs = self.prepare_batch(payloads)?;
        let h = self.connected(peer)?;
        let piece_len = (h.depth.max_messages() / 2).max(1);
        let priority = Priority::from_high(priority);
        let mut rest = msgs.into_iter();
        loop {
            let mut piece: Vec<Outgoing> = rest.by_ref().take(piece_len).collect();
            let n = piece.len();
            if n == 0 {
                return Ok(());
            }
            loop {
                let Ok(permit) = h.depth.reserve_blocking_n(n, payload_bytes(&piece)) else {
                    return Err(self.not_connected());
                };
                match self
                    .shared
                    .enqueue_batch_reserved(&h, piece, priority, permit)
                {
                    Ok(()) => break,
                    Err(back) if back.is_empty() => return Err(self.not_connected()),
                    // The shard's command queue is full: it is draining.
                    Err(back) => {
                        piece = back;
                        std::thread::yield_now();
                    }
                }
            }
            self.spec.metrics.messages_out.inc_by(n as u64);
        }
    }

    fn prepare_batch(
        &self,
        payloads: impl IntoIterator<Item = Bytes>,
    ) -> Result<Vec<Outgoing>, SendError> {
        let payloads = payloads.into_iter();
        let mut msgs = Vec::with_capacity(payloads.size_hint().0);
        for p in payloads {
            msgs.push(self.prepare(p)?);
        }
        Ok(msgs)
    }

    /// Sends a request to `peer` and waits for its response (any runtime).
    /// Dropping the future cancels it; a late response is then dropped and
    /// counted. Fails promptly if the peer disconnects.
    pub async fn request(
        &self,
        peer: &PublicKey,
        payload: Bytes,
        timeout: std::time::Duration,
    ) -> Result<Bytes, RequestError> {
        let rx = self.start_request(peer, payload, timeout)?;
        rx.await.map_err(|_| RequestError::Disconnected)?
    }

    /// Blocking variant of [`Sender::request`] for plain threads.
    pub fn request_blocking(
        &self,
        peer: &PublicKey,
        payload: Bytes,
        timeout: std::time::Duration,
    ) -> Result<Bytes, RequestError> {
        let mut rx = self.start_request(peer, payload, timeout)?;
        use tokio::sync::oneshot::error::TryRecvError;
        let spun =
            crate::wait::spin_then(self.shared.config.effective_wait_spin(), None, || match rx
                .try_recv()
            {
                Err(TryRecvError::Empty) => None,
                done => Some(done),
            });
        match spun {
            Some(done) => done.map_err(|_| RequestError::Disconnected)?,
            None => rx.blocking_recv().map_err(|_| RequestError::Disconnected)?,
        }
    }

    fn start_request(
        &self,
        peer: &PublicKey,
        payload: Bytes,
        timeout: std::time::Duration,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Bytes, RequestError>>, RequestError> {
        let mut msg = self.prepare(payload).map_err(|e| match e {
            SendError::TooLarge => RequestError::TooLarge,
            SendError::Closed => RequestError::Closed,
            SendError::Full => RequestError::Full,
            SendError::NotConnected => RequestError::NotConnected,
        })?;
        let h = self
            .connected(peer)
            .map_err(|_| RequestError::NotConnected)?;
        let (h, id, rx) = register_request(&self.shared, peer, h, timeout)?;
        msg.kind = shoal_wire::RecordKind::RpcRequest;
        msg.request_id = id;
        if let Err(e) = self.shared.enqueue(&h, msg, Priority::High) {
            if e == SendError::Full {
                self.spec.metrics.send_full.inc();
            }
            self.shared.rpc.forget(h.id.shard, id);
            return Err(match e {
                SendError::Full => RequestError::Full,
                _ => RequestError::NotConnected,
            });
        }
        self.spec.metrics.messages_out.inc();
        Ok(rx)
    }

    fn prepare(&self, payload: Bytes) -> Result<Outgoing, SendError> {
        if !self.shared.running.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        if payload.len() > self.spec.max_size {
            return Err(SendError::TooLarge);
        }
        self.spec.metrics.bytes_out.inc_by(payload.len() as u64);
        if let Some(level) = self.spec.compression {
            if let Ok(c) = shoal_wire::compress::compress(level, &payload) {
                if c.len() < payload.len() {
                    return Ok(Outgoing::data(self.spec.id, c, true));
                }
            }
        }
        Ok(Outgoing::data(self.spec.id, payload, false))
    }

    fn enqueue(&self, h: &PeerHandle, msg: Outgoing, priority: Priority) -> Result<(), SendError> {
        if let Err(e) = self.shared.enqueue(h, msg, priority) {
            if e == SendError::Full {
                self.spec.metrics.send_full.inc();
            }
            return Err(e);
        }
        self.spec.metrics.messages_out.inc();
        Ok(())
    }
}

/// Registers a request to `peer` on `h`, the connection it was just looked
/// up on, so that a close
/// of that connection cannot be missed: the shard removes a closing
/// connection from the peer table *before* it fails the connection's pending
/// requests, so a registration either precedes that sweep (and is failed by
/// it) or finds the table changed here. Then it is withdrawn and retried on
/// the peer's newer connection, if any, or fails as `Disconnected`, instead
/// of waiting out its whole timeout.
fn register_request(
    shared: &Shared,
    peer: &PublicKey,
    mut h: Arc<PeerHandle>,
    timeout: std::time::Duration,
) -> Result<(Arc<PeerHandle>, u64, RequestReceiver), RequestError> {
    for _ in 0..3 {
        let (id, rx) = shared.rpc.register(h.id, timeout)?;
        match shared.peers.get(peer) {
            Some(now) if now.id == h.id => return Ok((h, id, rx)),
            now => {
                shared.rpc.forget(h.id.shard, id);
                h = now.ok_or(RequestError::Disconnected)?;
            }
        }
    }
    Err(RequestError::Disconnected)
}

type RequestReceiver = tokio::sync::oneshot::Receiver<Result<Bytes, RequestError>>;

/// Receives one channel's messages. Usable from async code on any runtime
/// ([`Receiver::recv`]) or from a plain thread ([`Receiver::recv_blocking`]).
pub struct Receiver {
    pub(crate) spec: Arc<ChannelSpec>,
    pub(crate) shared: Arc<Shared>,
}

/// The network shut down; no more messages will arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("network closed")]
pub struct RecvError;

impl Receiver {
    /// The next message and its sender.
    pub async fn recv(&self) -> Result<(PublicKey, Bytes), RecvError> {
        let m = self.spec.inbox.recv().await.ok_or(RecvError)?;
        self.freed();
        Ok(m)
    }

    /// Blocking variant for plain threads.
    pub fn recv_blocking(&self) -> Result<(PublicKey, Bytes), RecvError> {
        let m = self
            .spec
            .inbox
            .recv_blocking(self.shared.config.effective_wait_spin())
            .ok_or(RecvError)?;
        self.freed();
        Ok(m)
    }

    /// Blocking variant that gives up after `timeout`: `Ok(None)` if nothing
    /// arrived in time, `Err` once the network closed and the queue drained.
    /// For plain threads that must notice a stall or a shutdown flag.
    pub fn recv_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Option<(PublicKey, Bytes)>, RecvError> {
        let Some(deadline) = std::time::Instant::now().checked_add(timeout) else {
            // Too far to represent: no deadline.
            return self.recv_blocking().map(Some);
        };
        match self
            .spec
            .inbox
            .recv_deadline(deadline, self.shared.config.effective_wait_spin())
        {
            Ok(m) => {
                self.freed();
                Ok(Some(m))
            }
            Err(false) => Ok(None),
            Err(true) => Err(RecvError),
        }
    }

    /// A message if one is ready.
    pub fn try_recv(&self) -> Option<(PublicKey, Bytes)> {
        let m = self.spec.inbox.try_recv().ok()?;
        self.freed();
        Some(m)
    }

    /// Messages waiting that [`Receiver::try_recv`] can take now (a shard
    /// announces what it delivered at the end of each read).
    pub fn len(&self) -> usize {
        self.spec.inbox.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spec.inbox.is_empty()
    }

    fn freed(&self) {
        if self.spec.input_held.load(Ordering::Relaxed)
            && self.spec.input_held.swap(false, Ordering::AcqRel)
        {
            for s in &self.shared.shards {
                s.waker.request_resume();
            }
        }
    }
}

impl Shared {
    /// Queues `msg` on the connection behind `h`, bounded by the peer backlog.
    pub(crate) fn enqueue(
        &self,
        h: &PeerHandle,
        msg: Outgoing,
        priority: Priority,
    ) -> Result<(), SendError> {
        let Some(permit) = h.depth.try_reserve(msg.payload.len()) else {
            self.metrics.send_full.inc();
            return Err(SendError::Full);
        };
        self.enqueue_reserved(h, msg, priority, permit)
    }

    /// Queues `msgs` with the `permit` reserved for them in `h.depth` (it
    /// travels on as a share). If the shard's command queue is full the
    /// share goes back, the miss is counted, and the messages handed back.
    pub(crate) fn enqueue_batch_reserved(
        &self,
        h: &PeerHandle,
        msgs: Vec<Outgoing>,
        priority: Priority,
        permit: DepthPermit<'_>,
    ) -> Result<(), Vec<Outgoing>> {
        let Some(link) = self.shards.get(h.id.shard) else {
            // No such shard (cannot happen for a live handle): the caller
            // reports it as not connected, and counts it there.
            return Err(Vec::new());
        };
        let cmd = Command::SendBatch {
            id: h.id,
            peer: h.peer.clone(),
            msgs,
            priority,
            share: permit.into_share(),
        };
        match link.send(cmd) {
            Ok(()) => Ok(()),
            Err(back) => {
                self.metrics.send_full.inc();
                match back {
                    Command::SendBatch { msgs, share, .. } => {
                        h.depth.release(share);
                        Err(msgs)
                    }
                    _ => Err(Vec::new()),
                }
            }
        }
    }

    /// [`Shared::enqueue_reserved`] that hands the message back when the
    /// shard's command queue is full (the share given back and the miss
    /// counted), so the caller can wait and retry without a copy.
    pub(crate) fn enqueue_reserved_or_back(
        &self,
        h: &PeerHandle,
        msg: Outgoing,
        priority: Priority,
        permit: DepthPermit<'_>,
    ) -> Result<(), Outgoing> {
        let cmd = Command::Send {
            id: h.id,
            peer: h.peer.clone(),
            msg,
            priority,
            share: permit.into_share(),
        };
        let back = match self.shards.get(h.id.shard) {
            Some(link) => match link.send(cmd) {
                Ok(()) => return Ok(()),
                Err(back) => back,
            },
            None => cmd,
        };
        self.metrics.send_full.inc();
        match back {
            Command::Send { msg, share, .. } => {
                h.depth.release(share);
                Err(msg)
            }
            // The queue hands back the command it was given: a Send.
            _ => {
                debug_assert!(false, "a shard queue handed back another command");
                self.metrics.send_dropped("internal");
                Ok(())
            }
        }
    }

    /// Queues `msg` with the `permit` reserved for it in `h.depth`.
    pub(crate) fn enqueue_reserved(
        &self,
        h: &PeerHandle,
        msg: Outgoing,
        priority: Priority,
        permit: DepthPermit<'_>,
    ) -> Result<(), SendError> {
        self.enqueue_reserved_or_back(h, msg, priority, permit)
            .map_err(|_| SendError::Full)
    }
}

/// Payload bytes of `msgs`, as their queue depth counts them.
fn payload_bytes(msgs: &[Outgoing]) -> usize {
    msgs.iter().map(|m| m.payload.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::ConnId;
    use shoal_crypto::Signer;
    use std::time::Duration;

    fn handle(peer: &PublicKey, key: usize, generation: u64) -> Arc<PeerHandle> {
        Arc::new(PeerHandle {
            peer: peer.clone(),
            id: ConnId {
                shard: 0,
                key,
                generation,
            },
            depth: Arc::new(crate::queue_depth::QueueDepth::new(8, 1 << 20)),
            dialer: peer.clone(),
            addr: None,
        })
    }

    fn shared() -> Arc<Shared> {
        let cfg = crate::Config::local(None);
        let (net, _) = crate::Network::new(cfg).unwrap();
        net.into_shard_core().shared().clone()
    }

    /// The race of a close between looking the connection up and
    /// registering on it: the shard's close (peer table, then the sweep of
    /// pending requests) ran in between. Registering on the stale handle
    /// must not leave a request the sweep never sees.
    #[test]
    fn a_request_registered_after_its_connection_closed_fails_at_once() {
        let s = shared();
        let peer = crate::Ed25519Signer::generate().public_key().clone();
        let old = handle(&peer, 1, 1);
        s.peers.insert(old.clone());
        // The close, as `ShardCore::finish_close` orders it.
        s.peers.remove(&peer, old.id, "test");
        assert_eq!(s.rpc.expire(0, std::time::Instant::now(), Some(old.id)), 0);
        // The requester looked `old` up before the close and registers on
        // it now.
        assert!(matches!(
            register_request(&s, &peer, old, Duration::from_secs(60)),
            Err(RequestError::Disconnected)
        ));
        assert_eq!(
            s.rpc.outstanding(),
            0,
            "nothing left to wait out its timeout"
        );
    }

    #[test]
    fn a_request_follows_the_peers_newer_connection() {
        let s = shared();
        let peer = crate::Ed25519Signer::generate().public_key().clone();
        let old = handle(&peer, 1, 1);
        s.peers.insert(old.clone());
        let t = Duration::from_secs(60);
        let (h, id, _rx) = register_request(&s, &peer, old.clone(), t).unwrap();
        assert_eq!(h.id.key, 1);
        // Replaced: the request registered on the old one is swept with it.
        s.peers.insert(handle(&peer, 2, 2));
        assert_eq!(s.rpc.expire(0, std::time::Instant::now(), Some(h.id)), 1);
        // A requester still holding the old handle lands on the new one.
        let (h2, id2, _rx2) = register_request(&s, &peer, old, t).unwrap();
        assert_eq!(h2.id.key, 2, "registered on the current connection");
        assert_ne!(id, id2);
        assert_eq!(s.rpc.outstanding(), 1);
    }
}
