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
/// use shoal_engine::{DisconnectReason, Ed25519Signer, Event, Signer};
/// let peer = Ed25519Signer::insecure_from_seed(2).public_key().clone();
/// let e = Event::Disconnected { peer: peer.clone(), reason: DisconnectReason::IdleTimeout };
/// assert_eq!(e.peer(), Some(&peer));
/// assert_eq!(Event::Lagged(3).peer(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An authenticated connection to this peer is established (both key
    /// confirmations verified).
    Connected(PublicKey),
    /// The peer's connection closed, for `reason`. A connection replaced
    /// by a newer one to the same peer is not an event: the peer stays
    /// connected throughout.
    Disconnected {
        peer: PublicKey,
        reason: DisconnectReason,
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

/// Why an established connection closed (see [`Event::Disconnected`]).
/// [`label`](DisconnectReason::label) is the `reason` label the
/// `shoal_closes` metric counts it under.
///
/// ```
/// use shoal_engine::DisconnectReason;
/// assert_eq!(DisconnectReason::IdleTimeout.label(), "idle_timeout");
/// let bad = DisconnectReason::Violation("decrypt_failed");
/// assert_eq!(bad.to_string(), "protocol violation: decrypt_failed");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// This node closed it ([`crate::NetworkHandle::disconnect`], or the
    /// peer's slot was taken back).
    Local,
    /// The peer left every tracked peer set, so this node closed it.
    Deauthorized,
    /// This node is shutting down.
    Shutdown,
    /// The peer closed it.
    Remote,
    /// Nothing arrived within `limits.idle_timeout`.
    IdleTimeout,
    /// The peer did not take this node's output within
    /// `limits.write_timeout`.
    WriteTimeout,
    /// The socket failed (reset, broken pipe, ...).
    Io,
    /// The data shard that owned the connection failed.
    ShardFailed,
    /// The peer broke the protocol (an undecryptable record, a malformed
    /// frame, an oversized message, ...): the label says how.
    Violation(&'static str),
}

impl DisconnectReason {
    /// The reason for a close counted under `label` (the metric label the
    /// shard gives every close; labels not named here are protocol
    /// violations).
    pub(crate) fn from_label(label: &'static str) -> Self {
        match label {
            "local_close" => Self::Local,
            "deauthorized" => Self::Deauthorized,
            "shutdown" => Self::Shutdown,
            "remote_close" => Self::Remote,
            "idle_timeout" => Self::IdleTimeout,
            "write_timeout" => Self::WriteTimeout,
            "io_error" => Self::Io,
            "shard_failed" => Self::ShardFailed,
            other => Self::Violation(other),
        }
    }

    /// The `reason` label of the `shoal_closes` metric for this close.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Local => "local_close",
            Self::Deauthorized => "deauthorized",
            Self::Shutdown => "shutdown",
            Self::Remote => "remote_close",
            Self::IdleTimeout => "idle_timeout",
            Self::WriteTimeout => "write_timeout",
            Self::Io => "io_error",
            Self::ShardFailed => "shard_failed",
            Self::Violation(label) => label,
        }
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Violation(label) => write!(f, "protocol violation: {label}"),
            other => f.write_str(&other.label().replace('_', " ")),
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

#[cfg(test)]
mod tests {
    use super::DisconnectReason;

    #[test]
    fn every_reason_round_trips_through_its_label() {
        for r in [
            DisconnectReason::Local,
            DisconnectReason::Deauthorized,
            DisconnectReason::Shutdown,
            DisconnectReason::Remote,
            DisconnectReason::IdleTimeout,
            DisconnectReason::WriteTimeout,
            DisconnectReason::Io,
            DisconnectReason::ShardFailed,
            DisconnectReason::Violation("bad_frame"),
        ] {
            assert_eq!(DisconnectReason::from_label(r.label()), r);
        }
        assert_eq!(DisconnectReason::IdleTimeout.to_string(), "idle timeout");
    }
}
