//! The receive buffer: how a driver gets bytes into the connection.
//!
//! # Design
//! The connection's [`FrameDecoder`](shoal_wire::FrameDecoder) owns one
//! receive buffer, sized for what the next read needs (a batch of small
//! frames, or the rest of one large frame body, so that a large body lands
//! in its own exactly sized allocation and is never moved). A driver puts
//! received bytes in one of two ways:
//!
//! - **Lend the buffer** for a read straight into it (epoll's `recv`, or
//!   io_uring's kernel receiving asynchronously):
//!   [`Connection::poll_lend_buf`] hands it out with room reserved for the
//!   read; until [`Connection::handle_returned_buf`] gives it back the
//!   connection decodes nothing new.
//! - **Copy in** from a pooled receive buffer: [`Connection::handle_input`].
//!
//! [`Connection::has_large_records`] and
//! [`Connection::has_large_body_pending`] are the hints for choosing
//! between the two where a driver has a pool: copying large records out of
//! a shared pool costs more than receiving ahead saves, while for small
//! records it is the other way round. Every input counts as traffic for the
//! idle timeout.
//!
//! Not provided: any policy about *when* or *how* to read; that is the
//! shard's read plan (backpressure, the choice of path) and the driver's.

use std::time::Instant;

use shoal_wire::ReadBuf;

use super::Connection;

/// Average record size from which a frame counts as carrying large records
/// ([`Connection::has_large_records`]). Measured on io_uring: 16 KiB
/// messages fanned out to 16 peers went ~9 % faster (medians of 4) received
/// straight into frame buffers; 1 KiB messages were even; 64 B messages
/// lost 12..35 % without the multishot receive into the pool.
pub const LARGE_RECORD: usize = 4096;

impl Connection {
    /// True when the driver should read more: nothing is waiting to be turned
    /// into events beyond one partial frame.
    pub fn wants_read(&self) -> bool {
        !self.is_closed() && self.events.is_empty() && self.rx.records.is_none()
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered_len(&self) -> usize {
        self.rx.decoder.buffered()
    }

    /// Whether the peer's last frame carried large records (at least
    /// [`LARGE_RECORD`] bytes each on average): large messages or chunks of
    /// them. A driver that can receive straight into the frame buffer should
    /// then do so for every receive ([`Connection::poll_lend_buf`] lends it)
    /// instead of receiving ahead into a shared pool.
    pub fn has_large_records(&self) -> bool {
        self.rx.large_records
    }

    /// Whether a large frame body is pending
    /// ([`FrameDecoder::large_body_pending`](shoal_wire::FrameDecoder::large_body_pending)):
    /// worth receiving straight into a lent buffer.
    pub fn has_large_body_pending(&self) -> bool {
        !self.is_closed() && self.rx.decoder.large_body_pending()
    }

    /// Lends the receive buffer for one read straight into it, with room
    /// reserved for the read ([`ReadBuf::want`] bytes at most); `None` once
    /// closed, or while the decoder wants a decode first. Until
    /// [`Connection::handle_returned_buf`] the connection decodes nothing
    /// new.
    ///
    /// Memory: a buffer lent to an asynchronous receive stays lent until
    /// data arrives. For a connection with large records that goes quiet
    /// that is what the decoder reserved at the frame boundary (normally
    /// [`shoal_wire::frame::IDLE_READ`]-sized, at most `batch`) until the
    /// next small frame ends the large-records state: at the latest the pong
    /// to our next ping. The idle shrink at the ping after that releases it.
    pub fn poll_lend_buf(&mut self, batch: usize) -> Option<ReadBuf> {
        if self.is_closed() {
            return None;
        }
        self.rx.decoder.lend(batch)
    }

    /// Gives back a buffer from [`Connection::poll_lend_buf`] with what was
    /// received into it at `now`; returns how many bytes that was.
    pub fn handle_returned_buf(&mut self, buf: ReadBuf, now: Instant) -> usize {
        let received = self.rx.decoder.feed_lent(buf);
        if received > 0 {
            self.timers.last_rx = now;
        }
        received
    }

    /// Copies received bytes in (for drivers that receive into pooled
    /// buffers). Ignored once closed.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if !self.is_closed() {
            self.rx.decoder.feed(data);
            self.timers.last_rx = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::super::testing::{messages, pair_framed, pump};
    use super::super::{Event, Outgoing, Priority};
    use super::*;

    /// The receive-path hint follows the last whole frame: frames of large
    /// messages set it, a frame of many small ones clears it again, and a
    /// frame still being read changes nothing.
    #[test]
    fn large_records_follows_the_last_frame() {
        let t0 = Instant::now();
        // Frames as large as the defaults (`pair`'s 4 KiB frames chunk a
        // large message into records just under 4 KiB).
        let (mut a, mut b) = pair_framed(t0, 64 * 1024 + 256);
        assert!(!b.has_large_records(), "handshake frames say nothing");
        for _ in 0..3 {
            a.send(
                Outgoing::data(1, Bytes::from(vec![1u8; 16 * 1024]), false),
                Priority::Low,
                None,
            )
            .unwrap();
        }
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert_eq!(messages(eb).len(), 3);
        assert!(b.has_large_records(), "16 KiB records");
        for i in 0..200u32 {
            a.send(
                Outgoing::data(1, Bytes::from(i.to_be_bytes().to_vec()), false),
                Priority::Low,
                None,
            )
            .unwrap();
        }
        let batch = a.poll_transmit().unwrap();
        b.handle_input(&batch, t0);
        // Half-way through the frame: still the previous frame's verdict.
        for _ in 0..100 {
            assert!(matches!(b.poll_event(t0), Some(Event::Message { .. })));
        }
        assert!(b.has_large_records(), "the frame is not finished");
        while b.poll_event(t0).is_some() {}
        assert!(!b.has_large_records(), "4-byte records");
        a.send(
            Outgoing::data(1, Bytes::from(vec![2u8; LARGE_RECORD]), false),
            Priority::Low,
            None,
        )
        .unwrap();
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert_eq!(messages(eb).len(), 1);
        assert!(
            b.has_large_records(),
            "one record of {LARGE_RECORD} bytes and a header"
        );
    }
}
