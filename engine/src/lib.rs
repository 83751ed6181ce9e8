//! # shoal-engine
//!
//! Per-core data shards that move authenticated, encrypted traffic between
//! peers, on io_uring (default) or epoll, behind the channel API that
//! validators embed. The facade crate `shoal` re-exports this API at its
//! root; its crate doc and `docs/api.md` describe it call by call.
//!
//! # The API
//! - [`Network`]: built from a [`Config`] with its [`Oracle`]; channels are
//!   registered ([`ChannelConfig`]) and served by in-shard handlers
//!   ([`Network::serve`]) before [`Network::start`] returns the running
//!   [`NetworkHandle`] (peers, [`Events`], ping, lookups, shutdown).
//! - [`Sender`] / [`Receiver`]: one send that never waits and reports per
//!   recipient ([`SendReport`]), an explicit wait for room
//!   ([`Sender::send_wait`], a [`SendWait`]), requests; every other wait is
//!   a [`Wait`]. Both: `.await` on any executor, `.blocking()` on a plain
//!   thread.
//! - [`Config`] and its sections ([`config`]), [`Metrics`] ([`metrics`]).
//!
//! # Architecture
//! - `connection`: the sans-IO connection state machine (handshake,
//!   records, chunking, priorities, timers). No sockets, no clock.
//! - `shard`: one thread per core owning its connections; backend-independent.
//! - `driver`: io_uring and epoll drivers that only move bytes.
//! - `network`: start, the running node, shutdown.
//! - `control`: the control shard (accept, dial, discovery gossip, open
//!   mode, peer-set changes) as sans-IO parts and the loop between them.
//! - `channels` / `receiver`: sending and receiving with explicit
//!   backpressure; `wait`: the one future every wait is.
//! - `oracle`: authorized peer sets and known addresses.
//! - `peers`: the lock-free table of established connections.
//! - `gossip`: the sans-IO broadcast core (Plumtree with one tree per
//!   origin, origin-signed messages, application verdicts) and its
//!   simulation; no engine thread drives it yet, so it is not in the API.
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
//! `tests/corpus_replay.rs` replays the committed corpus. The hidden
//! `__private` module holds what shoal's own benches and doc examples need
//! of the internals; it is not part of the API.
#![deny(unsafe_code)]

mod channel_config;
mod channel_spec;
mod channels;
mod clock;
pub mod config;
mod connection;
mod control;
// The fuzz target bodies (feature `fuzzing`) drive discovery and Kademlia
// through more of their sans-IO API than the control shard uses.
#[cfg_attr(not(feature = "fuzzing"), allow(dead_code, unused_imports))]
mod discovery;
#[allow(unsafe_code)]
mod driver;
mod error;
mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
// Parts of the core are used only by its tests and simulation.
#[allow(dead_code)]
mod gossip;
mod inbox;
#[cfg_attr(not(feature = "fuzzing"), allow(dead_code, unused_imports))]
mod kademlia;
mod limiters;
pub mod metrics;
mod network;
mod overlay;
mod route;
use control::open;
mod oracle;
mod peers;
mod placement;
mod queue_depth;
mod receiver;
mod rpc;
mod send_report;
mod send_wait;
mod shard;
mod shared;
pub mod streams;
pub mod tasks;
mod wait;
mod waker;

pub use channel_config::{ChannelConfig, DEFAULT_CAPACITY};
pub use channels::Sender;
pub use config::{Backend, Config, Preset};
pub use connection::Priority;
pub use error::{Error, SendError};
pub use events::{DisconnectReason, Event, Events, EVENT_CAPACITY};
pub use gossip::{BroadcastError, GossipConfig, GossipSender, GossipStats, MessageId, Verdict};
pub use governor::Quota;
pub use metrics::Metrics;
pub use network::{Network, NetworkHandle};
pub use open::LookupResult;
pub use oracle::Oracle;
pub use overlay::{Deliveries, Delivery};
pub use placement::PlaceError;
pub use receiver::{Receiver, RecvError};
pub use route::{RouteConfig, RouteError, RouteSender, RouteStats};
pub use rpc::{HandlerResult, RequestError};
pub use send_report::{Recipients, SendReport};
pub use send_wait::{SendWait, SendWaitFuture};
pub use shoal_crypto::{Ed25519Signer, Identity, PublicKey, Signer};
pub use shoal_wire::RpcStatus;
pub use streams::{IncomingStream, RecvStream, SendStream, StreamError, StreamListener};
pub use wait::Wait;

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

    /// io_uring receive-buffer pools alive in this process (0 after every
    /// network shut down).
    pub fn live_buffer_pools() -> usize {
        crate::driver::pool::live_pools()
    }
}

#[doc(hidden)]
pub mod __private;
