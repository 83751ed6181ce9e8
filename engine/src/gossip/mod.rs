//! Gossip broadcast: every node reached through whatever overlay is
//! connected, about one copy per node (Plumtree: epidemic broadcast trees).
//!
//! # Design
//! A sans-IO core, [`Gossip`] ([`core`]), one per node and gossip channel:
//! neighbours come and go (`handle_neighbor_up/down`), frames come in
//! (`handle_frame`), local messages are published (`publish`), timers fire
//! (`handle_timeout` at `poll_timeout`); frames for given neighbours come
//! out of `poll_transmit` and delivered messages out of `poll_event`. No
//! sockets, threads or clocks: time is passed in.
//! - Eager push along a spanning tree per origin (formed by the origin's
//!   first message), lazy id announcements (IHAVE) to the other neighbours, GRAFT of a missing message after `graft_timeout`,
//!   PRUNE of links that bring duplicates, pulls (IWANT) from the other
//!   announcers after that; the tree heals as neighbours come and go.
//! - Messages are signed by their origin ([`auth`]); the id is the origin's
//!   key and its sequence number (the origin's clock in microseconds, so it
//!   grows across restarts and bounds a message's age). Relays verify
//!   before they deliver or forward.
//! - The application decides per message ([`Verdict`]): deliver and
//!   forward, deliver only, or reject (not forwarded, counted against the
//!   neighbour that sent it).
//! - Frames: a small binary layout with checked parsing ([`wire`]).
//! - Bounds ([`GossipConfig`], every field with a range): the seen-cache by
//!   count, age and bytes ([`seen`]), missing ids and their announcers,
//!   batched announcements per frame, neighbours, per-neighbour and
//!   per-origin rate budgets ([`budget`]), message size, hops.
//!
//! The simulation (`sim`, tests only) runs a thousand cores over a lossy,
//! delayed, churning overlay against flooding and a gossipsub-like mesh.
//! The engine drives one core per gossip channel on its own thread
//! ([`driver`], started by [`crate::NetworkHandle::gossip`]): every
//! connected peer is a neighbour, frames travel on the channel as ordinary
//! low-priority messages, and a neighbour reported by
//! [`Event::Misbehaving`] is disconnected.
//!
//! # Security
//! Provided: no relay can forge or alter a message (origin signatures,
//! checked before anything is delivered or forwarded, under a namespace
//! bound to the channel); a replay is dropped (seen-cache, age window, the
//! cache's floor); every per-neighbour and per-origin resource is bounded;
//! neighbours that send forged, rejected, oversized or unparsable frames are
//! ignored past a threshold and reported to the driver (which disconnects
//! them).
//!
//! Not provided: protection against an origin flooding within its budget,
//! against a neighbour that silently drops what it should forward (the lazy
//! announcements and grafts route around it, at a latency cost), eclipse
//! resistance beyond what the overlay gives, or ordering between origins.

pub mod auth;
pub mod budget;
pub mod config;
pub mod core;
pub mod driver;
pub mod seen;
pub mod wire;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

#[allow(unused_imports)]
pub use self::core::{Event, Gossip, PublishError, Stats, Transmit, Validator, Verdict};
#[allow(unused_imports)]
pub use auth::{sign_message, SchemeSigner, SchemeVerifier, Sign, Verifier};
#[allow(unused_imports)]
pub use config::GossipConfig;
pub use driver::{BroadcastError, GossipSender, GossipStats};
#[allow(unused_imports)]
pub use wire::{DataFrame, Frame, MessageId, ParseError};
