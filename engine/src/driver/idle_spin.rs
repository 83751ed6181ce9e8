//! Keeps a shard polling for a moment after it did work
//! ([`crate::config::IoSettings::idle_spin`]).
//!
//! # Design
//! A shard that sleeps in the kernel as soon as it runs out of work pays a
//! wake-up for the next thing that arrives: a futex or eventfd wake, the
//! scheduler, and on a VM the halted vCPU's own wake-up. In a request/
//! response exchange the next thing arrives microseconds later (the
//! response to what was just sent, or the application's next command).
//! So after a turn that did work the driver polls again, yielding its core
//! in between, for up to `idle_spin`; only a quiet period that long puts it
//! to sleep. Plain state driven by the driver with `now` passed in.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct IdleSpin {
    spin: Duration,
    until: Option<Instant>,
}

impl IdleSpin {
    pub(crate) fn new(spin: Duration) -> Self {
        Self { spin, until: None }
    }

    /// Called once per turn that would otherwise sleep; `active`: this turn
    /// did work. True: poll again (the caller yields first) instead of
    /// sleeping.
    pub(crate) fn keep_polling(&mut self, active: bool, now: Instant) -> bool {
        if self.spin.is_zero() {
            return false;
        }
        if active {
            self.until = Some(now + self.spin);
        }
        match self.until {
            Some(until) if now < until => true,
            _ => {
                self.until = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_for_the_spin_after_the_last_active_turn_then_sleeps() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        let mut s = IdleSpin::new(us(50));
        assert!(!s.keep_polling(false, t0), "nothing happened yet: sleep");
        assert!(s.keep_polling(true, t0));
        assert!(s.keep_polling(false, t0 + us(30)));
        // Work again at 40 µs extends the window to 90 µs.
        assert!(s.keep_polling(true, t0 + us(40)));
        assert!(s.keep_polling(false, t0 + us(80)));
        assert!(
            !s.keep_polling(false, t0 + us(90)),
            "quiet for 50 µs: sleep"
        );
        assert!(!s.keep_polling(false, t0 + us(91)));
    }

    #[test]
    fn zero_never_polls() {
        let mut s = IdleSpin::new(Duration::ZERO);
        assert!(!s.keep_polling(true, Instant::now()));
    }
}
