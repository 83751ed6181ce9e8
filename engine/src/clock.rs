//! Time for the sans-IO core.
//!
//! The protocol state machines never read a clock: callers pass `now:
//! Instant`. Handshake timestamps need wall-clock milliseconds, so a [`Clock`]
//! anchors one `Instant` to one Unix time and translates. Tests build a clock
//! at any anchor and step `now` by hand, which makes every timer
//! deterministic.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Maps monotonic instants to Unix time from one anchor.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    anchor: Instant,
    anchor_unix_us: u64,
}

impl Clock {
    /// Anchors `anchor` at `unix_ms`.
    pub fn new(anchor: Instant, unix_ms: u64) -> Self {
        Self::from_micros(anchor, unix_ms.saturating_mul(1000))
    }

    /// Anchors `anchor` at `unix_us` microseconds.
    pub fn from_micros(anchor: Instant, unix_us: u64) -> Self {
        Self {
            anchor,
            anchor_unix_us: unix_us,
        }
    }

    /// Anchors now at the system wall clock.
    pub fn system() -> Self {
        Self::from_micros(Instant::now(), system_micros())
    }

    /// Unix milliseconds at `now` (saturating before the anchor).
    pub fn unix_ms(&self, now: Instant) -> u64 {
        let delta = now.saturating_duration_since(self.anchor).as_millis() as u64;
        (self.anchor_unix_us / 1000).saturating_add(delta)
    }

    /// Unix microseconds at `now` (saturating before the anchor): origin
    /// clocks of gossip and routed messages.
    pub fn unix_micros(&self, now: Instant) -> u64 {
        let delta = now.saturating_duration_since(self.anchor).as_micros();
        self.anchor_unix_us
            .saturating_add(u64::try_from(delta).unwrap_or(u64::MAX))
    }
}

/// The system wall clock in Unix microseconds (0 before 1970).
pub fn system_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
