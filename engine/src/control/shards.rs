//! The control shard's hand on the data shards: placing accepted sockets
//! and dials, and the records and closes the parts ask for; and the parts'
//! view of the node ([`Connections`] from the peer table, [`DialView`]
//! from the shared counters).
//!
//! # Design
//! A new connection goes to the live data shard with the fewest
//! connections ([`crate::placement`]; a failed shard gets none; a dial to a
//! placed peer goes to its shard), and is
//! counted where the limits look: an accepted socket in `inbound` (its
//! address already counted by the acceptor), a dial in `outbound` plus the
//! peer's dialing mark, until the connection ends. When a shard's queue is
//! full the counts are given back at once and the socket or dial is
//! dropped. A record or close that does not fit a full queue is dropped
//! and counted (`control_dropped`).

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Instant;

use shoal_crypto::PublicKey;

use super::dialer::DialView;
use super::Connections;
use crate::connection::ControlOut;
use crate::peers::{ConnId, PeerTable};
use crate::shard::Command;
use crate::shared::Shared;

/// The shard a new connection goes to.
fn pick(shared: &Shared, next_shard: &mut usize) -> Option<usize> {
    crate::placement::pick(shared.shards.iter().map(|l| &l.load), next_shard)
}

/// Hands an admitted socket from `ip` to a shard (or drops it, giving its
/// per-address count back, when no shard takes it).
pub(crate) fn adopt(shared: &Shared, next_shard: &mut usize, stream: TcpStream, ip: IpAddr) {
    let Some(shard) = pick(shared, next_shard) else {
        shared.metrics.refuse("no_live_shard");
        shared.inbound_ips.release(ip);
        return;
    };
    shared.inbound.fetch_add(1, Ordering::AcqRel);
    let link = &shared.shards[shard];
    link.load.assign();
    if link.send(Command::Adopt { stream, ip }).is_err() {
        link.load.release();
        shared.release_inbound(ip);
        shared.metrics.refuse("shard_queue_full");
    }
}

/// Hands a dial to a shard, counting it against `max_outbound` and marking
/// the peer as being dialed until it ends.
pub(crate) fn dial(shared: &Shared, next_shard: &mut usize, peer: PublicKey, addr: SocketAddr) {
    let placed = shared
        .pins
        .get(&peer)
        .filter(|&s| shared.shards.get(s).is_some_and(|l| l.load.is_alive()));
    let Some(shard) = placed.or_else(|| pick(shared, next_shard)) else {
        return;
    };
    let link = &shared.shards[shard];
    shared.outbound.fetch_add(1, Ordering::AcqRel);
    shared.peers.mark_dialing(&peer, true);
    link.load.assign();
    if link
        .send(Command::Dial {
            peer: peer.clone(),
            addr,
        })
        .is_err()
    {
        link.load.release();
        shared.outbound.fetch_sub(1, Ordering::AcqRel);
        shared.peers.mark_dialing(&peer, false);
    }
}

/// Queues `cmd` on the shard of the connection it concerns.
pub(crate) fn send(shared: &Shared, id: ConnId, cmd: Command) {
    if let Some(link) = shared.shards.get(id.shard) {
        if link.send(cmd).is_err() {
            shared.metrics.control_dropped.inc();
        }
    }
}

/// Sends a control record on connection `id`.
pub(crate) fn send_control(shared: &Shared, id: ConnId, record: ControlOut) {
    send(shared, id, Command::Control { id, record });
}

impl Connections for PeerTable {
    fn get(&self, peer: &PublicKey) -> Option<ConnId> {
        PeerTable::get(self, peer).map(|h| h.id)
    }

    fn each(&self, f: &mut dyn FnMut(&PublicKey, ConnId)) {
        self.with(|map| {
            for (k, h) in map.iter() {
                f(k, h.id);
            }
        });
    }
}

impl DialView for Shared {
    fn is_connected(&self, peer: &PublicKey) -> bool {
        self.peers.contains(peer)
    }

    fn is_dialing(&self, peer: &PublicKey) -> bool {
        self.peers.dialing_snapshot().contains(peer)
    }

    fn is_cooling(&self, peer: &PublicKey, now: Instant) -> bool {
        self.cooldown.active(peer, now)
    }

    fn outbound(&self) -> usize {
        self.outbound.load(Ordering::Acquire)
    }
}
