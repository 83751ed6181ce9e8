//! The `timeouts`, `limits` and `admission` sections: how long a connection
//! may take, what one may make this node hold, and who may connect how
//! often.
//!
//! # Design
//!
//! Every queue and buffer a peer can fill is bounded by a field of
//! [`LimitSettings`]; `docs/operating.md` adds them up into the memory one
//! peer can pin. [`AdmissionSettings`] is what the acceptor checks before
//! any handshake work.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::preset::{Preset, Section};

/// `[timeouts]`: handshake windows, liveness and stalled output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "super::preset::loading", deny_unknown_fields)]
pub struct TimeoutSettings {
    /// A peer's Hello may be at most this old. Default 10 s.
    #[serde(with = "super::duration")]
    pub handshake_max_age: Duration,
    /// A peer's Hello (or address record) may be at most this far in the
    /// future. Default 5 s.
    #[serde(with = "super::duration")]
    pub synchrony_bound: Duration,
    /// A handshake must complete within this time or the connection is
    /// dropped. Default 5 s.
    #[serde(with = "super::duration")]
    pub handshake_timeout: Duration,
    /// A connection with no inbound traffic for this long is closed; longer
    /// than [`TimeoutSettings::ping_interval`]. Default 10 s.
    #[serde(with = "super::duration")]
    pub idle_timeout: Duration,
    /// How often an established connection sends a keep-alive ping when
    /// idle. Default 3 s; `aggressive` and `local` 1 s.
    #[serde(with = "super::duration")]
    pub ping_interval: Duration,
    /// A connection whose output makes no progress for this long (a peer
    /// that stopped reading, or a dead path) is aborted: reset (RST), its
    /// buffers freed, its socket closed and counted as
    /// `closes{reason="write_timeout"}`. A connection that is closing gets
    /// the same time, counted from the end of its close handshake, to flush
    /// what it sealed, whatever the peer reads meanwhile. 100 ms to 10 min;
    /// default 5 s.
    #[serde(with = "super::duration")]
    pub write_timeout: Duration,
}

impl Section for TimeoutSettings {
    fn preset(preset: Preset) -> Self {
        Self {
            handshake_max_age: Duration::from_secs(10),
            synchrony_bound: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            ping_interval: match preset {
                Preset::Recommended => Duration::from_secs(3),
                Preset::Aggressive | Preset::Local => Duration::from_secs(1),
            },
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// `[limits]`: sizes, queue depths and connection counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "super::preset::loading", deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest frame body (ciphertext + tag) we send or accept, bytes. The
    /// default carries a 64 KiB message plus its record header and tag in
    /// one frame, so 64 KiB messages are never split in two. Default
    /// 64 KiB + 256.
    pub max_frame_body: usize,
    /// Default largest message on a channel (after decompression), bytes.
    /// Default 4 MiB.
    pub max_message_size: usize,
    /// Bytes of sealed frames a connection prepares per write (one send in
    /// flight); holds at least one frame. Default 256 KiB.
    pub max_write_batch: usize,
    /// Bytes of partially reassembled messages a connection may hold.
    /// Default 16 MiB + 64 KiB.
    pub max_in_progress_bytes: usize,
    /// Partially reassembled messages a connection may hold. Default 8.
    pub max_in_progress_messages: usize,
    /// Max inbound (accepted) connections, established or handshaking.
    /// Default 128; `local` 1024.
    pub max_inbound: usize,
    /// Max outbound (dialed) connections, established or handshaking.
    /// Default 128; `local` 1024.
    pub max_outbound: usize,
    /// Messages a single peer's send queue may hold before `send` reports it
    /// full. 1 to 1,000,000; default 4096.
    pub peer_send_backlog: usize,
    /// Payload bytes a single peer's send queue may hold before `send`
    /// reports it full (`SendError::Full`, metric `send_full`): what a peer
    /// that stops reading can make us hold for it, beside
    /// [`LimitSettings::peer_send_backlog`]. An empty queue always takes one
    /// message, so the bound is this plus one message. Engine-originated
    /// messages on the connection (RPC responses, handler replies) are held
    /// to twice this in all. 64 KiB to 1 GiB; default 8 MiB.
    pub peer_send_bytes: usize,
    /// Requests awaiting a response, node-wide. Default 65536.
    pub max_pending_requests: usize,
}

impl Section for LimitSettings {
    fn preset(preset: Preset) -> Self {
        let connections = match preset {
            Preset::Recommended | Preset::Aggressive => 128,
            Preset::Local => 1024,
        };
        Self {
            max_frame_body: 64 * 1024 + 256,
            max_message_size: 4 * 1024 * 1024,
            max_write_batch: 256 * 1024,
            max_in_progress_bytes: 16 * 1024 * 1024 + 64 * 1024,
            max_in_progress_messages: 8,
            max_inbound: connections,
            max_outbound: connections,
            peer_send_backlog: 4096,
            peer_send_bytes: 8 * 1024 * 1024,
            max_pending_requests: 65536,
        }
    }
}

/// `[admission]`: per-address limits checked at accept, and the cooldown of
/// a peer that broke the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "super::preset::loading", deny_unknown_fields)]
pub struct AdmissionSettings {
    /// Max inbound connections (established or handshaking) from one IPv4
    /// address or IPv6 /64 at a time; more are refused at accept (metric
    /// `refused{reason="max_inbound_per_ip"}`). Keeps one host from holding
    /// every inbound slot with handshakes it never finishes. Peers behind
    /// one NAT, or several nodes on one host, share an address: raise it
    /// for them. 0: no per-address limit (loopback clusters, where every
    /// peer is 127.0.0.1). Default 8; `local` 0.
    pub max_inbound_per_ip: usize,
    /// New inbound connections per second one IPv4 address or IPv6 /64 may
    /// open once its [`AdmissionSettings::accept_burst_per_ip`] is spent;
    /// more are refused at accept (metric
    /// `refused{reason="accept_rate_per_ip"}`). Bounds how fast one host
    /// makes us pay for handshakes (~0.1 ms of CPU each), including an
    /// authorized peer that reconnects as soon as it is closed for
    /// misbehaving. An attempt refused at accept (by this or by
    /// `max_inbound` / `max_inbound_per_ip`) uses up nothing, so a host that
    /// hammers still gets this rate. 0: no rate limit; at most 1,000,000.
    /// Default 4; `local` 0.
    pub accept_rate_per_ip: u32,
    /// Connections one address may open at once before
    /// [`AdmissionSettings::accept_rate_per_ip`] applies (its bucket refills
    /// at that rate). Default 16: room for a restarting host's nodes to
    /// reconnect.
    pub accept_burst_per_ip: u32,
    /// How long a peer whose established connection was closed because it
    /// provably broke the protocol is refused, in both directions, before it
    /// may handshake again; the dialer skips it meanwhile (metric
    /// `misbehavior_cooldowns`; refusals `refused{reason="cooldown"}`).
    /// "Provably": a record that authenticated under the session keys and
    /// that no honest peer sends whatever its settings or version (malformed
    /// records, chunks that break the reassembly rules; see
    /// `CloseCause::is_peer_misbehavior` in the engine). Errors an
    /// on-path attacker could inject (bad length, failed decryption) and
    /// violations of our own limits (message size, reassembly budget,
    /// decompression bound, unregistered channel) or of what this version
    /// knows (unknown record kinds) never start one. 0: off. Default 10 s;
    /// `local` 0.
    #[serde(with = "super::duration")]
    pub misbehavior_cooldown: Duration,
}

impl Section for AdmissionSettings {
    fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Recommended | Preset::Aggressive => Self {
                max_inbound_per_ip: 8,
                accept_rate_per_ip: 4,
                accept_burst_per_ip: 16,
                misbehavior_cooldown: Duration::from_secs(10),
            },
            Preset::Local => Self {
                max_inbound_per_ip: 0,
                accept_rate_per_ip: 0,
                misbehavior_cooldown: Duration::ZERO,
                ..Self::preset(Preset::Recommended)
            },
        }
    }
}
