//! The engine's driver for overlay protocols (gossip, routed unicast): one
//! thread per channel that owns a protocol's sans-IO core and moves its
//! frames over a registered channel.
//!
//! # Design
//! A protocol's driver state implements [`Overlay`] (its core plus the
//! counters the driver keeps) and lives in a [`Link`] beside the channel's
//! [`Sender`], behind one mutex that the application's calls
//! (`broadcast`, `send`) and the driver thread share. [`start`] marks the
//! connected peers as neighbours, then runs a thread that
//! - waits for a frame on the channel's [`Receiver`] (at most until the
//!   core's next timer, and never more than [`MAX_IDLE`]);
//! - then takes peer [`Events`](crate::Events): neighbours up and down (on
//!   `Lagged` it re-reads the connected peers). A peer's `Connected` is
//!   published before anything it sends is delivered, so reading events
//!   after the wait makes the neighbour known before its first frame;
//! - hands the core up to [`FRAMES_PER_TURN`] frames, fires its timer when
//!   due, and lets it send what it queued ([`Overlay::flush`]);
//! - acts on each core event ([`Overlay::outcome`]): a delivery goes into
//!   the bounded [`Deliveries`] (a full one makes the driver wait:
//!   backpressure on the channel), a misbehaving neighbour is
//!   disconnected.
//!
//! Every connected peer is a neighbour (up to the protocol's cap; a peer
//! turned away takes a place that frees). The thread ends when the network
//! shuts down (the protocol's [`Driven::closed`] is then set), also while it waits for room
//! in a full [`Deliveries`]. A channel must allow messages of the
//! protocol's largest payload plus [`FRAMING`].

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use shoal_crypto::PublicKey;

use crate::channels::Sender;
use crate::connection::Priority;
use crate::error::{Error, SendError};
use crate::events::Event as PeerEvent;
use crate::gossip::MessageId;
use crate::inbox::{Inbox, Rejected};
use crate::metrics::OverlayLabel;
use crate::receiver::{Receiver, RecvError};
use crate::shared::Shared;
use crate::wait::Wait;

/// Bytes an overlay frame adds to the payload at most (kind, ids, keys,
/// signature, seal): a channel's `max_size` must leave this room above the
/// protocol's largest payload.
pub(crate) const FRAMING: usize = 512;

/// The longest the driver waits without looking at peer events.
pub(crate) const MAX_IDLE: Duration = Duration::from_millis(20);
/// How often a driver blocked on a full [`Deliveries`] looks again (and at
/// whether the network stopped).
const FULL_RETRY: Duration = Duration::from_millis(1);
/// Frames taken from the channel per turn before timers and events.
pub(crate) const FRAMES_PER_TURN: usize = 256;

/// What the driver does with a core event.
pub(crate) enum Outcome {
    /// Into the application's [`Deliveries`].
    Deliver(Delivery),
    /// Disconnect the neighbour (counted in
    /// [`Driven::misbehaving_disconnects`]).
    Misbehaving {
        peer: PublicKey,
        reason: &'static str,
    },
    Nothing,
}

/// What the driver needs of a protocol's state.
pub(crate) trait Overlay: Send + 'static {
    type Event: Send + 'static;
    /// The protocol's name in logs.
    const NAME: &'static str;
    fn handle_neighbor_up(&mut self, now: Instant, peer: PublicKey);
    fn handle_neighbor_down(&mut self, now: Instant, peer: &PublicKey);
    /// The neighbours taking part now.
    fn neighbors(&self) -> Vec<PublicKey>;
    fn handle_frame(&mut self, now: Instant, from: &PublicKey, bytes: &Bytes);
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant);
    /// Sends what the core queued with `tx`; moves its events to `out`.
    fn flush(&mut self, tx: &Sender, out: &mut Vec<Self::Event>);
    fn outcome(&mut self, e: Self::Event) -> Outcome;
    /// What the driver keeps beside the core.
    fn driven(&mut self) -> &mut Driven;
    /// Brings the protocol's metrics up to date with its counters.
    fn export(&mut self);
}

/// What the driver keeps beside a protocol's core.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Driven {
    /// Frames a neighbour's full send queue refused.
    pub send_full: u64,
    /// Frames the channel refused otherwise (the connection gone).
    pub send_failed: u64,
    /// Neighbours disconnected as misbehaving.
    pub misbehaving_disconnects: u64,
    /// The driver ended: the application's calls fail.
    pub closed: bool,
}

impl Driven {
    /// Sends one frame at low priority; a refusal is counted.
    pub fn send(&mut self, tx: &Sender, to: &PublicKey, frame: Bytes) {
        match tx.send(to, frame, Priority::Low).result() {
            Ok(()) => {}
            Err(SendError::Full) => self.send_full += 1,
            Err(_) => self.send_failed += 1,
        }
    }
}

/// A protocol's state and its channel's sender (see the module docs).
pub(crate) struct Link<O> {
    state: Mutex<O>,
    pub tx: Sender,
    shared: Arc<Shared>,
}

impl<O: Overlay> Link<O> {
    /// Fails when the channel's `max_size` has no room for `max_payload`
    /// and the framing (`field` names the payload bound).
    pub fn new(
        state: O,
        tx: Sender,
        shared: Arc<Shared>,
        field: &'static str,
        max_payload: usize,
    ) -> Result<Arc<Self>, Error> {
        if max_payload.saturating_add(FRAMING) > tx.max_size() {
            return Err(Error::InvalidConfig {
                field,
                reason: format!(
                    "{max_payload} B plus {FRAMING} B of framing exceeds channel {}'s max_size ({} B)",
                    tx.channel(),
                    tx.max_size()
                ),
            });
        }
        Ok(Arc::new(Self {
            state: Mutex::new(state),
            tx,
            shared,
        }))
    }

    /// The state for an application call; `None` once the driver ended or
    /// the network began to shut down (the call fails with its `Closed`).
    pub fn lock_open(&self) -> Option<MutexGuard<'_, O>> {
        let mut st = self.lock();
        let open = !st.driven().closed && self.shared.running.load(Ordering::Acquire);
        open.then_some(st)
    }

    pub fn lock(&self) -> MutexGuard<'_, O> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Overlay::flush`] under the lock, returning the events.
    pub fn flush(&self, st: &mut O) -> Vec<O::Event> {
        let mut out = Vec::new();
        st.flush(&self.tx, &mut out);
        out
    }
}

/// A message an overlay delivered: its origin, id and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub origin: PublicKey,
    pub id: MessageId,
    pub payload: Bytes,
}

/// Messages delivered on an overlay channel (gossip, routed unicast), each
/// once, in arrival order; at most the capacity given at start wait here.
/// Dropping it discards later deliveries (the driver keeps relaying).
pub struct Deliveries {
    inbox: Arc<Inbox<Delivery>>,
    spin: Duration,
}

impl Deliveries {
    /// The next message, waiting until one arrives (`.await` on any
    /// executor, `.blocking()` on a plain thread). `Err(RecvError)` once the
    /// network shut down and every queued message was taken.
    pub fn recv(
        &self,
    ) -> Wait<impl std::future::Future<Output = Result<Delivery, RecvError>> + '_> {
        Wait::new(
            async move { self.inbox.recv().await.ok_or(RecvError) },
            self.spin,
        )
    }

    /// Blocks this thread until a message arrives (see [`Deliveries::recv`]).
    pub fn recv_blocking(&self) -> Result<Delivery, RecvError> {
        self.inbox.recv_blocking(self.spin).ok_or(RecvError)
    }

    /// [`Deliveries::recv_blocking`] that gives up after `timeout`
    /// (`Ok(None)`).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Delivery>, RecvError> {
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            return self.recv_blocking().map(Some);
        };
        match self.inbox.recv_deadline(deadline, self.spin) {
            Ok(d) => Ok(Some(d)),
            Err(false) => Ok(None),
            Err(true) => Err(RecvError),
        }
    }

    /// A message if one is ready; never waits.
    pub fn try_recv(&self) -> Option<Delivery> {
        self.inbox.try_recv().ok()
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.inbox.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inbox.is_empty()
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        // The driver's pushes now fail at once instead of waiting for room.
        self.inbox.close();
    }
}

/// A stats field by its metric `event` label, and how to read it.
pub(crate) type Field<S> = (&'static str, fn(&S) -> u64);

/// Counters of a protocol's stats `S`, one per named field, resolved once
/// under `{channel, event}` labels.
pub(crate) struct Exported<S: 'static> {
    fields: &'static [Field<S>],
    counters: Vec<Counter>,
    last: S,
}

impl<S: Copy + Default> Exported<S> {
    pub fn new(
        family: &Family<OverlayLabel, Counter>,
        channel: u32,
        fields: &'static [Field<S>],
    ) -> Self {
        let counters = fields
            .iter()
            .map(|(event, _)| {
                family
                    .get_or_create(&OverlayLabel {
                        channel: channel.to_string(),
                        event: (*event).to_string(),
                    })
                    .clone()
            })
            .collect();
        Self {
            fields,
            counters,
            last: S::default(),
        }
    }

    /// Adds what changed since the last call.
    pub fn update(&mut self, now: S) {
        for ((_, field), c) in self.fields.iter().zip(&self.counters) {
            let delta = field(&now).saturating_sub(field(&self.last));
            if delta > 0 {
                c.inc_by(delta);
            }
        }
        self.last = now;
    }
}

/// Marks the connected peers as neighbours and starts the driver thread
/// `shoal-<O::NAME>` (see the module docs); the application takes the
/// deliveries, at most `capacity` waiting.
pub(crate) fn start<O: Overlay>(
    shared: Arc<Shared>,
    link: Arc<Link<O>>,
    rx: Receiver,
    capacity: usize,
) -> Result<Deliveries, Error> {
    if capacity == 0 {
        return Err(Error::InvalidConfig {
            field: "overlay capacity",
            reason: "must be > 0".into(),
        });
    }
    // Subscribed before the peers are read: a peer that connects between
    // the two is seen twice (up is idempotent), none is missed.
    let events = crate::events::Events::new(shared.peers.subscribe());
    {
        let now = Instant::now();
        let mut st = link.lock();
        for p in shared.peers.peers() {
            st.handle_neighbor_up(now, p);
        }
    }
    let inbox = Arc::new(Inbox::new(capacity));
    let app = inbox.clone();
    let spin = shared.config.effective_wait_spin();
    let mut driver = Driver {
        link,
        shared,
        rx,
        events,
    };
    std::thread::Builder::new()
        .name(format!("shoal-{}", O::NAME))
        .spawn(move || {
            // Closes the deliveries and the application's calls however the
            // thread ends (a validator that panics included).
            let _end = Ended {
                link: driver.link.clone(),
                inbox: app.clone(),
            };
            let mut out = Vec::new();
            while driver.turn(&mut out) {
                for e in out.drain(..) {
                    driver.handle(&app, e);
                }
            }
        })
        .map_err(Error::Io)?;
    Ok(Deliveries { inbox, spin })
}

/// See the driver thread in [`start`].
struct Ended<O: Overlay> {
    link: Arc<Link<O>>,
    inbox: Arc<Inbox<Delivery>>,
}

impl<O: Overlay> Drop for Ended<O> {
    fn drop(&mut self) {
        self.link.lock().driven().closed = true;
        self.inbox.close();
    }
}

struct Driver<O> {
    link: Arc<Link<O>>,
    shared: Arc<Shared>,
    rx: Receiver,
    events: crate::events::Events,
}

impl<O: Overlay> Driver<O> {
    /// Waits for room in the application's queue (backpressure), until the
    /// network stops.
    fn deliver(&self, app: &Inbox<Delivery>, mut d: Delivery) {
        loop {
            match app.push(d) {
                Ok(()) => return app.publish(1),
                Err(Rejected::Closed(_)) => return,
                Err(Rejected::Full(back)) => {
                    if !self.shared.running.load(Ordering::Acquire) {
                        return;
                    }
                    d = back;
                    std::thread::sleep(FULL_RETRY);
                }
            }
        }
    }

    fn handle(&self, app: &Inbox<Delivery>, e: O::Event) {
        let outcome = self.link.lock().outcome(e);
        match outcome {
            // Waits for room: backpressure. A dropped receiver: keep
            // relaying for the others.
            Outcome::Deliver(d) => self.deliver(app, d),
            Outcome::Misbehaving { peer, reason } => {
                tracing::warn!(
                    ?peer,
                    reason,
                    protocol = O::NAME,
                    "overlay neighbour misbehaving: disconnecting"
                );
                {
                    let mut st = self.link.lock();
                    st.driven().misbehaving_disconnects += 1;
                    st.export();
                }
                crate::network::close_peer(&self.shared, &peer);
            }
            Outcome::Nothing => {}
        }
    }

    /// One turn: wait, peer events, frames, timers. False once the network
    /// shut down.
    fn turn(&mut self, out: &mut Vec<O::Event>) -> bool {
        let wait = {
            let st = self.link.lock();
            st.poll_timeout()
                .map_or(MAX_IDLE, |t| t.saturating_duration_since(Instant::now()))
                .min(MAX_IDLE)
        };
        let first = match self.rx.recv_timeout(wait) {
            Ok(m) => m,
            Err(RecvError) => return false,
        };
        loop {
            match self.events.try_recv() {
                Ok(Some(ev)) => {
                    let now = Instant::now();
                    let mut st = self.link.lock();
                    match ev {
                        PeerEvent::Connected(p) => st.handle_neighbor_up(now, p),
                        PeerEvent::Disconnected { peer, .. } => {
                            st.handle_neighbor_down(now, &peer);
                            // A peer turned away at the neighbour cap
                            // takes the free place (up is idempotent).
                            for p in self.shared.peers.peers() {
                                st.handle_neighbor_up(now, p);
                            }
                        }
                        PeerEvent::Lagged(_) => {
                            // Missed events: the connected peers are the
                            // truth, both ways.
                            let connected = self.shared.peers.peers();
                            let set: HashSet<&PublicKey> = connected.iter().collect();
                            let gone: Vec<PublicKey> = st
                                .neighbors()
                                .into_iter()
                                .filter(|n| !set.contains(n))
                                .collect();
                            for g in gone {
                                st.handle_neighbor_down(now, &g);
                            }
                            for p in connected {
                                st.handle_neighbor_up(now, p);
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        let mut st = self.link.lock();
        let now = Instant::now();
        if let Some((from, bytes)) = first {
            st.handle_frame(now, &from, &bytes);
            for _ in 1..FRAMES_PER_TURN {
                let Some((from, bytes)) = self.rx.try_recv() else {
                    break;
                };
                st.handle_frame(now, &from, &bytes);
            }
        }
        if st.poll_timeout().is_some_and(|t| t <= now) {
            st.handle_timeout(now);
        }
        st.flush(&self.link.tx, out);
        true
    }
}
