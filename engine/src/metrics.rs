//! Prometheus metrics (`prometheus-client`).
//!
//! # Design
//! Hot-path counters are plain atomic counters resolved once (per node, or
//! per channel at registration, see [`ChannelMetrics`]) so that counting a
//! message never takes the label-map lock. Labelled families are used only
//! for rare events: closes and refusals by reason, handshakes by result.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

/// The backend a node runs on and, when `Auto` fell back to epoll, the probe
/// step that failed (`none` otherwise).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
    pub fallback: String,
}

/// An overlay channel (gossip, routed unicast) and what happened (see
/// [`Metrics::gossip`], [`Metrics::route`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverlayLabel {
    pub channel: String,
    pub event: String,
}

/// What happened to an application task (see [`Metrics::tasks`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

/// Per-channel counters, resolved at registration.
#[derive(Clone, Default)]
pub struct ChannelMetrics {
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Sends on this channel refused with [`crate::SendError::Full`].
    pub send_full: Counter,
}

/// Every metric a node exports; [`Metrics::register`] adds them to a
/// `prometheus_client` registry.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use shoal_engine::{ChannelConfig, Ed25519Signer, Priority, Signer};
/// let [(a, mut ch), _b] = shoal_engine::__private::connected_pair(&[ChannelConfig::new(1)]);
/// let (tx, _rx) = ch.remove(0);
/// let stranger = Ed25519Signer::insecure_from_seed(9).public_key().clone();
/// let _ = tx.send(&stranger, Bytes::from_static(b"x"), Priority::Low);
/// assert_eq!(a.metrics().send_not_connected.get(), 1);
/// assert_eq!(a.metrics().connections.get(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub handshaking: Gauge,
    pub handshakes: Family<ReasonLabel, Counter>,
    pub closes: Family<ReasonLabel, Counter>,
    pub refused: Family<ReasonLabel, Counter>,
    pub send_full: Counter,
    pub send_not_connected: Counter,
    /// Messages `send` accepted that were moved to the peer's replacement
    /// connection (simultaneous dials, reconnects) instead of being lost.
    pub send_rerouted: Counter,
    /// Messages `send` accepted and the engine could not deliver, by reason
    /// (`disconnected`: the peer's connection ended before the message was
    /// written and no other connection to it exists).
    pub send_dropped: Family<ReasonLabel, Counter>,
    pub dials: Counter,
    /// Accepted connections moved to the shard their peer is placed on
    /// ([`crate::NetworkHandle::place`]).
    pub connections_moved: Counter,
    pub dial_failures: Counter,
    pub wakeups: Counter,
    pub receiver_full_pauses: Counter,
    pub rate_limit_pauses: Counter,
    pub control_dropped: Counter,
    /// Streams whose halves the application holds (open or ending).
    pub streams_open: Gauge,
    /// Streams this node opened.
    pub streams_opened: Counter,
    /// Streams peers opened that a listener took.
    pub streams_accepted: Counter,
    /// Streams peers opened that were refused, by reason (`no_listener`,
    /// `backlog_full`).
    pub streams_refused: Family<ReasonLabel, Counter>,
    /// Stream bytes handed to the application's receive pipes.
    pub stream_bytes_in: Counter,
    /// Stream changes whose wake-up a full shard queue refused (the shard's
    /// timer sweep picked them up).
    pub stream_pokes_deferred: Counter,
    pub frames_out: Counter,
    pub writes: Counter,
    /// Bytes received straight into a connection's frame buffer (every
    /// epoll read; io_uring's direct receives).
    pub recv_direct_bytes: Counter,
    /// Bytes io_uring received into its shared buffer pool and copied into a
    /// frame buffer (idle connections and the start of a burst).
    pub recv_pooled_bytes: Counter,
    /// Bytes copied while reassembling messages of several parts (each part
    /// once, plus what a buffer regrowth moved); single-frame messages are
    /// never copied.
    pub reassembly_copied_bytes: Counter,
    /// Peers put in a cooldown after misbehaving
    /// ([`crate::config::AdmissionSettings::misbehavior_cooldown`]).
    pub misbehavior_cooldowns: Counter,
    /// Times an io_uring shard slept in its doorbell epoll set
    /// ([`crate::config::UringSettings::doorbell`]).
    pub uring_doorbell_sleeps: Counter,
    /// Times an io_uring shard slept in `io_uring_enter` (a send or connect
    /// in flight, a socket closing, or no doorbell).
    pub uring_ring_sleeps: Counter,
    /// Loop turns of an io_uring shard that found completions waiting in the
    /// kernel's overflow list ([`crate::config::UringSettings::entries`]).
    pub uring_cq_overflows: Counter,
    /// Connections admitted without a per-address rate check because the
    /// rate table was full of recently active addresses
    /// ([`crate::config::AdmissionSettings::accept_rate_per_ip`]).
    pub accept_rate_untracked: Counter,
    /// Connections reset because their output made no progress within
    /// [`crate::config::TimeoutSettings::write_timeout`] (or their close could not flush in
    /// that time).
    pub write_timeouts: Counter,
    /// 1 for the backend in use (see [`BackendLabel`]).
    pub backend: Family<BackendLabel, Gauge>,
    /// Data shards running; below the configured count the node is degraded
    /// (a shard whose driver failed gets no new connections).
    pub shards_alive: Gauge,
    /// Data shards whose driver stopped with an error.
    pub shard_failures: Counter,
    /// Connections (handshaking or established, and hand-offs not yet
    /// taken) per data shard: what placement balances.
    pub shard_connections: Family<ShardLabel, Gauge>,
    /// Gossip, per channel and `event`: `delivered`, `published`,
    /// `duplicate` (a full copy of a message already taken), `forwarded`,
    /// `pulled` (arrived after a graft or pull), `rejected` (by the
    /// application), `forged`, `too_old`, `too_new`, `too_large`,
    /// `over_budget`, `parse_error`, `tree_repair` (grafts sent),
    /// `given_up` (missing ids no announcer delivered), `ignored` (frames
    /// from a misbehaving neighbour), `send_full` (frames a full send
    /// queue refused), `send_failed` (frames refused otherwise: the
    /// neighbour's connection gone), `misbehaving_disconnect`.
    pub gossip: Family<OverlayLabel, Counter>,
    /// Routed unicast, per channel and `event`: `delivered`, `sent`,
    /// `forwarded`, `duplicate`, `too_old`, `too_new`, `malformed`,
    /// `forged`, `undecryptable`, `rate_limited`, `hop_limit`, `no_route`
    /// (relayed messages with no neighbour to go to), `dropped_full`,
    /// `other_channel` (opened, addressed to another channel, not
    /// delivered), `send_full`, `send_failed`, `misbehaving_disconnect`.
    pub route: Family<OverlayLabel, Counter>,
    /// Application tasks on the shards ([`crate::tasks`]) alive now.
    pub tasks_running: Gauge,
    /// Application tasks by `event`: `spawned`, `finished`, `panicked`,
    /// `cancelled` (by shutdown).
    pub tasks: Family<EventLabel, Counter>,
    messages_in: Family<ChannelLabel, Counter>,
    messages_out: Family<ChannelLabel, Counter>,
    bytes_in: Family<ChannelLabel, Counter>,
    bytes_out: Family<ChannelLabel, Counter>,
    channel_send_full: Family<ChannelLabel, Counter>,
}

impl Metrics {
    /// Registers every metric under `registry` (prefix it as you like).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections",
            "Established connections",
            self.connections.clone(),
        );
        registry.register(
            "handshaking",
            "Connections in the handshake",
            self.handshaking.clone(),
        );
        registry.register(
            "handshakes",
            "Handshakes by result",
            self.handshakes.clone(),
        );
        registry.register(
            "closes",
            "Closed connections by reason",
            self.closes.clone(),
        );
        registry.register(
            "refused",
            "Refused connections or records by reason",
            self.refused.clone(),
        );
        registry.register(
            "send_queue_full",
            "Sends refused: peer queue full",
            self.send_full.clone(),
        );
        registry.register(
            "send_not_connected",
            "Sends refused: peer not connected",
            self.send_not_connected.clone(),
        );
        registry.register(
            "send_rerouted",
            "Accepted messages moved to the peer's replacement connection",
            self.send_rerouted.clone(),
        );
        registry.register(
            "send_dropped",
            "Accepted messages that could not be delivered, by reason",
            self.send_dropped.clone(),
        );
        registry.register("dials", "Outbound dial attempts", self.dials.clone());
        registry.register(
            "connections_moved",
            "Accepted connections moved to the shard their peer is placed on",
            self.connections_moved.clone(),
        );
        registry.register(
            "dial_failures",
            "Outbound dials that failed",
            self.dial_failures.clone(),
        );
        registry.register(
            "shard_wakeups",
            "Wake-up syscalls sent to sleeping shards",
            self.wakeups.clone(),
        );
        registry.register(
            "misbehavior_cooldowns",
            "Peers refused for a while after misbehaving",
            self.misbehavior_cooldowns.clone(),
        );
        registry.register(
            "uring_doorbell_sleeps",
            "io_uring shard sleeps in the doorbell epoll set",
            self.uring_doorbell_sleeps.clone(),
        );
        registry.register(
            "uring_ring_sleeps",
            "io_uring shard sleeps in io_uring_enter",
            self.uring_ring_sleeps.clone(),
        );
        registry.register(
            "uring_cq_overflows",
            "io_uring shard turns that found completions in the kernel's overflow list",
            self.uring_cq_overflows.clone(),
        );
        registry.register(
            "accept_rate_untracked",
            "Connections admitted unchecked because the per-address rate table was full",
            self.accept_rate_untracked.clone(),
        );
        registry.register(
            "write_timeouts",
            "Connections reset because their output stalled past the write timeout",
            self.write_timeouts.clone(),
        );
        registry.register(
            "receiver_full_pauses",
            "Reads paused because a channel receiver was full",
            self.receiver_full_pauses.clone(),
        );
        registry.register(
            "rate_limit_pauses",
            "Times a channel's records began to be held back by its quota",
            self.rate_limit_pauses.clone(),
        );
        registry.register(
            "control_dropped",
            "Control records dropped (control plane busy)",
            self.control_dropped.clone(),
        );
        registry.register(
            "streams_open",
            "Streams whose halves the application holds",
            self.streams_open.clone(),
        );
        registry.register(
            "streams_opened",
            "Streams this node opened",
            self.streams_opened.clone(),
        );
        registry.register(
            "streams_accepted",
            "Streams peers opened that a listener took",
            self.streams_accepted.clone(),
        );
        registry.register(
            "streams_refused",
            "Streams peers opened that were refused, by reason",
            self.streams_refused.clone(),
        );
        registry.register(
            "stream_bytes_in",
            "Stream bytes handed to the application",
            self.stream_bytes_in.clone(),
        );
        registry.register(
            "stream_pokes_deferred",
            "Stream wake-ups a full shard queue refused (picked up by the timer sweep)",
            self.stream_pokes_deferred.clone(),
        );
        registry.register(
            "frames_out",
            "Sealed frames written",
            self.frames_out.clone(),
        );
        registry.register("writes", "Write operations submitted", self.writes.clone());
        registry.register(
            "recv_direct_bytes",
            "Bytes received straight into frame buffers",
            self.recv_direct_bytes.clone(),
        );
        registry.register(
            "recv_pooled_bytes",
            "Bytes received into the shared io_uring buffer pool and copied out",
            self.recv_pooled_bytes.clone(),
        );
        registry.register(
            "messages_in",
            "Messages received per channel",
            self.messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "Messages sent per channel",
            self.messages_out.clone(),
        );
        registry.register(
            "bytes_in",
            "Payload bytes received per channel",
            self.bytes_in.clone(),
        );
        registry.register(
            "bytes_out",
            "Payload bytes sent per channel",
            self.bytes_out.clone(),
        );
        registry.register(
            "backend",
            "1 for the I/O backend in use; fallback names the io_uring probe step that failed (none if it did not)",
            self.backend.clone(),
        );
        registry.register(
            "shards_alive",
            "Data shards running (fewer than configured: degraded)",
            self.shards_alive.clone(),
        );
        registry.register(
            "shard_failures",
            "Data shards whose driver stopped with an error",
            self.shard_failures.clone(),
        );
        registry.register(
            "reassembly_copied_bytes",
            "Bytes copied reassembling multi-part messages (parts and buffer regrowth)",
            self.reassembly_copied_bytes.clone(),
        );
        registry.register(
            "shard_connections",
            "Connections per data shard (handshaking, established, or handed over and not yet taken)",
            self.shard_connections.clone(),
        );
        registry.register(
            "tasks_running",
            "Application tasks alive on the data shards",
            self.tasks_running.clone(),
        );
        registry.register(
            "tasks",
            "Application tasks by event (spawned, finished, panicked, cancelled)",
            self.tasks.clone(),
        );
        registry.register(
            "gossip_events",
            "Gossip messages and frames per channel by event (delivered, duplicate, forwarded, pulled, rejected, forged, tree_repair, ...)",
            self.gossip.clone(),
        );
        registry.register(
            "route_events",
            "Routed unicast messages per channel by event (delivered, sent, forwarded, forged, no_route, ...)",
            self.route.clone(),
        );
        registry.register(
            "channel_send_full",
            "Sends refused because the peer's queue was full (messages or bytes), per channel",
            self.channel_send_full.clone(),
        );
    }

    /// Resolves a channel's counters once.
    pub fn channel(&self, channel: u32) -> ChannelMetrics {
        let l = ChannelLabel {
            channel: channel.to_string(),
        };
        ChannelMetrics {
            messages_in: self.messages_in.get_or_create(&l).clone(),
            messages_out: self.messages_out.get_or_create(&l).clone(),
            bytes_in: self.bytes_in.get_or_create(&l).clone(),
            bytes_out: self.bytes_out.get_or_create(&l).clone(),
            send_full: self.channel_send_full.get_or_create(&l).clone(),
        }
    }

    /// Connections on data shard `shard` now (see `shard_connections`).
    pub fn shard_connections(&self, shard: usize) -> i64 {
        self.shard_connections
            .get_or_create(&ShardLabel {
                shard: shard.to_string(),
            })
            .get()
    }

    /// Gossip `event`s on `channel` so far (see [`Metrics::gossip`]).
    pub fn gossip_count(&self, channel: u32, event: &str) -> u64 {
        self.gossip
            .get_or_create(&OverlayLabel {
                channel: channel.to_string(),
                event: event.to_string(),
            })
            .get()
    }

    /// Task `event`s so far (see [`Metrics::tasks`]).
    pub fn task_count(&self, event: &str) -> u64 {
        self.tasks
            .get_or_create(&EventLabel {
                event: event.to_string(),
            })
            .get()
    }

    pub(crate) fn task_event(&self, event: &str) {
        self.tasks
            .get_or_create(&EventLabel {
                event: event.to_string(),
            })
            .inc();
    }

    /// Routed unicast `event`s on `channel` so far (see [`Metrics::route`]).
    pub fn route_count(&self, channel: u32, event: &str) -> u64 {
        self.route
            .get_or_create(&OverlayLabel {
                channel: channel.to_string(),
                event: event.to_string(),
            })
            .get()
    }

    /// Closes counted under `reason` so far.
    pub fn close_count(&self, reason: &str) -> u64 {
        self.closes
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .get()
    }

    /// Refusals counted under `reason` so far.
    pub fn refused_count(&self, reason: &str) -> u64 {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .get()
    }

    /// Handshakes counted under `result` so far.
    pub fn handshake_count(&self, result: &str) -> u64 {
        self.handshakes
            .get_or_create(&ReasonLabel {
                reason: result.to_string(),
            })
            .get()
    }

    pub fn close(&self, reason: &str) {
        self.closes
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts an accepted message that will not be delivered.
    pub fn send_dropped(&self, reason: &str) {
        self.send_dropped_n(reason, 1);
    }

    /// `n` accepted messages dropped for `reason` (one label lookup).
    pub fn send_dropped_n(&self, reason: &str, n: usize) {
        if n > 0 {
            self.send_dropped
                .get_or_create(&ReasonLabel {
                    reason: reason.to_string(),
                })
                .inc_by(n as u64);
        }
    }

    /// Accepted messages dropped for `reason` so far.
    pub fn send_dropped_count(&self, reason: &str) -> u64 {
        self.send_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .get()
    }

    /// `n` refusals under `reason` (one label lookup).
    pub fn refuse_n(&self, reason: &str, n: usize) {
        if n > 0 {
            self.refused
                .get_or_create(&ReasonLabel {
                    reason: reason.to_string(),
                })
                .inc_by(n as u64);
        }
    }

    pub fn refuse(&self, reason: &str) {
        self.refuse_n(reason, 1);
    }

    pub fn handshake(&self, result: &str) {
        self.handshakes
            .get_or_create(&ReasonLabel {
                reason: result_label(result),
            })
            .inc();
    }
}

fn result_label(r: &str) -> String {
    r.to_string()
}
