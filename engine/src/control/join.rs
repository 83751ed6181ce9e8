//! Open mode's join and refresh sequence: the lookups a node runs to fill
//! its routing table.
//!
//! # Design
//! A node learns table entries only from nodes it connects to, and a
//! lookup of its own id only meets nodes near itself: with nothing more, a
//! node whose bootstrapper sits in the same half of the id space never
//! hears of the other half, and every lookup toward it ends among the wrong
//! nodes (measured: 2–4 of 100 lookups on 100 nodes returned none of the
//! true closest). So, as in the Kademlia paper, the join looks up its own id
//! ([`JOIN_OWN_ID`] times: the first runs on a nearly empty table), then a
//! random id in every bucket farther than its closest neighbour, farthest
//! first (at most [`MAX_BUCKET_REFRESH`]); the round repeats every
//! [`REFRESH_INTERVAL`], so buckets that lost their entries (or never had
//! any) are filled from the live network. One join lookup runs at a time.

use std::time::{Duration, Instant};

use crate::kademlia::{NodeId, RoutingTable};

/// Lookups of our own id when joining (the first ones run on a nearly empty
/// table, so they are repeated once).
pub(crate) const JOIN_OWN_ID: u32 = 2;
/// At most this many bucket-refresh lookups per join or refresh round.
pub(crate) const MAX_BUCKET_REFRESH: u32 = 24;
/// The join sequence runs again this often, so buckets that lost their
/// entries (or never had any) are filled from the live network.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// Where a node is in its join sequence. See the module docs.
pub(crate) struct Join {
    /// Position in the round.
    step: u32,
    next_refresh: Option<Instant>,
    /// The join lookup in progress.
    running: Option<u64>,
}

impl Join {
    pub(crate) fn new() -> Self {
        Self {
            step: 0,
            next_refresh: None,
            running: None,
        }
    }

    /// The next join lookup's target, unless one is still running
    /// (`running(id)` says whether lookup `id` is): report the lookup
    /// started for it with [`Join::handle_started`].
    pub(crate) fn poll_target<R: rand::Rng + ?Sized>(
        &mut self,
        table: &RoutingTable,
        local: NodeId,
        running: impl Fn(u64) -> bool,
        now: Instant,
        rng: &mut R,
    ) -> Option<NodeId> {
        if self.running.is_some_and(|id| !running(id)) {
            self.running = None;
        }
        if self.running.is_some() {
            return None;
        }
        self.next_target(table, local, now, rng)
    }

    /// The lookup started for the last target (none: it could not start).
    pub(crate) fn handle_started(&mut self, lookup: Option<u64>) {
        self.running = lookup;
    }

    /// The next target of the round, or `None` when the round is complete
    /// or the table is empty.
    pub(crate) fn next_target<R: rand::Rng + ?Sized>(
        &mut self,
        table: &RoutingTable,
        local: NodeId,
        now: Instant,
        rng: &mut R,
    ) -> Option<NodeId> {
        if table.is_empty() {
            return None;
        }
        let next_refresh = *self.next_refresh.get_or_insert(now + REFRESH_INTERVAL);
        if now >= next_refresh {
            self.step = 0;
            self.next_refresh = Some(now + REFRESH_INTERVAL);
        }
        if self.step < JOIN_OWN_ID {
            self.step += 1;
            return Some(local);
        }
        let refresh = self.step - JOIN_OWN_ID;
        if refresh >= MAX_BUCKET_REFRESH {
            return None;
        }
        // Bucket 255 holds the farthest half of the id space.
        let bucket = 255usize.checked_sub(refresh as usize)?;
        let closest = (0..256).find(|&b| table.bucket_len(b) > 0)?;
        if bucket <= closest {
            return None;
        }
        self.step += 1;
        Some(local.random_in_bucket(bucket, rng))
    }
}
