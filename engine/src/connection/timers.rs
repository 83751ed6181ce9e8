//! The connection's clocks: handshake deadline, keep-alive, idle timeout.
//!
//! # Design
//! Time is passed in; nothing here reads a clock. The driver (through the
//! shard) calls [`Connection::handle_timeout`] once
//! [`Connection::poll_timeout`] has passed:
//! - **Handshaking**: at the handshake deadline the connection fails with
//!   `HandshakeError::Timeout` (the handshake's own wall-clock check is
//!   consulted too, so both agree).
//! - **Established**: an orderly close that waited [`CLOSE_TIMEOUT`] for the
//!   peer ends; no input for `idle_timeout` closes with
//!   [`CloseCause::IdleTimeout`]; otherwise every `ping_interval` a ping goes
//!   out (its pong yields [`Event::Pong`] with the round trip) and idle
//!   buffers are given back, so an idle connection costs kilobytes, not a
//!   frame's worth.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use shoal_crypto::HandshakeError;
use shoal_wire::Ping;

use super::close::CLOSE_TIMEOUT;
use super::{CloseCause, Connection, ControlOut, Event, State};

/// See the module docs.
pub(super) struct Timers {
    /// Input last arrived (any input counts as traffic).
    pub(super) last_rx: Instant,
    pub(super) last_ping: Instant,
    /// Our ping waiting for its pong: nonce and when it went out.
    ping_outstanding: Option<(u64, Instant)>,
    ping_nonce: u64,
    handshake_deadline: Instant,
}

impl Timers {
    pub(super) fn new(now: Instant, handshake_timeout: Duration) -> Self {
        Self {
            last_rx: now,
            last_ping: now,
            ping_outstanding: None,
            ping_nonce: 0,
            handshake_deadline: now + handshake_timeout,
        }
    }
}

impl Connection {
    /// The earliest instant at which [`Connection::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = &self.timers;
        match &self.state {
            State::Closed => None,
            State::Handshaking(_) => Some(t.handshake_deadline),
            State::Established { .. } => {
                let idle = t.last_rx + self.cfg.idle_timeout;
                let ping = t.last_ping + self.cfg.ping_interval;
                let close = self.close.since.map(|t| t + CLOSE_TIMEOUT);
                Some(close.map_or(idle.min(ping), |c| c.min(idle).min(ping)))
            }
        }
    }

    /// Runs timers: handshake timeout, close timeout, idle timeout,
    /// keep-alive pings.
    pub fn handle_timeout(&mut self, now: Instant) {
        let unix = self.cfg.clock.unix_ms(now);
        match &mut self.state {
            State::Closed => {}
            State::Handshaking(hs) => {
                // The monotonic deadline is authoritative; the handshake's own
                // wall-clock check is consulted too so both agree.
                let expired = now >= self.timers.handshake_deadline;
                if let Err(e) = hs.handle_timeout(unix) {
                    self.fail(CloseCause::Handshake(e));
                } else if expired {
                    self.fail(CloseCause::Handshake(HandshakeError::Timeout));
                }
            }
            State::Established { .. } => {
                if self.close_overdue(now) {
                    self.finish_close();
                } else if now.saturating_duration_since(self.timers.last_rx)
                    >= self.cfg.idle_timeout
                {
                    self.fail(CloseCause::IdleTimeout);
                } else if now.saturating_duration_since(self.timers.last_ping)
                    >= self.cfg.ping_interval
                {
                    self.shrink();
                    self.ping(now);
                    self.timers.last_ping = now;
                }
            }
        }
    }

    /// Sends a ping now; the matching pong yields [`Event::Pong`]. `None`
    /// if it could not be queued (not established, or the control queue is
    /// full).
    pub fn ping(&mut self, now: Instant) -> Option<u64> {
        let t = &mut self.timers;
        t.ping_nonce = t.ping_nonce.wrapping_add(1);
        let nonce = t.ping_nonce;
        self.send_control(ControlOut::Ping(Ping { nonce })).ok()?;
        self.timers.ping_outstanding = Some((nonce, now));
        self.timers.last_ping = now;
        Some(nonce)
    }

    /// The peer's pong: reported if it answers our outstanding ping.
    pub(super) fn handle_pong(&mut self, nonce: u64, now: Instant) {
        if let Some((sent_nonce, sent)) = self.timers.ping_outstanding {
            if sent_nonce == nonce {
                self.timers.ping_outstanding = None;
                self.events.push_back(Event::Pong {
                    nonce,
                    rtt: now.saturating_duration_since(sent),
                });
            }
        }
    }

    /// Gives back the buffers the last large frames grew (once per ping
    /// interval of an idle connection).
    fn shrink(&mut self) {
        self.rx.decoder.shrink_if_idle();
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::super::testing::{allow_all, cfg, messages, pair, pump, Chans};
    use super::super::{Outgoing, Priority};
    use super::*;

    #[test]
    fn handshake_times_out_without_a_peer() {
        let t0 = Instant::now();
        let mut b = Connection::dialee(cfg(2, t0), Arc::new(Chans), allow_all(), t0);
        let deadline = b.poll_timeout().unwrap();
        assert_eq!(deadline, t0 + Duration::from_secs(5));
        b.handle_timeout(t0 + Duration::from_secs(4));
        assert!(!b.is_closed());
        b.handle_timeout(deadline);
        assert!(matches!(
            b.poll_event(deadline),
            Some(Event::Closed(CloseCause::Handshake(
                HandshakeError::Timeout
            )))
        ));
    }

    #[test]
    fn pings_keep_a_healthy_pair_alive_and_silence_times_out() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        // 30 s of healthy traffic in 1 s steps: pings answered, nobody idles out.
        let mut now = t0;
        for _ in 0..30 {
            now += Duration::from_secs(1);
            a.handle_timeout(now);
            b.handle_timeout(now);
            let (ea, eb) = pump(&mut a, &mut b, now);
            assert!(!ea
                .iter()
                .chain(eb.iter())
                .any(|e| matches!(e, Event::Closed(_))));
        }
        assert!(a.is_established() && b.is_established());
        // Now b goes silent: a closes at the idle timeout.
        let silent_from = now;
        loop {
            now += Duration::from_secs(1);
            a.handle_timeout(now);
            let _ = a.poll_transmit();
            if let Some(Event::Closed(c)) = a.poll_event(now) {
                assert_eq!(c, CloseCause::IdleTimeout);
                assert!(now - silent_from >= Duration::from_secs(10));
                break;
            }
            assert!(
                now - silent_from <= Duration::from_secs(11),
                "idle timeout missed"
            );
        }
    }

    #[test]
    fn an_idle_connection_gives_back_its_frame_buffers() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        a.send(
            Outgoing::data(1, Bytes::from(vec![7u8; 60_000]), false),
            Priority::Low,
            None,
        )
        .unwrap();
        let frames = a.poll_transmit().unwrap();
        // Half of the frames in: the receiver holds room for them and more.
        b.handle_input(&frames[..frames.len() / 2], t0);
        assert!(b.poll_event(t0).is_none());
        assert!(b.buffer_capacity() > 4096, "{}", b.buffer_capacity());
        b.handle_input(&frames[frames.len() / 2..], t0);
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert_eq!(messages(eb).len(), 1);
        // The next keep-alive tick releases them on both sides.
        let later = t0 + Duration::from_secs(3);
        a.handle_timeout(later);
        b.handle_timeout(later);
        assert!(a.buffer_capacity() < 4096, "{}", a.buffer_capacity());
        assert!(b.buffer_capacity() < 4096, "{}", b.buffer_capacity());
        // And the pair still works.
        let _ = pump(&mut a, &mut b, later);
        assert!(a.is_established() && b.is_established());
    }
}
