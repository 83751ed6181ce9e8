//! Waking a sleeping shard without one syscall per message.
//!
//! # Design
//! A shard that is about to block sets `sleeping`, then re-checks its queue
//! (Dekker-style, with a SeqCst fence on both sides). A producer enqueues,
//! fences, and writes one byte to the shard's wake socket only if it flips
//! `sleeping` from true to false. So a burst of N messages to a sleeping
//! shard costs one wake-up syscall, and messages to an awake shard cost none.
//! The wake pipe is a non-blocking Unix socket pair (safe std API) that both
//! drivers can wait on: epoll registers it, io_uring reads it.

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
    /// after [`ShardWaker::prepare_sleep`]: a receiver that freed space
    /// while the shard was awake did not write a wake-up byte, so without
    /// this check the shard would sleep on it until its next timer.
    pub fn resume_pending(&self) -> bool {
        self.resume.load(Ordering::SeqCst)
    }

    /// Shard: take the resume request.
    pub fn take_resume(&self) -> bool {
        self.resume.swap(false, Ordering::AcqRel)
    }

    /// Shard: announce the intent to sleep. The caller must re-check its
    /// queue after this and call [`ShardWaker::cancel_sleep`] if non-empty.
    pub fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Shard: back to awake without sleeping.
    pub fn cancel_sleep(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Shard: after waking, clear the flag and drain the wake socket.
    ///
    /// It also yields once: the scheduler tends to run a woken shard on the
    /// CPU of the thread that woke it, preempting that producer in the middle
    /// of its burst; giving the CPU back lets the producer enqueue the rest
    /// while the flag says "awake", so the burst costs one wake-up.
    pub fn woke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        std::thread::yield_now();
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.rx).read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
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
        w.prepare_sleep();
        for _ in 0..1000 {
            w.wake();
        }
        assert_eq!(wakeups.get(), 1);
        // The shard drains the wake socket and goes back to sleep: the next
        // burst costs one more.
        w.woke();
        w.prepare_sleep();
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
        w.prepare_sleep();
        assert!(w.resume_pending());
        assert!(w.take_resume());
        assert!(!w.resume_pending());
    }
}
