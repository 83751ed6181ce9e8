//! Establishment, and a peer's duplicate connections handed over in order.
//!
//! # Design
//! A connection that finished its handshake is admitted to the peer table
//! ([`crate::peers::PeerTable::insert`]), whose tie-break decides between
//! it and the peer's connection already there: the new one is inserted,
//! replaces the old one, or is rejected (and closed as `Replaced`).
//!
//! When the new connection replaces the old one, the old connection's
//! unsent messages move to the new one ahead of anything sent later, and
//! the new connection reads only after the old one has delivered what it
//! carried (per channel, the peer's messages arrive in the order they were
//! sent). On one shard both happen at once (`move_unsent_if_replaced`, and
//! the new slot paused behind the old one). Across shards the new
//! connection's shard (B) cannot touch the old one, so:
//!
//! 1. B admits the new connection and, instead of a plain close, sends the
//!    old connection's shard (A) [`Command::ReplacedBy`]. Until the
//!    hand-over arrives, messages sent to the new connection are parked in
//!    its slot (already counted in its queue depth, so bounded like the
//!    queue) and its input is paused.
//! 2. A closes the old connection, takes its unsent messages and sends them
//!    to B in one [`Command::Handover`]; B queues them.
//! 3. A message a sender addressed to the old connection that reaches A
//!    after step 2 (it looked the peer up just before the switch) follows as
//!    one more hand-over, and once none can come any more A sends
//!    [`Command::HandedOver`] ([`super::drain`]); B queues what it parked,
//!    and sends.
//! 4. When the old connection is gone, A sends [`Command::Released`]; B
//!    resumes reading.
//!
//! If A cannot answer (its queue is full, it failed), B stops waiting after
//! `handshake_timeout`: order is then best effort, delivery is not affected.
//!
//! Not provided: order on the receiving side when the peer's duplicate
//! connection that we reject sits on another shard than the winner. The
//! peer may have sent on the rejected one first (it admitted that one
//! first); only a winner on the same shard waits for it
//! ([`ShardCore::reject_duplicate`]'s pause). See SECURITY.md, known gaps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use shoal_crypto::PublicKey;
use shoal_wire::CloseReason;

use super::slot::{ConnSlot, Handover, Live};
use super::{Command, DriverAction, ShardCore};
use crate::connection::{CloseCause, Outgoing, Priority};
use crate::peers::{Admit, ConnId, PeerHandle};
use crate::queue_depth::Share;

impl ShardCore {
    /// Connection `key` finished its handshake with `peer`: admit it to the
    /// peer table, then take it up.
    pub(super) fn on_established(&mut self, key: usize, peer: PublicKey) {
        if self.refuse_cooling_down(key, &peer) || self.move_if_placed(key, &peer) {
            return;
        }
        let Some(handle) = self.peer_handle(key, &peer) else {
            return;
        };
        if self.admit(key, &handle) {
            self.take_up(key, handle);
        }
    }

    /// The handshake checked the cooldown at the peer's Hello; a peer that
    /// started this handshake before misbehaving on another connection must
    /// not finish it now. True if the connection was refused (aborted).
    fn refuse_cooling_down(&mut self, key: usize, peer: &PublicKey) -> bool {
        let Some(slot) = self.conns.get_mut(key) else {
            return true;
        };
        if !self.shared.cooldown.active(peer, Instant::now()) {
            return false;
        }
        self.shared.metrics.refuse("cooldown");
        tracing::debug!(shard = self.id, %peer, "peer cooling down; closing its new connection");
        slot.conn
            .abort(CloseCause::Local(CloseReason::Unauthorized));
        true
    }

    /// The peer table entry for connection `key`, counted as a successful
    /// handshake.
    fn peer_handle(&mut self, key: usize, peer: &PublicKey) -> Option<Arc<PeerHandle>> {
        let slot = self.conns.get_mut(key)?;
        let me = self.shared.config.identity.signer.public_key().clone();
        let (dialer, addr) = match &slot.dial {
            Some((_, addr)) => (me, Some(*addr)),
            None => (peer.clone(), None),
        };
        if let Some((dialed, _)) = &slot.dial {
            self.shared.peers.mark_dialing(dialed, false);
        }
        let handle = Arc::new(PeerHandle {
            peer: peer.clone(),
            id: ConnId {
                shard: self.id,
                key,
                generation: slot.generation,
            },
            depth: slot.depth.clone(),
            dialer,
            addr,
        });
        self.shared.metrics.handshake("ok");
        if slot.counted_handshaking {
            slot.counted_handshaking = false;
            self.shared.metrics.handshaking.dec();
        }
        Some(handle)
    }

    /// Inserts `handle` into the peer table; the tie-break may make it
    /// replace the peer's connection there, or reject it. False if it was
    /// rejected (and is closing).
    fn admit(&mut self, key: usize, handle: &Arc<PeerHandle>) -> bool {
        match self.shared.peers.insert(handle.clone()) {
            Admit::Inserted => true,
            Admit::Replaced(old) => {
                self.replace(key, &old);
                true
            }
            Admit::Rejected => {
                self.reject_duplicate(key, &handle.peer);
                false
            }
        }
    }

    /// Connection `key` replaced `old`: pause it behind `old` if `old` is
    /// here; on another shard, `old` hands its unsent messages and its
    /// remaining input over in order.
    fn replace(&mut self, key: usize, old: &PeerHandle) {
        let old_here = old.id.shard == self.id && self.conns.live(old.id).is_some();
        if old_here {
            if let Some(slot) = self.conns.get_mut(key) {
                slot.paused_behind = Some(old.id);
            }
        }
        if old.id.shard == self.id || !self.await_handover(key, old) {
            self.close_elsewhere(old, CloseReason::Replaced)
        }
    }

    /// Connection `key` lost the tie-break to the peer's connection in the
    /// table: it closes as `Replaced`.
    fn reject_duplicate(&mut self, key: usize, peer: &PublicKey) {
        tracing::debug!(shard = self.id, %peer, "duplicate connection rejected by tie-break");
        let mut rejected = None;
        if let Some(slot) = self.conns.get_mut(key) {
            slot.conn.close(CloseReason::Replaced, Instant::now());
            rejected = Some(ConnId {
                shard: self.id,
                key,
                generation: slot.generation,
            });
        }
        // The peer may have sent on this connection before it learned that
        // the other one wins: the winner is paused behind this one until it
        // has delivered what it carries and closed.
        if let (Some(rejected), Some(winner)) = (rejected, self.shared.peers.get(peer)) {
            if winner.id.shard == self.id {
                if let Some(w) = self.conns.live_mut(winner.id) {
                    w.paused_behind = Some(rejected);
                }
            }
        }
    }

    /// An admitted connection: quotas, the authorization re-check, parked
    /// output, and the control shard told.
    fn take_up(&mut self, key: usize, handle: Arc<PeerHandle>) {
        self.shared.metrics.connections.inc();
        let (id, peer) = (handle.id, handle.peer.clone());
        let limiters = self
            .shared
            .limiters
            .acquire(&peer, &self.quota_channels, Instant::now());
        if let Some(slot) = self.conns.get_mut(key) {
            slot.handle = Some(handle);
            // The peer's quotas, as its other (and last) connections left them.
            slot.limiters = limiters;
        }
        // Authorization was checked at the peer's Hello. The control shard's
        // sweep of peers that left every tracked set may have run since,
        // before this connection was in the peer table: checked again now
        // that it is, so either the sweep saw it or this sees the change.
        // (Before anything is queued on it or announced.)
        if !(self.authorizer)(&peer) {
            tracing::debug!(shard = self.id, %peer, "deauthorized during its handshake; closing");
            if let Some(slot) = self.conns.get_mut(key) {
                slot.conn
                    .abort(CloseCause::Local(CloseReason::Unauthorized));
            }
            self.dirty.push(key);
            self.after_io(key, Instant::now());
            return;
        }
        // Messages parked for this peer go first, ahead of anything sent on
        // the new connection since.
        self.flush_parked(&peer, Instant::now());
        self.shared
            .to_control(crate::shared::ControlEvent::Connected {
                peer: peer.clone(),
                id,
            });
        tracing::debug!(shard = self.id, %peer, "connection established");
    }

    /// Closes the peer's connection `old`, here or through its shard.
    pub(super) fn close_elsewhere(&mut self, old: &PeerHandle, reason: CloseReason) {
        if old.id.shard == self.id {
            if let Some(slot) = self.conns.live_mut(old.id) {
                // The handle stays: it was counted as established, and its
                // release decrements the gauge; the peer table already
                // points at the new connection, so releasing the old id
                // there is a no-op.
                slot.conn.close(reason, Instant::now());
                self.dirty.push(old.id.key);
                self.move_unsent_if_replaced(old.id.key, Instant::now());
            }
        } else if let Some(link) = self.shared.shards.get(old.id.shard) {
            let _ = link.send(Command::Close { id: old.id, reason });
        }
    }

    /// A connection being closed because another one to the same peer won
    /// the tie-break hands its unsent messages to the winner at once, ahead
    /// of anything sent later, instead of flushing them on a connection the
    /// peer is tearing down.
    pub(super) fn move_unsent_if_replaced(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if slot.moved_unsent || !slot.conn.is_replaced() {
            return;
        }
        slot.moved_unsent = true;
        let Some(peer) = slot.conn.peer().cloned() else {
            return;
        };
        let old = ConnId {
            shard: self.id,
            key,
            generation: slot.generation,
        };
        let mut unsent = slot.conn.poll_unsent();
        unsent.extend(take_parked(slot));
        let mut no_actions = Vec::new();
        for (msg, priority) in unsent {
            self.reroute(old, peer.clone(), msg, priority, true, now, &mut no_actions);
        }
        debug_assert!(no_actions.is_empty(), "sends never produce driver actions");
    }

    /// Connection `key` replaced `old` on another shard: ask that shard to
    /// hand over. False if it cannot be asked (its queue is full, it
    /// failed); the caller then closes `old` the plain way.
    fn await_handover(&mut self, key: usize, old: &PeerHandle) -> bool {
        let Some(slot) = self.conns.get_mut(key) else {
            return false;
        };
        let by = ConnId {
            shard: self.id,
            key,
            generation: slot.generation,
        };
        let Some(link) = self.shared.shards.get(old.id.shard) else {
            return false;
        };
        if !link.load.is_alive() || link.send(Command::ReplacedBy { id: old.id, by }).is_err() {
            return false;
        }
        slot.paused_behind = Some(old.id);
        slot.handover = Some(Box::new(Handover {
            from: old.id,
            deadline: Instant::now() + self.shared.config.timeouts.handshake_timeout,
            messages_in: false,
            handed: false,
            parked: VecDeque::new(),
        }));
        true
    }

    /// [`Command::ReplacedBy`]: close `id`, hand its unsent messages to
    /// `by`, and have its close announced to `by`.
    pub(super) fn replaced_by(&mut self, id: ConnId, by: ConnId, now: Instant) {
        let mut msgs = Vec::new();
        let mut peer = None;
        let mut handle = None;
        if let Some(slot) = self.conns.live_mut(id) {
            slot.moved_unsent = true;
            slot.notify_on_close = Some(by);
            slot.conn.close(CloseReason::Replaced, now);
            msgs = slot.conn.poll_unsent();
            // Parked on this one while it waited for its own hand-over:
            // newer than its unsent ones, and newer than what its own old
            // connection may still hand over: while that wait lasts they
            // stay, and follow as late sends once it ends (`release_parked`).
            if slot.handover.as_ref().is_none_or(|h| h.messages_in) {
                msgs.extend(take_parked(slot));
            }
            peer = slot.handle.as_ref().map(|h| h.peer.clone());
            handle = slot.handle.clone();
            self.dirty.push(id.key);
        }
        let link = self.shared.shards.get(by.shard);
        let rerouted = msgs.len();
        let sent = match peer {
            Some(peer) => {
                link.is_some_and(|l| l.send(Command::Handover { to: by, peer, msgs }).is_ok())
            }
            // Already gone: nothing to hand over, and no close to wait for.
            None => link.is_some_and(|l| l.send(Command::Released { to: by, gone: id }).is_ok()),
        };
        if !sent {
            // `by` stops waiting at its deadline; these are lost, counted.
            self.shared
                .metrics
                .send_dropped_n("shard_queue_full", rerouted);
        } else if let Some(handle) = handle {
            self.start_drain(id, by, handle, now);
        }
        if self.conns.contains(id.key) {
            self.after_io(id.key, now);
        }
    }

    /// [`Command::Handover`]: `msgs` go out on `to` ahead of what is parked
    /// for it (which waits for [`Command::HandedOver`]). After the wait
    /// ended (the deadline), they simply follow.
    pub(super) fn take_handover(
        &mut self,
        to: ConnId,
        peer: PublicKey,
        msgs: Vec<(Outgoing, Priority)>,
        now: Instant,
        actions: &mut Vec<DriverAction>,
    ) {
        let slot = self.conns.live_mut(to).filter(|s| s.conn.is_open());
        let Some(slot) = slot else {
            // The new connection is closing or gone too: forwarded to its
            // own replacement if it has handed over to another shard, else
            // each moves on its own.
            self.send_on_past(to, &peer, msgs, now, actions);
            return;
        };
        let mut refused = 0;
        for (msg, priority) in msgs {
            let share = slot.depth.force_reserve(msg.payload.len());
            self.shared.metrics.send_rerouted.inc();
            if slot.conn.send(msg, priority, Some(share)).is_err() {
                refused += 1;
            }
        }
        if let Some(h) = slot.handover.as_mut() {
            h.handed = true;
        }
        self.shared.metrics.send_dropped_n("queue_full", refused);
        self.dirty.push(to.key);
    }

    /// [`Command::HandedOver`]: nothing sent to `from` can still come; what
    /// was parked for `to` goes out.
    pub(super) fn handed_over(&mut self, to: ConnId, from: ConnId, now: Instant) {
        let Some(slot) = self.conns.live_mut(to) else {
            return;
        };
        if slot.handover.as_ref().is_none_or(|h| h.from != from) {
            return;
        }
        self.release_parked(to, now);
        let Some(slot) = self.conns.live_mut(to) else {
            return;
        };
        if slot.paused_behind != Some(from) {
            // The old connection is gone too: the wait is over.
            slot.handover = None;
        }
        self.process_input(to.key, now);
        self.dirty.push(to.key);
    }

    /// [`Command::Released`]: the connection `to` replaced is gone.
    pub(super) fn released(&mut self, to: ConnId, gone: ConnId, now: Instant) {
        let Some(slot) = self.conns.live_mut(to) else {
            return;
        };
        if slot.paused_behind == Some(gone) {
            slot.paused_behind = None;
        }
        // A `Released` without a hand-over (the old one was already gone)
        // ends the wait for messages too; after one, `HandedOver` does.
        if slot.handover.as_ref().is_some_and(|h| !h.handed) {
            self.release_parked(to, now);
        }
        let Some(slot) = self.conns.live_mut(to) else {
            return;
        };
        if slot.handover.as_ref().is_none_or(|h| h.messages_in) {
            slot.handover = None;
        }
        self.process_input(to.key, now);
        self.dirty.push(to.key);
    }

    /// The wait for messages of connection `id` is over: what was parked
    /// goes out on it, or, if `id` was itself replaced meanwhile (closing,
    /// it kept them back), follows as late sends to its replacement.
    pub(super) fn release_parked(&mut self, id: ConnId, now: Instant) {
        let Some(slot) = self.conns.live_mut(id) else {
            return;
        };
        if slot.conn.is_open() {
            let refused = unpark(slot);
            self.shared.metrics.send_dropped_n("queue_full", refused);
            return;
        }
        let parked = take_parked(slot);
        if let Some(h) = slot.handover.as_mut() {
            h.messages_in = true;
        }
        let peer = slot.handle.as_ref().map(|h| h.peer.clone());
        let Some(peer) = peer.or_else(|| slot.conn.peer().cloned()) else {
            self.shared
                .metrics
                .send_dropped_n("disconnected", parked.len());
            return;
        };
        let mut no_actions = Vec::new();
        self.send_on_past(id, &peer, parked, now, &mut no_actions);
        debug_assert!(no_actions.is_empty(), "sends never produce driver actions");
    }

    /// Messages for `id`, which was replaced and is closing or gone: to its
    /// replacement on another shard as late sends while it drains there
    /// (`drain`), else each rerouted to the peer's current connection.
    fn send_on_past(
        &mut self,
        id: ConnId,
        peer: &PublicKey,
        msgs: Vec<(Outgoing, Priority)>,
        now: Instant,
        actions: &mut Vec<DriverAction>,
    ) {
        for (msg, priority) in msgs {
            if let Some((msg, priority)) = self.forward_late(id, msg, priority) {
                self.reroute(id, peer.clone(), msg, priority, true, now, actions);
            }
        }
    }

    /// Connection `gone` closed: tell the connection that replaced it (on
    /// another shard) that it may read.
    pub(super) fn announce_release(&self, gone: ConnId, to: Option<ConnId>) {
        if let Some(to) = to {
            if let Some(link) = self.shared.shards.get(to.shard) {
                let _ = link.send(Command::Released { to, gone });
            }
        }
    }

    /// Ends waits past their deadline (the other shard never answered).
    pub(super) fn expire_handovers(&mut self, now: Instant) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, s)| s.handover.as_ref().is_some_and(|h| now >= h.deadline))
            .map(|(k, _)| k)
            .collect();
        for key in late {
            let Some(id) = self.conns.get(key).map(|s| ConnId {
                shard: self.id,
                key,
                generation: s.generation,
            }) else {
                continue;
            };
            tracing::debug!(shard = self.id, "hand-over from another shard timed out");
            self.release_parked(id, now);
            if let Some(slot) = self.conns.get_mut(key) {
                if let Some(h) = slot.handover.take() {
                    if slot.paused_behind == Some(h.from) {
                        slot.paused_behind = None;
                    }
                }
            }
            self.process_input(key, now);
            self.dirty.push(key);
        }
    }

    /// Messages still parked when connection `slot` closes: given back to
    /// the queue depth and counted as dropped (as its queued ones are).
    pub(super) fn drop_parked(&self, slot: &mut ConnSlot) {
        if let Some(h) = slot.handover.as_mut() {
            let n = h.parked.len();
            for (_, _, share) in h.parked.drain(..) {
                slot.depth.release(share);
            }
            self.shared.metrics.send_dropped_n("disconnected", n);
        }
    }
}

impl ConnSlot {
    /// Parks `msg` if this connection waits for a hand-over; hands it back
    /// otherwise.
    pub(super) fn park_for_handover(
        &mut self,
        msg: Outgoing,
        priority: Priority,
        share: Share,
    ) -> Option<(Outgoing, Priority, Share)> {
        match self.handover.as_mut().filter(|h| !h.messages_in) {
            Some(h) => {
                h.parked.push_back((msg, priority, share));
                None
            }
            None => Some((msg, priority, share)),
        }
    }
}

/// Moves what was parked into the connection's queue, in order; the wait
/// for messages is over (the input may still be paused). Returns how many
/// the connection refused (its hard cap; it gave their shares back).
fn unpark(slot: &mut ConnSlot) -> usize {
    let mut refused = 0;
    if let Some(h) = slot.handover.as_mut() {
        h.messages_in = true;
        for (msg, priority, share) in h.parked.drain(..) {
            if slot.conn.send(msg, priority, Some(share)).is_err() {
                refused += 1;
            }
        }
    }
    refused
}

/// The messages parked on `slot` (which is being replaced itself), with
/// their queue depth given back: they move on with its unsent ones.
fn take_parked(slot: &mut ConnSlot) -> Vec<(Outgoing, Priority)> {
    let Some(h) = slot.handover.as_mut() else {
        return Vec::new();
    };
    let mut shares = Share::empty(&slot.depth);
    let parked = h
        .parked
        .drain(..)
        .map(|(msg, priority, share)| {
            shares.merge(share);
            (msg, priority)
        })
        .collect();
    slot.depth.release(shares);
    parked
}
