//! A connection replaced by one on another shard, handed over in order.
//!
//! # Design
//! When a peer's new connection wins the tie-break against its old one, the
//! old connection's unsent messages move to the new one ahead of anything
//! sent later, and the new connection reads only after the old one has
//! delivered what it carried (per channel, the peer's messages arrive in the
//! order they were sent). On one shard both happen at once
//! (`move_unsent_if_replaced`, `hold_for`). Across shards the new
//! connection's shard (B) cannot touch the old one, so:
//!
//! 1. B admits the new connection and, instead of a plain close, sends the
//!    old connection's shard (A) [`Command::ReplacedBy`]. Until the
//!    hand-over arrives, messages sent to the new connection are held in
//!    its slot (already counted in its queue depth, so bounded like the
//!    queue) and its input waits.
//! 2. A closes the old connection, takes its unsent messages and sends them
//!    to B in one [`Command::Handover`]; B queues them, then the held ones,
//!    and sends.
//! 3. When the old connection is gone, A sends [`Command::Released`]; B
//!    reads.
//!
//! If A cannot answer (its queue is full, it failed), B stops waiting after
//! `handshake_timeout`: order is then best effort, delivery is not affected.
//! A message a sender addressed to the old connection that reaches A after
//! step 2 (it looked the peer up just before the switch) is rerouted on its
//! own and may follow newer ones.

use std::collections::VecDeque;
use std::time::Instant;

use shoal_crypto::PublicKey;
use shoal_wire::CloseReason;

use super::{Command, DriverAction, ShardCore};
use crate::connection::Outgoing;
use crate::peers::{ConnId, PeerHandle};

/// A new connection's wait for the one it replaced on another shard.
pub(crate) struct Handover {
    from: ConnId,
    /// Stop waiting (for the messages and for the input) after this.
    deadline: Instant,
    /// The hand-over arrived: only the input still waits.
    messages_in: bool,
    /// Sent to this connection before the hand-over arrived, in order.
    held: VecDeque<(Outgoing, bool)>,
}

impl ShardCore {
    /// Connection `key` replaced `old` on another shard: ask that shard to
    /// hand over. False if it cannot be asked (its queue is full, it
    /// failed); the caller then closes `old` the plain way.
    pub(super) fn await_handover(&mut self, key: usize, old: &PeerHandle) -> bool {
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
        slot.hold_for = Some(old.id);
        slot.handover = Some(Box::new(Handover {
            from: old.id,
            deadline: Instant::now() + self.shared.config.timeouts.handshake_timeout,
            messages_in: false,
            held: VecDeque::new(),
        }));
        true
    }

    /// Holds `msg` if connection `key` waits for a hand-over; hands it back
    /// otherwise.
    pub(super) fn hold_if_waiting(
        &mut self,
        key: usize,
        msg: Outgoing,
        high: bool,
    ) -> Option<(Outgoing, bool)> {
        match self
            .conns
            .get_mut(key)
            .and_then(|s| s.handover.as_mut())
            .filter(|h| !h.messages_in)
        {
            Some(h) => {
                h.held.push_back((msg, high));
                None
            }
            None => Some((msg, high)),
        }
    }

    /// [`Command::ReplacedBy`]: close `id`, hand its unsent messages to
    /// `by`, and have its close announced to `by`.
    pub(super) fn replaced_by(&mut self, id: ConnId, by: ConnId, now: Instant) {
        let mut msgs = Vec::new();
        let mut peer = None;
        let live = self
            .conns
            .get_mut(id.key)
            .filter(|s| s.generation == id.generation);
        if let Some(slot) = live {
            slot.moved_unsent = true;
            slot.notify_on_close = Some(by);
            slot.conn.close(CloseReason::Replaced, now);
            msgs = slot.conn.take_unsent();
            // Held for this one while it waited for its own hand-over:
            // newer than its unsent ones.
            msgs.extend(take_held(slot));
            peer = slot.handle.as_ref().map(|h| h.peer.clone());
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
        }
        if self.conns.contains(id.key) {
            self.after_io(id.key, now);
        }
    }

    /// [`Command::Handover`]: `msgs` go out on `to` first, then what was
    /// held for it.
    pub(super) fn take_handover(
        &mut self,
        to: ConnId,
        peer: PublicKey,
        msgs: Vec<(Outgoing, bool)>,
        now: Instant,
        actions: &mut Vec<DriverAction>,
    ) {
        let slot = self
            .conns
            .get_mut(to.key)
            .filter(|s| s.generation == to.generation && s.conn.accepts_messages());
        let Some(slot) = slot else {
            // The new connection is gone too: each moves on its own.
            for (msg, high) in msgs {
                self.reroute(to, peer.clone(), msg, high, true, now, actions);
            }
            return;
        };
        let mut refused = 0;
        for (msg, high) in msgs {
            slot.depth.force_reserve(msg.payload.len());
            self.shared.metrics.send_rerouted.inc();
            if slot.conn.send(msg, high).is_err() {
                refused += 1;
            }
        }
        refused += release_held(slot);
        self.shared.metrics.send_dropped_n("queue_full", refused);
        self.dirty.push(to.key);
    }

    /// [`Command::Released`]: the connection `to` replaced is gone.
    pub(super) fn released(&mut self, to: ConnId, gone: ConnId, now: Instant) {
        let Some(slot) = self
            .conns
            .get_mut(to.key)
            .filter(|s| s.generation == to.generation)
        else {
            return;
        };
        if slot.hold_for == Some(gone) {
            slot.hold_for = None;
        }
        // A `Released` without a hand-over (the old one was already gone)
        // ends the wait for messages too.
        let refused = release_held(slot);
        slot.handover = None;
        self.shared.metrics.send_dropped_n("queue_full", refused);
        self.process_input(to.key, now);
        self.dirty.push(to.key);
    }

    /// Connection `key` closed: tell the connection that replaced it (on
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
            if let Some(slot) = self.conns.get_mut(key) {
                tracing::debug!(shard = self.id, "hand-over from another shard timed out");
                let refused = release_held(slot);
                self.shared.metrics.send_dropped_n("queue_full", refused);
                if let Some(h) = slot.handover.take() {
                    if slot.hold_for == Some(h.from) {
                        slot.hold_for = None;
                    }
                }
            }
            self.process_input(key, now);
            self.dirty.push(key);
        }
    }

    /// Messages still held when connection `slot` closes: given back to the
    /// queue depth and counted as dropped (as its queued ones are).
    pub(super) fn drop_held(&self, slot: &mut super::ConnSlot) {
        if let Some(h) = slot.handover.as_mut() {
            let n = h.held.len();
            let bytes: usize = h.held.iter().map(|(m, _)| m.payload.len()).sum();
            h.held.clear();
            slot.depth.release(n, bytes);
            self.shared.metrics.send_dropped_n("disconnected", n);
        }
    }
}

/// Moves what was held into the connection's queue, in order; the wait for
/// messages is over (the input may still wait). Returns how many the
/// connection refused (its hard cap; it gave their depth back).
fn release_held(slot: &mut super::ConnSlot) -> usize {
    let mut refused = 0;
    if let Some(h) = slot.handover.as_mut() {
        h.messages_in = true;
        for (msg, high) in h.held.drain(..) {
            if slot.conn.send(msg, high).is_err() {
                refused += 1;
            }
        }
    }
    refused
}

/// The messages held for `slot` (which is being replaced itself), with
/// their queue depth given back: they move on with its unsent ones.
pub(super) fn take_held(slot: &mut super::ConnSlot) -> Vec<(Outgoing, bool)> {
    let Some(h) = slot.handover.as_mut() else {
        return Vec::new();
    };
    let held: Vec<(Outgoing, bool)> = h.held.drain(..).collect();
    let bytes = held.iter().map(|(m, _)| m.payload.len()).sum();
    slot.depth.release(held.len(), bytes);
    held
}
