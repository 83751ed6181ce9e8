//! The engine's gossip driver: a [`Gossip`] core per gossip channel, run
//! by the overlay driver ([`crate::overlay`]) on a `shoal-gossip` thread.
//!
//! # Design
//! [`crate::NetworkHandle::gossip`] takes a registered channel's `Sender`
//! and `Receiver`; every connected peer is a neighbour, every
//! [`super::Transmit`] goes out with the channel's `Sender` at low
//! priority, every delivered message into the bounded [`Deliveries`], and
//! a neighbour reported [`Event::Misbehaving`] is disconnected.
//! [`GossipSender::broadcast`] signs with the node's identity under the
//! channel's gossip namespace, publishes under the core's lock and sends
//! the resulting frames itself, so it returns the id at once. The channel's
//! `max_size` must hold `max_message_size` plus the framing
//! ([`overlay::FRAMING`]); `gossip` refuses to start otherwise.
//!
//! A full [`Deliveries`] stops the driver (it waits for room), so the
//! channel's inbox fills and neighbours' sends to this node report `Full`:
//! backpressure, not loss at the application. A frame whose send queue is
//! full is dropped (counted in [`GossipStats::send_full`]); the lazy
//! announcements and pulls recover the message.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shoal_crypto::PublicKey;

use super::auth::{namespace, sign_message, SchemeSigner, SchemeVerifier};
use super::core::{Event, Gossip, PublishError, Stats, Verdict};
use super::wire::MessageId;
use super::GossipConfig;
use crate::channels::Sender;
use crate::error::Error;
use crate::overlay::{self, Deliveries, Delivery, Driven, Exported, Field, Link, Outcome, Overlay};
use crate::receiver::Receiver;
use crate::shared::Shared;

/// Why [`GossipSender::broadcast`] refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    /// Larger than `GossipConfig::max_message_size`.
    #[error("message larger than gossip max_message_size")]
    TooLarge,
    /// This node's own origin budget (`origin_rate`/`origin_burst`) is spent:
    /// its neighbours would drop the message.
    #[error("origin rate limit reached")]
    RateLimited,
    /// The gossip driver ended (the network shut down).
    #[error("gossip closed")]
    Closed,
}

/// Counters of one node's gossip channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// The core's counters.
    pub core: Stats,
    /// Frames dropped because a neighbour's send queue was full.
    pub send_full: u64,
    /// Frames the channel refused otherwise (the neighbour's connection was
    /// gone, or the network stopping).
    pub send_failed: u64,
    /// Neighbours disconnected as misbehaving.
    pub misbehaving_disconnects: u64,
}

/// Each [`GossipStats`] field and its `shoal_gossip_events` counter.
const EXPORTED: &[Field<GossipStats>] = &[
    ("delivered", |s| s.core.delivered),
    ("published", |s| s.core.published),
    ("duplicate", |s| s.core.duplicates),
    ("forwarded", |s| s.core.forwarded),
    ("pulled", |s| s.core.pulled),
    ("rejected", |s| s.core.rejected),
    ("forged", |s| s.core.forged),
    ("too_old", |s| s.core.too_old),
    ("too_new", |s| s.core.too_new),
    ("too_large", |s| s.core.too_large),
    ("over_budget", |s| s.core.over_budget),
    ("parse_error", |s| s.core.parse_errors),
    ("tree_repair", |s| s.core.tree_repairs),
    ("given_up", |s| s.core.missing_given_up),
    ("ignored", |s| s.core.ignored_frames),
    ("send_full", |s| s.send_full),
    ("send_failed", |s| s.send_failed),
    ("misbehaving_disconnect", |s| s.misbehaving_disconnects),
];

/// The driver's state: the core and what the driver counts beside it.
pub(crate) struct State {
    core: Gossip,
    config: GossipConfig,
    signer: SchemeSigner,
    last_seq: u64,
    driven: Driven,
    exported: Exported<GossipStats>,
    /// Own-origin budget: tokens and the instant they were counted.
    tokens: f64,
    refill_at: Instant,
}

impl State {
    fn stats(&self) -> GossipStats {
        GossipStats {
            core: self.core.stats(),
            send_full: self.driven.send_full,
            send_failed: self.driven.send_failed,
            misbehaving_disconnects: self.driven.misbehaving_disconnects,
        }
    }
}

impl Overlay for State {
    type Event = Event;
    const NAME: &'static str = "gossip";

    fn handle_neighbor_up(&mut self, now: Instant, peer: PublicKey) {
        self.core.handle_neighbor_up(now, peer);
    }

    fn handle_neighbor_down(&mut self, now: Instant, peer: &PublicKey) {
        self.core.handle_neighbor_down(now, peer);
    }

    fn neighbors(&self) -> Vec<PublicKey> {
        self.core.neighbor_keys()
    }

    fn handle_frame(&mut self, now: Instant, from: &PublicKey, bytes: &Bytes) {
        self.core.handle_frame(now, from, bytes);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
    }

    fn flush(&mut self, tx: &Sender, out: &mut Vec<Event>) {
        while let Some(t) = self.core.poll_transmit() {
            self.driven.send(tx, &t.to, t.frame);
        }
        out.extend(std::iter::from_fn(|| self.core.poll_event()));
        self.export();
    }

    fn outcome(&mut self, e: Event) -> Outcome {
        match e {
            Event::Delivered { id, payload, .. } => Outcome::Deliver(Delivery {
                origin: id.origin.clone(),
                id,
                payload,
            }),
            Event::Misbehaving { peer, reason } => Outcome::Misbehaving { peer, reason },
        }
    }

    fn driven(&mut self) -> &mut Driven {
        &mut self.driven
    }

    fn export(&mut self) {
        let now = self.stats();
        self.exported.update(now);
    }
}

/// Broadcasts on a gossip channel (cheap to clone).
#[derive(Clone)]
pub struct GossipSender {
    link: Arc<Link<State>>,
}

impl GossipSender {
    /// Signs `msg` as this node and pushes it to the tree (eager neighbours)
    /// and announces it to the others; returns its id at once. Not
    /// delivered to this node's own [`Deliveries`].
    pub fn broadcast(&self, msg: Bytes) -> Result<MessageId, BroadcastError> {
        let mut st = self.link.lock_open().ok_or(BroadcastError::Closed)?;
        if msg.len() > st.config.max_message_size {
            return Err(BroadcastError::TooLarge);
        }
        let now = Instant::now();
        // The same budget neighbours apply to this origin.
        let (rate, burst) = (st.config.origin_rate, st.config.origin_burst);
        let elapsed = now.saturating_duration_since(st.refill_at).as_secs_f64();
        st.tokens = (st.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        st.refill_at = now;
        if st.tokens < 1.0 {
            return Err(BroadcastError::RateLimited);
        }
        st.tokens -= 1.0;
        let seq = st.core.unix_micros(now).max(st.last_seq + 1);
        st.last_seq = seq;
        let frame = sign_message(&st.signer, seq, msg);
        let id = st.core.publish(now, frame).map_err(|e| match e {
            PublishError::TooLarge => BroadcastError::TooLarge,
            // Cannot happen (sequences only grow); refuse rather than panic.
            PublishError::Duplicate => BroadcastError::RateLimited,
        })?;
        let events = self.link.flush(&mut st);
        debug_assert!(events.is_empty(), "publish delivers nothing");
        Ok(id)
    }

    /// This channel's counters.
    pub fn stats(&self) -> GossipStats {
        self.link.lock().stats()
    }

    /// Neighbours the core currently has.
    pub fn neighbors(&self) -> usize {
        self.link.lock().core.neighbors()
    }
}

/// Starts the driver (see the module docs); called by
/// [`crate::NetworkHandle::gossip`].
pub(crate) fn start(
    shared: Arc<Shared>,
    tx: Sender,
    rx: Receiver,
    config: GossipConfig,
    capacity: usize,
    validator: impl Fn(&PublicKey, &[u8]) -> Verdict + Send + 'static,
) -> Result<(GossipSender, Deliveries), Error> {
    config.validate()?;
    let ns = namespace(&shared.config.identity.namespace, tx.channel());
    let verifier = SchemeVerifier::new(shared.config.identity.signer.scheme(), ns.clone());
    let signer = SchemeSigner::new(shared.config.identity.signer.clone(), ns);
    let now = Instant::now();
    let core = Gossip::new(
        config.clone(),
        Box::new(verifier),
        Box::new(move |origin: &PublicKey, payload: &Bytes| validator(origin, payload)),
        now,
        crate::clock::system_micros(),
    );
    let exported = Exported::new(&shared.metrics.gossip, tx.channel(), EXPORTED);
    let state = State {
        core,
        tokens: f64::from(config.origin_burst),
        config,
        signer,
        last_seq: 0,
        driven: Driven::default(),
        exported,
        refill_at: now,
    };
    let max = state.config.max_message_size;
    let link = Link::new(state, tx, shared.clone(), "gossip max_message_size", max)?;
    let deliveries = overlay::start(shared, link.clone(), rx, capacity)?;
    Ok((GossipSender { link }, deliveries))
}
