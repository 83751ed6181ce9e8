//! The connection's byte streams: the sans-IO [`Streams`] of
//! `shoal_wire::stream`, fed with the peer's stream records and drained
//! into frames.
//!
//! # Design
//! A connection carries streams only when its node registered a stream
//! channel ([`ConnectionConfig::streams`]): the [`Streams`] is created,
//! boxed, when the handshake completes, so idle connections of a node
//! without streams pay one pointer. The shard drives the streams directly
//! ([`Connection::streams`]): the application's calls are its mutators and
//! their events its `poll_event`, read after each batch of input.
//!
//! Frames interleave: control records, then high-priority messages, then
//! stream records and low-priority messages, which take turns at going
//! first from one frame to the next, so a bulk stream delays a
//! high-priority message by at most the frame being built and neither
//! streams nor bulk messages starve the other.
//!
//! Any close fails every stream: an orderly close starts by failing them
//! (no stream record follows our Close), and the closed connection drops
//! their buffers.
//!
//! # Security
//! Who takes streams: a node with stream channels opens its first frame
//! with its `Limits`, so the peer's first record tells whether it takes
//! streams ([`Connection::peer_has_streams`]); a node without them sends no
//! stream record at all (so peers that predate streams are unaffected) and
//! keeps no stream state: the peer's `Limits` and credit are ignored,
//! an `Open` is [`Violation::TooManyStreams`] and
//! any other record for a stream [`Violation::UnknownStream`] (a
//! conforming peer opens nothing against a `max_streams` of 0). Every [`Violation`] closes the
//! connection with its label.
//!
//! [`ConnectionConfig::streams`]: super::ConnectionConfig::streams

use shoal_wire::stream::{Side, StreamRecord, Streams, Violation};
use shoal_wire::{CloseReason, RecordWriter};

use super::{CloseCause, Connection};

impl Connection {
    /// The connection's streams, once established on a node with stream
    /// channels (`None` before, after the close, and without them).
    pub fn streams(&mut self) -> Option<&mut Streams> {
        self.streams.as_deref_mut()
    }

    /// Whether the peer takes streams: `Some(true)` once its first record
    /// (its `Limits`) arrived, `Some(false)` when its first record was
    /// anything else, `None` before.
    pub fn peer_has_streams(&self) -> Option<bool> {
        self.peer_streams
    }

    /// Creates the streams at establishment (if configured).
    pub(super) fn start_streams(&mut self) {
        if let Some(cfg) = self.cfg.streams {
            self.streams = Some(Box::new(Streams::new(self.side, cfg)));
            self.limits_first = true;
        }
    }

    /// Fails every stream (`reason`) at the start of a close.
    pub(super) fn fail_streams(&mut self, reason: CloseReason) {
        if let Some(s) = self.streams.as_mut() {
            s.close_all(reason);
        }
    }

    pub(super) fn handle_stream_record(&mut self, rec: StreamRecord) {
        let result = match self.streams.as_mut() {
            Some(s) => s.handle_record(rec),
            None => match rec {
                StreamRecord::Limits { .. }
                | StreamRecord::ConnectionCredit { .. }
                | StreamRecord::StreamsCredit { .. } => Ok(()),
                StreamRecord::Open { id, .. } => Err(Violation::TooManyStreams(id)),
                StreamRecord::Data { id, .. }
                | StreamRecord::Finish { id, .. }
                | StreamRecord::Reset { id, .. }
                | StreamRecord::Stop { id, .. }
                | StreamRecord::StreamCredit { id, .. } => Err(Violation::UnknownStream(id)),
            },
        };
        if let Err(v) = result {
            self.fail(CloseCause::Stream(v));
        }
    }

    /// Whether the streams have a record to send.
    pub(super) fn streams_have_output(&self) -> bool {
        self.streams.as_ref().is_some_and(|s| s.has_transmit())
    }

    /// Bytes the streams will want to send soon (sizes the write batch).
    pub(super) fn streams_pending(&self) -> usize {
        self.streams.as_ref().map_or(0, |s| {
            usize::try_from(s.pending_bytes()).unwrap_or(usize::MAX)
        })
    }
}

/// Which side of a connection we are.
pub(super) fn side(dialer: bool) -> Side {
    if dialer {
        Side::Dialer
    } else {
        Side::Listener
    }
}

/// Appends the next stream record if it fits (our `Limits` first).
pub(super) fn fill_one(streams: &mut Streams, w: &mut RecordWriter<'_>) {
    if let Some(rec) = streams.poll_transmit(w.remaining()) {
        // Cannot fail: the record was chosen to fit what remains.
        let _ = rec.emit(w);
    }
}

/// Appends stream records to the frame `w` is building while they fit.
pub(super) fn fill(streams: &mut Streams, w: &mut RecordWriter<'_>) {
    while let Some(rec) = streams.poll_transmit(w.remaining()) {
        // Cannot fail: the record was chosen to fit what remains.
        if rec.emit(w).is_err() {
            debug_assert!(false, "a stream record larger than its budget");
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use shoal_wire::stream::{Event as StreamEvent, ReadOutcome};

    use super::super::testing::{allow_all, cfg, key, messages, pair, pump, Chans};
    use super::super::{Connection, Event, Outgoing, Priority};
    use super::*;

    fn drain_events(c: &mut Connection) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        while let Some(e) = c.streams().and_then(|s| s.poll_event()) {
            out.push(e);
        }
        out
    }

    #[test]
    fn a_stream_crosses_a_pair_in_order_and_ends() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let id = a.streams().unwrap().open(7).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut written, mut got) = (0, Vec::new());
        let mut finished = false;
        let mut peer_id = None;
        let mut buf = vec![0u8; 10_000];
        for _ in 0..10_000 {
            if written < data.len() {
                if let Ok(n) = a.streams().unwrap().write(id, &data[written..]) {
                    written += n;
                }
            } else if !finished {
                a.streams().unwrap().finish(id).unwrap();
                finished = true;
            }
            pump(&mut a, &mut b, t0);
            for e in drain_events(&mut b) {
                if let StreamEvent::Opened { id, channel } = e {
                    assert_eq!(channel, 7);
                    peer_id = Some(id);
                }
            }
            drain_events(&mut a);
            let Some(pid) = peer_id else { continue };
            match b.streams().unwrap().read(pid, &mut buf) {
                Ok(ReadOutcome::Data(n)) => got.extend_from_slice(&buf[..n]),
                Ok(ReadOutcome::Finished) => break,
                Err(_) => {}
            }
        }
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes arrive in order");
    }

    #[test]
    fn a_high_priority_message_overtakes_queued_stream_data() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let id = a.streams().unwrap().open(7).unwrap();
        // 512 KiB of credit: far more than one 4 KiB-frame write batch.
        let n = a.streams().unwrap().write(id, &[1u8; 512 * 1024]).unwrap();
        assert!(n > 64 * 1024, "{n}");
        let first = a.poll_transmit().unwrap();
        b.handle_input(&first, t0);
        a.send(
            Outgoing::data(1, Bytes::from_static(b"vote"), false),
            Priority::High,
            None,
        )
        .unwrap();
        let next = a.poll_transmit().unwrap();
        b.handle_input(&next, t0);
        let mut evs = Vec::new();
        while let Some(e) = b.poll_event(t0) {
            evs.push(e);
        }
        assert_eq!(messages(evs), vec![(1, Bytes::from_static(b"vote"))]);
        assert!(b.streams().unwrap().buffered_bytes() > 0);
        assert!(
            a.streams().unwrap().pending_bytes() > 0,
            "the stream data behind it was still queued"
        );
    }

    #[test]
    fn a_node_without_streams_sends_no_stream_record_and_an_open_is_a_violation() {
        let t0 = Instant::now();
        let mut cb = (*cfg(2, t0)).clone();
        cb.streams = None;
        let mut a = Connection::dialer(cfg(1, t0), Arc::new(Chans), allow_all(), key(2), t0);
        let mut b = Connection::dialee(Arc::new(cb), Arc::new(Chans), allow_all(), t0);
        pump(&mut a, &mut b, t0);
        assert!(b.streams().is_none());
        assert!(b.is_established() && a.is_established());
        // b's first record is not stream limits: a knows b takes no
        // streams, and a conforming peer opens none.
        assert_eq!(a.peer_has_streams(), None);
        b.ping(t0).unwrap();
        pump(&mut a, &mut b, t0);
        assert_eq!(a.peer_has_streams(), Some(false));
        assert_eq!(b.peer_has_streams(), Some(true));
        assert!(a.streams().unwrap().open(1).is_err());
        // A hostile one does anyway.
        b.handle_stream_record(StreamRecord::Open {
            id: shoal_wire::stream::StreamId(0),
            channel: 1,
        });
        let mut closed = None;
        while let Some(e) = b.poll_event(t0) {
            if let Event::Closed(c) = e {
                closed = Some(c);
            }
        }
        let c = closed.expect("closed");
        assert_eq!(c.label(), "stream_too_many");
        assert!(c.is_peer_misbehavior());
    }

    #[test]
    fn closing_fails_every_stream_and_frees_them() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let id = a.streams().unwrap().open(7).unwrap();
        a.streams().unwrap().write(id, b"abc").unwrap();
        a.close(CloseReason::Normal, t0);
        assert!(matches!(
            drain_events(&mut a)[..],
            [StreamEvent::Lost { id: lost, .. }] if lost == id
        ));
        pump(&mut a, &mut b, t0);
        assert!(a.is_closed() && b.is_closed());
        assert!(a.streams().is_none() && b.streams().is_none());
    }
}
