//! The engine's gossip driver: one thread per gossip channel that owns the
//! channel's [`Gossip`] core and moves its frames over the channel.
//!
//! # Design
//! [`crate::NetworkHandle::gossip`] takes a registered channel's `Sender`
//! and `Receiver` and starts a thread (`shoal-gossip`) that reads the
//! channel's `Receiver` (frames from neighbours), peer [`crate::Events`]
//! (neighbours up and down; on `Lagged` it resynchronises from
//! `peers()`), and fires the core's timers at `poll_timeout`; every
//! [`super::Transmit`] goes out with the channel's `Sender` to its one
//! neighbour, every delivered message into the bounded [`GossipReceiver`],
//! and a neighbour reported [`Event::Misbehaving`] is disconnected.
//! [`GossipSender::broadcast`] signs with the node's identity under the
//! channel's gossip namespace, publishes under the core's lock and sends
//! the resulting frames itself, so it returns the id at once.
//!
//! A full [`GossipReceiver`] stops the driver (it waits for room), so the
//! channel's inbox fills and neighbours' sends to this node report `Full`:
//! backpressure, not loss at the application. A frame whose send queue is
//! full is dropped (counted in [`GossipStats::send_full`]); the lazy
//! announcements and pulls recover the message.
//!
//! The thread ends when the network shuts down.

use std::sync::mpsc::{sync_channel, Receiver as StdReceiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shoal_crypto::PublicKey;

use super::auth::{namespace, sign_message, SchemeSigner, SchemeVerifier};
use super::core::{Event, Gossip, PublishError, Stats, Verdict};
use super::wire::MessageId;
use super::GossipConfig;
use crate::channels::Sender;
use crate::connection::Priority;
use crate::error::Error;
use crate::events::Event as PeerEvent;
use crate::receiver::{Receiver, RecvError};
use crate::shared::Shared;

/// The longest the driver waits without looking at peer events.
const MAX_IDLE: Duration = Duration::from_millis(20);
/// Frames taken from the channel per turn before timers and events.
const FRAMES_PER_TURN: usize = 256;

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

/// A message delivered by gossip: its origin, id and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub origin: PublicKey,
    pub id: MessageId,
    pub payload: Bytes,
}

/// Counters of one node's gossip channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// The core's counters.
    pub core: Stats,
    /// Frames dropped because a neighbour's send queue was full.
    pub send_full: u64,
    /// Neighbours disconnected as misbehaving.
    pub misbehaving_disconnects: u64,
}

struct State {
    core: Gossip,
    last_seq: u64,
    stats: GossipStats,
    closed: bool,
    /// The stats as last exported to the metrics.
    exported: GossipStats,
    /// Own-origin budget: tokens and the instant they were counted.
    tokens: f64,
    refill_at: Instant,
}

struct Inner {
    state: Mutex<State>,
    tx: Sender,
    signer: SchemeSigner,
    config: GossipConfig,
    metrics: Exported,
}

type Field = fn(&GossipStats) -> u64;

/// Each [`GossipStats`] field and its `shoal_gossip_events` counter.
const EXPORTED: [(&str, Field); 17] = [
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
    ("misbehaving_disconnect", |s| s.misbehaving_disconnects),
];

/// The channel's counters, resolved once.
struct Exported {
    counters: Vec<prometheus_client::metrics::counter::Counter>,
}

impl Exported {
    fn new(metrics: &crate::Metrics, channel: u32) -> Self {
        let counters = EXPORTED
            .iter()
            .map(|(event, _)| {
                metrics
                    .gossip
                    .get_or_create(&crate::metrics::GossipLabel {
                        channel: channel.to_string(),
                        event: (*event).to_string(),
                    })
                    .clone()
            })
            .collect();
        Self { counters }
    }

    /// Adds what changed since `last` (what they were last told).
    fn update(&self, last: &mut GossipStats, now: GossipStats) {
        for ((_, field), c) in EXPORTED.iter().zip(&self.counters) {
            let delta = field(&now).saturating_sub(field(last));
            if delta > 0 {
                c.inc_by(delta);
            }
        }
        *last = now;
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends every queued frame; collects events into `out`.
    fn flush(&self, st: &mut State, out: &mut Vec<Event>) {
        while let Some(t) = st.core.poll_transmit() {
            let report = self.tx.send(&t.to, t.frame, Priority::Low);
            if report.result().is_err() {
                st.stats.send_full += 1;
            }
        }
        while let Some(e) = st.core.poll_event() {
            out.push(e);
        }
        let now = st.stats();
        self.metrics.update(&mut st.exported, now);
    }
}

impl State {
    fn stats(&self) -> GossipStats {
        GossipStats {
            core: self.core.stats(),
            ..self.stats
        }
    }
}

/// Broadcasts on a gossip channel (cheap to clone).
#[derive(Clone)]
pub struct GossipSender {
    inner: Arc<Inner>,
}

impl GossipSender {
    /// Signs `msg` as this node and pushes it to the tree (eager neighbours)
    /// and announces it to the others; returns its id at once. Not
    /// delivered to this node's own [`GossipReceiver`].
    pub fn broadcast(&self, msg: Bytes) -> Result<MessageId, BroadcastError> {
        if msg.len() > self.inner.config.max_message_size {
            return Err(BroadcastError::TooLarge);
        }
        let mut st = self.inner.lock();
        if st.closed {
            return Err(BroadcastError::Closed);
        }
        let now = Instant::now();
        // The same budget neighbours apply to this origin.
        let c = &self.inner.config;
        let elapsed = now.saturating_duration_since(st.refill_at).as_secs_f64();
        st.tokens = (st.tokens + elapsed * f64::from(c.origin_rate)).min(f64::from(c.origin_burst));
        st.refill_at = now;
        if st.tokens < 1.0 {
            return Err(BroadcastError::RateLimited);
        }
        st.tokens -= 1.0;
        let seq = st.core.unix_micros(now).max(st.last_seq + 1);
        st.last_seq = seq;
        let frame = sign_message(&self.inner.signer, seq, msg);
        let id = st.core.publish(now, frame).map_err(|e| match e {
            PublishError::TooLarge => BroadcastError::TooLarge,
            // Cannot happen (sequences only grow); refuse rather than panic.
            PublishError::Duplicate => BroadcastError::RateLimited,
        })?;
        let mut events = Vec::new();
        self.inner.flush(&mut st, &mut events);
        debug_assert!(events.is_empty(), "publish delivers nothing");
        Ok(id)
    }

    /// This channel's counters.
    pub fn stats(&self) -> GossipStats {
        self.inner.lock().stats()
    }

    /// Neighbours the core currently has.
    pub fn neighbors(&self) -> usize {
        self.inner.lock().core.neighbors()
    }
}

/// Messages delivered on a gossip channel, each once, in arrival order.
pub struct GossipReceiver {
    rx: StdReceiver<Delivery>,
}

impl GossipReceiver {
    /// Blocks until a message arrives; `Err` once the driver ended and every
    /// message was taken.
    pub fn recv_blocking(&self) -> Result<Delivery, RecvError> {
        self.rx.recv().map_err(|_| RecvError)
    }

    /// [`GossipReceiver::recv_blocking`] that gives up after `timeout`
    /// (`Ok(None)`).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Delivery>, RecvError> {
        match self.rx.recv_timeout(timeout) {
            Ok(d) => Ok(Some(d)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(RecvError),
        }
    }

    /// A message if one is ready; never waits.
    pub fn try_recv(&self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
) -> Result<(GossipSender, GossipReceiver), Error> {
    config.validate()?;
    if capacity == 0 {
        return Err(Error::InvalidConfig {
            field: "gossip capacity",
            reason: "must be > 0".into(),
        });
    }
    let ns = namespace(&shared.config.identity.namespace, tx.channel());
    let verifier = SchemeVerifier::new(shared.config.identity.signer.scheme(), ns.clone());
    let signer = SchemeSigner::new(shared.config.identity.signer.clone(), ns);
    let now = Instant::now();
    let core = Gossip::new(
        config.clone(),
        Box::new(verifier),
        Box::new(move |origin: &PublicKey, payload: &Bytes| validator(origin, payload)),
        now,
        unix_micros(),
    );
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            core,
            last_seq: 0,
            stats: GossipStats::default(),
            closed: false,
            exported: GossipStats::default(),
            tokens: f64::from(config.origin_burst),
            refill_at: now,
        }),
        metrics: Exported::new(&shared.metrics, tx.channel()),
        tx,
        signer,
        config,
    });
    let (app_tx, app_rx) = sync_channel(capacity);
    // Subscribed before the peers are read: a peer that connects between
    // the two is seen twice (up is idempotent), none is missed.
    let events = crate::events::Events::new(shared.peers.subscribe());
    {
        let mut st = inner.lock();
        for p in shared.peers.peers() {
            st.core.handle_neighbor_up(now, p);
        }
    }
    let driver = Driver {
        inner: inner.clone(),
        shared,
        rx,
        events,
        app: app_tx,
    };
    std::thread::Builder::new()
        .name("shoal-gossip".into())
        .spawn(move || driver.run())
        .map_err(Error::Io)?;
    Ok((GossipSender { inner }, GossipReceiver { rx: app_rx }))
}

struct Driver {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    rx: Receiver,
    events: crate::events::Events,
    app: SyncSender<Delivery>,
}

impl Driver {
    fn run(mut self) {
        let mut out = Vec::new();
        loop {
            if !self.turn(&mut out) {
                break;
            }
            for e in out.drain(..) {
                match e {
                    Event::Delivered { id, payload, .. } => {
                        let d = Delivery {
                            origin: id.origin.clone(),
                            id,
                            payload,
                        };
                        if self.app.send(d).is_err() {
                            // The application dropped the receiver: keep
                            // relaying for the others.
                        }
                    }
                    Event::Misbehaving { peer, reason } => {
                        tracing::warn!(
                            ?peer,
                            reason,
                            "gossip neighbour misbehaving: disconnecting"
                        );
                        {
                            let mut guard = self.inner.lock();
                            let st = &mut *guard;
                            st.stats.misbehaving_disconnects += 1;
                            let now = st.stats();
                            self.inner.metrics.update(&mut st.exported, now);
                        }
                        crate::network::close_peer(&self.shared, &peer);
                    }
                }
            }
        }
        self.inner.lock().closed = true;
    }

    /// One turn: peer events, frames, timers. False once the network shut
    /// down.
    fn turn(&mut self, out: &mut Vec<Event>) -> bool {
        let wait = {
            let st = self.inner.lock();
            let now = Instant::now();
            st.core
                .poll_timeout()
                .map_or(MAX_IDLE, |t| t.saturating_duration_since(now))
                .min(MAX_IDLE)
        };
        let first = match self.rx.recv_timeout(wait) {
            Ok(m) => m,
            Err(RecvError) => return false,
        };
        // Neighbours, after the wait: a peer's `Connected` is published
        // before anything it sends is delivered, so the neighbour is known
        // before its first frame is handled.
        loop {
            match self.events.try_recv() {
                Ok(Some(ev)) => {
                    let now = Instant::now();
                    let mut st = self.inner.lock();
                    match ev {
                        PeerEvent::Connected(p) => st.core.handle_neighbor_up(now, p),
                        PeerEvent::Disconnected { peer, .. } => {
                            st.core.handle_neighbor_down(now, &peer)
                        }
                        PeerEvent::Lagged(_) => {
                            // Resynchronise: up is idempotent; gone
                            // neighbours go at their next Disconnected.
                            for p in self.shared.peers.peers() {
                                st.core.handle_neighbor_up(now, p);
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        let mut st = self.inner.lock();
        let now = Instant::now();
        if let Some((from, bytes)) = first {
            st.core.handle_frame(now, &from, &bytes);
            for _ in 1..FRAMES_PER_TURN {
                let Some((from, bytes)) = self.rx.try_recv() else {
                    break;
                };
                st.core.handle_frame(now, &from, &bytes);
            }
        }
        if st.core.poll_timeout().is_some_and(|t| t <= now) {
            st.core.handle_timeout(now);
        }
        self.inner.flush(&mut st, out);
        true
    }
}
