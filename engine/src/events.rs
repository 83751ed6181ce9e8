//! Peer events as the application sees them: [`Event`] and the [`Events`]
//! subscription.
//!
//! # Design
//! The peer table publishes every change an application can see (a peer
//! connected, a peer's connection closed) on a bounded broadcast channel,
//! so a slow subscriber never slows the shards down: one that falls more
//! than [`EVENT_CAPACITY`] events behind gets [`Event::Lagged`] with the
//! number it missed instead, and carries on with the oldest it still has.
//! Events are not on the message path: a subscription costs nothing until
//! a peer comes or goes. The channel closes when the network shuts down,
//! after which a subscription yields what it still holds and then
//! [`RecvError`].

use std::future::Future;

use shoal_crypto::PublicKey;
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::receiver::RecvError;
use crate::wait::Wait;

/// Events kept for a slow subscriber before it sees [`Event::Lagged`].
pub const EVENT_CAPACITY: usize = 1024;

/// A peer came or went (see [`crate::NetworkHandle::events`]).
///
/// ```
/// use shoal_engine::{Ed25519Signer, Event, Signer};
/// let peer = Ed25519Signer::insecure_from_seed(2).public_key().clone();
/// let e = Event::Disconnected { peer: peer.clone(), reason: "idle_timeout" };
/// assert_eq!(e.peer(), Some(&peer));
/// assert_eq!(Event::Lagged(3).peer(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An authenticated connection to this peer is established (both key
    /// confirmations verified).
    Connected(PublicKey),
    /// The peer's connection closed; `reason` is the metric label of the
    /// cause (`local_close`, `remote_close`, `idle_timeout`, `io_error`, ...).
    /// A connection replaced by a newer one to the same peer is not an
    /// event: the peer stays connected throughout.
    Disconnected {
        peer: PublicKey,
        reason: &'static str,
    },
    /// This subscriber fell behind and missed this many events; the next
    /// ones are the oldest it still has. Re-read the state it tracks
    /// ([`crate::NetworkHandle::peers`]) to resynchronise.
    Lagged(u64),
}

impl Event {
    /// The peer the event is about (`None` for [`Event::Lagged`]).
    pub fn peer(&self) -> Option<&PublicKey> {
        match self {
            Event::Connected(p) | Event::Disconnected { peer: p, .. } => Some(p),
            Event::Lagged(_) => None,
        }
    }
}

/// A subscription to peer [`Event`]s, from when it was made on: what
/// [`crate::NetworkHandle::events`] returns. Each subscription sees every
/// event (up to [`EVENT_CAPACITY`] behind).
///
/// ```
/// # fn main() -> Result<(), shoal_engine::Error> {
/// use shoal_engine::{Config, Network};
/// let (net, _oracle) = Network::new(Config::local(None))?;
/// let node = net.start()?;
/// let mut events = node.events();
/// assert_eq!(events.try_recv(), Ok(None), "nothing happened yet");
/// node.shutdown(std::time::Duration::ZERO);
/// // Shut down: the subscription ends, it does not wait forever.
/// assert!(events.recv().blocking().is_err());
/// # Ok(()) }
/// ```
pub struct Events {
    rx: broadcast::Receiver<Event>,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Events { rx }
    }

    /// The next event, waiting for one (`.await`, or `.blocking()` on a
    /// plain thread). [`Event::Lagged`] when this subscriber missed some;
    /// `Err` once the network shut down and every event before it was
    /// taken.
    pub fn recv(&mut self) -> Wait<impl Future<Output = Result<Event, RecvError>> + '_> {
        Wait::new(
            async move {
                match self.rx.recv().await {
                    Ok(e) => Ok(e),
                    Err(broadcast::error::RecvError::Lagged(n)) => Ok(Event::Lagged(n)),
                    Err(broadcast::error::RecvError::Closed) => Err(RecvError),
                }
            },
            std::time::Duration::ZERO,
        )
    }

    /// The next event if one is waiting (`Ok(None)` if none is); never
    /// waits. `Err` once the network shut down and every event was taken.
    pub fn try_recv(&mut self) -> Result<Option<Event>, RecvError> {
        match self.rx.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(TryRecvError::Lagged(n)) => Ok(Some(Event::Lagged(n))),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Closed) => Err(RecvError),
        }
    }
}
