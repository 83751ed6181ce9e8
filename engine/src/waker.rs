//! Waking a sleeping shard without one syscall per message.
//!
//! # Design
//! The sleep handshake, written once ([`ShardWaker::try_sleep`]) and used by
//! every loop that sleeps on a waker (both shard drivers and the control
//! shard): a thread about to block sets `sleeping`, then re-checks its queue
//! (Dekker-style, with a SeqCst fence on both sides) and sleeps only if that
//! found nothing. A producer enqueues, fences, and writes one byte to the
//! wake socket only if it flips `sleeping` from true to false. So a burst of
//! N messages to a sleeping shard costs one wake-up syscall, and messages to
//! an awake shard cost none. The wake pipe is a non-blocking Unix socket pair
//! (safe std API) that every driver can wait on: epoll registers it, io_uring
//! polls it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;

/// One shard's wake-up line.
pub struct ShardWaker {
    tx: UnixStream,
    rx: UnixStream,
    sleeping: AtomicBool,
    /// Set when a receiver freed space; the shard retries paused connections.
    resume: AtomicBool,
    wakeups: Counter,
}

impl ShardWaker {
    pub fn new(wakeups: Counter) -> std::io::Result<Self> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Self {
            tx,
            rx,
            sleeping: AtomicBool::new(false),
            resume: AtomicBool::new(false),
            wakeups,
        })
    }

    /// The socket the shard waits on.
    pub fn rx(&self) -> &UnixStream {
        &self.rx
    }

    /// Called by producers after enqueueing.
    pub fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.wakeups.inc();
            // A full socket buffer means a wake-up is already pending.
            let _ = (&self.tx).write(&[1]);
        }
    }

    /// Asks the shard to retry connections paused on a full receiver.
    pub fn request_resume(&self) {
        self.resume.store(true, Ordering::Release);
        self.wake();
    }

    /// Shard: whether a resume request is waiting (not consumed). Checked
    /// by [`ShardWaker::try_sleep`]: a receiver that freed space while the
    /// shard was awake did not write a wake-up byte, so without this check
    /// the shard would sleep on it until its next timer.
    pub fn resume_pending(&self) -> bool {
        self.resume.load(Ordering::SeqCst)
    }

    /// Shard: take the resume request.
    pub fn take_resume(&self) -> bool {
        self.resume.swap(false, Ordering::AcqRel)
    }

    /// Shard: the sleep handshake. Announces the intent to sleep, then asks
    /// `work_arrived` (the caller's re-check of its queue) and looks for a
    /// resume request: if either found work, it returns `None` and the
    /// caller must not sleep; otherwise the caller sleeps (in its wait on
    /// [`ShardWaker::rx`]) while holding the returned [`Asleep`], and drops
    /// it once awake. A producer that enqueued before the announcement is
    /// seen by the re-check; one that enqueues after it sees the flag and
    /// writes the wake-up byte.
    #[inline]
    pub fn try_sleep(&self, work_arrived: impl FnOnce() -> bool) -> Option<Asleep<'_>> {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if work_arrived() || self.resume_pending() {
            self.awake();
            return None;
        }
        Some(Asleep(self))
    }

    fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Shard: after waking, clear the flag and drain the wake socket.
    ///
    /// It also yields once: the scheduler tends to run a woken shard on the
    /// CPU of the thread that woke it, preempting that producer in the middle
    /// of its burst; giving the CPU back lets the producer enqueue the rest
    /// while the flag says "awake", so the burst costs one wake-up.
    pub fn woke(&self) {
        self.awake();
        std::thread::yield_now();
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.rx).read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
    }
}

/// A sleep announced by [`ShardWaker::try_sleep`]: producers that see it
/// write a wake-up byte. Dropping it marks the thread awake.
#[must_use = "the sleep ends when this is dropped"]
pub struct Asleep<'a>(&'a ShardWaker);

impl Drop for Asleep<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.awake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_to_a_sleeping_shard_costs_one_wake_up() {
        let wakeups = Counter::default();
        let w = ShardWaker::new(wakeups.clone()).unwrap();
        // Awake shard: producers never make a syscall.
        for _ in 0..1000 {
            w.wake();
        }
        assert_eq!(wakeups.get(), 0);
        // Sleeping shard: the first message of a burst wakes it, the rest
        // see the flag already cleared.
        let asleep = w.try_sleep(|| false).expect("nothing pending");
        for _ in 0..1000 {
            w.wake();
        }
        assert_eq!(wakeups.get(), 1);
        // The shard drains the wake socket and goes back to sleep: the next
        // burst costs one more.
        w.woke();
        drop(asleep);
        let _asleep = w.try_sleep(|| false).expect("nothing pending");
        for _ in 0..1000 {
            w.wake();
        }
        assert_eq!(wakeups.get(), 2);
    }

    #[test]
    fn a_resume_requested_while_awake_is_seen_before_sleeping() {
        let wakeups = Counter::default();
        let w = ShardWaker::new(wakeups.clone()).unwrap();
        // The shard is awake: no wake-up byte is written...
        w.request_resume();
        assert_eq!(wakeups.get(), 0);
        // ...so the shard must see the request when it gets ready to sleep.
        assert!(w.try_sleep(|| false).is_none(), "a resume is work");
        assert!(w.resume_pending());
        assert!(w.take_resume());
        assert!(!w.resume_pending());
    }

    #[test]
    fn work_found_by_the_re_check_cancels_the_sleep() {
        let wakeups = Counter::default();
        let w = ShardWaker::new(wakeups.clone()).unwrap();
        assert!(w.try_sleep(|| true).is_none());
        // Not sleeping: producers make no syscall.
        w.wake();
        assert_eq!(wakeups.get(), 0);
        // After a sleep ends, neither.
        drop(w.try_sleep(|| false));
        w.wake();
        assert_eq!(wakeups.get(), 0);
    }
}
