//! The sending half of a channel, and how a message reaches a peer's
//! shard.
//!
//! # Design
//! `Network::register(ChannelConfig)` gives a [`Sender`] and a
//! [`crate::Receiver`]. Channels are fixed before the network starts, so the
//! table every shard reads is immutable and lock-free.
//!
//! There is one way to send: [`Sender::send`] queues a message for its
//! recipients and never waits; the [`SendReport`] says, per recipient,
//! whether it was queued, whether the peer's queue was full, or whether the
//! peer is not connected. Each established connection has an
//! application-visible queue depth (messages and bytes, see `queue_depth`);
//! a send reserves a share of it and is refused with [`SendError::Full`]
//! when the peer's backlog is reached, so a full queue is an explicit
//! result (and a metric), never a silent drop. Waiting for room is the
//! separate [`Sender::send_wait`], which reserves the same share, waiting
//! while it does not fit: one future, `.await`ed on any executor or driven
//! by [`crate::Wait::blocking`] on a plain thread. A batch to one peer
//! ([`Sender::send_batch`], [`Sender::send_batch_wait`]) reserves its whole
//! share at once and crosses to the shard as one command. A request
//! ([`Sender::request`]) is a message with a correlation id whose response
//! completes the future.
//!
//! Compression (zstd, per channel) runs on the sending thread, once per
//! message whatever the number of recipients, and only when it makes the
//! message smaller.
//!
//! Receiving is `receiver`; the channel table itself ([`ChannelSpec`],
//! [`Channels`]) is defined below this module (`channel_spec`), and this
//! module reaches the shards only through their link (`shard::link`), so
//! neither the shards nor the shared state depend on it.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_crypto::PublicKey;

pub use crate::channel_spec::{ChannelSpec, Channels};
use crate::connection::{Outgoing, Priority};
use crate::error::SendError;
use crate::peers::PeerHandle;
use crate::queue_depth::DepthPermit;
use crate::rpc::RequestError;
use crate::send_report::{Recipients, SendReport};
use crate::send_wait::SendWait;
use crate::shard::link::Command;
use crate::shared::Shared;
use crate::wait::Wait;

/// Sends on one channel. Cheap to clone; usable from any thread.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use shoal_engine::{ChannelConfig, Priority};
/// let [(a, mut a_ch), (b, mut b_ch)] = shoal_engine::__private::connected_pair(&[ChannelConfig::new(1)]);
/// let (tx, _) = a_ch.remove(0);
/// let (_, rx) = b_ch.remove(0);
///
/// // Never waits: queued for b, or why not.
/// tx.send(&b.public_key(), Bytes::from_static(b"vote"), Priority::High).result()?;
/// // Waits while b's queue is full (here it is not).
/// tx.send_wait(&b.public_key(), Bytes::from_static(b"block"), Priority::Low).blocking().result()?;
///
/// assert_eq!(rx.recv_blocking()?, (a.public_key(), Bytes::from_static(b"vote")));
/// assert_eq!(rx.recv_blocking()?.1, Bytes::from_static(b"block"));
/// # Ok(()) }
/// ```
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

    /// The channel's largest message, in bytes.
    pub fn max_size(&self) -> usize {
        self.spec.max_size
    }

    /// Queues `msg` for `to` (a `&PublicKey`, a slice of keys, or
    /// [`Recipients::All`]) and returns at once: it never waits. The report
    /// says, for each recipient, whether the message was queued, whether its
    /// send queue was full ([`SendError::Full`]: nothing queued for it) or
    /// whether it is not connected; or, if nobody was tried, why the message
    /// was refused ([`SendError::TooLarge`], [`SendError::Closed`] after
    /// shutdown). `priority` [`Priority::High`] messages are written before
    /// any queued `Low` one and are never stuck behind a large one (messages
    /// are chunked and interleaved).
    ///
    /// Cost: one lock-free peer lookup, one atomic reservation and one
    /// bounded hand-off to the peer's shard per recipient; no allocation
    /// for one recipient. Queued is not delivered: a message queued for a
    /// peer whose connection then closes is lost with the connection.
    pub fn send<'r>(
        &self,
        to: impl Into<Recipients<'r>>,
        msg: Bytes,
        priority: Priority,
    ) -> SendReport {
        let msg = match self.prepare(msg) {
            Ok(msg) => msg,
            Err(e) => return SendReport::refused_with(e),
        };
        // Three outcomes per peer: queued, full, or not connected.
        let one = |handle: Option<&PeerHandle>, msg: Outgoing| match handle {
            None => Err(self.not_connected()),
            Some(h) => match self.enqueue(h, msg, priority) {
                Err(SendError::Full) => Err(SendError::Full),
                Err(_) => Err(SendError::NotConnected),
                Ok(()) => Ok(()),
            },
        };
        match to.into() {
            // Looked up in the snapshot: no handle reference count touched.
            Recipients::One(peer) => self
                .shared
                .peers
                .with(|map| SendReport::one(peer, one(map.get(peer).map(|h| &**h), msg))),
            Recipients::Peers(list) => self.shared.peers.with(|map| {
                let each = |p: &PublicKey| (p.clone(), one(map.get(p).map(|h| &**h), msg.clone()));
                SendReport::many(list.iter().map(each).collect())
            }),
            Recipients::All => self.shared.peers.with(|map| {
                let each =
                    |(p, h): (&PublicKey, &Arc<PeerHandle>)| (p.clone(), one(Some(h), msg.clone()));
                SendReport::many(map.iter().map(each).collect())
            }),
        }
    }

    /// [`Sender::send`] that waits while a recipient's queue is full, until
    /// it has room or the recipient disconnects: the report then names no
    /// peer as full. Recipients are served in turn, each waited for before
    /// the next is tried. Not connected is reported as with `send`, without
    /// waiting. `.await` it on any executor, or `.blocking()` on a plain
    /// thread (parks until room comes back; no spinning).
    ///
    /// When room is there it completes at its first poll and costs what
    /// `send` does. Dropping it while it waits sends nothing more (messages
    /// already queued for earlier recipients stay queued).
    pub fn send_wait<'a>(
        &'a self,
        to: impl Into<Recipients<'a>>,
        msg: Bytes,
        priority: Priority,
    ) -> SendWait<'a> {
        SendWait::new(self, to.into(), msg, priority)
    }

    /// [`Sender::send_wait`] to several recipients (or all), each waited
    /// for in turn.
    pub(crate) async fn wait_each(
        &self,
        to: Recipients<'_>,
        msg: Outgoing,
        priority: Priority,
    ) -> SendReport {
        let list = match to {
            Recipients::One(peer) => {
                return SendReport::one(peer, self.wait_one(peer, msg, priority).await)
            }
            Recipients::Peers(list) => list.to_vec(),
            Recipients::All => self.shared.peers.peers(),
        };
        let mut outcomes = Vec::with_capacity(list.len());
        for peer in list {
            let outcome = self.wait_one(&peer, msg.clone(), priority).await;
            outcomes.push((peer, outcome));
        }
        SendReport::many(outcomes)
    }

    /// One attempt to queue `msg` for `peer` without waiting, looked up in
    /// the table snapshot as `send` does: the outcome, or the message back
    /// if the peer's queue (or its shard's command queue) is full.
    pub(crate) fn try_one(
        &self,
        peer: &PublicKey,
        msg: Outgoing,
        priority: Priority,
    ) -> Result<Result<(), SendError>, Outgoing> {
        self.shared.peers.with(|map| {
            let Some(h) = map.get(peer) else {
                return Ok(Err(self.not_connected()));
            };
            let Some(permit) = h.depth.try_reserve(msg.payload.len()) else {
                return Err(msg);
            };
            self.enqueue_after_reserve(h, msg, priority, permit).map(Ok)
        })
    }

    /// Queues `msg` for `peer`, waiting while its queue is full; fails if
    /// the peer is not connected or disconnects while waiting.
    pub(crate) async fn wait_one(
        &self,
        peer: &PublicKey,
        mut msg: Outgoing,
        priority: Priority,
    ) -> Result<(), SendError> {
        let h = self.connected(peer)?;
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

    /// The peer's connection handle, or `NotConnected` counted in
    /// `send_not_connected` (every send refuses the same way).
    fn connected(&self, peer: &PublicKey) -> Result<Arc<PeerHandle>, SendError> {
        self.shared
            .peers
            .get(peer)
            .ok_or_else(|| self.not_connected())
    }

    /// Counts a send refused because the peer is (no longer) connected.
    pub(crate) fn not_connected(&self) -> SendError {
        self.shared.metrics.send_not_connected.inc();
        SendError::NotConnected
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

    /// Queues `msgs` for one peer, in order, as one hand-off to its shard:
    /// one peer lookup, one queue reservation and one cross-thread command
    /// for the batch instead of one of each per message. The cheap way to
    /// send many small messages that exist together (a burst of votes or
    /// transactions). Never waits. All or nothing: `Full` if the peer's
    /// queue lacks room for the whole batch now, `TooLarge` if any message
    /// is over the channel's limit, `NotConnected`, `Closed`; nothing is
    /// queued then.
    pub fn send_batch(
        &self,
        peer: &PublicKey,
        msgs: impl IntoIterator<Item = Bytes>,
        priority: Priority,
    ) -> Result<(), SendError> {
        let msgs = self.prepare_batch(msgs)?;
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
            .enqueue_batch_reserved(&h, msgs, priority, permit)
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

    /// [`Sender::send_batch`] that waits while the peer's queue is full,
    /// handing the batch over in pieces of at most half the peer backlog
    /// (so a piece always fits once the queue drains). Fails if a message
    /// is too large (nothing queued), or if the peer is not connected or
    /// disconnects while waiting (pieces already handed over stay queued).
    /// `.await` it, or `.blocking()` on a plain thread.
    pub fn send_batch_wait<'a>(
        &'a self,
        peer: &'a PublicKey,
        msgs: impl IntoIterator<Item = Bytes>,
        priority: Priority,
    ) -> Wait<impl Future<Output = Result<(), SendError>> + 'a> {
        let msgs = self.prepare_batch(msgs);
        Wait::new(
            async move {
                let msgs = msgs?;
                let h = self.connected(peer)?;
                let piece_len = (h.depth.max_messages() / 2).max(1);
                let mut rest = msgs.into_iter();
                loop {
                    let piece: Vec<Outgoing> = rest.by_ref().take(piece_len).collect();
                    let n = piece.len();
                    if n == 0 {
                        return Ok(());
                    }
                    self.wait_piece(&h, piece, priority).await?;
                    self.spec.metrics.messages_out.inc_by(n as u64);
                }
            },
            Duration::ZERO,
        )
    }

    /// Queues one piece of a batch (at most half the peer backlog), waiting
    /// for room for all of it.
    async fn wait_piece(
        &self,
        h: &PeerHandle,
        mut piece: Vec<Outgoing>,
        priority: Priority,
    ) -> Result<(), SendError> {
        loop {
            let Ok(permit) = h.depth.reserve_n(piece.len(), payload_bytes(&piece)).await else {
                return Err(self.not_connected());
            };
            match self
                .shared
                .enqueue_batch_reserved(h, piece, priority, permit)
            {
                Ok(()) => return Ok(()),
                Err(back) if back.is_empty() => return Err(self.not_connected()),
                // The shard's command queue is full: it is draining.
                Err(back) => {
                    piece = back;
                    std::thread::yield_now();
                }
            }
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

    /// Sends `msg` as a request to `peer` and waits for its response (the
    /// peer's [`crate::Network::serve`] handler's reply), for up to
    /// `timeout`. `.await` it on any executor (the timeout is enforced by
    /// the shard, not by a runtime timer), or `.blocking()` on a plain
    /// thread (looks for up to `io.wait_spin`, then parks).
    ///
    /// Never waits for room: a full queue fails at once with
    /// [`RequestError::Full`]. Fails promptly with
    /// [`RequestError::Disconnected`] if the connection closes before the
    /// response, [`RequestError::Timeout`] after `timeout`,
    /// [`RequestError::Remote`] if the peer had no handler or its handler
    /// failed, [`RequestError::TooManyPending`] beyond
    /// `limits.max_pending_requests`. Dropping the future cancels it; a
    /// late response is then dropped and counted.
    pub fn request<'a>(
        &'a self,
        peer: &'a PublicKey,
        msg: Bytes,
        timeout: Duration,
    ) -> Wait<impl Future<Output = Result<Bytes, RequestError>> + 'a> {
        Wait::new(
            async move {
                let rx = self.start_request(peer, msg, timeout)?;
                rx.await.map_err(|_| RequestError::Disconnected)?
            },
            self.shared.config.effective_wait_spin(),
        )
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

    pub(crate) fn prepare(&self, payload: Bytes) -> Result<Outgoing, SendError> {
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
pub(crate) fn register_request(
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
