//! [`GossipConfig`]: every bound of a gossip node, with its range.

use std::time::Duration;

use crate::config::within;
use crate::Error;

/// The limits and timers of one gossip channel. Every field has a range,
/// checked by [`GossipConfig::validate`] (at registration in the engine).
#[derive(Clone, Debug, PartialEq)]
pub struct GossipConfig {
    /// Largest payload accepted or published, in bytes (1 B ..= 64 MiB;
    /// default 1 MiB). A larger message from a peer is dropped and counts
    /// against it.
    pub max_message_size: usize,
    /// Message ids remembered to drop duplicates and replays (16 ..=
    /// 10 000 000; default 100 000).
    pub seen_capacity: usize,
    /// How far back an origin's sequence (its clock) may be for a message
    /// to be taken; ids are remembered this long plus `max_clock_skew`
    /// (1 s ..= 1 h; default 2 min).
    pub max_age: Duration,
    /// How far ahead of the local clock an origin's sequence may be (0 ..=
    /// 10 min; default 10 s).
    pub max_clock_skew: Duration,
    /// Payload bytes kept to answer grafts and pulls; beyond it the oldest
    /// ids are forgotten (64 KiB ..= 4 GiB; default 64 MiB).
    pub cache_bytes: usize,
    /// How long id announcements (IHAVE) wait to be batched (1 ms ..= 10 s;
    /// default 20 ms).
    pub lazy_interval: Duration,
    /// Most ids in one control frame, sent or taken (1 ..= 4096; default
    /// 256).
    pub max_ids_per_frame: usize,
    /// How long after the first announcement of a missing message it is
    /// grafted from the announcer (1 ms ..= 60 s; default 150 ms).
    pub graft_timeout: Duration,
    /// How long after a graft or pull the next announcer is asked (1 ms ..=
    /// 60 s; default 150 ms).
    pub retry_timeout: Duration,
    /// Missing messages tracked at once (1 ..= 1 000 000; default 10 000).
    pub max_missing: usize,
    /// Announcers remembered per missing message (1 ..= 64; default 8).
    pub max_announcers: usize,
    /// Neighbours taken part in the overlay (1 ..= 100 000; default 1024);
    /// more are ignored.
    pub max_peers: usize,
    /// Messages per second a neighbour may send us (1 ..= 10 000 000;
    /// default 10 000); beyond it they are dropped.
    pub peer_rate: u32,
    /// Burst above `peer_rate` (1 ..= 10 000 000; default 20 000).
    pub peer_burst: u32,
    /// Ids per second a neighbour may announce or ask for (1 ..=
    /// 100 000 000; default 100 000).
    pub peer_control_rate: u32,
    /// Messages per second taken from one origin (1 ..= 10 000 000; default
    /// 1000); beyond it they are dropped.
    pub origin_rate: u32,
    /// Burst above `origin_rate` (1 ..= 10 000 000; default 2000).
    pub origin_burst: u32,
    /// Origins whose rate is tracked at once (16 ..= 1 000 000; default
    /// 10 000); the least recently added is forgotten first.
    pub max_origins: usize,
    /// Misbehaviours (forged, rejected or oversized messages, unparsable
    /// frames) after which a neighbour is ignored and reported (1 ..=
    /// 1 000 000; default 16).
    pub penalty_threshold: u32,
    /// Hops after which a message is delivered but not forwarded (1 ..=
    /// 255; default 32).
    pub max_hops: u8,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            max_message_size: 1 << 20,
            seen_capacity: 100_000,
            max_age: Duration::from_secs(120),
            max_clock_skew: Duration::from_secs(10),
            cache_bytes: 64 << 20,
            lazy_interval: Duration::from_millis(20),
            max_ids_per_frame: 256,
            graft_timeout: Duration::from_millis(150),
            retry_timeout: Duration::from_millis(150),
            max_missing: 10_000,
            max_announcers: 8,
            max_peers: 1024,
            peer_rate: 10_000,
            peer_burst: 20_000,
            peer_control_rate: 100_000,
            origin_rate: 1000,
            origin_burst: 2000,
            max_origins: 10_000,
            penalty_threshold: 16,
            max_hops: 32,
        }
    }
}

impl GossipConfig {
    /// Checks every field against its range (see each field).
    pub fn validate(&self) -> Result<(), Error> {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        within(
            "gossip.max_message_size",
            self.max_message_size,
            1,
            64 << 20,
        )?;
        within("gossip.seen_capacity", self.seen_capacity, 16, 10_000_000)?;
        within("gossip.max_age", self.max_age, s(1), s(3600))?;
        within(
            "gossip.max_clock_skew",
            self.max_clock_skew,
            Duration::ZERO,
            s(600),
        )?;
        within("gossip.cache_bytes", self.cache_bytes, 64 << 10, 4 << 30)?;
        within("gossip.lazy_interval", self.lazy_interval, ms(1), s(10))?;
        within("gossip.max_ids_per_frame", self.max_ids_per_frame, 1, 4096)?;
        within("gossip.graft_timeout", self.graft_timeout, ms(1), s(60))?;
        within("gossip.retry_timeout", self.retry_timeout, ms(1), s(60))?;
        within("gossip.max_missing", self.max_missing, 1, 1_000_000)?;
        within("gossip.max_announcers", self.max_announcers, 1, 64)?;
        within("gossip.max_peers", self.max_peers, 1, 100_000)?;
        within("gossip.peer_rate", self.peer_rate, 1, 10_000_000)?;
        within("gossip.peer_burst", self.peer_burst, 1, 10_000_000)?;
        within(
            "gossip.peer_control_rate",
            self.peer_control_rate,
            1,
            100_000_000,
        )?;
        within("gossip.origin_rate", self.origin_rate, 1, 10_000_000)?;
        within("gossip.origin_burst", self.origin_burst, 1, 10_000_000)?;
        within("gossip.max_origins", self.max_origins, 16, 1_000_000)?;
        within(
            "gossip.penalty_threshold",
            self.penalty_threshold,
            1,
            1_000_000,
        )?;
        within("gossip.max_hops", self.max_hops, 1, 255)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_each_bound_is_checked() {
        assert!(GossipConfig::default().validate().is_ok());
        type Tweak = fn(&mut GossipConfig);
        let bad: &[(&str, Tweak)] = &[
            ("gossip.max_message_size", |c| c.max_message_size = 0),
            ("gossip.seen_capacity", |c| c.seen_capacity = 15),
            ("gossip.max_age", |c| c.max_age = Duration::from_secs(3601)),
            ("gossip.cache_bytes", |c| c.cache_bytes = 1),
            ("gossip.lazy_interval", |c| c.lazy_interval = Duration::ZERO),
            ("gossip.max_ids_per_frame", |c| c.max_ids_per_frame = 4097),
            ("gossip.max_missing", |c| c.max_missing = 0),
            ("gossip.max_announcers", |c| c.max_announcers = 65),
            ("gossip.peer_rate", |c| c.peer_rate = 0),
            ("gossip.origin_burst", |c| c.origin_burst = 0),
            ("gossip.penalty_threshold", |c| c.penalty_threshold = 0),
            ("gossip.max_hops", |c| c.max_hops = 0),
        ];
        for (field, tweak) in bad {
            let mut c = GossipConfig::default();
            tweak(&mut c);
            match c.validate() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, *field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
