//! # shoal
//!
//! Authenticated, encrypted peer-to-peer messaging for validators: one
//! thread per core moves every connection's bytes (io_uring, epoll where
//! io_uring is unavailable), and the application sends and receives on
//! numbered channels.
//!
//! Everything an embedder uses is at this crate's root; `docs/api.md`
//! states what each call guarantees, costs, and does when a queue is full
//! or the network shuts down.
//!
//! # Two nodes, one message each way
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use shoal::{ChannelConfig, Config, Ed25519Signer, Network, Priority, Signer};
//!
//! let loopback = Some(([127, 0, 0, 1], 0).into());
//! let (ka, kb) = (Ed25519Signer::generate(), Ed25519Signer::generate());
//! let peers = vec![ka.public_key().clone(), kb.public_key().clone()];
//!
//! // Build: the network and its oracle (who may connect, where they listen).
//! let (mut net_a, oracle_a) = Network::new(Config::local(loopback).with_identity(Arc::new(ka)))?;
//! let (mut net_b, oracle_b) = Network::new(Config::local(loopback).with_identity(Arc::new(kb)))?;
//! // Register channels before starting.
//! let (tx_a, rx_a) = net_a.register(ChannelConfig::new(1))?;
//! let (tx_b, rx_b) = net_b.register(ChannelConfig::new(1))?;
//! oracle_a.register(0, peers.clone());
//! oracle_b.register(0, peers.clone());
//!
//! let b = net_b.start()?;
//! let a = net_a.start()?;
//! oracle_a.add_address(b.public_key(), b.local_addr().unwrap()); // a dials b
//! assert!(a.wait_peers(Duration::from_secs(10), |p| p.contains(&b.public_key())));
//! assert!(b.wait_peers(Duration::from_secs(10), |p| p.contains(&a.public_key())));
//!
//! // A send never waits: it reports who took the message.
//! let report = tx_a.send(&b.public_key(), Bytes::from_static(b"ping"), Priority::High);
//! assert_eq!(report.accepted().collect::<Vec<_>>(), vec![&b.public_key()]);
//! assert_eq!(rx_b.recv_blocking()?, (a.public_key(), Bytes::from_static(b"ping")));
//!
//! // Waiting for room is explicit; `.blocking()` on a thread, `.await` in a task.
//! tx_b.send_wait(&a.public_key(), Bytes::from_static(b"pong"), Priority::Low)
//!     .blocking()
//!     .result()?;
//! assert_eq!(rx_a.recv().blocking()?.1, Bytes::from_static(b"pong"));
//!
//! a.shutdown(Duration::from_secs(1));
//! b.shutdown(Duration::from_secs(1));
//! assert!(rx_a.recv_blocking().is_err(), "closed once shut down");
//! # Ok(()) }
//! ```
//!
//! # The pieces
//! - [`Network`] (built from a [`Config`], with its [`Oracle`]) registers
//!   channels ([`ChannelConfig`]) and in-shard handlers ([`Network::serve`]),
//!   then starts as a [`NetworkHandle`]: peers, [`Events`], ping, open-mode
//!   lookups, shutdown.
//! - [`Sender::send`] never waits and returns a [`SendReport`];
//!   [`Sender::send_wait`] waits for room; [`Sender::request`] waits for a
//!   response. Every wait is a [`Wait`]: `.await` it on any executor, or
//!   `.blocking()` on a plain thread.
//! - [`Receiver`]: `recv().await`, a `futures::Stream`, or the
//!   blocking `recv_blocking` / `recv_timeout` / `try_recv`.
//! - Identities: [`Ed25519Signer`] behind the [`Signer`] trait,
//!   [`PublicKey`]s for peers.
//! - Byte streams ([`streams`]): [`Network::streams`] registers a stream
//!   channel and gives its [`StreamListener`]; [`NetworkHandle::open_stream`]
//!   opens one to a peer; [`SendStream`] / [`RecvStream`] are `std::io`
//!   and tokio `AsyncWrite` / `AsyncRead` handles with flow control.
//! - Application tasks on the shards ([`tasks`]):
//!   [`NetworkHandle::spawn_on`] runs a `!Send` future on a shard's own
//!   thread; its [`tasks::Ctx`] sends, receives, serves requests and sleeps
//!   there, so a round trip between two nodes' tasks, each on the shard
//!   holding their connection, touches no other thread.
//! - [`config`] holds every setting with its default; [`metrics`] the
//!   Prometheus metrics.

pub use shoal_engine::tasks;
pub use shoal_engine::{
    config, metrics, Backend, BroadcastError, ChannelConfig, Config, Deliveries, Delivery,
    DisconnectReason, Ed25519Signer, Error, Event, Events, GossipConfig, GossipSender, GossipStats,
    HandlerResult, Identity, LookupResult, MessageId, Metrics, Network, NetworkHandle, Oracle,
    PlaceError, Preset, Priority, PublicKey, Quota, Receiver, Recipients, RecvError, RequestError,
    RouteConfig, RouteError, RouteSender, RouteStats, RpcStatus, SendError, SendReport, Sender,
    Signer, Verdict, Wait, DEFAULT_CAPACITY, EVENT_CAPACITY,
};
pub use shoal_engine::{
    streams, IncomingStream, RecvStream, SendStream, StreamError, StreamListener,
};

/// The crates below the facade, for shoal's own binary, tests and benches.
#[doc(hidden)]
pub use shoal_crypto as crypto;
#[doc(hidden)]
pub use shoal_engine as engine;
#[doc(hidden)]
pub use shoal_wire as wire;
