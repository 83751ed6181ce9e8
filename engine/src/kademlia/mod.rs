//! Sans-IO Kademlia core for open mode (DESIGN.md §5).
//!
//! # Design
//! Three pieces, none of which touches a socket, a thread or a clock: every
//! call takes `now: Instant`, randomness comes from a caller-provided
//! `rand::Rng`.
//! - [`NodeId`] / [`Distance`] ([`id`]): node id = Ed25519 public key, XOR
//!   metric, bucket index `255 - leading_zeros(a ^ b)`.
//! - [`RoutingTable`] ([`table`]): 256 buckets of `k = 16` entries with a
//!   bounded replacement cache each, and liveness-checked eviction (a full
//!   bucket asks the caller to ping its least-recently-seen entry; only a
//!   dead one is replaced).
//! - [`Lookup`] ([`lookup`]): iterative `FIND_NODE` toward the *target*, `alpha`
//!   queries in flight, per-query timeouts, bounded candidates and queries.
//!
//! ## How the engine drives it
//! - **Authenticated connection** (either direction) with a peer `id`
//!   listening on `addr`: `table.observe(id, addr, now)`. On
//!   [`Observe::PingOldest`] ping `oldest` (a `FIND_NODE` or ping RPC with a
//!   timeout) and call `table.ping_result(oldest, alive, now)`.
//! - **Peer gone for good** (repeated dial failures): `table.remove(&id)`.
//! - **`FIND_NODE(target)` received** from an authenticated peer: observe
//!   the sender, answer `table.closest(&target, K)`.
//! - **Lookup** (join, refresh, send-to-id): `Lookup::new(target,
//!   table.closest(&target, K), K, ALPHA).with_local_id(local)`; then
//!   send `FIND_NODE(target)` to every node from `poll_queries(now)`; feed
//!   answers to `on_response` (and `observe` the responder), errors and
//!   disconnects to `on_failure`; arm a timer at `poll_timeout()` and call
//!   `handle_timeout(now)` when it fires; call `poll_queries` again after
//!   every event until `is_done()`; then use `result()`.
//! - **Join**: observe the bootstrap peers, then run a few lookups of the
//!   local id (the simulation uses 3 rounds).
//! - **Refresh** (timer, e.g. every few minutes): a lookup of the local id
//!   and of `local.random_in_bucket(b, rng)` for buckets not touched lately.
//!
//! # Security
//! Node ids are public keys, so the handshake authenticates them: an
//! attacker cannot impersonate an existing id. Beyond that, this module does
//! **not** provide eclipse or Sybil resistance: keys are free, bucket
//! diversity (per-IP/subnet limits) is not enforced, lookups take a single
//! path, and addresses returned by peers are only as trustworthy as the
//! responder (signed addresses, if any, must be checked by the caller before
//! they reach [`Lookup::on_response`]). What it does provide: bounded memory
//! everywhere, old live entries are never displaced by newcomers, and a
//! query budget per lookup.

pub mod id;
pub mod lookup;
pub mod table;

#[cfg(test)]
mod sim;

pub use id::{NodeId, ID_BITS, ID_LEN};
pub use lookup::{Lookup, ALPHA};
pub use table::{Observe, PingOutcome, RoutingTable, TableConfig, K};
