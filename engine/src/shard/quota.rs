//! Channel quotas that hold back one channel, not the connection.
//!
//! # Design
//! A record on a channel with a [`governor::Quota`] that finds the peer's
//! limiter empty is held in its connection's slot, behind any record of
//! the same channel already held (per channel, order is kept), and the
//! connection goes on reading: the peer's other channels keep their
//! latency while one is flooded. Held records are released as the limiter
//! refills (checked at the shard's timer granularity, 20 ms). Only when a
//! connection holds [`QUOTA_HELD_BYTES`] (payloads plus 64 B a record;
//! small payloads are copied out of their frame so none pins a frame
//! buffer) is it paused until the next release: a peer cannot make the
//! node buffer more than that per connection, and TCP then pushes back on
//! it. Nothing is dropped while the connection lives; records still held
//! when it closes are counted (`refused{reason="quota_held_at_close"}`).
//!
//! The limiters are the peer's, shared by its connections and kept after
//! them ([`crate::limiters`]): neither a replacement connection nor a
//! reconnect refills a quota.

use std::collections::VecDeque;
use std::time::Instant;

use super::delivery::Received;
use super::ShardCore;

/// Bytes of held records after which a connection stops reading.
pub const QUOTA_HELD_BYTES: usize = 1 << 20;
/// What a held record costs beyond its payload (its queue entry): empty
/// records are not free.
const RECORD_OVERHEAD: usize = 64;
/// Held payloads up to this size are copied out of their frame buffer, so
/// that a held 1-byte record does not keep a whole frame's buffer alive
/// beyond what the bound counts.
const COPY_BELOW: usize = 4096;

/// Records held back by their channel's quota on one connection.
#[derive(Default)]
pub(super) struct QuotaHeld {
    /// Per channel (few), in arrival order.
    queues: Vec<(u32, VecDeque<Received>)>,
    bytes: usize,
}

impl QuotaHeld {
    fn holds(&self, channel: u32) -> bool {
        self.queues
            .iter()
            .any(|(c, q)| *c == channel && !q.is_empty())
    }

    fn push(&mut self, mut msg: Received) {
        if msg.payload.len() < COPY_BELOW {
            msg.payload = bytes::Bytes::copy_from_slice(&msg.payload);
        }
        self.bytes += cost(&msg);
        let ch = msg.spec.id;
        match self.queues.iter_mut().find(|(c, _)| *c == ch) {
            Some((_, q)) => q.push_back(msg),
            None => self.queues.push((ch, VecDeque::from([msg]))),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(|(_, q)| q.is_empty())
    }

    /// Records held (dropped with their connection).
    pub fn len(&self) -> usize {
        self.queues.iter().map(|(_, q)| q.len()).sum()
    }

    pub fn full(&self) -> bool {
        self.bytes >= QUOTA_HELD_BYTES
    }
}

impl ShardCore {
    /// Passes `msg` through its channel's quota on connection `key`: `Some`
    /// if it may be delivered now, `None` if it was held (behind held ones
    /// of its channel, or because the limiter is empty).
    pub(super) fn check_quota(
        &mut self,
        key: usize,
        msg: Received,
        now: Instant,
    ) -> Option<Received> {
        if msg.spec.quota.is_none() {
            return Some(msg);
        }
        let slot = self.conns.get_mut(key)?;
        let ch = msg.spec.id;
        if !slot.quota_held.holds(ch) {
            // Established connections carry their peer's limiters; records
            // arrive only on established ones.
            let Some(limiter) = slot.limiters.as_ref().and_then(|l| l.get(ch)) else {
                return Some(msg);
            };
            if limiter.check().is_ok() {
                return Some(msg);
            }
            self.shared.metrics.rate_limit_pauses.inc();
        }
        slot.quota_held.push(msg);
        if slot.quota_held.full() {
            // Paused: reading resumes at the next release.
            slot.paused_until = Some(now);
        }
        self.note_holding(key);
        None
    }

    /// Delivers the held records of connection `key` that their quotas
    /// admit now, in order per channel; stops at a full receiver (the
    /// record is held, as any other).
    pub(super) fn release_quota_held(&mut self, key: usize) {
        loop {
            let Some(slot) = self.conns.get_mut(key) else {
                return;
            };
            if slot.held.is_some() || slot.quota_held.is_empty() {
                return;
            }
            let mut next = None;
            for (ch, q) in slot.quota_held.queues.iter_mut() {
                let Some(front) = q.front() else {
                    continue;
                };
                let limiter = front
                    .spec
                    .quota
                    .and_then(|_| slot.limiters.as_ref().and_then(|l| l.get(*ch)));
                if limiter.is_none_or(|l| l.check().is_ok()) {
                    next = q.pop_front();
                    break;
                }
            }
            let Some(msg) = next else {
                return;
            };
            slot.quota_held.bytes -= cost(&msg);
            slot.quota_held.queues.retain(|(_, q)| !q.is_empty());
            self.push_to_receiver(key, msg);
        }
    }
}

/// What a held record counts against [`QUOTA_HELD_BYTES`].
fn cost(msg: &Received) -> usize {
    msg.payload.len() + RECORD_OVERHEAD
}
