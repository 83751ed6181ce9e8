//! The receive path: frames in, events out.
//!
//! # Design
//! Buffered input (see `recv_buf`) is split into frames by the
//! [`FrameDecoder`]. Before the handshake completes, frames go to the
//! handshake, and no frame over [`HANDSHAKE_MAX_FRAME`] is accepted. Once
//! established, a frame is opened in place and its records are handed out as
//! `Bytes` slices of the decrypted frame (no copy), reassembled by the
//! [`ChunkAssembler`] when a message came in parts, and decompressed when it
//! was compressed.
//!
//! Events are produced lazily: [`Connection::poll_event`] reads one record
//! at a time and decodes a new frame only when the last one is used up. A
//! 64 KiB frame of small messages thus becomes each message's event just
//! before the shard delivers it, while its bytes are in cache, and a driver
//! that stops pulling events (the application is slow) stops consuming
//! input: backpressure, not buffering.
//!
//! # Security
//! Every byte from the peer is hostile. The decoder refuses lengths over the
//! frame limit before allocating; records, chunks and decompression are
//! bounded by the channel's max message size and the connection's reassembly
//! budget; any violation closes the connection with a [`CloseCause`] that
//! names it. Nothing here panics on the peer's data.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shoal_crypto::PublicKey;
use shoal_wire::{compress, ChunkAssembler, FrameDecoder, Pong, Record, RecordKind, RecordReader};

use super::close::{CONFIRMATION_AFTER_HANDSHAKE, UNREGISTERED_CHANNEL};
use super::recv_buf::LARGE_RECORD;
use super::{CloseCause, Connection, ConnectionConfig, ControlOut, State};

/// Largest frame accepted before the handshake completes. Handshake frames
/// are a few hundred bytes; an unauthenticated peer must not make us buffer
/// a full data frame (`max_frame_body`) per connection.
pub const HANDSHAKE_MAX_FRAME: usize = 1024;

/// What a connection reports to its driver.
#[derive(Debug)]
pub enum Event {
    /// Both key confirmations verified: the peer is authenticated.
    Established { peer: PublicKey },
    /// A whole message (reassembled, decompressed) on a channel.
    Message {
        kind: RecordKind,
        channel: u32,
        request_id: u64,
        status: u32,
        payload: Bytes,
    },
    /// A discovery / routing record for the control shard.
    Control(Record),
    /// A pong answering one of our pings, with the round trip.
    Pong { nonce: u64, rtt: Duration },
    /// The connection is over; emitted once.
    Closed(CloseCause),
}

/// The receive path's state.
pub(super) struct Inbound {
    pub(super) decoder: FrameDecoder,
    assembler: ChunkAssembler,
    /// The opened frame being read, one record per
    /// [`Connection::poll_event`].
    pub(super) records: Option<RecordReader>,
    /// Plaintext length of that frame and records read from it so far.
    frame_len: usize,
    frame_records: usize,
    /// The last whole frame averaged at least [`LARGE_RECORD`] bytes per
    /// record (see [`Connection::has_large_records`]).
    pub(super) large_records: bool,
}

impl Inbound {
    pub(super) fn new(cfg: &ConnectionConfig) -> Self {
        Self {
            decoder: FrameDecoder::new(cfg.max_frame_body.min(HANDSHAKE_MAX_FRAME)),
            assembler: ChunkAssembler::new(cfg.chunk_limits),
            records: None,
            frame_len: 0,
            frame_records: 0,
            large_records: false,
        }
    }

    /// Drops what is being decoded and reassembled (the connection ended).
    pub(super) fn clear(&mut self) {
        self.assembler.clear();
        self.records = None;
    }
}

impl Connection {
    /// The next event, decoding at most one more frame to produce it.
    pub fn poll_event(&mut self, now: Instant) -> Option<Event> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Some(ev);
            }
            if self.is_closed() {
                return None;
            }
            if let Some(records) = self.rx.records.as_mut() {
                match records.next() {
                    Some(Ok(rec)) => {
                        self.rx.frame_records += 1;
                        self.handle_record(rec, now);
                    }
                    Some(Err(e)) => {
                        self.rx.records = None;
                        self.fail(CloseCause::Record(e));
                    }
                    None => {
                        let rx = &mut self.rx;
                        rx.records = None;
                        rx.large_records = rx.frame_len >= LARGE_RECORD * rx.frame_records.max(1);
                    }
                }
                continue;
            }
            match self.rx.decoder.decode() {
                Ok(Some(body)) => self.handle_frame(body, now),
                Ok(None) => return None,
                Err(e) => self.fail(CloseCause::Frame(e)),
            }
        }
    }

    /// Bytes reassembly copied since the last call (multi-part messages;
    /// see [`ChunkAssembler::take_copied_bytes`]).
    pub fn poll_reassembly_copied_bytes(&mut self) -> u64 {
        self.rx.assembler.take_copied_bytes()
    }

    fn handle_frame(&mut self, mut body: BytesMut, now: Instant) {
        match &mut self.state {
            State::Closed => {}
            State::Handshaking(hs) => {
                let authorize = self.authorize.clone();
                let unix = self.cfg.clock.unix_ms(now);
                let result = hs.handle_frame(&mut body, unix, &mut |pk: &PublicKey| authorize(pk));
                if let Err(e) = result {
                    self.fail(CloseCause::Handshake(e));
                    return;
                }
                self.pull_handshake_output();
                self.complete_handshake(now);
            }
            State::Established { opener, .. } => {
                let n = match opener.open_in_place(&mut body) {
                    Ok(n) => n,
                    Err(e) => {
                        self.fail(CloseCause::Cipher(e));
                        return;
                    }
                };
                body.truncate(n);
                self.rx.frame_len = n;
                self.rx.frame_records = 0;
                self.rx.records = Some(RecordReader::new(body.freeze()));
            }
        }
    }

    /// Moves the handshake's frames to the output.
    pub(super) fn pull_handshake_output(&mut self) {
        if let State::Handshaking(hs) = &mut self.state {
            while let Some(frame) = hs.poll_transmit() {
                self.out.extend_from_slice(&frame);
            }
        }
    }

    /// Once both confirmations verified: established, with full-size frames.
    fn complete_handshake(&mut self, now: Instant) {
        let complete = matches!(&self.state, State::Handshaking(hs) if hs.is_complete());
        if !complete {
            return;
        }
        let State::Handshaking(hs) = std::mem::replace(&mut self.state, State::Closed) else {
            return;
        };
        match hs.into_session() {
            Ok(session) => {
                let peer = session.peer.clone();
                self.state = State::Established {
                    peer: session.peer,
                    sealer: session.sealer,
                    opener: session.opener,
                };
                self.timers.last_rx = now;
                self.timers.last_ping = now;
                self.rx.decoder.set_max_body(self.cfg.max_frame_body);
                self.start_streams();
                self.events.push_back(Event::Established { peer });
            }
            Err(e) => self.fail(CloseCause::Handshake(e)),
        }
    }

    fn handle_record(&mut self, rec: Record, now: Instant) {
        if self.peer_streams.is_none() {
            self.peer_streams = Some(matches!(
                rec,
                Record::Stream(shoal_wire::stream::StreamRecord::Limits { .. })
            ));
        }
        match rec {
            Record::Data(d) => self.handle_data(RecordKind::Data, d),
            Record::RpcRequest(d) => self.handle_data(RecordKind::RpcRequest, d),
            Record::RpcResponse(d) => self.handle_data(RecordKind::RpcResponse, d),
            Record::Ping(p) => {
                // Pongs are tiny and answer the peer's liveness check; a peer
                // flooding pings is bounded by the control queue cap.
                if self.tx.control.len() < self.cfg.max_queued {
                    self.tx
                        .control
                        .push_back(ControlOut::Pong(Pong { nonce: p.nonce }));
                }
            }
            Record::Pong(p) => self.handle_pong(p.nonce, now),
            Record::Close(c) => self.handle_close_record(c, now),
            Record::Stream(rec) => self.handle_stream_record(rec),
            Record::KeyConfirmation(_) => {
                self.fail(CloseCause::Protocol(CONFIRMATION_AFTER_HANDSHAKE))
            }
            rec @ (Record::BitVec(_)
            | Record::Peers(_)
            | Record::FindNode(_)
            | Record::Nodes(_)) => {
                self.events.push_back(Event::Control(rec));
            }
        }
    }

    fn handle_data(&mut self, kind: RecordKind, data: shoal_wire::Data) {
        let Some(limit) = self.channels.limit(data.channel) else {
            // Responses route by request id, not channel registration.
            if kind != RecordKind::RpcResponse {
                self.fail(CloseCause::Protocol(UNREGISTERED_CHANNEL));
                return;
            }
            let max = self.cfg.chunk_limits.max_in_progress_bytes;
            return self.assemble(kind, data, max);
        };
        self.assemble(kind, data, limit.max_size)
    }

    fn assemble(&mut self, kind: RecordKind, data: shoal_wire::Data, max_size: usize) {
        match self.rx.assembler.push(kind, data, max_size) {
            Ok(None) => {}
            Ok(Some(m)) => {
                let payload = if m.compressed {
                    match compress::decompress(&m.payload, max_size) {
                        Ok(p) => p,
                        Err(e) => {
                            self.fail(CloseCause::Decompress(e.to_string()));
                            return;
                        }
                    }
                } else {
                    m.payload
                };
                self.events.push_back(Event::Message {
                    kind: m.kind,
                    channel: m.channel,
                    request_id: m.request_id,
                    status: m.status,
                    payload,
                });
            }
            Err(e) => self.fail(CloseCause::Chunk(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use shoal_crypto::HandshakeError;
    use shoal_wire::{encode_header, FrameError};

    use super::super::testing::{allow_all, cfg, key, pair, pump, Chans};
    use super::super::{Authorizer, Outgoing, Priority};
    use super::*;

    #[test]
    fn unregistered_channel_closes_the_connection() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send(
            Outgoing::data(42, Bytes::from_static(b"?"), false),
            Priority::Low,
            None,
        )
        .unwrap();
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert!(
            eb.iter()
                .any(|e| matches!(e, Event::Closed(CloseCause::Protocol(_)))),
            "{eb:?}"
        );
        assert!(b.is_closed());
    }

    #[test]
    fn corrupted_frame_closes_with_a_cipher_error() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send(
            Outgoing::data(1, Bytes::from_static(b"hello"), false),
            Priority::Low,
            None,
        )
        .unwrap();
        let mut bytes = a.poll_transmit().unwrap().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        b.handle_input(&bytes, t0);
        let ev = b.poll_event(t0);
        assert!(
            matches!(ev, Some(Event::Closed(CloseCause::Cipher(_)))),
            "{ev:?}"
        );
        // Sticky: nothing more comes out, even with more input.
        b.handle_input(&[0, 0, 0, 1, 0], t0);
        assert!(b.poll_event(t0).is_none());
    }

    #[test]
    fn oversized_frame_length_is_refused_before_allocating() {
        let t0 = Instant::now();
        let (_a, mut b) = pair(t0);
        b.handle_input(&[0xff, 0xff, 0xff, 0xff], t0);
        let ev = b.poll_event(t0);
        assert!(
            matches!(
                ev,
                Some(Event::Closed(CloseCause::Frame(
                    FrameError::TooLarge { .. }
                )))
            ),
            "{ev:?}"
        );
        assert!(b.buffer_capacity() < 1 << 20);
    }

    #[test]
    fn a_frame_larger_than_a_handshake_message_is_refused_before_the_handshake() {
        let t0 = Instant::now();
        let mut b = Connection::dialee(cfg(2, t0), Arc::new(Chans), allow_all(), t0);
        // Within max_frame_body (4096 here), but no handshake frame is this big.
        b.handle_input(&encode_header(HANDSHAKE_MAX_FRAME + 1), t0);
        let ev = b.poll_event(t0);
        assert!(
            matches!(
                ev,
                Some(Event::Closed(CloseCause::Frame(FrameError::TooLarge { len, max })))
                    if len == (HANDSHAKE_MAX_FRAME + 1) as u64 && max == HANDSHAKE_MAX_FRAME
            ),
            "{ev:?}"
        );
        assert!(b.buffer_capacity() < 64, "nothing was buffered for it");
        // Established connections take full-size frames (the pair test
        // sends 60 kB messages in 4 KiB frames).
        let (a2, b2) = pair(t0);
        assert_eq!(b2.rx.decoder.max_body(), 4096);
        assert_eq!(a2.rx.decoder.max_body(), 4096);
    }

    #[test]
    fn unauthorized_dialer_never_establishes() {
        let t0 = Instant::now();
        let mut a = Connection::dialer(cfg(1, t0), Arc::new(Chans), allow_all(), key(2), t0);
        let deny: Authorizer = Arc::new(|_| false);
        let mut b = Connection::dialee(cfg(2, t0), Arc::new(Chans), deny, t0);
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert!(
            matches!(
                &eb[..],
                [Event::Closed(CloseCause::Handshake(
                    HandshakeError::Unauthorized
                ))]
            ),
            "{eb:?}"
        );
    }
}
