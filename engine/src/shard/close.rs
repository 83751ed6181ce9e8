//! The end of a connection, and of the shard.
//!
//! # Design
//! A connection closes in two steps. Its protocol ends first (a close
//! record either way, a timeout, an error, a [`Command::Close`]): the key
//! joins `closing` and the peer's misbehavior, if any, starts its cooldown
//! at once. Then the driver flushes and drops the socket and calls
//! [`ShardCore::finish_close`], which releases everything the connection
//! held, each exactly once: the connections that wait for it, its held and
//! parked messages (counted), the peer table entry, the gauges, the
//! address and load counts, its pending requests, and the dial outcome.
//!
//! Output that makes no progress for `write_timeout` gets the connection
//! aborted ([`ShardCore::abort_stalled`]): its queues are dropped (counted)
//! and the driver resets the socket instead of flushing it.
//!
//! Shutdown closes every connection gracefully and gives the driver until
//! the deadline to flush; a shard that exits (shutdown, or a failed driver)
//! closes what is left and counts every accepted message it never handed to
//! a connection (`Drop`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use shoal_wire::CloseReason;

use super::slot::{ConnSlot, Live};
use super::{Command, ShardCore};
use crate::connection::{CloseCause, Event};
use crate::peers::ConnId;
use crate::shared::Shared;

/// Replaced connections remembered after their close (see
/// `ShardCore::recently_replaced`), at most.
const RECENTLY_REPLACED_MAX: usize = 1024;

impl ShardCore {
    /// [`Command::Close`]: closes connection `id` gracefully.
    pub(super) fn close_conn(&mut self, id: ConnId, reason: CloseReason, now: Instant) {
        if let Some(slot) = self.conns.live_mut(id) {
            slot.conn.close(reason, now);
            self.dirty.push(id.key);
            self.after_io(id.key, now);
        }
    }

    /// [`Command::Shutdown`]: closes every connection; the driver flushes
    /// until `deadline`.
    pub(super) fn begin_shutdown(&mut self, deadline: Instant, now: Instant) {
        self.shutdown = Some(deadline);
        self.cancel_tasks(now);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some(slot) = self.conns.get_mut(k) {
                slot.conn.close(CloseReason::Shutdown, now);
            }
            self.dirty.push(k);
            self.after_io(k, now);
        }
    }

    /// Aborts a connection whose output stalled past `write_timeout`: its
    /// queues are dropped (counted) and the driver resets the socket.
    pub(super) fn abort_stalled(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        slot.abort = true;
        self.shared.metrics.write_timeouts.inc();
        if !slot.conn.is_closed() {
            slot.conn.abort(CloseCause::WriteTimeout);
        }
        let peer = slot.conn.peer().cloned();
        tracing::warn!(
            shard = self.id,
            peer = ?peer,
            timeout = ?self.shared.config.timeouts.write_timeout,
            "connection output stalled; resetting it"
        );
        self.process_input(key, now);
    }

    /// The driver stops with an error: the shard leaves placement at once
    /// (not after the driver's teardown), and every connection still here
    /// closes as `shard_failed` (however the driver then releases it).
    pub fn driver_failed(&mut self) {
        self.leave_placement();
        for (_, slot) in self.conns.iter_mut() {
            slot.close_label.get_or_insert("shard_failed");
        }
    }

    /// No more connections for this shard ([`crate::placement`]).
    fn leave_placement(&self) {
        self.shared.leave_placement(self.id);
    }

    /// A connection handed to this shard never became one (the driver could
    /// not take its socket): give back what its hand-off counted.
    pub fn adopt_failed(&self, ip: std::net::IpAddr) {
        self.shared.release_inbound(ip);
        self.shared.shards[self.id].load.release();
    }

    /// The driver closed (or failed) the socket of `key`: forget it.
    pub fn finish_close(&mut self, key: usize, io_error: Option<String>) {
        let Some(generation) = self.conns.get(key).map(|s| s.generation) else {
            return;
        };
        // Replaced while it waited for its own hand-over, it kept what was
        // parked on it back: that follows its replacement now.
        if self.conns[key].moved_unsent {
            let id = ConnId {
                shard: self.id,
                key,
                generation,
            };
            self.release_parked(id, Instant::now());
        }
        // Streams end with their connection, whatever ended it.
        let fallback = if io_error.is_some() {
            "io_error"
        } else {
            "local_close"
        };
        let reason = self.conns[key].end_reason(fallback);
        self.fail_pipes(key, reason);
        let mut slot = self.conns.remove(key);
        let gone = ConnId {
            shard: self.id,
            key,
            generation: slot.generation,
        };
        self.release_waiters(gone, &mut slot);
        if slot.moved_unsent {
            self.remember_replaced(gone, Instant::now());
        }
        if let Some(err) = io_error {
            settle_io_error(&mut slot, err);
        }
        // Nothing queued will be written: release the app-visible depth.
        slot.conn.abort(CloseCause::Local(CloseReason::Normal));
        // Accepted messages still queued are gone with the connection: count
        // them (held input is inbound, not counted here).
        self.shared
            .metrics
            .send_dropped_n("disconnected", slot.conn.dropped_on_close());
        let label = slot.close_label.unwrap_or("io_error");
        self.count_close(&mut slot, label);
        self.forget_peer(&mut slot, gone, label);
        self.release_counts(&slot);
        self.note_dial_outcome(&slot, label);
        self.closing.retain(|&k| k != key);
        self.holding.retain(|&k| k != key);
        self.detaching.retain(|&k| k != key);
    }

    /// What waited on the closed connection `gone` goes on: its replacement
    /// elsewhere and those here paused behind it resume; its parked and
    /// quota-held messages are dropped (counted).
    fn release_waiters(&mut self, gone: ConnId, slot: &mut ConnSlot) {
        self.announce_release(gone, slot.notify_on_close.take());
        self.drop_parked(slot);
        self.shared
            .metrics
            .refuse_n("quota_held_at_close", slot.quota_held.len());
        let behind: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, s)| s.paused_behind == Some(gone))
            .map(|(k, _)| k)
            .collect();
        for k in behind {
            if let Some(s) = self.conns.get_mut(k) {
                s.paused_behind = None;
            }
            self.process_input(k, Instant::now());
            self.dirty.push(k);
        }
    }

    /// Remembers the replaced connection `gone` for a while, so that a late
    /// send addressed to it is rerouted as for a replaced one.
    fn remember_replaced(&mut self, gone: ConnId, now: Instant) {
        let keep = self.shared.config.timeouts.handshake_timeout;
        while self
            .recently_replaced
            .front()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) > keep)
            || self.recently_replaced.len() >= RECENTLY_REPLACED_MAX
        {
            self.recently_replaced.pop_front();
        }
        self.recently_replaced.push_back((gone, now));
    }

    /// The close and, for a connection that never established, the
    /// handshake's outcome, counted once.
    fn count_close(&mut self, slot: &mut ConnSlot, label: &'static str) {
        self.shared.metrics.close(label);
        if slot.counted_handshaking {
            self.shared.metrics.handshaking.dec();
            if slot.handle.is_none() {
                self.shared.metrics.handshake(label);
            }
        }
        note_misbehavior(&self.shared, slot);
    }

    /// An established connection leaves the peer table (and the peer's
    /// limiters); requests waiting on it fail now.
    fn forget_peer(&mut self, slot: &mut ConnSlot, gone: ConnId, label: &'static str) {
        if let Some(h) = &slot.handle {
            self.shared.metrics.connections.dec();
            self.shared.peers.remove(&h.peer, h.id, label);
            if slot.limiters.take().is_some() {
                self.shared.limiters.release(&h.peer, Instant::now());
            }
        }
        // Requests waiting on this connection fail now, not at their
        // timeout. After the peer table forgets the connection: a request
        // registered later sees it gone (`Sender::register_request`).
        self.shared.rpc.expire(self.id, Instant::now(), Some(gone));
    }

    /// Gives back the connection's address or outbound count and its slot
    /// in the shard's load.
    fn release_counts(&self, slot: &ConnSlot) {
        if let Some(ip) = slot.inbound {
            self.shared.release_inbound(ip);
        } else {
            self.shared.outbound.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.shards[self.id].load.release();
    }

    /// A dial ends: no longer dialing; without a connection it failed.
    fn note_dial_outcome(&self, slot: &ConnSlot, label: &'static str) {
        let Some((peer, _)) = &slot.dial else {
            return;
        };
        self.shared.peers.mark_dialing(peer, false);
        if slot.handle.is_some() {
            return;
        }
        self.shared.metrics.dial_failures.inc();
        tracing::debug!(shard = self.id, %peer, reason = label, "dial failed");
        // A dial that lost the tie-break to a live connection did not fail.
        if self.shared.config.discovery.open && !self.shared.peers.contains(peer) {
            self.shared
                .to_control(crate::shared::ControlEvent::DialFailed { peer: peer.clone() });
        }
    }

    /// True when shutdown was requested and every connection is gone.
    pub fn shutdown_complete(&self) -> bool {
        self.shutdown.is_some() && self.conns.is_empty()
    }

    /// True when the shutdown deadline passed.
    pub fn shutdown_overdue(&self, now: Instant) -> bool {
        self.shutdown.is_some_and(|d| now >= d)
    }

    /// Empties the command queue of a shard that exits: what the commands
    /// counted is given back; returns how many accepted messages they
    /// carried.
    fn drain_unhandled(&mut self, label: &'static str) -> usize {
        let mut queued = 0;
        for moved in std::mem::take(&mut self.readopt) {
            self.drop_moved(Box::new(moved), label);
        }
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Send { .. } => queued += 1,
                Command::SendBatch { msgs, .. } => queued += msgs.len(),
                Command::Handover { msgs, .. } => queued += msgs.len(),
                Command::ReplacedBy { id, by } => self.announce_release(id, Some(by)),
                Command::Adopt { ip, .. } => self.adopt_failed(ip),
                Command::Moved(moved) => self.drop_moved(moved, label),
                Command::Dial { peer, .. } => {
                    self.shared.outbound.fetch_sub(1, Ordering::AcqRel);
                    self.shared.peers.mark_dialing(&peer, false);
                    self.shared.shards[self.id].load.release();
                }
                _ => {}
            }
        }
        queued
    }
}

/// The socket failed: the connection learns why, and the close is labelled
/// by its cause if nothing labelled it before.
fn settle_io_error(slot: &mut ConnSlot, err: String) {
    slot.conn.handle_io_error(err);
    while let Some(ev) = slot.conn.poll_event(Instant::now()) {
        if let Event::Closed(cause) = ev {
            if slot.close_label.is_none() {
                slot.close_label = Some(cause.label());
            }
        }
    }
}

/// Starts the peer's misbehavior cooldown if its established connection
/// closed because it provably broke the protocol
/// ([`crate::connection::CloseCause::is_peer_misbehavior`]); once per
/// connection.
pub(super) fn note_misbehavior(shared: &Shared, slot: &mut ConnSlot) {
    if slot.cooldown_noted || !slot.conn.is_closed() {
        return;
    }
    slot.cooldown_noted = true;
    let Some(h) = &slot.handle else {
        return;
    };
    if shared.cooldown.on_close(
        &h.peer,
        slot.conn.is_closed_for_misbehavior(),
        Instant::now(),
    ) {
        shared.metrics.misbehavior_cooldowns.inc();
        tracing::warn!(
            peer = %h.peer,
            reason = slot.conn.close_label().unwrap_or("?"),
            cooldown = ?shared.config.admission.misbehavior_cooldown,
            "peer misbehaved; refusing it for the cooldown"
        );
    }
}

impl Drop for ShardCore {
    /// Accepted messages that never reached a connection end here: those
    /// parked for a peer's replacement connection, and sends still in the
    /// command queue (accepted just before shutdown, or before the shard's
    /// driver failed). Each is counted as
    /// `send_dropped{reason="shutdown"}`, like every other accepted message
    /// that is not delivered.
    fn drop(&mut self) {
        // Connections still here when the driver stopped (it failed, or
        // shutdown ran out of time) are closed now and counted like any
        // other close: peer table, gauges, address counts, waiting requests.
        // Their sockets closed with the driver.
        let label = if self.shutdown.is_some() {
            "shutdown"
        } else {
            "shard_failed"
        };
        // Before draining the queue: hand-offs stop coming.
        self.leave_placement();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            if let Some(slot) = self.conns.get_mut(k) {
                slot.close_label.get_or_insert(label);
                // Senders waiting for room on this connection must not
                // wait (or retry a full command queue) forever.
                slot.depth.close();
            }
            self.finish_close(k, None);
        }
        let parked: usize = self.parked.values().map(|p| p.len()).sum();
        let queued = self.drain_unhandled(label);
        // Late sends stop here (counted just above): the replacements may
        // send what they parked instead of waiting for their deadline.
        self.end_drains();
        self.shared
            .metrics
            .send_dropped_n("shutdown", parked + queued);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;

    use super::super::reroute::Parked;
    use super::super::test_support::{count, dialed, key};
    use super::*;
    use crate::config::Config;
    use crate::connection::{Outgoing, Priority};
    use crate::metrics::ReasonLabel;
    use crate::network::Network;
    use crate::queue_depth::QueueClosed;

    fn msg() -> Outgoing {
        Outgoing::data(1, Bytes::from_static(b"m"), false)
    }

    /// A shard that exits (shutdown, or a failed driver) with accepted
    /// messages it never handed to a connection counts each one as
    /// `send_dropped{reason="shutdown"}` (sends still in its command queue,
    /// messages parked for a peer's next connection), and closes its
    /// connections' queue depths so a sender blocked on a full one returns
    /// instead of waiting forever.
    #[test]
    fn an_exiting_shard_counts_what_it_drops_and_releases_blocked_senders() {
        let (net, _oracle) = Network::new(Config::local(None)).unwrap();
        let mut core = net.into_shard_core();
        let shared = core.shared.clone();
        let now = Instant::now();
        let peer = key(7);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let slot_key = core.insert(None, Some((peer.clone(), addr)), now);
        let id = ConnId {
            shard: 0,
            key: slot_key,
            generation: core.conns[slot_key].generation,
        };
        // The connection's queue is full, and a sender waits for room.
        let depth = core.conns[slot_key].depth.clone();
        let mut full = Vec::new();
        while let Some(permit) = depth.try_reserve(1) {
            full.push(permit);
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let blocked = {
            let depth = depth.clone();
            std::thread::spawn(move || {
                done_tx.send(depth.reserve_blocking(1).map(|p| p.into_share()))
            })
        };
        // Accepted but never handled: 3 sends and a batch of 2 in the command
        // queue, 4 messages parked for another peer's replacement connection.
        let link = &shared.shards[0];
        for _ in 0..3 {
            let send = Command::Send {
                id,
                peer: peer.clone(),
                msg: msg(),
                priority: Priority::Low,
                share: depth.force_reserve(1),
            };
            assert!(link.send(send).is_ok());
        }
        let batch = Command::SendBatch {
            id,
            peer: peer.clone(),
            msgs: vec![msg(), msg()],
            priority: Priority::Low,
            share: {
                let mut both = depth.force_reserve(1);
                both.merge(depth.force_reserve(1));
                both
            },
        };
        assert!(link.send(batch).is_ok());
        core.parked.insert(key(8), Parked::for_test(now, 4));

        drop(core);

        let dropped = shared
            .metrics
            .send_dropped
            .get_or_create(&ReasonLabel {
                reason: "shutdown".into(),
            })
            .get();
        assert_eq!(dropped, 3 + 2 + 4);
        let released = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the blocked sender was never released");
        assert_eq!(released.err(), Some(QueueClosed));
        blocked.join().unwrap().unwrap();
    }

    /// A handshake that times out is one handshake outcome and one close,
    /// each counted once, when its socket is released.
    #[test]
    fn a_failed_handshake_is_counted_once() {
        let (net, _oracle) = Network::new(Config::local(None)).unwrap();
        let mut core = net.into_shard_core();
        let shared = core.shared.clone();
        let now = Instant::now();
        let k = dialed(&mut core, 7, now);
        assert_eq!(shared.metrics.handshaking.get(), 1);
        let later = now + shared.config.timeouts.handshake_timeout + Duration::from_secs(1);
        core.handle_timers(later);
        assert!(core.closing.contains(&k), "the handshake timed out");
        core.finish_close(k, None);
        assert_eq!(count(&shared.metrics.handshakes, "handshake_timeout"), 1);
        assert_eq!(count(&shared.metrics.closes, "handshake_timeout"), 1);
        assert_eq!(shared.metrics.handshaking.get(), 0);
        core.finish_close(k, None);
        assert_eq!(
            count(&shared.metrics.handshakes, "handshake_timeout"),
            1,
            "a second release counts nothing"
        );
    }

    /// Output handed to the driver that makes no progress for
    /// `write_timeout` gets the connection reset (counted once, the slot
    /// marked for abort); output that progresses never does.
    #[test]
    fn stalled_output_is_aborted_after_the_write_timeout() {
        let mut cfg = Config::local(None);
        cfg.timeouts.handshake_timeout = Duration::from_secs(300);
        cfg.timeouts.write_timeout = Duration::from_secs(5);
        let (net, _oracle) = Network::new(cfg).unwrap();
        let mut core = net.into_shard_core();
        let shared = core.shared.clone();
        let now = Instant::now();
        let (stalled, moving) = (dialed(&mut core, 7, now), dialed(&mut core, 8, now));
        assert!(
            core.poll_transmit(stalled).is_some(),
            "a dialer sends its hello"
        );
        assert!(core.poll_transmit(moving).is_some());
        let t0 = Instant::now();
        core.handle_sent(moving, true, t0);
        let before = t0 + Duration::from_secs(4);
        assert!(!core.must_abort(stalled, before));
        core.handle_timers(before);
        assert_eq!(shared.metrics.write_timeouts.get(), 0);
        let after = t0 + Duration::from_secs(6);
        assert!(core.must_abort(stalled, after));
        assert!(!core.must_abort(moving, after), "its output was written");
        core.handle_timers(after);
        assert_eq!(shared.metrics.write_timeouts.get(), 1);
        assert!(core.closing.contains(&stalled));
        core.handle_timers(after + Duration::from_secs(1));
        assert_eq!(shared.metrics.write_timeouts.get(), 1, "counted once");
        core.finish_close(stalled, None);
        assert_eq!(count(&shared.metrics.closes, "write_timeout"), 1);
    }
}
