//! Why and how a connection ends.
//!
//! # Design
//! [`CloseCause`] names every way a connection can end; each is a metric
//! label ([`CloseCause::label`]), and [`CloseCause::is_peer_misbehavior`]
//! sorts out the few that prove the peer broke the protocol.
//!
//! The lifecycle is sticky: the first fatal error or close wins and every
//! later one is a no-op. Two ways to end:
//! - **Orderly** ([`Connection::close`], or the peer's Close record): the
//!   queued messages are still written, then our Close record; we keep
//!   reading (and delivering) until the peer's Close arrives, so neither
//!   side loses what the other had queued. Ends when both Close records
//!   were exchanged, or at [`CLOSE_TIMEOUT`].
//! - **At once** ([`Connection::abort`], a protocol violation, a timeout, a
//!   socket error): queued messages are dropped (counted in
//!   [`Connection::dropped_on_close`], their queue-depth shares given back).
//!
//! Either way [`Event::Closed`] is reported exactly once, and the queue
//! depth is closed so that waiting senders return.

use std::time::{Duration, Instant};

use shoal_crypto::{CipherError, HandshakeError};
use shoal_wire::{ChunkError, Close, CloseReason, FrameError, RecordError};

use super::{Connection, Event, State};

/// How long an orderly close waits for the peer's Close record.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection ended. Each variant is a metric label ([`CloseCause::label`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseCause {
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("record cipher: {0}")]
    Cipher(#[from] CipherError),
    #[error("bad record: {0}")]
    Record(#[from] RecordError),
    #[error("bad chunk: {0}")]
    Chunk(#[from] ChunkError),
    #[error("decompression refused: {0}")]
    Decompress(String),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("no traffic within the idle timeout")]
    IdleTimeout,
    #[error("output made no progress within the write timeout")]
    WriteTimeout,
    #[error("closed by peer: {0:?}")]
    Remote(CloseReason),
    #[error("closed locally: {0:?}")]
    Local(CloseReason),
    #[error("i/o: {0}")]
    Io(String),
    #[error("stream protocol: {0}")]
    Stream(shoal_wire::stream::Violation),
}

/// [`CloseCause::Protocol`]: a second key confirmation.
pub(super) const CONFIRMATION_AFTER_HANDSHAKE: &str = "key confirmation after handshake";
/// [`CloseCause::Protocol`]: a record for a channel we have not registered.
pub(super) const UNREGISTERED_CHANNEL: &str = "record for an unregistered channel";

impl CloseCause {
    /// Whether this close proves that the *peer* broke the protocol: the
    /// offending input decrypted and authenticated under the session keys
    /// (so only the peer could have sent it), and no honest peer sends it
    /// whatever its limits, settings or version. This is what may start a
    /// [`crate::config::AdmissionSettings::misbehavior_cooldown`].
    ///
    /// Not: anything an on-path attacker can inject without the keys (a bad
    /// length prefix, a frame that fails to open, a reset), handshake
    /// failures (the key is not proven), and violations of *our* limits or
    /// of what *this* version knows (a message over our channel limit, our
    /// reassembly budget or minimum chunk size, a decompression bound, a
    /// channel we did not register, a record kind from a newer version).
    /// The matches are exhaustive on purpose: a new error must be sorted.
    pub fn is_peer_misbehavior(&self) -> bool {
        match self {
            CloseCause::Handshake(_)
            | CloseCause::Frame(_)
            | CloseCause::Cipher(_)
            | CloseCause::Decompress(_)
            | CloseCause::IdleTimeout
            | CloseCause::WriteTimeout
            | CloseCause::Remote(_)
            | CloseCause::Local(_)
            | CloseCause::Io(_) => false,
            CloseCause::Record(e) => match e {
                RecordError::UnknownKind(_) => false,
                RecordError::Truncated
                | RecordError::TooLong { .. }
                | RecordError::Decode(_)
                | RecordError::Empty
                | RecordError::Stream(_) => true,
            },
            // Data past granted credit, a reused id, a wrong final size:
            // what no conforming peer sends whatever its settings.
            CloseCause::Stream(_) => true,
            CloseCause::Chunk(e) => match e {
                ChunkError::TooLarge { .. }
                | ChunkError::BudgetExhausted
                | ChunkError::ChunkTooSmall
                | ChunkError::InconsistentTotal
                // Ours: the connection hands the assembler data records only.
                | ChunkError::NotData(_) => false,
                ChunkError::ZeroParts
                | ChunkError::PartOutOfRange { .. }
                | ChunkError::Duplicate { .. }
                | ChunkError::OutOfOrder { .. }
                | ChunkError::UnknownMessage { .. }
                | ChunkError::HeaderMismatch
                | ChunkError::LengthMismatch => true,
            },
            CloseCause::Protocol(why) => match *why {
                CONFIRMATION_AFTER_HANDSHAKE => true,
                UNREGISTERED_CHANNEL => false,
                _ => false,
            },
        }
    }

    /// A short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            CloseCause::Handshake(e) => match e {
                HandshakeError::Timeout => "handshake_timeout",
                HandshakeError::Unauthorized => "unauthorized",
                HandshakeError::BadSignature => "bad_signature",
                HandshakeError::StaleTimestamp | HandshakeError::FutureTimestamp => "bad_timestamp",
                HandshakeError::BadConfirmation => "bad_confirmation",
                _ => "handshake_failed",
            },
            CloseCause::Frame(FrameError::TooLarge { .. }) => "frame_too_large",
            CloseCause::Frame(_) => "bad_frame",
            CloseCause::Cipher(_) => "decrypt_failed",
            CloseCause::Record(_) => "bad_record",
            CloseCause::Chunk(ChunkError::BudgetExhausted) => "chunk_budget",
            CloseCause::Chunk(ChunkError::TooLarge { .. }) => "message_too_large",
            CloseCause::Chunk(_) => "bad_chunk",
            CloseCause::Decompress(_) => "decompress_refused",
            CloseCause::Protocol(_) => "protocol_violation",
            CloseCause::IdleTimeout => "idle_timeout",
            CloseCause::WriteTimeout => "write_timeout",
            CloseCause::Remote(_) => "remote_close",
            CloseCause::Local(CloseReason::Replaced) => "replaced",
            CloseCause::Local(CloseReason::Shutdown) => "shutdown",
            CloseCause::Local(CloseReason::Unauthorized) => "deauthorized",
            CloseCause::Local(_) => "local_close",
            CloseCause::Io(_) => "io_error",
            CloseCause::Stream(v) => v.label(),
        }
    }
}

/// A connection's close lifecycle (see the module docs).
#[derive(Default)]
pub(super) struct Closing {
    /// Our Close record, waiting to be encoded after the queued messages.
    pub(super) queued: Option<Close>,
    pub(super) sent: bool,
    pub(super) received: bool,
    /// Why we are closing (set when the close starts, reported when it ends).
    pub(super) cause: Option<CloseCause>,
    pub(super) since: Option<Instant>,
    reported: bool,
    /// A close because another connection to the same peer replaced this
    /// one began (either side); stays set after the close completes.
    replaced: bool,
    /// Once closed: the cause's metric label.
    label: Option<&'static str>,
    /// The close cause was [`CloseCause::is_peer_misbehavior`].
    for_misbehavior: bool,
    /// Application messages still queued when the connection closed
    /// (accepted, never written).
    dropped: usize,
}

impl Connection {
    /// The label of the cause a close under way began with (or ended with).
    pub fn closing_label(&self) -> Option<&'static str> {
        self.close
            .cause
            .as_ref()
            .map(CloseCause::label)
            .or(self.close.label)
    }

    /// The metric label of the cause this connection closed with.
    pub fn close_label(&self) -> Option<&'static str> {
        self.close.label
    }

    /// Whether the connection closed because the peer provably broke the
    /// protocol ([`CloseCause::is_peer_misbehavior`]).
    pub fn is_closed_for_misbehavior(&self) -> bool {
        self.close.for_misbehavior
    }

    /// Application messages that were queued when the connection closed
    /// (accepted by `send` with a share, never written).
    pub fn dropped_on_close(&self) -> usize {
        self.close.dropped
    }

    /// True once a close because this connection was replaced by another
    /// one to the same peer has begun (either side decided).
    pub fn is_replaced(&self) -> bool {
        self.close.replaced
    }

    /// Driver-side failure (socket error, EOF). A close already under way
    /// keeps its cause.
    pub fn handle_io_error(&mut self, err: String) {
        let cause = match self.close.cause.take() {
            Some(c) => c,
            None => CloseCause::Io(err),
        };
        self.out.clear();
        self.fail(cause);
    }

    /// Starts an orderly close (see the module docs). Before the handshake
    /// completed there is nothing to flush: the connection closes at once.
    pub fn close(&mut self, reason: CloseReason, now: Instant) {
        if !self.is_open() {
            return;
        }
        if !self.is_established() {
            self.fail(CloseCause::Local(reason));
            return;
        }
        self.close.queued = Some(Close {
            reason: reason as u32,
            detail: String::new(),
        });
        self.close.replaced = reason == CloseReason::Replaced;
        self.close.cause = Some(CloseCause::Local(reason));
        self.close.since = Some(now);
        self.fail_streams(reason);
    }

    /// Closes at once without flushing queued messages.
    pub fn abort(&mut self, cause: CloseCause) {
        self.fail(cause);
    }

    /// The peer's Close record: answered with ours after what we have
    /// queued, unless we began closing first.
    pub(super) fn handle_close_record(&mut self, close: Close, now: Instant) {
        self.close.received = true;
        if self.close.cause.is_none() {
            let reason = CloseReason::from_u32(close.reason);
            self.close.replaced = reason == CloseReason::Replaced;
            self.close.cause = Some(CloseCause::Remote(reason));
            self.close.since = Some(now);
            self.fail_streams(reason);
            self.close.queued = Some(Close {
                reason: CloseReason::Normal as u32,
                detail: String::new(),
            });
        }
        if self.close.sent {
            self.finish_close();
        }
    }

    /// Whether the orderly close has waited [`CLOSE_TIMEOUT`] for the peer.
    pub(super) fn close_overdue(&self, now: Instant) -> bool {
        self.close
            .since
            .is_some_and(|t| now.saturating_duration_since(t) >= CLOSE_TIMEOUT)
    }

    /// The orderly close is over: closed with the cause it began with.
    pub(super) fn finish_close(&mut self) {
        let cause = self
            .close
            .cause
            .take()
            .unwrap_or(CloseCause::Local(CloseReason::Normal));
        self.fail(cause);
    }

    /// Ends the connection with `cause` (once; later calls do nothing).
    /// Everything it holds is released: queued messages were not written,
    /// so their queue-depth shares go back (and they are counted as
    /// dropped), and the depth is closed.
    pub(super) fn fail(&mut self, cause: CloseCause) {
        if self.close.reported {
            return;
        }
        self.state = State::Closed;
        let dropped = self.tx.clear();
        if let Some(d) = self.tx.depth() {
            d.close();
        }
        self.close.dropped += dropped;
        self.close.label = Some(cause.label());
        self.close.for_misbehavior = cause.is_peer_misbehavior();
        self.rx.clear();
        self.streams = None;
        self.events.clear();
        self.close.reported = true;
        self.events.push_back(Event::Closed(cause));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;
    use shoal_crypto::CipherError;

    use super::super::testing::{messages, pair, pump};
    use super::super::{Outgoing, Priority, QueueFull};
    use super::*;

    #[test]
    fn only_authenticated_violations_no_honest_peer_commits_are_misbehavior() {
        let misbehavior = [
            CloseCause::Record(RecordError::Truncated),
            CloseCause::Record(RecordError::TooLong {
                len: 9,
                remaining: 1,
            }),
            CloseCause::Record(RecordError::Decode("bad varint".into())),
            CloseCause::Record(RecordError::Empty),
            CloseCause::Chunk(ChunkError::ZeroParts),
            CloseCause::Chunk(ChunkError::PartOutOfRange {
                part: 2,
                total_parts: 2,
            }),
            CloseCause::Chunk(ChunkError::Duplicate { message_id: 1 }),
            CloseCause::Chunk(ChunkError::UnknownMessage {
                message_id: 1,
                part: 1,
            }),
            CloseCause::Chunk(ChunkError::HeaderMismatch),
            CloseCause::Chunk(ChunkError::LengthMismatch),
            CloseCause::Protocol(CONFIRMATION_AFTER_HANDSHAKE),
        ];
        for c in &misbehavior {
            assert!(c.is_peer_misbehavior(), "{c:?}");
        }
        let not = [
            // Injectable without the keys, or not the peer's doing.
            CloseCause::Frame(FrameError::TooLarge {
                len: 1 << 30,
                max: 1,
            }),
            CloseCause::Frame(FrameError::Empty),
            CloseCause::Cipher(CipherError::Open),
            CloseCause::Handshake(HandshakeError::BadSignature),
            CloseCause::IdleTimeout,
            CloseCause::Io("reset".into()),
            CloseCause::Remote(CloseReason::Shutdown),
            CloseCause::Local(CloseReason::Replaced),
            // Our limits, or what this version knows.
            CloseCause::Chunk(ChunkError::TooLarge {
                total_len: 2,
                max: 1,
            }),
            CloseCause::Chunk(ChunkError::BudgetExhausted),
            CloseCause::Chunk(ChunkError::ChunkTooSmall),
            CloseCause::Chunk(ChunkError::InconsistentTotal),
            CloseCause::Decompress("over the bound".into()),
            CloseCause::Protocol(UNREGISTERED_CHANNEL),
            CloseCause::Record(RecordError::UnknownKind(200)),
        ];
        for c in &not {
            assert!(!c.is_peer_misbehavior(), "{c:?}");
        }
    }

    #[test]
    fn orderly_close_flushes_both_queues_before_closing() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send(
            Outgoing::data(1, Bytes::from_static(b"last words"), false),
            Priority::Low,
            None,
        )
        .unwrap();
        b.send(
            Outgoing::data(1, Bytes::from_static(b"reply in flight"), false),
            Priority::Low,
            None,
        )
        .unwrap();
        a.close(CloseReason::Replaced, t0);
        assert_eq!(
            a.send(
                Outgoing::data(1, Bytes::from_static(b"late"), false),
                Priority::Low,
                None
            ),
            Err(QueueFull),
            "no sends after close starts"
        );
        let (ea, eb) = pump(&mut a, &mut b, t0);
        assert!(messages(eb).contains(&(1, Bytes::from_static(b"last words"))));
        assert!(messages(ea).contains(&(1, Bytes::from_static(b"reply in flight"))));
        assert!(a.is_closed() && b.is_closed());
    }
}
