//! What a connection is configured with.
//!
//! # Design
//! One [`ConnectionConfig`] is shared (behind an `Arc`) by every connection
//! of a node; `Config::connection_config` builds it from the node's
//! settings. Two things a connection asks of the node at run time are
//! traits over shared state instead of copies: the limit of a channel a
//! record names ([`ChannelLookup`]) and whether an authenticated key may
//! connect ([`Authorizer`]). Nothing here changes after a connection starts.

use std::sync::Arc;
use std::time::Duration;

use shoal_crypto::{HandshakeConfig, Identity, PublicKey};
use shoal_wire::ChunkLimits;

use crate::clock::Clock;

/// What the connection needs to know about a channel.
#[derive(Clone, Copy, Debug)]
pub struct ChannelLimit {
    /// Largest message (after decompression), bytes.
    pub max_size: usize,
}

/// Looks up a channel's limits; `None` = not registered.
pub trait ChannelLookup: Send + Sync {
    fn limit(&self, channel: u32) -> Option<ChannelLimit>;
}

/// Decides whether an authenticated key may connect (the engine's peer sets).
pub type Authorizer = Arc<dyn Fn(&PublicKey) -> bool + Send + Sync>;

/// Per-connection settings, shared by every connection of a node.
#[derive(Clone)]
pub struct ConnectionConfig {
    /// This node's signing identity.
    pub identity: Identity,
    /// Namespace, clock bounds and timeout of the handshake.
    pub handshake: Arc<HandshakeConfig>,
    /// Largest frame body (sealed records and tag) sent or accepted once
    /// established.
    pub max_frame_body: usize,
    /// Bytes of sealed frames handed to the driver per
    /// [`poll_transmit`](super::Connection::poll_transmit).
    pub max_write_batch: usize,
    /// A connection with no input for this long is closed.
    pub idle_timeout: Duration,
    /// How often an established connection pings (and gives back idle
    /// buffers).
    pub ping_interval: Duration,
    /// Bounds of reassembly (bytes and messages in progress, smallest part).
    pub chunk_limits: ChunkLimits,
    /// Hard cap on queued outgoing messages (the application-side backlog is
    /// enforced before a message gets here; this bounds internal senders).
    pub max_queued: usize,
    /// Hard cap on the payload bytes of queued outgoing messages, internal
    /// ones included (RPC responses, handler replies); one message is always
    /// taken into an empty queue.
    pub max_queued_bytes: usize,
    /// Monotonic-to-wall-clock mapping for the handshake's timestamps.
    pub clock: Clock,
    /// Stream limits, when the node registered a stream channel; `None`:
    /// connections carry no streams.
    pub streams: Option<shoal_wire::stream::StreamConfig>,
}
