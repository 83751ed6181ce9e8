//! Waiting on the engine: the [`Wait`] future and how plain threads block on it.
//!
//! # Design
//! Every engine call that may have to wait (room in a peer's queue, a
//! response, a lookup, a ping) returns one [`Wait`]: a future that is Ready
//! at its first poll when nothing has to wait, that any executor can
//! `.await` (nothing in it needs a runtime: its wake-ups come from the
//! shards), and that a plain thread drives with [`Wait::blocking`]. There is
//! one implementation of each operation; the blocking form is that future
//! driven by a small parker, never a second hand-written variant.
//!
//! [`Wait::blocking`] polls on the calling thread with a waker that unparks
//! it. The waker is the thread's own, kept in a thread-local, so a call that
//! completes at its first poll allocates nothing and touches no reference
//! count. When a poll is Pending the thread first watches its wake flag for
//! up to the operation's spin (see below) and only then parks.
//!
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
//! (request p50 went from 9 µs to 4 ms on the 2-core bench machine). A send
//! waiting for room does not spin: room comes back as the peer drains,
//! not within microseconds.
//!
//! # Measured
//! `shoal bench --backend io-uring --rounds 3`, `--wait-spin-us 0` vs `100`,
//! interleaved, two runs each: latency p50 35/36 → 12/11 µs, request 27/25 →
//! 16/9 µs, rpc x32 +12 %, 64 KiB throughput +3/+16 %, fan-out −1/−5 % (its
//! three receiving threads compete with four shards on two cores).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

pin_project_lite::pin_project! {
    /// An engine operation that may have to wait: `.await` it on any
    /// executor (tokio, smol, `futures::executor::block_on`: it needs no
    /// runtime, its wake-ups come from the engine's threads), or call
    /// [`Wait::blocking`] on a plain thread. When nothing has to wait it is
    /// Ready at its first poll, without allocating.
    ///
    /// Dropping it before it completes cancels the operation where the
    /// operation says so (a send that was waiting for room sends nothing; a
    /// request's late response is dropped and counted).
    ///
    /// ```
    /// # fn main() -> Result<(), shoal_engine::Error> {
    /// use shoal_engine::{Config, Network, ChannelConfig};
    /// let (mut net, _oracle) = Network::new(Config::local(None))?;
    /// let (_tx, rx) = net.register(ChannelConfig::new(1))?;
    /// let node = net.start()?;
    /// node.shutdown(std::time::Duration::ZERO);
    /// // The network is down: the wait ends at once, on this thread.
    /// assert!(rx.recv().blocking().is_err());
    /// # Ok(()) }
    /// ```
    #[must_use = "a Wait does nothing unless it is awaited or blocked on"]
    pub struct Wait<F> {
        #[pin]
        fut: F,
        spin: Duration,
    }
}

impl<F: Future> Wait<F> {
    /// `fut`, spinning for `spin` before parking when blocked on.
    pub(crate) fn new(fut: F, spin: Duration) -> Self {
        Wait { fut, spin }
    }

    /// Runs the operation to completion on this thread: polls it, and while
    /// it is pending watches for its wake-up (for up to the network's
    /// `io.wait_spin` where the operation benefits) and then parks. Do not
    /// call it from inside an async task: it blocks that task's thread.
    pub fn blocking(self) -> F::Output {
        block_on(self.fut, self.spin)
    }
}

impl<F: Future> Future for Wait<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().fut.poll(cx)
    }
}

/// Wakes one thread: sets the flag, then unparks it (no syscall when it is
/// not parked).
struct Parker {
    thread: std::thread::Thread,
    woken: AtomicBool,
}

impl Wake for Parker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

impl Parker {
    fn for_this_thread() -> (Arc<Parker>, Waker) {
        let p = Arc::new(Parker {
            thread: std::thread::current(),
            woken: AtomicBool::new(false),
        });
        let w = Waker::from(p.clone());
        (p, w)
    }
}

thread_local! {
    /// This thread's parker and its waker, made once per thread; taken out
    /// while a `block_on` uses it, so a nested one makes its own.
    static PARKER: std::cell::Cell<Option<(Arc<Parker>, Waker)>> =
        std::cell::Cell::new(Some(Parker::for_this_thread()));
}

/// Drives `fut` to completion on this thread (see the module docs).
pub(crate) fn block_on<F: Future>(fut: F, spin: Duration) -> F::Output {
    let fut = std::pin::pin!(fut);
    let (p, w) = PARKER
        .try_with(|c| c.take())
        .ok()
        .flatten()
        .unwrap_or_else(Parker::for_this_thread);
    let out = drive(fut, &p, &w, spin);
    let _ = PARKER.try_with(|c| c.set(Some((p, w))));
    out
}

fn drive<F: Future>(mut fut: Pin<&mut F>, p: &Parker, w: &Waker, spin: Duration) -> F::Output {
    let mut cx = Context::from_waker(w);
    loop {
        p.woken.store(false, Ordering::Relaxed);
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        let woken = || p.woken.load(Ordering::Acquire).then_some(());
        if spin_then(spin, None, woken).is_none() {
            while !p.woken.load(Ordering::Acquire) {
                std::thread::park();
            }
        }
    }
}

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
