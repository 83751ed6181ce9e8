//! State shared by the application threads, the control shard and the data
//! shards. Everything here is either immutable after start, atomic, or an
//! `ArcSwap` snapshot, except the per-address inbound counts (a mutex taken
//! once per accept and once per inbound close): the per-message path takes
//! no lock.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};

use crate::channel_spec::Channels;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oracle::OracleState;
use crate::peers::PeerTable;
use crate::rpc::RpcState;
use crate::shard::link::ShardLink;
use crate::waker::ShardWaker;

pub(crate) struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    /// Set once when the network starts.
    pub channels: OnceLock<Arc<Channels>>,
    pub peers: PeerTable,
    pub oracle: Arc<OracleState>,
    pub shards: Vec<ShardLink>,
    /// Accepted connections alive (handshaking or established).
    pub inbound: AtomicUsize,
    /// Per-peer quota limiters, shared by a peer's connections.
    pub limiters: crate::limiters::LimiterStore,
    /// Peers refused for a while after misbehaving (`misbehavior_cooldown`).
    pub cooldown: crate::control::cooldown::PeerCooldown,
    /// The same per remote address, against `max_inbound_per_ip`.
    pub inbound_ips: crate::control::inbound_limit::InboundLimit,
    /// Dialed connections alive (connecting, handshaking or established).
    pub outbound: AtomicUsize,
    /// Peers the application placed on a shard ([`crate::placement`]).
    pub pins: crate::placement::Pins,
    pub running: AtomicBool,
    pub rpc: RpcState,
    /// Data shards → control shard (discovery records, connection events).
    pub control_tx: std::sync::mpsc::SyncSender<ControlEvent>,
    pub control_waker: Arc<ShardWaker>,
}

/// What data shards tell the control shard.
pub(crate) enum ControlEvent {
    Connected {
        peer: shoal_crypto::PublicKey,
        id: crate::peers::ConnId,
    },
    Record {
        peer: shoal_crypto::PublicKey,
        id: crate::peers::ConnId,
        record: shoal_wire::Record,
    },
    /// Open mode: find the nodes closest to `target`.
    Lookup {
        target: [u8; 32],
        reply: tokio::sync::oneshot::Sender<crate::open::LookupResult>,
    },
    /// A dial to `peer` ended without a connection (open mode fails the
    /// queries that waited for it at once).
    DialFailed { peer: shoal_crypto::PublicKey },
    /// Dial `peer` at `addr` now (open mode's send-to-id).
    Dial {
        peer: shoal_crypto::PublicKey,
        addr: std::net::SocketAddr,
    },
    /// Close (`on == false`) or reopen the listening socket; the reply is
    /// the listening address, if any.
    Listen {
        on: bool,
        reply: std::sync::mpsc::SyncSender<std::io::Result<Option<std::net::SocketAddr>>>,
    },
}

impl Shared {
    /// Gives back what the accept counted for a connection from `ip` (the
    /// address first, so the per-address map never holds more addresses
    /// than `max_inbound` admits). For every accepted connection exactly
    /// once: at its close, or when it is dropped before it became one.
    pub fn release_inbound(&self, ip: std::net::IpAddr) {
        self.inbound_ips.release(ip);
        self.inbound
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Takes data shard `id` out of placement (once: `shoal_shards_alive`
    /// counts it down once).
    pub fn leave_placement(&self, id: usize) {
        if self.shards.get(id).is_some_and(|l| l.load.mark_dead()) {
            self.metrics.shards_alive.dec();
        }
    }

    /// Hands an event to the control shard; a full queue is counted (the
    /// gossip that produced it repeats on the next interval).
    pub fn to_control(&self, ev: ControlEvent) {
        match self.control_tx.try_send(ev) {
            Ok(()) => self.control_waker.wake(),
            Err(_) => {
                self.metrics.control_dropped.inc();
            }
        }
    }
}
