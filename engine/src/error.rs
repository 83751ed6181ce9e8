//! Engine errors seen by embedders.

/// Errors from building or running a network.
///
/// ```
/// use shoal_engine::{ChannelConfig, Config, Error, Network};
/// let (mut net, _oracle) = Network::new(Config::local(None)).unwrap();
/// net.register(ChannelConfig::new(3)).unwrap();
/// assert!(matches!(net.register(ChannelConfig::new(3)), Err(Error::DuplicateChannel(3))));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: `{field}` {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("channel {0} registered twice")]
    DuplicateChannel(u32),
    #[error("io_uring unavailable: {0}")]
    IoUringUnavailable(String),
    /// The listener could not be bound: the field, the address and why.
    #[error("`listen.address` = {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the network is not running")]
    NotRunning,
}

/// Why a message was not accepted for a peer (see [`crate::SendReport`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use shoal_engine::{ChannelConfig, Priority, SendError};
/// let [(a, mut ch), (b, _)] = shoal_engine::__private::connected_pair(&[ChannelConfig::new(1).max_size(8)]);
/// let (tx, _rx) = ch.remove(0);
/// let peer = b.public_key();
/// assert_eq!(tx.send(&peer, Bytes::from_static(b"fits"), Priority::Low).result(), Ok(()));
/// let big = Bytes::from(vec![0u8; 9]);
/// assert_eq!(tx.send(&peer, big.clone(), Priority::Low).result(), Err(SendError::TooLarge));
/// assert_eq!(tx.send_batch(&peer, [big], Priority::Low), Err(SendError::TooLarge));
/// a.shutdown(std::time::Duration::ZERO);
/// let late = tx.send(&peer, Bytes::from_static(b"late"), Priority::Low);
/// assert_eq!(late.refused(), Some(SendError::Closed));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The message exceeds the channel's max size.
    #[error("message larger than the channel's max size")]
    TooLarge,
    /// The peer's send queue is full (slow peer): nothing was queued.
    #[error("peer send queue full")]
    Full,
    /// No established connection to the peer.
    #[error("peer not connected")]
    NotConnected,
    /// The network has shut down.
    #[error("network shut down")]
    Closed,
}
