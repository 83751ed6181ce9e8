//! What [`crate::Network::register`] is told about a channel.
//!
//! # Design
//! A builder with a documented default for every field, so registering a
//! channel names only what differs from the defaults. The network turns it
//! into the immutable channel table (`channel_spec`) when it starts.

use governor::Quota;

/// Messages a channel's receiver queue holds by default.
pub const DEFAULT_CAPACITY: usize = 1024;

/// A channel to register: its id and limits.
///
/// ```
/// # fn main() -> Result<(), shoal_engine::Error> {
/// use std::num::NonZeroU32;
/// use shoal_engine::{ChannelConfig, Config, Network, Quota};
/// let (mut net, _oracle) = Network::new(Config::local(None))?;
/// let votes = ChannelConfig::new(7)
///     .max_size(64 * 1024)
///     .capacity(4096)
///     .quota(Quota::per_second(NonZeroU32::new(10_000).unwrap()))
///     .compression(3);
/// assert_eq!(votes.id(), 7);
/// let (tx, _rx) = net.register(votes)?;
/// assert_eq!(tx.channel(), 7);
/// // Each id once.
/// assert!(net.register(ChannelConfig::new(7)).is_err());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    pub(crate) id: u32,
    pub(crate) max_size: Option<usize>,
    pub(crate) capacity: usize,
    pub(crate) quota: Option<Quota>,
    pub(crate) compression: Option<i32>,
}

impl ChannelConfig {
    /// Channel `id` with every limit at its default. Both ends of a channel
    /// must use the same id; a message on an id the receiver did not
    /// register is dropped and counted there.
    pub fn new(id: u32) -> Self {
        ChannelConfig {
            id,
            max_size: None,
            capacity: DEFAULT_CAPACITY,
            quota: None,
            compression: None,
        }
    }

    /// The channel id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Largest message, in bytes (after decompression), sent or received on
    /// the channel: a larger send is refused with
    /// [`crate::SendError::TooLarge`], a larger message from a peer closes
    /// its connection. Must be > 0. Default: the network's
    /// `limits.max_message_size` (4 MiB).
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Received messages the channel's [`crate::Receiver`] holds before the
    /// shards stop reading the connections that bring more (backpressure:
    /// nothing is dropped). Must be > 0. Default [`DEFAULT_CAPACITY`]
    /// (1024).
    pub fn capacity(mut self, messages: usize) -> Self {
        self.capacity = messages;
        self
    }

    /// Inbound rate per peer: a peer's messages beyond it wait (its
    /// connection stops being read while too many wait). Default: no quota.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// Compresses outgoing messages with zstd at `level`, once per message
    /// whatever the number of recipients, and only when that makes the
    /// message smaller. Default: no compression.
    pub fn compression(mut self, level: i32) -> Self {
        self.compression = Some(level);
        self
    }
}
