//! The receive buffer pool: an io_uring provided-buffer ring.
//!
//! # Design
//! One pool per shard: `entries` buffers of `size` bytes in one allocation,
//! plus the ring of `io_uring_buf` descriptors the kernel picks buffers from
//! for multishot receives. A completion names the buffer id it filled; the
//! driver reads that buffer (the kernel is done with it), copies it into the
//! connection's frame decoder, and hands the id straight back with
//! [`BufferPool::recycle`]. So a pool of N buffers serves any number of
//! connections, and an idle connection holds no receive buffer at all.
//!
//! # Safety
//! The kernel writes into a buffer between the moment its descriptor is
//! published (tail store, Release) and the completion that returns its id.
//! We only form a `&[u8]` over a buffer after that completion and before we
//! publish it again, so the kernel never writes memory we are reading. The
//! memory is freed only after the ring that knows about it is gone (the
//! driver unregisters the buffer ring and waits for every in-flight
//! operation first; see `uring.rs`).
//!
//! [`recv_into_spare`] is the other receive path (the epoll driver): a
//! synchronous `recv(2)` straight into a frame decoder's spare capacity, so
//! large bodies are never copied in user space. It lives here because it is
//! the one other place that hands uninitialised buffer memory to the kernel.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

static LIVE_POOLS: AtomicUsize = AtomicUsize::new(0);

/// Buffer pools allocated and not yet freed in this process (tests use it
/// to prove shutdown returns every buffer).
#[cfg(any(test, feature = "test-hooks"))]
pub fn live_pools() -> usize {
    LIVE_POOLS.load(Ordering::SeqCst)
}

use bytes::BytesMut;
use io_uring::types::BufRingEntry;

/// Receives at most `max` bytes from the socket `src` into the spare
/// capacity of `buf` (not zeroed first) and extends `buf` by what arrived.
/// `Ok(0)` means the peer closed (or `max` or the spare capacity was zero).
pub(crate) fn recv_into_spare(
    src: &impl AsRawFd,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let len = max.min(spare.len());
    // SAFETY: the first `len` bytes of `spare` are writable memory owned by `buf`, `recv` writes at most `len` bytes into them and, being synchronous, the kernel keeps no reference to them once `recv` returns.
    let n = unsafe { libc::recv(src.as_raw_fd(), spare.as_mut_ptr().cast(), len, 0) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let new_len = buf.len() + n.min(len);
    // SAFETY: `recv` returned, so the kernel no longer touches the buffer, and it initialised the first `n` bytes of the spare capacity (`n` at most `len`), so the new length covers initialised bytes within capacity.
    unsafe { buf.set_len(new_len) };
    Ok(n)
}

pub(crate) struct BufferPool {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    entries: u16,
    size: usize,
    /// Our copy of the tail we publish.
    tail: u16,
}

impl BufferPool {
    /// Allocates `entries` (a power of two) buffers of `size` bytes.
    pub fn new(entries: u16, size: usize) -> std::io::Result<Self> {
        if !entries.is_power_of_two() || size == 0 || size > u32::MAX as usize {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "buffer pool: entries must be a power of two, size in 1..=u32::MAX",
            ));
        }
        let oom = || std::io::Error::new(std::io::ErrorKind::OutOfMemory, "buffer pool");
        let ring_layout =
            Layout::from_size_align(entries as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(|_| oom())?;
        let bufs_layout =
            Layout::from_size_align(entries as usize * size, 4096).map_err(|_| oom())?;
        // SAFETY: both layouts have a non-zero size (at least one entry of at least one byte), and the memory is owned by this struct and freed exactly once, in Drop, with these layouts; the kernel sees it only after registration.
        let (ring, bufs) = unsafe { (alloc_zeroed(ring_layout), alloc_zeroed(bufs_layout)) };
        let (Some(ring), Some(bufs)) =
            (NonNull::new(ring as *mut BufRingEntry), NonNull::new(bufs))
        else {
            return Err(oom());
        };
        let mut pool = Self {
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            entries,
            size,
            tail: 0,
        };
        LIVE_POOLS.fetch_add(1, Ordering::SeqCst);
        for bid in 0..entries {
            pool.push(bid);
        }
        pool.publish();
        Ok(pool)
    }

    /// Address of the descriptor ring (for registration).
    pub fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// The bytes the kernel wrote into buffer `bid` (its completion arrived).
    pub fn filled(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.entries || len > self.size {
            return None;
        }
        // SAFETY: the checks above keep the range inside the allocation (`bid` below `entries`, `len` at most `size`), and the caller got `bid` from a completion, after which the kernel does not touch this buffer until `recycle(bid)` publishes it again (the returned borrow of `self` prevents that meanwhile).
        Some(unsafe {
            std::slice::from_raw_parts(self.bufs.as_ptr().add(bid as usize * self.size), len)
        })
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        if bid < self.entries {
            self.push(bid);
            self.publish();
        }
    }

    fn push(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let idx = (self.tail & mask) as usize;
        // SAFETY: `idx` is masked below `entries`, so inside the ring allocation, and the kernel only reads descriptors between its head and our published tail, while slot `tail & mask` is past the published tail, so the kernel does not touch it yet.
        unsafe {
            let entry = &mut *self.ring.as_ptr().add(idx);
            entry.set_addr(self.bufs.as_ptr().add(bid as usize * self.size) as u64);
            entry.set_len(self.size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field is a valid, aligned u16 inside the first descriptor of our ring allocation (io_uring's layout) that the kernel only reads, so a Release store publishes every descriptor written before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // SAFETY: both blocks were allocated in `new` with these layouts, and the driver drops the pool only after unregistering the buffer ring and reaping every in-flight receive, so the kernel holds no pointer into either block.
        unsafe {
            dealloc(self.ring.as_ptr() as *mut u8, self.ring_layout);
            dealloc(self.bufs.as_ptr(), self.bufs_layout);
        }
        LIVE_POOLS.fetch_sub(1, Ordering::SeqCst);
    }
}
