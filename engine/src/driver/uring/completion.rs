//! The io_uring backend's completion side: one step per operation, and the
//! teardown that reaps every operation still in flight.
//!
//! # Safety
//! A completion is the moment the kernel lets go of an operation's memory:
//! only then is a socket's `send` or `direct` slot released, a pool buffer
//! read and recycled, or a direct receive's length set (see the [parent
//! module](super#safety)).

use std::io;
use std::time::{Duration, Instant};

use bytes::Buf;
use io_uring::{cqueue, opcode};

use super::submission::submit_and_wait;
use super::{
    user_data, Uring, AHEAD, KEY_MASK, OP_CANCEL, OP_CONNECT, OP_RECV, OP_RECV_DIRECT, OP_SEND,
    OP_WAKE, WAKE_KEY,
};
use crate::driver::event_loop::Backend;
use crate::driver::pool::BufferPool;
use crate::shard::{Arrived, ShardCore};

/// Completion: one step per operation.
impl Uring {
    pub(super) fn handle_cqe(
        &mut self,
        core: &mut ShardCore,
        ud: u64,
        res: i32,
        flags: u32,
    ) -> io::Result<()> {
        let key = (ud & KEY_MASK) as usize;
        match ud >> 56 {
            OP_WAKE => {
                core.waker().woke();
                if !cqueue::more(flags) {
                    self.wake_armed = false;
                }
                Ok(())
            }
            OP_CONNECT => self.on_connect(core, key, res),
            OP_RECV => self.on_pool_recv(core, key, res, flags),
            OP_RECV_DIRECT => self.on_direct_recv(core, key, res),
            OP_SEND => self.on_send(core, key, res),
            // OP_CANCEL: the cancelled operation completes on its own.
            _ => Ok(()),
        }
    }

    fn on_connect(&mut self, core: &mut ShardCore, key: usize, res: i32) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        s.ops -= 1;
        s.connecting = false;
        self.connects_in_flight -= 1;
        let err = if res < 0 {
            Some(io::Error::from_raw_os_error(-res).to_string())
        } else {
            match s.sock.take_error() {
                Ok(None) => None,
                Ok(Some(e)) | Err(e) => Some(e.to_string()),
            }
        };
        match err {
            Some(e) if !s.closing => {
                s.closing = true;
                s.close_err = Some(e);
                self.closing.push(key);
            }
            Some(_) => {}
            None => {
                self.arm_recv(core, key)?;
                self.flush(core, key)?;
            }
        }
        Ok(())
    }

    /// A multishot receive into the pool delivered a buffer (or ended).
    fn on_pool_recv(
        &mut self,
        core: &mut ShardCore,
        key: usize,
        res: i32,
        flags: u32,
    ) -> io::Result<()> {
        let more = cqueue::more(flags);
        let Some(s) = self.socks.get_mut(&key) else {
            // Unknown key cannot happen (slots are freed after ops == 0),
            // but never leak a buffer.
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.pool.recycle(bid);
            }
            return Ok(());
        };
        if !more {
            s.recv_armed = false;
            s.ops -= 1;
        }
        if res > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else {
                // The kernel always names the buffer it filled; if it ever
                // did not, a receive that ended must still be re-armed or the
                // connection would stall.
                if !more && !s.closing {
                    self.rearm.push(key);
                }
                return Ok(());
            };
            if let Some(data) = self.pool.filled(bid, res as usize) {
                core.on_received(key, Arrived::Copied(data), Instant::now());
            }
            self.pool.recycle(bid);
            return self.after_pool_recv(core, key);
        }
        let closing = s.closing;
        match -res {
            // Moving: the receive just ends; the target reads the end of
            // the stream (or the error) again, after what came before.
            _ if core.is_moving(key) => Ok(()),
            0 => self.start_close(key, Some("connection closed by peer".into())),
            // The pool ran dry: retry once buffers come back.
            libc::ENOBUFS if !closing => {
                self.rearm.push(key);
                Ok(())
            }
            libc::ECANCELED if !closing && core.read_intent(key, AHEAD).starts_read() => {
                self.rearm.push(key);
                Ok(())
            }
            libc::ENOBUFS | libc::ECANCELED => Ok(()),
            e if !closing => self.start_close(key, Some(os_error(e))),
            _ => Ok(()),
        }
    }

    /// After pool input was handled: a connection whose plan now wants its
    /// bytes straight in its frame buffer (a large body, large records) or
    /// stops reading cancels the receive (re-armed as its plan says once it
    /// has ended); one whose receive ended is re-armed.
    fn after_pool_recv(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()> {
        let Some(s) = self.socks.get(&key) else {
            return Ok(());
        };
        if s.recv_armed && core.read_intent(key, AHEAD).ends_pool_receive() {
            self.cancel_recv(key)
        } else {
            if !s.recv_armed && !s.closing {
                self.rearm.push(key);
            }
            Ok(())
        }
    }

    /// A direct receive into the lent frame buffer completed.
    fn on_direct_recv(&mut self, core: &mut ShardCore, key: usize, res: i32) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        s.ops -= 1;
        let Some(mut buf) = s.direct.take() else {
            return Ok(());
        };
        let closing = s.closing;
        if res > 0 {
            let bytes = buf.buf_mut();
            let n = (res as usize).min(bytes.capacity() - bytes.len());
            // SAFETY: those bytes are initialised and within capacity: the completion says the kernel wrote `n` bytes (at most the length we gave, which fit the spare capacity) and no longer touches the buffer.
            unsafe { bytes.set_len(bytes.len() + n) };
        }
        core.on_received(key, Arrived::Into(buf), Instant::now());
        match -res {
            n if n < 0 => {
                let closing = self.socks.get(&key).is_none_or(|s| s.closing);
                if closing {
                    Ok(())
                } else {
                    self.arm_recv(core, key)
                }
            }
            _ if core.is_moving(key) => Ok(()),
            0 => self.start_close(key, Some("connection closed by peer".into())),
            libc::ECANCELED | libc::EINTR => {
                if !closing && core.read_intent(key, AHEAD).starts_read() {
                    self.rearm.push(key);
                }
                Ok(())
            }
            e if !closing => self.start_close(key, Some(os_error(e))),
            _ => Ok(()),
        }
    }

    fn on_send(&mut self, core: &mut ShardCore, key: usize, res: i32) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        s.ops -= 1;
        let Some(mut batch) = s.send.take() else {
            if res < 0 {
                return self.start_close(key, Some(os_error(-res)));
            }
            return Ok(());
        };
        self.sends_in_flight -= 1;
        if res < 0 {
            return self.start_close(key, Some(os_error(-res)));
        }
        core.metrics().frames_out.inc();
        batch.advance((res as usize).min(batch.len()));
        if res > 0 {
            core.handle_sent(key, batch.is_empty(), Instant::now());
        }
        if !batch.is_empty() && !s.closing {
            // Short write: send the rest of the same batch.
            return self.send(key, batch);
        }
        // Release the written batch before sealing the next one: it shares
        // its allocation with the connection's output buffer, which can then
        // reuse it instead of taking fresh pages.
        drop(batch);
        self.flush(core, key)
    }

    /// Cancels and reaps every in-flight operation (shutdown and error paths),
    /// so that no buffer the kernel may still use is freed.
    pub(super) fn drain_all(&mut self, core: &mut ShardCore) {
        let keys: Vec<usize> = self.socks.keys().copied().collect();
        for key in keys {
            let _ = self.start_close(key, None);
        }
        if self.wake_armed {
            let sqe = opcode::AsyncCancel::new(user_data(OP_WAKE, WAKE_KEY as usize))
                .build()
                .user_data(user_data(OP_CANCEL, 0));
            let _ = self.push(sqe);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let cqes: Vec<(u64, i32, u32)> = self
                .ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags()))
                .collect();
            for (ud, res, flags) in cqes {
                if ud >> 56 == OP_WAKE {
                    if !cqueue::more(flags) {
                        self.wake_armed = false;
                    }
                    continue;
                }
                let _ = self.handle_cqe(core, ud, res, flags);
            }
            let pending: u32 = self.socks.values().map(|s| s.ops).sum();
            if pending == 0 && !self.wake_armed {
                break;
            }
            if Instant::now() >= deadline {
                tracing::error!(pending, "io_uring operations still in flight at shutdown");
                self.leak_pool();
                break;
            }
            let _ = submit_and_wait(&self.ring, Duration::from_millis(10));
        }
        let keys: Vec<usize> = self.socks.keys().copied().collect();
        for key in keys {
            if let Some(s) = self.socks.remove(&key) {
                core.finish_close(key, s.close_err);
            }
        }
    }

    /// Leaks the pool rather than free memory the kernel may still write.
    pub(super) fn leak_pool(&mut self) {
        match BufferPool::new(1, 1) {
            Ok(empty) => std::mem::forget(std::mem::replace(&mut self.pool, empty)),
            Err(_) => std::process::abort(),
        }
    }
}

pub(super) fn os_error(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}
