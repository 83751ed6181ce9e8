//! Refusing a misbehaving peer for a while
//! ([`crate::Config::misbehavior_cooldown`]).
//!
//! # Design
//! When an *established* connection is closed because its peer sent
//! something only that peer could have sent (a record that decrypted and
//! authenticated but broke the protocol: a bad record, a chunk that breaks
//! the reassembly rules or budget, a message over the channel's limit, a
//! refused decompression, a protocol violation), the peer's key starts a
//! cooldown. Until it ends, handshakes with that key are refused in both
//! directions (the authorizer says no), so a peer that misbehaves cannot
//! reconnect at once and make this node pay a handshake per attempt.
//!
//! # Security
//! Errors an on-path attacker can cause without the peer's keys (a length
//! prefix over the limit, a frame that fails to decrypt, a reset) never
//! start a cooldown: otherwise injecting one bad segment would cut an honest
//! peer off for the whole cooldown instead of for one reconnect. A
//! handshake failure never starts one either (the claimed key is not
//! proven). The table is bounded ([`MAX_ENTRIES`]): expired entries are
//! dropped first, then the entry closest to its end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_crypto::PublicKey;

/// Most keys cooling down at once.
pub(crate) const MAX_ENTRIES: usize = 4096;

/// Close labels ([`crate::connection::CloseCause::label`]) that only an
/// authenticated peer can cause, and that start a cooldown.
pub(crate) const MISBEHAVIOR: &[&str] = &[
    "bad_record",
    "chunk_budget",
    "message_too_large",
    "bad_chunk",
    "decompress_refused",
    "protocol_violation",
];

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

    /// Starts (or restarts) `peer`'s cooldown at `now` if `label` is
    /// misbehavior; true if it did.
    pub(crate) fn on_close(&self, peer: &PublicKey, label: &str, now: Instant) -> bool {
        if self.duration.is_zero() || !MISBEHAVIOR.contains(&label) {
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
        assert!(cd.on_close(&a, "bad_chunk", t0));
        assert!(cd.active(&a, t0 + Duration::from_secs(9)));
        assert!(!cd.active(&a, t0 + Duration::from_secs(10)), "ended");
        assert!(!cd.active(&b, t0), "other keys are not affected");
    }

    #[test]
    fn errors_an_attacker_can_inject_start_nothing() {
        let cd = PeerCooldown::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for label in [
            "frame_too_large",
            "bad_frame",
            "decrypt_failed",
            "io_error",
            "idle_timeout",
            "remote_close",
            "replaced",
            "handshake_timeout",
            "bad_signature",
        ] {
            assert!(!cd.on_close(&key(1), label, t0), "{label}");
        }
        assert!(!cd.active(&key(1), t0));
    }

    #[test]
    fn zero_disables_it() {
        let cd = PeerCooldown::new(Duration::ZERO);
        let t0 = Instant::now();
        assert!(!cd.on_close(&key(1), "protocol_violation", t0));
        assert!(!cd.active(&key(1), t0));
        assert_eq!(cd.len(), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let cd = PeerCooldown::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            cd.on_close(
                &key(i),
                "bad_record",
                t0 + Duration::from_millis(u64::from(i)),
            );
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
