//! The io_uring driver: one ring per shard, a completion loop we own.
//!
//! # Design
//! - The ring is created with `SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN`
//!   where the kernel has them (plain otherwise): only the shard thread
//!   submits, and completions are processed when the shard asks for them.
//! - Connections carrying small records receive multishot into the shard's
//!   provided-buffer ring ([`BufferPool`]): one SQE per connection for as
//!   long as it keeps reading. Backpressure (a full receiver, a quota)
//!   cancels the receive; it is re-armed when the connection resumes.
//! - Large frame bodies skip the pool: when a connection has one pending, its
//!   multishot receive is cancelled and a plain `recv` reads the rest of the
//!   body (and the next length prefix) straight into the connection's frame
//!   buffer, which the driver holds until the completion.
//! - A multishot receive keeps filling pool buffers with whatever is queued
//!   before the shard sees its first completion, so a stream of large
//!   messages went through the pool (and a copy) almost entirely. A
//!   connection whose last frame carried large records
//!   ([`crate::connection::Connection::has_large_records`]) therefore receives
//!   every read straight into its frame buffer, sized like an epoll read (a
//!   quiet one holds that buffer, normally 4 KiB, until the next small
//!   frame: at the latest the pong to its next ping); the first frame of
//!   small records switches it back to multishot.
//!   Small records keep the multishot receive: receiving ahead is worth more
//!   to them than the copy costs (64 B messages lost 12–35 % without it).
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

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::doorbell::Doorbell;
use super::pool::BufferPool;
use crate::shard::{DriverAction, ShardCore};

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
/// announces sleep (see the event loop).
const INFLIGHT_WAIT_NS: u64 = 50_000;

fn user_data(op: u64, key: usize) -> u64 {
    (op << 56) | (key as u64 & KEY_MASK)
}

/// Builds a ring with deferred, flagged task work where the kernel has it;
/// the flag says whether it did.
pub(super) fn build_ring(entries: u32) -> io::Result<(IoUring, bool)> {
    let mut b = IoUring::builder();
    b.setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_taskrun_flag();
    match b.build(entries) {
        Ok(r) => Ok((r, true)),
        // Older kernels lack the flags: a plain ring works the same, slower.
        Err(_) => Ok((IoUring::new(entries)?, false)),
    }
}

struct USock {
    sock: Socket,
    recv_armed: bool,
    cancel_sent: bool,
    /// The batch the kernel is reading (kept alive until its completion).
    send: Option<Bytes>,
    /// The connection's frame buffer a direct receive is writing into (kept
    /// alive, and its heap block unmoved, until its completion).
    direct: Option<BytesMut>,
    connecting: bool,
    /// Operations in flight that reference this socket.
    ops: u32,
    /// Close started: no new operations; freed when `ops == 0`.
    closing: bool,
    close_err: Option<String>,
}

struct Driver {
    ring: IoUring,
    pool: BufferPool,
    socks: HashMap<usize, USock>,
    rearm: Vec<usize>,
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

impl Driver {
    /// Adds a socket to the doorbell; one that cannot be added retires the
    /// bell (the shard then sleeps in the ring, correct but slower to wake).
    fn watch(&mut self, fd: std::os::fd::RawFd) {
        if let Some(bell) = &self.bell {
            if let Err(e) = bell.watch(fd) {
                tracing::warn!(error = %e, "io_uring doorbell retired; sleeping in the ring");
                self.bell = None;
            }
        }
    }

    /// Nothing in flight but receives and the wake poll: every completion
    /// the shard could wait for follows input on a socket the doorbell
    /// watches.
    fn only_receives_in_flight(&self) -> bool {
        self.sends_in_flight == 0 && self.connects_in_flight == 0 && self.closing.is_empty()
    }

    fn push(&mut self, sqe: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every SQE we build references either no memory, or memory owned by a `USock` (`send`, `direct`) that stays alive and unmoved until the operation's completion is reaped, or (receives with buffer selection) the registered buffer pool, which is unregistered and freed only after every operation completed (`drain_all`).
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_ok() {
                return Ok(());
            }
            // Submission queue full: hand what we have to the kernel.
            self.ring.submit()?;
        }
    }

    /// Starts receiving: a direct receive into the connection's buffer when
    /// a large body is pending or the connection carries large records, a
    /// multishot receive into the pool otherwise (see the module doc).
    fn arm_recv(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        if s.recv_armed || s.direct.is_some() || s.closing || s.connecting {
            return Ok(());
        }
        if let Some((mut buf, len)) = core.lend_read_buf(key) {
            let ptr = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
            let len = len.min(buf.capacity() - buf.len()).min(u32::MAX as usize) as u32;
            // Moving the BytesMut into the slot does not move its heap block.
            s.direct = Some(buf);
            s.ops += 1;
            let fd = s.sock.as_raw_fd();
            let sqe = opcode::Recv::new(types::Fd(fd), ptr, len)
                .build()
                .user_data(user_data(OP_RECV_DIRECT, key));
            return self.push(sqe);
        }
        s.recv_armed = true;
        s.cancel_sent = false;
        s.ops += 1;
        let fd = s.sock.as_raw_fd();
        let sqe = opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(user_data(OP_RECV, key));
        self.push(sqe)
    }

    fn cancel_recv(&mut self, key: usize) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        if !s.recv_armed || s.cancel_sent {
            return Ok(());
        }
        s.cancel_sent = true;
        let sqe = opcode::AsyncCancel::new(user_data(OP_RECV, key))
            .build()
            .user_data(user_data(OP_CANCEL, key));
        self.push(sqe)
    }

    fn flush(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        if s.send.is_some() || s.connecting || (s.closing && s.close_err.is_some()) {
            return Ok(());
        }
        let Some(batch) = core.poll_transmit(key) else {
            return Ok(());
        };
        let fd = s.sock.as_raw_fd();
        let (ptr, len) = (batch.as_ptr(), batch.len().min(u32::MAX as usize) as u32);
        s.send = Some(batch);
        s.ops += 1;
        self.sends_in_flight += 1;
        let sqe = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(OP_SEND, key));
        self.push(sqe)
    }

    fn start_close(&mut self, key: usize, err: Option<String>) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        if s.closing {
            return Ok(());
        }
        s.closing = true;
        s.close_err = err;
        self.closing.push(key);
        // Shutting the socket down completes its pending receive and send.
        let _ = s.sock.shutdown(std::net::Shutdown::Both);
        self.cancel_recv(key)
    }

    /// Closes `key` without flushing: the close resets the connection
    /// (RST, `SO_LINGER` 0, so the kernel frees its buffers at once instead
    /// of queueing a FIN behind data the peer does not read), and a send
    /// still in flight is cancelled.
    fn abort(&mut self, key: usize) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        if s.closing {
            return Ok(());
        }
        let _ = s.sock.set_linger(Some(Duration::ZERO));
        let send_in_flight = s.send.is_some();
        self.start_close(key, None)?;
        if send_in_flight {
            let sqe = opcode::AsyncCancel::new(user_data(OP_SEND, key))
                .build()
                .user_data(user_data(OP_CANCEL, key));
            self.push(sqe)?;
        }
        Ok(())
    }
}

/// Runs a shard on io_uring until shutdown completes.
pub(crate) fn run(mut core: ShardCore, busy_poll: bool) -> io::Result<()> {
    let cfg = &core.config();
    let (ring, deferred_taskrun) = build_ring(cfg.io.uring.entries)?;
    let pool = BufferPool::new(cfg.io.uring.recv_buffers, cfg.io.recv_buffer_size)?;
    // SAFETY: the pool outlives the registration: it is unregistered at the end of `run` after every receive completed, before the pool drops.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(pool.ring_addr(), pool.entries(), BGID, 0)?;
    }
    let mut d = Driver {
        ring,
        pool,
        socks: HashMap::new(),
        rearm: Vec::new(),
        wake_armed: false,
        closing: Vec::new(),
        sends_in_flight: 0,
        connects_in_flight: 0,
        bell: None,
    };
    // The bell relies on deferred task work flagged in the SQ ring (see
    // `doorbell`): only a ring built with our setup flags has it.
    if core.config().io.uring.doorbell && !busy_poll && deferred_taskrun {
        match Doorbell::new() {
            Ok(bell) => d.bell = Some(bell),
            Err(e) => tracing::warn!(error = %e, "no io_uring doorbell; sleeping in the ring"),
        }
        d.watch(core.waker().rx().as_raw_fd());
    }
    // A panic must not skip the reaping below: the kernel may still write
    // into buffers the unwinding would free.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        event_loop(&mut core, &mut d, busy_poll)
    }));
    if !matches!(result, Ok(Ok(()))) {
        core.driver_failed();
    }
    // Reap whatever is still in flight before the pool is freed. If that
    // panics too, the pool is leaked: the kernel may still write into it.
    let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drain_all(&mut core, &mut d)
    }));
    if drained.is_err() {
        if let Ok(empty) = BufferPool::new(1, 1) {
            std::mem::forget(std::mem::replace(&mut d.pool, empty));
        } else {
            std::process::abort();
        }
    }
    let _ = d.ring.submitter().unregister_buf_ring(BGID);
    match result {
        Ok(r) => r,
        // The shard's thread reports the original panic.
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn arm_wake(core: &ShardCore, d: &mut Driver) -> io::Result<()> {
    if d.wake_armed {
        return Ok(());
    }
    d.wake_armed = true;
    let fd = core.waker().rx().as_raw_fd();
    let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(user_data(OP_WAKE, WAKE_KEY as usize));
    d.push(sqe)
}

fn event_loop(core: &mut ShardCore, d: &mut Driver, busy_poll: bool) -> io::Result<()> {
    let mut actions = Vec::new();
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    let mut dirty = Vec::new();
    let mut idle = super::idle_spin::IdleSpin::new(core.config().io.idle_spin);
    loop {
        arm_wake(core, d)?;
        let now = Instant::now();
        core.injected_failure()?;
        let commands = core.drain_commands(now, &mut actions);
        for action in actions.drain(..) {
            match action {
                DriverAction::Adopt(stream, ip) => {
                    let _ = stream.set_nodelay(true);
                    let _ = stream.set_nonblocking(true);
                    let key = core.insert(Some(ip), None, now);
                    d.watch(stream.as_raw_fd());
                    d.socks.insert(
                        key,
                        USock {
                            sock: Socket::from(stream),
                            recv_armed: false,
                            cancel_sent: false,
                            send: None,
                            direct: None,
                            connecting: false,
                            ops: 0,
                            closing: false,
                            close_err: None,
                        },
                    );
                    d.arm_recv(core, key)?;
                }
                DriverAction::Dial(peer, addr) => {
                    core.metrics().dials.inc();
                    let key = core.insert(None, Some((peer, addr)), now);
                    match start_connect(addr) {
                        Ok(sock) => {
                            let fd = sock.as_raw_fd();
                            d.watch(fd);
                            d.connects_in_flight += 1;
                            d.socks.insert(
                                key,
                                USock {
                                    sock,
                                    recv_armed: false,
                                    cancel_sent: false,
                                    send: None,
                                    direct: None,
                                    connecting: true,
                                    ops: 1,
                                    closing: false,
                                    close_err: None,
                                },
                            );
                            let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
                                .build()
                                .user_data(user_data(OP_CONNECT, key));
                            d.push(sqe)?;
                        }
                        Err(e) => core.finish_close(key, Some(e.to_string())),
                    }
                }
                DriverAction::Shutdown => {}
            }
        }

        // Completions.
        cqes.clear();
        for cqe in d.ring.completion() {
            cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        for &(ud, res, flags) in &cqes {
            handle_cqe(core, d, ud, res, flags)?;
        }
        if d.ring.submission().cq_overflow() {
            // Flushed by the next enter (this turn does not sleep).
            core.metrics().uring_cq_overflows.inc();
        }

        // Re-arm receives that ended (buffer shortage, a cancel). One whose
        // connection is paused is dropped here, not kept (keeping it made the
        // loop spin for as long as the pause lasted): resuming puts the
        // connection on the dirty list, which re-arms it below.
        let rearm = std::mem::take(&mut d.rearm);
        for key in rearm {
            if core.wants_read(key) {
                d.arm_recv(core, key)?;
            }
        }

        // Timers, resumes, output.
        let now = Instant::now();
        core.handle_timers(now);
        if core.waker().take_resume() {
            core.retry_held(now);
        }
        dirty.clear();
        core.move_dirty_to(&mut dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &key in &dirty {
            d.flush(core, key)?;
            // A connection that stopped wanting input for long enough
            // cancels its receive.
            let wants = core.wants_read(key);
            match d.socks.get(&key) {
                Some(s) if s.recv_armed && core.must_stop_reading(key) => d.cancel_recv(key)?,
                Some(s)
                    if !s.recv_armed
                        && s.direct.is_none()
                        && wants
                        && !s.closing
                        && !s.connecting =>
                {
                    d.rearm.push(key)
                }
                _ => {}
            }
        }

        // Closing connections: flush what is sealed, then close the socket;
        // one whose output stalled past the write timeout (or whose flush
        // ran out of time) is reset instead.
        let closing: Vec<usize> = core.closing().to_vec();
        for key in closing {
            match d.socks.get(&key) {
                None => core.finish_close(key, None),
                Some(s) if !s.closing => {
                    if core.must_abort(key, now) {
                        d.abort(key)?;
                        continue;
                    }
                    d.flush(core, key)?;
                    let drained = d.socks.get(&key).is_some_and(|s| s.send.is_none());
                    if drained {
                        d.start_close(key, None)?;
                    }
                }
                Some(_) => {}
            }
        }
        // Free closing sockets whose operations all completed.
        if !d.closing.is_empty() {
            let mut i = 0;
            while let Some(&key) = d.closing.get(i) {
                match d.socks.get(&key) {
                    Some(s) if s.ops > 0 => i += 1,
                    _ => {
                        d.closing.swap_remove(i);
                        if let Some(s) = d.socks.remove(&key) {
                            core.finish_close(key, s.close_err);
                        }
                    }
                }
            }
        }

        if core.shutting_down() {
            if core.shutdown_overdue(now) {
                let keys: Vec<usize> = d.socks.keys().copied().collect();
                for key in keys {
                    d.abort(key)?;
                }
            }
            if !core.has_connections() && d.socks.is_empty() {
                return Ok(());
            }
        }

        // Submit and wait (or just reap when busy).
        let busy = busy_poll
            || core.has_dirty()
            || !d.rearm.is_empty()
            || core.shutting_down()
            || !d.ring.completion().is_empty()
            || d.ring.submission().cq_overflow();
        let mut timeout = if busy {
            Duration::ZERO
        } else {
            core.sleep_budget(now)
        };
        if timeout > Duration::ZERO && idle.keep_polling(commands || !cqes.is_empty(), now) {
            std::thread::yield_now();
            timeout = Duration::ZERO;
        }
        if timeout > Duration::ZERO {
            // Hand queued operations to the kernel before watching the queue.
            if !d.ring.submission().is_empty() {
                d.ring.submit()?;
                // A send usually completes inside that submit, and so does
                // a direct receive on a streaming connection: go on with the
                // next batch now instead of yielding the core first (a yield
                // on a crowded core costs ~0.5 ms; a receiver of 16 KiB
                // messages, one frame per direct receive, yielded per frame).
                if !d.ring.completion().is_empty() {
                    continue;
                }
            }
            if core.yield_for_commands(&mut actions) {
                continue;
            }
            // A send in flight completes within microseconds on a healthy
            // connection: wait for it briefly *without* announcing sleep, so
            // a producer mid-burst does not pay a wake-up for every message
            // only because the shard dozed between a send and its completion.
            if d.sends_in_flight > 0 {
                submit_and_wait(&d.ring, Duration::from_nanos(INFLIGHT_WAIT_NS))?;
                if !d.ring.completion().is_empty()
                    || core.has_commands(Instant::now(), &mut actions)
                {
                    continue;
                }
            }
        }
        let sleeping = timeout > Duration::ZERO;
        if sleeping {
            core.waker().prepare_sleep();
            if core.has_commands(Instant::now(), &mut actions) || core.waker().resume_pending() {
                core.waker().cancel_sleep();
                // Handle the command at the top of the loop without waiting.
                d.ring.submit()?;
                continue;
            }
        }
        let use_bell = sleeping && d.only_receives_in_flight();
        if let Some(bell) = d.bell.as_mut().filter(|_| use_bell) {
            // Only socket input can wake us: sleep where its wake-up is a
            // sync one (see `doorbell`), then run the ring's task work.
            if !d.ring.submission().is_empty() {
                d.ring.submit()?;
            }
            if d.ring.completion().is_empty() && !kernel_has_work(&mut d.ring) {
                core.metrics().uring_doorbell_sleeps.inc();
                bell.wait(timeout)?;
            }
            // `submit` adds GETEVENTS for both (task work; CQEs held back
            // by an overflow, which include multishot receives the kernel
            // ended and which no socket event would bring back).
            if kernel_has_work(&mut d.ring) {
                d.ring.submit()?;
            }
        } else if timeout.is_zero() {
            // Not waiting: one enter that submits, and runs deferred task
            // work only when the kernel flags some (TASKRUN_FLAG). A zero
            // timeout wait went through an already-expired timer each
            // turn, which cost busy-poll ~8 µs per round trip.
            if d.ring.submission().is_empty() && !kernel_has_work(&mut d.ring) {
                continue;
            }
            d.ring.submit()?;
        } else {
            core.metrics().uring_ring_sleeps.inc();
            submit_and_wait(&d.ring, timeout)?;
        }
        if sleeping {
            core.waker().cancel_sleep();
        }
    }
}

/// Whether the kernel holds work only an enter with GETEVENTS hands over:
/// deferred task work (flagged with `TASKRUN_FLAG`) or completions that
/// overflowed the CQ.
fn kernel_has_work(ring: &mut IoUring) -> bool {
    let sq = ring.submission();
    sq.taskrun() || sq.cq_overflow()
}

/// Submits queued operations and waits up to `timeout` for one completion
/// (a timeout or a signal is not an error).
pub(super) fn submit_and_wait(ring: &IoUring, timeout: Duration) -> io::Result<()> {
    let ts = types::Timespec::new()
        .sec(timeout.as_secs())
        .nsec(timeout.subsec_nanos());
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn start_connect(addr: SocketAddr) -> io::Result<Socket> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    sock.set_tcp_nodelay(true)?;
    match sock.connect(&SockAddr::from(addr)) {
        Ok(()) => Ok(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
        Err(e) => Err(e),
    }
}

fn handle_cqe(
    core: &mut ShardCore,
    d: &mut Driver,
    ud: u64,
    res: i32,
    flags: u32,
) -> io::Result<()> {
    let op = ud >> 56;
    let key = (ud & KEY_MASK) as usize;
    let now = Instant::now();
    match op {
        OP_WAKE => {
            core.waker().woke();
            if !cqueue::more(flags) {
                d.wake_armed = false;
            }
        }
        OP_CANCEL => {}
        OP_CONNECT => {
            let Some(s) = d.socks.get_mut(&key) else {
                return Ok(());
            };
            s.ops -= 1;
            s.connecting = false;
            d.connects_in_flight -= 1;
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
                    d.closing.push(key);
                }
                Some(_) => {}
                None => {
                    d.arm_recv(core, key)?;
                    d.flush(core, key)?;
                }
            }
        }
        OP_RECV => {
            let more = cqueue::more(flags);
            let Some(s) = d.socks.get_mut(&key) else {
                // Unknown key cannot happen (slots are freed after ops == 0),
                // but never leak a buffer.
                if let Some(bid) = cqueue::buffer_select(flags) {
                    d.pool.recycle(bid);
                }
                return Ok(());
            };
            if !more {
                s.recv_armed = false;
                s.ops -= 1;
            }
            if res > 0 {
                let Some(bid) = cqueue::buffer_select(flags) else {
                    // The kernel always names the buffer it filled; if it
                    // ever did not, a receive that ended must still be
                    // re-armed or the connection would stall.
                    if !more && !s.closing {
                        d.rearm.push(key);
                    }
                    return Ok(());
                };
                core.metrics().recv_pooled_bytes.inc_by(res as u64);
                if let Some(data) = d.pool.filled(bid, res as usize) {
                    if let Some(conn) = core.connection_mut(key) {
                        conn.handle_input(data, now);
                    }
                }
                d.pool.recycle(bid);
                core.process_input(key, now);
                if let Some(s) = d.socks.get(&key) {
                    if s.recv_armed
                        && (core.must_stop_reading(key)
                            || core.large_body_pending(key)
                            || core.large_records(key))
                    {
                        // A large body, or a connection now carrying large
                        // records, goes straight into the frame buffer once
                        // this receive has ended (re-armed as direct).
                        d.cancel_recv(key)?;
                    } else if !s.recv_armed && !s.closing {
                        d.rearm.push(key);
                    }
                }
            } else if res == 0 {
                d.start_close(key, Some("connection closed by peer".into()))?;
            } else if res == -libc::ENOBUFS {
                // The pool ran dry: retry once buffers come back.
                if !s.closing {
                    d.rearm.push(key);
                }
            } else if res == -libc::ECANCELED {
                if !s.closing && core.wants_read(key) {
                    d.rearm.push(key);
                }
            } else if !s.closing {
                let e = io::Error::from_raw_os_error(-res).to_string();
                d.start_close(key, Some(e))?;
            }
        }
        OP_RECV_DIRECT => {
            let Some(s) = d.socks.get_mut(&key) else {
                return Ok(());
            };
            s.ops -= 1;
            let Some(mut buf) = s.direct.take() else {
                return Ok(());
            };
            if res > 0 {
                core.metrics().recv_direct_bytes.inc_by(res as u64);
                let n = (res as usize).min(buf.capacity() - buf.len());
                // SAFETY: those bytes are initialised and within capacity: the completion says the kernel wrote `n` bytes (at most the length we gave, which fit the spare capacity) and no longer touches the buffer.
                unsafe { buf.set_len(buf.len() + n) };
            }
            core.return_read_buf(key, buf, now);
            if res > 0 {
                core.process_input(key, now);
                let closing = d.socks.get(&key).is_none_or(|s| s.closing);
                if !closing && core.wants_read(key) {
                    d.arm_recv(core, key)?;
                }
            } else if res == 0 {
                d.start_close(key, Some("connection closed by peer".into()))?;
            } else if res == -libc::ECANCELED || res == -libc::EINTR {
                if !s.closing && core.wants_read(key) {
                    d.rearm.push(key);
                }
            } else if !s.closing {
                let e = io::Error::from_raw_os_error(-res).to_string();
                d.start_close(key, Some(e))?;
            }
        }
        OP_SEND => {
            let Some(s) = d.socks.get_mut(&key) else {
                return Ok(());
            };
            s.ops -= 1;
            if res < 0 {
                if s.send.take().is_some() {
                    d.sends_in_flight -= 1;
                }
                let e = io::Error::from_raw_os_error(-res).to_string();
                d.start_close(key, Some(e))?;
                return Ok(());
            }
            let Some(mut batch) = s.send.take() else {
                return Ok(());
            };
            d.sends_in_flight -= 1;
            core.metrics().frames_out.inc();
            batch.advance((res as usize).min(batch.len()));
            if res > 0 {
                core.handle_sent(key, batch.is_empty(), now);
            }
            if !batch.is_empty() && !s.closing {
                // Short write: send the rest of the same batch.
                let fd = s.sock.as_raw_fd();
                let (ptr, len) = (batch.as_ptr(), batch.len().min(u32::MAX as usize) as u32);
                s.send = Some(batch);
                s.ops += 1;
                d.sends_in_flight += 1;
                let sqe = opcode::Send::new(types::Fd(fd), ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(user_data(OP_SEND, key));
                d.push(sqe)?;
            } else {
                // Release the written batch before sealing the next one: it
                // shares its allocation with the connection's output buffer,
                // which can then reuse it instead of taking fresh pages.
                drop(batch);
                d.flush(core, key)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Cancels and reaps every in-flight operation (shutdown and error paths),
/// so that no buffer the kernel may still use is freed.
fn drain_all(core: &mut ShardCore, d: &mut Driver) {
    let keys: Vec<usize> = d.socks.keys().copied().collect();
    for key in keys {
        let _ = d.start_close(key, None);
    }
    if d.wake_armed {
        let sqe = opcode::AsyncCancel::new(user_data(OP_WAKE, WAKE_KEY as usize))
            .build()
            .user_data(user_data(OP_CANCEL, 0));
        let _ = d.push(sqe);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut cqes = Vec::new();
        for cqe in d.ring.completion() {
            cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        for (ud, res, flags) in cqes {
            let op = ud >> 56;
            if op == OP_WAKE {
                if !cqueue::more(flags) {
                    d.wake_armed = false;
                }
                continue;
            }
            let _ = handle_cqe(core, d, ud, res, flags);
        }
        let pending: u32 = d.socks.values().map(|s| s.ops).sum();
        if pending == 0 && !d.wake_armed {
            break;
        }
        if Instant::now() >= deadline {
            tracing::error!(pending, "io_uring operations still in flight at shutdown");
            // Leak the pool rather than free memory the kernel may write.
            std::mem::forget(std::mem::replace(
                &mut d.pool,
                BufferPool::new(1, 1).unwrap_or_else(|_| std::process::abort()),
            ));
            break;
        }
        let _ = submit_and_wait(&d.ring, Duration::from_millis(10));
    }
    let keys: Vec<usize> = d.socks.keys().copied().collect();
    for key in keys {
        if let Some(s) = d.socks.remove(&key) {
            core.finish_close(key, s.close_err);
        }
    }
}
