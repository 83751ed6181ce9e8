//! Who a message goes to ([`Recipients`]) and who took it ([`SendReport`]).
//!
//! # Design
//! Recipients borrow the keys they name, so addressing a message copies no
//! key and allocates nothing. A report for one recipient holds that
//! recipient's outcome inline (the per-message path of a send to one peer
//! allocates nothing); a report for several holds one outcome per recipient,
//! in the order they were tried. The message itself can be refused before
//! any recipient is tried (too large, network closed): then the report names
//! nobody and [`SendReport::result`] says why.

use shoal_crypto::PublicKey;

use crate::error::SendError;

/// Who a message goes to.
///
/// Converts from `&PublicKey` (one peer), `&[PublicKey]` and
/// `&Vec<PublicKey>` (these peers), so `sender.send(&peer, ..)` works.
///
/// ```
/// use shoal_engine::{Ed25519Signer, PublicKey, Recipients, Signer};
/// let peer: PublicKey = Ed25519Signer::insecure_from_seed(1).public_key().clone();
/// let set = vec![peer.clone()];
/// assert!(matches!(Recipients::from(&peer), Recipients::One(_)));
/// assert!(matches!(Recipients::from(&set), Recipients::Peers(p) if p.len() == 1));
/// ```
#[derive(Clone, Copy, Debug)]
pub enum Recipients<'a> {
    /// Every peer connected when the message is sent.
    All,
    /// These peers (each one that is not connected is reported as such).
    Peers(&'a [PublicKey]),
    /// One peer.
    One(&'a PublicKey),
}

impl<'a> From<&'a PublicKey> for Recipients<'a> {
    fn from(peer: &'a PublicKey) -> Self {
        Recipients::One(peer)
    }
}

impl<'a> From<&'a [PublicKey]> for Recipients<'a> {
    fn from(peers: &'a [PublicKey]) -> Self {
        Recipients::Peers(peers)
    }
}

impl<'a> From<&'a Vec<PublicKey>> for Recipients<'a> {
    fn from(peers: &'a Vec<PublicKey>) -> Self {
        Recipients::Peers(peers)
    }
}

/// What happened to one message: for each recipient, queued (`Ok`) or why
/// not (`Full`: its send queue was full; `NotConnected`), or, before any
/// recipient was tried, why the message itself was refused (`TooLarge`,
/// `Closed`).
///
/// ```
/// # fn main() -> Result<(), shoal_engine::Error> {
/// use bytes::Bytes;
/// use shoal_engine::{ChannelConfig, Config, Ed25519Signer, Network, Priority, SendError, Signer};
/// let (mut net, _oracle) = Network::new(Config::local(None))?;
/// let (tx, _rx) = net.register(ChannelConfig::new(1).max_size(4))?;
/// let node = net.start()?;
/// let stranger = Ed25519Signer::insecure_from_seed(7).public_key().clone();
///
/// let report = tx.send(&stranger, Bytes::from_static(b"hi"), Priority::Low);
/// assert_eq!(report.not_connected().collect::<Vec<_>>(), vec![&stranger]);
/// assert_eq!(report.result(), Err(SendError::NotConnected));
///
/// let report = tx.send(&stranger, Bytes::from_static(b"too long"), Priority::Low);
/// assert_eq!(report.refused(), Some(SendError::TooLarge));
/// assert_eq!(report.len(), 0, "nobody was tried");
/// # node.shutdown(std::time::Duration::ZERO);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a send reports peers whose queue was full or who are not connected"]
pub struct SendReport {
    outcomes: Outcomes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcomes {
    /// The message was refused before any recipient was tried.
    Refused(SendError),
    One(PublicKey, Result<(), SendError>),
    Many(Vec<(PublicKey, Result<(), SendError>)>),
}

impl SendReport {
    pub(crate) fn refused_with(e: SendError) -> Self {
        SendReport {
            outcomes: Outcomes::Refused(e),
        }
    }

    pub(crate) fn one(peer: &PublicKey, outcome: Result<(), SendError>) -> Self {
        SendReport {
            outcomes: Outcomes::One(peer.clone(), outcome),
        }
    }

    pub(crate) fn many(outcomes: Vec<(PublicKey, Result<(), SendError>)>) -> Self {
        SendReport {
            outcomes: Outcomes::Many(outcomes),
        }
    }

    /// Every recipient tried and its outcome, in the order they were tried.
    pub fn outcomes(&self) -> impl Iterator<Item = (&PublicKey, Result<(), SendError>)> {
        let (one, many) = match &self.outcomes {
            Outcomes::Refused(_) => (None, &[][..]),
            Outcomes::One(peer, r) => (Some((peer, *r)), &[][..]),
            Outcomes::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter().map(|(p, r)| (p, *r)))
    }

    /// The peers the message was queued for.
    pub fn accepted(&self) -> impl Iterator<Item = &PublicKey> {
        self.with(Ok(()))
    }

    /// The peers whose send queue was full: nothing was queued for them.
    pub fn full(&self) -> impl Iterator<Item = &PublicKey> {
        self.with(Err(SendError::Full))
    }

    /// The peers with no established connection: nothing was queued for
    /// them.
    pub fn not_connected(&self) -> impl Iterator<Item = &PublicKey> {
        self.with(Err(SendError::NotConnected))
    }

    fn with(&self, outcome: Result<(), SendError>) -> impl Iterator<Item = &PublicKey> {
        self.outcomes()
            .filter(move |(_, r)| *r == outcome)
            .map(|(p, _)| p)
    }

    /// How many recipients were tried (0 if the message was refused, or
    /// for [`Recipients::All`] with no peer connected).
    pub fn len(&self) -> usize {
        match &self.outcomes {
            Outcomes::Refused(_) => 0,
            Outcomes::One(..) => 1,
            Outcomes::Many(v) => v.len(),
        }
    }

    /// True if no recipient was tried.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why the message was refused before any recipient was tried
    /// ([`SendError::TooLarge`] or [`SendError::Closed`]).
    pub fn refused(&self) -> Option<SendError> {
        match self.outcomes {
            Outcomes::Refused(e) => Some(e),
            _ => None,
        }
    }

    /// `Ok` if every recipient tried took the message (also when none was:
    /// [`Recipients::All`] with no peer connected); otherwise the refusal,
    /// or the first recipient's failure. For one recipient this is exactly
    /// its outcome, so `tx.send(&peer, m, p).result()?` reads like a plain
    /// send.
    pub fn result(&self) -> Result<(), SendError> {
        match &self.outcomes {
            Outcomes::Refused(e) => Err(*e),
            Outcomes::One(_, r) => *r,
            Outcomes::Many(v) => v.iter().try_for_each(|(_, r)| *r),
        }
    }
}
