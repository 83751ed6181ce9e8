//! Delivery of received messages to their channel's receiver.
//!
//! # Design
//! A message on a channel with an in-shard handler runs it ([`super::rpc`]);
//! any other passes its channel's quota ([`super::quota`]) and is pushed
//! into the channel's inbox ([`crate::inbox`]). Pushes are announced to the
//! receiver (notified) once per channel per batch of input
//! ([`ShardCore::notify_receivers`]), not once per message.
//!
//! Backpressure: a full inbox refuses the message. The shard holds it in the
//! connection's slot and pauses the connection (it reads no more input),
//! after flagging the channel ([`crate::channel_spec::ChannelSpec`]'s
//! `input_held`) so that the receiver, once it takes a message, asks the
//! shards to resume. [`ShardCore::retry_held`] then delivers what is held,
//! first the refused message, then quota-held records their quota admits,
//! and resumes the connections that may read again. Nothing is dropped while
//! the connection and the receiver live.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shoal_crypto::PublicKey;

use super::ShardCore;
use crate::channel_spec::ChannelSpec;
use crate::inbox::Rejected;

/// A received message for a channel, not yet delivered.
pub(super) struct Received {
    pub(super) spec: Arc<ChannelSpec>,
    pub(super) payload: Bytes,
}

/// Messages delivered to one channel since its receiver was last notified.
pub(super) struct Delivered {
    spec: Arc<ChannelSpec>,
    messages: u64,
    bytes: u64,
    /// Pushed and not yet announced to the receiver
    /// ([`crate::inbox::Inbox::publish`]).
    unpublished: u64,
}

impl ShardCore {
    /// A plain message on `channel`: to its handler if it has one, else to
    /// its receiver.
    pub(super) fn on_message(&mut self, key: usize, channel: u32, payload: Bytes, now: Instant) {
        let Some(spec) = self.channels.get(channel).cloned() else {
            self.shared.metrics.refuse("unknown_channel");
            return;
        };
        if spec.handler.get().is_some() {
            self.run_handler_for_message(key, &spec, payload);
        } else {
            self.deliver(key, Received { spec, payload }, now);
        }
    }

    /// Delivers a message to its channel, or holds it (quota, full receiver).
    fn deliver(&mut self, key: usize, msg: Received, now: Instant) {
        if let Some(msg) = self.check_quota(key, msg, now) {
            self.push_to_receiver(key, msg);
        }
    }

    /// Hands a message that passed its quota to its channel's receiver, or
    /// holds it and pauses the connection while the receiver is full.
    pub(super) fn push_to_receiver(&mut self, key: usize, msg: Received) {
        let Some(peer) = self.conns.get(key).and_then(|s| s.conn.peer().cloned()) else {
            return;
        };
        if self.local.claims_messages(msg.spec.id) {
            if let Err(msg) = self.offer_to_task(peer, msg) {
                self.hold_for_room(key, msg.spec, msg.payload);
            }
            return;
        }
        let len = msg.payload.len() as u64;
        let Received { spec, payload } = msg;
        match offer(&spec, (peer, payload)) {
            Ok(()) => self.count_delivered(spec, len),
            Err(Rejected::Full((_, payload))) => self.hold_for_room(key, spec, payload),
            Err(Rejected::Closed(_)) => self.shared.metrics.refuse("receiver_dropped"),
        }
    }

    /// One wake-up and one metrics update per channel per batch (see
    /// [`ShardCore::notify_receivers`]).
    fn count_delivered(&mut self, spec: Arc<ChannelSpec>, len: u64) {
        match self
            .to_notify
            .iter_mut()
            .find(|d| Arc::ptr_eq(&d.spec, &spec))
        {
            Some(d) => {
                d.messages += 1;
                d.unpublished += 1;
                d.bytes += len;
            }
            None => self.to_notify.push(Delivered {
                spec,
                messages: 1,
                bytes: len,
                unpublished: 1,
            }),
        }
    }

    /// The receiver is full: hold the message in the slot (the connection
    /// is paused until it is delivered).
    fn hold_for_room(&mut self, key: usize, spec: Arc<ChannelSpec>, payload: Bytes) {
        self.shared.metrics.receiver_full_pauses.inc();
        // Announce its earlier messages now: the receiver can only make room
        // by taking them.
        let d = self
            .to_notify
            .iter_mut()
            .find(|d| Arc::ptr_eq(&d.spec, &spec));
        let n = d.map_or(0, |d| std::mem::take(&mut d.unpublished));
        spec.inbox.publish(n);
        if let Some(slot) = self.conns.get_mut(key) {
            slot.held = Some(Received { spec, payload });
        }
        self.note_holding(key);
    }

    /// Connection `key` holds input: retry it ([`ShardCore::retry_held`]).
    pub(super) fn note_holding(&mut self, key: usize) {
        if !self.holding.contains(&key) {
            self.holding.push(key);
        }
    }

    /// Notifies the receivers of every channel that got messages since the
    /// last call, and counts those messages: once per batch of input, not
    /// once per message.
    pub(super) fn notify_receivers(&mut self) {
        for d in self.to_notify.drain(..) {
            d.spec.metrics.messages_in.inc_by(d.messages);
            d.spec.metrics.bytes_in.inc_by(d.bytes);
            d.spec.inbox.publish(d.unpublished);
        }
    }

    /// Delivers the held input that can go now (receiver room freed, quota
    /// refilled) and resumes the connections that may read again. Drivers
    /// call it on a resume request ([`ShardWaker::take_resume`]); the timer
    /// sweep calls it too.
    ///
    /// [`ShardWaker::take_resume`]: crate::waker::ShardWaker::take_resume
    pub fn retry_held(&mut self, now: Instant) {
        if self.holding.is_empty() {
            return;
        }
        let holding = std::mem::take(&mut self.holding);
        for key in holding {
            self.retry_one(key, now);
        }
        self.notify_receivers();
    }

    /// [`ShardCore::retry_held`] for connection `key`.
    fn retry_one(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(until) = slot.paused_until {
            if now < until {
                self.holding.push(key);
                return;
            }
            slot.paused_until = None;
        }
        // The held message passed its quota already: only the receiver was
        // full.
        if let Some(msg) = slot.held.take() {
            self.push_to_receiver(key, msg);
        }
        self.release_quota_held(key);
        let Some(slot) = self.conns.get_mut(key) else {
            return;
        };
        if slot.quota_held.full() {
            slot.paused_until = Some(now);
        }
        // Still paused by what it holds?
        let held_pauses = slot.held.is_some() || slot.paused_until.is_some();
        if held_pauses || !slot.quota_held.is_empty() {
            self.note_holding(key);
        }
        if !held_pauses {
            self.process_input(key, now);
            // The driver must look at it even without output: a receive
            // that ended while it was paused (io_uring's direct receive,
            // or a cancelled multishot) is re-armed from the dirty list.
            // Without this it stayed unarmed until a ping or gossip
            // next gave the connection output.
            self.dirty.push(key);
        }
    }
}

/// Pushes `item` into the channel's inbox. A full inbox gets the channel
/// flagged (`input_held`), then one more try: the receiver may have taken a
/// message in between and would not know to ask for a resume.
fn offer(spec: &ChannelSpec, item: (PublicKey, Bytes)) -> Result<(), Rejected<(PublicKey, Bytes)>> {
    match spec.inbox.push(item) {
        Err(Rejected::Full(item)) => {
            spec.input_held.store(true, Ordering::SeqCst);
            spec.inbox.push(item)
        }
        other => other,
    }
}
