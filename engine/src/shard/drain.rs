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
    /// `old`'s handle: a reference kept to count the others.
    handle: Arc<PeerHandle>,
    deadline: Instant,
    /// Where the drain is.
    stage: Stage,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Senders may still push late messages.
    Open,
    /// The marker is in this shard's queue, behind the last late send.
    Marked,
    /// Reached the marker; telling the replacement failed (its queue was
    /// full) and is retried on the next look.
    Telling,
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
            handle,
            deadline,
            stage: Stage::Open,
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
        let (to, peer) = (d.by, d.handle.peer.clone());
        // Counted as rerouted where it is queued (`take_handover`).
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
            let gone = !self.shared.shards[d.by.shard].load.is_alive();
            if now >= d.deadline || gone {
                let d = self.draining.swap_remove(i);
                tracing::debug!(shard = self.id, "late sends still possible at the deadline");
                self.tell_handed_over(&d);
                continue;
            }
            match d.stage {
                Stage::Open if self.only_we_hold(d) => {
                    // Pairs with the release of the last reference: the
                    // late pushes into our queue happened before.
                    fence(Ordering::Acquire);
                    let link = &self.shared.shards[self.id];
                    if link.send(Command::Drained { old: d.old }).is_ok() {
                        self.draining[i].stage = Stage::Marked;
                    }
                }
                Stage::Telling if self.tell_handed_over(d) => {
                    self.draining.swap_remove(i);
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }

    /// [`Command::Drained`]: every late send for `old` was forwarded.
    pub(super) fn drained(&mut self, old: ConnId) {
        let Some(i) = self.draining.iter().position(|d| d.old == old) else {
            return;
        };
        if self.tell_handed_over(&self.draining[i]) {
            self.draining.swap_remove(i);
        } else {
            // Its queue is full: tell it on a later look (nothing can be
            // late any more, so no new marker).
            self.draining[i].stage = Stage::Telling;
        }
    }

    /// The shard exits: every replacement stops waiting for it.
    pub(super) fn end_drains(&mut self) {
        for d in std::mem::take(&mut self.draining) {
            self.tell_handed_over(&d);
        }
    }

    /// True while a drain waits: the shard must look again soon.
    pub(super) fn has_drains(&self) -> bool {
        !self.draining.is_empty()
    }

    /// No one but this entry and, while it lives, `old`'s slot holds the
    /// handle: no sender can still push a message for `old`. And `old` no
    /// longer waits for a hand-over itself (it was replaced while waiting
    /// for the one before it): what reaches it late from there must go
    /// ahead too.
    fn only_we_hold(&self, d: &Drain) -> bool {
        let slot = self.conns.live(d.old);
        if slot.is_some_and(|s| s.handover.as_ref().is_some_and(|h| !h.messages_in)) {
            return false;
        }
        let slot_holds = slot
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

    /// `n` shard cores of one network, driven by the test.
    fn cores(n: usize) -> (Vec<ShardCore>, Arc<Shared>) {
        let mut cfg = Config::local(None);
        cfg.io.shards = n;
        let (net, _oracle) = Network::new(cfg).unwrap();
        let cores = net.into_shard_cores();
        let shared = cores[0].shared.clone();
        (cores, shared)
    }

    /// A connection to `key(7)` on `core`, established: it takes the peer
    /// table's entry (replacing the one there, if any).
    fn establish(core: &mut ShardCore, now: Instant) -> usize {
        let k = dialed(core, 7, now);
        core.on_established(k, key(7));
        k
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
        let (mut cores, shared) = cores(2);
        let (mut b, mut a) = (cores.pop().unwrap(), cores.pop().unwrap());
        let now = Instant::now();
        let mut actions = Vec::new();
        let peer = key(7);

        establish(&mut a, now);
        // The slow sender's reference to the old connection.
        let old = shared.peers.get(&peer).expect("established on A");
        let kb = establish(&mut b, now);
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
        let (mut cores, shared) = cores(2);
        let (mut b, mut a) = (cores.pop().unwrap(), cores.pop().unwrap());
        let now = Instant::now();
        let mut actions = Vec::new();
        let peer = key(7);

        establish(&mut a, now);
        let kb = establish(&mut b, now);
        let new = shared.peers.get(&peer).expect("established on B");
        send(&shared, &new, b"2");
        b.drain_commands(now, &mut actions);
        a.drain_commands(now, &mut actions); // hands over, marks
        a.drain_commands(now, &mut actions); // tells B
        assert!(!a.has_drains());
        b.drain_commands(now, &mut actions);
        assert_eq!(queued(&mut b, kb), vec![Bytes::from_static(b"2")]);
    }

    /// The sender holds the peer-table snapshot (as `send` does), not a
    /// clone of the handle: the drain still waits for it to let go.
    #[test]
    fn a_sender_inside_a_snapshot_is_waited_for() {
        let (mut cores, shared) = cores(2);
        let (mut b, mut a) = (cores.pop().unwrap(), cores.pop().unwrap());
        let now = Instant::now();
        let mut actions = Vec::new();
        let peer = key(7);
        establish(&mut a, now);
        let kb = dialed(&mut b, 7, now);
        shared.peers.with(|map| {
            let old = map.get(&peer).expect("established on A");
            b.on_established(kb, peer.clone());
            send(&shared, old, b"1");
            a.drain_commands(now, &mut actions);
            assert!(a.has_drains(), "the snapshot still lists the old handle");
        });
        let new = shared.peers.get(&peer).expect("established on B");
        send(&shared, &new, b"2");
        a.drain_commands(now, &mut actions); // marker
        a.drain_commands(now, &mut actions); // tells B
        assert!(!a.has_drains());
        b.drain_commands(now, &mut actions);
        let order = vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")];
        assert_eq!(queued(&mut b, kb), order);
    }

    /// The replacement is itself replaced, from a third shard, while it
    /// still waits for the first: what it parked and what the first shard
    /// forwards late reach the third connection in the order sent.
    #[test]
    fn a_replacement_replaced_while_it_waits_keeps_the_order() {
        let (mut cores, shared) = cores(3);
        let mut c = cores.pop().unwrap();
        let (mut b, mut a) = (cores.pop().unwrap(), cores.pop().unwrap());
        let now = Instant::now();
        let mut actions = Vec::new();
        let peer = key(7);

        establish(&mut a, now);
        let x = shared.peers.get(&peer).expect("X on A");
        establish(&mut b, now);
        let y = shared.peers.get(&peer).expect("Y on B");
        send(&shared, &x, b"1");
        send(&shared, &y, b"2");
        b.drain_commands(now, &mut actions); // 2 parked on Y
        let kz = establish(&mut c, now);
        let z = shared.peers.get(&peer).expect("Z on C");
        send(&shared, &z, b"3");
        c.drain_commands(now, &mut actions); // 3 parked on Z
        drop(y);
        b.drain_commands(now, &mut actions); // Y replaced: keeps 2 back
        a.drain_commands(now, &mut actions); // X replaced; late 1 to Y
        drop(x);
        for _ in 0..3 {
            a.drain_commands(now, &mut actions);
            b.drain_commands(now, &mut actions);
            c.drain_commands(now, &mut actions);
        }
        assert!(!a.has_drains() && !b.has_drains());
        let order: Vec<Bytes> = [b"1", b"2", b"3"].map(|m| Bytes::from_static(m)).to_vec();
        assert_eq!(queued(&mut c, kz), order);
    }

    /// A sender that never lets go does not hold B's messages forever: at
    /// the hand-over deadline A gives up and B sends what it parked.
    #[test]
    fn a_drain_gives_up_at_its_deadline() {
        let (mut cores, shared) = cores(2);
        let (mut b, mut a) = (cores.pop().unwrap(), cores.pop().unwrap());
        let now = Instant::now();
        let mut actions = Vec::new();
        let peer = key(7);

        establish(&mut a, now);
        let _stuck = shared.peers.get(&peer).expect("established on A");
        let kb = establish(&mut b, now);
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
