//! The connection's outgoing queues: what waits to be encoded.
//!
//! # Design
//! Three queues, drained in this order into every frame: control records
//! (pings, pongs, discovery), then data messages of [`Priority::High`], then
//! of [`Priority::Low`]. A message longer than one record's chunk is written
//! part by part, and the high-priority queue is looked at again *between
//! every part*, so a small urgent message never waits behind a large one.
//!
//! An application message carries the [`Share`] of the connection's queue
//! depth its sender reserved; the queue owns the depth
//! ([`Connection::set_queue_depth`]) and keeps each share beside its
//! message until the message leaves: written (the shares of one frame's
//! messages are summed and given back in one atomic subtraction once that
//! frame is sealed, see `encode`), taken for a replacement connection
//! ([`Connection::poll_unsent`]), or dropped on close; whatever is still
//! held when the queue is dropped goes back then. A message the engine
//! originates itself (an RPC response, a handler's reply) has no share and
//! is not counted in the application's depth. Both kinds are bounded by the
//! connection's hard caps ([`super::ConnectionConfig::max_queued`],
//! [`super::ConnectionConfig::max_queued_bytes`]).

use std::collections::VecDeque;

use bytes::Bytes;
use shoal_wire::{BitVec, DataHeader, FindNode, Nodes, Peers, Ping, Pong, RecordKind};

use super::Connection;
use std::sync::Arc;

use crate::queue_depth::{QueueDepth, Share};

/// Which queue a message goes into: high priority is written first, between
/// the parts of a large low-priority message too (messages are chunked, so
/// a vote never waits behind a block).
///
/// ```
/// use shoal_engine::Priority;
/// let urgent = Priority::High;
/// assert_ne!(urgent, Priority::Low);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Written before every queued `Low` message.
    High,
    /// Written when no `High` message waits.
    Low,
}

/// A message queued for sending.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub kind: RecordKind,
    pub channel: u32,
    pub request_id: u64,
    pub status: u32,
    pub compressed: bool,
    pub payload: Bytes,
}

impl Outgoing {
    /// A plain data message.
    pub fn data(channel: u32, payload: Bytes, compressed: bool) -> Self {
        Self {
            kind: RecordKind::Data,
            channel,
            request_id: 0,
            status: 0,
            compressed,
            payload,
        }
    }
}

/// A control record queued for sending (always ahead of data).
#[derive(Clone, Debug)]
pub enum ControlOut {
    Ping(Ping),
    Pong(Pong),
    BitVec(BitVec),
    Peers(Peers),
    FindNode(FindNode),
    Nodes(Nodes),
}

/// Result of [`Connection::send`] when the hard cap is reached (or the
/// connection is closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection send queue full")]
pub struct QueueFull;

/// A queued message and how far it is written.
struct Pending {
    msg: Outgoing,
    /// Its share of the application-visible queue depth (internal sends such
    /// as RPC responses have none).
    share: Option<Share>,
    /// Set once the first part is written.
    message_id: u64,
    total_parts: u32,
    next_part: u32,
    offset: usize,
}

/// The next part of the front message, as [`Outbox::next_part`] hands it out.
pub(super) struct Part<'a> {
    pub(super) kind: RecordKind,
    pub(super) header: DataHeader,
    pub(super) data: &'a [u8],
}

/// See the module docs.
pub(super) struct Outbox {
    high: VecDeque<Pending>,
    low: VecDeque<Pending>,
    /// Payload bytes in `high` and `low` not yet encoded: sizes the output
    /// buffer once per batch instead of growing it (and copying) as it fills.
    queued_payload: usize,
    pub(super) control: VecDeque<ControlOut>,
    next_message_id: u64,
    /// The application-visible depth the shares are taken from (none for a
    /// connection nobody sends to through the API: tests).
    depth: Option<Arc<QueueDepth>>,
    /// Shares of the messages written into the frame being filled, given
    /// back once it is sealed ([`Outbox::release_written`]).
    written: Option<Share>,
}

impl Outbox {
    pub(super) fn new() -> Self {
        Self {
            high: VecDeque::new(),
            low: VecDeque::new(),
            queued_payload: 0,
            control: VecDeque::new(),
            next_message_id: 1,
            depth: None,
            written: None,
        }
    }

    /// The depth the shares of queued messages are taken from.
    pub(super) fn set_depth(&mut self, depth: Arc<QueueDepth>) {
        self.depth = Some(depth);
    }

    pub(super) fn depth(&self) -> Option<&Arc<QueueDepth>> {
        self.depth.as_ref()
    }

    /// Gives `share` back to the depth (dropped if there is none: see
    /// `queue_depth` on shares of ended connections).
    fn release(&self, share: Share) {
        if let Some(d) = &self.depth {
            d.release(share);
        }
    }

    /// Gives back the shares of all of `shares`, at once.
    fn release_all(&self, shares: impl IntoIterator<Item = Share>) {
        let mut all: Option<Share> = None;
        for s in shares {
            match all.as_mut() {
                Some(a) => a.merge(s),
                None => all = Some(s),
            }
        }
        if let Some(all) = all {
            self.release(all);
        }
    }

    /// Data messages queued (both priorities).
    pub(super) fn len(&self) -> usize {
        self.high.len() + self.low.len()
    }

    /// No data message is queued.
    pub(super) fn has_high(&self) -> bool {
        !self.high.is_empty()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.high.is_empty() && self.low.is_empty()
    }

    /// Payload bytes queued and not yet encoded.
    pub(super) fn queued_payload(&self) -> usize {
        self.queued_payload
    }

    fn push(&mut self, msg: Outgoing, priority: Priority, share: Option<Share>) {
        self.queued_payload += msg.payload.len();
        let pending = Pending {
            msg,
            share,
            message_id: 0,
            total_parts: 0,
            next_part: 0,
            offset: 0,
        };
        match priority {
            Priority::High => self.high.push_back(pending),
            Priority::Low => self.low.push_back(pending),
        }
    }

    /// The next part to write, up to `chunk_size` bytes of the front
    /// message (high priority first), which gets its message id at its
    /// first part.
    pub(super) fn next_part(&mut self, chunk_size: usize) -> Option<Part<'_>> {
        let queue = if self.high.is_empty() {
            &mut self.low
        } else {
            &mut self.high
        };
        let p = queue.front_mut()?;
        if p.total_parts == 0 {
            p.total_parts = shoal_wire::parts_for(p.msg.payload.len(), chunk_size);
            p.message_id = self.next_message_id;
            self.next_message_id = self.next_message_id.wrapping_add(1);
        }
        let end = (p.offset + chunk_size).min(p.msg.payload.len());
        Some(Part {
            kind: p.msg.kind,
            header: DataHeader {
                channel: p.msg.channel,
                message_id: p.message_id,
                part: p.next_part,
                total_parts: p.total_parts,
                total_len: p.msg.payload.len() as u64,
                compressed: p.msg.compressed,
                request_id: p.msg.request_id,
                status: p.msg.status,
            },
            data: &p.msg.payload[p.offset..end],
        })
    }

    /// The part [`Outbox::next_part`] handed out was written: advances its
    /// message. True if that was its last part: the message leaves the
    /// queue and its share waits for the frame's seal.
    pub(super) fn part_written(&mut self, chunk_size: usize) -> bool {
        let queue = if self.high.is_empty() {
            &mut self.low
        } else {
            &mut self.high
        };
        let Some(p) = queue.front_mut() else {
            return false;
        };
        let end = (p.offset + chunk_size).min(p.msg.payload.len());
        self.queued_payload -= end - p.offset;
        p.offset = end;
        p.next_part += 1;
        if p.next_part < p.total_parts {
            // A part fills most of a frame: the next one goes into a new
            // frame, after another look at the high-priority queue.
            return false;
        }
        if let Some(share) = queue.pop_front().and_then(|p| p.share) {
            match self.written.as_mut() {
                Some(w) => w.merge(share),
                None => self.written = Some(share),
            }
        }
        true
    }

    /// The frame holding the written messages is sealed: their shares of the
    /// queue depth go back, at once.
    pub(super) fn release_written(&mut self) {
        if let Some(written) = self.written.take() {
            self.release(written);
        }
    }

    /// Takes the application's messages (high priority first), giving their
    /// queue-depth shares back; internal ones stay.
    fn take_unsent(&mut self) -> Vec<(Outgoing, Priority)> {
        let mut out = Vec::new();
        let mut shares = Vec::new();
        for (queue, priority) in [
            (&mut self.high, Priority::High),
            (&mut self.low, Priority::Low),
        ] {
            let mut keep = VecDeque::new();
            for p in queue.drain(..) {
                match p.share {
                    Some(share) => {
                        self.queued_payload -= p.msg.payload.len() - p.offset;
                        shares.push(share);
                        out.push((p.msg, priority));
                    }
                    None => keep.push_back(p),
                }
            }
            *queue = keep;
        }
        self.release_all(shares);
        out
    }

    /// Drops everything queued (the connection ended), giving every
    /// queue-depth share back at once, the written ones' included. Returns
    /// how many application messages were dropped unwritten.
    pub(super) fn clear(&mut self) -> usize {
        let mut dropped = 0;
        let queued: Vec<Share> = self
            .high
            .drain(..)
            .chain(self.low.drain(..))
            .filter_map(|p| p.share)
            .inspect(|_| dropped += 1)
            .collect();
        let written = self.written.take();
        self.release_all(queued.into_iter().chain(written));
        self.queued_payload = 0;
        self.control.clear();
        dropped
    }
}

impl Drop for Outbox {
    /// Whatever is still queued or written-but-unsealed gives its share
    /// back with the queue.
    fn drop(&mut self) {
        self.clear();
    }
}

impl Connection {
    /// Queues a data message. `share` is its share of the connection's
    /// application-visible queue depth (`None` for a message the engine
    /// itself originates: an RPC response, a handler's reply); the queue
    /// gives it back when the message is written, dropped or taken
    /// ([`Connection::poll_unsent`]). Refused (and the share given back at
    /// once) past the hard caps or once a close began.
    pub fn send(
        &mut self,
        msg: Outgoing,
        priority: Priority,
        share: Option<Share>,
    ) -> Result<(), QueueFull> {
        let len = msg.payload.len();
        let queued = self.tx.queued_payload;
        if !self.is_open()
            || self.tx.len() >= self.cfg.max_queued
            || (queued > 0 && queued.saturating_add(len) > self.cfg.max_queued_bytes)
        {
            if let Some(share) = share {
                self.tx.release(share);
            }
            return Err(QueueFull);
        }
        self.tx.push(msg, priority, share);
        Ok(())
    }

    /// Queues a control record (ahead of all data), once established;
    /// refused beyond `max_queued` control records.
    pub fn send_control(&mut self, rec: ControlOut) -> Result<(), QueueFull> {
        if self.is_closed()
            || !self.is_established()
            || self.tx.control.len() >= self.cfg.max_queued
        {
            return Err(QueueFull);
        }
        self.tx.control.push_back(rec);
        Ok(())
    }

    /// Takes the application's queued messages (high priority first, each
    /// with its priority), giving their queue-depth shares back: the shard
    /// moves them to the connection that replaced this one. A message whose
    /// first parts were already written is taken whole (the peer discards
    /// the parts with this connection). Internal sends (RPC responses) stay.
    pub fn poll_unsent(&mut self) -> Vec<(Outgoing, Priority)> {
        self.tx.take_unsent()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use shoal_wire::CloseReason;

    use super::super::testing::{messages, pair, pump};
    use super::*;
    use crate::queue_depth::QueueDepth;

    #[test]
    fn high_priority_overtakes_a_chunked_message() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let big = Bytes::from(vec![9u8; 64 * 1024]);
        a.send(Outgoing::data(1, big.clone(), false), Priority::Low, None)
            .unwrap();
        // Let the first part go, then an urgent message arrives.
        let first = a.poll_transmit().unwrap();
        b.handle_input(&first, t0);
        a.send(
            Outgoing::data(2, Bytes::from_static(b"urgent"), false),
            Priority::High,
            None,
        )
        .unwrap();
        let (_, eb) = pump(&mut a, &mut b, t0);
        let got = messages(eb);
        let urgent = got.iter().position(|(c, _)| *c == 2).unwrap();
        let bigpos = got.iter().position(|(c, _)| *c == 1).unwrap();
        assert!(
            urgent < bigpos,
            "urgent first: {:?}",
            got.iter().map(|m| m.0).collect::<Vec<_>>()
        );
        assert_eq!(got[bigpos].1, big);
    }

    #[test]
    fn a_replaced_connection_hands_over_its_unsent_messages_in_order() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let depth = Arc::new(QueueDepth::new(100, 1 << 20));
        a.set_queue_depth(depth.clone());
        for (text, priority) in [
            ("low 1", Priority::Low),
            ("high 1", Priority::High),
            ("low 2", Priority::Low),
        ] {
            let share = depth.try_reserve(text.len()).map(|p| p.into_share());
            a.send(Outgoing::data(1, Bytes::from(text), false), priority, share)
                .unwrap();
        }
        // An internal reply stays with the connection.
        a.send(
            Outgoing::data(1, Bytes::from("reply"), false),
            Priority::Low,
            None,
        )
        .unwrap();
        assert!(!a.is_replaced());
        a.close(CloseReason::Replaced, t0);
        assert!(a.is_replaced());
        let moved: Vec<(Bytes, Priority)> = a
            .poll_unsent()
            .into_iter()
            .map(|(m, priority)| (m.payload, priority))
            .collect();
        assert_eq!(
            moved,
            vec![
                (Bytes::from("high 1"), Priority::High),
                (Bytes::from("low 1"), Priority::Low),
                (Bytes::from("low 2"), Priority::Low)
            ]
        );
        assert_eq!(
            (depth.get(), depth.bytes()),
            (0, 0),
            "their shares went back"
        );
        // Nothing of them is written on the old connection; it just closes.
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert_eq!(messages(eb), vec![(1, Bytes::from("reply"))]);
        // The peer's side learns the reason and reports it too.
        assert!(b.is_replaced() || b.is_closed());
    }

    /// Every way a queued message leaves gives its queue-depth share back
    /// exactly once: written (once its frame is sealed), refused, or dropped
    /// on close (counted); a message without a permit changes nothing.
    #[test]
    fn each_message_gives_its_depth_back_once_however_it_leaves() {
        const MANY: usize = 32;
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0);
        let depth = Arc::new(QueueDepth::new(2000, 1 << 20));
        a.set_queue_depth(depth.clone());
        let send = |a: &mut Connection, len: usize, priority| {
            let share = depth.try_reserve(len).expect("room").into_share();
            a.send(
                Outgoing::data(1, Bytes::from(vec![1u8; len]), false),
                priority,
                Some(share),
            )
        };
        // Written: many small ones (several frames), and one in parts.
        for _ in 0..(MANY * 2 + 5) {
            send(&mut a, 10, Priority::Low).unwrap();
        }
        send(&mut a, 20_000, Priority::High).unwrap();
        a.send(
            Outgoing::data(1, Bytes::from_static(b"internal"), false),
            Priority::High,
            None,
        )
        .unwrap();
        assert_eq!(depth.get(), MANY * 2 + 6);
        let (_, eb) = pump(&mut a, &mut b, t0);
        assert_eq!(messages(eb).len(), MANY * 2 + 7);
        assert_eq!((depth.get(), depth.bytes()), (0, 0), "all written");
        // Refused: over the hard cap of 1000 queued messages.
        for _ in 0..1000 {
            send(&mut a, 10, Priority::Low).unwrap();
        }
        assert_eq!(send(&mut a, 10, Priority::High), Err(QueueFull));
        assert_eq!(
            (depth.get(), depth.bytes()),
            (1000, 10_000),
            "the refused one went back"
        );
        // Dropped on close: counted, given back, the depth closed.
        a.abort(super::super::CloseCause::IdleTimeout);
        assert_eq!(a.dropped_on_close(), 1000);
        assert_eq!((depth.get(), depth.bytes()), (0, 0));
        assert!(depth.is_closed());
    }

    /// A connection dropped with messages still queued (a shard that exits)
    /// gives their shares back with its queue.
    #[test]
    fn a_dropped_queue_gives_its_shares_back() {
        let t0 = Instant::now();
        let (mut a, _b) = pair(t0);
        let depth = Arc::new(QueueDepth::new(100, 1 << 20));
        a.set_queue_depth(depth.clone());
        for len in [3, 4, 5] {
            let share = depth.try_reserve(len).expect("room").into_share();
            a.send(
                Outgoing::data(1, Bytes::from(vec![0u8; len]), false),
                Priority::Low,
                Some(share),
            )
            .unwrap();
        }
        assert_eq!((depth.get(), depth.bytes()), (3, 12));
        drop(a);
        assert_eq!((depth.get(), depth.bytes()), (0, 0));
    }
}
