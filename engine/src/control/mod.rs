//! The control shard: admission, dialing, discovery gossip, open mode and
//! the peer-set oracle, on one thread beside the data shards.
//!
//! # Design
//! The decisions are made by sans-IO parts (plain structs: inputs
//! `handle_*`, outputs `poll_*`, time passed in), each tested on its own:
//! - [`acceptor`]: which accepted sockets and which handshake keys are
//!   admitted (`max_inbound`, [`inbound_limit`], [`accept_rate`],
//!   [`cooldown`]);
//! - [`dialer`]: whom to dial when ([`dial_backoff`], the tie-break grace,
//!   open mode's unreachable marks);
//! - [`discovery`]: the authorized-mode gossip over [`crate::discovery`];
//! - [`open`]: open mode's Kademlia driver (its join sequence: [`join`]);
//! - [`oracle`]: following the embedder's peer sets.
//!
//! They speak one vocabulary, [`Output`], and see the node's connections
//! through [`Connections`] ([`output`]). This module is the loop between
//! them: it sleeps until the next timer, a pending connection, or an event
//! from a data shard or the embedder ([`ControlEvent`], [`sleep`]); accepts
//! ([`listener`], the only socket); hands each event to the part it
//! concerns; and carries every output to the data shards ([`shards`]), the
//! metrics or the dialer.
//!
//! One iteration: accept, follow the oracle, the events, open mode's timers,
//! the dials asked for, the gossip round, the dial round.

pub(crate) mod accept_rate;
pub(crate) mod acceptor;
pub(crate) mod cooldown;
mod dial_backoff;
pub(crate) mod dialer;
pub(crate) mod discovery;
pub(crate) mod inbound_limit;
mod join;
pub(crate) mod listener;
pub mod open;
pub(crate) mod oracle;
mod output;
pub(crate) mod shards;
mod sleep;

pub(crate) use output::{Connections, Output};

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver as StdReceiver;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use mio::{Events, Poll};

use crate::waker::ShardWaker;
use crate::{clock::Clock, shard::Command, shared::ControlEvent, shared::Shared};

/// Starts the control shard's thread; it runs until `stop` is set.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    listener: Option<TcpListener>,
    local_addr: Option<SocketAddr>,
    inbox: StdReceiver<ControlEvent>,
    waker: Arc<ShardWaker>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("shoal-control".into())
        .spawn(move || {
            let run = Control::new(shared, listener, local_addr)
                .and_then(|mut c| c.run(&inbox, &waker, &stop));
            if let Err(e) = run {
                tracing::error!(error = %e, "control shard failed");
            }
        })
}

struct Control {
    shared: Arc<Shared>,
    poll: Poll,
    listener: listener::Listener,
    acceptor: acceptor::Acceptor,
    dialer: dialer::Dialer,
    gossip: discovery::Gossip,
    open: Option<open::OpenMode>,
    oracle: oracle::OracleWatch,
    rng: rand::rngs::ThreadRng,
    next_shard: usize,
    pending: Vec<ControlEvent>,
}

impl Control {
    fn new(
        shared: Arc<Shared>,
        l: Option<TcpListener>,
        addr: Option<SocketAddr>,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let (cfg, clock) = (&shared.config, Clock::system());
        let now = Instant::now();
        let open = open::OpenMode::from_config(cfg);
        let gossip = discovery::Gossip::from_config(cfg, addr, open.is_none(), clock, now);
        Ok(Self {
            listener: listener::Listener::new(&poll, l, addr)?,
            poll,
            acceptor: acceptor::Acceptor::from_config(cfg),
            dialer: dialer::Dialer::new(dialer::DialPolicy::from_config(cfg), now),
            gossip,
            open,
            oracle: oracle::OracleWatch::new(),
            rng: rand::thread_rng(),
            next_shard: 0,
            pending: Vec::new(),
            shared,
        })
    }

    fn run(
        &mut self,
        inbox: &StdReceiver<ControlEvent>,
        waker: &ShardWaker,
        stop: &AtomicBool,
    ) -> std::io::Result<()> {
        sleep::register(&self.poll, waker)?;
        let mut events = Events::with_capacity(64);
        let cap = self.shared.config.discovery.control_queue;
        while !stop.load(Ordering::Acquire) {
            let mut wake_at = self.dialer.poll_timeout().min(self.gossip.poll_timeout());
            if let Some(t) = self.open.as_ref().and_then(|o| o.poll_timeout()) {
                wake_at = wake_at.min(t);
            }
            let pending = &mut self.pending;
            sleep::sleep(&mut self.poll, &mut events, waker, wake_at, || {
                sleep::drain(inbox, pending, cap)
            })?;
            if stop.load(Ordering::Acquire) {
                break;
            }
            self.step(inbox, cap);
        }
        Ok(())
    }

    fn step(&mut self, inbox: &StdReceiver<ControlEvent>, cap: usize) {
        let shared = self.shared.clone();
        self.listener
            .accept_all(&shared, &mut self.acceptor, &mut self.next_shard);
        if let Some(sets) = self.oracle.handle_oracle(&shared.oracle, &shared.peers) {
            self.gossip.handle_sets(sets);
        }
        let now = Instant::now();
        self.flush(now);
        sleep::drain(inbox, &mut self.pending, cap);
        let mut pending = std::mem::take(&mut self.pending);
        for ev in pending.drain(..) {
            self.handle_event(ev, now);
            self.flush(now);
        }
        self.pending = pending;
        if let Some(o) = &mut self.open {
            o.handle_timeout(now, &|k| shared.peers.get(k).map(|h| h.id), &mut self.rng);
            self.flush(now);
        }
        self.dial(now);
        self.gossip
            .handle_timeout(now, &shared.peers, &mut self.rng);
        self.flush(now);
        if now >= self.dialer.poll_timeout() {
            // Signed records first (newest address), static addresses
            // (bootstrappers) otherwise.
            let mut candidates: HashMap<_, _> = shared.oracle.addresses().into_iter().collect();
            candidates.extend(self.gossip.dialable());
            let (authorized, dialing) =
                (shared.oracle.authorized(), shared.peers.dialing_snapshot());
            self.dialer
                .handle_timeout(now, candidates, authorized, dialing);
            self.dial(now);
        }
    }

    fn handle_event(&mut self, ev: ControlEvent, now: Instant) {
        let peers = &self.shared.peers;
        match (ev, self.open.as_mut()) {
            (ControlEvent::Connected { peer, id }, open) => {
                self.gossip.handle_connected(&peer, id, &mut self.rng);
                if let Some(o) = open {
                    o.handle_connected(&peer, id);
                }
            }
            (ControlEvent::Record { peer, id, record }, Some(o)) => {
                o.handle_record(&peer, id, record, &|k| peers.get(k).map(|h| h.id), now)
            }
            (ControlEvent::Record { peer, id, record }, None) => {
                let rng = &mut self.rng;
                self.gossip.handle_record(peer, id, record, peers, now, rng)
            }
            (ControlEvent::Lookup { target, reply }, Some(o)) => o.handle_lookup(target, reply),
            (ControlEvent::Lookup { .. }, None) => {}
            (ControlEvent::DialFailed { peer }, Some(o)) => o.handle_dial_failed(&peer, now),
            (ControlEvent::DialFailed { .. }, None) => {}
            (ControlEvent::Dial { peer, addr }, _) => self.dialer.handle_request(peer, addr),
            (ControlEvent::Listen { on, reply }, _) => {
                let _ = reply.try_send(self.listener.set(&self.poll, on));
            }
        }
    }

    /// Carries out what the parts asked for.
    fn flush(&mut self, now: Instant) {
        while let Some(out) = (self.oracle.poll_output())
            .or_else(|| self.gossip.poll_output())
            .or_else(|| self.open.as_mut()?.poll_output())
        {
            self.execute(out, now);
        }
    }

    /// Starts the dials the dialer decides on now.
    fn dial(&mut self, now: Instant) {
        while let Some(out) = self.dialer.poll_dial(now, &*self.shared, &mut self.rng) {
            self.execute(out, now);
        }
    }

    fn execute(&mut self, out: Output, now: Instant) {
        let shared = &*self.shared;
        match out {
            Output::Send { id, record } => shards::send_control(shared, id, record),
            Output::Close { id, reason } => shards::send(shared, id, Command::Close { id, reason }),
            Output::Refuse(reason) => shared.metrics.refuse(reason),
            Output::Dial { peer, addr } => self.dialer.handle_request(peer, addr),
            Output::Learned(peer) => self.dialer.handle_new_address(&peer, now),
            Output::Connect { peer, addr } => {
                shards::dial(shared, &mut self.next_shard, peer, addr)
            }
        }
    }
}
