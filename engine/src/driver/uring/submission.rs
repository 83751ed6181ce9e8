//! The io_uring backend's submission side: every operation it starts, and
//! the ring itself (setup, submit, wait).
//!
//! # Safety
//! [`Uring::push`] is the one place an SQE reaches the ring; every SQE built
//! here points at no memory, at memory a socket's slot owns until the
//! completion (`send`, `direct`), or at the registered buffer pool (see the
//! [parent module](super#safety)).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{
    user_data, Uring, AHEAD, BGID, OP_CANCEL, OP_RECV, OP_RECV_DIRECT, OP_SEND, OP_WAKE, WAKE_KEY,
};
use crate::shard::{ReadPlan, ShardCore};

/// Builds a ring with deferred, flagged task work where the kernel has it;
/// the flag says whether it did.
pub(in crate::driver) fn build_ring(entries: u32) -> io::Result<(IoUring, bool)> {
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

/// Submission: every operation the backend starts.
impl Uring {
    pub(super) fn push(&mut self, sqe: squeue::Entry) -> io::Result<()> {
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

    /// Adds a socket to the doorbell; one that cannot be added retires the
    /// bell (the shard then sleeps in the ring, correct but slower to wake).
    pub(super) fn watch(&mut self, fd: RawFd) {
        if let Some(bell) = &self.bell {
            if let Err(e) = bell.watch(fd) {
                tracing::warn!(error = %e, "io_uring doorbell retired; sleeping in the ring");
                self.bell = None;
            }
        }
    }

    /// Stops watching `fd` (its socket moves to another shard).
    pub(super) fn unwatch(&mut self, fd: RawFd) {
        if let Some(bell) = &self.bell {
            if let Err(e) = bell.unwatch(fd) {
                tracing::warn!(error = %e, "io_uring doorbell kept a moved socket");
            }
        }
    }

    /// Nothing in flight but receives and the wake poll: every completion
    /// the shard could wait for follows input on a socket the doorbell
    /// watches.
    pub(super) fn only_receives_in_flight(&self) -> bool {
        self.sends_in_flight == 0 && self.connects_in_flight == 0 && self.closing.is_empty()
    }

    pub(super) fn arm_wake(&mut self) -> io::Result<()> {
        if self.wake_armed {
            return Ok(());
        }
        self.wake_armed = true;
        let sqe = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(OP_WAKE, WAKE_KEY as usize));
        self.push(sqe)
    }

    /// Starts receiving as the read plan says: a direct receive into the
    /// lent frame buffer, or a multishot receive into the pool.
    pub(super) fn arm_recv(&mut self, core: &mut ShardCore, key: usize) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        if s.recv_armed || s.direct.is_some() || s.closing || s.connecting {
            return Ok(());
        }
        let fd = types::Fd(s.sock.as_raw_fd());
        let sqe = match core.read_plan(key, AHEAD) {
            ReadPlan::Into(mut buf) => {
                let want = buf.want();
                let spare = buf.buf_mut().spare_capacity_mut();
                let len = want.min(spare.len()).min(u32::MAX as usize) as u32;
                let ptr = spare.as_mut_ptr().cast::<u8>();
                // Moving the buffer into the slot does not move its heap block.
                s.direct = Some(buf);
                opcode::Recv::new(fd, ptr, len)
                    .build()
                    .user_data(user_data(OP_RECV_DIRECT, key))
            }
            ReadPlan::Pool => {
                s.recv_armed = true;
                s.cancel_sent = false;
                opcode::RecvMulti::new(fd, BGID)
                    .build()
                    .user_data(user_data(OP_RECV, key))
            }
            ReadPlan::Hold | ReadPlan::Stop => return Ok(()),
        };
        s.ops += 1;
        self.push(sqe)
    }

    pub(super) fn cancel_recv(&mut self, key: usize) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        if !s.recv_armed || s.cancel_sent {
            return Ok(());
        }
        s.cancel_sent = true;
        self.cancel(OP_RECV, key)
    }

    /// Asks the kernel to cancel `key`'s operation `op` (its completion
    /// still arrives, with `ECANCELED`).
    pub(super) fn cancel(&mut self, op: u64, key: usize) -> io::Result<()> {
        let sqe = opcode::AsyncCancel::new(user_data(op, key))
            .build()
            .user_data(user_data(OP_CANCEL, key));
        self.push(sqe)
    }

    /// Sends `batch` (or the rest of it) on `key`, holding it until the
    /// completion.
    pub(super) fn send(&mut self, key: usize, batch: Bytes) -> io::Result<()> {
        let Some(s) = self.socks.get_mut(&key) else {
            return Ok(());
        };
        let fd = types::Fd(s.sock.as_raw_fd());
        let (ptr, len) = (batch.as_ptr(), batch.len().min(u32::MAX as usize) as u32);
        s.send = Some(batch);
        s.ops += 1;
        self.sends_in_flight += 1;
        let sqe = opcode::Send::new(fd, ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(OP_SEND, key));
        self.push(sqe)
    }

    pub(super) fn start_close(&mut self, key: usize, err: Option<String>) -> io::Result<()> {
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
    pub(super) fn abort(&mut self, key: usize) -> io::Result<()> {
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
            self.cancel(OP_SEND, key)?;
        }
        Ok(())
    }
}

/// Whether the kernel holds work only an enter with GETEVENTS hands over:
/// deferred task work (flagged with `TASKRUN_FLAG`) or completions that
/// overflowed the CQ.
pub(super) fn kernel_has_work(ring: &mut IoUring) -> bool {
    let sq = ring.submission();
    sq.taskrun() || sq.cq_overflow()
}

/// Submits queued operations and waits up to `timeout` for one completion
/// (a timeout or a signal is not an error).
pub(in crate::driver) fn submit_and_wait(ring: &IoUring, timeout: Duration) -> io::Result<()> {
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

pub(super) fn start_connect(addr: SocketAddr) -> io::Result<Socket> {
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
