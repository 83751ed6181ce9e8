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
//!
//! A shard running application tasks ([`crate::tasks`]) polls for at least
//! `wait_spin` instead: its tasks are the application threads that would
//! otherwise look for their response that long before parking
//! ([`crate::Wait::blocking`]), and the round trip they wait for should
//! not cost two wake-ups where a thread's costs none.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct IdleSpin {
    spin: Duration,
    /// The spin while the shard runs tasks.
    task_spin: Duration,
    until: Option<Instant>,
}

impl IdleSpin {
    /// `spin` (`io.idle_spin`), or `task_spin` (at least that, with
    /// `io.wait_spin`) while the shard has tasks.
    pub(crate) fn new(spin: Duration, task_spin: Duration) -> Self {
        Self {
            spin,
            task_spin: task_spin.max(spin),
            until: None,
        }
    }

    /// Called once per turn that would otherwise sleep; `active`: this turn
    /// did work; `tasks`: the shard runs tasks. True: poll again (the
    /// caller yields first) instead of sleeping.
    pub(crate) fn keep_polling(&mut self, active: bool, tasks: bool, now: Instant) -> bool {
        let spin = if tasks { self.task_spin } else { self.spin };
        if spin.is_zero() {
            return false;
        }
        if active {
            self.until = Some(now + spin);
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
        let mut s = IdleSpin::new(us(50), Duration::ZERO);
        assert!(
            !s.keep_polling(false, false, t0),
            "nothing happened yet: sleep"
        );
        assert!(s.keep_polling(true, false, t0));
        assert!(s.keep_polling(false, false, t0 + us(30)));
        // Work again at 40 µs extends the window to 90 µs.
        assert!(s.keep_polling(true, false, t0 + us(40)));
        assert!(s.keep_polling(false, false, t0 + us(80)));
        assert!(
            !s.keep_polling(false, false, t0 + us(90)),
            "quiet for 50 µs: sleep"
        );
        assert!(!s.keep_polling(false, false, t0 + us(91)));
    }

    #[test]
    fn zero_never_polls() {
        let mut s = IdleSpin::new(Duration::ZERO, Duration::ZERO);
        assert!(!s.keep_polling(true, true, Instant::now()));
    }

    #[test]
    fn a_shard_with_tasks_polls_for_the_task_spin() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        let mut s = IdleSpin::new(Duration::ZERO, us(100));
        assert!(!s.keep_polling(true, false, t0), "no tasks: sleeps at once");
        assert!(s.keep_polling(true, true, t0));
        assert!(s.keep_polling(false, true, t0 + us(99)));
        assert!(!s.keep_polling(false, true, t0 + us(100)));
    }
}
