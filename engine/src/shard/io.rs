//! The shard's side of the I/O boundary: everything a driver asks the shard
//! about a connection's bytes.
//!
//! # Design
//! A driver ([`crate::driver`]) owns the sockets and moves bytes; every
//! decision about those bytes is made here, from the connection's state, and
//! handed to the driver as a plain value. In the order the driver's loop
//! meets them:
//! - **receive**: [`ShardCore::read_plan`] says how to receive for a
//!   connection next ([`ReadPlan`]); what arrived goes back through
//!   [`ShardCore::on_received`], which also turns it into events and
//!   delivers them. A driver that keeps a receive going between turns asks
//!   [`ShardCore::read_intent`] (the same decision, without lending a buffer)
//!   whether to keep or end it.
//! - **transmit**: [`ShardCore::move_dirty_to`] lists the connections to
//!   look at (output to write, or a receive to revisit; a driver adds one
//!   with [`ShardCore::mark_dirty`]); [`ShardCore::poll_transmit`] hands out
//!   sealed bytes and [`ShardCore::handle_sent`] reports progress.
//! - **close**: [`ShardCore::closing`] lists connections whose protocol
//!   ended; [`ShardCore::must_abort`] says whether to reset instead of
//!   flushing; the driver reports the socket gone with
//!   [`ShardCore::finish_close`].
//! - **sleep**: [`ShardCore::sleep_budget`] bounds the wait; the shard's
//!   waker ([`ShardCore::waker`]) carries the sleep handshake.
//!
//! # The read plan
//! The receive-buffer policy lives only here:
//! - A connection carrying small records receives ahead into the driver's
//!   buffer pool, if it has one ([`ReadAhead::Pool`], io_uring's multishot
//!   receive): receiving ahead is worth more to small records than the copy
//!   out of the pool costs (64 B messages lost 12–35 % without it).
//! - A connection with a large frame body pending, or whose last frame
//!   carried large records
//!   ([`crate::connection::Connection::has_large_records`]),
//!   receives straight into its frame buffer, sized by the frame decoder, so
//!   the bulk of the bytes is never copied in user space. A driver with no
//!   pool ([`ReadAhead::Never`], epoll) always receives this way.
//! - A paused connection (see the glossary in [`super`]: its receiver
//!   refused a message, it holds too much quota-held input, or it waits
//!   behind the connection it replaced) starts no receive, but one already
//!   going on may continue while the input it buffered stays under
//!   [`PAUSED_INPUT_LIMIT`] ([`ReadPlan::Hold`]): short pauses cost no cancel
//!   and re-arm, long ones stop reading (TCP backpressure) with the buffered
//!   input bounded per connection ([`ReadPlan::Stop`]). A closed connection,
//!   and a paused one carrying large records, stops too.
//!
//! Not here: sockets, readiness, completions and the buffer pool itself
//! (the drivers), and decoding (the connection and its frame decoder).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_wire::ReadBuf;

use super::close::note_misbehavior;
use super::{ShardCore, TIMER_GRANULARITY};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::waker::ShardWaker;

/// Input a paused connection may buffer before its receive is stopped (see
/// [the read plan](self#the-read-plan)).
pub(crate) const PAUSED_INPUT_LIMIT: usize = 256 * 1024;

/// What a driver can receive into besides a connection's own frame buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadAhead {
    /// A buffer pool shared by the shard's connections, which the kernel
    /// fills ahead of the shard asking (io_uring's provided buffers).
    Pool,
    /// Nothing: every read goes straight into the connection's buffer.
    Never,
}

/// How a driver receives for one connection next ([`ShardCore::read_plan`]).
#[derive(Debug)]
pub(crate) enum ReadPlan {
    /// Receive into the driver's buffer pool; hand the bytes to
    /// [`ShardCore::on_received`] as [`Arrived::Copied`].
    Pool,
    /// Receive at most [`ReadBuf::want`] bytes straight into this buffer (the
    /// connection's frame buffer), then give it back as [`Arrived::Into`],
    /// whatever the read's outcome: until then the connection decodes nothing.
    Into(ReadBuf),
    /// Start no receive now; one already going on may continue.
    Hold,
    /// Start no receive, and end one going on.
    Stop,
}

/// The decision of [`ShardCore::read_plan`] without lending a buffer
/// ([`ShardCore::read_intent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadIntent {
    /// See [`ReadPlan::Pool`].
    Pool,
    /// See [`ReadPlan::Into`].
    Direct,
    /// See [`ReadPlan::Hold`].
    Hold,
    /// See [`ReadPlan::Stop`].
    Stop,
}

impl ReadIntent {
    /// The plan starts a receive.
    #[inline]
    pub(crate) fn starts_read(self) -> bool {
        matches!(self, ReadIntent::Pool | ReadIntent::Direct)
    }

    /// A pool receive going on must end: the connection stops reading, or
    /// wants its bytes straight in its frame buffer.
    #[inline]
    pub(crate) fn ends_pool_receive(self) -> bool {
        matches!(self, ReadIntent::Direct | ReadIntent::Stop)
    }
}

/// What a receive brought ([`ShardCore::on_received`]).
pub(crate) enum Arrived<'a> {
    /// Bytes the driver received into its own (pool) buffer: copied in.
    Copied(&'a [u8]),
    /// The buffer of a [`ReadPlan::Into`], extended by what the read
    /// received (nothing, if it failed).
    Into(ReadBuf),
}

impl ShardCore {
    /// How the driver should receive for `key` next (see [the read
    /// plan](self#the-read-plan)). [`ReadPlan::Into`] lends the connection's
    /// frame buffer, sized like one read of `recv_buffer_size`.
    pub(crate) fn read_plan(&mut self, key: usize, ahead: ReadAhead) -> ReadPlan {
        match self.read_intent(key, ahead) {
            ReadIntent::Direct => {
                let batch = self.shared.config.io.recv_buffer_size;
                match self
                    .conns
                    .get_mut(key)
                    .and_then(|s| s.conn.poll_lend_buf(batch))
                {
                    Some(buf) => ReadPlan::Into(buf),
                    // The decoder wants a decode first: there is nothing to
                    // read into, but a pool can still receive ahead.
                    None if ahead == ReadAhead::Pool => ReadPlan::Pool,
                    None => ReadPlan::Hold,
                }
            }
            ReadIntent::Pool => ReadPlan::Pool,
            ReadIntent::Hold => ReadPlan::Hold,
            ReadIntent::Stop => ReadPlan::Stop,
        }
    }

    /// The decision of [`ShardCore::read_plan`] without lending the buffer.
    pub(crate) fn read_intent(&self, key: usize, ahead: ReadAhead) -> ReadIntent {
        let Some(s) = self.conns.get(key) else {
            return ReadIntent::Stop;
        };
        let conn = &s.conn;
        if !s.paused() && conn.wants_read() {
            let direct = ahead == ReadAhead::Never
                || conn.has_large_records()
                || conn.has_large_body_pending();
            if direct {
                ReadIntent::Direct
            } else {
                ReadIntent::Pool
            }
        } else if conn.is_closed()
            || conn.has_large_records()
            || conn.buffered_len() > PAUSED_INPUT_LIMIT
        {
            ReadIntent::Stop
        } else {
            ReadIntent::Hold
        }
    }

    /// Takes what a receive for `key` brought at `now` (a lent buffer always
    /// comes back here), and handles the input: events, delivery, output.
    pub(crate) fn on_received(&mut self, key: usize, got: Arrived<'_>, now: Instant) {
        let metrics = &self.shared.metrics;
        let slot = self.conns.get_mut(key);
        let received = match got {
            Arrived::Copied(data) => {
                metrics.recv_pooled_bytes.inc_by(data.len() as u64);
                if let Some(slot) = slot {
                    slot.conn.handle_input(data, now);
                }
                data.len()
            }
            Arrived::Into(buf) => {
                let n = buf.received();
                metrics.recv_direct_bytes.inc_by(n as u64);
                // Dropped with the connection if it is gone.
                if let Some(slot) = slot {
                    slot.conn.handle_returned_buf(buf, now);
                }
                n
            }
        };
        if received > 0 {
            self.process_input(key, now);
        }
    }

    /// Turns buffered input into events and handles them, until the input is
    /// used up or delivery must wait (backpressure).
    pub(super) fn process_input(&mut self, key: usize, now: Instant) {
        loop {
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            if slot.paused() {
                break;
            }
            let Some(ev) = slot.conn.poll_event(now) else {
                break;
            };
            self.handle_event(key, ev, now);
        }
        if let Some(slot) = self.conns.get_mut(key) {
            let copied = slot.conn.poll_reassembly_copied_bytes();
            if copied > 0 {
                self.shared.metrics.reassembly_copied_bytes.inc_by(copied);
            }
        }
        self.notify_receivers();
        self.after_io(key, now);
    }

    /// Bookkeeping after any input or command touched a connection.
    pub(super) fn after_io(&mut self, key: usize, now: Instant) {
        self.pump_streams(key);
        self.move_unsent_if_replaced(key, now);
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if slot.conn.has_output() {
            self.dirty.push(key);
        }
        if slot.conn.is_closed() && slot.close_label.is_none() {
            // Closed without an event we saw (e.g. after graceful close).
            slot.close_label = Some(slot.conn.close_label().unwrap_or("local_close"));
        }
        if slot.conn.is_closed() {
            // As soon as the protocol ended, not when the socket is gone: a
            // redial (ours or the peer's) must not slip in between.
            note_misbehavior(&self.shared, slot);
        }
        if slot.conn.is_closed() && !self.closing.contains(&key) {
            slot.closed_at = Some(now);
            self.closing.push(key);
        }
    }

    /// Moves the connections the driver must look at (output to write, or a
    /// receive to revisit) to the end of `out`, unsorted and maybe repeated.
    #[inline]
    pub(crate) fn move_dirty_to(&mut self, out: &mut Vec<usize>) {
        out.append(&mut self.dirty);
    }

    /// The driver must look at `key` this turn (its socket became writable,
    /// or connected).
    #[inline]
    pub(crate) fn mark_dirty(&mut self, key: usize) {
        self.dirty.push(key);
    }

    /// Whether some connection waits for the driver to look at it.
    #[inline]
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.readopt.is_empty()
    }

    /// Bytes to write for `key`, if any.
    pub(crate) fn poll_transmit(&mut self, key: usize) -> Option<Bytes> {
        // A moving connection's output goes out from its new shard.
        let slot = self.conns.get_mut(key).filter(|s| s.moving.is_none())?;
        let out = slot.conn.poll_transmit();
        if slot.conn.is_closed() && !self.closing.contains(&key) {
            if slot.close_label.is_none() {
                slot.close_label = Some(slot.conn.close_label().unwrap_or("local_close"));
            }
            slot.closed_at = Some(Instant::now());
            self.closing.push(key);
        }
        if out.is_some() {
            if slot.write_since.is_none() {
                slot.write_since = Some(Instant::now());
            }
            self.shared.metrics.writes.inc();
            self.wrote = true;
        }
        // Sealing stream data frees send buffer: blocked writers resume.
        if !slot.pipes.is_empty() {
            self.pump_streams(key);
            if self.conns.get(key).is_some_and(|s| s.conn.has_output()) {
                self.dirty.push(key);
            }
        }
        out
    }

    /// The driver wrote some of what [`ShardCore::poll_transmit`] handed it
    /// (`done`: all of it): the connection's output made progress.
    pub(crate) fn handle_sent(&mut self, key: usize, done: bool, now: Instant) {
        if let Some(slot) = self.conns.get_mut(key) {
            slot.write_since = if done { None } else { Some(now) };
        }
    }

    /// Connections whose protocol ended: the driver flushes what is sealed,
    /// then closes their socket and calls [`ShardCore::finish_close`].
    #[inline]
    pub(crate) fn closing(&self) -> &[usize] {
        &self.closing
    }

    /// Whether the driver must reset `key`'s socket now instead of flushing
    /// it: its output stalled past `write_timeout` (or its close flush ran
    /// out of time), or shutdown is overdue.
    pub(crate) fn must_abort(&self, key: usize, now: Instant) -> bool {
        self.shutdown_overdue(now)
            || self.conns.get(key).is_some_and(|s| {
                s.abort || s.write_overdue(now, self.shared.config.timeouts.write_timeout)
            })
    }

    /// Every connection still here (the driver forgets them once their
    /// sockets are gone).
    pub(crate) fn connection_keys(&self) -> Vec<usize> {
        self.conns.iter().map(|(k, _)| k).collect()
    }

    /// Shutdown began ([`super::Command::Shutdown`]).
    #[inline]
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// How long the driver may sleep.
    pub(crate) fn sleep_budget(&self, now: Instant) -> Duration {
        let mut d = self
            .next_timer_sweep
            .saturating_duration_since(now)
            .max(TIMER_GRANULARITY);
        if self.shutdown.is_some() {
            d = d.min(Duration::from_millis(5));
        }
        if self.has_drains() {
            d = d.min(super::drain::DRAIN_POLL);
        }
        if let Some(at) = self.local.next_deadline() {
            // Measured now, not at `now`: the turn's tasks and transmit ran
            // since.
            d = d.min(at.saturating_duration_since(Instant::now()));
        }
        d
    }

    /// The shard's waker: its wake socket and the sleep handshake.
    #[inline]
    pub(crate) fn waker(&self) -> &Arc<ShardWaker> {
        &self.waker
    }

    /// The network's configuration.
    #[inline]
    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The network's metrics.
    #[inline]
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

#[cfg(test)]
impl ShardCore {
    pub(crate) fn shared(&self) -> &Arc<super::Shared> {
        &self.shared
    }

    /// The sending half of this shard's own queue (tests send it commands).
    pub(crate) fn link(&self) -> &super::ShardLink {
        &self.shared.shards[self.id]
    }
}

#[cfg(test)]
mod tests {
    use shoal_wire::frame::IDLE_READ;

    use super::super::test_support::dialed;
    use super::*;
    use crate::network::Network;

    fn core() -> ShardCore {
        let (net, _oracle) = Network::new(Config::local(None)).unwrap();
        net.into_shard_core()
    }

    /// A connection that wants input reads through the pool where there is
    /// one and straight into its buffer where there is not; paused, it holds
    /// (an ongoing receive may go on) until it buffered more than
    /// [`PAUSED_INPUT_LIMIT`], then stops; closed, it stops.
    #[test]
    fn the_read_plan_follows_the_connection() {
        let mut core = core();
        let now = Instant::now();
        let k = dialed(&mut core, 7, now);
        assert_eq!(core.read_intent(k, ReadAhead::Pool), ReadIntent::Pool);
        assert_eq!(core.read_intent(k, ReadAhead::Never), ReadIntent::Direct);
        assert!(matches!(core.read_plan(k, ReadAhead::Pool), ReadPlan::Pool));

        core.conns[k].paused_until = Some(now);
        assert_eq!(core.read_intent(k, ReadAhead::Pool), ReadIntent::Hold);
        assert!(!ReadIntent::Hold.starts_read() && !ReadIntent::Hold.ends_pool_receive());
        // A prefix the handshake's frame limit refuses is not decoded (nor
        // refused) while the connection is paused: it only piles up.
        core.conns[k]
            .conn
            .handle_input(&vec![0xff; PAUSED_INPUT_LIMIT + 1], now);
        assert_eq!(core.read_intent(k, ReadAhead::Pool), ReadIntent::Stop);
        assert_eq!(core.read_intent(k, ReadAhead::Never), ReadIntent::Stop);

        let closed = dialed(&mut core, 7, now);
        core.conns[closed]
            .conn
            .abort(crate::connection::CloseCause::WriteTimeout);
        assert_eq!(core.read_intent(closed, ReadAhead::Pool), ReadIntent::Stop);
        assert!(matches!(
            core.read_plan(closed, ReadAhead::Never),
            ReadPlan::Stop
        ));
        assert_eq!(
            core.read_intent(usize::MAX, ReadAhead::Pool),
            ReadIntent::Stop
        );
    }

    /// A lent buffer comes back through `on_received` whether or not the
    /// read brought anything; what arrived is counted and handled (here: a
    /// frame the handshake refuses, which closes the connection).
    #[test]
    fn received_bytes_come_back_counted_and_handled() {
        let mut core = core();
        let now = Instant::now();
        let k = dialed(&mut core, 7, now);
        let ReadPlan::Into(buf) = core.read_plan(k, ReadAhead::Never) else {
            panic!("an idle connection reads straight into its buffer");
        };
        assert_eq!(buf.want(), IDLE_READ.min(core.config().io.recv_buffer_size));
        core.on_received(k, Arrived::Into(buf), now);
        assert_eq!(core.metrics().recv_direct_bytes.get(), 0);
        assert!(core.closing().is_empty());

        let ReadPlan::Into(mut buf) = core.read_plan(k, ReadAhead::Never) else {
            panic!("the buffer came back");
        };
        buf.buf_mut().extend_from_slice(&[0xff; 8]);
        core.on_received(k, Arrived::Into(buf), now);
        assert_eq!(core.metrics().recv_direct_bytes.get(), 8);
        assert_eq!(core.closing(), &[k], "the refused frame closed it");

        let other = dialed(&mut core, 7, now);
        core.on_received(other, Arrived::Copied(&[0, 0, 0, 0]), now);
        assert_eq!(core.metrics().recv_pooled_bytes.get(), 4);
        assert!(core.closing().contains(&other), "an empty frame is refused");
    }
}
