//! The receiving half of a channel.
//!
//! # Design
//! A [`Receiver`] takes messages from its channel's bounded inbox, which
//! the shards fill (see `inbox`). Taking a message may let a shard resume
//! a connection it had stopped reading because the inbox was full
//! (backpressure), so every way of taking one ends in the same release.
//! The async forms ([`Receiver::recv`], the [`Stream`] impl) need no
//! runtime: their wake-ups come from the shards. The blocking forms look
//! for up to the network's `io.wait_spin` before parking (see `wait`).
//!
//! When the network shuts down the inbox is closed: every form yields what
//! is still queued and then reports the end ([`RecvError`], or `None` from
//! the stream).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use shoal_crypto::PublicKey;

use crate::channel_spec::ChannelSpec;
use crate::shared::Shared;
use crate::wait::Wait;

/// The network shut down; no more messages (or events) will arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("network closed")]
pub struct RecvError;

/// Receives one channel's messages, each with the key of the peer that sent
/// it, in the order each peer's messages arrived.
///
/// Usable from async code on any executor ([`Receiver::recv`], or as a
/// [`Stream`]) and from a plain thread ([`Receiver::recv_blocking`],
/// [`Receiver::recv_timeout`], [`Receiver::try_recv`]). A receiver that
/// does not keep up is not a loss: once [`crate::ChannelConfig::capacity`]
/// messages wait, the shards stop reading the connections that bring more
/// until it takes some.
///
/// ```
/// # fn main() -> Result<(), shoal_engine::Error> {
/// use std::time::Duration;
/// use shoal_engine::{ChannelConfig, Config, Network};
/// let (mut net, _oracle) = Network::new(Config::local(None))?;
/// let (_tx, rx) = net.register(ChannelConfig::new(1))?;
/// let node = net.start()?;
/// assert!(rx.try_recv().is_none());
/// assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Ok(None), "nothing in time");
/// node.shutdown(Duration::ZERO);
/// assert!(rx.recv_blocking().is_err(), "shut down and drained");
/// # Ok(()) }
/// ```
pub struct Receiver {
    spec: Arc<ChannelSpec>,
    shared: Arc<Shared>,
    /// The stream's registration for a wake-up, kept between its polls.
    listener: Option<event_listener::EventListener>,
}

impl Receiver {
    pub(crate) fn new(spec: Arc<ChannelSpec>, shared: Arc<Shared>) -> Self {
        Receiver {
            spec,
            shared,
            listener: None,
        }
    }

    /// The channel id.
    pub fn channel(&self) -> u32 {
        self.spec.id
    }

    /// The next message and its sender, waiting until one arrives
    /// (`.await` on any executor; `.blocking()` on a plain thread is
    /// [`Receiver::recv_blocking`]). `Err(RecvError)` once the network shut
    /// down and every queued message was taken. Cancel-safe: dropping the
    /// future takes nothing.
    pub fn recv(
        &self,
    ) -> Wait<impl std::future::Future<Output = Result<(PublicKey, Bytes), RecvError>> + '_> {
        let spin = self.shared.config.effective_wait_spin();
        Wait::new(
            async move {
                let m = self.spec.inbox.recv().await.ok_or(RecvError)?;
                self.freed();
                Ok(m)
            },
            spin,
        )
    }

    /// Blocks this thread until a message arrives: looks for up to the
    /// network's `io.wait_spin` first, then parks. `Err(RecvError)` once the
    /// network shut down and every queued message was taken.
    pub fn recv_blocking(&self) -> Result<(PublicKey, Bytes), RecvError> {
        let m = self
            .spec
            .inbox
            .recv_blocking(self.shared.config.effective_wait_spin())
            .ok_or(RecvError)?;
        self.freed();
        Ok(m)
    }

    /// [`Receiver::recv_blocking`] that gives up after `timeout`: `Ok(None)`
    /// if nothing arrived in time, `Err` once the network shut down and the
    /// queue drained. For plain threads that must notice a stall or a
    /// shutdown flag of their own.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<(PublicKey, Bytes)>, RecvError> {
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

    /// A message if one is ready; never waits. `None` both when nothing is
    /// ready and when the network shut down and the queue drained (tell them
    /// apart with [`Receiver::recv_timeout`]).
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

    /// True if [`Receiver::try_recv`] would find nothing now.
    pub fn is_empty(&self) -> bool {
        self.spec.inbox.is_empty()
    }

    /// A message was taken: a shard holding input for this channel can
    /// resume.
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

/// The channel's messages as a stream: the same as [`Receiver::recv`] in a
/// loop, ending (`None`) once the network shut down and every queued
/// message was taken. `futures::StreamExt` adds `next`, `map`, `take`...
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::pin::Pin;
/// use bytes::Bytes;
/// use futures_core::Stream;
/// use shoal_engine::{ChannelConfig, Priority, Receiver};
/// // What `StreamExt::next` does, without the futures crate.
/// async fn next(rx: &mut Receiver) -> Option<(shoal_engine::PublicKey, Bytes)> {
///     std::future::poll_fn(|cx| Pin::new(&mut *rx).poll_next(cx)).await
/// }
/// let [(a, mut a_ch), (b, mut b_ch)] = shoal_engine::__private::connected_pair(&[ChannelConfig::new(1)]);
/// let (tx, _) = a_ch.remove(0);
/// let (_, mut rx) = b_ch.remove(0);
/// tx.send_batch(&b.public_key(), [Bytes::from_static(b"1"), Bytes::from_static(b"2")], Priority::Low)?;
/// let rt = tokio::runtime::Builder::new_current_thread().build()?;
/// assert_eq!(rt.block_on(next(&mut rx)), Some((a.public_key(), Bytes::from_static(b"1"))));
/// assert_eq!(rt.block_on(next(&mut rx)).map(|m| m.1), Some(Bytes::from_static(b"2")));
/// b.shutdown(std::time::Duration::ZERO);
/// assert_eq!(rt.block_on(next(&mut rx)), None, "ends at shutdown");
/// # Ok(()) }
/// ```
impl Stream for Receiver {
    type Item = (PublicKey, Bytes);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = this.spec.inbox.poll_recv(cx, &mut this.listener);
        if let Poll::Ready(Some(_)) = next {
            this.freed();
        }
        next
    }
}
