//! What the scenarios send and how they count what arrives.
//!
//! # Design
//! Payloads carry a recognizable pattern ([`payload`]: `0x5A` filler, a
//! `0xA5` last byte; [`numbered`]: a sequence number first), so every
//! receiver checks size and content, not only counts. No receiver waits
//! forever: one that sees nothing for [`STALL`] stops and the shortfall is
//! reported. Deliveries are also counted per [`BUCKET`] of time
//! ([`Timeline`]) for the throughput-over-time plot.

use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_engine::{PublicKey, Receiver};

/// A receiver that sees no message for this long gives up and reports what
/// arrived (a liveness bound, not a performance threshold).
pub(crate) const STALL: Duration = Duration::from_secs(10);
/// Width of one throughput-over-time bucket.
pub(crate) const BUCKET: Duration = Duration::from_millis(10);
/// At most this many buckets are kept (bounded memory on long runs).
const MAX_BUCKETS: usize = 100_000;

/// Receives with a stall bound: `None` if nothing arrived for [`STALL`] or
/// the network closed.
pub(crate) fn stall_recv(rx: &Receiver) -> Option<(PublicKey, Bytes)> {
    rx.try_recv()
        .or_else(|| rx.recv_timeout(STALL).ok().flatten())
}

/// Delivered messages per [`BUCKET`] since `start`.
pub(crate) struct Timeline {
    start: Instant,
    counts: Vec<u64>,
}

impl Timeline {
    pub(crate) fn new(start: Instant) -> Self {
        Timeline {
            start,
            counts: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, now: Instant) {
        self.add_n(now, 1);
    }

    /// `n` deliveries seen at `now`.
    pub(crate) fn add_n(&mut self, now: Instant, n: u64) {
        let i = (now.saturating_duration_since(self.start).as_nanos() / BUCKET.as_nanos()) as usize;
        if i < MAX_BUCKETS {
            if self.counts.len() <= i {
                self.counts.resize(i + 1, 0);
            }
            self.counts[i] += n;
        }
    }

    pub(crate) fn merge(&mut self, other: &Timeline) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    pub(crate) fn rates(&self) -> Vec<f64> {
        let w = BUCKET.as_secs_f64();
        self.counts.iter().map(|c| *c as f64 / w).collect()
    }
}

/// A round-trip message: `seq` in its first 8 bytes (big-endian), filler
/// after; `size` must be at least 8.
pub(crate) fn numbered(seq: u64, size: usize) -> Bytes {
    let mut v = vec![0x5Au8; size.max(8)];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(v)
}

/// The [`numbered`] requests of an rpc run that wait for their echo, with
/// when each was sent (the thread-based and the task-based runs).
pub(crate) struct Outstanding {
    sent: std::collections::HashMap<u64, Instant>,
    size: usize,
}

impl Outstanding {
    /// Room for `inflight` requests of `size` bytes (at least 8).
    pub(crate) fn new(inflight: usize, size: usize) -> Self {
        Self {
            sent: std::collections::HashMap::with_capacity(inflight),
            size: size.max(8),
        }
    }

    /// Request `seq` goes out now.
    pub(crate) fn sent(&mut self, seq: u64) {
        self.sent.insert(seq, Instant::now());
    }

    /// If `echo` answers an outstanding request (its number, its size):
    /// when that was sent; it is no longer outstanding.
    pub(crate) fn answered(&mut self, echo: &[u8]) -> Option<Instant> {
        let seq = echo
            .get(..8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_be_bytes)?;
        if echo.len() != self.size {
            return None;
        }
        self.sent.remove(&seq)
    }
}

pub(crate) fn payload(size: usize) -> Bytes {
    let mut v = vec![0x5Au8; size];
    if let Some(last) = v.last_mut() {
        *last = 0xA5;
    }
    Bytes::from(v)
}

pub(crate) fn intact(m: &[u8], size: usize) -> bool {
    m.len() == size && (size <= 1 || m.first() == Some(&0x5A)) && m.last() == Some(&0xA5)
}

/// Counts intact messages on `rx` until `want` arrived or it stalls.
pub(crate) fn count_messages(
    rx: Receiver,
    want: usize,
    size: usize,
    start: Instant,
) -> Result<(usize, Instant, Timeline), String> {
    // A clock read costs about as much as receiving a 64 B message, so the
    // clock is read once per run of queued messages (at most STAMP_EVERY),
    // when the inbox runs dry, and at the last message: the timeline's 10 ms
    // buckets and the end time stay exact to well under a bucket.
    const STAMP_EVERY: u64 = 64;
    let mut tl = Timeline::new(start);
    let mut n = 0;
    let mut last = start;
    let mut unstamped = 0u64;
    while n < want {
        let m = match rx.try_recv() {
            Some(m) => m,
            None => {
                if unstamped > 0 {
                    last = Instant::now();
                    tl.add_n(last, unstamped);
                    unstamped = 0;
                }
                match rx.recv_timeout(STALL) {
                    Ok(Some(m)) => m,
                    _ => break,
                }
            }
        };
        if !intact(&m.1, size) {
            return Err(format!("message {n} corrupted (len {})", m.1.len()));
        }
        n += 1;
        unstamped += 1;
        if unstamped == STAMP_EVERY || n == want {
            last = Instant::now();
            tl.add_n(last, unstamped);
            unstamped = 0;
        }
    }
    Ok((n, last, tl))
}
