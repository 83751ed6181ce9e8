//! Routed unicast: a message to a node this node cannot reach directly,
//! carried hop by hop through the overlay, readable and alterable by
//! nobody on the way.
//!
//! # Design
//! A sans-IO core, [`Router`] ([`router`]), one per node: neighbours come
//! and go (`handle_neighbor_up/down`), frames come in (`handle_frame`),
//! local messages go out (`send`); frames for given neighbours come out of
//! `poll_transmit` and messages for this node out of `poll_event`. No
//! sockets, threads or clocks: time is passed in.
//! - The origin seals the payload to the target's identity key
//!   ([`shoal_crypto::sealed`]), with the origin, sequence and channel as
//!   associated data, and signs sequence, channel, target and sealed bytes
//!   under the node's namespace plus [`router::ROUTE_NAMESPACE_SUFFIX`]
//!   ([`envelope`] has the layout). The id is the origin's key and its
//!   clock in microseconds, as gossip's.
//! - Every node tells its neighbours who its neighbours are (a list frame,
//!   sent whole whenever the set changed, at most `route.max_neighbours`
//!   keys), so each node knows the mesh two hops out.
//! - Next hop: the target itself when it is a neighbour; otherwise up to
//!   `route.fanout` neighbours connected to the target (authorized mode's
//!   "via a peer connected to the target"); otherwise the `route.fanout`
//!   neighbours closest to the target by XOR distance of the keys
//!   (Kademlia's metric: greedy routing, which in open mode follows
//!   Kademlia's own neighbours). Never the neighbour it came from nor the
//!   origin. Each relay forwards an id once (the seen-cache), and at most
//!   `route.max_hops` relays carry it. On a 30-node random mesh of degree
//!   about 6 (the tests), every one of the 870 pairs is reached, with 4.2
//!   envelopes sent per message; with the greedy rule alone 861 of 870 were,
//!   with 24.6 envelopes.
//! - A reply is a routed message the other way: the same rule finds the
//!   path back.
//! - The engine drives one router per routed channel on its own thread
//!   ([`driver`], started by [`crate::NetworkHandle::route`]): every
//!   connected peer is a neighbour, envelopes travel on the channel as
//!   low-priority messages.
//!
//! # Security
//! Provided: relays can neither read a payload (sealed to the target) nor
//! alter or forge one (the origin's signature, checked by every relay
//! before it forwards, so a forged envelope dies at the first honest hop,
//! and counts against the neighbour that sent it). A box seen in transit
//! cannot be re-signed by another origin (its associated data names the
//! origin). Replays are dropped (seen-cache, age window, the cache's
//! floor); every neighbour and every origin has a rate budget at every
//! relay; queued output is bounded in bytes; envelopes are bounded in size
//! before anything is verified.
//!
//! Not provided: delivery guarantees (a relay that drops, a partition or a
//! hop limit loses the message silently: an application that needs to
//! know asks for a reply), anonymity (the origin and target travel in the
//! clear), protection against a relay that delays, or against an origin
//! flooding within its budget.

pub mod config;
pub mod driver;
pub mod envelope;
pub mod router;

#[cfg(test)]
mod tests;

pub use config::RouteConfig;
pub use driver::{RouteError, RouteSender, RouteStats};
#[allow(unused_imports)]
pub use router::{Event, Router, SendError, Stats, Transmit};
