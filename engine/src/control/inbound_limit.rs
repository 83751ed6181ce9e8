//! Per-address admission of inbound connections
//! ([`crate::config::AdmissionSettings::max_inbound_per_ip`]).
//!
//! # Design
//! The control shard admits each accepted socket against the number of live
//! inbound connections (handshaking or established) from the same IP
//! address, before the socket reaches a data shard; the data shard that
//! owned the connection releases the count when it closes. The map holds
//! only addresses with a live inbound connection, so it never has more
//! entries than [`crate::config::LimitSettings::max_inbound`] (admission happens after
//! that check). IPv4-mapped IPv6 addresses count as their IPv4 address, and
//! IPv6 addresses count per /64 (one host usually holds a whole /64, so
//! counting single IPv6 addresses would not limit it). The lock is taken once
//! per accept and once per inbound close, never on the message path.
//!
//! # Security
//! Without it one host could hold every inbound slot with connections that
//! never finish their handshake (each lives up to `handshake_timeout`), and
//! renew them as they expire, keeping every other peer out; with it one
//! address holds at most `max_inbound_per_ip` slots. It does not stop many
//! addresses (that is what `max_inbound` and the handshake's cost to the
//! dialer bound), and it does not rate-limit reconnects.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

/// What one "address" is for the limit: an IPv4 address (also when mapped
/// into IPv6), or an IPv6 /64.
pub(crate) fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
    }
}

/// Live inbound connections per remote address, against a limit.
pub(crate) struct InboundLimit {
    /// Most live inbound connections from one address; 0 = no limit (and
    /// nothing tracked).
    limit: usize,
    live: Mutex<HashMap<IpAddr, usize>>,
}

impl InboundLimit {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more connection from `ip` unless that address is at the
    /// limit (then false: refuse it).
    pub(crate) fn admit(&self, ip: IpAddr) -> bool {
        if self.limit == 0 {
            return true;
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        // With a limit of at least one, a refused address already has an
        // entry: refusals add none.
        let n = live.entry(source(ip)).or_insert(0);
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a count taken by [`InboundLimit::admit`].
    pub(crate) fn release(&self, ip: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let ip = source(ip);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = live.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                live.remove(&ip);
            }
        }
    }

    /// Addresses with a live inbound connection (tests, bounds checks).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn an_address_at_the_limit_is_refused_until_one_closes() {
        let limit = InboundLimit::new(2);
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert!(limit.admit(a));
        assert!(limit.admit(a));
        assert!(!limit.admit(a), "third from one address");
        assert!(limit.admit(b), "other addresses are not affected");
        limit.release(a);
        assert!(limit.admit(a), "a slot freed by a close");
        assert!(!limit.admit(a));
    }

    #[test]
    fn mapped_ipv6_counts_as_its_ipv4_address() {
        let limit = InboundLimit::new(1);
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert!(limit.admit(mapped));
        assert!(!limit.admit(v4));
        limit.release(v4);
        assert!(limit.admit(v4));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let limit = InboundLimit::new(2);
        let host = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i));
        assert!(limit.admit(host(1)));
        assert!(limit.admit(host(2)));
        assert!(!limit.admit(host(3)), "same /64, another address");
        let next_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert!(limit.admit(next_64));
        limit.release(host(9));
        assert!(
            limit.admit(host(4)),
            "a release anywhere in the /64 frees it"
        );
    }

    #[test]
    fn addresses_without_connections_are_forgotten() {
        let limit = InboundLimit::new(3);
        for i in 0..100u16 {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, i, 0, 0, 0, 1));
            assert!(limit.admit(ip));
            limit.release(ip);
        }
        assert_eq!(limit.addresses(), 0);
        // A stray release (never admitted) changes nothing.
        limit.release(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(limit.addresses(), 0);
    }

    #[test]
    fn zero_means_no_limit_and_no_tracking() {
        let limit = InboundLimit::new(0);
        for _ in 0..1000 {
            assert!(limit.admit(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        }
        assert_eq!(limit.addresses(), 0);
    }
}
