//! The receive buffer: how a driver gets bytes into the connection.
//!
//! # Design
//! The connection's [`FrameDecoder`](shoal_wire::FrameDecoder) owns one
//! receive buffer, sized for what the next read needs (a batch of small
//! frames, or the rest of one large frame body, so that a large body lands
//! in its own exactly sized allocation and is never moved). A driver puts
//! received bytes in one of three ways:
//!
//! - **Read into the buffer** (epoll): [`Connection::poll_read_len`]
//!   reserves room and says how much to read, the driver receives into
//!   [`Connection::read_buf_mut`]'s spare capacity, then calls
//!   [`Connection::handle_read`].
//! - **Lend the buffer** (io_uring, whose kernel receives asynchronously):
//!   [`Connection::poll_lend_buf`] hands the buffer out when a large frame
//!   body is pending or the last frame carried large records; until
//!   [`Connection::handle_returned_buf`] gives it back the connection
//!   decodes nothing new.
//! - **Copy in** from a pooled receive buffer: [`Connection::handle_input`].
//!
//! [`Connection::has_large_records`] is the hint for choosing between the
//! last two: copying large records out of a shared pool costs more than
//! receiving ahead saves, while for small records it is the other way
//! round. Every input counts as traffic for the idle timeout.
//!
//! Not provided: any policy about *when* to read; that is the shard's
//! (backpressure) and the driver's.

use std::time::Instant;

use bytes::BytesMut;

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

    /// Whether a large frame body is pending (see
    /// [`Connection::poll_lend_buf`]).
    pub fn has_large_body_pending(&self) -> bool {
        !self.is_closed() && self.rx.decoder.large_body_pending()
    }

    /// The receive buffer a driver may append to directly (after
    /// [`Connection::poll_read_len`] reserved room in it).
    pub fn read_buf_mut(&mut self) -> &mut BytesMut {
        self.rx.decoder.read_buf()
    }

    /// Reserves room in [`Connection::read_buf_mut`] for the next read and
    /// says how many bytes to read (`FrameDecoder::prepare_read`); zero when
    /// nothing should be read before the buffered input is processed.
    pub fn poll_read_len(&mut self, batch: usize) -> usize {
        if self.is_closed() {
            return 0;
        }
        self.rx.decoder.prepare_read(batch)
    }

    /// Bytes were appended to [`Connection::read_buf_mut`] at `now`.
    pub fn handle_read(&mut self, now: Instant) {
        self.timers.last_rx = now;
    }

    /// Lends the receive buffer to a driver whose kernel receives into it
    /// asynchronously (io_uring), when a large frame body is pending or the
    /// last frame carried [large records](Connection::has_large_records):
    /// the buffer with at least `len` bytes of spare capacity, and `len`
    /// (sized like an epoll read, [`Connection::poll_read_len`]). Until
    /// [`Connection::handle_returned_buf`] the connection decodes nothing
    /// new.
    ///
    /// Memory: a lent buffer stays lent until data arrives. For a connection
    /// with large records that goes quiet that is what `poll_read_len`
    /// reserved at the frame boundary (normally
    /// [`shoal_wire::frame::IDLE_READ`]-sized, at most `batch`) until the
    /// next small frame ends the large-records state: at the latest the pong
    /// to our next ping. The idle shrink at the ping after that releases it.
    pub fn poll_lend_buf(&mut self, batch: usize) -> Option<(BytesMut, usize)> {
        if self.is_closed() || !(self.rx.large_records || self.rx.decoder.large_body_pending()) {
            return None;
        }
        let len = self.rx.decoder.prepare_read(batch);
        (len > 0).then(|| (self.rx.decoder.take_read_buf(), len))
    }

    /// Gives back a buffer from [`Connection::poll_lend_buf`] with what was
    /// received into it at `now`.
    pub fn handle_returned_buf(&mut self, buf: BytesMut, now: Instant) {
        self.rx.decoder.restore_read_buf(buf);
        self.timers.last_rx = now;
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
