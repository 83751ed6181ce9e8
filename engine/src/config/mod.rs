//! Engine configuration.
//!
//! # Design
//! One flat [`Config`] with three presets: [`Config::recommended`] for
//! validators on the public internet, [`Config::aggressive`] for fast
//! discovery on well-connected networks, and [`Config::local`] for loopback
//! clusters, tests and benchmarks. Every field is documented with its unit and
//! why its default is what it is. Every queue and buffer the engine owns is
//! bounded by a field here.

mod validate;
pub use validate::{MAX_SHARDS, SHARDS_PER_CORE};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_crypto::{Ed25519Signer, Identity};

/// Default [`Config::wait_spin`], µs.
const WAIT_SPIN_US: u64 = 100;
/// Default [`Config::idle_spin`], µs.
const IDLE_SPIN_US: u64 = 0;

/// Smallest [`Config::max_frame_body`]: one frame must hold a chunk of the
/// receivers' minimum chunk size (1 KiB, `ChunkLimits::min_chunk_size`)
/// plus its record header and the tag. With less, a node chunked every
/// message over ~1 KiB into parts its peers refuse, even peers with the
/// same settings.
pub const MIN_FRAME_BODY: usize = 1024 + shoal_wire::MAX_DATA_OVERHEAD + shoal_wire::TAG_LEN;

/// Which I/O driver the data shards use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// io_uring where the kernel runs every operation the driver uses
    /// (probed at start), otherwise epoll: a warning names the probe step
    /// that failed, as does the `fallback` label of `shoal_backend`.
    #[default]
    Auto,
    /// io_uring only; starting fails if the probe fails.
    IoUring,
    /// epoll (mio) readiness I/O.
    Epoll,
}

impl Backend {
    /// The name used in config files and metrics: `auto`, `io_uring`, `epoll`.
    pub fn label(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// Engine configuration. Build one with a preset and override fields.
#[derive(Clone)]
pub struct Config {
    /// This node's identity. Defaults to a fresh random key (noise did the same).
    pub identity: Identity,
    /// Address to listen on; `None` makes a dial-only node.
    pub listen: Option<SocketAddr>,
    /// Domain-separation namespace for every signature (handshakes, address
    /// records). Nodes with different namespaces cannot talk to each other.
    pub namespace: Vec<u8>,
    /// I/O driver.
    pub backend: Backend,
    /// Number of data shards (threads). 0 = one per available core;
    /// otherwise 1 to 4 per available core (1024 at most).
    pub shards: usize,
    /// Accept up to 1024 [`Config::shards`] whatever the machine's cores
    /// (tests of many-shard layouts on small machines). Default false.
    pub force_shards: bool,
    /// Pin shard `i` to core `(core_offset + i) % cores`.
    pub pin_cores: bool,
    /// First core used when pinning (lets several nodes in one process, or
    /// several processes, take different cores).
    pub core_offset: usize,
    /// Shards spin instead of sleeping in the kernel (dedicated cores only:
    /// it burns a full core per shard but removes wake-up latency).
    pub busy_poll: bool,
    /// io_uring shards with nothing in flight but receives (no send, no
    /// connect, no socket closing) sleep in an epoll set over their sockets
    /// (a doorbell) instead of in the ring, so the kernel wakes them the way
    /// it wakes a thread blocked on a socket: on the sender's core when the
    /// sender is about to sleep. Each wake-up then costs one extra syscall.
    /// Off: every sleep is in `io_uring_enter`, whose wake-ups place the
    /// shard on an idle core. Not used under [`Config::busy_poll`] or on
    /// kernels without `DEFER_TASKRUN`. Default true; see
    /// `engine/src/driver/doorbell.rs` for the measurements.
    pub uring_doorbell: bool,
    /// How long an application thread blocked in a `*_blocking` receive or
    /// request ([`crate::Receiver::recv_blocking`],
    /// [`crate::Receiver::recv_timeout`], [`crate::Sender::request_blocking`])
    /// keeps looking for its result, yielding its core between looks, before
    /// it parks. A parked receiver costs a futex wake on the shard and a
    /// context switch per wake-up (on a VM also an idle vCPU's wake-up): at
    /// one response or one 64 KiB message at a time that is most of the
    /// latency. Spinning costs that thread's CPU only while it would
    /// otherwise sleep, and it yields to runnable threads. 0 parks at once.
    /// Async receivers never spin (they must not block their executor), and
    /// with [`Config::busy_poll`] nobody does: a waiter yielding to a shard
    /// that never yields loses its core for a whole scheduler slice.
    /// Default 100 µs (measured in `engine/src/wait.rs`).
    pub wait_spin: Duration,
    /// After a loop turn that did work (completions, readiness, commands), a
    /// shard keeps polling, yielding its core between polls, this long
    /// before it sleeps in the kernel. The response to a request it just
    /// sent, or the application's next command, then costs no wake-up
    /// (a futex or eventfd wake plus, on a VM, an idle vCPU's wake-up).
    /// Costs CPU only right after activity, and it yields to runnable
    /// threads; 0 sleeps at once. [`Config::busy_poll`] is this forever
    /// without yielding. Default 0: it pays only with spare cores. On the
    /// 2-core bench machine 200 µs (`shoal bench --backend io-uring
    /// --rounds 3 --idle-spin-us 0|200`, two interleaved runs) gave 64 KiB
    /// throughput +7/+8 %, request p50 8→12 and 21→12 µs, but rpc x32
    /// −14/−16 % and fan-out −6/−9 %: four spinning shards and three
    /// receivers compete for two cores.
    pub idle_spin: Duration,
    /// Largest frame body (ciphertext + tag) we send or accept, bytes. The
    /// default carries a 64 KiB message plus its record header and tag in
    /// one frame, so 64 KiB messages are never split in two.
    pub max_frame_body: usize,
    /// Default largest message on a channel (after decompression), bytes.
    pub max_message_size: usize,
    /// A peer's Hello may be at most this old.
    pub handshake_max_age: Duration,
    /// A peer's Hello (or address record) may be at most this far in the future.
    pub synchrony_bound: Duration,
    /// A handshake must complete within this time or the connection is dropped.
    pub handshake_timeout: Duration,
    /// A connection with no inbound traffic for this long is closed.
    pub idle_timeout: Duration,
    /// How often an established connection sends a keep-alive ping when idle.
    pub ping_interval: Duration,
    /// Open mode (noise's model): any key may connect, peers are found with
    /// Kademlia. Off = authorized mode (commonware's): only keys in a
    /// tracked peer set may connect, found with bit-vector gossip.
    pub open: bool,
    /// Address advertised in this node's signed record (default: `listen`).
    pub advertise: Option<SocketAddr>,
    /// Peer sets kept by the oracle; keys outside all of them are refused.
    pub tracked_peer_sets: usize,
    /// Most signed address records sent in answer to one bit vector.
    pub peer_gossip_max: usize,
    /// How often each connection gets a bit-vector ping (discovery gossip).
    pub gossip_interval: Duration,
    /// Accept address records with private, loopback or link-local IPs
    /// (needed on loopback clusters; off on the public internet).
    pub allow_private_ips: bool,
    /// Discovery records queued from the data shards to the control shard.
    pub control_queue: usize,
    /// How often the dialer looks for peers to dial.
    pub dial_frequency: Duration,
    /// Tries to a peer that back off exponentially from `dial_backoff_min`;
    /// after that many consecutive failures every try waits
    /// `dial_backoff_max`. The dialer never gives up on an authorized peer.
    pub dial_quick_attempts: u32,
    /// First backoff after a failed dial; doubles per failure (with jitter).
    pub dial_backoff_min: Duration,
    /// Largest backoff between dials to one peer.
    pub dial_backoff_max: Duration,
    /// Max inbound (accepted) connections, established or handshaking.
    pub max_inbound: usize,
    /// Max inbound connections (established or handshaking) from one IPv4
    /// address or IPv6 /64 at a time; more are refused at accept (metric
    /// `refused{reason="max_inbound_per_ip"}`). Keeps one host from holding
    /// every inbound slot with handshakes it never finishes. Peers behind
    /// one NAT, or several nodes on one host, share an address: raise it
    /// for them. 0: no per-address limit (loopback clusters, where every
    /// peer is 127.0.0.1). Default 8; `local` 0.
    pub max_inbound_per_ip: usize,
    /// New inbound connections per second one IPv4 address or IPv6 /64 may
    /// open once its [`Config::accept_burst_per_ip`] is spent; more are
    /// refused at accept (metric `refused{reason="accept_rate_per_ip"}`).
    /// Bounds how fast one host makes us pay for handshakes (~0.1 ms of CPU
    /// each), including an authorized peer that reconnects as soon as it is
    /// closed for misbehaving. An attempt refused at accept (by this or by
    /// `max_inbound` / `max_inbound_per_ip`) uses up nothing, so a host that
    /// hammers still gets this rate. 0: no rate limit; at most 1,000,000.
    /// Default 4; `local` 0.
    pub accept_rate_per_ip: u32,
    /// Connections one address may open at once before
    /// [`Config::accept_rate_per_ip`] applies (its bucket refills at that
    /// rate). Default 16: room for a restarting host's nodes to reconnect.
    pub accept_burst_per_ip: u32,
    /// How long a peer whose established connection was closed because it
    /// provably broke the protocol is refused, in both directions, before it
    /// may handshake again; the dialer skips it meanwhile (metric
    /// `misbehavior_cooldowns`; refusals `refused{reason="cooldown"}`).
    /// "Provably": a record that authenticated under the session keys and
    /// that no honest peer sends whatever its settings or version (malformed
    /// records, chunks that break the reassembly rules; see
    /// [`crate::connection::CloseCause::is_peer_misbehavior`]). Errors an
    /// on-path attacker could inject (bad length, failed decryption) and
    /// violations of our own limits (message size, reassembly budget,
    /// decompression bound, unregistered channel) or of what this version
    /// knows (unknown record kinds) never start one. 0: off. Default 10 s;
    /// `local` 0.
    pub misbehavior_cooldown: Duration,
    /// Max outbound (dialed) connections, established or handshaking.
    pub max_outbound: usize,
    /// Messages a single peer's send queue may hold before `send` reports it
    /// full. 1 to 1,000,000; default 4096.
    pub peer_send_backlog: usize,
    /// Payload bytes a single peer's send queue may hold before `send`
    /// reports it full (`SendError::Full`, metric `send_full`): what a peer
    /// that stops reading can make us hold for it, beside
    /// [`Config::peer_send_backlog`]. An empty queue always takes one
    /// message, so the bound is this plus one message. Engine-originated
    /// messages on the connection (RPC responses, handler replies) are held
    /// to twice this in all. 64 KiB to 1 GiB; default 8 MiB.
    pub peer_send_bytes: usize,
    /// A connection whose output makes no progress for this long (a peer
    /// that stopped reading, or a dead path) is aborted: reset (RST), its
    /// buffers freed, its socket closed and counted as
    /// `closes{reason="write_timeout"}`. A connection that is closing gets
    /// the same time, counted from the end of its close handshake, to flush
    /// what it sealed, whatever the peer reads meanwhile. 100 ms to 10 min;
    /// default 5 s.
    pub write_timeout: Duration,
    /// Bytes of sealed frames a connection prepares per write (one send in flight).
    pub max_write_batch: usize,
    /// Bytes of partially reassembled messages a connection may hold.
    pub max_in_progress_bytes: usize,
    /// Partially reassembled messages a connection may hold.
    pub max_in_progress_messages: usize,
    /// Requests awaiting a response, node-wide.
    pub max_pending_requests: usize,
    /// Commands (sends, dials, closes) queued to one shard.
    pub shard_queue: usize,
    /// io_uring: receive buffers in each shard's provided-buffer ring (power
    /// of two). The ring hands buffers out in order, so a shard cycles
    /// through all of them and each receive lands in the least recently used
    /// one: the pool is the receive path's cache working set. A buffer goes
    /// back as soon as its completion is processed, so only the completions
    /// of one loop turn hold buffers (an exhausted ring retries after they
    /// return). 64 × 64 KiB = 4 MiB; 256 (16 MiB) was 15–25 % slower on
    /// fan-out to 16 peers (`shoal bench --scenario fanout --peers 16
    /// --messages 3000`: 1213/1222 vs 1487/1381 MiB/s, 32 buffers
    /// 1434/1361) and no faster elsewhere.
    pub recv_buffers: u16,
    /// io_uring / epoll: size of one receive buffer, bytes.
    pub recv_buffer_size: usize,
    /// io_uring: submission queue entries per shard (power of two, 8 to
    /// 32768); the completion queue gets twice as many. A full submission
    /// queue is handed to the kernel early, and completions past a full
    /// completion queue wait in the kernel's overflow list (metric
    /// `uring_cq_overflows`) and end multishot receives, which the shard
    /// re-arms: correct either way, only slower. Default 4096.
    pub uring_entries: u32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("identity", self.identity.public_key())
            .field("listen", &self.listen)
            .field("backend", &self.backend)
            .field("shards", &self.shards)
            .field("busy_poll", &self.busy_poll)
            .field("uring_doorbell", &self.uring_doorbell)
            .field("wait_spin", &self.wait_spin)
            .field("idle_spin", &self.idle_spin)
            .field("max_frame_body", &self.max_frame_body)
            .field("max_message_size", &self.max_message_size)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Conservative settings for validators on the public internet.
    pub fn recommended(listen: Option<SocketAddr>) -> Self {
        Self {
            identity: Arc::new(Ed25519Signer::generate()),
            listen,
            namespace: b"shoal/1".to_vec(),
            backend: Backend::Auto,
            shards: 0,
            force_shards: false,
            pin_cores: false,
            core_offset: 0,
            busy_poll: false,
            uring_doorbell: true,
            wait_spin: Duration::from_micros(WAIT_SPIN_US),
            idle_spin: Duration::from_micros(IDLE_SPIN_US),
            max_frame_body: 64 * 1024 + 256,
            max_message_size: 4 * 1024 * 1024,
            handshake_max_age: Duration::from_secs(10),
            synchrony_bound: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(3),
            open: false,
            advertise: None,
            tracked_peer_sets: 4,
            peer_gossip_max: 32,
            gossip_interval: Duration::from_secs(5),
            allow_private_ips: false,
            control_queue: 4096,
            dial_frequency: Duration::from_secs(1),
            dial_quick_attempts: 3,
            dial_backoff_min: Duration::from_millis(500),
            dial_backoff_max: Duration::from_secs(30),
            max_inbound: 128,
            max_inbound_per_ip: 8,
            accept_rate_per_ip: 4,
            accept_burst_per_ip: 16,
            misbehavior_cooldown: Duration::from_secs(10),
            max_outbound: 128,
            peer_send_backlog: 4096,
            peer_send_bytes: 8 * 1024 * 1024,
            write_timeout: Duration::from_secs(5),
            max_write_batch: 256 * 1024,
            max_in_progress_bytes: 16 * 1024 * 1024 + 64 * 1024,
            max_in_progress_messages: 8,
            max_pending_requests: 65536,
            shard_queue: 65536,
            recv_buffers: 64,
            recv_buffer_size: 64 * 1024,
            uring_entries: 4096,
        }
    }

    /// Faster dialing and pinging for well-connected networks.
    pub fn aggressive(listen: Option<SocketAddr>) -> Self {
        Self {
            dial_frequency: Duration::from_millis(500),
            gossip_interval: Duration::from_secs(1),
            ping_interval: Duration::from_secs(1),
            dial_backoff_min: Duration::from_millis(200),
            dial_backoff_max: Duration::from_secs(5),
            ..Self::recommended(listen)
        }
    }

    /// Loopback clusters, tests and benchmarks: quick dials, short backoffs.
    pub fn local(listen: Option<SocketAddr>) -> Self {
        Self {
            dial_frequency: Duration::from_millis(100),
            gossip_interval: Duration::from_millis(250),
            allow_private_ips: true,
            ping_interval: Duration::from_secs(1),
            dial_backoff_min: Duration::from_millis(50),
            dial_backoff_max: Duration::from_secs(1),
            max_inbound: 1024,
            max_inbound_per_ip: 0,
            accept_rate_per_ip: 0,
            misbehavior_cooldown: Duration::ZERO,
            max_outbound: 1024,
            shards: 1,
            ..Self::recommended(listen)
        }
    }

    /// What every connection of a node with this config is configured
    /// with (the sans-IO [`crate::connection::Connection`]'s settings).
    pub fn connection_config(&self) -> crate::connection::ConnectionConfig {
        crate::connection::ConnectionConfig {
            identity: self.identity.clone(),
            handshake: Arc::new(self.handshake_config()),
            max_frame_body: self.max_frame_body,
            max_write_batch: self.max_write_batch,
            idle_timeout: self.idle_timeout,
            ping_interval: self.ping_interval,
            chunk_limits: shoal_wire::chunk::ChunkLimits {
                max_in_progress_bytes: self.max_in_progress_bytes,
                max_in_progress_messages: self.max_in_progress_messages,
                ..shoal_wire::chunk::ChunkLimits::default()
            },
            max_queued: self.peer_send_backlog.saturating_mul(2).max(64),
            max_queued_bytes: self.peer_send_bytes.saturating_mul(2),
            clock: crate::clock::Clock::system(),
        }
    }

    /// How long a blocking application call looks before parking:
    /// [`Config::wait_spin`], or nothing under [`Config::busy_poll`] (a
    /// waiter yielding to a shard that never yields loses its core for a
    /// whole scheduler slice).
    pub fn effective_wait_spin(&self) -> Duration {
        if self.busy_poll {
            Duration::ZERO
        } else {
            self.wait_spin
        }
    }

    /// Chooses the identity.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = identity;
        self
    }

    /// The handshake parameters this config implies (namespace, timestamp
    /// window, deadline).
    pub fn handshake_config(&self) -> shoal_crypto::HandshakeConfig {
        shoal_crypto::HandshakeConfig {
            namespace: self.namespace.clone(),
            max_age: self.handshake_max_age,
            synchrony_bound: self.synchrony_bound,
            timeout: self.handshake_timeout,
        }
    }

    /// Resolved shard count.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}
