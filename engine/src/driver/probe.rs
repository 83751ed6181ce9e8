//! Does io_uring work here, for everything the io_uring driver does?
//!
//! # Design
//! `Backend::Auto` runs io_uring only if this probe passes, so it checks what
//! the shards will use rather than that a ring can be created: a kernel can
//! have io_uring and still lack multishot receive (6.0), provided-buffer
//! rings (5.19) or timed waits (`EXT_ARG`, 5.11), and a seccomp or container
//! policy can refuse any of them. The probe
//!
//! 1. builds a ring as the shards do (`build_ring`) and requires `EXT_ARG`;
//! 2. asks the kernel's opcode table for every opcode the driver submits;
//! 3. registers a provided-buffer ring;
//! 4. runs the two multishot operations for real on a socket pair: a
//!    multishot poll (the shard's wake socket) and a multishot receive into
//!    the buffer ring (every connection), requiring that each completes with
//!    data and stays armed, then cancels both and waits for their last
//!    completions.
//!
//! A failure names its step ([`ProbeFailure::step`], the `fallback` label of
//! `shoal_backend`) and the kernel's answer ([`ProbeFailure::detail`], logged).
//!
//! # Safety
//! The SQEs the probe submits point at no user memory: the receive picks its
//! buffer from the registered pool, which is unregistered and freed only
//! after the receive's last completion; if that completion does not arrive
//! in time the pool is leaked rather than freed under the kernel.

use std::cell::Cell;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, Probe};

use super::pool::BufferPool;
use super::uring::{build_ring, submit_and_wait, BGID};

/// Why io_uring cannot run the driver here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProbeFailure {
    /// The probe step that failed: `forced`, `setup`, `ext_arg`, `opcode`,
    /// `buf_ring` or `multishot`.
    pub step: &'static str,
    pub detail: String,
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.detail)
    }
}

fn fail(step: &'static str, detail: impl ToString) -> ProbeFailure {
    ProbeFailure {
        step,
        detail: detail.to_string(),
    }
}

thread_local! {
    /// Set by tests (feature `test-hooks`) to make probes on this thread
    /// fail; per thread, so that tests running beside it are unaffected.
    static FORCE_FAILURE: Cell<bool> = const { Cell::new(false) };
}

/// Makes every later probe on this thread (`Network::start` probes on the
/// caller's thread) fail with step `forced`: tests of the epoll fallback.
#[cfg(feature = "test-hooks")]
pub(crate) fn force_failure(on: bool) {
    FORCE_FAILURE.with(|f| f.set(on));
}

const USER_POLL: u64 = 1;
const USER_RECV: u64 = 2;
const USER_CANCEL: u64 = 3;

/// Checks that this kernel (and this process's sandbox) runs every io_uring
/// operation the driver uses.
pub(crate) fn probe() -> Result<(), ProbeFailure> {
    if FORCE_FAILURE.with(|f| f.get()) {
        return Err(fail("forced", "io_uring disabled by the test hook"));
    }
    let (ring, _) = build_ring(8).map_err(|e| fail("setup", format!("io_uring_setup: {e}")))?;
    if !ring.params().is_feature_ext_arg() {
        return Err(fail("ext_arg", "the kernel lacks IORING_FEAT_EXT_ARG"));
    }
    let mut table = Probe::new();
    ring.submitter()
        .register_probe(&mut table)
        .map_err(|e| fail("opcode", format!("IORING_REGISTER_PROBE: {e}")))?;
    for (name, code) in [
        ("RECV", opcode::Recv::CODE),
        ("SEND", opcode::Send::CODE),
        ("POLL_ADD", opcode::PollAdd::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ] {
        if !table.is_supported(code) {
            return Err(fail("opcode", format!("IORING_OP_{name} unsupported")));
        }
    }
    let pool = BufferPool::new(8, 4096).map_err(|e| fail("buf_ring", e))?;
    // SAFETY: the pool's ring memory is valid, page aligned and outlives the
    // registration: it is unregistered below before `pool` is freed, or
    // `pool` is leaked.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(pool.ring_addr(), pool.entries(), BGID, 0)
            .map_err(|e| fail("buf_ring", format!("register provided buffer ring: {e}")))?;
    }
    match multishot(&ring) {
        Ok(()) => {
            let _ = ring.submitter().unregister_buf_ring(BGID);
            drop(ring);
            drop(pool);
            Ok(())
        }
        Err((e, settled)) => {
            let _ = ring.submitter().unregister_buf_ring(BGID);
            drop(ring);
            if !settled {
                // A receive may still own a pool buffer: never free it.
                std::mem::forget(pool);
            }
            Err(e)
        }
    }
}

/// Runs a multishot poll and a multishot receive on a socket pair; on error
/// also says whether every operation has ended (the pool may be freed).
fn multishot(ring: &io_uring::IoUring) -> Result<(), (ProbeFailure, bool)> {
    let (mut a, b) = UnixStream::pair().map_err(|e| (fail("multishot", e), true))?;
    a.write_all(b"ping")
        .map_err(|e| (fail("multishot", e), true))?;
    let fd = types::Fd(b.as_raw_fd());
    let poll = opcode::PollAdd::new(fd, libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(USER_POLL);
    let recv = opcode::RecvMulti::new(fd, BGID)
        .build()
        .user_data(USER_RECV);
    // SAFETY: neither SQE points at user memory (the receive's buffers come
    // from the registered pool, see the module doc).
    unsafe {
        let mut sq = ring.submission_shared();
        if sq.push(&poll).is_err() || sq.push(&recv).is_err() {
            return Err((fail("multishot", "submission queue full"), true));
        }
    }
    let mut armed = [false; 2]; // poll, recv: completed with data and still armed
    let mut live = [true; 2]; // an operation whose last completion is pending
    let mut cancelled = false;
    let mut error = None;
    let mut deadline = Instant::now() + Duration::from_secs(1);
    while live.iter().any(|&l| l) {
        if Instant::now() >= deadline {
            if cancelled {
                break;
            }
            // Nothing completed: cancel what is armed and give the cancels
            // as long again, so the pool can still be freed.
            error.get_or_insert_with(|| "no completion within 1 s".to_string());
            deadline = Instant::now() + Duration::from_secs(1);
        }
        if let Err(e) = submit_and_wait(ring, Duration::from_millis(20)) {
            return Err((fail("multishot", e), false));
        }
        // SAFETY: only this thread uses the ring.
        let cq: Vec<cqueue::Entry> = unsafe { ring.completion_shared() }.collect();
        for cqe in cq {
            let i = match cqe.user_data() {
                USER_POLL => 0,
                USER_RECV => 1,
                _ => continue,
            };
            let more = cqueue::more(cqe.flags());
            if !more {
                live[i] = false;
            }
            if cancelled {
                continue;
            }
            let ok = match i {
                0 => cqe.result() > 0 && cqe.result() & libc::POLLIN as i32 != 0,
                _ => cqe.result() == 4 && cqueue::buffer_select(cqe.flags()).is_some(),
            };
            if ok && more {
                armed[i] = true;
            } else if error.is_none() {
                let what = if i == 0 { "poll" } else { "receive" };
                error = Some(format!(
                    "multishot {what} completed with {} (flags {:#x})",
                    cqe.result(),
                    cqe.flags()
                ));
            }
        }
        if !cancelled && (armed == [true; 2] || error.is_some()) {
            cancelled = true;
            for (target, l) in [(USER_POLL, live[0]), (USER_RECV, live[1])] {
                if !l {
                    continue;
                }
                let cancel = opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(USER_CANCEL);
                // SAFETY: a cancel points at no memory.
                unsafe {
                    let _ = ring.submission_shared().push(&cancel);
                }
            }
        }
    }
    let settled = !live.iter().any(|&l| l);
    match error {
        Some(e) => Err((fail("multishot", e), settled)),
        None if armed != [true; 2] => Err((fail("multishot", "no completion within 1 s"), settled)),
        None if !settled => Err((
            fail("multishot", "cancel did not complete within 1 s"),
            false,
        )),
        None => Ok(()),
    }
}
