//! Late sends to a connection replaced from another shard, kept in order.
//!
//! # Design
//! A sender looks the peer up in the peer table's snapshot and pushes its
//! message into that connection's shard queue while it still holds the
//! snapshot. When connection `old` here (shard A) is replaced by `by` on
//! shard B, a sender that looked the peer up just before the switch can
//! push its message to A *after* A handed `old`'s unsent messages over,
//! while its next message already goes to B. Rerouted as a plain send, the
//! older one would reach B behind the newer one. So:
//!
//! - B parks what is sent to `by` directly until A says that no late
//!   message can still come ([`Command::HandedOver`]);
//! - A forwards each late message as one more [`Command::Handover`], which B
//!   queues ahead of what it parked;
//! - A knows no late message can still come once nothing but itself holds
//!   `old`'s [`PeerHandle`]: every peer-table snapshot that lists `old`
//!   holds a reference (arc-swap turns the borrowed loads of readers into
//!   references when it replaces a snapshot), and so does every sender that
//!   cloned the handle. From then on every late message is already in A's
//!   command queue; A pushes a marker ([`Command::Drained`]) behind them and
//!   tells B when it reaches it.
//!
//! Bounded: one entry per connection replaced from another shard, each
//! given up after `handshake_timeout`, when B stops waiting too (order is
//! then best effort, delivery is not affected). While an entry waits, the
//! shard sleeps at most [`DRAIN_POLL`] between looks.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_crypto::PublicKey;

use super::slot::Live;
use super::{Command, ShardCore};
use crate::connection::{Outgoing, Priority};
use crate::peers::{ConnId, PeerHandle};

/// How long a shard with a drain pending sleeps at most between looks at
/// the handle's references (nothing wakes it when a sender lets go).
pub(super) const DRAIN_POLL: Duration = Duration::from_millis(1);

/// A connection replaced from another shard, whose late sends still go to
/// its replacement.
pub(super) struct Drain {
    old: ConnId,
    by: ConnId,
    peer: PublicKey,
    /// `old`'s handle: a reference kept to count the others.
    handle: Arc<PeerHandle>,
    deadline: Instant,
    /// The marker is in this shard's queue.
    marked: bool,
}

impl ShardCore {
    /// Connection `old` (its `handle`) was replaced by `by` on another
    /// shard and its unsent messages are handed over: forward late sends
    /// until none can come, then tell `by`.
    pub(super) fn start_drain(
        &mut self,
        old: ConnId,
        by: ConnId,
        handle: Arc<PeerHandle>,
        now: Instant,
    ) {
        let deadline = now + self.shared.config.timeouts.handshake_timeout;
        self.draining.push(Drain {
            old,
            by,
            peer: handle.peer.clone(),
            handle,
            deadline,
            marked: false,
        });
        self.poll_drains(now);
    }

    /// A send for `id` that arrived after `id` was handed over: forwarded
    /// to its replacement ahead of what waits there. Handed back if `id` is
    /// not draining.
    pub(super) fn forward_late(
        &mut self,
        id: ConnId,
        msg: Outgoing,
        priority: Priority,
    ) -> Option<(Outgoing, Priority)> {
        let Some(d) = self.draining.iter().find(|d| d.old == id) else {
            return Some((msg, priority));
        };
        let (to, peer) = (d.by, d.peer.clone());
        self.shared.metrics.send_rerouted.inc();
        let sent = self.shared.shards.get(to.shard).is_some_and(|l| {
            l.send(Command::Handover {
                to,
                peer,
                msgs: vec![(msg, priority)],
            })
            .is_ok()
        });
        if !sent {
            self.shared.metrics.send_dropped("shard_queue_full");
        }
        None
    }

    /// Pushes the marker for every drain no sender can add to any more, and
    /// gives up those past their deadline. Cheap when nothing drains.
    pub(super) fn poll_drains(&mut self, now: Instant) {
        if self.draining.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.draining.len() {
            let d = &self.draining[i];
            if now >= d.deadline {
                let d = self.draining.swap_remove(i);
                tracing::debug!(shard = self.id, "late sends still possible at the deadline");
                self.tell_handed_over(&d);
                continue;
            }
            if !d.marked && self.only_we_hold(d) {
                // Pairs with the release of the last reference: the late
                // pushes into our queue happened before.
                fence(Ordering::Acquire);
                let link = &self.shared.shards[self.id];
                if link.send(Command::Drained { old: d.old }).is_ok() {
                    self.draining[i].marked = true;
                }
            }
            i += 1;
        }
    }

    /// [`Command::Drained`]: every late send for `old` was forwarded.
    pub(super) fn drained(&mut self, old: ConnId) {
        let Some(i) = self.draining.iter().position(|d| d.old == old) else {
            return;
        };
        let d = self.draining.swap_remove(i);
        if !self.tell_handed_over(&d) {
            // Its queue is full: ask again (nothing can be late any more).
            self.draining.push(Drain { marked: false, ..d });
        }
    }

    /// True while a drain waits: the shard must look again soon.
    pub(super) fn has_drains(&self) -> bool {
        !self.draining.is_empty()
    }

    /// No one but this entry and, while it lives, `old`'s slot holds the
    /// handle: no sender can still push a message for `old`.
    fn only_we_hold(&self, d: &Drain) -> bool {
        let slot_holds = self
            .conns
            .live(d.old)
            .and_then(|s| s.handle.as_ref())
            .is_some_and(|h| Arc::ptr_eq(h, &d.handle));
        Arc::strong_count(&d.handle) <= 1 + usize::from(slot_holds)
    }

    fn tell_handed_over(&self, d: &Drain) -> bool {
        self.shared.shards.get(d.by.shard).is_some_and(|l| {
            l.send(Command::HandedOver {
                to: d.by,
                from: d.old,
            })
            .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::test_support::{dialed, key};
    use super::*;
    use crate::config::Config;
    use crate::network::Network;
    use crate::shared::Shared;

    /// What a sender does: push one message for `h`'s connection into its
    /// shard's queue.
    fn send(shared: &Shared, h: &PeerHandle, payload: &'static [u8]) {
        let cmd = Command::Send {
            id: h.id,
            peer: h.peer.clone(),
            msg: Outgoing::data(1, Bytes::from_static(payload), false),
            priority: Priority::Low,
            share: h.depth.force_reserve(payload.len()),
        };
        assert!(shared.shards[h.id.shard].send(cmd).is_ok());
    }

    /// Payloads queued on connection `key` of `core`, in order.
    fn queued(core: &mut ShardCore, key: usize) -> Vec<Bytes> {
        let unsent = core.conns[key].conn.poll_unsent();
        unsent.into_iter().map(|(m, _)| m.payload).collect()
    }

    /// A sender looked the peer up just before its connection on shard A
    /// was replaced by one on shard B: its message "1" reaches A after A
    /// handed over, and its next one, "2", goes to B directly. "1" still goes
    /// out first, and B holds "2" until no sender can add to A any more.
    #[test]
    fn a_late_send_to_a_replaced_connection_stays_ahead_of_newer_ones() {
        let mut cfg = Config::local(None);
        cfg.io.shards = 2;
        let (net, _oracle) = Network::new(cfg).unwrap();
        let mut cores = net.into_shard_cores();
        let (mut b, mut a) = (cores.pop().unwrap(), cores.pop().unwrap());
        let shared = a.shared.clone();
        let now = Instant::now();
        let mut actions = Vec::new();
        let peer = key(7);

        let ka = dialed(&mut a, 7, now);
        a.on_established(ka, peer.clone());
        // The slow sender's reference to the old connection.
        let old = shared.peers.get(&peer).expect("established on A");
        let kb = dialed(&mut b, 7, now);
        b.on_established(kb, peer.clone());
        let new = shared.peers.get(&peer).expect("established on B");
        assert_eq!((old.id.shard, new.id.shard), (0, 1), "B replaced A's");

        send(&shared, &old, b"1");
        send(&shared, &new, b"2");
        b.drain_commands(now, &mut actions);
        assert!(queued(&mut b, kb).is_empty(), "2 waits for the hand-over");
        // A: the ReplacedBy, then the late 1, forwarded as a hand-over.
        a.drain_commands(now, &mut actions);
        assert!(a.has_drains(), "the sender still holds the old handle");
        b.drain_commands(now, &mut actions);
        // 1 is queued; 2 still waits: the sender could still push to A.
        b.poll_drains(now);
        let first = queued(&mut b, kb);
        assert_eq!(first, vec![Bytes::from_static(b"1")]);

        drop(old);
        a.drain_commands(now, &mut actions); // pushes the marker
        a.drain_commands(now, &mut actions); // reaches it: tells B
        assert!(!a.has_drains());
        b.drain_commands(now, &mut actions);
        assert_eq!(queued(&mut b, kb), vec![Bytes::from_static(b"2")]);
        assert!(actions.is_empty());
    }

    /// Nothing holds the old handle but A: A tells B at once, and what B
    /// parked goes out right behind the hand-over.
    #[test]
    fn without_a_late_sender_the_wait_ends_with_the_hand_over() {
        let mut cfg = Config::local(None);
        cfg.io.shards = 2;
        let (net, _oracle) = Network::new(cfg).unwrap();
        let mut cores = net.into_shard_cores();
        let (mut b, mut a) = (cores.pop().unwrap(), cores.pop().unwrap());
        let shared = a.shared.clone();
        let now = Instant::now();
        let mut actions = Vec::new();
        let peer = key(7);

        let ka = dialed(&mut a, 7, now);
        a.on_established(ka, peer.clone());
        let kb = dialed(&mut b, 7, now);
        b.on_established(kb, peer.clone());
        let new = shared.peers.get(&peer).expect("established on B");
        send(&shared, &new, b"2");
        b.drain_commands(now, &mut actions);
        a.drain_commands(now, &mut actions); // hands over, marks
        a.drain_commands(now, &mut actions); // tells B
        assert!(!a.has_drains());
        b.drain_commands(now, &mut actions);
        assert_eq!(queued(&mut b, kb), vec![Bytes::from_static(b"2")]);
    }

    /// A sender that never lets go does not hold B's messages forever: at
    /// the hand-over deadline A gives up and B sends what it parked.
    #[test]
    fn a_drain_gives_up_at_its_deadline() {
        let mut cfg = Config::local(None);
        cfg.io.shards = 2;
        let (net, _oracle) = Network::new(cfg).unwrap();
        let mut cores = net.into_shard_cores();
        let (mut b, mut a) = (cores.pop().unwrap(), cores.pop().unwrap());
        let shared = a.shared.clone();
        let now = Instant::now();
        let mut actions = Vec::new();
        let peer = key(7);

        let ka = dialed(&mut a, 7, now);
        a.on_established(ka, peer.clone());
        let _stuck = shared.peers.get(&peer).expect("established on A");
        let kb = dialed(&mut b, 7, now);
        b.on_established(kb, peer.clone());
        let new = shared.peers.get(&peer).expect("established on B");
        send(&shared, &new, b"2");
        b.drain_commands(now, &mut actions);
        a.drain_commands(now, &mut actions);
        b.drain_commands(now, &mut actions);
        assert!(queued(&mut b, kb).is_empty());
        let late = now + shared.config.timeouts.handshake_timeout;
        a.poll_drains(late);
        assert!(!a.has_drains());
        b.drain_commands(late, &mut actions);
        assert_eq!(queued(&mut b, kb), vec![Bytes::from_static(b"2")]);
    }
}
