//! Accepted output whose connection is no longer there.
//!
//! # Design
//! `send` tells the application a message was accepted as soon as it is in
//! a shard's command queue, addressed to the peer's connection of that
//! moment. The duplicate-connection tie-break and reconnects replace
//! connections while senders still hold the old one, so a message can find
//! its connection closing or gone. It is then rerouted: moved to the peer's
//! current connection (same shard: queued right behind what was already
//! routed there; another shard: through its queue), counted in
//! `send_rerouted`.
//!
//! If the old connection was replaced and its replacement is not in the
//! peer table yet (the peer rejected our duplicate first, its own is still
//! handshaking), the message is parked per peer, bounded in count, bytes
//! and time, and flushed, in order and ahead of newer sends, when the
//! peer's next connection is established. A message with no connection left
//! to go to is counted as dropped, never silently lost.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use shoal_crypto::PublicKey;

use super::slot::Live;
use super::{Command, DriverAction, ShardCore};
use crate::connection::{Outgoing, Priority};
use crate::peers::{ConnId, PeerHandle};
use crate::queue_depth::Share;

/// Output parked for each peer's next connection.
pub(super) type ParkedByPeer = HashMap<PublicKey, Parked>;

/// Messages parked for a peer's next connection.
pub(super) struct Parked {
    since: Instant,
    /// Payload bytes of `msgs`, bounded by `LimitSettings::peer_send_bytes`.
    bytes: usize,
    msgs: VecDeque<(Outgoing, Priority)>,
}

impl Parked {
    /// Messages parked.
    pub(super) fn len(&self) -> usize {
        self.msgs.len()
    }
}

impl ShardCore {
    /// [`Command::Send`]: queues one application message on connection `id`
    /// (`share` is its share of the connection's queue depth), parks it for
    /// the connection's hand-over, or reroutes it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_on(
        &mut self,
        id: ConnId,
        peer: &PublicKey,
        msg: Outgoing,
        priority: Priority,
        share: Share,
        now: Instant,
        actions: &mut Vec<DriverAction>,
    ) {
        match self.conns.live_mut(id) {
            Some(slot) if slot.conn.is_open() => {
                let Some((msg, priority, share)) = slot.park_for_handover(msg, priority, share)
                else {
                    return;
                };
                // The connection enforces its own hard cap and gives the
                // share back if it refuses (a rerouted message can find it
                // full).
                if slot.conn.send(msg, priority, Some(share)).is_ok() {
                    self.dirty.push(id.key);
                } else {
                    self.shared.metrics.send_dropped("queue_full");
                }
            }
            closing => {
                // Accepted for a connection that began closing (or is gone)
                // since: give its share back and move the message to the
                // peer's current connection. A connection already gone took
                // its closed depth with it: the share is dropped (see
                // `queue_depth`).
                let replaced = match closing {
                    Some(slot) => {
                        slot.depth.release(share);
                        slot.conn.is_replaced()
                    }
                    None => self.recently_replaced.iter().any(|(c, _)| *c == id),
                };
                // Handed over to another shard: late, but still ahead of
                // what was sent there since (`drain`).
                let Some((msg, priority)) = self.forward_late(id, msg, priority) else {
                    return;
                };
                self.reroute(id, peer.clone(), msg, priority, replaced, now, actions);
            }
        }
    }

    /// Moves an accepted message whose connection `old` closed to the peer's
    /// current connection, or parks it if `old` was `replaced` by one not
    /// established yet.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reroute(
        &mut self,
        old: ConnId,
        peer: PublicKey,
        msg: Outgoing,
        priority: Priority,
        replaced: bool,
        now: Instant,
        actions: &mut Vec<DriverAction>,
    ) {
        let Some(h) = self.shared.peers.get(&peer).filter(|h| h.id != old) else {
            if replaced {
                self.park(peer, msg, priority, now);
            } else {
                // The peer left (shutdown, error): nothing to wait for.
                self.shared.metrics.send_dropped("disconnected");
            }
            return;
        };
        if self.parked.contains_key(&peer) {
            // Older messages waited for this connection: they go first.
            self.flush_parked(&peer, now);
        }
        self.send_to_current(&h, peer, msg, priority, now, actions);
    }

    /// Replaced by a connection still handshaking (the peer rejected our
    /// duplicate first): wait for it, bounded in count, bytes and time.
    fn park(&mut self, peer: PublicKey, msg: Outgoing, priority: Priority, now: Instant) {
        let cfg = &self.shared.config;
        let p = self.parked.entry(peer).or_insert_with(|| Parked {
            since: now,
            bytes: 0,
            msgs: VecDeque::new(),
        });
        let len = msg.payload.len();
        if p.msgs.len() < cfg.limits.peer_send_backlog
            && (p.bytes == 0 || p.bytes.saturating_add(len) <= cfg.limits.peer_send_bytes)
        {
            p.bytes += len;
            p.msgs.push_back((msg, priority));
        } else {
            self.shared.metrics.send_dropped("disconnected");
        }
    }

    /// Hands `peer`'s parked messages to its current connection, if it has
    /// one that is not closing; drops them (counted) once they waited longer
    /// than a handshake may take.
    pub(super) fn flush_parked(&mut self, peer: &PublicKey, now: Instant) {
        let Some(h) = self.shared.peers.get(peer) else {
            return self.expire_parked(peer, now);
        };
        let usable =
            h.id.shard != self.id || self.conns.live(h.id).is_some_and(|s| s.conn.is_open());
        if !usable {
            return self.expire_parked(peer, now);
        }
        let Some(p) = self.parked.remove(peer) else {
            return;
        };
        let mut no_actions = Vec::new();
        for (msg, priority) in p.msgs {
            self.send_to_current(&h, peer.clone(), msg, priority, now, &mut no_actions);
        }
    }

    /// [`ShardCore::flush_parked`] for every peer with parked output (the
    /// timer sweep).
    pub(super) fn flush_all_parked(&mut self, now: Instant) {
        if self.parked.is_empty() {
            return;
        }
        let peers: Vec<PublicKey> = self.parked.keys().cloned().collect();
        for peer in peers {
            self.flush_parked(&peer, now);
        }
    }

    /// Queues an already-accepted message on `h`, the peer's current
    /// connection (here, or through its shard's queue), counted as rerouted.
    fn send_to_current(
        &mut self,
        h: &PeerHandle,
        peer: PublicKey,
        msg: Outgoing,
        priority: Priority,
        now: Instant,
        actions: &mut Vec<DriverAction>,
    ) {
        let share = h.depth.force_reserve(msg.payload.len());
        self.shared.metrics.send_rerouted.inc();
        let cmd = Command::Send {
            id: h.id,
            peer,
            msg,
            priority,
            share,
        };
        if h.id.shard == self.id {
            // Terminates: the table points at `h.id`, so if that one is
            // closing too, its reroute finds `h.id == old` and parks or drops.
            self.handle_command(cmd, now, actions);
            return;
        }
        let refused = match self.shared.shards.get(h.id.shard) {
            Some(link) => link.send(cmd).err(),
            None => Some(cmd),
        };
        if let Some(cmd) = refused {
            if let Command::Send { share, .. } = cmd {
                h.depth.release(share);
            }
            self.shared.metrics.send_dropped("shard_queue_full");
        }
    }

    /// Drops `peer`'s parked messages (counted) once they waited longer than
    /// a handshake may take.
    fn expire_parked(&mut self, peer: &PublicKey, now: Instant) {
        let wait = self.shared.config.timeouts.handshake_timeout;
        if let Some(p) = self.parked.get(peer) {
            if now.saturating_duration_since(p.since) >= wait {
                let n = p.msgs.len();
                self.parked.remove(peer);
                self.shared.metrics.send_dropped_n("disconnected", n);
            }
        }
    }
}

#[cfg(test)]
impl Parked {
    /// `n` one-byte messages parked at `since`.
    pub(super) fn for_test(since: Instant, n: usize) -> Self {
        let msg = || Outgoing::data(1, bytes::Bytes::from_static(b"m"), false);
        Self {
            since,
            bytes: n,
            msgs: (0..n).map(|_| (msg(), Priority::Low)).collect(),
        }
    }
}
