//! A channel's inbound queue: bounded, and woken once per batch.
//!
//! # Design
//! Shards push each decoded message and wake the application once for all
//! the messages one read produced ([`Inbox::publish`]), not once per message:
//! with `async-channel` every `try_send` notified its receiver, and when the
//! application keeps up (its thread is parked most of the time) that was a
//! futex wake per message, the largest cost on the receiving shard for small
//! messages. The queue is a lock-free bounded `ConcurrentQueue`; waiting uses
//! `event-listener` (the same pieces `async-channel` is built from), so
//! [`Inbox::recv`] works on any async runtime and [`Inbox::recv_blocking`] on
//! a plain thread.
//!
//! Receivers take only what a shard has announced ([`Inbox::publish`], once
//! per batch): a receiver polling while the shard is still pushing (spinning
//! in `recv_blocking`, or draining with `try_recv`) would otherwise take each
//! message the moment it lands, and the shard and the receiver would pass
//! every slot's cache line, and the frame buffer's reference count, back and
//! forth once per message. At 64 B that doubled the receiving shard's share
//! in the queue push (9 % → 21 %) in the runs that came out slow. Taking a
//! whole announced batch moves those lines once per batch. Nothing is ever
//! lost by the guard: every push is followed by a publish.
//!
//! The price: the first message of a read waits until the shard decoded the
//! whole read (~150 ns a message; a full 64 KiB read of 64 B messages is
//! ~130 µs, and only a saturated connection has full reads). Announcing
//! every 128 messages within a read was measured too: epoll 64 B then fell
//! back to 3.55–4.97 M msg/s (bimodal) from 4.86–5.04 M, so shards announce
//! once per read.
//!
//! A push to a full inbox fails and hands the item back: the shard pauses
//! reading that connection (backpressure), it never drops the message.
//! After [`Inbox::close`], receivers drain what is queued and then see
//! `None`.

use std::sync::atomic::{AtomicU64, Ordering};

use concurrent_queue::{ConcurrentQueue, PopError, PushError};
use std::future::Future;

use event_listener::{Event, EventListener, Listener};

/// Why a push failed; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected<T> {
    Full(T),
    Closed(T),
}

/// See the module docs.
pub struct Inbox<T> {
    queue: ConcurrentQueue<T>,
    /// Items announced by [`Inbox::publish`] (written once per batch).
    published: AtomicU64,
    /// Items taken by receivers (touched only by receivers).
    taken: AtomicU64,
    /// Receivers wait on it.
    ready: Event,
}

impl<T> Inbox<T> {
    /// An inbox holding at most `capacity` (≥ 1) items.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: ConcurrentQueue::bounded(capacity.max(1)),
            published: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            ready: Event::new(),
        }
    }

    /// How many items it holds at most.
    pub fn capacity(&self) -> usize {
        self.queue.capacity().unwrap_or(1)
    }

    /// Queues `item` without waking anyone or making it visible; call
    /// [`Inbox::publish`] after the batch.
    pub fn push(&self, item: T) -> Result<(), Rejected<T>> {
        self.queue.push(item).map_err(|e| match e {
            PushError::Full(t) => Rejected::Full(t),
            PushError::Closed(t) => Rejected::Closed(t),
        })
    }

    /// Announces the last `n` pushes and wakes waiting receivers (cheap
    /// when none waits).
    pub fn publish(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Release);
        self.ready.notify_additional(usize::MAX);
    }

    /// No more pushes; receivers drain the queue, then get `None`.
    pub fn close(&self) {
        self.queue.close();
        self.ready.notify_additional(usize::MAX);
    }

    /// Items receivers can take now: announced and not taken (everything
    /// queued once closed).
    pub fn len(&self) -> usize {
        let queued = self.queue.len();
        if self.queue.is_closed() {
            return queued;
        }
        let announced = self
            .published
            .load(Ordering::Acquire)
            .saturating_sub(self.taken.load(Ordering::Relaxed));
        queued.min(usize::try_from(announced).unwrap_or(usize::MAX))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An announced item if one is queued; `Err(true)` once closed and
    /// drained (after a close everything queued counts as announced).
    pub fn try_recv(&self) -> Result<T, bool> {
        let taken = self.taken.load(Ordering::Relaxed);
        if taken >= self.published.load(Ordering::Acquire) && !self.queue.is_closed() {
            return Err(false);
        }
        match self.queue.pop() {
            Ok(t) => {
                self.taken.fetch_add(1, Ordering::Relaxed);
                Ok(t)
            }
            Err(PopError::Empty) => Err(false),
            Err(PopError::Closed) => Err(true),
        }
    }

    /// `Some(next)` when the answer is known now: an item, or `None` for
    /// closed and drained; `None` when the caller must wait.
    fn settled(&self) -> Option<Option<T>> {
        match self.try_recv() {
            Ok(t) => Some(Some(t)),
            Err(true) => Some(None),
            Err(false) => None,
        }
    }

    /// The next item, or `None` once closed and drained.
    pub async fn recv(&self) -> Option<T> {
        let mut listener = None;
        std::future::poll_fn(|cx| self.poll_recv(cx, &mut listener)).await
    }

    /// One poll of a receive that keeps its registration in `listener`
    /// between polls (a [`futures_core::Stream`] keeps it in itself):
    /// `Ready(None)` once closed and drained. Registers, then looks again: a
    /// push between the two is seen now, one after the registration notifies
    /// the listener.
    pub fn poll_recv(
        &self,
        cx: &mut std::task::Context<'_>,
        listener: &mut Option<EventListener>,
    ) -> std::task::Poll<Option<T>> {
        use std::task::Poll;
        loop {
            if let Some(next) = self.settled() {
                *listener = None;
                return Poll::Ready(next);
            }
            match listener {
                None => *listener = Some(self.ready.listen()),
                Some(l) => match std::pin::Pin::new(l).poll(cx) {
                    Poll::Ready(()) => *listener = None,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }

    /// Blocking variant of [`Inbox::recv`]; looks for up to `spin` before
    /// parking (see [`crate::wait`]).
    pub fn recv_blocking(&self, spin: std::time::Duration) -> Option<T> {
        loop {
            if let Some(next) = self.settled() {
                return next;
            }
            if let Some(next) = crate::wait::spin_then(spin, None, || self.settled()) {
                return next;
            }
            let listener = self.ready.listen();
            if let Some(next) = self.settled() {
                return next;
            }
            listener.wait();
        }
    }

    /// [`Inbox::recv_blocking`] that gives up at `deadline`: `Err(true)`
    /// once closed and drained, `Err(false)` when the deadline passed.
    pub fn recv_deadline(
        &self,
        deadline: std::time::Instant,
        spin: std::time::Duration,
    ) -> Result<T, bool> {
        let settled = |q: &Self| match q.try_recv() {
            Err(false) => None,
            settled => Some(settled),
        };
        loop {
            if let Some(r) = settled(self) {
                return r;
            }
            if let Some(r) = crate::wait::spin_then(spin, Some(deadline), || settled(self)) {
                return r;
            }
            let listener = self.ready.listen();
            if let Some(r) = settled(self) {
                return r;
            }
            if listener.wait_deadline(deadline).is_none() {
                // Timed out; one last look so a push racing the deadline
                // is not reported as a timeout.
                return self.try_recv();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn bounded_fifo_that_hands_back_what_it_cannot_take() {
        let q = Inbox::new(2);
        assert_eq!(q.push(1), Ok(()));
        assert_eq!(q.push(2), Ok(()));
        assert_eq!(q.push(3), Err(Rejected::Full(3)));
        // Pushed, not announced: not visible yet.
        assert_eq!(q.try_recv(), Err(false));
        q.publish(2);
        assert_eq!(q.try_recv(), Ok(1));
        assert_eq!(q.push(3), Ok(()));
        q.close();
        assert_eq!(q.push(4), Err(Rejected::Closed(4)));
        // Closed: what is queued still comes out, then the end.
        assert_eq!(q.recv_blocking(std::time::Duration::ZERO), Some(2));
        assert_eq!(q.recv_blocking(std::time::Duration::ZERO), Some(3));
        assert_eq!(q.recv_blocking(std::time::Duration::ZERO), None);
    }

    #[test]
    fn receivers_take_what_was_announced_and_everything_once_closed() {
        let q = Inbox::new(8);
        for i in 0..5 {
            q.push(i).unwrap();
        }
        q.publish(3);
        assert_eq!(
            (q.try_recv(), q.try_recv(), q.try_recv()),
            (Ok(0), Ok(1), Ok(2))
        );
        assert_eq!(q.try_recv(), Err(false), "3 and 4 are not announced yet");
        assert!(q.is_empty(), "nothing a receiver can take");
        q.close();
        assert_eq!(q.len(), 2);
        assert_eq!((q.try_recv(), q.try_recv()), (Ok(3), Ok(4)));
        assert_eq!(q.try_recv(), Err(true));
    }

    #[test]
    fn a_parked_receiver_is_woken_by_one_notify_for_a_batch() {
        let q = Arc::new(Inbox::new(1024));
        let rx = {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(v) = q.recv_blocking(std::time::Duration::ZERO) {
                    got.push(v);
                }
                got
            })
        };
        for batch in 0..10 {
            for i in 0..100 {
                q.push(batch * 100 + i).unwrap();
            }
            q.publish(100);
        }
        q.close();
        assert_eq!(rx.join().unwrap(), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_deadline_receive_tells_timeout_from_close() {
        use std::time::{Duration, Instant};
        let q = Arc::new(Inbox::new(4));
        // Nothing queued: the deadline passes.
        let soon = Instant::now() + Duration::from_millis(5);
        assert_eq!(q.recv_deadline(soon, Duration::ZERO), Err(false));
        // A push from another thread wakes the waiter before a far deadline.
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || {
                q.push(7).unwrap();
                q.publish(1);
            })
        };
        let far = Instant::now() + Duration::from_secs(600);
        assert_eq!(q.recv_deadline(far, Duration::from_micros(50)), Ok(7));
        pusher.join().unwrap();
        // Closed with an item queued: the item, then the close.
        q.push(8).unwrap();
        q.close();
        assert_eq!(q.recv_deadline(far, Duration::from_micros(50)), Ok(8));
        assert_eq!(q.recv_deadline(far, Duration::from_micros(50)), Err(true));
    }

    #[test]
    fn async_receivers_see_pushes_and_the_close() {
        let q = Arc::new(Inbox::new(8));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..100u32 {
                    let mut item = i;
                    loop {
                        match q.push(item) {
                            Ok(()) => break,
                            Err(Rejected::Full(t)) => {
                                item = t;
                                q.publish(0);
                                std::thread::yield_now();
                            }
                            Err(Rejected::Closed(_)) => unreachable!(),
                        }
                    }
                    q.publish(1);
                }
                q.close();
            })
        };
        let got = rt.block_on(async {
            let mut got = Vec::new();
            while let Some(v) = q.recv().await {
                got.push(v);
            }
            got
        });
        producer.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }
}
