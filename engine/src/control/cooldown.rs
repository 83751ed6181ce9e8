//! Refusing a misbehaving peer for a while
//! ([`crate::config::AdmissionSettings::misbehavior_cooldown`]).
//!
//! # Design
//! When an *established* connection is closed because its peer provably
//! broke the protocol ([`crate::connection::CloseCause::is_peer_misbehavior`]:
//! input that authenticated under the session keys, so only the peer could
//! have sent it, and that no honest peer sends whatever its limits, settings
//! or version), the peer's key starts a cooldown, as soon as the connection
//! closes (before its socket is gone, so no redial slips in between). Until
//! it ends, handshakes with that key are refused in both directions (the
//! authorizer says no), a handshake it began earlier is closed when it
//! completes, and the dialer does not dial it. So a peer that misbehaves
//! cannot reconnect at once and make this node pay a whole handshake per
//! attempt, and this node does not pay handshakes the peer would refuse
//! either. A refused attempt still costs one signature verification: the
//! handshake authorizes only verified keys (an unverified claim must not
//! learn whether a key is authorized, nor move the refusal metrics), and
//! anyone can claim an authorized key with a bad signature anyway; the
//! per-address `accept_rate_per_ip` bounds that cost.
//!
//! # Security
//! Errors an on-path attacker can cause without the peer's keys (a length
//! prefix over the limit, a frame that fails to decrypt, a reset) never
//! start a cooldown: otherwise injecting one bad segment would cut an honest
//! peer off for the whole cooldown instead of for one reconnect. Neither do
//! handshake failures (the claimed key is not proven), nor violations of our
//! own limits or of what this version knows (a message over our channel
//! limit, our reassembly budget, an unregistered channel, a record kind from
//! a newer version): honest peers with other settings, or mid-upgrade, do
//! that. The table is bounded ([`MAX_ENTRIES`]): expired entries are dropped
//! first, then the entry closest to its end. In open mode keys cost nothing,
//! so a flood of fresh misbehaving keys can evict a real offender early;
//! there the per-address limits (`accept_rate_per_ip`,
//! `max_inbound_per_ip`) are what binds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_crypto::PublicKey;

/// Most keys cooling down at once.
pub(crate) const MAX_ENTRIES: usize = 4096;

/// Keys refused until a deadline.
pub(crate) struct PeerCooldown {
    /// Zero disables it (nothing is tracked).
    duration: Duration,
    until: Mutex<HashMap<PublicKey, Instant>>,
}

impl PeerCooldown {
    pub(crate) fn new(duration: Duration) -> Self {
        Self {
            duration,
            until: Mutex::new(HashMap::new()),
        }
    }

    /// Starts (or restarts) `peer`'s cooldown at `now` if its connection
    /// closed for misbehavior; true if it did.
    pub(crate) fn on_close(&self, peer: &PublicKey, misbehaved: bool, now: Instant) -> bool {
        if self.duration.is_zero() || !misbehaved {
            return false;
        }
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if until.len() >= MAX_ENTRIES && !until.contains_key(peer) {
            until.retain(|_, t| *t > now);
            if until.len() >= MAX_ENTRIES {
                let soonest = until
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    until.remove(&k);
                }
            }
        }
        until.insert(peer.clone(), now + self.duration);
        true
    }

    /// Whether `peer` is cooling down at `now`.
    pub(crate) fn active(&self, peer: &PublicKey, now: Instant) -> bool {
        if self.duration.is_zero() {
            return false;
        }
        let until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.get(peer).is_some_and(|t| *t > now)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> PublicKey {
        use shoal_crypto::Signer;
        shoal_crypto::Ed25519Signer::insecure_from_seed(u64::from(i))
            .public_key()
            .clone()
    }

    #[test]
    fn misbehavior_refuses_the_key_until_the_cooldown_ends() {
        let cd = PeerCooldown::new(Duration::from_secs(10));
        let (a, b) = (key(1), key(2));
        let t0 = Instant::now();
        assert!(cd.on_close(&a, true, t0));
        assert!(cd.active(&a, t0 + Duration::from_secs(9)));
        assert!(!cd.active(&a, t0 + Duration::from_secs(10)), "ended");
        assert!(!cd.active(&b, t0), "other keys are not affected");
    }

    #[test]
    fn closes_that_are_not_misbehavior_start_nothing() {
        let cd = PeerCooldown::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!cd.on_close(&key(1), false, t0));
        assert!(!cd.active(&key(1), t0));
    }

    #[test]
    fn zero_disables_it() {
        let cd = PeerCooldown::new(Duration::ZERO);
        let t0 = Instant::now();
        assert!(!cd.on_close(&key(1), true, t0));
        assert!(!cd.active(&key(1), t0));
        assert_eq!(cd.len(), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let cd = PeerCooldown::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            cd.on_close(&key(i), true, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(cd.len(), MAX_ENTRIES);
        let last = key(MAX_ENTRIES as u32 + 9);
        assert!(cd.active(&last, t0 + Duration::from_secs(1)), "newest kept");
        assert!(
            !cd.active(&key(0), t0 + Duration::from_secs(1)),
            "soonest to end evicted"
        );
    }
}
