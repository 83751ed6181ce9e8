//! How long a peer that did not connect waits before its next dial.
//!
//! # Design
//! The first [`crate::config::DiscoverySettings::dial_quick_attempts`] tries to a peer back off
//! exponentially from `dial_backoff_min` (doubling, capped at
//! `dial_backoff_max`); every later try waits `dial_backoff_max`. An
//! authorized peer is never given up on: a validator that is down now may be
//! back at any moment, and costs one dial per `dial_backoff_max` meanwhile.
//! The wait is scaled by a jitter factor (the dialer draws 0.75–1.25) so
//! that a node that lost many peers at once does not redial them in step.
//! The count restarts when the peer connects.

use std::time::Duration;

/// The wait after `attempts` (≥ 1) consecutive tries that did not connect,
/// before jitter: `min · 2^(attempts-1)` (capped at `max`) for the first
/// `quick` attempts, then `max`.
pub(crate) fn backoff(attempts: u32, quick: u32, min: Duration, max: Duration) -> Duration {
    if attempts >= quick.max(1) {
        return max;
    }
    let doublings = attempts.saturating_sub(1).min(30);
    min.saturating_mul(1u32 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn quick_attempts_double_from_the_minimum_then_the_maximum_forever() {
        // recommended: 3 quick attempts, 500 ms .. 30 s.
        let (min, max) = (500 * MS, 30_000 * MS);
        let waits: Vec<Duration> = (1..=6).map(|a| backoff(a, 3, min, max)).collect();
        assert_eq!(
            waits,
            [500 * MS, 1000 * MS, max, max, max, max],
            "try 1 fails: wait min; try 2: 2 min; from the 3rd on: max"
        );
        assert_eq!(backoff(u32::MAX, 3, min, max), max);
    }

    #[test]
    fn doubling_is_capped_and_never_overflows() {
        let (min, max) = (500 * MS, 5000 * MS);
        let waits: Vec<Duration> = (1..=6).map(|a| backoff(a, 100, min, max)).collect();
        assert_eq!(waits, [500 * MS, 1000 * MS, 2000 * MS, 4000 * MS, max, max]);
        assert_eq!(backoff(90, 1_000_000, Duration::from_secs(3600), max), max);
    }

    #[test]
    fn one_quick_attempt_means_the_maximum_after_the_first_failure() {
        assert_eq!(backoff(1, 1, 50 * MS, 1000 * MS), 1000 * MS);
        assert_eq!(backoff(1, 0, 50 * MS, 1000 * MS), 1000 * MS, "0 acts as 1");
    }
}
