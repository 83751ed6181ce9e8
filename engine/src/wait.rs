//! Spin-then-park for application threads waiting on the engine.
//!
//! # Design
//! A thread blocked in a `*_blocking` call is woken by a shard: a futex wake
//! on the shard, a context switch on the waiter and, when its core had gone
//! idle, that core's wake-up (on a VM, a halted vCPU's). At one message or
//! one response at a time this dominates: a 64 B round trip between two
//! parked application threads took 36 µs p50 on the bench machine, 11–16 µs
//! when the waiters looked again for up to 200 µs first. So a waiter first
//! looks for up to [`crate::config::IoSettings::wait_spin`], yielding its core between
//! looks (never a bare spin: with more threads than cores a bare spin would
//! hold the core the shard needs), and only then parks.
//!
//! Bounded by the configured duration (≤ 10 ms, see `Config::validate`) and
//! by the caller's own deadline; 0 disables it, and so does `busy_poll`:
//! busy-polling shards never yield, and a waiter that yields its core to one
//! gets it back only when the scheduler's slice ends, milliseconds later
//! (request p50 went from 9 µs to 4 ms on the 2-core bench machine).
//!
//! # Measured
//! `shoal bench --backend io-uring --rounds 3`, `--wait-spin-us 0` vs `100`,
//! interleaved, two runs each: latency p50 35/36 → 12/11 µs, request 27/25 →
//! 16/9 µs, rpc x32 +12 %, 64 KiB throughput +3/+16 %, fan-out −1/−5 % (its
//! three receiving threads compete with four shards on two cores).

use std::time::{Duration, Instant};

/// Calls `look` until it returns `Some`, yielding the core in between, for
/// at most `spin` and never past `deadline`. `None`: park now.
pub(crate) fn spin_then<R>(
    spin: Duration,
    deadline: Option<Instant>,
    mut look: impl FnMut() -> Option<R>,
) -> Option<R> {
    if spin.is_zero() {
        return None;
    }
    let mut until = Instant::now() + spin;
    if let Some(d) = deadline {
        until = until.min(d);
    }
    loop {
        std::thread::yield_now();
        if let Some(r) = look() {
            return Some(r);
        }
        if Instant::now() >= until {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn zero_spin_never_looks() {
        let mut looks = 0;
        let r: Option<()> = spin_then(Duration::ZERO, None, || {
            looks += 1;
            Some(())
        });
        assert_eq!((r, looks), (None, 0));
    }

    #[test]
    fn a_result_that_appears_while_spinning_is_taken() {
        let flag = Arc::new(AtomicU32::new(0));
        let setter = {
            let flag = flag.clone();
            std::thread::spawn(move || flag.store(7, Ordering::Release))
        };
        setter.join().unwrap();
        let r = spin_then(Duration::from_secs(600), None, || {
            Some(flag.load(Ordering::Acquire)).filter(|v| *v != 0)
        });
        assert_eq!(r, Some(7));
    }

    #[test]
    fn the_callers_deadline_bounds_the_spin() {
        // A 600 s spin with a deadline already passed looks once and gives up.
        let mut looks = 0;
        let r: Option<()> = spin_then(Duration::from_secs(600), Some(Instant::now()), || {
            looks += 1;
            None
        });
        assert_eq!((r, looks), (None, 1));
    }
}
