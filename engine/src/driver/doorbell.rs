//! The io_uring shard's doorbell: an epoll set it sleeps in when nothing but
//! socket input can wake it.
//!
//! # Why
//! A socket's "data arrived" wake-up is a *sync* wake-up: the scheduler may
//! run the woken thread on the waker's core, where the data is cache-hot,
//! because the waker is about to sleep. A thread sleeping in `io_uring_enter`
//! is woken instead by io_uring's deferred task work, which carries no such
//! hint, so every message to a sleeping io_uring shard woke it on the other
//! (idle) core. Measured: sleeping handler-to-handler round trips took
//! 13–16 µs on io_uring against ~6 µs when epoll's shards shared a core, and
//! streaming receivers took ~4 frames per wake-up against ~35 on epoll.
//!
//! # Design
//! Every socket of the shard, and its wake socket, is registered here for
//! edge-triggered input *before* the ring touches it. io_uring keeps doing
//! all the I/O; this set is only a bell. When the shard sleeps with no send
//! or connect in flight and no socket closing (so every completion it waits
//! for comes from input on one of these sockets), it sleeps in `epoll_wait`
//! here, then runs the ring's deferred task work (and any completions an
//! overflowing CQ held back) with one non-blocking enter. Otherwise it
//! sleeps in the ring. There is no bell under `busy_poll` (nothing sleeps),
//! nor on a ring built without `DEFER_TASKRUN` and `TASKRUN_FLAG` (older
//! kernels), whose pending task work this shard could not see.
//!
//! # Costs
//! One more syscall per wake-up (`epoll_wait`, then `io_uring_enter`), one
//! epoll item per socket, and wake-ups for nothing from a connection whose
//! receive is cancelled (paused by backpressure with a full buffer): its
//! input still rings until its TCP window closes.
//!
//! # Correctness (no lost wake-up)
//! A socket's waiters are called newest first (the kernel queues
//! non-exclusive waiters at the head), and this set's waiter is queued before
//! any of the ring's, so by the time the bell wakes the shard, io_uring has
//! already queued the task work for the same event (and flagged it with
//! `IORING_SQ_TASKRUN`). Sleeps here are still capped at [`MAX_SLEEP`], and
//! every wake-up ends with an enter whenever task work or an overflow is
//! flagged, so a kernel that ordered waiters differently would cost latency,
//! not liveness.
//! 100,000 round trips each of `shard-rtt`, `latency` and `request` on
//! io_uring had no round trip over 3 ms (a missed bell would show as one
//! near [`MAX_SLEEP`]).
//!
//! # Measured (2-core VM, interleaved single rounds, doorbell vs ring)
//! - `shard-rtt` p50, 11 pairs: 19.0/18.5/18.9/10.2/11.0/21.6/23.6/14.6/
//!   10.0/8.4/9.5 µs vs 17.0/20.2/19.2/16.7/17.9/22.5/25.7/19.6/18.0/22.6/
//!   19.7 µs: with the bell io_uring reaches the shared-core mode (8–11 µs)
//!   that epoll reaches; without it, never.
//! - `request` p50, 5 pairs: 10.5/8.9/9.0/10.4/11.6 vs 8.9/8.7/10.1/9.0/
//!   23.9 µs (the ring's ~25 µs mode also showed in 3 of 3 whole-table runs,
//!   the bell's in none).
//! - `latency`, `scale` and throughput at 64 B, 1 KiB and 64 KiB: inside the
//!   spread.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

/// Longest single sleep in the bell (see the module doc).
pub(crate) const MAX_SLEEP: Duration = Duration::from_millis(50);

/// An epoll set watching a shard's sockets for input.
pub(crate) struct Doorbell {
    poll: Poll,
    events: Events,
}

impl Doorbell {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            poll: Poll::new()?,
            // Which socket rang does not matter (the ring knows): a few
            // slots are enough; the rest stay ready for the next call.
            events: Events::with_capacity(16),
        })
    }

    /// Watches `fd` for input until it is closed (closing the last
    /// descriptor of a socket removes it from the set).
    pub(crate) fn watch(&self, fd: RawFd) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
    }

    /// Stops watching `fd`, whose socket lives on (it moves to another
    /// shard).
    pub(crate) fn unwatch(&self, fd: RawFd) -> io::Result<()> {
        self.poll.registry().deregister(&mut SourceFd(&fd))
    }

    /// Sleeps until a watched socket has new input or `timeout` (capped at
    /// [`MAX_SLEEP`]) passes; true if the bell rang.
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        match self
            .poll
            .poll(&mut self.events, Some(timeout.min(MAX_SLEEP)))
        {
            Ok(()) => Ok(!self.events.is_empty()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn rings_once_per_new_input_on_a_watched_socket() {
        let mut bell = Doorbell::new().unwrap();
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let (_other_tx, other_rx) = UnixStream::pair().unwrap();
        bell.watch(rx.as_raw_fd()).unwrap();
        bell.watch(other_rx.as_raw_fd()).unwrap();
        assert!(!bell.wait(Duration::from_millis(1)).unwrap(), "silent");
        // Input that arrived before the sleep still rings it (the edge is
        // kept until collected), even with a long timeout.
        tx.write_all(b"x").unwrap();
        assert!(bell.wait(Duration::from_secs(60)).unwrap(), "rang");
        // Edge-triggered: the same unread byte does not ring again.
        assert!(!bell.wait(Duration::from_millis(1)).unwrap(), "once");
        tx.write_all(b"y").unwrap();
        assert!(bell.wait(Duration::from_secs(60)).unwrap(), "new input");
    }
}
