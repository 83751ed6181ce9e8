//! What a shard task can do: [`Ctx`] and the channel halves, requests and
//! timers it hands out.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_crypto::PublicKey;
use shoal_wire::{RecordKind, RpcStatus};

use super::local::{Asked, Claim, Local};
use crate::channel_spec::{ChannelSpec, Channels};
use crate::channels::Sender;
use crate::connection::{Outgoing, Priority};
use crate::error::SendError;
use crate::events::Events;
use crate::peers::PeerHandle;
use crate::queue_depth::DepthPermit;
use crate::rpc::RequestError;
use crate::shard::Command;
use crate::shared::Shared;

/// Why a channel could not be claimed on this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// No channel with this id was registered.
    #[error("channel {0} is not registered")]
    UnknownChannel(u32),
    /// A task on this shard holds it already (one receiver, and one request
    /// server, per channel per shard).
    #[error("channel {0} is claimed by another task on this shard")]
    Claimed(u32),
    /// An in-shard handler ([`crate::Network::serve`]) answers it.
    #[error("channel {0} is served by an in-shard handler")]
    Handled(u32),
}

/// A task's view of its shard: channels, requests, timers, peers. Cheap to
/// clone; it stays on the shard (`!Send`), like the task.
#[derive(Clone)]
pub struct Ctx {
    local: Rc<Local>,
    shared: Arc<Shared>,
    channels: Arc<Channels>,
}

impl Ctx {
    pub(crate) fn new(local: Rc<Local>, shared: Arc<Shared>, channels: Arc<Channels>) -> Self {
        Ctx {
            local,
            shared,
            channels,
        }
    }

    /// The shard this task runs on.
    pub fn shard(&self) -> usize {
        self.local.shard
    }

    /// This node's key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.config.identity.signer.public_key().clone()
    }

    /// Peers whose connection lives on this shard: sends to them never
    /// leave the thread.
    pub fn local_peers(&self) -> Vec<PublicKey> {
        let shard = self.local.shard;
        self.shared.peers.with(|m| {
            m.iter()
                .filter(|(_, h)| h.id.shard == shard)
                .map(|(p, _)| p.clone())
                .collect()
        })
    }

    /// Every connected peer, on any shard.
    pub fn peers(&self) -> Vec<PublicKey> {
        self.shared.peers.peers()
    }

    /// Connection events, as [`crate::NetworkHandle::events`] gives them.
    pub fn events(&self) -> Events {
        Events::new(self.shared.peers.subscribe())
    }

    /// Sends on `channel` from this shard.
    pub fn sender(&self, channel: u32) -> Result<LocalSender, ClaimError> {
        let spec = self.spec(channel)?;
        Ok(LocalSender {
            inner: Sender {
                spec,
                shared: self.shared.clone(),
            },
            local: self.local.clone(),
        })
    }

    /// Takes the messages of `channel` that arrive on this shard: from now
    /// on they go to the returned receiver instead of the channel's
    /// [`crate::Receiver`] (which keeps getting those of other shards), and
    /// back to it once the receiver is dropped. Bounded by the channel's
    /// capacity; while it is full the connection it came on reads nothing
    /// more, as with a full `Receiver`. The claim starts with this call,
    /// in the task's first poll, not at `spawn_on`: what arrives before
    /// goes to the `Receiver`, so have the task say when it holds the
    /// claim before peers start sending.
    pub fn receiver(&self, channel: u32) -> Result<LocalReceiver, ClaimError> {
        let spec = self.claim(channel, Claim::Messages(channel))?;
        Ok(LocalReceiver {
            channel,
            local: self.local.clone(),
            spec,
            shared: self.shared.clone(),
        })
    }

    /// Serves the requests on `channel` that arrive on this shard
    /// ([`crate::Sender::request`] and [`LocalSender::request`] on the
    /// peer). At most the channel's capacity wait; beyond that a request is
    /// answered [`RpcStatus::HandlerFailed`] at once and counted
    /// (`refused{reason="task_requests_full"}`). As with
    /// [`Ctx::receiver`], the claim starts with this call: a request that
    /// arrives before gets [`RpcStatus::NoHandler`].
    pub fn requests(&self, channel: u32) -> Result<Requests, ClaimError> {
        self.claim(channel, Claim::Requests(channel))?;
        Ok(Requests {
            channel,
            local: self.local.clone(),
        })
    }

    /// Completes at `deadline`, on the shard's own clock (the shard sleeps
    /// no longer than the earliest task deadline).
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        Sleep {
            local: self.local.clone(),
            at: deadline,
            key: None,
        }
    }

    /// Completes after `d`.
    pub fn sleep(&self, d: Duration) -> Sleep {
        self.sleep_until(Instant::now() + d)
    }

    /// Ticks every `period`, the first one `period` from now. A tick missed
    /// while the task was busy is skipped, not made up for.
    pub fn interval(&self, period: Duration) -> Interval {
        Interval {
            ctx: self.clone(),
            next: Instant::now() + period,
            period: period.max(Duration::from_micros(1)),
        }
    }

    /// Lets the shard do its I/O and run its other tasks once.
    pub fn yield_now(&self) -> impl Future<Output = ()> {
        yield_once()
    }

    /// Starts another task on this shard, after the current poll. It runs
    /// until it finishes or the network shuts down.
    pub fn spawn(&self, fut: impl Future<Output = ()> + 'static) {
        self.local.spawned.borrow_mut().push(Box::pin(fut));
    }

    fn spec(&self, channel: u32) -> Result<Arc<ChannelSpec>, ClaimError> {
        self.channels
            .get(channel)
            .cloned()
            .ok_or(ClaimError::UnknownChannel(channel))
    }

    fn claim(&self, channel: u32, claim: Claim) -> Result<Arc<ChannelSpec>, ClaimError> {
        let spec = self.spec(channel)?;
        if spec.handler.get().is_some() {
            return Err(ClaimError::Handled(channel));
        }
        if !self.local.claim(claim, spec.inbox.capacity()) {
            return Err(ClaimError::Claimed(channel));
        }
        Ok(spec)
    }
}

/// Sends on one channel from a shard task. A send to a peer whose
/// connection is on this shard goes to the connection's queue in the same
/// loop turn, with no queue between threads and no wake-up; one to a peer
/// on another shard takes the bounded hand-off every [`crate::Sender`]
/// uses. Results are those of [`crate::Sender`].
#[derive(Clone)]
pub struct LocalSender {
    inner: Sender,
    local: Rc<Local>,
}

impl LocalSender {
    /// The channel id.
    pub fn channel(&self) -> u32 {
        self.inner.spec.id
    }

    /// Queues `msg` for `peer` without waiting: `Full` when the peer's
    /// queue (`limits.peer_send_backlog` / `peer_send_bytes`) has no room.
    pub fn send(&self, peer: &PublicKey, msg: Bytes, priority: Priority) -> Result<(), SendError> {
        let msg = self.inner.prepare(msg)?;
        self.inner.shared.peers.with(|map| {
            let Some(h) = map.get(peer) else {
                return Err(self.inner.not_connected());
            };
            let Some(permit) = h.depth.try_reserve(msg.payload.len()) else {
                self.count_full();
                return Err(SendError::Full);
            };
            self.enqueue(h, msg, priority, permit)
        })
    }

    /// Queues `msg` for `peer`, waiting while its queue (or, for a peer on
    /// another shard, that shard's command queue) is full; fails if the
    /// peer is not connected or disconnects meanwhile.
    pub async fn send_wait(
        &self,
        peer: &PublicKey,
        msg: Bytes,
        priority: Priority,
    ) -> Result<(), SendError> {
        let mut msg = self.inner.prepare(msg)?;
        let h = self
            .inner
            .shared
            .peers
            .get(peer)
            .ok_or_else(|| self.inner.not_connected())?;
        loop {
            let Ok(permit) = h.depth.reserve(msg.payload.len()).await else {
                return Err(self.inner.not_connected());
            };
            match self.enqueue_or_back(&h, msg, priority, permit) {
                Ok(()) => return Ok(()),
                // The other shard's command queue is full: it is draining.
                Err(back) => {
                    msg = back;
                    yield_once().await;
                }
            }
        }
    }

    /// Sends `msg` as a request to `peer` and waits up to `timeout` for the
    /// response, as [`crate::Sender::request`] does (same errors; the
    /// shard enforces the timeout). Dropping the future cancels it.
    pub async fn request(
        &self,
        peer: &PublicKey,
        msg: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        let rx = self.start_request(peer, msg, timeout)?;
        rx.await.map_err(|_| RequestError::Disconnected)?
    }

    fn start_request(
        &self,
        peer: &PublicKey,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Bytes, RequestError>>, RequestError> {
        let shared = &self.inner.shared;
        let mut msg = self.inner.prepare(payload).map_err(request_error)?;
        let h = shared.peers.get(peer).ok_or_else(|| {
            self.inner.not_connected();
            RequestError::NotConnected
        })?;
        let (h, id, rx) = crate::channels::register_request(shared, peer, h, timeout)?;
        msg.kind = RecordKind::RpcRequest;
        msg.request_id = id;
        let Some(permit) = h.depth.try_reserve(msg.payload.len()) else {
            self.count_full();
            shared.rpc.forget(h.id.shard, id);
            return Err(RequestError::Full);
        };
        if self.enqueue(&h, msg, Priority::High, permit).is_err() {
            shared.rpc.forget(h.id.shard, id);
            return Err(RequestError::Full);
        }
        Ok(rx)
    }

    /// Queues `msg` with the `permit` reserved for it: `Full` when the
    /// other shard's command queue refused it.
    fn enqueue(
        &self,
        h: &PeerHandle,
        msg: Outgoing,
        priority: Priority,
        permit: DepthPermit<'_>,
    ) -> Result<(), SendError> {
        self.enqueue_or_back(h, msg, priority, permit)
            .map_err(|_| SendError::Full)
    }

    /// Queues `msg` with the `permit` reserved for it: into this shard's
    /// outbox when the connection is here, else across to its shard, whose
    /// full command queue hands it back (the share released, counted).
    fn enqueue_or_back(
        &self,
        h: &PeerHandle,
        msg: Outgoing,
        priority: Priority,
        permit: DepthPermit<'_>,
    ) -> Result<(), Outgoing> {
        if h.id.shard == self.local.shard {
            self.local.outbox.borrow_mut().push(Command::Send {
                id: h.id,
                peer: h.peer.clone(),
                msg,
                priority,
                share: permit.into_share(),
            });
        } else if let Err(back) = self
            .inner
            .shared
            .enqueue_reserved_or_back(h, msg, priority, permit)
        {
            self.inner.spec.metrics.send_full.inc();
            return Err(back);
        }
        self.inner.spec.metrics.messages_out.inc();
        Ok(())
    }

    fn count_full(&self) {
        self.inner.shared.metrics.send_full.inc();
        self.inner.spec.metrics.send_full.inc();
    }
}

/// Pending once (waking itself at once), then ready: the task runs again
/// in the shard's next turn.
fn yield_once() -> impl Future<Output = ()> {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if std::mem::replace(&mut yielded, true) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
}

fn request_error(e: SendError) -> RequestError {
    match e {
        SendError::TooLarge => RequestError::TooLarge,
        SendError::Closed => RequestError::Closed,
        SendError::Full => RequestError::Full,
        SendError::NotConnected => RequestError::NotConnected,
    }
}

/// The messages of one channel that arrive on this shard
/// ([`Ctx::receiver`]). Dropping it gives the channel back to its
/// [`crate::Receiver`]; what it still held is dropped and counted
/// (`refused{reason="task_receiver_dropped"}`).
pub struct LocalReceiver {
    channel: u32,
    local: Rc<Local>,
    spec: Arc<ChannelSpec>,
    shared: Arc<Shared>,
}

impl LocalReceiver {
    /// The channel id.
    pub fn channel(&self) -> u32 {
        self.channel
    }

    /// The next message and its sender. It ends only with the task (the
    /// network's shutdown cancels tasks).
    pub fn recv(&mut self) -> impl Future<Output = (PublicKey, Bytes)> + '_ {
        std::future::poll_fn(move |cx| {
            take_within_budget(&self.local, cx, |l, w| {
                l.take_message(self.channel, Some(w))
            })
        })
    }

    /// The next message if one is waiting. Outside the receive budget: a
    /// task looping on it holds its shard until the queue is empty.
    pub fn try_recv(&mut self) -> Option<(PublicKey, Bytes)> {
        self.local.take_message(self.channel, None)
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.local.queued_messages(self.channel)
    }

    /// No message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for LocalReceiver {
    fn drop(&mut self) {
        let lost = self.local.release_messages(self.channel);
        if lost > 0 {
            self.shared.metrics.refuse_n("task_receiver_dropped", lost);
            tracing::debug!(channel = self.spec.id, lost, "a task dropped its receiver");
        }
    }
}

/// Takes an item from a task queue, or yields once the task spent its
/// receive budget for this poll (so a deep queue cannot hold the shard).
fn take_within_budget<T>(
    local: &Local,
    cx: &mut Context<'_>,
    take: impl FnOnce(&Local, &std::task::Waker) -> Option<T>,
) -> Poll<T> {
    if local.budget.get() == 0 {
        cx.waker().wake_by_ref();
        return Poll::Pending;
    }
    match take(local, cx.waker()) {
        Some(item) => {
            local.spend();
            Poll::Ready(item)
        }
        None => Poll::Pending,
    }
}

/// The requests on one channel that arrive on this shard
/// ([`Ctx::requests`]). Dropping it answers those still waiting
/// [`RpcStatus::HandlerFailed`] and gives the channel back (requests then
/// get [`RpcStatus::NoHandler`]).
pub struct Requests {
    channel: u32,
    local: Rc<Local>,
}

impl Requests {
    /// The next request. It ends only with the task.
    pub fn recv(&mut self) -> impl Future<Output = Request> + '_ {
        std::future::poll_fn(move |cx| {
            take_within_budget(&self.local, cx, |l, w| l.take_request(self.channel, w)).map(
                |asked| Request {
                    asked,
                    answered: false,
                    channel: self.channel,
                    local: self.local.clone(),
                },
            )
        })
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        for asked in self.local.release_requests(self.channel) {
            respond(
                &self.local,
                self.channel,
                &asked,
                RpcStatus::HandlerFailed,
                Bytes::new(),
            );
        }
    }
}

/// One request to answer. Dropping it unanswered answers
/// [`RpcStatus::HandlerFailed`], so the requester never waits out its
/// timeout for a request the task let go.
pub struct Request {
    asked: Asked,
    answered: bool,
    channel: u32,
    local: Rc<Local>,
}

impl Request {
    /// Who asked.
    pub fn peer(&self) -> &PublicKey {
        &self.asked.peer
    }

    /// The request's payload.
    pub fn payload(&self) -> &Bytes {
        &self.asked.payload
    }

    /// Answers with `payload`, on the connection the request came on, at
    /// high priority. A connection that closed meanwhile takes it nowhere
    /// (its requester was told `Disconnected`).
    pub fn respond(mut self, payload: Bytes) {
        self.answer(RpcStatus::Ok, payload);
    }

    /// Answers [`RpcStatus::HandlerFailed`].
    pub fn fail(mut self) {
        self.answer(RpcStatus::HandlerFailed, Bytes::new());
    }

    fn answer(&mut self, status: RpcStatus, payload: Bytes) {
        if !std::mem::replace(&mut self.answered, true) {
            respond(&self.local, self.channel, &self.asked, status, payload);
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.answer(RpcStatus::HandlerFailed, Bytes::new());
    }
}

fn respond(local: &Local, channel: u32, asked: &Asked, status: RpcStatus, payload: Bytes) {
    local.outbox.borrow_mut().push(Command::Respond {
        id: asked.conn,
        channel,
        request_id: asked.request_id,
        status,
        payload,
    });
}

/// A task's sleep ([`Ctx::sleep`], [`Ctx::sleep_until`]).
#[must_use = "a Sleep does nothing unless awaited"]
pub struct Sleep {
    local: Rc<Local>,
    at: Instant,
    key: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            if let Some(key) = self.key.take() {
                self.local.cancel_sleep(key);
            }
            return Poll::Ready(());
        }
        let key = self.local.sleep(self.at, self.key, cx.waker());
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.local.cancel_sleep(key);
        }
    }
}

/// Periodic ticks on the shard's clock ([`Ctx::interval`]).
pub struct Interval {
    ctx: Ctx,
    next: Instant,
    period: Duration,
}

impl Interval {
    /// Waits for the next tick; returns its scheduled time.
    pub async fn tick(&mut self) -> Instant {
        let at = self.next;
        self.ctx.sleep_until(at).await;
        let now = Instant::now();
        self.next = if at + self.period <= now {
            now + self.period
        } else {
            at + self.period
        };
        at
    }
}
