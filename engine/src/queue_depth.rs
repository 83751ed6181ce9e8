//! The application-visible depth of one connection's send queue, and the
//! permits that hold shares of it.
//!
//! # Design
//! The depth counts two things, messages and payload bytes, packed in one
//! `AtomicU64` (messages in the top 24 bits, bytes in the low 40), so `send`
//! reserves both with one atomic add and refuses when either limit is
//! reached: a full queue is an immediate, explicit result. Waiters are
//! notified as shares come back (`event-listener`: a notify with no waiter
//! is one atomic load), so `Sender::send_wait` (and its blocking drive) can wait for
//! room without spinning. When the connection ends, the depth is closed and
//! every waiter returns.
//!
//! A reservation returns a [`DepthPermit`], which borrows the depth and
//! gives its share back when dropped, so a send that fails before its
//! message is handed on cannot leak it. Handing the message to the shard
//! turns the permit into a [`Share`]: the plain (messages, bytes) count, with
//! no reference to the depth, that travels in the shard's command. On the
//! shard the connection that owns the depth takes the share into its queue
//! ([`crate::connection::Connection::send`]), and from there the queue gives
//! it back: the shares of one sealed frame's messages in one atomic
//! subtraction, the rest when messages are taken for another connection,
//! dropped, or the queue itself is dropped.
//!
//! Neither form touches a reference count: the depth's counter shares its
//! cache line with the `Arc` that holds it, and a count taken per message by
//! the sender and dropped by the shard made that line move between the two
//! threads on every message.
//! The price is one rule: a [`Share`] is given back by the code that holds
//! it, with [`QueueDepth::release`]. One that is dropped instead belongs to
//! a connection that ended before the shard saw it; that connection's depth
//! is closed and never reserved from again, so nothing waits for it. In
//! debug builds a share remembers its depth and [`QueueDepth::release`]
//! checks it.
//!
//! The byte limit admits one message into an empty queue whatever its size
//! (a message over the limit could never be sent otherwise), so the bytes a
//! peer's queue holds are at most `max_bytes` plus one message.
//!
//! Not provided: a way to give back part of a share without a permit, and
//! waiting for room without reserving it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use event_listener::{Event, Listener};

/// Bits of the packed depth that count bytes; the messages sit above them.
const BYTE_BITS: u32 = 40;
const BYTE_MASK: u64 = (1 << BYTE_BITS) - 1;
/// Largest message limit the packing allows (2^24 − 1).
pub const MAX_MESSAGES: usize = (1 << (64 - BYTE_BITS)) - 1;
/// Largest byte limit the packing allows, with room for one message of up to
/// as much again above it (and for reroutes, which may exceed the limits).
pub const MAX_BYTES: usize = 1 << (BYTE_BITS - 2);

/// One message's (or a batch's) share of the depth, packed.
fn packed(messages: usize, bytes: usize) -> u64 {
    ((messages as u64) << BYTE_BITS) | (bytes as u64 & BYTE_MASK)
}

fn unpack(v: u64) -> (usize, usize) {
    ((v >> BYTE_BITS) as usize, (v & BYTE_MASK) as usize)
}

/// See the module docs.
#[derive(Debug)]
pub struct QueueDepth {
    depth: AtomicU64,
    space: Event,
    closed: AtomicBool,
    max_messages: usize,
    max_bytes: usize,
    /// Waiters are woken when both counts are at or below these (half of
    /// each limit): hysteresis, so a blocked sender wakes once per
    /// half-queue of room instead of once per message.
    low_messages: usize,
    low_bytes: usize,
}

/// A waiting reservation found the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection's send queue is closed")]
pub struct QueueClosed;

/// A share of a [`QueueDepth`] (messages and their payload bytes) held by
/// the code that reserved it, given back when dropped unless handed on with
/// [`DepthPermit::into_share`]. See the module docs.
#[derive(Debug)]
#[must_use = "dropping a permit gives its share back at once"]
pub struct DepthPermit<'a> {
    depth: &'a QueueDepth,
    share: u64,
}

impl DepthPermit<'_> {
    /// Messages this permit holds.
    pub fn messages(&self) -> usize {
        unpack(self.share).0
    }

    /// Payload bytes this permit holds.
    pub fn bytes(&self) -> usize {
        unpack(self.share).1
    }

    /// The share, to travel with its message: from here on whoever holds it
    /// gives it back ([`QueueDepth::release`]).
    pub fn into_share(self) -> Share {
        let share = Share::new(self.depth, self.share);
        std::mem::forget(self);
        share
    }
}

impl Drop for DepthPermit<'_> {
    fn drop(&mut self) {
        if self.share != 0 {
            self.depth.release_packed(self.share);
        }
    }
}

/// A share of a [`QueueDepth`] on its way with its message(s): a plain
/// count, given back with [`QueueDepth::release`] (see the module docs for
/// the one case where dropping it is right).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a share goes back with `QueueDepth::release`"]
pub struct Share {
    packed: u64,
    /// The depth it was taken from, checked on release.
    #[cfg(debug_assertions)]
    origin: usize,
}

impl Share {
    fn new(depth: &QueueDepth, packed: u64) -> Self {
        let _ = depth;
        Self {
            packed,
            #[cfg(debug_assertions)]
            origin: depth as *const QueueDepth as usize,
        }
    }

    /// Messages this share counts.
    pub fn messages(&self) -> usize {
        unpack(self.packed).0
    }

    /// Payload bytes this share counts.
    pub fn bytes(&self) -> usize {
        unpack(self.packed).1
    }

    /// Moves `messages` messages and `bytes` bytes of this share (at most
    /// what it counts) into a new share of the same depth.
    pub fn split(&mut self, messages: usize, bytes: usize) -> Share {
        let (m, b) = unpack(self.packed);
        let taken = packed(messages.min(m), bytes.min(b));
        self.packed -= taken;
        Share {
            packed: taken,
            #[cfg(debug_assertions)]
            origin: self.origin,
        }
    }

    /// Takes `other`'s count into this share. Both must be shares of the
    /// same depth (checked in debug builds).
    pub fn merge(&mut self, other: Share) {
        #[cfg(debug_assertions)]
        debug_assert!(
            self.packed == 0 || other.packed == 0 || self.origin == other.origin,
            "merged shares of two queue depths"
        );
        #[cfg(debug_assertions)]
        if self.packed == 0 {
            self.origin = other.origin;
        }
        self.packed += other.packed;
    }

    /// An empty share of `depth`, to merge others into.
    pub fn empty(depth: &QueueDepth) -> Share {
        Share::new(depth, 0)
    }

    /// Counts nothing.
    pub fn is_empty(&self) -> bool {
        self.packed == 0
    }
}

impl QueueDepth {
    /// A queue of at most `max_messages` messages and `max_bytes` payload
    /// bytes (plus one message into an empty queue), each clamped to what
    /// the packing holds.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        let max_messages = max_messages.clamp(1, MAX_MESSAGES);
        let max_bytes = max_bytes.clamp(1, MAX_BYTES);
        Self {
            depth: AtomicU64::new(0),
            space: Event::new(),
            closed: AtomicBool::new(false),
            max_messages,
            max_bytes,
            low_messages: max_messages / 2,
            low_bytes: max_bytes / 2,
        }
    }

    /// Messages queued and not yet encoded.
    pub fn get(&self) -> usize {
        unpack(self.depth.load(Ordering::Acquire)).0
    }

    /// Payload bytes queued and not yet encoded.
    pub fn bytes(&self) -> usize {
        unpack(self.depth.load(Ordering::Acquire)).1
    }

    /// The message limit.
    pub fn max_messages(&self) -> usize {
        self.max_messages
    }

    /// Whether `n` more messages of `bytes` in all fit on top of `prev`.
    fn fits(&self, prev: u64, n: usize, bytes: usize) -> bool {
        let (m, b) = unpack(prev);
        m.saturating_add(n) <= self.max_messages
            && (b == 0 || b.saturating_add(bytes) <= self.max_bytes)
    }

    fn permit(&self, share: u64) -> DepthPermit<'_> {
        DepthPermit { depth: self, share }
    }

    /// Takes one message's share (`bytes` of payload) if it fits. One atomic
    /// add on the per-message path (a compare-exchange loop measured ~4 %
    /// slower at 64 B); a refused add is taken back, and the take-back wakes
    /// waiters itself if it is what brings the depth to the low-water mark,
    /// so a release that saw the momentary add cannot strand them.
    pub fn try_reserve(&self, bytes: usize) -> Option<DepthPermit<'_>> {
        let share = packed(1, bytes);
        let prev = self.depth.fetch_add(share, Ordering::AcqRel);
        if self.fits(prev, 1, bytes) {
            return Some(self.permit(share));
        }
        self.release_packed(share);
        None
    }

    /// Takes `n` messages of `bytes` in all if they fit (all or none). Never
    /// adds and takes back: a refused batch that briefly raised the depth
    /// could hide a release's crossing of the low-water mark (the waiters
    /// would miss their wake-up) and make concurrent sends see a full queue
    /// that is not.
    pub fn try_reserve_n(&self, n: usize, bytes: usize) -> Option<DepthPermit<'_>> {
        let share = packed(n, bytes);
        let mut cur = self.depth.load(Ordering::Acquire);
        loop {
            if !self.fits(cur, n, bytes) {
                return None;
            }
            match self.depth.compare_exchange_weak(
                cur,
                cur + share,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(self.permit(share)),
                Err(now) => cur = now,
            }
        }
    }

    /// Takes a message's share regardless of the limits: a message already
    /// accepted on another connection to the same peer moves here (bounded
    /// by that connection's own limits).
    pub fn force_reserve(&self, bytes: usize) -> Share {
        let share = packed(1, bytes);
        self.depth.fetch_add(share, Ordering::AcqRel);
        Share::new(self, share)
    }

    /// Gives a share taken from this depth back (see the module docs).
    pub fn release(&self, share: Share) {
        #[cfg(debug_assertions)]
        debug_assert!(
            share.packed == 0 || share.origin == self as *const QueueDepth as usize,
            "a share given back to another queue depth"
        );
        if share.packed != 0 {
            self.release_packed(share.packed);
        }
    }

    /// Gives a share back and wakes waiters at the low-water mark.
    fn release_packed(&self, share: u64) {
        let prev = self.depth.fetch_sub(share, Ordering::AcqRel);
        let (m, b) = unpack(prev.saturating_sub(share));
        if m <= self.low_messages && b <= self.low_bytes {
            self.space.notify(usize::MAX);
        }
    }

    /// The connection ended: waiters return [`QueueClosed`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.space.notify(usize::MAX);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// One attempt: reserved or closed, or the listener to wait on. The
    /// listener is registered before the second check so a release between
    /// the two checks is not missed.
    fn poll_reserve(
        &self,
        n: usize,
        bytes: usize,
    ) -> Result<Result<DepthPermit<'_>, QueueClosed>, event_listener::EventListener> {
        if self.is_closed() {
            return Ok(Err(QueueClosed));
        }
        let reserve = || {
            if n == 1 {
                self.try_reserve(bytes)
            } else {
                self.try_reserve_n(n, bytes)
            }
        };
        if let Some(p) = reserve() {
            return Ok(Ok(p));
        }
        let listener = self.space.listen();
        if self.is_closed() {
            return Ok(Err(QueueClosed));
        }
        if let Some(p) = reserve() {
            return Ok(Ok(p));
        }
        Err(listener)
    }

    /// Waits (async) until one message of `bytes` is reserved or the
    /// connection ends.
    pub async fn reserve(&self, bytes: usize) -> Result<DepthPermit<'_>, QueueClosed> {
        self.reserve_n(1, bytes).await
    }

    /// Waits (async) until `n` messages of `bytes` in all (`n` at most half
    /// the message limit, so the half-queue wake-up always leaves room) are
    /// reserved or the connection ends. A batch over half the byte limit
    /// waits for the queue to empty.
    pub async fn reserve_n(&self, n: usize, bytes: usize) -> Result<DepthPermit<'_>, QueueClosed> {
        loop {
            match self.poll_reserve(n, bytes) {
                Ok(done) => return done,
                Err(listener) => listener.await,
            }
        }
    }

    /// Blocking variant of [`QueueDepth::reserve`].
    pub fn reserve_blocking(&self, bytes: usize) -> Result<DepthPermit<'_>, QueueClosed> {
        self.reserve_blocking_n(1, bytes)
    }

    /// Blocking variant of [`QueueDepth::reserve_n`].
    pub fn reserve_blocking_n(
        &self,
        n: usize,
        bytes: usize,
    ) -> Result<DepthPermit<'_>, QueueClosed> {
        loop {
            match self.poll_reserve(n, bytes) {
                Ok(done) => return done,
                Err(listener) => listener.wait(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_batch_reservation_is_all_or_nothing() {
        let d = Arc::new(QueueDepth::new(4, 1 << 20));
        let three = d.try_reserve_n(3, 30).expect("3 fit");
        assert!(d.try_reserve_n(2, 20).is_none(), "3 + 2 > 4: none taken");
        assert_eq!((d.get(), d.bytes()), (3, 30));
        let fourth = d.try_reserve(10).expect("the 4th fits");
        assert!(d.try_reserve(10).is_none());
        drop((three, fourth));
        assert_eq!((d.get(), d.bytes()), (0, 0));
        let _all = d.try_reserve_n(4, 40).expect("an empty queue takes 4");
        assert!(d.try_reserve_n(5, 0).is_none(), "never more than the limit");
        assert_eq!(d.get(), 4);
    }

    /// The byte limit binds as well as the message limit: a queue of small
    /// message count can still refuse on bytes, an empty queue takes one
    /// message of any size, and releases give the bytes back.
    #[test]
    fn bytes_are_bounded_as_well_as_messages() {
        let d = Arc::new(QueueDepth::new(1000, 100));
        let a = d.try_reserve(60).expect("60 fit");
        let b = d.try_reserve(40).expect("100 fit");
        assert!(
            d.try_reserve(1).is_none(),
            "100 bytes queued: one more byte is over"
        );
        assert!(d.try_reserve_n(2, 2).is_none());
        assert_eq!((d.get(), d.bytes()), (2, 100));
        drop((a, b));
        let big = d
            .try_reserve(5000)
            .expect("an empty queue takes one message of any size");
        assert!(d.try_reserve(1).is_none(), "and nothing beside it");
        drop(big);
        let _batch = d
            .try_reserve_n(3, 300)
            .expect("an empty queue takes a batch too");
        assert_eq!((d.get(), d.bytes()), (3, 300));
    }

    /// A permit gives its share back when dropped, and not when handed on
    /// as a share; a share goes back once however it was split and merged
    /// on the way: the parts of a batch, a batch merged back, a share merged
    /// into another.
    #[test]
    fn shares_go_back_once_however_split_and_merged() {
        let d = QueueDepth::new(100, 1 << 20);
        drop(d.try_reserve(5).unwrap());
        assert_eq!((d.get(), d.bytes()), (0, 0), "a dropped permit");
        let mut batch = d.try_reserve_n(3, 30).unwrap().into_share();
        assert_eq!((d.get(), d.bytes()), (3, 30), "handed on, not given back");
        let one = batch.split(1, 10);
        assert_eq!((one.messages(), one.bytes()), (1, 10));
        assert_eq!((batch.messages(), batch.bytes()), (2, 20));
        assert_eq!((d.get(), d.bytes()), (3, 30), "splitting moves, not frees");
        d.release(one);
        assert_eq!((d.get(), d.bytes()), (2, 20));
        let over = batch.split(5, 500);
        assert_eq!(
            (over.messages(), over.bytes()),
            (2, 20),
            "at most its share"
        );
        assert!(batch.is_empty());
        d.release(batch);
        assert_eq!(
            (d.get(), d.bytes()),
            (2, 20),
            "an empty share frees nothing"
        );
        let mut all = Share::empty(&d);
        all.merge(over);
        all.merge(d.force_reserve(5));
        all.merge(d.try_reserve(7).unwrap().into_share());
        assert_eq!((d.get(), d.bytes()), (4, 32));
        assert_eq!((all.messages(), all.bytes()), (4, 32));
        d.release(all);
        assert_eq!((d.get(), d.bytes()), (0, 0));
    }

    /// Giving a share back to a depth it was not taken from is a bug,
    /// caught in debug builds.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "another queue depth")]
    fn a_share_goes_back_only_to_its_own_depth() {
        let (a, b) = (QueueDepth::new(4, 100), QueueDepth::new(4, 100));
        let share = a.force_reserve(1);
        b.release(share);
    }

    /// A sender waiting for bytes is woken once the queue drains below half
    /// its byte limit, and reserves.
    #[test]
    fn a_waiting_sender_wakes_when_bytes_drain() {
        let d = Arc::new(QueueDepth::new(1000, 100));
        let queued = d.try_reserve(90).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let d = d.clone();
            std::thread::spawn(move || tx.send(d.reserve_blocking(20).map(|p| p.into_share())))
        };
        drop(queued);
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the waiting sender was never woken");
        assert!(got.is_ok(), "reserved");
        waiter.join().unwrap().unwrap();
        assert_eq!((d.get(), d.bytes()), (1, 20));
    }

    #[test]
    fn a_refused_batch_never_shows_in_the_count() {
        use std::sync::atomic::AtomicBool;
        // A release compares the depth with the low-water mark to decide
        // whether to wake waiters, and sends compare it with the limit: a
        // refused batch must never appear in it, not even for an instant
        // (adding and taking back made it visible to both).
        use std::sync::atomic::AtomicU64;
        let d = Arc::new(QueueDepth::new(4, 1 << 20));
        let _three = d.try_reserve_n(3, 3).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let refuser = {
            let (d, stop, refused) = (d.clone(), stop.clone(), refused.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert!(d.try_reserve_n(1000, 1000).is_none());
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // Watch while the other thread is refused 200k times (bounded: at
        // most 50M looks).
        let mut max_seen = 0;
        for _ in 0..50_000_000u64 {
            max_seen = max_seen.max(d.get());
            if refused.load(Ordering::Relaxed) >= 200_000 {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        refuser.join().unwrap();
        assert!(refused.load(Ordering::Relaxed) > 0);
        assert_eq!(max_seen, 3);
    }
}
