//! # shoal-engine
//!
//! Per-core data shards that move authenticated, encrypted traffic between
//! peers, on io_uring (default) or epoll, behind the channel API that
//! validators embed.
//!
//! # Architecture
//! - [`connection`]: the sans-IO connection state machine (handshake,
//!   records, chunking, priorities, timers). No sockets, no clock.
//! - `shard`: one thread per core owning its connections; backend-independent.
//! - `driver`: io_uring and epoll drivers that only move bytes.
//! - [`network`]: [`Network`] / [`NetworkHandle`], the control shard
//!   (accept, dial, deauthorize), shutdown.
//! - [`channels`]: [`Sender`] / [`Receiver`] with explicit backpressure.
//! - [`oracle`]: authorized peer sets and known addresses.
//! - [`peers`]: the lock-free table of established connections.
//! - [`config`], [`metrics`], [`clock`].
//!
//! # Threads
//! Application threads talk to shards through bounded queues; a shard
//! sleeping in the kernel is woken only when it sleeps (one syscall per
//! burst, never per message). A connection lives on one shard for its whole
//! life: decryption, reassembly, dispatch, encoding and encryption all happen
//! there, with no locks on the per-message path.

mod accept_rate;
pub mod channels;
pub mod clock;
pub mod config;
pub mod connection;
pub(crate) mod cooldown;
pub mod discovery;
mod driver;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod inbound_limit;
pub(crate) mod inbox;
pub mod kademlia;
pub mod metrics;
pub mod network;
pub mod open;
pub mod oracle;
pub mod peers;
pub mod queue_depth;
pub mod rpc;
mod shard;
mod shared;
pub(crate) mod wait;
mod waker;

/// io_uring receive-buffer pools alive in this process (0 after every
/// network shut down).
pub fn live_buffer_pools() -> usize {
    driver::pool::live_pools()
}

pub use channels::{Receiver, Recipients, RecvError, SendReport, Sender};
pub use config::{Backend, Config};
pub use error::{Error, SendError};
pub use governor::Quota;
pub use network::{Network, NetworkHandle};
pub use oracle::Oracle;
pub use peers::PeerEvent;
pub use rpc::{Handler, HandlerResult, RequestError};
pub use shoal_crypto::{Ed25519Signer, Identity, PublicKey};
pub use shoal_wire::RpcStatus;
