//! Per-address rate limit on accepted connections
//! ([`crate::config::AdmissionSettings::accept_rate_per_ip`], [`crate::config::AdmissionSettings::accept_burst_per_ip`]).
//!
//! # Design
//! The control shard asks [`AcceptRate::admit`] for every accepted socket,
//! with `now` passed in, before the socket costs anything else. Each address
//! (an IPv4 address, IPv4-mapped IPv6 counted as IPv4, or an IPv6 /64, as in
//! [`super::inbound_limit`]) has a GCRA bucket: `burst` connections at once,
//! then one more every `1 / rate` seconds. A connection refused at accept
//! (by this or by an earlier limit: the caller asks last) does not use up
//! the address's allowance, so a host that hammers gets exactly the rate.
//!
//! The table is bounded ([`TABLE_MAX`] addresses). An entry whose bucket has
//! refilled is indistinguishable from a fresh address, so when the table is
//! full those are dropped, in one sweep at most every [`SWEEP_EVERY`] (an
//! attacker holding the table full must not make every accept scan it). If
//! it is still full (that many addresses whose buckets have not refilled), a
//! new address is admitted without being tracked and counted in
//! `accept_rate_untracked`: failing closed would let a many-address attacker
//! lock every new honest address out, while `max_inbound` and
//! `handshake_timeout` still bound what untracked addresses can hold. Known
//! addresses stay limited meanwhile.
//!
//! # Security
//! The dialee pays for each handshake it answers (one signature check, one
//! x25519 key generation and agreement, one signature: ~0.1 ms of CPU), and
//! an authorized peer that is closed for misbehaving may reconnect at once.
//! `max_inbound_per_ip` bounds how many connections one address *holds*;
//! this bounds how fast it can *renew* them: with the defaults one address
//! costs at most 4 handshakes a second after a burst of 16. It does not help
//! against many addresses (that is `max_inbound`'s job).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::inbound_limit::source;

/// Most addresses tracked at once (about 64 B each).
pub(crate) const TABLE_MAX: usize = 4096;
/// Least time between two sweeps of a full table.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// What [`AcceptRate::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Within the address's allowance (or no limit configured).
    Admit,
    /// Over it: refuse the connection.
    Refuse,
    /// The table is full of recently active addresses: admitted unchecked.
    Untracked,
}

/// See the module docs.
pub(crate) struct AcceptRate {
    /// Time between connections once the burst is spent; `None`: no limit.
    interval: Option<Duration>,
    /// How far ahead of `now` an address's theoretical arrival time may run
    /// (`interval × (burst − 1)`).
    tolerance: Duration,
    /// Per address: when its bucket is full again (GCRA's theoretical
    /// arrival time). At or before `now` means "as if never seen".
    tat: HashMap<IpAddr, Instant>,
    max: usize,
    /// No sweep of a full table before this.
    next_sweep: Option<Instant>,
}

impl AcceptRate {
    /// `rate` connections per second per address after a burst of `burst`
    /// (at least 1); `rate` 0: no limit, nothing tracked.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self::with_table_max(rate, burst, TABLE_MAX)
    }

    fn with_table_max(rate: u32, burst: u32, max: usize) -> Self {
        let interval = (rate > 0).then(|| Duration::from_secs(1) / rate);
        let tolerance = interval.map_or(Duration::ZERO, |i| i * burst.max(1).saturating_sub(1));
        Self {
            interval,
            tolerance,
            tat: HashMap::new(),
            max,
            next_sweep: None,
        }
    }

    /// Decides on one connection from `ip` accepted at `now`.
    pub(crate) fn admit(&mut self, ip: IpAddr, now: Instant) -> Admission {
        let Some(interval) = self.interval else {
            return Admission::Admit;
        };
        let key = source(ip);
        let known = self.tat.contains_key(&key);
        if !known && self.tat.len() >= self.max {
            if self.next_sweep.is_some_and(|t| now < t) {
                return Admission::Untracked;
            }
            self.next_sweep = Some(now + SWEEP_EVERY);
            self.tat.retain(|_, tat| *tat > now);
            if self.tat.len() >= self.max {
                return Admission::Untracked;
            }
        }
        let tat = self.tat.get(&key).map_or(now, |&t| t.max(now));
        if tat.saturating_duration_since(now) > self.tolerance {
            return Admission::Refuse;
        }
        self.tat.insert(key, tat + interval);
        Admission::Admit
    }

    /// Addresses tracked (tests, bounds checks).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.tat.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // 4 a second (one per 250 ms) after a burst of 3.
        let mut r = AcceptRate::new(4, 3);
        let a = v4(1);
        for i in 0..3 {
            assert_eq!(r.admit(a, t0), Admission::Admit, "burst {i}");
        }
        assert_eq!(r.admit(a, t0), Admission::Refuse, "burst spent");
        assert_eq!(r.admit(a, t0 + ms(249)), Admission::Refuse);
        assert_eq!(
            r.admit(a, t0 + ms(250)),
            Admission::Admit,
            "one interval later"
        );
        assert_eq!(r.admit(a, t0 + ms(250)), Admission::Refuse);
        // Refusals used nothing up: hammering still gets the rate.
        for i in 1..=20 {
            assert_eq!(r.admit(a, t0 + ms(250 + i)), Admission::Refuse);
        }
        assert_eq!(r.admit(a, t0 + ms(500)), Admission::Admit);
        // Quiet for burst × interval: the whole burst is back.
        let later = t0 + ms(500 + 750);
        for i in 0..3 {
            assert_eq!(r.admit(a, later), Admission::Admit, "refilled burst {i}");
        }
        assert_eq!(r.admit(a, later), Admission::Refuse);
        // Other addresses have their own allowance.
        assert_eq!(r.admit(v4(2), later), Admission::Admit);
    }

    #[test]
    fn addresses_are_ipv4_or_ipv6_slash_64() {
        let t0 = Instant::now();
        let mut r = AcceptRate::new(1, 1);
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(r.admit(mapped, t0), Admission::Admit);
        assert_eq!(r.admit(v4(1), t0), Admission::Refuse, "mapped = its IPv4");
        let a: IpAddr = "2001:db8:1:2::1".parse::<Ipv6Addr>().unwrap().into();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse::<Ipv6Addr>().unwrap().into();
        let other_64: IpAddr = "2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap().into();
        assert_eq!(r.admit(a, t0), Admission::Admit);
        assert_eq!(r.admit(same_64, t0), Admission::Refuse);
        assert_eq!(r.admit(other_64, t0), Admission::Admit);
    }

    #[test]
    fn no_rate_means_no_limit_and_no_table() {
        let t0 = Instant::now();
        let mut r = AcceptRate::new(0, 16);
        for _ in 0..100 {
            assert_eq!(r.admit(v4(1), t0), Admission::Admit);
        }
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn the_table_is_bounded_and_fails_open_only_for_new_addresses() {
        let t0 = Instant::now();
        let mut r = AcceptRate::with_table_max(1, 2, 3);
        for i in 1..=3 {
            assert_eq!(r.admit(v4(i), t0), Admission::Admit);
        }
        // Full of recently active addresses: a new one is admitted untracked.
        assert_eq!(r.admit(v4(4), t0), Admission::Untracked);
        assert_eq!(r.admit(v4(4), t0), Admission::Untracked);
        assert_eq!(r.tracked(), 3);
        // A known address is still limited.
        assert_eq!(r.admit(v4(1), t0), Admission::Admit);
        assert_eq!(r.admit(v4(1), t0), Admission::Refuse);
        // Addresses 2 and 3 refill at 1 s; they make room at the first
        // sweep after that.
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(r.admit(v4(4), later), Admission::Admit);
        assert_eq!(r.admit(v4(5), later), Admission::Admit);
        assert_eq!(r.tracked(), 3, "1 (still draining), 4 and 5");
        assert_eq!(r.admit(v4(6), later), Admission::Untracked);
    }

    #[test]
    fn a_full_table_is_swept_at_most_once_per_period() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = AcceptRate::with_table_max(1, 1, 2);
        assert_eq!(r.admit(v4(1), t0), Admission::Admit);
        assert_eq!(r.admit(v4(2), t0 + ms(900)), Admission::Admit);
        // Full; the sweep at 950 ms frees nothing (both still draining).
        assert_eq!(r.admit(v4(3), t0 + ms(950)), Admission::Untracked);
        // Address 1 has refilled at 1 s, but the next sweep is not due
        // before 1050 ms.
        assert_eq!(r.admit(v4(3), t0 + ms(1000)), Admission::Untracked);
        assert_eq!(r.admit(v4(3), t0 + ms(1049)), Admission::Untracked);
        assert_eq!(r.admit(v4(3), t0 + ms(1050)), Admission::Admit);
        assert_eq!(r.tracked(), 2);
    }
}
