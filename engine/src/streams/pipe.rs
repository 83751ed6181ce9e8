//! One stream's meeting point between the application and its shard.
//!
//! # Design
//! A [`Pipe`] holds two bounded byte buffers behind one mutex: `send`
//! (application → shard, at most `cap` bytes) and `recv` (shard →
//! application, at most `cap` bytes), and what each side asked of the
//! other (finish, reset, stop) or told it (the end, an error). Critical
//! sections are a copy of at most one application buffer or one read's
//! worth of stream bytes.
//!
//! Wake-ups go one way each and only when needed:
//! - **shard → application**: `readable` and `writable` (event-listener
//!   events, for async tasks and parked threads alike) are notified when
//!   data, room, the end or an error appeared; a notify with no listener
//!   costs one atomic load.
//! - **application → shard**: a *poke* ([`crate::shard::Command::Stream`])
//!   once per change the shard has not seen yet (`poked` stays set until
//!   the shard's next sync): bytes written into an empty buffer, room
//!   freed in a receive buffer the shard had stopped filling, finish,
//!   reset, stop, a dropped handle. A poke refused by a full command queue
//!   is not lost: the pipe stays marked `dirty` and the shard's timer
//!   sweep syncs it (counted in `shoal_stream_pokes_deferred`).

use std::sync::{Arc, Mutex, MutexGuard};

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use event_listener::Event;
use shoal_wire::stream::StreamId;

use super::StreamError;
use crate::peers::ConnId;
use crate::shard::Command;
use crate::shared::Shared;

/// How a receiving half ended, as the application will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvEnd {
    /// The peer finished: reads return the rest, then 0.
    Finished,
    /// Reads fail with this.
    Failed(StreamError),
}

#[derive(Debug, Default)]
pub(crate) struct PipeState {
    /// Written by the application, not yet taken by the shard.
    pub send: BytesMut,
    /// The application finished its half (after `send` drains).
    pub finish: bool,
    /// The application reset its half with this code.
    pub reset: Option<u32>,
    /// The shard passed `reset` to the connection.
    pub reset_applied: bool,
    /// The shard applied `finish` or `reset`: nothing more to do.
    pub send_done: bool,
    /// Writes fail with this (the peer stopped, the connection is gone).
    pub send_error: Option<StreamError>,
    /// Received, not yet read by the application.
    pub recv: Chunks,
    pub recv_end: Option<RecvEnd>,
    /// The application stopped reading with this code.
    pub stop: Option<u32>,
    /// The shard applied `stop` or saw the end: nothing more to do.
    pub recv_done: bool,
    /// The shard stopped filling `recv` because it was full.
    pub recv_stalled: bool,
    /// A change the shard has not synced yet.
    pub dirty: bool,
    /// A poke for it is in the shard's queue.
    pub poked: bool,
}

/// Received bytes as the connection handed them over (slices of its
/// blocks, no copy); the reader copies them out.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    q: VecDeque<Bytes>,
    len: usize,
}

impl Chunks {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.q.push_back(b);
        }
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Copies as much as fits into `out`; returns the count.
    pub fn copy_to(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(front) = self.q.front_mut() else {
                break;
            };
            let k = front.len().min(out.len() - n);
            if let (Some(dst), Some(src)) = (out.get_mut(n..n + k), front.get(..k)) {
                dst.copy_from_slice(src);
            }
            bytes::Buf::advance(front, k);
            if front.is_empty() {
                self.q.pop_front();
            }
            n += k;
        }
        self.len -= n;
        n
    }
}

/// See the module docs.
pub(crate) struct Pipe {
    state: Mutex<PipeState>,
    pub readable: Event,
    pub writable: Event,
    /// Bound of each buffer, in bytes.
    pub cap: usize,
    pub conn: ConnId,
    pub id: StreamId,
    /// How long a blocked handle looks before parking (`io.wait_spin`).
    pub spin: std::time::Duration,
    shared: Arc<Shared>,
}

impl Pipe {
    pub fn new(shared: Arc<Shared>, conn: ConnId, id: StreamId, cap: usize) -> Self {
        Self {
            state: Mutex::new(PipeState::default()),
            readable: Event::new(),
            writable: Event::new(),
            cap,
            conn,
            id,
            spin: shared.config.effective_wait_spin(),
            shared,
        }
    }

    /// The state; a poisoned lock (a panic while holding it, which nothing
    /// here does) still gives the state.
    pub fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a change for the shard (under the lock) and pokes it unless a
    /// poke is queued already. Call with the guard, which it releases.
    pub fn poke(&self, mut st: MutexGuard<'_, PipeState>) {
        st.dirty = true;
        if st.poked {
            return;
        }
        st.poked = true;
        drop(st);
        let cmd = Command::Stream {
            conn: self.conn,
            id: self.id,
        };
        let Some(link) = self.shared.shards.get(self.conn.shard) else {
            return;
        };
        if link.send(cmd).is_err() {
            // The timer sweep finds it dirty.
            self.lock().poked = false;
            link.stream_pokes_deferred
                .store(true, std::sync::atomic::Ordering::Release);
            self.shared.metrics.stream_pokes_deferred.inc();
        }
    }
}

/// Makes room for `want` more bytes in `buf` without ever holding more than
/// `cap` (≥ `buf.len() + want`) of allocation: `BytesMut::reserve` doubles a
/// buffer whose consumed front it cannot reclaim, which would let a pipe
/// hold twice its bound. Compacting copies at most the unread bytes.
pub(crate) fn reserve_within(buf: &mut BytesMut, want: usize, cap: usize) {
    if buf.capacity() - buf.len() >= want {
        return;
    }
    let mut fresh = BytesMut::with_capacity(cap.max(buf.len() + want));
    fresh.extend_from_slice(buf);
    *buf = fresh;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_buffer_never_outgrows_its_bound() {
        let cap = 64 * 1024;
        let mut buf = BytesMut::new();
        let chunk = vec![1u8; 10_000];
        let mut read = 0usize;
        for _ in 0..1000 {
            let want = (cap - buf.len()).min(chunk.len());
            reserve_within(&mut buf, want, cap);
            buf.extend_from_slice(&chunk[..want]);
            assert!(buf.capacity() <= cap, "{} > {cap}", buf.capacity());
            // A reader taking a little less than arrives.
            let n = buf.len().min(7_000);
            bytes::Buf::advance(&mut buf, n);
            read += n;
        }
        assert!(read > 1_000_000);
    }
}
