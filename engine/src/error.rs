//! Engine errors seen by embedders.

/// Errors from building or running a network.
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

/// Why a message was not accepted for a peer.
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
