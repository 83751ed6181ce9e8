//! Engine configuration: one [`Config`] made of sections, each a type that
//! documents its fields once, with three presets as their defaults.
//!
//! # Design
//!
//! A [`Config`] is the tree a config file is: `[identity]`, `[listen]`,
//! `[timeouts]`, `[limits]`, `[admission]`, `[discovery]`, `[io]` (with
//! `[io.uring]`) and `[streams]`. Each section derives serde with `deny_unknown_fields`,
//! and every field it leaves out takes the value of the preset being loaded
//! ([`Preset::load`]; [`Preset::Recommended`] otherwise), so a file holds
//! only what differs. Presets: [`Config::recommended`] for validators on the
//! public internet, [`Config::aggressive`] for fast discovery on
//! well-connected networks, [`Config::local`] for loopback clusters, tests
//! and benchmarks. [`Config::validate`] checks every field's range before
//! anything is allocated or spawned and names a bad field by its dotted path
//! (`limits.max_message_size`). Every queue and buffer the engine owns is
//! bounded by a field here; `docs/operating.md`'s field table lists them
//! all (a test keeps it in step with these types).
//!
//! What is not here: reading files (a file names a key file, which
//! [`IdentitySettings::load_key_file`] reads when asked) and settings of a
//! program built on the engine (`shoal node`'s metrics endpoint, `shoal
//! bench`'s scenario): those live in that program's own config type.

mod discovery;
#[cfg(test)]
mod docs;
pub mod duration;
mod identity;
mod io;
mod limits;
mod preset;
mod streams;
mod validate;

pub use discovery::DiscoverySettings;
pub use identity::{IdentitySettings, ListenSettings};
pub use io::{Backend, IoSettings, RecordCipher, UringSettings};
pub use limits::{AdmissionSettings, LimitSettings, TimeoutSettings};
pub use preset::Preset;
pub use streams::StreamSettings;
pub(crate) use validate::within;
pub use validate::{MAX_SHARDS, SHARDS_PER_CORE};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_crypto::Identity;

use preset::Section;

/// Smallest [`LimitSettings::max_frame_body`]: one frame must hold a chunk
/// of the receivers' minimum chunk size (1 KiB,
/// `ChunkLimits::min_chunk_size`) plus its record header and the tag. With
/// less, a node chunked every message over ~1 KiB into parts its peers
/// refuse, even peers with the same settings.
pub const MIN_FRAME_BODY: usize = 1024 + shoal_wire::MAX_DATA_OVERHEAD + shoal_wire::TAG_LEN;

/// Engine configuration. Build one with a preset and override fields;
/// [`Network::new`](crate::Network::new) validates it.
///
/// ```
/// use std::time::Duration;
/// use shoal_engine::{Backend, Config, Network};
/// let mut config = Config::recommended(Some("127.0.0.1:0".parse().unwrap()));
/// config.io.backend = Backend::Epoll;
/// config.timeouts.idle_timeout = Duration::from_secs(30);
/// assert!(Network::new(config.clone()).is_ok());
///
/// config.limits.peer_send_backlog = 0;
/// let err = Network::new(config).err().unwrap();
/// assert!(err.to_string().contains("limits.peer_send_backlog"), "{err}");
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default = "preset::loading", deny_unknown_fields)]
pub struct Config {
    /// Who this node is.
    pub identity: IdentitySettings,
    /// Where it accepts connections.
    pub listen: ListenSettings,
    /// Handshake windows, liveness and stalled output.
    pub timeouts: TimeoutSettings,
    /// Sizes, queue depths and connection counts.
    pub limits: LimitSettings,
    /// Per-address limits at accept, and the misbehavior cooldown.
    pub admission: AdmissionSettings,
    /// Peer sets, address gossip and the dialer.
    pub discovery: DiscoverySettings,
    /// Data shards and their I/O driver.
    pub io: IoSettings,
    /// Byte streams: flow-control windows and counts.
    pub streams: StreamSettings,
}

impl Section for Config {
    fn preset(preset: Preset) -> Self {
        Config::preset(preset, None)
    }
}

impl Default for Config {
    /// [`Config::recommended`] without a listen address.
    fn default() -> Self {
        Config::recommended(None)
    }
}

/// Each section defaults to its [`Preset::Recommended`] values.
macro_rules! recommended_by_default {
    ($($section:ty),*) => {$(
        impl Default for $section {
            fn default() -> Self {
                <$section as Section>::preset(Preset::Recommended)
            }
        }
    )*};
}

recommended_by_default!(
    IdentitySettings,
    ListenSettings,
    TimeoutSettings,
    LimitSettings,
    AdmissionSettings,
    DiscoverySettings,
    IoSettings,
    UringSettings,
    StreamSettings
);

impl Config {
    /// Every section under `preset`, with a fresh random identity and
    /// `listen` as the listen address.
    pub fn preset(preset: Preset, listen: Option<SocketAddr>) -> Self {
        Self {
            identity: IdentitySettings::preset(preset),
            listen: ListenSettings {
                address: listen,
                ..ListenSettings::preset(preset)
            },
            timeouts: TimeoutSettings::preset(preset),
            limits: LimitSettings::preset(preset),
            admission: AdmissionSettings::preset(preset),
            discovery: DiscoverySettings::preset(preset),
            io: IoSettings::preset(preset),
            streams: StreamSettings::preset(preset),
        }
    }

    /// Conservative settings for validators on the public internet.
    pub fn recommended(listen: Option<SocketAddr>) -> Self {
        Self::preset(Preset::Recommended, listen)
    }

    /// Faster dialing and pinging for well-connected networks.
    pub fn aggressive(listen: Option<SocketAddr>) -> Self {
        Self::preset(Preset::Aggressive, listen)
    }

    /// Loopback clusters, tests and benchmarks: quick dials, short backoffs.
    pub fn local(listen: Option<SocketAddr>) -> Self {
        Self::preset(Preset::Local, listen)
    }

    /// What every connection of a node with this config is configured
    /// with (the sans-IO [`crate::connection::Connection`]'s settings).
    pub(crate) fn connection_config(&self) -> crate::connection::ConnectionConfig {
        let limits = &self.limits;
        crate::connection::ConnectionConfig {
            identity: self.identity.signer.clone(),
            handshake: Arc::new(self.handshake_config()),
            max_frame_body: limits.max_frame_body,
            max_write_batch: limits.max_write_batch,
            idle_timeout: self.timeouts.idle_timeout,
            ping_interval: self.timeouts.ping_interval,
            chunk_limits: shoal_wire::chunk::ChunkLimits {
                max_in_progress_bytes: limits.max_in_progress_bytes,
                max_in_progress_messages: limits.max_in_progress_messages,
                ..shoal_wire::chunk::ChunkLimits::default()
            },
            max_queued: limits.peer_send_backlog.saturating_mul(2).max(64),
            max_queued_bytes: limits.peer_send_bytes.saturating_mul(2),
            clock: crate::clock::Clock::system(),
            streams: None,
        }
    }

    /// How long a blocking application call looks before parking:
    /// [`IoSettings::wait_spin`], or nothing under [`IoSettings::busy_poll`]
    /// (a waiter yielding to a shard that never yields loses its core for a
    /// whole scheduler slice).
    pub fn effective_wait_spin(&self) -> Duration {
        if self.io.busy_poll {
            Duration::ZERO
        } else {
            self.io.wait_spin
        }
    }

    /// Chooses the identity.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity.signer = identity;
        self
    }

    /// The handshake parameters this config implies (namespace, timestamp
    /// window, deadline, record cipher): for shoal's raw test client (`testkit`), not part
    /// of the API.
    #[doc(hidden)]
    pub fn handshake_config(&self) -> shoal_crypto::HandshakeConfig {
        shoal_crypto::HandshakeConfig {
            namespace: self.identity.namespace.clone(),
            max_age: self.timeouts.handshake_max_age,
            synchrony_bound: self.timeouts.synchrony_bound,
            timeout: self.timeouts.handshake_timeout,
            cipher: self.io.cipher_policy(),
        }
    }

    /// Resolved shard count.
    pub fn shard_count(&self) -> usize {
        if self.io.shards > 0 {
            self.io.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}
