//! Byte streams: ordered, reliable, flow-controlled bytes between two
//! authenticated peers, multiplexed on their encrypted connection beside
//! its messages, for payloads that do not fit a message (state sync,
//! snapshots, catch-up).
//!
//! # Design
//! A stream channel is registered before start ([`crate::Network::streams`],
//! which gives its [`StreamListener`]); either side opens a stream on it
//! to a connected peer ([`crate::NetworkHandle::open_stream`]), and each
//! side gets a [`SendStream`] and a [`RecvStream`]. The protocol is the
//! sans-IO `shoal_wire::stream::Streams` the connection owns on its shard
//! (credit per stream and per connection, `finish` / `reset` / `stop`,
//! stream records interleaved with messages, see `connection::streams`);
//! the handles meet their shard in a `pipe`: two buffers of at most
//! `streams.window` bytes each, and the wake-ups between the two threads.
//!
//! Verbs: [`SendStream::write`] / [`SendStream::write_all`] (as much as
//! fits, waiting for room), [`SendStream::finish`], [`SendStream::reset`];
//! [`RecvStream::read`] (0 at the end), [`RecvStream::stop`]. Each is a
//! [`Wait`](crate::Wait) (`.await` or `.blocking()`); the handles are also
//! `std::io::Write` / `std::io::Read` (blocking) and tokio's `AsyncWrite` /
//! `AsyncRead`, so `std::io::copy` and `tokio::io::copy` work.
//!
//! Dropping a [`SendStream`] finishes it; dropping a [`RecvStream`]
//! stops it (code 0). Errors are sticky: once a half failed, every later
//! call returns the same [`StreamError`].
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::{Read, Write};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use shoal_engine::{Config, Ed25519Signer, Network, Signer};
//!
//! let loopback = Some(([127, 0, 0, 1], 0).into());
//! let (ka, kb) = (Ed25519Signer::generate(), Ed25519Signer::generate());
//! let peers = vec![ka.public_key().clone(), kb.public_key().clone()];
//! let (mut net_a, oracle_a) = Network::new(Config::local(loopback).with_identity(Arc::new(ka)))?;
//! let (mut net_b, oracle_b) = Network::new(Config::local(loopback).with_identity(Arc::new(kb)))?;
//! // Both take part in streams on channel 9; b accepts.
//! let _unused = net_a.streams(9, 4)?;
//! let listener = net_b.streams(9, 4)?;
//! oracle_a.register(0, peers.clone());
//! oracle_b.register(0, peers);
//! let (a, b) = (net_a.start()?, net_b.start()?);
//! oracle_a.add_address(b.public_key(), b.local_addr().unwrap());
//! assert!(a.wait_peers(Duration::from_secs(10), |p| p.len() == 1));
//!
//! let (mut send, _recv) = a.open_stream(&b.public_key(), 9).blocking()?;
//! let writer = std::thread::spawn(move || -> std::io::Result<()> {
//!     for _ in 0..64 {
//!         // std::io::Write (the inherent `write_all` is the `Wait` form).
//!         Write::write_all(&mut send, &[7u8; 16 * 1024])?;
//!     }
//!     Ok(()) // dropping `send` finishes the stream
//! });
//! let mut incoming = listener.accept().blocking().expect("a stream");
//! assert_eq!(incoming.peer, a.public_key());
//! let mut all = Vec::new();
//! incoming.recv.read_to_end(&mut all)?;
//! writer.join().unwrap()?;
//! assert_eq!(all.len(), 64 * 16 * 1024);
//! # a.shutdown(Duration::ZERO);
//! # b.shutdown(Duration::ZERO);
//! # Ok(()) }
//! ```
//!
//! # Costs and bounds
//! Received bytes are held twice at most: in the connection (at most
//! `streams.window` per stream, `streams.connection_window` in all) and in
//! the pipe (at most `streams.window`). So a peer that opens streams and
//! never reads costs at most 2 × `window` per stream, `max_streams`
//! streams. Written bytes wait in the pipe (at most `window`), then in the
//! connection (at most `streams.send_buffer` in all). Copies: the
//! application's buffer into the pipe, into the connection's send buffer,
//! into the frame (sealed in place); on the other side the frame's
//! payload into the connection's 64 KiB blocks, which the pipe takes as
//! slices, and from there into the reader's buffer. (Handing the pipe's
//! send bytes over as slices too was measured slower: every window written
//! then took a fresh, page-faulting allocation.)
//!
//! # Security
//! The peer's stream records are checked by `shoal_wire::stream`: data
//! beyond the credit we granted, after the end or for a stream never opened
//! is a protocol violation that closes the connection (its label in
//! `shoal_closes`). An open on a channel nobody registered, or when the
//! listener's backlog is full, is refused (reset and stopped with
//! [`REFUSED`]) and counted in `shoal_streams_refused`.
//!
//! # Not provided
//! Priorities between streams (round-robin), per-stream timeouts (the
//! connection's idle timeout), streams surviving a reconnect: a closed or
//! replaced connection fails its streams ([`StreamError::ConnectionLost`]).

mod handles;
pub(crate) mod pipe;

pub use handles::{IncomingStream, RecvStream, SendStream, StreamListener};

use crate::events::DisconnectReason;

/// The reset and stop code of a stream the receiving node refused (no
/// listener on its channel, or the listener's backlog full).
pub const REFUSED: u32 = u32::MAX;

/// Why a stream operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The peer is not connected (or its connection is closing).
    #[error("peer not connected")]
    NotConnected,
    /// The peer's stream count, or ours, is used up
    /// (`streams.max_streams`): retry once a stream ended.
    #[error("too many streams open to this peer")]
    TooManyStreams,
    /// The shard's command queue is full: retry.
    #[error("shard queue full")]
    Full,
    /// This node registered no stream channel, so its connections carry
    /// no streams: a node opens streams only once it registered one
    /// ([`crate::Network::streams`]), even if it never accepts any.
    #[error("this node has no stream channel")]
    UnknownChannel,
    /// The peer registered no stream channel: it takes no streams.
    #[error("the peer takes no streams")]
    PeerTakesNoStreams,
    /// The peer reset its sending half with this code ([`REFUSED`]: it
    /// refused the stream).
    #[error("stream reset by the peer with code {0}")]
    Reset(u32),
    /// The peer stopped reading with this code ([`REFUSED`]: it refused the
    /// stream).
    #[error("stream stopped by the peer with code {0}")]
    Stopped(u32),
    /// This half was finished, reset or stopped already.
    #[error("stream half already ended")]
    Closed,
    /// The connection carrying the stream ended.
    #[error("connection lost: {0}")]
    ConnectionLost(DisconnectReason),
}

impl From<StreamError> for std::io::Error {
    fn from(e: StreamError) -> Self {
        use std::io::ErrorKind;
        let kind = match e {
            StreamError::NotConnected => ErrorKind::NotConnected,
            StreamError::TooManyStreams | StreamError::Full => ErrorKind::WouldBlock,
            StreamError::UnknownChannel => ErrorKind::InvalidInput,
            StreamError::PeerTakesNoStreams => ErrorKind::ConnectionRefused,
            StreamError::Reset(_) => ErrorKind::ConnectionReset,
            StreamError::Stopped(_) | StreamError::Closed => ErrorKind::BrokenPipe,
            StreamError::ConnectionLost(_) => ErrorKind::ConnectionAborted,
        };
        std::io::Error::new(kind, e)
    }
}
