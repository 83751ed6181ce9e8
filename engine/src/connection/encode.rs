//! The transmit path: queued records in, sealed frames out.
//!
//! # Design
//! Frames are built in place in one output buffer: records are appended by
//! a [`RecordWriter`] up to the frame's plaintext budget (control records
//! first, then message parts as the queues hand them out, then our Close
//! record once the data queues are empty), the frame is sealed in place and
//! its length header written. Many small messages share a frame (one AEAD
//! call) and many frames share a write: [`Connection::poll_transmit`] fills
//! up to `max_write_batch` per call (one syscall).
//!
//! The whole batch is reserved up front from the queued payload: growing the
//! buffer frame by frame would copy it at every doubling (the previous batch
//! usually still belongs to the driver, so this is a fresh allocation).
//! Once a frame is sealed, the queue-depth shares of the messages it
//! completed are given back, once per frame rather than per message.

use bytes::Bytes;
use shoal_wire::{encode_header, RecordKind, RecordWriter, HEADER_LEN, MAX_DATA_OVERHEAD, TAG_LEN};

use super::{CloseCause, Connection, ControlOut, State};

impl Connection {
    /// True when [`Connection::poll_transmit`] would return bytes.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
            || (self.is_established()
                && (!self.tx.control.is_empty()
                    || !self.tx.is_empty()
                    || self.streams_have_output()
                    || self.close.queued.is_some()))
    }

    /// Sealed bytes to write, as many frames as fit in `max_write_batch`.
    /// The driver owns the returned buffer until written (io_uring keeps it
    /// alive while the kernel reads it) and writes it in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if let Err(e) = self.encode_frames() {
            self.fail(e);
        }
        if self.out.is_empty() {
            return None;
        }
        Some(self.out.split().freeze())
    }

    fn encode_frames(&mut self) -> Result<(), CloseCause> {
        if !self.is_established() {
            return Ok(());
        }
        let max_plain = self.cfg.max_frame_body - TAG_LEN;
        let queued = self.tx.queued_payload() + self.streams_pending();
        let frames = queued / max_plain + 1;
        let estimate = queued
            + self.tx.len() * MAX_DATA_OVERHEAD
            + frames * (HEADER_LEN + TAG_LEN)
            // Control records are small (a ping, a bit vector); a large one
            // just grows the buffer.
            + self.tx.control.len() * 64;
        if queued > 0 || !self.tx.control.is_empty() || self.streams_have_output() {
            self.out
                .reserve(estimate.min(self.cfg.max_write_batch + self.cfg.max_frame_body));
        }
        while self.out.len() + HEADER_LEN + TAG_LEN < self.cfg.max_write_batch {
            let start = self.out.len();
            self.out.extend_from_slice(&[0u8; HEADER_LEN]);
            let written = self.fill_frame(max_plain);
            if written == 0 {
                self.out.truncate(start);
                break;
            }
            self.out.extend_from_slice(&[0u8; TAG_LEN]);
            let State::Established { sealer, .. } = &mut self.state else {
                self.out.truncate(start);
                break;
            };
            sealer.seal_in_place(&mut self.out[start + HEADER_LEN..])?;
            self.tx.release_written();
            let header = encode_header(written + TAG_LEN);
            self.out[start..start + HEADER_LEN].copy_from_slice(&header);
        }
        if self.close.sent && self.close.received {
            // Both Close records exchanged; `out` still holds ours to write.
            self.finish_close();
        }
        Ok(())
    }

    /// Appends records to the current frame; returns plaintext bytes written.
    fn fill_frame(&mut self, budget: usize) -> usize {
        let chunk_size = self.chunk_size;
        let mut w = RecordWriter::new(&mut self.out, budget);
        if std::mem::take(&mut self.limits_first) {
            // Our stream limits open our first frame: the peer learns from
            // our first record whether we take streams (see `streams`).
            if let Some(s) = self.streams.as_deref_mut() {
                super::streams::fill_one(s, &mut w);
            }
        }
        while let Some(c) = self.tx.control.front() {
            let ok = match c {
                ControlOut::Ping(m) => w.push(RecordKind::Ping, m),
                ControlOut::Pong(m) => w.push(RecordKind::Pong, m),
                ControlOut::BitVec(m) => w.push(RecordKind::BitVec, m),
                ControlOut::Peers(m) => w.push(RecordKind::Peers, m),
                ControlOut::FindNode(m) => w.push(RecordKind::FindNode, m),
                ControlOut::Nodes(m) => w.push(RecordKind::Nodes, m),
            };
            if ok.is_err() {
                if w.written() == 0 {
                    // Cannot fit even in an empty frame: drop it (our own bug,
                    // bounded gossip sizes make this unreachable).
                    self.tx.control.pop_front();
                    continue;
                }
                return w.written();
            }
            self.tx.control.pop_front();
        }
        // High-priority messages, then stream records and low-priority
        // messages taking turns at going first (see `streams`).
        let mut high_only = true;
        let mut streams_done = false;
        self.streams_first = !self.streams_first;
        loop {
            if high_only && !self.tx.has_high() {
                high_only = false;
                if self.streams_first {
                    if let Some(s) = self.streams.as_deref_mut() {
                        super::streams::fill(s, &mut w);
                    }
                    streams_done = true;
                }
            }
            let Some(part) = self.tx.next_part(chunk_size) else {
                break;
            };
            if w.push_data(part.kind, &part.header, part.data).is_err() {
                break;
            }
            if !self.tx.part_written(chunk_size) {
                break;
            }
        }
        if !streams_done {
            if let Some(s) = self.streams.as_deref_mut() {
                super::streams::fill(s, &mut w);
            }
        }
        if self.tx.is_empty() {
            if let Some(close) = &self.close.queued {
                if w.push(RecordKind::Close, close).is_ok() {
                    self.close.queued = None;
                    self.close.sent = true;
                }
            }
        }
        w.written()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::super::testing::{messages, pair, pair_framed, pump};
    use super::super::{Outgoing, Priority};

    #[test]
    fn handshake_then_messages_both_ways_share_frames() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        for i in 0..100u32 {
            a.send(
                Outgoing::data(1, Bytes::from(i.to_be_bytes().to_vec()), false),
                Priority::Low,
                None,
            )
            .unwrap();
        }
        b.send(
            Outgoing::data(2, Bytes::from_static(b"pong"), false),
            Priority::Low,
            None,
        )
        .unwrap();
        // 100 small messages fit in one 4 KiB frame: one batch, one frame.
        let batch = a.poll_transmit().unwrap();
        assert!(
            batch.len() < 4096 + 4,
            "coalesced into one frame: {}",
            batch.len()
        );
        b.handle_input(&batch, t0);
        let (ea, eb) = pump(&mut a, &mut b, t0);
        let mut got = messages(eb);
        while let Some(e) = b.poll_event(t0) {
            got.extend(messages(vec![e]));
        }
        assert_eq!(got.len(), 100);
        for (i, (ch, p)) in got.iter().enumerate() {
            assert_eq!(*ch, 1);
            assert_eq!(&p[..], &(i as u32).to_be_bytes());
        }
        assert_eq!(messages(ea), vec![(2, Bytes::from_static(b"pong"))]);
    }

    #[test]
    fn the_smallest_valid_frame_chunks_messages_its_peer_accepts() {
        let t0 = Instant::now();
        let min = crate::config::MIN_FRAME_BODY;
        let (mut a, mut b) = pair_framed(t0, min);
        let big = Bytes::from((0..10_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        a.send(Outgoing::data(1, big.clone(), false), Priority::Low, None)
            .unwrap();
        let (_, eb) = pump(&mut a, &mut b, t0);
        let got = messages(eb);
        assert_eq!(got.len(), 1, "one message in ~10 parts, none refused");
        assert_eq!(got[0].1, big);
    }
}
