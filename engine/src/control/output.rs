//! The vocabulary the control shard's parts share: what they ask the loop
//! to do ([`Output`]) and how they see the node's connections
//! ([`Connections`]).
//!
//! # Design
//! Every part queues [`Output`]s and the loop carries them out in order,
//! right after the input that caused them, so that the records a part sends
//! on one connection leave in the order it decided them. Dials are two
//! steps: a part asks ([`Output::Dial`], [`Output::Learned`]) and the
//! dialer decides ([`Output::Connect`]) with the node's counters at that
//! moment. [`Connections`] is implemented by the peer table for the loop
//! and by a plain map in tests.

#[cfg(test)]
use std::collections::HashMap;
use std::net::SocketAddr;

use shoal_crypto::PublicKey;
use shoal_wire::CloseReason;

use crate::connection::ControlOut;
use crate::peers::ConnId;

/// What a part asks the loop to do.
#[derive(Debug)]
pub(crate) enum Output {
    /// Send a control record on a connection.
    Send { id: ConnId, record: ControlOut },
    /// Close a connection.
    Close { id: ConnId, reason: CloseReason },
    /// Count a refusal (`refused{reason}`).
    Refuse(&'static str),
    /// Ask the dialer to dial `peer` now (its checks apply).
    Dial { peer: PublicKey, addr: SocketAddr },
    /// `peer` has a new address: the dialer may retry it at once.
    Learned(PublicKey),
    /// From the dialer: start a dial on a data shard.
    Connect { peer: PublicKey, addr: SocketAddr },
}

/// The established connections, as the parts see them.
pub(crate) trait Connections {
    /// The connection to `peer`, if established.
    fn get(&self, peer: &PublicKey) -> Option<ConnId>;
    /// Calls `f` for every established connection.
    fn each(&self, f: &mut dyn FnMut(&PublicKey, ConnId));
}

#[cfg(test)]
impl Connections for HashMap<PublicKey, ConnId> {
    fn get(&self, peer: &PublicKey) -> Option<ConnId> {
        HashMap::get(self, peer).copied()
    }

    fn each(&self, f: &mut dyn FnMut(&PublicKey, ConnId)) {
        for (k, id) in self {
            f(k, *id);
        }
    }
}
