//! An accepted connection moving to the shard its peer is placed on
//! ([`crate::placement`], [`crate::NetworkHandle::place`]).
//!
//! # Design
//! Load placement chooses an accepted connection's shard before anyone
//! knows whose it is. When its handshake completes, [`ShardCore::on_established`]
//! asks [`ShardCore::move_if_placed`] first: if the peer is placed on
//! another live shard, the connection is not admitted here. Instead:
//!
//! 1. The slot is marked `moving`: paused (input that still arrives stays
//!    buffered, undecoded, in the connection) and transmitting nothing
//!    (what the connection queued waits in it). Its key goes to the
//!    `detaching` list.
//! 2. The driver lets go of the socket ([`Backend::detach`]), after a
//!    write in flight (or half done) finished: epoll at once; io_uring once
//!    its receives are cancelled and every operation on the socket
//!    completed. The peer's end of the stream arriving meanwhile does not
//!    close it (the target reads it again, after what came before).
//! 3. [`ShardCore::detached`] takes the whole slot out of the slab and sends
//!    it with the socket to the target shard ([`Command::Moved`]), whose
//!    load count takes it over. The address count (`inbound_ips`) and the
//!    handshaking gauge travel with it.
//! 4. The target shard gives the slot a key and generation of its own
//!    ([`ShardCore::adopt_moved`]), adopts the socket, and runs the
//!    establishment there ([`ShardCore::establish_moved`]): cooldown, peer
//!    table, announcement. Then it decodes what was buffered and sends what
//!    was queued.
//!
//! The connection was never in the peer table on the first shard, so no
//! message can have been addressed to it there, and the application sees
//! it only on its placed shard. A connection moves at most once
//! (`moved_in`). If the target cannot take it (its queue is full, or it
//! stopped), the connection stays on the first shard, adopted again there
//! at the next turn (`refused{reason="move_refused"}`). A move still queued
//! when the target exits is closed there and released (`shutdown` or
//! `shard_failed`); one dropped without any shard taking it (a queue nobody
//! drains any more) gives its counts back as it drops; one that reaches a
//! shard already shutting down is ended there without delivering anything. A connection that closes while it
//! moves (shutdown, a timeout) closes without a Close record: its output
//! waits for the target.
//!
//! [`Backend::detach`]: crate::driver::event_loop::Backend::detach

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use shoal_crypto::PublicKey;
use shoal_wire::CloseReason;

use super::slot::ConnSlot;
use super::{Command, ShardCore};
use crate::connection::CloseCause;
use crate::shared::Shared;

/// A connection on its way to another shard, with its socket. Dropped
/// before a shard adopted it (a queue nobody drains any more, actions
/// dropped with a failing driver), it gives back what the connection
/// counted: its address, the handshaking gauge, the load slot of the shard
/// it was headed for, and a close (`shard_failed`).
pub(crate) struct Moved {
    slot: Option<ConnSlot>,
    stream: Option<TcpStream>,
    /// The shard whose load counts it.
    to: usize,
    shared: Arc<Shared>,
}

impl Drop for Moved {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        if let Some(ip) = slot.inbound {
            self.shared.release_inbound(ip);
        }
        if slot.counted_handshaking {
            self.shared.metrics.handshaking.dec();
        }
        if let Some(link) = self.shared.shards.get(self.to) {
            link.load.release();
        }
        self.shared.metrics.close("shard_failed");
    }
}

impl ShardCore {
    // Getters.

    /// Keys whose sockets the driver should let go of; the driver calls
    /// [`ShardCore::detached`] for each once it has.
    pub(crate) fn detaching(&self) -> &[usize] {
        &self.detaching
    }

    /// `key` is moving: the driver hands its socket over instead of closing
    /// it when the peer's end of the stream arrives (the target reads the
    /// end again, after what came before it).
    pub(crate) fn is_moving(&self, key: usize) -> bool {
        self.conns.get(key).is_some_and(|s| s.moving.is_some())
    }

    // Mutators.

    /// At establishment: if `key` was accepted and its `peer` is placed on
    /// another live shard, starts its move there and returns true (it is
    /// not admitted here).
    pub(super) fn move_if_placed(&mut self, key: usize, peer: &PublicKey) -> bool {
        let Some(target) = self.shared.pins.get(peer) else {
            return false;
        };
        if target == self.id || self.shutdown.is_some() {
            return false;
        }
        if !self
            .shared
            .shards
            .get(target)
            .is_some_and(|l| l.load.is_alive())
        {
            return false;
        }
        let Some(slot) = self.conns.get_mut(key) else {
            return false;
        };
        if slot.inbound.is_none() || slot.moved_in || slot.moving.is_some() {
            return false;
        }
        tracing::debug!(shard = self.id, %peer, to = target, "moving a connection to its placed shard");
        slot.moving = Some(target);
        self.detaching.push(key);
        true
    }

    /// The driver let go of `key`'s socket: the connection goes to its
    /// target shard (see the module docs). A connection that closed
    /// meanwhile ends here instead.
    pub(crate) fn detached(&mut self, key: usize, stream: TcpStream) {
        self.detaching.retain(|&k| k != key);
        let Some((target, closed)) = self
            .conns
            .get(key)
            .and_then(|s| s.moving.map(|t| (t, s.conn.is_closed())))
        else {
            return;
        };
        if closed || self.shutdown.is_some() {
            self.end_move(key, "local_close");
            return;
        }
        let slot = self.conns.remove(key);
        self.closing.retain(|&k| k != key);
        self.holding.retain(|&k| k != key);
        let mut moved = Box::new(Moved {
            slot: Some(slot),
            stream: Some(stream),
            to: target,
            shared: self.shared.clone(),
        });
        let link = &self.shared.shards[target];
        if link.load.is_alive() {
            link.load.assign();
            match link.send(Command::Moved(moved)) {
                Ok(()) => {
                    self.shared.shards[self.id].load.release();
                    self.shared.metrics.connections_moved.inc();
                    return;
                }
                Err(Command::Moved(back)) => {
                    link.load.release();
                    moved = back;
                }
                // `send` hands back the command it was given.
                Err(_) => return,
            }
        }
        // The target cannot take it (its queue is full, or it stopped): the
        // connection stays here, adopted again at the next turn, and never
        // tries to move again.
        tracing::debug!(
            shard = self.id,
            to = target,
            "placed shard refused a connection; it stays"
        );
        self.shared.metrics.refuse("move_refused");
        // This shard's load still counts it.
        moved.to = self.id;
        self.readopt.push(*moved);
    }

    /// Connections whose move was refused, for the driver to adopt again
    /// here (at the top of the next turn, with the commands' actions).
    pub(super) fn take_readopted(&mut self, actions: &mut Vec<super::DriverAction>) -> bool {
        let any = !self.readopt.is_empty();
        actions.extend(
            self.readopt
                .drain(..)
                .map(|m| super::DriverAction::Moved(Box::new(m))),
        );
        any
    }

    /// [`Command::Moved`] arrived: the slot's new key here (the driver then
    /// adopts the socket and calls [`ShardCore::establish_moved`]).
    pub(crate) fn adopt_moved(&mut self, mut moved: Box<Moved>) -> Option<(usize, TcpStream)> {
        let (mut slot, stream) = (moved.slot.take()?, moved.stream.take()?);
        slot.generation = self.next_generation;
        self.next_generation += 1;
        slot.moving = None;
        slot.moved_in = true;
        let key = self.conns.insert(slot);
        Some((key, stream))
    }

    /// The moved connection `key` has its socket here: establishment runs
    /// as if the handshake had finished here, then what it buffered is
    /// decoded and what it queued is sent.
    pub(crate) fn establish_moved(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if self.shutdown.is_some() {
            // Arrived after this shard's shutdown closed the others: ended
            // without delivering (it was never announced).
            slot.conn.abort(CloseCause::Local(CloseReason::Shutdown));
            self.dirty.push(key);
            self.after_io(key, now);
            return;
        }
        let Some(peer) = slot.conn.peer().cloned() else {
            return;
        };
        self.on_established(key, peer);
        self.process_input(key, now);
        self.dirty.push(key);
    }

    /// A moved connection this shard exits with, unhandled: closed and
    /// released here as any other, its socket dropped.
    pub(super) fn drop_moved(&mut self, moved: Box<Moved>, label: &'static str) {
        if let Some((key, stream)) = self.adopt_moved(moved) {
            drop(stream);
            self.end_move(key, label);
        }
    }

    /// Ends a connection whose move could not finish: it closes here and
    /// is released as any other.
    fn end_move(&mut self, key: usize, label: &'static str) {
        if let Some(slot) = self.conns.get_mut(key) {
            slot.moving = None;
            slot.close_label.get_or_insert(label);
            slot.conn.abort(CloseCause::Local(CloseReason::Normal));
        }
        self.finish_close(key, None);
    }
}

impl std::fmt::Debug for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moved").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, TcpListener};
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::config::Config;
    use crate::network::Network;

    /// A move dropped before any shard adopted it gives back what its
    /// connection counted: the address (one per address here, so the next
    /// connection from it is admitted again), the inbound and handshaking
    /// counts, the load slot, and a close.
    #[test]
    fn a_move_dropped_unadopted_gives_its_counts_back() {
        let mut cfg = Config::local(None);
        cfg.admission.max_inbound_per_ip = 1;
        let (net, _oracle) = Network::new(cfg).unwrap();
        let mut core = net.into_shard_core();
        let shared = core.shared.clone();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // What the acceptor and the control shard count for an accepted
        // socket, then the shard's slot.
        assert!(shared.inbound_ips.admit(ip));
        shared.inbound.fetch_add(1, Ordering::AcqRel);
        shared.shards[0].load.assign();
        let key = core.insert(Some(ip), None, Instant::now());
        assert_eq!(shared.metrics.handshaking.get(), 1);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let slot = core.conns.remove(key);
        drop(Moved {
            slot: Some(slot),
            stream: Some(stream),
            to: 0,
            shared: shared.clone(),
        });
        assert_eq!(shared.metrics.handshaking.get(), 0);
        assert_eq!(shared.inbound.load(Ordering::Acquire), 0);
        assert_eq!(shared.shards[0].load.slots(), 0);
        assert_eq!(shared.metrics.close_count("shard_failed"), 1);
        assert!(shared.inbound_ips.admit(ip), "the address was given back");
    }
}
