//! `[gossip]` of `shoal node`: a gossip broadcast probe for test clusters.
//!
//! The node runs gossip on `channel` over every connection it has and
//! broadcasts a numbered message every `interval`, up to `count`; what it
//! delivers and forwards shows in `shoal_gossip_events_total{channel,event}`
//! (`published`, `delivered`, `duplicate`, ...). `scripts/netns-mesh.sh`
//! reads those to check that every node received every other node's
//! messages across its impaired links. Not meant for production nodes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal::{Deliveries, GossipSender};

/// How long the loop waits at most before looking at `stop`.
const POLL: Duration = Duration::from_millis(100);

/// What the probe does (from the `[gossip]` table).
pub struct Plan {
    pub interval: Duration,
    pub count: Option<u64>,
    /// Connected peers to wait for before the first broadcast: gossip
    /// reaches the nodes connected when a message goes out, not later
    /// arrivals.
    pub wait_peers: usize,
}

/// Broadcasts every `interval` (up to `count`, once gossip has
/// `wait_peers` neighbours: every connected peer is one) and takes every
/// delivery until `stop`; prints what it did.
pub fn run(tx: GossipSender, rx: Deliveries, plan: Plan, stop: Arc<AtomicBool>) {
    let (mut published, mut delivered, mut refused) = (0u64, 0u64, 0u64);
    let mut next = Instant::now();
    let mut started = plan.wait_peers == 0;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        started = started || tx.neighbors() >= plan.wait_peers;
        if started && now >= next && plan.count.is_none_or(|c| published < c) {
            match tx.broadcast(Bytes::from(format!("gossip probe {}", published + 1))) {
                Ok(_) => published += 1,
                Err(e) => {
                    refused += 1;
                    tracing::debug!(%e, "gossip probe: broadcast refused");
                }
            }
            next = now + plan.interval;
        }
        // Nothing to send before the neighbours are there or after the
        // last broadcast: only deliveries to take.
        let sending = started && plan.count.is_none_or(|c| published < c);
        let wait = if sending {
            next.saturating_duration_since(Instant::now()).min(POLL)
        } else {
            POLL
        };
        match rx.recv_timeout(wait) {
            Ok(Some(_)) => delivered += 1,
            Ok(None) => {}
            Err(_) => break,
        }
    }
    eprintln!(
        "shoal node: gossip: published {published}, delivered {delivered}, refused {refused}"
    );
}
