//! The `discovery` section: which peers this node talks to, how it learns
//! their addresses and how it dials them.
//!
//! # Design
//!
//! These are the control shard's settings (oracle, gossip, dialer); the
//! data shards read none of them. Open mode is a code-only choice: a
//! `shoal node` file describes an authorized peer set.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::preset::{Preset, Section};

/// `[discovery]`: the peer-set oracle, address gossip and the dialer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "super::preset::loading", deny_unknown_fields)]
pub struct DiscoverySettings {
    /// Open mode (noise's model): any key may connect, peers are found with
    /// Kademlia. Off = authorized mode (commonware's): only keys in a
    /// tracked peer set may connect, found with bit-vector gossip. Not a
    /// file setting (`shoal node` runs authorized mode, its `[[peers]]`
    /// being the set). Default false.
    #[serde(skip)]
    pub open: bool,
    /// Peer sets kept by the oracle; keys outside all of them are refused.
    /// Default 4.
    pub tracked_peer_sets: usize,
    /// Most signed address records sent in answer to one bit vector.
    /// Default 32.
    pub peer_gossip_max: usize,
    /// How often each connection gets a bit-vector ping (discovery gossip).
    /// Default 5 s; `aggressive` 1 s; `local` 250 ms.
    #[serde(with = "super::duration")]
    pub gossip_interval: Duration,
    /// Accept address records with private, loopback or link-local IPs
    /// (needed on loopback clusters; off on the public internet). Default
    /// false; `local` true.
    pub allow_private_ips: bool,
    /// Discovery records queued from the data shards to the control shard.
    /// Default 4096.
    pub control_queue: usize,
    /// How often the dialer looks for peers to dial. Default 1 s;
    /// `aggressive` 500 ms; `local` 100 ms.
    #[serde(with = "super::duration")]
    pub dial_frequency: Duration,
    /// Tries to a peer that back off exponentially from `dial_backoff_min`;
    /// after that many consecutive failures every try waits
    /// `dial_backoff_max`. The dialer never gives up on an authorized peer.
    /// Also read as `dial_attempts`. Default 3.
    #[serde(alias = "dial_attempts")]
    pub dial_quick_attempts: u32,
    /// First backoff after a failed dial; doubles per failure (with jitter).
    /// Default 500 ms; `aggressive` 200 ms; `local` 50 ms.
    #[serde(with = "super::duration")]
    pub dial_backoff_min: Duration,
    /// Largest backoff between dials to one peer. Default 30 s;
    /// `aggressive` 5 s; `local` 1 s.
    #[serde(with = "super::duration")]
    pub dial_backoff_max: Duration,
}

impl Section for DiscoverySettings {
    fn preset(preset: Preset) -> Self {
        let recommended = Self {
            open: false,
            tracked_peer_sets: 4,
            peer_gossip_max: 32,
            gossip_interval: Duration::from_secs(5),
            allow_private_ips: false,
            control_queue: 4096,
            dial_frequency: Duration::from_secs(1),
            dial_quick_attempts: 3,
            dial_backoff_min: Duration::from_millis(500),
            dial_backoff_max: Duration::from_secs(30),
        };
        match preset {
            Preset::Recommended => recommended,
            Preset::Aggressive => Self {
                dial_frequency: Duration::from_millis(500),
                gossip_interval: Duration::from_secs(1),
                dial_backoff_min: Duration::from_millis(200),
                dial_backoff_max: Duration::from_secs(5),
                ..recommended
            },
            Preset::Local => Self {
                dial_frequency: Duration::from_millis(100),
                gossip_interval: Duration::from_millis(250),
                allow_private_ips: true,
                dial_backoff_min: Duration::from_millis(50),
                dial_backoff_max: Duration::from_secs(1),
                ..recommended
            },
        }
    }
}
