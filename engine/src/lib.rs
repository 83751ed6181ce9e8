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
//! - [`network`]: [`Network`] / [`NetworkHandle`]: start, the running
//!   node, shutdown.
//! - `control`: the control shard (accept, dial, discovery gossip, [`open`]
//!   mode, peer-set changes) as sans-IO parts and the loop between them.
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
//!
//! # Unsafe code
//! Only `driver` holds `unsafe` (the io_uring submissions, the provided
//! receive-buffer ring, the probe); the rest of the crate denies it.
//!
//! The hidden `fuzzing` module (feature `fuzzing`) holds the fuzz target
//! bodies for discovery and Kademlia; `fuzz/` runs them under libFuzzer and
//! `tests/corpus_replay.rs` replays the committed corpus.
#![deny(unsafe_code)]

mod channel_spec;
pub mod channels;
pub mod clock;
pub mod config;
pub mod connection;
mod control;
pub mod discovery;
#[allow(unsafe_code)]
mod driver;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod inbox;
pub mod kademlia;
mod limiters;
pub mod metrics;
pub mod network;
pub use control::open;
pub mod oracle;
pub mod peers;
mod placement;
pub mod queue_depth;
pub mod rpc;
mod shard;
mod shared;
pub(crate) mod wait;
mod waker;

/// Fault injection for shoal's own tests (feature `test-hooks`, which only
/// the workspace's dev-dependencies turn on; never part of a node build).
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod test_hooks {
    /// Makes the io_uring probe fail on this thread from now on (`on`), so
    /// that a `Backend::Auto` network started here falls back to epoll with
    /// `fallback="forced"`.
    pub fn force_io_uring_probe_failure(on: bool) {
        crate::driver::probe::force_failure(on);
    }

    /// Makes data shard `shard` of `net` fail as if its driver hit an I/O
    /// error. Returns false if there is no such shard or its queue is full.
    pub fn fail_shard(net: &crate::NetworkHandle, shard: usize) -> bool {
        net.shard_link(shard)
            .is_some_and(|l| l.send(crate::shard::Command::Fail).is_ok())
    }
}

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
