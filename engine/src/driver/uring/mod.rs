//! The io_uring backend: one ring per shard, driven by the shard loop
//! ([`super::event_loop`]). This file holds the backend's state and its
//! answers to the loop; [`submission`] starts operations (and owns the
//! ring's setup, submit and wait), [`completion`] handles them finishing.
//!
//! # Design
//! - The ring is created with `SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN`
//!   where the kernel has them (plain otherwise): only the shard thread
//!   submits, and completions are processed when the shard asks for them.
//! - Receives follow the shard's read plan ([`ShardCore::read_plan`],
//!   [`ReadAhead::Pool`]). A connection carrying small records receives
//!   multishot into the shard's provided-buffer ring ([`BufferPool`]): one
//!   SQE per connection for as long as it keeps reading. A plan that stops
//!   (backpressure past its limit, a close) cancels the receive; it is
//!   re-armed when the connection resumes.
//! - A connection with a large frame body pending, or whose last frame
//!   carried large records, is planned straight into its frame buffer: its
//!   multishot receive is cancelled and a plain `recv` reads into the lent
//!   buffer, which the driver holds until the completion. (A multishot
//!   receive keeps filling pool buffers with whatever is queued before the
//!   shard sees its first completion, so a stream of large messages would go
//!   through the pool, and a copy, almost entirely. A quiet large-records
//!   connection holds its lent buffer, normally 4 KiB, until the next small
//!   frame: at the latest the pong to its next ping; the first frame of
//!   small records switches it back to multishot.)
//!   `recv_direct_bytes` / `recv_pooled_bytes` show the split.
//! - At most one send in flight per connection, carrying every sealed frame
//!   the connection had ready (up to `max_write_batch`): one SQE, one
//!   syscall's worth of work for many frames.
//! - Submission is batched: SQEs accumulate during a loop iteration and go to
//!   the kernel in the single `io_uring_enter` that also waits. (Submitting
//!   a large send batch as soon as it was sealed gained ~2.5 % on fan-out to
//!   3 peers but made 5 of 8 runs of 64 B messages 2-4x slower, against 1 of
//!   8 without; not understood, so not done.)
//! - Connects are non-blocking `connect` + a POLLOUT poll on the ring.
//! - The shard's wake socket is watched by a multishot poll.
//! - Shutdown waits for every in-flight operation (cancelling receives and
//!   the wake poll) before the buffer pool is unregistered and freed.
//! - A shard with only receives in flight sleeps in its doorbell, an epoll
//!   set over its sockets ([`super::doorbell`]), so that socket input wakes
//!   it with the scheduler's sync hint like a blocked read; with a send or
//!   connect in flight, or a socket closing, it sleeps in `io_uring_enter`.
//! - Before sleeping, queued SQEs are submitted first (a send usually
//!   completes inside that submit, and so does a direct receive on a
//!   streaming connection: the shard goes on without yielding its core, which
//!   on a crowded core costs ~0.5 ms), and a shard with a send in flight
//!   waits for it briefly without announcing sleep ([`INFLIGHT_WAIT_NS`]),
//!   so a producer mid-burst does not pay a wake-up for every message only
//!   because the shard dozed between a send and its completion.
//! - Busy-poll mode never blocks in the kernel: a turn that does not wait
//!   is one plain submit, which runs deferred task work only when the
//!   kernel flags some (`TASKRUN_FLAG`), and no syscall at all when there is
//!   nothing to submit or run.
//!
//! Registered (fixed) file descriptors are not used yet: on loopback
//! benchmarks the per-op fd lookup did not show in profiles.
//!
//! # Safety
//! Every SQE that points at memory (a send's bytes, a direct receive's frame
//! buffer) keeps that memory alive and unmoved in the socket's `send` or
//! `direct` slot until the matching completion arrives; a socket's
//! slot (and its connection's slab key) is released only when its in-flight
//! operation count is zero, so no completion can reach a reused key.

mod completion;
mod submission;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use shoal_wire::ReadBuf;
use socket2::Socket;

use super::doorbell::Doorbell;
use super::event_loop::{self, Backend};
use super::pool::BufferPool;
use crate::shard::{DriverAction, ReadAhead, ShardCore};
use crate::waker::Asleep;

pub(super) use submission::{build_ring, submit_and_wait};
use submission::{kernel_has_work, start_connect};

pub(super) const BGID: u16 = 0;
const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_CONNECT: u64 = 3;
const OP_WAKE: u64 = 4;
const OP_CANCEL: u64 = 5;
const OP_RECV_DIRECT: u64 = 6;
const KEY_MASK: u64 = (1 << 56) - 1;
const WAKE_KEY: u64 = KEY_MASK;
/// How long a shard with a send in flight waits for its completion before it
/// announces sleep (see the module doc).
const INFLIGHT_WAIT_NS: u64 = 50_000;
/// This backend receives ahead into its buffer pool.
const AHEAD: ReadAhead = ReadAhead::Pool;

fn user_data(op: u64, key: usize) -> u64 {
    (op << 56) | (key as u64 & KEY_MASK)
}

struct USock {
    sock: Socket,
    recv_armed: bool,
    cancel_sent: bool,
    /// The batch the kernel is reading (kept alive until its completion).
    send: Option<Bytes>,
    /// The connection's frame buffer a direct receive is writing into (kept
    /// alive, and its heap block unmoved, until its completion).
    direct: Option<ReadBuf>,
    connecting: bool,
    /// Operations in flight that reference this socket.
    ops: u32,
    /// Close started: no new operations; freed when `ops == 0`.
    closing: bool,
    /// With `closing`: the socket is not closed but handed to the core when
    /// `ops == 0` (its connection moves to another shard).
    detach: bool,
    close_err: Option<String>,
}

impl USock {
    fn new(sock: Socket, connecting: bool) -> Self {
        Self {
            sock,
            recv_armed: false,
            cancel_sent: false,
            send: None,
            direct: None,
            connecting,
            // A connecting socket has its POLLOUT poll in flight.
            ops: u32::from(connecting),
            closing: false,
            detach: false,
            close_err: None,
        }
    }
}

/// A shard's io_uring backend.
struct Uring {
    ring: IoUring,
    pool: BufferPool,
    socks: HashMap<usize, USock>,
    /// Sockets whose receive ended and should be re-armed next turn.
    rearm: Vec<usize>,
    /// The list being re-armed this turn (kept to reuse its allocation).
    rearming: Vec<usize>,
    /// Completions reaped this turn (kept to reuse its allocation).
    cqes: Vec<(u64, i32, u32)>,
    wake_fd: RawFd,
    wake_armed: bool,
    /// Sockets marked `closing`, each once: the loop looks for finished
    /// closes among these, not across every socket each turn (a node with
    /// thousands of quiet peers paid a scan of all of them per wake-up).
    closing: Vec<usize>,
    /// Sockets with a send in flight (`USock::send` is `Some`), kept so the
    /// pre-sleep check is O(1).
    sends_in_flight: usize,
    /// Connects waiting for their POLLOUT completion.
    connects_in_flight: usize,
    /// Where the shard sleeps when only socket input can wake it.
    bell: Option<Doorbell>,
}

/// Runs a shard on io_uring until shutdown completes.
pub(crate) fn run(mut core: ShardCore, busy_poll: bool) -> io::Result<()> {
    let cfg = core.config();
    let (ring, deferred_taskrun) = build_ring(cfg.io.uring.entries)?;
    let pool = BufferPool::new(cfg.io.uring.recv_buffers, cfg.io.recv_buffer_size)?;
    let doorbell = cfg.io.uring.doorbell;
    // SAFETY: the pool outlives the registration: it is unregistered at the end of `run` after every receive completed, before the pool drops.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(pool.ring_addr(), pool.entries(), BGID, 0)?;
    }
    let mut d = Uring {
        ring,
        pool,
        socks: HashMap::new(),
        rearm: Vec::new(),
        rearming: Vec::new(),
        cqes: Vec::with_capacity(1024),
        wake_fd: core.waker().rx().as_raw_fd(),
        wake_armed: false,
        closing: Vec::new(),
        sends_in_flight: 0,
        connects_in_flight: 0,
        bell: None,
    };
    // The bell relies on deferred task work flagged in the SQ ring (see
    // `doorbell`): only a ring built with our setup flags has it.
    if doorbell && !busy_poll && deferred_taskrun {
        match Doorbell::new() {
            Ok(bell) => d.bell = Some(bell),
            Err(e) => tracing::warn!(error = %e, "no io_uring doorbell; sleeping in the ring"),
        }
        d.watch(d.wake_fd);
    }
    // A panic must not skip the reaping below: the kernel may still write
    // into buffers the unwinding would free.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        event_loop::run(&mut core, &mut d, busy_poll)
    }));
    if !matches!(result, Ok(Ok(()))) {
        core.driver_failed();
    }
    // Reap whatever is still in flight before the pool is freed. If that
    // panics too, the pool is leaked: the kernel may still write into it.
    let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.drain_all(&mut core)));
    if drained.is_err() {
        d.leak_pool();
    }
    let _ = d.ring.submitter().unregister_buf_ring(BGID);
    match result {
        Ok(r) => r,
        // The shard's thread reports the original panic.
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl Backend for Uring {
    fn adopt(
        &mut self,
        core: &mut ShardCore,
        key: usize,
        stream: std::net::TcpStream,
    ) -> io::Result<()> {
        self.watch(stream.as_raw_fd());
        self.socks
            .insert(key, USock::new(Socket::from(stream), false));
        self.arm_recv(core, key)
    }

    fn dial(&mut self, core: &mut ShardCore, key: usize, addr: SocketAddr) -> io::Result<()> {
        let sock = match start_connect(addr) {
            Ok(sock) => sock,
            Err(e) => {
                core.finish_close(key, Some(e.to_string()));
                return Ok(());
            }
        };
        let fd = sock.as_raw_fd();
        self.watch(fd);
        self.connects_in_flight += 1;
        self.socks.insert(key, USock::new(sock, true));
        let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
            .build()
            .user_data(user_data(OP_CONNECT, key));
        self.push(sqe)
    }

    /// Re-arms receives that ended (buffer shortage, a cancel). One whose
    /// connection is paused is dropped here, not kept (keeping it made the
    /// loop spin for as long as the pause lasted): resuming puts the
    /// connection on the dirty list, which re-arms it ([`Backend::replan`]).
    fn receive(&mut self, core: &mut ShardCore) -> io::Result<()> {
        let mut keys = std::mem::take(&mut self.rearming);
        std::mem::swap(&mut keys, &mut self.rearm);
        for &key in &keys {
            self.arm_recv(core, key)?;
        }
        keys.clear();
        self.rearming = keys;
        Ok(())
    }

    fn flush(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()> {
        let Some(s) = self.socks.get(&key) else {
            return Ok(());
        };
        if s.send.is_some() || s.connecting || (s.closing && s.close_err.is_some()) {
            return Ok(());
        }
        match core.poll_transmit(key) {
            Some(batch) => self.send(key, batch),
            None => Ok(()),
        }
    }

    /// A connection whose plan stopped (for long enough) cancels its pool
    /// receive; one whose receive ended while it was paused is re-armed.
    fn replan(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()> {
        let Some(s) = self.socks.get(&key) else {
            return Ok(());
        };
        let intent = core.read_intent(key, AHEAD);
        if s.recv_armed {
            if intent.ends_pool_receive() {
                self.cancel_recv(key)?;
            }
        } else if s.direct.is_none() && !s.closing && !s.connecting && intent.starts_read() {
            self.rearm.push(key);
        }
        Ok(())
    }

    fn socket(&self, key: usize) -> event_loop::Socket {
        match self.socks.get(&key) {
            None => event_loop::Socket::Gone,
            Some(s) if s.closing => event_loop::Socket::Closing,
            Some(s) if s.send.is_some() => event_loop::Socket::Writing,
            Some(_) => event_loop::Socket::Open,
        }
    }

    /// Cancels the socket's receives and lets `reap` hand it over once no
    /// operation references it; a write in flight finishes first.
    fn detach(&mut self, _core: &mut ShardCore, key: usize) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        if s.closing || s.send.is_some() || s.connecting {
            return Ok(());
        }
        s.closing = true;
        s.detach = true;
        let direct = s.direct.is_some();
        self.closing.push(key);
        self.cancel_recv(key)?;
        if direct {
            self.cancel(OP_RECV_DIRECT, key)?;
        }
        Ok(())
    }

    fn close(&mut self, _core: &mut ShardCore, key: usize, reset: bool) -> io::Result<()> {
        if reset {
            self.abort(key)
        } else {
            self.start_close(key, None)
        }
    }

    fn close_all(&mut self, _core: &mut ShardCore) -> io::Result<()> {
        let keys: Vec<usize> = self.socks.keys().copied().collect();
        for key in keys {
            self.abort(key)?;
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// Handles every completion in the queue, then re-arms the wake poll if
    /// it ended.
    fn complete(&mut self, core: &mut ShardCore) -> io::Result<bool> {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
        for &(ud, res, flags) in &cqes {
            self.handle_cqe(core, ud, res, flags)?;
        }
        let any = !cqes.is_empty();
        self.cqes = cqes;
        if self.ring.submission().cq_overflow() {
            // Flushed by the next enter (this turn does not sleep).
            core.metrics().uring_cq_overflows.inc();
        }
        self.arm_wake()?;
        Ok(any)
    }

    /// Frees closing sockets whose operations all completed.
    fn reap(&mut self, core: &mut ShardCore) {
        let mut i = 0;
        while let Some(&key) = self.closing.get(i) {
            match self.socks.get(&key) {
                Some(s) if s.ops > 0 => i += 1,
                _ => {
                    self.closing.swap_remove(i);
                    match self.socks.remove(&key) {
                        Some(s) if s.detach => {
                            self.unwatch(s.sock.as_raw_fd());
                            core.detached(key, std::net::TcpStream::from(s.sock));
                        }
                        Some(s) => core.finish_close(key, s.close_err),
                        None => {}
                    }
                }
            }
        }
    }

    fn busy(&mut self, core: &ShardCore) -> bool {
        !self.rearm.is_empty()
            || core.shutting_down()
            || !self.ring.completion().is_empty()
            || self.ring.submission().cq_overflow()
    }

    fn submit(&mut self) -> io::Result<bool> {
        if self.ring.submission().is_empty() {
            return Ok(false);
        }
        self.ring.submit()?;
        Ok(!self.ring.completion().is_empty())
    }

    fn linger(
        &mut self,
        core: &mut ShardCore,
        actions: &mut Vec<DriverAction>,
    ) -> io::Result<bool> {
        if self.sends_in_flight == 0 {
            return Ok(false);
        }
        submit_and_wait(&self.ring, Duration::from_nanos(INFLIGHT_WAIT_NS))?;
        Ok(!self.ring.completion().is_empty() || core.has_commands(Instant::now(), actions))
    }

    fn wait(
        &mut self,
        core: &mut ShardCore,
        timeout: Duration,
        asleep: Option<Asleep<'_>>,
    ) -> io::Result<()> {
        if timeout.is_zero() {
            // Not waiting: one enter that submits, and runs deferred task
            // work only when the kernel flags some (TASKRUN_FLAG). A zero
            // timeout wait went through an already-expired timer each
            // turn, which cost busy-poll ~8 µs per round trip.
            if self.ring.submission().is_empty() && !kernel_has_work(&mut self.ring) {
                return Ok(());
            }
            self.ring.submit()?;
            return Ok(());
        }
        let use_bell = self.only_receives_in_flight();
        if let Some(bell) = self.bell.as_mut().filter(|_| use_bell) {
            // Only socket input can wake us: sleep where its wake-up is a
            // sync one (see `doorbell`), then run the ring's task work.
            if !self.ring.submission().is_empty() {
                self.ring.submit()?;
            }
            if self.ring.completion().is_empty() && !kernel_has_work(&mut self.ring) {
                core.metrics().uring_doorbell_sleeps.inc();
                bell.wait(timeout)?;
            }
            // `submit` adds GETEVENTS for both (task work; CQEs held back
            // by an overflow, which include multishot receives the kernel
            // ended and which no socket event would bring back).
            if kernel_has_work(&mut self.ring) {
                self.ring.submit()?;
            }
        } else {
            core.metrics().uring_ring_sleeps.inc();
            submit_and_wait(&self.ring, timeout)?;
        }
        drop(asleep);
        Ok(())
    }
}
