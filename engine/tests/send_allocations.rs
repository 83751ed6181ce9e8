//! A send that does not have to wait allocates nothing on the sending
//! thread: neither `send` nor `send_wait(..).blocking()` (its future is
//! Ready at the first poll, and the blocking driver's waker is the
//! thread's own).
//!
//! The allocator counts allocations per thread, so the shards' work on
//! their own threads is not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use shoal_engine::{ChannelConfig, Priority};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's layout, as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(|n| n.get());
    f();
    ALLOCATIONS.with(|n| n.get()) - before
}

#[test]
fn a_send_that_does_not_wait_allocates_nothing() {
    let [(_a, mut a_ch), (b, mut b_ch)] =
        shoal_engine::__private::connected_pair(&[ChannelConfig::new(1)]);
    let (tx, _) = a_ch.remove(0);
    let (_, rx) = b_ch.remove(0);
    let peer = b.public_key();
    let msg = Bytes::from_static(b"vote");
    // Warm up: this thread's parker and any lazily built state.
    tx.send_wait(&peer, msg.clone(), Priority::Low)
        .blocking()
        .result()
        .unwrap();
    tx.send(&peer, msg.clone(), Priority::Low).result().unwrap();
    for _ in 0..2 {
        rx.recv_blocking().unwrap();
    }

    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(8)))),
        1,
        "counts"
    );
    let n = allocations_in(|| {
        for _ in 0..100 {
            tx.send(&peer, msg.clone(), Priority::High)
                .result()
                .unwrap();
        }
    });
    assert_eq!(n, 0, "send to one peer");
    let n = allocations_in(|| {
        for _ in 0..100 {
            tx.send_wait(&peer, msg.clone(), Priority::Low)
                .blocking()
                .result()
                .unwrap();
        }
    });
    assert_eq!(n, 0, "send_wait with room, driven by blocking()");
    for _ in 0..200 {
        rx.recv_blocking().unwrap();
    }
}
