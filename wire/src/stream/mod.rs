//! Streams: ordered, reliable, flow-controlled byte streams multiplexed on
//! one connection, as a sans-IO state machine, and their records.
//!
//! # Design
//!
//! [`Streams`] owns every stream of one connection. It is driven the
//! quinn-proto way: the application's calls are mutators
//! ([`open`](Streams::open), [`write`](Streams::write),
//! [`finish`](Streams::finish), [`reset`](Streams::reset),
//! [`stop`](Streams::stop), [`read`](Streams::read),
//! [`close_all`](Streams::close_all)), the peer's records come in through
//! [`handle_record`](Streams::handle_record), and the outputs are pulled:
//! [`poll_transmit`](Streams::poll_transmit) (the next [`StreamRecord`] to
//! send, within a byte budget) and [`poll_event`](Streams::poll_event)
//! (an [`Event`] for the application). There is no clock: streams ride on
//! an ordered, reliable, authenticated connection, so nothing is
//! retransmitted and liveness is the connection's idle timeout.
//!
//! Streams are bidirectional. Either side opens one with a channel; its id
//! carries the opener in the low bit ([`Side`], as in QUIC), and each side
//! numbers its streams 0, 1, 2, … in order, so an id is never chosen twice
//! and a peer's id tells at once whether the stream is live, was released
//! or was never opened.
//!
//! Flow control is credit-based, per stream and per connection, like QUIC
//! and HTTP/2. Each side first sends `Limits` (its per-stream window, its
//! connection window, how many streams the peer may open); every stream
//! starts with the per-stream window of credit in each direction. Credit is
//! an absolute offset (`StreamCredit`, `ConnectionCredit`): it only grows,
//! so a duplicate or stale grant is harmless. A receiver re-grants a window
//! when the application has consumed half of it (quinn, yamux), so a
//! reader keeping up never stalls the sender. `write` accepts at most the
//! credit left (stream, connection) and the room left in the send buffer
//! ([`StreamConfig::send_buffer`]), then [`WriteError::Blocked`] until an
//! [`Event::Writable`]. Stream slots are credit too (`StreamsCredit`, a
//! total count): a released peer-opened stream gives its slot back.
//!
//! Ending: `finish` sends `Finish` after the pending bytes (the reader sees
//! [`ReadOutcome::Finished`]); `reset(code)` drops the pending bytes and
//! sends `Reset` (the reader's next read is [`ReadError::Reset`]);
//! `stop(code)` drops what was received, discards what still arrives and
//! sends `Stop`, which the sender answers with a `Reset` of the same code
//! ([`Event::Stopped`], then [`WriteError::Stopped`]). `Finish` and `Reset`
//! carry the final size, checked against what arrived. A stream is
//! released once both halves ended and the application saw the end of its
//! reading half.
//!
//! Output interleaves: `poll_transmit` gives control records first, then
//! one `Data` record of at most [`StreamConfig::max_record_payload`] bytes
//! (round-robin over streams), so the connection can ask for one stream
//! record between its high-priority messages and a bulk stream delays them
//! by at most one record.
//!
//! # Security
//!
//! What a hostile peer can make us hold, whatever it sends:
//! - buffered stream bytes: at most [`StreamConfig::stream_window`] per
//!   stream and [`StreamConfig::connection_window`] in all (data beyond the
//!   credit we granted is a [`Violation`]). Received payloads are copied
//!   out of the frame (into blocks of at most 64 KiB, handed to the reader
//!   without another copy), so a record of a few bytes cannot keep a whole
//!   frame alive; a stream's buffer holds at most its content plus one
//!   block;
//! - streams: at most [`StreamConfig::max_streams`] opened by the peer at
//!   once (more is a [`Violation`]), plus as many of ours;
//! - events: at most a handful per live stream (each kind is raised at
//!   most once until the application acts on it);
//! - queued control records: flags on live streams, no queue of its own.
//!
//! Every breach of the protocol (data past the credit, after the end or
//! out of order, a stream never opened, a wrong final size, a second
//! `Limits`) is a typed [`Violation`]: every stream fails and the
//! connection is to be closed. Records a conforming peer can send in a
//! race (`Stop` or `StreamCredit` for a stream we already released) are
//! ignored; `Data`, `Finish` or `Reset` for a released stream cannot come
//! from a conforming peer over an ordered transport (the stream was
//! released only after the peer's own end) and is a violation. Stream
//! record bytes are parsed in [`record`] (typed errors, never a panic).
//!
//! What a hostile peer can still do: hold its windows full and never read
//! (costing us at most the windows above, and our writers stay blocked),
//! open its full quota of streams, and send credit it never honours.
//!
//! # Not provided
//!
//! No priorities between streams (round-robin), no stream-level timeouts
//! (the connection's idle timeout), no per-channel policy (the engine
//! refuses an `Event::Opened` on an unregistered channel by resetting and
//! stopping it), no 0-RTT data before `Limits`, no metrics (the engine
//! counts [`Violation::label`]).

mod config;
pub mod record;
mod recv;
mod send;
mod streams;
#[cfg(test)]
mod tests;

pub use config::{StreamConfig, StreamConfigError};
pub use record::{
    max_data_payload, Side, StreamId, StreamRecord, StreamRecordError, StreamRecordView,
    STREAM_KIND,
};
pub use streams::Streams;

use crate::message::CloseReason;

/// Something the application is to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer opened `id` on `channel`.
    Opened { id: StreamId, channel: u32 },
    /// Data arrived on `id` after a read found none (or for the first
    /// time).
    Readable { id: StreamId },
    /// A write refused as [`WriteError::Blocked`] may succeed now.
    Writable { id: StreamId },
    /// The peer finished its half of `id`: reads return the rest, then
    /// [`ReadOutcome::Finished`].
    Finished { id: StreamId },
    /// The peer reset its half of `id`.
    Reset { id: StreamId, code: u32 },
    /// The peer stopped reading `id`: our half is reset with `code`.
    Stopped { id: StreamId, code: u32 },
    /// An [`OpenError::TooManyStreams`] refusal may succeed now.
    CanOpen,
    /// The connection is gone: `id` failed.
    Lost { id: StreamId, reason: CloseReason },
}

/// What [`Streams::read`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were copied (0 only for an empty buffer).
    Data(usize),
    /// The peer finished and everything was read.
    Finished,
}

/// Why [`Streams::open`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The peer's stream credit or our `max_streams` is used up (or the
    /// peer's `Limits` did not arrive yet): wait for [`Event::CanOpen`].
    #[error("too many streams open to this peer")]
    TooManyStreams,
    /// The connection is gone.
    #[error("connection lost: {0:?}")]
    ConnectionLost(CloseReason),
}

/// Why a write, `finish` or `reset` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// No credit or send-buffer room: wait for [`Event::Writable`].
    #[error("stream blocked by flow control")]
    Blocked,
    /// The peer stopped reading with this code.
    #[error("stream stopped by the peer with code {0}")]
    Stopped(u32),
    /// Our half was finished or reset already.
    #[error("stream already finished or reset")]
    Closed,
    /// Never opened, or released.
    #[error("unknown stream")]
    UnknownStream,
    /// The connection is gone.
    #[error("connection lost: {0:?}")]
    ConnectionLost(CloseReason),
}

/// Why a read or `stop` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Nothing buffered yet: wait for [`Event::Readable`].
    #[error("no stream data buffered")]
    Blocked,
    /// The peer reset its half with this code.
    #[error("stream reset by the peer with code {0}")]
    Reset(u32),
    /// We stopped reading this stream.
    #[error("stream stopped")]
    Closed,
    /// Never opened, or released.
    #[error("unknown stream")]
    UnknownStream,
    /// The connection is gone.
    #[error("connection lost: {0:?}")]
    ConnectionLost(CloseReason),
}

/// A breach of the stream protocol by the peer: the connection is to be
/// closed (see the module docs, # Security).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A stream record before the peer's `Limits`.
    #[error("stream record before limits")]
    LimitsMissing,
    /// A second `Limits`.
    #[error("limits sent twice")]
    DuplicateLimits,
    /// An `Open` with our initiator bit, a reused id or one out of order.
    #[error("unexpected open of {0}")]
    UnexpectedOpen(StreamId),
    /// An `Open` beyond the streams we granted.
    #[error("{0} exceeds the granted stream count")]
    TooManyStreams(StreamId),
    /// A record for a stream never opened.
    #[error("record for unknown {0}")]
    UnknownStream(StreamId),
    /// `Data`, `Finish` or `Reset` for a stream already released.
    #[error("data for closed {0}")]
    ClosedStream(StreamId),
    /// `Data`, `Finish` or `Reset` after the peer's own `Finish`/`Reset`.
    #[error("data after the end of {0}")]
    DataAfterFinish(StreamId),
    /// `Data` not starting where the previous one ended.
    #[error("{id}: data at offset {got}, expected {expected}")]
    OffsetMismatch {
        id: StreamId,
        expected: u64,
        got: u64,
    },
    /// A final size other than the bytes that arrived.
    #[error("{id}: final size {got}, received {expected}")]
    FinalSizeMismatch {
        id: StreamId,
        expected: u64,
        got: u64,
    },
    /// `Data` past the stream credit we granted.
    #[error("{0}: data beyond the granted stream credit")]
    StreamCreditExceeded(StreamId),
    /// `Data` past the connection credit we granted.
    #[error("data beyond the granted connection credit")]
    ConnectionCreditExceeded,
}

impl Violation {
    /// A short, fixed label for metrics and close reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Violation::LimitsMissing => "stream_limits_missing",
            Violation::DuplicateLimits => "stream_limits_twice",
            Violation::UnexpectedOpen(_) => "stream_unexpected_open",
            Violation::TooManyStreams(_) => "stream_too_many",
            Violation::UnknownStream(_) => "stream_unknown",
            Violation::ClosedStream(_) => "stream_closed",
            Violation::DataAfterFinish(_) => "stream_data_after_finish",
            Violation::OffsetMismatch { .. } => "stream_offset_mismatch",
            Violation::FinalSizeMismatch { .. } => "stream_final_size_mismatch",
            Violation::StreamCreditExceeded(_) => "stream_credit_exceeded",
            Violation::ConnectionCreditExceeded => "stream_connection_credit_exceeded",
        }
    }
}
