//! The engine's routed-unicast driver: a [`Router`] per routed channel, run
//! by the overlay driver ([`crate::overlay`]) on a `shoal-route` thread.
//!
//! # Design
//! [`crate::NetworkHandle::route`] takes a registered channel's `Sender`
//! and `Receiver`; every connected peer is a neighbour, every envelope and
//! neighbour list goes out with the channel's `Sender` at low priority,
//! every message for this node on this channel into the bounded
//! [`Deliveries`], and a neighbour reported misbehaving is disconnected. [`RouteSender::send`]
//! seals, signs and queues under the router's lock and sends the
//! envelopes itself, so it returns the id (or why there is no route) at
//! once. A reply is a routed message the other way: `send(origin, ..)`.
//! The channel's `max_size` must hold `max_payload` plus the framing
//! ([`overlay::FRAMING`]); `route` refuses to start otherwise.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use shoal_crypto::PublicKey;

use super::router::{Event, Router, Stats};
use super::RouteConfig;
use crate::channels::Sender;
use crate::error::Error;
use crate::gossip::MessageId;
use crate::overlay::{self, Deliveries, Delivery, Driven, Exported, Field, Link, Outcome, Overlay};
use crate::receiver::Receiver;
use crate::shared::Shared;

/// Why [`RouteSender::send`] refused a message (the router's reasons, and
/// `Closed` once the network shut down).
pub use super::router::SendError as RouteError;

/// Counters of one node's routed channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// The router's counters.
    pub core: Stats,
    /// Messages this node originated.
    pub sent: u64,
    /// Envelopes dropped because a neighbour's send queue was full.
    pub send_full: u64,
    /// Messages for this node addressed (by their origin) to another
    /// channel: opened, not delivered. The router's `delivered` counts them.
    pub other_channel: u64,
    /// Envelopes the channel refused otherwise (the neighbour's connection was
    /// gone, or the network stopping).
    pub send_failed: u64,
    /// Neighbours disconnected as misbehaving.
    pub misbehaving_disconnects: u64,
}

/// Each [`RouteStats`] field and its `shoal_route_events` counter.
const EXPORTED: &[Field<RouteStats>] = &[
    ("delivered", |s| s.core.delivered),
    ("sent", |s| s.sent),
    ("forwarded", |s| s.core.forwarded),
    ("duplicate", |s| s.core.duplicates),
    ("too_old", |s| s.core.too_old),
    ("too_new", |s| s.core.too_new),
    ("malformed", |s| s.core.malformed),
    ("forged", |s| s.core.forged),
    ("undecryptable", |s| s.core.undecryptable),
    ("rate_limited", |s| s.core.rate_limited),
    ("hop_limit", |s| s.core.hop_limit),
    ("no_route", |s| s.core.no_route),
    ("dropped_full", |s| s.core.dropped_full),
    ("other_channel", |s| s.other_channel),
    ("send_full", |s| s.send_full),
    ("send_failed", |s| s.send_failed),
    ("misbehaving_disconnect", |s| s.misbehaving_disconnects),
];

pub(crate) struct State {
    router: Router,
    channel: u32,
    max_payload: usize,
    /// Messages for this node that their origin addressed to another
    /// channel (not delivered).
    other_channel: u64,
    sent: u64,
    driven: Driven,
    exported: Exported<RouteStats>,
}

impl State {
    fn stats(&self) -> RouteStats {
        RouteStats {
            core: self.router.stats(),
            sent: self.sent,
            send_full: self.driven.send_full,
            send_failed: self.driven.send_failed,
            other_channel: self.other_channel,
            misbehaving_disconnects: self.driven.misbehaving_disconnects,
        }
    }
}

impl Overlay for State {
    type Event = Event;
    const NAME: &'static str = "route";

    fn handle_neighbor_up(&mut self, _now: Instant, peer: PublicKey) {
        self.router.handle_neighbor_up(peer);
    }

    fn handle_neighbor_down(&mut self, _now: Instant, peer: &PublicKey) {
        self.router.handle_neighbor_down(peer);
    }

    fn neighbors(&self) -> Vec<PublicKey> {
        self.router.neighbour_keys()
    }

    fn handle_frame(&mut self, now: Instant, from: &PublicKey, bytes: &Bytes) {
        self.router.handle_frame(now, from, bytes);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn flush(&mut self, tx: &Sender, out: &mut Vec<Event>) {
        while let Some(t) = self.router.poll_transmit() {
            self.driven.send(tx, &t.to, t.bytes);
        }
        out.extend(std::iter::from_fn(|| self.router.poll_event()));
        self.export();
    }

    fn outcome(&mut self, e: Event) -> Outcome {
        match e {
            // Only what its origin addressed to this channel.
            Event::Delivered {
                id,
                channel,
                payload,
            } if channel == self.channel => Outcome::Deliver(Delivery {
                origin: id.origin.clone(),
                id,
                payload,
            }),
            Event::Delivered { .. } => {
                self.other_channel += 1;
                Outcome::Nothing
            }
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

/// Sends routed messages on a channel (cheap to clone).
#[derive(Clone)]
pub struct RouteSender {
    link: Arc<Link<State>>,
}

impl RouteSender {
    /// Seals `payload` to `target`, signs it as this node and hands it to
    /// the next hops (the target itself when connected); returns its id at
    /// once. Delivery is not confirmed: ask the target for a reply.
    pub fn send(&self, target: &PublicKey, payload: &[u8]) -> Result<MessageId, RouteError> {
        let mut st = self.link.lock_open().ok_or(RouteError::Closed)?;
        let channel = st.channel;
        let id = st.router.send(Instant::now(), target, channel, payload)?;
        st.sent += 1;
        let events = self.link.flush(&mut st);
        debug_assert!(events.is_empty(), "a send delivers nothing");
        Ok(id)
    }

    /// This channel's counters.
    pub fn stats(&self) -> RouteStats {
        self.link.lock().stats()
    }

    /// Neighbours the router currently has.
    pub fn neighbors(&self) -> usize {
        self.link.lock().router.neighbours()
    }

    /// Nodes within two hops that the router knows of: its neighbours and
    /// the neighbours they advertised (this node aside).
    pub fn known(&self) -> usize {
        self.link.lock().router.known()
    }

    /// Whether `peer` is one of them.
    pub fn is_neighbor(&self, peer: &PublicKey) -> bool {
        self.link.lock().router.is_neighbour(peer)
    }
}

/// Starts the driver (see the module docs); called by
/// [`crate::NetworkHandle::route`].
pub(crate) fn start(
    shared: Arc<Shared>,
    tx: Sender,
    rx: Receiver,
    config: RouteConfig,
    capacity: usize,
) -> Result<(RouteSender, Deliveries), Error> {
    config.validate()?;
    let identity = &shared.config.identity;
    let max_payload = config.max_payload;
    let router = Router::new(
        config,
        identity.signer.clone(),
        &identity.namespace,
        Instant::now(),
        crate::clock::system_micros(),
    );
    let state = State {
        router,
        channel: tx.channel(),
        max_payload,
        other_channel: 0,
        sent: 0,
        driven: Driven::default(),
        exported: Exported::new(&shared.metrics.route, tx.channel(), EXPORTED),
    };
    let max = state.max_payload;
    let link = Link::new(state, tx, shared.clone(), "route max_payload", max)?;
    let deliveries = overlay::start(shared, link.clone(), rx, capacity)?;
    Ok((RouteSender { link }, deliveries))
}
