//! Routed unicast's bounds, each with its range.

use std::time::Duration;

use crate::config::within;
use crate::Error;

/// How a node originates, relays and takes routed messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// Relays a message may take (1 ..= 16; default 6). A node originates
    /// with this many and relays at most this many further, whatever the
    /// envelope says.
    pub max_hops: u8,
    /// Neighbours a relay forwards to when the target is not one of them
    /// (1 ..= 8; default 2): the closest to the target by key distance.
    /// More reach further around a missing link at the cost of copies.
    pub fanout: usize,
    /// Neighbours taken part in routing, and keys accepted in a
    /// neighbour's list (1 ..= 512; default 64): what a node knows of the
    /// mesh is at most this squared, about 40 B a key.
    pub max_neighbours: usize,
    /// Largest payload sent or taken, in bytes (1 B ..= 16 MiB; default
    /// 1 MiB); a larger envelope from a neighbour counts against it.
    pub max_payload: usize,
    /// Message ids remembered to drop duplicates and replays (64 ..=
    /// 1 000 000; default 65 536; about 100 B each).
    pub seen_capacity: usize,
    /// How far back an origin's sequence (its clock) may be (1 s ..= 1 h;
    /// default 1 min).
    pub max_age: Duration,
    /// How far ahead of the local clock it may be (0 ..= 10 min; default
    /// 10 s).
    pub max_clock_skew: Duration,
    /// Envelopes per second a neighbour may hand us (1 ..= 1 000 000;
    /// default 5000), and its burst (default twice that).
    pub peer_rate: u32,
    /// Messages per second relayed or taken from one origin (1 ..=
    /// 1 000 000; default 500), and its burst (default twice that).
    pub origin_rate: u32,
    /// Origins and neighbours whose rates are tracked at once (16 ..=
    /// 1 000 000; default 10 000); the least recently added is forgotten.
    pub max_tracked: usize,
    /// Envelope bytes waiting to be sent (64 KiB ..= 1 GiB; default 16
    /// MiB): beyond it a relay drops (counted) and a send is refused.
    pub max_queued_bytes: usize,
    /// Malformed or forged envelopes after which a neighbour is reported
    /// misbehaving (1 ..= 1 000 000; default 16).
    pub penalty_threshold: u32,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            max_hops: 6,
            fanout: 2,
            max_neighbours: 64,
            max_payload: 1 << 20,
            seen_capacity: 65_536,
            max_age: Duration::from_secs(60),
            max_clock_skew: Duration::from_secs(10),
            peer_rate: 5000,
            origin_rate: 500,
            max_tracked: 10_000,
            max_queued_bytes: 16 << 20,
            penalty_threshold: 16,
        }
    }
}

impl RouteConfig {
    /// Checks every field against its range (see each field).
    pub fn validate(&self) -> Result<(), Error> {
        let s = Duration::from_secs;
        within("route.max_hops", self.max_hops, 1, 16)?;
        within("route.fanout", self.fanout, 1, 8)?;
        within("route.max_neighbours", self.max_neighbours, 1, 512)?;
        within("route.max_payload", self.max_payload, 1, 16 << 20)?;
        within("route.seen_capacity", self.seen_capacity, 64, 1_000_000)?;
        within("route.max_age", self.max_age, s(1), s(3600))?;
        within(
            "route.max_clock_skew",
            self.max_clock_skew,
            Duration::ZERO,
            s(600),
        )?;
        within("route.peer_rate", self.peer_rate, 1, 1_000_000)?;
        within("route.origin_rate", self.origin_rate, 1, 1_000_000)?;
        within("route.max_tracked", self.max_tracked, 16, 1_000_000)?;
        within(
            "route.max_queued_bytes",
            self.max_queued_bytes,
            64 << 10,
            1 << 30,
        )?;
        within(
            "route.penalty_threshold",
            self.penalty_threshold,
            1,
            1_000_000,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_each_bound_is_checked() {
        assert!(RouteConfig::default().validate().is_ok());
        type Tweak = fn(&mut RouteConfig);
        let bad: &[(&str, Tweak)] = &[
            ("route.max_hops", |c| c.max_hops = 0),
            ("route.max_hops", |c| c.max_hops = 17),
            ("route.fanout", |c| c.fanout = 0),
            ("route.max_neighbours", |c| c.max_neighbours = 513),
            ("route.max_payload", |c| c.max_payload = (16 << 20) + 1),
            ("route.seen_capacity", |c| c.seen_capacity = 63),
            ("route.max_age", |c| c.max_age = Duration::ZERO),
            ("route.max_clock_skew", |c| {
                c.max_clock_skew = Duration::from_secs(601)
            }),
            ("route.peer_rate", |c| c.peer_rate = 0),
            ("route.origin_rate", |c| c.origin_rate = 0),
            ("route.max_tracked", |c| c.max_tracked = 15),
            ("route.max_queued_bytes", |c| c.max_queued_bytes = 1),
            ("route.penalty_threshold", |c| c.penalty_threshold = 0),
        ];
        for (field, tweak) in bad {
            let mut c = RouteConfig::default();
            tweak(&mut c);
            match c.validate() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, *field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
