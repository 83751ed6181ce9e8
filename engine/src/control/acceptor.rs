//! Admission: which accepted sockets reach a data shard, and which verified
//! keys may finish a handshake.
//!
//! # Design
//! [`Acceptor::handle_accept`] decides on one accepted socket, with `now`
//! and the number of live inbound connections passed in, before the socket
//! costs anything else. The checks run broadest first, and a socket one of
//! them refuses uses up nothing of the later ones:
//! 1. `max_inbound`: the node's inbound slots (handshaking or established);
//! 2. `max_inbound_per_ip` ([`super::inbound_limit`]): how many connections
//!    one address *holds*;
//! 3. `accept_rate_per_ip` ([`super::accept_rate`]): how fast one address
//!    *renews* them.
//!
//! An admitted socket holds one count in the per-address table until the
//! data shard that owns it closes it, or until the caller drops it unplaced
//! (then the caller gives the count back).
//!
//! [`KeyAdmission`] is the handshake's half, run on the data shards for
//! every verified key: not our own key, authorized (any key in open mode),
//! and not cooling down after misbehaving ([`super::cooldown`]).
//! [`authorizer`] binds it to the node's oracle and cooldown table.
//!
//! Not provided: placing an admitted socket on a shard (the loop does that,
//! [`super::shards`]), and anything after the handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use shoal_crypto::PublicKey;

use super::accept_rate::{AcceptRate, Admission};
use super::cooldown::PeerCooldown;
use super::inbound_limit::InboundLimit;
use crate::config::Config;
use crate::connection::Authorizer;
use crate::shared::Shared;

/// What [`Acceptor::handle_accept`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Place it on a shard. `untracked`: the accept-rate table was full and
    /// the address went unchecked (metric `accept_rate_untracked`).
    Admit { untracked: bool },
    /// Drop it; the reason is the `refused{reason}` label.
    Refuse(&'static str),
}

/// The admission of accepted sockets. See the module docs.
pub(crate) struct Acceptor {
    max_inbound: usize,
    rate: AcceptRate,
}

impl Acceptor {
    /// The node's limits (`max_inbound`, `accept_rate_per_ip`,
    /// `accept_burst_per_ip`).
    pub(crate) fn from_config(cfg: &Config) -> Self {
        Self::new(
            cfg.limits.max_inbound,
            cfg.admission.accept_rate_per_ip,
            cfg.admission.accept_burst_per_ip,
        )
    }

    /// `max_inbound` live inbound connections in all; per address,
    /// `rate_per_ip` new ones a second after a burst of `burst_per_ip`.
    pub(crate) fn new(max_inbound: usize, rate_per_ip: u32, burst_per_ip: u32) -> Self {
        Self {
            max_inbound,
            rate: AcceptRate::new(rate_per_ip, burst_per_ip),
        }
    }

    /// One socket accepted from `from` at `now`, with `inbound` inbound
    /// connections alive. An admitted socket is counted in `per_ip`.
    pub(crate) fn handle_accept(
        &mut self,
        from: SocketAddr,
        inbound: usize,
        per_ip: &InboundLimit,
        now: Instant,
    ) -> Verdict {
        if inbound >= self.max_inbound {
            tracing::debug!(%from, "inbound limit reached; refusing");
            return Verdict::Refuse("max_inbound");
        }
        let ip = from.ip();
        if !per_ip.admit(ip) {
            tracing::debug!(%from, "per-address inbound limit reached; refusing");
            return Verdict::Refuse("max_inbound_per_ip");
        }
        // Last: a connection another limit refuses uses up none of the
        // address's allowance.
        match self.rate.admit(ip, now) {
            Admission::Admit => Verdict::Admit { untracked: false },
            Admission::Refuse => {
                tracing::debug!(%from, "per-address accept rate exceeded; refusing");
                per_ip.release(ip);
                Verdict::Refuse("accept_rate_per_ip")
            }
            Admission::Untracked => {
                tracing::debug!(%from, "accept rate table full; admitted unchecked");
                Verdict::Admit { untracked: true }
            }
        }
    }
}

/// Why the handshake refuses a verified key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyRefusal {
    /// Our own key, or (authorized mode) in no tracked set. Expected, not
    /// counted.
    Unknown,
    /// Cooling down after misbehaving (`refused{reason="cooldown"}`).
    CoolingDown,
}

/// The handshake's admission of verified keys. See the module docs.
pub(crate) struct KeyAdmission {
    me: PublicKey,
    open: bool,
}

impl KeyAdmission {
    pub(crate) fn new(me: PublicKey, open: bool) -> Self {
        Self { me, open }
    }

    /// Decides on `peer` at `now`; `authorized` is asked only when open
    /// mode does not admit every key.
    pub(crate) fn handle_key(
        &self,
        peer: &PublicKey,
        authorized: impl FnOnce(&PublicKey) -> bool,
        cooldown: &PeerCooldown,
        now: Instant,
    ) -> Result<(), KeyRefusal> {
        if *peer == self.me || !(self.open || authorized(peer)) {
            return Err(KeyRefusal::Unknown);
        }
        if cooldown.active(peer, now) {
            return Err(KeyRefusal::CoolingDown);
        }
        Ok(())
    }
}

/// The handshake's authorization check for this node: [`KeyAdmission`]
/// against the oracle and the cooldown table, counting cooldown refusals.
pub(crate) fn authorizer(shared: &Arc<Shared>) -> Authorizer {
    let keys = KeyAdmission::new(
        shared.config.identity.signer.public_key().clone(),
        shared.config.discovery.open,
    );
    let judge = shared.clone();
    Arc::new(move |pk: &PublicKey| {
        let oracle = &judge.oracle;
        match keys.handle_key(
            pk,
            |k| oracle.is_authorized(k),
            &judge.cooldown,
            Instant::now(),
        ) {
            Ok(()) => true,
            Err(KeyRefusal::Unknown) => false,
            Err(KeyRefusal::CoolingDown) => {
                judge.metrics.refuse("cooldown");
                false
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use shoal_crypto::{Ed25519Signer, Signer};

    use super::*;

    fn from(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), port)
    }

    fn key(seed: u64) -> PublicKey {
        Ed25519Signer::insecure_from_seed(seed).public_key().clone()
    }

    #[test]
    fn refuses_over_the_node_limit_the_address_limit_and_the_rate() {
        let t0 = Instant::now();
        // 10 slots, 2 per address, 1 a second after a burst of 3.
        let mut a = Acceptor::new(10, 1, 3);
        let per_ip = InboundLimit::new(2);
        assert_eq!(
            a.handle_accept(from(1, 1), 10, &per_ip, t0),
            Verdict::Refuse("max_inbound")
        );
        let admit = Verdict::Admit { untracked: false };
        assert_eq!(a.handle_accept(from(1, 1), 0, &per_ip, t0), admit);
        assert_eq!(a.handle_accept(from(1, 2), 1, &per_ip, t0), admit);
        assert_eq!(
            a.handle_accept(from(1, 3), 2, &per_ip, t0),
            Verdict::Refuse("max_inbound_per_ip"),
            "a third connection held by one address"
        );
        // Two close: the address renews them, then hits the rate (burst 3
        // spent by the first two and this one).
        per_ip.release(from(1, 1).ip());
        per_ip.release(from(1, 2).ip());
        assert_eq!(a.handle_accept(from(1, 4), 0, &per_ip, t0), admit);
        assert_eq!(
            a.handle_accept(from(1, 5), 1, &per_ip, t0),
            Verdict::Refuse("accept_rate_per_ip")
        );
        // The rate refusal gave its per-address count back: one held.
        assert!(per_ip.admit(from(1, 6).ip()));
        assert!(!per_ip.admit(from(1, 7).ip()));
        // One interval later the address may renew once more; another
        // address was never limited.
        per_ip.release(from(1, 6).ip());
        let later = t0 + Duration::from_secs(1);
        assert_eq!(a.handle_accept(from(1, 8), 1, &per_ip, later), admit);
        assert_eq!(a.handle_accept(from(2, 1), 2, &per_ip, t0), admit);
    }

    #[test]
    fn a_refusal_by_an_earlier_limit_costs_none_of_the_rate() {
        let t0 = Instant::now();
        let mut a = Acceptor::new(10, 1, 1);
        let per_ip = InboundLimit::new(1);
        assert_eq!(
            a.handle_accept(from(1, 1), 10, &per_ip, t0),
            Verdict::Refuse("max_inbound")
        );
        // Neither the node limit's refusal nor the per-address one spent
        // the address's single-connection burst.
        assert!(per_ip.admit(from(1, 2).ip()));
        assert_eq!(
            a.handle_accept(from(1, 3), 1, &per_ip, t0),
            Verdict::Refuse("max_inbound_per_ip")
        );
        per_ip.release(from(1, 2).ip());
        assert_eq!(
            a.handle_accept(from(1, 4), 0, &per_ip, t0),
            Verdict::Admit { untracked: false }
        );
    }

    #[test]
    fn keys_are_refused_when_unknown_ourselves_or_cooling_down() {
        let t0 = Instant::now();
        let (me, friend, stranger) = (key(1), key(2), key(3));
        let cooldown = PeerCooldown::new(Duration::from_secs(10));
        let authorized = |k: &PublicKey| *k == friend || *k == me;
        let keys = KeyAdmission::new(me.clone(), false);
        assert_eq!(keys.handle_key(&friend, authorized, &cooldown, t0), Ok(()));
        assert_eq!(
            keys.handle_key(&stranger, authorized, &cooldown, t0),
            Err(KeyRefusal::Unknown)
        );
        assert_eq!(
            keys.handle_key(&me, authorized, &cooldown, t0),
            Err(KeyRefusal::Unknown)
        );
        // The friend misbehaves: refused until the cooldown ends.
        assert!(cooldown.on_close(&friend, true, t0));
        assert_eq!(
            keys.handle_key(&friend, authorized, &cooldown, t0 + Duration::from_secs(9)),
            Err(KeyRefusal::CoolingDown)
        );
        assert_eq!(
            keys.handle_key(&friend, authorized, &cooldown, t0 + Duration::from_secs(10)),
            Ok(())
        );
        // Open mode admits any key but ours, and still honours cooldowns.
        let open = KeyAdmission::new(me.clone(), true);
        let nobody = |_: &PublicKey| false;
        assert_eq!(open.handle_key(&stranger, nobody, &cooldown, t0), Ok(()));
        assert_eq!(
            open.handle_key(&me, nobody, &cooldown, t0),
            Err(KeyRefusal::Unknown)
        );
        assert_eq!(
            open.handle_key(&friend, nobody, &cooldown, t0),
            Err(KeyRefusal::CoolingDown)
        );
    }
}
